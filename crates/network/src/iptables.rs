//! The iptables plumbing the service proxy and the NetworkPolicy controller
//! share: running `iptables-save`/`iptables-restore`, building restore input
//! that declares (and so flushes) our chains, removing our chains and the
//! jumps to them, and the debounced sync loop state that applies a rule set
//! with one `iptables-restore --noflush` per change burst, re-checks the
//! jumps from the built-in chains on a periodic full resync and retries with
//! backoff when a restore fails. A change after a quiet spell is applied at
//! once; only changes following a pass closely are coalesced.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// A jump from a built-in chain: (table, chain, rule spec).
pub type Jump = (&'static str, &'static str, &'static str);

/// iptables-restore input for both tables, and the chains it declares.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rules {
    pub nat: String,
    pub filter: String,
    /// (table, chain) of every chain declared.
    pub chains: BTreeSet<(String, String)>,
}

impl Rules {
    /// The restore input: our chains rebuilt, `stale` chains deleted, and
    /// `jumps` inserted into the built-in chains.
    pub fn restore_input(
        &self,
        stale: &BTreeSet<(String, String)>,
        jumps: &[(&str, &str, &str)],
    ) -> String {
        self.restore_input_since(None, stale, jumps)
    }

    /// The restore input that turns `prev` (what is in the kernel) into
    /// these rules: only chains whose rules differ (or are new) are
    /// declared, so flushed and refilled; the others, and the state of
    /// their matches (e.g. `statistic --mode nth` counters), stay as they
    /// are. Smaller transactions also commit faster. `prev` None: every
    /// chain.
    pub fn restore_input_since(
        &self,
        prev: Option<&Rules>,
        stale: &BTreeSet<(String, String)>,
        jumps: &[(&str, &str, &str)],
    ) -> String {
        let mut out = String::new();
        for (table, body) in [("nat", &self.nat), ("filter", &self.filter)] {
            let _ = writeln!(out, "*{table}");
            let now = by_chain(body);
            let before = prev.map(|p| {
                (
                    by_chain(if table == "nat" { &p.nat } else { &p.filter }),
                    &p.chains,
                )
            });
            let changed = |c: &str| match &before {
                None => true,
                Some((rules, chains)) => {
                    !chains.contains(&(table.to_string(), c.to_string()))
                        || rules.get(c) != now.get(c)
                }
            };
            for (t, c) in &self.chains {
                if t == table && changed(c) {
                    let _ = writeln!(out, ":{c} - [0:0]");
                }
            }
            for (t, c) in stale {
                if t == table {
                    let _ = writeln!(out, ":{c} - [0:0]");
                }
            }
            for line in body.lines() {
                let chain = rule_chain(line);
                // Lines of no declared chain (none are built) go as they are.
                let declared = chain
                    .is_some_and(|c| self.chains.contains(&(table.to_string(), c.to_string())));
                if !declared || changed(chain.unwrap_or_default()) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            for (t, c, spec) in jumps {
                if *t == table {
                    let _ = writeln!(out, "-I {c} 1 {spec}");
                }
            }
            for (t, c) in stale {
                if t == table {
                    let _ = writeln!(out, "-X {c}");
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// The chain an `-A CHAIN ...` line appends to.
fn rule_chain(line: &str) -> Option<&str> {
    line.strip_prefix("-A ")
        .and_then(|r| r.split_whitespace().next())
}

/// The rule lines of each chain, in order.
fn by_chain(body: &str) -> std::collections::HashMap<&str, Vec<&str>> {
    let mut out: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for line in body.lines() {
        if let Some(c) = rule_chain(line) {
            out.entry(c).or_default().push(line);
        }
    }
    out
}

/// Runs a command, feeding it `input`, and returns its stdout (an error
/// with its stderr when it fails).
pub fn run(cmd: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running {cmd}: {e}"))?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-save` output of one table.
pub fn save(table: &str) -> anyhow::Result<String> {
    run("iptables-save", &["-t", table], None)
}

/// Applies restore input atomically, leaving everything else in place.
pub fn iptables_restore(input: &str) -> anyhow::Result<()> {
    run("iptables-restore", &["--noflush"], Some(input))
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}\n--- input ---\n{input}"))
}

/// The restore input that removes every chain `ours` claims and every jump
/// from another chain to one, given `iptables-save` output of each table
/// (None when there is nothing to remove).
pub fn cleanup_input(saved: &[(&str, String)], ours: &dyn Fn(&str) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for (table, dump) in saved {
        let mut chains = vec![];
        let mut jumps = vec![];
        for line in dump.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if ours(name) {
                    chains.push(name.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap_or_default();
                let target = rest
                    .split_once(" -j ")
                    .map(|(_, t)| t.split_whitespace().next().unwrap_or_default())
                    .unwrap_or_default();
                if !ours(chain) && ours(target) {
                    jumps.push(format!("-D {rest}"));
                }
            }
        }
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "*{table}");
        for j in &jumps {
            let _ = writeln!(out, "{j}");
        }
        for c in &chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for c in &chains {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    any.then_some(out)
}

/// Removes every chain `ours` claims, and the jumps to them, from `tables`.
pub fn cleanup_rules(tables: &[&str], ours: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let mut saved = vec![];
    for t in tables {
        saved.push((*t, save(t)?));
    }
    if let Some(input) = cleanup_input(&saved, ours) {
        iptables_restore(&input)?;
    }
    Ok(())
}

/// The `jumps` (of `tables`) missing from the current tables.
pub fn missing_jumps(tables: &[&str], jumps: &[Jump]) -> anyhow::Result<Vec<Jump>> {
    Ok(existing(tables, jumps, |_| false)?.missing)
}

/// What of ours an earlier run left in the kernel.
#[derive(Debug, Default, PartialEq)]
struct Existing {
    /// Our chains, as (table, chain).
    chains: BTreeSet<(String, String)>,
    /// The wanted jumps that are missing.
    missing: Vec<Jump>,
    /// Other rules jumping to our chains (an older rule set's), as
    /// (table, `-D ...` line) removing them.
    foreign: Vec<(String, String)>,
}

/// [`Existing`] in `tables`, judged by `ours` and the wanted `jumps`.
fn existing(tables: &[&str], jumps: &[Jump], ours: fn(&str) -> bool) -> anyhow::Result<Existing> {
    let mut dumps = vec![];
    for t in tables {
        dumps.push((t.to_string(), save(t)?));
    }
    Ok(existing_in(&dumps, jumps, ours))
}

/// [`existing`] over `iptables-save` output of each table.
fn existing_in(dumps: &[(String, String)], jumps: &[Jump], ours: fn(&str) -> bool) -> Existing {
    let mut out = Existing::default();
    for (table, dump) in dumps {
        for line in dump.lines() {
            if let Some(name) = line
                .strip_prefix(':')
                .and_then(|r| r.split_whitespace().next())
            {
                if ours(name) {
                    out.chains.insert((table.clone(), name.to_string()));
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                let target = spec
                    .split_once("-j ")
                    .map(|(_, t)| t.split_whitespace().next().unwrap_or_default())
                    .unwrap_or_default();
                let wanted = jumps
                    .iter()
                    .any(|j| j.0 == table && j.1 == chain && j.2 == spec.trim());
                if !ours(chain) && ours(target) && !wanted {
                    out.foreign.push((table.clone(), format!("-D {rest}")));
                }
            }
        }
        for j in jumps.iter().filter(|j| j.0 == table) {
            let line = format!("-A {} {}", j.1, j.2);
            if !dump.lines().any(|l| l.trim() == line) {
                out.missing.push(*j);
            }
        }
    }
    out
}

/// `input` with `deletions` ((table, line)) first in their tables.
fn with_deletions(input: &str, deletions: &[(String, String)]) -> String {
    let mut out = String::new();
    for line in input.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(table) = line.strip_prefix('*') {
            for (_, d) in deletions.iter().filter(|(t, _)| t == table) {
                let _ = writeln!(out, "{d}");
            }
        }
    }
    out
}

/// Writes a kernel setting, logging (not failing) when it cannot.
pub fn write_sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        tracing::warn!("setting {path} = {value}: {e}");
    }
}

/// Change notification of a sync loop: informer handlers mark it dirty, the
/// loop wakes up and times the sync from the first unapplied change.
#[derive(Default)]
pub struct Dirty {
    notify: Notify,
    /// When the first change not yet applied arrived.
    since: Mutex<Option<Instant>>,
}

impl Dirty {
    pub fn new() -> Dirty {
        Dirty::default()
    }

    /// Records a change and wakes the loop.
    pub fn mark(&self) {
        {
            let mut d = self.since.lock().unwrap_or_else(|e| e.into_inner());
            d.get_or_insert_with(Instant::now);
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Instant> {
        self.since.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Puts back the time of a change whose sync failed (keeping the older).
    fn restore(&self, since: Option<Instant>) {
        if let Some(since) = since {
            let mut d = self.since.lock().unwrap_or_else(|e| e.into_inner());
            *d = Some(d.map_or(since, |t| t.min(since)));
        }
    }
}

/// How long a change waits before it is applied: nothing after a quiet
/// spell, the rest of the `window` when the previous pass ended less than
/// `window` ago.
pub fn coalesce_wait(last: Option<Instant>, window: Duration) -> Duration {
    last.map_or(Duration::ZERO, |l| window.saturating_sub(l.elapsed()))
}

/// One pass of a sync loop.
pub struct Pass {
    /// When the first change this pass applies arrived.
    pub since: Option<Instant>,
    /// A periodic full resync (rules re-applied even when unchanged).
    pub full: bool,
    /// When the pass began (after the jumps were checked).
    pub started: Instant,
}

/// The state of a debounced sync loop applying [`Rules`] with
/// `iptables-restore --noflush`.
pub struct Syncer {
    /// Who syncs, for logs ("service proxy").
    what: &'static str,
    /// The tables the jumps live in.
    tables: &'static [&'static str],
    all_jumps: &'static [Jump],
    /// Which chains are ours.
    ours: fn(&str) -> bool,
    /// Rules an earlier run left jumping to our chains, to delete.
    foreign: Vec<(String, String)>,
    debounce: Duration,
    resync: Duration,
    applied: Option<Rules>,
    declared: BTreeSet<(String, String)>,
    /// Jumps to insert with the next restore.
    jumps: Vec<Jump>,
    next_full: Instant,
    failures: u32,
    first: bool,
    /// Read what the kernel holds of ours before the next pass (at first,
    /// and after a failed restore).
    reread: bool,
    /// When the last pass ended: a change within `debounce` of it waits
    /// for the rest of that window (a burst), any later one goes at once.
    last: Option<Instant>,
}

impl Syncer {
    /// The first pass takes over what an earlier run left in the kernel:
    /// it rewrites every chain in one transaction, deleting our chains it
    /// no longer needs, and inserts only the jumps that are missing, so
    /// traffic never meets a half-built rule set across a restart.
    pub fn new(
        what: &'static str,
        tables: &'static [&'static str],
        jumps: &'static [Jump],
        ours: fn(&str) -> bool,
        debounce: Duration,
        resync: Duration,
    ) -> Syncer {
        Syncer {
            what,
            tables,
            all_jumps: jumps,
            ours,
            foreign: vec![],
            debounce,
            resync,
            applied: None,
            declared: BTreeSet::new(),
            jumps: jumps.to_vec(),
            next_full: Instant::now() + resync,
            failures: 0,
            first: true,
            reread: true,
            last: None,
        }
    }

    /// Waits for a change, the next full resync or `stop`; None when
    /// stopping. A change after a quiet spell is applied at once; one
    /// arriving within `debounce` of the previous pass (a burst) waits for
    /// the rest of that window, so the burst lands in one restore. On a
    /// full resync, jumps someone removed are queued to be inserted again.
    pub async fn next(&mut self, dirty: &Dirty, stop: &mut watch::Receiver<bool>) -> Option<Pass> {
        if !self.first {
            let full = tokio::time::sleep_until(self.next_full.into());
            tokio::select! {
                _ = dirty.notify.notified() => {
                    let wait = coalesce_wait(self.last, self.debounce);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                _ = full => {}
                _ = stop.changed() => return None,
            }
        }
        self.first = false;
        if std::mem::take(&mut self.reread) {
            let (tables, all, ours) = (self.tables, self.all_jumps, self.ours);
            match tokio::task::spawn_blocking(move || existing(tables, all, ours)).await {
                Ok(Ok(e)) => {
                    self.declared = e.chains;
                    self.jumps = e.missing;
                    self.foreign = e.foreign;
                }
                Ok(Err(e)) => tracing::warn!("{}: reading rules: {e:#}", self.what),
                Err(_) => {}
            }
        }
        if *stop.borrow() {
            return None;
        }
        let since = dirty.take();
        let full = Instant::now() >= self.next_full;
        if full {
            self.next_full = Instant::now() + self.resync;
            let (tables, all) = (self.tables, self.all_jumps);
            match tokio::task::spawn_blocking(move || missing_jumps(tables, all)).await {
                Ok(Ok(m)) => {
                    for j in m {
                        if !self.jumps.contains(&j) {
                            self.jumps.push(j);
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!("{}: reading rules: {e:#}", self.what),
                Err(_) => {}
            }
        }
        Some(Pass {
            since,
            full,
            started: Instant::now(),
        })
    }

    /// Applies `rules` unless they, and the jumps, are already in place
    /// (always on a full resync). On failure the change stays dirty and the
    /// loop backs off a little before retrying.
    pub async fn apply(&mut self, rules: Rules, pass: &Pass, dirty: &Dirty) {
        self.apply_inner(rules, pass, dirty).await;
        self.last = Some(Instant::now());
    }

    async fn apply_inner(&mut self, rules: Rules, pass: &Pass, dirty: &Dirty) {
        if self.applied.as_ref() == Some(&rules) && self.jumps.is_empty() && !pass.full {
            return;
        }
        let stale: BTreeSet<(String, String)> =
            self.declared.difference(&rules.chains).cloned().collect();
        // A full resync rewrites everything (repairing chains someone
        // else changed); otherwise only the chains that changed.
        let prev = if pass.full {
            None
        } else {
            self.applied.as_ref()
        };
        let input = rules.restore_input_since(prev, &stale, &self.jumps);
        let input = with_deletions(&input, &self.foreign);
        match tokio::task::spawn_blocking(move || iptables_restore(&input)).await {
            Ok(Ok(())) => {
                self.failures = 0;
                self.foreign.clear();
                self.declared = rules.chains.clone();
                self.jumps.clear();
                self.applied = Some(rules);
                let now = Instant::now();
                tracing::debug!(
                    sync_ms = (now - pass.started).as_secs_f64() * 1000.0,
                    since_change_ms = pass.since.map(|s| (now - s).as_secs_f64() * 1000.0),
                    chains = self.declared.len(),
                    "{} rules applied",
                    self.what
                );
            }
            Ok(Err(e)) => {
                self.failures += 1;
                tracing::warn!(
                    "{}: iptables-restore failed (attempt {}): {e:#}",
                    self.what,
                    self.failures
                );
                // Retry soon, with some backoff, still timing from the change,
                // as a full resync: whatever made the restore fail (say,
                // someone removed our chains or jumps), the next attempt
                // reads the kernel's rules again and rewrites every chain.
                self.next_full = Instant::now();
                self.reread = true;
                dirty.restore(pass.since);
                dirty.mark();
                tokio::time::sleep(Duration::from_millis(100 * self.failures.min(50) as u64)).await;
            }
            Err(e) => tracing::warn!("{}: {e}", self.what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_chains_missing_and_foreign_jumps_are_read_from_a_dump() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KOBUNE-A - [0:0]\n:OTHER - [0:0]\n\
                    -A PREROUTING -j KOBUNE-A\n-A OUTPUT -d 10.0.0.1/32 -j KOBUNE-A\n\
                    -A KOBUNE-A -j OTHER\nCOMMIT\n";
        let jumps: &[Jump] = &[
            ("nat", "PREROUTING", "-j KOBUNE-A"),
            ("nat", "POSTROUTING", "-j KOBUNE-A"),
            ("filter", "INPUT", "-j KOBUNE-A"),
        ];
        let e = existing_in(&[("nat".into(), dump.into())], jumps, |c: &str| {
            c.starts_with("KOBUNE-")
        });
        assert_eq!(
            e.chains,
            BTreeSet::from([("nat".to_string(), "KOBUNE-A".to_string())])
        );
        // Tables not dumped are not judged.
        assert_eq!(e.missing, vec![("nat", "POSTROUTING", "-j KOBUNE-A")]);
        let foreign = vec![(
            "nat".to_string(),
            "-D OUTPUT -d 10.0.0.1/32 -j KOBUNE-A".to_string(),
        )];
        assert_eq!(e.foreign, foreign);
        assert_eq!(
            with_deletions("*nat\n:KOBUNE-A - [0:0]\nCOMMIT\n*filter\nCOMMIT\n", &foreign),
            "*nat\n-D OUTPUT -d 10.0.0.1/32 -j KOBUNE-A\n:KOBUNE-A - [0:0]\nCOMMIT\n*filter\nCOMMIT\n"
        );
    }

    #[test]
    fn restore_input_declares_rebuilds_and_deletes_stale() {
        let mut r = Rules {
            nat: "-A KOBUNE-A -j ACCEPT\n".into(),
            ..Default::default()
        };
        r.chains.insert(("nat".into(), "KOBUNE-A".into()));
        let stale = BTreeSet::from([("filter".to_string(), "KOBUNE-OLD".to_string())]);
        let input = r.restore_input(&stale, &[("nat", "OUTPUT", "-j KOBUNE-A")]);
        assert_eq!(
            input,
            "*nat\n:KOBUNE-A - [0:0]\n-A KOBUNE-A -j ACCEPT\n-I OUTPUT 1 -j KOBUNE-A\nCOMMIT\n\
             *filter\n:KOBUNE-OLD - [0:0]\n-X KOBUNE-OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn partial_restores_rewrite_only_changed_chains() {
        let rules = |b: &str| {
            let mut r = Rules {
                nat: format!("-A KOBUNE-TOP -j KOBUNE-A\n-A KOBUNE-A -j RETURN\n{b}"),
                ..Default::default()
            };
            for c in ["KOBUNE-TOP", "KOBUNE-A", "KOBUNE-B", "KOBUNE-E"] {
                r.chains.insert(("nat".into(), c.into()));
            }
            r
        };
        let old = rules("-A KOBUNE-B -j ACCEPT\n");
        let new = rules("-A KOBUNE-B -j DROP\n");
        let input = new.restore_input_since(Some(&old), &BTreeSet::new(), &[]);
        assert_eq!(
            input,
            "*nat\n:KOBUNE-B - [0:0]\n-A KOBUNE-B -j DROP\nCOMMIT\n*filter\nCOMMIT\n"
        );
        // A chain new to the kernel is declared even when empty.
        let mut fewer = old.clone();
        fewer
            .chains
            .remove(&("nat".to_string(), "KOBUNE-E".to_string()));
        let input = old.restore_input_since(Some(&fewer), &BTreeSet::new(), &[]);
        assert_eq!(input, "*nat\n:KOBUNE-E - [0:0]\nCOMMIT\n*filter\nCOMMIT\n");
        // Nothing before: everything, as restore_input.
        assert_eq!(
            new.restore_input_since(None, &BTreeSet::new(), &[]),
            new.restore_input(&BTreeSet::new(), &[])
        );
        assert!(new
            .restore_input(&BTreeSet::new(), &[])
            .contains(":KOBUNE-TOP - [0:0]\n"));
    }

    #[test]
    fn changes_wait_only_right_after_a_pass() {
        let w = Duration::from_millis(10);
        assert_eq!(coalesce_wait(None, w), Duration::ZERO);
        let long_ago = Instant::now() - Duration::from_millis(50);
        assert_eq!(coalesce_wait(Some(long_ago), w), Duration::ZERO);
        let just_now = coalesce_wait(Some(Instant::now()), w);
        assert!(
            just_now > Duration::from_millis(5) && just_now <= w,
            "{just_now:?}"
        );
    }

    #[test]
    fn dirty_keeps_the_oldest_change() {
        let d = Dirty::new();
        assert!(d.take().is_none());
        d.mark();
        let first = d.take().unwrap();
        d.mark();
        d.restore(Some(first));
        assert_eq!(d.take(), Some(first));
    }
}

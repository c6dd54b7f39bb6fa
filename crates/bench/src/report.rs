//! Plain-text and markdown rendering of the results.

use crate::{Args, BackendResult, Idle};
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

const BEGIN: &str = "<!-- kobune-bench:results:begin -->";
const END: &str = "<!-- kobune-bench:results:end -->";
const MIB: f64 = 1024.0;

/// The issue's targets.
const P99_TARGET_MS: f64 = 10.0;
const RSS_TARGET_MIB: f64 = 30.0;

fn f(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Rows of each table, shared by both renderings.
struct Tables {
    creates: Vec<Vec<String>>,
    lists: Vec<Vec<String>>,
    watch: Vec<Vec<String>>,
    idle: Vec<Vec<String>>,
}

const CREATE_HDR: &[&str] = &[
    "backend",
    "clients",
    "creates",
    "kobune creates/s",
    "kobune p50 ms",
    "kobune p99 ms",
    "raw writes/s",
    "raw p50 ms",
    "raw p99 ms",
    "throughput kobune/raw",
    "p99 kobune/raw",
];
const LIST_HDR: &[&str] = &[
    "backend",
    "objects",
    "full list p50 ms",
    "full list p99 ms",
    "full list MiB",
    "limit=500 p50 ms",
    "limit=500 p99 ms",
    "limit=500 items",
];
const WATCH_HDR: &[&str] = &[
    "backend",
    "watchers",
    "events",
    "deliveries",
    "p50 ms",
    "p99 ms",
    "max ms",
    "missing",
    "before response",
];
const IDLE_HDR: &[&str] = &[
    "backend",
    "RSS after startup MiB",
    "RSS after runs MiB",
    "idle CPU after startup",
    "idle CPU after runs",
];

fn cpu(i: &Idle) -> String {
    format!("{:.2}% ({} ticks/{} s)", i.cpu_pct(), i.cpu_ticks, i.secs)
}

fn tables(results: &[BackendResult]) -> Tables {
    let mut t = Tables {
        creates: vec![],
        lists: vec![],
        watch: vec![],
        idle: vec![],
    };
    for r in results {
        for l in &r.levels {
            t.creates.push(vec![
                r.name.clone(),
                l.clients.to_string(),
                l.count.to_string(),
                format!("{:.0}", l.api.rate()),
                f(l.api.pct(50.0)),
                f(l.api.pct(99.0)),
                format!("{:.0}", l.raw.rate()),
                f(l.raw.pct(50.0)),
                f(l.raw.pct(99.0)),
                format!("{:.2}", l.api.rate() / l.raw.rate()),
                format!("{:.2}", l.api.pct(99.0) / l.raw.pct(99.0)),
            ]);
        }
        t.lists.push(vec![
            r.name.clone(),
            r.list_objects.to_string(),
            f(r.list_full.pct(50.0)),
            f(r.list_full.pct(99.0)),
            format!("{:.1}", r.list_full_bytes as f64 / MIB / MIB),
            f(r.list_page.pct(50.0)),
            f(r.list_page.pct(99.0)),
            r.list_page_items.to_string(),
        ]);
        if let Some(w) = &r.watch {
            t.watch.push(vec![
                r.name.clone(),
                w.watchers.to_string(),
                w.events.to_string(),
                w.lat.lat.len().to_string(),
                f(w.lat.pct(50.0)),
                f(w.lat.pct(99.0)),
                f(w.lat.pct(100.0)),
                w.missing.to_string(),
                w.early.to_string(),
            ]);
        }
        t.idle.push(vec![
            r.name.clone(),
            format!("{:.1}", r.idle_start.rss_kib as f64 / MIB),
            format!("{:.1}", r.idle_end.rss_kib as f64 / MIB),
            cpu(&r.idle_start),
            cpu(&r.idle_end),
        ]);
    }
    t
}

pub(crate) fn text_table(out: &mut String, title: &str, hdr: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = hdr.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(out, "\n{title}");
    let _ = writeln!(out, "{}", line(hdr.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

pub(crate) fn md_table(out: &mut String, hdr: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", hdr.join(" | "));
    let _ = writeln!(out, "|{}", "---:|".repeat(hdr.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

/// The targets from the issue, each with a plain verdict.
fn targets(results: &[BackendResult]) -> Vec<String> {
    let verdict = |ok: bool| if ok { "**MET**" } else { "**NOT MET**" };
    let mut out = vec![];
    match results
        .iter()
        .find(|r| r.name == "sqlite")
        .and_then(|r| r.levels.iter().find(|l| l.clients == 128))
    {
        Some(l) => {
            let p99 = l.api.pct(99.0);
            out.push(format!(
                "API create p99 <= {P99_TARGET_MS} ms at 128 clients on the embedded store: measured {} ms — {}",
                f(p99),
                verdict(p99 <= P99_TARGET_MS)
            ));
        }
        None => out.push("API create p99 at 128 clients (sqlite): not measured in this run".into()),
    }
    for r in results {
        for (when, idle) in [
            ("after startup", &r.idle_start),
            ("after the runs", &r.idle_end),
        ] {
            let rss = idle.rss_kib as f64 / MIB;
            out.push(format!(
                "Idle RSS <= {RSS_TARGET_MIB} MiB ({}, {when}): {rss:.1} MiB — {}",
                r.name,
                verdict(rss <= RSS_TARGET_MIB)
            ));
        }
    }
    for r in results {
        let ticks = r.idle_start.cpu_ticks + r.idle_end.cpu_ticks;
        out.push(format!(
            "Zero idle CPU ({}): {} + {} clock ticks (1 tick = {} ms) over two {} s windows — {}",
            r.name,
            r.idle_start.cpu_ticks,
            r.idle_end.cpu_ticks,
            1000 / r.idle_start.tck.max(1),
            r.idle_start.secs,
            verdict(ticks == 0)
        ));
    }
    out
}

pub fn text(results: &[BackendResult]) -> String {
    let t = tables(results);
    let mut out = String::new();
    text_table(
        &mut out,
        "ConfigMap creates (kobune API vs raw backend)",
        CREATE_HDR,
        &t.creates,
    );
    text_table(&mut out, "List latency", LIST_HDR, &t.lists);
    text_table(&mut out, "Watch delivery latency", WATCH_HDR, &t.watch);
    text_table(&mut out, "Idle server process", IDLE_HDR, &t.idle);
    out.push_str("\nTargets\n");
    for line in targets(results) {
        let _ = writeln!(out, "  - {}", line.replace("**", ""));
    }
    out
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown OS".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.1} GiB RAM", kib / MIB / MIB)
        });
    format!("{cores} cores ({cpu}){mem}, {os}, Linux {}", kernel.trim())
}

/// The 1-minute load average, read at the start of the run.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub(crate) fn command() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect();
    format!("cargo run --release -p kobune-bench -- {}", args.join(" "))
}

/// The first lines of a results section: its begin marker and title, the
/// date, the machine (with what else shares its cores), and the command
/// that produced it (after `build`).
pub(crate) fn head(
    out: &mut String,
    begin: &str,
    title: &str,
    started: chrono::DateTime<chrono::Utc>,
    load: &str,
    sharing: &str,
    build: &str,
) {
    let _ = writeln!(out, "{begin}");
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(out, "- Date: {} (UTC)", started.format("%Y-%m-%d %H:%M"));
    let _ = writeln!(
        out,
        "- Machine: {} (1-min load average at start: {load}; {sharing})",
        machine()
    );
    let _ = writeln!(out, "- Command (from the repo root, after `{build}`):\n");
    let _ = writeln!(out, "  ```sh\n  {}\n  ```\n", command());
}

/// What shares the cores with the server in the API benchmarks.
pub(crate) const CLIENT_SHARES: &str = "the benchmark client runs on the same cores";

pub fn markdown(
    load: &str,
    args: &Args,
    results: &[BackendResult],
    started: chrono::DateTime<chrono::Utc>,
    wall: Duration,
) -> String {
    let t = tables(results);
    let mut out = String::new();
    head(
        &mut out,
        BEGIN,
        "Results",
        started,
        load,
        CLIENT_SHARES,
        "cargo build --release -p kobune",
    );
    let _ = writeln!(
        out,
        "- Payload: ConfigMap with {} bytes of data ({} bytes of JSON per create); raw SQLite mode: `{}`; total wall time {:.0} s.\n",
        args.payload_bytes,
        crate::configmap("c128-127-99", args.payload_bytes).len(),
        args.sqlite_raw,
        wall.as_secs_f64()
    );
    let _ = writeln!(out, "### Targets from the issue\n");
    for line in targets(results) {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out, "\n### ConfigMap creates: kobune API vs raw backend\n");
    md_table(&mut out, CREATE_HDR, &t.creates);
    let _ = writeln!(out, "### List latency\n");
    md_table(&mut out, LIST_HDR, &t.lists);
    let _ = writeln!(out, "### Watch delivery latency\n");
    md_table(&mut out, WATCH_HDR, &t.watch);
    let _ = writeln!(out, "### Idle server process\n");
    md_table(&mut out, IDLE_HDR, &t.idle);
    let _ = writeln!(out, "{END}");
    out
}

/// Replaces the marked results section of `path`, or appends one.
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    write_marked(path, BEGIN, END, section)
}

/// Replaces the part of `path` between the `begin` and `end` markers
/// (which `section` carries itself), or appends `section`.
pub fn write_marked(path: &Path, begin: &str, end: &str, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{}{}",
                &old[..b],
                section.trim_end(),
                &old[e + end.len()..]
            )
        }
        _ => format!("{}\n{}", old.trim_end(), section),
    };
    std::fs::write(path, new)?;
    Ok(())
}

//! What access control costs: ConfigMap creates by the admin (whose
//! `system:masters` group short-circuits authorization) against creates by
//! a service account allowed by a RoleBinding (token verification and RBAC
//! evaluation on every request), and with the audit log on (Metadata for
//! every request; RequestResponse, with both bodies, for every request).
//! Each configuration runs on a fresh SQLite server in the same run; the
//! admin on a server without auditing is the baseline.

use crate::client::Target;
use crate::{api_creates, ensure_namespace, report, start_server, stop_server, Stats};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BEGIN: &str = "<!-- kobune-bench:access:begin -->";
const END: &str = "<!-- kobune-bench:access:end -->";
const NS: &str = "bench";

#[derive(clap::Args, Clone)]
pub struct AccessArgs {
    /// Concurrency levels (clients, each with its own connection).
    #[arg(long, value_delimiter = ',', default_value = "16,128")]
    clients: Vec<usize>,
    /// Creates per configuration, level and round.
    #[arg(long, default_value_t = 5000)]
    creates: usize,
    /// Rounds; each round measures every configuration in turn (starting
    /// with a different one each round), so drifts of the shared machine
    /// hit all of them alike.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bytes of data in each ConfigMap.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Write/replace the results section in this markdown file.
    #[arg(long, num_args = 0..=1, default_missing_value = "BENCHMARKS.md")]
    pub markdown: Option<PathBuf>,
}

/// One measured configuration at one concurrency.
pub struct Row {
    pub config: &'static str,
    pub clients: usize,
    /// Every request's latency, over all rounds.
    pub stats: Stats,
    /// Creates/s of each round.
    pub rates: Vec<f64>,
    /// Creates/s of each round over the baseline's in the same round.
    pub ratios: Vec<f64>,
    /// Audit log bytes written per request, where there is a log.
    pub audit_bytes: Option<f64>,
}

pub struct Results {
    pub creates: usize,
    pub rounds: usize,
    pub rows: Vec<Row>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

const POLICY_ALL_BODIES: &str =
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: RequestResponse\n";

async fn server(kobune: &Path, dir: &Path, extra: &[String]) -> Result<(crate::Proc, Target)> {
    let port = crate::free_port()?;
    let data = dir.join("kobune");
    let mut args = vec!["--disable-agent".to_string()];
    args.extend_from_slice(extra);
    let proc = start_server(
        kobune,
        &data,
        port,
        &args,
        &dir.join("kobune.log"),
        Duration::from_secs(60),
    )
    .await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    Ok((proc, Target::from_data_dir(&data, addr)?))
}

async fn post(t: &Target, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
    let mut c = t.connect().await?;
    let out = c
        .call("POST", path, serde_json::to_vec(&body)?.into())
        .await?;
    Ok(serde_json::from_slice(&out)?)
}

/// A token for ServiceAccount `bench/writer`, bound to `edit` in the
/// namespace, once the server allows it to create ConfigMaps.
async fn writer(admin: &Target) -> Result<Target> {
    post(
        admin,
        &format!("/api/v1/namespaces/{NS}/serviceaccounts"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "writer"}}),
    )
    .await?;
    post(admin, &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings"), serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "writer-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": NS}]}))
    .await?;
    let tr = post(admin, &format!("/api/v1/namespaces/{NS}/serviceaccounts/writer/token"), serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}))
    .await?;
    let mut t = admin.clone();
    t.token = tr
        .pointer("/status/token")
        .and_then(|v| v.as_str())
        .context("TokenRequest answer without a token")?
        .into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(&t, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": NS, "verb": "create", "resource": "configmaps"}}}))
        .await?;
        if r.pointer("/status/allowed") == Some(&serde_json::json!(true)) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("the service account was not allowed to create configmaps within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub async fn run(a: &AccessArgs, kobune: &Path, root: &Path) -> Result<Results> {
    // Three servers, up together: without auditing (the admin and the
    // service account take turns on it), audit at Metadata, audit with bodies.
    let mut servers = vec![];
    for (name, policy) in [
        ("plain", None),
        ("audit-metadata", Some(None)),
        ("audit-bodies", Some(Some(POLICY_ALL_BODIES))),
    ] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("audit.log");
        let mut extra = vec![];
        if let Some(p) = policy {
            extra.extend(["--audit-log-path".to_string(), log.display().to_string()]);
            if let Some(p) = p {
                let f = dir.join("policy.yaml");
                std::fs::write(&f, p)?;
                extra.extend(["--audit-policy-file".to_string(), f.display().to_string()]);
            }
        }
        let (proc, admin) = server(kobune, &dir, &extra).await?;
        ensure_namespace(&admin, NS).await?;
        servers.push((proc, admin, policy.map(|_| log)));
    }
    let sa = writer(&servers[0].1).await?;
    let configs: Vec<(&'static str, &Target, Option<&PathBuf>)> = vec![
        ("admin (system:masters)", &servers[0].1, None),
        ("service account (RBAC: RoleBinding to edit)", &sa, None),
        (
            "admin, audit log at Metadata",
            &servers[1].1,
            servers[1].2.as_ref(),
        ),
        (
            "admin, audit log at RequestResponse",
            &servers[2].1,
            servers[2].2.as_ref(),
        ),
    ];
    let mut rows = vec![];
    for &clients in &a.clients {
        let mut lat: Vec<Vec<Duration>> = vec![vec![]; configs.len()];
        let mut rates: Vec<Vec<f64>> = vec![vec![]; configs.len()];
        let mut elapsed = vec![Duration::ZERO; configs.len()];
        let mut audit: Vec<(u64, usize)> = vec![(0, 0); configs.len()];
        for round in 0..a.rounds {
            for k in 0..configs.len() {
                let i = (k + round) % configs.len();
                let (_, t, log) = configs[i];
                let before = log.map(|l| file_len(l)).unwrap_or(0);
                let prefix = format!("c{i}-{clients}-{round}");
                let st = api_creates(t, NS, &prefix, clients, a.creates, a.payload_bytes).await?;
                if let Some(l) = log {
                    // The writer task may still be appending the last lines.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    audit[i].0 += file_len(l) - before;
                    audit[i].1 += a.creates;
                }
                rates[i].push(st.rate());
                elapsed[i] += st.elapsed;
                lat[i].extend(st.lat);
            }
        }
        for (i, (config, _, log)) in configs.iter().enumerate() {
            let ratios = rates[i].iter().zip(&rates[0]).map(|(r, b)| r / b).collect();
            rows.push(Row {
                config,
                clients,
                stats: Stats::new(std::mem::take(&mut lat[i]), elapsed[i]),
                rates: rates[i].clone(),
                ratios,
                audit_bytes: log.map(|_| audit[i].0 as f64 / audit[i].1.max(1) as f64),
            });
        }
    }
    for (proc, _, _) in servers {
        stop_server(proc).await;
    }
    Ok(Results {
        creates: a.creates,
        rounds: a.rounds,
        rows,
    })
}

fn baseline(r: &Results, clients: usize) -> Option<&Row> {
    r.rows
        .iter()
        .find(|row| row.clients == clients && row.config.starts_with("admin (system:masters)"))
}

fn table_rows(r: &Results) -> Vec<Vec<String>> {
    r.rows
        .iter()
        .map(|row| {
            let base = baseline(r, row.clients);
            let each: Vec<String> = row.rates.iter().map(|x| format!("{x:.0}")).collect();
            vec![
                row.config.to_string(),
                row.clients.to_string(),
                format!("{:.0}", median(&row.rates)),
                each.join(", "),
                format!("{:.2}", row.stats.pct(50.0)),
                format!("{:.1}", row.stats.pct(99.0)),
                format!("{:.2}", median(&row.ratios)),
                base.map(|b| format!("{:.2}", row.stats.pct(99.0) / b.stats.pct(99.0)))
                    .unwrap_or_default(),
                row.audit_bytes
                    .map(|b| format!("{b:.0}"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

const HDR: &[&str] = &[
    "configuration",
    "clients",
    "creates/s",
    "p50 ms",
    "p99 ms",
    "creates/s vs admin",
    "p99 vs admin",
    "audit bytes/request",
];

pub fn text(r: &Results) -> String {
    let mut out = String::new();
    for row in table_rows(r) {
        let _ = writeln!(out, "{}", row.join(" | "));
    }
    out
}

pub fn markdown(
    r: &Results,
    load: &str,
    started: chrono::DateTime<chrono::Utc>,
    wall: Duration,
) -> String {
    let mut out = String::new();
    report::head(
        &mut out,
        BEGIN,
        "Access control results",
        started,
        load,
        report::CLIENT_SHARES,
        "cargo build --release -p kobune -p kobune-bench",
    );
    let _ = writeln!(
        out,
        "- {} ConfigMap creates per configuration, level and round, each client on its own HTTP/2 connection, on three SQLite servers running side by side: one without auditing, where the admin (bearer cluster token, group `system:masters`, allowed before any rule is read) and a ServiceAccount token allowed by a RoleBinding to `edit` (token claims, live-object checks and RBAC rules on every request) take turns, and one each with the audit log at Metadata and at RequestResponse. {} rounds; each round runs every configuration in turn, starting with a different one, so drifts of the shared machine hit all alike. Ratios are against the admin without auditing in the same round, at the same concurrency. Total wall time {:.0} s.\n",
        r.creates,
        r.rounds,
        wall.as_secs_f64()
    );
    report::md_table(&mut out, HDR, &table_rows(r));
    let _ = writeln!(out, "{END}");
    out
}

pub fn write(path: &Path, section: &str) -> Result<()> {
    report::write_marked(path, BEGIN, END, section)
}

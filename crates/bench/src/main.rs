//! `kobune-bench`: measures a real `kobune server` (SQLite and etcd backends)
//! and the raw backend underneath it, in one run. See BENCHMARKS.md.

mod access;
mod client;
mod network;
mod raw;
mod report;
mod workloads;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use client::{Conn, Target};
use http_body_util::BodyExt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Barrier, Notify};

#[derive(Parser, Clone)]
#[command(about = "Benchmark kobune against its raw datastores")]
pub struct Args {
    /// Path to the kobune binary (e.g. target/release/kobune).
    #[arg(long)]
    kobune: PathBuf,
    /// Path to the etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Backends to measure, comma separated: sqlite, etcd.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,etcd")]
    backends: Vec<String>,
    /// Concurrency levels (clients, each with its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    clients: Vec<usize>,
    /// Creates at the 1-client level.
    #[arg(long, default_value_t = 2000)]
    creates_single: usize,
    /// Creates at every level above 1 client.
    #[arg(long, default_value_t = 10000)]
    creates: usize,
    /// Bytes of data in each ConfigMap (and each raw write's value is the same JSON).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Objects in the namespace that is listed.
    #[arg(long, default_value_t = 10000)]
    list_objects: usize,
    /// Number of lists measured (full list, and again with limit=500).
    #[arg(long, default_value_t = 20)]
    lists: usize,
    /// Concurrent watch streams.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Watch streams multiplexed over one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    watchers_per_conn: usize,
    /// Objects created (one at a time) while the watchers are open.
    #[arg(long, default_value_t = 100)]
    watch_events: usize,
    /// Length of each idle-CPU window, seconds.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Raw SQLite baseline: "mutex" = one shared connection, clients take
    /// turns; "conn" = a connection per client with busy_timeout.
    #[arg(long, default_value = "mutex")]
    sqlite_raw: String,
    /// Scratch directory (default: a fresh dir under /tmp).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write/replace the results section in this markdown file.
    #[arg(long, num_args = 0..=1, default_missing_value = "BENCHMARKS.md")]
    markdown: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand, Clone)]
enum Cmd {
    /// Scheduler, memory and Deployment runs on simulated nodes, and pod
    /// startup, scale and rollout on containerd (instead of the default run).
    Workloads(workloads::WorkloadArgs),
    /// Service traffic on containerd: direct vs ClusterIP vs Ingress
    /// throughput and latency, and pod Ready -> ClusterIP traffic time.
    Network(network::NetworkArgs),
    /// What authorization (RBAC) and the audit log cost per create,
    /// against the admin without auditing in the same run.
    Access(access::AccessArgs),
}

/// Latency samples plus wall time for a batch of operations.
#[derive(Default, Clone)]
pub struct Stats {
    pub lat: Vec<Duration>,
    pub elapsed: Duration,
}

impl Stats {
    pub fn new(mut lat: Vec<Duration>, elapsed: Duration) -> Self {
        lat.sort();
        Stats { lat, elapsed }
    }
    pub fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Nearest-rank percentile, in milliseconds.
    pub fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.lat.len() as f64).ceil() as usize;
        self.lat[rank.clamp(1, self.lat.len()) - 1].as_secs_f64() * 1e3
    }
}

pub struct Level {
    pub clients: usize,
    pub count: usize,
    pub api: Stats,
    pub raw: Stats,
}

#[derive(Default)]
pub struct Idle {
    pub rss_kib: u64,
    pub cpu_ticks: u64,
    pub secs: u64,
    pub tck: u64,
}

impl Idle {
    pub fn cpu_pct(&self) -> f64 {
        self.cpu_ticks as f64 / self.tck as f64 / self.secs as f64 * 100.0
    }
}

pub struct WatchResult {
    pub watchers: usize,
    pub events: usize,
    pub lat: Stats,
    pub missing: usize,
    pub early: usize,
}

pub struct BackendResult {
    pub name: String,
    pub levels: Vec<Level>,
    pub list_objects: usize,
    pub list_full: Stats,
    pub list_full_bytes: usize,
    pub list_page: Stats,
    pub list_page_items: usize,
    pub watch: Option<WatchResult>,
    pub idle_start: Idle,
    pub idle_end: Idle,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process we started; killed on drop. For a `kobune server`
/// whose node ran pods, `kobune killall` then stops what it left running
/// (its pods outlive it).
struct Proc {
    child: Child,
    /// The kobune binary and the server's data directory.
    server: Option<(PathBuf, PathBuf)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((kobune, data)) = &self.server {
            if data.join("agent").join("containerd").exists() {
                let out = Command::new(kobune)
                    .args(["killall", "--data-dir"])
                    .arg(data)
                    .output();
                match out {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => eprintln!(
                        "kobune killall --data-dir {}: {}",
                        data.display(),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    Err(e) => eprintln!("running kobune killall: {e}"),
                }
            }
        }
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Proc> {
    let f = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    Ok(Proc {
        child,
        server: None,
    })
}

/// Starts `kobune server` with its data in `data`, serving on
/// 127.0.0.1:`port`, with `extra` flags; waits until it logs that it is
/// ready (fails if it exits first or `timeout` passes).
async fn start_server(
    kobune: &Path,
    data: &Path,
    port: u16,
    extra: &[String],
    log: &Path,
    timeout: Duration,
) -> Result<Proc> {
    let mut cmd = Command::new(kobune);
    if std::env::var_os("KOBUNE_LOG").is_none() {
        // The scheduler logs its average cycle time every 1,000 cycles.
        cmd.env("KOBUNE_LOG", "info,kobune_scheduler=debug");
    }
    cmd.arg("server")
        .arg("--data-dir")
        .arg(data)
        .args(["--bind-address", "127.0.0.1"])
        .args(["--https-listen-port", &port.to_string()])
        .args(extra);
    let mut proc = spawn_logged(cmd, log)?;
    proc.server = Some((kobune.to_path_buf(), data.to_path_buf()));
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("kobune server ready") {
            return Ok(proc);
        }
        if let Some(st) = proc.child.try_wait()? {
            bail!("kobune exited ({st}); see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!("kobune did not become ready; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL after 30 s; then `kobune killall` (see [`Proc`]).
async fn stop_server(mut p: Proc) {
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_etcd(args: &Args, dir: &Path) -> Result<(Proc, String)> {
    std::fs::create_dir_all(dir)?;
    let (cp, pp) = (free_port()?, free_port()?);
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let mut cmd = Command::new(&args.etcd);
    cmd.arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(["--heartbeat-interval=10", "--election-timeout=100"])
        .args(["--logger=zap", "--log-outputs=stderr"]);
    let proc = spawn_logged(cmd, &dir.join("etcd.log"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([client.as_str()], None).await {
            if c.status().await.is_ok() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "etcd did not become ready; see {}",
                dir.join("etcd.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((proc, client))
}

async fn start_kobune(args: &Args, dir: &Path, endpoint: Option<&str>) -> Result<(Proc, Target)> {
    let port = free_port()?;
    let data = dir.join("kobune");
    let mut extra = vec!["--disable-agent".to_string()];
    if let Some(ep) = endpoint {
        extra.extend(["--datastore-endpoint".to_string(), ep.to_string()]);
    }
    let log = dir.join("kobune.log");
    let proc = start_server(
        &args.kobune,
        &data,
        port,
        &extra,
        &log,
        Duration::from_secs(60),
    )
    .await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    Ok((proc, Target::from_data_dir(&data, addr)?))
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS for {pid}")
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("bad stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Waits 2 s to settle, reads RSS, then measures CPU over `secs` of idleness.
async fn idle(pid: u32, secs: u64) -> Result<Idle> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(pid)?;
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let t1 = cpu_ticks(pid)?;
    Ok(Idle {
        rss_kib: rss,
        cpu_ticks: t1 - t0,
        secs,
        tck: clk_tck(),
    })
}

pub fn configmap(name: &str, payload: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "kobune-bench"}},
        "data": {"payload": "x".repeat(payload)},
    }))
    .expect("json")
}

async fn ensure_namespace(t: &Target, ns: &str) -> Result<()> {
    let mut c = t.connect().await?;
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
    }))?;
    let resp = c.send("POST", "/api/v1/namespaces", body.into()).await?;
    let st = resp.status();
    let _ = resp.into_body().collect().await;
    if !st.is_success() && st.as_u16() != 409 {
        bail!("creating namespace {ns}: {st}");
    }
    Ok(())
}

/// Splits `total` operations over `clients` workers.
pub fn share(total: usize, clients: usize, i: usize) -> usize {
    total / clients + usize::from(i < total % clients)
}

/// `count` ConfigMap creates from `clients` clients, each on its own connection.
async fn api_creates(
    t: &Target,
    ns: &str,
    prefix: &str,
    clients: usize,
    count: usize,
    payload: usize,
) -> Result<Stats> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(t.connect().await?);
    }
    let path: Arc<str> = format!("/api/v1/namespaces/{ns}/configmaps").into();
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let n = share(count, clients, i);
        let bodies: Vec<Bytes> = (0..n)
            .map(|j| configmap(&format!("{prefix}-{i}-{j}"), payload).into())
            .collect();
        let (path, barrier) = (path.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(n);
            for body in bodies {
                let t0 = Instant::now();
                conn.call("POST", &path, body).await?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(count);
    for task in tasks {
        lat.extend(task.await??);
    }
    Ok(Stats::new(lat, start.elapsed()))
}

async fn lists(conn: &mut Conn, path: &str, n: usize) -> Result<(Stats, Bytes)> {
    let mut lat = Vec::with_capacity(n);
    let mut last = Bytes::new();
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        last = conn.call("GET", path, Bytes::new()).await?;
        lat.push(t0.elapsed());
    }
    Ok((Stats::new(lat, start.elapsed()), last))
}

fn count_items(body: &[u8]) -> Result<usize> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    Ok(v["items"].as_array().map_or(0, |a| a.len()))
}

/// Parses `wev-<digits>` out of a watch event line.
fn event_index(line: &[u8]) -> Option<usize> {
    let pos = line.windows(4).position(|w| w == b"wev-")?;
    let digits: Vec<u8> = line[pos + 4..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn watch_bench(t: &Target, args: &Args) -> Result<WatchResult> {
    let ns = "bench-watch";
    ensure_namespace(t, ns).await?;
    let (w, events) = (args.watchers, args.watch_events);
    let counters: Arc<Vec<AtomicUsize>> =
        Arc::new((0..events).map(|_| AtomicUsize::new(0)).collect());
    let notify = Arc::new(Notify::new());
    let ready = Arc::new(AtomicUsize::new(0));
    let nconns = w.div_ceil(args.watchers_per_conn.max(1));
    let mut conns = Vec::new();
    for _ in 0..nconns {
        conns.push(t.connect().await?);
    }
    let path = format!("/api/v1/namespaces/{ns}/configmaps?watch=1");
    let mut tasks = Vec::new();
    for i in 0..w {
        let mut conn = conns[i % nconns].clone();
        let (path, counters, notify, ready) = (
            path.clone(),
            counters.clone(),
            notify.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let resp = conn.send("GET", &path, Bytes::new()).await?;
            if !resp.status().is_success() {
                bail!("watch: {}", resp.status());
            }
            ready.fetch_add(1, Ordering::SeqCst);
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            let mut got: Vec<(usize, Instant)> = Vec::with_capacity(events);
            while got.len() < events {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let frame = frame?;
                let now = Instant::now();
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    if let Some(idx) = event_index(&buf[..nl]) {
                        if idx < events {
                            got.push((idx, now));
                            if counters[idx].fetch_add(1, Ordering::SeqCst) + 1 == w {
                                notify.notify_waiters();
                            }
                        }
                    }
                    buf.drain(..=nl);
                }
            }
            anyhow::Ok(got)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::SeqCst) < w {
        if Instant::now() > deadline {
            bail!(
                "only {} of {w} watches opened",
                ready.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut creator = t.connect().await?;
    let cpath = format!("/api/v1/namespaces/{ns}/configmaps");
    let mut sent = Vec::with_capacity(events);
    for i in 0..events {
        let body: Bytes = configmap(&format!("wev-{i}"), args.payload_bytes).into();
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        creator.call("POST", &cpath, body).await?;
        let at = Instant::now();
        sent.push(at);
        let until = at + Duration::from_secs(10);
        while counters[i].load(Ordering::SeqCst) < w {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if tokio::time::timeout(until - now, notified.as_mut())
                .await
                .is_ok()
            {
                notified.set(notify.notified());
                notified.as_mut().enable();
            }
        }
    }
    let mut lat = Vec::with_capacity(w * events);
    let mut early = 0;
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(got))) => {
                for (idx, at) in got {
                    if at < sent[idx] {
                        early += 1;
                    }
                    lat.push(at.saturating_duration_since(sent[idx]));
                }
            }
            Ok(Ok(Err(e))) => eprintln!("watcher failed: {e:#}"),
            _ => {}
        }
    }
    drop(conns);
    let missing = w * events - lat.len();
    Ok(WatchResult {
        watchers: w,
        events,
        lat: Stats::new(lat, Duration::ZERO),
        missing,
        early,
    })
}

async fn run_backend(args: &Args, name: &str, root: &Path) -> Result<BackendResult> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    // The raw etcd baseline gets its own etcd (same flags, same disk): writes
    // from another client would advance the revision kobune waits for.
    let (etcd, endpoint, raw_etcd, raw_endpoint) = match name {
        "sqlite" => (None, None, None, None),
        "etcd" => {
            let (p, ep) = start_etcd(args, &dir.join("kobune-etcd")).await?;
            let (rp, rep) = start_etcd(args, &dir.join("raw-etcd")).await?;
            (Some(p), Some(ep), Some(rp), Some(rep))
        }
        other => bail!("unknown backend {other}"),
    };
    let (server, target) = start_kobune(args, &dir, endpoint.as_deref()).await?;
    let pid = server.child.id();
    eprintln!("[{name}] server ready (pid {pid}); idle window after startup");
    let idle_start = idle(pid, args.idle_secs).await?;

    let mut levels = Vec::new();
    for &clients in &args.clients {
        let count = if clients <= 1 {
            args.creates_single
        } else {
            args.creates
        };
        eprintln!("[{name}] {count} API creates at {clients} clients");
        let api = api_creates(
            &target,
            "default",
            &format!("c{clients}"),
            clients,
            count,
            args.payload_bytes,
        )
        .await?;
        eprintln!("[{name}] {count} raw writes at {clients} clients");
        let raw = match &raw_endpoint {
            None => raw::sqlite(
                &dir.join(format!("raw-c{clients}.db")),
                clients,
                count,
                args.payload_bytes,
                &args.sqlite_raw,
            )?,
            Some(ep) => {
                raw::etcd(
                    ep,
                    clients,
                    count,
                    args.payload_bytes,
                    &format!("c{clients}"),
                )
                .await?
            }
        };
        levels.push(Level {
            clients,
            count,
            api,
            raw,
        });
    }

    eprintln!(
        "[{name}] populating bench-list with {} objects",
        args.list_objects
    );
    ensure_namespace(&target, "bench-list").await?;
    api_creates(
        &target,
        "bench-list",
        "l",
        32,
        args.list_objects,
        args.payload_bytes,
    )
    .await?;
    let mut conn = target.connect().await?;
    let base = "/api/v1/namespaces/bench-list/configmaps";
    eprintln!("[{name}] {} full lists", args.lists);
    let (list_full, body) = lists(&mut conn, base, args.lists).await?;
    let items = count_items(&body)?;
    if items != args.list_objects {
        eprintln!(
            "warning: list returned {items} items, expected {}",
            args.list_objects
        );
    }
    let list_full_bytes = body.len();
    let (list_page, body) = lists(&mut conn, &format!("{base}?limit=500"), args.lists).await?;
    let list_page_items = count_items(&body)?;
    drop(conn);

    let watch = if args.watchers > 0 && args.watch_events > 0 {
        eprintln!(
            "[{name}] {} watchers, {} events",
            args.watchers, args.watch_events
        );
        Some(watch_bench(&target, args).await?)
    } else {
        None
    };
    eprintln!("[{name}] idle window after runs");
    let idle_end = idle(pid, args.idle_secs).await?;
    drop(server);
    drop(etcd);
    drop(raw_etcd);
    Ok(BackendResult {
        name: name.to_string(),
        levels,
        list_objects: args.list_objects,
        list_full,
        list_full_bytes,
        list_page,
        list_page_items,
        watch,
        idle_start,
        idle_end,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("kobune-bench-{}", std::process::id())),
    };
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = chrono::Utc::now();
    let load = report::loadavg();
    let t0 = Instant::now();
    if let Some(Cmd::Network(n)) = &args.cmd {
        let results = rt.block_on(network::run(n, &args.kobune, &root))?;
        let wall = t0.elapsed();
        println!("{}", network::text(&results));
        println!("total wall time: {:.0} s", wall.as_secs_f64());
        if let Some(md) = &n.markdown {
            network::write(md, &network::markdown(&results, &load, started, wall))?;
            eprintln!("wrote network results to {}", md.display());
        }
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&root);
        }
        return Ok(());
    }
    if let Some(Cmd::Access(a)) = &args.cmd {
        let results = rt.block_on(access::run(a, &args.kobune, &root))?;
        let wall = t0.elapsed();
        println!("{}", access::text(&results));
        println!("total wall time: {:.0} s", wall.as_secs_f64());
        if let Some(md) = &a.markdown {
            access::write(md, &access::markdown(&results, &load, started, wall))?;
            eprintln!("wrote access control results to {}", md.display());
        }
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&root);
        }
        return Ok(());
    }
    if let Some(Cmd::Workloads(w)) = &args.cmd {
        let results = rt.block_on(workloads::run(w, &args.kobune, &root))?;
        let wall = t0.elapsed();
        println!("{}", workloads::text(&results));
        println!("total wall time: {:.0} s", wall.as_secs_f64());
        if let Some(md) = &w.markdown {
            workloads::write(md, &workloads::markdown(&results, &load, started, wall))?;
            eprintln!("wrote workload results to {}", md.display());
        }
        if args.work_dir.is_none() && results.errors_empty() {
            let _ = std::fs::remove_dir_all(&root);
        }
        return Ok(());
    }
    let mut results = Vec::new();
    for b in &args.backends {
        results.push(rt.block_on(run_backend(&args, b, &root))?);
    }
    let wall = t0.elapsed();
    let text = report::text(&results);
    println!("{text}");
    println!("total wall time: {:.0} s", wall.as_secs_f64());
    if let Some(md) = &args.markdown {
        let section = report::markdown(&load, &args, &results, started, wall);
        report::write_section(md, &section)?;
        eprintln!("wrote results to {}", md.display());
    }
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

//! `kobune-bench workloads`: scheduler throughput, memory with many pods and
//! Deployment throughput on simulated nodes, and pod startup / scale /
//! rolling-update times on a real containerd node. Every run starts a fresh
//! `kobune server`, drives it over HTTPS and follows pods with a watch.
//! See BENCHMARKS.md ("Workloads").

use crate::client::{Conn, Target};
use crate::report;
use crate::{free_port, rss_kib, share, start_server, stop_server, Proc, Stats};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Barrier, Notify};

const BEGIN: &str = "<!-- kobune-bench:workloads:begin -->";
const END: &str = "<!-- kobune-bench:workloads:end -->";
const MIB: f64 = 1024.0;
const NS: &str = "bench";

#[derive(clap::Args, Clone)]
pub struct WorkloadArgs {
    /// Scenarios, comma separated: sched, rss, deploy, containerd.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sched,rss,deploy,containerd"
    )]
    scenarios: Vec<String>,
    /// Scheduler runs as NODESxPODS (simulated nodes x bare pods).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000x10000,1000x50000,5000x10000,5000x50000"
    )]
    sched: Vec<String>,
    /// Concurrent clients creating pods (each its own HTTP/2 connection).
    #[arg(long, default_value_t = 128)]
    clients: usize,
    /// Memory run: simulated nodes.
    #[arg(long, default_value_t = 1000)]
    rss_nodes: usize,
    /// Memory run: pods (half bare pods, half in 5 Deployments).
    #[arg(long, default_value_t = 100_000)]
    rss_pods: usize,
    /// Deployment run: simulated nodes.
    #[arg(long, default_value_t = 1000)]
    deploy_nodes: usize,
    /// Deployment run: replicas.
    #[arg(long, default_value_t = 10_000)]
    deploy_replicas: usize,
    /// containerd: how many times one pod is started alone.
    #[arg(long, default_value_t = 10)]
    single_runs: usize,
    /// containerd: pods started together.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// containerd: replicas scaled to (from 1) and rolled.
    #[arg(long, default_value_t = 20)]
    replicas: usize,
    /// containerd: held (flock) for the whole containerd scenario, as the
    /// integration tests do, since all node agents share the kobune0 bridge.
    #[arg(long, default_value = "/tmp/kobune-containerd.lock")]
    containerd_lock: PathBuf,
    /// containerd: the node name of the server's agent.
    #[arg(long, default_value = "kobune-bench")]
    node_name: String,
    /// Image of every pod (must be present; pulled never).
    #[arg(long, default_value = "kobune.local/busybox:1")]
    image: String,
    /// Give up waiting for one phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Write/replace the workloads section in this markdown file.
    #[arg(long, num_args = 0..=1, default_missing_value = "BENCHMARKS.md")]
    pub markdown: Option<PathBuf>,
}

// ---------------------------------------------------------------- server

struct Server {
    proc: Option<Proc>,
    target: Target,
    pid: u32,
}

impl Server {
    async fn start(kobune: &Path, dir: &Path, extra: &[String]) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let data = dir.join("kobune");
        let log = dir.join("kobune.log");
        let proc = start_server(kobune, &data, port, extra, &log, Duration::from_secs(300)).await?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let pid = proc.child.id();
        Ok(Server {
            proc: Some(proc),
            target: Target::from_data_dir(&data, addr)?,
            pid,
        })
    }

    async fn stop(mut self) {
        if let Some(p) = self.proc.take() {
            stop_server(p).await;
        }
    }

    fn rss_mib(&self) -> f64 {
        rss_kib(self.pid).unwrap_or(0) as f64 / MIB
    }
}

async fn get_json(c: &mut Conn, path: &str) -> Result<Value> {
    Ok(serde_json::from_slice(
        &c.call("GET", path, Bytes::new()).await?,
    )?)
}

async fn post(c: &mut Conn, path: &str, body: &Value) -> Result<()> {
    c.call("POST", path, serde_json::to_vec(body)?.into())
        .await
        .map(|_| ())
}

async fn create_namespace(t: &Target, ns: &str) -> Result<()> {
    let mut c = t.connect().await?;
    post(
        &mut c,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await
}

/// Waits until the server lists `n` nodes and, when `ready`, all are Ready.
async fn wait_nodes(t: &Target, n: usize, ready: bool, timeout: Duration) -> Result<()> {
    let mut c = t.connect().await?;
    let deadline = Instant::now() + timeout;
    loop {
        let list = get_json(&mut c, "/api/v1/nodes").await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ok = items
            .iter()
            .filter(|node| {
                !ready
                    || node["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        if ok >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ok} of {n} nodes after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- pod watch

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: PodLite,
}

#[derive(Deserialize, Default)]
struct PodLite {
    #[serde(default)]
    metadata: MetaLite,
    #[serde(default)]
    spec: SpecLite,
    #[serde(default)]
    status: StatusLite,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetaLite {
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_version: String,
    #[serde(default)]
    deletion_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpecLite {
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct StatusLite {
    #[serde(default)]
    conditions: Vec<CondLite>,
}

#[derive(Deserialize)]
struct CondLite {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Default)]
struct PodTimes {
    bound_at: Option<Instant>,
    ready_at: Option<Instant>,
    ready: bool,
}

/// What the watch has seen so far; receipt times are the client's clock.
#[derive(Default)]
struct Seen {
    pods: HashMap<String, PodTimes>,
    /// Pods ever seen bound / ever seen Ready.
    bound: usize,
    ready_ever: usize,
    /// Pods currently Ready and not being deleted.
    ready_now: usize,
    /// The first binding seen as it happened, and how many were.
    first_bound: Option<Instant>,
    live_bound: usize,
    last_bound: Option<Instant>,
    last_ready: Option<Instant>,
    events: usize,
    rv: String,
    error: Option<String>,
}

impl Seen {
    fn apply(&mut self, ev: WatchEvent, at: Instant) {
        self.events += 1;
        let p = ev.object;
        if !p.metadata.resource_version.is_empty() {
            self.rv = p.metadata.resource_version;
        }
        if ev.kind == "BOOKMARK" || ev.kind == "ERROR" {
            return;
        }
        if ev.kind == "DELETED" {
            if let Some(old) = self.pods.remove(&p.metadata.name) {
                if old.ready {
                    self.ready_now -= 1;
                }
            }
            return;
        }
        let t = self.pods.entry(p.metadata.name).or_default();
        if t.bound_at.is_none() && p.spec.node_name.is_some_and(|n| !n.is_empty()) {
            t.bound_at = Some(at);
            self.bound += 1;
            self.last_bound = Some(at);
            // Bindings seen happening (not already done in the first listing).
            if ev.kind == "MODIFIED" {
                self.live_bound += 1;
                self.first_bound.get_or_insert(at);
            }
        }
        let ready = p
            .status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True");
        if ready && t.ready_at.is_none() {
            t.ready_at = Some(at);
            self.ready_ever += 1;
            self.last_ready = Some(at);
        }
        let now = ready && p.metadata.deletion_timestamp.is_none();
        if now != t.ready {
            t.ready = now;
            if now {
                self.ready_now += 1;
            } else {
                self.ready_now -= 1;
            }
        }
    }
}

/// A watch on the pods of one namespace, reconnecting from the last
/// resourceVersion if the server ends the stream.
struct PodWatch {
    seen: Arc<Mutex<Seen>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    async fn open(t: &Target, ns: &str) -> Result<PodWatch> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let notify = Arc::new(Notify::new());
        let mut conn = t.connect().await?;
        let base = format!("/api/v1/namespaces/{ns}/pods?watch=1&allowWatchBookmarks=true");
        let resp = conn.send("GET", &base, Bytes::new()).await?;
        if !resp.status().is_success() {
            bail!("watch: {}", resp.status());
        }
        let (s, n) = (seen.clone(), notify.clone());
        let task = tokio::spawn(async move {
            let mut resp = Some(resp);
            loop {
                let r = match resp.take() {
                    Some(r) => r,
                    None => {
                        let rv = s.lock().unwrap().rv.clone();
                        match conn
                            .send("GET", &format!("{base}&resourceVersion={rv}"), Bytes::new())
                            .await
                        {
                            Ok(r) if r.status().is_success() => r,
                            other => {
                                let why = match other {
                                    Ok(r) => format!("watch resume: {}", r.status()),
                                    Err(e) => format!("watch resume: {e:#}"),
                                };
                                s.lock().unwrap().error = Some(why);
                                n.notify_waiters();
                                return;
                            }
                        }
                    }
                };
                let mut body = r.into_body();
                let mut buf: Vec<u8> = Vec::new();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    let at = Instant::now();
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    let mut start = 0;
                    let mut got = false;
                    {
                        let mut st = s.lock().unwrap();
                        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                            let line = &buf[start..start + nl];
                            start += nl + 1;
                            if let Ok(ev) = serde_json::from_slice::<WatchEvent>(line) {
                                st.apply(ev, at);
                                got = true;
                            }
                        }
                    }
                    buf.drain(..start);
                    if got {
                        n.notify_waiters();
                    }
                }
            }
        });
        Ok(PodWatch { seen, notify, task })
    }

    /// Waits until `pred` holds; fails after `timeout`, saying `what`.
    async fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Seen) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.seen.lock().unwrap();
                if pred(&s) {
                    return Ok(());
                }
                if let Some(e) = &s.error {
                    bail!("{what}: {e}");
                }
                if last_report.elapsed() > Duration::from_secs(10) {
                    last_report = Instant::now();
                    eprintln!(
                        "    waiting for {what}: {} bound, {} ready, {} events",
                        s.bound, s.ready_now, s.events
                    );
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let s = self.seen.lock().unwrap();
                bail!(
                    "{what}: timed out after {timeout:?} ({} bound, {} ready)",
                    s.bound,
                    s.ready_now
                );
            }
            let step = (deadline - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

// ---------------------------------------------------------------- creates

fn pod_body(name: &str, image: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": pod_spec(image),
    })
}

fn pod_spec(image: &str) -> Value {
    json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "c",
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["sleep", "3600"],
            "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
        }],
    })
}

fn deployment_body(name: &str, replicas: usize, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod_spec(image),
            },
        },
    })
}

/// Creates the given pods from `clients` clients; returns per-create
/// latencies, the wall time and each pod's send instant.
async fn create_pods(
    t: &Target,
    ns: &str,
    bodies: Vec<(String, Bytes)>,
    clients: usize,
) -> Result<(Stats, Instant, HashMap<String, Instant>)> {
    let clients = clients.clamp(1, bodies.len().max(1));
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(t.connect().await?);
    }
    let path: Arc<str> = format!("/api/v1/namespaces/{ns}/pods").into();
    let barrier = Arc::new(Barrier::new(clients + 1));
    let count = bodies.len();
    let mut it = bodies.into_iter();
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let mine: Vec<(String, Bytes)> = it.by_ref().take(share(count, clients, i)).collect();
        let (path, barrier) = (path.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut out = Vec::with_capacity(mine.len());
            for (name, body) in mine {
                let t0 = Instant::now();
                conn.call("POST", &path, body).await?;
                out.push((name, t0, t0.elapsed()));
            }
            anyhow::Ok(out)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(count);
    let mut sent = HashMap::with_capacity(count);
    for task in tasks {
        for (name, at, l) in task.await?? {
            lat.push(l);
            sent.insert(name, at);
        }
    }
    Ok((Stats::new(lat, start.elapsed()), start, sent))
}

fn bare_pods(prefix: &str, n: usize, image: &str) -> Vec<(String, Bytes)> {
    pods_of(prefix, n, |name| pod_body(name, image, prefix))
}

/// Bare pods as scheduler_perf creates them: its API server runs without
/// the ServiceAccount admission plugin, so they carry no token volume.
fn scheduler_perf_pods(prefix: &str, n: usize, image: &str) -> Vec<(String, Bytes)> {
    pods_of(prefix, n, |name| {
        let mut pod = pod_body(name, image, prefix);
        pod["spec"]["automountServiceAccountToken"] = json!(false);
        pod
    })
}

fn pods_of(prefix: &str, n: usize, body: impl Fn(&str) -> Value) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let bytes = serde_json::to_vec(&body(&name)).expect("json");
            (name, bytes.into())
        })
        .collect()
}

// ---------------------------------------------------------------- simulated

fn sim_args(nodes: usize) -> Vec<String> {
    vec![
        "--disable-agent".into(),
        "--disable-ingress".into(),
        "--simulate-nodes".into(),
        nodes.to_string(),
    ]
}

pub struct SchedRun {
    nodes: usize,
    pods: usize,
    clients: usize,
    creates: Stats,
    /// First create sent → last binding seen.
    bind_span: Duration,
    /// Last create answered → last binding seen.
    bind_lag: Duration,
    /// First create sent → last pod Ready.
    ready_span: Duration,
    rss_mib: f64,
    setup: Duration,
    /// The scheduler's own average cycle time (filter, score, assume), µs.
    cycle_us: Option<u64>,
    /// Backlog: bindings seen happening and first → last of them, of
    /// `pods` pods that were all Pending when the scheduler started.
    backlog: Option<(usize, Duration)>,
}

/// The last `avg_us` the scheduler logged ("scheduling cycles" lines).
fn cycle_us(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("scheduling cycles"))?;
    let v = line.split("avg_us=").nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl SchedRun {
    fn bind_rate(&self) -> f64 {
        self.pods as f64 / self.bind_span.as_secs_f64().max(1e-9)
    }
    fn backlog_rate(&self) -> Option<f64> {
        self.backlog
            .map(|(n, d)| n as f64 / d.as_secs_f64().max(1e-9))
    }
}

async fn sched_run(
    a: &WorkloadArgs,
    kobune: &Path,
    dir: &Path,
    nodes: usize,
    pods: usize,
) -> Result<SchedRun> {
    let timeout = Duration::from_secs(a.timeout_secs);
    let t_setup = Instant::now();
    let server = Server::start(kobune, dir, &sim_args(nodes)).await?;
    wait_nodes(&server.target, nodes, true, timeout).await?;
    let setup = t_setup.elapsed();
    let t = server.target.clone();
    create_namespace(&t, NS).await?;
    let watch = PodWatch::open(&t, NS).await?;
    let bodies = scheduler_perf_pods("p", pods, &a.image);
    eprintln!(
        "  {nodes} nodes up after {:.1} s; creating {pods} pods",
        setup.as_secs_f64()
    );
    let (creates, start, _) = create_pods(&t, NS, bodies, a.clients).await?;
    let created_at = start + creates.elapsed;
    eprintln!("  created at {:.0}/s; waiting for bindings", creates.rate());
    watch
        .until("all bound", timeout, |s| s.bound >= pods)
        .await?;
    watch
        .until("all Ready", timeout, |s| s.ready_ever >= pods)
        .await?;
    let (last_bound, last_ready) = watch.with(|s| (s.last_bound, s.last_ready));
    let last_bound = last_bound.context("no binding seen")?;
    let run = SchedRun {
        nodes,
        pods,
        clients: a.clients,
        creates,
        bind_span: last_bound - start,
        bind_lag: last_bound.saturating_duration_since(created_at),
        ready_span: last_ready.context("no Ready seen")? - start,
        rss_mib: server.rss_mib(),
        setup,
        cycle_us: cycle_us(&dir.join("kobune.log")),
        backlog: None,
    };
    eprintln!(
        "  bound {:.0} pods/s; all Ready after {:.1} s",
        run.bind_rate(),
        run.ready_span.as_secs_f64()
    );
    drop(watch);
    server.stop().await;
    let mut run = run;
    match backlog(a, kobune, &dir.join("backlog"), nodes, pods).await {
        Ok(b) => {
            run.backlog = Some(b);
            eprintln!(
                "  backlog bound {:.0} pods/s",
                run.backlog_rate().unwrap_or(0.0)
            );
        }
        Err(e) => eprintln!("  backlog run failed: {e:#}"),
    }
    Ok(run)
}

/// The scheduler alone, as kube-scheduler's perf suite measures it: a
/// server started with `--disable-scheduler` takes `pods` pods (all stay
/// Pending), then it is restarted on the same data with its scheduler
/// (and the Nodes, but not their simulated kubelets).
/// Returns how many bindings the watch saw happen (pods bound before it
/// was open are not counted) and the time from the first to the last.
async fn backlog(
    a: &WorkloadArgs,
    kobune: &Path,
    dir: &Path,
    nodes: usize,
    pods: usize,
) -> Result<(usize, Duration)> {
    let timeout = Duration::from_secs(a.timeout_secs);
    let mut args = sim_args(nodes);
    args.push("--disable-scheduler".into());
    let server = Server::start(kobune, dir, &args).await?;
    wait_nodes(&server.target, nodes, true, timeout).await?;
    create_namespace(&server.target, NS).await?;
    eprintln!("  backlog: {pods} pods with no scheduler running");
    create_pods(
        &server.target,
        NS,
        scheduler_perf_pods("q", pods, &a.image),
        a.clients,
    )
    .await?;
    server.stop().await;
    // The Nodes stay in the store; without their simulated kubelets the
    // restart is quick (as in kube-scheduler's perf suite, nodes have no
    // kubelet), so the watch is open while the backlog is being bound.
    let args: Vec<String> = vec!["--disable-agent".into(), "--disable-ingress".into()];
    let server = Server::start(kobune, dir, &args).await?;
    let watch = PodWatch::open(&server.target, NS).await?;
    watch
        .until("backlog bound", timeout, |s| s.bound >= pods)
        .await?;
    let (first, last, seen) = watch.with(|s| (s.first_bound, s.last_bound, s.live_bound));
    drop(watch);
    server.stop().await;
    let span = last.context("no binding seen")? - first.context("no binding seen happen")?;
    anyhow::ensure!(
        seen * 2 >= pods,
        "only {seen} of {pods} bindings were seen happening"
    );
    Ok((seen.saturating_sub(1), span))
}

pub struct RssRun {
    nodes: usize,
    pods: usize,
    deployments: usize,
    rss_start_mib: f64,
    rss_loaded_mib: f64,
    rss_settled_mib: f64,
    fill: Duration,
}

async fn rss_run(a: &WorkloadArgs, kobune: &Path, dir: &Path) -> Result<RssRun> {
    let timeout = Duration::from_secs(a.timeout_secs);
    let (nodes, pods) = (a.rss_nodes, a.rss_pods);
    let server = Server::start(kobune, dir, &sim_args(nodes)).await?;
    wait_nodes(&server.target, nodes, true, timeout).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start_mib = server.rss_mib();
    let t = server.target.clone();
    create_namespace(&t, NS).await?;
    let watch = PodWatch::open(&t, NS).await?;
    let deployments = 5;
    let in_deploys = pods / 2;
    let start = Instant::now();
    let mut c = t.connect().await?;
    for i in 0..deployments {
        let n = share(in_deploys, deployments, i);
        post(
            &mut c,
            &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
            &deployment_body(&format!("mem-{i}"), n, &a.image),
        )
        .await?;
    }
    eprintln!(
        "  {deployments} Deployments with {in_deploys} replicas; creating {} bare pods",
        pods - in_deploys
    );
    create_pods(
        &t,
        NS,
        bare_pods("m", pods - in_deploys, &a.image),
        a.clients,
    )
    .await?;
    watch
        .until("all Running and Ready", timeout, |s| s.ready_now >= pods)
        .await?;
    let fill = start.elapsed();
    let rss_loaded_mib = server.rss_mib();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_settled_mib = server.rss_mib();
    drop(watch);
    server.stop().await;
    Ok(RssRun {
        nodes,
        pods,
        deployments,
        rss_start_mib,
        rss_loaded_mib,
        rss_settled_mib,
        fill,
    })
}

pub struct DeployRun {
    nodes: usize,
    replicas: usize,
    /// Deployment created → every replica Ready.
    ready_span: Duration,
    last_bound: Duration,
}

async fn deploy_run(a: &WorkloadArgs, kobune: &Path, dir: &Path) -> Result<DeployRun> {
    let timeout = Duration::from_secs(a.timeout_secs);
    let (nodes, replicas) = (a.deploy_nodes, a.deploy_replicas);
    let server = Server::start(kobune, dir, &sim_args(nodes)).await?;
    wait_nodes(&server.target, nodes, true, timeout).await?;
    let t = server.target.clone();
    create_namespace(&t, NS).await?;
    let watch = PodWatch::open(&t, NS).await?;
    let mut c = t.connect().await?;
    let start = Instant::now();
    post(
        &mut c,
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        &deployment_body("big", replicas, &a.image),
    )
    .await?;
    watch
        .until("all replicas Ready", timeout, |s| s.ready_now >= replicas)
        .await?;
    let (lb, lr) = watch.with(|s| (s.last_bound, s.last_ready));
    let run = DeployRun {
        nodes,
        replicas,
        ready_span: lr.context("no Ready seen")? - start,
        last_bound: lb.context("no binding seen")? - start,
    };
    drop(watch);
    server.stop().await;
    Ok(run)
}

// ---------------------------------------------------------------- containerd

pub struct Latencies {
    what: String,
    pods: usize,
    stats: Stats,
    /// CPU time the node spent per pod (see [`NodeCpu`]).
    cpu_per_pod: Option<Duration>,
}

const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";

/// CPU time the node spends on pods, from cgroup v1 `cpuacct`: the bench
/// moves itself into a group of its own before it starts the server, so the
/// server, containerd, the shims, runc and the CNI plugins are charged
/// there; the containers (runc init, pause, the app) are charged to
/// containerd's `k8s.io` group. The bench's own CPU is left out. Unlike
/// latencies, this hardly depends on what else the machine runs.
struct NodeCpu {
    group: PathBuf,
}

impl NodeCpu {
    /// `None` without cgroup v1 `cpuacct` (or the right to use it).
    fn enter() -> Option<NodeCpu> {
        let root = Path::new(CPUACCT);
        if !root.join("cpuacct.usage").exists() {
            return None;
        }
        let group = root.join(format!("kobune-bench-{}", std::process::id()));
        std::fs::create_dir_all(&group).ok()?;
        let me = NodeCpu { group };
        std::fs::write(
            me.group.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .ok()?;
        Some(me)
    }

    /// CPU used so far by the group and by the containers, minus the bench.
    fn used(&self) -> Option<Duration> {
        let read = |p: &Path| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
        let group = read(&self.group.join("cpuacct.usage"))?;
        let pods = read(&Path::new(CPUACCT).join("k8s.io/cpuacct.usage")).unwrap_or(0);
        Some(Duration::from_nanos(group + pods).saturating_sub(own_cpu()))
    }
}

impl Drop for NodeCpu {
    fn drop(&mut self) {
        let root = Path::new(CPUACCT).join("cgroup.procs");
        let _ = std::fs::write(root, std::process::id().to_string());
        // Fails (and stays) while a leftover process is still inside.
        let _ = std::fs::remove_dir(&self.group);
    }
}

/// This process's CPU time (user + system) from /proc/self/stat.
fn own_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 2).then(|| f[0] + f[1])
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

pub struct ContainerdRun {
    single: Latencies,
    batch: Latencies,
    scale: Duration,
    scale_to: usize,
    rollout: Duration,
    rollout_replicas: usize,
}

async fn delete_all_pods(t: &Target, watch: &PodWatch, timeout: Duration) -> Result<()> {
    let mut c = t.connect().await?;
    c.call(
        "DELETE",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Bytes::new(),
    )
    .await?;
    watch
        .until("pods deleted", timeout, |s| s.pods.is_empty())
        .await
}

/// Starts each pod, waits for Ready, and returns create → Ready latencies
/// and the node's CPU time from the first create to the last Ready.
async fn start_pods(
    t: &Target,
    watch: &PodWatch,
    names: Vec<(String, Bytes)>,
    timeout: Duration,
    cpu: Option<&NodeCpu>,
) -> Result<(Vec<Duration>, Option<Duration>)> {
    let want: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
    let n = names.len();
    let cpu0 = cpu.and_then(NodeCpu::used);
    let (_, _, sent) = create_pods(t, NS, names, n).await?;
    let w = want.clone();
    watch
        .until("pods Ready", timeout, move |s| {
            w.iter()
                .all(|n| s.pods.get(n).is_some_and(|p| p.ready_at.is_some()))
        })
        .await?;
    let used = match (cpu0, cpu.and_then(NodeCpu::used)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let lat = watch.with(|s| {
        want.iter()
            .map(|n| s.pods[n].ready_at.expect("ready") - sent[n])
            .collect()
    });
    Ok((lat, used))
}

async fn deployment_done(c: &mut Conn, name: &str, replicas: usize) -> Result<bool> {
    let d = get_json(
        c,
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"),
    )
    .await?;
    let st = &d["status"];
    let n = |v: &Value| v.as_u64().unwrap_or(0) as usize;
    Ok(
        n(&st["observedGeneration"]) >= n(&d["metadata"]["generation"])
            && n(&st["updatedReplicas"]) == replicas
            && n(&st["replicas"]) == replicas
            && n(&st["availableReplicas"]) == replicas
            && n(&st["readyReplicas"]) == replicas,
    )
}

async fn containerd_run(a: &WorkloadArgs, kobune: &Path, dir: &Path) -> Result<ContainerdRun> {
    let timeout = Duration::from_secs(a.timeout_secs.min(300));
    let extra = vec![
        "--node-name".to_string(),
        a.node_name.clone(),
        "--disable-ingress".into(),
    ];
    let cpu = NodeCpu::enter();
    if cpu.is_none() {
        eprintln!("  (no cgroup v1 cpuacct: node CPU per pod not measured)");
    }
    let server = Server::start(kobune, dir, &extra).await?;
    let result = containerd_steps(a, &server, timeout, cpu.as_ref()).await;
    // Leave nothing running in containerd, whatever happened above.
    if let Ok(w) = PodWatch::open(&server.target, NS).await {
        let mut c = server.target.connect().await?;
        let _ = c
            .call(
                "DELETE",
                &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
                Bytes::new(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = delete_all_pods(&server.target, &w, Duration::from_secs(60)).await;
    }
    server.stop().await;
    drop(cpu);
    result
}

async fn containerd_steps(
    a: &WorkloadArgs,
    server: &Server,
    timeout: Duration,
    cpu: Option<&NodeCpu>,
) -> Result<ContainerdRun> {
    let t = &server.target;
    wait_nodes(t, 1, true, timeout).await?;
    create_namespace(t, NS).await?;
    let watch = PodWatch::open(t, NS).await?;
    // One pod warms the image and the node up; it is not measured.
    start_pods(t, &watch, bare_pods("warm", 1, &a.image), timeout, None).await?;
    delete_all_pods(t, &watch, timeout).await?;

    eprintln!("  {} single pods", a.single_runs);
    let mut lat = vec![];
    let mut single_cpu = Some(Duration::ZERO);
    for i in 0..a.single_runs {
        let (l, used) = start_pods(
            t,
            &watch,
            bare_pods(&format!("one{i}"), 1, &a.image),
            timeout,
            cpu,
        )
        .await?;
        lat.extend(l);
        single_cpu = single_cpu.zip(used).map(|(a, b)| a + b);
        delete_all_pods(t, &watch, timeout).await?;
    }
    let single = Latencies {
        what: "one pod at a time".into(),
        pods: 1,
        stats: Stats::new(lat, Duration::ZERO),
        cpu_per_pod: single_cpu
            .filter(|_| a.single_runs > 0)
            .map(|c| c / a.single_runs as u32),
    };
    eprintln!("  {} pods at once", a.batch);
    let (lat, used) = start_pods(
        t,
        &watch,
        bare_pods("batch", a.batch, &a.image),
        timeout,
        cpu,
    )
    .await?;
    delete_all_pods(t, &watch, timeout).await?;
    let batch = Latencies {
        what: format!("{} pods created together", a.batch),
        pods: a.batch,
        stats: Stats::new(lat, Duration::ZERO),
        cpu_per_pod: used.filter(|_| a.batch > 0).map(|c| c / a.batch as u32),
    };

    eprintln!("  scale 1 -> {}", a.replicas);
    let mut c = t.connect().await?;
    let name = "scale";
    post(
        &mut c,
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        &deployment_body(name, 1, &a.image),
    )
    .await?;
    let deadline = Instant::now() + timeout;
    while !deployment_done(&mut c, name, 1).await? {
        if Instant::now() > deadline {
            bail!("deployment did not get 1 replica");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scale_path = format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}/scale");
    let patch = serde_json::to_vec(&json!({"spec": {"replicas": a.replicas}}))?;
    let start = Instant::now();
    let resp = {
        // What `kubectl scale` sends: a merge patch of the scale subresource.
        let mut req_conn = t.connect().await?;
        req_conn
            .call_with_type(
                "PATCH",
                &scale_path,
                patch.into(),
                "application/merge-patch+json",
            )
            .await
    };
    resp?;
    let n = a.replicas;
    watch
        .until("scaled replicas Ready", timeout, move |s| s.ready_now >= n)
        .await?;
    let scale = start.elapsed();
    while !deployment_done(&mut c, name, a.replicas).await? {
        if Instant::now() > deadline + timeout {
            bail!("deployment status did not catch up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!("  rolling update of {} replicas", a.replicas);
    let patch = serde_json::to_vec(&json!({"spec": {"template": {"metadata": {
        "annotations": {"kobune.bench/rev": "2"}}}}}))?;
    let start = Instant::now();
    c.call_with_type(
        "PATCH",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"),
        patch.into(),
        "application/merge-patch+json",
    )
    .await?;
    let deadline = Instant::now() + timeout;
    loop {
        if deployment_done(&mut c, name, a.replicas).await? {
            break;
        }
        if Instant::now() > deadline {
            bail!("rolling update did not complete");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rollout = start.elapsed();
    drop(watch);
    Ok(ContainerdRun {
        single,
        batch,
        scale,
        scale_to: a.replicas,
        rollout,
        rollout_replicas: a.replicas,
    })
}

// ---------------------------------------------------------------- run + report

#[derive(Default)]
pub struct Results {
    sched: Vec<SchedRun>,
    rss: Option<RssRun>,
    deploy: Option<(DeployRun, Option<usize>)>,
    containerd: Option<ContainerdRun>,
    errors: Vec<String>,
}

impl Results {
    /// True when every scenario ran to the end.
    pub fn errors_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (n, p) = s
        .split_once('x')
        .with_context(|| format!("{s:?}: expected NODESxPODS"))?;
    Ok((n.trim().parse()?, p.trim().parse()?))
}

pub async fn run(a: &WorkloadArgs, kobune: &Path, root: &Path) -> Result<Results> {
    let mut r = Results::default();
    let want = |s: &str| a.scenarios.iter().any(|x| x == s);
    let mut k = 0;
    let mut next_dir = || {
        k += 1;
        root.join(format!("w{k}"))
    };
    if want("sched") {
        for s in &a.sched {
            let (nodes, pods) = parse_size(s)?;
            eprintln!("[sched] {nodes} simulated nodes, {pods} pods");
            match sched_run(a, kobune, &next_dir(), nodes, pods).await {
                Ok(run) => r.sched.push(run),
                Err(e) => r.errors.push(format!("sched {s}: {e:#}")),
            }
        }
    }
    if want("rss") {
        eprintln!("[rss] {} simulated nodes, {} pods", a.rss_nodes, a.rss_pods);
        match rss_run(a, kobune, &next_dir()).await {
            Ok(run) => r.rss = Some(run),
            Err(e) => r.errors.push(format!("rss: {e:#}")),
        }
    }
    if want("deploy") {
        // Baseline: the same number of bare pods on the same number of nodes.
        let mut base = r
            .sched
            .iter()
            .position(|s| s.nodes == a.deploy_nodes && s.pods == a.deploy_replicas);
        if base.is_none() {
            eprintln!("[deploy] baseline: {} bare pods", a.deploy_replicas);
            match sched_run(a, kobune, &next_dir(), a.deploy_nodes, a.deploy_replicas).await {
                Ok(run) => {
                    r.sched.push(run);
                    base = Some(r.sched.len() - 1);
                }
                Err(e) => r.errors.push(format!("deploy baseline: {e:#}")),
            }
        }
        eprintln!(
            "[deploy] {} replicas on {} simulated nodes",
            a.deploy_replicas, a.deploy_nodes
        );
        match deploy_run(a, kobune, &next_dir()).await {
            Ok(run) => r.deploy = Some((run, base)),
            Err(e) => r.errors.push(format!("deploy: {e:#}")),
        }
    }
    if want("containerd") {
        eprintln!(
            "[containerd] waiting for the lock {}",
            a.containerd_lock.display()
        );
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&a.containerd_lock)
            .with_context(|| format!("opening {}", a.containerd_lock.display()))?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
        eprintln!("[containerd] node {}", a.node_name);
        match containerd_run(a, kobune, &next_dir()).await {
            Ok(run) => r.containerd = Some(run),
            Err(e) => r.errors.push(format!("containerd: {e:#}")),
        }
        drop(lock);
    }
    Ok(r)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

struct Tables {
    sched: Vec<Vec<String>>,
    rss: Vec<Vec<String>>,
    deploy: Vec<Vec<String>>,
    startup: Vec<Vec<String>>,
    ops: Vec<Vec<String>>,
}

const SCHED_HDR: &[&str] = &[
    "nodes",
    "pods",
    "clients",
    "creates/s (baseline)",
    "bound pods/s",
    "bound/creates",
    "backlog bound pods/s",
    "last binding after last create s",
    "first create to all Ready s",
    "scheduler cycle us (avg)",
    "RSS at end MiB",
    "node setup s",
];
const RSS_HDR: &[&str] = &[
    "nodes",
    "pods Running",
    "of which in Deployments",
    "fill time s",
    "RSS before pods MiB",
    "RSS all Running MiB",
    "RSS +15 s MiB",
    "KiB per pod",
];
const DEPLOY_HDR: &[&str] = &[
    "nodes",
    "replicas",
    "Deployment create to all Ready s",
    "Ready pods/s",
    "last binding s",
    "baseline: bare pod creates/s",
    "baseline: bare pods to all Ready s",
];
const STARTUP_HDR: &[&str] = &[
    "run",
    "samples",
    "p50 ms",
    "p99 ms",
    "max ms",
    "node CPU ms/pod",
];
const OPS_HDR: &[&str] = &["operation", "replicas", "time s"];

fn tables(r: &Results) -> Tables {
    let mut t = Tables {
        sched: vec![],
        rss: vec![],
        deploy: vec![],
        startup: vec![],
        ops: vec![],
    };
    for s in &r.sched {
        t.sched.push(vec![
            s.nodes.to_string(),
            s.pods.to_string(),
            s.clients.to_string(),
            format!("{:.0}", s.creates.rate()),
            format!("{:.0}", s.bind_rate()),
            format!("{:.2}", s.bind_rate() / s.creates.rate()),
            s.backlog_rate().map_or("-".into(), |r| format!("{r:.0}")),
            secs(s.bind_lag),
            secs(s.ready_span),
            s.cycle_us.map_or("-".into(), |u| u.to_string()),
            format!("{:.0}", s.rss_mib),
            format!("{:.1}", s.setup.as_secs_f64()),
        ]);
    }
    if let Some(m) = &r.rss {
        t.rss.push(vec![
            m.nodes.to_string(),
            m.pods.to_string(),
            format!("{} ({} Deployments)", m.pods / 2, m.deployments),
            format!("{:.0}", m.fill.as_secs_f64()),
            format!("{:.0}", m.rss_start_mib),
            format!("{:.0}", m.rss_loaded_mib),
            format!("{:.0}", m.rss_settled_mib),
            format!(
                "{:.1}",
                (m.rss_loaded_mib - m.rss_start_mib) * MIB / m.pods as f64
            ),
        ]);
    }
    if let Some((d, base)) = &r.deploy {
        let b = base.and_then(|i| r.sched.get(i));
        t.deploy.push(vec![
            d.nodes.to_string(),
            d.replicas.to_string(),
            secs(d.ready_span),
            format!("{:.0}", d.replicas as f64 / d.ready_span.as_secs_f64()),
            secs(d.last_bound),
            b.map_or("-".into(), |b| format!("{:.0}", b.creates.rate())),
            b.map_or("-".into(), |b| secs(b.ready_span)),
        ]);
    }
    if let Some(c) = &r.containerd {
        for l in [&c.single, &c.batch] {
            t.startup.push(vec![
                l.what.clone(),
                l.stats.lat.len().to_string(),
                ms(l.stats.pct(50.0)),
                ms(l.stats.pct(99.0)),
                ms(l.stats.pct(100.0)),
                l.cpu_per_pod
                    .map_or("-".into(), |c| format!("{:.0}", c.as_secs_f64() * 1e3)),
            ]);
            let _ = l.pods;
        }
        t.ops.push(vec![
            format!(
                "scale 1 -> {} (scale subresource patch) to all Ready",
                c.scale_to
            ),
            c.scale_to.to_string(),
            secs(c.scale),
        ]);
        t.ops.push(vec![
            "rolling update (maxSurge 25%) to complete".into(),
            c.rollout_replicas.to_string(),
            secs(c.rollout),
        ]);
    }
    t
}

fn targets(r: &Results) -> Vec<String> {
    let v = |ok: bool| if ok { "**MET**" } else { "**NOT MET**" };
    let mut out = vec![];
    for s in &r.sched {
        let backlog = s.backlog_rate().unwrap_or(0.0);
        out.push(format!(
            "Scheduler >= 5,000 pods/s ({} nodes, {} pods): {:.0} pods/s bound from a backlog; {:.0} pods/s bound while creates arrived at {:.0}/s — {}",
            s.nodes,
            s.pods,
            backlog,
            s.bind_rate(),
            s.creates.rate(),
            v(backlog >= 5000.0)
        ));
    }
    if let Some(c) = &r.containerd {
        for l in [&c.single, &c.batch] {
            let p99 = l.stats.pct(99.0);
            out.push(format!(
                "Pod startup p99 <= 500 ms ({}): {} ms — {}",
                l.what,
                ms(p99),
                v(p99 <= 500.0)
            ));
        }
        out.push(format!(
            "Scale 1 -> {} Ready < 3 s: {} s — {}",
            c.scale_to,
            secs(c.scale),
            v(c.scale.as_secs_f64() < 3.0)
        ));
        out.push(format!(
            "Rolling update of {} replicas < 15 s: {} s — {}",
            c.rollout_replicas,
            secs(c.rollout),
            v(c.rollout.as_secs_f64() < 15.0)
        ));
    }
    out
}

pub fn text(r: &Results) -> String {
    let t = tables(r);
    let mut out = String::new();
    report::text_table(
        &mut out,
        "Scheduler throughput (simulated nodes)",
        SCHED_HDR,
        &t.sched,
    );
    report::text_table(&mut out, "Server memory with many pods", RSS_HDR, &t.rss);
    report::text_table(
        &mut out,
        "Deployment controller throughput",
        DEPLOY_HDR,
        &t.deploy,
    );
    report::text_table(
        &mut out,
        "Pod startup on containerd (create -> Ready)",
        STARTUP_HDR,
        &t.startup,
    );
    report::text_table(&mut out, "Scale and rollout on containerd", OPS_HDR, &t.ops);
    out.push_str("\nTargets\n");
    for l in targets(r) {
        let _ = writeln!(out, "  - {}", l.replace("**", ""));
    }
    for e in &r.errors {
        let _ = writeln!(out, "ERROR: {e}");
    }
    out
}

pub fn markdown(
    r: &Results,
    load: &str,
    started: chrono::DateTime<chrono::Utc>,
    wall: Duration,
) -> String {
    let t = tables(r);
    let mut out = String::new();
    report::head(
        &mut out,
        BEGIN,
        "Workload results",
        started,
        load,
        report::CLIENT_SHARES,
        "cargo build --release -p kobune -p kobune-bench",
    );
    let _ = writeln!(out, "- Total wall time {:.0} s.\n", wall.as_secs_f64());
    let _ = writeln!(out, "### Targets from the issues\n");
    for l in targets(r) {
        let _ = writeln!(out, "- {l}");
    }
    for e in &r.errors {
        let _ = writeln!(out, "- Failed: {e}");
    }
    let _ = writeln!(
        out,
        "\n### Scheduler throughput (bare pods, simulated nodes)\n"
    );
    report::md_table(&mut out, SCHED_HDR, &t.sched);
    let _ = writeln!(out, "### Server memory with many pods\n");
    report::md_table(&mut out, RSS_HDR, &t.rss);
    let _ = writeln!(out, "### Deployment controller throughput\n");
    report::md_table(&mut out, DEPLOY_HDR, &t.deploy);
    let _ = writeln!(
        out,
        "### Pod startup on containerd (create sent to Ready seen)\n"
    );
    report::md_table(&mut out, STARTUP_HDR, &t.startup);
    let _ = writeln!(
        out,
        "Node CPU: user + system time of the server, containerd, shims, runc, CNI plugins and \
         the containers from the first create to the last Ready (cgroup v1 cpuacct), per pod.\n"
    );
    let _ = writeln!(out, "### Scale and rolling update on containerd\n");
    report::md_table(&mut out, OPS_HDR, &t.ops);
    let _ = writeln!(out, "{END}");
    out
}

pub fn write(path: &Path, section: &str) -> Result<()> {
    report::write_marked(path, BEGIN, END, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, name: &str, node: &str, ready: bool) -> WatchEvent {
        let v = json!({"type": kind, "object": {
            "metadata": {"name": name, "resourceVersion": "7"},
            "spec": {"nodeName": node},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn seen_counts_bindings_and_readiness() {
        let mut s = Seen::default();
        let t = Instant::now();
        s.apply(ev("ADDED", "a", "", false), t);
        assert_eq!((s.bound, s.ready_now), (0, 0));
        s.apply(ev("MODIFIED", "a", "n1", false), t);
        s.apply(ev("MODIFIED", "a", "n1", true), t);
        s.apply(ev("MODIFIED", "a", "n1", true), t);
        assert_eq!((s.bound, s.ready_ever, s.ready_now), (1, 1, 1));
        assert_eq!(s.rv, "7");
        s.apply(ev("DELETED", "a", "n1", true), t);
        assert_eq!((s.bound, s.ready_ever, s.ready_now), (1, 1, 0));
        assert!(s.pods.is_empty());
    }

    #[test]
    fn cycle_time_from_log() {
        let dir = std::env::temp_dir().join(format!("kobune-bench-cycle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("kobune.log");
        std::fs::write(
            &log,
            "x DEBUG kobune_scheduler: scheduling cycles cycles=1000 avg_us=120 nodes=5\n\
             x DEBUG kobune_scheduler: scheduling cycles cycles=2000 avg_us=95 nodes=5\n\
             x INFO other\n",
        )
        .unwrap();
        assert_eq!(cycle_us(&log), Some(95));
        std::fs::write(&log, "nothing\n").unwrap();
        assert_eq!(cycle_us(&log), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1000x50000").unwrap(), (1000, 50000));
        assert!(parse_size("1000").is_err());
    }
}

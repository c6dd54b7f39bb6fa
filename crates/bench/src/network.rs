//! `kobune-bench network`: service traffic on a real node. Starts `kobune
//! server` with its node agent (containerd, the kobune0 bridge, the iptables
//! proxy and the Ingress controller), deploys webapp pods behind a ClusterIP
//! Service and an Ingress, and measures with an HTTP/1.1 keep-alive load
//! generator the request rate and latency straight to the pod IPs (the
//! baseline), through the ClusterIP and through the Ingress in the same run.
//! A peer L7 proxy, nginx started by the bench as a plain process with an
//! upstream of the same pod IPs, is measured in the same rounds, so the
//! Ingress is compared with what an established proxy does on the same
//! machine at the same moment. Then it measures how long after a pod is
//! seen Ready the ClusterIP sends it traffic, over repeated scale-ups from
//! zero.

use crate::client::{Conn, Target};
use crate::{free_port, report, rss_kib, start_server, stop_server, Proc, Stats};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const BEGIN: &str = "<!-- kobune-bench:network:begin -->";
const END: &str = "<!-- kobune-bench:network:end -->";
const NS: &str = "bench-net";
const HOST: &str = "bench.kobune.test";
const IMAGE: &str = "kobune.local/webapp:v1";
/// The issue's targets: share of the direct throughput, and the p99 of
/// Ready -> traffic through the ClusterIP.
const INGRESS_TARGET: f64 = 0.80;
const CLUSTERIP_TARGET: f64 = 0.95;
const READY_P99_TARGET_MS: f64 = 100.0;

#[derive(clap::Args, Clone)]
pub struct NetworkArgs {
    /// Web app pods behind the Service.
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Worker threads of each web app pod (its WORKERS).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds measured per path in each round (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Rounds; each round measures every path in turn (direct, ClusterIP,
    /// Ingress), so slow drifts of the shared machine hit all three alike.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Scale-ups (0 -> 1 replica) for the Ready -> traffic latency.
    #[arg(long, default_value_t = 20)]
    scale_ups: usize,
    /// Held (flock) for the whole run, as the integration tests do: node
    /// agents share the kobune0 bridge and host iptables.
    #[arg(long, default_value = "/tmp/kobune-containerd.lock")]
    containerd_lock: PathBuf,
    /// The node name of the server's agent.
    #[arg(long, default_value = "kobune-bench")]
    node_name: String,
    /// The peer L7 proxy measured beside the Ingress: `nginx` (installed
    /// with apt-get when missing) or `none`.
    #[arg(long, value_enum, default_value_t = Peer::Nginx)]
    peer: Peer,
    /// nginx `worker_processes` values, one measured path each.
    #[arg(long, value_delimiter = ',', default_value = "1,auto")]
    nginx_workers: Vec<String>,
    /// Write/replace the network section in this markdown file.
    #[arg(long, num_args = 0..=1, default_missing_value = "BENCHMARKS.md")]
    pub markdown: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Peer {
    Nginx,
    None,
}

/// CPU time (clock ticks) spent while a path was measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    /// The whole machine, busy (everything but idle and iowait).
    pub machine: u64,
    /// The kobune process (API server, proxy, Ingress controller, agent).
    pub kobune: u64,
    /// This process (the load generator).
    pub loadgen: u64,
    /// The peer proxy measured (nginx master and workers), if any.
    pub peer: u64,
    pub tck: u64,
}

impl Cpu {
    fn add(&mut self, o: Cpu) {
        self.machine += o.machine;
        self.kobune += o.kobune;
        self.loadgen += o.loadgen;
        self.peer += o.peer;
        self.tck = o.tck;
    }
}

/// One path over all rounds.
pub struct PathRun {
    pub name: String,
    /// Every latency of every round, and the summed measuring time.
    pub stats: Stats,
    pub errors: u64,
    /// Requests/s of each round.
    pub rounds: Vec<f64>,
    pub cpu: Cpu,
    /// Connections per pod (by the pod that answered a connection's first
    /// request), summed over rounds; meaningful where a connection sticks
    /// to a pod (direct, ClusterIP).
    pub spread: Vec<usize>,
}

impl PathRun {
    /// CPU microseconds per request: (machine, kobune, load generator,
    /// peer proxy).
    pub fn cpu_us(&self) -> (f64, f64, f64, f64) {
        let n = self.stats.lat.len().max(1) as f64;
        let us = |t: u64| t as f64 / self.cpu.tck.max(1) as f64 * 1e6 / n;
        (
            us(self.cpu.machine),
            us(self.cpu.kobune),
            us(self.cpu.loadgen),
            us(self.cpu.peer),
        )
    }

    fn is_peer(&self) -> bool {
        self.name.starts_with(PEER)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub struct Results {
    pub pods: usize,
    pub connections: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub paths: Vec<PathRun>,
    /// Ready seen -> first answer through the ClusterIP, one per scale-up.
    pub ready_to_traffic: Stats,
    /// Scale-ups whose first answer came before the watch event said Ready.
    pub early: usize,
    pub server_rss_mib: f64,
}

impl Results {
    fn path(&self, name: &str) -> Option<&PathRun> {
        self.paths.iter().find(|p| p.name == name)
    }

    /// The median of a path's per-round rates.
    fn rate(&self, name: &str) -> Option<f64> {
        self.path(name).map(|p| median(p.rounds.clone()))
    }

    /// A path's throughput relative to direct: the median over rounds of
    /// the ratio within each round.
    fn ratio(&self, name: &str) -> f64 {
        self.ratio_to(name, DIRECT)
    }

    /// `name`'s throughput relative to `base`'s, the median of the
    /// per-round ratios.
    fn ratio_to(&self, name: &str, base: &str) -> f64 {
        let (Some(p), Some(d)) = (self.path(name), self.path(base)) else {
            return f64::NAN;
        };
        median(p.rounds.iter().zip(&d.rounds).map(|(a, b)| a / b).collect())
    }
}

const DIRECT: &str = "direct to pod IPs";
const INGRESS: &str = "Ingress";
/// The names of the peer proxy's paths start with this.
const PEER: &str = "nginx (peer L7 proxy)";

// ------------------------------------------------------------------ server

struct Server {
    proc: Option<Proc>,
    target: Target,
    pid: u32,
    ingress_port: u16,
    /// The server's work directory (the peer proxy's go beside its data).
    dir: PathBuf,
}

impl Server {
    async fn start(kobune: &Path, dir: &Path, node: &str) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let (port, http, https) = (free_port()?, free_port()?, free_port()?);
        let data = dir.join("kobune");
        let extra: Vec<String> = [
            "--node-name",
            node,
            "--ingress-http-port",
            &http.to_string(),
            "--ingress-https-port",
            &https.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = dir.join("kobune.log");
        let proc =
            start_server(kobune, &data, port, &extra, &log, Duration::from_secs(120)).await?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let pid = proc.child.id();
        Ok(Server {
            proc: Some(proc),
            target: Target::from_data_dir(&data, addr)?,
            pid,
            ingress_port: http,
            dir: dir.to_path_buf(),
        })
    }

    async fn stop(mut self) {
        if let Some(p) = self.proc.take() {
            stop_server(p).await;
        }
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

async fn scale(c: &mut Conn, name: &str, replicas: usize) -> Result<()> {
    c.call_with_type(
        "PATCH",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}/scale"),
        serde_json::to_vec(&json!({"spec": {"replicas": replicas}}))?.into(),
        "application/merge-patch+json",
    )
    .await
    .map(|_| ())
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Deployment of the web app with a readiness probe on /readyz.
fn deployment(name: &str, replicas: usize, workers: usize) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web", "image": IMAGE, "imagePullPolicy": "Never",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [
                            {"name": "WORKERS", "value": workers.to_string()},
                            {"name": "DRAIN_SECONDS", "value": "0"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "http"},
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    })
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    })
}

fn ingress(name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"rules": [{"host": HOST, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]},
    })
}

/// Whether a Pod object has condition Ready=True.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn ready_pod_ips(c: &mut Conn, app: &str) -> Result<Vec<IpAddr>> {
    let list = get_json(
        c,
        &format!("/api/v1/namespaces/{NS}/pods?labelSelector=app%3D{app}"),
    )
    .await?;
    let mut ips = vec![];
    for p in list["items"].as_array().into_iter().flatten() {
        if pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null() {
            if let Some(ip) = p["status"]["podIP"].as_str() {
                ips.push(ip.parse()?);
            }
        }
    }
    Ok(ips)
}

// ------------------------------------------------------------------ load

/// One HTTP/1.1 keep-alive connection.
async fn open(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// GET / on `sender`; Ok (with the body) when the answer is a 200 from
/// the web app.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, host: &str) -> Result<Bytes> {
    let req = hyper::Request::get("/")
        .header("host", host)
        .body(Empty::new())?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != 200 || !body.starts_with(b"webapp ") {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

/// Busy clock ticks of the whole machine (all but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    f.iter().take(8).sum::<u64>() - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0)
}

/// The children of `pid` (nginx's workers), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                return false;
            };
            // Field 4 (ppid) is the second after the command's ')'.
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// CPU ticks of a process and its children (an nginx master and workers).
fn tree_ticks(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(children(pid))
        .filter_map(|p| crate::cpu_ticks(p).ok())
        .sum()
}

fn cpu_now(kobune: Option<u32>, peer: Option<u32>) -> Cpu {
    Cpu {
        machine: machine_busy_ticks(),
        kobune: kobune.and_then(|p| crate::cpu_ticks(p).ok()).unwrap_or(0),
        loadgen: crate::cpu_ticks(std::process::id()).unwrap_or(0),
        peer: peer.map(tree_ticks).unwrap_or(0),
        tck: crate::clk_tck(),
    }
}

/// One load run.
pub struct LoadRun {
    pub stats: Stats,
    pub errors: u64,
    pub cpu: Cpu,
    /// The pod (hostname in the answer) of each connection's first request.
    pub first_pods: Vec<String>,
}

/// `connections` keep-alive connections (connection i to `addrs[i % len]`)
/// sending GET / back to back: one second of warm-up, then `duration`
/// measured. A failed request counts as an error and reopens its connection.
async fn load(
    addrs: &[SocketAddr],
    host: &str,
    connections: usize,
    duration: Duration,
    kobune: Option<u32>,
    peer: Option<u32>,
) -> Result<LoadRun> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for i in 0..connections {
        let addr = addrs[i % addrs.len()];
        let host: Arc<str> = host.into();
        let (measuring, stop, errors) = (measuring.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut first_pod: Option<String> = None;
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() {
                    match open(addr).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let s = sender.as_mut().expect("open");
                let t0 = Instant::now();
                let answer = get(s, &host).await;
                let ok = answer.is_ok();
                if let (None, Ok(body)) = (&first_pod, &answer) {
                    let text = String::from_utf8_lossy(body);
                    first_pod = text.split_whitespace().nth(2).map(str::to_string);
                }
                let counted = measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed);
                if !ok {
                    sender = None;
                    if counted {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else if counted {
                    lat.push(t0.elapsed());
                }
            }
            (lat, first_pod)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    errors.store(0, Ordering::SeqCst);
    measuring.store(true, Ordering::SeqCst);
    let cpu0 = cpu_now(kobune, peer);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::SeqCst);
    let elapsed = start.elapsed();
    let cpu1 = cpu_now(kobune, peer);
    let mut lat = vec![];
    let mut first_pods = vec![];
    for t in tasks {
        let (l, pod) = t.await?;
        lat.extend(l);
        first_pods.extend(pod);
    }
    Ok(LoadRun {
        stats: Stats::new(lat, elapsed),
        errors: errors.load(Ordering::SeqCst),
        cpu: Cpu {
            machine: cpu1.machine.saturating_sub(cpu0.machine),
            kobune: cpu1.kobune.saturating_sub(cpu0.kobune),
            loadgen: cpu1.loadgen.saturating_sub(cpu0.loadgen),
            peer: cpu1.peer.saturating_sub(cpu0.peer),
            tck: cpu1.tck,
        },
        first_pods,
    })
}

// ------------------------------------------------------------------ ready -> traffic

/// Follows a pod watch stream and records when a pod of `app` is first
/// seen Ready; `ready_at` holds that instant (nanoseconds since `epoch`).
async fn watch_ready(
    t: &Target,
    app: &str,
    epoch: Instant,
    ready_at: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut c = t.connect().await?;
    let list = get_json(
        &mut c,
        &format!("/api/v1/namespaces/{NS}/pods?labelSelector=app%3D{app}"),
    )
    .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let resp = c
        .send(
            "GET",
            &format!(
                "/api/v1/namespaces/{NS}/pods?labelSelector=app%3D{app}&watch=1&resourceVersion={rv}"
            ),
            Bytes::new(),
        )
        .await?;
    if !resp.status().is_success() {
        bail!("pod watch: {}", resp.status());
    }
    Ok(tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = vec![];
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if ev["type"] != "DELETED" && pod_ready(&ev["object"]) {
                    let ns = epoch.elapsed().as_nanos() as u64;
                    let _ = ready_at.compare_exchange(0, ns, Ordering::SeqCst, Ordering::SeqCst);
                }
            }
        }
    }))
}

/// One request over a fresh connection (what a new client does).
async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = open(addr).await?;
        get(&mut s, "probe").await
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(_))
    )
}

/// Scales a 0-replica Deployment to 1 `n` times; each time, the time from
/// the watch seeing the pod Ready to the first answer through the ClusterIP.
async fn ready_to_traffic(t: &Target, vip: SocketAddr, n: usize) -> Result<(Stats, usize)> {
    let mut c = t.connect().await?;
    let mut lat = vec![];
    let mut early = 0;
    for i in 0..n {
        if probe(vip).await {
            bail!("the ClusterIP answers before the scale-up");
        }
        let epoch = Instant::now();
        let ready_at = Arc::new(AtomicU64::new(0));
        let watch = watch_ready(t, "flip", epoch, ready_at.clone()).await?;
        scale(&mut c, "flip", 1).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            if probe(vip).await {
                break epoch.elapsed();
            }
            if Instant::now() > deadline {
                bail!("scale-up {i}: no traffic through the ClusterIP within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // The watch event can trail the first answer by a little.
        until("the Ready watch event", Duration::from_secs(10), || {
            let r = ready_at.clone();
            async move { Ok(r.load(Ordering::SeqCst) != 0) }
        })
        .await?;
        watch.abort();
        let ready = Duration::from_nanos(ready_at.load(Ordering::SeqCst));
        match first.checked_sub(ready) {
            Some(d) => lat.push(d),
            None => {
                early += 1;
                lat.push(Duration::ZERO);
            }
        }
        eprintln!(
            "  scale-up {}: Ready -> traffic {:.1} ms",
            i + 1,
            first.saturating_sub(ready).as_secs_f64() * 1e3
        );
        scale(&mut c, "flip", 0).await?;
        until("flip pods gone", Duration::from_secs(60), || {
            let t = t.clone();
            async move {
                let mut c = t.connect().await?;
                let l = get_json(
                    &mut c,
                    &format!("/api/v1/namespaces/{NS}/pods?labelSelector=app%3Dflip"),
                )
                .await?;
                Ok(l["items"].as_array().is_none_or(|a| a.is_empty()))
            }
        })
        .await?;
        until(
            "ClusterIP without endpoints",
            Duration::from_secs(10),
            || async { Ok(!probe(vip).await) },
        )
        .await?;
    }
    Ok((Stats::new(lat, Duration::ZERO), early))
}

// ------------------------------------------------------------------ peer proxy

fn quiet(cmd: &mut std::process::Command) -> bool {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The nginx binary; installs the Debian package first when it is missing.
fn ensure_nginx() -> Result<PathBuf> {
    let installed = || quiet(std::process::Command::new("dpkg").args(["-s", "nginx"]));
    if !installed() {
        eprintln!("[network] nginx (the peer proxy) is not installed: apt-get install -y nginx");
        let status = std::process::Command::new("apt-get")
            .args(["install", "-y", "nginx"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .context("running apt-get")?;
        if !status.success() || !installed() {
            bail!("apt-get install -y nginx failed ({status})");
        }
    }
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("the nginx package is installed but no nginx binary was found"))
}

/// "nginx/1.22.1", as `nginx -v` says.
fn nginx_version() -> String {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let t = String::from_utf8_lossy(&o.stderr).into_owned();
            t.split_whitespace().last().map(str::to_string)
        })
        .unwrap_or_else(|| "nginx".into())
}

/// nginx's configuration: one server on 127.0.0.1:`port` proxying every
/// request to `pods` round robin over kept-alive upstream connections,
/// with the headers the Ingress sets, and nothing written per request.
fn nginx_conf(port: u16, workers: &str, pods: &[SocketAddr]) -> String {
    let mut servers = String::new();
    for p in pods {
        let _ = writeln!(servers, "        server {p};");
    }
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid nginx.pid;
error_log error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    upstream webapp {{
{servers}        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://webapp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Port $server_port;
        }}
    }}
}}
"#
    )
}

/// An nginx the bench started (master in the foreground, `daemon off`).
struct Nginx {
    proc: Option<Proc>,
    pid: u32,
    addr: SocketAddr,
    name: String,
}

impl Nginx {
    async fn start(bin: &Path, dir: &Path, workers: &str, pods: &[SocketAddr]) -> Result<Nginx> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let port = free_port()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(port, workers, pods))?;
        let mut cmd = std::process::Command::new(bin);
        let prefix = format!("{}/", dir.display());
        cmd.args(["-p", &prefix])
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
        let proc = crate::spawn_logged(cmd, &dir.join("nginx.out"))?;
        let pid = proc.child.id();
        let mut n = Nginx {
            proc: Some(proc),
            pid,
            addr: format!("127.0.0.1:{port}").parse()?,
            name: format!("{PEER}, worker_processes {workers}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = open(n.addr).await {
                if get(&mut s, HOST).await.is_ok() {
                    break;
                }
            }
            let exited = n.proc.as_mut().map(|p| p.child.try_wait());
            if let Some(Ok(Some(st))) = exited {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({st}): {}", log.trim());
            }
            if Instant::now() > deadline {
                n.stop().await;
                bail!("nginx did not answer on {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "[network] {} on {} (master {pid}, workers {:?})",
            n.name,
            n.addr,
            children(pid)
        );
        Ok(n)
    }

    /// Fast shutdown (TERM) of the master, which stops its workers; any
    /// worker still there after 10 s is killed.
    async fn stop(mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let workers = children(self.pid);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !matches!(p.child.try_wait(), Ok(Some(_))) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(p);
        for w in workers {
            let comm = std::fs::read_to_string(format!("/proc/{w}/comm")).unwrap_or_default();
            if comm.starts_with("nginx") {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &w.to_string()])
                    .status();
            }
        }
    }
}

// ------------------------------------------------------------------ run

pub async fn run(a: &NetworkArgs, kobune: &Path, root: &Path) -> Result<Results> {
    eprintln!(
        "[network] waiting for the lock {}",
        a.containerd_lock.display()
    );
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&a.containerd_lock)
        .with_context(|| format!("opening {}", a.containerd_lock.display()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
    eprintln!("[network] node {}", a.node_name);
    let server = Server::start(kobune, &root.join("network"), &a.node_name).await?;
    let result = steps(a, &server).await;
    // Leave nothing running in containerd, whatever happened above.
    if let Ok(mut c) = server.target.connect().await {
        let _ = c
            .call("DELETE", &format!("/api/v1/namespaces/{NS}"), Bytes::new())
            .await;
        let _ = until("namespace gone", Duration::from_secs(60), || {
            let t = server.target.clone();
            async move {
                let mut c = t.connect().await?;
                Ok(
                    c.call("GET", &format!("/api/v1/namespaces/{NS}"), Bytes::new())
                        .await
                        .is_err(),
                )
            }
        })
        .await;
    }
    server.stop().await;
    drop(lock);
    result
}

async fn steps(a: &NetworkArgs, server: &Server) -> Result<Results> {
    let t = &server.target;
    let mut c = t.connect().await?;
    until("a Ready node", Duration::from_secs(120), || {
        let t = t.clone();
        async move {
            let mut c = t.connect().await?;
            let nodes = get_json(&mut c, "/api/v1/nodes").await?;
            Ok(nodes["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(pod_ready))
        }
    })
    .await?;
    post(
        &mut c,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await?;
    let base = format!("/apis/apps/v1/namespaces/{NS}/deployments");
    post(&mut c, &base, &deployment("web", a.pods, a.workers)).await?;
    post(&mut c, &base, &deployment("flip", 0, a.workers)).await?;
    for name in ["web", "flip"] {
        post(
            &mut c,
            &format!("/api/v1/namespaces/{NS}/services"),
            &service(name),
        )
        .await?;
    }
    post(
        &mut c,
        &format!("/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses"),
        &ingress("web"),
    )
    .await?;
    eprintln!("[network] waiting for {} Ready pods", a.pods);
    until("web pods Ready", Duration::from_secs(300), || {
        let t = t.clone();
        async move {
            let mut c = t.connect().await?;
            Ok(ready_pod_ips(&mut c, "web").await?.len() == a.pods)
        }
    })
    .await?;
    let pods: Vec<SocketAddr> = ready_pod_ips(&mut c, "web")
        .await?
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 8080))
        .collect();
    let vip = |name: &'static str| {
        let t = t.clone();
        async move {
            let mut c = t.connect().await?;
            let svc = get_json(&mut c, &format!("/api/v1/namespaces/{NS}/services/{name}")).await?;
            let ip: IpAddr = svc["spec"]["clusterIP"]
                .as_str()
                .ok_or_else(|| anyhow!("service {name} has no clusterIP"))?
                .parse()?;
            anyhow::Ok(SocketAddr::new(ip, 80))
        }
    };
    let (web_vip, flip_vip) = (vip("web").await?, vip("flip").await?);
    let ingress: SocketAddr = format!("127.0.0.1:{}", server.ingress_port).parse()?;
    until(
        "ClusterIP and Ingress answering",
        Duration::from_secs(30),
        || async {
            let (mut ok, mut ok2) = (false, false);
            if let Ok(mut s) = open(web_vip).await {
                ok = get(&mut s, "x").await.is_ok();
            }
            if let Ok(mut s) = open(ingress).await {
                ok2 = get(&mut s, HOST).await.is_ok();
            }
            Ok(ok && ok2)
        },
    )
    .await?;

    let duration = Duration::from_secs(a.duration_secs);
    let mut peers: Vec<Nginx> = vec![];
    if a.peer == Peer::Nginx {
        match ensure_nginx() {
            Ok(bin) => {
                for w in &a.nginx_workers {
                    let dir = server.dir.join(format!("nginx-{w}"));
                    match Nginx::start(&bin, &dir, w, &pods).await {
                        Ok(n) => peers.push(n),
                        Err(e) => eprintln!(
                            "[network] nginx with worker_processes {w} did not start, measured without it: {e:#}"
                        ),
                    }
                }
            }
            Err(e) => eprintln!(
                "[network] no peer proxy (nginx) in this run: {e:#}; install the Debian package nginx, or pass --peer none"
            ),
        }
    }
    let mut targets: Vec<(String, Vec<SocketAddr>, &str, Option<u32>)> = vec![
        (DIRECT.into(), pods.clone(), "direct", None),
        ("ClusterIP".into(), vec![web_vip], "clusterip", None),
        (INGRESS.into(), vec![ingress], HOST, None),
    ];
    for n in &peers {
        targets.push((n.name.clone(), vec![n.addr], HOST, Some(n.pid)));
    }
    let measured = rounds(a, server, &targets, duration).await;
    for n in peers {
        n.stop().await;
    }
    let paths = measured?;
    let server_rss_mib = rss_kib(server.pid).unwrap_or(0) as f64 / 1024.0;
    eprintln!(
        "[network] {} scale-ups 0 -> 1 behind a ClusterIP",
        a.scale_ups
    );
    let (ready_to_traffic, early) = ready_to_traffic(t, flip_vip, a.scale_ups).await?;
    Ok(Results {
        pods: a.pods,
        connections: a.connections,
        duration,
        rounds: a.rounds.max(1),
        paths,
        ready_to_traffic,
        early,
        server_rss_mib,
    })
}

/// Every path in turn, `a.rounds` times.
async fn rounds(
    a: &NetworkArgs,
    server: &Server,
    targets: &[(String, Vec<SocketAddr>, &str, Option<u32>)],
    duration: Duration,
) -> Result<Vec<PathRun>> {
    // Pod hostnames in the order of `pods`, for the spread of connections.
    let mut pod_names: Vec<String> = vec![];
    let mut paths: Vec<PathRun> = targets
        .iter()
        .map(|(name, _, _, _)| PathRun {
            name: name.clone(),
            stats: Stats::new(vec![], Duration::ZERO),
            errors: 0,
            rounds: vec![],
            cpu: Cpu::default(),
            spread: vec![],
        })
        .collect();
    let mut lat: Vec<Vec<Duration>> = vec![vec![]; targets.len()];
    let mut elapsed = vec![Duration::ZERO; targets.len()];
    for round in 0..a.rounds.max(1) {
        for (i, (name, addrs, host, peer)) in targets.iter().enumerate() {
            eprintln!(
                "[network] round {}/{}: {name}: {} connections for {} s",
                round + 1,
                a.rounds.max(1),
                a.connections,
                a.duration_secs
            );
            let run = load(
                addrs,
                host,
                a.connections,
                duration,
                Some(server.pid),
                *peer,
            )
            .await?;
            eprintln!(
                "  {:.0} requests/s, {} errors",
                run.stats.rate(),
                run.errors
            );
            let p = &mut paths[i];
            p.rounds.push(run.stats.rate());
            p.errors += run.errors;
            p.cpu.add(run.cpu);
            elapsed[i] += run.stats.elapsed;
            lat[i].extend(run.stats.lat);
            for pod in run.first_pods {
                let k = match pod_names.iter().position(|n| *n == pod) {
                    Some(k) => k,
                    None => {
                        pod_names.push(pod);
                        pod_names.len() - 1
                    }
                };
                if p.spread.len() <= k {
                    p.spread.resize(k + 1, 0);
                }
                p.spread[k] += 1;
            }
        }
    }
    for (i, l) in lat.into_iter().enumerate() {
        paths[i].stats = Stats::new(l, elapsed[i]);
    }
    Ok(paths)
}

// ------------------------------------------------------------------ report

const PATH_HDR: &[&str] = &[
    "path",
    "requests/s (median of rounds)",
    "each round",
    "p50 ms",
    "p99 ms",
    "errors",
    "throughput vs direct",
    "CPU us/request: machine",
    "kobune",
    "nginx",
    "load generator",
    "connections per pod",
];

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn rows(r: &Results) -> Vec<Vec<String>> {
    r.paths
        .iter()
        .map(|p| {
            let (machine, kobune, loadgen, peer) = p.cpu_us();
            let spread = if p.name == INGRESS || p.is_peer() {
                "per request".to_string()
            } else {
                p.spread
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            vec![
                p.name.clone(),
                format!("{:.0}", r.rate(&p.name).unwrap_or(f64::NAN)),
                p.rounds
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                ms(p.stats.pct(50.0)),
                ms(p.stats.pct(99.0)),
                p.errors.to_string(),
                format!("{:.0}%", r.ratio(&p.name) * 100.0),
                format!("{machine:.1}"),
                format!("{kobune:.1}"),
                if p.is_peer() {
                    format!("{peer:.1}")
                } else {
                    "-".into()
                },
                format!("{loadgen:.1}"),
                spread,
            ]
        })
        .collect()
}

/// The Ingress against each peer proxy path: throughput (median of the
/// per-round ratios) and the proxy's own CPU per request.
pub fn peer_lines(r: &Results) -> Vec<String> {
    let Some(ing) = r.path(INGRESS) else {
        return vec![];
    };
    let ing_us = ing.cpu_us().1;
    r.paths
        .iter()
        .filter(|p| p.is_peer())
        .map(|p| {
            let peer_us = p.cpu_us().3;
            format!(
                "kobune Ingress vs {}: {:.0}% of its requests/s ({:.0}% of direct against its {:.0}%); proxy CPU per request: kobune {ing_us:.1} us, nginx {peer_us:.1} us ({:.2}x)",
                p.name,
                r.ratio_to(INGRESS, &p.name) * 100.0,
                r.ratio(INGRESS) * 100.0,
                r.ratio(&p.name) * 100.0,
                ing_us / peer_us,
            )
        })
        .collect()
}

/// The targets, each with a verdict.
pub fn targets(r: &Results) -> Vec<String> {
    let verdict = |ok: bool| if ok { "**MET**" } else { "**NOT MET**" };
    let mut out = vec![];
    for (name, target) in [(INGRESS, INGRESS_TARGET), ("ClusterIP", CLUSTERIP_TARGET)] {
        let ratio = r.ratio(name);
        out.push(format!(
            "{name} throughput >= {:.0}% of direct: {:.0}% {}",
            target * 100.0,
            ratio * 100.0,
            verdict(ratio >= target)
        ));
    }
    let p99 = r.ready_to_traffic.pct(99.0);
    out.push(format!(
        "Pod Ready -> traffic through the ClusterIP p99 <= {READY_P99_TARGET_MS:.0} ms: p50 {} ms, p99 {} ms over {} scale-ups {}",
        ms(r.ready_to_traffic.pct(50.0)),
        ms(p99),
        r.ready_to_traffic.lat.len(),
        verdict(p99 <= READY_P99_TARGET_MS)
    ));
    let errors: u64 = r.paths.iter().map(|p| p.errors).sum();
    out.push(format!("Failed requests under load: {errors}"));
    out
}

pub fn text(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} webapp pods, {} keep-alive connections, {} rounds of {} s per path",
        r.pods,
        r.connections,
        r.rounds,
        r.duration.as_secs()
    );
    let _ = writeln!(out, "{}", PATH_HDR.join(" | "));
    for row in rows(r) {
        let _ = writeln!(out, "{}", row.join(" | "));
    }
    for l in targets(r) {
        let _ = writeln!(out, "  - {}", l.replace("**", ""));
    }
    for l in peer_lines(r) {
        let _ = writeln!(out, "  - {l}");
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
        "Service traffic results",
        started,
        load,
        "the load generator, the pods and kobune share the cores",
        "cargo build --release -p kobune -p kobune-bench",
    );
    let _ = writeln!(
        out,
        "- {} `kobune.local/webapp:v1` pods behind a ClusterIP Service and an Ingress; a Rust (hyper) HTTP/1.1 load generator with {} keep-alive connections (opened once, reused for every request, on every path) sends `GET /` back to back. {} rounds; each round measures direct, ClusterIP, Ingress and the peer proxy's paths in turn for {} s each (after 1 s of warm-up), so drifts of the shared machine hit all of them alike; requests/s is the median of the rounds and \"vs direct\" the median of the per-round ratios. Direct: connection i goes to pod i mod {}. CPU per request is busy CPU time over the measured seconds (machine: all processes and the kernel, from /proc/stat; kobune and the load generator from their /proc/PID/stat) divided by the requests answered; the rest of the machine's share is mostly the web app pods. kobune's RSS after the load: {:.0} MiB. Total wall time {:.0} s.\n",
        r.pods,
        r.connections,
        r.rounds,
        r.duration.as_secs(),
        r.pods,
        r.server_rss_mib,
        wall.as_secs_f64()
    );
    let _ = writeln!(out, "### Targets from the issue\n");
    for l in targets(r) {
        let _ = writeln!(out, "- {l}");
    }
    let peers = peer_lines(r);
    if !peers.is_empty() {
        let _ = writeln!(
            out,
            "\n### The Ingress against a peer L7 proxy\n\n\
             {}, started by the bench as a plain process (`daemon off`, `access_log off`) with an `upstream` of the same pod IPs (`keepalive 64`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, the Ingress's Host and X-Forwarded-* headers), listening on 127.0.0.1 and measured in the same rounds with the same load generator; its CPU is its master's and workers' from /proc.\n",
            nginx_version()
        );
        for l in &peers {
            let _ = writeln!(out, "- {l}");
        }
    }
    let _ = writeln!(out, "\n### Throughput and latency by path\n");
    report::md_table(&mut out, PATH_HDR, &rows(r));
    let _ = writeln!(
        out,
        "### Pod Ready -> first answer through the ClusterIP\n\n\
         A Deployment behind its own ClusterIP is scaled 0 -> 1 {} times. The time runs from the pod watch event with `Ready=True` to the first `GET /` answered over a new connection to the ClusterIP (tried every millisecond); {} of them answered before the watch event arrived (counted as 0 ms).\n",
        r.ready_to_traffic.lat.len(),
        r.early
    );
    report::md_table(
        &mut out,
        &["scale-ups", "p50 ms", "p99 ms", "max ms"],
        &[vec![
            r.ready_to_traffic.lat.len().to_string(),
            ms(r.ready_to_traffic.pct(50.0)),
            ms(r.ready_to_traffic.pct(99.0)),
            ms(r.ready_to_traffic.pct(100.0)),
        ]],
    );
    let _ = writeln!(out, "{END}");
    out
}

pub fn write(path: &Path, section: &str) -> Result<()> {
    report::write_marked(path, BEGIN, END, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ms: &[u64], secs: u64) -> Stats {
        Stats::new(
            ms.iter().map(|m| Duration::from_millis(*m)).collect(),
            Duration::from_secs(secs),
        )
    }

    fn results(direct: usize, cip: usize, ing: usize) -> Results {
        let run = |name: &str, n| PathRun {
            name: name.to_string(),
            stats: stats(&vec![1; n], 1),
            errors: 0,
            rounds: vec![n as f64],
            cpu: Cpu {
                machine: 200,
                kobune: 50,
                loadgen: 100,
                peer: 40,
                tck: 100,
            },
            spread: vec![1, 3],
        };
        Results {
            pods: 2,
            connections: 4,
            duration: Duration::from_secs(1),
            rounds: 1,
            paths: vec![
                run("direct to pod IPs", direct),
                run("ClusterIP", cip),
                run("Ingress", ing),
            ],
            ready_to_traffic: stats(&[10, 20, 150], 0),
            early: 0,
            server_rss_mib: 50.0,
        }
    }

    #[test]
    fn targets_compare_with_the_direct_baseline() {
        let t = targets(&results(100, 96, 79));
        assert!(
            t[0].starts_with("Ingress") && t[0].contains("79%") && t[0].ends_with("**NOT MET**"),
            "{t:?}"
        );
        assert!(
            t[1].starts_with("ClusterIP") && t[1].contains("96%") && t[1].ends_with("**MET**"),
            "{t:?}"
        );
        assert!(
            t[2].contains("p99 150 ms") && t[2].ends_with("**NOT MET**"),
            "{t:?}"
        );
        let t = targets(&results(100, 95, 80));
        assert!(
            t[0].ends_with(" **MET**") && t[1].ends_with(" **MET**"),
            "{t:?}"
        );
    }

    #[test]
    fn markdown_section_is_marked_and_replaces_itself() {
        let md = markdown(
            &results(100, 100, 90),
            "0.5",
            chrono::Utc::now(),
            Duration::from_secs(3),
        );
        assert!(md.starts_with(BEGIN) && md.trim_end().ends_with(END));
        // 2 s of machine CPU over 90 requests: 22222 us each.
        assert!(
            md.contains("| Ingress | 90 | 90 | 1.00 | 1.00 | 0 | 90% | 22222.2 | 5555.6 | - | 11111.1 | per request |"),
            "{md}"
        );
        assert!(md.contains("| ClusterIP | 100 | 100 |"), "{md}");
        assert!(md.contains("| 1/3 |"), "{md}");
        let dir = std::env::temp_dir().join(format!("kobune-bench-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("B.md");
        std::fs::write(&f, "# B\n\nintro\n").unwrap();
        write(&f, &md).unwrap();
        write(&f, &md).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.matches(BEGIN).count(), 1);
        assert!(text.starts_with("# B\n\nintro\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_peer_proxy_is_compared_with_the_ingress() {
        let mut r = results(100, 100, 45);
        assert!(peer_lines(&r).is_empty());
        let mut peer = results(100, 100, 50).paths.remove(2);
        peer.name = format!("{PEER}, worker_processes 1");
        r.paths.push(peer);
        let lines = peer_lines(&r);
        assert_eq!(lines.len(), 1, "{lines:?}");
        // 45 vs 50 requests/s; kobune 50 ticks over 45 requests, nginx 40 over 50.
        assert!(
            lines[0].contains(
                "worker_processes 1: 90% of its requests/s (45% of direct against its 50%)"
            ) && lines[0].contains("kobune 11111.1 us, nginx 8000.0 us (1.39x)"),
            "{lines:?}"
        );
        let md = markdown(&r, "0.5", chrono::Utc::now(), Duration::from_secs(3));
        assert!(
            md.contains("### The Ingress against a peer L7 proxy"),
            "{md}"
        );
        assert!(
            md.contains(&format!(
                "| {PEER}, worker_processes 1 | 50 | 50 | 1.00 | 1.00 | 0 | 50% | 40000.0 | 10000.0 | 8000.0 | 20000.0 | per request |"
            )),
            "{md}"
        );
    }

    #[test]
    fn nginx_configuration() {
        let pods: Vec<SocketAddr> = vec![
            "10.42.0.5:8080".parse().unwrap(),
            "10.42.0.6:8080".parse().unwrap(),
        ];
        let c = nginx_conf(4321, "auto", &pods);
        for want in [
            "daemon off;",
            "worker_processes auto;",
            "access_log off;",
            "server 10.42.0.5:8080;\n        server 10.42.0.6:8080;",
            "keepalive 64;",
            "listen 127.0.0.1:4321;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "pid nginx.pid;",
        ] {
            assert!(c.contains(want), "{want} in {c}");
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn ratios_are_medians_of_rounds() {
        let mut r = results(100, 90, 50);
        r.paths[0].rounds = vec![100.0, 200.0, 100.0];
        r.paths[1].rounds = vec![90.0, 100.0, 99.0];
        // Per round 0.90, 0.50, 0.99: the median is 0.90, although the
        // medians of the rates alone (99 / 100) would say 0.99.
        assert!((r.ratio("ClusterIP") - 0.90).abs() < 1e-9);
        assert_eq!(r.rate("ClusterIP"), Some(99.0));
        assert_eq!(median(vec![1.0, 3.0]), 2.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn readiness_from_conditions() {
        assert!(pod_ready(
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        ));
        assert!(!pod_ready(
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        ));
        assert!(!pod_ready(&json!({"status": {}})));
    }

    /// A minimal keep-alive web app on 127.0.0.1 answering "webapp v1 test".
    async fn webapp() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        have.extend_from_slice(&buf[..n]);
                        while let Some(p) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..p + 4);
                            let body = "webapp v1 test\n";
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// The load generator against a local HTTP/1.1 server: every request
    /// answered, none failed, latencies recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_generator_counts_requests() {
        let addr = webapp().await;
        let run = load(&[addr], "x", 3, Duration::from_millis(300), None, None)
            .await
            .unwrap();
        assert_eq!(run.errors, 0);
        assert!(run.stats.lat.len() > 30, "{}", run.stats.lat.len());
        assert!(run.stats.rate() > 100.0);
        assert_eq!(run.first_pods, vec!["test".to_string(); 3]);
        assert!(run.cpu.tck > 0);
        // Nothing listening: every attempt is an error, nothing measured.
        let dead: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let run = load(&[dead], "x", 1, Duration::from_millis(200), None, None)
            .await
            .unwrap();
        assert!(run.stats.lat.is_empty() && run.errors > 0);
    }

    /// nginx as the bench starts it, in front of two local web apps: it
    /// answers through its upstream, its CPU is counted, and stopping it
    /// leaves no master or worker behind. Needs the nginx package (the
    /// bench installs it; this test does not).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nginx_peer_proxies_and_stops() {
        let Some(bin) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        else {
            eprintln!("nginx is not installed: skipped");
            return;
        };
        let pods = vec![webapp().await, webapp().await];
        let dir = std::env::temp_dir().join(format!("kobune-bench-nginx-{}", std::process::id()));
        let n = Nginx::start(&bin, &dir, "2", &pods).await.unwrap();
        let (pid, addr) = (n.pid, n.addr);
        let workers = children(pid);
        assert_eq!(workers.len(), 2, "{workers:?}");
        let run = load(
            &[addr],
            HOST,
            4,
            Duration::from_millis(500),
            None,
            Some(pid),
        )
        .await
        .unwrap();
        assert_eq!(run.errors, 0);
        assert!(run.stats.lat.len() > 50, "{}", run.stats.lat.len());
        assert!(run.cpu.peer > 0, "{:?}", run.cpu);
        n.stop().await;
        for p in std::iter::once(pid).chain(workers) {
            assert!(
                !Path::new(&format!("/proc/{p}")).exists(),
                "nginx process {p} is still there"
            );
        }
        assert!(TcpStream::connect(addr).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

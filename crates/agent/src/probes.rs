//! Container probes and lifecycle hooks, as the kubelet runs them.
//!
//! Each running pod with probes gets one prober task ([`Prober`]). The pod
//! worker tells it which container instance is current ([`Target`]); the
//! prober runs startup, liveness and readiness probes (httpGet, tcpSocket,
//! exec over CRI ExecSync, gRPC health checks with tonic) on their
//! schedules and publishes per-container results and Unhealthy events in
//! [`ProbeShared`], waking the worker only when something changed. The
//! worker turns results into `started`/`ready` and the pod's Ready
//! conditions, and restarts containers whose liveness or startup probe
//! failed.

use kobune_cri::Cri;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const TICK: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The container instance a prober should probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub container_id: String,
    pub started: Instant,
    /// (started, ready) as last reported, for an instance that ran before
    /// this agent started: its probes resume from there.
    pub resumed: Option<(bool, bool)>,
}

/// What the probes found about one container instance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProbeResult {
    pub container_id: String,
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// The readiness probe's current result (true if there is none and the
    /// container started).
    pub ready: bool,
    /// `Some("liveness")`/`Some("startup")`: the probe failed
    /// failureThreshold times; the container must be restarted.
    pub kill: Option<String>,
    /// The last failure message of the probe that asked for the kill.
    pub kill_message: String,
}

/// An event a probe wants recorded: (container, type, reason, message).
pub type ProbeEvent = (String, String, String, String);

/// State shared between a pod worker and its prober.
#[derive(Debug, Default)]
pub struct ProbeShared {
    pub targets: HashMap<String, Target>,
    pub results: HashMap<String, ProbeResult>,
    pub events: Vec<ProbeEvent>,
    pub pod_ip: String,
}

/// A pod's prober task; aborted when dropped.
pub struct Prober {
    pub shared: Arc<Mutex<ProbeShared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether any container of the pod has a probe.
pub fn has_probes(pod: &Value) -> bool {
    app_containers(pod).any(|c| {
        ["startupProbe", "livenessProbe", "readinessProbe"]
            .iter()
            .any(|k| c.get(*k).is_some_and(Value::is_object))
    })
}

fn app_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

impl Prober {
    /// Starts probing the containers of `pod`; `wake` is notified whenever
    /// results or events change.
    pub fn start(cri: Cri, pod: Value, pod_ip: String, wake: Arc<Notify>) -> Prober {
        let shared = Arc::new(Mutex::new(ProbeShared {
            pod_ip,
            ..Default::default()
        }));
        let s = shared.clone();
        let task = tokio::spawn(async move { run(cri, pod, s, wake).await });
        Prober { shared, task }
    }

    pub fn set_target(&self, container: &str, container_id: &str) {
        lock(&self.shared).targets.insert(
            container.to_string(),
            Target {
                container_id: container_id.to_string(),
                started: Instant::now(),
                resumed: None,
            },
        );
    }

    /// Probes `container_id`, an instance that ran before this agent
    /// started, from its last reported `started`/`ready` state; its initial
    /// delay is over.
    pub fn resume_target(&self, container: &str, container_id: &str, started: bool, ready: bool) {
        let now = Instant::now();
        let mut shared = lock(&self.shared);
        shared.targets.insert(
            container.to_string(),
            Target {
                container_id: container_id.to_string(),
                started: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
                resumed: Some((started, ready)),
            },
        );
        // Known at once: the pod's status must not blink to not ready
        // before the first probe.
        shared.results.insert(
            container.to_string(),
            ProbeResult {
                container_id: container_id.to_string(),
                started,
                ready,
                ..Default::default()
            },
        );
    }

    /// The result for the current instance `container_id` of `container`.
    pub fn result(&self, container: &str, container_id: &str) -> Option<ProbeResult> {
        lock(&self.shared)
            .results
            .get(container)
            .filter(|r| r.container_id == container_id)
            .cloned()
    }

    pub fn take_events(&self) -> Vec<ProbeEvent> {
        std::mem::take(&mut lock(&self.shared).events)
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Startup => "startupProbe",
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Timing fields of a probe, with Kubernetes defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(probe: &Value) -> Timing {
    let n = |k: &str, d: u64, min: u64| probe[k].as_u64().unwrap_or(d).max(min);
    Timing {
        initial_delay: Duration::from_secs(n("initialDelaySeconds", 0, 0)),
        period: Duration::from_secs(n("periodSeconds", 10, 1)),
        timeout: Duration::from_secs(n("timeoutSeconds", 1, 1)),
        success_threshold: n("successThreshold", 1, 1) as u32,
        failure_threshold: n("failureThreshold", 3, 1) as u32,
    }
}

struct ProbeState {
    kind: Kind,
    spec: Value,
    timing: Timing,
    last: Option<Instant>,
    successes: u32,
    failures: u32,
}

struct ContainerState {
    name: String,
    spec: Value,
    container_id: String,
    started_at: Instant,
    probes: Vec<ProbeState>,
    result: ProbeResult,
}

impl ContainerState {
    fn reset(&mut self, t: &Target) {
        self.container_id = t.container_id.clone();
        self.started_at = t.started;
        for p in &mut self.probes {
            p.last = None;
            p.successes = 0;
            p.failures = 0;
        }
        let has = |k: Kind| self.probes.iter().any(|p| p.kind == k);
        let (started, ready) = t.resumed.unwrap_or((
            !has(Kind::Startup),
            !has(Kind::Readiness) && !has(Kind::Startup),
        ));
        self.result = ProbeResult {
            container_id: t.container_id.clone(),
            started,
            ready,
            kill: None,
            kill_message: String::new(),
        };
    }
}

async fn run(cri: Cri, pod: Value, shared: Arc<Mutex<ProbeShared>>, wake: Arc<Notify>) {
    let mut states: Vec<ContainerState> = app_containers(&pod)
        .filter_map(|c| {
            let probes: Vec<ProbeState> = [Kind::Startup, Kind::Liveness, Kind::Readiness]
                .into_iter()
                .filter_map(|k| {
                    let spec = c.get(k.field()).filter(|p| p.is_object())?.clone();
                    Some(ProbeState {
                        kind: k,
                        timing: timing(&spec),
                        spec,
                        last: None,
                        successes: 0,
                        failures: 0,
                    })
                })
                .collect();
            if probes.is_empty() {
                return None;
            }
            Some(ContainerState {
                name: c["name"].as_str().unwrap_or_default().to_string(),
                spec: c.clone(),
                container_id: String::new(),
                started_at: Instant::now(),
                probes,
                result: ProbeResult::default(),
            })
        })
        .collect();
    loop {
        tokio::time::sleep(TICK).await;
        let (targets, pod_ip) = {
            let s = lock(&shared);
            (s.targets.clone(), s.pod_ip.clone())
        };
        for st in &mut states {
            let Some(t) = targets.get(&st.name) else {
                continue;
            };
            if st.container_id != t.container_id {
                st.reset(t);
                publish(&shared, &wake, st, vec![]);
            }
            if st.result.kill.is_some() {
                continue;
            }
            let now = Instant::now();
            let mut events = vec![];
            for i in 0..st.probes.len() {
                let kind = st.probes[i].kind;
                let gated = match kind {
                    Kind::Startup => st.result.started,
                    _ => !st.result.started,
                };
                let p = &st.probes[i];
                let due = now >= st.started_at + p.timing.initial_delay
                    && p.last.is_none_or(|l| now >= l + p.timing.period);
                if gated || !due || st.result.kill.is_some() {
                    continue;
                }
                let outcome = run_probe(
                    &cri,
                    &p.spec,
                    &st.spec,
                    &st.container_id,
                    &pod_ip,
                    p.timing.timeout,
                )
                .await;
                let p = &mut st.probes[i];
                p.last = Some(Instant::now());
                match outcome {
                    Ok(()) => {
                        p.failures = 0;
                        p.successes += 1;
                        if p.successes >= p.timing.success_threshold {
                            match kind {
                                Kind::Startup => {
                                    st.result.started = true;
                                    // Without a readiness probe, started means ready.
                                    if !st.probes.iter().any(|p| p.kind == Kind::Readiness) {
                                        st.result.ready = true;
                                    }
                                }
                                Kind::Readiness => st.result.ready = true,
                                Kind::Liveness => {}
                            }
                        }
                    }
                    Err(msg) => {
                        p.successes = 0;
                        p.failures += 1;
                        let message = format!("{} probe failed: {msg}", kind.title());
                        events.push((
                            st.name.clone(),
                            "Warning".to_string(),
                            "Unhealthy".to_string(),
                            message,
                        ));
                        if p.failures >= p.timing.failure_threshold {
                            match kind {
                                Kind::Readiness => st.result.ready = false,
                                Kind::Liveness | Kind::Startup => {
                                    st.result.kill = Some(
                                        if kind == Kind::Liveness {
                                            "liveness"
                                        } else {
                                            "startup"
                                        }
                                        .into(),
                                    );
                                    st.result.kill_message = msg;
                                    st.result.ready = false;
                                }
                            }
                        }
                    }
                }
            }
            publish(&shared, &wake, st, events);
        }
    }
}

fn publish(
    shared: &Mutex<ProbeShared>,
    wake: &Notify,
    st: &ContainerState,
    events: Vec<ProbeEvent>,
) {
    let mut s = lock(shared);
    let changed = s.results.get(&st.name) != Some(&st.result);
    if !changed && events.is_empty() {
        return;
    }
    s.results.insert(st.name.clone(), st.result.clone());
    s.events.extend(events);
    drop(s);
    wake.notify_one();
}

/// Resolves a probe or hook port (a number or a named container port).
pub fn resolve_port(port: &Value, container: &Value) -> Result<u16, String> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).map_err(|_| format!("invalid port {n}"));
    }
    let name = port.as_str().unwrap_or_default();
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("couldn't find port: {name} in {}", container["name"]))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn dial_error(addr: &str, e: &std::io::Error) -> String {
    let what = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        std::io::ErrorKind::TimedOut => return format!("dial tcp {addr}: i/o timeout"),
        _ => e.to_string(),
    };
    format!("dial tcp {addr}: connect: {what}")
}

/// Runs one probe (or hook handler); `Err` carries the kubelet's message.
pub async fn run_probe(
    cri: &Cri,
    probe: &Value,
    container: &Value,
    container_id: &str,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(h) = probe.get("httpGet").filter(|h| h.is_object()) {
        let port = resolve_port(&h["port"], container)?;
        let host = h["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(pod_ip);
        let path = h["path"].as_str().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let scheme = h["scheme"].as_str().unwrap_or("HTTP").to_ascii_lowercase();
        let headers: Vec<(String, String)> = h["httpHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                (
                    x["name"].as_str().unwrap_or_default().to_string(),
                    x["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        return http_get(&scheme, host, port, &path, &headers, timeout).await;
    }
    if let Some(t) = probe.get("tcpSocket").filter(|h| h.is_object()) {
        let port = resolve_port(&t["port"], container)?;
        let host = t["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(pod_ip);
        let addr = host_port(host, port);
        return match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            Ok(Err(e)) => Err(dial_error(&addr, &e)),
            Ok(Ok(_)) => Ok(()),
        };
    }
    if let Some(e) = probe.get("exec").filter(|h| h.is_object()) {
        let cmd: Vec<String> = e["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        return match cri.exec_sync(container_id, &cmd, timeout).await {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let text = text.trim().to_string();
                if text.is_empty() {
                    Err(format!(
                        "command '{}' exited with {}",
                        cmd.join(" "),
                        out.exit_code
                    ))
                } else {
                    Err(text)
                }
            }
            Err(e) => {
                // Keep the message stable (no per-exec IDs) so that repeated
                // failures count up one event.
                let text = format!("{e:#}");
                Err(match text.find("OCI runtime exec failed: ") {
                    Some(i) => text[i..].trim_end_matches('"').to_string(),
                    None => text,
                })
            }
        };
    }
    if let Some(g) = probe.get("grpc").filter(|h| h.is_object()) {
        let port = g["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("invalid port {}", g["port"]))?;
        let service = g["service"].as_str().unwrap_or_default();
        return grpc_check(pod_ip, port, service, timeout).await;
    }
    Err("missing probe handler".into())
}

/// How a Go `time.Duration` prints (`1s`, `1m30s`, `500ms`), for messages
/// that quote the kubelet's.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let frac = match d.subsec_millis() {
        0 => String::new(),
        ms => format!(".{ms:03}").trim_end_matches('0').to_string(),
    };
    match s {
        0..60 => format!("{s}{frac}s"),
        60..3600 => format!("{}m{}{frac}s", s / 60, s % 60),
        _ => format!("{}h{}m{}{frac}s", s / 3600, s / 60 % 60, s % 60),
    }
}

/// grpc-go's name of a status code (`rpc error: code = NotFound desc = …`).
fn go_code(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// How long a gRPC probe waits before dialing again after a failed connect.
const GRPC_REDIAL: Duration = Duration::from_millis(200);

/// A gRPC probe as the kubelet runs it: `grpc.health.v1.Health/Check` for
/// `service` on `host:port` over plaintext HTTP/2, all within `timeout`.
/// Like grpc-go's blocking dial, refused connections are retried until the
/// timeout; only `SERVING` succeeds. `Err` carries the kubelet's message.
pub async fn grpc_check(
    host: &str,
    port: u16,
    service: &str,
    timeout: Duration,
) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let addr = host_port(host, port);
    let within = go_duration(timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent("kube-probe/1.33"))
        .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?
        .tcp_nodelay(true);
    let connect_timeout = || {
        format!("timeout: failed to connect service {addr:?} within {within}: context deadline exceeded")
    };
    let channel = loop {
        match tokio::time::timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(c)) => break c,
            Ok(Err(_)) => {
                let pause = tokio::time::Instant::now() + GRPC_REDIAL;
                if pause >= deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Err(connect_timeout());
                }
                tokio::time::sleep_until(pause).await;
            }
            Err(_) => return Err(connect_timeout()),
        }
    };
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    request.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
    let rpc_timeout = || format!("timeout: health rpc did not complete within {within}");
    match tokio::time::timeout_at(deadline, HealthClient::new(channel).check(request)).await {
        Err(_) => Err(rpc_timeout()),
        Ok(Err(st)) => Err(match st.code() {
            tonic::Code::Unimplemented => format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                st.message()
            ),
            tonic::Code::DeadlineExceeded => rpc_timeout(),
            // tonic's own deadline (from the request's grpc-timeout).
            tonic::Code::Cancelled
                if st.message() == tonic::TimeoutExpired(()).to_string() =>
            {
                rpc_timeout()
            }
            code => format!(
                "error: health rpc probe failed: rpc error: code = {} desc = {}",
                go_code(code),
                st.message()
            ),
        }),
        Ok(Ok(resp)) => {
            let status = resp.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                return Ok(());
            }
            let name = ServingStatus::try_from(status)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| status.to_string());
            Err(format!("service unhealthy (responded with {name:?})"))
        }
    }
}

/// An HTTP GET as the kubelet's prober sends it: 2xx and 3xx succeed.
/// HTTPS is checked by connecting only (no TLS client here).
pub async fn http_get(
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let addr = host_port(host, port);
    let url = format!("{scheme}://{addr}{path}");
    let exchange = async {
        let mut s = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("Get \"{url}\": {}", dial_error(&addr, &e)))?;
        if scheme == "https" {
            return Ok(200u16);
        }
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        {
            req.push_str("User-Agent: kube-probe/1.33\r\n");
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
        {
            req.push_str("Accept: */*\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.contains(&b'\n') || buf.len() > 4096 {
                break;
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.lines().next().unwrap_or_default().to_string();
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/"))
            .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response {line:?}"))?;
        Ok(code)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// Runs a lifecycle hook handler (postStart/preStop); `Err` carries the
/// kubelet's FailedPostStartHook/FailedPreStopHook message.
pub async fn run_hook(
    cri: &Cri,
    handler: &Value,
    container: &Value,
    container_id: &str,
    pod_ip: &str,
    pod_ref: &str,
    timeout: Duration,
) -> Result<(), String> {
    let cname = container["name"].as_str().unwrap_or_default();
    let (what, detail) = if let Some(e) = handler.get("exec") {
        let cmd: Vec<&str> = e["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ("Exec", format!("[{}]", cmd.join(" ")))
    } else if let Some(h) = handler.get("httpGet") {
        ("HTTP", h["path"].as_str().unwrap_or("/").to_string())
    } else if let Some(s) = handler.get("sleep") {
        let secs = s["seconds"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return Ok(());
    } else {
        return Ok(());
    };
    run_probe(cri, handler, container, container_id, pod_ip, timeout)
        .await
        .map_err(|e| {
            format!(
                "{what} lifecycle hook ({detail}) for Container \"{cname}\" in Pod \"{pod_ref}\" failed - error: {e}, message: \"\""
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timing_defaults() {
        let t = timing(&json!({}));
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let t = timing(&json!({"periodSeconds": 2, "initialDelaySeconds": 5}));
        assert_eq!(t.period, Duration::from_secs(2));
        assert_eq!(t.initial_delay, Duration::from_secs(5));
    }

    #[test]
    fn named_ports() {
        let c = json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]});
        assert_eq!(resolve_port(&json!("http"), &c), Ok(8080));
        assert_eq!(resolve_port(&json!(81), &c), Ok(81));
        assert!(resolve_port(&json!("nope"), &c).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    }

    /// Serves `routes` with tonic on a free local port.
    async fn serve_grpc(routes: tonic::service::Routes) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(incoming),
        );
        port
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn grpc_probe_against_tonic_health_server() {
        use tonic_health::ServingStatus;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("db", ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status("cache", ServingStatus::Unknown)
            .await;
        let port = serve_grpc(tonic::service::Routes::new(health)).await;
        let t = Duration::from_secs(2);
        assert_eq!(grpc_check("127.0.0.1", port, "", t).await, Ok(()));
        assert_eq!(
            grpc_check("127.0.0.1", port, "db", t).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        assert_eq!(
            grpc_check("127.0.0.1", port, "cache", t).await,
            Err("service unhealthy (responded with \"UNKNOWN\")".into())
        );
        assert_eq!(
            grpc_check("127.0.0.1", port, "nope", t).await,
            Err("error: health rpc probe failed: rpc error: code = NotFound desc = service not registered".into())
        );
        reporter
            .set_service_status("db", ServingStatus::Serving)
            .await;
        assert_eq!(grpc_check("127.0.0.1", port, "db", t).await, Ok(()));

        // A gRPC server without the health service.
        let port = serve_grpc(tonic::service::Routes::default()).await;
        let e = grpc_check("127.0.0.1", port, "", t).await.unwrap_err();
        assert!(
            e.starts_with("error: this server does not implement the grpc health protocol (grpc.health.v1.Health)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn grpc_probe_timeouts() {
        // Nothing listens: dialing is retried until the timeout.
        let port = free_port();
        let t0 = Instant::now();
        let e = grpc_check("127.0.0.1", port, "", Duration::from_secs(1))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert_eq!(
            e,
            format!("timeout: failed to connect service \"127.0.0.1:{port}\" within 1s: context deadline exceeded")
        );
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // A server that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let t0 = Instant::now();
        let e = grpc_check("127.0.0.1", port, "", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.starts_with("timeout: "), "{e}");
        assert!(e.contains("within 1s"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    /// The project's webapp binary (std only, its own HTTP/2 framing)
    /// answers the probe as a gRPC health server, switched over HTTP.
    #[tokio::test]
    async fn grpc_probe_against_the_webapp() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("webapp");
        std::fs::write(&bin, kobune_cri::images::WEBAPP_BINARY).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (http, grpc) = (free_port(), free_port());
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _child = Kill(
            std::process::Command::new(&bin)
                .env("PORT", http.to_string())
                .env("GRPC_PORT", grpc.to_string())
                .env("WORKERS", "2")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t = Duration::from_secs(5);
        assert_eq!(grpc_check("127.0.0.1", grpc, "", t).await, Ok(()));
        assert_eq!(grpc_check("127.0.0.1", grpc, "webapp", t).await, Ok(()));
        assert_eq!(
            grpc_check("127.0.0.1", grpc, "nope", t).await,
            Err(
                "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
                    .into()
            )
        );
        let http_get_ok = |path: &'static str| async move {
            http_get("http", "127.0.0.1", http, path, &[], t).await
        };
        assert_eq!(http_get_ok("/grpc/fail").await, Ok(()));
        assert_eq!(
            grpc_check("127.0.0.1", grpc, "", t).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        assert_eq!(http_get_ok("/grpc/ok").await, Ok(()));
        // Many at once, each on its own connection.
        let checks: Vec<_> = (0..20)
            .map(|_| tokio::spawn(grpc_check("127.0.0.1", grpc, "", t)))
            .collect();
        for c in checks {
            assert_eq!(c.await.unwrap(), Ok(()));
        }
    }

    #[tokio::test]
    async fn http_probe_statuses() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let code = if n == 0 { 200 } else { 503 };
                n += 1;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(
            http_get("http", "127.0.0.1", port, "/", &[], t).await,
            Ok(())
        );
        assert_eq!(
            http_get("http", "127.0.0.1", port, "/", &[], t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p2 = free.local_addr().unwrap().port();
        drop(free);
        let e = http_get("http", "127.0.0.1", p2, "/readyz", &[], t)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            format!("Get \"http://127.0.0.1:{p2}/readyz\": dial tcp 127.0.0.1:{p2}: connect: connection refused")
        );
    }
}

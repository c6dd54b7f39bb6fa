//! Pod workers, as the kubelet's: one task per pod bound to this node,
//! level-triggered by the pod informer (and a 1 s poll while containers
//! run). A worker starts the pod through CRI, reports its status, restarts
//! exited containers with CrashLoopBackOff backoff, and stops it when the
//! pod is deleted.

use crate::api::{pod_cache_key, Lookup, NodeApi, PodCache};
use crate::logs::{PodLogIndex, PodLogInfo};
use crate::probes::{has_probes, run_hook, Prober};
use crate::volumes::{self, token_sources, IssuedToken, PodVolumes, Tokens};
use base64::Engine;
use kobune_apiserver::registry::now_rfc3339;
use kobune_cri::pod::{
    pod_log_dir, pod_status, pull_policy, restart_container, run_pod, should_restart,
    stop_container, stop_pod, FoundPod, VOLUME_PATHS_KEY,
};
use kobune_cri::{ContainerState, Cri, PodRuntimeStatus, RunningPod};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// CRI `ContainerState::CONTAINER_RUNNING`.
const CRI_RUNNING: i32 = 1;
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
const START_RETRY_MAX: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// Per-container CrashLoopBackOff state.
#[derive(Debug, Default)]
struct CrashBackoff {
    /// The wait before the next restart; `None`: restart at once.
    delay: Option<Duration>,
    /// When the pending restart may happen.
    until: Option<Instant>,
    /// When the current instance was started.
    started: Option<Instant>,
}

/// A pod worker's state.
#[derive(Default)]
struct Worker {
    uid: Option<String>,
    running: Option<RunningPod>,
    /// The pod as started (env references resolved).
    resolved: Option<Value>,
    backoff: HashMap<String, CrashBackoff>,
    last_status: Option<Value>,
    /// (reason, message) -> (event name, count)
    events: HashMap<(String, String), (String, i64)>,
    /// Event creations in flight: written concurrently with the pod's
    /// start, and awaited before the next status write (so a pod's events
    /// are visible once its status says what they announced).
    inflight_events: Vec<tokio::task::JoinHandle<()>>,
    start_failures: u32,
    retry_at: Option<Instant>,
    /// Finished (Succeeded/Failed): nothing more to run.
    terminal: bool,
    /// The pod's prepared volumes.
    volumes: Option<PodVolumes>,
    /// The pod's prober task (pods with probes).
    prober: Option<Prober>,
    /// Wakes this worker (the prober uses it).
    wake: Option<Arc<Notify>>,
    /// A failed pull to report as ImagePullBackOff while the retry waits:
    /// (container, image, error).
    image_backoff: Option<(String, String, String)>,
}

enum Next {
    /// Look again after this long (or when the pod changes).
    After(Duration),
    /// Nothing to do until the pod changes.
    Idle,
    /// The pod is gone and nothing runs: the worker may end.
    Exit,
}

/// A worker's wake-up and its task.
type WorkerHandle = (Arc<Notify>, tokio::task::JoinHandle<()>);

/// All pod workers of the node.
pub struct PodManager {
    api: Arc<dyn NodeApi>,
    node: String,
    /// The node's address: hostIP of its pods, and the pod IP of
    /// hostNetwork pods.
    host_ip: String,
    cri: Cri,
    log_root: PathBuf,
    pods_root: PathBuf,
    log_index: PodLogIndex,
    /// How pods' resolv.conf is formed.
    dns: crate::dns::PodDnsSettings,
    /// The pods bound to this node, as last seen (set once the first
    /// listing is in).
    informer: OnceLock<Arc<dyn PodCache>>,
    /// Pods seen before `informer` was set; `None` afterwards.
    pending: Mutex<Option<Vec<String>>>,
    /// Pods an earlier run of this agent left running, by uid, until
    /// their workers adopt them.
    found: Mutex<HashMap<String, FoundPod>>,
    /// Set by shutdown: no new workers.
    stopped: AtomicBool,
    workers: Mutex<HashMap<String, WorkerHandle>>,
}

static EVENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The grace period of a pod found running that the API no longer binds
/// here (its replacement may already run elsewhere).
const ORPHAN_GRACE: i64 = 10;

/// How long a service account token whose renewal failed is kept before
/// the next attempt.
const TOKEN_RETRY: Duration = Duration::from_secs(10);

/// A new pod may get the IP of a pod that is gone, whose MAC the host may
/// still cache (a STALE neighbour entry is re-checked only after seconds,
/// and until then host-to-pod packets go nowhere): forget it.
async fn forget_neighbour(ip: &str) {
    // Most new IPs have no entry: /proc/net/arp (every IPv4 neighbour but
    // NOARP ones) says so without running `ip`.
    if let Ok(table) = tokio::fs::read_to_string("/proc/net/arp").await {
        if !arp_has(&table, ip) {
            return;
        }
    }
    let ip = ip.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ip")
            .args(["neigh", "flush", "to", &ip])
            .output()
    })
    .await;
    if let Ok(Ok(o)) = out {
        if !o.status.success() {
            tracing::debug!("ip neigh flush: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// Whether `/proc/net/arp` text lists `ip`.
fn arp_has(table: &str, ip: &str) -> bool {
    table
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next() == Some(ip))
}

impl PodManager {
    /// Starts following pods bound to `node` through `api`; returns once
    /// the first listing is in. Pod volumes live under `pods_root/<uid>`.
    /// `found` are the pods the runtime still runs from an earlier run:
    /// those the API still binds here are adopted by their workers, the
    /// others are stopped.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        api: Arc<dyn NodeApi>,
        node: String,
        host_ip: String,
        cri: Cri,
        log_root: PathBuf,
        pods_root: PathBuf,
        log_index: PodLogIndex,
        dns: crate::dns::PodDnsSettings,
        found: Vec<FoundPod>,
    ) -> anyhow::Result<Arc<PodManager>> {
        api.clone().start_lookups().await?;
        let mgr = Arc::new(PodManager {
            api: api.clone(),
            node: node.clone(),
            host_ip,
            cri,
            log_root,
            pods_root,
            log_index,
            dns,
            informer: OnceLock::new(),
            pending: Mutex::new(Some(vec![])),
            found: Mutex::default(),
            stopped: AtomicBool::new(false),
            workers: Mutex::default(),
        });
        let m = mgr.clone();
        let handler: crate::api::PodHandler =
            Arc::new(move |key: &str, pod: &Value, _gone: bool| m.on_event(key, pod));
        let nodes = Arc::new([node].into_iter().collect());
        let cache = api.watch_pods(nodes, handler).await?;
        let _ = mgr.informer.set(cache);
        // One sandbox per pod: a second one of a uid (the newest stays) goes.
        let mut by_uid: HashMap<String, FoundPod> = HashMap::new();
        let mut found = found;
        found.sort_by_key(|f| f.created_at);
        for f in found {
            if let Some(older) = by_uid.insert(f.uid.clone(), f) {
                mgr.stop_found(older, false);
            }
        }
        *lock(&mgr.found) = by_uid;
        mgr.stop_orphans();
        // Pods seen during the first listing get their workers now.
        let early = lock(&mgr.pending).take().unwrap_or_default();
        for key in early {
            if let Some(pod) = mgr.pod(&key) {
                mgr.on_event(&key, &pod);
            }
        }
        // Found pods deleted while the early events waited.
        mgr.stop_orphans();
        Ok(mgr)
    }

    /// Stops (in the background) the found pods the API no longer binds
    /// to this node: deleted, or moved, while the agent was down.
    fn stop_orphans(&self) {
        let orphans: Vec<FoundPod> = {
            let mut found = lock(&self.found);
            let gone: Vec<String> = found
                .values()
                .filter(|f| {
                    let pod = self.pod(&pod_cache_key(&f.namespace, &f.name));
                    !pod.is_some_and(|p| self.ours(&p) && str_at(&p, "/metadata/uid") == f.uid)
                })
                .map(|f| f.uid.clone())
                .collect();
            gone.iter().filter_map(|u| found.remove(u)).collect()
        };
        for f in orphans {
            self.stop_found(f, true);
        }
    }

    /// Stops a found pod in the background (with its volumes, if
    /// `volumes`): the API no longer binds it here, or it was superseded.
    fn stop_found(&self, f: FoundPod, volumes: bool) {
        tracing::info!(pod = %format!("{}/{}", f.namespace, f.name), uid = %f.uid, "stopping a pod the API no longer binds to this node");
        let (cri, pods_root) = (self.cri.clone(), self.pods_root.clone());
        let r = self.found_as_running(f, None);
        tokio::spawn(async move {
            if let Err(e) = stop_pod(&cri, &r, ORPHAN_GRACE).await {
                tracing::warn!(pod = %format!("{}/{}", r.namespace, r.name), "stopping pod: {e:#}");
            }
            if volumes {
                volumes::cleanup(&pods_root, &r.uid);
            }
        });
    }

    /// Takes the found pods of cache key `key` out of `found`.
    fn take_found(&self, key: &str) -> Vec<FoundPod> {
        let mut found = lock(&self.found);
        let uids: Vec<String> = found
            .values()
            .filter(|f| pod_cache_key(&f.namespace, &f.name) == key)
            .map(|f| f.uid.clone())
            .collect();
        uids.iter().filter_map(|u| found.remove(u)).collect()
    }

    /// A found pod as a [`RunningPod`]: its containers sorted into init,
    /// app and ephemeral ones by `pod`'s spec (all app ones without it).
    fn found_as_running(&self, f: FoundPod, pod: Option<&Value>) -> RunningPod {
        let names = |key: &str| -> Vec<String> {
            pod.and_then(|p| p["spec"][key].as_array())
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        };
        let (init, app, eph) = (
            names("initContainers"),
            names("containers"),
            names("ephemeralContainers"),
        );
        let mut r = RunningPod {
            sandbox_id: f.sandbox_id,
            log_dir: pod_log_dir(&self.log_root, &f.namespace, &f.name, &f.uid),
            namespace: f.namespace,
            name: f.name,
            uid: f.uid,
            pod_ip: f.pod_ip,
            init_containers: vec![],
            containers: vec![],
            ephemeral_containers: vec![],
        };
        let mut rest = f.containers;
        let mut take = |wanted: &[String]| -> Vec<kobune_cri::pod::RunningContainer> {
            wanted
                .iter()
                .filter_map(|n| {
                    rest.iter()
                        .position(|c| &c.name == n)
                        .map(|i| rest.remove(i))
                })
                .collect()
        };
        if pod.is_some() {
            r.init_containers = take(&init);
            r.containers = take(&app);
            r.ephemeral_containers = take(&eph);
            // Names the spec does not know still get stopped with the pod.
            r.ephemeral_containers.extend(rest);
        } else {
            r.containers = rest;
        }
        r
    }

    fn ours(&self, pod: &Value) -> bool {
        str_at(pod, "/spec/nodeName") == self.node
    }

    fn pod(&self, key: &str) -> Option<Arc<Value>> {
        self.informer.get().and_then(|c| c.get(key))
    }

    fn on_event(self: &Arc<Self>, key: &str, pod: &Value) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        if let Some(pending) = lock(&self.pending).as_mut() {
            pending.push(key.to_string());
            return;
        }
        let mut workers = lock(&self.workers);
        if let Some((n, _)) = workers.get(key) {
            n.notify_one();
        } else if self.ours(pod) {
            let notify = Arc::new(Notify::new());
            let me = self.clone();
            let (k, n) = (key.to_string(), notify.clone());
            let handle = tokio::spawn(async move { me.run_worker(k, n).await });
            workers.insert(key.to_string(), (notify, handle));
        }
    }

    /// Aborts every worker (pods keep running in the runtime).
    pub fn abort_workers(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        for (_, (_, h)) in lock(&self.workers).drain() {
            h.abort();
        }
    }

    /// Aborts the workers and removes every sandbox.
    pub async fn remove_all(&self) {
        self.abort_workers();
        if let Err(e) = kobune_cri::pod::remove_all_sandboxes(&self.cri).await {
            tracing::warn!("removing sandboxes: {e:#}");
        }
    }

    async fn run_worker(self: Arc<Self>, key: String, notify: Arc<Notify>) {
        let mut w = Worker {
            wake: Some(notify.clone()),
            ..Default::default()
        };
        loop {
            let next = self.sync(&key, &mut w).await;
            match next {
                Next::After(d) => {
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Next::Idle => notify.notified().await,
                Next::Exit => {
                    let mut workers = lock(&self.workers);
                    let gone = self.pod(&key).filter(|p| self.ours(p)).is_none();
                    if gone && w.running.is_none() {
                        workers.remove(&key);
                        return;
                    }
                }
            }
        }
    }

    fn publish_logs(&self, r: &RunningPod) {
        let containers = r
            .init_containers
            .iter()
            .chain(&r.containers)
            .chain(&r.ephemeral_containers)
            .map(|c| (c.name.clone(), (c.container_id.clone(), c.restart_count)))
            .collect();
        lock(&self.log_index).insert(
            r.uid.clone(),
            PodLogInfo {
                log_dir: r.log_dir.clone(),
                containers,
            },
        );
    }

    async fn stop(&self, w: &mut Worker, grace: i64) {
        w.prober = None;
        if let Some(r) = w.running.take() {
            if let Err(e) = stop_pod(&self.cri, &r, grace).await {
                tracing::warn!(pod = %format!("{}/{}", r.namespace, r.name), "stopping pod: {e:#}");
            }
        }
    }

    async fn sync(&self, key: &str, w: &mut Worker) -> Next {
        let pod = self.pod(key).filter(|p| self.ours(p));
        let Some(pod) = pod else {
            // Deleted from the API (or moved away): stop what runs.
            for f in self.take_found(key) {
                self.stop_found(f, true);
            }
            self.stop(w, 0).await;
            if let Some(uid) = w.uid.take() {
                lock(&self.log_index).remove(&uid);
                w.volumes = None;
                volumes::cleanup(&self.pods_root, &uid);
            }
            return Next::Exit;
        };
        let uid = str_at(&pod, "/metadata/uid").to_string();
        if w.uid.as_deref() != Some(uid.as_str()) {
            self.stop(w, 0).await;
            if let Some(old) = w.uid.take() {
                lock(&self.log_index).remove(&old);
                volumes::cleanup(&self.pods_root, &old);
            }
            *w = Worker {
                uid: Some(uid.clone()),
                wake: w.wake.take(),
                ..Default::default()
            };
        }
        // A found pod of this name is adopted if it is this pod; one of an
        // earlier pod of the name (deleted and created again) is stopped.
        for f in self.take_found(key) {
            if f.uid == uid && w.running.is_none() {
                self.adopt(&pod, w, f).await;
            } else {
                let other = f.uid != uid;
                self.stop_found(f, other);
            }
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return self.terminate(&pod, w).await;
        }
        let phase = str_at(&pod, "/status/phase");
        if w.running.is_none() && (w.terminal || phase == "Succeeded" || phase == "Failed") {
            return Next::Idle;
        }
        if w.running.is_none() {
            if let Some(at) = w.retry_at {
                let now = Instant::now();
                if now < at {
                    if let Some((cname, image, err)) = w.image_backoff.take() {
                        let msg = format!("Back-off pulling image \"{image}\"");
                        self.event(w, &pod, Some(&cname), "Normal", "BackOff", &msg)
                            .await;
                        let msg = format!("{msg}: ErrImagePull: {err}");
                        let status = self.pending_status(&pod, w, "ImagePullBackOff", &msg, false);
                        self.report(&pod, w, status).await;
                    }
                    return Next::After(at - now);
                }
            }
            match self.start_pod(&pod, w).await {
                Ok(r) => {
                    self.publish_logs(&r);
                    let now = Instant::now();
                    for c in &r.containers {
                        w.backoff.entry(c.name.clone()).or_default().started = Some(now);
                    }
                    w.running = Some(r);
                    w.start_failures = 0;
                    w.retry_at = None;
                }
                Err((reason, message, fatal)) => {
                    let status = self.pending_status(&pod, w, &reason, &message, fatal);
                    self.report(&pod, w, status).await;
                    if fatal {
                        w.terminal = true;
                        return Next::Idle;
                    }
                    let delay = (Duration::from_secs(2) * 2u32.pow(w.start_failures.min(5)))
                        .min(START_RETRY_MAX);
                    w.start_failures += 1;
                    w.retry_at = Some(Instant::now() + delay);
                    if w.image_backoff.is_some() {
                        // ErrImagePull now, ImagePullBackOff until the retry.
                        return Next::After(delay.min(Duration::from_millis(500)));
                    }
                    return Next::After(delay);
                }
            }
        }
        self.sync_running(&pod, w).await
    }

    /// Takes over `f`, this pod as an earlier run of the agent left it
    /// running: volumes are set up again in place (emptyDir content
    /// stays), the containers' last states and probe results come from the
    /// pod's reported status, and nothing is restarted. A pod missing an
    /// app container is replaced (its sandbox removed, started afresh).
    async fn adopt(&self, pod: &Value, w: &mut Worker, f: FoundPod) {
        let key = format!("{}/{}", f.namespace, f.name);
        let missing: Vec<&str> = containers(pod)
            .filter_map(|c| c["name"].as_str())
            .filter(|n| !f.containers.iter().any(|c| c.name == *n))
            .collect();
        if !missing.is_empty() {
            tracing::info!(pod = %key, ?missing, "found the pod without some containers; starting it again");
            let r = self.found_as_running(f, Some(pod));
            if let Err(e) = stop_pod(&self.cri, &r, 0).await {
                tracing::warn!(pod = %key, "removing the pod's sandbox: {e:#}");
            }
            return;
        }
        // The containers have their mounts already; content that cannot be
        // written now is retried by the volume refresh.
        match self.setup_volumes(pod).await {
            Ok(v) => w.volumes = Some(v),
            Err((vol, msg)) => {
                tracing::warn!(pod = %key, volume = %vol, "setting up volumes of an adopted pod (retrying): {msg}")
            }
        }
        let resolved = self.resolve_env(pod).unwrap_or_else(|_| pod.clone());
        let resolved = self.runtime_spec(resolved, w);
        let mut r = self.found_as_running(f, Some(pod));
        // What was reported for each container instance.
        let reported = |name: &str, id: &str| -> Option<&Value> {
            [
                "containerStatuses",
                "initContainerStatuses",
                "ephemeralContainerStatuses",
            ]
            .iter()
            .flat_map(|k| pod["status"][k].as_array().into_iter().flatten())
            .find(|s| {
                s["name"] == name && s["containerID"] == format!("containerd://{id}").as_str()
            })
        };
        for c in r.containers.iter_mut() {
            c.last_state = reported(&c.name, &c.container_id)
                .and_then(|s| serde_json::from_value(s["lastState"].clone()).ok());
        }
        self.publish_logs(&r);
        let now = Instant::now();
        for c in &r.containers {
            w.backoff.entry(c.name.clone()).or_default().started = Some(now);
        }
        if has_probes(&resolved) {
            let wake = w.wake.clone().unwrap_or_default();
            let ip = r.pod_ip.clone().unwrap_or_else(|| self.host_ip.clone());
            let prober = Prober::start(self.cri.clone(), resolved.clone(), ip, wake);
            for c in &r.containers {
                match reported(&c.name, &c.container_id) {
                    Some(s) => prober.resume_target(
                        &c.name,
                        &c.container_id,
                        s["started"].as_bool().unwrap_or(true),
                        s["ready"].as_bool().unwrap_or(false),
                    ),
                    None => prober.set_target(&c.name, &c.container_id),
                }
            }
            w.prober = Some(prober);
        }
        tracing::info!(pod = %key, containers = r.containers.len(), "adopted a running pod");
        w.resolved = Some(resolved);
        w.running = Some(r);
    }

    async fn terminate(&self, pod: &Value, w: &mut Worker) -> Next {
        let grace = pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| {
                pod.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        let mut grace = grace;
        if w.running.is_some() {
            let started = Instant::now();
            self.run_pre_stop(pod, w, grace).await;
            grace = (grace - started.elapsed().as_secs() as i64).max(if grace > 0 { 2 } else { 0 });
        }
        if let Some(r) = &w.running {
            let names: Vec<String> = r.containers.iter().map(|c| c.name.clone()).collect();
            for c in names {
                self.event(
                    w,
                    pod,
                    Some(&c),
                    "Normal",
                    "Killing",
                    &format!("Stopping container {c}"),
                )
                .await;
            }
        }
        self.stop(w, grace).await;
        Self::flush_events(w).await;
        let (ns, name) = (
            str_at(pod, "/metadata/namespace"),
            str_at(pod, "/metadata/name"),
        );
        let uid = w
            .uid
            .clone()
            .unwrap_or_else(|| str_at(pod, "/metadata/uid").to_string());
        match self.api.delete_pod_now(ns, name, &uid).await {
            // Gone (404) and replaced (409) count as done too.
            Ok(_) => Next::After(Duration::from_secs(5)),
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), "deleting pod: {e}");
                Next::After(Duration::from_secs(1))
            }
        }
    }

    /// Resolves env references, makes sure images are there and runs the
    /// pod. Errors: (waiting reason, message, fatal).
    async fn start_pod(
        &self,
        pod: &Value,
        w: &mut Worker,
    ) -> Result<RunningPod, (String, String, bool)> {
        let t0 = Instant::now();
        if w.volumes.is_none() {
            match self.setup_volumes(pod).await {
                Ok(v) => w.volumes = Some(v),
                Err((vol, msg)) => {
                    let msg = format!("MountVolume.SetUp failed for volume \"{vol}\" : {msg}");
                    self.event(w, pod, None, "Warning", "FailedMount", &msg)
                        .await;
                    return Err(("ContainerCreating".into(), msg, false));
                }
            }
        }
        let resolved = match self.resolve_env(pod) {
            Ok(p) => p,
            Err(msg) => {
                self.event(w, pod, None, "Warning", "Failed", &format!("Error: {msg}"))
                    .await;
                return Err(("CreateContainerConfigError".into(), msg, false));
            }
        };
        for c in containers(pod) {
            let cname = c["name"].as_str().unwrap_or_default().to_string();
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let policy = pull_policy(c);
            let present = match self.cri.image_status(&image).await {
                Ok(p) => p.is_some(),
                Err(e) => {
                    let msg = format!("{e:#}");
                    return Err(("ContainerCreating".into(), msg, false));
                }
            };
            if present && policy != "Always" {
                let msg = format!("Container image \"{image}\" already present on machine");
                self.event(w, pod, Some(&cname), "Normal", "Pulled", &msg)
                    .await;
                continue;
            }
            if !present && policy == "Never" {
                let msg =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event(w, pod, Some(&cname), "Warning", "ErrImageNeverPull", &msg)
                    .await;
                self.event(
                    w,
                    pod,
                    Some(&cname),
                    "Warning",
                    "Failed",
                    "Error: ErrImageNeverPull",
                )
                .await;
                return Err(("ErrImageNeverPull".into(), msg, false));
            }
            self.event(
                w,
                pod,
                Some(&cname),
                "Normal",
                "Pulling",
                &format!("Pulling image \"{image}\""),
            )
            .await;
            let t = Instant::now();
            let (auths, missing) = self.pull_auths(pod, &image);
            if !missing.is_empty() {
                let msg = format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                );
                self.event(
                    w,
                    pod,
                    None,
                    "Warning",
                    "FailedToRetrieveImagePullSecret",
                    &msg,
                )
                .await;
            }
            match kobune_cri::images::ensure(&self.cri, &image, &policy, &auths).await {
                Ok(pulled) => {
                    let took = t.elapsed().as_secs_f64();
                    let msg = match pulled {
                        Some(p) => format!(
                            "Successfully pulled image \"{image}\" in {took:.3}s ({took:.3}s including waiting). Image size: {} bytes.",
                            p.size
                        ),
                        None => format!("Container image \"{image}\" already present on machine"),
                    };
                    self.event(w, pod, Some(&cname), "Normal", "Pulled", &msg)
                        .await;
                }
                Err(e) => {
                    w.image_backoff = Some((cname.clone(), image.clone(), format!("{e:#}")));
                    let msg = format!("Failed to pull image \"{image}\": {e:#}");
                    self.event(w, pod, Some(&cname), "Warning", "Failed", &msg)
                        .await;
                    self.event(
                        w,
                        pod,
                        Some(&cname),
                        "Warning",
                        "Failed",
                        "Error: ErrImagePull",
                    )
                    .await;
                    return Err(("ErrImagePull".into(), msg, false));
                }
            }
        }
        let resolved = self.runtime_spec(resolved, w);
        let prepared = t0.elapsed();
        let r = match run_pod(&self.cri, &resolved, &self.log_root).await {
            Ok(r) => r,
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("RunPodSandbox") {
                    let msg = format!("Failed to create pod sandbox: {text}");
                    self.event(w, pod, None, "Warning", "FailedCreatePodSandBox", &msg)
                        .await;
                    return Err(("ContainerCreating".into(), msg, false));
                }
                self.event(w, pod, None, "Warning", "Failed", &format!("Error: {text}"))
                    .await;
                let fatal = text.contains("init container")
                    && str_at(pod, "/spec/restartPolicy") == "Never";
                let reason = if text.contains("init container") {
                    "PodInitializing"
                } else {
                    "CreateContainerError"
                };
                return Err((reason.into(), text, fatal));
            }
        };
        if let Some(ip) = &r.pod_ip {
            forget_neighbour(ip).await;
        }
        for c in r.init_containers.iter().chain(&r.containers) {
            let name = c.name.clone();
            self.event(
                w,
                pod,
                Some(&name),
                "Normal",
                "Created",
                &format!("Created container: {name}"),
            )
            .await;
            self.event(
                w,
                pod,
                Some(&name),
                "Normal",
                "Started",
                &format!("Started container {name}"),
            )
            .await;
        }
        for c in &r.containers {
            self.post_start(pod, w, &resolved, &r, &c.name).await;
        }
        if has_probes(&resolved) {
            let wake = w.wake.clone().unwrap_or_default();
            let ip = r.pod_ip.clone().unwrap_or_else(|| self.host_ip.clone());
            let prober = Prober::start(self.cri.clone(), resolved.clone(), ip, wake);
            for c in &r.containers {
                prober.set_target(&c.name, &c.container_id);
            }
            w.prober = Some(prober);
        }
        w.resolved = Some(resolved);
        tracing::debug!(
            pod = %format!("{}/{}", r.namespace, r.name),
            prepare_ms = prepared.as_secs_f64() * 1e3,
            run_ms = (t0.elapsed() - prepared).as_secs_f64() * 1e3,
            "pod started"
        );
        Ok(r)
    }

    /// The pod as the runtime runs it: env resolved (`resolved`), images
    /// not pulled again (every one is present by now, pulled with the
    /// pod's credentials), and the volume paths, DNS and hosts file.
    fn runtime_spec(&self, mut resolved: Value, w: &Worker) -> Value {
        for key in ["initContainers", "containers"] {
            if let Some(list) = resolved["spec"][key].as_array_mut() {
                for c in list {
                    c["imagePullPolicy"] = json!("IfNotPresent");
                }
            }
        }
        if let Some(v) = &w.volumes {
            resolved[VOLUME_PATHS_KEY] = Value::Object(v.paths.clone());
        }
        resolved[crate::dns::DNS_CONFIG_KEY] = crate::dns::pod_dns_value(&resolved, &self.dns);
        let hosts = crate::volumes::pod_dir(&self.pods_root, str_at(&resolved, "/metadata/uid"))
            .join("etc-hosts");
        resolved[kobune_cri::pod::ETC_HOSTS_KEY] =
            crate::dns::etc_hosts_value(&resolved, &self.dns, &hosts);
        resolved
    }

    /// Registry credentials for `image` from the pod's imagePullSecrets and
    /// its service account's, in that order; and the secrets that could not
    /// be read.
    fn pull_auths(
        &self,
        pod: &Value,
        image: &str,
    ) -> (Vec<kobune_cri::images::AuthConfig>, Vec<String>) {
        let ns = str_at(pod, "/metadata/namespace");
        let names_of = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .filter(|n| !n.is_empty())
                .collect()
        };
        let mut names = names_of(pod.pointer("/spec/imagePullSecrets"));
        let sa = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        if let Some(sa) = self.lookup(Lookup::ServiceAccount, ns, sa) {
            for n in names_of(sa.get("imagePullSecrets")) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        let (mut auths, mut missing) = (vec![], vec![]);
        for name in names {
            let Some(secret) = self.lookup(Lookup::Secret, ns, &name) else {
                missing.push(format!("{ns}/{name}"));
                continue;
            };
            let key = match secret["type"].as_str() {
                Some("kubernetes.io/dockercfg") => ".dockercfg",
                _ => ".dockerconfigjson",
            };
            let config = secret["data"][key]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            match config {
                Some(c) => auths.extend(kobune_cri::images::auths_for_image(&c, image)),
                None => missing.push(format!("{ns}/{name}")),
            }
        }
        (auths, missing)
    }

    fn object_lookup(&self) -> impl Fn(bool, &str, &str) -> Option<Value> + '_ {
        |secret: bool, ns: &str, name: &str| {
            let info = if secret {
                Lookup::Secret
            } else {
                Lookup::ConfigMap
            };
            self.lookup(info, ns, name)
        }
    }

    async fn setup_volumes(&self, pod: &Value) -> Result<PodVolumes, (String, String)> {
        let tokens = self.tokens(pod, &Default::default()).await?;
        PodVolumes::setup(&self.pods_root, pod, &self.object_lookup(), tokens)
    }

    async fn refresh_volumes(&self, pod: &Value, w: &mut Worker) {
        if w.volumes.is_none() && w.running.is_some() {
            // An adopted pod whose volumes could not be set up yet.
            if let Ok(v) = self.setup_volumes(pod).await {
                if let Some(r) = w.resolved.as_mut() {
                    r[VOLUME_PATHS_KEY] = Value::Object(v.paths.clone());
                }
                w.volumes = Some(v);
            }
            return;
        }
        let Some(current) = w.volumes.as_ref().map(|v| v.tokens.clone()) else {
            return;
        };
        // A token that cannot be renewed now stays, and is tried again
        // after TOKEN_RETRY rather than on every pass.
        let tokens = match self.tokens(pod, &current).await {
            Ok(t) => t,
            Err((vol, msg)) => {
                tracing::warn!(volume = %vol, "renewing a service account token (retrying in {TOKEN_RETRY:?}): {msg}");
                let now = Instant::now();
                let mut kept = current;
                for t in kept.values_mut().filter(|t| t.refresh_at <= now) {
                    t.refresh_at = now + TOKEN_RETRY;
                }
                kept
            }
        };
        let Some(v) = w.volumes.as_mut() else {
            return;
        };
        // Files are made again only when what they are made from changed.
        let version = |secret: bool, ns: &str, name: &str| {
            let kind = if secret {
                Lookup::Secret
            } else {
                Lookup::ConfigMap
            };
            self.api.lookup_version(kind, ns, name)
        };
        let inputs = crate::volumes::inputs(pod, &version, &tokens);
        if v.inputs.as_ref() == Some(&inputs) {
            v.tokens = tokens;
            return;
        }
        for name in v.refresh(pod, &self.object_lookup(), tokens) {
            tracing::debug!(volume = %name, "volume content updated");
        }
        v.inputs = Some(inputs);
    }

    /// The service account tokens `pod`'s projected volumes need: those in
    /// `current` not yet due for renewal, and new ones bound to the pod
    /// (TokenRequest), renewed at 80% of their lifetime as the kubelet does.
    async fn tokens(&self, pod: &Value, current: &Tokens) -> Result<Tokens, (String, String)> {
        let mut out = Tokens::new();
        let now = Instant::now();
        for src in token_sources(pod) {
            if let Some(t) = current.get(&src.key).filter(|t| t.refresh_at > now) {
                out.insert(src.key, t.clone());
                continue;
            }
            let (ns, account) = (
                str_at(pod, "/metadata/namespace"),
                str_at(pod, "/spec/serviceAccountName"),
            );
            let request = json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {
                    "audiences": src.audience.as_ref().map(|a| vec![a.clone()]),
                    "expirationSeconds": src.expiration_seconds,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                       "name": str_at(pod, "/metadata/name"),
                                       "uid": str_at(pod, "/metadata/uid")}
                }
            });
            let volume = src.key.split('/').next().unwrap_or_default().to_string();
            let answer = self
                .api
                .request_token(ns, account, &request)
                .await
                .map_err(|e| (volume.clone(), format!("{e:#}")))?;
            let token = answer
                .pointer("/status/token")
                .and_then(Value::as_str)
                .ok_or_else(|| (volume, "the TokenRequest answer has no token".to_string()))?;
            let lifetime = Duration::from_secs(src.expiration_seconds.max(600) as u64);
            out.insert(
                src.key,
                IssuedToken {
                    token: token.to_string(),
                    refresh_at: now + lifetime.mul_f64(0.8),
                },
            );
        }
        Ok(out)
    }

    fn pod_ref(pod: &Value) -> String {
        format!(
            "{}_{}({})",
            str_at(pod, "/metadata/name"),
            str_at(pod, "/metadata/namespace"),
            str_at(pod, "/metadata/uid")
        )
    }

    /// Runs container `name`'s postStart hook; on failure the container
    /// is killed (and restarted per restartPolicy).
    async fn post_start(
        &self,
        pod: &Value,
        w: &mut Worker,
        spec_pod: &Value,
        r: &RunningPod,
        name: &str,
    ) {
        let Some(spec) = spec_container(spec_pod, name) else {
            return;
        };
        let Some(hook) = spec
            .pointer("/lifecycle/postStart")
            .filter(|h| h.is_object())
        else {
            return;
        };
        let Some(c) = r.container(name) else { return };
        let ip = r.pod_ip.clone().unwrap_or_else(|| self.host_ip.clone());
        let res = run_hook(
            &self.cri,
            hook,
            spec,
            &c.container_id,
            &ip,
            &Self::pod_ref(pod),
            Duration::from_secs(30),
        )
        .await;
        if let Err(msg) = res {
            self.event(w, pod, Some(name), "Warning", "FailedPostStartHook", &msg)
                .await;
            self.event(
                w,
                pod,
                Some(name),
                "Normal",
                "Killing",
                "FailedPostStartHook",
            )
            .await;
            if let Err(e) = stop_container(&self.cri, &c.container_id, grace_of(spec_pod)).await {
                tracing::warn!("killing container {name}: {e:#}");
            }
        }
    }

    /// Runs the preStop hooks of all running containers concurrently, for
    /// at most `grace` seconds.
    async fn run_pre_stop(&self, pod: &Value, w: &mut Worker, grace: i64) {
        let Some(r) = &w.running else { return };
        let spec_pod = w.resolved.clone().unwrap_or_else(|| pod.clone());
        let ip = r.pod_ip.clone().unwrap_or_else(|| self.host_ip.clone());
        let mut set = tokio::task::JoinSet::new();
        for c in &r.containers {
            let Some(spec) = spec_container(&spec_pod, &c.name) else {
                continue;
            };
            let Some(hook) = spec.pointer("/lifecycle/preStop").filter(|h| h.is_object()) else {
                continue;
            };
            match self.cri.container_status(&c.container_id).await {
                Ok(Some(st)) if st.state == CRI_RUNNING => {}
                _ => continue,
            }
            let (cri, hook, spec, id, ip, pref, name) = (
                self.cri.clone(),
                hook.clone(),
                spec.clone(),
                c.container_id.clone(),
                ip.clone(),
                Self::pod_ref(pod),
                c.name.clone(),
            );
            let limit = Duration::from_secs(grace.max(1) as u64);
            set.spawn(async move {
                let r = tokio::time::timeout(
                    limit,
                    run_hook(&cri, &hook, &spec, &id, &ip, &pref, limit),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(format!("preStop hook for Container \"{name}\" timed out"))
                });
                (name, r)
            });
        }
        while let Some(res) = set.join_next().await {
            if let Ok((name, Err(msg))) = res {
                self.event(w, pod, Some(&name), "Warning", "FailedPreStopHook", &msg)
                    .await;
            }
        }
    }

    /// Records probe events and kills containers whose liveness or startup
    /// probe failed (they are restarted by the usual restart path).
    async fn handle_probes(&self, pod: &Value, w: &mut Worker) {
        let Some(prober) = &w.prober else { return };
        let events = prober.take_events();
        let mut kills = vec![];
        if let Some(r) = &w.running {
            for c in &r.containers {
                if let Some(res) = prober.result(&c.name, &c.container_id) {
                    if let Some(k) = &res.kill {
                        kills.push((c.name.clone(), c.container_id.clone(), k.clone()));
                    }
                }
            }
        }
        for (c, typ, reason, msg) in events {
            self.event(w, pod, Some(&c), &typ, &reason, &msg).await;
        }
        let spec_pod = w.resolved.clone().unwrap_or_else(|| pod.clone());
        for (name, id, kind) in kills {
            // Only once per instance.
            let st = self.cri.container_status(&id).await;
            if !matches!(st, Ok(Some(ref s)) if s.state == CRI_RUNNING) {
                continue;
            }
            self.event(
                w,
                pod,
                Some(&name),
                "Normal",
                "Killing",
                &format!("Container {name} failed {kind} probe, will be restarted"),
            )
            .await;
            let probe_field = if kind == "liveness" {
                "livenessProbe"
            } else {
                "startupProbe"
            };
            let grace = spec_container(&spec_pod, &name)
                .and_then(|c| c[probe_field]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or_else(|| grace_of(&spec_pod));
            if let Err(e) = stop_container(&self.cri, &id, grace).await {
                tracing::warn!("killing container {name}: {e:#}");
            }
        }
    }

    /// Starts the ephemeral containers added to the pod since it started
    /// (`kubectl debug`); each runs once and is never restarted.
    async fn start_ephemeral(&self, pod: &Value, w: &mut Worker) {
        let started = |w: &Worker, name: &str| {
            w.running
                .as_ref()
                .is_none_or(|r| r.ephemeral_containers.iter().any(|e| e.name == name))
        };
        let names: Vec<String> = pod["spec"]["ephemeralContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .filter(|n| !started(w, n))
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return;
        }
        let resolved = match self.resolve_env(pod) {
            Ok(p) => p,
            Err(msg) => {
                self.event(w, pod, None, "Warning", "Failed", &format!("Error: {msg}"))
                    .await;
                return;
            }
        };
        let base = w.resolved.clone().unwrap_or_else(|| pod.clone());
        for name in names {
            let Some(c) = resolved["spec"]["ephemeralContainers"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == name.as_str()))
            else {
                continue;
            };
            // Pulled with the pod's credentials, as its other containers.
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let (auths, _) = self.pull_auths(pod, &image);
            let pulled = match kobune_cri::images::ensure(
                &self.cri,
                &image,
                &pull_policy(c),
                &auths,
            )
            .await
            {
                Ok(Some(p)) => format!(
                    "Successfully pulled image \"{image}\". Image size: {} bytes.",
                    p.size
                ),
                Ok(None) => format!("Container image \"{image}\" already present on machine"),
                Err(e) => {
                    let msg = format!("Failed to pull image \"{image}\": {e:#}");
                    self.event(w, pod, Some(&name), "Warning", "Failed", &msg)
                        .await;
                    continue;
                }
            };
            let mut c = c.clone();
            c["imagePullPolicy"] = json!("IfNotPresent");
            let Some(r) = w.running.as_mut() else { return };
            let res = kobune_cri::pod::start_ephemeral(&self.cri, &base, r, &c).await;
            let r = r.clone();
            self.publish_logs(&r);
            match res {
                Ok(()) => {
                    for (reason, msg) in [
                        ("Pulled", pulled),
                        ("Created", format!("Created container: {name}")),
                        ("Started", format!("Started container {name}")),
                    ] {
                        self.event(w, pod, Some(&name), "Normal", reason, &msg)
                            .await;
                    }
                }
                Err(e) => {
                    let msg = format!("Error: {e:#}");
                    self.event(w, pod, Some(&name), "Warning", "Failed", &msg)
                        .await;
                }
            }
        }
    }

    /// Replaces container `name` now (with `spec_pod`'s definition of it)
    /// and reports it as the kubelet does; false if that failed.
    async fn restart_now(
        &self,
        pod: &Value,
        w: &mut Worker,
        spec_pod: &Value,
        name: &str,
        image: &str,
    ) -> bool {
        let Some(r) = w.running.as_mut() else {
            return false;
        };
        if let Err(e) = restart_container(&self.cri, spec_pod, r, name).await {
            self.event(
                w,
                pod,
                Some(name),
                "Warning",
                "Failed",
                &format!("Error: {e:#}"),
            )
            .await;
            return false;
        }
        if let Some(r) = w.running.clone() {
            if let (Some(p), Some(c)) = (&w.prober, r.container(name)) {
                p.set_target(name, &c.container_id);
            }
            self.post_start(pod, w, spec_pod, &r, name).await;
        }
        for (reason, msg) in [
            (
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            ),
            ("Created", format!("Created container: {name}")),
            ("Started", format!("Started container {name}")),
        ] {
            self.event(w, pod, Some(name), "Normal", reason, &msg).await;
        }
        true
    }

    /// Containers whose image the pod's spec now names differently are
    /// restarted with it, as the kubelet does when a container's
    /// definition changes (`kubectl set image pod/...`). True if any was.
    async fn apply_image_changes(&self, pod: &Value, w: &mut Worker) -> bool {
        let Some(r) = w.running.as_ref() else {
            return false;
        };
        let changed: Vec<(String, String)> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let (name, image) = (c["name"].as_str()?, c["image"].as_str()?);
                let running = r.containers.iter().find(|rc| rc.name == name)?;
                (running.image != image).then(|| (name.to_string(), image.to_string()))
            })
            .collect();
        let mut any = false;
        for (name, image) in changed {
            let msg = format!("Container {name} definition changed, will be restarted");
            self.event(w, pod, Some(&name), "Normal", "Killing", &msg)
                .await;
            let mut spec_pod = w.resolved.clone().unwrap_or_else(|| pod.clone());
            let policy = pod["spec"]["containers"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == name.as_str()))
                .map(pull_policy)
                .unwrap_or_default();
            if let Some(c) = spec_pod["spec"]["containers"]
                .as_array_mut()
                .and_then(|l| l.iter_mut().find(|c| c["name"] == name.as_str()))
            {
                c["image"] = json!(image);
                c["imagePullPolicy"] = json!(policy);
            }
            if self.restart_now(pod, w, &spec_pod, &name, &image).await {
                any = true;
                if let Some(c) = w
                    .running
                    .as_mut()
                    .and_then(|r| r.containers.iter_mut().find(|c| c.name == name))
                {
                    c.image = image;
                }
                w.resolved = Some(spec_pod);
            }
        }
        any
    }

    async fn sync_running(&self, pod: &Value, w: &mut Worker) -> Next {
        self.handle_probes(pod, w).await;
        self.refresh_volumes(pod, w).await;
        self.start_ephemeral(pod, w).await;
        if self.apply_image_changes(pod, w).await {
            if let Some(r) = &w.running {
                self.publish_logs(r);
            }
        }
        let Some(r) = w.running.as_ref() else {
            return Next::Idle;
        };
        let st = match pod_status(&self.cri, r).await {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", r.namespace, r.name), "pod status: {e:#}");
                return Next::After(POLL);
            }
        };
        let policy = pod.pointer("/spec/restartPolicy").and_then(Value::as_str);
        let pod_ref = format!(
            "{}_{}({})",
            str_at(pod, "/metadata/name"),
            str_at(pod, "/metadata/namespace"),
            w.uid.clone().unwrap_or_default()
        );
        let now = Instant::now();
        let mut all_done = true;
        let mut any_failed = false;
        let mut waiting: HashMap<String, String> = HashMap::new();
        let mut restarted = false;
        let mut next = POLL;
        for cs in &st.containers {
            let Some(code) = cs.exit_code() else {
                all_done = false;
                continue;
            };
            if !should_restart(policy, code) {
                any_failed |= code != 0;
                continue;
            }
            all_done = false;
            let b = w.backoff.entry(cs.name.clone()).or_default();
            if b.until.is_none() {
                if b.started.is_some_and(|s| now - s > BACKOFF_RESET) {
                    b.delay = None;
                }
                b.until = Some(now + b.delay.unwrap_or_default());
            }
            let until = b.until.unwrap_or(now);
            if now < until {
                let delay = b.delay.unwrap_or_default();
                let msg = format!(
                    "back-off {} restarting failed container={} pod={pod_ref}",
                    fmt_duration(delay),
                    cs.name
                );
                waiting.insert(cs.name.clone(), msg);
                next = next.min(until - now);
                let ev = format!(
                    "Back-off restarting failed container {} in pod {pod_ref}",
                    cs.name
                );
                let name = cs.name.clone();
                self.event(w, pod, Some(&name), "Warning", "BackOff", &ev)
                    .await;
                continue;
            }
            // Restart now.
            let spec_pod = w.resolved.clone().unwrap_or_else(|| pod.clone());
            let ok = self
                .restart_now(pod, w, &spec_pod, &cs.name, &cs.image)
                .await;
            let b = w.backoff.entry(cs.name.clone()).or_default();
            b.until = None;
            b.delay = Some(match b.delay {
                None => BACKOFF_START,
                Some(d) => (d * 2).min(BACKOFF_MAX),
            });
            b.started = Some(Instant::now());
            restarted |= ok;
        }
        if restarted {
            if let Some(r) = &w.running {
                self.publish_logs(r);
            }
            // Report the new instances right away.
            return Box::pin(self.sync_running(pod, w)).await;
        }
        let phase = if all_done && !st.containers.is_empty() {
            if any_failed {
                "Failed"
            } else {
                "Succeeded"
            }
        } else {
            "Running"
        };
        let status = self.running_status(pod, w, &st, phase, &waiting);
        self.report(pod, w, status).await;
        if phase != "Running" {
            w.terminal = true;
            self.stop(w, 0).await;
            return Next::Idle;
        }
        Next::After(next)
    }

    /// Writes `status` through the status subresource unless it is what
    /// was reported last.
    async fn report(&self, pod: &Value, w: &mut Worker, status: Value) {
        if w.last_status.as_ref() == Some(&status) {
            return;
        }
        Self::flush_events(w).await;
        let (ns, name) = (
            str_at(pod, "/metadata/namespace"),
            str_at(pod, "/metadata/name"),
        );
        match self.api.merge_pod_status(ns, name, &status).await {
            Ok(_) => w.last_status = Some(status),
            Err(e) => tracing::debug!(pod = %format!("{ns}/{name}"), "status update: {e}"),
        }
    }

    fn base_status(&self, pod: &Value, w: &Worker) -> Value {
        let prev = w.last_status.as_ref().unwrap_or(&pod["status"]);
        let start = prev
            .get("startTime")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        let mut s = json!({
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": start,
        });
        if let Some(q) = pod.pointer("/status/qosClass") {
            s["qosClass"] = q.clone();
        }
        s
    }

    fn pending_status(
        &self,
        pod: &Value,
        w: &Worker,
        reason: &str,
        message: &str,
        fatal: bool,
    ) -> Value {
        let mut s = self.base_status(pod, w);
        let names: Vec<String> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let statuses: Vec<Value> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "",
                    "ready": false, "started": false, "restartCount": 0,
                    "lastState": {},
                    "state": {"waiting": {"reason": reason, "message": message}}
                })
            })
            .collect();
        s["phase"] = json!(if fatal { "Failed" } else { "Pending" });
        let unready = format!("containers with unready status: [{}]", names.join(" "));
        s["conditions"] = json!([
            cond("PodReadyToStartContainers", false, None),
            cond("Initialized", !reason.starts_with("PodInit"), None),
            cond("Ready", false, Some(("ContainersNotReady", &unready))),
            cond(
                "ContainersReady",
                false,
                Some(("ContainersNotReady", &unready))
            ),
            cond("PodScheduled", true, None),
        ]);
        s["containerStatuses"] = json!(statuses);
        keep_times(&mut s, w.last_status.as_ref().unwrap_or(&pod["status"]));
        s
    }

    fn running_status(
        &self,
        pod: &Value,
        w: &Worker,
        st: &PodRuntimeStatus,
        phase: &str,
        waiting: &HashMap<String, String>,
    ) -> Value {
        let mut s = self.base_status(pod, w);
        let ip = st.pod_ip.clone().unwrap_or_else(|| self.host_ip.clone());
        s["phase"] = json!(phase);
        s["podIP"] = json!(ip);
        s["podIPs"] = json!([{ "ip": ip }]);
        let mut unready = vec![];
        let statuses: Vec<Value> = st
            .containers
            .iter()
            .map(|c| {
                let mut v = c.to_k8s();
                let running = matches!(c.state, ContainerState::Running { .. });
                let spec = spec_container(pod, &c.name);
                let has = |k: &str| spec.is_some_and(|s| s.get(k).is_some_and(Value::is_object));
                if running && (has("startupProbe") || has("readinessProbe")) {
                    let id = c
                        .container_id
                        .strip_prefix("containerd://")
                        .unwrap_or(&c.container_id);
                    let res = w.prober.as_ref().and_then(|p| p.result(&c.name, id));
                    let (started, ready) = match res {
                        Some(r) => (r.started, r.ready && r.started),
                        None => (!has("startupProbe"), false),
                    };
                    v["started"] = json!(started);
                    v["ready"] = json!(ready);
                }
                if let Some(msg) = waiting.get(&c.name) {
                    v["lastState"] = serde_json::to_value(&c.state).unwrap_or_default();
                    v["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": msg}});
                    v["ready"] = json!(false);
                    v["started"] = json!(false);
                }
                if v["ready"] != true {
                    unready.push(c.name.clone());
                }
                v
            })
            .collect();
        let init: Vec<Value> = st
            .init_containers
            .iter()
            .map(|c| {
                let mut v = c.to_k8s();
                v["ready"] = json!(matches!(
                    c.state,
                    ContainerState::Terminated { exit_code: 0, .. }
                ));
                v
            })
            .collect();
        let ready = unready.is_empty() && phase == "Running";
        let why = if phase == "Running" {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        } else {
            ("PodCompleted", String::new())
        };
        s["conditions"] = json!([
            cond(
                "PodReadyToStartContainers",
                st.sandbox_ready || phase != "Running",
                None
            ),
            cond("Initialized", true, None),
            cond("Ready", ready, (!ready).then_some((why.0, why.1.as_str()))),
            cond(
                "ContainersReady",
                ready,
                (!ready).then_some((why.0, why.1.as_str()))
            ),
            cond("PodScheduled", true, None),
        ]);
        if !init.is_empty() {
            s["initContainerStatuses"] = json!(init);
        }
        s["containerStatuses"] = json!(statuses);
        if !st.ephemeral_containers.is_empty() {
            // Ephemeral containers have no probes and are never "ready".
            let eph: Vec<Value> = st
                .ephemeral_containers
                .iter()
                .map(|c| {
                    let mut v = c.to_k8s();
                    v["ready"] = json!(false);
                    v
                })
                .collect();
            s["ephemeralContainerStatuses"] = json!(eph);
        }
        keep_times(&mut s, w.last_status.as_ref().unwrap_or(&pod["status"]));
        s
    }

    /// Records a core/v1 Event about the pod (repeats bump the count).
    async fn event(
        &self,
        w: &mut Worker,
        pod: &Value,
        container: Option<&str>,
        typ: &str,
        reason: &str,
        message: &str,
    ) {
        let ns = str_at(pod, "/metadata/namespace");
        let pod_name = str_at(pod, "/metadata/name");
        let now = now_rfc3339();
        let dedup = (reason.to_string(), message.to_string());
        if let Some((name, count)) = w.events.get(&dedup).cloned() {
            // The event must exist before its count is bumped.
            Self::flush_events(w).await;
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            match self.api.patch_event(ns, &name, &patch).await {
                Ok(_) => {
                    w.events.insert(dedup, (name, count + 1));
                    return;
                }
                Err(e) => tracing::debug!("updating event {name}: {e}"),
            }
        }
        let field_path = container.map(|c| {
            let init = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x["name"] == c));
            let ephemeral = pod
                .pointer("/spec/ephemeralContainers")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x["name"] == c));
            if init {
                format!("spec.initContainers{{{c}}}")
            } else if ephemeral {
                format!("spec.ephemeralContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64
            + EVENT_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{pod_name}.{nanos:x}");
        let mut involved = json!({
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod_name,
            "uid": pod["metadata"]["uid"],
        });
        if let Some(fp) = field_path {
            involved["fieldPath"] = json!(fp);
        }
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": typ,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        });
        // Written in the background; if that fails, a repeat's patch fails
        // too and creates the event anew.
        w.events.insert(dedup, (name, 1));
        let api = self.api.clone();
        let (ns, what) = (ns.to_string(), format!("{reason} for {pod_name}"));
        w.inflight_events.retain(|h| !h.is_finished());
        w.inflight_events.push(tokio::spawn(async move {
            if let Err(e) = api.create_event(&ns, ev).await {
                tracing::debug!("recording event {what} in {ns}: {e}");
            }
        }));
    }

    /// Waits for the event writes in flight.
    async fn flush_events(w: &mut Worker) {
        for h in w.inflight_events.drain(..) {
            let _ = h.await;
        }
    }

    fn lookup(&self, kind: Lookup, ns: &str, name: &str) -> Option<Value> {
        self.api.lookup(kind, ns, name)
    }

    /// The Docker-links variables of the Services a pod sees, as the
    /// kubelet sets them: those of its namespace (unless
    /// `enableServiceLinks` is false) and always the API's `kubernetes`.
    fn service_env(&self, pod: &Value) -> Vec<Value> {
        let ns = str_at(pod, "/metadata/namespace");
        let links = pod
            .pointer("/spec/enableServiceLinks")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut services: std::collections::BTreeMap<String, Value> = if links {
            self.api
                .lookup_all(Lookup::Service, ns)
                .into_iter()
                .map(|s| (str_at(&s, "/metadata/name").to_string(), s))
                .collect()
        } else {
            Default::default()
        };
        if let Some(api) = self.lookup(Lookup::Service, "default", "kubernetes") {
            services.entry("kubernetes".into()).or_insert(api);
        }
        services.values().flat_map(service_link_env).collect()
    }

    /// One value from a ConfigMap (`data`/`binaryData`) or Secret.
    fn ref_value(&self, ns: &str, secret: bool, r: &Value) -> Result<Option<String>, String> {
        let name = r["name"].as_str().unwrap_or_default();
        let key = r["key"].as_str().unwrap_or_default();
        let optional = r["optional"].as_bool().unwrap_or(false);
        let (info, kind, word) = if secret {
            (Lookup::Secret, "Secret", "secret")
        } else {
            (Lookup::ConfigMap, "ConfigMap", "configmap")
        };
        let Some(obj) = self.lookup(info, ns, name) else {
            return if optional {
                Ok(None)
            } else {
                Err(format!("{word} \"{name}\" not found"))
            };
        };
        match data_map(&obj, secret).remove(key) {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
        }
    }

    /// The pod with `configMapKeyRef`/`secretKeyRef` env values and
    /// `envFrom` sources turned into literal values.
    fn resolve_env(&self, pod: &Value) -> Result<Value, String> {
        let ns = str_at(pod, "/metadata/namespace").to_string();
        let mut out = pod.clone();
        let api_env = self.service_env(pod);
        for field in ["initContainers", "containers", "ephemeralContainers"] {
            let Some(list) = out["spec"][field].as_array_mut() else {
                continue;
            };
            for c in list {
                let mut env: Vec<Value> = api_env.clone();
                for src in c["envFrom"].as_array().into_iter().flatten() {
                    let prefix = src["prefix"].as_str().unwrap_or_default();
                    let (r, secret) = if src.get("secretRef").is_some() {
                        (&src["secretRef"], true)
                    } else {
                        (&src["configMapRef"], false)
                    };
                    let name = r["name"].as_str().unwrap_or_default();
                    let info = if secret {
                        Lookup::Secret
                    } else {
                        Lookup::ConfigMap
                    };
                    match self.lookup(info, &ns, name) {
                        Some(obj) => {
                            let mut kv: Vec<_> = data_map(&obj, secret).into_iter().collect();
                            kv.sort();
                            for (k, v) in kv {
                                env.push(json!({"name": format!("{prefix}{k}"), "value": v}));
                            }
                        }
                        None if r["optional"].as_bool() == Some(true) => {}
                        None => {
                            let word = if secret { "secret" } else { "configmap" };
                            return Err(format!("{word} \"{name}\" not found"));
                        }
                    }
                }
                for e in c["env"].as_array().into_iter().flatten() {
                    let vf = &e["valueFrom"];
                    let resolved = if vf.get("configMapKeyRef").is_some() {
                        Some(self.ref_value(&ns, false, &vf["configMapKeyRef"])?)
                    } else if vf.get("secretKeyRef").is_some() {
                        Some(self.ref_value(&ns, true, &vf["secretKeyRef"])?)
                    } else {
                        None
                    };
                    match resolved {
                        None => env.push(e.clone()),
                        Some(None) => {}
                        Some(Some(v)) => env.push(json!({"name": e["name"], "value": v})),
                    }
                }
                // A later definition wins, as the kubelet's map of variables.
                let mut seen = std::collections::HashSet::new();
                env.reverse();
                env.retain(|e| seen.insert(e["name"].as_str().unwrap_or_default().to_string()));
                env.reverse();
                if c.get("env").is_some() || !env.is_empty() {
                    c["env"] = json!(env);
                }
            }
        }
        Ok(out)
    }
}

fn spec_container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
}

fn grace_of(pod: &Value) -> i64 {
    pod.pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30)
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    pod.pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            pod.pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
}

fn data_map(obj: &Value, secret: bool) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (field, encoded) in [
        ("data", secret),
        ("stringData", false),
        ("binaryData", true),
    ] {
        for (k, v) in obj[field].as_object().into_iter().flatten() {
            let Some(v) = v.as_str() else { continue };
            let v = if encoded {
                match b64.decode(v) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(_) => continue,
                }
            } else {
                v.to_string()
            };
            out.insert(k.clone(), v);
        }
    }
    out
}

fn cond(t: &str, status: bool, why: Option<(&str, &str)>) -> Value {
    let mut c = json!({
        "type": t,
        "status": if status { "True" } else { "False" },
        "lastProbeTime": null,
        "lastTransitionTime": now_rfc3339(),
    });
    if let Some((reason, message)) = why {
        c["reason"] = json!(reason);
        if !message.is_empty() {
            c["message"] = json!(message);
        }
    }
    c
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
fn keep_times(status: &mut Value, old: &Value) {
    crate::node::keep_transition_times(status, old);
}

/// `10s`, `1m20s`, `5m0s`, as Go prints a duration.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The variables one Service gives a container (upstream's
/// `envvars.FromServices`): `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT[_PORTNAME]`
/// and the `NAME_PORT[_N_PROTO[_PROTO|_PORT|_ADDR]]` links; none for a
/// headless Service or one without a cluster IP.
pub fn service_link_env(svc: &Value) -> Vec<Value> {
    let ip = str_at(svc, "/spec/clusterIP");
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return vec![];
    }
    let name = str_at(svc, "/metadata/name")
        .to_uppercase()
        .replace('-', "_");
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let mut vars: Vec<(String, String)> = vec![(format!("{name}_SERVICE_HOST"), ip.to_string())];
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"].as_i64().unwrap_or(0);
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if i == 0 {
            vars.push((format!("{name}_SERVICE_PORT"), port.to_string()));
        }
        if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
            let pn = pn.to_uppercase().replace('-', "_");
            vars.push((format!("{name}_SERVICE_PORT_{pn}"), port.to_string()));
        }
        let url = format!("{}://{host}:{port}", proto.to_lowercase());
        if i == 0 {
            vars.push((format!("{name}_PORT"), url.clone()));
        }
        let link = format!("{name}_PORT_{port}_{}", proto.to_uppercase());
        vars.push((format!("{link}_PROTO"), proto.to_lowercase()));
        vars.push((format!("{link}_PORT"), port.to_string()));
        vars.push((format!("{link}_ADDR"), ip.to_string()));
        vars.push((link, url));
    }
    vars.into_iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_give_docker_link_variables() {
        let svc = json!({"metadata": {"name": "redis-primary"}, "spec": {"clusterIP": "10.43.0.11",
            "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let env: Vec<(String, String)> = service_link_env(&svc)
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want = [
            ("REDIS_PRIMARY_SERVICE_HOST", "10.43.0.11"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_REDIS", "6379"),
            ("REDIS_PRIMARY_PORT", "tcp://10.43.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.43.0.11"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.43.0.11:6379"),
            ("REDIS_PRIMARY_PORT_53_UDP_PROTO", "udp"),
            ("REDIS_PRIMARY_PORT_53_UDP_PORT", "53"),
            ("REDIS_PRIMARY_PORT_53_UDP_ADDR", "10.43.0.11"),
            ("REDIS_PRIMARY_PORT_53_UDP", "udp://10.43.0.11:53"),
        ];
        assert_eq!(env, want.map(|(k, v)| (k.to_string(), v.to_string())));
        let headless = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}});
        assert!(service_link_env(&headless).is_empty());
    }

    #[test]
    fn arp_table_lookup() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.42.0.5        0x1         0x2         aa:bb:cc:dd:ee:ff     *        kobune0\n";
        assert!(arp_has(t, "10.42.0.5"));
        assert!(!arp_has(t, "10.42.0.50"));
        assert!(!arp_has(t, "IP"));
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn secret_and_configmap_data() {
        let cm = json!({"data": {"a": "1"}});
        assert_eq!(data_map(&cm, false)["a"], "1");
        let sec = json!({"data": {"p": "aGk="}});
        assert_eq!(data_map(&sec, true)["p"], "hi");
    }

    #[test]
    fn conditions_keep_transition_times() {
        let mut s = json!({"conditions": [cond("Ready", true, None)]});
        let old = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}]});
        keep_times(&mut s, &old);
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t0");
        let mut s = json!({"conditions": [cond("Ready", true, None)]});
        let old = json!({"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "t0"}]});
        keep_times(&mut s, &old);
        assert_ne!(s["conditions"][0]["lastTransitionTime"], "t0");
    }
}

//! The default scheduler, as the upstream scheduler framework in small
//! pieces: a [`queue::SchedulingQueue`], a cache of node infos kept from
//! informers plus assumed pods ([`cluster::ClusterState`]), filter and
//! score [`plugins`], and binding through the pods/binding semantics
//! (spec.nodeName with a resourceVersion precondition).
//!
//! Scheduling cycles run one at a time on one task against the cache;
//! binding and status/event writes run concurrently afterwards.

// ApiError mirrors the wire Status; errors are off the hot path.
#![allow(clippy::result_large_err)]

pub mod cluster;
pub mod plugins;
pub mod quantity;
pub mod queue;
pub mod types;
pub mod volumes;

use cluster::ClusterState;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::binding::Binding;
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{now_rfc3339, PatchKind, WriteOptions};
use kobune_apiserver::Registry;
use kobune_controllers::runtime::Informer;
use plugins::{CycleState, FilterPlugin, ScorePlugin};
use queue::SchedulingQueue;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use types::{NodeInfo, PodInfo, DEFAULT_SCHEDULER};

pub use types::Resources;

pub const PODS_PREFIX: &str = "/registry/core/pods/";
pub const NODES_PREFIX: &str = "/registry/core/nodes/";
/// Concurrent API writes (bindings, status, events).
const WRITE_CONCURRENCY: usize = 128;

/// Why a pod fits no node: reason → number of nodes.
#[derive(Debug, Clone, Default)]
pub struct FitError {
    pub num_nodes: usize,
    pub reasons: HashMap<String, usize>,
}

impl FitError {
    /// Upstream's message, without the preemption part.
    pub fn message(&self) -> String {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            format!("0/{} nodes are available.", self.num_nodes)
        } else {
            format!(
                "0/{} nodes are available: {}.",
                self.num_nodes,
                parts.join(", ")
            )
        }
    }
}

/// A profile: filters and weighted scores.
pub struct Framework {
    pub filters: Vec<Box<dyn FilterPlugin>>,
    pub scores: Vec<Box<dyn ScorePlugin>>,
    next_start: AtomicUsize,
}

impl Default for Framework {
    fn default() -> Self {
        Framework {
            filters: plugins::default_filters(),
            scores: plugins::default_scores(),
            next_start: AtomicUsize::new(0),
        }
    }
}

/// How many feasible nodes to look for (upstream's adaptive
/// percentageOfNodesToScore): all of a small cluster, fewer of a big one.
pub fn num_feasible_nodes_to_find(n: usize) -> usize {
    if n < 100 {
        return n;
    }
    let pct = 50usize.saturating_sub(n / 125).max(5);
    (n * pct / 100).max(100)
}

impl Framework {
    fn run_filters(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
    ) -> Result<(), Vec<String>> {
        for f in &self.filters {
            f.filter(state, pod, node)?;
        }
        Ok(())
    }

    /// Picks a node for the pod, or says why none fits.
    pub fn schedule(&self, pod: &PodInfo, cluster: &ClusterState) -> Result<String, FitError> {
        let n = cluster.order.len();
        let mut err = FitError {
            num_nodes: n,
            ..Default::default()
        };
        if n == 0 {
            return Err(err);
        }
        let mut state = CycleState::default();
        for f in &self.filters {
            f.pre_filter(pod, cluster, &mut state);
        }
        let want = num_feasible_nodes_to_find(n);
        let start = self.next_start.load(Ordering::Relaxed) % n;
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(n));
        let mut processed = 0;
        for i in 0..n {
            processed += 1;
            let Some(node) = cluster.nodes.get(&cluster.order[(start + i) % n]) else {
                continue;
            };
            match self.run_filters(&state, pod, node) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(why) => {
                    for r in why {
                        *err.reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        self.next_start
            .store((start + processed) % n, Ordering::Relaxed);
        match feasible.len() {
            0 => Err(err),
            1 => Ok(feasible[0].name.clone()),
            _ => {
                let totals = self.score(&state, pod, &feasible);
                Ok(feasible[select(&totals)].name.clone())
            }
        }
    }

    /// Weighted sum of normalised scores per feasible node.
    pub fn score(&self, state: &CycleState, pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut totals = vec![0i64; nodes.len()];
        let mut scores = vec![0i64; nodes.len()];
        for p in &self.scores {
            for (s, n) in scores.iter_mut().zip(nodes) {
                *s = p.score(state, pod, n);
            }
            p.normalize(&mut scores);
            for (t, s) in totals.iter_mut().zip(&scores) {
                *t += p.weight() * s.clamp(&0, &100);
            }
        }
        totals
    }
}

/// The index of the highest score; ties broken at random.
fn select(totals: &[i64]) -> usize {
    let mut best = 0;
    let mut ties = 0u32;
    let mut rng = rand::rng();
    for (i, t) in totals.iter().enumerate() {
        if *t > totals[best] {
            best = i;
            ties = 1;
        } else if *t == totals[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

struct EventRecord {
    name: String,
    count: i64,
}

pub struct Scheduler {
    registry: Arc<Registry>,
    pods: Arc<ResourceInfo>,
    events: Arc<ResourceInfo>,
    pub cluster: Mutex<ClusterState>,
    pub queue: SchedulingQueue,
    framework: Framework,
    opts: WriteOptions,
    writes: Arc<tokio::sync::Semaphore>,
    recorded: Mutex<HashMap<String, EventRecord>>,
    /// Scheduling cycles run, and the time spent in them (filter, score,
    /// assume; not binding), for timing logs and benchmarks.
    pub cycles: AtomicU64,
    pub cycle_nanos: AtomicU64,
}

fn spec_or_labels_changed(ev: &CacheEvent) -> bool {
    match &ev.prev {
        None => true,
        Some(prev) => {
            prev.get("spec") != ev.object.get("spec")
                || prev.pointer("/metadata/labels") != ev.object.pointer("/metadata/labels")
        }
    }
}

fn name_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or_default()
}

impl Scheduler {
    pub fn new(registry: Arc<Registry>) -> anyhow::Result<Scheduler> {
        let pods = registry
            .resources
            .find("", "v1", "pods")
            .ok_or_else(|| anyhow::anyhow!("pods are not served"))?;
        let events = registry
            .resources
            .find("", "v1", "events")
            .ok_or_else(|| anyhow::anyhow!("events are not served"))?;
        Ok(Scheduler {
            registry,
            pods,
            events,
            cluster: Mutex::default(),
            queue: SchedulingQueue::default(),
            framework: Framework::default(),
            opts: WriteOptions {
                field_manager: Some(DEFAULT_SCHEDULER.into()),
                ..Default::default()
            },
            writes: Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY)),
            recorded: Mutex::default(),
            cycles: AtomicU64::new(0),
            cycle_nanos: AtomicU64::new(0),
        })
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn on_node_event(&self, ev: &CacheEvent) {
        let changed = match ev.kind {
            EventType::Deleted => {
                self.cluster().remove_node(name_of(&ev.key));
                false
            }
            _ => self.cluster().upsert_node(&ev.object),
        };
        if changed {
            self.queue.move_all();
        }
    }

    pub fn on_pod_event(&self, ev: &CacheEvent) {
        if ev.kind == EventType::Deleted {
            let placed = self.cluster().remove_pod(&ev.key);
            self.queue.delete(&ev.key);
            self.recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ev.key);
            if placed {
                self.queue.move_all();
            }
            return;
        }
        if self.already_placed(ev) {
            return;
        }
        let pod = Arc::new(PodInfo::from_value(&ev.key, &ev.object));
        if !pod.node_name.is_empty() {
            self.queue.delete(&ev.key);
            if pod.terminal {
                if self.cluster().remove_pod(&ev.key) {
                    self.queue.move_all();
                }
            } else {
                let node = pod.node_name.clone();
                let added = self.cluster().node_of(&ev.key).is_none();
                self.cluster().confirm(pod, &node);
                if added {
                    self.queue.move_for_pod_added();
                }
            }
            return;
        }
        if pod.deleting || !pod.is_ours() {
            self.queue.delete(&ev.key);
            return;
        }
        if self.cluster().is_assumed(&ev.key) {
            return;
        }
        self.queue.add_or_update(pod, spec_or_labels_changed(ev));
    }

    /// True for an update of a pod whose placement is already confirmed in
    /// the cache when nothing the cache keeps about it changed (the common
    /// case: kubelet status writes), so the event needs no parsing at all.
    fn already_placed(&self, ev: &CacheEvent) -> bool {
        let Some(prev) = &ev.prev else {
            return false;
        };
        let obj = &ev.object;
        let node = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if node.is_empty() || spec_or_labels_changed(ev) {
            return false;
        }
        let same = |p: &str| prev.pointer(p) == obj.pointer(p);
        let terminal = matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if terminal || !same("/metadata/deletionTimestamp") || !same("/metadata/ownerReferences") {
            return false;
        }
        let cl = self.cluster();
        cl.node_of(&ev.key) == Some(node) && !cl.is_assumed(&ev.key)
    }

    /// The scheduling loop; runs until the queue closes.
    pub async fn run(self: Arc<Self>) {
        let mut n = 0u64;
        while let Some((pod, cycle)) = self.queue.pop().await {
            n += 1;
            if n >= 16 {
                n = 0;
                tokio::task::yield_now().await;
            }
            let started = std::time::Instant::now();
            // Claims: missing or unbound-immediate ones make the pod
            // unschedulable; bound volumes' node affinity narrows the nodes.
            let pod = match volumes::constrain(&self.registry, &pod) {
                Ok(Some(p)) => Arc::new(p),
                Ok(None) => pod,
                Err(why) => {
                    self.queue.unschedulable(&pod.key, cycle);
                    let msg = format!(
                        "0/{} nodes are available: {why}.",
                        self.cluster().order.len()
                    );
                    let s = self.clone();
                    tokio::spawn(async move { s.record_failure(pod, msg).await });
                    continue;
                }
            };
            let result = {
                let mut cl = self.cluster();
                let r = self.framework.schedule(&pod, &cl);
                if let Ok(node) = &r {
                    cl.assume(pod.clone(), node);
                }
                r
            };
            let total = self.cycles.fetch_add(1, Ordering::Relaxed) + 1;
            let nanos = self
                .cycle_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if total.is_multiple_of(1000) {
                tracing::debug!(
                    cycles = total,
                    avg_us = nanos / total / 1000,
                    nodes = self.cluster().order.len(),
                    "scheduling cycles"
                );
            }
            match result {
                Ok(node) => {
                    self.queue.assumed(&pod.key);
                    let s = self.clone();
                    tokio::spawn(async move { s.bind(pod, node).await });
                }
                Err(fit) => {
                    self.queue.unschedulable(&pod.key, cycle);
                    let s = self.clone();
                    tokio::spawn(async move { s.record_failure(pod, fit.message()).await });
                }
            }
        }
    }

    async fn bind(self: Arc<Self>, pod: Arc<PodInfo>, node: String) {
        let _permit = self.writes.clone().acquire_owned().await;
        // One write: nodeName and PodScheduled=True, as pods/binding does.
        let binding = Binding {
            node: node.clone(),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        };
        if let Err(e) = self
            .registry
            .bind_pod(&pod.namespace, &pod.name, &binding)
            .await
        {
            tracing::debug!(pod = %pod.key, %node, "binding failed: {e}");
            self.cluster().forget(&pod.key);
            self.queue.retry(&pod.key);
        }
    }

    async fn record_failure(self: Arc<Self>, pod: Arc<PodInfo>, message: String) {
        let _permit = self.writes.clone().acquire_owned().await;
        let ns = Some(pod.namespace.as_str());
        let Some(cur) = self.registry.cache.get(&pod.key) else {
            return;
        };
        if cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(pod.uid.as_str()) {
            return;
        }
        let same = cur
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "PodScheduled"
                    && c["status"] == "False"
                    && c["reason"] == "Unschedulable"
                    && c["message"] == message.as_str()
            });
        let now = now_rfc3339();
        if !same {
            let status = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastProbeTime": null, "lastTransitionTime": now
            }]}});
            if let Err(e) = self
                .registry
                .patch(
                    &self.pods,
                    ns,
                    &pod.name,
                    PatchKind::Strategic,
                    &status,
                    &self.opts,
                    Some("status"),
                )
                .await
            {
                tracing::debug!(pod = %pod.key, "setting PodScheduled=False failed: {e}");
            }
        }
        self.event(&pod, &message, &now).await;
    }

    /// Records (or counts up) the pod's FailedScheduling event.
    async fn event(&self, pod: &PodInfo, message: &str, now: &str) {
        let ns = Some(pod.namespace.as_str());
        let previous = self
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pod.key)
            .map(|r| (r.name.clone(), r.count));
        if let Some((name, count)) = previous {
            let patch = json!({"count": count + 1, "lastTimestamp": now, "message": message});
            if self
                .registry
                .patch(
                    &self.events,
                    ns,
                    &name,
                    PatchKind::Merge,
                    &patch,
                    &self.opts,
                    None,
                )
                .await
                .is_ok()
            {
                if let Some(r) = self
                    .recorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&pod.key)
                {
                    r.count = count + 1;
                }
                return;
            }
        }
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let name = format!("{}.{:x}", pod.name, nanos);
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace,
                "name": pod.name, "uid": pod.uid, "resourceVersion": pod.resource_version
            },
            "reason": "FailedScheduling",
            "message": message,
            "source": {"component": DEFAULT_SCHEDULER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": "Warning",
            "reportingComponent": DEFAULT_SCHEDULER,
            "reportingInstance": format!("{DEFAULT_SCHEDULER}-kobune"),
        });
        match self.registry.create(&self.events, ns, ev, &self.opts).await {
            Ok(_) => {
                self.recorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pod.key.clone(), EventRecord { name, count: 1 });
            }
            Err(e) => tracing::debug!(pod = %pod.key, "recording event failed: {e}"),
        }
    }
}

/// Starts the scheduler on the current runtime; returns once its informers
/// have synced. It runs until the process ends.
pub async fn start(registry: Arc<Registry>) -> anyhow::Result<()> {
    start_scheduler(registry).await.map(|_| ())
}

/// As [`start`], returning the scheduler (for tests and metrics).
pub async fn start_scheduler(registry: Arc<Registry>) -> anyhow::Result<Arc<Scheduler>> {
    let sched = Arc::new(Scheduler::new(registry.clone())?);
    let nodes = Arc::new(Informer::new(NODES_PREFIX));
    let s = sched.clone();
    nodes.start(&registry.cache, move |_, ev| s.on_node_event(ev))?;
    let pods = Arc::new(Informer::new(PODS_PREFIX));
    let s = sched.clone();
    pods.start(&registry.cache, move |_, ev| s.on_pod_event(ev))?;
    // Claims and volumes appearing or getting bound can make pods fit.
    for (group, plural) in [("", "persistentvolumeclaims"), ("", "persistentvolumes")] {
        let Some(info) = registry.resources.find(group, "v1", plural) else {
            continue;
        };
        let inf = Arc::new(Informer::new(info.key_prefix()));
        let s = sched.clone();
        inf.start(&registry.cache, move |_, ev| {
            if ev.kind != EventType::Deleted {
                s.queue.move_all();
            }
        })?;
    }
    tokio::spawn(sched.clone().run());
    tracing::info!("scheduler started");
    Ok(sched)
}

//! The node lifecycle controller, as upstream's (pkg/controller/nodelifecycle)
//! with its taint-based eviction and the orphan part of pod GC, simply:
//!
//! - Every monitor period each Node's heartbeats are probed: its Lease
//!   (`kube-node-lease/<node>`) `spec.renewTime` and its Ready condition's
//!   `lastHeartbeatTime`. As upstream, what counts is when this controller
//!   last saw either *change* (on its own clock), so clock skew and a
//!   restarted server do not make nodes look dead. A node not heard from
//!   for the grace period (40 s; the environment variable
//!   `KOBUNE_NODE_MONITOR_GRACE_PERIOD`, in seconds, overrides it) gets its
//!   Ready, MemoryPressure, DiskPressure and PIDPressure conditions set to
//!   Unknown (reason `NodeStatusUnknown`, "Kubelet stopped posting node
//!   status.") through the status subresource and a `NodeNotReady` event.
//! - Taints follow the Ready condition: Unknown gives
//!   `node.kubernetes.io/unreachable` NoSchedule and NoExecute, False gives
//!   `node.kubernetes.io/not-ready` ones, True neither (the agent posts
//!   Ready again when it is back; simulated nodes, whose agent only renews
//!   leases, are set Ready here once their lease is renewed again). When
//!   every node is unhealthy (upstream's full disruption) the NoExecute
//!   taints are withheld so a cluster-wide outage evicts nothing.
//! - Taint-based eviction: pods on a node with NoExecute taints they do not
//!   tolerate are deleted (gracefully, as upstream; pods on an unreachable
//!   node then stay Terminating until it comes back or is deleted, and
//!   their ReplicaSet, which does not count terminating pods, replaces
//!   them); pods tolerating them for `tolerationSeconds` are deleted that
//!   long after the taint's `timeAdded`. Each gets a `TaintManagerEviction`
//!   event.
//! - Pod GC: pods bound to a node that was deleted are deleted with grace
//!   period 0 (force-deleted, as upstream's PodGC); pods bound to a node
//!   never seen are, after a 40 s quarantine.

use crate::runtime::Informer;
use crate::workload::*;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::EventType;
use kobune_apiserver::registry::{now_rfc3339, DeleteOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub const COMPONENT: &str = "node-controller";
pub const EVICTION_COMPONENT: &str = "taint-eviction-controller";
pub const GRACE_ENV: &str = "KOBUNE_NODE_MONITOR_GRACE_PERIOD";
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
/// How long a pod's node may be unknown before the pod is collected.
pub const QUARANTINE_SECS: f64 = 40.0;
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const SIMULATED_LABEL: &str = "kobune.io/simulated";
const BY_NODE: &str = "nodeName";
const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The grace period from the environment, or the default.
pub fn grace_period() -> Duration {
    std::env::var(GRACE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_GRACE)
}

// ---------------------------------------------------------------------------
// Pure parts

/// What was last seen of a node's heartbeats, and when (local clock) they
/// last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub heartbeat: String,
    pub renew: String,
    pub probe: f64,
}

fn ready_heartbeat(node: &Value) -> String {
    get_condition(&conditions(node), "Ready")
        .and_then(|c| c.get("lastHeartbeatTime"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Updates the observation of a node from its current object and lease.
pub fn observe(prev: Option<&Observed>, node: &Value, lease: Option<&Value>, now: f64) -> Observed {
    let heartbeat = ready_heartbeat(node);
    let renew = lease
        .and_then(|l| l.pointer("/spec/renewTime"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let probe = match prev {
        Some(p) if p.heartbeat == heartbeat && p.renew == renew => p.probe,
        _ => now,
    };
    Observed {
        heartbeat,
        renew,
        probe,
    }
}

pub fn ready_status(node: &Value) -> Option<String> {
    get_condition(&conditions(node), "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

/// The conditions of a node not heard from: Ready and the pressure
/// conditions Unknown (lastHeartbeatTime kept). None when already so.
pub fn mark_unknown(node: &Value, now: &str) -> Option<Vec<Value>> {
    if ready_status(node).as_deref() == Some("Unknown") {
        return None;
    }
    let mut conds = conditions(node);
    for ty in CONDITIONS {
        match conds.iter_mut().find(|c| c["type"] == ty) {
            Some(c) if c["status"] != "Unknown" => {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
            }
            Some(_) => {}
            None => conds.push(json!({
                "type": ty, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "Kubelet never posted node status.",
                "lastHeartbeatTime": meta_str(node, "creationTimestamp"),
                "lastTransitionTime": now,
            })),
        }
    }
    Some(conds)
}

/// A simulated node back in touch: the conditions its kubelet would post.
pub fn mark_healthy(node: &Value, now: &str) -> Vec<Value> {
    let mut conds = conditions(node);
    let healthy = [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ];
    for (t, s, reason, msg) in healthy {
        conds = set_condition(
            &conds,
            json!({"type": t, "status": s, "reason": reason, "message": msg,
                   "lastHeartbeatTime": now, "lastTransitionTime": now}),
        );
    }
    conds
}

fn is_ours(t: &Value) -> bool {
    (t["key"] == UNREACHABLE || t["key"] == NOT_READY)
        && (t["effect"] == "NoSchedule" || t["effect"] == "NoExecute")
}

pub fn node_taints(node: &Value) -> Vec<Value> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The node's taints as its Ready condition asks for them; existing
/// entries (and their timeAdded) are kept. `no_execute`: false in full
/// disruption.
pub fn desired_taints(node: &Value, no_execute: bool, now: &str) -> Vec<Value> {
    let current = node_taints(node);
    let key = match ready_status(node).as_deref() {
        Some("False") => Some(NOT_READY),
        Some("Unknown") => Some(UNREACHABLE),
        _ => None,
    };
    let mut want: Vec<(&str, &str)> = vec![];
    if let Some(k) = key {
        want.push((k, "NoSchedule"));
        if no_execute {
            want.push((k, "NoExecute"));
        }
    }
    let mut out: Vec<Value> = current
        .iter()
        .filter(|t| {
            !is_ours(t)
                || want
                    .iter()
                    .any(|(k, e)| t["key"] == *k && t["effect"] == *e)
        })
        .cloned()
        .collect();
    for (k, e) in want {
        if !out.iter().any(|t| t["key"] == k && t["effect"] == e) {
            let mut t = json!({"key": k, "effect": e});
            if e == "NoExecute" {
                t["timeAdded"] = json!(now);
            }
            out.push(t);
        }
    }
    out
}

/// When a pod on a node with these taints is to be evicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eviction {
    Never,
    Now,
    /// At this time (seconds since the epoch).
    At(f64),
}

/// Upstream's taint manager: a NoExecute taint not tolerated evicts now;
/// otherwise the smallest tolerationSeconds of the tolerations used, counted
/// from the taint's timeAdded, decides.
pub fn eviction(pod: &Value, taints: &[Value], now: f64) -> Eviction {
    let tols = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut at: Option<f64> = None;
    for t in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        let used: Vec<&Value> = tols
            .iter()
            .filter(|tol| crate::daemonset::tolerates(tol, t))
            .collect();
        if used.is_empty() {
            return Eviction::Now;
        }
        // Forever if any used toleration has no tolerationSeconds.
        let secs = used
            .iter()
            .map(|tol| tol.get("tolerationSeconds").and_then(Value::as_i64))
            .try_fold(i64::MAX, |m, s| s.map(|s| m.min(s)));
        if let Some(secs) = secs {
            let added = t["timeAdded"].as_str().and_then(parse_time).unwrap_or(now);
            let when = added + secs.max(0) as f64;
            at = Some(at.map_or(when, |a: f64| a.min(when)));
        }
    }
    match at {
        Some(a) if a <= now => Eviction::Now,
        Some(a) => Eviction::At(a),
        None => Eviction::Never,
    }
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub node_info: Arc<ResourceInfo>,
    pub pod_info: Arc<ResourceInfo>,
    pub lease_info: Arc<ResourceInfo>,
    pub nodes: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub leases: Arc<Informer>,
    pub grace: Duration,
    observed: Mutex<HashMap<String, Observed>>,
    /// Nodes seen deleted (their pods go at once).
    deleted: Mutex<HashSet<String>>,
    /// Node names pods are bound to that were never seen: since when.
    missing: Mutex<HashMap<String, f64>>,
    /// Pods already evicted (key -> uid), so each gets one event.
    evicted: Mutex<HashMap<String, String>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn index_node(p: &Value) -> Vec<String> {
    p.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| vec![s.to_string()])
        .unwrap_or_default()
}

impl Controller {
    pub fn new(
        reg: Arc<Registry>,
        opts: Arc<WriteOptions>,
        grace: Duration,
    ) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (node_info, pod_info, lease_info) = (
            find("", "nodes")?,
            find("", "pods")?,
            find("coordination.k8s.io", "leases")?,
        );
        Ok(Arc::new(Controller {
            nodes: Arc::new(Informer::new(node_info.key_prefix())),
            pods: Arc::new(Informer::new(pod_info.key_prefix()).with_index(BY_NODE, index_node)),
            leases: Arc::new(Informer::new(format!(
                "{}{LEASE_NAMESPACE}/",
                lease_info.key_prefix()
            ))),
            reg,
            opts,
            node_info,
            pod_info,
            lease_info,
            grace,
            observed: Mutex::default(),
            deleted: Mutex::default(),
            missing: Mutex::default(),
            evicted: Mutex::default(),
            wake: Notify::new(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.nodes.start(&self.reg.cache, move |_, ev| {
            let n = name(&ev.object).to_string();
            if ev.kind == EventType::Deleted {
                lock(&c.deleted).insert(n);
                c.wake.notify_one();
            } else {
                lock(&c.deleted).remove(&n);
            }
        })?;
        self.pods.start(&self.reg.cache, |_, _| {})?;
        self.leases.start(&self.reg.cache, |_, _| {})?;
        Ok(())
    }

    /// The monitor period: a fifth of the grace period, 1 to 5 s.
    pub fn period(&self) -> Duration {
        (self.grace / 5).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Runs the monitor until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::debug!("node lifecycle pass failed: {e:#}");
            }
            let _ = tokio::time::timeout(self.period(), self.wake.notified()).await;
        }
    }

    async fn node_event(&self, node: &Value, reason: &str, msg: &str) {
        let Some(info) = self.reg.resources.find("", "v1", "events") else {
            return;
        };
        let now = now_rfc3339();
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{}.{:x}", name(node), nanos), "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name(node), "uid": uid(node)},
            "reason": reason, "message": msg, "source": {"component": COMPONENT},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": "Normal",
            "reportingComponent": COMPONENT, "reportingInstance": format!("{COMPONENT}-kobune"),
        });
        if let Err(e) = self
            .reg
            .create(&info, Some("default"), ev, &self.opts)
            .await
        {
            tracing::debug!("recording event {reason} failed: {e}");
        }
    }

    /// One look at every node and the pods on them.
    pub async fn pass(&self) -> anyhow::Result<()> {
        let now = now_secs();
        let now_s = now_rfc3339();
        let grace = self.grace.as_secs_f64();
        let nodes: Vec<Arc<Value>> = self.nodes.list().into_iter().map(|(_, v)| v).collect();
        // Heartbeats and conditions.
        let mut current: Vec<Arc<Value>> = vec![];
        {
            let names: HashSet<&str> = nodes.iter().map(|n| name(n)).collect();
            lock(&self.observed).retain(|k, _| names.contains(k.as_str()));
        }
        for node in &nodes {
            let n = name(node);
            let lease = self
                .leases
                .get(&self.lease_info.key(Some(LEASE_NAMESPACE), n));
            let obs = {
                let mut o = lock(&self.observed);
                let next = observe(o.get(n), node, lease.as_deref(), now);
                o.insert(n.to_string(), next.clone());
                next
            };
            let stale = now - obs.probe > grace;
            let mut node = node.clone();
            let new_conds = if stale {
                mark_unknown(&node, &now_s)
            } else if node
                .pointer("/metadata/labels")
                .and_then(|l| l.get(SIMULATED_LABEL))
                == Some(&json!("true"))
                && ready_status(&node).as_deref() == Some("Unknown")
            {
                Some(mark_healthy(&node, &now_s))
            } else {
                None
            };
            if let Some(conds) = new_conds {
                let mut o = (*node).clone();
                o["status"]["conditions"] = json!(conds);
                match self
                    .reg
                    .update(&self.node_info, None, n, o, &self.opts, Some("status"))
                    .await
                {
                    Ok(r) => {
                        if stale {
                            tracing::info!(node = n, "node stopped posting status; marked Unknown");
                            let msg = format!("Node {n} status is now: NodeNotReady");
                            self.node_event(&r.object, "NodeNotReady", &msg).await;
                        } else {
                            let msg = format!("Node {n} status is now: NodeReady");
                            self.node_event(&r.object, "NodeReady", &msg).await;
                        }
                        node = Arc::new(r.object);
                    }
                    Err(e) => {
                        tracing::debug!(node = n, "updating node status failed: {e}");
                        continue;
                    }
                }
            }
            current.push(node);
        }
        // Full disruption: no node Ready, so no NoExecute taints.
        let full_disruption = !current.is_empty()
            && current
                .iter()
                .all(|n| ready_status(n).as_deref() != Some("True"));
        for node in &current {
            let want = desired_taints(node, !full_disruption, &now_s);
            if want != node_taints(node) {
                let mut o = (**node).clone();
                o["spec"]["taints"] = json!(want);
                if want.is_empty() {
                    o["spec"].as_object_mut().map(|s| s.remove("taints"));
                }
                match self
                    .reg
                    .update(&self.node_info, None, name(node), o, &self.opts, None)
                    .await
                {
                    Ok(r) => {
                        self.evict(&r.object, now).await;
                        continue;
                    }
                    Err(e) => tracing::debug!(node = name(node), "updating taints failed: {e}"),
                }
            }
            self.evict(node, now).await;
        }
        self.collect_orphans(&current, now).await;
        Ok(())
    }

    /// Taint-based eviction of the pods on one node.
    async fn evict(&self, node: &Value, now: f64) {
        let taints = node_taints(node);
        if !taints.iter().any(|t| t["effect"] == "NoExecute") {
            return;
        }
        for (key, pod) in self.pods.by_index(BY_NODE, name(node)) {
            if deleting(&pod) || eviction(&pod, &taints, now) != Eviction::Now {
                continue;
            }
            if lock(&self.evicted).get(&key).map(String::as_str) == Some(uid(&pod)) {
                continue;
            }
            let ns_name = format!("{}/{}", namespace(&pod), name(&pod));
            record_event(
                &self.reg,
                &self.opts,
                EVICTION_COMPONENT,
                &pod,
                ("v1", "Pod"),
                "Normal",
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns_name}"),
            )
            .await;
            let del = DeleteOptions {
                precondition_uid: Some(uid(&pod).to_string()),
                ..Default::default()
            };
            match self
                .reg
                .delete(&self.pod_info, Some(namespace(&pod)), name(&pod), &del)
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %ns_name, node = name(node), "evicted by taint");
                    lock(&self.evicted).insert(key, uid(&pod).to_string());
                }
                Err(e) => tracing::debug!(pod = %ns_name, "eviction failed: {e}"),
            }
        }
    }

    /// Force-deletes pods bound to nodes that are gone.
    async fn collect_orphans(&self, nodes: &[Arc<Value>], now: f64) {
        let names: HashSet<&str> = nodes.iter().map(|n| name(n)).collect();
        let mut orphans = vec![];
        {
            let deleted = lock(&self.deleted);
            let mut missing = lock(&self.missing);
            let mut seen_missing = HashSet::new();
            for (_, pod) in self.pods.list() {
                let Some(n) = index_node(&pod).pop() else {
                    continue;
                };
                if names.contains(n.as_str()) {
                    continue;
                }
                let since = *missing.entry(n.clone()).or_insert(now);
                seen_missing.insert(n.clone());
                if deleted.contains(&n) || now - since >= QUARANTINE_SECS {
                    orphans.push(pod);
                }
            }
            missing.retain(|k, _| seen_missing.contains(k));
        }
        lock(&self.evicted).retain(|k, _| self.pods.get(k).is_some());
        for pod in orphans {
            let del = DeleteOptions {
                grace_period_seconds: Some(0),
                precondition_uid: Some(uid(&pod).to_string()),
                ..Default::default()
            };
            match self
                .reg
                .delete(&self.pod_info, Some(namespace(&pod)), name(&pod), &del)
                .await
            {
                Ok(_) => tracing::info!(
                    pod = %format!("{}/{}", namespace(&pod), name(&pod)),
                    "garbage collected: its node is gone"
                ),
                Err(e) => tracing::debug!("pod gc failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, taints: Value) -> Value {
        json!({"metadata": {"name": "n1", "creationTimestamp": "2024-01-01T00:00:00Z"},
               "spec": {"taints": taints},
               "status": {"conditions": [
                   {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2024-01-01T00:00:00Z"},
                   {"type": "Ready", "status": ready, "lastHeartbeatTime": "2024-01-01T00:00:00Z"}]}})
    }

    #[test]
    fn probes_follow_changes_on_the_local_clock() {
        let n = node("True", json!([]));
        let lease = json!({"spec": {"renewTime": "2024-01-01T00:00:00.000000Z"}});
        let o = observe(None, &n, Some(&lease), 100.0);
        assert_eq!(o.probe, 100.0);
        let o2 = observe(Some(&o), &n, Some(&lease), 150.0);
        assert_eq!(o2.probe, 100.0, "nothing changed");
        let renewed = json!({"spec": {"renewTime": "2024-01-01T00:00:10.000000Z"}});
        assert_eq!(observe(Some(&o2), &n, Some(&renewed), 160.0).probe, 160.0);
        let mut beat = n.clone();
        beat["status"]["conditions"][1]["lastHeartbeatTime"] = json!("2024-01-01T00:01:00Z");
        assert_eq!(observe(Some(&o2), &beat, Some(&lease), 170.0).probe, 170.0);
    }

    #[test]
    fn stale_nodes_go_unknown_once() {
        let n = node("True", json!([]));
        let conds = mark_unknown(&n, "2024-01-02T00:00:00Z").unwrap();
        let ready = get_condition(&conds, "Ready").unwrap();
        assert_eq!(ready["status"], "Unknown");
        assert_eq!(ready["reason"], "NodeStatusUnknown");
        assert_eq!(ready["message"], "Kubelet stopped posting node status.");
        assert_eq!(ready["lastHeartbeatTime"], "2024-01-01T00:00:00Z");
        assert_eq!(
            get_condition(&conds, "MemoryPressure").unwrap()["status"],
            "Unknown"
        );
        let dp = get_condition(&conds, "DiskPressure").unwrap();
        assert_eq!(dp["reason"], "NodeStatusNeverUpdated");
        let mut again = n.clone();
        again["status"]["conditions"] = json!(conds);
        assert!(mark_unknown(&again, "2024-01-02T00:00:00Z").is_none());
        let healthy = mark_healthy(&again, "2024-01-03T00:00:00Z");
        assert_eq!(get_condition(&healthy, "Ready").unwrap()["status"], "True");
    }

    #[test]
    fn taints_follow_ready() {
        let other = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let t = desired_taints(&node("Unknown", json!([other])), true, "T");
        assert_eq!(t.len(), 3);
        assert!(t.iter().any(|x| x["key"] == UNREACHABLE
            && x["effect"] == "NoExecute"
            && x["timeAdded"] == "T"));
        // Existing entries keep their timeAdded; not-ready replaces unreachable.
        let n = node("Unknown", json!(t));
        assert_eq!(desired_taints(&n, true, "T2"), t);
        let f = desired_taints(&node("False", json!(t)), true, "T2");
        assert!(f.iter().all(|x| x["key"] != UNREACHABLE));
        assert!(f
            .iter()
            .any(|x| x["key"] == NOT_READY && x["effect"] == "NoExecute"));
        assert_eq!(
            desired_taints(&node("True", json!(t)), true, "T"),
            vec![other.clone()]
        );
        // Full disruption: NoSchedule only.
        let d = desired_taints(&node("Unknown", json!([])), false, "T");
        assert_eq!(d, vec![json!({"key": UNREACHABLE, "effect": "NoSchedule"})]);
    }

    #[test]
    fn eviction_honours_toleration_seconds() {
        let taints = vec![
            json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2024-01-01T00:00:00Z"}),
        ];
        let t0 = parse_time("2024-01-01T00:00:00Z").unwrap();
        let bare = json!({"spec": {}});
        assert_eq!(eviction(&bare, &taints, t0), Eviction::Now);
        let tol = |secs: Value| {
            let mut t = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
            if !secs.is_null() {
                t["tolerationSeconds"] = secs;
            }
            json!({"spec": {"tolerations": [t]}})
        };
        assert_eq!(
            eviction(&tol(json!(300)), &taints, t0 + 10.0),
            Eviction::At(t0 + 300.0)
        );
        assert_eq!(
            eviction(&tol(json!(300)), &taints, t0 + 300.0),
            Eviction::Now
        );
        assert_eq!(
            eviction(&tol(Value::Null), &taints, t0 + 1e6),
            Eviction::Never
        );
        let ns = vec![json!({"key": UNREACHABLE, "effect": "NoSchedule"})];
        assert_eq!(eviction(&bare, &ns, t0), Eviction::Never);
    }

    #[test]
    fn grace_period_reads_the_environment() {
        // Only the parsing; the variable is not set in unit tests.
        assert!(grace_period() >= Duration::from_millis(1));
    }
}

//! The ReplicaSet controller, as upstream's: keeps `spec.replicas` active
//! pods matching the selector, adopting orphans and releasing pods that no
//! longer match. [`plan`] decides over a snapshot; [`Controller::sync`]
//! carries the plan out. Expectations keep it from acting again while its
//! own creates and deletes have not been observed yet.

use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::at;
use kobune_apimachinery::{ApiError, ResourceInfo};
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const COMPONENT: &str = "replicaset-controller";
/// Upstream's burstReplicas: at most this many creates/deletes per sync.
pub const BURST_REPLICAS: usize = 500;
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Expectations

#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: HashSet<String>,
    at: Instant,
}

/// What a controller still expects to observe, per controller key.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    /// An event of the controller's own object (a ReplicaSet, Job,
    /// DaemonSet): queues its key; a deleted one's expectations go.
    pub fn on_owner_event(&self, queue: &WorkQueue, ev: &CacheEvent) {
        let key = ns_key(&ev.object);
        if ev.kind == EventType::Deleted {
            self.forget(&key);
        }
        queue.add(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the controller may act: everything expected was observed (or expired).
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes.is_empty()) || e.at.elapsed() > EXPECTATIONS_TTL,
        }
    }

    pub fn expect(&self, key: &str, adds: usize, deletes: Vec<String>) {
        self.lock().insert(
            key.to_string(),
            Expectation {
                adds: adds as i64,
                deletes: deletes.into_iter().collect(),
                at: Instant::now(),
            },
        );
    }

    /// A create was observed, or will never happen.
    pub fn lower_adds(&self, key: &str, n: usize) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= n as i64;
        }
    }

    pub fn deletion_observed(&self, key: &str, pod_key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(pod_key);
        }
    }

    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Records what a pod event tells the controller `owner` about its own
    /// creates and deletes (a pod may already be deleting when first seen).
    pub fn observe_pod(&self, owner: &str, ev: &CacheEvent) {
        let pod_key = ns_key(&ev.object);
        if ev.kind == EventType::Added {
            self.lower_adds(owner, 1);
        }
        if ev.kind == EventType::Deleted || deleting(&ev.object) {
            self.deletion_observed(owner, &pod_key);
        }
    }
}

// ---------------------------------------------------------------------------
// Planning

/// What one sync of a ReplicaSet should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Orphans matching the selector: take ownership.
    pub adopt: Vec<Arc<Value>>,
    /// Owned pods that no longer match: drop the reference.
    pub release: Vec<Arc<Value>>,
    /// Pods to create.
    pub create: usize,
    /// Surplus pods to delete, in order.
    pub delete: Vec<Arc<Value>>,
    /// The status (without conditions) for the pods owned now.
    pub status: Value,
    /// Look again then (pods about to become available).
    pub requeue: Requeue,
}

fn phase_rank(p: &Value) -> u8 {
    match at(p, "/status/phase").and_then(Value::as_str) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    }
}

fn restarts(p: &Value) -> i64 {
    at(p, "/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|c| i64_at(c, "/restartCount")).sum())
        .unwrap_or(0)
}

/// Upstream's deletion order: `Less` means "delete first". Unscheduled
/// before scheduled, pending before unknown before running, not ready
/// before ready, ready more recently first, more restarts first, newer first.
pub fn deletion_order(a: &Value, b: &Value) -> Ordering {
    let scheduled = |p: &Value| {
        at(p, "/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let created = |p: &Value| parse_time(meta_str(p, "creationTimestamp")).unwrap_or(0.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(pod_ready(a).cmp(&pod_ready(b)))
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).total_cmp(&created(a)))
        .then_with(|| name(a).cmp(name(b)))
}

/// Template labels all present on the pod.
fn fully_labeled(want: Option<&serde_json::Map<String, Value>>, pod: &Value) -> bool {
    let have = at(pod, "/metadata/labels").and_then(Value::as_object);
    want.is_none_or(|w| {
        w.iter()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    })
}

/// The status of a ReplicaSet owning `active` pods (conditions kept as they are).
pub fn compute_status(rs: &Value, active: &[Arc<Value>], now: f64) -> (Value, Requeue) {
    let min_ready = i64_at(rs, "/spec/minReadySeconds");
    let want_labels = at(rs, "/spec/template/metadata/labels").and_then(Value::as_object);
    let (mut ready, mut available, mut labeled) = (0, 0, 0);
    // Ready but not yet available: look again when the first one will be.
    let mut next_available: Option<f64> = None;
    for p in active {
        if let Some(c) = ready_condition(p) {
            ready += 1;
            let left = match min_ready {
                ..=0 => 0.0,
                m => transition_time(c) + m as f64 - now,
            };
            if left <= 0.0 {
                available += 1;
            } else {
                next_available = Some(next_available.map_or(left, |m| m.min(left)));
            }
        }
        if fully_labeled(want_labels, p) {
            labeled += 1;
        }
    }
    let mut status = json!({"replicas": active.len()});
    for (k, v) in [
        ("fullyLabeledReplicas", labeled),
        ("readyReplicas", ready),
        ("availableReplicas", available),
    ] {
        if v > 0 {
            status[k] = json!(v);
        }
    }
    let generation = i64_at(rs, "/metadata/generation");
    if generation > 0 {
        status["observedGeneration"] = json!(generation);
    }
    let conds = conditions(rs);
    if !conds.is_empty() {
        status["conditions"] = json!(conds);
    }
    let requeue = next_available.map(|d| Duration::from_secs_f64(d + 0.05));
    (status, requeue)
}

/// Decides over a ReplicaSet and the pods in its namespace. `may_manage`:
/// the expectations are satisfied, so creates and deletes may be planned.
pub fn plan(rs: &Value, pods: &[Arc<Value>], may_manage: bool, now: f64) -> Plan {
    let selector = compile_selector(at(rs, "/spec/selector"));
    let matches = |p: &Value| selector.as_ref().is_some_and(|s| labels_match(s, p));
    let my_uid = uid(rs);
    let mut plan = Plan::default();
    let mut owned = vec![];
    for p in pods {
        match controller_ref(p) {
            Some(r) if r.get("uid").and_then(Value::as_str) == Some(my_uid) => {
                if matches(p) {
                    owned.push(p.clone());
                } else {
                    plan.release.push(p.clone());
                }
            }
            Some(_) => {}
            None => {
                if !deleting(rs) && !deleting(p) && matches(p) {
                    plan.adopt.push(p.clone());
                    owned.push(p.clone());
                }
            }
        }
    }
    let mut active: Vec<Arc<Value>> = owned.into_iter().filter(|p| pod_active(p)).collect();
    let (status, requeue) = compute_status(rs, &active, now);
    plan.status = status;
    plan.requeue = requeue;
    if may_manage && !deleting(rs) {
        let want = i64_at(rs, "/spec/replicas").max(0) as usize;
        if active.len() < want {
            plan.create = (want - active.len()).min(BURST_REPLICAS);
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST_REPLICAS);
            active.sort_by(|a, b| deletion_order(a, b));
            plan.delete = active.into_iter().take(n).collect();
        }
    }
    plan
}

/// A pod for the ReplicaSet's template.
pub fn pod_from_template(rs: &Value) -> Value {
    let t = at(rs, "/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = json!({
        "generateName": format!("{}-", name(rs)),
        "namespace": namespace(rs),
        "ownerReferences": [controller_owner_ref("apps/v1", "ReplicaSet", rs)],
    });
    for k in ["labels", "annotations", "finalizers"] {
        if let Some(v) = at(&t, &format!("/metadata/{k}")) {
            meta[k] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t.get("spec").cloned().unwrap_or(json!({}))})
}

/// Upstream's slowStartBatch sizes: 1, 2, 4, ... summing to `n`.
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut out = vec![];
    let (mut left, mut size) = (n, 1usize);
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size *= 2;
    }
    out
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub rs_info: Arc<ResourceInfo>,
    pub pod_info: Arc<ResourceInfo>,
    pub rss: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
}

/// The key of a pod's (or job's) owning ReplicaSet.
fn owner_key(o: &Value) -> Option<String> {
    controller_key(o, "ReplicaSet")
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let rs_info = reg
            .resources
            .find("apps", "v1", "replicasets")
            .ok_or_else(|| anyhow::anyhow!("replicasets not served"))?;
        let pod_info = reg
            .resources
            .find("", "v1", "pods")
            .ok_or_else(|| anyhow::anyhow!("pods not served"))?;
        let rss = Informer::new(rs_info.key_prefix()).with_index(BY_NAMESPACE, index_namespace);
        let pods = Informer::new(pod_info.key_prefix())
            .with_index(BY_NAMESPACE, index_namespace)
            .with_index(BY_CONTROLLER, index_controller)
            .with_index(BY_ORPHAN_NAMESPACE, index_orphan_namespace);
        Ok(Arc::new(Controller {
            reg,
            opts,
            rs_info,
            pod_info,
            rss: Arc::new(rss),
            pods: Arc::new(pods),
            queue: WorkQueue::default(),
            expectations: Expectations::default(),
        }))
    }

    /// Starts the informers (returns once synced).
    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.rss.start(&self.reg.cache, move |_, ev| {
            c.expectations.on_owner_event(&c.queue, ev)
        })?;
        let c = self.clone();
        self.pods
            .start(&self.reg.cache, move |_, ev| c.on_pod_event(ev))?;
        Ok(())
    }

    fn on_pod_event(&self, ev: &CacheEvent) {
        let pod = &ev.object;
        if let Some(owner) = owner_key(pod) {
            self.expectations.observe_pod(&owner, ev);
            self.queue.add(owner);
        } else if ev.kind != EventType::Deleted {
            // An orphan: whoever matches may adopt it.
            for (_, rs) in self.rss.by_index(BY_NAMESPACE, namespace(pod)) {
                if selector_matches(at(&rs, "/spec/selector"), pod) {
                    self.queue.add(ns_key(&rs));
                }
            }
        }
        if let Some(prev) = ev.prev.as_deref().and_then(owner_key) {
            self.queue.add(prev);
        }
    }

    async fn set_owner(&self, pod: &Value, owner: Option<Value>) -> Result<(), ApiError> {
        let mut p = pod.clone();
        let refs: Vec<Value> = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.get("controller").and_then(Value::as_bool) != Some(true))
            .chain(owner)
            .collect();
        p["metadata"]["ownerReferences"] = json!(refs);
        match self
            .reg
            .update(
                &self.pod_info,
                Some(namespace(pod)),
                name(pod),
                p,
                &self.opts,
                None,
            )
            .await
        {
            Err(e) if e.code == 404 => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Creates `n` pods in slow-start batches; returns the first error.
    async fn create_pods(self: &Arc<Self>, key: &str, rs: &Value, n: usize) -> Option<String> {
        self.expectations.expect(key, n, vec![]);
        let mut left = n;
        for size in slow_start_batches(n) {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..size {
                let c = self.clone();
                let pod = pod_from_template(rs);
                let ns = namespace(rs).to_string();
                set.spawn(async move { c.reg.create(&c.pod_info, Some(&ns), pod, &c.opts).await });
            }
            let mut err = None;
            while let Some(r) = set.join_next().await {
                left -= 1;
                match r {
                    Ok(Ok(created)) => {
                        let msg = format!("Created pod: {}", name(&created.object));
                        self.event(rs, "Normal", "SuccessfulCreate", &msg).await;
                    }
                    Ok(Err(e)) => {
                        self.expectations.lower_adds(key, 1);
                        err.get_or_insert(e.message.clone());
                    }
                    Err(e) => {
                        self.expectations.lower_adds(key, 1);
                        err.get_or_insert(e.to_string());
                    }
                }
            }
            if let Some(e) = err {
                // The rest is skipped: never expect it.
                self.expectations.lower_adds(key, left);
                self.event(
                    rs,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
                return Some(e);
            }
        }
        None
    }

    async fn event(&self, rs: &Value, ty: &str, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            rs,
            ("apps/v1", "ReplicaSet"),
            ty,
            reason,
            msg,
        )
        .await;
    }

    /// One reconcile of the ReplicaSet `namespace/name`.
    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(rs) = self.rss.get(&self.rs_info.key(Some(ns), n)) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        // Its own pods and the namespace's orphans: pods of other controllers
        // can be neither owned nor adopted (a namespace may hold 100k pods).
        let mut pods: Vec<Arc<Value>> = self.pods.objects_by_index(BY_CONTROLLER, uid(&rs));
        pods.extend(self.pods.objects_by_index(BY_ORPHAN_NAMESPACE, ns));
        let scan = Instant::now();
        let plan = plan(&rs, &pods, self.expectations.satisfied(key), now_secs());
        crate::runtime::scanned(scan.elapsed());
        for p in &plan.adopt {
            self.set_owner(p, Some(controller_owner_ref("apps/v1", "ReplicaSet", &rs)))
                .await?;
        }
        for p in &plan.release {
            self.set_owner(p, None).await?;
        }
        let mut failure = None;
        if plan.create > 0 {
            failure = self.create_pods(key, &rs, plan.create).await;
        } else if !plan.delete.is_empty() {
            let keys = plan.delete.iter().map(|p| ns_key(p)).collect();
            self.expectations.expect(key, 0, keys);
            for p in &plan.delete {
                let del = DeleteOptions {
                    precondition_uid: Some(uid(p).to_string()),
                    ..Default::default()
                };
                match self
                    .reg
                    .delete(&self.pod_info, Some(ns), name(p), &del)
                    .await
                {
                    Ok(_) => {
                        let msg = format!("Deleted pod: {}", name(p));
                        self.event(&rs, "Normal", "SuccessfulDelete", &msg).await;
                    }
                    Err(e) => {
                        self.expectations.deletion_observed(key, &ns_key(p));
                        if e.code != 404 {
                            failure.get_or_insert(e.message.clone());
                        }
                    }
                }
            }
        }
        let mut status = plan.status.clone();
        let conds = conditions(&rs);
        let conds = match &failure {
            Some(msg) => set_condition(
                &conds,
                json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                       "message": msg, "lastTransitionTime": kobune_apiserver::registry::now_rfc3339()}),
            ),
            None => conds
                .into_iter()
                .filter(|c| c["type"] != "ReplicaFailure")
                .collect(),
        };
        if conds.is_empty() {
            if let Some(m) = status.as_object_mut() {
                m.remove("conditions");
            }
        } else {
            status["conditions"] = json!(conds);
        }
        update_status_if_changed(&self.reg, &self.rs_info, &rs, status, &self.opts, &[404]).await?;
        if let Some(e) = failure {
            anyhow::bail!("{e}");
        }
        Ok(plan.requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_support::{eventually, registry};

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"name": "web", "namespace": "d", "uid": "rs1", "generation": 2},
               "spec": {"replicas": replicas, "minReadySeconds": 0,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    }

    fn pod(
        name: &str,
        owner: Option<&str>,
        node: &str,
        phase: &str,
        ready: Option<&str>,
    ) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"),
                "labels": {"app": "web", "tier": "fe"}, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"nodeName": node}, "status": {"phase": phase}});
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": o, "controller": true}]);
        }
        if let Some(t) = ready {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        Arc::new(p)
    }

    #[test]
    fn creates_missing_adopts_orphans_and_ignores_others() {
        let pods = vec![
            pod(
                "a",
                Some("rs1"),
                "n1",
                "Running",
                Some("2024-01-01T00:00:00Z"),
            ),
            pod("orphan", None, "n1", "Running", None),
            pod("theirs", Some("other"), "n1", "Running", None),
        ];
        let p = plan(&rs(5), &pods, true, now_secs());
        assert_eq!(p.create, 3);
        assert_eq!(p.adopt.len(), 1);
        assert_eq!(p.status["replicas"], 2);
        assert_eq!(p.status["readyReplicas"], 1);
        assert_eq!(p.status["availableReplicas"], 1);
        assert_eq!(p.status["fullyLabeledReplicas"], 2);
        assert_eq!(p.status["observedGeneration"], 2);
        // Expectations not satisfied: no creates.
        assert_eq!(plan(&rs(5), &pods, false, now_secs()).create, 0);
    }

    #[test]
    fn releases_pods_that_stop_matching() {
        let mut p = (*pod("a", Some("rs1"), "n1", "Running", None)).clone();
        p["metadata"]["labels"] = json!({"app": "other"});
        let plan = plan(&rs(0), &[Arc::new(p)], true, now_secs());
        assert_eq!(plan.release.len(), 1);
        assert_eq!(plan.status["replicas"], 0);
    }

    #[test]
    fn deletes_least_useful_pods_first() {
        let pods = vec![
            pod(
                "ready-old",
                Some("rs1"),
                "n1",
                "Running",
                Some("2024-01-01T00:00:00Z"),
            ),
            pod(
                "ready-new",
                Some("rs1"),
                "n1",
                "Running",
                Some("2024-01-02T00:00:00Z"),
            ),
            pod("notready", Some("rs1"), "n1", "Running", None),
            pod("pending", Some("rs1"), "n1", "Pending", None),
            pod("unscheduled", Some("rs1"), "", "Pending", None),
        ];
        let p = plan(&rs(1), &pods, true, now_secs());
        let names: Vec<&str> = p.delete.iter().map(|p| name(p)).collect();
        assert_eq!(names, ["unscheduled", "pending", "notready", "ready-new"]);
    }

    #[test]
    fn terminating_pods_do_not_count_and_available_waits_min_ready() {
        let mut gone = (*pod("gone", Some("rs1"), "n1", "Running", None)).clone();
        gone["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let mut r = rs(2);
        r["spec"]["minReadySeconds"] = json!(30);
        let now = now_secs();
        let recent = chrono::DateTime::from_timestamp((now - 10.0) as i64, 0)
            .unwrap()
            .to_rfc3339();
        let pods = vec![
            Arc::new(gone),
            pod("a", Some("rs1"), "n1", "Running", Some(&recent)),
        ];
        let p = plan(&r, &pods, true, now);
        assert_eq!(p.create, 1);
        assert_eq!(p.status["readyReplicas"], 1);
        assert!(p.status.get("availableReplicas").is_none());
        let d = p.requeue.unwrap();
        assert!(
            d > Duration::from_secs(15) && d < Duration::from_secs(22),
            "{d:?}"
        );
    }

    #[test]
    fn slow_start_doubles() {
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
        assert_eq!(slow_start_batches(1), [1]);
        assert!(slow_start_batches(0).is_empty());
    }

    #[test]
    fn pods_come_from_the_template_with_a_controller_ref() {
        let p = pod_from_template(&rs(1));
        assert_eq!(p["metadata"]["generateName"], "web-");
        assert_eq!(p["metadata"]["labels"]["tier"], "fe");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            true
        );
        assert_eq!(p["spec"]["containers"][0]["image"], "x");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controller_against_a_real_registry() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path()).await;
        let opts = Arc::new(WriteOptions {
            field_manager: Some("test".into()),
            ..Default::default()
        });
        let ns_info = reg.resources.find("", "v1", "namespaces").unwrap();
        for ns in ["a", "doomed"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            reg.create(&ns_info, None, obj, &opts).await.unwrap();
        }
        reg.cache.sync().await.unwrap();
        let c = Controller::new(reg.clone(), opts.clone()).unwrap();
        c.start_informers().unwrap();
        let cc = c.clone();
        tokio::spawn(crate::runtime::run_controller(
            "replicaset",
            c.queue.clone(),
            move |key: String| {
                let c = cc.clone();
                async move { c.sync(&key).await }
            },
            2,
        ));
        let mut obj = rs(5);
        obj["apiVersion"] = json!("apps/v1");
        obj["kind"] = json!("ReplicaSet");
        obj["metadata"] = json!({"name": "web"});
        let created = reg
            .create(&c.rs_info, Some("a"), obj.clone(), &opts)
            .await
            .unwrap();
        let owned = |ns: &str| {
            c.pods
                .by_index(BY_NAMESPACE, ns)
                .into_iter()
                .filter(|(_, p)| !deleting(p))
                .count()
        };
        eventually("5 pods", || owned("a") == 5).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(owned("a"), 5, "never more than asked for");
        for (_, p) in c.pods.by_index(BY_NAMESPACE, "a") {
            assert!(name(&p).starts_with("web-") && name(&p).len() == 9);
            assert_eq!(
                p["metadata"]["ownerReferences"][0]["uid"],
                created.object["metadata"]["uid"]
            );
        }
        eventually("status", || {
            c.rss
                .get(&c.rs_info.key(Some("a"), "web"))
                .is_some_and(|r| {
                    r["status"]["replicas"] == 5 && r["status"]["observedGeneration"] == 1
                })
        })
        .await;

        // Pod creation failing: ReplicaFailure with the error.
        obj["spec"]["replicas"] = json!(0);
        reg.create(&c.rs_info, Some("doomed"), obj, &opts)
            .await
            .unwrap();
        reg.delete(&ns_info, None, "doomed", &DeleteOptions::default())
            .await
            .unwrap();
        let scale = json!({"spec": {"replicas": 2}});
        reg.patch(
            &c.rs_info,
            Some("doomed"),
            "web",
            kobune_apiserver::registry::PatchKind::Merge,
            &scale,
            &opts,
            None,
        )
        .await
        .unwrap();
        eventually("ReplicaFailure", || {
            c.rss
                .get(&c.rs_info.key(Some("doomed"), "web"))
                .is_some_and(|r| {
                    let conds = conditions(&r);
                    get_condition(&conds, "ReplicaFailure").is_some_and(|f| {
                        f["reason"] == "FailedCreate"
                            && f["message"].as_str().unwrap().contains("being terminated")
                    })
                })
        })
        .await;
        assert_eq!(owned("doomed"), 0);
    }

    #[test]
    fn expectations_gate_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("k"));
        e.expect("k", 2, vec!["d/p".into()]);
        e.lower_adds("k", 2);
        assert!(!e.satisfied("k"));
        e.deletion_observed("k", "d/p");
        assert!(e.satisfied("k"));
    }
}

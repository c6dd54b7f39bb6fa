//! The DaemonSet controller, as upstream's: one pod per eligible node
//! (nodeSelector, required node affinity, taints), pinned to its node with
//! a `metadata.name` matchFields node affinity for the scheduler to bind;
//! ControllerRevisions (`<ds>-<hash>`) record the template history, pods
//! carry `controller-revision-hash`; RollingUpdate (maxUnavailable,
//! maxSurge) or OnDelete replace out-of-date pods.
//!
//! Eligibility and the rolling update are pure functions over snapshots.

use crate::deployment::{scaled_value, template_hash};
use crate::replicaset::Expectations;
use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{DeleteOptions, PatchKind, Registry, WriteOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub const COMPONENT: &str = "daemonset-controller";
pub const HASH_LABEL: &str = "controller-revision-hash";
pub const GENERATION_LABEL: &str = "pod-template-generation";
pub const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

// ---------------------------------------------------------------------------
// Node eligibility

/// One node selector requirement against a lookup.
fn requirement(req: &Value, get: &dyn Fn(&str) -> Option<String>) -> bool {
    let key = req["key"].as_str().unwrap_or_default();
    let values: Vec<&str> = req["values"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let v = get(key);
    match req["operator"].as_str().unwrap_or_default() {
        "In" => v.is_some_and(|v| values.contains(&v.as_str())),
        "NotIn" => v.is_none_or(|v| !values.contains(&v.as_str())),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(b)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > b
            } else {
                v < b
            }
        }
        _ => false,
    }
}

fn term_matches(term: &Value, node: &Value) -> bool {
    let list = |k: &str| {
        term.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (exprs, fields) = (list("matchExpressions"), list("matchFields"));
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = |k: &str| {
        node.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let field = |k: &str| (k == "metadata.name").then(|| name(node).to_string());
    exprs.iter().all(|e| requirement(e, &labels)) && fields.iter().all(|e| requirement(e, &field))
}

/// nodeSelector and required node affinity of a pod spec.
pub fn node_matches(spec: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels").and_then(Value::as_object);
    let sel_ok = spec
        .get("nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|s| {
            s.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        });
    let terms = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    sel_ok && terms.is_none_or(|ts| ts.iter().any(|t| term_matches(t, node)))
}

pub fn tolerates(tol: &Value, taint: &Value) -> bool {
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let effect = s(tol, "effect");
    if !effect.is_empty() && effect != s(taint, "effect") {
        return false;
    }
    let key = s(tol, "key");
    if !key.is_empty() && key != s(taint, "key") {
        return false;
    }
    match tol
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or("Equal")
    {
        "Exists" => true,
        _ => !key.is_empty() && s(tol, "value") == s(taint, "value"),
    }
}

fn taints(node: &Value) -> Vec<Value> {
    let mut t = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        t.push(json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}));
    }
    t
}

/// (should run a new pod, should keep an existing one) on a node, for a pod spec.
pub fn node_should_run(spec: &Value, node: &Value) -> (bool, bool) {
    if !node_matches(spec, node) {
        return (false, false);
    }
    let tols = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut run = true;
    for t in taints(node) {
        if tols.iter().any(|tol| tolerates(tol, &t)) {
            continue;
        }
        match t["effect"].as_str() {
            Some("NoExecute") => return (false, false),
            Some("NoSchedule") => run = false,
            _ => {}
        }
    }
    (run, true)
}

/// Adds the tolerations every DaemonSet pod gets upstream.
pub fn add_default_tolerations(spec: &mut Value) {
    let mut tols = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut want = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        want.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (k, e) in want {
        if !tols.iter().any(|t| t["key"] == k && t["effect"] == e) {
            tols.push(json!({"key": k, "operator": "Exists", "effect": e}));
        }
    }
    spec["tolerations"] = json!(tols);
}

/// The DaemonSet's pod spec as its pods get it (for eligibility).
pub fn effective_spec(ds: &Value) -> Value {
    let mut spec = ds
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(json!({}));
    add_default_tolerations(&mut spec);
    spec
}

/// Pins a pod spec to a node: the node's name as a required matchFields
/// term, replacing any other matchFields in the required terms.
pub fn pin_to_node(spec: &mut Value, node: &str) {
    let field = json!({"key": "metadata.name", "operator": "In", "values": [node]});
    let terms = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let terms: Vec<Value> = if terms.is_empty() {
        vec![json!({"matchFields": [field]})]
    } else {
        terms
            .into_iter()
            .map(|mut t| {
                t["matchFields"] = json!([field.clone()]);
                t
            })
            .collect()
    };
    if !spec.get("affinity").is_some_and(Value::is_object) {
        spec["affinity"] = json!({});
    }
    if !spec["affinity"]
        .get("nodeAffinity")
        .is_some_and(Value::is_object)
    {
        spec["affinity"]["nodeAffinity"] = json!({});
    }
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({"nodeSelectorTerms": terms});
}

/// The node a DaemonSet pod is for: its nodeName, or its matchFields pin.
pub fn pod_node(pod: &Value) -> Option<String> {
    if let Some(n) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Some(n.to_string());
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().cloned().unwrap_or_default())
        .find(|f| f["key"] == "metadata.name" && f["operator"] == "In")
        .and_then(|f| f["values"][0].as_str().map(str::to_string))
}

// ---------------------------------------------------------------------------
// Planning

/// What one sync of a DaemonSet should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Nodes to create a pod on.
    pub create: Vec<String>,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
    pub requeue: Requeue,
}

fn hash_of(pod: &Value) -> &str {
    pod.pointer("/metadata/labels")
        .and_then(|l| l.get(HASH_LABEL))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Plans one sync: `pods` are the DaemonSet's (controlled) pods, `hash`
/// the current revision's hash.
pub fn plan(
    ds: &Value,
    nodes: &[Arc<Value>],
    pods: &[Arc<Value>],
    hash: &str,
    may_manage: bool,
    now: f64,
) -> Plan {
    let mut p = Plan::default();
    let spec = effective_spec(ds);
    let min_ready = i64_at(ds, "/spec/minReadySeconds");
    let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
    let node_names: HashSet<&str> = nodes.iter().map(|n| name(n)).collect();
    for pod in pods.iter().filter(|x| !deleting(x)) {
        match pod_node(pod) {
            Some(n) if node_names.contains(n.as_str()) => {
                by_node.entry(n).or_default().push(pod.clone())
            }
            _ => p.delete.push(pod.clone()), // its node is gone
        }
    }
    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
        (0, 0, 0, 0, 0, 0);
    let on_delete = ds
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("OnDelete");
    // Per node running the daemon: (node, old pod, new pod).
    let mut rolling: Vec<NodePods> = vec![];
    for node in nodes {
        let n = name(node).to_string();
        let (run, keep) = node_should_run(&spec, node);
        let mut here = by_node.remove(&n).unwrap_or_default();
        // Failed pods are replaced.
        let (failed, live): (Vec<_>, Vec<_>) = here
            .drain(..)
            .partition(|x| x.pointer("/status/phase").and_then(Value::as_str) == Some("Failed"));
        p.delete.extend(failed);
        if run {
            desired += 1;
        }
        if !keep {
            if !live.is_empty() {
                misscheduled += 1;
            }
            p.delete.extend(live);
            continue;
        }
        if live.is_empty() {
            if run {
                p.create.push(n);
            }
            continue;
        }
        if !run {
            // Tolerated before, not any more (NoSchedule): it stays, misscheduled.
            misscheduled += 1;
            continue;
        }
        current += 1;
        let (new, old): (Vec<_>, Vec<_>) = live.into_iter().partition(|x| hash_of(x) == hash);
        let newest = |mut v: Vec<Arc<Value>>| {
            v.sort_by(|a, b| {
                meta_str(a, "creationTimestamp")
                    .cmp(meta_str(b, "creationTimestamp"))
                    .then(name(a).cmp(name(b)))
            });
            v
        };
        let (mut new, mut old) = (newest(new), newest(old));
        // Duplicates: keep the oldest of each kind.
        if new.len() > 1 {
            p.delete.extend(new.drain(1..));
        }
        if old.len() > 1 {
            p.delete.extend(old.drain(1..));
        }
        let shown = new.first().or(old.first()).cloned().unwrap();
        if pod_ready(&shown) {
            ready += 1;
        }
        if pod_available(&shown, min_ready, now) {
            available += 1;
        }
        if !new.is_empty() {
            updated += 1;
        }
        rolling.push((n, old.pop(), new.pop()));
    }
    if may_manage && !on_delete && !deleting(ds) {
        let ru = ds.pointer("/spec/updateStrategy/rollingUpdate");
        let surge = scaled_value(ru.and_then(|r| r.get("maxSurge")), desired, true);
        let mut max_unavailable = scaled_value(
            ru.and_then(|r| r.get("maxUnavailable")).or(Some(&json!(1))),
            desired,
            false,
        );
        if surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        let (del, create) = rolling_update(&rolling, surge, max_unavailable, min_ready, now);
        p.delete.extend(del);
        p.create.extend(create);
    }
    if !may_manage {
        p.create.clear();
        p.delete.clear();
    }
    let mut st = json!({
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "desiredNumberScheduled": desired,
        "numberReady": ready,
        "numberAvailable": available,
        "updatedNumberScheduled": updated,
        "observedGeneration": i64_at(ds, "/metadata/generation"),
    });
    if desired - available > 0 {
        st["numberUnavailable"] = json!(desired - available);
    }
    if let Some(c) = ds.pointer("/status/collisionCount") {
        st["collisionCount"] = c.clone();
    }
    if min_ready > 0 && ready > available {
        p.requeue = Some(std::time::Duration::from_secs(1));
    }
    p.status = st;
    p
}

/// A node running the daemon: (node, old pod, new pod).
pub type NodePods = (String, Option<Arc<Value>>, Option<Arc<Value>>);

/// Upstream's rollingUpdate over nodes (node, old pod, new pod): pods to
/// delete and nodes to create a surge pod on.
pub fn rolling_update(
    nodes: &[NodePods],
    surge: i64,
    max_unavailable: i64,
    min_ready: i64,
    now: f64,
) -> (Vec<Arc<Value>>, Vec<String>) {
    let avail =
        |p: &Option<Arc<Value>>| p.as_ref().is_some_and(|p| pod_available(p, min_ready, now));
    let mut delete = vec![];
    let mut create = vec![];
    if surge == 0 {
        // Unavailable nodes use up the budget; old unavailable pods go for free.
        let mut unavailable = 0;
        let mut candidates = vec![];
        for (_, old, new) in nodes {
            match (old, new) {
                (Some(o), None) if !avail(old) => {
                    unavailable += 1;
                    delete.push(o.clone());
                }
                (Some(o), None) => candidates.push(o.clone()),
                (Some(o), Some(_)) => {
                    // New pod present: old one goes (surge leftovers).
                    if avail(new) {
                        delete.push(o.clone());
                    } else {
                        unavailable += 1;
                    }
                }
                (None, n) if !avail(n) => unavailable += 1,
                _ => {}
            }
        }
        let budget = (max_unavailable - unavailable).max(0) as usize;
        delete.extend(candidates.into_iter().take(budget));
    } else {
        let mut surging = nodes
            .iter()
            .filter(|(_, o, n)| o.is_some() && n.is_some())
            .count() as i64;
        for (node, old, new) in nodes {
            match (old, new) {
                (Some(o), Some(_)) if avail(new) => delete.push(o.clone()),
                (Some(o), None) if !avail(old) => delete.push(o.clone()), // recreated next sync
                (Some(_), None) if surging < surge => {
                    surging += 1;
                    create.push(node.clone());
                }
                _ => {}
            }
        }
    }
    (delete, create)
}

/// The ControllerRevision data for a template (what kubectl rollout undo applies).
pub fn revision_data(ds: &Value) -> Value {
    let mut t = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
    t["$patch"] = json!("replace");
    json!({"spec": {"template": t}})
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub ds_info: Arc<ResourceInfo>,
    pub pod_info: Arc<ResourceInfo>,
    pub cr_info: Arc<ResourceInfo>,
    pub dss: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub nodes: Arc<Informer>,
    pub revisions: Arc<Informer>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
}

/// The key of a pod's (or job's) owning DaemonSet.
fn owner_key(o: &Value) -> Option<String> {
    controller_key(o, "DaemonSet")
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (ds_info, pod_info, cr_info, node_info) = (
            find("apps", "daemonsets")?,
            find("", "pods")?,
            find("apps", "controllerrevisions")?,
            find("", "nodes")?,
        );
        Ok(Arc::new(Controller {
            dss: Arc::new(Informer::new(ds_info.key_prefix())),
            pods: Arc::new(
                Informer::new(pod_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            nodes: Arc::new(Informer::new(node_info.key_prefix())),
            revisions: Arc::new(
                Informer::new(cr_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            reg,
            opts,
            ds_info,
            pod_info,
            cr_info,
            queue: WorkQueue::default(),
            expectations: Expectations::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.dss.start(&self.reg.cache, move |_, ev| {
            c.expectations.on_owner_event(&c.queue, ev)
        })?;
        let c = self.clone();
        self.pods
            .start(&self.reg.cache, move |_, ev| c.on_pod_event(ev))?;
        let c = self.clone();
        self.revisions.start(&self.reg.cache, move |_, ev| {
            if let Some(k) = owner_key(&ev.object) {
                c.queue.add(k);
            }
        })?;
        let c = self.clone();
        self.nodes.start(&self.reg.cache, move |_, ev| {
            let relevant = |o: &Value| {
                (
                    o.pointer("/metadata/labels").cloned(),
                    o.pointer("/spec").cloned(),
                )
            };
            if ev.kind == EventType::Modified
                && ev.prev.as_deref().map(relevant) == Some(relevant(&ev.object))
            {
                return;
            }
            for (_, ds) in c.dss.list() {
                c.queue.add(ns_key(&ds));
            }
        })?;
        Ok(())
    }

    fn on_pod_event(&self, ev: &CacheEvent) {
        let Some(owner) = owner_key(&ev.object) else {
            return;
        };
        self.expectations.observe_pod(&owner, ev);
        self.queue.add(owner);
    }

    async fn event(&self, ds: &Value, ty: &str, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            ds,
            ("apps/v1", "DaemonSet"),
            ty,
            reason,
            msg,
        )
        .await;
    }

    /// Finds or makes the current revision; returns its hash. Also trims history.
    async fn revisions(&self, ds: &Value) -> anyhow::Result<String> {
        let ns = namespace(ds);
        let collision = ds.pointer("/status/collisionCount").and_then(Value::as_i64);
        let hash = template_hash(
            ds.pointer("/spec/template").unwrap_or(&json!({})),
            collision,
        );
        let data = revision_data(ds);
        let (owned, max) = owned_revisions(&self.revisions, uid(ds));
        let same = owned.iter().find(|r| r.get("data") == Some(&data)).cloned();
        let hash = match same {
            Some(r) => {
                let h = r
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(HASH_LABEL))
                    .and_then(Value::as_str)
                    .unwrap_or(&hash)
                    .to_string();
                renumber_revision(&self.reg, &self.cr_info, &r, max, &self.opts).await?;
                h
            }
            None => {
                let rev_name = format!("{}-{hash}", name(ds));
                let cr = new_revision(ds, "DaemonSet", &rev_name, &hash, &data, max + 1);
                create_revision(
                    &self.reg,
                    &self.cr_info,
                    &self.ds_info,
                    ds,
                    cr,
                    collision,
                    &self.opts,
                )
                .await?;
                hash
            }
        };
        // History: keep revisionHistoryLimit old revisions not in use.
        let limit = ds
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10)
            .max(0) as usize;
        let in_use: HashSet<String> = self
            .pods
            .by_index(BY_CONTROLLER, uid(ds))
            .iter()
            .map(|(_, p)| hash_of(p).to_string())
            .collect();
        let old: Vec<&Arc<Value>> = owned
            .iter()
            .filter(|r| {
                let h = r
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(HASH_LABEL))
                    .and_then(Value::as_str);
                h != Some(hash.as_str()) && !h.is_some_and(|h| in_use.contains(h))
            })
            .collect();
        if old.len() > limit {
            for r in &old[..old.len() - limit] {
                let _ = self
                    .reg
                    .delete(&self.cr_info, Some(ns), name(r), &DeleteOptions::default())
                    .await;
            }
        }
        Ok(hash)
    }

    fn pod_for(&self, ds: &Value, node: &str, hash: &str) -> Value {
        let t = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let mut meta = json!({
            "generateName": format!("{}-", name(ds)),
            "namespace": namespace(ds),
            "ownerReferences": [controller_owner_ref("apps/v1", "DaemonSet", ds)],
            "labels": {},
        });
        for k in ["labels", "annotations", "finalizers"] {
            if let Some(v) = t
                .pointer(&format!("/metadata/{k}"))
                .filter(|v| !v.is_null())
            {
                meta[k] = v.clone();
            }
        }
        meta["labels"][HASH_LABEL] = json!(hash);
        meta["labels"][GENERATION_LABEL] = json!(i64_at(ds, "/metadata/generation").to_string());
        let mut spec = effective_spec(ds);
        pin_to_node(&mut spec, node);
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }

    /// One reconcile of the DaemonSet `namespace/name`.
    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(ds) = self.dss.get(&self.ds_info.key(Some(ns), n)) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        if deleting(&ds) {
            return Ok(None);
        }
        let hash = self.revisions(&ds).await?;
        let gen = i64_at(&ds, "/metadata/generation").to_string();
        if annotation(&ds, TEMPLATE_GENERATION) != Some(gen.as_str()) {
            let patch = json!({"metadata": {"annotations": {TEMPLATE_GENERATION: gen}}});
            match self
                .reg
                .patch(
                    &self.ds_info,
                    Some(ns),
                    n,
                    PatchKind::Merge,
                    &patch,
                    &self.opts,
                    None,
                )
                .await
            {
                Err(e) if e.code == 404 => return Ok(None),
                r => {
                    r?;
                }
            }
        }
        let nodes: Vec<Arc<Value>> = self.nodes.list().into_iter().map(|(_, v)| v).collect();
        let pods: Vec<Arc<Value>> = self.pods.objects_by_index(BY_CONTROLLER, uid(&ds));
        let plan = plan(
            &ds,
            &nodes,
            &pods,
            &hash,
            self.expectations.satisfied(key),
            now_secs(),
        );
        let mut failure = None;
        if !plan.create.is_empty() || !plan.delete.is_empty() {
            self.expectations.expect(
                key,
                plan.create.len(),
                plan.delete.iter().map(|p| ns_key(p)).collect(),
            );
        }
        for (i, node) in plan.create.iter().enumerate() {
            match self
                .reg
                .create(
                    &self.pod_info,
                    Some(ns),
                    self.pod_for(&ds, node, &hash),
                    &self.opts,
                )
                .await
            {
                Ok(r) => {
                    let msg = format!("Created pod: {}", name(&r.object));
                    self.event(&ds, "Normal", "SuccessfulCreate", &msg).await;
                }
                Err(e) => {
                    self.expectations.lower_adds(key, plan.create.len() - i);
                    self.event(
                        &ds,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                    )
                    .await;
                    failure = Some(e.message.clone());
                    break;
                }
            }
        }
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
                    self.event(&ds, "Normal", "SuccessfulDelete", &msg).await;
                }
                Err(_) => self.expectations.deletion_observed(key, &ns_key(p)),
            }
        }
        let mut status = ds
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        for (k, v) in plan.status.as_object().unwrap() {
            status[k] = v.clone();
        }
        if plan.status.get("numberUnavailable").is_none() {
            status
                .as_object_mut()
                .map(|m| m.remove("numberUnavailable"));
        }
        update_status_if_changed(
            &self.reg,
            &self.ds_info,
            &ds,
            status,
            &self.opts,
            &[404, 409],
        )
        .await?;
        if let Some(e) = failure {
            anyhow::bail!("{e}");
        }
        Ok(plan.requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
    }

    fn ds() -> Value {
        json!({"metadata": {"name": "agent", "namespace": "d", "uid": "ds1", "generation": 3},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"),
            "labels": {HASH_LABEL: hash}, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"nodeName": node}, "status": {"phase": "Running"}});
        if ready {
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]);
        }
        Arc::new(p)
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints() {
        let mut spec = effective_spec(&ds());
        let n = node("a", json!({"disk": "ssd"}), json!([]));
        assert_eq!(node_should_run(&spec, &n), (true, true));
        let tainted = node(
            "b",
            json!({}),
            json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_should_run(&spec, &tainted), (false, true));
        let evicting = node("c", json!({}), json!([{"key": "k", "effect": "NoExecute"}]));
        assert_eq!(node_should_run(&spec, &evicting), (false, false));
        let not_ready = node(
            "d",
            json!({}),
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert_eq!(node_should_run(&spec, &not_ready), (true, true));
        let mut cordoned = (*n).clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert_eq!(node_should_run(&spec, &cordoned), (true, true));
        spec["nodeSelector"] = json!({"disk": "ssd"});
        assert!(node_matches(&spec, &n) && !node_matches(&spec, &tainted));
        let mut pinned = json!({});
        pin_to_node(&mut pinned, "a");
        assert!(node_matches(&pinned, &n) && !node_matches(&pinned, &tainted));
        assert_eq!(pod_node(&json!({"spec": pinned})).as_deref(), Some("a"));
    }

    #[test]
    fn one_pod_per_node_and_status() {
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node(
                "c",
                json!({}),
                json!([{"key": "k", "effect": "NoSchedule"}]),
            ),
        ];
        let pods = vec![
            pod("p1", "a", "h1", true),
            pod("p2", "a", "h1", true),
            pod("gone", "z", "h1", true),
        ];
        let p = plan(&ds(), &nodes, &pods, "h1", true, now_secs());
        assert_eq!(p.create, ["b"]);
        let deleted: Vec<&str> = p.delete.iter().map(|p| name(p)).collect();
        assert_eq!(deleted, ["gone", "p2"]);
        assert_eq!(p.status["desiredNumberScheduled"], 2);
        assert_eq!(p.status["currentNumberScheduled"], 1);
        assert_eq!(p.status["numberReady"], 1);
        assert_eq!(p.status["updatedNumberScheduled"], 1);
        assert_eq!(p.status["observedGeneration"], 3);
    }

    #[test]
    fn rolling_update_respects_max_unavailable_and_surge() {
        let nodes: Vec<Arc<Value>> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let pods: Vec<Arc<Value>> = ["a", "b", "c"]
            .iter()
            .map(|n| pod(&format!("old-{n}"), n, "h1", true))
            .collect();
        let p = plan(&ds(), &nodes, &pods, "h2", true, now_secs());
        assert_eq!(p.delete.len(), 1, "maxUnavailable 1");
        assert!(p.create.is_empty());
        // One node already unavailable (old pod gone, new one not ready): nothing more.
        let pods2 = vec![
            pods[0].clone(),
            pods[1].clone(),
            pod("new-c", "c", "h2", false),
        ];
        let p = plan(&ds(), &nodes, &pods2, "h2", true, now_secs());
        assert!(p.delete.is_empty());
        // Surge 1, unavailable 0: one new pod alongside an old one.
        let mut d = ds();
        d["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        let p = plan(&d, &nodes, &pods, "h2", true, now_secs());
        assert_eq!(p.create.len(), 1);
        assert!(p.delete.is_empty());
        let pods3 = vec![
            pods[0].clone(),
            pod("new-a", "a", "h2", true),
            pods[1].clone(),
            pods[2].clone(),
        ];
        let p = plan(&d, &nodes, &pods3, "h2", true, now_secs());
        assert_eq!(name(&p.delete[0]), "old-a");
        assert_eq!(
            p.create.len(),
            0,
            "surge budget in use until the old pod is gone"
        );
        // OnDelete: nothing replaced.
        d["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        let p = plan(&d, &nodes, &pods, "h2", true, now_secs());
        assert!(p.delete.is_empty() && p.create.is_empty());
        assert_eq!(p.status["updatedNumberScheduled"], 0);
    }
}

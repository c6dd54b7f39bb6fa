//! The Deployment controller, as upstream's: one ReplicaSet per pod
//! template (named `<deployment>-<pod-template-hash>`), rolled out with the
//! RollingUpdate or Recreate strategy, with revisions, proportional scaling,
//! history cleanup and the Available/Progressing conditions.
//!
//! The arithmetic (hash, surge/unavailable, how far to scale) is in pure
//! functions over snapshots; [`Controller::sync`] sequences the writes as
//! upstream's syncDeployment does.

use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::at;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{now_rfc3339, DeleteOptions, PatchKind, Registry, WriteOptions};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub const COMPONENT: &str = "deployment-controller";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const SKIP_COPY: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

// ---------------------------------------------------------------------------
// Pure helpers

const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash: FNV-1a over the template (and the collision
/// count), encoded as upstream's rand.SafeEncodeString of the decimal value.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut data = canonical(&normalize(template)).into_bytes();
    if let Some(c) = collision_count {
        data.extend_from_slice(&(c as u32).to_le_bytes());
    }
    fnv32a(&data)
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The template as a typed object would see it: null, false, zero, empty
/// strings and empty collections are the same as absent.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalize(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

fn without_hash(template: &Value) -> Value {
    let mut t = normalize(template);
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    t
}

/// Templates equal apart from the pod-template-hash label.
pub fn equal_ignore_hash(a: &Value, b: &Value) -> bool {
    without_hash(a) == without_hash(b)
}

pub fn replicas(o: &Value) -> i64 {
    i64_at(o, "/spec/replicas")
}

fn status_of(o: &Value, f: &str) -> i64 {
    i64_at(o, &format!("/status/{f}"))
}

pub fn revision(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An int-or-percent against `total`; percentages round up or down.
pub fn scaled_value(v: Option<&Value>, total: i64, round_up: bool) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) {
            Some(p) if round_up => (p * total as f64 / 100.0).ceil() as i64,
            Some(p) => (p * total as f64 / 100.0).floor() as i64,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn is_rolling(d: &Value) -> bool {
    at(d, "/spec/strategy/type").and_then(Value::as_str) != Some("Recreate")
}

/// (maxSurge, maxUnavailable) for the deployment's replicas; both zero becomes unavailable 1.
pub fn fenceposts(d: &Value) -> (i64, i64) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let ru = at(d, "/spec/strategy/rollingUpdate");
    let n = replicas(d);
    let surge = scaled_value(ru.and_then(|r| r.get("maxSurge")), n, true);
    let unavailable = scaled_value(ru.and_then(|r| r.get("maxUnavailable")), n, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

pub fn max_unavailable(d: &Value) -> i64 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

/// How many pods a ReplicaSet may be taken to count: never fewer than it has.
fn effective(rs: &Value) -> i64 {
    replicas(rs).max(status_of(rs, "replicas"))
}

/// Upstream's NewRSNewReplicas: the new ReplicaSet's size this step.
pub fn new_rs_new_replicas(d: &Value, all: &[Value], new_rs: &Value) -> i64 {
    if !is_rolling(d) {
        return replicas(d);
    }
    let (surge, _) = fenceposts(d);
    let current: i64 = all.iter().map(effective).sum();
    let max_total = replicas(d) + surge;
    if current >= max_total {
        return replicas(new_rs);
    }
    let scale_up = (max_total - current)
        .min(replicas(d) - replicas(new_rs))
        .max(0);
    replicas(new_rs) + scale_up
}

/// Available pods a ReplicaSet can be relied on for.
fn available(rs: &Value) -> i64 {
    status_of(rs, "availableReplicas").min(replicas(rs))
}

/// Upstream's reconcileOldReplicaSets for a rolling update: the new sizes
/// of old ReplicaSets (oldest first), first cleaning up unhealthy replicas,
/// then scaling down while availability allows.
pub fn scale_down_old(
    d: &Value,
    all: &[Value],
    old: &[Value],
    new_rs: &Value,
) -> Vec<(usize, i64)> {
    let old_count: i64 = old.iter().map(replicas).sum();
    if old_count == 0 {
        return vec![];
    }
    let all_count: i64 = all.iter().map(replicas).sum();
    let min_available = replicas(d) - max_unavailable(d);
    let new_unavailable = replicas(new_rs) - available(new_rs);
    let mut max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return vec![];
    }
    let mut order: Vec<usize> = (0..old.len()).collect();
    order.sort_by(|&a, &b| {
        let t = |i: usize| parse_time(meta_str(&old[i], "creationTimestamp")).unwrap_or(0.0);
        t(a).total_cmp(&t(b)).then(name(&old[a]).cmp(name(&old[b])))
    });
    let mut sizes: Vec<i64> = old.iter().map(replicas).collect();
    // Unhealthy replicas first: they do not count for availability anyway.
    let mut cleaned = 0;
    for &i in &order {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (sizes[i] - available(&old[i])).max(0);
        let n = unhealthy.min(max_scaled_down - cleaned);
        sizes[i] -= n;
        cleaned += n;
    }
    max_scaled_down -= cleaned;
    // Then healthy ones, as far as availability allows.
    let available_now: i64 = all
        .iter()
        .map(|rs| {
            let i = old.iter().position(|o| uid(o) == uid(rs));
            match i {
                Some(i) => available(rs).min(sizes[i]),
                None => available(rs),
            }
        })
        .sum();
    let mut budget = (available_now - min_available).min(max_scaled_down).max(0);
    for &i in &order {
        if budget <= 0 {
            break;
        }
        let n = sizes[i].min(budget);
        sizes[i] -= n;
        budget -= n;
    }
    order
        .into_iter()
        .filter(|&i| sizes[i] != replicas(&old[i]))
        .map(|i| (i, sizes[i]))
        .collect()
}

/// Upstream's calculateStatus (conditions: Available set here, the rest kept).
pub fn calculate_status(d: &Value, all: &[Value], new_rs: Option<&Value>) -> Value {
    let sum = |f: &str| all.iter().map(|rs| status_of(rs, f)).sum::<i64>();
    let available = sum("availableReplicas");
    let total: i64 = all.iter().map(replicas).sum();
    let mut st = Map::new();
    let gen = i64_at(d, "/metadata/generation");
    let fields = [
        ("observedGeneration", gen),
        ("replicas", sum("replicas")),
        (
            "updatedReplicas",
            new_rs.map_or(0, |r| status_of(r, "replicas")),
        ),
        ("readyReplicas", sum("readyReplicas")),
        ("availableReplicas", available),
        ("unavailableReplicas", (total - available).max(0)),
    ];
    for (k, v) in fields {
        if v != 0 {
            st.insert(k.into(), json!(v));
        }
    }
    if let Some(c) = at(d, "/status/collisionCount") {
        st.insert("collisionCount".into(), c.clone());
    }
    let now = now_rfc3339();
    let cond = if available >= replicas(d) - max_unavailable(d) {
        new_condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now,
        )
    } else {
        new_condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now,
        )
    };
    let conds = set_deploy_condition(&conditions(d), cond);
    st.insert("conditions".into(), json!(conds));
    Value::Object(st)
}

pub fn new_condition(ty: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": ty, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
           "reason": reason, "message": message})
}

/// Upstream's SetDeploymentCondition: same status and reason: unchanged;
/// same status: keep lastTransitionTime.
pub fn set_deploy_condition(conds: &[Value], new: Value) -> Vec<Value> {
    if let Some(cur) = get_condition(conds, new["type"].as_str().unwrap_or_default()) {
        if cur["status"] == new["status"] && cur["reason"] == new["reason"] {
            return conds.to_vec();
        }
    }
    set_condition(conds, new)
}

fn status_field(st: &Value, f: &str) -> i64 {
    st.get(f).and_then(Value::as_i64).unwrap_or(0)
}

/// Upstream's DeploymentComplete over a status.
pub fn complete(d: &Value, st: &Value) -> bool {
    let n = replicas(d);
    status_field(st, "updatedReplicas") == n
        && status_field(st, "replicas") == n
        && status_field(st, "availableReplicas") == n
        && status_field(st, "observedGeneration") >= i64_at(d, "/metadata/generation")
}

fn progressing(old: &Value, new: &Value) -> bool {
    let f = |s: &Value, k: &str| status_field(s, k);
    f(new, "updatedReplicas") > f(old, "updatedReplicas")
        || f(new, "readyReplicas") > f(old, "readyReplicas")
        || f(new, "replicas") < f(old, "replicas")
        || f(new, "availableReplicas") > f(old, "availableReplicas")
}

/// Adds the Progressing condition to a calculated status (syncRolloutStatus).
/// Returns the status and when to look again for the progress deadline.
pub fn rollout_status(
    d: &Value,
    all: &[Value],
    new_rs: Option<&Value>,
    now: f64,
) -> (Value, Requeue) {
    let mut st = calculate_status(d, all, new_rs);
    let old_status = d.get("status").cloned().unwrap_or(json!({}));
    let deadline = d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64);
    let mut conds = conditions(&json!({"status": st.clone()}));
    let cur = get_condition(&conditions(d), "Progressing").cloned();
    let complete_already = status_field(&st, "replicas") == status_field(&st, "updatedReplicas")
        && cur
            .as_ref()
            .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
    let rs_name = new_rs.map(|r| name(r).to_string());
    let subject = |what: &str| match &rs_name {
        Some(n) => format!("ReplicaSet \"{n}\" {what}"),
        None => format!("Deployment \"{}\" {what}", name(d)),
    };
    let stamp = now_rfc3339();
    let mut requeue = None;
    match deadline {
        None => conds.retain(|c| c["type"] != "Progressing"),
        Some(secs) if !complete_already => {
            if complete(d, &st) {
                let c = new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &subject("has successfully progressed."),
                    &stamp,
                );
                conds = set_deploy_condition(&conds, c);
            } else if progressing(&old_status, &st) {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &subject("is progressing."),
                    &stamp,
                );
                if let Some(cur) = &cur {
                    if cur["status"] == "True" {
                        c["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                    }
                    conds.retain(|c| c["type"] != "Progressing");
                }
                conds.push(c);
            } else if let Some(cur) = &cur {
                let timed_out = cur["reason"] == "ProgressDeadlineExceeded"
                    || (cur["reason"] != "NewReplicaSetAvailable"
                        && cur["lastUpdateTime"]
                            .as_str()
                            .and_then(parse_time)
                            .is_some_and(|t| t + secs as f64 <= now));
                if timed_out {
                    let c = new_condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &subject("has timed out progressing."),
                        &stamp,
                    );
                    conds = set_deploy_condition(&conds, c);
                } else if cur["status"] == "True" {
                    let t = cur["lastUpdateTime"]
                        .as_str()
                        .and_then(parse_time)
                        .unwrap_or(now);
                    requeue = Some(Duration::from_secs_f64(
                        (t + secs as f64 - now).max(0.0) + 1.0,
                    ));
                }
            }
        }
        Some(_) => {}
    }
    // Replica failures of the ReplicaSets surface on the deployment.
    let failure = new_rs
        .into_iter()
        .chain(all.iter())
        .find_map(|rs| get_condition(&conditions(rs), "ReplicaFailure").cloned());
    match failure {
        Some(f) => {
            let c = new_condition(
                "ReplicaFailure",
                f["status"].as_str().unwrap_or("True"),
                f["reason"].as_str().unwrap_or_default(),
                f["message"].as_str().unwrap_or_default(),
                &stamp,
            );
            conds = set_deploy_condition(&conds, c);
        }
        None => conds.retain(|c| c["type"] != "ReplicaFailure"),
    }
    st["conditions"] = json!(conds);
    (st, requeue)
}

/// Why a pod is not Ready, as `kubectl get pods` and `describe` would show it.
fn pod_not_ready_reason(pod: &Value) -> Option<String> {
    let conds = at(pod, "/status/conditions").and_then(Value::as_array);
    let cond = |t: &str| conds.into_iter().flatten().find(|c| c["type"] == t);
    if cond("Ready").is_some_and(|c| c["status"] == "True") || deleting(pod) {
        return None;
    }
    if let Some(c) = cond("PodScheduled").filter(|c| c["status"] == "False") {
        let reason = c["reason"].as_str().unwrap_or("Pending");
        return Some(match c["message"].as_str() {
            Some(m) if !m.is_empty() => format!("{reason} ({m})"),
            _ => reason.to_string(),
        });
    }
    let statuses = ["initContainerStatuses", "containerStatuses"];
    for cs in statuses
        .iter()
        .filter_map(|k| at(pod, &format!("/status/{k}")).and_then(Value::as_array))
        .flatten()
    {
        let name = cs["name"].as_str().unwrap_or_default();
        for state in ["waiting", "terminated"] {
            let Some(st) = cs["state"].get(state) else {
                continue;
            };
            let reason = st["reason"].as_str().unwrap_or_default();
            if reason.is_empty() || reason == "Completed" {
                continue;
            }
            let last = cs
                .pointer("/lastState/terminated/reason")
                .and_then(Value::as_str)
                .map(|r| format!(", last exit: {r}"))
                .unwrap_or_default();
            return Some(match st["message"].as_str() {
                Some(m) if !m.is_empty() => format!("container {name}: {reason}{last} ({m})"),
                _ => format!("container {name}: {reason}{last}"),
            });
        }
        if cs["ready"] == false && cs["state"].get("running").is_some() {
            return Some(format!(
                "container {name}: running but not ready (readiness probe)"
            ));
        }
    }
    let phase = at(pod, "/status/phase").and_then(Value::as_str);
    Some(phase.unwrap_or("Pending").to_string())
}

/// Which pods are not Ready and why: e.g. `2 of 3 pods are not ready:
/// web-1: container web: ImagePullBackOff (...)`. At most five are named.
pub fn not_ready_summary(pods: &[Arc<Value>]) -> Option<String> {
    let mut sorted: Vec<&Arc<Value>> = pods.iter().collect();
    sorted.sort_by_key(|p| name(p).to_string());
    let bad: Vec<String> = sorted
        .iter()
        .filter_map(|p| pod_not_ready_reason(p).map(|r| format!("{}: {r}", name(p))))
        .collect();
    if bad.is_empty() {
        return None;
    }
    let more = if bad.len() > 5 {
        format!("; and {} more", bad.len() - 5)
    } else {
        String::new()
    };
    Some(format!(
        "{} of {} pods are not ready: {}{more}",
        bad.len(),
        pods.len(),
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    ))
}

/// A merge patch turning `old` into `new` at the top level of a status.
fn status_patch(old: Option<&Value>, new: &Value) -> Value {
    let mut p = new.clone();
    if let (Some(Value::Object(o)), Some(pm)) = (old, p.as_object_mut()) {
        for k in o.keys() {
            if !pm.contains_key(k) {
                pm.insert(k.clone(), Value::Null);
            }
        }
    }
    json!({"status": p})
}

/// Copies the deployment's annotations (those not skipped) onto a ReplicaSet.
fn copy_annotations(d: &Value, rs: &mut Value) -> bool {
    let mut changed = false;
    let Some(src) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    else {
        return false;
    };
    for (k, v) in src {
        if SKIP_COPY.contains(&k.as_str()) || annotation(rs, k) == v.as_str() {
            continue;
        }
        set_annotation(rs, k, v.as_str().unwrap_or_default());
        changed = true;
    }
    changed
}

fn set_annotation(o: &mut Value, k: &str, v: &str) {
    let meta = &mut o["metadata"];
    if !meta.get("annotations").is_some_and(Value::is_object) {
        meta["annotations"] = json!({});
    }
    meta["annotations"][k] = json!(v);
}

/// Sets desired/max replicas annotations; whether anything changed.
fn set_replicas_annotations(rs: &mut Value, desired: i64, max: i64) -> bool {
    let (d, m) = (desired.to_string(), max.to_string());
    let changed = annotation(rs, DESIRED) != Some(d.as_str())
        || annotation(rs, MAX_REPLICAS) != Some(m.as_str());
    set_annotation(rs, DESIRED, &d);
    set_annotation(rs, MAX_REPLICAS, &m);
    changed
}

/// The ReplicaSet a new template gets.
pub fn new_replica_set(d: &Value, hash: &str, size: i64, revision: i64) -> Value {
    let mut template = at(d, "/spec/template").cloned().unwrap_or(json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    if !template["metadata"]
        .get("labels")
        .is_some_and(Value::is_object)
    {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = at(d, "/spec/selector").cloned().unwrap_or(json!({}));
    if !selector.get("matchLabels").is_some_and(Value::is_object) {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", name(d)), "namespace": namespace(d),
            "labels": template["metadata"]["labels"].clone(),
            "ownerReferences": [controller_owner_ref("apps/v1", "Deployment", d)],
        },
        "spec": {"replicas": size, "minReadySeconds": i64_at(d, "/spec/minReadySeconds"),
                 "selector": selector, "template": template},
    });
    copy_annotations(d, &mut rs);
    set_annotation(&mut rs, REVISION, &revision.to_string());
    let (surge, _) = fenceposts(d);
    set_replicas_annotations(&mut rs, replicas(d), replicas(d) + surge);
    rs
}

/// The new sizes for a scaling event (upstream's scale()), by index into `rss`
/// (the new ReplicaSet, if any, last).
pub fn proportional_scale(d: &Value, rss: &[Value], new_idx: Option<usize>) -> Vec<(usize, i64)> {
    let want = replicas(d);
    let active: Vec<usize> = (0..rss.len()).filter(|&i| replicas(&rss[i]) > 0).collect();
    // One active (or none: the newest) takes it all.
    let single = match active.len() {
        0 => new_idx.or_else(|| {
            (0..rss.len()).max_by(|&a, &b| {
                let t =
                    |i: usize| parse_time(meta_str(&rss[i], "creationTimestamp")).unwrap_or(0.0);
                t(a).total_cmp(&t(b))
            })
        }),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(i) = single {
        return if replicas(&rss[i]) == want {
            vec![]
        } else {
            vec![(i, want)]
        };
    }
    if let Some(n) = new_idx {
        let rs = &rss[n];
        if replicas(rs) == want
            && annotation(rs, DESIRED) == Some(&want.to_string())
            && status_of(rs, "availableReplicas") == want
        {
            return active
                .into_iter()
                .filter(|&i| i != n)
                .map(|i| (i, 0))
                .collect();
        }
    }
    if !is_rolling(d) {
        return vec![];
    }
    let (surge, _) = fenceposts(d);
    let allowed = want + surge;
    let current: i64 = active.iter().map(|&i| replicas(&rss[i])).sum();
    let to_add = allowed - current;
    if to_add == 0 {
        return vec![];
    }
    let mut order = active.clone();
    let t = |i: usize| parse_time(meta_str(&rss[i], "creationTimestamp")).unwrap_or(0.0);
    order.sort_by(|&a, &b| {
        replicas(&rss[b]).cmp(&replicas(&rss[a])).then_with(|| {
            if to_add > 0 {
                t(b).total_cmp(&t(a))
            } else {
                t(a).total_cmp(&t(b))
            }
        })
    });
    let mut sizes: Vec<i64> = rss.iter().map(replicas).collect();
    let mut added = 0;
    for &i in &order {
        let rs = &rss[i];
        let fraction = if want == 0 {
            -replicas(rs)
        } else {
            let annotated = annotation(rs, MAX_REPLICAS)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or_else(|| i64_at(d, "/status/replicas"))
                .max(1);
            ((replicas(rs) * allowed) as f64 / annotated as f64).round() as i64 - replicas(rs)
        };
        let left = to_add - added;
        let p = if to_add > 0 {
            fraction.min(left)
        } else {
            fraction.max(left)
        };
        sizes[i] += p;
        added += p;
    }
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    (0..rss.len())
        .filter(|&i| sizes[i] != replicas(&rss[i]))
        .map(|i| (i, sizes[i].max(0)))
        .collect()
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub d_info: Arc<ResourceInfo>,
    pub rs_info: Arc<ResourceInfo>,
    pub deployments: Arc<Informer>,
    pub rss: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub queue: WorkQueue,
}

fn owner_of_kind(o: &Value, kind: &str) -> Option<String> {
    let r = controller_ref(o)?;
    (r.get("kind").and_then(Value::as_str) == Some(kind)).then(|| {
        r.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    })
}

/// The state one sync works over, updated as it writes.
struct Snapshot {
    d: Value,
    /// ReplicaSets this deployment controls.
    rss: Vec<Value>,
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (d_info, rs_info, pod_info) = (
            find("apps", "deployments")?,
            find("apps", "replicasets")?,
            find("", "pods")?,
        );
        Ok(Arc::new(Controller {
            deployments: Arc::new(
                Informer::new(d_info.key_prefix()).with_index(BY_NAMESPACE, index_namespace),
            ),
            rss: Arc::new(
                Informer::new(rs_info.key_prefix())
                    .with_index(BY_NAMESPACE, index_namespace)
                    .with_index(BY_CONTROLLER, index_controller),
            ),
            pods: Arc::new(
                Informer::new(pod_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            reg,
            opts,
            d_info,
            rs_info,
            queue: WorkQueue::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.deployments.start(&self.reg.cache, move |_, ev| {
            c.queue.add(ns_key(&ev.object))
        })?;
        let c = self.clone();
        self.rss
            .start(&self.reg.cache, move |_, ev| c.on_rs_event(ev))?;
        let c = self.clone();
        self.pods.start(&self.reg.cache, move |_, ev| {
            // Recreate waits for old pods to be gone.
            if ev.kind == EventType::Deleted {
                if let Some(rs) = owner_of_kind(&ev.object, "ReplicaSet") {
                    let key = c.rs_info.key(Some(namespace(&ev.object)), &rs);
                    if let Some(d) = c
                        .rss
                        .get(&key)
                        .and_then(|rs| owner_of_kind(&rs, "Deployment"))
                    {
                        c.queue.add(format!("{}/{d}", namespace(&ev.object)));
                    }
                }
            }
        })?;
        Ok(())
    }

    fn on_rs_event(&self, ev: &CacheEvent) {
        let ns = namespace(&ev.object);
        for o in std::iter::once(&ev.object).chain(ev.prev.iter()) {
            if let Some(d) = owner_of_kind(o, "Deployment") {
                self.queue.add(format!("{ns}/{d}"));
            }
        }
        if controller_ref(&ev.object).is_none() && ev.kind != EventType::Deleted {
            for (_, d) in self.deployments.by_index(BY_NAMESPACE, ns) {
                if selector_matches(at(&d, "/spec/selector"), &ev.object) {
                    self.queue.add(ns_key(&d));
                }
            }
        }
    }

    async fn event(&self, d: &Value, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            d,
            ("apps/v1", "Deployment"),
            "Normal",
            reason,
            msg,
        )
        .await;
    }

    async fn update_rs(&self, rs: Value) -> anyhow::Result<Value> {
        let (ns, n) = (namespace(&rs).to_string(), name(&rs).to_string());
        Ok(self
            .reg
            .update(&self.rs_info, Some(&ns), &n, rs, &self.opts, None)
            .await?
            .object)
    }

    /// Scales one ReplicaSet (and stamps the replicas annotations).
    async fn scale(&self, s: &mut Snapshot, i: usize, size: i64) -> anyhow::Result<()> {
        let mut rs = s.rss[i].clone();
        let (surge, _) = fenceposts(&s.d);
        let old = replicas(&rs);
        let annotated = set_replicas_annotations(&mut rs, replicas(&s.d), replicas(&s.d) + surge);
        if old == size && !annotated {
            return Ok(());
        }
        rs["spec"]["replicas"] = json!(size);
        s.rss[i] = self.update_rs(rs).await?;
        if old != size {
            let dir = if size > old { "up" } else { "down" };
            let msg = format!(
                "Scaled {dir} replica set {} from {old} to {size}",
                name(&s.rss[i])
            );
            self.event(&s.d, "ScalingReplicaSet", &msg).await;
        }
        Ok(())
    }

    async fn write_status(&self, s: &mut Snapshot, status: Value) -> anyhow::Result<()> {
        if s.d.get("status") == Some(&status) {
            return Ok(());
        }
        let patch = status_patch(s.d.get("status"), &status);
        let (ns, n) = (namespace(&s.d).to_string(), name(&s.d).to_string());
        let res = self
            .reg
            .patch(
                &self.d_info,
                Some(&ns),
                &n,
                PatchKind::Merge,
                &patch,
                &self.opts,
                Some("status"),
            )
            .await?;
        s.d = res.object;
        Ok(())
    }

    /// Sets a condition on the deployment's status right away.
    async fn write_condition(&self, s: &mut Snapshot, cond: Value) -> anyhow::Result<()> {
        let mut st = s.d.get("status").cloned().unwrap_or(json!({}));
        st["conditions"] = json!(set_deploy_condition(&conditions(&s.d), cond));
        self.write_status(s, st).await
    }

    async fn set_deployment_revision(&self, s: &mut Snapshot, rev: i64) -> anyhow::Result<()> {
        let rev = rev.to_string();
        if annotation(&s.d, REVISION) == Some(rev.as_str()) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        let (ns, n) = (namespace(&s.d).to_string(), name(&s.d).to_string());
        s.d = self
            .reg
            .patch(
                &self.d_info,
                Some(&ns),
                &n,
                PatchKind::Merge,
                &patch,
                &self.opts,
                None,
            )
            .await?
            .object;
        Ok(())
    }

    /// Upstream's getNewReplicaSet: finds (and re-annotates) the ReplicaSet
    /// for the current template, or creates it. Returns its index.
    async fn new_rs(&self, s: &mut Snapshot, create: bool) -> anyhow::Result<Option<usize>> {
        let template = s.d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let mut by_age: Vec<usize> = (0..s.rss.len()).collect();
        by_age.sort_by(|&a, &b| {
            let t = |i: usize| parse_time(meta_str(&s.rss[i], "creationTimestamp")).unwrap_or(0.0);
            t(a).total_cmp(&t(b))
                .then(name(&s.rss[a]).cmp(name(&s.rss[b])))
        });
        let found = by_age.into_iter().find(|&i| {
            s.rss[i]
                .pointer("/spec/template")
                .is_some_and(|t| equal_ignore_hash(t, &template))
        });
        let max_old = (0..s.rss.len())
            .filter(|&i| Some(i) != found)
            .map(|i| revision(&s.rss[i]))
            .max()
            .unwrap_or(0);
        let new_rev = max_old + 1;
        if let Some(i) = found {
            let mut rs = s.rss[i].clone();
            let mut changed = copy_annotations(&s.d, &mut rs);
            if revision(&rs) < new_rev {
                set_annotation(&mut rs, REVISION, &new_rev.to_string());
                changed = true;
            }
            let min_ready = i64_at(&s.d, "/spec/minReadySeconds");
            if i64_at(&rs, "/spec/minReadySeconds") != min_ready {
                rs["spec"]["minReadySeconds"] = json!(min_ready);
                changed = true;
            }
            if changed {
                s.rss[i] = self.update_rs(rs).await?;
            }
            let rev = revision(&s.rss[i]);
            self.set_deployment_revision(s, rev).await?;
            if get_condition(&conditions(&s.d), "Progressing").is_none() {
                let msg = format!("Found new replica set \"{}\"", name(&s.rss[i]));
                let c = new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    &msg,
                    &now_rfc3339(),
                );
                self.write_condition(s, c).await?;
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        let collision =
            s.d.pointer("/status/collisionCount")
                .and_then(Value::as_i64);
        let hash = template_hash(&template, collision);
        let mut rs = new_replica_set(&s.d, &hash, 0, new_rev);
        let size = new_rs_new_replicas(&s.d, &s.rss, &rs);
        rs["spec"]["replicas"] = json!(size);
        let ns = namespace(&s.d).to_string();
        match self
            .reg
            .create(&self.rs_info, Some(&ns), rs.clone(), &self.opts)
            .await
        {
            Ok(created) => {
                s.rss.push(created.object);
                let i = s.rss.len() - 1;
                if size > 0 {
                    let msg = format!("Scaled up replica set {} from 0 to {size}", name(&s.rss[i]));
                    self.event(&s.d, "ScalingReplicaSet", &msg).await;
                }
                self.set_deployment_revision(s, new_rev).await?;
                let msg = format!("Created new replica set \"{}\"", name(&s.rss[i]));
                let c = new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &msg,
                    &now_rfc3339(),
                );
                self.write_condition(s, c).await?;
                Ok(Some(i))
            }
            Err(e) if e.code == 409 => {
                // Ours already (the cache is behind)? Otherwise a hash collision.
                let existing = self
                    .reg
                    .get_cached(&self.rs_info, Some(&ns), name(&rs))
                    .ok();
                let ours = existing.as_ref().is_some_and(|x| {
                    controller_ref(x)
                        .and_then(|r| r.get("uid"))
                        .and_then(Value::as_str)
                        == Some(uid(&s.d))
                        && at(x, "/spec/template").is_some_and(|t| equal_ignore_hash(t, &template))
                });
                if !ours {
                    let mut st = s.d.get("status").cloned().unwrap_or(json!({}));
                    st["collisionCount"] = json!(collision.unwrap_or(0) + 1);
                    self.write_status(s, st).await?;
                }
                anyhow::bail!("replica set {} already exists", name(&rs))
            }
            Err(e) => {
                let msg = format!(
                    "Failed to create new replica set \"{}\": {}",
                    name(&rs),
                    e.message
                );
                let c = new_condition(
                    "Progressing",
                    "False",
                    "ReplicaSetCreateError",
                    &msg,
                    &now_rfc3339(),
                );
                self.write_condition(s, c).await?;
                Err(e.into())
            }
        }
    }

    /// Adopts matching orphans and releases ReplicaSets that stop matching.
    async fn claim(&self, d: &Value) -> anyhow::Result<Vec<Value>> {
        let sel = at(d, "/spec/selector");
        let mut out = vec![];
        for (_, rs) in self.rss.by_index(BY_NAMESPACE, namespace(d)) {
            let mine = controller_ref(&rs)
                .and_then(|r| r.get("uid"))
                .and_then(Value::as_str)
                == Some(uid(d));
            let matches = selector_matches(sel, &rs);
            let set_refs = |owner: Option<Value>| {
                let mut r = (*rs).clone();
                let refs: Vec<Value> = conditions_refs(&rs).into_iter().chain(owner).collect();
                r["metadata"]["ownerReferences"] = json!(refs);
                r
            };
            if mine && matches {
                out.push((*rs).clone());
            } else if mine {
                self.update_rs(set_refs(None)).await?;
            } else if controller_ref(&rs).is_none() && matches && !deleting(d) && !deleting(&rs) {
                out.push(
                    self.update_rs(set_refs(Some(controller_owner_ref(
                        "apps/v1",
                        "Deployment",
                        d,
                    ))))
                    .await?,
                );
            }
        }
        Ok(out)
    }

    fn old_pods_running(&self, s: &Snapshot, new_idx: Option<usize>) -> bool {
        (0..s.rss.len()).filter(|&i| Some(i) != new_idx).any(|i| {
            status_of(&s.rss[i], "replicas") > 0
                || self
                    .pods
                    .by_index(BY_CONTROLLER, uid(&s.rss[i]))
                    .iter()
                    .any(|(_, p)| {
                        let phase = at(p, "/status/phase").and_then(Value::as_str);
                        phase != Some("Succeeded") && phase != Some("Failed")
                    })
        })
    }

    /// Deletes old ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, s: &Snapshot, new_idx: Option<usize>) -> anyhow::Result<()> {
        let Some(limit) =
            s.d.pointer("/spec/revisionHistoryLimit")
                .and_then(Value::as_i64)
        else {
            return Ok(());
        };
        let mut old: Vec<&Value> = (0..s.rss.len())
            .filter(|&i| Some(i) != new_idx && !deleting(&s.rss[i]))
            .map(|i| &s.rss[i])
            .collect();
        let diff = old.len() as i64 - limit;
        if diff <= 0 {
            return Ok(());
        }
        old.sort_by_key(|rs| revision(rs));
        for rs in old.into_iter().take(diff as usize) {
            if status_of(rs, "replicas") != 0
                || replicas(rs) != 0
                || i64_at(rs, "/metadata/generation") > status_of(rs, "observedGeneration")
            {
                continue;
            }
            let del = DeleteOptions {
                precondition_uid: Some(uid(rs).to_string()),
                ..Default::default()
            };
            match self
                .reg
                .delete(&self.rs_info, Some(namespace(rs)), name(rs), &del)
                .await
            {
                Err(e) if e.code != 404 => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    async fn sync_rollout(
        &self,
        s: &mut Snapshot,
        new_idx: Option<usize>,
    ) -> anyhow::Result<Requeue> {
        let (mut st, requeue) =
            rollout_status(&s.d, &s.rss, new_idx.map(|i| &s.rss[i]), now_secs());
        let timed_out = |st: &Value| {
            conditions(&json!({ "status": st }))
                .iter()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
        };
        let newly_timed_out = timed_out(&st) && !timed_out(s.d.get("status").unwrap_or(&json!({})));
        if newly_timed_out {
            // Say which pods hold the rollout up, and why.
            let pods: Vec<Arc<Value>> = new_idx
                .map(|i| self.pods.by_index(BY_CONTROLLER, uid(&s.rss[i])))
                .unwrap_or_default()
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            if let Some(why) = not_ready_summary(&pods) {
                if let Some(conds) = st["conditions"].as_array_mut() {
                    for c in conds.iter_mut().filter(|c| c["type"] == "Progressing") {
                        let m = format!("{} {why}", c["message"].as_str().unwrap_or_default());
                        c["message"] = json!(m);
                    }
                }
                let message = format!(
                    "Deployment \"{}\" exceeded its progress deadline: {why}",
                    name(&s.d)
                );
                record_event(
                    &self.reg,
                    &self.opts,
                    "deployment-controller",
                    &s.d,
                    ("apps/v1", "Deployment"),
                    "Warning",
                    "ProgressDeadlineExceeded",
                    &message,
                )
                .await;
            }
        }
        self.write_status(s, st).await?;
        Ok(requeue)
    }

    /// One reconcile of the Deployment `namespace/name`.
    pub async fn sync(&self, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(d) = self.deployments.get(&self.d_info.key(Some(ns), n)) else {
            return Ok(None);
        };
        let d = (*d).clone();
        let rss = self.claim(&d).await?;
        let mut s = Snapshot { d, rss };
        if deleting(&s.d) {
            let new_idx = self.new_rs(&mut s, false).await?;
            let st = calculate_status(&s.d, &s.rss, new_idx.map(|i| &s.rss[i]));
            self.write_status(&mut s, st).await?;
            return Ok(None);
        }
        self.paused_condition(&mut s).await?;
        let paused = s.d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let want = replicas(&s.d).to_string();
        let scaling = s
            .rss
            .iter()
            .any(|rs| replicas(rs) > 0 && annotation(rs, DESIRED).is_some_and(|v| v != want));
        if paused || scaling {
            let new_idx = self.new_rs(&mut s, false).await?;
            let changes = proportional_scale(&s.d, &s.rss, new_idx);
            for (i, size) in changes {
                self.scale(&mut s, i, size).await?;
            }
            let st = calculate_status(&s.d, &s.rss, new_idx.map(|i| &s.rss[i]));
            if paused && complete(&s.d, &st) {
                self.cleanup(&s, new_idx).await?;
            }
            self.write_status(&mut s, st).await?;
            return Ok(None);
        }
        if is_rolling(&s.d) {
            self.rolling(&mut s).await
        } else {
            self.recreate(&mut s).await
        }
    }

    async fn paused_condition(&self, s: &mut Snapshot) -> anyhow::Result<()> {
        let cur = get_condition(&conditions(&s.d), "Progressing").cloned();
        if cur
            .as_ref()
            .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
        {
            return Ok(());
        }
        let paused = s.d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let cond_paused = cur
            .as_ref()
            .is_some_and(|c| c["reason"] == "DeploymentPaused");
        let now = now_rfc3339();
        if paused && !cond_paused {
            let c = new_condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                &now,
            );
            self.write_condition(s, c).await?;
        } else if !paused && cond_paused {
            let c = new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                &now,
            );
            self.write_condition(s, c).await?;
        }
        Ok(())
    }

    async fn rolling(&self, s: &mut Snapshot) -> anyhow::Result<Requeue> {
        let new_idx = self.new_rs(s, true).await?.expect("created");
        // Scale the new ReplicaSet up (or down to the desired size).
        let cur = replicas(&s.rss[new_idx]);
        let want = if cur > replicas(&s.d) {
            replicas(&s.d)
        } else {
            new_rs_new_replicas(&s.d, &s.rss, &s.rss[new_idx])
        };
        if want != cur {
            self.scale(s, new_idx, want).await?;
            return self.sync_rollout(s, Some(new_idx)).await;
        }
        // Then scale old ones down as availability allows.
        let old_idx: Vec<usize> = (0..s.rss.len())
            .filter(|&i| i != new_idx && replicas(&s.rss[i]) > 0)
            .collect();
        let old: Vec<Value> = old_idx.iter().map(|&i| s.rss[i].clone()).collect();
        let changes = scale_down_old(&s.d, &s.rss, &old, &s.rss[new_idx]);
        if !changes.is_empty() {
            for (j, size) in changes {
                self.scale(s, old_idx[j], size).await?;
            }
            return self.sync_rollout(s, Some(new_idx)).await;
        }
        if complete(&s.d, s.d.get("status").unwrap_or(&Value::Null)) {
            self.cleanup(s, Some(new_idx)).await?;
        }
        self.sync_rollout(s, Some(new_idx)).await
    }

    async fn recreate(&self, s: &mut Snapshot) -> anyhow::Result<Requeue> {
        let mut new_idx = self.new_rs(s, false).await?;
        let active_old: Vec<usize> = (0..s.rss.len())
            .filter(|&i| Some(i) != new_idx && replicas(&s.rss[i]) > 0)
            .collect();
        if !active_old.is_empty() {
            for i in active_old {
                self.scale(s, i, 0).await?;
            }
            return self.sync_rollout(s, new_idx).await;
        }
        if self.old_pods_running(s, new_idx) {
            return self.sync_rollout(s, new_idx).await;
        }
        if new_idx.is_none() {
            new_idx = self.new_rs(s, true).await?;
        }
        if let Some(i) = new_idx {
            let want = replicas(&s.d);
            self.scale(s, i, want).await?;
        }
        if complete(&s.d, s.d.get("status").unwrap_or(&Value::Null)) {
            self.cleanup(s, new_idx).await?;
        }
        self.sync_rollout(s, new_idx).await
    }
}

/// Owner references other than the controller's.
fn conditions_refs(o: &Value) -> Vec<Value> {
    at(o, "/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|r| r.get("controller").and_then(Value::as_bool) != Some(true))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_summary_names_pods_and_reasons() {
        let pod =
            |n: &str, status: Value| Arc::new(json!({"metadata": {"name": n}, "status": status}));
        let pods = vec![
            pod(
                "web-b",
                json!({"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
            ),
            pod(
                "web-a",
                json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "web", "ready": false, "state": {"waiting": {
                    "reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:1\""}}}]}),
            ),
            pod(
                "web-c",
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
            ),
            pod(
                "web-d",
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "web", "ready": false, "state": {"waiting": {
                    "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"reason": "Error"}}}]}),
            ),
            pod(
                "web-e",
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "web", "ready": false, "state": {"running": {}}}]}),
            ),
        ];
        let s = not_ready_summary(&pods).unwrap();
        assert_eq!(
            s,
            "4 of 5 pods are not ready: \
             web-a: container web: ImagePullBackOff (Back-off pulling image \"x:1\"); \
             web-b: Unschedulable (0/3 nodes are available: 3 Insufficient cpu.); \
             web-d: container web: CrashLoopBackOff, last exit: Error; \
             web-e: container web: running but not ready (readiness probe)"
        );
        assert_eq!(not_ready_summary(&pods[2..3]), None);
    }

    fn deploy(n: i64, surge: Value, unavail: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "d", "uid": "d1", "generation": 1},
               "spec": {"replicas": n, "selector": {"matchLabels": {"app": "web"}},
                        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavail}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "v1"}]}}}})
    }

    fn rs(name: &str, spec: i64, status: i64, avail: i64, created: &str) -> Value {
        json!({"metadata": {"name": name, "uid": name, "creationTimestamp": created},
               "spec": {"replicas": spec},
               "status": {"replicas": status, "readyReplicas": avail, "availableReplicas": avail}})
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let d = deploy(3, json!("25%"), json!("25%"));
        let t = d["spec"]["template"].clone();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert!(h.bytes().all(|b| ALPHANUMS.contains(&b)), "{h}");
        // Key order does not matter.
        let reordered = json!({"spec": {"containers": [{"image": "v1", "name": "web"}]}, "metadata": {"labels": {"app": "web"}}});
        assert_eq!(h, template_hash(&reordered, None));
        let mut v2 = t.clone();
        v2["spec"]["containers"][0]["image"] = json!("v2");
        assert_ne!(h, template_hash(&v2, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        // Zero values are the same as absent (as for typed objects).
        let mut z = t.clone();
        z["metadata"]["creationTimestamp"] = Value::Null;
        z["spec"]["containers"][0]["stdin"] = json!(false);
        assert_eq!(h, template_hash(&z, None));
        assert!(equal_ignore_hash(&z, &t));
        let rs = new_replica_set(&d, &h, 0, 1);
        assert_eq!(rs["metadata"]["name"], format!("web-{h}"));
        assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], h);
        assert!(equal_ignore_hash(&rs["spec"]["template"], &t));
        assert_eq!(annotation(&rs, REVISION), Some("1"));
        assert_eq!(annotation(&rs, MAX_REPLICAS), Some("4"));
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(fenceposts(&deploy(10, json!("25%"), json!("25%"))), (3, 2));
        assert_eq!(fenceposts(&deploy(20, json!("25%"), json!("25%"))), (5, 5));
        assert_eq!(fenceposts(&deploy(3, json!(0), json!(0))), (0, 1));
        assert_eq!(fenceposts(&deploy(3, json!(2), json!("0%"))), (2, 0));
        assert_eq!(fenceposts(&deploy(1, json!("25%"), json!("25%"))), (1, 0));
    }

    #[test]
    fn rolling_update_steps_respect_bounds() {
        let d = deploy(20, json!("25%"), json!("25%"));
        let old = rs("old", 20, 20, 20, "2024-01-01T00:00:00Z");
        let new = rs("new", 0, 0, 0, "2024-01-02T00:00:00Z");
        // Surge: new may go to 5.
        assert_eq!(
            new_rs_new_replicas(&d, &[old.clone(), new.clone()], &new),
            5
        );
        // With the new at 5 (none available), old may go down by 5.
        let new5 = rs("new", 5, 5, 0, "2024-01-02T00:00:00Z");
        let all = [old.clone(), new5.clone()];
        assert_eq!(
            scale_down_old(&d, &all, std::slice::from_ref(&old), &new5),
            vec![(0, 15)]
        );
        // Old scaled to 15 but its pods not gone yet: the new may not grow.
        let old15 = rs("old", 15, 20, 20, "2024-01-01T00:00:00Z");
        assert_eq!(
            new_rs_new_replicas(&d, &[old15.clone(), new5.clone()], &new5),
            5
        );
        // Nothing more to take down until new pods are available.
        let all = [old15.clone(), new5.clone()];
        assert!(scale_down_old(&d, &all, std::slice::from_ref(&old15), &new5).is_empty());
        let new5a = rs("new", 5, 5, 5, "2024-01-02T00:00:00Z");
        let old15b = rs("old", 15, 15, 15, "2024-01-01T00:00:00Z");
        let all = [old15b.clone(), new5a.clone()];
        assert_eq!(new_rs_new_replicas(&d, &all, &new5a), 10);
    }

    #[test]
    fn unhealthy_old_replicas_go_first() {
        let d = deploy(4, json!(1), json!(1));
        let old = rs("old", 4, 4, 2, "2024-01-01T00:00:00Z");
        let new = rs("new", 1, 1, 0, "2024-01-02T00:00:00Z");
        // all=5, minAvailable=3, newUnavailable=1: may take down 1, an unhealthy one.
        assert_eq!(
            scale_down_old(&d, &[old.clone(), new.clone()], &[old], &new),
            vec![(0, 3)]
        );
    }

    #[test]
    fn status_and_conditions() {
        let mut d = deploy(3, json!("25%"), json!("25%"));
        d["spec"]["progressDeadlineSeconds"] = json!(600);
        let new = rs("web-abc", 3, 3, 3, "2024-01-02T00:00:00Z");
        let old = rs("web-old", 0, 0, 0, "2024-01-01T00:00:00Z");
        let (st, _) = rollout_status(&d, &[old, new.clone()], Some(&new), now_secs());
        assert_eq!(st["replicas"], 3);
        assert_eq!(st["updatedReplicas"], 3);
        assert_eq!(st["availableReplicas"], 3);
        assert_eq!(st["observedGeneration"], 1);
        assert!(st.get("unavailableReplicas").is_none());
        let conds = conditions(&json!({"status": st}));
        let p = get_condition(&conds, "Progressing").unwrap();
        assert_eq!(p["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            p["message"],
            "ReplicaSet \"web-abc\" has successfully progressed."
        );
        assert_eq!(
            get_condition(&conds, "Available").unwrap()["reason"],
            "MinimumReplicasAvailable"
        );

        // Stuck past the deadline: ProgressDeadlineExceeded.
        let stuck = rs("web-abc", 3, 3, 1, "2024-01-02T00:00:00Z");
        d["status"] = json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 1, "readyReplicas": 1,
            "conditions": [new_condition("Progressing", "True", "ReplicaSetUpdated", "x", "2020-01-01T00:00:00Z")]});
        let (st, _) = rollout_status(&d, std::slice::from_ref(&stuck), Some(&stuck), now_secs());
        let p = get_condition(&conditions(&json!({"status": st.clone()})), "Progressing")
            .unwrap()
            .clone();
        assert_eq!(
            (p["status"].as_str(), p["reason"].as_str()),
            (Some("False"), Some("ProgressDeadlineExceeded"))
        );
        assert_eq!(st["unavailableReplicas"], 2);
        assert_eq!(
            get_condition(&conditions(&json!({"status": st})), "Available").unwrap()["status"],
            "False"
        );
    }

    #[test]
    fn proportional_scaling_mid_rollout() {
        let mut d = deploy(20, json!(3), json!(2));
        let mut a = rs("a", 8, 8, 8, "2024-01-01T00:00:00Z");
        let mut b = rs("b", 5, 5, 5, "2024-01-02T00:00:00Z");
        set_annotation(&mut a, MAX_REPLICAS, "13");
        set_annotation(&mut b, MAX_REPLICAS, "13");
        // Scaled from 10 to 20: allowed 23, 10 to add in proportion 8:5.
        let out = proportional_scale(&d, &[a.clone(), b.clone()], Some(1));
        let total: i64 = out.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 23);
        assert!(out.contains(&(0, 14)), "{out:?}");
        d["spec"]["replicas"] = json!(5);
        // A single active ReplicaSet just takes the size.
        b["spec"]["replicas"] = json!(0);
        assert_eq!(proportional_scale(&d, &[a, b], Some(1)), vec![(0, 5)]);
    }
}

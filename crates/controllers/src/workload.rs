//! Helpers the workload controllers ([`crate::replicaset`],
//! [`crate::deployment`]) share: object accessors, controller references,
//! selectors, pod readiness, and event recording.

use crate::runtime::Informer;
use kobune_apimachinery::at;
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::{ApiError, ResourceInfo};
use kobune_apiserver::registry::{PatchKind, Registry, WriteOptions};
use serde_json::{json, Value};
use std::sync::Arc;

/// Index: namespace -> keys of the objects in it.
pub const BY_NAMESPACE: &str = "namespace";
/// Index: controller owner uid -> keys of the objects it controls.
pub const BY_CONTROLLER: &str = "controller";

pub fn meta_str<'v>(o: &'v Value, field: &str) -> &'v str {
    o.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn name(o: &Value) -> &str {
    meta_str(o, "name")
}

pub fn namespace(o: &Value) -> &str {
    meta_str(o, "namespace")
}

pub fn uid(o: &Value) -> &str {
    meta_str(o, "uid")
}

pub fn deleting(o: &Value) -> bool {
    at(o, "/metadata/deletionTimestamp").is_some_and(|v| !v.is_null())
}

pub fn i64_at(o: &Value, ptr: &str) -> i64 {
    at(o, ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub fn annotation<'v>(o: &'v Value, key: &str) -> Option<&'v str> {
    at(o, "/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// The ownerReference with `controller: true`, if any.
pub fn controller_ref(o: &Value) -> Option<&Value> {
    at(o, "/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// A controller reference as controllers set it.
pub fn controller_owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind, "name": name(owner), "uid": uid(owner),
        "controller": true, "blockOwnerDeletion": true
    })
}

/// Index function: namespace.
pub fn index_namespace(o: &Value) -> Vec<String> {
    vec![namespace(o).to_string()]
}

/// Index: namespace -> keys of the objects there that have no controller
/// (the only ones a controller may adopt).
pub const BY_ORPHAN_NAMESPACE: &str = "orphan-namespace";

/// Index function: the namespace of an object without a controller.
pub fn index_orphan_namespace(o: &Value) -> Vec<String> {
    if controller_ref(o).is_some() {
        vec![]
    } else {
        vec![namespace(o).to_string()]
    }
}

/// Index function: the controller's uid.
pub fn index_controller(o: &Value) -> Vec<String> {
    controller_ref(o)
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        .map(|s| vec![s.to_string()])
        .unwrap_or_default()
}

/// Whether a workload's `spec.selector` matches an object's labels. An
/// empty or invalid selector matches nothing, as for workloads upstream.
pub fn selector_matches(selector: Option<&Value>, obj: &Value) -> bool {
    compile_selector(selector).is_some_and(|s| labels_match(&s, obj))
}

/// A workload's `spec.selector` parsed once, for matching many objects;
/// `None` (absent, empty or invalid) matches nothing.
pub fn compile_selector(selector: Option<&Value>) -> Option<Selector> {
    Selector::from_label_selector(selector?)
        .ok()
        .filter(|s| !s.is_empty())
}

pub fn labels_match(selector: &Selector, obj: &Value) -> bool {
    selector.matches_labels(at(obj, "/metadata/labels").and_then(Value::as_object))
}

/// Seconds since the epoch of an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

pub fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

/// The pod's Ready condition, if true: its lastTransitionTime (0 when unknown).
/// The pod's `Ready=True` condition, if it has one.
pub fn ready_condition(pod: &Value) -> Option<&Value> {
    at(pod, "/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub fn ready_since(pod: &Value) -> Option<f64> {
    ready_condition(pod).map(transition_time)
}

pub fn transition_time(condition: &Value) -> f64 {
    condition
        .get("lastTransitionTime")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .unwrap_or(0.0)
}

pub fn pod_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some()
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn pod_available(pod: &Value, min_ready: i64, now: f64) -> bool {
    match ready_condition(pod) {
        Some(_) if min_ready <= 0 => true,
        Some(c) => transition_time(c) + min_ready as f64 <= now,
        None => false,
    }
}

/// Not terminating and not finished.
pub fn pod_active(pod: &Value) -> bool {
    let phase = at(pod, "/status/phase").and_then(Value::as_str);
    !deleting(pod) && phase != Some("Succeeded") && phase != Some("Failed")
}

/// Records an Event about `obj` (best effort).
#[allow(clippy::too_many_arguments)]
pub async fn record_event(
    reg: &Registry,
    opts: &WriteOptions,
    component: &str,
    obj: &Value,
    kind: (&str, &str),
    ty: &str,
    reason: &str,
    message: &str,
) {
    let Some(info) = reg.resources.find("", "v1", "events") else {
        return;
    };
    let now = kobune_apiserver::registry::now_rfc3339();
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let ns = namespace(obj);
    let ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{}.{:x}", name(obj), nanos), "namespace": ns},
        "involvedObject": {
            "apiVersion": kind.0, "kind": kind.1, "namespace": ns, "name": name(obj),
            "uid": uid(obj), "resourceVersion": meta_str(obj, "resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": ty,
        "reportingComponent": component,
        "reportingInstance": format!("{component}-kobune"),
    });
    if let Err(e) = reg.create(&info, Some(ns), ev, opts).await {
        tracing::debug!("recording event {reason} failed: {e}");
    }
}

/// The value with object keys sorted at every level (for stable hashing).
pub fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[k.as_str()], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// 32-bit FNV-1a, as upstream hashes pod templates.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Sets a condition (by type); keeps lastTransitionTime when the status is
/// unchanged. Returns the new list.
pub fn set_condition(conds: &[Value], new: Value) -> Vec<Value> {
    let mut out: Vec<Value> = vec![];
    let mut placed = false;
    for c in conds {
        if c["type"] == new["type"] {
            let mut n = new.clone();
            if c["status"] == new["status"] && c.get("lastTransitionTime").is_some() {
                n["lastTransitionTime"] = c["lastTransitionTime"].clone();
            }
            out.push(n);
            placed = true;
        } else {
            out.push(c.clone());
        }
    }
    if !placed {
        out.push(new);
    }
    out
}

pub fn get_condition<'a>(conds: &'a [Value], ty: &str) -> Option<&'a Value> {
    conds.iter().find(|c| c["type"] == ty)
}

pub fn conditions(o: &Value) -> Vec<Value> {
    at(o, "/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `namespace/name` of an object: the work-queue key of namespaced controllers.
pub fn ns_key(o: &Value) -> String {
    format!("{}/{}", namespace(o), name(o))
}

/// The queue key of an object's controller, if that controller is a `kind`.
pub fn controller_key(o: &Value, kind: &str) -> Option<String> {
    let r = controller_ref(o)?;
    (r.get("kind").and_then(Value::as_str) == Some(kind)).then(|| {
        format!(
            "{}/{}",
            namespace(o),
            r.get("name").and_then(Value::as_str).unwrap_or_default()
        )
    })
}

/// Writes `status` through the status subresource of `obj` when it differs
/// from the current one. Errors whose code is in `ignore` (404: the object
/// is gone; 409: it changed meanwhile, the next sync writes again) are not
/// errors.
pub async fn update_status_if_changed(
    reg: &Registry,
    info: &ResourceInfo,
    obj: &Value,
    status: Value,
    opts: &WriteOptions,
    ignore: &[u16],
) -> Result<(), ApiError> {
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut updated = obj.clone();
    updated["status"] = status;
    let ns = at(obj, "/metadata/namespace").and_then(Value::as_str);
    match reg
        .update(info, ns, name(obj), updated, opts, Some("status"))
        .await
    {
        Err(e) if ignore.contains(&e.code) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// The ControllerRevisions `revisions` (indexed by [`BY_CONTROLLER`])
/// holds for the owner `owner_uid`, oldest first, and the highest
/// revision number (0 when there are none).
pub fn owned_revisions(revisions: &Informer, owner_uid: &str) -> (Vec<Arc<Value>>, i64) {
    let mut owned: Vec<Arc<Value>> = revisions.objects_by_index(BY_CONTROLLER, owner_uid);
    owned.sort_by_key(|r| i64_at(r, "/revision"));
    let max = owned.last().map(|r| i64_at(r, "/revision")).unwrap_or(0);
    (owned, max)
}

/// A new ControllerRevision `rev_name` of `owner` (an apps/v1 `kind`),
/// labelled like the owner's pod template plus
/// `controller-revision-hash: hash`.
pub fn new_revision(
    owner: &Value,
    kind: &str,
    rev_name: &str,
    hash: &str,
    data: &Value,
    revision: i64,
) -> Value {
    let mut labels = owner
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    labels["controller-revision-hash"] = json!(hash);
    json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": rev_name, "namespace": namespace(owner), "labels": labels,
                     "ownerReferences": [controller_owner_ref("apps/v1", kind, owner)]},
        "data": data, "revision": revision,
    })
}

/// Makes a reused older ControllerRevision the newest one (`max` + 1).
pub async fn renumber_revision(
    reg: &Registry,
    cr_info: &ResourceInfo,
    rev: &Value,
    max: i64,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    if i64_at(rev, "/revision") < max {
        let patch = json!({"revision": max + 1});
        let ns = at(rev, "/metadata/namespace").and_then(Value::as_str);
        reg.patch(cr_info, ns, name(rev), PatchKind::Merge, &patch, opts, None)
            .await?;
    }
    Ok(())
}

/// A ControllerRevision name taken by a different template: counts the
/// collision in the owner's status (so the next sync hashes differently)
/// and returns the error that makes the sync retry.
pub async fn revision_collision(
    reg: &Registry,
    owner_info: &ResourceInfo,
    owner: &Value,
    collision: Option<i64>,
    opts: &WriteOptions,
) -> anyhow::Error {
    let patch = json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
    let ns = at(owner, "/metadata/namespace").and_then(Value::as_str);
    match reg
        .patch(
            owner_info,
            ns,
            name(owner),
            PatchKind::Merge,
            &patch,
            opts,
            Some("status"),
        )
        .await
    {
        Ok(_) => anyhow::anyhow!("controllerrevision hash collision"),
        Err(e) => e.into(),
    }
}

/// Creates the owner's ControllerRevision `cr`. A revision of that name
/// with the same data (written by an earlier sync) is fine; one with other
/// data is a hash collision ([`revision_collision`]).
pub async fn create_revision(
    reg: &Registry,
    cr_info: &ResourceInfo,
    owner_info: &ResourceInfo,
    owner: &Value,
    cr: Value,
    collision: Option<i64>,
    opts: &WriteOptions,
) -> anyhow::Result<()> {
    let ns = namespace(owner).to_string();
    let rev_name = name(&cr).to_string();
    let data = cr.get("data").cloned();
    match reg.create(cr_info, Some(&ns), cr, opts).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => {
            let existing = reg.get(cr_info, Some(&ns), &rev_name).await.ok();
            if existing.as_ref().and_then(|r| r.get("data")) == data.as_ref() {
                return Ok(());
            }
            Err(revision_collision(reg, owner_info, owner, collision, opts).await)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys() {
        let a = json!({"b": 1, "a": {"d": [1, {"y": 2, "x": 1}], "c": "s"}});
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":"s","d":[1,{"x":1,"y":2}]},"b":1}"#
        );
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
    }

    #[test]
    fn selectors_and_readiness() {
        let pod = json!({"metadata": {"labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        assert!(selector_matches(
            Some(&json!({"matchLabels": {"app": "web"}})),
            &pod
        ));
        assert!(!selector_matches(Some(&json!({})), &pod));
        assert!(!selector_matches(None, &pod));
        let t = parse_time("2024-01-01T00:00:00Z").unwrap();
        assert!(pod_available(&pod, 10, t + 10.0));
        assert!(!pod_available(&pod, 10, t + 9.0));
    }
}

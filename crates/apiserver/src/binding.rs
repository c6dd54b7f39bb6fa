//! `pods/binding`: assigning a pod to a node in one write, as upstream's
//! BindingREST does — `spec.nodeName` and the `PodScheduled=True`
//! condition together, without a managed-fields entry (the field manager
//! sees the Binding, not the pod). The scheduler binds through here too.

use crate::cache::{rv_of, set_rv};
use crate::registry::{now_rfc3339, Registry};
use kobune_apimachinery::ApiError;
use kobune_store::StoreError;
use serde_json::{json, Map, Value};

/// What a binding asks for.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub node: String,
    /// The pod's uid must be this (the Binding's `metadata.uid`).
    pub uid: Option<String>,
    /// Copied onto the pod's annotations.
    pub annotations: Map<String, Value>,
    pub dry_run: bool,
}

/// Sets `spec.nodeName`, the annotations and `PodScheduled=True` on a pod.
/// Refuses what upstream refuses: a bound pod, a pod being deleted, a uid mismatch.
pub fn assign(pod: &Value, b: &Binding, now: &str) -> Result<Value, String> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(uid) = &b.uid {
        let have = pod.pointer("/metadata/uid").and_then(Value::as_str);
        if have != Some(uid.as_str()) {
            return Err(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                have.unwrap_or_default()
            ));
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        ));
    }
    if let Some(cur) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return Err(format!("pod {name} is already assigned to node {cur:?}"));
    }
    let mut out = pod.clone();
    out["spec"]["nodeName"] = json!(b.node);
    if !b.annotations.is_empty() {
        let meta = out["metadata"].as_object_mut().expect("pods have metadata");
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(ann) = ann {
            for (k, v) in &b.annotations {
                ann.insert(k.clone(), v.clone());
            }
        }
    }
    if !out["status"].is_object() {
        out["status"] = json!({});
    }
    let status = out["status"].as_object_mut().expect("status is an object");
    let conds = status.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let conds = conds.as_array_mut().expect("conditions is an array");
    let scheduled = json!({
        "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now
    });
    match conds.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = scheduled,
        None => conds.push(scheduled),
    }
    Ok(out)
}

impl Registry {
    /// Binds pod `ns/name` to `b.node` (POST pods/binding).
    pub async fn bind_pod(&self, ns: &str, name: &str, b: &Binding) -> Result<Value, ApiError> {
        let pods = self
            .resources
            .find("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods are not served"))?;
        let key = pods.key(Some(ns), name);
        let mut synced = false;
        for _ in 0..8 {
            // The cache may trail the store: a stale copy makes the write
            // below fail its revision check, and the loop reads again.
            let current = match self.cache.get(&key) {
                Some(c) => c,
                None if !synced => {
                    self.cache.sync().await?;
                    synced = true;
                    continue;
                }
                None => return Err(ApiError::not_found("pods", "", name)),
            };
            let expected = rv_of(&current);
            let mut obj = match assign(&current, b, &now_rfc3339()) {
                Ok(o) => o,
                // What is refused may only be the cache's stale view.
                Err(_) if !synced => {
                    self.cache.sync().await?;
                    synced = true;
                    continue;
                }
                Err(why) => return Err(ApiError::conflict("pods", "", name, &why)),
            };
            if b.dry_run {
                return Ok(obj);
            }
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            let bytes = serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
            match self.store.update(&key, bytes, expected).await {
                Ok(rev) => {
                    set_rv(&mut obj, rev);
                    return Ok(obj);
                }
                Err(StoreError::Conflict(_)) => {
                    self.cache.wait_for(expected + 1).await.ok();
                }
                Err(StoreError::NotFound) => return Err(ApiError::not_found("pods", "", name)),
                Err(e) => return Err(ApiError::internal(e.to_string())),
            }
        }
        Err(ApiError::modified("pods", "", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "uid": "u1"}, "spec": {"containers": []},
               "status": {"phase": "Pending", "conditions": [
                   {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}})
    }

    #[test]
    fn sets_node_and_replaces_the_unschedulable_condition() {
        let b = Binding {
            node: "n1".into(),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let out = assign(&pod(), &b, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(out["spec"]["nodeName"], "n1");
        let conds = out["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert!(conds[0].get("reason").is_none());
    }

    #[test]
    fn adds_the_condition_and_annotations() {
        let mut p = pod();
        p["status"] = json!({});
        let mut b = Binding {
            node: "n1".into(),
            ..Default::default()
        };
        b.annotations.insert("a".into(), json!("b"));
        let out = assign(&p, &b, "t").unwrap();
        assert_eq!(out["status"]["conditions"][0]["type"], "PodScheduled");
        assert_eq!(out["metadata"]["annotations"]["a"], "b");
    }

    #[test]
    fn refuses_bound_deleted_and_other_uid() {
        let b = Binding {
            node: "n2".into(),
            ..Default::default()
        };
        let mut bound = pod();
        bound["spec"]["nodeName"] = json!("n1");
        let e = assign(&bound, &b, "t").unwrap_err();
        assert!(e.contains("already assigned to node \"n1\""), "{e}");
        let mut deleting = pod();
        deleting["metadata"]["deletionTimestamp"] = json!("t");
        assert!(assign(&deleting, &b, "t")
            .unwrap_err()
            .contains("being deleted"));
        let other = Binding {
            node: "n2".into(),
            uid: Some("u2".into()),
            ..Default::default()
        };
        assert!(assign(&pod(), &other, "t")
            .unwrap_err()
            .contains("Precondition failed"));
    }
}

//! The disruption controller, as upstream's: keeps each
//! PodDisruptionBudget's status (expectedPods, desiredHealthy,
//! currentHealthy, disruptionsAllowed, disruptedPods, observedGeneration
//! and the DisruptionAllowed condition) from the pods its selector matches
//! and the scale of their controllers. The eviction subresource
//! (`kobune_apiserver::eviction`) spends `disruptionsAllowed`; this
//! controller recomputes it as pods go and come back.

use crate::deployment::scaled_value;
use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::at;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How long an eviction's entry in `disruptedPods` waits for the pod to go
/// (upstream's DeletionTimeout).
pub const DELETION_TIMEOUT: f64 = 120.0;

/// The computed status of a budget, given its pods and (for percentages
/// and maxUnavailable) the total scale of their controllers.
pub fn compute_status(
    pdb: &Value,
    pods: &[Arc<Value>],
    scale: Option<i64>,
    now: f64,
) -> (Value, Requeue) {
    let spec = pdb.get("spec").cloned().unwrap_or(json!({}));
    let pod_count = pods.len() as i64;
    let (expected, desired) = if let Some(mu) = spec.get("maxUnavailable").filter(|v| !v.is_null())
    {
        let expected = scale.unwrap_or(pod_count);
        (
            expected,
            (expected - scaled_value(Some(mu), expected, true)).max(0),
        )
    } else {
        match spec.get("minAvailable") {
            Some(Value::String(s)) if s.ends_with('%') => {
                let expected = scale.unwrap_or(pod_count);
                (expected, scaled_value(Some(&json!(s)), expected, true))
            }
            Some(v @ (Value::Number(_) | Value::String(_))) => {
                (pod_count, scaled_value(Some(v), pod_count, true))
            }
            _ => (pod_count, 0),
        }
    };
    // Evicted pods not yet gone: still disrupted, unless the eviction is stale.
    let mut disrupted = serde_json::Map::new();
    let mut requeue: Requeue = None;
    let names: HashSet<&str> = pods
        .iter()
        .filter(|p| !deleting(p))
        .map(|p| name(p))
        .collect();
    if let Some(m) = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
    {
        for (pod, t) in m {
            let Some(at) = t.as_str().and_then(parse_time) else {
                continue;
            };
            if !names.contains(pod.as_str()) || at + DELETION_TIMEOUT <= now {
                continue;
            }
            disrupted.insert(pod.clone(), t.clone());
            let left = Duration::from_secs_f64((at + DELETION_TIMEOUT - now).max(0.1));
            requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| !deleting(p) && pod_ready(p) && !disrupted.contains_key(name(p)))
        .count() as i64;
    let mut allowed = healthy - desired;
    if expected <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let cond = json!({
        "type": "DisruptionAllowed", "status": status, "reason": reason, "message": "",
        "observedGeneration": i64_at(pdb, "/metadata/generation"),
        "lastTransitionTime": kobune_apiserver::registry::now_rfc3339(),
    });
    let conds = set_condition(&conditions(pdb), cond);
    let mut st = json!({
        "observedGeneration": i64_at(pdb, "/metadata/generation"),
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": conds,
    });
    if !disrupted.is_empty() {
        st["disruptedPods"] = Value::Object(disrupted);
    }
    (st, requeue)
}

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub pdb_info: Arc<ResourceInfo>,
    pub pdbs: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub queue: WorkQueue,
    rs_info: Arc<ResourceInfo>,
    deploy_info: Arc<ResourceInfo>,
    sts_info: Arc<ResourceInfo>,
    rc_info: Arc<ResourceInfo>,
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let pdb_info = find("policy", "poddisruptionbudgets")?;
        let pod_info = find("", "pods")?;
        Ok(Arc::new(Controller {
            pdbs: Arc::new(
                Informer::new(pdb_info.key_prefix()).with_index(BY_NAMESPACE, index_namespace),
            ),
            pods: Arc::new(
                Informer::new(pod_info.key_prefix()).with_index(BY_NAMESPACE, index_namespace),
            ),
            rs_info: find("apps", "replicasets")?,
            deploy_info: find("apps", "deployments")?,
            sts_info: find("apps", "statefulsets")?,
            rc_info: find("", "replicationcontrollers")?,
            reg,
            opts,
            pdb_info,
            queue: WorkQueue::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.pdbs.start(&self.reg.cache, move |_, ev| {
            c.queue.add(ns_key(&ev.object))
        })?;
        let c = self.clone();
        self.pods.start(&self.reg.cache, move |_, ev| {
            let relevant = |p: &Value| {
                (
                    at(p, "/metadata/labels").cloned(),
                    pod_ready(p),
                    deleting(p),
                )
            };
            if ev.kind == kobune_apiserver::cache::EventType::Modified
                && ev.prev.as_deref().map(relevant) == Some(relevant(&ev.object))
            {
                return;
            }
            for (_, pdb) in c.pdbs.by_index(BY_NAMESPACE, namespace(&ev.object)) {
                if selector_matches(at(&pdb, "/spec/selector"), &ev.object)
                    || ev
                        .prev
                        .as_deref()
                        .is_some_and(|p| selector_matches(at(&pdb, "/spec/selector"), p))
                {
                    c.queue.add(ns_key(&pdb));
                }
            }
        })?;
        Ok(())
    }

    /// The scale of a pod's controller: (controller uid, replicas).
    fn controller_scale(&self, pod: &Value) -> Option<(String, i64)> {
        let r = controller_ref(pod)?;
        let ns = namespace(pod);
        let owner_name = r.get("name").and_then(Value::as_str)?;
        let get = |info: &ResourceInfo, n: &str| self.reg.get_cached(info, Some(ns), n).ok();
        let replicas = |o: &Value| at(o, "/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        match r.get("kind").and_then(Value::as_str)? {
            "ReplicaSet" => {
                let rs = get(&self.rs_info, owner_name)?;
                if let Some(d) = controller_ref(&rs).filter(|d| d["kind"] == "Deployment") {
                    let dep = get(&self.deploy_info, d["name"].as_str().unwrap_or_default())?;
                    return Some((uid(&dep).to_string(), replicas(&dep)));
                }
                Some((uid(&rs).to_string(), replicas(&rs)))
            }
            "StatefulSet" => {
                get(&self.sts_info, owner_name).map(|o| (uid(&o).to_string(), replicas(&o)))
            }
            "ReplicationController" => {
                get(&self.rc_info, owner_name).map(|o| (uid(&o).to_string(), replicas(&o)))
            }
            _ => None,
        }
    }

    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(pdb) = self.pdbs.get(&self.pdb_info.key(Some(ns), n)) else {
            return Ok(None);
        };
        if deleting(&pdb) {
            return Ok(None);
        }
        let pods: Vec<Arc<Value>> = self
            .pods
            .objects_by_index(BY_NAMESPACE, ns)
            .into_iter()
            .filter(|p| selector_matches(at(&pdb, "/spec/selector"), p))
            .collect();
        let needs_scale = pdb
            .pointer("/spec/maxUnavailable")
            .is_some_and(|v| !v.is_null())
            || pdb
                .pointer("/spec/minAvailable")
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with('%'));
        let scale = needs_scale.then(|| {
            let mut seen = HashSet::new();
            pods.iter()
                .filter_map(|p| self.controller_scale(p))
                .filter(|(u, _)| seen.insert(u.clone()))
                .map(|(_, r)| r)
                .sum::<i64>()
        });
        let (mut status, requeue) = compute_status(&pdb, &pods, scale, now_secs());
        // Keep the condition's transition time when nothing else changed.
        let old = pdb.get("status").cloned().unwrap_or(json!({}));
        let same = |s: &Value| {
            let mut s = s.clone();
            if let Some(cs) = s.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in cs {
                    c.as_object_mut().map(|m| m.remove("lastTransitionTime"));
                }
            }
            s
        };
        if same(&old) == same(&status) {
            return Ok(requeue);
        }
        if let Some(oc) = get_condition(&conditions(&pdb), "DisruptionAllowed") {
            if let Some(cs) = status.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in cs
                    .iter_mut()
                    .filter(|c| c["type"] == "DisruptionAllowed" && c["status"] == oc["status"])
                {
                    c["lastTransitionTime"] = oc["lastTransitionTime"].clone();
                }
            }
        }
        let mut p = (*pdb).clone();
        p["status"] = status;
        match self
            .reg
            .update(&self.pdb_info, Some(ns), n, p, &self.opts, Some("status"))
            .await
        {
            Ok(_) => Ok(requeue),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "x"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}),
        )
    }

    fn pdb(spec: Value) -> Value {
        json!({"metadata": {"name": "b", "namespace": "d", "generation": 2}, "spec": spec})
    }

    #[test]
    fn min_available_and_max_unavailable() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let now = now_secs();
        let (st, _) = compute_status(&pdb(json!({"minAvailable": 2})), &pods, None, now);
        assert_eq!(
            (st["expectedPods"].as_i64(), st["desiredHealthy"].as_i64()),
            (Some(3), Some(2))
        );
        assert_eq!(st["currentHealthy"], 2);
        assert_eq!(st["disruptionsAllowed"], 0);
        assert_eq!(st["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(st["observedGeneration"], 2);
        let (st, _) = compute_status(&pdb(json!({"maxUnavailable": 1})), &pods, Some(3), now);
        assert_eq!(st["desiredHealthy"], 2);
        let (st, _) = compute_status(&pdb(json!({"maxUnavailable": "50%"})), &pods, Some(4), now);
        assert_eq!(
            (st["expectedPods"].as_i64(), st["desiredHealthy"].as_i64()),
            (Some(4), Some(2))
        );
        let (st, _) = compute_status(&pdb(json!({"minAvailable": "50%"})), &pods, Some(3), now);
        assert_eq!(st["desiredHealthy"], 2, "percentages round up");
        let (st, _) = compute_status(&pdb(json!({"minAvailable": 1})), &pods, None, now);
        assert_eq!(st["disruptionsAllowed"], 1);
        assert_eq!(st["conditions"][0]["status"], "True");
        assert_eq!(st["conditions"][0]["reason"], "SufficientPods");
    }

    #[test]
    fn disrupted_pods_count_as_unhealthy_until_they_go() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", true)];
        let now = now_secs();
        let mut b = pdb(json!({"minAvailable": 1}));
        let t = kobune_apiserver::registry::now_rfc3339();
        b["status"] = json!({"disruptedPods": {"a": t, "gone": t}});
        let (st, requeue) = compute_status(&b, &pods, None, now);
        assert_eq!(st["currentHealthy"], 2);
        assert_eq!(st["disruptionsAllowed"], 1);
        assert_eq!(st["disruptedPods"].as_object().unwrap().len(), 1, "{st}");
        assert!(requeue.is_some());
        // Stale entries expire.
        let (st, _) = compute_status(&b, &pods, None, now + DELETION_TIMEOUT + 1.0);
        assert_eq!(st["currentHealthy"], 3);
        assert!(st.get("disruptedPods").is_none());
    }
}

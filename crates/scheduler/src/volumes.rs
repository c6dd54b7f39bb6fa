//! Volume checks before filtering, as upstream's VolumeBinding plugin does
//! them for pre-provisioned and provisioned volumes: every
//! persistentVolumeClaim a pod names must exist; an unbound claim is fine
//! only if its StorageClass binds WaitForFirstConsumer (the provisioner
//! follows the scheduling decision); a bound claim's PersistentVolume
//! node affinity narrows the nodes the pod may go to.

use crate::types::PodInfo;
use kobune_apiserver::Registry;
use serde_json::{json, Value};

pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

fn claims(pod: &Value) -> Vec<String> {
    kobune_controllers::local_path::claim_names(pod)
        .map(str::to_string)
        .collect()
}

/// AND of two sets of ORed node selector terms.
fn and_terms(a: Option<&[Value]>, b: &[Value]) -> Vec<Value> {
    let Some(a) = a.filter(|a| !a.is_empty()) else {
        return b.to_vec();
    };
    let list = |t: &Value, k: &str| {
        t.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut out = vec![];
    for x in a {
        for y in b {
            let mut e = list(x, "matchExpressions");
            e.extend(list(y, "matchExpressions"));
            let mut f = list(x, "matchFields");
            f.extend(list(y, "matchFields"));
            out.push(json!({"matchExpressions": e, "matchFields": f}));
        }
    }
    out
}

/// The pod as the filters should see it (node terms narrowed by its
/// volumes' node affinity), or why it cannot be scheduled anywhere.
pub fn constrain(reg: &Registry, pod: &PodInfo) -> Result<Option<PodInfo>, String> {
    let Some(raw) = reg.cache.get(&pod.key) else {
        return Ok(None);
    };
    let names = claims(&raw);
    if names.is_empty() {
        return Ok(None);
    }
    let find = |p: &str, g: &str| reg.resources.find(g, "v1", p);
    let (Some(pvcs), Some(pvs), Some(classes)) = (
        find("persistentvolumeclaims", ""),
        find("persistentvolumes", ""),
        find("storageclasses", "storage.k8s.io"),
    ) else {
        return Ok(None);
    };
    let default_wait = || {
        reg.cache
            .list(&classes.key_prefix(), None)
            .0
            .iter()
            .filter(|(_, c)| {
                c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true")
            })
            .any(|(_, c)| c["volumeBindingMode"] == "WaitForFirstConsumer")
    };
    let mut terms: Option<Vec<Value>> = pod.required_node_terms.clone();
    let mut narrowed = false;
    for name in names {
        let Some(pvc) = reg.cache.get(&pvcs.key(Some(&pod.namespace), &name)) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if pvc
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let volume = pvc
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if volume.is_empty() {
            let wait = match pvc
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
            {
                Some(class) => reg
                    .cache
                    .get(&classes.key(None, class))
                    .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer"),
                None => default_wait(),
            };
            if !wait {
                return Err(ERR_UNBOUND_IMMEDIATE.into());
            }
            continue;
        }
        let Some(pv) = reg.cache.get(&pvs.key(None, volume)) else {
            continue; // being bound; the kubelet waits for it
        };
        if let Some(t) = pv
            .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
        {
            terms = Some(and_terms(terms.as_deref(), t));
            narrowed = true;
        }
    }
    Ok(narrowed.then(|| PodInfo {
        required_node_terms: terms,
        ..pod.clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_anded() {
        let a = vec![json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]})];
        let b = vec![
            json!({"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}),
        ];
        assert_eq!(and_terms(None, &b), b);
        let t = and_terms(Some(&a), &b);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0]["matchExpressions"].as_array().unwrap().len(), 2);
        let pod = json!({"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}, {"name": "e", "emptyDir": {}}]}});
        assert_eq!(claims(&pod), ["c"]);
    }
}

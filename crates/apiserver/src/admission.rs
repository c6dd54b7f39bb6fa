//! Mutating admission of new objects that is not a resource's own
//! defaulting: upstream's DefaultTolerationSeconds plugin (here), with
//! ServiceAccount (`serviceaccount::admit_pod`) and DefaultStorageClass /
//! DefaultIngressClass (`Registry::default_class`) beside it.

use serde_json::{json, Value};

/// The taint a node gets while its Ready condition is False.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The taint a node gets while its Ready condition is Unknown.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// How long a pod stays bound to a node that is not ready or unreachable
/// before it is evicted, unless it says otherwise (kube-apiserver's
/// `--default-not-ready-toleration-seconds` and
/// `--default-unreachable-toleration-seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultTolerations {
    pub not_ready_seconds: i64,
    pub unreachable_seconds: i64,
}

impl Default for DefaultTolerations {
    fn default() -> Self {
        DefaultTolerations {
            not_ready_seconds: 300,
            unreachable_seconds: 300,
        }
    }
}

/// Whether `t` tolerates every NoExecute taint with key `key`.
fn tolerates_no_execute(t: &Value, key: &str) -> bool {
    let t_key = t["key"].as_str().unwrap_or_default();
    let exists = t["operator"].as_str() == Some("Exists");
    let effect = t["effect"].as_str().unwrap_or_default();
    (t_key == key || (t_key.is_empty() && exists)) && (effect.is_empty() || effect == "NoExecute")
}

/// DefaultTolerationSeconds: a new pod that does not tolerate the
/// not-ready and unreachable NoExecute taints tolerates them for the
/// configured time, so a node that goes away briefly does not lose it.
pub fn default_tolerations(pod: &mut Value, cfg: DefaultTolerations) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for (key, seconds) in [
        (NOT_READY_TAINT, cfg.not_ready_seconds),
        (UNREACHABLE_TAINT, cfg.unreachable_seconds),
    ] {
        if !list.iter().any(|t| tolerates_no_execute(t, key)) {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": seconds}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pod: &Value) -> Vec<(String, Option<i64>)> {
        pod["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or_default().to_string(),
                    t["tolerationSeconds"].as_i64(),
                )
            })
            .collect()
    }

    #[test]
    fn pods_get_both_tolerations_unless_they_have_them() {
        let cfg = DefaultTolerations {
            not_ready_seconds: 300,
            unreachable_seconds: 60,
        };
        let mut pod = json!({"spec": {"containers": []}});
        default_tolerations(&mut pod, cfg);
        assert_eq!(
            keys(&pod),
            vec![
                (NOT_READY_TAINT.to_string(), Some(300)),
                (UNREACHABLE_TAINT.to_string(), Some(60))
            ]
        );
        assert_eq!(pod["spec"]["tolerations"][0]["effect"], "NoExecute");
        assert_eq!(pod["spec"]["tolerations"][0]["operator"], "Exists");

        // Its own toleration of one taint stays the only one for it.
        let mut pod = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
            {"key": "other", "operator": "Exists"}]}});
        default_tolerations(&mut pod, cfg);
        assert_eq!(
            keys(&pod),
            vec![
                (UNREACHABLE_TAINT.to_string(), Some(5)),
                ("other".to_string(), None),
                (NOT_READY_TAINT.to_string(), Some(300))
            ]
        );

        // Tolerating everything (a DaemonSet's, or `operator: Exists`) needs nothing.
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_tolerations(&mut pod, cfg);
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 1);
        // A NoSchedule toleration does not cover NoExecute.
        let mut pod = json!({"spec": {"tolerations": [
            {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}});
        default_tolerations(&mut pod, cfg);
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 3);
    }
}

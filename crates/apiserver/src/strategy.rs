//! Per-kind rules the generic registry applies on create and update, as
//! upstream's registry strategies do: what status starts as, which writes
//! bump `metadata.generation`, what each subresource may change.

use kobune_apimachinery::{validation, Cause, ResourceInfo};
use serde_json::{json, Value};

/// Kinds whose `metadata.generation` tracks spec changes.
pub fn tracks_generation(info: &ResourceInfo) -> bool {
    if info.definition.is_none() {
        return true; // custom resources
    }
    matches!(
        info.group.as_str(),
        "apps"
            | "batch"
            | "autoscaling"
            | "policy"
            | "networking.k8s.io"
            | "apiextensions.k8s.io"
            | "scheduling.k8s.io"
    ) || matches!(info.plural.as_str(), "replicationcontrollers" | "pods")
}

fn is(info: &ResourceInfo, group: &str, plural: &str) -> bool {
    info.group == group && info.plural == plural
}

/// The QoS class upstream derives from container resources.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let lm = lim.and_then(|m| m.get(r));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            match (rq, lm) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if a != b => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Resets what a client may not set on create.
pub fn prepare_for_create(info: &ResourceInfo, obj: &mut Value, now: &str) {
    let has_status = info.has_subresource("status");
    if is(info, "", "pods") {
        let qos = qos_class(obj);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    } else if is(info, "", "services") {
        obj["status"] = json!({"loadBalancer": {}});
    } else if is(info, "", "persistentvolumeclaims") || is(info, "", "persistentvolumes") {
        obj["status"] = json!({"phase": "Pending"});
    } else if is(info, "", "namespaces") {
        obj["status"] = json!({"phase": "Active"});
    } else if is(info, "apiextensions.k8s.io", "customresourcedefinitions") {
        let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let versions: Vec<Value> = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["storage"] == json!(true))
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        obj["status"] = json!({
            "acceptedNames": names,
            "storedVersions": versions,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
            ]
        });
    } else if has_status && !is(info, "", "nodes") {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
}

/// Keeps the parts of `old` a write through `subresource` may not change.
pub fn prepare_for_update(
    info: &ResourceInfo,
    old: &Value,
    new: &mut Value,
    subresource: Option<&str>,
) {
    match subresource {
        Some("status") => {
            // Only status (and, as upstream allows, nothing in spec) changes.
            let status = new.get("status").cloned();
            let meta = new.get("metadata").cloned();
            *new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            // Status writers may still carry label/annotation changes? Upstream ignores them.
            if let (Some(m), Some(rv)) = (
                new.get_mut("metadata"),
                meta.and_then(|m| m.get("resourceVersion").cloned()),
            ) {
                m["resourceVersion"] = rv;
            }
        }
        Some("ephemeralcontainers") => {
            // Only the ephemeral containers change.
            let eph = new.pointer("/spec/ephemeralContainers").cloned();
            let rv = new.pointer("/metadata/resourceVersion").cloned();
            *new = old.clone();
            match eph {
                Some(e) => new["spec"]["ephemeralContainers"] = e,
                None => {
                    if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut) {
                        s.remove("ephemeralContainers");
                    }
                }
            }
            if let Some(rv) = rv {
                new["metadata"]["resourceVersion"] = rv;
            }
        }
        Some("finalize") => {
            let fin = new.pointer("/spec/finalizers").cloned();
            *new = old.clone();
            match fin {
                Some(f) => new["spec"]["finalizers"] = f,
                None => {
                    if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut) {
                        s.remove("finalizers");
                    }
                }
            }
        }
        _ => {
            if info.has_subresource("status") && !is(info, "", "nodes") {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            // Ephemeral containers change only through their subresource.
            if is(info, "", "pods") {
                match old.pointer("/spec/ephemeralContainers") {
                    Some(e) => new["spec"]["ephemeralContainers"] = e.clone(),
                    None => {
                        if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut) {
                            s.remove("ephemeralContainers");
                        }
                    }
                }
            }
            if is(info, "", "namespaces") {
                if let Some(f) = old.pointer("/spec/finalizers") {
                    new["spec"]["finalizers"] = f.clone();
                }
            }
            if is(info, "", "services") {
                for f in ["clusterIP", "clusterIPs"] {
                    if new.pointer(&format!("/spec/{f}")).is_none() {
                        if let Some(v) = old.pointer(&format!("/spec/{f}")) {
                            new["spec"][f] = v.clone();
                        }
                    }
                }
                // Keep allocated node ports the client did not mention.
                if let (Some(old_ports), Some(new_ports)) = (
                    old.pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .cloned(),
                    new.pointer_mut("/spec/ports").and_then(Value::as_array_mut),
                ) {
                    for p in new_ports.iter_mut() {
                        if p.get("nodePort").is_none() {
                            if let Some(op) = old_ports
                                .iter()
                                .find(|o| o["port"] == p["port"] && o.get("nodePort").is_some())
                            {
                                p["nodePort"] = op["nodePort"].clone();
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The part of an object whose change bumps the generation.
pub fn generation_relevant(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// What upstream refuses in an update of a pod's ephemeral containers:
/// removing or changing one, a missing or taken name, no image, and the
/// fields an ephemeral container may not have.
pub fn ephemeral_container_causes(old: &Value, new: &Value) -> Vec<Cause> {
    let list = |v: &Value| -> Vec<Value> {
        v.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (list(old), list(new));
    let mut causes = vec![];
    for o in &before {
        let name = o["name"].as_str().unwrap_or_default();
        match after.iter().find(|n| n["name"] == o["name"]) {
            None => causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers {name:?} may not be removed"),
            )),
            Some(n) if n != o => causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers {name:?} may not be changed"),
            )),
            Some(_) => {}
        }
    }
    let mut names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| new.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, c) in after.iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{path}.name")));
        } else if let Some(e) = validation::is_dns1123_label(name).first() {
            causes.push(Cause::invalid(format!("{path}.name"), &json!(name), e));
        } else if names.contains(&name) {
            causes.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
        }
        names.push(name);
        if c["image"].as_str().unwrap_or_default().is_empty() {
            causes.push(Cause::required(format!("{path}.image")));
        }
        for f in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
        ] {
            if c.get(f).is_some_and(|v| !v.is_null()) {
                causes.push(Cause::forbidden(
                    format!("{path}.{f}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if c.get("resources")
            .and_then(Value::as_object)
            .is_some_and(|r| {
                r.values()
                    .any(|v| v.as_object().is_some_and(|m| !m.is_empty()))
            })
        {
            causes.push(Cause::forbidden(
                format!("{path}.resources"),
                "cannot be set for an Ephemeral Container",
            ));
        }
    }
    causes
}

/// Upstream's message for a pod update that changes more than it may.
pub const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A pod's spec is immutable but for container images, the active
/// deadline, added tolerations, removed scheduling gates and a negative
/// grace period set to 1, as upstream's pod update validation has it.
pub fn pod_update_causes(old: &Value, new: &Value) -> Vec<Cause> {
    let (before, after) = (&old["spec"], &new["spec"]);
    let mut masked = before.clone();
    for key in ["containers", "initContainers"] {
        if let (Some(m), Some(a)) = (
            masked.get_mut(key).and_then(Value::as_array_mut),
            after.get(key).and_then(Value::as_array),
        ) {
            if m.len() == a.len() {
                for (mc, ac) in m.iter_mut().zip(a) {
                    if let Some(img) = ac.get("image") {
                        mc["image"] = img.clone();
                    }
                }
            }
        }
    }
    let copy = |m: &mut Value, key: &str| match after.get(key) {
        Some(v) => m[key] = v.clone(),
        None => {
            if let Some(o) = m.as_object_mut() {
                o.remove(key);
            }
        }
    };
    copy(&mut masked, "activeDeadlineSeconds");
    copy(&mut masked, "ephemeralContainers");
    let list = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (old_tol, new_tol) = (list(before, "tolerations"), list(after, "tolerations"));
    if old_tol.iter().all(|t| new_tol.contains(t)) {
        copy(&mut masked, "tolerations");
    }
    let (old_gates, new_gates) = (
        list(before, "schedulingGates"),
        list(after, "schedulingGates"),
    );
    if new_gates.iter().all(|g| old_gates.contains(g)) {
        copy(&mut masked, "schedulingGates");
    }
    if before["terminationGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|g| g < 0)
        && after["terminationGracePeriodSeconds"].as_i64() == Some(1)
    {
        copy(&mut masked, "terminationGracePeriodSeconds");
    }
    if masked == *after {
        vec![]
    } else {
        vec![Cause::forbidden("spec", POD_UPDATE_FORBIDDEN)]
    }
}

#[cfg(test)]
mod pod_update_tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn pod_specs_change_only_where_upstream_allows() {
        let old = pod(
            json!({"containers": [{"name": "app", "image": "web:1", "command": ["serve"]}],
                             "tolerations": [{"key": "a", "operator": "Exists"}], "schedulingGates": [{"name": "g"}]}),
        );
        let ok = |new: Value| pod_update_causes(&old, &pod(new)).is_empty();
        assert!(ok(old["spec"].clone()));
        // A new image, an added toleration, a removed gate, a deadline.
        assert!(ok(
            json!({"containers": [{"name": "app", "image": "web:2", "command": ["serve"]}],
                          "tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}],
                          "activeDeadlineSeconds": 30})
        ));
        // Anything else is refused with upstream's message.
        let bad = pod_update_causes(
            &old,
            &pod(
                json!({"containers": [{"name": "app", "image": "web:1", "command": ["other"]}],
            "tolerations": [{"key": "a", "operator": "Exists"}], "schedulingGates": [{"name": "g"}]}),
            ),
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].field, "spec");
        assert!(bad[0]
            .message
            .contains("pod updates may not change fields other than"));
        assert!(
            !ok(
                json!({"containers": [{"name": "app", "image": "web:1", "command": ["serve"]}],
                           "schedulingGates": [{"name": "g"}]})
            ),
            "removing a toleration"
        );
        assert!(
            !ok(
                json!({"containers": [{"name": "app", "image": "web:1", "command": ["serve"]}],
                           "tolerations": [{"key": "a", "operator": "Exists"}], "schedulingGates": [{"name": "g"}, {"name": "h"}]})
            ),
            "adding a scheduling gate"
        );
    }
}

//! Conversion between served versions that share storage:
//! autoscaling/v1 and v2 HorizontalPodAutoscalers, and core/v1 and
//! events.k8s.io/v1 Events. Other resources only change `apiVersion`.

use kobune_apimachinery::ResourceInfo;
use serde_json::{json, Map, Value};

/// Converts `obj` (in any served version of its resource) to `to`.
pub fn convert(mut obj: Value, to: &ResourceInfo) -> Value {
    let from = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let target = to.api_version();
    if from == target {
        return obj;
    }
    obj = match (to.group.as_str(), to.version.as_str(), to.kind.as_str()) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_v2_to_v1(obj),
        ("autoscaling", "v2", "HorizontalPodAutoscaler") if from == "autoscaling/v1" => {
            hpa_v1_to_v2(obj)
        }
        ("events.k8s.io", "v1", "Event") => event_core_to_v1(obj),
        ("", "v1", "Event") if from == "events.k8s.io/v1" => event_v1_to_core(obj),
        _ => obj,
    };
    obj["apiVersion"] = json!(target);
    obj["kind"] = json!(to.kind);
    obj
}

fn move_field(src: &mut Map<String, Value>, dst: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = src.remove(from) {
        dst.insert(to.to_string(), v);
    }
}

fn hpa_v2_to_v1(mut obj: Value) -> Value {
    let spec = obj["spec"].as_object().cloned().unwrap_or_default();
    let mut v1 = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v1.insert(k.into(), v.clone());
        }
    }
    let cpu = spec
        .get("metrics")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter().find(|m| {
                m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu"))
            })
        });
    if let Some(u) = cpu.and_then(|m| m.pointer("/resource/target/averageUtilization")) {
        v1.insert("targetCPUUtilizationPercentage".into(), u.clone());
    }
    obj["spec"] = Value::Object(v1);
    if let Some(status) = obj.get("status").and_then(Value::as_object).cloned() {
        let mut s = Map::new();
        for k in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = status.get(k) {
                s.insert(k.into(), v.clone());
            }
        }
        let cur = status
            .get("currentMetrics")
            .and_then(Value::as_array)
            .and_then(|ms| {
                ms.iter()
                    .find_map(|m| m.pointer("/resource/current/averageUtilization").cloned())
            });
        if let Some(c) = cur {
            s.insert("currentCPUUtilizationPercentage".into(), c);
        }
        s.entry("currentReplicas").or_insert(json!(0));
        s.entry("desiredReplicas").or_insert(json!(0));
        obj["status"] = Value::Object(s);
    }
    obj
}

fn hpa_v1_to_v2(mut obj: Value) -> Value {
    let mut spec = obj["spec"].as_object().cloned().unwrap_or_default();
    if let Some(t) = spec.remove("targetCPUUtilizationPercentage") {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": t}}}]),
        );
    }
    obj["spec"] = Value::Object(spec);
    if let Some(mut s) = obj.get("status").and_then(Value::as_object).cloned() {
        if let Some(c) = s.remove("currentCPUUtilizationPercentage") {
            s.insert(
                "currentMetrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": c}}}]),
            );
        }
        obj["status"] = Value::Object(s);
    }
    obj
}

/// Event fields as (core/v1 name, events.k8s.io/v1 name); unnamed ones keep their name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("apiVersion", "apiVersion"),
    ("kind", "kind"),
    ("metadata", "metadata"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("action", "action"),
    ("reason", "reason"),
    ("related", "related"),
    ("reportingInstance", "reportingInstance"),
    ("type", "type"),
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Renames an Event's fields between the two APIs (`to_v1` picks the direction).
fn convert_event(obj: Value, to_v1: bool) -> Value {
    let Value::Object(mut src) = obj else {
        return obj;
    };
    let mut dst = Map::new();
    for (core, v1) in EVENT_FIELDS {
        let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
        move_field(&mut src, &mut dst, from, to);
    }
    // Each API requires one field the other may lack.
    if to_v1 {
        dst.entry("eventTime").or_insert(Value::Null);
    } else {
        dst.entry("involvedObject").or_insert(json!({}));
    }
    Value::Object(dst)
}

fn event_core_to_v1(obj: Value) -> Value {
    convert_event(obj, true)
}

fn event_v1_to_core(obj: Value) -> Value {
    convert_event(obj, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobune_apimachinery::resource::builtins;

    fn info(group: &str, version: &str, plural: &str) -> ResourceInfo {
        builtins()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .unwrap()
    }

    #[test]
    fn hpa_round_trips_cpu_target() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50}});
        let v2 = convert(
            v1.clone(),
            &info("autoscaling", "v2", "horizontalpodautoscalers"),
        );
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        let back = convert(v2, &info("autoscaling", "v1", "horizontalpodautoscalers"));
        assert_eq!(back["spec"], v1["spec"]);
    }

    #[test]
    fn events_map_fields() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod"}, "message": "hi", "count": 2});
        let v1 = convert(core, &info("events.k8s.io", "v1", "events"));
        assert_eq!(v1["regarding"]["kind"], "Pod");
        assert_eq!(v1["note"], "hi");
        assert_eq!(v1["deprecatedCount"], 2);
        let back = convert(v1, &info("", "v1", "events"));
        assert_eq!(back["message"], "hi");
    }
}

use super::*;
use crate::schema::definitions;
use serde_json::json;

fn deployment_schema() -> Option<SchemaNode<'static>> {
    SchemaNode::definition(definitions(), "io.k8s.api.apps.v1.Deployment")
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "finalizers": ["a", "b"]},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]},
                        {"name": "sidecar", "image": "busybox"}
                    ],
                    "tolerations": [{"key": "k1", "operator": "Exists"}]
                }
            }
        }
    })
}

fn smp(orig: &Value, patch: Value) -> Value {
    let out = strategic_merge_patch(orig, &patch, deployment_schema()).unwrap();
    assert_no_directives(&out);
    out
}

fn assert_no_directives(v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let directive = k == "$patch"
                    || k == "$retainKeys"
                    || k.starts_with("$setElementOrder/")
                    || k.starts_with("$deleteFromPrimitiveList/");
                assert!(!directive, "directive {k} leaked");
                assert_no_directives(v);
            }
        }
        Value::Array(a) => a.iter().for_each(assert_no_directives),
        _ => {}
    }
}

fn containers(d: &Value) -> &Vec<Value> {
    d.pointer("/spec/template/spec/containers")
        .unwrap()
        .as_array()
        .unwrap()
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().map(|c| c["name"].as_str().unwrap()).collect()
}

// ---- strategic merge ----

#[test]
fn smp_changes_container_image_by_merge_key() {
    let out = smp(
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}}),
    );
    let cs = containers(&out);
    assert_eq!(names(cs), ["web", "sidecar"]);
    assert_eq!(cs[0]["image"], "nginx:2");
    assert_eq!(
        cs[0]["env"].as_array().unwrap().len(),
        2,
        "untouched fields of the element stay"
    );
    assert_eq!(cs[1]["image"], "busybox");
}

#[test]
fn smp_adds_and_removes_env_entries() {
    let out = smp(
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "env": [{"name": "B", "value": "2"}, {"name": "A", "$patch": "delete"}, {"name": "C", "value": "33"}]
        }]}}}}),
    );
    let env = containers(&out)[0]["env"].as_array().unwrap();
    assert_eq!(names(env), ["B", "C"]);
    assert_eq!(env[1]["value"], "33");
}

#[test]
fn smp_deletes_list_element_and_new_elements_come_first() {
    let out = smp(
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "sidecar", "$patch": "delete"},
            {"name": "extra", "image": "redis"}
        ]}}}}),
    );
    // As upstream (see the "update a deployment" docs), an element the live
    // list lacks goes before the server-only ones without an explicit order.
    assert_eq!(names(containers(&out)), ["extra", "web"]);
}

#[test]
fn smp_set_element_order() {
    let out = smp(
        &deployment(),
        json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}, {"name": "extra"}],
            "containers": [{"name": "extra", "image": "redis"}, {"name": "web", "image": "nginx:3"}]
        }}}}),
    );
    let cs = containers(&out);
    assert_eq!(names(cs), ["sidecar", "web", "extra"]);
    assert_eq!(cs[1]["image"], "nginx:3");
    assert_eq!(cs[1]["env"].as_array().unwrap().len(), 2);
}

#[test]
fn smp_retain_keys_drops_rolling_update_on_recreate() {
    let out = smp(
        &deployment(),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    // Without the directive, the old sub-object stays.
    let out = smp(
        &deployment(),
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(out["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
}

#[test]
fn smp_unions_and_deletes_primitive_lists() {
    let out = smp(
        &deployment(),
        json!({"metadata": {"finalizers": ["c", "a"]}}),
    );
    let mut f: Vec<&str> = out["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(f, ["c", "a", "b"]);
    f.sort();
    assert_eq!(f, ["a", "b", "c"]);

    let out = smp(
        &deployment(),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"tier": "x"}}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "tier": "x"})
    );

    let out = smp(
        &deployment(),
        json!({"metadata": {"$setElementOrder/finalizers": ["b", "z", "a"], "finalizers": ["z"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["b", "z", "a"]));
}

#[test]
fn smp_replaces_lists_without_merge_strategy() {
    let out = smp(
        &deployment(),
        json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}}}}),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "k2", "operator": "Exists"}])
    );
}

#[test]
fn smp_map_directives_and_nulls() {
    let out = smp(
        &deployment(),
        json!({
            "metadata": {"labels": {"app": null, "new": "1"}},
            "spec": {
                "selector": {"$patch": "replace", "matchLabels": {"x": "y"}},
                "paused": true,
                "minReadySeconds": null,
                "template": {"spec": {"securityContext": {"runAsUser": 1, "fsGroup": null}}}
            }
        }),
    );
    assert_eq!(out["metadata"]["labels"], json!({"new": "1"}));
    assert_eq!(out["spec"]["selector"], json!({"matchLabels": {"x": "y"}}));
    assert_eq!(out["spec"]["paused"], true);
    assert!(out["spec"].get("minReadySeconds").is_none());
    assert_eq!(
        out["spec"]["template"]["spec"]["securityContext"],
        json!({"runAsUser": 1})
    );

    let out = smp(
        &deployment(),
        json!({"spec": {"strategy": {"$patch": "delete"}}}),
    );
    assert!(out["spec"].get("strategy").is_none());

    let out = smp(
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}}}),
    );
    assert_eq!(names(containers(&out)), ["only"]);

    let bad = strategic_merge_patch(
        &deployment(),
        &json!({"spec": {"$patch": "bogus"}}),
        deployment_schema(),
    );
    assert!(bad.is_err());
    let no_key = strategic_merge_patch(
        &deployment(),
        &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        deployment_schema(),
    );
    assert!(no_key.unwrap_err().0.contains("merge key"));
}

#[test]
fn smp_without_schema_is_a_merge_patch_that_strips_directives() {
    let orig = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "m": [{"name": "x"}]});
    let out = strategic_merge_patch(
        &orig,
        &json!({"a": {"b": null, "d": {"$patch": "replace", "e": 1}}, "l": [3], "m": [{"name": "y", "$patch": "delete"}, {"name": "z"}]}),
        None,
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"a": {"c": 2, "d": {"e": 1}}, "l": [3], "m": [{"name": "z"}]})
    );
}

#[test]
fn smp_merges_service_ports_and_volume_sources_retain_keys() {
    let defs = definitions();
    let svc = SchemaNode::definition(defs, "io.k8s.api.core.v1.Service");
    let orig =
        json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
    let out = strategic_merge_patch(
        &orig,
        &json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}),
        svc,
    )
    .unwrap();
    assert_eq!(
        out["spec"]["ports"][1],
        json!({"port": 443, "name": "https", "targetPort": 8443})
    );

    let pod = SchemaNode::definition(defs, "io.k8s.api.core.v1.Pod");
    let orig = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}});
    let patch = json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "configMap"], "configMap": {"name": "cm"}}]}});
    let out = strategic_merge_patch(&orig, &patch, pod).unwrap();
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "v", "configMap": {"name": "cm"}}])
    );
}

// ---- JSON merge patch and JSON patch ----

#[test]
fn merge_patch_null_deletes_and_lists_replace() {
    let out = json_merge_patch(
        &json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}),
        &json!({"a": null, "b": {"c": null, "e": {"f": null}}, "l": [3]}),
    );
    assert_eq!(out, json!({"b": {"d": 3, "e": {}}, "l": [3]}));
    assert_eq!(json_merge_patch(&json!({"a": 1}), &json!([1])), json!([1]));
    assert_eq!(
        json_merge_patch(&json!("x"), &json!({"a": 1})),
        json!({"a": 1})
    );
}

#[test]
fn json_patch_operations() {
    let doc = json!({"spec": {"replicas": 1, "list": ["a", "b"], "x/y": {"~t": 1}}});
    let out = json_patch(
        &doc,
        &json!([
            {"op": "add", "path": "/spec/paused", "value": true},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/1", "value": "ab"},
            {"op": "add", "path": "/spec/list/-", "value": "c"},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "test", "path": "/spec/x~1y/~0t", "value": 1.0},
            {"op": "move", "from": "/spec/x~1y", "path": "/spec/moved"},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
            {"op": "test", "path": "/spec/replicas", "value": 3}
        ]),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"spec": {"replicas": 3, "list": ["ab", "b", "c"], "paused": true, "moved": {"~t": 1}, "copied": 3}})
    );
}

#[test]
fn json_patch_errors_name_the_failing_operation() {
    let doc = json!({"spec": {"replicas": 1}});
    let e = json_patch(
        &doc,
        &json!([{"op": "test", "path": "/spec/replicas", "value": 2}]),
    )
    .unwrap_err();
    assert_eq!(e.0, "testing value /spec/replicas failed: test failed");
    let e = json_patch(&doc, &json!([{"op": "remove", "path": "/spec/nope"}])).unwrap_err();
    assert!(
        e.0.starts_with("remove operation does not apply"),
        "{}",
        e.0
    );
    let e = json_patch(
        &doc,
        &json!([{"op": "replace", "path": "/spec/nope", "value": 1}]),
    )
    .unwrap_err();
    assert!(
        e.0.starts_with("replace operation does not apply"),
        "{}",
        e.0
    );
    let e = json_patch(&doc, &json!([{"op": "add", "path": "/a/b", "value": 1}])).unwrap_err();
    assert!(e.0.starts_with("add operation does not apply"), "{}", e.0);
    let e = json_patch(
        &doc,
        &json!([{"op": "move", "from": "/spec", "path": "/spec/x"}]),
    )
    .unwrap_err();
    assert!(e.0.starts_with("move operation does not apply"), "{}", e.0);
    assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    assert!(json_patch(&doc, &json!([{"op": "frobnicate", "path": "/a"}])).is_err());
    // All or nothing: the input is untouched either way.
    assert_eq!(doc, json!({"spec": {"replicas": 1}}));
}

// ---- server-side apply ----

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-01-01T00:01:00Z";
const T2: &str = "2024-01-01T00:02:00Z";

fn applied_deployment(replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]}]}
            }
        }
    })
}

fn apply(
    live: Option<&Value>,
    cfg: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, Vec<ApplyConflict>> {
    server_side_apply(live, cfg, manager, force, deployment_schema(), T1).map(|o| o.object)
}

fn entries(obj: &Value) -> &Vec<Value> {
    obj["metadata"]["managedFields"].as_array().unwrap()
}

fn entry<'v>(obj: &'v Value, manager: &str, op: &str) -> Option<&'v Value> {
    entries(obj)
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == op)
}

#[test]
fn ssa_create_from_nothing() {
    let obj = apply(None, &applied_deployment(3), "kubectl", false).unwrap();
    assert_eq!(obj["spec"]["replicas"], 3);
    let es = entries(&obj);
    assert_eq!(es.len(), 1);
    assert_eq!(es[0]["manager"], "kubectl");
    assert_eq!(es[0]["operation"], "Apply");
    assert_eq!(es[0]["apiVersion"], "apps/v1");
    assert_eq!(es[0]["time"], T1);
    assert_eq!(es[0]["fieldsType"], "FieldsV1");
    assert_eq!(
        es[0]["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                        ".": {},
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                    }}}
                }
            }
        })
    );
}

#[test]
fn ssa_reapply_is_idempotent_and_keeps_unowned_fields() {
    let mut live = apply(None, &applied_deployment(3), "kubectl", false).unwrap();
    // Server defaults nobody owns.
    live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
    live["spec"]["revisionHistoryLimit"] = json!(10);
    let again = server_side_apply(
        Some(&live),
        &applied_deployment(3),
        "kubectl",
        false,
        deployment_schema(),
        T2,
    )
    .unwrap()
    .object;
    assert_eq!(again, live, "a no-op apply keeps the entry's time");
    let mut cfg = applied_deployment(4);
    cfg["metadata"]["annotations"] = json!({"a": "b"});
    let changed = server_side_apply(Some(&live), &cfg, "kubectl", false, deployment_schema(), T2)
        .unwrap()
        .object;
    assert_eq!(entry(&changed, "kubectl", "Apply").unwrap()["time"], T2);
    assert_eq!(changed["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(
        changed["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"],
        "TCP"
    );
}

#[test]
fn ssa_two_appliers_conflict_on_replicas_and_force_takes_it() {
    let live = apply(None, &applied_deployment(3), "alice", false).unwrap();
    let bob = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}});
    let conflicts = apply(Some(&live), &bob, "bob", false).unwrap_err();
    assert_eq!(
        conflicts,
        vec![ApplyConflict {
            manager: "alice".into(),
            field: ".spec.replicas".into()
        }]
    );
    assert_eq!(
        conflict_message(&conflicts),
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );

    // The same value is shared, not a conflict.
    let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    let shared = apply(Some(&live), &same, "bob", false).unwrap();
    assert_eq!(
        entry(&shared, "alice", "Apply").unwrap()["fieldsV1"]["f:spec"]["f:replicas"],
        json!({})
    );
    assert_eq!(
        entry(&shared, "bob", "Apply").unwrap()["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );

    let forced = apply(Some(&live), &bob, "bob", true).unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    assert!(
        entry(&forced, "alice", "Apply").unwrap()["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    assert_eq!(
        entry(&forced, "bob", "Apply").unwrap()["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );

    // Alice applying her old config now conflicts with bob.
    let conflicts = apply(Some(&forced), &applied_deployment(3), "alice", false).unwrap_err();
    assert_eq!(
        conflicts,
        vec![ApplyConflict {
            manager: "bob".into(),
            field: ".spec.replicas".into()
        }]
    );
}

#[test]
fn ssa_removes_fields_the_manager_stopped_applying() {
    let mut cfg = applied_deployment(3);
    cfg["metadata"]["labels"]["tier"] = json!("fe");
    cfg["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sidecar", "image": "busybox"}));
    cfg["spec"]["minReadySeconds"] = json!(5);
    let live = apply(None, &cfg, "kubectl", false).unwrap();

    let out = apply(Some(&live), &applied_deployment(3), "kubectl", false).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(names(containers(&out)), ["web"]);
    assert!(out["spec"].get("minReadySeconds").is_none());

    // A field another manager also owns stays.
    let mut edited = live.clone();
    edited["spec"]["minReadySeconds"] = json!(7);
    track_update(
        Some(&live),
        &mut edited,
        "kubectl-edit",
        "Update",
        None,
        T1,
        deployment_schema(),
    );
    let out = apply(Some(&edited), &applied_deployment(3), "kubectl", false).unwrap();
    assert_eq!(out["spec"]["minReadySeconds"], 7);
    assert!(out["metadata"]["labels"].get("tier").is_none());
}

#[test]
fn ssa_conflicts_with_client_side_apply_update_manager() {
    // Created by a client-side apply: an Update manager owns everything.
    let mut created = applied_deployment(3);
    track_update(
        None,
        &mut created,
        "kubectl-client-side-apply",
        "Update",
        None,
        T0,
        deployment_schema(),
    );
    let e = entry(&created, "kubectl-client-side-apply", "Update").unwrap();
    assert_eq!(e["time"], T0);
    assert_eq!(e["fieldsV1"]["f:spec"]["f:replicas"], json!({}));

    let conflicts = apply(Some(&created), &applied_deployment(5), "kubectl", false).unwrap_err();
    assert_eq!(
        conflicts,
        vec![ApplyConflict {
            manager: "kubectl-client-side-apply".into(),
            field: ".spec.replicas".into()
        }]
    );

    let mut changed_image = applied_deployment(3);
    changed_image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    let conflicts = apply(Some(&created), &changed_image, "kubectl", false).unwrap_err();
    assert_eq!(
        conflicts[0].field,
        ".spec.template.spec.containers[name=\"web\"].image"
    );

    let forced = apply(Some(&created), &applied_deployment(5), "kubectl", true).unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    let csa = entry(&forced, "kubectl-client-side-apply", "Update").unwrap();
    assert!(csa["fieldsV1"]["f:spec"].get("f:replicas").is_none());
    assert_eq!(csa["time"], T0);
    // Apply entries sort before Update entries.
    assert_eq!(entries(&forced)[0]["operation"], "Apply");
}

#[test]
fn ssa_on_object_without_managed_fields_uses_before_first_apply() {
    let live = applied_deployment(3);
    let conflicts = apply(Some(&live), &applied_deployment(4), "kubectl", false).unwrap_err();
    assert_eq!(conflicts[0].manager, "before-first-apply");
    let ok = apply(Some(&live), &applied_deployment(3), "kubectl", false).unwrap();
    assert!(entry(&ok, "before-first-apply", "Update").is_some());
}

#[test]
fn track_update_moves_ownership_and_drops_removed_fields() {
    let live = apply(None, &applied_deployment(3), "kubectl", false).unwrap();
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(4);
    new["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("app");
    new["metadata"]["annotations"] = json!({"note": "x"});
    track_update(
        Some(&live),
        &mut new,
        "hpa",
        "Update",
        None,
        T0,
        deployment_schema(),
    );
    let hpa = entry(&new, "hpa", "Update").unwrap();
    assert_eq!(
        hpa["fieldsV1"],
        json!({"f:metadata": {"f:annotations": {".": {}, "f:note": {}}}, "f:spec": {"f:replicas": {}}})
    );
    let k = entry(&new, "kubectl", "Apply").unwrap();
    assert!(k["fieldsV1"]["f:spec"].get("f:replicas").is_none());
    assert!(k["fieldsV1"].get("f:metadata").is_none());

    // A status write is recorded with its subresource.
    let mut st = new.clone();
    st["status"] = json!({"replicas": 4, "conditions": [{"type": "Available", "status": "True"}]});
    track_update(
        Some(&new),
        &mut st,
        "controller",
        "Update",
        Some("status"),
        T1,
        deployment_schema(),
    );
    let c = entries(&st)
        .iter()
        .find(|e| e["manager"] == "controller")
        .unwrap();
    assert_eq!(c["subresource"], "status");
    assert_eq!(
        c["fieldsV1"]["f:status"]["f:conditions"],
        json!({"k:{\"type\":\"Available\"}": {".": {}, "f:status": {}, "f:type": {}}})
    );

    // A no-op write changes nothing; [{}] strips managed fields.
    let mut same = st.clone();
    track_update(
        Some(&st),
        &mut same,
        "other",
        "Update",
        None,
        T1,
        deployment_schema(),
    );
    assert_eq!(same, st);
    let mut reset = st.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    track_update(
        Some(&st),
        &mut reset,
        "other",
        "Update",
        None,
        T1,
        deployment_schema(),
    );
    assert!(reset["metadata"].get("managedFields").is_none());
}

#[test]
fn ssa_merges_lists_by_key_keeping_other_managers_items() {
    let live = apply(None, &applied_deployment(3), "alice", false).unwrap();
    let bob = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}}
    });
    let out = apply(Some(&live), &bob, "bob", false).unwrap();
    assert_eq!(names(containers(&out)), ["web", "sidecar"]);
    // Alice re-applying without the sidecar keeps bob's container.
    let out = apply(Some(&out), &applied_deployment(3), "alice", false).unwrap();
    assert_eq!(names(containers(&out)), ["web", "sidecar"]);
}

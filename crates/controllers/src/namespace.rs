//! The namespace lifecycle controller: a Namespace being deleted (phase
//! Terminating) has everything in it deleted; once nothing is left its
//! `kubernetes` finalizer is removed through the `finalize` subresource and
//! the registry deletes it. Progress is reported in status conditions as
//! upstream's namespace controller does.

use crate::runtime::{Informer, Requeue, WorkQueue};
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{now_rfc3339, DeleteOptions, Registry, WriteOptions};
use kobune_apiserver::resources::Resources;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub const FINALIZER: &str = "kubernetes";
pub const PREFIX: &str = "/registry/core/namespaces/";

/// One object in a namespace.
#[derive(Debug, Clone)]
pub struct Content {
    pub resource: Arc<ResourceInfo>,
    pub key: String,
    pub object: Arc<Value>,
}

/// What to do about a namespace, given what is still in it.
#[derive(Debug, Default)]
pub struct Plan {
    /// Indices into the content of objects to delete (those not already being deleted).
    pub delete: Vec<usize>,
    /// Nothing is left: remove the `kubernetes` finalizer.
    pub finalize: bool,
    /// The deletion conditions the namespace's status should show.
    pub conditions: Vec<Value>,
    /// When to look again if content remains.
    pub requeue: Option<Duration>,
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn spec_finalizers(ns: &Value) -> Vec<&str> {
    ns.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn condition(ty: &str, status: bool, reason: &str, message: String) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "reason": reason, "message": message})
}

/// Decides over a namespace and its remaining content. `failures` are
/// deletions that failed in this pass (`resource: error`).
pub fn plan(ns: &Value, content: &[Content], failures: &[String]) -> Plan {
    if !deleting(ns) || !spec_finalizers(ns).contains(&FINALIZER) {
        return Plan::default();
    }
    let delete = content
        .iter()
        .enumerate()
        .filter(|(_, c)| !deleting(&c.object))
        .map(|(i, _)| i)
        .collect();
    let mut per_resource: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_finalizer: BTreeMap<String, usize> = BTreeMap::new();
    let mut grace = 0i64;
    for c in content {
        *per_resource.entry(c.resource.qualified()).or_default() += 1;
        for f in c
            .object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(f) = f.as_str() {
                *per_finalizer.entry(f.to_string()).or_default() += 1;
            }
        }
        if let Some(g) = c
            .object
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
        {
            grace = grace.max(g);
        }
    }
    let conditions = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        if failures.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    failures.len(),
                    failures.join(", ")
                ),
            )
        },
        if per_resource.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            let parts: Vec<String> = per_resource
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", parts.join(", ")),
            )
        },
        if per_finalizer.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            let parts: Vec<String> = per_finalizer
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    parts.join(", ")
                ),
            )
        },
    ];
    let finalize = content.is_empty() && failures.is_empty();
    // As upstream: look again after half the longest grace period left, plus a second.
    let requeue = (!finalize).then(|| Duration::from_secs((grace.max(0) / 2 + 1) as u64));
    Plan {
        delete,
        finalize,
        conditions,
        requeue,
    }
}

/// Merges new conditions into old ones, keeping lastTransitionTime where the status did not change.
pub fn merge_conditions(old: &[Value], new: &[Value], now: &str) -> Vec<Value> {
    let mut out: Vec<Value> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n["type"] == o["type"]))
        .cloned()
        .collect();
    for n in new {
        let mut c = n.clone();
        let prev = old.iter().find(|o| o["type"] == n["type"]);
        c["lastTransitionTime"] = match prev {
            Some(p) if p["status"] == n["status"] && p.get("lastTransitionTime").is_some() => {
                p["lastTransitionTime"].clone()
            }
            _ => json!(now),
        };
        out.push(c);
    }
    out
}

/// The resources whose objects live in namespaces, one version each.
pub fn namespaced_resources(resources: &Resources) -> Vec<Arc<ResourceInfo>> {
    let mut seen = HashSet::new();
    resources
        .all()
        .into_iter()
        .filter(|r| r.namespaced() && r.stored && seen.insert(r.storage.clone()))
        .collect()
}

/// Everything stored in a namespace.
pub fn content(reg: &Registry, ns: &str) -> Vec<Content> {
    let mut out = vec![];
    for r in namespaced_resources(&reg.resources) {
        let (items, _) = reg.cache.list(&format!("{}{ns}/", r.key_prefix()), None);
        out.extend(items.into_iter().map(|(key, object)| Content {
            resource: r.clone(),
            key,
            object,
        }));
    }
    out
}

/// Queues namespaces that are being deleted.
pub fn keys_for_event(_: &Informer, ev: &CacheEvent, queue: &WorkQueue) {
    if ev.kind != EventType::Deleted && deleting(&ev.object) {
        if let Some(name) = ev.object.pointer("/metadata/name").and_then(Value::as_str) {
            queue.add(name);
        }
    }
}

/// One reconcile of a namespace.
pub async fn sync_namespace(
    reg: &Registry,
    name: &str,
    opts: &WriteOptions,
) -> anyhow::Result<Requeue> {
    let info = reg
        .resources
        .find("", "v1", "namespaces")
        .expect("namespaces are built in");
    let Some(ns) = reg.cache.get(&info.key(None, name)) else {
        return Ok(None);
    };
    let items = content(reg, name);
    let first = plan(&ns, &items, &[]);
    if first.conditions.is_empty() {
        return Ok(None); // not being deleted, or not ours to finalize yet
    }
    let mut failures = vec![];
    for &i in &first.delete {
        let c = &items[i];
        let obj_name = c
            .object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let del = DeleteOptions {
            propagation_policy: Some("Background".into()),
            precondition_uid: c
                .object
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Default::default()
        };
        match reg.delete(&c.resource, Some(name), obj_name, &del).await {
            Ok(_) => {}
            Err(e) if e.code == 404 || e.code == 409 => {}
            Err(e) => failures.push(format!("{}: {}", c.resource.qualified(), e.message)),
        }
    }
    let items = if first.delete.is_empty() {
        items
    } else {
        reg.cache
            .sync()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        content(reg, name)
    };
    let Some(ns) = reg.cache.get(&info.key(None, name)) else {
        return Ok(None);
    };
    let plan = plan(&ns, &items, &failures);
    if plan.finalize {
        let mut obj = (*ns).clone();
        if let Some(f) = obj
            .pointer_mut("/spec/finalizers")
            .and_then(Value::as_array_mut)
        {
            f.retain(|x| x.as_str() != Some(FINALIZER));
        }
        tracing::info!(
            namespace = name,
            "namespace controller: content gone, finalizing"
        );
        reg.update(&info, None, name, obj, opts, Some("finalize"))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        return Ok(None);
    }
    let old = ns
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let merged = merge_conditions(&old, &plan.conditions, &now_rfc3339());
    if merged != old {
        let mut obj = (*ns).clone();
        obj["status"]["conditions"] = json!(merged);
        if let Err(e) = reg
            .update(&info, None, name, obj, opts, Some("status"))
            .await
        {
            if e.code != 404 && e.code != 409 {
                anyhow::bail!("{}", e.message);
            }
        }
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "deleting content of namespace {name}: {}",
            failures.join("; ")
        );
    }
    Ok(plan.requeue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(deleting: bool, fins: &[&str]) -> Value {
        let mut v = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "spec": {"finalizers": fins}, "status": {"phase": "Active"}});
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            v["status"]["phase"] = json!("Terminating");
        }
        v
    }

    fn item(res: &Resources, group: &str, plural: &str, name: &str, extra: Value) -> Content {
        let r = res
            .all()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural)
            .unwrap();
        let mut meta = json!({"name": name, "namespace": "n", "uid": format!("u-{name}")});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                meta[k] = v.clone();
            }
        }
        Content {
            key: r.key(Some("n"), name),
            resource: r,
            object: Arc::new(json!({"metadata": meta})),
        }
    }

    fn cond<'a>(p: &'a Plan, ty: &str) -> &'a Value {
        p.conditions.iter().find(|c| c["type"] == ty).unwrap()
    }

    #[test]
    fn active_namespaces_are_left_alone() {
        let res = Resources::new();
        let p = plan(
            &ns(false, &["kubernetes"]),
            &[item(&res, "", "pods", "p", json!({}))],
            &[],
        );
        assert!(p.delete.is_empty() && !p.finalize && p.conditions.is_empty());
    }

    #[test]
    fn waits_for_other_spec_finalizers_once_ours_is_gone() {
        let p = plan(&ns(true, &["example.com/other"]), &[], &[]);
        assert!(!p.finalize && p.conditions.is_empty());
    }

    #[test]
    fn terminating_namespace_deletes_content_and_reports_it() {
        let res = Resources::new();
        let items = vec![
            item(&res, "", "configmaps", "a", json!({})),
            item(&res, "apps", "deployments", "d", json!({})),
            item(
                &res,
                "",
                "pods",
                "p",
                json!({"deletionTimestamp": "x", "deletionGracePeriodSeconds": 30, "finalizers": ["example.com/keep"]}),
            ),
        ];
        let p = plan(&ns(true, &["kubernetes"]), &items, &[]);
        assert_eq!(p.delete, vec![0, 1]);
        assert!(!p.finalize);
        assert_eq!(p.requeue, Some(Duration::from_secs(16)));
        let remaining = cond(&p, "NamespaceContentRemaining");
        assert_eq!(remaining["status"], "True");
        assert_eq!(
            remaining["message"],
            "Some resources are remaining: configmaps has 1 resource instances, deployments.apps has 1 resource instances, pods has 1 resource instances"
        );
        let fins = cond(&p, "NamespaceFinalizersRemaining");
        assert_eq!(fins["message"], "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances");
        assert_eq!(
            cond(&p, "NamespaceDeletionContentFailure")["status"],
            "False"
        );
    }

    #[test]
    fn empty_terminating_namespace_is_finalized() {
        let p = plan(&ns(true, &["kubernetes"]), &[], &[]);
        assert!(p.finalize && p.delete.is_empty() && p.requeue.is_none());
        assert_eq!(
            cond(&p, "NamespaceContentRemaining")["reason"],
            "ContentRemoved"
        );
        // Failures keep it from finalizing.
        let p = plan(&ns(true, &["kubernetes"]), &[], &["pods: boom".into()]);
        assert!(!p.finalize);
        assert_eq!(
            cond(&p, "NamespaceDeletionContentFailure")["status"],
            "True"
        );
    }

    #[test]
    fn conditions_keep_transition_times_while_status_holds() {
        let old = vec![
            json!({"type": "A", "status": "True", "lastTransitionTime": "t0"}),
            json!({"type": "B", "status": "True", "lastTransitionTime": "t0"}),
        ];
        let new = vec![
            json!({"type": "A", "status": "True"}),
            json!({"type": "B", "status": "False"}),
        ];
        let m = merge_conditions(&old, &new, "t1");
        assert_eq!(m[0]["lastTransitionTime"], "t0");
        assert_eq!(m[1]["lastTransitionTime"], "t1");
    }

    #[test]
    fn namespaced_resources_are_deduplicated_by_storage() {
        let res = Resources::new();
        let rs = namespaced_resources(&res);
        let storages: HashSet<_> = rs.iter().map(|r| r.storage.clone()).collect();
        assert_eq!(storages.len(), rs.len());
        assert!(rs.iter().any(|r| r.storage == "core/pods"));
        assert!(rs.iter().all(|r| r.storage != "core/namespaces"));
    }
}

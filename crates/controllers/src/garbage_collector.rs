//! The garbage collector: deletes objects whose owners (by
//! `metadata.ownerReferences`) are gone, and carries out foreground and
//! orphan deletion of owners, as upstream's garbage collector does.
//!
//! [`reconcile`] decides over an informer snapshot of every object and
//! returns [`Action`]s; [`execute`] carries them out through the registry.
//!
//! - Background: a dependent none of whose owners exist (or whose owners
//!   all wait for their dependents) is deleted.
//! - Foreground: an owner being deleted with the `foregroundDeletion`
//!   finalizer has its dependents deleted (foreground too where they block
//!   it or have dependents of their own); once no dependent with
//!   `blockOwnerDeletion: true` is left, the finalizer is removed.
//! - Orphan: an owner being deleted with the `orphan` finalizer has its
//!   references removed from its dependents, then the finalizer removed.

use crate::runtime::{Informer, Requeue, WorkQueue};
use kobune_apimachinery::{ApiError, ResourceInfo};
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use kobune_apiserver::resources::Resources;
use serde_json::{json, Value};
use std::sync::Arc;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Index: uid -> the key holding that object.
pub const BY_UID: &str = "uid";
/// Index: owner uid -> keys of its dependents.
pub const BY_OWNER: &str = "owner";

/// An object an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete the object (uid precondition) with this propagation policy.
    Delete {
        target: Target,
        propagation: &'static str,
    },
    /// Drop one finalizer from the object.
    RemoveFinalizer {
        target: Target,
        finalizer: &'static str,
    },
    /// Drop the ownerReferences with these uids from the object.
    RemoveOwnerRefs {
        target: Target,
        owner_uids: Vec<String>,
    },
}

/// The state reconcile decides over: every object, indexed by uid and owner.
pub struct Graph<'a> {
    pub objects: &'a Informer,
    pub resources: &'a Resources,
}

/// An informer over every stored object with the indices the collector needs.
pub fn informer() -> Informer {
    Informer::new(kobune_apiserver::cache::ROOT)
        .with_index(BY_UID, |o| uid(o).into_iter().collect())
        .with_index(BY_OWNER, |o| {
            owner_refs(o)
                .iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
}

fn meta_str<'v>(o: &'v Value, field: &str) -> Option<&'v str> {
    o.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn uid(o: &Value) -> Option<String> {
    meta_str(o, "uid").map(str::to_string)
}

fn owner_refs(o: &Value) -> &[Value] {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(f)))
}

fn blocks(r: &Value) -> bool {
    r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
}

fn target(key: &str, o: &Value) -> Option<Target> {
    Some(Target {
        key: key.to_string(),
        namespace: meta_str(o, "namespace").map(str::to_string),
        name: meta_str(o, "name")?.to_string(),
        uid: uid(o)?,
    })
}

/// The state of one owner as its dependent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Does not exist (or is not what the reference says).
    Dangling,
    /// Being deleted in the foreground: waiting for its dependents.
    Waiting,
}

impl Graph<'_> {
    fn resolve(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.resources.find_kind(group, version, kind)
    }

    /// Looks the owner up by uid among the objects of its kind.
    fn owner_state(&self, dependent_ns: Option<&str>, r: &Value) -> Owner {
        let s = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
        let Some(info) = self.resolve(s("apiVersion"), s("kind")) else {
            // An unknown kind cannot be checked; never collect on a guess.
            tracing::debug!(
                "garbage collector: unknown owner kind {} {}",
                s("apiVersion"),
                s("kind")
            );
            return Owner::Solid;
        };
        let prefix = match (info.namespaced(), dependent_ns) {
            (true, Some(ns)) => format!("{}{ns}/", info.key_prefix()),
            // A namespaced owner cannot own a cluster-scoped object.
            (true, None) => return Owner::Dangling,
            (false, _) => info.key_prefix(),
        };
        let found = self
            .objects
            .by_index(BY_UID, s("uid"))
            .into_iter()
            .find(|(k, _)| {
                k.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            });
        match found {
            None => Owner::Dangling,
            Some((_, o)) if deleting(&o) && has_finalizer(&o, FOREGROUND) => Owner::Waiting,
            Some(_) => Owner::Solid,
        }
    }

    fn dependents(&self, owner_uid: &str) -> Vec<(String, Arc<Value>)> {
        self.objects.by_index(BY_OWNER, owner_uid)
    }
}

/// What the collector should do about the object at `key`.
pub fn reconcile(g: &Graph, key: &str) -> Vec<Action> {
    let Some(obj) = g.objects.get(key) else {
        return vec![];
    };
    if deleting(&obj) {
        owner_actions(g, key, &obj)
    } else {
        dependent_actions(g, key, &obj)
    }
}

/// An owner being deleted in the orphan or foreground mode.
fn owner_actions(g: &Graph, key: &str, obj: &Value) -> Vec<Action> {
    let (Some(me), Some(my_uid)) = (target(key, obj), uid(obj)) else {
        return vec![];
    };
    if has_finalizer(obj, ORPHAN) {
        let mut out: Vec<Action> = g
            .dependents(&my_uid)
            .into_iter()
            .filter_map(|(k, d)| target(&k, &d))
            .map(|t| Action::RemoveOwnerRefs {
                target: t,
                owner_uids: vec![my_uid.clone()],
            })
            .collect();
        out.push(Action::RemoveFinalizer {
            target: me,
            finalizer: ORPHAN,
        });
        return out;
    }
    if has_finalizer(obj, FOREGROUND) {
        let deps = g.dependents(&my_uid);
        let blocking = deps.iter().any(|(_, d)| {
            owner_refs(d)
                .iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(&my_uid) && blocks(r))
        });
        if !blocking {
            return vec![Action::RemoveFinalizer {
                target: me,
                finalizer: FOREGROUND,
            }];
        }
        return deps
            .iter()
            .flat_map(|(k, d)| dependent_actions(g, k, d))
            .collect();
    }
    vec![]
}

/// An object with owners: delete it when none is left, as upstream's attemptToDeleteItem.
fn dependent_actions(g: &Graph, key: &str, obj: &Value) -> Vec<Action> {
    let refs = owner_refs(obj);
    if refs.is_empty() || deleting(obj) {
        return vec![];
    }
    let Some(me) = target(key, obj) else {
        return vec![];
    };
    let ns = me.namespace.as_deref();
    let mut solid = false;
    let mut waiting = false;
    let mut waiting_blocked = false;
    let mut gone = vec![];
    for r in refs {
        let ref_uid = r
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match g.owner_state(ns, r) {
            Owner::Solid => solid = true,
            Owner::Dangling => gone.push(ref_uid),
            Owner::Waiting => {
                waiting = true;
                waiting_blocked |= blocks(r);
                gone.push(ref_uid);
            }
        }
    }
    if solid {
        // Still owned: only drop the references to owners that are gone or waiting.
        if gone.is_empty() {
            return vec![];
        }
        return vec![Action::RemoveOwnerRefs {
            target: me,
            owner_uids: gone,
        }];
    }
    // No owner left: collect it. A waiting owner it blocks, or dependents of
    // its own, make it go in the foreground; else honour its own finalizers.
    let propagation = if waiting && (waiting_blocked || !g.dependents(&me.uid).is_empty()) {
        "Foreground"
    } else if has_finalizer(obj, ORPHAN) {
        "Orphan"
    } else if has_finalizer(obj, FOREGROUND) {
        "Foreground"
    } else {
        "Background"
    };
    vec![Action::Delete {
        target: me,
        propagation,
    }]
}

/// Which keys an event makes worth another look.
pub fn keys_for_event(inf: &Informer, ev: &CacheEvent, queue: &WorkQueue) {
    let obj = &ev.object;
    if ev.kind != EventType::Deleted
        && (!owner_refs(obj).is_empty()
            || (deleting(obj) && (has_finalizer(obj, ORPHAN) || has_finalizer(obj, FOREGROUND))))
    {
        queue.add(ev.key.clone());
    }
    if ev.kind == EventType::Deleted {
        if let Some(u) = uid(obj) {
            for (k, _) in inf.by_index(BY_OWNER, &u) {
                queue.add(k);
            }
        }
    }
    // Owners being deleted may be waiting on this object.
    for o in std::iter::once(obj).chain(ev.prev.as_ref()) {
        for r in owner_refs(o) {
            let Some(u) = r.get("uid").and_then(Value::as_str) else {
                continue;
            };
            for (k, owner) in inf.by_index(BY_UID, u) {
                if deleting(&owner) {
                    queue.add(k);
                }
            }
        }
    }
}

/// Carries out actions in order, stopping at the first failure.
pub async fn execute(
    reg: &Registry,
    actions: &[Action],
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    for a in actions {
        match a {
            Action::Delete {
                target,
                propagation,
            } => {
                let Some(info) = resource_of(&reg.resources, &target.key) else {
                    continue;
                };
                let del = DeleteOptions {
                    propagation_policy: Some(propagation.to_string()),
                    precondition_uid: Some(target.uid.clone()),
                    ..Default::default()
                };
                tracing::info!(key = %target.key, propagation, "garbage collector: deleting");
                match reg
                    .delete(&info, target.namespace.as_deref(), &target.name, &del)
                    .await
                {
                    Ok(_) => {}
                    // Gone already, or replaced by another object of that name.
                    Err(e)
                        if e.code == 404
                            || (e.code == 409 && e.message.contains("Precondition")) => {}
                    Err(e) => return Err(e),
                }
            }
            Action::RemoveFinalizer { target, finalizer } => {
                edit(reg, target, opts, |o| {
                    let Some(fins) = o
                        .pointer_mut("/metadata/finalizers")
                        .and_then(Value::as_array_mut)
                    else {
                        return false;
                    };
                    let before = fins.len();
                    fins.retain(|f| f.as_str() != Some(finalizer));
                    before != fins.len()
                })
                .await?
            }
            Action::RemoveOwnerRefs { target, owner_uids } => {
                edit(reg, target, opts, |o| {
                    let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) else {
                        return false;
                    };
                    let Some(refs) = m.get_mut("ownerReferences").and_then(Value::as_array_mut)
                    else {
                        return false;
                    };
                    let before = refs.len();
                    refs.retain(|r| {
                        !owner_uids
                            .iter()
                            .any(|u| r.get("uid").and_then(Value::as_str) == Some(u))
                    });
                    let changed = before != refs.len();
                    if refs.is_empty() {
                        m.remove("ownerReferences");
                    }
                    changed
                })
                .await?
            }
        }
    }
    Ok(())
}

/// Updates the current object (optimistically, at its resourceVersion) if `f` changes it.
async fn edit(
    reg: &Registry,
    t: &Target,
    opts: &WriteOptions,
    f: impl FnOnce(&mut Value) -> bool,
) -> Result<(), ApiError> {
    let Some(info) = resource_of(&reg.resources, &t.key) else {
        return Ok(());
    };
    let Some(current) = reg.cache.get(&t.key) else {
        return Ok(());
    };
    if uid(&current).as_deref() != Some(t.uid.as_str()) {
        return Ok(());
    }
    let mut obj = (*current).clone();
    if !f(&mut obj) {
        return Ok(());
    }
    tracing::info!(key = %t.key, "garbage collector: updating");
    match reg
        .update(&info, t.namespace.as_deref(), &t.name, obj, opts, None)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The storage version of the resource a key belongs to.
pub fn resource_of(resources: &Resources, key: &str) -> Option<Arc<ResourceInfo>> {
    let rest = key.strip_prefix(kobune_apiserver::cache::ROOT)?;
    let mut parts = rest.splitn(3, '/');
    let storage = format!("{}/{}", parts.next()?, parts.next()?);
    resources
        .all()
        .into_iter()
        .find(|r| r.storage == storage && r.stored)
}

/// One reconcile of a key against the live informer.
pub async fn sync_key(
    reg: &Registry,
    inf: &Informer,
    key: &str,
    opts: &WriteOptions,
) -> anyhow::Result<Requeue> {
    let actions = reconcile(
        &Graph {
            objects: inf,
            resources: &reg.resources,
        },
        key,
    );
    if actions.is_empty() {
        return Ok(None);
    }
    execute(reg, &actions, opts)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(None)
}

/// Builds an ownerReference (for tests and callers).
pub fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &str, block: bool) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": block})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(ns: &str, name: &str, uid: &str, refs: Vec<Value>) -> (String, Value) {
        (
            format!("/registry/core/configmaps/{ns}/{name}"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "uid": uid, "ownerReferences": refs}}),
        )
    }

    fn rs(ns: &str, name: &str, uid: &str) -> (String, Value) {
        (
            format!("/registry/apps/replicasets/{ns}/{name}"),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": ns, "uid": uid}}),
        )
    }

    fn deleting_with(mut o: (String, Value), fin: &str) -> (String, Value) {
        o.1["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        o.1["metadata"]["finalizers"] = json!([fin]);
        o
    }

    fn snapshot(objs: Vec<(String, Value)>) -> Informer {
        let inf = informer();
        for (k, v) in objs {
            inf.upsert(k, v);
        }
        inf
    }

    fn run(inf: &Informer, key: &str) -> Vec<Action> {
        let res = Resources::new();
        reconcile(
            &Graph {
                objects: inf,
                resources: &res,
            },
            key,
        )
    }

    fn rsref(uid: &str, block: bool) -> Value {
        owner_ref("apps/v1", "ReplicaSet", "rs", uid, block)
    }

    #[test]
    fn dependent_with_live_owner_stays() {
        let inf = snapshot(vec![
            rs("ns", "rs", "u-rs"),
            cm("ns", "c", "u-c", vec![rsref("u-rs", false)]),
        ]);
        assert!(run(&inf, "/registry/core/configmaps/ns/c").is_empty());
    }

    #[test]
    fn dependent_with_missing_owner_is_deleted_in_background() {
        let inf = snapshot(vec![cm("ns", "c", "u-c", vec![rsref("u-rs", false)])]);
        let a = run(&inf, "/registry/core/configmaps/ns/c");
        assert!(
            matches!(&a[..], [Action::Delete { target, propagation: "Background" }] if target.uid == "u-c")
        );
    }

    #[test]
    fn owner_must_be_of_the_referenced_kind_and_namespace() {
        // The uid exists, but as a ConfigMap, or in another namespace.
        let inf = snapshot(vec![
            cm("ns", "other", "u-rs", vec![]),
            rs("elsewhere", "rs", "u-rs2"),
            cm(
                "ns",
                "c",
                "u-c",
                vec![rsref("u-rs", false), rsref("u-rs2", false)],
            ),
        ]);
        let a = run(&inf, "/registry/core/configmaps/ns/c");
        assert!(matches!(&a[..], [Action::Delete { .. }]), "{a:?}");
    }

    #[test]
    fn one_live_owner_keeps_the_dependent_and_dangling_refs_are_dropped() {
        let inf = snapshot(vec![
            rs("ns", "rs", "u-rs"),
            cm(
                "ns",
                "c",
                "u-c",
                vec![rsref("u-rs", false), rsref("gone", false)],
            ),
        ]);
        let a = run(&inf, "/registry/core/configmaps/ns/c");
        assert!(
            matches!(&a[..], [Action::RemoveOwnerRefs { owner_uids, .. }] if owner_uids == &vec!["gone".to_string()]),
            "{a:?}"
        );
    }

    #[test]
    fn unknown_owner_kinds_are_left_alone() {
        let inf = snapshot(vec![cm(
            "ns",
            "c",
            "u-c",
            vec![owner_ref("example.com/v1", "Widget", "w", "u-w", false)],
        )]);
        assert!(run(&inf, "/registry/core/configmaps/ns/c").is_empty());
    }

    #[test]
    fn cluster_scoped_owner_of_namespaced_dependent() {
        let ns = (
            "/registry/core/namespaces/n1".to_string(),
            json!({"metadata": {"name": "n1", "uid": "u-ns"}}),
        );
        let r = owner_ref("v1", "Namespace", "n1", "u-ns", false);
        let inf = snapshot(vec![ns, cm("ns", "c", "u-c", vec![r.clone()])]);
        assert!(run(&inf, "/registry/core/configmaps/ns/c").is_empty());
        inf.remove("/registry/core/namespaces/n1");
        assert_eq!(run(&inf, "/registry/core/configmaps/ns/c").len(), 1);
    }

    #[test]
    fn foreground_owner_deletes_dependents_then_drops_its_finalizer() {
        let owner = deleting_with(rs("ns", "rs", "u-rs"), FOREGROUND);
        let inf = snapshot(vec![
            owner,
            cm("ns", "blocking", "u-b", vec![rsref("u-rs", true)]),
            cm("ns", "loose", "u-l", vec![rsref("u-rs", false)]),
        ]);
        let a = run(&inf, "/registry/apps/replicasets/ns/rs");
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(a.iter().any(|x| matches!(x, Action::Delete { target, propagation: "Foreground" } if target.name == "blocking")));
        assert!(a.iter().any(|x| matches!(x, Action::Delete { target, propagation: "Background" } if target.name == "loose")));
        // The dependent itself decides the same way.
        let b = run(&inf, "/registry/core/configmaps/ns/blocking");
        assert!(matches!(
            &b[..],
            [Action::Delete {
                propagation: "Foreground",
                ..
            }]
        ));

        // A blocking dependent already being deleted: wait, do nothing new.
        inf.upsert(
            "/registry/core/configmaps/ns/blocking",
            deleting_with(
                cm("ns", "blocking", "u-b", vec![rsref("u-rs", true)]),
                FOREGROUND,
            )
            .1,
        );
        let a = run(&inf, "/registry/apps/replicasets/ns/rs");
        assert!(
            a.iter()
                .all(|x| !matches!(x, Action::RemoveFinalizer { .. })),
            "{a:?}"
        );

        // Only non-blocking dependents left: the owner may go.
        inf.remove("/registry/core/configmaps/ns/blocking");
        let a = run(&inf, "/registry/apps/replicasets/ns/rs");
        assert!(
            matches!(&a[..], [Action::RemoveFinalizer { finalizer: FOREGROUND, target }] if target.name == "rs"),
            "{a:?}"
        );
    }

    #[test]
    fn dependent_of_a_waiting_owner_with_another_live_owner_drops_the_reference() {
        let waiting = deleting_with(rs("ns", "rs", "u-rs"), FOREGROUND);
        let other = rs("ns", "rs2", "u-rs2");
        let inf = snapshot(vec![
            waiting,
            other,
            cm(
                "ns",
                "c",
                "u-c",
                vec![rsref("u-rs", true), rsref("u-rs2", false)],
            ),
        ]);
        let a = run(&inf, "/registry/core/configmaps/ns/c");
        assert!(
            matches!(&a[..], [Action::RemoveOwnerRefs { owner_uids, .. }] if owner_uids == &vec!["u-rs".to_string()]),
            "{a:?}"
        );
    }

    #[test]
    fn orphan_owner_releases_dependents_then_drops_its_finalizer() {
        let owner = deleting_with(rs("ns", "rs", "u-rs"), ORPHAN);
        let inf = snapshot(vec![
            owner,
            cm("ns", "a", "u-a", vec![rsref("u-rs", true)]),
            cm("ns", "b", "u-b", vec![rsref("u-rs", false)]),
        ]);
        let a = run(&inf, "/registry/apps/replicasets/ns/rs");
        assert_eq!(a.len(), 3);
        assert!(
            matches!(&a[0], Action::RemoveOwnerRefs { target, owner_uids } if target.name == "a" && owner_uids == &vec!["u-rs".to_string()])
        );
        assert!(matches!(&a[1], Action::RemoveOwnerRefs { target, .. } if target.name == "b"));
        assert!(matches!(
            &a[2],
            Action::RemoveFinalizer {
                finalizer: ORPHAN,
                ..
            }
        ));
        // Its dependents are not collected meanwhile: the owner still exists.
        assert!(run(&inf, "/registry/core/configmaps/ns/a").is_empty());
    }

    #[test]
    fn dependents_keep_their_own_propagation_finalizers() {
        let mut d = cm("ns", "c", "u-c", vec![rsref("gone", false)]);
        d.1["metadata"]["finalizers"] = json!([ORPHAN]);
        let inf = snapshot(vec![d]);
        let a = run(&inf, "/registry/core/configmaps/ns/c");
        assert!(matches!(
            &a[..],
            [Action::Delete {
                propagation: "Orphan",
                ..
            }]
        ));
    }

    #[test]
    fn keys_map_to_their_resources() {
        let res = Resources::new();
        assert_eq!(
            resource_of(&res, "/registry/core/pods/ns/p").unwrap().kind,
            "Pod"
        );
        assert_eq!(
            resource_of(&res, "/registry/apps/deployments/ns/d")
                .unwrap()
                .kind,
            "Deployment"
        );
        assert_eq!(
            resource_of(&res, "/registry/core/namespaces/n")
                .unwrap()
                .kind,
            "Namespace"
        );
        assert!(resource_of(&res, "/registry/nothing/here/x").is_none());
    }
}

//! The in-process controller manager: level-triggered controllers in the
//! Kubernetes style, each an informer over the watch cache feeding a work
//! queue, and one small reconcile function per key.
//!
//! - [`garbage_collector`]: ownerReference garbage collection (background,
//!   foreground and orphan propagation).
//! - [`namespace`]: namespace lifecycle (deleting a namespace's content,
//!   then finalizing it).
//! - [`replicaset`]: ReplicaSets keep their pods.
//! - [`deployment`]: Deployments roll out ReplicaSets.
//! - [`job`], [`cronjob`]: Jobs run pods to completion; CronJobs create Jobs.
//! - [`daemonset`]: DaemonSets run a pod per eligible node.
//! - [`endpoints`]: EndpointSlices and the legacy Endpoints list the pods
//!   each Service selects.
//! - [`statefulset`]: StatefulSets run ordered pods with stable names and
//!   per-pod PersistentVolumeClaims.
//! - [`disruption`]: PodDisruptionBudget status (the eviction subresource
//!   spends it).
//! - [`node_lifecycle`]: nodes not heard from go Unknown and tainted;
//!   taint-based eviction; pods of deleted nodes are collected.
//!
//! - [`serviceaccount`]: every namespace's default ServiceAccount and CA bundle.
//! - [`clusterrole_aggregation`]: aggregated ClusterRoles (`admin`, `edit`,
//!   `view`) hold the rules of the roles their selectors match.
//!
//! - [`local_path`]: the default `local-path` StorageClass, its
//!   provisioner and claim/volume binding.
//! - [`leader`]: Lease-based leader election; only the holder runs the
//!   controllers and the scheduler.
//!
//! The shared plumbing lives in [`runtime`] (and [`workload`] for the
//! workload controllers).

// ApiError mirrors the wire Status (about 160 bytes); errors are off the hot path.
#![allow(clippy::result_large_err)]

pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod garbage_collector;
pub mod hpa;
pub mod job;
pub mod leader;
pub mod local_path;
pub mod namespace;
pub mod node_lifecycle;
pub mod replicaset;
pub mod runtime;
pub mod serviceaccount;
pub mod statefulset;
pub mod workload;

use kobune_apiserver::registry::WriteOptions;
use kobune_apiserver::Registry;
use runtime::{run_controller, WorkQueue};
use std::sync::Arc;

/// The field manager the controllers write as.
pub const FIELD_MANAGER: &str = "kobune-controller-manager";

const GC_WORKERS: usize = 4;
const HPA_WORKERS: usize = 2;
const NAMESPACE_WORKERS: usize = 2;
const SERVICEACCOUNT_WORKERS: usize = 2;
const REPLICASET_WORKERS: usize = 5;
const DEPLOYMENT_WORKERS: usize = 5;
const JOB_WORKERS: usize = 5;
const CRONJOB_WORKERS: usize = 5;
const DAEMONSET_WORKERS: usize = 2;
const DISRUPTION_WORKERS: usize = 2;
const STATEFULSET_WORKERS: usize = 3;
const LOCAL_PATH_WORKERS: usize = 2;
const ENDPOINTS_WORKERS: usize = 5;

/// Starts every controller on the current runtime and returns once their
/// informers have synced; they run until the process ends.
///
/// With several servers sharing one store, `kobune server` calls this only
/// while it holds the controller Lease ([`leader::start_leading`], which
/// runs it on a runtime of its own and shuts that down if the lease is lost).
pub async fn start(registry: Arc<Registry>) -> anyhow::Result<()> {
    let opts = Arc::new(WriteOptions {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    });

    // Garbage collector: every object, indexed by uid and by owner uid.
    let queue = WorkQueue::default();
    let informer = Arc::new(garbage_collector::informer());
    let q = queue.clone();
    informer.start(&registry.cache, move |inf, ev| {
        garbage_collector::keys_for_event(inf, ev, &q)
    })?;
    let (reg, o) = (registry.clone(), opts.clone());
    tokio::spawn(run_controller(
        "garbage-collector",
        queue,
        move |key: String| {
            let (reg, inf, o) = (reg.clone(), informer.clone(), o.clone());
            async move { garbage_collector::sync_key(&reg, &inf, &key, &o).await }
        },
        GC_WORKERS,
    ));

    // Namespace lifecycle: namespaces being deleted.
    let queue = WorkQueue::default();
    let informer = Arc::new(runtime::Informer::new(namespace::PREFIX));
    let q = queue.clone();
    informer.start(&registry.cache, move |inf, ev| {
        namespace::keys_for_event(inf, ev, &q)
    })?;
    let (reg, o) = (registry.clone(), opts.clone());
    tokio::spawn(run_controller(
        "namespace",
        queue,
        move |name: String| {
            let (reg, o) = (reg.clone(), o.clone());
            async move { namespace::sync_namespace(&reg, &name, &o).await }
        },
        NAMESPACE_WORKERS,
    ));

    // ReplicaSets and Deployments.
    let rs = replicaset::Controller::new(registry.clone(), opts.clone())?;
    rs.start_informers()?;
    let c = rs.clone();
    tokio::spawn(run_controller(
        "replicaset",
        rs.queue.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
        REPLICASET_WORKERS,
    ));
    let dc = deployment::Controller::new(registry.clone(), opts.clone())?;
    dc.start_informers()?;
    let c = dc.clone();
    tokio::spawn(run_controller(
        "deployment",
        dc.queue.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
        DEPLOYMENT_WORKERS,
    ));
    macro_rules! start_workload {
        ($module:ident, $name:literal, $workers:expr) => {{
            let ctl = $module::Controller::new(registry.clone(), opts.clone())?;
            ctl.start_informers()?;
            let c = ctl.clone();
            tokio::spawn(run_controller(
                $name,
                ctl.queue.clone(),
                move |key: String| {
                    let c = c.clone();
                    async move { c.sync(&key).await }
                },
                $workers,
            ));
        }};
    }
    start_workload!(job, "job", JOB_WORKERS);
    start_workload!(cronjob, "cronjob", CRONJOB_WORKERS);
    start_workload!(daemonset, "daemonset", DAEMONSET_WORKERS);
    start_workload!(disruption, "disruption", DISRUPTION_WORKERS);
    start_workload!(statefulset, "statefulset", STATEFULSET_WORKERS);
    start_workload!(endpoints, "endpointslice", ENDPOINTS_WORKERS);
    let nl = node_lifecycle::Controller::new(
        registry.clone(),
        opts.clone(),
        node_lifecycle::grace_period(),
    )?;
    nl.start_informers()?;
    tokio::spawn(nl.run());
    start_workload!(clusterrole_aggregation, "clusterrole-aggregation", 1);
    if registry.service_accounts.is_some() {
        start_workload!(serviceaccount, "serviceaccount", SERVICEACCOUNT_WORKERS);
    }
    tracing::info!("controllers started");
    Ok(())
}

/// Starts the HorizontalPodAutoscaler controller, which reads metrics from
/// the node agents (`kubelets`) and pods' own metrics endpoints; it syncs
/// every HPA each [`hpa::sync_period`].
pub async fn start_autoscaling(
    registry: Arc<Registry>,
    kubelets: Arc<kobune_apiserver::kubelet::Kubelets>,
) -> anyhow::Result<()> {
    let opts = Arc::new(WriteOptions {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    });
    let ctl = hpa::Controller::new(registry, kubelets, opts)?;
    ctl.start(hpa::sync_period())?;
    let c = ctl.clone();
    tokio::spawn(run_controller(
        "horizontal-pod-autoscaler",
        ctl.queue.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await.map(|_| None) }
        },
        HPA_WORKERS,
    ));
    Ok(())
}

/// Starts the local-path provisioner (volumes under `storage_root`) after
/// making sure the default StorageClass exists.
pub async fn start_local_path(
    registry: Arc<Registry>,
    storage_root: std::path::PathBuf,
) -> anyhow::Result<()> {
    let opts = Arc::new(WriteOptions {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    });
    local_path::ensure_default_class(&registry, &opts).await?;
    let ctl = local_path::Controller::new(registry, opts, storage_root)?;
    ctl.start_informers()?;
    let c = ctl.clone();
    tokio::spawn(run_controller(
        "local-path",
        ctl.queue.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
        LOCAL_PATH_WORKERS,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_support::{eventually, registry};
    use kobune_apiserver::cache::EventType;
    use kobune_apiserver::registry::{DeleteOptions, Registry};
    use serde_json::{json, Value};
    use std::time::Duration;

    fn opts() -> WriteOptions {
        WriteOptions {
            field_manager: Some("test".into()),
            ..Default::default()
        }
    }

    async fn create_ns(reg: &Registry, name: &str) {
        let info = reg.resources.find("", "v1", "namespaces").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        reg.create(&info, None, obj, &opts()).await.unwrap();
        // Namespaced creates check the namespace in the cache.
        reg.cache.sync().await.unwrap();
    }

    /// Creates a ConfigMap, owned by the given (uid, blockOwnerDeletion) ConfigMaps; returns its uid.
    async fn create_cm(
        reg: &Registry,
        ns: &str,
        name: &str,
        owners: &[(&str, &str, bool)],
    ) -> String {
        let info = reg.resources.find("", "v1", "configmaps").unwrap();
        let refs: Vec<Value> = owners
            .iter()
            .map(|(n, u, b)| garbage_collector::owner_ref("v1", "ConfigMap", n, u, *b))
            .collect();
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
        if !refs.is_empty() {
            obj["metadata"]["ownerReferences"] = json!(refs);
        }
        let res = reg.create(&info, Some(ns), obj, &opts()).await.unwrap();
        res.object["metadata"]["uid"].as_str().unwrap().to_string()
    }

    fn cm(reg: &Registry, ns: &str, name: &str) -> Option<Arc<Value>> {
        reg.cache
            .get(&format!("/registry/core/configmaps/{ns}/{name}"))
    }

    async fn delete_cm(reg: &Registry, ns: &str, name: &str, propagation: Option<&str>) {
        let info = reg.resources.find("", "v1", "configmaps").unwrap();
        let del = DeleteOptions {
            propagation_policy: propagation.map(str::to_string),
            ..Default::default()
        };
        reg.delete(&info, Some(ns), name, &del).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controllers_against_a_real_registry() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path()).await;
        create_ns(&reg, "gc").await;
        // A dependent left over from before the collector started is collected too.
        let stale = create_cm(
            &reg,
            "gc",
            "stale",
            &[("never", "00000000-0000-0000-0000-000000000000", false)],
        )
        .await;
        assert!(!stale.is_empty());
        start(reg.clone()).await.unwrap();
        eventually("stale dependent collected", || {
            cm(&reg, "gc", "stale").is_none()
        })
        .await;

        // Background: owner deleted, dependents follow; other owners keep theirs.
        let owner = create_cm(&reg, "gc", "bg-owner", &[]).await;
        let keeper = create_cm(&reg, "gc", "keeper", &[]).await;
        create_cm(&reg, "gc", "bg-dep1", &[("bg-owner", &owner, false)]).await;
        create_cm(&reg, "gc", "bg-dep2", &[("bg-owner", &owner, true)]).await;
        create_cm(
            &reg,
            "gc",
            "bg-shared",
            &[("bg-owner", &owner, false), ("keeper", &keeper, false)],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            cm(&reg, "gc", "bg-dep1").is_some(),
            "dependents of a live owner stay"
        );
        delete_cm(&reg, "gc", "bg-owner", None).await;
        eventually("background dependents deleted", || {
            cm(&reg, "gc", "bg-dep1").is_none() && cm(&reg, "gc", "bg-dep2").is_none()
        })
        .await;
        eventually("dangling reference dropped", || {
            cm(&reg, "gc", "bg-shared").is_some_and(|o| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
            })
        })
        .await;

        // Foreground: dependents go first, then the owner.
        let owner = create_cm(&reg, "gc", "fg-owner", &[]).await;
        create_cm(&reg, "gc", "fg-dep1", &[("fg-owner", &owner, true)]).await;
        create_cm(&reg, "gc", "fg-dep2", &[("fg-owner", &owner, true)]).await;
        let mut sub = reg
            .cache
            .subscribe("/registry/core/configmaps/gc/fg-", None)
            .unwrap();
        delete_cm(&reg, "gc", "fg-owner", Some("Foreground")).await;
        let mut deleted = vec![];
        tokio::time::timeout(Duration::from_secs(15), async {
            while !deleted.iter().any(|k: &String| k.ends_with("/fg-owner")) {
                let ev = sub.live.recv().await.unwrap();
                if ev.kind == EventType::Deleted {
                    deleted.push(ev.key.clone());
                }
            }
        })
        .await
        .expect("foreground owner deleted");
        assert_eq!(deleted.len(), 3, "{deleted:?}");
        assert!(
            deleted[2].ends_with("/fg-owner"),
            "owner goes last: {deleted:?}"
        );

        // Orphan: the owner goes, dependents stay without the reference.
        let owner = create_cm(&reg, "gc", "or-owner", &[]).await;
        create_cm(&reg, "gc", "or-dep1", &[("or-owner", &owner, true)]).await;
        create_cm(&reg, "gc", "or-dep2", &[("or-owner", &owner, false)]).await;
        delete_cm(&reg, "gc", "or-owner", Some("Orphan")).await;
        eventually("orphaning owner deleted", || {
            cm(&reg, "gc", "or-owner").is_none()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for d in ["or-dep1", "or-dep2"] {
            let o = cm(&reg, "gc", d).expect("orphaned dependent stays");
            assert!(o["metadata"].get("ownerReferences").is_none(), "{o}");
        }

        // Namespace: content deleted, then the namespace itself.
        create_ns(&reg, "doomed").await;
        create_cm(&reg, "doomed", "a", &[]).await;
        create_cm(&reg, "doomed", "b", &[]).await;
        let secrets = reg.resources.find("", "v1", "secrets").unwrap();
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"x": "y"}});
        reg.create(&secrets, Some("doomed"), secret, &opts())
            .await
            .unwrap();
        let cms = reg.resources.find("", "v1", "configmaps").unwrap();
        let held = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
        reg.create(&cms, Some("doomed"), held, &opts())
            .await
            .unwrap();
        let nsinfo = reg.resources.find("", "v1", "namespaces").unwrap();
        let marked = reg
            .delete(&nsinfo, None, "doomed", &DeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(marked["status"]["phase"], "Terminating");
        // A finalizer holds content back: the namespace waits and says why.
        eventually("remaining content reported", || {
            let ns = reg.cache.get("/registry/core/namespaces/doomed").unwrap();
            let conds = ns["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conds.iter().any(|c| {
                c["type"] == "NamespaceFinalizersRemaining"
                    && c["status"] == "True"
                    && c["message"] == "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
            })
        })
        .await;
        assert_eq!(
            reg.cache.get("/registry/core/namespaces/doomed").unwrap()["status"]["phase"],
            "Terminating"
        );
        assert!(cm(&reg, "doomed", "a").is_none() && cm(&reg, "doomed", "held").is_some());
        let mut held = (*cm(&reg, "doomed", "held").unwrap()).clone();
        held["metadata"]["finalizers"] = json!([]);
        reg.update(&cms, Some("doomed"), "held", held, &opts(), None)
            .await
            .unwrap();
        eventually("namespace deleted", || {
            reg.cache.get("/registry/core/namespaces/doomed").is_none()
        })
        .await;
        assert!(namespace::content(&reg, "doomed").is_empty());
        assert!(
            cm(&reg, "gc", "keeper").is_some(),
            "other namespaces untouched"
        );
    }
}

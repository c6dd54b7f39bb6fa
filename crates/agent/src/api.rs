//! The few API calls simulated nodes make, behind [`NodeApi`], so the same
//! node logic ([`crate::start_simulated_with`]) runs inside `kobune server`
//! ([`LocalApi`], straight on the registry and its watch cache) and in a
//! separate `kobune agent` process ([`crate::remote::RemoteApi`], over HTTPS).

use crate::{find, FIELD_MANAGER, LEASE_NAMESPACE};
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::EventType;
use kobune_apiserver::registry::{DeleteOptions, ListOptions, PatchKind, WriteOptions};
use kobune_apiserver::Registry;
use kobune_controllers::runtime::Informer;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// Called for every change of a pod that may concern the agent: the pod's
/// key (`.../NAMESPACE/NAME`), its state, and whether it is gone.
pub type PodHandler = Arc<dyn Fn(&str, &Value, bool) + Send + Sync>;

/// The agent's local copy of pods, by key.
pub trait PodCache: Send + Sync {
    fn get(&self, key: &str) -> Option<Value>;
}

impl PodCache for Informer {
    fn get(&self, key: &str) -> Option<Value> {
        Informer::get(self, key).map(|v| (*v).clone())
    }
}

/// What a simulated node needs from the API server.
#[async_trait::async_trait]
pub trait NodeApi: Send + Sync + 'static {
    /// Every Node (to pick pod CIDRs no other node uses).
    async fn list_nodes(&self) -> anyhow::Result<Vec<Value>>;
    /// Creates the namespace unless it exists.
    async fn ensure_namespace(&self, name: &str) -> anyhow::Result<()>;
    /// Creates the Node unless one of that name exists; returns its uid.
    async fn register_node(&self, node: Value) -> anyhow::Result<Value>;
    /// Creates the node's Lease (an existing one is fine).
    async fn create_lease(&self, lease: Value) -> anyhow::Result<()>;
    /// Sets the Lease's renewTime; recreates the Lease if it was deleted.
    async fn renew_lease(&self, lease: &Value) -> anyhow::Result<()>;
    /// Strategic-merge patches a pod's status subresource.
    async fn patch_pod_status(&self, ns: &str, name: &str, status: &Value) -> anyhow::Result<()>;
    /// Deletes a pod at once (grace 0) if it still has `uid`; gone is fine.
    async fn delete_pod_now(&self, ns: &str, name: &str, uid: &str) -> anyhow::Result<()>;
    /// Starts following pods; `handler` sees every pod bound to one of
    /// `nodes` (and their removal). Returns once the first listing is in.
    async fn watch_pods(
        self: Arc<Self>,
        nodes: Arc<HashSet<String>>,
        handler: PodHandler,
    ) -> anyhow::Result<Arc<dyn PodCache>>;
}

/// [`NodeApi`] on the in-process registry.
pub struct LocalApi {
    registry: Arc<Registry>,
    opts: WriteOptions,
    nodes: Arc<ResourceInfo>,
    leases: Arc<ResourceInfo>,
    pods: Arc<ResourceInfo>,
    namespaces: Arc<ResourceInfo>,
}

impl LocalApi {
    pub fn new(registry: Arc<Registry>) -> anyhow::Result<LocalApi> {
        Ok(LocalApi {
            nodes: find(&registry, "", "v1", "nodes")?,
            leases: find(&registry, "coordination.k8s.io", "v1", "leases")?,
            pods: find(&registry, "", "v1", "pods")?,
            namespaces: find(&registry, "", "v1", "namespaces")?,
            opts: WriteOptions {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            registry,
        })
    }
}

#[async_trait::async_trait]
impl NodeApi for LocalApi {
    async fn list_nodes(&self) -> anyhow::Result<Vec<Value>> {
        let list = self
            .registry
            .list(&self.nodes, None, &ListOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("listing nodes: {e}"))?;
        Ok(list.items)
    }

    async fn ensure_namespace(&self, name: &str) -> anyhow::Result<()> {
        if self
            .registry
            .get_cached(&self.namespaces, None, name)
            .is_err()
        {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match self
                .registry
                .create(&self.namespaces, None, ns, &self.opts)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(anyhow::anyhow!("creating namespace {name}: {e}")),
            }
            self.registry
                .cache
                .sync()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    async fn register_node(&self, node: Value) -> anyhow::Result<Value> {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Ok(existing) = self.registry.get_cached(&self.nodes, None, &name) {
            return Ok(existing["metadata"]["uid"].clone());
        }
        match self
            .registry
            .create(&self.nodes, None, node, &self.opts)
            .await
        {
            Ok(r) => Ok(r.object["metadata"]["uid"].clone()),
            Err(e) if e.code == 409 => Ok(self
                .registry
                .get(&self.nodes, None, &name)
                .await
                .map(|n| n["metadata"]["uid"].clone())
                .unwrap_or(Value::Null)),
            Err(e) => Err(anyhow::anyhow!("registering node {name}: {e}")),
        }
    }

    async fn create_lease(&self, lease: Value) -> anyhow::Result<()> {
        match self
            .registry
            .create(&self.leases, Some(LEASE_NAMESPACE), lease, &self.opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(anyhow::anyhow!("creating lease: {e}")),
        }
    }

    async fn renew_lease(&self, lease: &Value) -> anyhow::Result<()> {
        let name = lease["metadata"]["name"].as_str().unwrap_or_default();
        let renew = json!({"spec": {"renewTime": lease["spec"]["renewTime"]}});
        match self
            .registry
            .patch(
                &self.leases,
                Some(LEASE_NAMESPACE),
                name,
                PatchKind::Merge,
                &renew,
                &self.opts,
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => self.create_lease(lease.clone()).await,
            Err(e) => Err(anyhow::anyhow!("renewing lease {name}: {e}")),
        }
    }

    async fn patch_pod_status(&self, ns: &str, name: &str, status: &Value) -> anyhow::Result<()> {
        self.registry
            .patch(
                &self.pods,
                Some(ns),
                name,
                PatchKind::Strategic,
                &json!({"status": status}),
                &self.opts,
                Some("status"),
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("updating status of pod {ns}/{name}: {e}"))
    }

    async fn delete_pod_now(&self, ns: &str, name: &str, uid: &str) -> anyhow::Result<()> {
        let del = DeleteOptions {
            grace_period_seconds: Some(0),
            precondition_uid: Some(uid.to_string()),
            ..Default::default()
        };
        match self.registry.delete(&self.pods, Some(ns), name, &del).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(anyhow::anyhow!("deleting pod {ns}/{name}: {e}")),
        }
    }

    async fn watch_pods(
        self: Arc<Self>,
        _nodes: Arc<HashSet<String>>,
        handler: PodHandler,
    ) -> anyhow::Result<Arc<dyn PodCache>> {
        let informer = Arc::new(Informer::new("/registry/core/pods/"));
        informer
            .start(&self.registry.cache, move |_, ev| {
                handler(&ev.key, &ev.object, ev.kind == EventType::Deleted)
            })
            .map_err(|e| anyhow::anyhow!("watching pods: {e}"))?;
        Ok(informer)
    }
}

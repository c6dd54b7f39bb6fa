//! The API calls nodes make, behind [`NodeApi`], so the same node logic
//! (simulated: [`crate::start_simulated_with`]; real:
//! [`crate::node::start_node_with`]) runs inside `kobune server`
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
/// The key of pod `ns/name` in a [`PodCache`] (its storage key).
pub fn pod_cache_key(ns: &str, name: &str) -> String {
    format!("/registry/core/pods/{ns}/{name}")
}

pub trait PodCache: Send + Sync {
    /// The pod at `key`, shared (not copied: workers read it every second).
    fn get(&self, key: &str) -> Option<Arc<Value>>;
}

impl PodCache for Informer {
    fn get(&self, key: &str) -> Option<Arc<Value>> {
        Informer::get(self, key)
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

    // What a real node (containerd) needs besides the above.

    /// Creates the Node, or updates the labels and status of an existing
    /// one (a restarted kubelet); returns its uid.
    async fn sync_node(&self, node: Value) -> anyhow::Result<Value>;
    /// The Node as last seen (a cache read where there is one).
    async fn get_node(&self, name: &str) -> Option<Value>;
    /// Merge-patches a Node's status subresource.
    async fn patch_node_status(&self, name: &str, status: &Value) -> anyhow::Result<()>;
    /// Merge-patches a pod's status subresource (lists replaced whole).
    async fn merge_pod_status(&self, ns: &str, name: &str, status: &Value) -> anyhow::Result<()>;
    /// Creates a core/v1 Event.
    async fn create_event(&self, ns: &str, event: Value) -> anyhow::Result<()>;
    /// Merge-patches an Event (count and lastTimestamp of repeats).
    async fn patch_event(&self, ns: &str, name: &str, patch: &Value) -> anyhow::Result<()>;
    /// `TokenRequest` for ServiceAccount `ns/account` (`request` as its
    /// body); returns the answered request, token in its status.
    async fn request_token(
        &self,
        ns: &str,
        account: &str,
        request: &Value,
    ) -> anyhow::Result<Value>;
    /// Starts whatever [`NodeApi::lookup`] needs (remote: watch caches);
    /// returns once they hold a first listing.
    async fn start_lookups(self: Arc<Self>) -> anyhow::Result<()>;
    /// A ConfigMap, Secret, ServiceAccount, PersistentVolumeClaim or
    /// (with `ns` empty) PersistentVolume from a local copy.
    fn lookup(&self, kind: Lookup, ns: &str, name: &str) -> Option<Value>;
    /// The resourceVersion of what [`NodeApi::lookup`] returns, without a copy.
    fn lookup_version(&self, kind: Lookup, ns: &str, name: &str) -> Option<String> {
        self.lookup(kind, ns, name)
            .as_ref()
            .and_then(resource_version)
    }
    /// Every object of a kind in namespace `ns`, from the same local copy.
    fn lookup_all(&self, kind: Lookup, ns: &str) -> Vec<Value>;
}

/// An object's `metadata.resourceVersion`.
pub fn resource_version(o: &Value) -> Option<String> {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The objects a real node reads by name while running pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    ConfigMap,
    Secret,
    ServiceAccount,
    PersistentVolumeClaim,
    PersistentVolume,
    Service,
}

impl Lookup {
    pub const ALL: [Lookup; 6] = [
        Lookup::ConfigMap,
        Lookup::Secret,
        Lookup::ServiceAccount,
        Lookup::PersistentVolumeClaim,
        Lookup::PersistentVolume,
        Lookup::Service,
    ];

    /// The resource's plural name (all are core/v1).
    pub fn plural(self) -> &'static str {
        match self {
            Lookup::ConfigMap => "configmaps",
            Lookup::Secret => "secrets",
            Lookup::ServiceAccount => "serviceaccounts",
            Lookup::PersistentVolumeClaim => "persistentvolumeclaims",
            Lookup::PersistentVolume => "persistentvolumes",
            Lookup::Service => "services",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Lookup::PersistentVolume
    }
}

/// `persistentVolumeClaim` volumes through [`NodeApi::lookup`]: the bound
/// PersistentVolume's hostPath or local path (the rule of
/// `kobune_controllers::local_path::claim_path`, for nodes without the
/// registry).
pub fn claim_resolver(api: Arc<dyn NodeApi>) -> crate::volumes::ClaimResolver {
    Arc::new(move |ns: &str, claim: &str| {
        let pvc = api
            .lookup(Lookup::PersistentVolumeClaim, ns, claim)
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let volume = pvc
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if volume.is_empty()
            || pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound")
        {
            return Err(format!("persistentvolumeclaim \"{claim}\" is not bound"));
        }
        let pv = api
            .lookup(Lookup::PersistentVolume, "", volume)
            .ok_or_else(|| format!("persistentvolume \"{volume}\" not found"))?;
        pv.pointer("/spec/hostPath/path")
            .or_else(|| pv.pointer("/spec/local/path"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("persistentvolume \"{volume}\" has no local or hostPath source"))
    })
}

/// [`NodeApi`] on the in-process registry.
pub struct LocalApi {
    registry: Arc<Registry>,
    opts: WriteOptions,
    nodes: Arc<ResourceInfo>,
    leases: Arc<ResourceInfo>,
    pods: Arc<ResourceInfo>,
    namespaces: Arc<ResourceInfo>,
    events: Arc<ResourceInfo>,
    /// In [`Lookup::ALL`]'s order.
    lookups: Vec<Arc<ResourceInfo>>,
}

impl LocalApi {
    pub fn new(registry: Arc<Registry>) -> anyhow::Result<LocalApi> {
        Ok(LocalApi {
            nodes: find(&registry, "", "v1", "nodes")?,
            leases: find(&registry, "coordination.k8s.io", "v1", "leases")?,
            pods: find(&registry, "", "v1", "pods")?,
            namespaces: find(&registry, "", "v1", "namespaces")?,
            events: find(&registry, "", "v1", "events")?,
            lookups: Lookup::ALL
                .iter()
                .map(|k| find(&registry, "", "v1", k.plural()))
                .collect::<anyhow::Result<_>>()?,
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
            // Gone, or replaced by a new pod of the same name.
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
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

    async fn sync_node(&self, node: Value) -> anyhow::Result<Value> {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let status = node["status"].clone();
        let labels = node["metadata"]["labels"].clone();
        match self
            .registry
            .create(&self.nodes, None, node, &self.opts)
            .await
        {
            Ok(r) => Ok(r.object["metadata"]["uid"].clone()),
            Err(e) if e.code == 409 => {
                let patch = json!({"metadata": {"labels": labels}});
                self.registry
                    .patch(
                        &self.nodes,
                        None,
                        &name,
                        PatchKind::Merge,
                        &patch,
                        &self.opts,
                        None,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("updating node {name}: {e}"))?;
                let r = self
                    .registry
                    .patch(
                        &self.nodes,
                        None,
                        &name,
                        PatchKind::Merge,
                        &json!({ "status": status }),
                        &self.opts,
                        Some("status"),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("updating status of node {name}: {e}"))?;
                Ok(r.object["metadata"]["uid"].clone())
            }
            Err(e) => anyhow::bail!("registering node {name}: {e}"),
        }
    }

    async fn get_node(&self, name: &str) -> Option<Value> {
        self.registry.get_cached(&self.nodes, None, name).ok()
    }

    async fn patch_node_status(&self, name: &str, status: &Value) -> anyhow::Result<()> {
        self.registry
            .patch(
                &self.nodes,
                None,
                name,
                PatchKind::Merge,
                &json!({ "status": status }),
                &self.opts,
                Some("status"),
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn merge_pod_status(&self, ns: &str, name: &str, status: &Value) -> anyhow::Result<()> {
        self.registry
            .patch(
                &self.pods,
                Some(ns),
                name,
                PatchKind::Merge,
                &json!({ "status": status }),
                &self.opts,
                Some("status"),
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn request_token(
        &self,
        ns: &str,
        account: &str,
        request: &Value,
    ) -> anyhow::Result<Value> {
        kobune_apiserver::serviceaccount::request_token(&self.registry, ns, account, request)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn create_event(&self, ns: &str, event: Value) -> anyhow::Result<()> {
        self.registry
            .create(&self.events, Some(ns), event, &self.opts)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn patch_event(&self, ns: &str, name: &str, patch: &Value) -> anyhow::Result<()> {
        self.registry
            .patch(
                &self.events,
                Some(ns),
                name,
                PatchKind::Merge,
                patch,
                &self.opts,
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn start_lookups(self: Arc<Self>) -> anyhow::Result<()> {
        Ok(())
    }

    fn lookup(&self, kind: Lookup, ns: &str, name: &str) -> Option<Value> {
        let i = Lookup::ALL.iter().position(|k| *k == kind)?;
        let ns = kind.namespaced().then_some(ns);
        self.registry.get_cached(&self.lookups[i], ns, name).ok()
    }

    fn lookup_version(&self, kind: Lookup, ns: &str, name: &str) -> Option<String> {
        let i = Lookup::ALL.iter().position(|k| *k == kind)?;
        let ns = kind.namespaced().then_some(ns);
        let o = self.registry.cache.get(&self.lookups[i].key(ns, name))?;
        resource_version(&o)
    }

    fn lookup_all(&self, kind: Lookup, ns: &str) -> Vec<Value> {
        let Some(i) = Lookup::ALL.iter().position(|k| *k == kind) else {
            return vec![];
        };
        let prefix = self.registry.prefix(&self.lookups[i], Some(ns));
        let (items, _) = self.registry.cache.list(&prefix, None);
        items.into_iter().map(|(_, v)| (*v).clone()).collect()
    }
}

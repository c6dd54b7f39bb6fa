//! Nodes run by `kobune agent` against a remote API server: [`RemoteApi`]
//! is [`NodeApi`] over HTTPS ([`crate::client`]). Pods (and, for a real
//! node, ConfigMaps, Secrets and ServiceAccounts) are followed with list +
//! watch (resuming at the last resourceVersion after errors, relisting on
//! 410 Gone), as client-go's reflector does.

use crate::api::{Lookup, NodeApi, PodCache, PodHandler};
use crate::client::{ApiClient, HttpError};
use crate::FIELD_MANAGER;
use hyper::Method;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{rv_of, CacheEvent, EventType};
use kobune_controllers::runtime::{Handler, Informer, Source};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON: &str = "application/json";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
/// Server-side end of each watch, so it is renewed regularly.
const WATCH_SECONDS: u64 = 300;

/// [`NodeApi`] over HTTPS to a remote API server.
pub struct RemoteApi {
    client: Arc<ApiClient>,
    /// Watch caches behind [`NodeApi::lookup`], in [`Lookup::ALL`]'s order.
    lookups: OnceLock<Vec<Arc<Objects>>>,
}

fn err(what: String, e: HttpError) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e}")
}

impl RemoteApi {
    pub fn new(client: Arc<ApiClient>) -> RemoteApi {
        RemoteApi {
            client,
            lookups: OnceLock::new(),
        }
    }

    /// Checks that the server answers and accepts the token.
    pub async fn check_access(&self) -> anyhow::Result<()> {
        let server = self.client.server();
        match self.client.get("/api/v1/nodes?limit=1").await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 401 => anyhow::bail!(
                "the server at {server} refused the token (401 Unauthorized): pass the server's token (its --token, or DATA_DIR/tls/token on the server)"
            ),
            Err(e) if e.code == 403 => anyhow::bail!(
                "the server at {server} accepted the token but does not allow it to manage nodes (403 Forbidden): {}",
                e.message
            ),
            Err(e) => anyhow::bail!("cannot use the server at {server}: {e}"),
        }
    }

    /// Every object of a list path, page by page; with the list's resourceVersion.
    async fn list_all(&self, path: &str) -> Result<(Vec<Value>, String), HttpError> {
        let mut items = vec![];
        let mut cont = String::new();
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let mut url = format!("{path}{sep}limit=500");
            if !cont.is_empty() {
                url.push_str(&format!("&continue={cont}"));
            }
            let page = self.client.get(&url).await?;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            let rv = page["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match page["metadata"]["continue"].as_str() {
                Some(c) if !c.is_empty() => cont = c.to_string(),
                _ => return Ok((items, rv)),
            }
        }
    }
}

#[async_trait::async_trait]
impl NodeApi for RemoteApi {
    async fn list_nodes(&self) -> anyhow::Result<Vec<Value>> {
        let (items, _) = self
            .list_all("/api/v1/nodes")
            .await
            .map_err(|e| err("listing nodes".into(), e))?;
        Ok(items)
    }

    async fn ensure_namespace(&self, name: &str) -> anyhow::Result<()> {
        match self.client.get(&format!("/api/v1/namespaces/{name}")).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(err(format!("reading namespace {name}"), e)),
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let path = format!("/api/v1/namespaces?fieldManager={FIELD_MANAGER}");
        match self.client.json(Method::POST, &path, JSON, Some(&ns)).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(err(format!("creating namespace {name}"), e)),
        }
    }

    async fn register_node(&self, node: Value) -> anyhow::Result<Value> {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = format!("/api/v1/nodes/{name}");
        match self.client.get(&path).await {
            Ok(existing) => return Ok(existing["metadata"]["uid"].clone()),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(err(format!("reading node {name}"), e)),
        }
        let create = format!("/api/v1/nodes?fieldManager={FIELD_MANAGER}");
        let created = match self
            .client
            .json(Method::POST, &create, JSON, Some(&node))
            .await
        {
            Ok(n) => n,
            Err(e) if e.code == 409 => self
                .client
                .get(&path)
                .await
                .map_err(|e| err(format!("reading node {name}"), e))?,
            Err(e) => return Err(err(format!("registering node {name}"), e)),
        };
        // Like a kubelet, report the status through the status subresource
        // in case the create did not keep it.
        if created.pointer("/status/conditions").is_none() {
            let status = format!("/api/v1/nodes/{name}/status?fieldManager={FIELD_MANAGER}");
            self.client
                .json(
                    Method::PATCH,
                    &status,
                    MERGE,
                    Some(&json!({"status": node["status"]})),
                )
                .await
                .map_err(|e| err(format!("reporting the status of node {name}"), e))?;
        }
        Ok(created["metadata"]["uid"].clone())
    }

    async fn create_lease(&self, lease: Value) -> anyhow::Result<()> {
        let path = format!("{LEASES}?fieldManager={FIELD_MANAGER}");
        match self
            .client
            .json(Method::POST, &path, JSON, Some(&lease))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(err("creating lease".into(), e)),
        }
    }

    async fn renew_lease(&self, lease: &Value) -> anyhow::Result<()> {
        let name = lease["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("{LEASES}/{name}?fieldManager={FIELD_MANAGER}");
        let renew = json!({"spec": {"renewTime": lease["spec"]["renewTime"]}});
        match self
            .client
            .json(Method::PATCH, &path, MERGE, Some(&renew))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => self.create_lease(lease.clone()).await,
            Err(e) => Err(err(format!("renewing lease {name}"), e)),
        }
    }

    async fn patch_pod_status(&self, ns: &str, name: &str, status: &Value) -> anyhow::Result<()> {
        let path =
            format!("/api/v1/namespaces/{ns}/pods/{name}/status?fieldManager={FIELD_MANAGER}");
        self.client
            .json(
                Method::PATCH,
                &path,
                STRATEGIC,
                Some(&json!({"status": status})),
            )
            .await
            .map(|_| ())
            .map_err(|e| err(format!("updating status of pod {ns}/{name}"), e))
    }

    async fn delete_pod_now(&self, ns: &str, name: &str, uid: &str) -> anyhow::Result<()> {
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                          "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        match self
            .client
            .json(Method::DELETE, &path, JSON, Some(&opts))
            .await
        {
            Ok(_) => Ok(()),
            // Gone, or replaced by a new pod of the same name.
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(err(format!("deleting pod {ns}/{name}"), e)),
        }
    }

    async fn watch_pods(
        self: Arc<Self>,
        nodes: Arc<HashSet<String>>,
        handler: PodHandler,
    ) -> anyhow::Result<Arc<dyn PodCache>> {
        let pods = Arc::new(RemotePods {
            nodes,
            handler,
            objects: Mutex::default(),
        });
        let sink: Arc<dyn Sink> = pods.clone();
        let rv = relist(&self, "/api/v1/pods", &sink)
            .await
            .map_err(|e| err("listing pods".into(), e))?;
        tokio::spawn(follow(self, "/api/v1/pods".into(), sink, rv));
        Ok(pods)
    }

    async fn sync_node(&self, node: Value) -> anyhow::Result<Value> {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let create = format!("/api/v1/nodes?fieldManager={FIELD_MANAGER}");
        let created = match self
            .client
            .json(Method::POST, &create, JSON, Some(&node))
            .await
        {
            Ok(n) => Some(n),
            Err(e) if e.code == 409 => None,
            Err(e) => return Err(err(format!("registering node {name}"), e)),
        };
        let path = format!("/api/v1/nodes/{name}?fieldManager={FIELD_MANAGER}");
        let current = match created {
            Some(n) => n,
            None => {
                let labels = json!({"metadata": {"labels": node["metadata"]["labels"]}});
                self.client
                    .json(Method::PATCH, &path, MERGE, Some(&labels))
                    .await
                    .map_err(|e| err(format!("updating node {name}"), e))?
            }
        };
        // As a kubelet does, the status goes through the status subresource.
        self.patch_node_status(&name, &node["status"]).await?;
        Ok(current["metadata"]["uid"].clone())
    }

    async fn get_node(&self, name: &str) -> Option<Value> {
        self.client.get(&format!("/api/v1/nodes/{name}")).await.ok()
    }

    async fn patch_node_status(&self, name: &str, status: &Value) -> anyhow::Result<()> {
        let path = format!("/api/v1/nodes/{name}/status?fieldManager={FIELD_MANAGER}");
        self.client
            .json(
                Method::PATCH,
                &path,
                MERGE,
                Some(&json!({ "status": status })),
            )
            .await
            .map(|_| ())
            .map_err(|e| err(format!("updating status of node {name}"), e))
    }

    async fn merge_pod_status(&self, ns: &str, name: &str, status: &Value) -> anyhow::Result<()> {
        let path =
            format!("/api/v1/namespaces/{ns}/pods/{name}/status?fieldManager={FIELD_MANAGER}");
        self.client
            .json(
                Method::PATCH,
                &path,
                MERGE,
                Some(&json!({ "status": status })),
            )
            .await
            .map(|_| ())
            .map_err(|e| err(format!("updating status of pod {ns}/{name}"), e))
    }

    async fn request_token(
        &self,
        ns: &str,
        account: &str,
        request: &Value,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{account}/token");
        self.client
            .json(Method::POST, &path, JSON, Some(request))
            .await
            .map_err(|e| {
                err(
                    format!("requesting a token for serviceaccount {ns}/{account}"),
                    e,
                )
            })
    }

    async fn create_event(&self, ns: &str, event: Value) -> anyhow::Result<()> {
        let path = format!("/api/v1/namespaces/{ns}/events?fieldManager={FIELD_MANAGER}");
        self.client
            .json(Method::POST, &path, JSON, Some(&event))
            .await
            .map(|_| ())
            .map_err(|e| err(format!("creating an event in {ns}"), e))
    }

    async fn patch_event(&self, ns: &str, name: &str, patch: &Value) -> anyhow::Result<()> {
        let path = format!("/api/v1/namespaces/{ns}/events/{name}?fieldManager={FIELD_MANAGER}");
        self.client
            .json(Method::PATCH, &path, MERGE, Some(patch))
            .await
            .map(|_| ())
            .map_err(|e| err(format!("updating event {ns}/{name}"), e))
    }

    async fn start_lookups(self: Arc<Self>) -> anyhow::Result<()> {
        if self.lookups.get().is_some() {
            return Ok(());
        }
        let mut caches = vec![];
        for kind in Lookup::ALL {
            let path = format!("/api/v1/{}", kind.plural());
            let objects = Arc::new(Objects::default());
            let sink: Arc<dyn Sink> = objects.clone();
            let rv = relist(&self, &path, &sink)
                .await
                .map_err(|e| err(format!("listing {}", kind.plural()), e))?;
            tokio::spawn(follow(self.clone(), path, sink, rv));
            caches.push(objects);
        }
        let _ = self.lookups.set(caches);
        Ok(())
    }

    fn lookup(&self, kind: Lookup, ns: &str, name: &str) -> Option<Value> {
        let i = Lookup::ALL.iter().position(|k| *k == kind)?;
        let cache = self.lookups.get()?.get(i)?;
        cache.lock().get(&format!("{ns}/{name}")).cloned()
    }

    fn lookup_version(&self, kind: Lookup, ns: &str, name: &str) -> Option<String> {
        let i = Lookup::ALL.iter().position(|k| *k == kind)?;
        let cache = self.lookups.get()?.get(i)?;
        let guard = cache.lock();
        crate::api::resource_version(guard.get(&format!("{ns}/{name}"))?)
    }

    fn lookup_all(&self, kind: Lookup, ns: &str) -> Vec<Value> {
        let Some(cache) = Lookup::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.lookups.get()?.get(i))
        else {
            return vec![];
        };
        let prefix = format!("{ns}/");
        cache
            .lock()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// What a list + watch feeds: each object seen, and whole listings.
trait Sink: Send + Sync {
    fn apply(&self, obj: &Value, gone: bool);
    fn replace(&self, items: &[Value]);
}

/// Every object of one resource, by `namespace/name`.
#[derive(Default)]
struct Objects {
    objects: Mutex<HashMap<String, Value>>,
}

impl Objects {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(obj: &Value) -> String {
        let m = &obj["metadata"];
        format!(
            "{}/{}",
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default()
        )
    }
}

impl Sink for Objects {
    fn apply(&self, obj: &Value, gone: bool) {
        let key = Objects::key(obj);
        if gone {
            self.lock().remove(&key);
        } else {
            self.lock().insert(key, obj.clone());
        }
    }

    fn replace(&self, items: &[Value]) {
        let fresh = items.iter().map(|o| (Objects::key(o), o.clone())).collect();
        *self.lock() = fresh;
    }
}

impl Sink for RemotePods {
    fn apply(&self, obj: &Value, gone: bool) {
        RemotePods::apply(self, obj, gone)
    }

    fn replace(&self, items: &[Value]) {
        RemotePods::replace(self, items)
    }
}

/// The pods bound to this agent's nodes, by key, as last seen.
struct RemotePods {
    nodes: Arc<HashSet<String>>,
    handler: PodHandler,
    objects: Mutex<HashMap<String, Arc<Value>>>,
}

impl PodCache for RemotePods {
    fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.lock().get(key).cloned()
    }
}

fn pod_key(pod: &Value) -> String {
    let m = &pod["metadata"];
    crate::api::pod_cache_key(
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default(),
    )
}

impl RemotePods {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Value>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ours(&self, pod: &Value) -> bool {
        pod.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| self.nodes.contains(n))
    }

    /// One watch event (or listed object): keep it if it is bound to one
    /// of our nodes, and tell the handler.
    fn apply(&self, pod: &Value, gone: bool) {
        let key = pod_key(pod);
        if !gone && self.ours(pod) {
            self.lock().insert(key.clone(), Arc::new(pod.clone()));
            (self.handler)(&key, pod, false);
        } else if self.lock().remove(&key).is_some() {
            (self.handler)(&key, pod, true);
        }
    }

    /// Replaces everything with a fresh listing; pods missing from it are gone.
    fn replace(&self, items: &[Value]) {
        let listed: HashSet<String> = items.iter().map(pod_key).collect();
        let vanished: Vec<(String, Arc<Value>)> = self
            .lock()
            .iter()
            .filter(|(k, _)| !listed.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, pod) in vanished {
            self.lock().remove(&key);
            (self.handler)(&key, &pod, true);
        }
        for pod in items {
            self.apply(pod, false);
        }
    }
}

/// An informer fed over HTTPS: each object becomes a [`CacheEvent`] as the
/// in-process cache would have sent it.
struct InformerSink {
    resource: ResourceInfo,
    informer: Arc<Informer>,
    handler: Handler,
}

impl InformerSink {
    fn event(&self, obj: &Value, gone: bool) -> CacheEvent {
        let m = &obj["metadata"];
        let ns = m["namespace"].as_str().filter(|n| !n.is_empty());
        let key = self
            .resource
            .key(ns, m["name"].as_str().unwrap_or_default());
        let prev = self.informer.get(&key);
        let kind = match (gone, &prev) {
            (true, _) => EventType::Deleted,
            (false, Some(_)) => EventType::Modified,
            (false, None) => EventType::Added,
        };
        CacheEvent {
            kind,
            revision: rv_of(obj),
            key,
            object: Arc::new(obj.clone()),
            prev,
        }
    }
}

impl Sink for InformerSink {
    fn apply(&self, obj: &Value, gone: bool) {
        let ev = self.event(obj, gone);
        self.informer.apply_event(&ev);
        (self.handler)(&self.informer, &ev);
    }

    fn replace(&self, items: &[Value]) {
        let listed = items
            .iter()
            .map(|o| {
                let mut ev = self.event(o, false);
                ev.kind = EventType::Added;
                Arc::new(ev)
            })
            .collect();
        for ev in self.informer.replace(listed) {
            (self.handler)(&self.informer, &ev);
        }
    }
}

#[async_trait::async_trait]
impl Source for RemoteApi {
    async fn follow(
        self: Arc<Self>,
        resource: &ResourceInfo,
        informer: &Arc<Informer>,
        handler: Handler,
    ) -> anyhow::Result<()> {
        let sink: Arc<dyn Sink> = Arc::new(InformerSink {
            resource: resource.clone(),
            informer: informer.clone(),
            handler,
        });
        let path = resource.list_path();
        let rv = relist(&self, &path, &sink)
            .await
            .map_err(|e| err(format!("listing {}", resource.plural), e))?;
        tokio::spawn(follow(self, path, sink, rv));
        Ok(())
    }
}

async fn relist(api: &RemoteApi, path: &str, sink: &Arc<dyn Sink>) -> Result<String, HttpError> {
    let (items, rv) = api.list_all(path).await?;
    sink.replace(&items);
    Ok(rv)
}

/// Watches `list_path` (e.g. `/api/v1/pods`) from `rv` for as long as the
/// process runs.
async fn follow(api: Arc<RemoteApi>, list_path: String, pods: Arc<dyn Sink>, mut rv: String) {
    let mut backoff = Duration::from_millis(500);
    let what = list_path.rsplit('/').next().unwrap_or_default().to_string();
    loop {
        let path = format!(
            "{list_path}?watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={rv}"
        );
        let mut must_relist = false;
        tracing::debug!("watching {list_path} from resourceVersion {rv}");
        match api.client.watch(&path).await {
            Err(e) => {
                tracing::warn!("watching {list_path}: {e}");
                must_relist = e.code == 410;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Ok(mut stream) => {
                backoff = Duration::from_millis(500);
                while let Some(ev) = stream.next().await {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::info!("watch of {list_path} ended: {e}");
                            break;
                        }
                    };
                    let obj = &ev["object"];
                    match ev["type"].as_str().unwrap_or_default() {
                        t @ ("ADDED" | "MODIFIED" | "DELETED") => {
                            if let Some(v) = obj["metadata"]["resourceVersion"].as_str() {
                                rv = v.to_string();
                            }
                            pods.apply(obj, t == "DELETED");
                        }
                        "BOOKMARK" => {
                            if let Some(v) = obj["metadata"]["resourceVersion"].as_str() {
                                rv = v.to_string();
                            }
                        }
                        _ => {
                            // ERROR: 410 Gone means our resourceVersion is too old.
                            must_relist = obj["code"] == 410;
                            tracing::debug!("watch of {list_path}: error {}", obj["message"]);
                            break;
                        }
                    }
                }
            }
        }
        if must_relist {
            tracing::info!("{what} watch expired (410 Gone); relisting {what}");
            match relist(&api, &list_path, &pods).await {
                Ok(v) => rv = v,
                Err(e) => {
                    tracing::warn!("relisting {list_path}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Connects to the server and runs `count` simulated nodes named
/// `{prefix}-{i}` there; returns their names once they are registered.
pub async fn run_simulated(
    client: Arc<ApiClient>,
    count: usize,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let api = Arc::new(RemoteApi::new(client));
    api.check_access().await?;
    crate::start_simulated_with(api, count, prefix).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": {"nodeName": node}})
    }

    #[test]
    fn object_caches_follow_events_and_relists() {
        let o = Objects::default();
        let cm = |ns: &str, name: &str, v: &str| json!({"metadata": {"namespace": ns, "name": name}, "data": {"k": v}});
        o.replace(&[cm("a", "x", "1"), cm("b", "x", "2")]);
        o.apply(&cm("a", "y", "3"), false);
        o.apply(&cm("a", "x", "4"), false);
        assert_eq!(o.lock().get("a/x").unwrap()["data"]["k"], "4");
        assert_eq!(o.lock().get("b/x").unwrap()["data"]["k"], "2");
        o.apply(&cm("b", "x", "2"), true);
        assert!(o.lock().get("b/x").is_none());
        // A relist drops what it does not hold.
        o.replace(&[cm("a", "y", "5")]);
        let keys: Vec<String> = o.lock().keys().cloned().collect();
        assert_eq!(keys, vec!["a/y".to_string()]);
    }

    #[test]
    fn keeps_only_pods_of_our_nodes_and_reports_removals() {
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let s = seen.clone();
        let pods = RemotePods {
            nodes: Arc::new(["a-0".to_string()].into_iter().collect()),
            handler: Arc::new(move |k: &str, _: &Value, gone: bool| {
                s.lock().unwrap().push((k.to_string(), gone))
            }),
            objects: Mutex::default(),
        };
        pods.replace(&[pod("d", "p1", "a-0"), pod("d", "p2", "other")]);
        assert!(pods.get("/registry/core/pods/d/p1").is_some());
        assert!(pods.get("/registry/core/pods/d/p2").is_none());
        pods.apply(&pod("d", "p2", "other"), true);
        pods.apply(&pod("d", "p3", "a-0"), false);
        // A relist without p1: it is reported gone.
        pods.replace(&[pod("d", "p3", "a-0")]);
        assert!(pods.get("/registry/core/pods/d/p1").is_none());
        pods.apply(&pod("d", "p3", "a-0"), true);
        assert!(pods.get("/registry/core/pods/d/p3").is_none());
        let seen = seen.lock().unwrap().clone();
        let k = |n: &str| format!("/registry/core/pods/d/{n}");
        assert_eq!(
            seen,
            vec![
                (k("p1"), false),
                (k("p3"), false),
                (k("p1"), true),
                (k("p3"), false),
                (k("p3"), true)
            ]
        );
    }

    #[test]
    fn informer_sink_gives_the_events_the_cache_would() {
        let seen: Arc<Mutex<Vec<(EventType, String, bool)>>> = Arc::default();
        let s = seen.clone();
        let nodes = kobune_controllers::runtime::builtin_resource("", "v1", "nodes").unwrap();
        let informer = Arc::new(Informer::new(nodes.key_prefix()));
        let sink = InformerSink {
            resource: nodes,
            informer: informer.clone(),
            handler: Arc::new(move |_, ev| {
                s.lock()
                    .unwrap()
                    .push((ev.kind, ev.key.clone(), ev.prev.is_some()))
            }),
        };
        let node =
            |name: &str, rv: &str| json!({"metadata": {"name": name, "resourceVersion": rv}});
        sink.replace(&[node("a", "1"), node("b", "2")]);
        sink.apply(&node("a", "3"), false);
        sink.apply(&node("c", "4"), false);
        sink.apply(&node("b", "5"), true);
        // A relist reports what vanished as deleted.
        sink.replace(&[node("c", "6")]);
        assert_eq!(informer.len(), 1);
        let c = informer.get("/registry/core/nodes/c").unwrap();
        assert_eq!(c["metadata"]["resourceVersion"], "6");
        let k = |n: &str| format!("/registry/core/nodes/{n}");
        use EventType::*;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (Added, k("a"), false),
                (Added, k("b"), false),
                (Modified, k("a"), true),
                (Added, k("c"), false),
                (Deleted, k("b"), true),
                (Deleted, k("a"), true),
                (Added, k("c"), true),
            ]
        );
    }
}

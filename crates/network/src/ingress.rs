//! The built-in Ingress controller: an HTTP and HTTPS reverse proxy inside
//! the server process, configured from Ingresses (class `kobune`, the
//! default class), and sending traffic straight to the ready endpoints of
//! the backend Services' EndpointSlices (as ingress-nginx does, not through
//! ClusterIPs).
//!
//! - [`routes`]: the routing table (hosts, wildcards, paths, default
//!   backends) and per-Ingress `kobune.io/` annotations.
//! - [`tls`]: serving certificates by SNI from `kubernetes.io/tls` Secrets.
//! - [`proxy`]: the listeners and request forwarding.
//!
//! Informers over Ingresses, Services, EndpointSlices and Secrets wake one
//! sync task (at once after a quiet spell, coalescing only bursts), which
//! rebuilds the routing and certificate tables, records a
//! Warning Event for backends without ready endpoints and keeps each
//! served Ingress's `status.loadBalancer` at the node's address.

pub mod h1;
pub mod proxy;
pub mod routes;
pub mod tls;

use crate::listeners::{InFlight, Listeners};
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::registry::WriteOptions;
use kobune_apiserver::Registry;
use kobune_controllers::runtime::Informer;
use routes::{Backend, PortRef, RouteTable};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The IngressClass this controller creates and serves.
pub const CLASS: &str = "kobune";
/// `spec.controller` of that class.
pub const CONTROLLER: &str = "kobune.io/ingress";
/// The component name on Events and the field manager of status writes.
pub const COMPONENT: &str = "kobune-ingress-controller";

/// Where to listen (a port of 0 turns that listener off), and how to find
/// the address written to `status.loadBalancer`.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// This machine's node: its InternalIP is the Ingresses' address.
    pub node_name: Option<String>,
    /// The address used when the node (or its InternalIP) is unknown.
    pub fallback_ip: String,
}

/// Why a backend cannot take traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable {
    pub reason: &'static str,
    pub message: String,
}

struct Infos {
    ingresses: Arc<ResourceInfo>,
    classes: Arc<ResourceInfo>,
    services: Arc<ResourceInfo>,
    secrets: Arc<ResourceInfo>,
    nodes: Arc<ResourceInfo>,
    events: Arc<ResourceInfo>,
}

/// What requests are served from, swapped whole on every sync: the routes
/// and each backend's ready endpoints (or why it has none).
#[derive(Default)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub upstreams: h1::FastMap<Backend, Result<Arc<Vec<SocketAddr>>, Unavailable>>,
}

/// The running controller; shared by the sync task and every connection.
pub struct Controller {
    registry: Arc<Registry>,
    cfg: Config,
    infos: Infos,
    ingresses: Arc<Informer>,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    secrets: Arc<Informer>,
    snapshot: RwLock<Arc<Snapshot>>,
    pub(crate) certs: Arc<tls::Resolver>,
    round_robin: Mutex<h1::FastMap<Backend, usize>>,
    warned: Mutex<HashSet<String>>,
    /// TLS Secret problems already logged (logged again once fixed and broken).
    tls_warned: Mutex<HashSet<String>>,
    wake: Arc<Notify>,
    pub(crate) client: proxy::Client,
    /// Idle upstream connections of the HTTP/1.1 fast path.
    pub(crate) pool: h1::Pool,
    /// Set once the server stops: no new connections, none kept alive.
    pub(crate) draining: watch::Sender<bool>,
    /// Client connections being served.
    pub(crate) in_flight: InFlight,
}

fn by_service(o: &Value) -> Vec<String> {
    let ns = o
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    o.pointer("/metadata/labels/kubernetes.io~1service-name")
        .and_then(Value::as_str)
        .map(|s| vec![format!("{ns}/{s}")])
        .unwrap_or_default()
}

fn find(reg: &Registry, group: &str, plural: &str) -> anyhow::Result<Arc<ResourceInfo>> {
    reg.resources
        .find(group, "v1", plural)
        .ok_or_else(|| anyhow::anyhow!("resource {plural}.{group} is not served"))
}

/// Whether this controller serves an Ingress: class `kobune`, or no class
/// at all (ours is the default class).
pub fn served(ing: &Value) -> bool {
    match ing
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
    {
        Some(c) => c == CLASS,
        None => match ing
            .pointer("/metadata/annotations/kubernetes.io~1ingress.class")
            .and_then(Value::as_str)
        {
            Some(c) => c == CLASS,
            None => true,
        },
    }
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Starts the controller and its listeners on the current runtime; returns
/// once the informers have synced and the first tables are built. A port
/// that cannot be bound is logged and recorded as a Warning Event on the
/// IngressClass; the rest keeps running.
pub async fn start(
    registry: Arc<Registry>,
    cfg: Config,
    listeners: &Listeners,
) -> anyhow::Result<Arc<Controller>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let infos = Infos {
        ingresses: find(&registry, "networking.k8s.io", "ingresses")?,
        classes: find(&registry, "networking.k8s.io", "ingressclasses")?,
        services: find(&registry, "", "services")?,
        secrets: find(&registry, "", "secrets")?,
        nodes: find(&registry, "", "nodes")?,
        events: find(&registry, "", "events")?,
    };
    let slices_info = find(&registry, "discovery.k8s.io", "endpointslices")?;
    let ctl = Arc::new(Controller {
        ingresses: Arc::new(Informer::new(infos.ingresses.key_prefix())),
        services: Arc::new(Informer::new(infos.services.key_prefix())),
        slices: Arc::new(Informer::new(slices_info.key_prefix()).with_index("service", by_service)),
        secrets: Arc::new(Informer::new(infos.secrets.key_prefix())),
        registry,
        cfg,
        infos,
        snapshot: RwLock::default(),
        certs: Arc::new(tls::Resolver::new()?),
        round_robin: Mutex::default(),
        warned: Mutex::default(),
        tls_warned: Mutex::default(),
        wake: Arc::new(Notify::new()),
        client: proxy::client(),
        pool: h1::Pool::default(),
        draining: watch::Sender::new(false),
        in_flight: InFlight::default(),
    });
    ctl.ensure_class().await;
    for inf in [&ctl.ingresses, &ctl.services, &ctl.slices, &ctl.secrets] {
        let wake = ctl.wake.clone();
        inf.start(&ctl.registry.cache, move |_, _| wake.notify_one())?;
    }
    ctl.sync().await;
    let c = ctl.clone();
    tokio::spawn(async move {
        let mut last: Option<std::time::Instant> = None;
        loop {
            c.wake.notified().await;
            // A change after a quiet spell is applied at once; one right
            // after a rebuild waits out the window, so a burst of changes
            // settles into one rebuild.
            let wait = crate::iptables::coalesce_wait(last, Duration::from_millis(20));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            c.sync().await;
            last = Some(std::time::Instant::now());
        }
    });
    for (addr, https) in [(ctl.cfg.http, false), (ctl.cfg.https, true)] {
        if addr.port() == 0 {
            continue;
        }
        let what = if https { "HTTPS" } else { "HTTP" };
        let listener = listeners
            .take(addr, socket2::Type::STREAM, false)
            .and_then(|s| tokio::net::TcpListener::from_std(s.into()));
        match listener {
            Ok(l) => {
                tracing::info!("ingress controller serving {what} on {addr}");
                tokio::spawn(proxy::serve(ctl.clone(), l, https));
            }
            Err(e) => {
                let msg = format!(
                    "cannot listen on {addr} for Ingress {what} traffic: {e}; the server runs on without it"
                );
                tracing::error!("{msg}");
                ctl.class_event("FailedToListen", &msg).await;
            }
        }
    }
    Ok(ctl)
}

impl Controller {
    /// Stops accepting connections and waits, at most `limit`, for those
    /// being served: each finishes its request in flight and is closed
    /// (idle ones at once). Connections that arrive meanwhile wait in the
    /// listener's queue for the next server if a keeper holds it.
    pub async fn drain(&self, limit: Duration) {
        self.draining.send_replace(true);
        if !self.in_flight.wait(limit).await {
            tracing::info!(
                "Ingress connections still open after {} s: closing them",
                limit.as_secs()
            );
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn opts() -> WriteOptions {
        WriteOptions {
            field_manager: Some(COMPONENT.into()),
            ..Default::default()
        }
    }

    /// Creates the `kobune` IngressClass (the default class) if missing.
    async fn ensure_class(&self) {
        let class = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {
                "name": CLASS,
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
            },
            "spec": {"controller": CONTROLLER},
        });
        match self
            .registry
            .create(&self.infos.classes, None, class, &Self::opts())
            .await
        {
            Ok(_) => tracing::info!("created IngressClass {CLASS}"),
            Err(e) if e.code == 409 => {}
            Err(e) => tracing::warn!("creating IngressClass {CLASS}: {e}"),
        }
    }

    async fn class_event(&self, reason: &str, message: &str) {
        let uid = self
            .registry
            .cache
            .get(&self.infos.classes.key(None, CLASS))
            .map(|c| meta(&c, "uid").to_string())
            .unwrap_or_default();
        let involved = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "name": CLASS, "uid": uid});
        self.event("default", CLASS, involved, "Warning", reason, message)
            .await;
    }

    async fn event(
        &self,
        ns: &str,
        name: &str,
        involved: Value,
        ty: &str,
        reason: &str,
        message: &str,
    ) {
        let now = kobune_apiserver::registry::now_rfc3339();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{nanos:x}"), "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": ty,
            "reportingComponent": COMPONENT,
            "reportingInstance": format!("{COMPONENT}-kobune"),
        });
        if let Err(e) = self
            .registry
            .create(&self.infos.events, Some(ns), ev, &Self::opts())
            .await
        {
            tracing::debug!("recording event {reason} failed: {e}");
        }
    }

    /// The current routes and upstreams.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The ready endpoints of a backend, sorted.
    pub fn endpoints(&self, b: &Backend) -> Result<Vec<SocketAddr>, Unavailable> {
        let svc = self
            .services
            .get(&self.infos.services.key(Some(&b.namespace), &b.service));
        resolve(svc.as_deref(), &self.slices, b)
    }

    /// Where round robin starts for the next request to `b`.
    pub(crate) fn next_index(&self, b: &Backend, n: usize) -> usize {
        let mut rr = self.round_robin.lock().unwrap_or_else(|p| p.into_inner());
        // The backend is copied into the map only the first time.
        let i = match rr.get_mut(b) {
            Some(i) => i,
            None => rr.entry(b.clone()).or_insert(0),
        };
        let out = *i % n.max(1);
        *i = i.wrapping_add(1);
        out
    }

    pub(crate) fn https_port(&self) -> u16 {
        self.cfg.https.port()
    }

    /// The address Ingresses report: the node's InternalIP.
    fn node_ip(&self) -> String {
        self.cfg
            .node_name
            .as_deref()
            .and_then(|n| self.registry.cache.get(&self.infos.nodes.key(None, n)))
            .and_then(|node| {
                node.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|a| a["type"] == "InternalIP")
                            .and_then(|a| a["address"].as_str())
                            .map(str::to_string)
                    })
            })
            .unwrap_or_else(|| self.cfg.fallback_ip.clone())
    }

    /// Rebuilds the tables from the informers, then records events and
    /// status.
    async fn sync(&self) {
        let mut ings: Vec<Arc<Value>> = self
            .ingresses
            .list()
            .into_iter()
            .map(|(_, v)| v)
            .filter(|i| served(i))
            .collect();
        ings.sort_by(|a, b| {
            meta(a, "creationTimestamp")
                .cmp(meta(b, "creationTimestamp"))
                .then_with(|| meta(a, "namespace").cmp(meta(b, "namespace")))
                .then_with(|| meta(a, "name").cmp(meta(b, "name")))
        });
        let table = RouteTable::build(&ings);
        let mut upstreams = h1::FastMap::default();
        for (b, _) in table.backends() {
            upstreams
                .entry(b)
                .or_insert_with_key(|b| self.endpoints(b).map(Arc::new));
        }
        self.certs.set(self.cert_table(&ings));
        let snap = Arc::new(Snapshot {
            routes: table,
            upstreams,
        });
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap.clone();
        let live: HashSet<SocketAddr> = snap
            .upstreams
            .values()
            .filter_map(|u| u.as_ref().ok())
            .flat_map(|e| e.iter().copied())
            .collect();
        self.pool.retain(&live);

        // Backends without endpoints: one Warning Event each time one
        // becomes unavailable.
        let mut missing: Vec<(String, Arc<routes::IngressInfo>, Unavailable)> = vec![];
        let mut seen = HashSet::new();
        for (b, info) in snap.routes.backends() {
            let key = format!("{}/{}|{b}", info.namespace, info.name);
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(Err(u)) = snap.upstreams.get(&b) {
                missing.push((key, info, u.clone()));
            }
        }
        let fresh: Vec<_> = {
            let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = missing
                .iter()
                .filter(|(k, _, _)| !warned.contains(k))
                .cloned()
                .collect();
            *warned = missing.iter().map(|(k, _, _)| k.clone()).collect();
            fresh
        };
        for (_, info, u) in fresh {
            let Some(ing) = self
                .ingresses
                .get(&self.infos.ingresses.key(Some(&info.namespace), &info.name))
            else {
                continue;
            };
            tracing::warn!("ingress {}/{}: {}", info.namespace, info.name, u.message);
            let involved = json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "namespace": info.namespace, "name": info.name, "uid": meta(&ing, "uid"),
                "resourceVersion": meta(&ing, "resourceVersion"),
            });
            self.event(
                &info.namespace,
                &info.name,
                involved,
                "Warning",
                u.reason,
                &u.message,
            )
            .await;
        }

        // Status: the node's address, written only when it differs.
        let want = json!([{"ip": self.node_ip()}]);
        for ing in &ings {
            if ing.pointer("/status/loadBalancer/ingress") == Some(&want)
                || ing.pointer("/metadata/deletionTimestamp").is_some()
            {
                continue;
            }
            let mut obj = (**ing).clone();
            obj["status"] = json!({"loadBalancer": {"ingress": want}});
            let (ns, name) = (meta(ing, "namespace"), meta(ing, "name"));
            if let Err(e) = self
                .registry
                .update(
                    &self.infos.ingresses,
                    Some(ns),
                    name,
                    obj,
                    &Self::opts(),
                    Some("status"),
                )
                .await
            {
                // A conflict means a newer version is on its way here.
                tracing::debug!("ingress {ns}/{name}: status update: {e}");
            }
        }
    }

    fn cert_table(&self, ings: &[Arc<Value>]) -> tls::CertTable {
        let mut t = tls::CertTable::default();
        let mut problems = HashSet::new();
        for ing in ings {
            let ns = meta(ing, "namespace");
            for entry in ing
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(secret_name) = entry.get("secretName").and_then(Value::as_str) else {
                    continue;
                };
                let hosts: Vec<String> = entry
                    .get("hosts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .collect();
                let loaded = self
                    .secrets
                    .get(&self.infos.secrets.key(Some(ns), secret_name))
                    .ok_or_else(|| "not found".to_string())
                    .and_then(|s| tls::from_secret(&s));
                match loaded {
                    Ok(ck) => {
                        let ck = Arc::new(ck);
                        for h in hosts {
                            t.entries.push((h, ck.clone()));
                        }
                    }
                    Err(e) => {
                        problems.insert(format!(
                            "ingress {ns}/{}: TLS secret {ns}/{secret_name} {e}; its hosts get the default certificate",
                            meta(ing, "name")
                        ));
                    }
                }
            }
        }
        let mut warned = self.tls_warned.lock().unwrap_or_else(|p| p.into_inner());
        for p in problems.difference(&warned) {
            tracing::warn!("{p}");
        }
        *warned = problems;
        t
    }
}

/// A backend's ready endpoints from its Service and the EndpointSlices
/// (indexed by `namespace/service`): the Service port (by number or name)
/// gives the port name, which picks each slice's port; endpoints whose
/// ready condition is false are left out.
fn resolve(
    svc: Option<&Value>,
    slices: &Informer,
    b: &Backend,
) -> Result<Vec<SocketAddr>, Unavailable> {
    let Some(svc) = svc else {
        return Err(Unavailable {
            reason: "ServiceNotFound",
            message: format!("service {}/{} not found", b.namespace, b.service),
        });
    };
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let port = ports.iter().find(|p| match &b.port {
        PortRef::Number(n) => p.get("port").and_then(Value::as_i64) == Some(*n),
        PortRef::Name(n) => p.get("name").and_then(Value::as_str) == Some(n.as_str()),
    });
    let Some(port) = port else {
        return Err(Unavailable {
            reason: "ServicePortNotFound",
            message: format!(
                "service {}/{} has no port {}",
                b.namespace, b.service, b.port
            ),
        });
    };
    let port_name = port.get("name").and_then(Value::as_str).unwrap_or_default();
    let mut out = vec![];
    let key = format!("{}/{}", b.namespace, b.service);
    for (_, slice) in slices.by_index("service", &key) {
        if !matches!(
            slice.get("addressType").and_then(Value::as_str),
            Some("IPv4" | "IPv6")
        ) {
            continue;
        }
        let Some(target) = slice
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or_default() == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in slice
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // A missing ready condition means ready (the API's rule).
            if ep.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let addr = ep
                .pointer("/addresses/0")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<IpAddr>().ok());
            if let Some(ip) = addr {
                out.push(SocketAddr::new(ip, target));
            }
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(Unavailable {
            reason: "NoReadyEndpoints",
            message: format!("no ready endpoints for service {b}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_selection() {
        assert!(served(&json!({"spec": {}})));
        assert!(served(&json!({"spec": {"ingressClassName": "kobune"}})));
        assert!(!served(&json!({"spec": {"ingressClassName": "nginx"}})));
        assert!(!served(
            &json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "nginx"}}, "spec": {}})
        ));
        assert_eq!(
            by_service(
                &json!({"metadata": {"namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}}})
            ),
            vec!["shop/web".to_string()]
        );
    }

    #[test]
    fn endpoints_by_port_number_and_name() {
        let slices = Informer::new("/s/").with_index("service", by_service);
        let svc = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "admin", "port": 9000}]}});
        let slice = |name: &str, ports: Value, eps: Value| {
            json!({"metadata": {"name": name, "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": ports, "endpoints": eps})
        };
        slices.upsert(
            "/s/shop/web-a",
            slice(
                "web-a",
                json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}]),
                json!([
                    {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
                    {"addresses": ["10.42.0.7"]},
                ]),
            ),
        );
        slices.upsert(
            "/s/shop/web-b",
            slice(
                "web-b",
                json!([{"name": "http", "port": 8081}]),
                json!([{"addresses": ["10.42.0.8"]}]),
            ),
        );
        let mut fqdn = slice(
            "web-c",
            json!([{"name": "http", "port": 1}]),
            json!([{"addresses": ["x.example"]}]),
        );
        fqdn["addressType"] = json!("FQDN");
        slices.upsert("/s/shop/web-c", fqdn);
        let b = |port: PortRef| Backend {
            namespace: "shop".into(),
            service: "web".into(),
            port,
        };
        let addrs = |v: Vec<SocketAddr>| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let http = resolve(Some(&svc), &slices, &b(PortRef::Number(80))).unwrap();
        assert_eq!(
            addrs(http),
            ["10.42.0.5:8080", "10.42.0.7:8080", "10.42.0.8:8081"]
        );
        let admin = resolve(Some(&svc), &slices, &b(PortRef::Name("admin".into()))).unwrap();
        assert_eq!(addrs(admin), ["10.42.0.5:9001", "10.42.0.7:9001"]);
        let e = resolve(Some(&svc), &slices, &b(PortRef::Number(81))).unwrap_err();
        assert_eq!(
            (e.reason, e.message.as_str()),
            ("ServicePortNotFound", "service shop/web has no port 81")
        );
        let e = resolve(None, &slices, &b(PortRef::Number(80))).unwrap_err();
        assert_eq!(e.message, "service shop/web not found");
        slices.remove("/s/shop/web-a");
        slices.remove("/s/shop/web-b");
        let e = resolve(Some(&svc), &slices, &b(PortRef::Number(80))).unwrap_err();
        assert_eq!(
            (e.reason, e.message.as_str()),
            (
                "NoReadyEndpoints",
                "no ready endpoints for service shop/web port 80"
            )
        );
    }
}

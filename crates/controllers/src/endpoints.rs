//! The EndpointSlice and Endpoints controllers, as upstream's: every Service
//! with a selector gets `discovery.k8s.io/v1` EndpointSlices (and the legacy
//! core/v1 Endpoints) listing the addresses of the pods it selects.
//!
//! [`desired_slices`] and [`desired_subsets`] compute what should exist from
//! a snapshot; [`plan`] compares that with what exists and returns only the
//! writes that change something, so steady state writes nothing.
//! [`Controller::sync`] carries a plan out and remembers its own writes until
//! the informers have seen them, so a quick second sync never acts on a stale
//! cache (no duplicate slices).

use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::at;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{rv_of, EventType};
use kobune_apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Upstream's default --max-endpoints-per-slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Index of slices: `namespace/service` of the managed slices.
pub const BY_SERVICE: &str = "service";
/// How long own writes are waited for before the informer is trusted anyway.
const PENDING_TTL: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Desired state

fn str_at<'v>(o: &'v Value, ptr: &str) -> Option<&'v str> {
    at(o, ptr).and_then(Value::as_str)
}

/// The selector of a Service that gets endpoints from this controller:
/// a non-empty `spec.selector`, and not an ExternalName service.
pub fn service_selector(svc: &Value) -> Option<&Map<String, Value>> {
    if str_at(svc, "/spec/type") == Some("ExternalName") {
        return None;
    }
    at(svc, "/spec/selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
}

fn selects(svc: &Value, pod: &Value) -> bool {
    let Some(sel) = service_selector(svc) else {
        return false;
    };
    let labels = at(pod, "/metadata/labels").and_then(Value::as_object);
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn headless(svc: &Value) -> bool {
    str_at(svc, "/spec/clusterIP") == Some("None")
}

fn publish_not_ready(svc: &Value) -> bool {
    at(svc, "/spec/publishNotReadyAddresses")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The pod's IPv4 address, if it has one.
pub fn pod_ipv4(pod: &Value) -> Option<&str> {
    let from_list = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .filter_map(|i| i.get("ip").and_then(Value::as_str))
                .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        });
    from_list.or_else(|| {
        str_at(pod, "/status/podIP").filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
    })
}

fn terminal(pod: &Value) -> bool {
    matches!(
        str_at(pod, "/status/phase"),
        Some("Succeeded") | Some("Failed")
    )
}

/// upstream's podutil.FindPort: the container port a service port targets
/// on this pod (named target ports are looked up per pod).
pub fn find_port(pod: &Value, service_port: &Value) -> Option<i64> {
    let protocol = str_at(service_port, "/protocol").unwrap_or("TCP");
    match service_port.get("targetPort") {
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .find(|p| {
                p.get("name").and_then(Value::as_str) == Some(name.as_str())
                    && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64)),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n > 0) => n.as_i64(),
        _ => service_port.get("port").and_then(Value::as_i64),
    }
}

fn service_ports(svc: &Value) -> Vec<Value> {
    at(svc, "/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The EndpointSlice ports of one pod (every field present, as upstream
/// serializes its pointers).
fn slice_ports(svc: &Value, pod: &Value) -> Vec<Value> {
    service_ports(svc)
        .iter()
        .filter_map(|sp| {
            let port = find_port(pod, sp)?;
            let mut p = json!({
                "name": str_at(sp, "/name").unwrap_or(""),
                "port": port,
                "protocol": str_at(sp, "/protocol").unwrap_or("TCP"),
            });
            if let Some(a) = sp.get("appProtocol") {
                p["appProtocol"] = a.clone();
            }
            Some(p)
        })
        .collect()
}

fn should_set_hostname(svc: &Value, pod: &Value) -> Option<String> {
    let host = str_at(pod, "/spec/hostname").filter(|h| !h.is_empty())?;
    (str_at(pod, "/spec/subdomain") == Some(name(svc)) && namespace(pod) == namespace(svc))
        .then(|| host.to_string())
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": namespace(pod), "name": name(pod), "uid": uid(pod)})
}

/// One EndpointSlice endpoint for a pod, conditions exactly as upstream:
/// serving = ready (or publishNotReadyAddresses), terminating = has a
/// deletionTimestamp, ready = serving and not terminating (always true with
/// publishNotReadyAddresses).
pub fn slice_endpoint(svc: &Value, pod: &Value, ip: &str, zone: Option<&str>) -> Value {
    let pnr = publish_not_ready(svc);
    let serving = pnr || pod_ready(pod);
    let terminating = deleting(pod);
    let ready = pnr || (serving && !terminating);
    let mut ep = json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    });
    if let Some(h) = should_set_hostname(svc, pod) {
        ep["hostname"] = json!(h);
    }
    ep["targetRef"] = target_ref(pod);
    if let Some(n) = str_at(pod, "/spec/nodeName").filter(|n| !n.is_empty()) {
        ep["nodeName"] = json!(n);
    }
    if let Some(z) = zone.filter(|z| !z.is_empty()) {
        ep["zone"] = json!(z);
    }
    ep
}

/// Endpoints grouped by their port list: (ports, endpoints) per group,
/// each group sorted by pod, split at [`MAX_ENDPOINTS_PER_SLICE`]. A pod
/// whose named target port resolves differently lands in another group,
/// so in another slice. No endpoints at all: one placeholder without
/// ports, as upstream keeps.
pub fn desired_slices(
    svc: &Value,
    pods: &[Arc<Value>],
    zone_of: &dyn Fn(&str) -> Option<String>,
) -> Vec<(Value, Vec<Value>)> {
    let mut groups: BTreeMap<String, (Value, Vec<(String, Value)>)> = BTreeMap::new();
    for pod in pods {
        if namespace(pod) != namespace(svc) || terminal(pod) || !selects(svc, pod) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let ports = slice_ports(svc, pod);
        // Headless services without ports list addresses alone; otherwise
        // a pod with none of the ports is left out, as upstream.
        if ports.is_empty() && !service_ports(svc).is_empty() {
            continue;
        }
        let node = str_at(pod, "/spec/nodeName").unwrap_or_default();
        let zone = if node.is_empty() { None } else { zone_of(node) };
        let ep = slice_endpoint(svc, pod, ip, zone.as_deref());
        let ports = Value::Array(ports);
        let entry = groups
            .entry(canonical(&ports))
            .or_insert_with(|| (ports, vec![]));
        entry.1.push((name(pod).to_string(), ep));
    }
    let mut out = vec![];
    for (_, (ports, mut eps)) in groups {
        eps.sort_by(|a, b| a.0.cmp(&b.0));
        let eps: Vec<Value> = eps.into_iter().map(|(_, e)| e).collect();
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            let ports = if ports.as_array().is_some_and(Vec::is_empty) {
                Value::Null
            } else {
                ports.clone()
            };
            out.push((ports, chunk.to_vec()));
        }
    }
    if out.is_empty() {
        out.push((Value::Null, vec![]));
    }
    out
}

/// The legacy Endpoints subsets: ready pods under `addresses`, the others
/// under `notReadyAddresses`; terminating pods left out unless
/// publishNotReadyAddresses; one subset per distinct port list.
pub fn desired_subsets(svc: &Value, pods: &[Arc<Value>]) -> Vec<Value> {
    let pnr = publish_not_ready(svc);
    // ports key -> (ports, ready, not ready)
    type Group = (Vec<Value>, Vec<Value>, Vec<Value>);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for pod in pods {
        if namespace(pod) != namespace(svc) || terminal(pod) || !selects(svc, pod) {
            continue;
        }
        if deleting(pod) && !pnr {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let mut ports: Vec<Value> = service_ports(svc)
            .iter()
            .filter_map(|sp| {
                let port = find_port(pod, sp)?;
                let mut p = json!({});
                if let Some(n) = str_at(sp, "/name").filter(|n| !n.is_empty()) {
                    p["name"] = json!(n);
                }
                p["port"] = json!(port);
                p["protocol"] = json!(str_at(sp, "/protocol").unwrap_or("TCP"));
                if let Some(a) = sp.get("appProtocol") {
                    p["appProtocol"] = a.clone();
                }
                Some(p)
            })
            .collect();
        if ports.is_empty() && !service_ports(svc).is_empty() {
            continue;
        }
        ports.sort_by_key(canonical);
        let mut addr = json!({"ip": ip});
        if let Some(h) = should_set_hostname(svc, pod) {
            addr["hostname"] = json!(h);
        }
        if let Some(n) = str_at(pod, "/spec/nodeName").filter(|n| !n.is_empty()) {
            addr["nodeName"] = json!(n);
        }
        addr["targetRef"] = target_ref(pod);
        let key = canonical(&Value::Array(ports.clone()));
        let g = groups.entry(key).or_insert_with(|| (ports, vec![], vec![]));
        if pnr || pod_ready(pod) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    let by_ip = |a: &Value, b: &Value| {
        let ip = |v: &Value| {
            v.get("ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
        };
        ip(a)
            .cmp(&ip(b))
            .then_with(|| canonical(a).cmp(&canonical(b)))
    };
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            let mut s = json!({});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            if !ports.is_empty() {
                s["ports"] = json!(ports);
            }
            s
        })
        .collect()
}

/// Labels of the slices: the service's own, plus service-name, managed-by
/// and the headless marker.
pub fn slice_labels(svc: &Value) -> Value {
    let mut labels = endpoints_labels(svc);
    labels[SERVICE_NAME_LABEL] = json!(name(svc));
    labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
    labels
}

fn endpoints_labels(svc: &Value) -> Value {
    let mut labels = Map::new();
    if let Some(l) = at(svc, "/metadata/labels").and_then(Value::as_object) {
        for (k, v) in l {
            if k != SERVICE_NAME_LABEL && k != MANAGED_BY_LABEL && k != HEADLESS_LABEL {
                labels.insert(k.clone(), v.clone());
            }
        }
    }
    if headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), json!(""));
    }
    Value::Object(labels)
}

fn service_owner_ref(svc: &Value) -> Value {
    controller_owner_ref("v1", "Service", svc)
}

fn slice_prefix(svc: &Value) -> String {
    // Leave room for the 5 random characters of generateName.
    let n: String = name(svc).chars().take(57).collect();
    format!("{n}-")
}

// ---------------------------------------------------------------------------
// Planning

/// The writes one sync of a Service needs.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Value>,
    pub update: Vec<Value>,
    pub delete: Vec<Arc<Value>>,
    /// The Endpoints to create (no current one) or to replace the current one with.
    pub endpoints: Option<Value>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.delete.is_empty()
            && self.endpoints.is_none()
    }
}

fn null_if_empty(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(v) => v.clone(),
    }
}

/// A slice as it should be, keeping an existing slice's metadata.
fn build_slice(svc: &Value, base: Option<&Value>, ports: &Value, endpoints: &[Value]) -> Value {
    let mut s = match base {
        Some(b) => b.clone(),
        None => json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"generateName": slice_prefix(svc), "namespace": namespace(svc)},
        }),
    };
    s["metadata"]["labels"] = slice_labels(svc);
    s["metadata"]["ownerReferences"] = json!([service_owner_ref(svc)]);
    s["addressType"] = json!("IPv4");
    s["endpoints"] = if endpoints.is_empty() {
        Value::Null
    } else {
        json!(endpoints)
    };
    s["ports"] = ports.clone();
    s
}

fn slice_matches(svc: &Value, slice: &Value, ports: &Value, endpoints: &[Value]) -> bool {
    let eps = if endpoints.is_empty() {
        Value::Null
    } else {
        json!(endpoints)
    };
    slice.get("addressType") == Some(&json!("IPv4"))
        && null_if_empty(slice.get("endpoints")) == eps
        && null_if_empty(slice.get("ports")) == *ports
        && at(slice, "/metadata/labels") == Some(&slice_labels(svc))
        && at(slice, "/metadata/ownerReferences") == Some(&json!([service_owner_ref(svc)]))
}

/// Whether a slice belongs to this Service (and not to an earlier one of
/// the same name).
fn owned_by(slice: &Value, svc: &Value) -> bool {
    controller_ref(slice).is_some_and(|r| r.get("uid").and_then(Value::as_str) == Some(uid(svc)))
}

/// Decides the writes for a Service with a selector, given the pods of its
/// namespace, the slices labelled as its managed ones and its Endpoints.
pub fn plan(
    svc: &Value,
    pods: &[Arc<Value>],
    slices: &[Arc<Value>],
    endpoints: Option<&Value>,
    zone_of: &dyn Fn(&str) -> Option<String>,
) -> Plan {
    let mut plan = Plan::default();
    // Existing slices by port list; slices of an earlier service go.
    let mut existing: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
    for s in slices {
        if owned_by(s, svc) {
            let key = canonical(&null_if_empty(s.get("ports")));
            existing.entry(key).or_default().push(s.clone());
        } else {
            plan.delete.push(s.clone());
        }
    }
    for v in existing.values_mut() {
        v.sort_by(|a, b| name(a).cmp(name(b)));
    }
    let mut unplaced = vec![];
    for (ports, eps) in desired_slices(svc, pods, zone_of) {
        let key = canonical(&ports);
        match existing.get_mut(&key).filter(|v| !v.is_empty()) {
            Some(v) => {
                let cur = v.remove(0);
                if !slice_matches(svc, &cur, &ports, &eps) {
                    plan.update.push(build_slice(svc, Some(&cur), &ports, &eps));
                }
            }
            None => unplaced.push((ports, eps)),
        }
    }
    // Reuse leftover slices before creating new ones (fewer writes).
    let mut leftover: Vec<Arc<Value>> = existing.into_values().flatten().collect();
    leftover.sort_by(|a, b| name(a).cmp(name(b)));
    let mut leftover = leftover.into_iter();
    for (ports, eps) in unplaced {
        match leftover.next() {
            Some(cur) => plan.update.push(build_slice(svc, Some(&cur), &ports, &eps)),
            None => plan.create.push(build_slice(svc, None, &ports, &eps)),
        }
    }
    plan.delete.extend(leftover);

    let subsets = desired_subsets(svc, pods);
    let labels = endpoints_labels(svc);
    let want_subsets = if subsets.is_empty() {
        Value::Null
    } else {
        json!(subsets)
    };
    match endpoints {
        Some(cur) => {
            let cur_labels = cur
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if null_if_empty(cur.get("subsets")) != want_subsets || cur_labels != labels {
                let mut e = cur.clone();
                e["metadata"]["labels"] = labels;
                match want_subsets {
                    Value::Null => {
                        if let Some(m) = e.as_object_mut() {
                            m.remove("subsets");
                        }
                    }
                    s => e["subsets"] = s,
                }
                plan.endpoints = Some(e);
            }
        }
        None => {
            let mut e = json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name(svc), "namespace": namespace(svc), "labels": labels},
            });
            if !want_subsets.is_null() {
                e["subsets"] = want_subsets;
            }
            plan.endpoints = Some(e);
        }
    }
    plan
}

// ---------------------------------------------------------------------------
// The controller

/// An own write: (object key, Some(resourceVersion) written | None deleted).
type Write = (String, Option<i64>);

/// Own writes not yet seen by the informers, per service key, with when
/// they were made.
#[derive(Default)]
struct Pending {
    inner: Mutex<HashMap<String, (Instant, Vec<Write>)>>,
}

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub svc_info: Arc<ResourceInfo>,
    pub slice_info: Arc<ResourceInfo>,
    pub ep_info: Arc<ResourceInfo>,
    pub services: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub slices: Arc<Informer>,
    pub endpoints: Arc<Informer>,
    pub nodes: Arc<Informer>,
    pub queue: WorkQueue,
    pending: Pending,
    /// Services whose Endpoints this controller wrote (deleted with them).
    managed: Mutex<HashSet<String>>,
}

fn index_service(o: &Value) -> Vec<String> {
    let labels = at(o, "/metadata/labels");
    let managed = labels
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(Value::as_str)
        == Some(MANAGED_BY);
    match labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .and_then(Value::as_str)
    {
        Some(svc) if managed => vec![format!("{}/{svc}", namespace(o))],
        _ => vec![],
    }
}

fn zone_label(o: &Value) -> Option<&str> {
    at(o, "/metadata/labels")
        .and_then(|l| l.get(ZONE_LABEL))
        .and_then(Value::as_str)
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, v: &str, p: &str| crate::runtime::served(&reg, g, v, p);
        let svc_info = find("", "v1", "services")?;
        let slice_info = find("discovery.k8s.io", "v1", "endpointslices")?;
        let ep_info = find("", "v1", "endpoints")?;
        let pod_info = find("", "v1", "pods")?;
        let node_info = find("", "v1", "nodes")?;
        let services =
            Informer::new(svc_info.key_prefix()).with_index(BY_NAMESPACE, index_namespace);
        let pods = Informer::new(pod_info.key_prefix()).with_index(BY_NAMESPACE, index_namespace);
        let slices = Informer::new(slice_info.key_prefix()).with_index(BY_SERVICE, index_service);
        let endpoints = Informer::new(ep_info.key_prefix());
        let nodes = Informer::new(node_info.key_prefix());
        Ok(Arc::new(Controller {
            reg,
            opts,
            svc_info,
            slice_info,
            ep_info,
            services: Arc::new(services),
            pods: Arc::new(pods),
            slices: Arc::new(slices),
            endpoints: Arc::new(endpoints),
            nodes: Arc::new(nodes),
            queue: WorkQueue::default(),
            pending: Pending::default(),
            managed: Mutex::default(),
        }))
    }

    /// Starts the informers (returns once synced).
    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.nodes.start(&self.reg.cache, move |_, ev| {
            let before = ev.prev.as_deref().and_then(zone_label);
            let now = if ev.kind == EventType::Deleted {
                None
            } else {
                zone_label(&ev.object)
            };
            if before != now {
                for (_, s) in c.services.list() {
                    c.queue.add(ns_key(&s));
                }
            }
        })?;
        let c = self.clone();
        self.pods.start(&self.reg.cache, move |_, ev| {
            for (_, s) in c.services.by_index(BY_NAMESPACE, namespace(&ev.object)) {
                if selects(&s, &ev.object) || ev.prev.as_deref().is_some_and(|p| selects(&s, p)) {
                    c.queue.add(ns_key(&s));
                }
            }
        })?;
        let c = self.clone();
        self.slices.start(&self.reg.cache, move |_, ev| {
            for k in index_service(&ev.object) {
                c.queue.add(k);
            }
        })?;
        let c = self.clone();
        self.endpoints.start(&self.reg.cache, move |_, ev| {
            let (ns, n) = (namespace(&ev.object), name(&ev.object));
            if c.services.get(&c.svc_info.key(Some(ns), n)).is_some() {
                c.queue.add(format!("{ns}/{n}"));
            }
        })?;
        let c = self.clone();
        self.services.start(&self.reg.cache, move |_, ev| {
            c.queue.add(ns_key(&ev.object))
        })?;
        Ok(())
    }

    fn zone_of(&self, node: &str) -> Option<String> {
        let key = format!("{}{node}", self.nodes.prefix());
        self.nodes
            .get(&key)
            .and_then(|n| zone_label(&n).map(str::to_string))
    }

    /// Whether the informers have caught up with this service's own writes.
    fn caught_up(&self, key: &str) -> bool {
        let mut p = self.pending.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some((at, writes)) = p.get(key) else {
            return true;
        };
        let seen = writes.iter().all(|(k, rv)| {
            let inf = if k.starts_with(self.slices.prefix()) {
                &self.slices
            } else {
                &self.endpoints
            };
            match (inf.get(k), rv) {
                (Some(o), Some(rv)) => rv_of(&o) >= *rv,
                (None, Some(_)) => false,
                (Some(_), None) => false,
                (None, None) => true,
            }
        });
        if seen || at.elapsed() > PENDING_TTL {
            p.remove(key);
            return true;
        }
        false
    }

    fn record(&self, key: &str, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let mut p = self.pending.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(key.to_string(), (Instant::now(), writes));
    }

    /// One reconcile of the Service `namespace/name`.
    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        if !self.caught_up(key) {
            // The informer events of our writes requeue this key; the delay
            // is only a safety net.
            return Ok(Some(Duration::from_millis(200)));
        }
        let Some(svc) = self.services.get(&self.svc_info.key(Some(ns), n)) else {
            // Slices go with their owner (garbage collector); Endpoints
            // have no owner reference, so they are deleted here.
            let ours = self
                .managed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            if ours && self.endpoints.get(&self.ep_info.key(Some(ns), n)).is_some() {
                match self
                    .reg
                    .delete(&self.ep_info, Some(ns), n, &DeleteOptions::default())
                    .await
                {
                    Err(e) if e.code != 404 => return Err(e.into()),
                    _ => {}
                }
            }
            return Ok(None);
        };
        if service_selector(&svc).is_none() || deleting(&svc) {
            return Ok(None);
        }
        let pods: Vec<Arc<Value>> = self.pods.objects_by_index(BY_NAMESPACE, ns);
        let slices: Vec<Arc<Value>> = self.slices.objects_by_index(BY_SERVICE, key);
        let ep_key = self.ep_info.key(Some(ns), n);
        let current_ep = self.endpoints.get(&ep_key);
        let plan = plan(
            &svc,
            &pods,
            &slices,
            current_ep.as_deref(),
            &|node: &str| self.zone_of(node),
        );
        if plan.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let mut writes = vec![];
        let mut result = Ok(());
        for s in &plan.delete {
            let del = DeleteOptions {
                precondition_uid: Some(uid(s).to_string()),
                ..Default::default()
            };
            match self
                .reg
                .delete(&self.slice_info, Some(ns), name(s), &del)
                .await
            {
                Ok(_) => writes.push((self.slice_info.key(Some(ns), name(s)), None)),
                Err(e) if e.code == 404 => {}
                Err(e) => result = Err(e),
            }
        }
        for s in plan.update {
            let sname = name(&s).to_string();
            match self
                .reg
                .update(&self.slice_info, Some(ns), &sname, s, &self.opts, None)
                .await
            {
                Ok(r) => writes.push((
                    self.slice_info.key(Some(ns), &sname),
                    Some(rv_of(&r.object)),
                )),
                Err(e) if e.code == 404 => {}
                Err(e) => result = Err(e),
            }
        }
        for s in plan.create {
            match self
                .reg
                .create(&self.slice_info, Some(ns), s, &self.opts)
                .await
            {
                Ok(r) => writes.push((
                    self.slice_info.key(Some(ns), name(&r.object)),
                    Some(rv_of(&r.object)),
                )),
                Err(e) => result = Err(e),
            }
        }
        if let Some(e) = plan.endpoints {
            self.managed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_string());
            let r = if current_ep.is_some() {
                self.reg
                    .update(&self.ep_info, Some(ns), n, e, &self.opts, None)
                    .await
            } else {
                self.reg
                    .create(&self.ep_info, Some(ns), e, &self.opts)
                    .await
            };
            match r {
                Ok(r) => writes.push((ep_key, Some(rv_of(&r.object)))),
                Err(e) if e.code == 404 => {}
                Err(e) => result = Err(e),
            }
        }
        tracing::debug!(service = %key, writes = writes.len(), elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "endpoints synced");
        self.record(key, writes);
        result?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_support::{eventually, registry};

    fn svc() -> Value {
        json!({"metadata": {"name": "web", "namespace": "d", "uid": "svc1", "labels": {"app": "web"}},
               "spec": {"selector": {"app": "web"}, "clusterIP": "10.43.0.10",
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                                  {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090}]}})
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, http_port: i64) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running"}});
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
            p["status"]["podIPs"] = json!([{"ip": ip}]);
        }
        if ready {
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        }
        Arc::new(p)
    }

    fn no_zone(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn conditions_follow_upstream() {
        let s = svc();
        let ready = slice_endpoint(
            &s,
            &pod("a", Some("10.42.0.2"), true, 8080),
            "10.42.0.2",
            None,
        );
        assert_eq!(
            ready["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(ready["nodeName"], "n1");
        assert_eq!(ready["targetRef"]["name"], "a");
        let mut term = (*pod("b", Some("10.42.0.3"), true, 8080)).clone();
        term["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let t = slice_endpoint(&s, &term, "10.42.0.3", Some("z1"));
        assert_eq!(
            t["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        assert_eq!(t["zone"], "z1");
        let not_ready = slice_endpoint(&s, &pod("c", Some("10.42.0.4"), false, 8080), "x", None);
        assert_eq!(
            not_ready["conditions"],
            json!({"ready": false, "serving": false, "terminating": false})
        );
        let mut pnr = svc();
        pnr["spec"]["publishNotReadyAddresses"] = json!(true);
        let p = slice_endpoint(&pnr, &term, "10.42.0.3", None);
        assert_eq!(
            p["conditions"],
            json!({"ready": true, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn named_ports_resolving_differently_split_slices() {
        let pods = vec![
            pod("a", Some("10.42.0.2"), true, 8080),
            pod("b", Some("10.42.0.3"), false, 8080),
            pod("c", Some("10.42.0.4"), true, 8081),
            pod("noip", None, true, 8080),
        ];
        let d = desired_slices(&svc(), &pods, &no_zone);
        assert_eq!(d.len(), 2, "{d:?}");
        let (ports, eps) = d
            .iter()
            .find(|(p, _)| p[0]["port"] == 8080)
            .unwrap()
            .clone();
        assert_eq!(
            ports,
            json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "metrics", "port": 9090, "protocol": "TCP"}])
        );
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["addresses"], json!(["10.42.0.2"]));
    }

    #[test]
    fn placeholder_without_endpoints_and_legacy_endpoints() {
        let d = desired_slices(&svc(), &[], &no_zone);
        assert_eq!(d, vec![(Value::Null, vec![])]);
        let pods = vec![
            pod("a", Some("10.42.0.9"), true, 8080),
            pod("b", Some("10.42.0.10"), false, 8080),
        ];
        let subsets = desired_subsets(&svc(), &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.42.0.9");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.42.0.10");
        assert_eq!(
            subsets[0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "metrics", "port": 9090, "protocol": "TCP"}])
        );
    }

    #[test]
    fn plan_writes_only_changes_and_replaces_foreign_slices() {
        let s = svc();
        let pods = vec![pod("a", Some("10.42.0.2"), true, 8080)];
        let first = plan(&s, &pods, &[], None, &no_zone);
        assert_eq!(first.create.len(), 1);
        assert!(first.endpoints.is_some());
        let mut created = first.create[0].clone();
        created["metadata"]["name"] = json!("web-abcde");
        created["metadata"]["uid"] = json!("s1");
        let created = Arc::new(created);
        let ep = first.endpoints.unwrap();
        let again = plan(
            &s,
            &pods,
            std::slice::from_ref(&created),
            Some(&ep),
            &no_zone,
        );
        assert!(again.is_empty(), "{again:?}");
        // A second ready pod: one update of the existing slice, no create.
        let pods2 = vec![pods[0].clone(), pod("b", Some("10.42.0.3"), true, 8080)];
        let p = plan(
            &s,
            &pods2,
            std::slice::from_ref(&created),
            Some(&ep),
            &no_zone,
        );
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert_eq!(p.update[0]["metadata"]["name"], "web-abcde");
        assert!(p.endpoints.is_some());
        // A slice owned by an earlier service of the same name goes.
        let mut old = (*created).clone();
        old["metadata"]["ownerReferences"][0]["uid"] = json!("old");
        old["metadata"]["name"] = json!("web-old");
        let p = plan(&s, &pods, &[created, Arc::new(old)], Some(&ep), &no_zone);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(name(&p.delete[0]), "web-old");
        assert!(p.update.is_empty() && p.create.is_empty());
    }

    #[test]
    fn selectorless_and_external_name_services_are_skipped() {
        let mut s = svc();
        s["spec"].as_object_mut().unwrap().remove("selector");
        assert!(service_selector(&s).is_none());
        let mut s = svc();
        s["spec"]["type"] = json!("ExternalName");
        assert!(service_selector(&s).is_none());
    }

    #[test]
    fn headless_without_ports_lists_addresses() {
        let mut s = svc();
        s["spec"]["clusterIP"] = json!("None");
        s["spec"].as_object_mut().unwrap().remove("ports");
        let d = desired_slices(&s, &[pod("a", Some("10.42.0.2"), true, 1)], &no_zone);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, Value::Null);
        assert_eq!(d[0].1.len(), 1);
        assert_eq!(slice_labels(&s)[HEADLESS_LABEL], "");
        let sub = desired_subsets(&s, &[pod("a", Some("10.42.0.2"), true, 1)]);
        assert!(sub[0].get("ports").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controller_against_a_real_registry() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path()).await;
        let opts = Arc::new(WriteOptions {
            field_manager: Some("test".into()),
            ..Default::default()
        });
        let ns_info = reg.resources.find("", "v1", "namespaces").unwrap();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "d"}});
        reg.create(&ns_info, None, ns, &opts).await.unwrap();
        reg.cache.sync().await.unwrap();
        let c = Controller::new(reg.clone(), opts.clone()).unwrap();
        c.start_informers().unwrap();
        let cc = c.clone();
        tokio::spawn(crate::runtime::run_controller(
            "endpointslice",
            c.queue.clone(),
            move |key: String| {
                let c = cc.clone();
                async move { c.sync(&key).await }
            },
            2,
        ));
        let pod_info = reg.resources.find("", "v1", "pods").unwrap();
        for (i, name) in ["a", "b"].iter().enumerate() {
            let p = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                         "ports": [{"name": "http", "containerPort": 8080}]}]}});
            let created = reg.create(&pod_info, Some("d"), p, &opts).await.unwrap();
            let mut p = created.object;
            let ip = format!("10.42.0.{}", i + 2);
            p["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": if i == 0 { "True" } else { "False" }}]});
            reg.update(&pod_info, Some("d"), name, p, &opts, Some("status"))
                .await
                .unwrap();
        }
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}});
        reg.create(&c.svc_info, Some("d"), svc, &opts)
            .await
            .unwrap();
        let listed = |ready: bool| {
            c.slices
                .by_index(BY_SERVICE, "d/web")
                .iter()
                .flat_map(|(_, s)| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == ready)
                .count()
        };
        eventually("one ready, one not", || {
            listed(true) == 1 && listed(false) == 1
        })
        .await;
        let ep_key = c.ep_info.key(Some("d"), "web");
        eventually("Endpoints", || {
            c.endpoints.get(&ep_key).is_some_and(|e| {
                e["subsets"][0]["addresses"][0]["ip"] == "10.42.0.2"
                    && e["subsets"][0]["notReadyAddresses"][0]["ip"] == "10.42.0.3"
                    && e["subsets"][0]["ports"] == json!([{"port": 8080, "protocol": "TCP"}])
            })
        })
        .await;
        // Nothing changes: nothing is written.
        let rvs = |c: &Controller| {
            let mut v: Vec<i64> = c
                .slices
                .by_index(BY_SERVICE, "d/web")
                .iter()
                .map(|(_, s)| rv_of(s))
                .collect();
            v.push(rv_of(&c.endpoints.get(&ep_key).unwrap()));
            v
        };
        let before = rvs(&c);
        c.queue.add("d/web");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rvs(&c), before);
        assert_eq!(c.slices.by_index(BY_SERVICE, "d/web").len(), 1);
        // The service goes: its Endpoints go too.
        reg.delete(&c.svc_info, Some("d"), "web", &DeleteOptions::default())
            .await
            .unwrap();
        eventually("Endpoints deleted", || c.endpoints.get(&ep_key).is_none()).await;
    }

    #[test]
    fn terminal_and_terminating_pods() {
        let mut done = (*pod("a", Some("10.42.0.2"), false, 8080)).clone();
        done["status"]["phase"] = json!("Succeeded");
        let mut term = (*pod("b", Some("10.42.0.3"), true, 8080)).clone();
        term["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let pods = vec![Arc::new(done), Arc::new(term)];
        let d = desired_slices(&svc(), &pods, &no_zone);
        assert_eq!(d[0].1.len(), 1, "terminating listed in slices");
        assert!(
            desired_subsets(&svc(), &pods).is_empty(),
            "not in Endpoints"
        );
    }
}

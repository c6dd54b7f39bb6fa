//! The resource metrics API (`metrics.k8s.io/v1beta1`, metrics-server's
//! role) and the custom metrics API (`custom.metrics.k8s.io/v1beta2`,
//! prometheus-adapter's role), served in-process.
//!
//! Resource metrics come from the node agents through
//! [`Kubelet::stats`](crate::kubelet::Kubelet::stats): a CPU rate over the
//! agent's last sampling window and the memory working set, per container.
//! Nodes that measure nothing (simulated ones) have no metrics.
//!
//! Custom metrics are pod metrics read from each pod's own Prometheus text
//! endpoint, chosen by the usual annotations (`prometheus.io/scrape:
//! "true"`, `prometheus.io/port`, `prometheus.io/path`, default
//! `/metrics`), scraped from this process at request time (results are
//! reused for [`SCRAPE_TTL`]). Series of one metric in one pod are summed.
//!
//! Object metrics (`namespaces/NS/services/NAME/METRIC`,
//! `.../deployments.apps/NAME/METRIC`, `namespaces/NS/metrics/METRIC` for
//! the namespace) are the sum over the running pods the object selects
//! (a Service's selector, a workload's `spec.selector`, every pod of the
//! namespace) — what prometheus-adapter's default
//! `sum(metric{namespace=..,service=..})` gives for pods scraped through
//! a Service.

use crate::kubelet::{Kubelets, NodeUsage, PodUsage};
use crate::registry::{ListOptions, Registry};
use crate::resources::Resources;
use chrono::{DateTime, SecondsFormat, Utc};
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::{ApiError, ResourceInfo};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const METRICS_GROUP: &str = "metrics.k8s.io";
pub const METRICS_VERSION: &str = "v1beta1";
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
pub const CUSTOM_VERSION: &str = "v1beta2";
/// How long one pod's scrape result is reused.
pub const SCRAPE_TTL: Duration = Duration::from_secs(5);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_SCRAPE_BYTES: usize = 4 << 20;

/// Whether `group` is one of the metrics groups this module serves.
pub fn serves(group: &str) -> bool {
    group == METRICS_GROUP || group == CUSTOM_GROUP
}

// ---------------------------------------------------------------- formats

/// Go's `time.Duration.String()` for a window (`10.002s`, `1m0.5s`).
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    let mins = nanos / 60_000_000_000;
    let rem = nanos % 60_000_000_000;
    let secs = rem / 1_000_000_000;
    let frac = rem % 1_000_000_000;
    let mut s = String::new();
    if mins >= 60 {
        s.push_str(&format!("{}h{}m", mins / 60, mins % 60));
    } else if mins > 0 {
        s.push_str(&format!("{mins}m"));
    }
    s.push_str(&secs.to_string());
    if frac > 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('s');
    s
}

/// CPU as metrics-server writes it: nanocores (`123456n`).
pub fn cpu_quantity(nanocores: u64) -> String {
    if nanocores == 0 {
        "0".into()
    } else {
        format!("{nanocores}n")
    }
}

/// Memory in `Ki` (bytes when not a whole number of KiB).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        "0".into()
    } else if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// A metric value as a Quantity in milli precision, as prometheus-adapter
/// writes it (`3`, `1500m`).
pub fn value_quantity(v: f64) -> String {
    let milli = (v * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

// ------------------------------------------------------ Prometheus text

/// One sample line of the Prometheus text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

fn parse_prom_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok(),
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

/// Parses one sample line (not a comment or blank line).
fn parse_prom_line(line: &str) -> Result<PromSample, String> {
    let mut chars = line.char_indices().peekable();
    let mut end = 0;
    while let Some(&(i, c)) = chars.peek() {
        if is_name_char(c, i == 0) {
            end = i + c.len_utf8();
            chars.next();
        } else {
            break;
        }
    }
    if end == 0 {
        return Err(format!("invalid metric name in {line:?}"));
    }
    let name = line[..end].to_string();
    let mut rest = &line[end..];
    let mut labels = vec![];
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r.trim_start();
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let lend = r
                .char_indices()
                .find(|&(i, c)| !is_name_char(c, i == 0))
                .map(|(i, _)| i)
                .unwrap_or(r.len());
            if lend == 0 {
                return Err(format!("invalid label name in {line:?}"));
            }
            let lname = r[..lend].to_string();
            r = r[lend..].trim_start();
            r = r
                .strip_prefix('=')
                .ok_or_else(|| format!("expected '=' in {line:?}"))?
                .trim_start();
            r = r
                .strip_prefix('"')
                .ok_or_else(|| format!("expected '\"' in {line:?}"))?;
            let mut value = String::new();
            let mut it = r.char_indices();
            let close = loop {
                match it.next() {
                    None => return Err(format!("unterminated label value in {line:?}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match it.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, c)) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err(format!("unterminated label value in {line:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((lname, value));
            r = r[close + 1..].trim_start();
            if let Some(after) = r.strip_prefix(',') {
                r = after.trim_start();
            } else if !r.starts_with('}') {
                return Err(format!("expected ',' or '}}' in {line:?}"));
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("expected a value after the name in {line:?}"));
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .and_then(parse_prom_value)
        .ok_or_else(|| format!("invalid value in {line:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp in {line:?}"))?;
    }
    if fields.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(PromSample {
        name,
        labels,
        value,
    })
}

/// Parses the Prometheus text exposition format (version 0.0.4): `#`
/// lines (HELP, TYPE, comments) and blank lines are skipped; a malformed
/// sample line fails the whole scrape, as Prometheus does.
pub fn parse_prometheus_text(text: &str) -> Result<Vec<PromSample>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_prom_line)
        .collect()
}

// ---------------------------------------------------------------- scraping

struct Scraped {
    at: Instant,
    when: DateTime<Utc>,
    result: Result<Arc<Vec<PromSample>>, String>,
}

fn scrape_cache() -> &'static Mutex<HashMap<String, Scraped>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Scraped>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Where a pod's metrics are, from its annotations and IP: (ip, port, path).
pub fn scrape_target(pod: &Value) -> Option<(String, u16, String)> {
    let ann = pod.pointer("/metadata/annotations")?;
    if ann["prometheus.io/scrape"].as_str() != Some("true") {
        return None;
    }
    let ip = pod.pointer("/status/podIP")?.as_str()?.to_string();
    let port = match ann["prometheus.io/port"].as_str() {
        Some(p) => p.parse::<u16>().ok()?,
        None => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find_map(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(80),
    };
    let path = ann["prometheus.io/path"]
        .as_str()
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/metrics")
        .to_string();
    Some((ip, port, path))
}

/// Splits an HTTP/1.x response into (status, body), decoding a chunked body.
fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("invalid HTTP status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[split + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = vec![];
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "invalid chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

async fn http_get(ip: &str, port: u16, path: &str) -> Result<String, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("Get \"http://{ip}:{port}{path}\": {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kobune-metrics\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = vec![];
        (&mut s)
            .take(MAX_SCRAPE_BYTES as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let (status, body) = parse_http_response(&raw)?;
        if status != 200 {
            return Err(format!(
                "server returned HTTP status {status} for http://{ip}:{port}{path}"
            ));
        }
        String::from_utf8(body).map_err(|_| "metrics are not UTF-8".to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("Get \"http://{ip}:{port}{path}\": timeout"))?
}

/// Scrapes a pod (or reuses a scrape younger than [`SCRAPE_TTL`]).
pub async fn scrape_pod(
    pod: &Value,
) -> Option<(DateTime<Utc>, Result<Arc<Vec<PromSample>>, String>)> {
    let (ip, port, path) = scrape_target(pod)?;
    let uid = pod.pointer("/metadata/uid")?.as_str()?.to_string();
    let key = format!("{uid}|{ip}:{port}{path}");
    if let Some(s) = scrape_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .filter(|s| s.at.elapsed() < SCRAPE_TTL)
    {
        return Some((s.when, s.result.clone()));
    }
    let when = Utc::now();
    let result = http_get(&ip, port, &path)
        .await
        .and_then(|t| parse_prometheus_text(&t))
        .map(Arc::new);
    let mut cache = scrape_cache().lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|_, s| s.at.elapsed() < SCRAPE_TTL * 4);
    cache.insert(
        key,
        Scraped {
            at: Instant::now(),
            when,
            result: result.clone(),
        },
    );
    Some((when, result))
}

/// Metric names seen in recent successful scrapes (for discovery).
fn known_custom_metrics() -> BTreeSet<String> {
    scrape_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter_map(|s| s.result.as_ref().ok())
        .flat_map(|v| v.iter().map(|s| s.name.clone()))
        .collect()
}

// ---------------------------------------------------------------- provider

/// One pod's value of a custom metric.
#[derive(Debug, Clone)]
pub struct PodMetricValue {
    pub pod: Value,
    pub value: f64,
    pub timestamp: DateTime<Utc>,
}

/// Reads metrics for the API and for the HPA controller.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub kubelets: Arc<Kubelets>,
}

impl Metrics {
    pub fn new(registry: Arc<Registry>, kubelets: Arc<Kubelets>) -> Self {
        Metrics { registry, kubelets }
    }

    fn info(&self, plural: &str) -> Result<Arc<kobune_apimachinery::ResourceInfo>, ApiError> {
        self.registry
            .resources
            .find("", "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
    }

    async fn node_stats(&self, node: &str) -> Option<NodeUsage> {
        self.kubelets.get(node)?.stats().await
    }

    /// Pods matching the selectors with their usage; pods without
    /// metrics (not running, on a node that measures nothing, or too new
    /// to have a rate) are left out.
    pub async fn pod_usages(
        &self,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Vec<(Value, PodUsage)>, ApiError> {
        let pods = self.registry.list(&*self.info("pods")?, ns, opts).await?;
        let mut by_node: HashMap<String, Option<NodeUsage>> = HashMap::new();
        let mut out = vec![];
        for pod in pods.items {
            if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
                continue;
            }
            let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
                continue;
            };
            if !by_node.contains_key(node) {
                let s = self.node_stats(node).await;
                by_node.insert(node.to_string(), s);
            }
            let uid = pod.pointer("/metadata/uid").and_then(Value::as_str);
            let usage = by_node[node]
                .as_ref()
                .and_then(|n| n.pods.iter().find(|p| Some(p.uid.as_str()) == uid))
                .filter(|p| !p.containers.is_empty())
                .cloned();
            if let Some(u) = usage {
                out.push((pod, u));
            }
        }
        Ok(out)
    }

    /// Nodes matching the label selector with their usage.
    pub async fn node_usages(
        &self,
        opts: &ListOptions,
    ) -> Result<Vec<(Value, NodeUsage)>, ApiError> {
        let nodes = self
            .registry
            .list(&*self.info("nodes")?, None, opts)
            .await?;
        let mut out = vec![];
        for node in nodes.items {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            if let Some(u) = self.node_stats(name).await {
                out.push((node, u));
            }
        }
        Ok(out)
    }

    /// A custom metric of the matching pods (running, annotated for
    /// scraping, exporting the metric); series matching `metric_selector`
    /// are summed per pod. Pods whose scrape fails are left out.
    pub async fn pod_custom_metric(
        &self,
        ns: &str,
        opts: &ListOptions,
        metric: &str,
        metric_selector: &Selector,
    ) -> Result<Vec<PodMetricValue>, ApiError> {
        let pods = self
            .registry
            .list(&*self.info("pods")?, Some(ns), opts)
            .await?;
        let running: Vec<Value> = pods
            .items
            .into_iter()
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
            .collect();
        // Scrape the pods concurrently: a slow one costs one timeout, not one each.
        let scrapes = futures::future::join_all(running.iter().map(scrape_pod)).await;
        let mut out = vec![];
        for (pod, scraped) in running.into_iter().zip(scrapes) {
            let Some((when, result)) = scraped else {
                continue;
            };
            let samples = match result {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(
                        pod = pod["metadata"]["name"].as_str().unwrap_or_default(),
                        "scraping metrics: {e}"
                    );
                    continue;
                }
            };
            let matching: Vec<f64> = samples
                .iter()
                .filter(|s| s.name == metric)
                .filter(|s| {
                    metric_selector.matches_with(&|k| {
                        s.labels
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.clone())
                    })
                })
                .map(|s| s.value)
                .collect();
            if matching.is_empty() {
                continue;
            }
            out.push(PodMetricValue {
                pod,
                value: matching.iter().sum(),
                timestamp: when,
            });
        }
        Ok(out)
    }

    /// An object's custom metric: the sum of what the running pods it
    /// selects export (see [`object_pod_selector`]). A Namespace names its
    /// own pods, so `name` is the namespace and `ns` is ignored.
    pub async fn object_custom_metric(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        metric: &str,
        metric_selector: &Selector,
    ) -> Result<ObjectMetricValue, ApiError> {
        let object = if is_namespace(info) {
            self.registry.get(info, None, name).await?
        } else {
            self.registry.get(info, Some(ns), name).await?
        };
        self.object_metric_of(info, ns, object, metric, metric_selector)
            .await
    }

    async fn object_metric_of(
        &self,
        info: &ResourceInfo,
        ns: &str,
        object: Value,
        metric: &str,
        metric_selector: &Selector,
    ) -> Result<ObjectMetricValue, ApiError> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let not_found = |why: &str| {
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the metric {metric} for {} {name}{why}",
                    resource_segment(info)
                ),
            )
        };
        let mut opts = ListOptions::default();
        let mut pods_ns = ns.to_string();
        if info.group.is_empty() && info.kind == "Pod" {
            opts.field_selector = Selector::parse_fields(&format!("metadata.name={name}"))
                .map_err(ApiError::bad_request)?;
        } else {
            if is_namespace(info) {
                pods_ns = name.clone();
            }
            match object_pod_selector(&info.kind, &object).map_err(ApiError::bad_request)? {
                Some(sel) => opts.label_selector = sel,
                None => return Err(not_found(": it selects no pods")),
            }
        }
        let values = self
            .pod_custom_metric(&pods_ns, &opts, metric, metric_selector)
            .await?;
        let Some(timestamp) = values.iter().map(|v| v.timestamp).max() else {
            return Err(not_found(""));
        };
        Ok(ObjectMetricValue {
            object,
            value: values.iter().map(|v| v.value).sum(),
            timestamp,
            pods: values.len(),
        })
    }
}

/// One object's value of a custom metric.
#[derive(Debug, Clone)]
pub struct ObjectMetricValue {
    pub object: Value,
    /// The sum over the pods that export the metric.
    pub value: f64,
    /// The newest of those pods' scrapes.
    pub timestamp: DateTime<Utc>,
    /// How many pods contributed.
    pub pods: usize,
}

fn is_namespace(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "Namespace"
}

/// The pods whose metrics make up an object's metric: every pod of a
/// Namespace, the pods a Service's `spec.selector` picks, or those of a
/// workload's `spec.selector` (a LabelSelector, or the string form some
/// custom resources keep). `None` when the object selects no pods (a
/// Service without a selector, an empty or missing selector).
pub fn object_pod_selector(kind: &str, object: &Value) -> Result<Option<Selector>, String> {
    if kind == "Namespace" {
        return Ok(Some(Selector::default()));
    }
    let sel = match (kind, object.pointer("/spec/selector")) {
        ("Service", Some(Value::Object(m))) => {
            Selector::from_label_selector(&json!({ "matchLabels": m }))?
        }
        ("Service", _) => return Ok(None),
        (_, Some(s @ Value::Object(_))) => Selector::from_label_selector(s)?,
        (_, Some(Value::String(s))) => Selector::parse_labels(s)?,
        _ => return Ok(None),
    };
    Ok((!sel.is_empty()).then_some(sel))
}

/// How the custom metrics API names a resource in paths: `services`,
/// `deployments.apps` (upstream's `GroupResource.String()`).
pub fn resource_segment(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.plural.clone()
    } else {
        format!("{}.{}", info.plural, info.group)
    }
}

/// The served resource a custom metrics path segment names (`services`,
/// `deployments.apps`), in its first served version.
pub fn resource_for_segment(resources: &Resources, segment: &str) -> Option<Arc<ResourceInfo>> {
    let (plural, group) = segment.split_once('.').unwrap_or((segment, ""));
    resources
        .all()
        .into_iter()
        .find(|r| r.plural == plural && r.group == group && r.stored)
}

// ---------------------------------------------------------------- documents

fn object_meta(obj: &Value, namespaced: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), obj["metadata"]["name"].clone());
    if namespaced {
        m.insert("namespace".into(), obj["metadata"]["namespace"].clone());
    }
    m.insert("creationTimestamp".into(), json!(rfc3339(Utc::now())));
    if let Some(l) = obj["metadata"].get("labels") {
        m.insert("labels".into(), l.clone());
    }
    Value::Object(m)
}

pub fn node_metrics(node: &Value, u: &NodeUsage) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": object_meta(node, false),
        "timestamp": rfc3339(u.timestamp),
        "window": go_duration(u.window),
        "usage": {"cpu": cpu_quantity(u.cpu_nanocores), "memory": memory_quantity(u.memory_working_set_bytes)},
    })
}

pub fn pod_metrics(pod: &Value, u: &PodUsage) -> Value {
    let containers: Vec<Value> = u
        .containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "usage": {
                "cpu": cpu_quantity(c.cpu_nanocores),
                "memory": memory_quantity(c.memory_working_set_bytes),
            }})
        })
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": object_meta(pod, true),
        "timestamp": rfc3339(u.timestamp),
        "window": go_duration(u.window),
        "containers": containers,
    })
}

/// A parsed selector as a `LabelSelector` object (`null` when empty).
fn selector_object(sel: &Selector) -> Value {
    use kobune_apimachinery::selectors::Requirement as R;
    if sel.is_empty() {
        return Value::Null;
    }
    let mut labels = Map::new();
    let mut exprs = vec![];
    for r in &sel.0 {
        match r {
            R::Equals(k, v) => {
                labels.insert(k.clone(), json!(v));
            }
            R::NotEquals(k, v) => exprs.push(json!({"key": k, "operator": "NotIn", "values": [v]})),
            R::In(k, vs) => exprs.push(json!({"key": k, "operator": "In", "values": vs})),
            R::NotIn(k, vs) => exprs.push(json!({"key": k, "operator": "NotIn", "values": vs})),
            R::Exists(k) => exprs.push(json!({"key": k, "operator": "Exists"})),
            R::DoesNotExist(k) => exprs.push(json!({"key": k, "operator": "DoesNotExist"})),
        }
    }
    let mut o = Map::new();
    if !labels.is_empty() {
        o.insert("matchLabels".into(), Value::Object(labels));
    }
    if !exprs.is_empty() {
        o.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(o)
}

fn metric_value(v: &PodMetricValue, metric: &str, selector: &Selector) -> Value {
    json!({
        "describedObject": {
            "kind": "Pod",
            "namespace": v.pod["metadata"]["namespace"],
            "name": v.pod["metadata"]["name"],
            "apiVersion": "/v1",
        },
        "metric": {"name": metric, "selector": selector_object(selector)},
        "timestamp": rfc3339(v.timestamp),
        "value": value_quantity(v.value),
    })
}

/// An object's MetricValue (`describedObject` names the object, the
/// API version as `group/version`, so `/v1` for the core group).
fn object_metric_value(
    info: &ResourceInfo,
    v: &ObjectMetricValue,
    metric: &str,
    selector: &Selector,
) -> Value {
    let mut described = json!({
        "kind": info.kind,
        "name": v.object["metadata"]["name"],
        "apiVersion": format!("{}/{}", info.group, info.version),
    });
    if !is_namespace(info) {
        described["namespace"] = v.object["metadata"]["namespace"].clone();
    }
    json!({
        "describedObject": described,
        "metric": {"name": metric, "selector": selector_object(selector)},
        "timestamp": rfc3339(v.timestamp),
        "value": value_quantity(v.value),
    })
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {}, "items": items})
}

// ---------------------------------------------------------------- discovery

fn metrics_resources() -> Vec<(&'static str, &'static str, &'static str, bool)> {
    vec![
        ("nodes", "node", "NodeMetrics", false),
        ("pods", "pod", "PodMetrics", true),
    ]
}

fn custom_resources() -> Vec<(String, bool)> {
    let mut out = vec![];
    for m in known_custom_metrics() {
        for r in OBJECT_RESOURCES {
            out.push((format!("{r}/{m}"), *r != "namespaces"));
        }
    }
    out
}

/// Resources whose custom metrics discovery lists (any namespaced
/// resource with a pod selector is served).
const OBJECT_RESOURCES: &[&str] = &[
    "pods",
    "services",
    "namespaces",
    "deployments.apps",
    "replicasets.apps",
    "statefulsets.apps",
];

/// Entries for the aggregated `/apis` discovery document.
pub fn aggregated_groups() -> Vec<Value> {
    let metrics: Vec<Value> = metrics_resources()
        .into_iter()
        .map(|(plural, singular, kind, namespaced)| {
            json!({
                "resource": plural,
                "responseKind": {"group": METRICS_GROUP, "version": METRICS_VERSION, "kind": kind},
                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": singular,
                "verbs": ["get", "list"],
            })
        })
        .collect();
    // Custom metrics are named `pods/<metric>`, which only the legacy
    // APIResourceList can express; aggregated discovery lists the group.
    let custom: Vec<Value> = vec![];
    vec![
        json!({"metadata": {"name": METRICS_GROUP, "creationTimestamp": null},
               "versions": [{"version": METRICS_VERSION, "resources": metrics, "freshness": "Current"}]}),
        json!({"metadata": {"name": CUSTOM_GROUP, "creationTimestamp": null},
               "versions": [{"version": CUSTOM_VERSION, "resources": custom, "freshness": "Current"}]}),
    ]
}

fn group_doc(group: &str, version: &str) -> Value {
    let v = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [v.clone()], "preferredVersion": v})
}

/// Entries for the legacy `APIGroupList`.
pub fn api_groups() -> Vec<Value> {
    vec![
        group_doc(METRICS_GROUP, METRICS_VERSION),
        group_doc(CUSTOM_GROUP, CUSTOM_VERSION),
    ]
}

fn api_resource_list(group: &str) -> Value {
    let items: Vec<Value> = if group == METRICS_GROUP {
        metrics_resources()
            .into_iter()
            .map(|(plural, singular, kind, namespaced)| {
                json!({"name": plural, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]})
            })
            .collect()
    } else {
        custom_resources()
            .into_iter()
            .map(|(name, namespaced)| {
                json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": "MetricValueList", "verbs": ["get"]})
            })
            .collect()
    };
    let version = if group == METRICS_GROUP {
        METRICS_VERSION
    } else {
        CUSTOM_VERSION
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": items})
}

// ---------------------------------------------------------------- serving

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn list_options(query: &HashMap<String, String>) -> Result<ListOptions, ApiError> {
    let label_selector = match query.get("labelSelector") {
        Some(s) => Selector::parse_labels(s).map_err(ApiError::bad_request)?,
        None => Selector::default(),
    };
    let field_selector = match query.get("fieldSelector") {
        Some(s) => Selector::parse_fields(s).map_err(ApiError::bad_request)?,
        None => Selector::default(),
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        ..Default::default()
    })
}

/// Serves a GET under `/apis/metrics.k8s.io` or `/apis/custom.metrics.k8s.io`
/// (`segs` is the whole path, split, starting with `apis`).
pub async fn serve(
    metrics: &Metrics,
    segs: &[&str],
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    match segs {
        ["apis", g] => {
            let mut d = if *g == METRICS_GROUP {
                group_doc(METRICS_GROUP, METRICS_VERSION)
            } else {
                group_doc(CUSTOM_GROUP, CUSTOM_VERSION)
            };
            d["kind"] = json!("APIGroup");
            d["apiVersion"] = json!("v1");
            Ok(d)
        }
        ["apis", METRICS_GROUP, METRICS_VERSION] => Ok(api_resource_list(METRICS_GROUP)),
        ["apis", CUSTOM_GROUP, CUSTOM_VERSION] => {
            // Fill the list of known metrics from the annotated pods.
            let opts = ListOptions::default();
            if let Ok(pods) = metrics
                .registry
                .list(&*metrics.info("pods")?, None, &opts)
                .await
            {
                let targets = pods.items.iter().filter(|p| scrape_target(p).is_some());
                futures::future::join_all(targets.map(scrape_pod)).await;
            }
            Ok(api_resource_list(CUSTOM_GROUP))
        }
        ["apis", METRICS_GROUP, METRICS_VERSION, rest @ ..] => {
            serve_resource_metrics(metrics, rest, query).await
        }
        ["apis", CUSTOM_GROUP, CUSTOM_VERSION, rest @ ..] => {
            serve_custom_metrics(metrics, rest, query).await
        }
        _ => Err(not_found_path()),
    }
}

async fn serve_resource_metrics(
    metrics: &Metrics,
    rest: &[&str],
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let mut opts = list_options(query)?;
    let av = "metrics.k8s.io/v1beta1";
    match rest {
        ["nodes"] => {
            let items = metrics.node_usages(&opts).await?;
            Ok(list(
                "NodeMetricsList",
                av,
                items.iter().map(|(n, u)| node_metrics(n, u)).collect(),
            ))
        }
        ["nodes", name] => {
            opts.field_selector = Selector::parse_fields(&format!("metadata.name={name}"))
                .map_err(ApiError::bad_request)?;
            let items = metrics.node_usages(&opts).await?;
            items
                .first()
                .map(|(n, u)| node_metrics(n, u))
                .ok_or_else(|| ApiError::not_found("nodes", METRICS_GROUP, name))
        }
        ["pods"] | ["namespaces", _, "pods"] => {
            let ns = match rest {
                ["namespaces", ns, _] => Some(*ns),
                _ => None,
            };
            let items = metrics.pod_usages(ns, &opts).await?;
            Ok(list(
                "PodMetricsList",
                av,
                items.iter().map(|(p, u)| pod_metrics(p, u)).collect(),
            ))
        }
        ["namespaces", ns, "pods", name] => {
            opts.field_selector = Selector::parse_fields(&format!("metadata.name={name}"))
                .map_err(ApiError::bad_request)?;
            let items = metrics.pod_usages(Some(ns), &opts).await?;
            items
                .first()
                .map(|(p, u)| pod_metrics(p, u))
                .ok_or_else(|| ApiError::not_found("pods", METRICS_GROUP, name))
        }
        _ => Err(not_found_path()),
    }
}

async fn serve_custom_metrics(
    metrics: &Metrics,
    rest: &[&str],
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let (ns, name, metric) = match rest {
        ["namespaces", ns, "pods", name, metric] => (*ns, *name, *metric),
        ["namespaces", ns, "metrics", metric] => {
            return serve_object_metrics(metrics, "namespaces", "", ns, metric, query).await
        }
        ["namespaces", ns, resource, name, metric] if *resource != "namespaces" => {
            return serve_object_metrics(metrics, resource, ns, name, metric, query).await
        }
        _ => return Err(not_found_path()),
    };
    let mut opts = list_options(query)?;
    if name != "*" {
        opts.field_selector = Selector::parse_fields(&format!("metadata.name={name}"))
            .map_err(ApiError::bad_request)?;
    }
    let msel = metric_selector(query)?;
    let values = metrics.pod_custom_metric(ns, &opts, metric, &msel).await?;
    if values.is_empty() {
        let what = if name == "*" {
            format!("the server could not find the metric {metric} for pods")
        } else {
            format!("the server could not find the metric {metric} for pods {name}")
        };
        return Err(ApiError::new(404, "NotFound", what));
    }
    Ok(list(
        "MetricValueList",
        "custom.metrics.k8s.io/v1beta2",
        values
            .iter()
            .map(|v| metric_value(v, metric, &msel))
            .collect(),
    ))
}

fn metric_selector(query: &HashMap<String, String>) -> Result<Selector, ApiError> {
    let text = query
        .get("metricLabelSelector")
        .map(String::as_str)
        .unwrap_or_default();
    Selector::parse_labels(text).map_err(ApiError::bad_request)
}

/// `namespaces/NS/RESOURCE/NAME|*/METRIC` and `namespaces/NS/metrics/METRIC`
/// (the namespace itself): each object's metric is the sum over the
/// running pods it selects; `*` lists every object (filtered by
/// `labelSelector`) that has a value.
async fn serve_object_metrics(
    metrics: &Metrics,
    resource: &str,
    ns: &str,
    name: &str,
    metric: &str,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let info = resource_for_segment(&metrics.registry.resources, resource)
        .filter(|i| is_namespace(i) || i.scope == kobune_apimachinery::Scope::Namespaced)
        .ok_or_else(not_found_path)?;
    let msel = metric_selector(query)?;
    let items = if name == "*" {
        let opts = list_options(query)?;
        let objects = metrics.registry.list(&info, Some(ns), &opts).await?;
        let mut out = vec![];
        for o in objects.items {
            match metrics.object_metric_of(&info, ns, o, metric, &msel).await {
                Ok(v) => out.push(object_metric_value(&info, &v, metric, &msel)),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the metric {metric} for {}",
                    resource_segment(&info)
                ),
            ));
        }
        out
    } else {
        let v = metrics
            .object_custom_metric(&info, ns, name, metric, &msel)
            .await?;
        vec![object_metric_value(&info, &v, metric, &msel)]
    };
    Ok(list(
        "MetricValueList",
        "custom.metrics.k8s.io/v1beta2",
        items,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_documents() {
        let groups = aggregated_groups();
        let names: Vec<&str> = groups
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [METRICS_GROUP, CUSTOM_GROUP]);
        let res = &groups[0]["versions"][0]["resources"];
        assert_eq!(res[0]["resource"], "nodes");
        assert_eq!(res[0]["scope"], "Cluster");
        assert_eq!(res[1]["responseKind"]["kind"], "PodMetrics");
        assert_eq!(res[1]["scope"], "Namespaced");
        let legacy = api_resource_list(METRICS_GROUP);
        assert_eq!(legacy["groupVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(legacy["resources"][1]["verbs"], json!(["get", "list"]));
        assert_eq!(
            api_groups()[1]["preferredVersion"]["groupVersion"],
            "custom.metrics.k8s.io/v1beta2"
        );
    }

    #[test]
    fn metric_documents() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}}});
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let u = PodUsage {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            timestamp: t,
            window: Duration::from_millis(10_500),
            containers: vec![crate::kubelet::ContainerUsage {
                name: "c".into(),
                cpu_nanocores: 250_000_000,
                memory_working_set_bytes: 2 << 20,
            }],
        };
        let m = pod_metrics(&pod, &u);
        assert_eq!(m["timestamp"], "2026-01-02T03:04:05Z");
        assert_eq!(m["window"], "10.5s");
        assert_eq!(m["metadata"]["labels"]["app"], "a");
        assert_eq!(
            m["containers"][0]["usage"],
            json!({"cpu": "250000000n", "memory": "2048Ki"})
        );
        let v = PodMetricValue {
            pod,
            value: 2.5,
            timestamp: t,
        };
        let sel = Selector::parse_labels("pool=main,zone!=b").unwrap();
        let doc = metric_value(&v, "m", &sel);
        assert_eq!(doc["value"], "2500m");
        assert_eq!(
            doc["metric"]["selector"],
            json!({"matchLabels": {"pool": "main"}, "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]})
        );
        assert_eq!(
            metric_value(&v, "m", &Selector::default())["metric"]["selector"],
            Value::Null
        );
    }

    #[test]
    fn objects_select_their_pods() {
        let svc = json!({"spec": {"selector": {"app": "web"}}});
        let sel = object_pod_selector("Service", &svc).unwrap().unwrap();
        assert_eq!(sel.to_string_form(), "app=web");
        assert_eq!(
            object_pod_selector("Service", &json!({"spec": {}})).unwrap(),
            None
        );
        assert_eq!(
            object_pod_selector("Service", &json!({"spec": {"selector": {}}})).unwrap(),
            None
        );
        let deploy = json!({"spec": {"selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}}});
        let sel = object_pod_selector("Deployment", &deploy).unwrap().unwrap();
        assert!(sel.matches_with(&|k| match k {
            "app" => Some("web".into()),
            "tier" => Some("a".into()),
            _ => None,
        }));
        assert!(!sel.matches_with(&|k| (k == "app").then(|| "web".into())));
        let cr = json!({"spec": {"selector": "app=web"}});
        assert!(object_pod_selector("Widget", &cr).unwrap().is_some());
        assert_eq!(object_pod_selector("ConfigMap", &json!({})).unwrap(), None);
        assert_eq!(
            object_pod_selector("Namespace", &json!({})).unwrap(),
            Some(Selector::default())
        );
        let bad =
            json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}});
        assert!(object_pod_selector("Deployment", &bad).is_err());
    }

    #[test]
    fn object_paths_and_documents() {
        let resources = Resources::new();
        let svc = resource_for_segment(&resources, "services").unwrap();
        assert_eq!((svc.kind.as_str(), svc.group.as_str()), ("Service", ""));
        let d = resource_for_segment(&resources, "deployments.apps").unwrap();
        assert_eq!((d.kind.as_str(), d.version.as_str()), ("Deployment", "v1"));
        assert_eq!(resource_segment(&d), "deployments.apps");
        assert_eq!(resource_segment(&svc), "services");
        assert!(resource_for_segment(&resources, "deployments").is_none());
        assert!(resource_for_segment(&resources, "nosuch.apps").is_none());

        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = ObjectMetricValue {
            object: json!({"metadata": {"name": "web", "namespace": "ns"}}),
            value: 7.5,
            timestamp: t,
            pods: 3,
        };
        let doc = object_metric_value(&d, &v, "busy", &Selector::default());
        assert_eq!(
            doc["describedObject"],
            json!({"kind": "Deployment", "namespace": "ns", "name": "web", "apiVersion": "apps/v1"})
        );
        assert_eq!(doc["value"], "7500m");
        assert_eq!(doc["timestamp"], "2026-01-02T03:04:05Z");
        let doc = object_metric_value(&svc, &v, "busy", &Selector::default());
        assert_eq!(doc["describedObject"]["apiVersion"], "/v1");
        let ns = resource_for_segment(&resources, "namespaces").unwrap();
        let nsv = ObjectMetricValue {
            object: json!({"metadata": {"name": "ns"}}),
            ..v
        };
        let doc = object_metric_value(&ns, &nsv, "busy", &Selector::default());
        assert_eq!(
            doc["describedObject"],
            json!({"kind": "Namespace", "name": "ns", "apiVersion": "/v1"})
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(10_250)), "10.25s");
        assert_eq!(go_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_quantity(123_456), "123456n");
        assert_eq!(memory_quantity(4096 * 1024), "4096Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(value_quantity(3.0), "3");
        assert_eq!(value_quantity(1.5), "1500m");
        assert_eq!(value_quantity(0.0), "0");
    }

    #[test]
    fn prometheus_text() {
        let t = r#"# HELP webapp_idle_workers Idle workers.
# TYPE webapp_idle_workers gauge
webapp_idle_workers 7
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="get", code="400",} 3
escaped{path="C:\\dir\"x\"\n"} -1.5e3
special{} +Inf

"#;
        let s = parse_prometheus_text(t).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "webapp_idle_workers");
        assert_eq!(s[0].value, 7.0);
        assert!(s[0].labels.is_empty());
        assert_eq!(
            s[1].labels,
            vec![
                ("method".to_string(), "post".to_string()),
                ("code".to_string(), "200".to_string())
            ]
        );
        assert_eq!(s[1].value, 1027.0);
        assert_eq!(s[2].labels[1], ("code".to_string(), "400".to_string()));
        assert_eq!(s[3].labels[0].1, "C:\\dir\"x\"\n");
        assert_eq!(s[3].value, -1500.0);
        assert!(s[4].value.is_infinite());
        assert!(parse_prometheus_text("bad{x=\"1\" 2\n").is_err());
        assert!(parse_prometheus_text("1abc 2\n").is_err());
        assert!(parse_prometheus_text("abc notanumber\n").is_err());
        assert!(parse_prometheus_text("abc\n").is_err());
    }

    #[test]
    fn http_responses() {
        let (s, b) =
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abc"[..]));
        let (s, b) = parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abcde"[..]));
        assert_eq!(
            parse_http_response(b"HTTP/1.0 404 Not Found\r\n\r\n")
                .unwrap()
                .0,
            404
        );
        assert!(parse_http_response(b"HTTP/1.0 200").is_err());
    }

    #[test]
    fn scrape_targets_follow_annotations() {
        let mut pod = json!({
            "metadata": {"uid": "u", "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 9000}]}]},
            "status": {"podIP": "10.42.0.5"}
        });
        assert_eq!(
            scrape_target(&pod),
            Some(("10.42.0.5".into(), 8080, "/metrics".into()))
        );
        pod["metadata"]["annotations"]["prometheus.io/path"] = json!("/stats");
        pod["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("prometheus.io/port");
        assert_eq!(
            scrape_target(&pod),
            Some(("10.42.0.5".into(), 9000, "/stats".into()))
        );
        pod["metadata"]["annotations"]["prometheus.io/scrape"] = json!("false");
        assert_eq!(scrape_target(&pod), None);
    }
}

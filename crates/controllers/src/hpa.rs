//! The HorizontalPodAutoscaler controller (autoscaling/v2), as upstream's:
//! every sync period each HPA reads its target through the scale
//! subresource's view (replicas and selector of a Deployment, ReplicaSet,
//! StatefulSet or scalable custom resource), computes a replica count per
//! metric with upstream's replica calculator (tolerance, missing metrics,
//! not-ready pods), takes the largest, applies stabilization windows and
//! scaling policies (`spec.behavior`) and min/max, rescales, and writes
//! status (current metrics, conditions) and events.
//!
//! Metric sources: Resource and ContainerResource (metrics.k8s.io), Pods
//! and Object (custom.metrics.k8s.io: an object's value is the sum over
//! the pods it selects; Value or AverageValue targets). External metrics
//! are not served: such a metric fails with FailedGetExternalMetric.
//!
//! The algorithm is pure over snapshots ([`resource_replicas`],
//! [`plain_metric_replicas`], [`object_value_replicas`],
//! [`object_average_replicas`], [`Normalizer`]); [`Controller`] feeds it
//! from the metrics APIs ([`kobune_apiserver::metrics::Metrics`]) and the
//! cache.

use crate::runtime::{Informer, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::kubelet::Kubelets;
use kobune_apiserver::metrics::Metrics;
use kobune_apiserver::registry::{now_rfc3339, ListOptions, PatchKind, Registry, WriteOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const COMPONENT: &str = "horizontal-pod-autoscaler";
/// Ratios within this of 1.0 cause no scaling (upstream's default).
pub const TOLERANCE: f64 = 0.1;
/// Upstream's --horizontal-pod-autoscaler-cpu-initialization-period.
pub const CPU_INITIALIZATION_PERIOD: f64 = 300.0;
/// Upstream's --horizontal-pod-autoscaler-initial-readiness-delay.
pub const INITIAL_READINESS_DELAY: f64 = 30.0;
/// Upstream's --horizontal-pod-autoscaler-downscale-stabilization.
pub const DOWNSCALE_STABILIZATION: f64 = 300.0;
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);
const EVENT_REPEAT: Duration = Duration::from_secs(60);
const API: (&str, &str) = ("autoscaling/v2", "HorizontalPodAutoscaler");

/// The sync period: `KOBUNE_HPA_SYNC_PERIOD` (seconds, or a number with
/// an `s`/`ms` suffix) or 15 s.
pub fn sync_period() -> Duration {
    let Ok(v) = std::env::var("KOBUNE_HPA_SYNC_PERIOD") else {
        return DEFAULT_SYNC_PERIOD;
    };
    let v = v.trim();
    let d = if let Some(ms) = v.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else {
        v.trim_end_matches('s')
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
    };
    d.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_SYNC_PERIOD)
}

// ---------------------------------------------------------------------------
// Quantities

/// A quantity in thousandths, rounded up as upstream's `MilliValue`.
pub fn milli(q: &str) -> Option<i64> {
    let s = q.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => 10f64.powi(suffix.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    Some((n * mult * 1000.0 - 1e-6).ceil() as i64)
}

fn milli_json(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => milli(s),
        Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).ceil() as i64),
        _ => None,
    }
}

/// A milli-value as a canonical DecimalSI quantity (`250m`, `3`, `100M`).
pub fn milli_quantity(m: i64) -> String {
    if m == 0 {
        return "0".into();
    }
    let suffixes = ["m", "", "k", "M", "G", "T", "P", "E"];
    let mut v = m;
    let mut i = 0;
    while i + 1 < suffixes.len() && v % 1000 == 0 {
        v /= 1000;
        i += 1;
    }
    format!("{v}{}", suffixes[i])
}

// ---------------------------------------------------------------------------
// Replica calculation (upstream's replica_calculator.go)

/// One pod's metric: a value in thousandths (millicores, milli-bytes, or
/// the custom metric x 1000), when it was measured and over what window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodMetric {
    pub value: i64,
    /// Seconds since the epoch.
    pub timestamp: f64,
    /// Seconds.
    pub window: f64,
}

pub type PodMetrics = HashMap<String, PodMetric>;

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Upstream's groupPods: (ready count, unready, missing, ignored) names.
pub fn group_pods(
    pods: &[Value],
    metrics: &PodMetrics,
    cpu: bool,
    now: f64,
) -> (usize, Vec<String>, Vec<String>, Vec<String>) {
    let (mut ready, mut unready, mut missing, mut ignored) = (0, vec![], vec![], vec![]);
    for pod in pods {
        let n = name(pod).to_string();
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if deleting(pod) || phase == Some("Failed") {
            ignored.push(n);
            continue;
        }
        if phase == Some("Pending") {
            unready.push(n);
            continue;
        }
        let Some(metric) = metrics.get(&n) else {
            missing.push(n);
            continue;
        };
        if cpu {
            let not_ready = match ready_condition(pod) {
                None => true,
                Some(c) => {
                    let start = pod
                        .pointer("/status/startTime")
                        .and_then(Value::as_str)
                        .and_then(parse_time);
                    let ltt = c["lastTransitionTime"]
                        .as_str()
                        .and_then(parse_time)
                        .unwrap_or(0.0);
                    let status_false = c["status"] == "False";
                    match start {
                        None => true,
                        Some(start) if start + CPU_INITIALIZATION_PERIOD > now => {
                            status_false || metric.timestamp < ltt + metric.window
                        }
                        Some(start) => status_false && start + INITIAL_READINESS_DELAY > ltt,
                    }
                }
            };
            if not_ready {
                unready.push(n);
                continue;
            }
        }
        ready += 1;
    }
    (ready, unready, missing, ignored)
}

/// Each pod's summed container requests of `resource` (thousandths), as
/// upstream's calculatePodRequests (`container` limits it to one container).
pub fn pod_requests(
    pods: &[Value],
    container: Option<&str>,
    resource: &str,
) -> Result<HashMap<String, i64>, String> {
    let mut out = HashMap::new();
    for pod in pods {
        let mut sum = 0;
        for c in pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = c["name"].as_str().unwrap_or_default();
            if container.is_some_and(|want| want != cname) {
                continue;
            }
            match c
                .pointer("/resources/requests")
                .and_then(|r| r.get(resource))
                .and_then(milli_json)
            {
                Some(v) => sum += v,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {cname} of Pod {}",
                        name(pod)
                    ))
                }
            }
        }
        out.insert(name(pod).to_string(), sum);
    }
    Ok(out)
}

/// (usage ratio, utilization %, raw average) over pods with metrics.
fn utilization_ratio(
    metrics: &PodMetrics,
    requests: &HashMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut total, mut req_total, mut n) = (0i64, 0i64, 0i64);
    for (pod, m) in metrics {
        let Some(r) = requests.get(pod) else {
            continue;
        };
        total += m.value;
        req_total += r;
        n += 1;
    }
    if req_total == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let util = (total * 100 / req_total) as i32;
    Ok((util as f64 / target as f64, util, total / n))
}

fn usage_ratio(metrics: &PodMetrics, target: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value).sum();
    let avg = total / metrics.len().max(1) as i64;
    (avg as f64 / target as f64, avg)
}

fn remove(metrics: &mut PodMetrics, names: &[String]) {
    for n in names {
        metrics.remove(n);
    }
}

/// A Resource metric with an Utilization target: (replicas, utilization
/// %, raw average in thousandths).
#[allow(clippy::too_many_arguments)]
pub fn resource_replicas(
    current: i32,
    target_utilization: i32,
    resource: &str,
    container: Option<&str>,
    pods: &[Value],
    mut metrics: PodMetrics,
    now: f64,
    tolerance: f64,
) -> Result<(i32, i32, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) = group_pods(pods, &metrics, resource == "cpu", now);
    remove(&mut metrics, &ignored);
    remove(&mut metrics, &unready);
    let requests = pod_requests(pods, container, resource)?;
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, util, raw) = utilization_ratio(&metrics, &requests, target_utilization)?;
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            return Ok((current, util, raw));
        }
        return Ok(((ratio * ready as f64).ceil() as i32, util, raw));
    }
    for m in &missing {
        let value = if ratio < 1.0 {
            requests.get(m).copied().unwrap_or(0)
        } else {
            0
        };
        metrics.insert(
            m.clone(),
            PodMetric {
                value,
                timestamp: now,
                window: 0.0,
            },
        );
    }
    if scale_up_with_unready {
        for u in &unready {
            metrics.insert(
                u.clone(),
                PodMetric {
                    value: 0,
                    timestamp: now,
                    window: 0.0,
                },
            );
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
    if (1.0 - new_ratio).abs() <= tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, util, raw));
    }
    let n = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return Ok((current, util, raw));
    }
    Ok((n, util, raw))
}

/// A metric with an AverageValue target (Resource or Pods): (replicas,
/// average in thousandths). `cpu` selects CPU's readiness rules.
pub fn plain_metric_replicas(
    current: i32,
    target: i64,
    cpu: bool,
    pods: &[Value],
    mut metrics: PodMetrics,
    now: f64,
    tolerance: f64,
) -> Result<(i32, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (_, unready, missing, ignored) = group_pods(pods, &metrics, cpu, now);
    remove(&mut metrics, &ignored);
    remove(&mut metrics, &unready);
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, usage) = usage_ratio(&metrics, target);
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            return Ok((current, usage));
        }
        return Ok(((ratio * metrics.len() as f64).ceil() as i32, usage));
    }
    for m in &missing {
        let value = if ratio < 1.0 { target } else { 0 };
        metrics.insert(
            m.clone(),
            PodMetric {
                value,
                timestamp: now,
                window: 0.0,
            },
        );
    }
    if scale_up_with_unready {
        for u in &unready {
            metrics.insert(
                u.clone(),
                PodMetric {
                    value: 0,
                    timestamp: now,
                    window: 0.0,
                },
            );
        }
    }
    let (new_ratio, _) = usage_ratio(&metrics, target);
    if (1.0 - new_ratio).abs() <= tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, usage));
    }
    let n = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return Ok((current, usage));
    }
    Ok((n, usage))
}

/// Running pods whose Ready condition is True (upstream's
/// getReadyPodsCount); no pods at all is an error.
pub fn ready_pods(pods: &[Value]) -> Result<i32, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    Ok(pods
        .iter()
        .filter(|p| {
            p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                && ready_condition(p).is_some_and(|c| c["status"] == "True")
        })
        .count() as i32)
}

/// An Object metric with a Value target (upstream's
/// GetObjectMetricReplicas): the ratio of the object's value to the
/// target scales the ready pods; within tolerance nothing changes; a
/// target scaled to zero gets `ceil(ratio)`.
pub fn object_value_replicas(
    current: i32,
    usage: i64,
    target: i64,
    ready: i32,
    tolerance: f64,
) -> i32 {
    let ratio = usage as f64 / target.max(1) as f64;
    if current == 0 {
        return ratio.ceil() as i32;
    }
    if (1.0 - ratio).abs() <= tolerance {
        return current;
    }
    (ratio * ready as f64).ceil() as i32
}

/// An Object metric with an AverageValue target (upstream's
/// GetObjectPerPodMetricReplicas): the object's value divided among the
/// target's current replicas (`status.replicas`) against the per-pod
/// target. Returns (replicas, current average in thousandths).
pub fn object_average_replicas(
    status_replicas: i32,
    usage: i64,
    target: i64,
    tolerance: f64,
) -> (i32, i64) {
    let target = target.max(1);
    let pods = status_replicas.max(1);
    let ratio = usage as f64 / (target as f64 * pods as f64);
    let replicas = if (1.0 - ratio).abs() > tolerance {
        (usage as f64 / target as f64).ceil() as i32
    } else {
        status_replicas
    };
    (replicas, (usage as f64 / pods as f64).ceil() as i64)
}

// ---------------------------------------------------------------------------
// Behavior, stabilization and rate limits (upstream's horizontal.go)

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub pods: bool,
    pub value: i32,
    pub period: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub window: f64,
    /// "Max", "Min" or "Disabled".
    pub select: String,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

fn rules(v: Option<&Value>, up: bool) -> Rules {
    let v = v.cloned().unwrap_or(Value::Null);
    let policies: Vec<Policy> = match v.get("policies").and_then(Value::as_array) {
        Some(ps) if !ps.is_empty() => ps
            .iter()
            .map(|p| Policy {
                pods: p["type"] == "Pods",
                value: p["value"].as_i64().unwrap_or(0) as i32,
                period: p["periodSeconds"].as_f64().unwrap_or(15.0),
            })
            .collect(),
        _ if up => vec![
            Policy {
                pods: false,
                value: 100,
                period: 15.0,
            },
            Policy {
                pods: true,
                value: 4,
                period: 15.0,
            },
        ],
        _ => vec![Policy {
            pods: false,
            value: 100,
            period: 15.0,
        }],
    };
    Rules {
        window: v["stabilizationWindowSeconds"].as_f64().unwrap_or(if up {
            0.0
        } else {
            DOWNSCALE_STABILIZATION
        }),
        select: v["selectPolicy"].as_str().unwrap_or("Max").to_string(),
        policies,
    }
}

/// `spec.behavior` with upstream's defaults filled in; `None` when absent.
pub fn behavior(spec: &Value) -> Option<Behavior> {
    let b = spec.get("behavior").filter(|b| b.is_object())?;
    Some(Behavior {
        up: rules(b.get("scaleUp"), true),
        down: rules(b.get("scaleDown"), false),
    })
}

#[derive(Debug, Clone, Copy)]
struct Recommendation {
    replicas: i32,
    at: f64,
}

#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    change: i32,
    at: f64,
    outdated: bool,
}

/// A condition the normalizer sets: (type, status, reason, message).
pub type Cond = (&'static str, &'static str, &'static str, String);

/// Per-HPA memory of recent recommendations and scale events.
#[derive(Default)]
pub struct Normalizer {
    recommendations: HashMap<String, Vec<Recommendation>>,
    up_events: HashMap<String, Vec<ScaleEvent>>,
    down_events: HashMap<String, Vec<ScaleEvent>>,
}

fn change_in_period(events: &[ScaleEvent], period: f64, now: f64) -> i32 {
    events
        .iter()
        .filter(|e| !e.outdated && e.at > now - period)
        .map(|e| e.change)
        .sum()
}

fn scale_up_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    r: &Rules,
    now: f64,
) -> i32 {
    if r.select == "Disabled" {
        return current;
    }
    let min = r.select == "Min";
    let mut result = if min { i32::MAX } else { i32::MIN };
    for p in &r.policies {
        let start =
            current - change_in_period(up, p.period, now) + change_in_period(down, p.period, now);
        let proposed = if p.pods {
            start + p.value
        } else {
            (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32
        };
        result = if min {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    result
}

fn scale_down_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    r: &Rules,
    now: f64,
) -> i32 {
    if r.select == "Disabled" {
        return current;
    }
    let min = r.select == "Min";
    let mut result = if min { i32::MIN } else { i32::MAX };
    for p in &r.policies {
        let start =
            current - change_in_period(up, p.period, now) + change_in_period(down, p.period, now);
        let proposed = if p.pods {
            start - p.value
        } else {
            (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32
        };
        result = if min {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
}

impl Normalizer {
    pub fn forget(&mut self, key: &str) {
        self.recommendations.remove(key);
        self.up_events.remove(key);
        self.down_events.remove(key);
    }

    /// Upstream's recordInitialRecommendation: the current count is the
    /// first recommendation, so a new HPA does not scale down at once.
    pub fn record_initial(&mut self, key: &str, current: i32, now: f64) {
        self.recommendations
            .entry(key.to_string())
            .or_insert_with(|| {
                vec![Recommendation {
                    replicas: current,
                    at: now,
                }]
            });
    }

    fn remember(&mut self, key: &str, replicas: i32, now: f64, obsolete_before: f64) {
        let recs = self.recommendations.entry(key.to_string()).or_default();
        let rec = Recommendation { replicas, at: now };
        match recs.iter().position(|r| r.at < obsolete_before) {
            Some(i) => recs[i] = rec,
            None => recs.push(rec),
        }
    }

    /// The desired count after stabilization and limits, and the
    /// AbleToScale and ScalingLimited conditions that explain it.
    #[allow(clippy::too_many_arguments)]
    pub fn normalize(
        &mut self,
        key: &str,
        behavior: Option<&Behavior>,
        min: i32,
        max: i32,
        current: i32,
        prenormalized: i32,
        now: f64,
    ) -> (i32, Vec<Cond>) {
        let mut conds = vec![];
        let (stabilized, reason, message) = match behavior {
            None => {
                let cutoff = now - DOWNSCALE_STABILIZATION;
                let best = self
                    .recommendations
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter(|r| r.at >= cutoff)
                    .map(|r| r.replicas)
                    .fold(prenormalized, i32::max);
                self.remember(key, prenormalized, now, cutoff);
                (
                    best,
                    "ScaleDownStabilized",
                    "recent recommendations were higher than current one, applying the highest recent recommendation",
                )
            }
            Some(b) => {
                let up = prenormalized >= current;
                let window = if up { b.up.window } else { b.down.window };
                let cutoff = now - window;
                let mut best = prenormalized;
                for r in self.recommendations.get(key).into_iter().flatten() {
                    if r.at > cutoff {
                        best = if up {
                            best.min(r.replicas)
                        } else {
                            best.max(r.replicas)
                        };
                    }
                }
                self.remember(
                    key,
                    prenormalized,
                    now,
                    now - b.up.window.max(b.down.window),
                );
                if up {
                    (best, "ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
                } else {
                    (best, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
                }
            }
        };
        if stabilized != prenormalized {
            conds.push(("AbleToScale", "True", reason, message.to_string()));
        } else {
            conds.push((
                "AbleToScale",
                "True",
                "ReadyForNewScale",
                "recommended size matches current size".to_string(),
            ));
        }
        let (desired, reason, message) = match behavior {
            None => {
                let limit = (2 * current).max(4);
                let (max_allowed, r, m) = if max > limit {
                    (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
                } else {
                    (
                        max,
                        "TooManyReplicas",
                        "the desired replica count is more than the maximum replica count",
                    )
                };
                if stabilized < min {
                    (
                        min,
                        "TooFewReplicas",
                        "the desired replica count is less than the minimum replica count",
                    )
                } else if stabilized > max_allowed {
                    (max_allowed, r, m)
                } else {
                    (
                        stabilized,
                        "DesiredWithinRange",
                        "the desired count is within the acceptable range",
                    )
                }
            }
            Some(b) => {
                let none = vec![];
                let up = self.up_events.get(key).unwrap_or(&none);
                let down = self.down_events.get(key).unwrap_or(&none);
                let mut out = (
                    stabilized,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                );
                if stabilized > current {
                    let limit = scale_up_limit(current, up, down, &b.up, now).max(current);
                    let (allowed, r, m) = if max > limit {
                        (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
                    } else {
                        (
                            max,
                            "TooManyReplicas",
                            "the desired replica count is more than the maximum replica count",
                        )
                    };
                    if stabilized > allowed {
                        out = (allowed, r, m);
                    }
                } else if stabilized < current {
                    let limit = scale_down_limit(current, up, down, &b.down, now).min(current);
                    let (allowed, r, m) = if min < limit {
                        (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
                    } else {
                        (
                            min,
                            "TooFewReplicas",
                            "the desired replica count is less than the minimum replica count",
                        )
                    };
                    if stabilized < allowed {
                        out = (allowed, r, m);
                    }
                }
                out
            }
        };
        let limited = if desired == stabilized {
            "False"
        } else {
            "True"
        };
        conds.push(("ScalingLimited", limited, reason, message.to_string()));
        (desired, conds)
    }

    /// Records a rescale for the rate policies (only with `behavior`).
    pub fn store_scale_event(
        &mut self,
        key: &str,
        b: Option<&Behavior>,
        prev: i32,
        new: i32,
        now: f64,
    ) {
        let Some(b) = b else {
            return;
        };
        let (events, rules, change) = if new > prev {
            (
                self.up_events.entry(key.to_string()).or_default(),
                &b.up,
                new - prev,
            )
        } else {
            (
                self.down_events.entry(key.to_string()).or_default(),
                &b.down,
                prev - new,
            )
        };
        let longest = rules.policies.iter().map(|p| p.period).fold(0.0, f64::max);
        for e in events.iter_mut() {
            if e.at < now - longest {
                e.outdated = true;
            }
        }
        let ev = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match events.iter().position(|e| e.outdated) {
            Some(i) => events[i] = ev,
            None => events.push(ev),
        }
    }
}

// ---------------------------------------------------------------------------
// The controller

/// The scale subresource's view of a target.
#[derive(Debug, Clone)]
pub struct ScaleView {
    pub info: Arc<ResourceInfo>,
    pub object: Value,
    pub replicas: i32,
    pub status_replicas: i32,
    pub selector: Option<String>,
}

fn path_get<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    obj.pointer(&format!(
        "/{}",
        path.trim_start_matches('.').replace('.', "/")
    ))
}

pub struct Controller {
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub queue: WorkQueue,
    pub informer: Arc<Informer>,
    hpas: Arc<ResourceInfo>,
    pods: Arc<ResourceInfo>,
    opts: Arc<WriteOptions>,
    normalizer: Mutex<Normalizer>,
    recent_events: Mutex<HashMap<String, std::time::Instant>>,
    pub tolerance: f64,
}

impl Controller {
    pub fn new(
        registry: Arc<Registry>,
        kubelets: Arc<Kubelets>,
        opts: Arc<WriteOptions>,
    ) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, v: &str, p: &str| {
            registry
                .resources
                .find(g, v, p)
                .ok_or_else(|| anyhow::anyhow!("{p} are not served"))
        };
        let hpas = find("autoscaling", "v2", "horizontalpodautoscalers")?;
        let pods = find("", "v1", "pods")?;
        Ok(Arc::new(Controller {
            metrics: Metrics::new(registry.clone(), kubelets),
            informer: Arc::new(Informer::new(hpas.key_prefix())),
            registry,
            queue: WorkQueue::default(),
            hpas,
            pods,
            opts,
            normalizer: Mutex::new(Normalizer::default()),
            recent_events: Mutex::new(HashMap::new()),
            tolerance: TOLERANCE,
        }))
    }

    /// Follows HPAs (new ones and spec changes are synced at once) and
    /// resyncs every one each `period`.
    pub fn start(self: &Arc<Self>, period: Duration) -> anyhow::Result<()> {
        let q = self.queue.clone();
        let me = Arc::downgrade(self);
        self.informer
            .start(&self.registry.cache, move |_, ev: &CacheEvent| {
                let key = ns_key(&ev.object);
                match ev.kind {
                    EventType::Deleted => {
                        if let Some(c) = me.upgrade() {
                            c.normalizer
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .forget(&key);
                        }
                    }
                    EventType::Added => q.add(key),
                    _ => {
                        let gen = |o: &Value| o.pointer("/metadata/generation").cloned();
                        if ev.prev.as_deref().map(gen) != Some(gen(&ev.object)) {
                            q.add(key);
                        }
                    }
                }
            })?;
        let (inf, q) = (self.informer.clone(), self.queue.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                for (_, o) in inf.list() {
                    q.add(ns_key(&o));
                }
            }
        });
        Ok(())
    }

    fn scale_view(&self, hpa: &Value) -> Result<ScaleView, String> {
        let r = &hpa["spec"]["scaleTargetRef"];
        let (av, kind, tname) = (
            r["apiVersion"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default(),
        );
        let (g, v) = av.rsplit_once('/').unwrap_or(("", av));
        let info = self
            .registry
            .resources
            .find_kind(g, v, kind)
            .filter(|i| i.subresources.iter().any(|s| s == "scale"))
            .ok_or_else(|| {
                format!("no matches for kind \"{kind}\" in group \"{g}\" with a scale subresource")
            })?;
        let ns = namespace(hpa);
        let object = self
            .registry
            .get_cached(&info, Some(ns), tname)
            .map_err(|e| e.message.clone())?;
        let (spec_path, status_path, sel_path) = match &info.scale {
            Some(s) => (
                s.spec_replicas.clone(),
                s.status_replicas.clone(),
                s.label_selector.clone(),
            ),
            None => (".spec.replicas".into(), ".status.replicas".into(), None),
        };
        let replicas = path_get(&object, &spec_path)
            .and_then(Value::as_i64)
            .unwrap_or(0) as i32;
        let status_replicas = path_get(&object, &status_path)
            .and_then(Value::as_i64)
            .unwrap_or(0) as i32;
        // Custom resources name the selector's path (a string); built-ins
        // have a LabelSelector in spec.selector.
        let selector = match sel_path.filter(|_| info.definition.is_none()) {
            Some(p) => path_get(&object, &p)
                .and_then(Value::as_str)
                .map(str::to_string),
            None => object
                .pointer("/spec/selector")
                .and_then(|s| Selector::from_label_selector(s).ok())
                .map(|s| s.to_string_form()),
        };
        Ok(ScaleView {
            info,
            object,
            replicas,
            status_replicas,
            selector,
        })
    }

    /// Records an event; the same event about the same HPA is recorded
    /// at most once per [`EVENT_REPEAT`] (upstream's recorder aggregates
    /// repeats into one event's count).
    async fn event(&self, hpa: &Value, ty: &str, reason: &str, msg: &str) {
        {
            let mut recent = self.recent_events.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|_, at| at.elapsed() < EVENT_REPEAT);
            let k = format!("{}|{reason}|{msg}", ns_key(hpa));
            if recent.contains_key(&k) {
                return;
            }
            recent.insert(k, std::time::Instant::now());
        }
        record_event(
            &self.registry,
            &self.opts,
            COMPONENT,
            hpa,
            API,
            ty,
            reason,
            msg,
        )
        .await;
    }

    async fn pod_list(&self, ns: &str, sel: &Selector) -> Result<Vec<Value>, String> {
        let opts = ListOptions {
            label_selector: sel.clone(),
            ..Default::default()
        };
        self.registry
            .list(&self.pods, Some(ns), &opts)
            .await
            .map(|r| r.items)
            .map_err(|e| e.message.clone())
    }

    /// Resource usage per pod (thousandths), optionally of one container.
    async fn resource_metrics(
        &self,
        ns: &str,
        sel: &Selector,
        resource: &str,
        container: Option<&str>,
    ) -> Result<PodMetrics, String> {
        let opts = ListOptions {
            label_selector: sel.clone(),
            ..Default::default()
        };
        let usages = self
            .metrics
            .pod_usages(Some(ns), &opts)
            .await
            .map_err(|e| e.message.clone())?;
        let mut out = PodMetrics::new();
        for (pod, u) in usages {
            let mut sum = 0i64;
            let mut found = false;
            for c in &u.containers {
                if container.is_some_and(|want| want != c.name) {
                    continue;
                }
                found = true;
                sum += match resource {
                    "cpu" => (c.cpu_nanocores as i64 + 999_999) / 1_000_000,
                    "memory" => c.memory_working_set_bytes as i64 * 1000,
                    _ => return Err(format!("resource {resource} is not measured")),
                };
            }
            if !found {
                continue;
            }
            out.insert(
                name(&pod).to_string(),
                PodMetric {
                    value: sum,
                    timestamp: u.timestamp.timestamp_millis() as f64 / 1000.0,
                    window: u.window.as_secs_f64(),
                },
            );
        }
        if out.is_empty() {
            return Err("no metrics returned from resource metrics API".into());
        }
        Ok(out)
    }

    async fn pods_metric(
        &self,
        ns: &str,
        sel: &Selector,
        metric: &str,
        metric_sel: &Selector,
    ) -> Result<PodMetrics, String> {
        let opts = ListOptions {
            label_selector: sel.clone(),
            ..Default::default()
        };
        let values = self
            .metrics
            .pod_custom_metric(ns, &opts, metric, metric_sel)
            .await
            .map_err(|e| e.message.clone())?;
        if values.is_empty() {
            return Err("no metrics returned from custom metrics API".into());
        }
        Ok(values
            .into_iter()
            .map(|v| {
                (
                    name(&v.pod).to_string(),
                    PodMetric {
                        value: (v.value * 1000.0).round() as i64,
                        timestamp: v.timestamp.timestamp_millis() as f64 / 1000.0,
                        window: 0.0,
                    },
                )
            })
            .collect())
    }

    /// One metric's proposal: Ok((replicas, metric name, status)) or
    /// Err((condition reason, event reason, error)).
    async fn replicas_for_metric(
        &self,
        hpa: &Value,
        spec: &Value,
        current: i32,
        status_replicas: i32,
        sel: &Selector,
        now: f64,
    ) -> Result<(i32, String, Value), (String, String)> {
        let ns = namespace(hpa);
        let ty = spec["type"].as_str().unwrap_or_default();
        match ty {
            "Resource" | "ContainerResource" => {
                let key = if ty == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let m = &spec[key];
                let resource = m["name"].as_str().unwrap_or_default();
                let container = m["container"].as_str();
                let reason = if ty == "Resource" {
                    "FailedGetResourceMetric"
                } else {
                    "FailedGetContainerResourceMetric"
                };
                let target = &m["target"];
                // Upstream's wrapping: "failed to get cpu utilization: unable
                // to get metrics for resource cpu: ...".
                let what = if target["averageUtilization"].is_i64() {
                    "utilization"
                } else {
                    "usage"
                };
                let fail = |e: String| {
                    (
                        reason.to_string(),
                        format!("failed to get {resource} {what}: {e}"),
                    )
                };
                let pods = self.pod_list(ns, sel).await.map_err(fail)?;
                let metrics = self
                    .resource_metrics(ns, sel, resource, container)
                    .await
                    .map_err(|e| {
                        fail(format!(
                            "unable to get metrics for resource {resource}: {e}"
                        ))
                    })?;
                let mut status = json!({"name": resource});
                if let Some(c) = container {
                    status["container"] = json!(c);
                }
                if let Some(util) = target["averageUtilization"].as_i64() {
                    let (n, u, raw) = resource_replicas(
                        current,
                        util as i32,
                        resource,
                        container,
                        &pods,
                        metrics,
                        now,
                        self.tolerance,
                    )
                    .map_err(fail)?;
                    status["current"] =
                        json!({"averageUtilization": u, "averageValue": milli_quantity(raw)});
                    let label = format!("{resource} resource utilization (percentage of request)");
                    let label = if container.is_some() {
                        format!("{resource} container resource utilization (percentage of request)")
                    } else {
                        label
                    };
                    Ok((n, label, json!({"type": ty, key: status})))
                } else {
                    let t = target["averageValue"]
                        .as_str()
                        .and_then(milli)
                        .ok_or_else(|| fail(format!("invalid target for resource {resource}")))?;
                    let (n, usage) = plain_metric_replicas(
                        current,
                        t,
                        resource == "cpu",
                        &pods,
                        metrics,
                        now,
                        self.tolerance,
                    )
                    .map_err(fail)?;
                    status["current"] = json!({"averageValue": milli_quantity(usage)});
                    let label = if container.is_some() {
                        format!("{resource} container resource")
                    } else {
                        format!("{resource} resource")
                    };
                    Ok((n, label, json!({"type": ty, key: status})))
                }
            }
            "Pods" => {
                let m = &spec["pods"];
                let metric = m["metric"]["name"].as_str().unwrap_or_default();
                let fail = |e: String| ("FailedGetPodsMetric".to_string(), e);
                let msel = match m["metric"].get("selector").filter(|s| s.is_object()) {
                    Some(s) => Selector::from_label_selector(s).map_err(fail)?,
                    None => Selector::default(),
                };
                let t = m["target"]["averageValue"]
                    .as_str()
                    .and_then(milli)
                    .ok_or_else(|| fail(format!("invalid target for pods metric {metric}")))?;
                let pods = self.pod_list(ns, sel).await.map_err(fail)?;
                let metrics = self
                    .pods_metric(ns, sel, metric, &msel)
                    .await
                    .map_err(|e| fail(format!("unable to get metric {metric}: {e}")))?;
                let (n, usage) =
                    plain_metric_replicas(current, t, false, &pods, metrics, now, self.tolerance)
                        .map_err(fail)?;
                let mut mstatus = json!({"name": metric});
                if let Some(s) = m["metric"].get("selector") {
                    mstatus["selector"] = s.clone();
                }
                Ok((
                    n,
                    format!("pods metric {metric}"),
                    json!({"type": "Pods", "pods": {"metric": mstatus, "current": {"averageValue": milli_quantity(usage)}}}),
                ))
            }
            "Object" => {
                self.object_replicas(ns, &spec["object"], current, status_replicas, sel)
                    .await
            }
            "External" => {
                let m = &spec["external"];
                Err((
                    "FailedGetExternalMetric".to_string(),
                    format!(
                        "unable to get external metric {ns}/{}: no external metrics API \
                         (external.metrics.k8s.io) is served; kobune scales on Resource, \
                         ContainerResource, Pods and Object metrics",
                        m["metric"]["name"].as_str().unwrap_or_default()
                    ),
                ))
            }
            other => Err((
                "InvalidMetricSourceType".to_string(),
                format!("unknown metric source type {other:?}"),
            )),
        }
    }

    /// An Object metric's proposal: the object's value from the custom
    /// metrics API (the sum over the pods it selects) against a Value or
    /// AverageValue target.
    async fn object_replicas(
        &self,
        ns: &str,
        m: &Value,
        current: i32,
        status_replicas: i32,
        sel: &Selector,
    ) -> Result<(i32, String, Value), (String, String)> {
        let obj = &m["describedObject"];
        let metric = m["metric"]["name"].as_str().unwrap_or_default();
        let (av, kind, oname) = (
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
            obj["name"].as_str().unwrap_or_default(),
        );
        let fail = |e: String| ("FailedGetObjectMetric".to_string(), e);
        let unable = |e: String| {
            fail(format!(
                "unable to get metric {metric}: {kind} on {ns} {oname}/{e}"
            ))
        };
        let msel = match m["metric"].get("selector").filter(|s| s.is_object()) {
            Some(s) => Selector::from_label_selector(s).map_err(fail)?,
            None => Selector::default(),
        };
        let target = &m["target"];
        let value_target = target["value"].clone();
        let avg_target = target["averageValue"].clone();
        let (t, per_pod) = match target["type"].as_str() {
            Some("Value") if !value_target.is_null() => (milli_json(&value_target), false),
            Some("AverageValue") if !avg_target.is_null() => (milli_json(&avg_target), true),
            _ => (None, false),
        };
        let t = t.ok_or_else(|| {
            fail("invalid object metric source: neither a value target nor an average value target was set".into())
        })?;
        let (g, v) = av.rsplit_once('/').unwrap_or(("", av));
        let info = self
            .registry
            .resources
            .find_kind(g, v, kind)
            .ok_or_else(|| {
                unable(format!(
                    "no matches for kind \"{kind}\" in version \"{av}\""
                ))
            })?;
        let value = self
            .metrics
            .object_custom_metric(&info, ns, oname, metric, &msel)
            .await
            .map_err(|e| {
                unable(format!(
                    "unable to fetch metrics from custom metrics API: {}",
                    e.message
                ))
            })?;
        let usage = (value.value * 1000.0).round() as i64;
        let mut mstatus = json!({"name": metric});
        if let Some(s) = m["metric"].get("selector") {
            mstatus["selector"] = s.clone();
        }
        let (n, current_status) = if per_pod {
            let (n, avg) = object_average_replicas(status_replicas, usage, t, self.tolerance);
            (n, json!({"averageValue": milli_quantity(avg)}))
        } else {
            let within = (1.0 - usage as f64 / t.max(1) as f64).abs() <= self.tolerance;
            // Upstream counts ready pods only when the ratio scales them.
            let ready = if current == 0 || within {
                0
            } else {
                let pods = self.pod_list(ns, sel).await.map_err(fail)?;
                ready_pods(&pods).map_err(fail)?
            };
            let n = object_value_replicas(current, usage, t, ready, self.tolerance);
            (n, json!({"value": milli_quantity(usage)}))
        };
        Ok((
            n,
            format!("{kind} metric {metric}"),
            json!({"type": "Object", "object": {
                "describedObject": obj,
                "metric": mstatus,
                "current": current_status,
            }}),
        ))
    }

    /// Reconciles one HPA (`namespace/name`).
    pub async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let (ns, hname) = key.split_once('/').unwrap_or(("", key));
        let hpa = match self.registry.get_cached(&self.hpas, Some(ns), hname) {
            Ok(h) => h,
            Err(e) if e.code == 404 => {
                self.normalizer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget(key);
                return Ok(());
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        if deleting(&hpa) {
            return Ok(());
        }
        let now = now_secs();
        let spec = hpa["spec"].clone();
        let min = spec["minReplicas"].as_i64().unwrap_or(1) as i32;
        let max = spec["maxReplicas"].as_i64().unwrap_or(1) as i32;
        let mut conds = conditions(&hpa);
        let set = |conds: &mut Vec<Value>, t: &str, s: &str, r: &str, m: &str| {
            *conds = set_condition(
                conds,
                json!({"type": t, "status": s, "lastTransitionTime": now_rfc3339(), "reason": r, "message": m}),
            );
        };
        let old_status = hpa["status"].clone();
        let scale = match self.scale_view(&hpa) {
            Ok(s) => s,
            Err(e) => {
                let msg =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                self.event(&hpa, "Warning", "FailedGetScale", &e).await;
                set(&mut conds, "AbleToScale", "False", "FailedGetScale", &msg);
                let status = json!({
                    "currentReplicas": old_status["currentReplicas"].as_i64().unwrap_or(0),
                    "desiredReplicas": old_status["desiredReplicas"].as_i64().unwrap_or(0),
                    "conditions": conds,
                });
                self.write_status(&hpa, status).await?;
                return Ok(());
            }
        };
        set(
            &mut conds,
            "AbleToScale",
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        );
        let current = scale.replicas;
        self.normalizer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_initial(key, current, now);
        let behavior = behavior(&spec);
        let mut metric_statuses: Vec<Value> = vec![];
        let mut rescale_reason = String::new();
        let desired;
        if current == 0 && min != 0 {
            desired = 0;
            set(
                &mut conds,
                "ScalingActive",
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
        } else if current > max {
            rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
            desired = max;
        } else if current < min {
            rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
            desired = min;
        } else {
            let specs: Vec<Value> = spec["metrics"].as_array().cloned().unwrap_or_default();
            let sel = match scale.selector.as_deref().filter(|s| !s.is_empty()) {
                None => {
                    self.event(&hpa, "Warning", "SelectorRequired", "selector is required")
                        .await;
                    set(
                        &mut conds,
                        "ScalingActive",
                        "False",
                        "InvalidSelector",
                        "the HPA target's scale is missing a selector",
                    );
                    return self.fail_status(&hpa, current, conds, vec![]).await;
                }
                Some(s) => match Selector::parse_labels(s) {
                    Ok(sel) => sel,
                    Err(e) => {
                        self.event(&hpa, "Warning", "InvalidSelector", &e).await;
                        set(&mut conds, "ScalingActive", "False", "InvalidSelector", &format!("couldn't convert selector into a corresponding internal selector object: {e}"));
                        return self.fail_status(&hpa, current, conds, vec![]).await;
                    }
                },
            };
            let mut best: Option<(i32, String)> = None;
            let mut invalid = 0;
            let mut first_err: Option<(String, String)> = None;
            for m in &specs {
                match self
                    .replicas_for_metric(&hpa, m, current, scale.status_replicas, &sel, now)
                    .await
                {
                    Ok((n, label, status)) => {
                        metric_statuses.push(status);
                        if best.as_ref().is_none_or(|(b, _)| *b == 0 || n > *b) {
                            best = Some((n, label));
                        }
                    }
                    Err((reason, e)) => {
                        metric_statuses.push(json!({"type": ""}));
                        self.event(&hpa, "Warning", &reason, &e).await;
                        if first_err.is_none() {
                            first_err = Some((reason, e));
                        }
                        invalid += 1;
                    }
                }
            }
            let proposal = best.as_ref().map(|b| b.0).unwrap_or(0);
            if invalid >= specs.len() || (invalid > 0 && proposal < current) {
                let (reason, e) = first_err
                    .unwrap_or_else(|| ("InvalidMetricSourceType".into(), "no metrics".into()));
                set(
                    &mut conds,
                    "ScalingActive",
                    "False",
                    &reason,
                    &format!("the HPA was unable to compute the replica count: {e}"),
                );
                let statuses = metric_statuses
                    .into_iter()
                    .filter(|s| s["type"] != "")
                    .collect();
                return self.fail_status(&hpa, current, conds, statuses).await;
            }
            metric_statuses.retain(|s| s["type"] != "");
            let (n, label) = best.unwrap_or((current, String::new()));
            set(
                &mut conds,
                "ScalingActive",
                "True",
                "ValidMetricFound",
                &format!("the HPA was able to successfully calculate a replica count from {label}"),
            );
            rescale_reason = if n > current {
                format!("{label} above target")
            } else {
                "All metrics below target".into()
            };
            let (d, ncs) = self
                .normalizer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .normalize(key, behavior.as_ref(), min, max, current, n, now);
            for (t, s, r, m) in ncs {
                set(&mut conds, t, s, r, &m);
            }
            desired = d;
        }
        let rescale = desired != current;
        let mut status = json!({
            "observedGeneration": hpa.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": if metric_statuses.is_empty() { Value::Null } else { Value::Array(metric_statuses) },
        });
        if rescale {
            match self.update_scale(&scale, ns, desired).await {
                Ok(()) => {
                    set(
                        &mut conds,
                        "AbleToScale",
                        "True",
                        "SucceededRescale",
                        &format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    );
                    self.event(
                        &hpa,
                        "Normal",
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {rescale_reason}"),
                    )
                    .await;
                    self.normalizer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .store_scale_event(key, behavior.as_ref(), current, desired, now);
                    status["lastScaleTime"] = json!(now_rfc3339());
                }
                Err(e) => {
                    set(
                        &mut conds,
                        "AbleToScale",
                        "False",
                        "FailedUpdateScale",
                        &format!("the HPA controller was unable to update the target scale: {e}"),
                    );
                    self.event(
                        &hpa,
                        "Warning",
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {rescale_reason}; error: {e}"),
                    )
                    .await;
                    status["conditions"] = json!(conds);
                    status["desiredReplicas"] = json!(current);
                    self.write_status(&hpa, status).await?;
                    anyhow::bail!("rescaling {key}: {e}");
                }
            }
        }
        status["conditions"] = json!(conds);
        self.write_status(&hpa, status).await
    }

    async fn fail_status(
        &self,
        hpa: &Value,
        current: i32,
        conds: Vec<Value>,
        metrics: Vec<Value>,
    ) -> anyhow::Result<()> {
        let status = json!({
            "observedGeneration": hpa.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "currentReplicas": current,
            "desiredReplicas": hpa["status"]["desiredReplicas"].as_i64().unwrap_or(current as i64),
            "currentMetrics": if metrics.is_empty() { Value::Null } else { Value::Array(metrics) },
            "conditions": conds,
        });
        self.write_status(hpa, status).await
    }

    async fn update_scale(&self, scale: &ScaleView, ns: &str, replicas: i32) -> Result<(), String> {
        let path = scale
            .info
            .scale
            .as_ref()
            .map(|s| s.spec_replicas.clone())
            .unwrap_or(".spec.replicas".into());
        let mut patch = json!(replicas);
        for part in path.trim_start_matches('.').rsplit('.') {
            patch = json!({ part: patch });
        }
        self.registry
            .patch(
                &scale.info,
                Some(ns),
                name(&scale.object),
                PatchKind::Merge,
                &patch,
                &self.opts,
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.message.clone())
    }

    async fn write_status(&self, hpa: &Value, status: Value) -> anyhow::Result<()> {
        if hpa["status"] == status {
            return Ok(());
        }
        self.registry
            .patch(
                &self.hpas,
                Some(namespace(hpa)),
                name(hpa),
                PatchKind::Merge,
                &json!({ "status": status }),
                &self.opts,
                Some("status"),
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("updating status of HPA {}: {e}", ns_key(hpa)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_000_000.0;

    fn ts(t: f64) -> String {
        chrono::DateTime::from_timestamp(t as i64, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// A running, ready pod started `age` seconds ago requesting `cpu`.
    fn pod(name: &str, cpu: &str, age: f64) -> Value {
        json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": "Running", "startTime": ts(NOW - age),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ts(NOW - age + 5.0)}]}
        })
    }

    fn metrics(vals: &[(&str, i64)]) -> PodMetrics {
        vals.iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    PodMetric {
                        value: *v,
                        timestamp: NOW,
                        window: 15.0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn quantities() {
        assert_eq!(milli("250m"), Some(250));
        assert_eq!(milli("1"), Some(1000));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("1Ki"), Some(1_024_000));
        assert_eq!(milli("100n"), Some(1));
        assert_eq!(milli("x"), None);
        assert_eq!(milli_quantity(250), "250m");
        assert_eq!(milli_quantity(3000), "3");
        assert_eq!(milli_quantity(100_000_000_000), "100M");
    }

    #[test]
    fn utilization_scales_by_ratio_outside_tolerance() {
        let pods = vec![pod("a", "100m", 600.0), pod("b", "100m", 600.0)];
        // 200% of the 50% target: double.
        let r = resource_replicas(
            2,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 100), ("b", 100)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r, (4, 100, 100));
        // 54% against 50%: within 10% tolerance, keep.
        let r = resource_replicas(
            2,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 54), ("b", 54)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r.0, 2);
        // 20% against 50%: ceil(0.4 * 2) = 1.
        let r = resource_replicas(
            2,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 20), ("b", 20)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r, (1, 20, 20));
    }

    #[test]
    fn missing_requests_and_metrics_are_errors() {
        let mut p = pod("a", "100m", 600.0);
        p["spec"]["containers"][0]["resources"] = json!({});
        let e = resource_replicas(
            1,
            50,
            "cpu",
            None,
            &[p],
            metrics(&[("a", 10)]),
            NOW,
            TOLERANCE,
        )
        .unwrap_err();
        assert_eq!(e, "missing request for cpu in container c of Pod a");
        let e =
            resource_replicas(1, 50, "cpu", None, &[], metrics(&[]), NOW, TOLERANCE).unwrap_err();
        assert!(e.starts_with("no pods returned by selector"));
        let e = resource_replicas(
            1,
            50,
            "cpu",
            None,
            &[pod("a", "100m", 600.0)],
            metrics(&[]),
            NOW,
            TOLERANCE,
        )
        .unwrap_err();
        assert!(e.starts_with("did not receive metrics"));
    }

    #[test]
    fn missing_pods_count_conservatively() {
        let pods = vec![
            pod("a", "100m", 600.0),
            pod("b", "100m", 600.0),
            pod("c", "100m", 600.0),
        ];
        // Scale up: missing pod c counts as 0 -> (200+0)/(300) = 66% of 50% ... ratio 1.33, 3 pods -> 4.
        let r = resource_replicas(
            3,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 100), ("b", 100)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r.0, 4);
        // Scale down: missing pod counts as 100% of request, which flips the
        // direction (20%,20%,100% -> 46% of 50%: within tolerance) -> keep.
        let r = resource_replicas(
            3,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 20), ("b", 20)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r.0, 3);
        // Scale down that stays a scale down: 0% -> (0+0+100)/300 = 33% of 50%: 0.66*3 = 2.
        let r = resource_replicas(
            3,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 0), ("b", 0)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r.0, 2);
    }

    #[test]
    fn unready_pods_do_not_drive_scale_up() {
        let mut young = pod("b", "100m", 10.0);
        young["status"]["conditions"][0]["status"] = json!("False");
        let mut pending = pod("c", "100m", 10.0);
        pending["status"]["phase"] = json!("Pending");
        let pods = vec![pod("a", "100m", 600.0), young, pending];
        // a at 100 (200% of 50): unready b and c count as 0 -> 100/300 = 33% -> ratio 0.67
        // flips direction -> keep current.
        let r = resource_replicas(
            3,
            50,
            "cpu",
            None,
            &pods,
            metrics(&[("a", 100), ("b", 100)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r.0, 3);
        let (ready, unready, missing, ignored) =
            group_pods(&pods, &metrics(&[("a", 1), ("b", 1)]), true, NOW);
        assert_eq!(
            (ready, unready.len(), missing.len(), ignored.len()),
            (1, 2, 0, 0)
        );
        // Non-CPU metrics only treat Pending pods as unready.
        let (ready, unready, missing, _) =
            group_pods(&pods, &metrics(&[("a", 1), ("b", 1)]), false, NOW);
        assert_eq!((ready, unready.len(), missing.len()), (2, 1, 0));
        let mut gone = pod("d", "100m", 600.0);
        gone["metadata"]["deletionTimestamp"] = json!(ts(NOW));
        let (_, _, _, ignored) = group_pods(&[gone], &metrics(&[]), true, NOW);
        assert_eq!(ignored, vec!["d".to_string()]);
    }

    #[test]
    fn average_value_targets() {
        let pods = vec![pod("a", "100m", 600.0), pod("b", "100m", 600.0)];
        // idle workers 10 per pod against 5: 4 pods.
        let r = plain_metric_replicas(
            2,
            5000,
            false,
            &pods,
            metrics(&[("a", 10_000), ("b", 10_000)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r, (4, 10_000));
        let r = plain_metric_replicas(
            2,
            5000,
            false,
            &pods,
            metrics(&[("a", 5200), ("b", 5200)]),
            NOW,
            TOLERANCE,
        )
        .unwrap();
        assert_eq!(r.0, 2);
    }

    #[test]
    fn object_value_targets_scale_the_ready_pods() {
        // 3 busy workers on the Service against a value of 2: 1.5 x 2 ready pods.
        assert_eq!(object_value_replicas(2, 3000, 2000, 2, TOLERANCE), 3);
        // Within tolerance: keep.
        assert_eq!(object_value_replicas(2, 2100, 2000, 2, TOLERANCE), 2);
        // Nothing busy: zero (min/max clamp later).
        assert_eq!(object_value_replicas(3, 0, 2000, 3, TOLERANCE), 0);
        // Half the target with 4 ready pods: 2.
        assert_eq!(object_value_replicas(4, 1000, 2000, 4, TOLERANCE), 2);
        // Only the ready pods count, not the current replicas.
        assert_eq!(object_value_replicas(4, 4000, 2000, 1, TOLERANCE), 2);
        // A target at zero scales by the ratio alone.
        assert_eq!(object_value_replicas(0, 5000, 2000, 0, TOLERANCE), 3);
    }

    #[test]
    fn object_average_value_targets_divide_by_status_replicas() {
        // 9 in total, 3 per pod wanted: 3 pods, 4.5 average over 2 replicas.
        assert_eq!(object_average_replicas(2, 9000, 3000, TOLERANCE), (3, 4500));
        // 6.2 over 2 replicas against 3 each: ratio 1.03, keep 2.
        assert_eq!(object_average_replicas(2, 6200, 3000, TOLERANCE), (2, 3100));
        // 1 over 4 replicas against 3 each: ceil(1/3) = 1.
        assert_eq!(object_average_replicas(4, 1000, 3000, TOLERANCE), (1, 250));
        // No replicas yet: the whole value counts as one pod's.
        assert_eq!(object_average_replicas(0, 7000, 3000, TOLERANCE).0, 3);
    }

    #[test]
    fn ready_pods_count_running_and_ready() {
        let mut unready = pod("b", "100m", 600.0);
        unready["status"]["conditions"][0]["status"] = json!("False");
        let mut pending = pod("c", "100m", 600.0);
        pending["status"]["phase"] = json!("Pending");
        let mut no_cond = pod("d", "100m", 600.0);
        no_cond["status"]["conditions"] = json!([]);
        let pods = vec![pod("a", "100m", 600.0), unready, pending, no_cond];
        assert_eq!(ready_pods(&pods), Ok(1));
        assert!(ready_pods(&[]).unwrap_err().starts_with("no pods returned"));
    }

    fn b(up_window: f64, down_window: f64, up: Vec<Policy>, down: Vec<Policy>) -> Behavior {
        Behavior {
            up: Rules {
                window: up_window,
                select: "Max".into(),
                policies: up,
            },
            down: Rules {
                window: down_window,
                select: "Max".into(),
                policies: down,
            },
        }
    }

    #[test]
    fn default_behavior_parsing() {
        assert_eq!(behavior(&json!({})), None);
        let d = behavior(&json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}))
            .unwrap();
        assert_eq!(d.down.window, 5.0);
        assert_eq!(d.up.window, 0.0);
        assert_eq!(d.up.policies.len(), 2);
        assert_eq!(
            d.down.policies,
            vec![Policy {
                pods: false,
                value: 100,
                period: 15.0
            }]
        );
    }

    #[test]
    fn min_max_and_scale_up_limit_without_behavior() {
        let mut n = Normalizer::default();
        let (d, c) = n.normalize("k", None, 1, 10, 2, 20, NOW);
        assert_eq!(d, 4, "at most max(2*current, 4)");
        assert_eq!(
            c[1],
            (
                "ScalingLimited",
                "True",
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate".into()
            )
        );
        let mut n = Normalizer::default();
        let (d, c) = n.normalize("k", None, 1, 3, 2, 20, NOW);
        assert_eq!((d, c[1].2), (3, "TooManyReplicas"));
        let mut n = Normalizer::default();
        let (d, c) = n.normalize("k", None, 2, 10, 3, 1, NOW);
        assert_eq!((d, c[1].2), (2, "TooFewReplicas"));
        let (d, c) = n.normalize("k", None, 1, 10, 3, 3, NOW);
        assert_eq!((d, c[1].1, c[1].2), (3, "False", "DesiredWithinRange"));
    }

    #[test]
    fn default_downscale_stabilization_keeps_the_highest_recent() {
        let mut n = Normalizer::default();
        assert_eq!(n.normalize("k", None, 1, 10, 4, 4, NOW).0, 4);
        let (d, c) = n.normalize("k", None, 1, 10, 4, 1, NOW + 60.0);
        assert_eq!(d, 4);
        assert_eq!(c[0].2, "ScaleDownStabilized");
        // A new HPA's first recommendation is the current count.
        let mut fresh = Normalizer::default();
        fresh.record_initial("n", 5, NOW);
        fresh.record_initial("n", 9, NOW + 1.0);
        assert_eq!(fresh.normalize("n", None, 1, 10, 5, 2, NOW + 2.0).0, 5);
        // After the 5-minute window the low recommendation wins.
        assert_eq!(n.normalize("k", None, 1, 10, 4, 1, NOW + 301.0).0, 1);
    }

    #[test]
    fn behavior_windows_and_policies() {
        let pct = |v: i32, p: f64| Policy {
            pods: false,
            value: v,
            period: p,
        };
        let pods = |v: i32, p: f64| Policy {
            pods: true,
            value: v,
            period: p,
        };
        let beh = b(0.0, 30.0, vec![pods(1, 60.0)], vec![pct(50, 60.0)]);
        let mut n = Normalizer::default();
        // Scale up by at most one pod per minute.
        let (d, c) = n.normalize("k", Some(&beh), 1, 10, 2, 8, NOW);
        assert_eq!(d, 3);
        assert_eq!(c[1].2, "ScaleUpLimit");
        n.store_scale_event("k", Some(&beh), 2, 3, NOW);
        let (d, _) = n.normalize("k", Some(&beh), 1, 10, 3, 8, NOW + 10.0);
        assert_eq!(d, 3, "the minute's one pod is used up");
        let (d, _) = n.normalize("k", Some(&beh), 1, 10, 3, 8, NOW + 61.0);
        assert_eq!(d, 4);
        // Scale down is stabilized for 30 s: the 4 recommended recently wins.
        assert_eq!(n.normalize("d", Some(&beh), 1, 10, 4, 4, NOW).0, 4);
        let (d, c) = n.normalize("d", Some(&beh), 1, 10, 4, 1, NOW + 10.0);
        assert_eq!(d, 4);
        assert_eq!(c[0].2, "ScaleDownStabilized");
        // After the window: at most 50% down per minute.
        let (d, c) = n.normalize("d", Some(&beh), 1, 10, 4, 1, NOW + 41.0);
        assert_eq!(d, 2);
        assert_eq!(c[0].2, "ReadyForNewScale");
        assert_eq!(c[1].2, "ScaleDownLimit");
        n.store_scale_event("d", Some(&beh), 4, 2, NOW + 41.0);
        let (d, _) = n.normalize("d", Some(&beh), 1, 10, 2, 1, NOW + 50.0);
        assert_eq!(d, 2, "the minute's 50% is used up");
        // Min across policies, and Disabled.
        let mut beh2 = b(0.0, 0.0, vec![pct(100, 15.0), pods(1, 15.0)], vec![]);
        beh2.up.select = "Min".into();
        let mut n = Normalizer::default();
        assert_eq!(n.normalize("x", Some(&beh2), 1, 10, 4, 9, NOW).0, 5);
        beh2.up.select = "Disabled".into();
        assert_eq!(n.normalize("y", Some(&beh2), 1, 10, 4, 9, NOW).0, 4);
    }
}

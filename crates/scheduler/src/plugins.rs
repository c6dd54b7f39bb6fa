//! Filter and score plugins, as the upstream scheduler framework's default
//! profile has them. Filters say why a node does not fit, in upstream's
//! words; scores rank the nodes that do.

use crate::cluster::ClusterState;
use crate::types::{tolerated, NodeInfo, PodInfo, Taint};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Why a node does not fit (usually one reason; NodeResourcesFit may give several).
pub type Reasons = Vec<String>;

pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// What PreFilter computed once per pod for the filters and scores.
#[derive(Debug, Default)]
pub struct CycleState {
    /// Per required affinity term: topology values holding a matching pod.
    pub affinity_domains: Vec<HashSet<String>>,
    pub anti_domains: Vec<HashSet<String>>,
    /// (topologyKey, value) pairs placed pods' anti-affinity forbids.
    pub existing_anti: HashSet<(String, String)>,
    /// Per topology spread constraint: matching pods per topology value,
    /// over the nodes the pod could go to.
    pub spread_counts: Vec<HashMap<String, i64>>,
    pub spread_min: Vec<i64>,
}

pub trait FilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_filter(&self, _pod: &PodInfo, _cluster: &ClusterState, _state: &mut CycleState) {}
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons>;
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn weight(&self) -> i64;
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Brings raw scores to 0..=100.
    fn normalize(&self, _scores: &mut [i64]) {}
}

fn fail(s: &str) -> Result<(), Reasons> {
    Err(vec![s.to_string()])
}

/// Higher raw score is better: scale so the best is 100.
pub fn normalize_max(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max > 0 { *s * 100 / max } else { 0 };
    }
}

/// Lower raw score is better: the lowest gets 100.
pub fn normalize_reverse(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max > 0 { 100 - *s * 100 / max } else { 100 };
    }
}

// ---------------------------------------------------------------------------
// Node affinity helpers

fn requirement_matches(e: &Value, get: &dyn Fn(&str) -> Option<String>) -> bool {
    let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
    let values: Vec<&str> = e
        .get("values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let v = get(key);
    match e
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "In" => v.is_some_and(|v| values.contains(&v.as_str())),
        "NotIn" => !v.is_some_and(|v| values.contains(&v.as_str())),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One NodeSelectorTerm: its expressions and fields all match. An empty
/// term matches nothing.
pub fn node_selector_term_matches(term: &Value, node: &NodeInfo) -> bool {
    let exprs = term
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let fields = term
        .get("matchFields")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = |k: &str| node.label(k).map(str::to_string);
    let name = |k: &str| (k == "metadata.name").then(|| node.name.clone());
    exprs.iter().all(|e| requirement_matches(e, &labels))
        && fields.iter().all(|e| requirement_matches(e, &name))
}

/// nodeSelector and required node affinity.
pub fn node_matches_pod(pod: &PodInfo, node: &NodeInfo) -> bool {
    let selector_ok = pod
        .node_selector
        .iter()
        .all(|(k, v)| node.label(k) == v.as_str());
    selector_ok
        && pod
            .required_node_terms
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|t| node_selector_term_matches(t, node)))
}

// ---------------------------------------------------------------------------
// Filters

pub struct NodeName;
impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        if pod.node_name.is_empty() || pod.node_name == node.name {
            Ok(())
        } else {
            fail(ERR_NODE_NAME)
        }
    }
}

pub struct NodeUnschedulable;
impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        // Hot path (every node, every cycle): nothing to build for a
        // schedulable node.
        if !node.unschedulable {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        };
        if !tolerated(&pod.tolerations, &taint) {
            fail(ERR_UNSCHEDULABLE)
        } else {
            Ok(())
        }
    }
}

pub struct TaintToleration;
impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        for t in &node.taints {
            if (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !tolerated(&pod.tolerations, t)
            {
                return Err(vec![format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key, t.value
                )]);
            }
        }
        Ok(())
    }
}
impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn weight(&self) -> i64 {
        3
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        if !node.taints.iter().any(|t| t.effect == "PreferNoSchedule") {
            return 0;
        }
        let tols: Vec<_> = pod
            .tolerations
            .iter()
            .filter(|t| t.effect.is_empty() || t.effect == "PreferNoSchedule")
            .cloned()
            .collect();
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&tols, t))
            .count() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_reverse(scores)
    }
}

pub struct NodeAffinity;
impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        if node_matches_pod(pod, node) {
            Ok(())
        } else {
            fail(ERR_NODE_AFFINITY)
        }
    }
}
impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.preferred_node_terms
            .iter()
            .filter(|(_, t)| node_selector_term_matches(t, node))
            .map(|(w, _)| *w)
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_max(scores)
    }
}

pub struct NodePorts;
impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        for want in &pod.ports {
            let clash = node.used_ports.keys().any(|used| {
                used.port == want.port
                    && used.protocol == want.protocol
                    && (any(&used.ip) || any(&want.ip) || used.ip == want.ip)
            });
            if clash {
                return fail(ERR_PORTS);
            }
        }
        Ok(())
    }
}

pub struct NodeResourcesFit;
impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        let mut why = vec![];
        if node.pods.len() as i64 + 1 > node.allocatable.pods {
            why.push("Too many pods".to_string());
        }
        let (a, r, p) = (&node.allocatable, &node.requested, &pod.requests);
        if p.milli_cpu > 0 && p.milli_cpu > a.milli_cpu - r.milli_cpu {
            why.push("Insufficient cpu".to_string());
        }
        if p.memory > 0 && p.memory > a.memory - r.memory {
            why.push("Insufficient memory".to_string());
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

/// Spreads load: favours nodes with the most free CPU and memory.
pub struct LeastAllocated;
impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let f = |alloc: i64, req: i64| {
            if alloc <= 0 {
                0
            } else {
                ((alloc - req).max(0) * 100) / alloc
            }
        };
        let (a, r, p) = (&node.allocatable, &node.nonzero_requested, &pod.nonzero);
        (f(a.milli_cpu, r.milli_cpu + p.milli_cpu) + f(a.memory, r.memory + p.memory)) / 2
    }
}

/// Favours nodes whose CPU and memory use stay in proportion.
pub struct BalancedAllocation;
impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let frac = |alloc: i64, req: i64| {
            if alloc <= 0 {
                1.0
            } else {
                (req as f64 / alloc as f64).min(1.0)
            }
        };
        let (a, r, p) = (&node.allocatable, &node.nonzero_requested, &pod.nonzero);
        let c = frac(a.milli_cpu, r.milli_cpu + p.milli_cpu);
        let m = frac(a.memory, r.memory + p.memory);
        let std = (c - m).abs() / 2.0;
        ((1.0 - std) * 100.0) as i64
    }
}

pub struct InterPodAffinity;
impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn pre_filter(&self, pod: &PodInfo, cluster: &ClusterState, state: &mut CycleState) {
        for (node, other) in cluster.anti_pods.values() {
            let Some(ni) = cluster.nodes.get(node) else {
                continue;
            };
            for t in &other.anti_affinity {
                if t.matches(pod) {
                    if let Some(v) = ni.label(&t.topology_key) {
                        state
                            .existing_anti
                            .insert((t.topology_key.clone(), v.to_string()));
                    }
                }
            }
        }
        if pod.affinity.is_empty() && pod.anti_affinity.is_empty() {
            return;
        }
        state.affinity_domains = vec![HashSet::new(); pod.affinity.len()];
        state.anti_domains = vec![HashSet::new(); pod.anti_affinity.len()];
        for ni in cluster.nodes.values() {
            for other in ni.pods.values() {
                if other.key == pod.key {
                    continue;
                }
                for (i, t) in pod.affinity.iter().enumerate() {
                    if t.matches(other) {
                        if let Some(v) = ni.label(&t.topology_key) {
                            state.affinity_domains[i].insert(v.to_string());
                        }
                    }
                }
                for (i, t) in pod.anti_affinity.iter().enumerate() {
                    if t.matches(other) {
                        if let Some(v) = ni.label(&t.topology_key) {
                            state.anti_domains[i].insert(v.to_string());
                        }
                    }
                }
            }
        }
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        for (k, v) in &state.existing_anti {
            if node.label(k) == Some(v.as_str()) {
                return fail(ERR_EXISTING_ANTI_AFFINITY);
            }
        }
        for (i, t) in pod.anti_affinity.iter().enumerate() {
            if let Some(v) = node.label(&t.topology_key) {
                if state.anti_domains.get(i).is_some_and(|d| d.contains(v)) {
                    return fail(ERR_ANTI_AFFINITY);
                }
            }
        }
        if pod.affinity.is_empty() {
            return Ok(());
        }
        let mut pods_exist = true;
        for (i, t) in pod.affinity.iter().enumerate() {
            let Some(v) = node.label(&t.topology_key) else {
                return fail(ERR_AFFINITY);
            };
            if !state.affinity_domains.get(i).is_some_and(|d| d.contains(v)) {
                pods_exist = false;
            }
        }
        if pods_exist {
            return Ok(());
        }
        // The first pod of a group with affinity to itself may go anywhere.
        let none_anywhere = state.affinity_domains.iter().all(HashSet::is_empty);
        if none_anywhere && pod.affinity.iter().all(|t| t.matches(pod)) {
            return Ok(());
        }
        fail(ERR_AFFINITY)
    }
}

fn spread_counts(
    pod: &PodInfo,
    cluster: &ClusterState,
    c: &crate::types::SpreadConstraint,
) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for name in &cluster.order {
        let Some(ni) = cluster.nodes.get(name) else {
            continue;
        };
        let Some(v) = ni.label(&c.topology_key) else {
            continue;
        };
        if !node_matches_pod(pod, ni) {
            continue;
        }
        let n = ni
            .pods
            .values()
            .filter(|p| {
                p.namespace == pod.namespace
                    && !p.deleting
                    && p.key != pod.key
                    && c.selector.matches_labels(Some(&p.labels))
            })
            .count() as i64;
        *counts.entry(v.to_string()).or_insert(0) += n;
    }
    counts
}

pub struct PodTopologySpread;
impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn pre_filter(&self, pod: &PodInfo, cluster: &ClusterState, state: &mut CycleState) {
        for c in &pod.spread {
            let counts = spread_counts(pod, cluster, c);
            state
                .spread_min
                .push(counts.values().copied().min().unwrap_or(0));
            state.spread_counts.push(counts);
        }
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reasons> {
        for (i, c) in pod.spread.iter().enumerate() {
            if !c.hard {
                continue;
            }
            let Some(v) = node.label(&c.topology_key) else {
                return fail(ERR_SPREAD_LABEL);
            };
            let own = i64::from(c.selector.matches_labels(Some(&pod.labels)));
            let count = state
                .spread_counts
                .get(i)
                .and_then(|m| m.get(v))
                .copied()
                .unwrap_or(0);
            let min = state.spread_min.get(i).copied().unwrap_or(0);
            if count + own - min > c.max_skew {
                return fail(ERR_SPREAD);
            }
        }
        Ok(())
    }
}

/// Spreads pods of one owner (or one soft topology spread group) across
/// nodes: fewer such pods on (or in the domain of) a node scores higher.
pub struct Spread;
impl ScorePlugin for Spread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let soft: i64 = pod
            .spread
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.hard)
            .map(|(i, c)| {
                node.label(&c.topology_key)
                    .and_then(|v| state.spread_counts.get(i).and_then(|m| m.get(v)))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        if pod.spread.iter().any(|c| !c.hard) {
            return soft;
        }
        pod.owner
            .as_ref()
            .and_then(|o| node.owners.get(o))
            .map_or(0, |c| *c as i64)
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_reverse(scores)
    }
}

/// The default profile's filters, in upstream's order.
pub fn default_filters() -> Vec<Box<dyn FilterPlugin>> {
    vec![
        Box::new(NodeUnschedulable),
        Box::new(NodeName),
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(NodePorts),
        Box::new(NodeResourcesFit),
        Box::new(PodTopologySpread),
        Box::new(InterPodAffinity),
    ]
}

pub fn default_scores() -> Vec<Box<dyn ScorePlugin>> {
    vec![
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(LeastAllocated),
        Box::new(BalancedAllocation),
        Box::new(Spread),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PodInfo;
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, extra: Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}
        });
        kobune_apimachinery::patch::json_merge_patch(&n.clone(), &extra).clone_into(&mut n);
        NodeInfo::from_value(&n)
    }

    fn pod(name: &str, spec: Value) -> PodInfo {
        pod_l(name, json!({}), spec)
    }

    fn pod_l(name: &str, labels: Value, spec: Value) -> PodInfo {
        let mut s = json!({"containers": [{"name": "c", "image": "i"}]});
        kobune_apimachinery::patch::json_merge_patch(&s.clone(), &spec).clone_into(&mut s);
        PodInfo::from_value(
            &format!("/registry/core/pods/default/{name}"),
            &json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": s}),
        )
    }

    fn res(cpu: &str, mem: &str) -> Value {
        json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]})
    }

    fn check(p: &dyn FilterPlugin, pod: &PodInfo, n: &NodeInfo) -> Result<(), Reasons> {
        p.filter(&CycleState::default(), pod, n)
    }

    #[test]
    fn node_name_and_unschedulable() {
        let n = node("a", json!({}));
        assert!(check(&NodeName, &pod("p", json!({})), &n).is_ok());
        assert_eq!(
            check(&NodeName, &pod("p", json!({"nodeName": "b"})), &n).unwrap_err(),
            [ERR_NODE_NAME]
        );
        let cordoned = node("a", json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            check(&NodeUnschedulable, &pod("p", json!({})), &cordoned).unwrap_err(),
            [ERR_UNSCHEDULABLE]
        );
        let tol = pod(
            "p",
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(check(&NodeUnschedulable, &tol, &cordoned).is_ok());
    }

    #[test]
    fn prefer_no_schedule_taints_score() {
        let st = CycleState::default();
        let plain = node("a", json!({}));
        let hard = node(
            "b",
            json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
        );
        let soft = node(
            "c",
            json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]}}),
        );
        let p = pod("p", json!({}));
        assert_eq!(TaintToleration.score(&st, &p, &plain), 0);
        assert_eq!(TaintToleration.score(&st, &p, &hard), 0);
        assert_eq!(TaintToleration.score(&st, &p, &soft), 1);
        let tol = pod(
            "t",
            json!({"tolerations": [{"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"}]}),
        );
        assert_eq!(TaintToleration.score(&st, &tol, &soft), 0);
        let mut scores = vec![0, 0, 1];
        TaintToleration.normalize(&mut scores);
        assert_eq!(scores, [100, 100, 0]);
    }

    #[test]
    fn resources_fit() {
        let mut n = node("a", json!({}));
        let small = Arc::new(pod("s", res("3", "1Gi")));
        assert!(check(&NodeResourcesFit, &small, &n).is_ok());
        n.add_pod(small);
        let err = check(&NodeResourcesFit, &pod("b", res("2", "16Gi")), &n).unwrap_err();
        assert_eq!(err, ["Insufficient cpu", "Insufficient memory"]);
        assert!(check(&NodeResourcesFit, &pod("c", res("1", "1Gi")), &n).is_ok());
        n.remove_pod("/registry/core/pods/default/s");
        assert!(check(&NodeResourcesFit, &pod("b", res("2", "1Gi")), &n).is_ok());
        let full = node("f", json!({"status": {"allocatable": {"pods": "0"}}}));
        assert_eq!(
            check(&NodeResourcesFit, &pod("p", json!({})), &full).unwrap_err(),
            ["Too many pods"]
        );
    }

    #[test]
    fn node_affinity_and_selector() {
        let n = node(
            "a",
            json!({"metadata": {"labels": {"disk": "ssd", "gen": "5"}}}),
        );
        assert!(check(
            &NodeAffinity,
            &pod("p", json!({"nodeSelector": {"disk": "ssd"}})),
            &n
        )
        .is_ok());
        assert_eq!(
            check(
                &NodeAffinity,
                &pod("p", json!({"nodeSelector": {"disk": "hdd"}})),
                &n
            )
            .unwrap_err(),
            [ERR_NODE_AFFINITY]
        );
        let aff = |exprs: Value| {
            pod(
                "p",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}),
            )
        };
        assert!(check(
            &NodeAffinity,
            &aff(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])),
            &n
        )
        .is_ok());
        assert!(check(
            &NodeAffinity,
            &aff(json!([{"key": "gen", "operator": "Lt", "values": ["4"]}])),
            &n
        )
        .is_err());
        assert!(check(
            &NodeAffinity,
            &aff(json!([{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}])),
            &n
        )
        .is_ok());
        assert!(check(
            &NodeAffinity,
            &aff(json!([{"key": "disk", "operator": "DoesNotExist"}])),
            &n
        )
        .is_err());
        let by_name = pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}}),
        );
        assert!(check(&NodeAffinity, &by_name, &n).is_ok());
        // Preferred terms score.
        let pref = pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 7, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}}),
        );
        let other = node("b", json!({}));
        let mut s = [
            ScorePlugin::score(&NodeAffinity, &CycleState::default(), &pref, &n),
            ScorePlugin::score(&NodeAffinity, &CycleState::default(), &pref, &other),
        ];
        ScorePlugin::normalize(&NodeAffinity, &mut s);
        assert_eq!(s, [100, 0]);
    }

    #[test]
    fn taints_and_tolerations() {
        let n = node(
            "a",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            check(&TaintToleration, &pod("p", json!({})), &n).unwrap_err(),
            ["node(s) had untolerated taint {dedicated: infra}"]
        );
        let eq = pod(
            "p",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]}),
        );
        assert!(check(&TaintToleration, &eq, &n).is_ok());
        let wrong = pod(
            "p",
            json!({"tolerations": [{"key": "dedicated", "value": "other"}]}),
        );
        assert!(check(&TaintToleration, &wrong, &n).is_err());
        let all = pod("p", json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(check(&TaintToleration, &all, &n).is_ok());
        let soft = node(
            "b",
            json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
        );
        assert!(check(&TaintToleration, &pod("p", json!({})), &soft).is_ok());
        let plain = node("c", json!({}));
        let p = pod("p", json!({}));
        let mut s = [
            ScorePlugin::score(&TaintToleration, &CycleState::default(), &p, &soft),
            ScorePlugin::score(&TaintToleration, &CycleState::default(), &p, &plain),
        ];
        ScorePlugin::normalize(&TaintToleration, &mut s);
        assert_eq!(s, [0, 100]);
    }

    #[test]
    fn host_ports() {
        let mut n = node("a", json!({}));
        let port = |ip: &str, p: i64| {
            pod(
                "p",
                json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": p, "hostIP": ip}]}]}),
            )
        };
        n.add_pod(Arc::new(pod_l("x", json!({}), json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}))));
        assert_eq!(
            check(&NodePorts, &port("0.0.0.0", 8080), &n).unwrap_err(),
            [ERR_PORTS]
        );
        assert_eq!(
            check(&NodePorts, &port("10.0.0.1", 8080), &n).unwrap_err(),
            [ERR_PORTS]
        );
        assert!(check(&NodePorts, &port("0.0.0.0", 8081), &n).is_ok());
    }

    fn cluster(nodes: Vec<NodeInfo>) -> ClusterState {
        let mut c = ClusterState::default();
        for n in nodes {
            c.order.push(n.name.clone());
            c.nodes.insert(n.name.clone(), n);
        }
        c
    }

    fn place(c: &mut ClusterState, p: PodInfo, node: &str) {
        c.add_pod(Arc::new(p), node);
    }

    fn zone(name: &str, z: &str) -> NodeInfo {
        node(name, json!({"metadata": {"labels": {"zone": z}}}))
    }

    fn run_filter(p: &dyn FilterPlugin, pod: &PodInfo, c: &ClusterState) -> Vec<(String, bool)> {
        let mut st = CycleState::default();
        p.pre_filter(pod, c, &mut st);
        let mut out: Vec<_> = c
            .order
            .iter()
            .map(|n| (n.clone(), p.filter(&st, pod, &c.nodes[n]).is_ok()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn inter_pod_affinity() {
        let mut c = cluster(vec![zone("a", "z1"), zone("b", "z1"), zone("c", "z2")]);
        place(&mut c, pod_l("db", json!({"app": "db"}), json!({})), "a");
        let term =
            json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]);
        let with = pod(
            "w",
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
        );
        let r = run_filter(&InterPodAffinity, &with, &c);
        assert_eq!(
            r,
            [("a".into(), true), ("b".into(), true), ("c".into(), false)]
        );
        let anti = pod(
            "w",
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
        );
        let r = run_filter(&InterPodAffinity, &anti, &c);
        assert_eq!(
            r,
            [("a".into(), false), ("b".into(), false), ("c".into(), true)]
        );
        // An existing pod's anti-affinity keeps matching pods away.
        let host = json!([{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]);
        place(
            &mut c,
            pod_l(
                "guard",
                json!({}),
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": host}}}),
            ),
            "c",
        );
        let web = pod_l("web", json!({"app": "web"}), json!({}));
        let r = run_filter(&InterPodAffinity, &web, &c);
        assert_eq!(
            r,
            [("a".into(), true), ("b".into(), true), ("c".into(), false)]
        );
        // First pod of a self-affine group goes anywhere.
        let selfish = pod_l(
            "s",
            json!({"app": "cache"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}),
        );
        assert!(run_filter(&InterPodAffinity, &selfish, &c)
            .iter()
            .all(|(_, ok)| *ok));
    }

    #[test]
    fn topology_spread() {
        let mut c = cluster(vec![
            zone("a", "z1"),
            zone("b", "z1"),
            zone("c", "z2"),
            node("d", json!({})),
        ]);
        place(&mut c, pod_l("x1", json!({"app": "s"}), json!({})), "a");
        place(&mut c, pod_l("x2", json!({"app": "s"}), json!({})), "b");
        let p = pod_l(
            "n",
            json!({"app": "s"}),
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "s"}}}]}),
        );
        let r = run_filter(&PodTopologySpread, &p, &c);
        assert_eq!(
            r,
            [
                ("a".into(), false),
                ("b".into(), false),
                ("c".into(), true),
                ("d".into(), false)
            ]
        );
        let mut st = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut st);
        assert_eq!(
            PodTopologySpread
                .filter(&st, &p, &c.nodes["d"])
                .unwrap_err(),
            [ERR_SPREAD_LABEL]
        );
    }

    #[test]
    fn scores() {
        let empty = node("a", json!({}));
        let mut busy = node("b", json!({}));
        busy.add_pod(Arc::new(pod("x", res("2", "1Gi"))));
        let p = pod("p", res("1", "1Gi"));
        let st = CycleState::default();
        let free = LeastAllocated.score(&st, &p, &empty);
        let less = LeastAllocated.score(&st, &p, &busy);
        assert!(free > less, "{free} {less}");
        assert_eq!(free, (75 + 87) / 2);
        // Balanced: 1 cpu of 4 (25%) and 2Gi of 8Gi (25%) is perfectly balanced.
        let bal = pod("p", res("1", "2Gi"));
        assert_eq!(BalancedAllocation.score(&st, &bal, &empty), 100);
        let skewed = pod("p", res("4", "0"));
        assert!(BalancedAllocation.score(&st, &skewed, &empty) < 100);
        // Pods of one owner spread out.
        let owned = |name: &str| {
            PodInfo::from_value(
                &format!("/registry/core/pods/default/{name}"),
                &json!({"metadata": {"name": name, "namespace": "default",
                    "ownerReferences": [{"uid": "rs1", "controller": true, "kind": "ReplicaSet", "name": "rs", "apiVersion": "apps/v1"}]},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            )
        };
        let mut n1 = node("a", json!({}));
        n1.add_pod(Arc::new(owned("r1")));
        n1.add_pod(Arc::new(owned("r2")));
        let mut n2 = node("b", json!({}));
        n2.add_pod(Arc::new(owned("r3")));
        let n3 = node("c", json!({}));
        let p = owned("r4");
        let mut s: Vec<i64> = [&n1, &n2, &n3]
            .iter()
            .map(|n| Spread.score(&st, &p, n))
            .collect();
        Spread.normalize(&mut s);
        assert_eq!(s, [0, 50, 100]);
    }

    #[test]
    fn framework_reports_reasons_like_upstream() {
        let mut c = cluster(vec![
            node(
                "a",
                json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
            ),
            node("b", json!({})),
            node("c", json!({"metadata": {"labels": {"disk": "ssd"}}})),
        ]);
        c.nodes
            .get_mut("b")
            .unwrap()
            .add_pod(Arc::new(pod("x", res("4", "1Gi"))));
        let fw = crate::Framework::default();
        let err = fw.schedule(&pod("p", res("8", "1Gi")), &c).unwrap_err();
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
        let ok = fw
            .schedule(&pod("p", json!({"nodeSelector": {"disk": "ssd"}})), &c)
            .unwrap();
        assert_eq!(ok, "c");
        // Plain pods go to the emptier untainted node.
        assert_eq!(fw.schedule(&pod("p", res("1", "1Gi")), &c).unwrap(), "c");
    }
}

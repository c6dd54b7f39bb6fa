//! The scheduler's cache: every node with the pods bound or assumed on it,
//! kept current from the informers, so a scheduling cycle reads
//! precomputed totals instead of rescanning pods.

use crate::types::{NodeInfo, PodInfo};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Default)]
pub struct ClusterState {
    pub nodes: HashMap<String, NodeInfo>,
    /// Names of existing nodes, in the order the scheduler walks them.
    pub order: Vec<String>,
    /// Placed pods with required anti-affinity terms, by key: (node, pod).
    pub anti_pods: HashMap<String, (String, Arc<PodInfo>)>,
    pod_node: HashMap<String, String>,
    assumed: HashSet<String>,
}

/// What scheduling decisions depend on, copied out of a node (its pods
/// are not: cloning them on every node status write was the old cost).
fn relevant(n: &NodeInfo) -> impl PartialEq {
    (
        n.labels.clone(),
        n.allocatable,
        n.unschedulable,
        n.taints.clone(),
    )
}

impl ClusterState {
    /// Adds or updates a node; true when something scheduling cares about
    /// changed (so unschedulable pods deserve another look).
    pub fn upsert_node(&mut self, node: &Value) -> bool {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match self.nodes.get_mut(&name) {
            Some(n) => {
                let before = relevant(n);
                let existed = n.exists;
                n.set_node(node);
                if !existed {
                    self.order.push(name);
                    return true;
                }
                before != relevant(n)
            }
            None => {
                self.nodes.insert(name.clone(), NodeInfo::from_value(node));
                self.order.push(name);
                true
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(pos) = self.order.iter().position(|n| n == name) {
            self.order.swap_remove(pos);
        }
        if let Some(n) = self.nodes.get_mut(name) {
            if n.pods.is_empty() {
                self.nodes.remove(name);
            } else {
                n.exists = false;
            }
        }
    }

    /// Places a pod on its node (replacing any earlier placement, and
    /// confirming an assumed pod).
    pub fn add_pod(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove_pod(&pod.key);
        let ni = self
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeInfo {
                name: node.to_string(),
                ..Default::default()
            });
        if !pod.anti_affinity.is_empty() {
            self.anti_pods
                .insert(pod.key.clone(), (node.to_string(), pod.clone()));
        }
        self.pod_node.insert(pod.key.clone(), node.to_string());
        ni.add_pod(pod);
    }

    pub fn remove_pod(&mut self, key: &str) -> bool {
        self.assumed.remove(key);
        self.anti_pods.remove(key);
        let Some(node) = self.pod_node.remove(key) else {
            return false;
        };
        if let Some(ni) = self.nodes.get_mut(&node) {
            ni.remove_pod(key);
            if !ni.exists && ni.pods.is_empty() {
                self.nodes.remove(&node);
            }
        }
        true
    }

    /// Counts a pod on a node before its binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        let key = pod.key.clone();
        self.add_pod(pod, node);
        self.assumed.insert(key);
    }

    /// Drops an assumed pod whose binding failed.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.contains(key) {
            self.remove_pod(key);
        }
    }

    /// Marks a pod's placement as confirmed by the API.
    pub fn confirm(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.add_pod(pod, node);
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.pod_node.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: Value) -> Value {
        json!({"metadata": {"name": "n1", "labels": labels},
               "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
    }

    #[test]
    fn upsert_node_reports_only_relevant_changes_and_keeps_pods() {
        let mut c = ClusterState::default();
        assert!(c.upsert_node(&node(json!({"a": "1"}))));
        let pod = json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"},
                         "spec": {"nodeName": "n1", "containers": [{"name": "c",
                           "resources": {"requests": {"cpu": "1"}}}]}});
        c.confirm(
            Arc::new(PodInfo::from_value("/registry/core/pods/d/p", &pod)),
            "n1",
        );
        // The same node written again (a heartbeat): nothing to retry.
        assert!(!c.upsert_node(&node(json!({"a": "1"}))));
        assert!(c.upsert_node(&node(json!({"a": "2"}))));
        let n = &c.nodes["n1"];
        assert_eq!(n.pods.len(), 1);
        assert_eq!(n.requested.milli_cpu, 1000);
        assert_eq!(c.order, vec!["n1".to_string()]);
        assert_eq!(c.node_of("/registry/core/pods/d/p"), Some("n1"));
    }
}

//! What the scheduler extracts from Pods and Nodes once, so that filtering
//! and scoring never walk JSON on the hot path.

use crate::quantity;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The default scheduler's name.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// Requests assumed for scoring when a container asks for none (upstream's
/// non-zero defaults: 100m CPU, 200Mi memory).
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }
    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
    fn from_list(v: Option<&Value>) -> Resources {
        let get = |k: &str| v.and_then(|m| m.get(k)).and_then(quantity::from_json);
        Resources {
            milli_cpu: get("cpu").map_or(0, |x| (x * 1000.0 - 1e-9).ceil() as i64),
            memory: get("memory").map_or(0, |x| (x - 1e-9).ceil() as i64),
            pods: get("pods").map_or(0, |x| x as i64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    pub operator: String,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    /// Whether this toleration tolerates the taint (upstream ToleratesTaint).
    pub fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != t.key {
            return false;
        }
        match self.operator.as_str() {
            "Exists" => true,
            "" | "Equal" => self.value == t.value,
            _ => false,
        }
    }
}

pub fn tolerated(tols: &[Toleration], t: &Taint) -> bool {
    tols.iter().any(|tol| tol.tolerates(t))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i64,
}

/// One pod affinity / anti-affinity term.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    pub selector: kobune_apimachinery::selectors::Selector,
    /// None: every namespace (an empty namespaceSelector).
    pub namespaces: Option<Vec<String>>,
    pub topology_key: String,
}

impl AffinityTerm {
    pub fn matches(&self, pod: &PodInfo) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.contains(&pod.namespace))
            && self.selector.matches_labels(Some(&pod.labels))
    }
}

#[derive(Debug, Clone)]
pub struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub hard: bool,
    pub selector: kobune_apimachinery::selectors::Selector,
}

/// The scheduling-relevant parts of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// Cache key, `/registry/core/pods/<ns>/<name>`.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: Map<String, Value>,
    pub node_name: String,
    pub scheduler_name: String,
    pub priority: i64,
    pub requests: Resources,
    /// Requests with upstream's non-zero defaults, for scoring.
    pub nonzero: Resources,
    pub ports: Vec<HostPort>,
    pub node_selector: Map<String, Value>,
    /// requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms
    pub required_node_terms: Option<Vec<Value>>,
    /// (weight, preference term)
    pub preferred_node_terms: Vec<(i64, Value)>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    pub spread: Vec<SpreadConstraint>,
    /// The controller owner's uid, for spreading replicas.
    pub owner: Option<String>,
    pub deleting: bool,
    pub terminal: bool,
}

fn str_of<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn container_resources(c: &Value) -> (Resources, Resources) {
    let mut req = Resources::from_list(c.pointer("/resources/requests"));
    // Limits stand in for missing requests (API defaulting does this too).
    let lim = Resources::from_list(c.pointer("/resources/limits"));
    if req.milli_cpu == 0 && c.pointer("/resources/requests/cpu").is_none() {
        req.milli_cpu = lim.milli_cpu;
    }
    if req.memory == 0 && c.pointer("/resources/requests/memory").is_none() {
        req.memory = lim.memory;
    }
    let mut nz = req;
    if c.pointer("/resources/requests/cpu").is_none() && lim.milli_cpu == 0 {
        nz.milli_cpu = DEFAULT_MILLI_CPU;
    }
    if c.pointer("/resources/requests/memory").is_none() && lim.memory == 0 {
        nz.memory = DEFAULT_MEMORY;
    }
    (req, nz)
}

fn max_res(a: &mut Resources, b: &Resources) {
    a.milli_cpu = a.milli_cpu.max(b.milli_cpu);
    a.memory = a.memory.max(b.memory);
}

fn affinity_terms(pod_ns: &str, v: Option<&Value>) -> Vec<AffinityTerm> {
    let Some(terms) = v.and_then(Value::as_array) else {
        return vec![];
    };
    terms
        .iter()
        .map(|t| {
            let selector = t
                .get("labelSelector")
                .and_then(|s| kobune_apimachinery::selectors::Selector::from_label_selector(s).ok())
                // A missing labelSelector matches no pods.
                .unwrap_or_else(|| {
                    kobune_apimachinery::selectors::Selector(vec![
                        kobune_apimachinery::selectors::Requirement::In(String::new(), vec![]),
                    ])
                });
            let listed = kobune_apimachinery::str_list(t.get("namespaces"));
            let ns_sel = t.get("namespaceSelector");
            let namespaces = if listed.is_empty() && ns_sel.is_none() {
                Some(vec![pod_ns.to_string()])
            } else if ns_sel.is_some_and(|s| s.as_object().is_some_and(|m| m.is_empty())) {
                None
            } else {
                Some(listed)
            };
            AffinityTerm {
                selector,
                namespaces,
                topology_key: str_of(t, "/topologyKey").to_string(),
            }
        })
        .collect()
}

impl PodInfo {
    pub fn from_value(key: &str, pod: &Value) -> PodInfo {
        let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        let namespace = str_of(pod, "/metadata/namespace").to_string();
        let mut requests = Resources::default();
        let mut nonzero = Resources::default();
        let mut ports = vec![];
        for c in spec
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (r, nz) = container_resources(c);
            requests.add(&r);
            nonzero.add(&nz);
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let hp = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                if hp > 0 {
                    ports.push(HostPort {
                        protocol: p
                            .get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_string(),
                        ip: p
                            .get("hostIP")
                            .and_then(Value::as_str)
                            .unwrap_or("0.0.0.0")
                            .to_string(),
                        port: hp,
                    });
                }
            }
        }
        // Init containers run one at a time: the pod needs the largest.
        for c in spec
            .get("initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (r, nz) = container_resources(c);
            max_res(&mut requests, &r);
            max_res(&mut nonzero, &nz);
        }
        if let Some(o) = spec.get("overhead") {
            let o = Resources::from_list(Some(o));
            requests.add(&o);
            nonzero.add(&o);
        }
        requests.pods = 1;
        nonzero.pods = 1;
        let tolerations = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|t| Toleration {
                        key: str_of(t, "/key").to_string(),
                        operator: str_of(t, "/operator").to_string(),
                        value: str_of(t, "/value").to_string(),
                        effect: str_of(t, "/effect").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let na = spec.pointer("/affinity/nodeAffinity");
        let required_node_terms = na
            .and_then(|a| {
                a.pointer("/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            })
            .and_then(Value::as_array)
            .cloned();
        let preferred_node_terms = na
            .and_then(|a| a.get("preferredDuringSchedulingIgnoredDuringExecution"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p.get("weight").and_then(Value::as_i64).unwrap_or(0),
                            p.get("preference").cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let affinity = affinity_terms(
            &namespace,
            spec.pointer("/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution"),
        );
        let anti_affinity = affinity_terms(
            &namespace,
            spec.pointer(
                "/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            ),
        );
        let spread = spec
            .get("topologySpreadConstraints")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| SpreadConstraint {
                        max_skew: c.get("maxSkew").and_then(Value::as_i64).unwrap_or(1).max(1),
                        topology_key: str_of(c, "/topologyKey").to_string(),
                        hard: str_of(c, "/whenUnsatisfiable") != "ScheduleAnyway",
                        selector: c
                            .get("labelSelector")
                            .and_then(|s| {
                                kobune_apimachinery::selectors::Selector::from_label_selector(s)
                                    .ok()
                            })
                            .unwrap_or_else(|| {
                                kobune_apimachinery::selectors::Selector(vec![
                                    kobune_apimachinery::selectors::Requirement::In(
                                        String::new(),
                                        vec![],
                                    ),
                                ])
                            }),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let owner = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == Value::Bool(true)))
            .and_then(|r| r.get("uid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let phase = str_of(pod, "/status/phase");
        PodInfo {
            key: key.to_string(),
            name: str_of(pod, "/metadata/name").to_string(),
            namespace,
            uid: str_of(pod, "/metadata/uid").to_string(),
            resource_version: str_of(pod, "/metadata/resourceVersion").to_string(),
            labels: pod
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            node_name: str_of(&spec, "/nodeName").to_string(),
            scheduler_name: str_of(&spec, "/schedulerName").to_string(),
            priority: spec.get("priority").and_then(Value::as_i64).unwrap_or(0),
            requests,
            nonzero,
            ports,
            node_selector: spec
                .get("nodeSelector")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            required_node_terms,
            preferred_node_terms,
            tolerations,
            affinity,
            anti_affinity,
            spread,
            owner,
            deleting: pod.pointer("/metadata/deletionTimestamp").is_some(),
            terminal: phase == "Succeeded" || phase == "Failed",
        }
    }

    /// Whether the default scheduler is responsible for this pod.
    pub fn is_ours(&self) -> bool {
        self.scheduler_name.is_empty() || self.scheduler_name == DEFAULT_SCHEDULER
    }
}

/// A node and what is already placed on it (bound and assumed pods).
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    /// False for a placeholder holding pods of a node not (yet) seen.
    pub exists: bool,
    pub labels: Map<String, Value>,
    pub allocatable: Resources,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub requested: Resources,
    pub nonzero_requested: Resources,
    pub used_ports: HashMap<HostPort, u32>,
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// Pods per controller owner uid.
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    pub fn from_value(node: &Value) -> NodeInfo {
        let mut n = NodeInfo {
            name: str_of(node, "/metadata/name").to_string(),
            exists: true,
            ..Default::default()
        };
        n.set_node(node);
        n
    }

    /// Takes the node's own fields; keeps the pods.
    pub fn set_node(&mut self, node: &Value) {
        self.exists = true;
        self.labels = node
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        self.allocatable = Resources::from_list(
            node.pointer("/status/allocatable")
                .or_else(|| node.pointer("/status/capacity")),
        );
        self.unschedulable = node.pointer("/spec/unschedulable") == Some(&Value::Bool(true));
        self.taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|t| Taint {
                        key: str_of(t, "/key").to_string(),
                        value: str_of(t, "/value").to_string(),
                        effect: str_of(t, "/effect").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
    }

    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).and_then(Value::as_str)
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        if let Some(old) = self.pods.remove(&pod.key) {
            self.account(&old, false);
        }
        self.account(&pod, true);
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        self.account(&old, false);
        Some(old)
    }

    fn account(&mut self, pod: &PodInfo, add: bool) {
        if add {
            self.requested.add(&pod.requests);
            self.nonzero_requested.add(&pod.nonzero);
        } else {
            self.requested.sub(&pod.requests);
            self.nonzero_requested.sub(&pod.nonzero);
        }
        for p in &pod.ports {
            if add {
                *self.used_ports.entry(p.clone()).or_default() += 1;
            } else if let Some(c) = self.used_ports.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    self.used_ports.remove(p);
                }
            }
        }
        if let Some(o) = &pod.owner {
            if add {
                *self.owners.entry(o.clone()).or_default() += 1;
            } else if let Some(c) = self.owners.get_mut(o) {
                *c -= 1;
                if *c == 0 {
                    self.owners.remove(o);
                }
            }
        }
    }
}

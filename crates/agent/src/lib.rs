//! The node agent. Real nodes ([`start_node`]): pods bound to this
//! machine's node run through CRI on containerd ([`node`], [`pods`],
//! [`logs`]). Simulated nodes ([`start_simulated`]), as kwok does it: each
//! node is a Node object with a Lease renewed every 10 s; every pod bound
//! to one is reported Running and Ready at once with an IP from the node's
//! pod CIDR, and deleted as soon as it is marked for deletion (as a kubelet
//! does once the containers have stopped). Nothing is actually run.
//! The simulated nodes reach the API through [`NodeApi`]: in `kobune
//! server` straight on the registry ([`api::LocalApi`]), in `kobune agent`
//! over HTTPS to a remote server ([`remote`], [`client`]).

// ApiError mirrors the wire Status; errors are off the hot path.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod client;
pub mod dns;
pub mod join;
pub mod kubelet_server;
pub mod logs;
pub mod node;
pub mod pods;
pub mod probes;
pub mod remote;
pub mod stats;
pub mod streaming;
pub mod volumes;

pub use node::{start_node, NodeConfig, NodeHandle};

pub use api::{NodeApi, PodCache};

use kobune_apimachinery::{at, ResourceInfo};
use kobune_apiserver::registry::now_rfc3339;
use kobune_apiserver::Registry;
use kobune_controllers::runtime::{run_controller, WorkQueue};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const FIELD_MANAGER: &str = "kobune-agent";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const SIMULATED_LABEL: &str = "kobune.io/simulated";
pub const KUBELET_VERSION: &str = "v1.33.0-kobune";
const LEASE_SECONDS: i64 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
const WORKERS: usize = 8;

/// A simulated node's addresses and its pod IP allocations.
struct SimNode {
    host_ip: String,
    /// First three octets of the /24 pod CIDR.
    cidr_base: String,
    /// pod uid -> last octet
    ips: HashMap<String, u8>,
}

impl SimNode {
    /// The last octet of `ip` if it lies in this node's /24.
    fn octet(&self, ip: &str) -> Option<u8> {
        ip.strip_prefix(self.cidr_base.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }

    fn holder(&self, octet: u8) -> Option<&str> {
        self.ips
            .iter()
            .find(|(_, o)| **o == octet)
            .map(|(u, _)| u.as_str())
    }

    /// Records that pod `uid` already has `ip` (as seen in its status), as
    /// an IPAM's on-disk allocations survive a kubelet restart: seen in list
    /// order, before any pod is synced, so a new pod cannot take it.
    fn reserve(&mut self, uid: &str, ip: &str) {
        if self.ips.contains_key(uid) {
            return;
        }
        if let Some(o) = self.octet(ip).filter(|o| self.holder(*o).is_none()) {
            self.ips.insert(uid.to_string(), o);
        }
    }

    fn ip_for(&mut self, uid: &str, existing: Option<&str>) -> Option<String> {
        if let Some(o) = self.ips.get(uid) {
            return Some(format!("{}.{o}", self.cidr_base));
        }
        let wanted = existing.and_then(|ip| self.octet(ip));
        let octet = match wanted {
            Some(o) if self.holder(o).is_none() => o,
            _ => {
                let free = (2u8..=254).find(|o| self.holder(*o).is_none())?;
                if let Some(o) = wanted {
                    tracing::warn!(
                        pod = uid, holder = ?self.holder(o),
                        "pod IP {}.{o} is held by another pod; giving {}.{free}",
                        self.cidr_base, self.cidr_base
                    );
                }
                free
            }
        };
        self.ips.insert(uid.to_string(), octet);
        Some(format!("{}.{octet}", self.cidr_base))
    }
}

struct Agent {
    api: Arc<dyn NodeApi>,
    nodes: Mutex<HashMap<String, SimNode>>,
    /// pod key -> (node, uid), to release IPs when pods go.
    placed: Mutex<HashMap<String, (String, String)>>,
    pods: OnceLock<Arc<dyn PodCache>>,
}

fn node_index(i: usize) -> (String, String, String) {
    let n = i + 1;
    let host_ip = format!("10.0.{}.{}", n / 256, n % 256);
    let cidr_base = format!("10.{}.{}", 42 + i / 256, i % 256);
    let cidr = format!("{cidr_base}.0/24");
    (host_ip, cidr_base, cidr)
}

/// The index [`node_index`] gives `cidr` (`10.A.B.0/24` with A >= 42).
fn cidr_index(cidr: &str) -> Option<usize> {
    let mut o = cidr.strip_suffix(".0/24")?.split('.');
    let (ten, a, b) = (o.next()?, o.next()?.parse::<usize>().ok()?, o.next()?);
    let b = b.parse::<usize>().ok().filter(|b| *b < 256)?;
    (ten == "10" && a >= 42 && o.next().is_none()).then(|| (a - 42) * 256 + b)
}

/// Which node index each of `names` gets: an existing node keeps the one
/// its podCIDR shows; new nodes take the lowest index no node's podCIDR uses.
fn assign_indices(names: &[String], existing: &[Value]) -> Vec<usize> {
    let cidr_of = |n: &Value| {
        n.pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .and_then(cidr_index)
    };
    let mut used: std::collections::HashSet<usize> = existing.iter().filter_map(cidr_of).collect();
    let mut next = 0;
    names
        .iter()
        .map(|name| {
            let mine = existing
                .iter()
                .find(|n| n["metadata"]["name"] == name.as_str())
                .and_then(cidr_of);
            mine.unwrap_or_else(|| {
                while used.contains(&next) {
                    next += 1;
                }
                used.insert(next);
                next
            })
        })
        .collect()
}

/// The Node object of simulated node `i`.
pub fn node_object(name: &str, i: usize) -> Value {
    let (host_ip, _, cidr) = node_index(i);
    let now = now_rfc3339();
    let resources =
        json!({"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "type": "kwok",
                SIMULATED_LABEL: "true"
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": host_ip},
                {"type": "Hostname", "address": name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "simulated", "osImage": "kobune simulated node",
                "containerRuntimeVersion": "simulated://1.0",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux", "architecture": "amd64"
            }
        }
    })
}

fn micro_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn find(
    reg: &Registry,
    group: &str,
    version: &str,
    plural: &str,
) -> anyhow::Result<Arc<ResourceInfo>> {
    reg.resources
        .find(group, version, plural)
        .ok_or_else(|| anyhow::anyhow!("{plural} are not served"))
}

/// Registers `count` simulated nodes named `{prefix}-{i}` and runs them:
/// leases renewed every 10 s, and every pod bound to them made Running and
/// Ready (and deleted at once when marked for deletion). Returns once the
/// nodes exist; the agent runs until the process ends.
pub async fn start_simulated(
    registry: Arc<Registry>,
    count: usize,
    prefix: &str,
) -> anyhow::Result<()> {
    let api = Arc::new(api::LocalApi::new(registry)?);
    start_simulated_with(api, count, prefix).await?;
    Ok(())
}

/// As [`start_simulated`], through any [`NodeApi`] (the in-process
/// registry, or a remote API server for `kobune agent`). Returns the names
/// of the nodes once they are registered.
pub async fn start_simulated_with<A: NodeApi>(
    api: Arc<A>,
    count: usize,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    api.ensure_namespace(LEASE_NAMESPACE).await?;
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let existing = api.list_nodes().await?;
    let indices = assign_indices(&names, &existing);
    let mut sims = HashMap::new();
    let mut leases = vec![];
    for (name, &i) in names.iter().zip(&indices) {
        let (host_ip, cidr_base, _) = node_index(i);
        let uid = api.register_node(node_object(name, i)).await?;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]
            },
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}
        });
        if let Err(e) = api.create_lease(lease.clone()).await {
            tracing::warn!(node = %name, "creating lease failed: {e:#}");
        }
        sims.insert(
            name.clone(),
            SimNode {
                host_ip,
                cidr_base,
                ips: HashMap::new(),
            },
        );
        leases.push(lease);
    }

    // Leases: renewed in small concurrent batches.
    let renewer = api.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = micro_now();
            for chunk in leases.chunks(16) {
                let mut set = tokio::task::JoinSet::new();
                for lease in chunk {
                    let (api, mut lease) = (renewer.clone(), lease.clone());
                    lease["spec"]["renewTime"] = json!(now);
                    set.spawn(async move {
                        if let Err(e) = api.renew_lease(&lease).await {
                            tracing::debug!(node = %lease["metadata"]["name"], "renewing lease failed: {e:#}");
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            }
        }
    });

    // Pods bound to our nodes.
    let ours: Arc<std::collections::HashSet<String>> = Arc::new(names.iter().cloned().collect());
    let agent = Arc::new(Agent {
        api: api.clone(),
        nodes: Mutex::new(sims),
        placed: Mutex::default(),
        pods: OnceLock::new(),
    });
    let queue = WorkQueue::default();
    let (a, q) = (agent.clone(), queue.clone());
    let handler: api::PodHandler =
        Arc::new(move |key: &str, pod: &Value, gone: bool| a.on_event(key, pod, gone, &q));
    let cache = api.clone().watch_pods(ours, handler).await?;
    let _ = agent.pods.set(cache);
    let a = agent.clone();
    tokio::spawn(run_controller(
        "simulated-kubelet",
        queue,
        move |key: String| {
            let a = a.clone();
            async move { a.sync(&key).await }
        },
        WORKERS,
    ));
    tracing::info!(count, prefix, "simulated nodes started");
    Ok(names)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    fn ours(&self, pod: &Value) -> bool {
        pod.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| lock(&self.nodes).contains_key(n))
    }

    fn on_event(&self, key: &str, pod: &Value, gone: bool, q: &WorkQueue) {
        let ours = self.ours(pod);
        if ours && !gone {
            self.reserve_ip(key, pod);
        }
        if ours || (gone && lock(&self.placed).contains_key(key)) {
            q.add(key.to_string());
        }
    }

    /// Keeps the IP a running pod already reports (see [`SimNode::reserve`]).
    fn reserve_ip(&self, key: &str, pod: &Value) {
        let (Some(node), Some(uid), Some(ip)) = (
            at(pod, "/spec/nodeName").and_then(Value::as_str),
            at(pod, "/metadata/uid").and_then(Value::as_str),
            at(pod, "/status/podIP").and_then(Value::as_str),
        ) else {
            return;
        };
        let host_network = at(pod, "/spec/hostNetwork") == Some(&Value::Bool(true));
        let done = matches!(
            at(pod, "/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if host_network || done || at(pod, "/metadata/deletionTimestamp").is_some() {
            return;
        }
        if let Some(n) = lock(&self.nodes).get_mut(node) {
            n.reserve(uid, ip);
            lock(&self.placed).insert(key.to_string(), (node.to_string(), uid.to_string()));
        }
    }

    fn release(&self, key: &str) {
        if let Some((node, uid)) = lock(&self.placed).remove(key) {
            if let Some(n) = lock(&self.nodes).get_mut(&node) {
                n.ips.remove(&uid);
            }
        }
    }

    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pod) = self.pods.get().and_then(|c| c.get(key)) else {
            self.release(key);
            return Ok(None);
        };
        if !self.ours(&pod) {
            return Ok(None);
        }
        let mut parts = key.rsplit('/');
        let name = parts.next().unwrap_or_default().to_string();
        let ns = parts.next().unwrap_or_default().to_string();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            self.api.delete_pod_now(&ns, &name, &uid).await?;
            return Ok(None);
        }
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Ok(None);
        }
        let node = pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
        let (host_ip, pod_ip) = {
            let mut nodes = lock(&self.nodes);
            let Some(sim) = nodes.get_mut(&node) else {
                return Ok(None);
            };
            let existing = pod.pointer("/status/podIP").and_then(Value::as_str);
            let ip = if host_network {
                Some(sim.host_ip.clone())
            } else {
                sim.ip_for(&uid, existing)
            };
            (sim.host_ip.clone(), ip)
        };
        lock(&self.placed).insert(key.to_string(), (node, uid.clone()));
        let Some(pod_ip) = pod_ip else {
            anyhow::bail!("no free pod IP on the node for {key}");
        };
        let ready = phase == "Running"
            && pod.pointer("/status/podIP").and_then(Value::as_str) == Some(pod_ip.as_str())
            && pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
        if ready {
            return Ok(None);
        }
        let status = running_status(&pod, &uid, &host_ip, &pod_ip);
        self.api.patch_pod_status(&ns, &name, &status).await?;
        Ok(None)
    }
}

/// The status a kubelet would report once every container is running.
pub fn running_status(pod: &Value, uid: &str, host_ip: &str, pod_ip: &str) -> Value {
    let now = now_rfc3339();
    let start = pod
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| now.clone());
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let containers = |field: &str| -> Vec<Value> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .into_iter()
            .cloned()
            .collect()
    };
    let image_id = |image: &str| format!("simulated://{image}");
    let statuses: Vec<Value> = containers("containers")
        .iter()
        .map(|c| {
            let image = c["image"].as_str().unwrap_or_default();
            json!({
                "name": c["name"], "image": image, "imageID": image_id(image),
                "containerID": format!("simulated://{uid}"),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": start}}
            })
        })
        .collect();
    let init: Vec<Value> = containers("initContainers")
        .iter()
        .map(|c| {
            let image = c["image"].as_str().unwrap_or_default();
            json!({
                "name": c["name"], "image": image, "imageID": image_id(image),
                "containerID": format!("simulated://{uid}"),
                "ready": true, "started": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": start, "finishedAt": start}}
            })
        })
        .collect();
    let mut status = json!({
        "phase": "Running",
        "conditions": [
            cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
            cond("ContainersReady"), cond("PodScheduled")
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start,
        "containerStatuses": statuses,
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_object_is_ready_with_cidr() {
        let n = node_object("sim-3", 3);
        assert_eq!(n["spec"]["podCIDR"], "10.42.3.0/24");
        assert_eq!(n["status"]["addresses"][0]["address"], "10.0.0.4");
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(n["metadata"]["labels"][SIMULATED_LABEL], "true");
        let ready = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(node_index(300).2, "10.43.44.0/24");
    }

    #[test]
    fn node_indices_avoid_cidrs_in_use() {
        assert_eq!(cidr_index("10.42.3.0/24"), Some(3));
        assert_eq!(cidr_index(&node_index(300).2), Some(300));
        assert_eq!(cidr_index("10.41.3.0/24"), None);
        assert_eq!(cidr_index("192.168.0.0/24"), None);
        let existing = vec![
            json!({"metadata": {"name": "other-0"}, "spec": {"podCIDR": "10.42.0.0/24"}}),
            json!({"metadata": {"name": "me-1"}, "spec": {"podCIDR": "10.42.5.0/24"}}),
            json!({"metadata": {"name": "x"}, "spec": {"podCIDR": "10.42.2.0/24"}}),
        ];
        let names: Vec<String> = ["me-0", "me-1", "me-2"].map(String::from).to_vec();
        assert_eq!(assign_indices(&names, &existing), vec![1, 5, 3]);
        assert_eq!(assign_indices(&names, &[]), vec![0, 1, 2]);
    }

    #[test]
    fn ips_are_allocated_per_uid_and_reused() {
        let mut n = SimNode {
            host_ip: "10.0.0.1".into(),
            cidr_base: "10.42.0".into(),
            ips: HashMap::new(),
        };
        assert_eq!(n.ip_for("a", None).unwrap(), "10.42.0.2");
        assert_eq!(n.ip_for("b", None).unwrap(), "10.42.0.3");
        assert_eq!(n.ip_for("a", None).unwrap(), "10.42.0.2");
        assert_eq!(n.ip_for("c", Some("10.42.0.9")).unwrap(), "10.42.0.9");
        n.ips.remove("a");
        assert_eq!(n.ip_for("d", None).unwrap(), "10.42.0.2");
        // A pod whose IP is taken gets a free one.
        assert_eq!(n.ip_for("e", Some("10.42.0.9")).unwrap(), "10.42.0.4");
        assert_eq!(n.ip_for("f", Some("10.43.0.5")).unwrap(), "10.42.0.5");
    }

    #[test]
    fn listed_pods_keep_their_ips_whatever_syncs_first() {
        let mut n = SimNode {
            host_ip: "10.0.0.1".into(),
            cidr_base: "10.42.0".into(),
            ips: HashMap::new(),
        };
        // After a restart the listing reserves what running pods report...
        n.reserve("old-a", "10.42.0.2");
        n.reserve("old-b", "10.42.0.3");
        n.reserve("dup", "10.42.0.3");
        n.reserve("elsewhere", "10.42.7.4");
        // ...so a new pod synced before them cannot take those.
        assert_eq!(n.ip_for("new", None).unwrap(), "10.42.0.4");
        assert_eq!(n.ip_for("old-a", Some("10.42.0.2")).unwrap(), "10.42.0.2");
        assert_eq!(n.ip_for("old-b", Some("10.42.0.3")).unwrap(), "10.42.0.3");
        assert_eq!(n.ip_for("dup", Some("10.42.0.3")).unwrap(), "10.42.0.5");
        assert_eq!(
            n.ip_for("elsewhere", Some("10.42.7.4")).unwrap(),
            "10.42.0.6"
        );
    }

    #[test]
    fn running_status_reports_containers() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let s = running_status(&pod, "u1", "10.0.0.1", "10.42.0.2");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIPs"][0]["ip"], "10.42.0.2");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["containerID"], "simulated://u1");
        assert_eq!(c["ready"], true);
        assert!(c["state"]["running"]["startedAt"].is_string());
    }
}

//! The node agent. Real nodes ([`start_node`]): pods bound to this
//! machine's node run through CRI on containerd ([`node`], [`pods`],
//! [`logs`]). Simulated nodes ([`start_simulated`]), as kwok does it: each
//! node is a Node object with a Lease renewed every 10 s; every pod bound
//! to one is reported Running and Ready at once with an IP from the node's
//! pod CIDR, and deleted as soon as it is marked for deletion (as a kubelet
//! does once the containers have stopped). Nothing is actually run.

// ApiError mirrors the wire Status; errors are off the hot path.
#![allow(clippy::result_large_err)]

pub mod logs;
pub mod node;
pub mod pods;
pub mod probes;
pub mod streaming;
pub mod volumes;

pub use node::{start_node, NodeConfig, NodeHandle};

use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::{CacheEvent, EventType};
use kobune_apiserver::registry::{now_rfc3339, DeleteOptions, PatchKind, WriteOptions};
use kobune_apiserver::Registry;
use kobune_controllers::runtime::{run_controller, Informer, WorkQueue};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    fn ip_for(&mut self, uid: &str, existing: Option<&str>) -> Option<String> {
        if let Some(o) = self.ips.get(uid) {
            return Some(format!("{}.{o}", self.cidr_base));
        }
        let octet = existing
            .and_then(|ip| ip.strip_prefix(&format!("{}.", self.cidr_base)))
            .and_then(|o| o.parse::<u8>().ok())
            .filter(|o| !self.ips.values().any(|x| x == o))
            .or_else(|| (2u8..=254).find(|o| !self.ips.values().any(|x| x == o)))?;
        self.ips.insert(uid.to_string(), octet);
        Some(format!("{}.{octet}", self.cidr_base))
    }
}

struct Agent {
    registry: Arc<Registry>,
    pods: Arc<ResourceInfo>,
    nodes: Mutex<HashMap<String, SimNode>>,
    /// pod key -> (node, uid), to release IPs when pods go.
    placed: Mutex<HashMap<String, (String, String)>>,
    informer: Arc<Informer>,
    opts: WriteOptions,
}

fn node_index(i: usize) -> (String, String, String) {
    let n = i + 1;
    let host_ip = format!("10.0.{}.{}", n / 256, n % 256);
    let cidr_base = format!("10.{}.{}", 42 + i / 256, i % 256);
    let cidr = format!("{cidr_base}.0/24");
    (host_ip, cidr_base, cidr)
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

async fn ensure_namespace(reg: &Registry, name: &str, opts: &WriteOptions) -> anyhow::Result<()> {
    let info = find(reg, "", "v1", "namespaces")?;
    if reg.get_cached(&info, None, name).is_err() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match reg.create(&info, None, ns, opts).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(anyhow::anyhow!("creating namespace {name}: {e}")),
        }
        reg.cache.sync().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
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
    let opts = WriteOptions {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    ensure_namespace(&registry, LEASE_NAMESPACE, &opts).await?;
    let nodes_info = find(&registry, "", "v1", "nodes")?;
    let leases_info = find(&registry, "coordination.k8s.io", "v1", "leases")?;
    let mut sims = HashMap::new();
    let mut names = vec![];
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let (host_ip, cidr_base, _) = node_index(i);
        let uid = match registry.get_cached(&nodes_info, None, &name) {
            Ok(existing) => existing["metadata"]["uid"].clone(),
            Err(_) => match registry
                .create(&nodes_info, None, node_object(&name, i), &opts)
                .await
            {
                Ok(r) => r.object["metadata"]["uid"].clone(),
                Err(e) if e.code == 409 => registry
                    .get(&nodes_info, None, &name)
                    .await
                    .map(|n| n["metadata"]["uid"].clone())
                    .unwrap_or(Value::Null),
                Err(e) => return Err(anyhow::anyhow!("registering node {name}: {e}")),
            },
        };
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
        match registry
            .create(&leases_info, Some(LEASE_NAMESPACE), lease, &opts)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => tracing::warn!(node = %name, "creating lease failed: {e}"),
        }
        sims.insert(
            name.clone(),
            SimNode {
                host_ip,
                cidr_base,
                ips: HashMap::new(),
            },
        );
        names.push(name);
    }

    // Leases: renewed in small concurrent batches.
    let reg = registry.clone();
    let o = opts.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let renew = json!({"spec": {"renewTime": micro_now()}});
            for chunk in names.chunks(16) {
                let mut set = tokio::task::JoinSet::new();
                for name in chunk {
                    let (reg, o, info, renew, name) = (
                        reg.clone(),
                        o.clone(),
                        leases_info.clone(),
                        renew.clone(),
                        name.clone(),
                    );
                    set.spawn(async move {
                        if let Err(e) = reg
                            .patch(
                                &info,
                                Some(LEASE_NAMESPACE),
                                &name,
                                PatchKind::Merge,
                                &renew,
                                &o,
                                None,
                            )
                            .await
                        {
                            tracing::debug!(node = %name, "renewing lease failed: {e}");
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            }
        }
    });

    // Pods bound to our nodes.
    let informer = Arc::new(
        Informer::new("/registry/core/pods/").with_index("nodeName", |p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default()
        }),
    );
    let agent = Arc::new(Agent {
        pods: find(&registry, "", "v1", "pods")?,
        registry: registry.clone(),
        nodes: Mutex::new(sims),
        placed: Mutex::default(),
        informer: informer.clone(),
        opts,
    });
    let queue = WorkQueue::default();
    let (a, q) = (agent.clone(), queue.clone());
    informer.start(&registry.cache, move |_, ev| a.on_event(ev, &q))?;
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
    Ok(())
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

    fn on_event(&self, ev: &CacheEvent, q: &WorkQueue) {
        let relevant = self.ours(&ev.object)
            || (ev.kind == EventType::Deleted && lock(&self.placed).contains_key(&ev.key));
        if relevant {
            q.add(ev.key.clone());
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
        let Some(pod) = self.informer.get(key) else {
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
            let del = DeleteOptions {
                grace_period_seconds: Some(0),
                precondition_uid: Some(uid),
                ..Default::default()
            };
            match self
                .registry
                .delete(&self.pods, Some(&ns), &name, &del)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(anyhow::anyhow!("deleting {key}: {e}")),
            }
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
        self.registry
            .patch(
                &self.pods,
                Some(&ns),
                &name,
                PatchKind::Strategic,
                &json!({"status": status}),
                &self.opts,
                Some("status"),
            )
            .await
            .map_err(|e| anyhow::anyhow!("updating status of {key}: {e}"))?;
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

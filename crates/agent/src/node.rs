//! The real node agent: a containerd (ours, or an existing CRI socket),
//! the Node object with its Lease and heartbeat, the pod workers
//! ([`crate::pods`]) and the log endpoint ([`crate::logs`]).

use crate::api::NodeApi;
use crate::logs::{NodeLogs, PodLogIndex};
use crate::pods::PodManager;
use crate::{micro_now, KUBELET_VERSION, LEASE_NAMESPACE};
use kobune_apiserver::kubelet::{Kubelet, Kubelets};
use kobune_apiserver::registry::now_rfc3339;
use kobune_apiserver::Registry;
use kobune_cri::{CniConfig, Containerd, Cri};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The address pods and the API see for this node.
pub const HOST_IP: &str = "127.0.0.1";
/// The pod network bridge of our containerd.
pub const BRIDGE: &str = "kobune0";
/// The kubelet port a Node advertises by default.
pub const KUBELET_PORT: u16 = 10250;
const LEASE_SECONDS: i64 = 40;
const LEASE_RENEW: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(40);

/// How to run this machine's node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name (usually the host name).
    pub name: String,
    /// Agent state: containerd under `data_dir/containerd`, pod logs under
    /// `data_dir/logs`.
    pub data_dir: PathBuf,
    /// This node's pod CIDR, e.g. `10.42.0.0/24`.
    pub pod_cidr: String,
    /// Use an existing CRI socket instead of starting our own containerd.
    pub cri_socket: Option<PathBuf>,
    /// Cluster DNS, cluster domain and host resolv.conf for pods' DNS.
    pub dns: crate::dns::PodDnsSettings,
}

/// Where a node is reached: what [`start_node`] uses for the node inside
/// `kobune server`, set otherwise by `kobune agent`.
#[derive(Debug, Clone)]
pub struct NodeNetwork {
    /// The Node's InternalIP (and its pods' hostIP).
    pub host_ip: String,
    /// `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub kubelet_port: u16,
    /// The pod network's bridge.
    pub bridge: String,
}

impl Default for NodeNetwork {
    fn default() -> Self {
        NodeNetwork {
            host_ip: HOST_IP.into(),
            kubelet_port: KUBELET_PORT,
            bridge: BRIDGE.into(),
        }
    }
}

/// A running node agent. Dropping it (or [`NodeHandle::shutdown`]) stops
/// the agent's loops and our containerd; the pods keep running in their
/// shims, with their network, and the next start adopts them (as the
/// kubelet and k3s do). [`NodeHandle::remove_pods`] stops them too.
pub struct NodeHandle {
    pub name: String,
    data_dir: PathBuf,
    pub log_root: PathBuf,
    pub runtime: Containerd,
    pub cri: Cri,
    /// What the API server calls for logs, streams and stats of this node.
    pub kubelet: Arc<dyn Kubelet>,
    pods: Arc<PodManager>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// `data_dir/agent.lock`, held while the agent runs.
    _lock: std::fs::File,
}

impl NodeHandle {
    /// Stops the agent's loops and its containerd; pods keep running.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.pods.abort_workers();
    }

    /// Stops every pod this agent runs (sandboxes removed, no API writes),
    /// the agent's loops and its routes.
    pub async fn remove_pods(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.pods.remove_all().await;
        crate::join::remove_routes(&self.data_dir);
    }
}

/// Takes `data_dir/agent.lock`, so two agents (or a server's node and an
/// agent, or `kobune killall`) never share a data directory.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    anyhow::ensure!(
        r == 0,
        "a kobune node agent is running with {} (stop it first, or pass a different data directory)",
        data_dir.display()
    );
    Ok(f)
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.pods.abort_workers();
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `PRETTY_NAME` from /etc/os-release.
fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(str::to_string))
        })
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// MemTotal from /proc/meminfo as a `Ki` quantity.
fn memory_ki() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.split_whitespace().next().map(str::to_string))
            })
        })
        .map(|kb| format!("{kb}Ki"))
        .unwrap_or_else(|| "0".into())
}

/// The size of the file system holding `dir`, as a `Ki` quantity.
fn storage_ki(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "0".into();
    };
    // SAFETY: statvfs(3) into a zeroed struct with a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return "0".into();
    }
    format!("{}Ki", (st.f_blocks as u64 * st.f_frsize as u64) / 1024)
}

/// The Kubernetes name of this machine's architecture.
pub fn k8s_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn condition(t: &str, s: &str, reason: &str, msg: &str, now: &str) -> Value {
    json!({"type": t, "status": s, "reason": reason, "message": msg,
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// The Node's status as this agent reports it.
pub fn node_status(name: &str, data_dir: &Path, runtime_version: &str) -> Value {
    node_status_at(name, data_dir, runtime_version, &NodeNetwork::default())
}

/// [`node_status`] with the node's address and kubelet port.
pub fn node_status_at(
    name: &str,
    data_dir: &Path,
    runtime_version: &str,
    net: &NodeNetwork,
) -> Value {
    let now = now_rfc3339();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": memory_ki(),
        "pods": "110",
        "ephemeral-storage": storage_ki(data_dir),
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", &now),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", &now),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", &now),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", &now),
        ],
        "addresses": [
            {"type": "InternalIP", "address": net.host_ip},
            {"type": "Hostname", "address": name}
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": net.kubelet_port}},
        "nodeInfo": {
            "machineID": read_trim("/etc/machine-id"),
            "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": k8s_arch(),
        }
    })
}

/// The Node object this agent registers.
pub fn node_object(cfg: &NodeConfig, status: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": node_labels(&cfg.name),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}
        },
        "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]},
        "status": status,
    })
}

fn node_labels(name: &str) -> Value {
    json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": k8s_arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": k8s_arch(),
    })
}

/// Starts the node agent for this machine inside `kobune server`; returns
/// once the runtime is up, the Node is registered and pods bound to it are
/// being synced.
pub async fn start_node(
    registry: Arc<Registry>,
    kubelets: Arc<Kubelets>,
    cfg: NodeConfig,
    host_ip: &str,
) -> anyhow::Result<NodeHandle> {
    let api = Arc::new(crate::api::LocalApi::new(registry)?);
    let net = NodeNetwork {
        host_ip: host_ip.to_string(),
        ..NodeNetwork::default()
    };
    let handle = start_node_with(api, cfg, net).await?;
    kubelets.register(&handle.name, handle.kubelet.clone());
    Ok(handle)
}

/// As [`start_node`], through any [`NodeApi`] (`kobune agent`: a remote
/// API server) and with the node's own address, kubelet port and bridge.
/// The caller serves [`NodeHandle::kubelet`] to the API server.
pub async fn start_node_with(
    api: Arc<dyn NodeApi>,
    cfg: NodeConfig,
    net: NodeNetwork,
) -> anyhow::Result<NodeHandle> {
    use anyhow::Context;
    let lock = lock_data_dir(&cfg.data_dir)?;
    let runtime = match &cfg.cri_socket {
        Some(sock) => Containerd::connect_existing(sock).await?,
        None => {
            let cni = CniConfig {
                pod_cidr: cfg.pod_cidr.clone(),
                bridge: net.bridge.clone(),
            };
            Containerd::start(&cfg.data_dir.join("containerd"), cni)
                .await
                .context("starting containerd")?
        }
    };
    kobune_cri::images::import_builtin_images(runtime.socket())
        .await
        .context("importing built-in images")?;
    let cri = runtime.cri();
    // Pods an earlier run left running are adopted (or stopped once the
    // API says they are gone).
    let found = kobune_cri::pod::find_pods(&cri)
        .await
        .context("listing the pods the runtime runs")?;
    if !found.is_empty() {
        tracing::info!(count = found.len(), "found running pods of an earlier run");
    }
    let version = cri.version().await?;
    let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    let log_root = cfg.data_dir.join("logs");
    std::fs::create_dir_all(&log_root)
        .with_context(|| format!("creating {}", log_root.display()))?;

    // Pod volume directories: those of pods no longer running are stale.
    let pods_root = cfg.data_dir.join("pods");
    if let Ok(dirs) = std::fs::read_dir(&pods_root) {
        for d in dirs.flatten() {
            let uid = d.file_name().to_string_lossy().into_owned();
            if !found.iter().any(|f| f.uid == uid) {
                crate::volumes::cleanup(&pods_root, &uid);
            }
        }
    }
    std::fs::create_dir_all(&pods_root)
        .with_context(|| format!("creating {}", pods_root.display()))?;

    let status = node_status_at(&cfg.name, &cfg.data_dir, &runtime_version, &net);
    let uid = api.sync_node(node_object(&cfg, status)).await?;

    api.ensure_namespace(LEASE_NAMESPACE).await?;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": cfg.name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.name, "uid": uid}]
        },
        "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}
    });
    let mut tasks = vec![];
    {
        let (api, name) = (api.clone(), cfg.name.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEW);
            loop {
                tick.tick().await;
                let mut l = lease.clone();
                l["spec"]["renewTime"] = json!(micro_now());
                // A missing Lease is created again.
                if let Err(e) = api.renew_lease(&l).await {
                    tracing::warn!(node = %name, "renewing lease failed: {e:#}");
                }
            }
        }));
    }
    {
        let (api, name, data_dir, net) = (
            api.clone(),
            cfg.name.clone(),
            cfg.data_dir.clone(),
            net.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tick.tick().await;
                let mut status = node_status_at(&name, &data_dir, &runtime_version, &net);
                // Keep transition times of unchanged conditions.
                if let Some(cur) = api.get_node(&name).await {
                    keep_transition_times(&mut status, &cur["status"]);
                }
                if let Err(e) = api.patch_node_status(&name, &status).await {
                    tracing::warn!(node = %name, "node heartbeat failed: {e:#}");
                }
            }
        }));
    }

    let log_index = PodLogIndex::default();
    let pods = PodManager::start(
        api.clone(),
        cfg.name.clone(),
        net.host_ip.clone(),
        cri.clone(),
        log_root.clone(),
        pods_root,
        log_index.clone(),
        cfg.dns.clone(),
        found,
    )
    .await?;
    let stats = Arc::new(crate::stats::StatsCollector::default());
    tasks.push(stats.spawn(cri.clone()));
    // host-gw: other machines' pod CIDRs via their nodes' addresses.
    tasks.push(crate::join::spawn_route_sync(
        api.clone(),
        cfg.data_dir.clone(),
        cfg.name.clone(),
        net.host_ip.clone(),
    ));
    let kubelet: Arc<dyn Kubelet> = Arc::new(NodeLogs {
        log_root: log_root.clone(),
        cri: cri.clone(),
        pods: log_index,
        stats: Some(stats),
    });
    tracing::info!(node = %cfg.name, runtime = %runtime.socket().display(), "node agent started");
    Ok(NodeHandle {
        name: cfg.name,
        data_dir: cfg.data_dir,
        log_root,
        runtime,
        cri,
        kubelet,
        pods,
        tasks,
        _lock: lock,
    })
}

/// Copies `lastTransitionTime` from `old` conditions whose status did not
/// change.
pub fn keep_transition_times(status: &mut Value, old: &Value) {
    let Some(conds) = status["conditions"].as_array_mut() else {
        return;
    };
    for c in conds {
        let prev = old["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["type"] == c["type"]);
        if let Some(p) = prev {
            if p["status"] == c["status"] && p["lastTransitionTime"].is_string() {
                c["lastTransitionTime"] = p["lastTransitionTime"].clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_describes_this_machine() {
        let s = node_status("n1", Path::new("/"), "containerd://1.6.20");
        assert_eq!(s["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(
            s["nodeInfo"]["containerRuntimeVersion"],
            "containerd://1.6.20"
        );
        assert!(s["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
        assert!(s["capacity"]["ephemeral-storage"]
            .as_str()
            .unwrap()
            .ends_with("Ki"));
        assert_eq!(s["addresses"][0]["address"], HOST_IP);
        let ready = &s["conditions"][3];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["reason"], "KubeletReady");
        let mut s2 = s.clone();
        let mut old = s.clone();
        old["conditions"][3]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        keep_transition_times(&mut s2, &old);
        assert_eq!(
            s2["conditions"][3]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
    }
}

//! `kobune agent` without `--simulate`: this machine joins a remote API
//! server as a real node. Its own containerd runs under the agent's data
//! directory with a bridge of its own (`kobune<N>` for pod CIDR
//! `10.42.N.0/24`, N the lowest index no Node uses), so an agent and a
//! server can share one machine. The node runs through
//! [`crate::node::start_node_with`] on [`RemoteApi`].
//!
//! Pod traffic between nodes: on one machine the host's connected routes
//! to each bridge carry it; across machines every other Node's pod CIDR is
//! routed via its InternalIP (host-gw style, [`sync_routes`]).
//!
//! An agent that stops (SIGTERM, or killed) leaves its pods running, with
//! their network and routes; the next start adopts them. [`cleanup`]
//! (`kobune killall`) removes everything an agent left: pods, containerd,
//! mounts, routes and bridge.

use crate::client::ApiClient;
use crate::node::{start_node_with, NodeConfig, NodeHandle, NodeNetwork};
use crate::remote::RemoteApi;
use crate::{assign_indices, node_index, NodeApi, SIMULATED_LABEL};
use anyhow::Context;
use kobune_cri::containerd::{find_processes, terminate};
use kobune_cri::{CniConfig, Containerd};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often other Nodes' pod CIDRs are checked for routes.
const ROUTE_SYNC: Duration = Duration::from_secs(10);

/// How this machine joins.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub name: String,
    /// Agent state: `containerd/`, `logs/`, `pods/`, `routes.json`.
    pub data_dir: PathBuf,
    /// The Node's InternalIP.
    pub node_ip: String,
    /// The port the kubelet API is served on (and advertised).
    pub kubelet_port: u16,
    /// The cluster token the API server presents to the kubelet API.
    pub token: String,
    pub dns: crate::dns::PodDnsSettings,
}

/// A joined node; [`JoinedNode::shutdown`] stops the agent (its pods keep
/// running).
pub struct JoinedNode {
    pub node: NodeHandle,
    /// The server, as this node reaches it (also a [`kobune_controllers::runtime::Source`]
    /// for the service proxy and NetworkPolicy rules).
    pub api: Arc<RemoteApi>,
    pub pod_cidr: String,
    pub bridge: String,
    kubelet_server: tokio::task::JoinHandle<()>,
}

/// The bridge of pod CIDR index `i` (at most 15 characters).
pub fn bridge_name(i: usize) -> String {
    format!("kobune{i}")
}

/// Starts containerd and the node (adopting the pods an earlier run left);
/// returns once the Node is registered and pods are followed.
pub async fn join(client: Arc<ApiClient>, cfg: JoinConfig) -> anyhow::Result<JoinedNode> {
    let api = Arc::new(RemoteApi::new(client));
    api.check_access().await?;
    // The kubelet API's port first: taken is a clear error before
    // anything starts.
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.kubelet_port))
        .await
        .with_context(|| format!("listening on kubelet port {}", cfg.kubelet_port))?;
    let nodes = api.list_nodes().await?;
    let index = assign_indices(std::slice::from_ref(&cfg.name), &nodes)[0];
    let (_, _, pod_cidr) = node_index(index);
    let bridge = bridge_name(index);
    let net = NodeNetwork {
        host_ip: cfg.node_ip.clone(),
        kubelet_port: cfg.kubelet_port,
        bridge: bridge.clone(),
    };
    let node_cfg = NodeConfig {
        name: cfg.name.clone(),
        data_dir: cfg.data_dir.clone(),
        pod_cidr: pod_cidr.clone(),
        cri_socket: None,
        dns: cfg.dns.clone(),
    };
    // Forwarding between the pod bridge and the other nodes.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!("enabling IPv4 forwarding: {e}");
    }
    // persistentVolumeClaim volumes: the bound volume's path on this machine.
    crate::volumes::set_claim_resolver(crate::api::claim_resolver(api.clone()));
    let node = start_node_with(api.clone(), node_cfg, net)
        .await
        .with_context(|| format!("starting node {}", cfg.name))?;
    let kubelet_server =
        crate::kubelet_server::serve(listener, cfg.token.clone(), node.kubelet.clone())
            .await
            .context("serving the kubelet API")?;
    Ok(JoinedNode {
        node,
        api,
        pod_cidr,
        bridge,
        kubelet_server,
    })
}

impl JoinedNode {
    /// Stops the agent and its containerd; pods, routes and the bridge
    /// stay for the next start (or `kobune killall`).
    pub async fn shutdown(self) {
        self.kubelet_server.abort();
        self.node.shutdown().await;
    }
}

/// The CNI settings an earlier run wrote under `dir` (its containerd dir).
fn saved_cni(dir: &Path) -> Option<CniConfig> {
    let text = std::fs::read_to_string(dir.join("cni/10-kobune.conflist")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let plugin = &v["plugins"][0];
    Some(CniConfig {
        bridge: plugin["bridge"].as_str()?.to_string(),
        pod_cidr: plugin
            .pointer("/ipam/ranges/0/0/subnet")
            .and_then(Value::as_str)?
            .to_string(),
    })
}

/// Removes what an agent with data directory `data_dir` left running: its
/// pod sandboxes (containers, network namespaces, IPs) through its
/// containerd (the one still running, or started again for this), that
/// containerd and its shims, mounts under it, its routes and its bridge.
/// Quick when nothing is left.
pub async fn cleanup(data_dir: &Path) {
    let dir = match std::path::absolute(data_dir.join("containerd")) {
        Ok(d) => d,
        Err(_) => return,
    };
    let Some(cni) = saved_cni(&dir) else {
        return;
    };
    let config = dir.join("config.toml");
    let socket = dir.join("containerd.sock");
    let (config_s, socket_s) = (config.display().to_string(), socket.display().to_string());
    let daemons = find_processes(&["containerd", "--config", &config_s], None);
    let shims = find_processes(&[], Some(&socket_s));
    if !daemons.is_empty() || !shims.is_empty() {
        tracing::info!(
            containerd = daemons.len(),
            shims = shims.len(),
            "cleaning up a previous agent's containerd"
        );
        // Sandboxes are removed through CRI so CNI releases their network.
        let mut started = None;
        let cri = if !daemons.is_empty() {
            Containerd::connect_existing(&socket)
                .await
                .ok()
                .map(|c| c.cri())
        } else {
            match Containerd::start(&dir, cni.clone()).await {
                Ok(c) => {
                    let cri = c.cri();
                    started = Some(c);
                    Some(cri)
                }
                Err(e) => {
                    tracing::warn!("starting containerd for cleanup: {e:#}");
                    None
                }
            }
        };
        if let Some(cri) = cri {
            match kobune_cri::pod::remove_all_sandboxes(&cri).await {
                Ok(n) => tracing::info!(count = n, "removed pod sandboxes"),
                Err(e) => tracing::warn!("removing pod sandboxes: {e:#}"),
            }
        }
        drop(started);
        terminate(&daemons, Duration::from_secs(5));
        // Shims whose containers could not be removed.
        let shims = find_processes(&[], Some(&socket_s));
        terminate(&shims, Duration::from_secs(2));
    }
    kobune_cri::containerd::unmount_under(&dir);
    remove_routes(data_dir);
    delete_link(&cni.bridge);
    let pods = data_dir.join("pods");
    if pods.exists() {
        if let Err(e) = std::fs::remove_dir_all(&pods) {
            tracing::warn!(dir = %pods.display(), "removing pod directories: {e}");
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    match Command::new("ip").args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Deletes bridge `name` unless other interfaces (pods that are not ours,
/// e.g. a server's on the same bridge) are still attached to it.
fn delete_link(name: &str) {
    let dir = Path::new("/sys/class/net").join(name);
    if !dir.exists() {
        return;
    }
    let ports = std::fs::read_dir(dir.join("brif"))
        .map(|d| d.count())
        .unwrap_or(0);
    if ports > 0 {
        tracing::warn!(bridge = name, ports, "bridge still in use; left in place");
        return;
    }
    if let Err(e) = ip(&["link", "del", name]) {
        tracing::warn!("deleting bridge {name}: {e}");
    }
}

/// Routes this agent added: pod CIDR -> gateway.
fn routes_file(data_dir: &Path) -> PathBuf {
    data_dir.join("routes.json")
}

fn load_routes(data_dir: &Path) -> BTreeMap<String, String> {
    std::fs::read(routes_file(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

static ROUTES_LOCK: Mutex<()> = Mutex::new(());

pub fn remove_routes(data_dir: &Path) {
    let _g = ROUTES_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for (cidr, via) in load_routes(data_dir) {
        let _ = ip(&["route", "del", &cidr, "via", &via]);
    }
    let _ = std::fs::remove_file(routes_file(data_dir));
}

/// Keeps [`sync_routes`] applied every [`ROUTE_SYNC`].
pub fn spawn_route_sync(
    api: Arc<dyn NodeApi>,
    data_dir: PathBuf,
    name: String,
    ip: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ROUTE_SYNC);
        loop {
            tick.tick().await;
            match api.list_nodes().await {
                Ok(nodes) => sync_routes(&data_dir, &name, &ip, &nodes),
                Err(e) => tracing::debug!("listing nodes for routes: {e:#}"),
            }
        }
    })
}

/// The routes this node needs: every other real Node's pod CIDR via that
/// Node's InternalIP, unless the address is ours or a loopback one (nodes
/// on this machine: the bridges' connected routes do).
pub fn wanted_routes(me: &str, my_ip: &str, nodes: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n["metadata"]["name"] == me
            || n.pointer(&format!(
                "/metadata/labels/{}",
                SIMULATED_LABEL.replace('/', "~1")
            ))
            .is_some()
        {
            continue;
        }
        let Some(cidr) = n.pointer("/spec/podCIDR").and_then(Value::as_str) else {
            continue;
        };
        let ip = n
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str());
        let Some(ip) = ip else { continue };
        let loopback = ip
            .parse::<std::net::IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(true);
        if ip == my_ip || loopback {
            continue;
        }
        out.insert(cidr.to_string(), ip.to_string());
    }
    out
}

/// Brings the host's routes to other nodes' pod CIDRs in line with
/// `nodes`, remembering them in `routes.json` for the cleanup.
fn sync_routes(data_dir: &Path, me: &str, my_ip: &str, nodes: &[Value]) {
    let _g = ROUTES_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let want = wanted_routes(me, my_ip, nodes);
    let mut have = load_routes(data_dir);
    for (cidr, via) in have.clone() {
        if want.get(&cidr) != Some(&via) {
            let _ = ip(&["route", "del", &cidr, "via", &via]);
            have.remove(&cidr);
        }
    }
    for (cidr, via) in &want {
        match ip(&["route", "replace", cidr, "via", via]) {
            Ok(()) => {
                if have.insert(cidr.clone(), via.clone()).is_none() {
                    tracing::info!(%cidr, %via, "route to another node's pods");
                }
            }
            Err(e) => tracing::warn!(%cidr, %via, "ip route replace: {e}"),
        }
    }
    if let Ok(b) = serde_json::to_vec(&have) {
        let _ = std::fs::write(routes_file(data_dir), b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: &str, ip: &str, simulated: bool) -> Value {
        let mut n = json!({
            "metadata": {"name": name, "labels": {}},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "Hostname", "address": name},
                                     {"type": "InternalIP", "address": ip}]}
        });
        if simulated {
            n["metadata"]["labels"][SIMULATED_LABEL] = json!("true");
        }
        n
    }

    #[test]
    fn routes_go_to_other_real_nodes_only() {
        let nodes = vec![
            node("me", "10.42.1.0/24", "192.168.5.2", false),
            node("server", "10.42.0.0/24", "192.168.5.1", false),
            node("same-host", "10.42.2.0/24", "192.168.5.2", false),
            node("local", "10.42.3.0/24", "127.0.0.1", false),
            node("sim-0", "10.42.4.0/24", "10.0.0.1", true),
            json!({"metadata": {"name": "no-cidr"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.5.9"}]}}),
        ];
        let r = wanted_routes("me", "192.168.5.2", &nodes);
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            vec![("10.42.0.0/24".to_string(), "192.168.5.1".to_string())]
        );
    }

    #[test]
    fn bridges_and_saved_cni() {
        assert_eq!(bridge_name(1), "kobune1");
        assert!(bridge_name(65535).len() <= 15);
        let dir = std::env::temp_dir().join(format!("kobune-join-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let cni = CniConfig {
            pod_cidr: "10.42.7.0/24".into(),
            bridge: "kobune7".into(),
        };
        let list = kobune_cri::containerd::cni_conflist(&dir, &cni);
        std::fs::write(
            dir.join("cni/10-kobune.conflist"),
            serde_json::to_vec(&list).unwrap(),
        )
        .unwrap();
        let got = saved_cni(&dir).unwrap();
        assert_eq!(
            (got.bridge.as_str(), got.pod_cidr.as_str()),
            ("kobune7", "10.42.7.0/24")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! How the API server reaches a node's agent for what lives on the node
//! (container logs, exec/attach/port-forward streams, resource usage), as
//! kube-apiserver reaches the kubelet. An agent running in the server's
//! process registers itself by node name; a node whose agent runs in
//! another process (`kobune agent`) is reached over HTTPS at the address
//! its Node object publishes ([`crate::kubelet_client::HttpKubelet`]).

use async_trait::async_trait;
use bytes::Bytes;
use kobune_apimachinery::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// The `pods/log` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub timestamps: bool,
    pub limit_bytes: Option<i64>,
}

/// A streaming session the API server asks a node for (`pods/exec`,
/// `pods/attach`, `pods/portforward`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StreamKind {
    Exec {
        command: Vec<String>,
        container: Option<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    Attach {
        container: Option<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    PortForward {
        ports: Vec<i32>,
    },
}

/// One container's resource usage over a sampling window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub name: String,
    /// CPU rate over the window, in nanocores (1e9 = one core).
    pub cpu_nanocores: u64,
    /// Memory working set (usage minus inactive file pages), in bytes.
    pub memory_working_set_bytes: u64,
}

/// A pod's usage: its running containers, measured over the same window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// When the later of the two samples was taken.
    #[serde(with = "rfc3339")]
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The time between the two samples the CPU rate comes from.
    pub window: std::time::Duration,
    pub containers: Vec<ContainerUsage>,
}

/// What a node measured: the node as a whole and each pod on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    #[serde(with = "rfc3339")]
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub window: std::time::Duration,
    pub cpu_nanocores: u64,
    pub memory_working_set_bytes: u64,
    pub pods: Vec<PodUsage>,
}

/// Timestamps on the wire as RFC 3339 with nanoseconds (chrono's serde
/// support is not enabled in this workspace).
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// What a node agent serves to the API server.
#[async_trait]
pub trait Kubelet: Send + Sync {
    /// A container's log as text chunks; the stream ends when the log does
    /// (or, with `follow`, when the container stops or the client leaves).
    async fn logs(&self, pod: &Value, opts: LogOptions) -> Result<mpsc::Receiver<Bytes>, ApiError>;

    /// A one-time URL (`http://host:port/...`) on the node's streaming
    /// server that serves the session; the API server proxies the client's
    /// upgraded connection to it untouched.
    async fn stream_url(&self, pod: &Value, kind: StreamKind) -> Result<String, ApiError> {
        let _ = (pod, kind);
        Err(ApiError::new(
            501,
            "NotImplemented",
            "streaming is not supported by this node",
        ))
    }

    /// The node's latest resource usage (for `metrics.k8s.io`), or `None`
    /// while the node has not yet taken two samples or measures nothing
    /// (simulated nodes).
    async fn stats(&self) -> Option<NodeUsage> {
        None
    }

    /// The bearer token to present when dialing an `https://` URL from
    /// [`Kubelet::stream_url`] (an agent in another process proxies the
    /// stream itself); `None` for plain `http://` CRI streaming servers.
    fn stream_token(&self) -> Option<String> {
        None
    }
}

/// A remote node's kubelet with the `host:port` it was built for.
type RemoteKubelet = (String, Arc<dyn Kubelet>);

/// Reads a Node object by name (the watch cache in `kobune server`).
pub type NodeLookup = Arc<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// How nodes without an in-process agent are reached.
struct Remote {
    token: String,
    lookup: NodeLookup,
}

/// Agents by node name: those registered in this process, and, once
/// [`Kubelets::connect_remote`] has been called, every other node that
/// publishes a kubelet endpoint, reached over HTTPS.
#[derive(Default)]
pub struct Kubelets {
    nodes: RwLock<HashMap<String, Arc<dyn Kubelet>>>,
    remote: RwLock<Option<Remote>>,
    /// Remote kubelets by node name.
    clients: Mutex<HashMap<String, RemoteKubelet>>,
}

/// Where a Node's kubelet listens: its InternalIP (else ExternalIP) and
/// `status.daemonEndpoints.kubeletEndpoint.Port`. Simulated nodes (which
/// publish made-up addresses) and nodes without a port have none.
pub fn kubelet_endpoint(node: &Value) -> Option<(String, u16)> {
    let simulated = node
        .pointer("/metadata/labels/kobune.io~1simulated")
        .and_then(Value::as_str)
        == Some("true");
    if simulated {
        return None;
    }
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=65535).contains(p))? as u16;
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let of_type = |t: &str| {
        addresses
            .iter()
            .filter(|a| a["type"] == t)
            .filter_map(|a| a["address"].as_str())
            .find(|a| !a.is_empty())
    };
    let host = of_type("InternalIP").or_else(|| of_type("ExternalIP"))?;
    Some((host.to_string(), port))
}

impl Kubelets {
    pub fn register(&self, node: &str, kubelet: Arc<dyn Kubelet>) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), kubelet);
    }

    /// Lets [`Kubelets::get`] reach nodes whose agent runs elsewhere:
    /// `lookup` reads Node objects, `token` is the bearer token agents accept.
    pub fn set_remote(&self, token: String, lookup: NodeLookup) {
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = Some(Remote { token, lookup });
    }

    /// [`Kubelets::set_remote`] with Nodes read from the registry's watch
    /// cache and the cluster's token (`Pki::token`).
    pub fn connect_remote(&self, registry: Arc<crate::Registry>, token: String) {
        let Some(info) = registry.resources.find("", "v1", "nodes") else {
            return;
        };
        let lookup: NodeLookup =
            Arc::new(move |name: &str| registry.get_cached(&info, None, name).ok());
        self.set_remote(token, lookup);
    }

    /// The agent serving `node`: the one registered in this process, else
    /// (with remote access set up) an HTTPS client for the kubelet endpoint
    /// the Node publishes, kept per node and rebuilt when the endpoint
    /// changes. `None` when the node has neither.
    pub fn get(&self, node: &str) -> Option<Arc<dyn Kubelet>> {
        if let Some(k) = self
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
        {
            return Some(k);
        }
        let (token, lookup) = {
            let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
            let r = remote.as_ref()?;
            (r.token.clone(), r.lookup.clone())
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let Some((host, port)) = lookup(node).as_ref().and_then(kubelet_endpoint) else {
            clients.remove(node);
            return None;
        };
        let endpoint = crate::kubelet_client::authority(&host, port);
        if let Some((e, k)) = clients.get(node) {
            if *e == endpoint {
                return Some(k.clone());
            }
        }
        let k: Arc<dyn Kubelet> = Arc::new(crate::kubelet_client::HttpKubelet::new(
            node, &host, port, &token,
        ));
        clients.insert(node.to_string(), (endpoint, k.clone()));
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Local;

    #[async_trait]
    impl Kubelet for Local {
        async fn logs(&self, _: &Value, _: LogOptions) -> Result<mpsc::Receiver<Bytes>, ApiError> {
            Err(ApiError::bad_request("local"))
        }
    }

    fn node(name: &str, ip: &str, port: u64, simulated: bool) -> Value {
        let mut n = json!({
            "metadata": {"name": name, "labels": {}},
            "status": {
                "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}
            }
        });
        if simulated {
            n["metadata"]["labels"]["kobune.io/simulated"] = json!("true");
        }
        n
    }

    #[test]
    fn endpoints_come_from_the_node() {
        assert_eq!(
            kubelet_endpoint(&node("a", "10.1.2.3", 10250, false)),
            Some(("10.1.2.3".into(), 10250))
        );
        assert_eq!(kubelet_endpoint(&node("a", "10.1.2.3", 10250, true)), None);
        assert_eq!(kubelet_endpoint(&node("a", "10.1.2.3", 0, false)), None);
        let ext = json!({"status": {"addresses": [{"type": "ExternalIP", "address": "1.2.3.4"}],
                         "daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}});
        assert_eq!(kubelet_endpoint(&ext), Some(("1.2.3.4".into(), 1)));
        assert_eq!(kubelet_endpoint(&json!({})), None);
    }

    #[test]
    fn remote_nodes_resolve_cached_and_rebuilt() {
        let ks = Kubelets::default();
        let nodes: Arc<RwLock<HashMap<String, Value>>> = Arc::default();
        // Without remote access only registered agents are found.
        ks.register("local", Arc::new(Local));
        nodes
            .write()
            .unwrap()
            .insert("r".into(), node("r", "127.0.0.1", 10250, false));
        assert!(ks.get("r").is_none());

        let n = nodes.clone();
        ks.set_remote(
            "tok".into(),
            Arc::new(move |name: &str| n.read().unwrap().get(name).cloned()),
        );
        assert!(ks.get("local").is_some());
        let a = ks.get("r").expect("remote kubelet");
        assert_eq!(a.stream_token().as_deref(), Some("tok"));
        assert!(Arc::ptr_eq(&a, &ks.get("r").unwrap()), "cached");
        nodes
            .write()
            .unwrap()
            .insert("r".into(), node("r", "127.0.0.1", 10251, false));
        let b = ks.get("r").unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "rebuilt for the new port");
        // The in-process agent wins over the Node's endpoint.
        nodes
            .write()
            .unwrap()
            .insert("local".into(), node("local", "127.0.0.1", 10250, false));
        assert!(ks.get("local").unwrap().stream_token().is_none());
        // Simulated, unknown and endpoint-less nodes have none.
        nodes
            .write()
            .unwrap()
            .insert("sim".into(), node("sim", "10.0.0.1", 10250, true));
        assert!(ks.get("sim").is_none());
        assert!(ks.get("nope").is_none());
        nodes.write().unwrap().remove("r");
        assert!(ks.get("r").is_none());
    }
}

//! How the API server reaches a node's agent for what lives on the node
//! (container logs now; exec, attach and port-forward later), as
//! kube-apiserver reaches the kubelet. Agents register themselves by node name.

use async_trait::async_trait;
use bytes::Bytes;
use kobune_apimachinery::ApiError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    /// CPU rate over the window, in nanocores (1e9 = one core).
    pub cpu_nanocores: u64,
    /// Memory working set (usage minus inactive file pages), in bytes.
    pub memory_working_set_bytes: u64,
}

/// A pod's usage: its running containers, measured over the same window.
#[derive(Debug, Clone, PartialEq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// When the later of the two samples was taken.
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The time between the two samples the CPU rate comes from.
    pub window: std::time::Duration,
    pub containers: Vec<ContainerUsage>,
}

/// What a node measured: the node as a whole and each pod on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUsage {
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub window: std::time::Duration,
    pub cpu_nanocores: u64,
    pub memory_working_set_bytes: u64,
    pub pods: Vec<PodUsage>,
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
}

/// Agents by node name.
#[derive(Default)]
pub struct Kubelets {
    nodes: RwLock<HashMap<String, Arc<dyn Kubelet>>>,
}

impl Kubelets {
    pub fn register(&self, node: &str, kubelet: Arc<dyn Kubelet>) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), kubelet);
    }

    pub fn get(&self, node: &str) -> Option<Arc<dyn Kubelet>> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }
}

//! `pods/exec`, `pods/attach` and `pods/portforward` on a real node: the
//! kubelet's part is only to ask the runtime (CRI `Exec`, `Attach`,
//! `PortForward`) for a one-time URL on its streaming server; the API
//! server then proxies the client's upgraded connection there.

use crate::logs::NodeLogs;
use kobune_apimachinery::ApiError;
use kobune_apiserver::kubelet::StreamKind;
use serde_json::Value;

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(500, "InternalError", format!("{e:#}"))
}

/// The runtime's container ID of `container` in `pod`, if it was started.
fn container_id(node: &NodeLogs, pod: &Value, container: &str) -> Result<String, ApiError> {
    let uid = s(pod, "/metadata/uid");
    let id = node
        .pods
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(uid)
        .and_then(|k| k.containers.get(container))
        .map(|(id, _)| id.clone());
    id.ok_or_else(|| {
        ApiError::bad_request(format!(
            "container {container} is not running in pod {}",
            s(pod, "/metadata/name")
        ))
    })
}

/// Asks the runtime for the streaming URL; `container` was already
/// resolved for exec and attach.
pub async fn stream_url(
    node: &NodeLogs,
    pod: &Value,
    container: Option<String>,
    kind: StreamKind,
) -> Result<String, ApiError> {
    match kind {
        StreamKind::Exec {
            command,
            stdin,
            stdout,
            stderr,
            tty,
            ..
        } => {
            if command.is_empty() {
                return Err(ApiError::bad_request("you must specify at least 1 command"));
            }
            let id = container_id(node, pod, container.as_deref().unwrap_or_default())?;
            node.cri
                .exec_url(&id, &command, tty, stdin, stdout, stderr && !tty)
                .await
                .map_err(internal)
        }
        StreamKind::Attach {
            stdin,
            stdout,
            stderr,
            tty,
            ..
        } => {
            let id = container_id(node, pod, container.as_deref().unwrap_or_default())?;
            node.cri
                .attach_url(&id, tty, stdin, stdout, stderr && !tty)
                .await
                .map_err(internal)
        }
        StreamKind::PortForward { ports } => {
            let uid = s(pod, "/metadata/uid");
            let sandbox = node
                .cri
                .ready_sandbox_for_pod(uid)
                .await
                .map_err(internal)?
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "pod {} is not running on this node",
                        s(pod, "/metadata/name")
                    ))
                })?;
            node.cri
                .port_forward_url(&sandbox, &ports)
                .await
                .map_err(internal)
        }
    }
}

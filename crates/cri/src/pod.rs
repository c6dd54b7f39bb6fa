//! Pod lifecycle over CRI, driven by Kubernetes Pod JSON: the API the node
//! agent calls.
//!
//! Supported from the pod spec: containers and init containers (image,
//! imagePullPolicy, command, args, workingDir, env with literal values and
//! `fieldRef` to the pod's name/namespace/uid/IP/node/service account,
//! `$(VAR)` expansion, cpu/memory requests and limits, ports with
//! `hostPort`), hostname, hostNetwork/hostPID/hostIPC/shareProcessNamespace,
//! runAsUser/runAsGroup, privileged, readOnlyRootFilesystem,
//! terminationGracePeriodSeconds, and volumeMounts (readOnly, subPath) as
//! CRI mounts. The node agent prepares volume directories and passes their
//! host paths in the pod JSON under [`VOLUME_PATHS_KEY`] (volume name ->
//! host path); hostPath volumes need no preparation. Probes and lifecycle
//! hooks are the agent's job ([`Cri::exec_sync`]). The sandbox's resolv.conf
//! comes from the agent under [`DNS_CONFIG_KEY`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{image_spec, Cri};

/// A pod whose sandbox exists in the runtime. Serialisable, so that an agent
/// can persist it and find its containers again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningPod {
    /// The CRI pod sandbox ID.
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod IP (from the sandbox's network status); `None` for
    /// hostNetwork pods.
    pub pod_ip: Option<String>,
    /// The pod's log directory, `log_dir/<ns>_<name>_<uid>`; container
    /// logs are `<container>/<restartCount>.log` below it.
    pub log_dir: PathBuf,
    /// Init containers, in spec order (they have all exited with code 0).
    pub init_containers: Vec<RunningContainer>,
    /// App containers, in spec order.
    pub containers: Vec<RunningContainer>,
    /// Ephemeral (debug) containers, in the order they were added; never
    /// restarted.
    #[serde(default)]
    pub ephemeral_containers: Vec<RunningContainer>,
}

/// One container of a [`RunningPod`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningContainer {
    pub name: String,
    /// The CRI container ID of the current instance.
    pub container_id: String,
    /// The image as written in the pod spec.
    pub image: String,
    /// The image ID containerd resolved (`sha256:…`).
    pub image_id: String,
    /// How often this container was restarted (also its CRI attempt).
    pub restart_count: u32,
    /// The state of the previous instance, set by [`restart_container`].
    pub last_state: Option<ContainerState>,
}

impl RunningPod {
    /// The app (or else ephemeral) container called `name`.
    pub fn container(&self, name: &str) -> Option<&RunningContainer> {
        self.containers
            .iter()
            .chain(&self.ephemeral_containers)
            .find(|c| c.name == name)
    }

    /// The path of the current log file of app container `name`.
    pub fn log_path(&self, name: &str) -> Option<PathBuf> {
        let c = self.container(name)?;
        Some(self.log_dir.join(container_log_path(name, c.restart_count)))
    }
}

/// A container's state, shaped (and serialised) like Kubernetes'
/// `ContainerState`: `{"running": {"startedAt": …}}` and so on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ContainerState {
    Waiting {
        reason: String,
    },
    Running {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        started_at: Option<String>,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        #[serde(skip_serializing_if = "String::is_empty", default)]
        message: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        started_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        finished_at: Option<String>,
    },
}

/// The runtime's view of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRuntimeStatus {
    pub name: String,
    /// `containerd://<id>`.
    pub container_id: String,
    pub image: String,
    pub image_id: String,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
}

impl ContainerRuntimeStatus {
    /// Kubernetes `ContainerStatus` JSON (readiness = running; no probes).
    pub fn to_k8s(&self) -> Value {
        let running = matches!(self.state, ContainerState::Running { .. });
        let mut v = serde_json::json!({
            "name": self.name,
            "state": self.state,
            "lastState": {},
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": self.container_id,
        });
        if let Some(last) = &self.last_state {
            v["lastState"] = serde_json::to_value(last).unwrap_or_default();
        }
        v
    }

    /// The exit code if the container has terminated.
    pub fn exit_code(&self) -> Option<i32> {
        match &self.state {
            ContainerState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// The runtime's view of a pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRuntimeStatus {
    /// Whether the sandbox exists and is ready.
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub init_containers: Vec<ContainerRuntimeStatus>,
    pub containers: Vec<ContainerRuntimeStatus>,
    pub ephemeral_containers: Vec<ContainerRuntimeStatus>,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn string_map(v: Option<&Value>) -> HashMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn bool_at(v: &Value, path: &[&str]) -> bool {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return false,
        }
    }
    cur.as_bool().unwrap_or(false)
}

/// Parses a Kubernetes CPU quantity into millicores (`500m`, `1`, `0.25`).
pub fn parse_cpu_millis(q: &str) -> Option<i64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v.ceil() as i64);
    }
    q.parse::<f64>().ok().map(|v| (v * 1000.0).ceil() as i64)
}

/// Parses a Kubernetes memory quantity into bytes (`128Mi`, `1G`, `1e6`,
/// `1000`).
pub fn parse_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suf, mul) in SUFFIXES {
        if let Some(n) = q.strip_suffix(suf) {
            return n.parse::<f64>().ok().map(|v| (v * mul).ceil() as i64);
        }
    }
    q.parse::<f64>().ok().map(|v| v.ceil() as i64)
}

fn quantity(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether `image` has an explicit tag other than `latest` or a digest.
fn has_pinned_tag(image: &str) -> bool {
    if image.contains('@') {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag != "latest",
        None => false,
    }
}

/// The effective imagePullPolicy (Kubernetes defaulting when unset).
pub fn pull_policy(container: &Value) -> String {
    match s(container, &["imagePullPolicy"]) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => {
            let image = s(container, &["image"]).unwrap_or_default();
            if has_pinned_tag(image) {
                "IfNotPresent".into()
            } else {
                "Always".into()
            }
        }
    }
}

/// Makes sure `image` is present according to `policy` and returns its
/// image ID. With `Always`, a failed pull falls back to a local copy (the
/// node may be offline; built-in images are never in a registry).
pub async fn ensure_image(cri: &Cri, image: &str, policy: &str) -> anyhow::Result<String> {
    let local = cri.image_status(image).await?;
    match (policy, local) {
        ("Always", local) => match cri.pull_image(image).await {
            Ok(_) => {}
            Err(e) => match local {
                Some(img) => {
                    tracing::warn!(image, error = %e, "pull failed; using the local image");
                    return Ok(img.id);
                }
                None => return Err(e.context(format!("ErrImagePull: {image}"))),
            },
        },
        (_, Some(img)) => return Ok(img.id),
        ("Never", None) => {
            anyhow::bail!(
                "ErrImageNeverPull: image {image} is not present and imagePullPolicy is Never"
            )
        }
        (_, None) => {
            cri.pull_image(image)
                .await
                .with_context(|| format!("ErrImagePull: {image}"))?;
        }
    }
    cri.image_status(image)
        .await?
        .map(|i| i.id)
        .with_context(|| format!("image {image} missing right after pull"))
}

fn pod_meta(pod: &Value) -> anyhow::Result<(String, String, String)> {
    let name = s(pod, &["metadata", "name"])
        .context("pod has no metadata.name")?
        .to_string();
    let ns = s(pod, &["metadata", "namespace"])
        .unwrap_or("default")
        .to_string();
    let uid = s(pod, &["metadata", "uid"]).unwrap_or(&name).to_string();
    Ok((ns, name, uid))
}

fn namespace_options(pod: &Value) -> cri::NamespaceOption {
    let spec = &pod["spec"];
    let node = cri::NamespaceMode::Node as i32;
    cri::NamespaceOption {
        network: if bool_at(spec, &["hostNetwork"]) {
            node
        } else {
            cri::NamespaceMode::Pod as i32
        },
        pid: if bool_at(spec, &["hostPID"]) {
            node
        } else if bool_at(spec, &["shareProcessNamespace"]) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: if bool_at(spec, &["hostIPC"]) {
            node
        } else {
            cri::NamespaceMode::Pod as i32
        },
        ..Default::default()
    }
}

fn all_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    let spec = &pod["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
}

/// The directory for a pod's logs under the node's log root.
pub fn pod_log_dir(log_root: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    log_root.join(format!("{ns}_{name}_{uid}"))
}

/// A container's log path relative to the pod log directory.
pub fn container_log_path(name: &str, attempt: u32) -> String {
    format!("{name}/{attempt}.log")
}

/// The CRI sandbox config for a pod.
pub fn sandbox_config(pod: &Value, log_root: &Path) -> anyhow::Result<cri::PodSandboxConfig> {
    let (ns, name, uid) = pod_meta(pod)?;
    let spec = &pod["spec"];
    // As the kubelet: a hostNetwork pod keeps the node's host name (runc
    // cannot set one without a private UTS namespace).
    let mut hostname = if bool_at(spec, &["hostNetwork"]) {
        String::new()
    } else {
        s(spec, &["hostname"]).unwrap_or(&name).to_string()
    };
    hostname.truncate(63);
    let mut port_mappings = vec![];
    for c in all_containers(pod) {
        for p in c["ports"].as_array().into_iter().flatten() {
            let host_port = p["hostPort"].as_i64().unwrap_or(0);
            if host_port <= 0 {
                continue;
            }
            let protocol = match s(p, &["protocol"]).unwrap_or("TCP") {
                "UDP" => cri::Protocol::Udp,
                "SCTP" => cri::Protocol::Sctp,
                _ => cri::Protocol::Tcp,
            };
            port_mappings.push(cri::PortMapping {
                protocol: protocol as i32,
                container_port: p["containerPort"].as_i64().unwrap_or(0) as i32,
                host_port: host_port as i32,
                host_ip: s(p, &["hostIP"]).unwrap_or_default().to_string(),
            });
        }
    }
    let mut labels = string_map(pod["metadata"].get("labels"));
    labels.insert("io.kubernetes.pod.name".into(), name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), ns.clone());
    labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
    let sc = &spec["securityContext"];
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: ns.clone(),
            attempt: 0,
        }),
        hostname,
        log_directory: pod_log_dir(log_root, &ns, &name, &uid)
            .to_string_lossy()
            .into_owned(),
        dns_config: dns_config(pod),
        port_mappings,
        labels,
        annotations: string_map(pod["metadata"].get("annotations")),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                run_as_user: sc["runAsUser"]
                    .as_i64()
                    .map(|value| cri::Int64Value { value }),
                run_as_group: sc["runAsGroup"]
                    .as_i64()
                    .map(|value| cri::Int64Value { value }),
                supplemental_groups: sc["supplementalGroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .collect(),
                ..Default::default()
            }),
            sysctls: sc["sysctls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|kv| {
                    Some((
                        s(kv, &["name"])?.to_string(),
                        s(kv, &["value"])?.to_string(),
                    ))
                })
                .collect(),
            ..Default::default()
        }),
        windows: None,
    })
}

/// Kubernetes `$(VAR)` expansion: known variables are replaced, `$$(X)`
/// escapes, unknown references stay as they are.
pub fn expand_vars(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_ref(pod: &Value, path: &str, pod_ip: Option<&str>) -> Option<String> {
    Some(match path {
        "metadata.name" => s(pod, &["metadata", "name"])?.to_string(),
        "metadata.namespace" => s(pod, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_string(),
        "metadata.uid" => s(pod, &["metadata", "uid"])?.to_string(),
        "spec.nodeName" => s(pod, &["spec", "nodeName"])?.to_string(),
        "spec.serviceAccountName" => s(pod, &["spec", "serviceAccountName"])?.to_string(),
        "status.podIP" => pod_ip?.to_string(),
        "status.hostIP" => s(pod, &["status", "hostIP"])?.to_string(),
        p => {
            let key = p
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    p.strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })?;
            let k = key.1.strip_suffix("']")?;
            s(pod, &["metadata", key.0, k])?.to_string()
        }
    })
}

/// Top-level key of the pod JSON given to [`run_pod`] that maps volume
/// names to prepared host paths (set by the node agent, never stored).
pub const VOLUME_PATHS_KEY: &str = "__kobuneVolumePaths";

/// Top-level key of the pod JSON given to [`run_pod`] with the sandbox's
/// DNS config, `{"servers": [..], "searches": [..], "options": [..]}`, as
/// the node agent forms it from dnsPolicy/dnsConfig (never stored). Absent:
/// the runtime copies the host's resolv.conf.
pub const DNS_CONFIG_KEY: &str = "__kobuneDnsConfig";

/// Top-level key of the pod JSON given to [`run_pod`] for the
/// kubelet-managed `/etc/hosts`: `{"path": .., "head": .., "names": ..,
/// "tail": ..}` (set by the node agent, never stored). Once the sandbox has
/// its IP the file at `path` becomes `head`, then `<podIP>\t<names>` when
/// `names` is not empty, then `tail`; every container without its own
/// `/etc/hosts` mount gets it mounted there.
pub const ETC_HOSTS_KEY: &str = "__kobuneEtcHosts";

/// Writes the pod's managed hosts file (see [`ETC_HOSTS_KEY`]).
pub fn write_etc_hosts(pod: &Value, pod_ip: Option<&str>) -> anyhow::Result<()> {
    let Some(h) = pod.get(ETC_HOSTS_KEY) else {
        return Ok(());
    };
    let path = Path::new(s(h, &["path"]).context("etc-hosts path")?);
    let mut text = s(h, &["head"]).unwrap_or_default().to_string();
    let names = s(h, &["names"]).unwrap_or_default();
    if let (Some(ip), false) = (pod_ip, names.is_empty()) {
        text.push_str(&format!("{ip}\t{names}\n"));
    }
    text.push_str(s(h, &["tail"]).unwrap_or_default());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn dns_config(pod: &Value) -> Option<cri::DnsConfig> {
    let c = pod.get(DNS_CONFIG_KEY)?;
    let list = |k: &str| -> Vec<String> {
        c[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    Some(cri::DnsConfig {
        servers: list("servers"),
        searches: list("searches"),
        options: list("options"),
    })
}

/// CRI mounts for a container's `volumeMounts`. A subPath that does not
/// exist yet is created as a directory (as the kubelet does).
pub fn container_mounts(pod: &Value, container: &Value) -> anyhow::Result<Vec<cri::Mount>> {
    let mut out = vec![];
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vol = s(m, &["name"]).unwrap_or_default();
        let target = s(m, &["mountPath"]).unwrap_or_default();
        if target.is_empty() {
            continue;
        }
        let host = match s(pod, &[VOLUME_PATHS_KEY, vol]) {
            Some(p) => PathBuf::from(p),
            None => {
                let spec = pod["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| s(v, &["name"]) == Some(vol));
                match spec.and_then(|v| s(v, &["hostPath", "path"])) {
                    Some(p) => PathBuf::from(p),
                    None => anyhow::bail!("volume {vol:?} of mount {target} is not prepared"),
                }
            }
        };
        let sub = s(m, &["subPath"]).unwrap_or_default();
        let host = if sub.is_empty() {
            host
        } else {
            anyhow::ensure!(
                !sub.starts_with('/') && !sub.split('/').any(|c| c == ".."),
                "invalid subPath {sub:?}"
            );
            let p = host.join(sub);
            if std::fs::symlink_metadata(&p).is_err() {
                std::fs::create_dir_all(&p)
                    .with_context(|| format!("creating subPath {}", p.display()))?;
            }
            p
        };
        let propagation = match s(m, &["mountPropagation"]).unwrap_or_default() {
            "HostToContainer" => cri::MountPropagation::PropagationHostToContainer,
            "Bidirectional" => cri::MountPropagation::PropagationBidirectional,
            _ => cri::MountPropagation::PropagationPrivate,
        };
        out.push(cri::Mount {
            container_path: target.to_string(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: bool_at(m, &["readOnly"]),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    if let Some(path) = s(pod, &[ETC_HOSTS_KEY, "path"]) {
        if !out.iter().any(|m| m.container_path == "/etc/hosts") {
            out.push(cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: path.to_string(),
                ..Default::default()
            });
        }
    }
    Ok(out)
}

/// The CRI container config for `container` of `pod` (restart `attempt`).
pub fn container_config(
    pod: &Value,
    container: &Value,
    attempt: u32,
    pod_ip: Option<&str>,
) -> anyhow::Result<cri::ContainerConfig> {
    let (ns, pod_name, uid) = pod_meta(pod)?;
    let name = s(container, &["name"]).context("container has no name")?;
    let image =
        s(container, &["image"]).with_context(|| format!("container {name} has no image"))?;

    let mut vars: HashMap<String, String> = HashMap::new();
    let mut envs = vec![];
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(k) = s(e, &["name"]) else { continue };
        let value = if let Some(v) = s(e, &["value"]) {
            expand_vars(v, &vars)
        } else if let Some(p) = s(e, &["valueFrom", "fieldRef", "fieldPath"]) {
            field_ref(pod, p, pod_ip).unwrap_or_default()
        } else if e.get("valueFrom").is_some() {
            tracing::warn!(
                container = name,
                env = k,
                "unsupported env valueFrom; left empty"
            );
            String::new()
        } else {
            String::new()
        };
        vars.insert(k.to_string(), value.clone());
        envs.push(cri::KeyValue {
            key: k.to_string(),
            value,
        });
    }
    let command: Vec<String> = string_list(container.get("command"))
        .iter()
        .map(|c| expand_vars(c, &vars))
        .collect();
    let args: Vec<String> = string_list(container.get("args"))
        .iter()
        .map(|c| expand_vars(c, &vars))
        .collect();

    let res = &container["resources"];
    let cpu_limit = quantity(res["limits"].get("cpu")).and_then(|q| parse_cpu_millis(&q));
    let cpu_request = quantity(res["requests"].get("cpu"))
        .and_then(|q| parse_cpu_millis(&q))
        .or(cpu_limit);
    let mem_limit = quantity(res["limits"].get("memory")).and_then(|q| parse_bytes(&q));
    const PERIOD: i64 = 100_000;
    let resources = cri::LinuxContainerResources {
        cpu_period: if cpu_limit.is_some() { PERIOD } else { 0 },
        cpu_quota: cpu_limit
            .map(|m| (m * PERIOD / 1000).max(1000))
            .unwrap_or(0),
        cpu_shares: cpu_request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2),
        memory_limit_in_bytes: mem_limit.unwrap_or(0),
        ..Default::default()
    };

    let psc = &pod["spec"]["securityContext"];
    let csc = &container["securityContext"];
    let pick_i64 = |k: &str| csc[k].as_i64().or_else(|| psc[k].as_i64());
    let security_context = cri::LinuxContainerSecurityContext {
        privileged: bool_at(csc, &["privileged"]),
        namespace_options: Some(namespace_options(pod)),
        run_as_user: pick_i64("runAsUser").map(|value| cri::Int64Value { value }),
        run_as_group: pick_i64("runAsGroup").map(|value| cri::Int64Value { value }),
        readonly_rootfs: bool_at(csc, &["readOnlyRootFilesystem"]),
        supplemental_groups: psc["supplementalGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
            .collect(),
        no_new_privs: csc["allowPrivilegeEscalation"].as_bool() == Some(false),
        ..Default::default()
    };

    let mut labels = HashMap::new();
    labels.insert("io.kubernetes.container.name".into(), name.to_string());
    labels.insert("io.kubernetes.pod.name".into(), pod_name);
    labels.insert("io.kubernetes.pod.namespace".into(), ns);
    labels.insert("io.kubernetes.pod.uid".into(), uid);
    let mut annotations = HashMap::new();
    annotations.insert(
        "io.kubernetes.container.restartCount".into(),
        attempt.to_string(),
    );

    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt,
        }),
        image: Some(image_spec(image)),
        command,
        args,
        working_dir: s(container, &["workingDir"])
            .unwrap_or_default()
            .to_string(),
        envs,
        labels,
        annotations,
        log_path: container_log_path(name, attempt),
        mounts: container_mounts(pod, container)?,
        stdin: bool_at(container, &["stdin"]),
        stdin_once: bool_at(container, &["stdinOnce"]),
        tty: bool_at(container, &["tty"]),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(security_context),
        }),
        ..Default::default()
    })
}

/// Creates and starts one container; returns (container ID, image ID).
async fn create_and_start(
    cri: &Cri,
    sandbox_id: &str,
    sandbox: &cri::PodSandboxConfig,
    pod: &Value,
    container: &Value,
    attempt: u32,
    pod_ip: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let config = container_config(pod, container, attempt, pod_ip)?;
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let image_id = ensure_image(cri, &image, &pull_policy(container)).await?;
    let id = cri
        .runtime
        .clone()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id;
    cri.runtime
        .clone()
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    Ok((id, image_id))
}

/// Polls until the container has exited; returns its exit code.
pub async fn wait_exited(cri: &Cri, container_id: &str) -> anyhow::Result<i32> {
    let mut delay = Duration::from_millis(20);
    loop {
        let st = cri
            .container_status(container_id)
            .await?
            .with_context(|| format!("container {container_id} disappeared"))?;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(st.exit_code);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Starts a pod: RunPodSandbox, then each init container in order (each
/// must exit with code 0), then each app container (image ensured per
/// imagePullPolicy, created, started). On any failure the sandbox is
/// removed again and the error returned.
pub async fn run_pod(cri: &Cri, pod: &Value, log_dir: &Path) -> anyhow::Result<RunningPod> {
    let (ns, name, uid) = pod_meta(pod)?;
    let sandbox = sandbox_config(pod, log_dir)?;
    let pod_log_dir = PathBuf::from(&sandbox.log_directory);
    tokio::fs::create_dir_all(&pod_log_dir)
        .await
        .with_context(|| format!("creating {}", pod_log_dir.display()))?;
    let t0 = std::time::Instant::now();
    let sandbox_id = cri
        .runtime
        .clone()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {ns}/{name}"))?
        .into_inner()
        .pod_sandbox_id;
    let mut running = RunningPod {
        sandbox_id,
        namespace: ns,
        name,
        uid,
        pod_ip: None,
        log_dir: pod_log_dir,
        init_containers: vec![],
        containers: vec![],
        ephemeral_containers: vec![],
    };
    let sandbox_took = t0.elapsed();
    match start_containers(cri, pod, &sandbox, &mut running).await {
        Ok(()) => {
            tracing::debug!(
                pod = %format!("{}/{}", running.namespace, running.name),
                sandbox_ms = sandbox_took.as_secs_f64() * 1e3,
                containers_ms = (t0.elapsed() - sandbox_took).as_secs_f64() * 1e3,
                "pod running"
            );
            Ok(running)
        }
        Err(e) => {
            if let Err(e2) = stop_pod(cri, &running, 0).await {
                tracing::warn!(error = %e2, "cleaning up the sandbox of a failed pod");
            }
            Err(e)
        }
    }
}

async fn start_containers(
    cri: &Cri,
    pod: &Value,
    sandbox: &cri::PodSandboxConfig,
    running: &mut RunningPod,
) -> anyhow::Result<()> {
    let status = cri
        .sandbox_status(&running.sandbox_id)
        .await?
        .context("sandbox disappeared")?;
    running.pod_ip = status.network.map(|n| n.ip).filter(|ip| !ip.is_empty());
    let pod_ip = running.pod_ip.clone();
    write_etc_hosts(pod, pod_ip.as_deref())?;
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (id, image_id) = create_and_start(
            cri,
            &running.sandbox_id,
            sandbox,
            pod,
            c,
            0,
            pod_ip.as_deref(),
        )
        .await?;
        let name = s(c, &["name"]).unwrap_or_default().to_string();
        running.init_containers.push(RunningContainer {
            name: name.clone(),
            container_id: id.clone(),
            image: s(c, &["image"]).unwrap_or_default().to_string(),
            image_id,
            restart_count: 0,
            last_state: None,
        });
        let code = wait_exited(cri, &id).await?;
        anyhow::ensure!(code == 0, "init container {name} exited with code {code}");
    }
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let (id, image_id) = create_and_start(
            cri,
            &running.sandbox_id,
            sandbox,
            pod,
            c,
            0,
            pod_ip.as_deref(),
        )
        .await?;
        running.containers.push(RunningContainer {
            name: s(c, &["name"]).unwrap_or_default().to_string(),
            container_id: id,
            image: s(c, &["image"]).unwrap_or_default().to_string(),
            image_id,
            restart_count: 0,
            last_state: None,
        });
    }
    Ok(())
}

fn rfc3339(ns: i64) -> Option<String> {
    if ns <= 0 {
        return None;
    }
    chrono::DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Converts a CRI container status into a [`ContainerState`].
pub fn state_of(st: &cri::ContainerStatus) -> ContainerState {
    match cri::ContainerState::try_from(st.state) {
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running {
            started_at: rfc3339(st.started_at),
        },
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Terminated {
            exit_code: st.exit_code,
            reason: if !st.reason.is_empty() {
                st.reason.clone()
            } else if st.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: st.message.clone(),
            started_at: rfc3339(st.started_at),
            finished_at: rfc3339(st.finished_at),
        },
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Waiting {
            reason: "ContainerCreating".into(),
        },
        _ => ContainerState::Waiting {
            reason: "ContainerStatusUnknown".into(),
        },
    }
}

async fn container_runtime_status(
    cri: &Cri,
    c: &RunningContainer,
) -> anyhow::Result<ContainerRuntimeStatus> {
    let st = cri.container_status(&c.container_id).await?;
    let state = match &st {
        Some(st) => state_of(st),
        None => ContainerState::Terminated {
            exit_code: 137,
            reason: "ContainerStatusUnknown".into(),
            message: "the container could not be located".into(),
            started_at: None,
            finished_at: None,
        },
    };
    let image_id = st
        .as_ref()
        .map(|s| s.image_ref.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| c.image_id.clone());
    Ok(ContainerRuntimeStatus {
        name: c.name.clone(),
        container_id: format!("containerd://{}", c.container_id),
        image: c.image.clone(),
        image_id,
        restart_count: c.restart_count,
        state,
        last_state: c.last_state.clone(),
    })
}

/// The current state of a pod's sandbox and containers.
pub async fn pod_status(cri: &Cri, pod: &RunningPod) -> anyhow::Result<PodRuntimeStatus> {
    let sandbox = cri.sandbox_status(&pod.sandbox_id).await?;
    let sandbox_ready = sandbox
        .as_ref()
        .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    let mut out = PodRuntimeStatus {
        sandbox_ready,
        pod_ip: pod.pod_ip.clone(),
        init_containers: vec![],
        containers: vec![],
        ephemeral_containers: vec![],
    };
    for c in &pod.init_containers {
        out.init_containers
            .push(container_runtime_status(cri, c).await?);
    }
    for c in &pod.containers {
        out.containers.push(container_runtime_status(cri, c).await?);
    }
    for c in &pod.ephemeral_containers {
        out.ephemeral_containers
            .push(container_runtime_status(cri, c).await?);
    }
    Ok(out)
}

/// Starts ephemeral container `container` (from `spec.ephemeralContainers`)
/// in the pod's running sandbox, in the process namespace of its
/// `targetContainerName` if it names a running container, as the kubelet
/// does for `kubectl debug`.
pub async fn start_ephemeral(
    cri: &Cri,
    pod: &Value,
    running: &mut RunningPod,
    container: &Value,
) -> anyhow::Result<()> {
    let log_root = running
        .log_dir
        .parent()
        .context("pod log directory has no parent")?
        .to_path_buf();
    let sandbox = sandbox_config(pod, &log_root)?;
    let mut config = container_config(pod, container, 0, running.pod_ip.as_deref())?;
    let target = s(container, &["targetContainerName"])
        .and_then(|t| running.containers.iter().find(|c| c.name == t));
    if let (Some(t), Some(sc)) = (
        target,
        config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut()),
    ) {
        let mut ns = sc.namespace_options.clone().unwrap_or_default();
        ns.pid = cri::NamespaceMode::Target as i32;
        ns.target_id = t.container_id.clone();
        sc.namespace_options = Some(ns);
    }
    let name = s(container, &["name"]).unwrap_or_default().to_string();
    let image = s(container, &["image"]).unwrap_or_default().to_string();
    let image_id = ensure_image(cri, &image, &pull_policy(container)).await?;
    let id = cri
        .runtime
        .clone()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: running.sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id;
    running.ephemeral_containers.push(RunningContainer {
        name: name.clone(),
        container_id: id.clone(),
        image,
        image_id,
        restart_count: 0,
        last_state: None,
    });
    cri.runtime
        .clone()
        .start_container(cri::StartContainerRequest { container_id: id })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    Ok(())
}

fn not_found_ok(r: Result<impl Sized, tonic::Status>, what: &str) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(anyhow::Error::new(s).context(what.to_string())),
    }
}

/// Stops a pod: every container is stopped concurrently with
/// `grace_seconds` (SIGTERM, then SIGKILL when the grace period is over),
/// then the sandbox is stopped and removed (which removes its containers
/// and releases its IP). Idempotent: missing objects are fine.
pub async fn stop_pod(cri: &Cri, pod: &RunningPod, grace_seconds: i64) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for c in pod
        .containers
        .iter()
        .chain(&pod.init_containers)
        .chain(&pod.ephemeral_containers)
    {
        let mut rt = cri.runtime.clone();
        let id = c.container_id.clone();
        set.spawn(async move {
            let r = rt
                .stop_container(cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: grace_seconds.max(0),
                })
                .await;
            not_found_ok(r, &format!("StopContainer {id}"))
        });
    }
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            first_err.get_or_insert(e);
        }
    }
    remove_sandbox(cri, &pod.sandbox_id).await?;
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// StopContainer with `grace_seconds` (NotFound is fine).
pub async fn stop_container(cri: &Cri, id: &str, grace_seconds: i64) -> anyhow::Result<()> {
    let r = cri
        .runtime
        .clone()
        .stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace_seconds.max(0),
        })
        .await;
    not_found_ok(r, &format!("StopContainer {id}"))
}

/// StopPodSandbox + RemovePodSandbox (NotFound is fine).
pub async fn remove_sandbox(cri: &Cri, sandbox_id: &str) -> anyhow::Result<()> {
    let r = cri
        .runtime
        .clone()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        })
        .await;
    not_found_ok(r, &format!("StopPodSandbox {sandbox_id}"))?;
    let r = cri
        .runtime
        .clone()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        })
        .await;
    not_found_ok(r, &format!("RemovePodSandbox {sandbox_id}"))
}

/// Every pod sandbox in the runtime.
async fn list_sandboxes(cri: &Cri) -> anyhow::Result<Vec<cri::PodSandbox>> {
    Ok(cri
        .runtime
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items)
}

/// RemoveContainer (NotFound is fine).
async fn remove_container(cri: &Cri, id: &str) -> anyhow::Result<()> {
    let r = cri
        .runtime
        .clone()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await;
    not_found_ok(r, &format!("RemoveContainer {id}"))
}

/// A ready pod sandbox found in the runtime with the current instance of
/// each of its containers: what an agent that starts again adopts.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundPod {
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pod_ip: Option<String>,
    /// When the sandbox was created (ns since the epoch).
    pub created_at: i64,
    /// The latest attempt of each container name (its attempt is its
    /// restart count), oldest first.
    pub containers: Vec<RunningContainer>,
}

/// The pods the runtime runs, found by their CRI labels. Sandboxes that
/// are not ready (stopped) or carry no pod uid are removed, and so are
/// containers superseded by a later attempt of the same name (failures to
/// remove are logged: they do not keep the node from starting).
pub async fn find_pods(cri: &Cri) -> anyhow::Result<Vec<FoundPod>> {
    let sandboxes = list_sandboxes(cri).await?;
    let containers = cri
        .runtime
        .clone()
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    let mut out = vec![];
    for sb in sandboxes {
        let label = |k: &str| sb.labels.get(k).cloned().unwrap_or_default();
        let uid = label("io.kubernetes.pod.uid");
        let status = if sb.state == cri::PodSandboxState::SandboxReady as i32 && !uid.is_empty() {
            cri.sandbox_status(&sb.id).await
        } else {
            Ok(None)
        };
        let Ok(Some(status)) = status else {
            if let Err(e) = remove_sandbox(cri, &sb.id).await {
                tracing::warn!(sandbox = %sb.id, "removing a stale sandbox: {e:#}");
            }
            continue;
        };
        let pod_ip = status.network.map(|n| n.ip).filter(|ip| !ip.is_empty());
        let mut latest: HashMap<String, &cri::Container> = HashMap::new();
        let mut superseded = vec![];
        for c in containers.iter().filter(|c| c.pod_sandbox_id == sb.id) {
            let Some(meta) = &c.metadata else { continue };
            match latest.get(&meta.name) {
                Some(prev) if prev.metadata.as_ref().map_or(0, |m| m.attempt) >= meta.attempt => {
                    superseded.push(c.id.clone())
                }
                Some(prev) => {
                    superseded.push(prev.id.clone());
                    latest.insert(meta.name.clone(), c);
                }
                None => {
                    latest.insert(meta.name.clone(), c);
                }
            }
        }
        for id in superseded {
            if let Err(e) = remove_container(cri, &id).await {
                tracing::warn!(container = %id, "removing a superseded container: {e:#}");
            }
        }
        let mut found: Vec<&cri::Container> = latest.into_values().collect();
        found.sort_by_key(|c| c.created_at);
        out.push(FoundPod {
            sandbox_id: sb.id.clone(),
            namespace: label("io.kubernetes.pod.namespace"),
            name: label("io.kubernetes.pod.name"),
            uid,
            pod_ip,
            created_at: sb.created_at,
            containers: found
                .into_iter()
                .map(|c| RunningContainer {
                    name: c
                        .metadata
                        .as_ref()
                        .map(|m| m.name.clone())
                        .unwrap_or_default(),
                    container_id: c.id.clone(),
                    image: c
                        .image
                        .as_ref()
                        .map(|i| i.image.clone())
                        .unwrap_or_default(),
                    image_id: c.image_ref.clone(),
                    restart_count: c.metadata.as_ref().map_or(0, |m| m.attempt),
                    last_state: None,
                })
                .collect(),
        });
    }
    Ok(out)
}

/// Removes every sandbox in the runtime (for a node reset, and tests).
/// Returns how many there were.
pub async fn remove_all_sandboxes(cri: &Cri) -> anyhow::Result<usize> {
    let list = list_sandboxes(cri).await?;
    for sb in &list {
        remove_sandbox(cri, &sb.id).await?;
    }
    Ok(list.len())
}

/// Whether a container that exited with `exit_code` is restarted under the
/// pod's `restartPolicy` (`Always` is the default).
pub fn should_restart(restart_policy: Option<&str>, exit_code: i32) -> bool {
    match restart_policy.unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Restarts app container `name` of a running pod (for restartPolicy
/// Always/OnFailure; backoff is the caller's job): the old instance is
/// stopped if still running (with the pod's grace period), its final state
/// recorded as `last_state`, it is removed, and a new instance with
/// `restart_count + 1` as attempt (log `<name>/<n>.log`) is created and
/// started.
pub async fn restart_container(
    cri: &Cri,
    pod: &Value,
    running: &mut RunningPod,
    name: &str,
) -> anyhow::Result<()> {
    let spec = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| s(c, &["name"]) == Some(name))
        .with_context(|| format!("pod spec has no container {name}"))?
        .clone();
    let idx = running
        .containers
        .iter()
        .position(|c| c.name == name)
        .with_context(|| format!("pod has no running container {name}"))?;
    let old_id = running.containers[idx].container_id.clone();
    if let Some(st) = cri.container_status(&old_id).await? {
        if st.state == cri::ContainerState::ContainerRunning as i32 {
            let grace = pod["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            let r = cri
                .runtime
                .clone()
                .stop_container(cri::StopContainerRequest {
                    container_id: old_id.clone(),
                    timeout: grace,
                })
                .await;
            not_found_ok(r, &format!("StopContainer {old_id}"))?;
        }
    }
    let last = container_runtime_status(cri, &running.containers[idx]).await?;
    remove_container(cri, &old_id).await?;

    let sandbox = sandbox_config(pod, running.log_dir.parent().unwrap_or(Path::new("/")))?;
    let attempt = running.containers[idx].restart_count + 1;
    let (id, image_id) = create_and_start(
        cri,
        &running.sandbox_id,
        &sandbox,
        pod,
        &spec,
        attempt,
        running.pod_ip.as_deref(),
    )
    .await?;
    let c = &mut running.containers[idx];
    c.container_id = id;
    c.image_id = image_id;
    c.restart_count = attempt;
    c.last_state = Some(last.state);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {
                "containers": [{
                    "name": "c",
                    "image": "kobune.local/busybox:1",
                    "command": ["sh", "-c"],
                    "args": ["echo $(GREETING) $$(X)"],
                    "env": [
                        {"name": "GREETING", "value": "hi"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}
                }]
            }
        })
    }

    #[test]
    fn sandbox_dns_and_host_network_hostname() {
        let mut p = pod();
        assert_eq!(
            sandbox_config(&p, Path::new("/l")).unwrap().dns_config,
            None
        );
        p[DNS_CONFIG_KEY] = serde_json::json!({
            "servers": ["10.43.0.10"], "searches": ["ns1.svc.cluster.local"], "options": ["ndots:5"]});
        p["spec"]["hostNetwork"] = true.into();
        let sb = sandbox_config(&p, Path::new("/l")).unwrap();
        let dns = sb.dns_config.unwrap();
        assert_eq!(dns.servers, ["10.43.0.10"]);
        assert_eq!(dns.searches, ["ns1.svc.cluster.local"]);
        assert_eq!(dns.options, ["ndots:5"]);
        assert_eq!(sb.hostname, "");
    }

    #[test]
    fn sandbox_from_pod() {
        let sb = sandbox_config(&pod(), Path::new("/logs")).unwrap();
        let m = sb.metadata.unwrap();
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str(), m.uid.as_str()),
            ("web", "ns1", "u-1")
        );
        assert_eq!(sb.log_directory, "/logs/ns1_web_u-1");
        assert_eq!(sb.hostname, "web");
        assert_eq!(sb.port_mappings.len(), 1);
        assert_eq!(sb.port_mappings[0].host_port, 8080);
        assert_eq!(sb.labels["app"], "web");
        let ns = sb
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }

    #[test]
    fn container_from_pod() {
        let p = pod();
        let c = container_config(&p, &p["spec"]["containers"][0], 2, Some("10.0.0.5")).unwrap();
        assert_eq!(c.command, ["sh", "-c"]);
        assert_eq!(c.args, ["echo hi $(X)"]);
        assert_eq!(c.log_path, "c/2.log");
        let env: HashMap<_, _> = c
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(env["POD"], "web");
        assert_eq!(env["IP"], "10.0.0.5");
        let r = c.linux.unwrap().resources.unwrap();
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.cpu_shares, 512);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
    }

    #[test]
    fn quantities_and_policies() {
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("1.5"), Some(1500));
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("100M"), Some(100_000_000));
        assert_eq!(parse_bytes("512"), Some(512));
        assert_eq!(pull_policy(&json!({"image": "busybox"})), "Always");
        assert_eq!(pull_policy(&json!({"image": "busybox:latest"})), "Always");
        assert_eq!(
            pull_policy(&json!({"image": "127.0.0.1:5000/busybox"})),
            "Always"
        );
        assert_eq!(
            pull_policy(&json!({"image": "kobune.local/busybox:1"})),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&json!({"image": "x", "imagePullPolicy": "Never"})),
            "Never"
        );
        assert!(should_restart(None, 0));
        assert!(!should_restart(Some("OnFailure"), 0));
        assert!(should_restart(Some("OnFailure"), 1));
        assert!(!should_restart(Some("Never"), 1));
    }

    #[test]
    fn runtime_reasons_reach_the_state() {
        // containerd reports a kernel OOM kill as reason OOMKilled, exit 137.
        let st = cri::ContainerStatus {
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: 137,
            reason: "OOMKilled".into(),
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_001_500_000_000,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(state_of(&st)).unwrap(),
            json!({"terminated": {"exitCode": 137, "reason": "OOMKilled",
                "startedAt": "2023-11-14T22:13:20Z", "finishedAt": "2023-11-14T22:13:21Z"}})
        );
        // Without a runtime reason: Completed or Error by the exit code.
        let reason = |exit_code: i32| match state_of(&cri::ContainerStatus {
            state: cri::ContainerState::ContainerExited as i32,
            exit_code,
            ..Default::default()
        }) {
            ContainerState::Terminated { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (reason(0), reason(137)),
            ("Completed".into(), "Error".into())
        );
    }

    #[test]
    fn state_serialises_like_kubernetes() {
        let st = ContainerState::Terminated {
            exit_code: 3,
            reason: "Error".into(),
            message: String::new(),
            started_at: Some("2024-01-01T00:00:00Z".into()),
            finished_at: None,
        };
        assert_eq!(
            serde_json::to_value(&st).unwrap(),
            json!({"terminated": {"exitCode": 3, "reason": "Error", "startedAt": "2024-01-01T00:00:00Z"}})
        );
    }
}

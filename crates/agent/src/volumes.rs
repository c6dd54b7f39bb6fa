//! Pod volumes, as the kubelet's volume manager prepares them: emptyDir,
//! configMap, secret, downwardAPI and projected volumes are directories
//! under `<pods_root>/<uid>/volumes/<plugin>/<name>`; hostPath volumes are
//! checked (and created for the `*OrCreate` types). Payload volumes are
//! written like the kubelet's AtomicWriter: files live in a timestamped
//! `..<ts>` directory, `..data` is a symlink to it swapped atomically, and
//! each top-level entry is a symlink through `..data`, so updates of the
//! ConfigMap/Secret appear in running containers in place.

use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// relative path -> (content, mode)
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Looks up a ConfigMap (`secret == false`) or Secret in a namespace.
pub type Lookup<'a> = &'a dyn Fn(bool, &str, &str) -> Option<Value>;

/// Resolves a PersistentVolumeClaim (namespace, claim) to the host
/// directory of the volume bound to it.
pub type ClaimResolver = std::sync::Arc<dyn Fn(&str, &str) -> Result<String, String> + Send + Sync>;

static CLAIMS: std::sync::OnceLock<ClaimResolver> = std::sync::OnceLock::new();

/// Installs how persistentVolumeClaim volumes are resolved (once per process).
pub fn set_claim_resolver(resolver: ClaimResolver) {
    let _ = CLAIMS.set(resolver);
}

/// A pod's prepared volumes.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// volume name -> host path.
    pub paths: Map<String, Value>,
    /// What was last written to each payload volume.
    written: HashMap<String, Payload>,
    /// The service account tokens in its projected volumes.
    pub tokens: Tokens,
    /// The [`inputs`] the files were last made from.
    pub inputs: Option<Vec<String>>,
}

/// The resourceVersion of a Secret (true) or ConfigMap in a namespace.
pub type Version<'a> = &'a dyn Fn(bool, &str, &str) -> Option<String>;

/// What `pod`'s payload volumes are made from: the pod's resourceVersion
/// (downward API), the version of each ConfigMap and Secret they read, and
/// the tokens. The same inputs make the same files.
pub fn inputs(pod: &Value, version: Version<'_>, tokens: &Tokens) -> Vec<String> {
    let ns = str_at(pod, "/metadata/namespace");
    let mut out = vec![str_at(pod, "/metadata/resourceVersion").to_string()];
    let mut object = |src: &Value, secret: bool| {
        let name = source_name(src, secret);
        let v = version(secret, ns, name).unwrap_or_default();
        out.push(format!("{}/{name}={v}", if secret { "s" } else { "c" }));
    };
    for v in volumes(pod) {
        if let Some(src) = v.get("configMap").filter(|x| x.is_object()) {
            object(src, false);
        } else if let Some(src) = v.get("secret").filter(|x| x.is_object()) {
            object(src, true);
        }
        for s in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(c) = s.get("configMap").filter(|x| x.is_object()) {
                object(c, false);
            } else if let Some(c) = s.get("secret").filter(|x| x.is_object()) {
                object(c, true);
            }
        }
    }
    out.extend(tokens.iter().map(|(k, t)| format!("{k}={}", t.token)));
    out
}

/// A service account token as issued for a projected volume.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedToken {
    pub token: String,
    /// When the kubelet asks for a new one: at 80% of its lifetime.
    pub refresh_at: std::time::Instant,
}

/// Tokens by `volume/path`.
pub type Tokens = BTreeMap<String, IssuedToken>;

/// A `serviceAccountToken` projection: where it goes and what to ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSource {
    /// `volume/path`.
    pub key: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

/// Every `serviceAccountToken` source of the pod's projected volumes.
pub fn token_sources(pod: &Value) -> Vec<TokenSource> {
    let mut out = vec![];
    for v in volumes(pod) {
        let sources = v.pointer("/projected/sources").and_then(Value::as_array);
        for s in sources.into_iter().flatten() {
            let Some(t) = s.get("serviceAccountToken").filter(|t| t.is_object()) else {
                continue;
            };
            out.push(TokenSource {
                key: format!("{}/{}", str_at(v, "/name"), str_at(t, "/path")),
                audience: t["audience"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
                expiration_seconds: t["expirationSeconds"].as_i64().unwrap_or(3600),
            });
        }
    }
    out
}

/// The directory holding everything of pod `uid`.
pub fn pod_dir(pods_root: &Path, uid: &str) -> PathBuf {
    pods_root.join(uid)
}

/// A volume setup failure: (volume name, message).
pub type MountError = (String, String);

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn volumes(pod: &Value) -> impl Iterator<Item = &Value> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

impl PodVolumes {
    /// Prepares every volume of `pod`.
    pub fn setup(
        pods_root: &Path,
        pod: &Value,
        lookup: Lookup<'_>,
        tokens: Tokens,
    ) -> Result<PodVolumes, MountError> {
        let uid = str_at(pod, "/metadata/uid");
        let root = pod_dir(pods_root, uid).join("volumes");
        let mut out = PodVolumes {
            tokens,
            ..PodVolumes::default()
        };
        for v in volumes(pod) {
            let name = str_at(v, "/name").to_string();
            let err = |m: String| (name.clone(), m);
            if let Some(hp) = v.get("hostPath").filter(|x| x.is_object()) {
                let path = str_at(hp, "/path");
                check_host_path(path, str_at(hp, "/type")).map_err(err)?;
                out.paths.insert(name.clone(), json!(path));
                continue;
            }
            if let Some(pvc) = v.get("persistentVolumeClaim").filter(|x| x.is_object()) {
                // Bind-mounted like hostPath: the bound volume's directory.
                let claim = str_at(pvc, "/claimName");
                let ns = str_at(pod, "/metadata/namespace");
                let path = match CLAIMS.get() {
                    Some(resolve) => resolve(ns, claim).map_err(err)?,
                    None => {
                        return Err(err("no resolver for persistentVolumeClaim volumes".into()))
                    }
                };
                std::fs::create_dir_all(&path).map_err(|e| err(format!("creating {path}: {e}")))?;
                out.paths.insert(name.clone(), json!(path));
                continue;
            }
            let plugin = if v.get("emptyDir").is_some() {
                "kubernetes.io~empty-dir"
            } else if v.get("configMap").is_some() {
                "kubernetes.io~configmap"
            } else if v.get("secret").is_some() {
                "kubernetes.io~secret"
            } else if v.get("downwardAPI").is_some() {
                "kubernetes.io~downward-api"
            } else if v.get("projected").is_some() {
                "kubernetes.io~projected"
            } else {
                tracing::warn!(volume = %name, "unsupported volume type; using an empty directory");
                "kobune.io~unsupported"
            };
            let dir = root.join(plugin).join(&name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
            if plugin.ends_with("empty-dir") || plugin.starts_with("kobune") {
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
            }
            if let Some(p) = payload(v, pod, lookup, &out.tokens).map_err(err)? {
                atomic_write(&dir, &p).map_err(|e| err(format!("writing files: {e}")))?;
                out.written.insert(name.clone(), p);
            }
            out.paths
                .insert(name.clone(), json!(dir.to_string_lossy().into_owned()));
        }
        Ok(out)
    }

    /// Re-reads ConfigMaps/Secrets (and takes `tokens`, renewed ones
    /// included) and rewrites volumes whose content changed (errors keep the
    /// old content, as the kubelet does). Returns the names of updated volumes.
    pub fn refresh(&mut self, pod: &Value, lookup: Lookup<'_>, tokens: Tokens) -> Vec<String> {
        self.tokens = tokens;
        let mut changed = vec![];
        for v in volumes(pod) {
            let name = str_at(v, "/name");
            let Some(old) = self.written.get(name) else {
                continue;
            };
            let Ok(Some(p)) = payload(v, pod, lookup, &self.tokens) else {
                continue;
            };
            if &p == old {
                continue;
            }
            let Some(dir) = self.paths.get(name).and_then(Value::as_str) else {
                continue;
            };
            match atomic_write(Path::new(dir), &p) {
                Ok(()) => {
                    self.written.insert(name.to_string(), p);
                    changed.push(name.to_string());
                }
                Err(e) => tracing::warn!(volume = name, "updating volume: {e}"),
            }
        }
        changed
    }
}

/// Removes everything the pod had on this node (its volume directories).
pub fn cleanup(pods_root: &Path, uid: &str) {
    if uid.is_empty() {
        return;
    }
    let dir = pod_dir(pods_root, uid);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "removing pod directory: {e}");
        }
    }
}

fn check_host_path(path: &str, typ: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = Path::new(path);
    let meta = std::fs::metadata(p);
    let bad = |what: &str| {
        Err(format!(
            "hostPath type check failed: {path} is not a {what}"
        ))
    };
    match typ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(|e| format!("creating {path}: {e}"))?;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                return Ok(());
            }
            if meta.is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                bad("directory")
            }
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("creating {path}: {e}"))?;
                return Ok(());
            }
            if meta.is_ok_and(|m| m.is_file()) {
                Ok(())
            } else {
                bad("file")
            }
        }
        "Directory" if meta.as_ref().is_ok_and(|m| m.is_dir()) => Ok(()),
        "Directory" => bad("directory"),
        "File" if meta.as_ref().is_ok_and(|m| m.is_file()) => Ok(()),
        "File" => bad("file"),
        "Socket" if meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => bad("socket"),
        "CharDevice" if meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => bad("character device"),
        "BlockDevice" if meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => bad("block device"),
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

/// Key -> bytes of a ConfigMap (`data`, `binaryData`) or Secret (`data`
/// base64, `stringData`).
pub fn data_bytes(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    for (field, encoded) in [
        ("data", secret),
        ("stringData", false),
        ("binaryData", true),
    ] {
        for (k, v) in obj[field].as_object().into_iter().flatten() {
            let Some(v) = v.as_str() else { continue };
            let bytes = if encoded {
                match b64.decode(v) {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            } else {
                v.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    out
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32 & 0o777).unwrap_or(default)
}

/// The object a configMap/secret source (volume or projection) reads: a
/// secret volume names it `secretName`, a projection `name`.
fn source_name(src: &Value, secret: bool) -> &str {
    let name = src["name"].as_str();
    if secret {
        src["secretName"].as_str().or(name)
    } else {
        name
    }
    .unwrap_or_default()
}

/// The files of a configMap/secret source (volume or projection).
fn object_files(
    src: &Value,
    secret: bool,
    ns: &str,
    default_mode: u32,
    lookup: Lookup<'_>,
    out: &mut Payload,
) -> Result<(), String> {
    let name = source_name(src, secret);
    let optional = src["optional"].as_bool().unwrap_or(false);
    let word = if secret { "secret" } else { "configmap" };
    let Some(obj) = lookup(secret, ns, name) else {
        return if optional {
            Ok(())
        } else {
            Err(format!("{word} \"{name}\" not found"))
        };
    };
    let data = data_bytes(&obj, secret);
    match src["items"].as_array().filter(|a| !a.is_empty()) {
        None => {
            for (k, v) in data {
                out.insert(k, (v, default_mode));
            }
        }
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap_or_default();
                let path = it["path"].as_str().unwrap_or(key);
                match data.get(key) {
                    Some(v) => {
                        out.insert(
                            path.to_string(),
                            (v.clone(), mode_of(&it["mode"], default_mode)),
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(format!("{word} references non-existent config key: {key}"))
                    }
                }
            }
        }
    }
    Ok(())
}

fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn format_map(m: Option<&Value>) -> String {
    let mut lines: Vec<String> = m
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v.as_str().unwrap_or_default())))
        .collect();
    lines.sort();
    lines.join("\n")
}

fn node_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The value of a downward API `resourceFieldRef`.
pub fn resource_field(pod: &Value, container_hint: &str, r: &Value) -> Result<String, String> {
    use kobune_cri::pod::{parse_bytes, parse_cpu_millis};
    let cname = r["containerName"].as_str().unwrap_or(container_hint);
    let resource = r["resource"].as_str().unwrap_or_default();
    let c = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["name"] == cname)
        .ok_or_else(|| format!("container {cname:?} not found"))?;
    let (section, res) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let q = match &c["resources"][section][res] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let divisor = match &r["divisor"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "1".into(),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    match res {
        "cpu" => {
            let v = q
                .and_then(|q| parse_cpu_millis(&q))
                .unwrap_or(if section == "limits" { cpus * 1000 } else { 0 });
            let d = parse_cpu_millis(&divisor)
                .filter(|d| *d > 0)
                .unwrap_or(1000);
            Ok(((v + d - 1) / d).max(if v > 0 { 1 } else { 0 }).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let v = q
                .and_then(|q| parse_bytes(&q))
                .unwrap_or(if section == "limits" {
                    node_memory_bytes()
                } else {
                    0
                });
            let d = parse_bytes(&divisor).filter(|d| *d > 0).unwrap_or(1);
            Ok(((v + d - 1) / d).to_string())
        }
        _ => Err(format!("unsupported resource {resource:?}")),
    }
}

/// A downward API `fieldRef` value in a volume.
pub fn field_value(pod: &Value, path: &str) -> Result<String, String> {
    Ok(match path {
        "metadata.name" => str_at(pod, "/metadata/name").to_string(),
        "metadata.namespace" => str_at(pod, "/metadata/namespace").to_string(),
        "metadata.uid" => str_at(pod, "/metadata/uid").to_string(),
        "metadata.labels" => format_map(pod.pointer("/metadata/labels")),
        "metadata.annotations" => format_map(pod.pointer("/metadata/annotations")),
        "spec.nodeName" => str_at(pod, "/spec/nodeName").to_string(),
        "spec.serviceAccountName" => str_at(pod, "/spec/serviceAccountName").to_string(),
        p => {
            let (field, rest) = p
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    p.strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })
                .ok_or_else(|| format!("unsupported fieldPath {p:?}"))?;
            let key = rest
                .strip_suffix("']")
                .ok_or_else(|| format!("unsupported fieldPath {p:?}"))?;
            pod["metadata"][field][key]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    })
}

fn downward_files(
    src: &Value,
    pod: &Value,
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), String> {
    for it in src["items"].as_array().into_iter().flatten() {
        let path = it["path"].as_str().unwrap_or_default();
        let value = if let Some(fp) = it.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            field_value(pod, fp)?
        } else if let Some(r) = it.get("resourceFieldRef").filter(|r| r.is_object()) {
            resource_field(pod, "", r)?
        } else {
            continue;
        };
        out.insert(
            path.to_string(),
            (value.into_bytes(), mode_of(&it["mode"], default_mode)),
        );
    }
    Ok(())
}

/// The files of a payload volume; `None` for other volume types.
pub fn payload(
    vol: &Value,
    pod: &Value,
    lookup: Lookup<'_>,
    tokens: &Tokens,
) -> Result<Option<Payload>, String> {
    let ns = str_at(pod, "/metadata/namespace");
    let mut out = Payload::new();
    if let Some(src) = vol.get("configMap").filter(|x| x.is_object()) {
        let mode = mode_of(&src["defaultMode"], 0o644);
        object_files(src, false, ns, mode, lookup, &mut out)?;
    } else if let Some(src) = vol.get("secret").filter(|x| x.is_object()) {
        let mode = mode_of(&src["defaultMode"], 0o644);
        object_files(src, true, ns, mode, lookup, &mut out)?;
    } else if let Some(src) = vol.get("downwardAPI").filter(|x| x.is_object()) {
        let mode = mode_of(&src["defaultMode"], 0o644);
        downward_files(src, pod, mode, &mut out)?;
    } else if let Some(src) = vol.get("projected").filter(|x| x.is_object()) {
        let mode = mode_of(&src["defaultMode"], 0o644);
        for s in src["sources"].as_array().into_iter().flatten() {
            if let Some(c) = s.get("configMap").filter(|x| x.is_object()) {
                object_files(c, false, ns, mode, lookup, &mut out)?;
            } else if let Some(c) = s.get("secret").filter(|x| x.is_object()) {
                object_files(c, true, ns, mode, lookup, &mut out)?;
            } else if let Some(c) = s.get("downwardAPI").filter(|x| x.is_object()) {
                downward_files(c, pod, mode, &mut out)?;
            } else if let Some(t) = s.get("serviceAccountToken").filter(|x| x.is_object()) {
                let path = str_at(t, "/path");
                let key = format!("{}/{path}", str_at(vol, "/name"));
                let Some(issued) = tokens.get(&key) else {
                    return Err(format!(
                        "no token for service account {:?} yet",
                        str_at(pod, "/spec/serviceAccountName")
                    ));
                };
                out.insert(path.to_string(), (issued.token.clone().into_bytes(), mode));
            }
        }
    } else {
        return Ok(None);
    }
    for k in out.keys() {
        if k.is_empty()
            || k.starts_with('/')
            || k.starts_with("..")
            || k.split('/').any(|c| c == "..")
        {
            return Err(format!("invalid path {k:?}"));
        }
    }
    Ok(Some(out))
}

/// Writes `payload` into `dir` the kubelet's way (`..data` symlink swap).
pub fn atomic_write(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    let data_link = dir.join("..data");
    let old_target = std::fs::read_link(&data_link).ok();
    let ts = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%9f")
        .to_string();
    let ts_dir = dir.join(&ts);
    std::fs::create_dir_all(&ts_dir)?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (rel, (content, mode)) in payload {
        let p = ts_dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, content)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    // Top-level entries point through ..data.
    let tops: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(t), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || tops.contains(&name) {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old_target {
        let old_dir = dir.join(old);
        if old_dir != ts_dir {
            let _ = std::fs::remove_dir_all(old_dir);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs change with the pod, any ConfigMap or Secret a volume reads
    /// (projected ones too) and the tokens; nothing else moves them.
    #[test]
    fn volume_inputs_follow_what_the_files_are_made_from() {
        let mut pod = json!({
            "metadata": {"namespace": "ns", "resourceVersion": "7"},
            "spec": {"volumes": [
                {"name": "cfg", "configMap": {"name": "c"}},
                {"name": "sec", "secret": {"secretName": "s"}},
                {"name": "api", "projected": {"sources": [
                    {"configMap": {"name": "root-ca"}},
                    {"serviceAccountToken": {"path": "token"}}
                ]}},
                {"name": "scratch", "emptyDir": {}}
            ]}
        });
        let versions = std::cell::RefCell::new(HashMap::from([
            ("c/c".to_string(), "1".to_string()),
            ("s/s".to_string(), "2".to_string()),
            ("c/root-ca".to_string(), "3".to_string()),
        ]));
        let version = |secret: bool, ns: &str, name: &str| {
            assert_eq!(ns, "ns");
            let key = format!("{}/{name}", if secret { "s" } else { "c" });
            versions.borrow().get(&key).cloned()
        };
        let token = |t: &str| IssuedToken {
            token: t.into(),
            refresh_at: std::time::Instant::now(),
        };
        let mut tokens = Tokens::from([("api/token".to_string(), token("t1"))]);
        let first = inputs(&pod, &version, &tokens);
        assert_eq!(first, inputs(&pod, &version, &tokens));
        versions.borrow_mut().insert("c/root-ca".into(), "4".into());
        let second = inputs(&pod, &version, &tokens);
        assert_ne!(first, second, "a projected ConfigMap changed");
        versions.borrow_mut().remove("s/s");
        let third = inputs(&pod, &version, &tokens);
        assert_ne!(second, third, "a Secret went away");
        tokens.insert("api/token".into(), token("t2"));
        let fourth = inputs(&pod, &version, &tokens);
        assert_ne!(third, fourth, "a token was renewed");
        pod["metadata"]["resourceVersion"] = json!("8");
        assert_ne!(fourth, inputs(&pod, &version, &tokens), "the pod changed");
    }

    #[test]
    fn configmap_volume_updates_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cm = json!({"data": {"key": "v1", "other": "x"}});
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"b": "2", "a": "1"}},
            "spec": {"volumes": [
                {"name": "cfg", "configMap": {"name": "c"}},
                {"name": "items", "configMap": {"name": "c", "items": [{"key": "key", "path": "sub/k", "mode": 0o600}]}},
                {"name": "missing", "configMap": {"name": "nope", "optional": true}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "scratch", "emptyDir": {}}
            ]}
        });
        let cell = std::cell::RefCell::new(cm.clone());
        let lookup = |_s: bool, _ns: &str, name: &str| (name == "c").then(|| cell.borrow().clone());
        let mut v = PodVolumes::setup(tmp.path(), &pod, &lookup, Tokens::new()).unwrap();
        let dir = PathBuf::from(v.paths["cfg"].as_str().unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap(), "v1");
        let items = PathBuf::from(v.paths["items"].as_str().unwrap());
        assert_eq!(std::fs::read_to_string(items.join("sub/k")).unwrap(), "v1");
        assert!(!items.join("other").exists());
        let info = PathBuf::from(v.paths["info"].as_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(info.join("labels")).unwrap(),
            "a=\"1\"\nb=\"2\""
        );
        assert!(PathBuf::from(v.paths["scratch"].as_str().unwrap()).is_dir());
        cm["data"] = json!({"key": "v2"});
        *cell.borrow_mut() = cm;
        assert_eq!(
            v.refresh(&pod, &lookup, Tokens::new()),
            vec!["cfg", "items"]
        );
        assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap(), "v2");
        assert!(!dir.join("other").exists());
        assert!(v.refresh(&pod, &lookup, Tokens::new()).is_empty());
        cleanup(tmp.path(), "u1");
        assert!(!tmp.path().join("u1").exists());
    }

    #[test]
    fn missing_configmap_is_a_mount_error() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"volumes": [{"name": "cfg", "configMap": {"name": "x"}}]}});
        let lookup = |_s: bool, _ns: &str, _n: &str| None;
        let e = PodVolumes::setup(tmp.path(), &pod, &lookup, Tokens::new()).unwrap_err();
        assert_eq!(
            e,
            ("cfg".to_string(), "configmap \"x\" not found".to_string())
        );
    }

    #[test]
    fn resource_fields() {
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]}});
        let r = json!({"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"});
        assert_eq!(resource_field(&pod, "", &r).unwrap(), "64");
        let r = json!({"containerName": "c", "resource": "limits.cpu"});
        assert_eq!(resource_field(&pod, "", &r).unwrap(), "1");
        let r = json!({"containerName": "c", "resource": "limits.cpu", "divisor": "1m"});
        assert_eq!(resource_field(&pod, "", &r).unwrap(), "500");
    }
}

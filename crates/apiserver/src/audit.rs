//! Audit logging, as kube-apiserver's log backend does it: every request
//! the policy selects becomes an `audit.k8s.io/v1` Event, one JSON line per
//! stage, in a file rotated by size. The policy file is upstream's
//! `Policy` (levels None, Metadata, Request, RequestResponse; rules on
//! users, groups, verbs, resources, namespaces, non-resource URLs; omitted
//! stages); without one, every request is logged at Metadata.

use crate::auth::UserInfo;
use crate::rbac::{Attributes, Decision};
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
pub enum Level {
    #[default]
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupResources {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: bool,
}

/// What the policy says about one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

fn listed(list: &[String], want: &str) -> bool {
    list.is_empty() || list.iter().any(|l| l == want)
}

impl GroupResources {
    fn matches(&self, a: &Attributes) -> bool {
        if self.group != a.group {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        listed(&self.resource_names, &a.name)
            && self.resources.iter().any(|r| {
                *r == "*"
                    || *r == combined
                    || (!a.subresource.is_empty()
                        && r.strip_prefix("*/") == Some(a.subresource.as_str()))
                    || r.strip_suffix("/*") == Some(a.resource.as_str())
            })
    }
}

impl Rule {
    /// Upstream's policy checker: every field given must match.
    fn matches(&self, user: Option<&UserInfo>, a: &Attributes) -> bool {
        let name = user.map(|u| u.username.as_str()).unwrap_or_default();
        let groups: &[String] = user.map(|u| u.groups.as_slice()).unwrap_or_default();
        if !listed(&self.verbs, &a.verb) || !listed(&self.users, name) {
            return false;
        }
        if !self.user_groups.is_empty() && !groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !a.resource_request {
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            return self.non_resource_urls.is_empty()
                || self.non_resource_urls.iter().any(|u| {
                    *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
                });
        }
        if !self.non_resource_urls.is_empty() || !listed(&self.namespaces, &a.namespace) {
            return false;
        }
        self.resources.is_empty() || self.resources.iter().any(|g| g.matches(a))
    }
}

impl Policy {
    /// Reads and checks a policy file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading audit policy {}", path.display()))?;
        let p: Policy = serde_yaml::from_str(&text)
            .with_context(|| format!("audit policy {}", path.display()))?;
        anyhow::ensure!(
            p.kind == "Policy" && p.api_version == "audit.k8s.io/v1",
            "audit policy {}: want kind Policy, apiVersion audit.k8s.io/v1, got kind {:?}, apiVersion {:?}",
            path.display(),
            p.kind,
            p.api_version
        );
        Ok(p)
    }

    /// Every request at Metadata level, without the RequestReceived stage.
    pub fn metadata_for_all() -> Policy {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                ..Default::default()
            }],
            omit_stages: vec![Stage::RequestReceived],
            ..Default::default()
        }
    }

    /// The first matching rule decides; no match means no audit.
    pub fn verdict(&self, user: Option<&UserInfo>, a: &Attributes) -> Verdict {
        match self.rules.iter().find(|r| r.matches(user, a)) {
            Some(r) => {
                let mut omit = self.omit_stages.clone();
                omit.extend(r.omit_stages.iter().copied());
                Verdict {
                    level: r.level,
                    omit_stages: omit,
                    omit_managed_fields: r.omit_managed_fields.unwrap_or(self.omit_managed_fields),
                }
            }
            None => Verdict::default(),
        }
    }
}

/// Where and how much to log.
#[derive(Debug, Clone)]
pub struct Config {
    /// A file, or "-" for standard output.
    pub path: PathBuf,
    pub policy: Option<PathBuf>,
    /// Rotate when the file passes this many megabytes (0: never).
    pub max_size_mb: u64,
    /// Rotated files kept (0: all).
    pub max_backups: usize,
}

/// One request's audit record, filled in as the request is served.
#[derive(Debug, Default)]
pub struct Record {
    pub id: String,
    pub received: String,
    pub request_uri: String,
    pub user_agent: String,
    pub source_ips: Vec<String>,
    pub user: Option<UserInfo>,
    pub impersonated: Option<UserInfo>,
    pub attrs: Option<Attributes>,
    pub api_version: String,
    pub decision: Option<Decision>,
    pub verdict: Verdict,
    pub request_object: Option<Value>,
}

impl Record {
    /// Keeps the decoded request body when the level asks for it.
    pub fn capture_request(&mut self, obj: &Value) {
        if self.verdict.level >= Level::Request {
            self.request_object = Some(obj.clone());
        }
    }

    pub fn wants_response(&self) -> bool {
        self.verdict.level >= Level::RequestResponse
    }

    /// The Event for `stage`, with the response's status once there is one.
    pub fn event(
        &self,
        stage: Stage,
        status: Option<&Value>,
        response_object: Option<&Value>,
    ) -> Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let user = |u: &UserInfo| json!({"username": u.username, "groups": u.groups});
        let mut ev = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1",
            "level": format!("{:?}", self.verdict.level),
            "auditID": self.id, "stage": stage.as_str(),
            "requestURI": self.request_uri,
            "user": self.user.as_ref().map(user).unwrap_or_else(|| json!({})),
            "sourceIPs": self.source_ips, "userAgent": self.user_agent,
            "requestReceivedTimestamp": self.received, "stageTimestamp": now,
        });
        if let Some(a) = &self.attrs {
            ev["verb"] = json!(a.verb);
            if a.resource_request {
                let mut r = json!({"resource": a.resource, "apiVersion": self.api_version});
                let name = if a.name.is_empty() {
                    self.request_object
                        .as_ref()
                        .and_then(|o| o.pointer("/metadata/name"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                } else {
                    &a.name
                };
                for (k, v) in [
                    ("namespace", a.namespace.as_str()),
                    ("name", name),
                    ("apiGroup", a.group.as_str()),
                    ("subresource", a.subresource.as_str()),
                ] {
                    if !v.is_empty() {
                        r[k] = json!(v);
                    }
                }
                ev["objectRef"] = r;
            }
        }
        if let Some(u) = &self.impersonated {
            ev["impersonatedUser"] = user(u);
        }
        if let Some(s) = status {
            ev["responseStatus"] = s.clone();
        }
        let strip = |o: &Value| {
            let mut o = o.clone();
            if self.verdict.omit_managed_fields {
                if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                }
            }
            o
        };
        if let Some(o) = &self.request_object {
            ev["requestObject"] = strip(o);
        }
        if let Some(o) = response_object {
            ev["responseObject"] = strip(o);
        }
        if let Some(d) = &self.decision {
            let mut ann = json!({"authorization.k8s.io/decision": if d.allowed { "allow" } else { "forbid" }});
            if !d.reason.is_empty() {
                ann["authorization.k8s.io/reason"] = json!(d.reason);
            }
            ev["annotations"] = ann;
        }
        ev
    }
}

/// The audit log: a policy and a writer task.
pub struct Auditor {
    policy: Policy,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl Auditor {
    /// Loads the policy and opens the log (creating its directory).
    pub fn start(cfg: &Config) -> Result<Arc<Auditor>> {
        let policy = match &cfg.policy {
            Some(p) => Policy::load(p)?,
            None => Policy::metadata_for_all(),
        };
        let mut out: Box<dyn Write + Send> = if cfg.path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            Box::new(open_log(&cfg.path)?)
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let mut written = std::fs::metadata(&cfg.path).map(|m| m.len()).unwrap_or(0);
            while let Some(line) = rx.recv().await {
                let mut batch = line;
                while let Ok(more) = rx.try_recv() {
                    batch.extend_from_slice(&more);
                }
                if let Err(e) = out.write_all(&batch).and_then(|_| out.flush()) {
                    tracing::warn!("writing the audit log {}: {e}", cfg.path.display());
                }
                written += batch.len() as u64;
                if cfg.max_size_mb > 0 && written >= cfg.max_size_mb << 20 {
                    match rotate(&cfg) {
                        Ok(f) => {
                            out = Box::new(f);
                            written = 0;
                        }
                        Err(e) => tracing::warn!("rotating the audit log: {e:#}"),
                    }
                }
            }
        });
        Ok(Arc::new(Auditor { policy, tx }))
    }

    pub fn verdict(&self, user: Option<&UserInfo>, a: &Attributes) -> Verdict {
        self.policy.verdict(user, a)
    }

    /// Logs `record` at `stage`, unless its level is None or the stage is omitted.
    pub fn emit(
        &self,
        record: &Record,
        stage: Stage,
        status: Option<&Value>,
        response_object: Option<&Value>,
    ) {
        if record.verdict.level == Level::None || record.verdict.omit_stages.contains(&stage) {
            return;
        }
        let mut line =
            serde_json::to_vec(&record.event(stage, status, response_object)).unwrap_or_default();
        line.push(b'\n');
        let _ = self.tx.send(line);
    }
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the audit log {}", path.display()))
}

/// Renames the log to NAME-TIMESTAMP.EXT (as upstream's lumberjack does),
/// drops the oldest backups past the limit, and opens a fresh log.
fn rotate(cfg: &Config) -> Result<std::fs::File> {
    let stem = cfg
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("audit")
        .to_string();
    let ext = cfg
        .path
        .extension()
        .and_then(|s| s.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let dir = cfg
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S%.3f");
    std::fs::rename(&cfg.path, dir.join(format!("{stem}-{stamp}{ext}")))?;
    if cfg.max_backups > 0 {
        let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(&ext))
            })
            .collect();
        backups.sort();
        let excess = backups.len().saturating_sub(cfg.max_backups);
        for old in &backups[..excess] {
            let _ = std::fs::remove_file(old);
        }
    }
    open_log(&cfg.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  userGroups: ["system:nodes"]
- level: None
  nonResourceURLs: ["/api*", "/version"]
- level: RequestResponse
  resources: [{group: "", resources: ["configmaps", "pods/exec"]}]
  namespaces: ["shop"]
- level: Request
  verbs: ["create", "update", "patch", "delete"]
  resources: [{group: "apps", resources: ["deployments/*"]}, {group: "", resources: ["secrets"], resourceNames: ["db"]}]
- level: Metadata
  omitStages: [ResponseStarted]
"#;

    fn user(groups: &[&str]) -> UserInfo {
        UserInfo {
            username: "u".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_matching_rule_sets_the_level() {
        let p: Policy = serde_yaml::from_str(POLICY).unwrap();
        let me = user(&["devs"]);
        let level = |u: &UserInfo, a: Attributes| p.verdict(Some(u), &a).level;
        assert_eq!(
            level(
                &user(&["system:nodes"]),
                Attributes::resource("get", "", "pods", "shop", "")
            ),
            Level::None
        );
        assert_eq!(
            level(&me, Attributes::non_resource("get", "/apis/apps/v1")),
            Level::None
        );
        assert_eq!(
            level(&me, Attributes::non_resource("get", "/metrics")),
            Level::Metadata
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("create", "", "configmaps", "shop", "")
            ),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("create", "", "pods/exec", "shop", "web")
            ),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("create", "", "configmaps", "other", "")
            ),
            Level::Metadata
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("update", "apps", "deployments/scale", "x", "web")
            ),
            Level::Request
        );
        // "resource/*" covers the resource itself too, as upstream's checker.
        assert_eq!(
            level(
                &me,
                Attributes::resource("update", "apps", "deployments", "x", "web")
            ),
            Level::Request
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("update", "apps", "statefulsets", "x", "web")
            ),
            Level::Metadata
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("delete", "", "secrets", "x", "db")
            ),
            Level::Request
        );
        assert_eq!(
            level(
                &me,
                Attributes::resource("delete", "", "secrets", "x", "tls")
            ),
            Level::Metadata
        );
        let v = p.verdict(Some(&me), &Attributes::resource("get", "", "pods", "", ""));
        assert_eq!(
            v.omit_stages,
            vec![Stage::RequestReceived, Stage::ResponseStarted]
        );
        // Unauthenticated requests match rules without users or groups.
        assert_eq!(
            p.verdict(None, &Attributes::resource("get", "", "pods", "", ""))
                .level,
            Level::Metadata
        );
    }

    #[test]
    fn policies_are_checked_strictly() {
        assert!(serde_yaml::from_str::<Policy>(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Everything}]"
        )
        .is_err());
        assert!(serde_yaml::from_str::<Policy>(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: None, user: [a]}]"
        )
        .is_err());
    }

    #[test]
    fn events_carry_who_what_and_the_outcome() {
        let mut r = Record {
            id: "id-1".into(),
            user: Some(user(&["devs"])),
            attrs: Some(Attributes::resource("create", "", "configmaps", "shop", "")),
            api_version: "v1".into(),
            decision: Some(Decision {
                allowed: true,
                reason: "RBAC: allowed".into(),
            }),
            verdict: Verdict {
                level: Level::Request,
                omit_stages: vec![],
                omit_managed_fields: true,
            },
            ..Default::default()
        };
        r.capture_request(
            &json!({"metadata": {"name": "settings", "managedFields": []}, "data": {"a": "b"}}),
        );
        let ev = r.event(
            Stage::ResponseComplete,
            Some(&json!({"metadata": {}, "code": 201})),
            None,
        );
        assert_eq!(
            ev["objectRef"],
            json!({"resource": "configmaps", "namespace": "shop", "name": "settings", "apiVersion": "v1"})
        );
        assert_eq!(
            ev["requestObject"],
            json!({"metadata": {"name": "settings"}, "data": {"a": "b"}})
        );
        assert_eq!(ev["annotations"]["authorization.k8s.io/decision"], "allow");
        assert_eq!(
            (ev["level"].as_str(), ev["verb"].as_str()),
            (Some("Request"), Some("create"))
        );
        assert!(!r.wants_response());
    }
}

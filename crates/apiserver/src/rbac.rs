//! Authorization as upstream's RBAC authorizer does it: a request's
//! [`Attributes`] are allowed when a rule of a Role or ClusterRole bound to
//! the user (by a RoleBinding in the request's namespace or by a
//! ClusterRoleBinding) covers them. Members of `system:masters` are allowed
//! everything first, as upstream's privileged-group authorizer does. Roles
//! are read from the watch cache, as upstream reads them from informers.
//! Writes to roles and bindings are checked for escalation here too.

use crate::auth::UserInfo;
use crate::registry::Registry;
use kobune_apimachinery::ApiError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub const MASTERS: &str = "system:masters";
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a request asks to do, as upstream's RequestInfo and authorizer
/// attributes describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path of a non-resource request.
    pub path: String,
}

impl Attributes {
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    /// The attributes of an API request, as upstream's RequestInfoResolver
    /// reads them: `segs` is the decoded path, `watch` the watch parameter
    /// and `field_selector` the list's field selector (a `metadata.name=`
    /// term names the object).
    pub fn of_request(segs: &[&str], method: &str, watch: bool, field_selector: &str) -> Self {
        let (group, rest) = match segs {
            ["api", _v, rest @ ..] => ("", rest),
            ["apis", g, _v, rest @ ..] => (*g, rest),
            _ => (
                "",
                &[][..], // discovery, OpenAPI, health: non-resource paths
            ),
        };
        let verb = match method {
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "get",
        };
        if rest.is_empty() {
            let path = format!("/{}", segs.join("/"));
            return Attributes::non_resource(&method.to_lowercase(), &path);
        }
        let (watch, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            _ => (watch, rest),
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, tail @ ..]
                if !tail.is_empty() && !matches!(tail[0], "status" | "finalize") =>
            {
                (*ns, tail)
            }
            ["namespaces", ns, ..] => (*ns, rest),
            _ => ("", rest),
        };
        let mut a = Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: rest[0].into(),
            subresource: rest.get(2).copied().unwrap_or_default().into(),
            namespace: namespace.into(),
            name: rest.get(1).copied().unwrap_or_default().into(),
            path: String::new(),
        };
        if a.name.is_empty() {
            a.verb = match verb {
                "get" if watch => "watch",
                "get" => "list",
                "delete" => "deletecollection",
                v => v,
            }
            .into();
            if matches!(a.verb.as_str(), "list" | "watch") {
                if let Some(n) = field_selector
                    .split(',')
                    .find_map(|t| t.trim().strip_prefix("metadata.name="))
                {
                    a.name = n.into();
                }
            }
        } else if verb == "get" && watch {
            a.verb = "watch".into();
        }
        // Streams are authorized as creates whatever the method (upstream's
        // AuthorizePodWebsocketUpgradeCreatePermission).
        if matches!(a.subresource.as_str(), "exec" | "attach" | "portforward") {
            a.verb = "create".into();
        }
        a
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

/// Whether one PolicyRule covers the attributes.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&rule["verbs"], &a.verb) {
        return false;
    }
    if !a.resource_request {
        return strs(&rule["nonResourceURLs"]).iter().any(|u| {
            *u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    if !has(&rule["apiGroups"], &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strs(&rule["resources"]).iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    let names = strs(&rule["resourceNames"]);
    resource_ok && (names.is_empty() || names.contains(&a.name.as_str()))
}

fn subject_matches(s: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str() {
        Some("User") => name == user.username,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = s["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.username
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
                == Some((ns, name))
        }
        _ => false,
    }
}

fn describe_subject(s: &Value) -> String {
    let name = s["name"].as_str().unwrap_or_default();
    match (s["kind"].as_str(), s["namespace"].as_str()) {
        (Some("ServiceAccount"), Some(ns)) => format!("ServiceAccount \"{name}/{ns}\""),
        (k, _) => format!("{} {name:?}", k.unwrap_or_default()),
    }
}

fn objects(reg: &Registry, plural: &str, ns: Option<&str>) -> Vec<Arc<Value>> {
    let Some(info) = reg.resources.find(GROUP, "v1", plural) else {
        return vec![];
    };
    reg.cache
        .list(&reg.prefix(&info, ns), None)
        .0
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

fn object(reg: &Registry, plural: &str, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
    let info = reg.resources.find(GROUP, "v1", plural)?;
    reg.cache.get(&info.key(ns, name))
}

/// The rules of the role a binding refers to (a binding in `ns` may name a
/// Role there or a ClusterRole).
fn role_rules(reg: &Registry, role_ref: &Value, ns: Option<&str>) -> Option<Arc<Value>> {
    let name = role_ref["name"].as_str()?;
    match role_ref["kind"].as_str()? {
        "ClusterRole" => object(reg, "clusterroles", None, name),
        "Role" => object(reg, "roles", ns, name),
        _ => None,
    }
}

/// Calls `visit` with every rule bound to `user` that applies in
/// `namespace` ("" for cluster scope) and a description of where it comes
/// from, until `visit` returns true.
fn visit_rules(
    reg: &Registry,
    user: &UserInfo,
    namespace: &str,
    visit: &mut dyn FnMut(&dyn Fn() -> String, &Value) -> bool,
) -> bool {
    let mut scopes = vec![(
        "ClusterRoleBinding",
        objects(reg, "clusterrolebindings", None),
    )];
    if !namespace.is_empty() {
        scopes.push(("RoleBinding", objects(reg, "rolebindings", Some(namespace))));
    }
    for (kind, bindings) in scopes {
        for b in bindings {
            let bns = b["metadata"]["namespace"].as_str().unwrap_or_default();
            let Some(subject) = b["subjects"]
                .as_array()
                .and_then(|s| s.iter().find(|s| subject_matches(s, user, bns)))
            else {
                continue;
            };
            let ns = (!bns.is_empty()).then_some(bns);
            let Some(role) = role_rules(reg, &b["roleRef"], ns) else {
                continue;
            };
            let source = || {
                let bname = b["metadata"]["name"].as_str().unwrap_or_default();
                let bname = if bns.is_empty() {
                    format!("{bname:?}")
                } else {
                    format!("\"{bname}/{bns}\"")
                };
                format!(
                    "{kind} {bname} of {} {:?} to {}",
                    b["roleRef"]["kind"].as_str().unwrap_or_default(),
                    b["roleRef"]["name"].as_str().unwrap_or_default(),
                    describe_subject(subject)
                )
            };
            for rule in role["rules"].as_array().into_iter().flatten() {
                if visit(&source, rule) {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether `user` may do what `a` describes.
pub fn authorize(reg: &Registry, user: &UserInfo, a: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let mut reason = String::new();
    let allowed = visit_rules(reg, user, &a.namespace, &mut |source, rule| {
        let ok = rule_allows(rule, a);
        if ok {
            reason = format!("RBAC: allowed by {}", source());
        }
        ok
    });
    Decision { allowed, reason }
}

/// Every rule that applies to `user` in `namespace`.
pub fn rules_for(reg: &Registry, user: &UserInfo, namespace: &str) -> Vec<Value> {
    let mut out: Vec<Value> = vec![];
    visit_rules(reg, user, namespace, &mut |_, rule| {
        if !out.contains(rule) {
            out.push(rule.clone());
        }
        false
    });
    out
}

/// The Forbidden error upstream answers with when `user` may not do `a`.
pub fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let u = &user.username;
    let suffix = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    if !a.resource_request {
        return ApiError::new(
            403,
            "Forbidden",
            format!(
                "forbidden: User {u:?} cannot {} path {:?}{suffix}",
                a.verb, a.path
            ),
        );
    }
    let mut resource = a.resource.clone();
    if !a.subresource.is_empty() {
        resource = format!("{resource}/{}", a.subresource);
    }
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    ApiError::forbidden(
        &a.resource,
        &a.group,
        &a.name,
        &format!(
            "User {u:?} cannot {} resource {resource:?} in API group {:?} {scope}{suffix}",
            a.verb, a.group
        ),
    )
}

/// The `status` of a (Self|Local)SubjectAccessReview for `user` and the
/// review's `spec`.
pub fn access_review(reg: &Registry, user: &UserInfo, spec: &Value) -> Value {
    let a = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let s = |k: &str| r[k].as_str().unwrap_or_default();
        let mut a = Attributes::resource(
            s("verb"),
            s("group"),
            s("resource"),
            s("namespace"),
            s("name"),
        );
        a.subresource = s("subresource").into();
        a
    } else {
        let r = &spec["nonResourceAttributes"];
        Attributes::non_resource(
            r["verb"].as_str().unwrap_or_default(),
            r["path"].as_str().unwrap_or_default(),
        )
    };
    let d = authorize(reg, user, &a);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// The `status` of a SelfSubjectRulesReview: what `user` may do in `namespace`.
pub fn rules_review(reg: &Registry, user: &UserInfo, namespace: &str) -> Value {
    let mut resource_rules = vec![];
    let mut non_resource_rules = vec![];
    let rules = if user.groups.iter().any(|g| g == MASTERS) {
        cluster_admin_rules()
    } else {
        rules_for(reg, user, namespace)
    };
    for r in rules {
        let mut out = serde_json::Map::new();
        for k in [
            "verbs",
            "apiGroups",
            "resources",
            "resourceNames",
            "nonResourceURLs",
        ] {
            if let Some(v) = r
                .get(k)
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            {
                out.insert(k.into(), v.clone());
            }
        }
        if out.contains_key("nonResourceURLs") {
            non_resource_rules.push(Value::Object(out));
        } else {
            resource_rules.push(Value::Object(out));
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// Splits rules into rules of one verb, group, resource and name each.
fn atoms(rule: &Value) -> Vec<Attributes> {
    let verbs = strs(&rule["verbs"]);
    let urls = strs(&rule["nonResourceURLs"]);
    let mut out = vec![];
    for v in &verbs {
        for u in &urls {
            out.push(Attributes::non_resource(v, u));
        }
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                let names = strs(&rule["resourceNames"]);
                if names.is_empty() {
                    out.push(Attributes::resource(v, g, r, "", ""));
                }
                for n in names {
                    out.push(Attributes::resource(v, g, r, "", n));
                }
            }
        }
    }
    out
}

/// The rules of `servant` that none of `owner` covers, as upstream's
/// escalation check compares them (wildcards only cover wildcards).
pub fn uncovered(owner: &[Value], servant: &[Value]) -> Vec<Value> {
    let mut out = vec![];
    for rule in servant {
        for a in atoms(rule) {
            if !owner.iter().any(|o| rule_allows(o, &a)) {
                out.push(if a.resource_request {
                    let res = if a.subresource.is_empty() {
                        a.resource.clone()
                    } else {
                        format!("{}/{}", a.resource, a.subresource)
                    };
                    let mut r =
                        json!({"apiGroups": [a.group], "resources": [res], "verbs": [a.verb]});
                    if !a.name.is_empty() {
                        r["resourceNames"] = json!([a.name]);
                    }
                    r
                } else {
                    json!({"nonResourceURLs": [a.path], "verbs": [a.verb]})
                });
            }
        }
    }
    out
}

fn go_rule(r: &Value) -> String {
    let list = |k: &str| {
        let l: Vec<String> = strs(&r[k]).iter().map(|s| format!("{s:?}")).collect();
        l.join(" ")
    };
    if r.get("nonResourceURLs").is_some() {
        format!(
            "{{NonResourceURLs:[{}], Verbs:[{}]}}",
            list("nonResourceURLs"),
            list("verbs")
        )
    } else if r.get("resourceNames").is_some() {
        format!(
            "{{APIGroups:[{}], Resources:[{}], ResourceNames:[{}], Verbs:[{}]}}",
            list("apiGroups"),
            list("resources"),
            list("resourceNames"),
            list("verbs")
        )
    } else {
        format!(
            "{{APIGroups:[{}], Resources:[{}], Verbs:[{}]}}",
            list("apiGroups"),
            list("resources"),
            list("verbs")
        )
    }
}

/// Refuses a Role, ClusterRole or binding that would give more than
/// `user` holds, unless `user` may `escalate` (roles) or `bind` (bindings),
/// as upstream's RBAC storage does.
pub fn check_escalation(
    reg: &Registry,
    user: &UserInfo,
    plural: &str,
    ns: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns_str = ns.unwrap_or_default();
    let may = |verb: &str, plural: &str, name: &str| {
        authorize(
            reg,
            user,
            &Attributes::resource(verb, GROUP, plural, ns_str, name),
        )
        .allowed
    };
    let granted: Vec<Value> = match plural {
        "roles" | "clusterroles" => {
            if may("escalate", plural, name) {
                return Ok(());
            }
            if plural == "clusterroles" && obj.get("aggregationRule").is_some_and(|a| !a.is_null())
            {
                return Err(ApiError::forbidden(
                    plural,
                    GROUP,
                    name,
                    &format!(
                        "user {:?} cannot set an aggregationRule without escalate permission",
                        user.username
                    ),
                ));
            }
            obj["rules"].as_array().cloned().unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let r = &obj["roleRef"];
            let role_plural = if r["kind"] == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if may("bind", role_plural, r["name"].as_str().unwrap_or_default()) {
                return Ok(());
            }
            match role_rules(reg, r, ns) {
                Some(role) => role["rules"].as_array().cloned().unwrap_or_default(),
                None => {
                    return Err(ApiError::not_found(
                        role_plural,
                        GROUP,
                        r["name"].as_str().unwrap_or_default(),
                    ))
                }
            }
        }
        _ => return Ok(()),
    };
    let missing = uncovered(&rules_for(reg, user, ns_str), &granted);
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(go_rule).collect();
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    Err(ApiError::forbidden(
        plural,
        GROUP,
        name,
        &format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.username,
            groups.join(" "),
            list.join("\n")
        ),
    ))
}

/// Impersonation: the user named by `Impersonate-*` headers, once `user`
/// is allowed to act as each part of it; None when nothing is impersonated.
pub fn impersonate(
    reg: &Registry,
    user: &UserInfo,
    target_user: Option<&str>,
    groups: &[String],
    uid: Option<&str>,
    extra: &HashMap<String, Vec<String>>,
) -> Result<Option<UserInfo>, ApiError> {
    let Some(name) = target_user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::internal(
                "requested impersonation of groups, uid or extra without impersonating a user",
            ));
        }
        return Ok(None);
    };
    let mut checks = vec![];
    let mut new_groups: Vec<String> = groups.to_vec();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            checks.push(Attributes::resource(
                "impersonate",
                "",
                "serviceaccounts",
                ns,
                sa,
            ));
            if groups.is_empty() {
                new_groups = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => checks.push(Attributes::resource("impersonate", "", "users", "", name)),
    }
    for g in groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", g));
    }
    if let Some(u) = uid {
        checks.push(Attributes::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            u,
        ));
    }
    for (k, vals) in extra {
        for v in vals {
            checks.push(Attributes::resource(
                "impersonate",
                "authentication.k8s.io",
                &format!("userextras/{k}"),
                "",
                v,
            ));
        }
    }
    for a in &checks {
        let d = authorize(reg, user, a);
        if !d.allowed {
            return Err(forbidden(user, a, &d.reason));
        }
    }
    if name != "system:anonymous" && !new_groups.iter().any(|g| g == "system:authenticated") {
        new_groups.push("system:authenticated".into());
    }
    Ok(Some(UserInfo {
        username: name.into(),
        groups: new_groups,
    }))
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn cluster_admin_rules() -> Vec<Value> {
    vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    let mut r = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {AUTOUPDATE: "true"}},
        "rules": rules,
    });
    if let Some(to) = aggregate {
        r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE}{to}"): "true"}}]});
    }
    r
}

fn cluster_binding(role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"apiGroup": GROUP, "kind": "Group", "name": g}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The roles and bindings a new cluster starts with, as upstream's
/// bootstrap policy has them (the ones users and charts rely on):
/// `cluster-admin` for `system:masters`, the user-facing `admin`, `edit`
/// and `view` (aggregated from `system:aggregate-to-*`), discovery and
/// self-review for every authenticated user, and `system:auth-delegator`.
pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    let to = |names: &[&str]| {
        let mut m = serde_json::Map::new();
        for n in names {
            m.insert(format!("{AGGREGATE}{n}"), json!("true"));
        }
        Value::Object(m)
    };
    let apps = ["daemonsets", "deployments", "replicasets", "statefulsets"];
    let scaled = [
        "deployments/scale",
        "replicasets/scale",
        "statefulsets/scale",
    ];
    let view = vec![
        rule(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
        rule(READ, &["events.k8s.io"], &["events"]),
    ];
    let mut edit_apps: Vec<&str> = apps.to_vec();
    edit_apps.extend(scaled);
    let edit = vec![
        rule(
            &[
                "create",
                "delete",
                "deletecollection",
                "patch",
                "update",
                "get",
                "list",
                "watch",
            ],
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(
            &["create"],
            &[""],
            &["serviceaccounts/token", "pods/eviction"],
        ),
        rule(WRITE, &["apps"], &edit_apps),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
        rule(WRITE, &["coordination.k8s.io"], &["leases"]),
    ];
    let admin = vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            &[GROUP],
            &["rolebindings", "roles"],
        ),
    ];
    let discovery = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    let public = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let roles = vec![
        cluster_role("cluster-admin", json!({}), cluster_admin_rules(), None),
        cluster_role("admin", json!({}), vec![], Some("admin")),
        cluster_role("edit", to(&["admin"]), vec![], Some("edit")),
        cluster_role("view", to(&["edit"]), vec![], Some("view")),
        cluster_role("system:aggregate-to-admin", to(&["admin"]), admin, None),
        cluster_role("system:aggregate-to-edit", to(&["edit"]), edit, None),
        cluster_role("system:aggregate-to-view", to(&["view"]), view, None),
        cluster_role(
            "system:aggregated-metrics-reader",
            to(&["admin", "edit", "view"]),
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
            None,
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(&["get"], &discovery)],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(&["get"], &public)],
            None,
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:auth-delegator",
            json!({}),
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
            None,
        ),
    ];
    let bindings = vec![
        cluster_binding("cluster-admin", &[MASTERS]),
        cluster_binding("system:discovery", &["system:authenticated"]),
        cluster_binding("system:basic-user", &["system:authenticated"]),
        cluster_binding(
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ];
    roles
        .into_iter()
        .map(|r| ("clusterroles", r))
        .chain(bindings.into_iter().map(|b| ("clusterrolebindings", b)))
        .collect()
}

/// The annotation that lets a default role or binding be reconciled.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// What becomes of a default role or binding found at start.
#[derive(Debug, PartialEq)]
pub enum Reconcile {
    /// Nothing is missing, or it is not to be touched (autoupdate "false").
    Keep,
    /// Write it back like this.
    Update(Value),
    /// Its roleRef differs (immutable): delete it and create the default.
    Recreate,
}

/// Upstream's reconciliation of the default policy at start, so that an
/// upgrade brings in new default permissions while keeping what users
/// added: `existing` gains the labels, annotations, rules (as atoms, for
/// a role without aggregationRule), aggregation selectors and subjects of
/// `wanted` it lacks, unless its autoupdate annotation is "false".
pub fn reconcile_default(existing: &Value, wanted: &Value) -> Reconcile {
    if existing
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(AUTOUPDATE))
        .and_then(Value::as_str)
        == Some("false")
    {
        return Reconcile::Keep;
    }
    if wanted.get("roleRef").is_some() && existing.get("roleRef") != wanted.get("roleRef") {
        return Reconcile::Recreate;
    }
    let mut out = existing.clone();
    for field in ["labels", "annotations"] {
        if let Some(want) = wanted["metadata"][field].as_object() {
            let have = &mut out["metadata"][field];
            if !have.is_object() {
                *have = json!({});
            }
            if let Some(have) = have.as_object_mut() {
                for (k, v) in want {
                    have.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    let union = |have: Option<&Vec<Value>>, want: &[Value]| -> Value {
        let mut list = have.cloned().unwrap_or_default();
        for w in want {
            if !list.contains(w) {
                list.push(w.clone());
            }
        }
        Value::Array(list)
    };
    if let Some(want) = wanted["subjects"].as_array() {
        out["subjects"] = union(existing["subjects"].as_array(), want);
    }
    let selectors = "/aggregationRule/clusterRoleSelectors";
    if let Some(want) = wanted.pointer(selectors).and_then(Value::as_array) {
        let have = existing.pointer(selectors).and_then(Value::as_array);
        out["aggregationRule"]["clusterRoleSelectors"] = union(have, want);
    }
    if wanted.get("aggregationRule").is_none() {
        if let Some(want) = wanted["rules"].as_array() {
            let have = existing["rules"].as_array().cloned().unwrap_or_default();
            let missing = uncovered(&have, want);
            if !missing.is_empty() {
                out["rules"] = Value::Array(have.into_iter().chain(missing).collect());
            }
        }
    }
    if &out == existing {
        Reconcile::Keep
    } else {
        Reconcile::Update(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_reconciled_additively() {
        let policy = bootstrap_policy();
        let find = |name: &str| {
            policy
                .iter()
                .find(|(_, o)| o["metadata"]["name"] == name)
                .map(|(_, o)| o.clone())
                .unwrap()
        };
        // The default as it is: nothing to do.
        let discovery = find("system:discovery");
        assert_eq!(reconcile_default(&discovery, &discovery), Reconcile::Keep);
        // A user took a rule away and added one: the default comes back, theirs stays.
        let mut edited = discovery.clone();
        edited["rules"] = json!([{"nonResourceURLs": ["/custom"], "verbs": ["get"]}]);
        edited["metadata"]["labels"] = json!({"team": "a"});
        let Reconcile::Update(fixed) = reconcile_default(&edited, &discovery) else {
            panic!("expected an update")
        };
        assert_eq!(fixed["rules"][0]["nonResourceURLs"], json!(["/custom"]));
        assert!(uncovered(
            fixed["rules"].as_array().unwrap(),
            discovery["rules"].as_array().unwrap()
        )
        .is_empty());
        assert_eq!(fixed["metadata"]["labels"]["team"], "a");
        assert_eq!(
            fixed["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        // autoupdate "false": left alone.
        edited["metadata"]["annotations"] = json!({AUTOUPDATE: "false"});
        assert_eq!(reconcile_default(&edited, &discovery), Reconcile::Keep);
        // Aggregated roles keep their rules (the controller fills them); selectors are restored.
        let view = find("view");
        let mut v = view.clone();
        v["rules"] = json!([]);
        v["aggregationRule"]["clusterRoleSelectors"] = json!([]);
        let Reconcile::Update(fixed) = reconcile_default(&v, &view) else {
            panic!("expected an update")
        };
        assert_eq!(fixed["rules"], json!([]));
        assert_eq!(fixed["aggregationRule"], view["aggregationRule"]);
        // Bindings: subjects are added; another roleRef means recreate.
        let binding = find("cluster-admin");
        let binding = if binding["kind"] == "ClusterRoleBinding" {
            binding
        } else {
            policy
                .iter()
                .find(|(p, o)| {
                    *p == "clusterrolebindings" && o["metadata"]["name"] == "cluster-admin"
                })
                .map(|(_, o)| o.clone())
                .unwrap()
        };
        let mut b = binding.clone();
        b["subjects"] = json!([{"apiGroup": GROUP, "kind": "User", "name": "alice"}]);
        let Reconcile::Update(fixed) = reconcile_default(&b, &binding) else {
            panic!("expected an update")
        };
        assert_eq!(fixed["subjects"].as_array().unwrap().len(), 2);
        b["roleRef"]["name"] = json!("view");
        assert_eq!(reconcile_default(&b, &binding), Reconcile::Recreate);
    }

    fn sa(ns: &str, name: &str) -> UserInfo {
        crate::serviceaccount::user_of(ns, name)
    }

    #[test]
    fn request_attributes_follow_upstreams_request_info() {
        let a = |p: &str, m: &str, w: bool, fs: &str| {
            let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            Attributes::of_request(&segs, m, w, fs)
        };
        assert_eq!(
            a("/api/v1/namespaces/shop/pods", "GET", false, ""),
            Attributes::resource("list", "", "pods", "shop", "")
        );
        assert_eq!(
            a("/api/v1/namespaces/shop/pods", "GET", true, "").verb,
            "watch"
        );
        assert_eq!(
            a("/api/v1/watch/namespaces/shop/pods", "GET", false, "").verb,
            "watch"
        );
        let w = a(
            "/api/v1/namespaces/shop/pods",
            "GET",
            true,
            "metadata.name=web",
        );
        assert_eq!((w.verb.as_str(), w.name.as_str()), ("watch", "web"));
        assert_eq!(
            a(
                "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                "PUT",
                false,
                ""
            ),
            Attributes::resource("update", "apps", "deployments/scale", "shop", "web")
        );
        assert_eq!(
            a("/api/v1/namespaces/shop/pods", "DELETE", false, "").verb,
            "deletecollection"
        );
        assert_eq!(
            a("/api/v1/namespaces/shop/pods/web/exec", "GET", false, ""),
            Attributes::resource("create", "", "pods/exec", "shop", "web")
        );
        // A namespace is its own namespace, its status a subresource of it.
        assert_eq!(
            a("/api/v1/namespaces/shop", "GET", false, ""),
            Attributes::resource("get", "", "namespaces", "shop", "shop")
        );
        assert_eq!(
            a("/api/v1/namespaces/shop/finalize", "PUT", false, ""),
            Attributes::resource("update", "", "namespaces/finalize", "shop", "shop")
        );
        assert_eq!(
            a("/api/v1/nodes", "POST", false, ""),
            Attributes::resource("create", "", "nodes", "", "")
        );
        assert_eq!(
            a("/apis/apps/v1", "GET", false, ""),
            Attributes::non_resource("get", "/apis/apps/v1")
        );
        assert_eq!(
            a("/openapi/v2", "GET", false, ""),
            Attributes::non_resource("get", "/openapi/v2")
        );
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_names_and_urls() {
        let r = json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/log"], "resourceNames": []});
        assert!(rule_allows(
            &r,
            &Attributes::resource("get", "", "pods", "shop", "web")
        ));
        assert!(rule_allows(
            &r,
            &Attributes::resource("get", "", "pods/log", "shop", "web")
        ));
        assert!(rule_allows(
            &r,
            &Attributes::resource("get", "", "deployments/log", "", "")
        ));
        assert!(!rule_allows(
            &r,
            &Attributes::resource("get", "", "pods/exec", "shop", "web")
        ));
        assert!(!rule_allows(
            &r,
            &Attributes::resource("delete", "", "pods", "shop", "web")
        ));
        assert!(!rule_allows(
            &r,
            &Attributes::resource("get", "apps", "pods", "shop", "web")
        ));
        let named = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["secrets"], "resourceNames": ["tls"]});
        assert!(rule_allows(
            &named,
            &Attributes::resource("update", "", "secrets", "shop", "tls")
        ));
        assert!(!rule_allows(
            &named,
            &Attributes::resource("update", "", "secrets", "shop", "db")
        ));
        assert!(!rule_allows(
            &named,
            &Attributes::resource("list", "", "secrets", "shop", "")
        ));
        let u = urls(&["get"], &["/apis/*", "/version"]);
        assert!(rule_allows(
            &u,
            &Attributes::non_resource("get", "/apis/apps/v1")
        ));
        assert!(rule_allows(
            &u,
            &Attributes::non_resource("get", "/version")
        ));
        assert!(!rule_allows(&u, &Attributes::non_resource("get", "/api")));
        assert!(!rule_allows(
            &u,
            &Attributes::resource("get", "", "pods", "", "")
        ));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let me = sa("shop", "deployer");
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "deployer", "namespace": "shop"}),
            &me,
            ""
        ));
        // A RoleBinding's ServiceAccount without a namespace is in the binding's.
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "deployer"}),
            &me,
            "shop"
        ));
        assert!(!subject_matches(
            &json!({"kind": "ServiceAccount", "name": "deployer", "namespace": "other"}),
            &me,
            "shop"
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "system:serviceaccounts:shop"}),
            &me,
            ""
        ));
        assert!(!subject_matches(
            &json!({"kind": "User", "name": "deployer"}),
            &me,
            ""
        ));
        let alice = UserInfo {
            username: "alice".into(),
            groups: vec![],
        };
        assert!(subject_matches(
            &json!({"kind": "User", "name": "alice"}),
            &alice,
            ""
        ));
    }

    #[test]
    fn escalation_compares_rules_wildcards_only_covering_wildcards() {
        let owner = vec![
            rule(&["get", "list"], &["", "apps"], &["pods", "deployments"]),
            urls(&["get"], &["/apis/*"]),
        ];
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"])]).is_empty());
        assert!(uncovered(&owner, &[urls(&["get"], &["/apis/apps"])]).is_empty());
        let missing = uncovered(
            &owner,
            &[
                rule(&["get", "delete"], &[""], &["pods"]),
                rule(&["get"], &["*"], &["pods"]),
            ],
        );
        assert_eq!(
            missing,
            vec![
                json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}),
                json!({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}),
            ]
        );
        assert_eq!(
            go_rule(&missing[0]),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#
        );
        // A named grant is covered by an unnamed one, not the other way round.
        let named = json!({"apiGroups": [""], "resources": ["pods"], "resourceNames": ["web"], "verbs": ["get"]});
        assert!(uncovered(&owner, std::slice::from_ref(&named)).is_empty());
        assert_eq!(
            uncovered(&[named], &[rule(&["get"], &[""], &["pods"])]).len(),
            1
        );
        assert!(uncovered(&cluster_admin_rules(), &owner).is_empty());
    }

    #[test]
    fn forbidden_messages_read_as_upstreams() {
        let me = sa("shop", "deployer");
        let e = forbidden(
            &me,
            &Attributes::resource("list", "", "pods", "shop", ""),
            "",
        );
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "system:serviceaccount:shop:deployer" cannot list resource "pods" in API group "" in the namespace "shop""#
        );
        assert_eq!(e.code, 403);
        let e = forbidden(
            &me,
            &Attributes::resource("create", "", "pods/exec", "shop", "web"),
            "",
        );
        assert_eq!(
            e.message,
            r#"pods "web" is forbidden: User "system:serviceaccount:shop:deployer" cannot create resource "pods/exec" in API group "" in the namespace "shop""#
        );
        let e = forbidden(
            &me,
            &Attributes::resource("get", "apps", "deployments", "", ""),
            "",
        );
        assert!(
            e.message.starts_with("deployments.apps is forbidden")
                && e.message.ends_with("at the cluster scope")
        );
        let e = forbidden(&me, &Attributes::non_resource("get", "/metrics"), "");
        assert_eq!(
            e.message,
            r#"forbidden: User "system:serviceaccount:shop:deployer" cannot get path "/metrics""#
        );
    }
}

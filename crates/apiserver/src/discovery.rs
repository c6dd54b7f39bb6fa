//! API discovery: aggregated (apidiscovery.k8s.io/v2) and legacy documents.

use crate::resources::Resources;
use kobune_apimachinery::ResourceInfo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Groups in discovery order, each with its versions (preferred first).
pub fn groups(resources: &Resources) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = vec![];
    for r in resources.all() {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) => {
                if !vs.contains(&r.version) {
                    vs.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out
}

/// What a subresource answers with, and which verbs it takes.
fn subresource(info: &ResourceInfo, sub: &str) -> (String, String, String, Vec<&'static str>) {
    let same = (info.group.clone(), info.version.clone(), info.kind.clone());
    let (g, v, k) = match sub {
        "scale" => ("autoscaling".into(), "v1".into(), "Scale".into()),
        "eviction" => ("policy".into(), "v1".into(), "Eviction".into()),
        "binding" => ("".into(), "v1".into(), "Binding".into()),
        "token" => (
            "authentication.k8s.io".into(),
            "v1".into(),
            "TokenRequest".into(),
        ),
        "exec" => ("".into(), "v1".into(), "PodExecOptions".into()),
        "attach" => ("".into(), "v1".into(), "PodAttachOptions".into()),
        "portforward" => ("".into(), "v1".into(), "PodPortForwardOptions".into()),
        "proxy" if info.kind == "Pod" => ("".into(), "v1".into(), "PodProxyOptions".into()),
        "proxy" if info.kind == "Service" => ("".into(), "v1".into(), "ServiceProxyOptions".into()),
        "proxy" => ("".into(), "v1".into(), "NodeProxyOptions".into()),
        _ => same,
    };
    let verbs = match sub {
        "status" | "scale" | "ephemeralcontainers" => vec!["get", "patch", "update"],
        "eviction" | "binding" | "token" => vec!["create"],
        "exec" | "attach" | "portforward" => vec!["create", "get"],
        "log" => vec!["get"],
        "finalize" => vec!["update"],
        "proxy" => vec!["create", "delete", "get", "patch", "update"],
        _ => vec!["get"],
    };
    (g, v, k, verbs)
}

fn scope(info: &ResourceInfo) -> &'static str {
    if info.namespaced() {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_version(resources: &[Arc<ResourceInfo>], group: &str, version: &str) -> Value {
    let items: Vec<Value> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (g, v, k, verbs) = subresource(r, s);
                    json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
                })
                .collect();
            let mut o = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": scope(r),
                "singularResource": r.singular,
                "verbs": r.verbs(),
            });
            if !r.short_names.is_empty() {
                o["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                o["categories"] = json!(r.categories);
            }
            if !subs.is_empty() {
                o["subresources"] = Value::Array(subs);
            }
            o
        })
        .collect();
    json!({"version": version, "resources": items, "freshness": "Current"})
}

/// `APIGroupDiscoveryList` for `/api` (core only) or `/apis` (everything else).
pub fn aggregated(resources: &Resources, core: bool) -> Value {
    let all = resources.all();
    let mut items: Vec<Value> = groups(resources)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| aggregated_version(&all, &g, v))
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs})
        })
        .collect();
    if !core {
        items.extend(crate::metrics::aggregated_groups());
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0]})
}

pub fn api_group_list(resources: &Resources) -> Value {
    let mut groups: Vec<Value> = groups(resources)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_doc(&g, &vs))
        .collect();
    groups.extend(crate::metrics::api_groups());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(resources: &Resources, group: &str) -> Option<Value> {
    let (g, vs) = groups(resources).into_iter().find(|(g, _)| g == group)?;
    let mut doc = group_doc(&g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// Legacy `APIResourceList` for one group/version.
pub fn api_resource_list(resources: &Resources, group: &str, version: &str) -> Option<Value> {
    if !resources.has_group_version(group, version) {
        return None;
    }
    let mut items = vec![];
    for r in resources
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut o = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced(),
            "kind": r.kind, "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            o["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            o["categories"] = json!(r.categories);
        }
        items.push(o);
        for s in &r.subresources {
            let (g, v, k, verbs) = subresource(r, s);
            let mut o = json!({"name": format!("{}/{s}", r.plural), "singularName": "", "namespaced": r.namespaced(), "kind": k, "verbs": verbs});
            if g != r.group || v != r.version {
                o["group"] = json!(g);
                o["version"] = json!(v);
            }
            items.push(o);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items}),
    )
}

/// Resources by group version, for OpenAPI.
pub fn by_group_version(
    resources: &Resources,
) -> BTreeMap<(String, String), Vec<Arc<ResourceInfo>>> {
    let mut m: BTreeMap<(String, String), Vec<Arc<ResourceInfo>>> = BTreeMap::new();
    for r in resources.all() {
        m.entry((r.group.clone(), r.version.clone()))
            .or_default()
            .push(r);
    }
    m
}

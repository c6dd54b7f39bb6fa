//! OpenAPI v2 and v3 documents generated from the typed model (and from
//! CRD schemas), with the vendor extensions kubectl reads: group-version-
//! kind on definitions and operations, patch metadata, and the
//! `fieldValidation` parameter that makes kubectl validate on the server.
//! The v2 document is also served as gnostic protobuf ([`crate::openapi_pb`]),
//! which kubectl's client-side validation (used for `kind: List`) reads.

use crate::discovery::by_group_version;
use crate::resources::Resources;
use kobune_apimachinery::schema::definitions;
use kobune_apimachinery::ResourceInfo;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

pub const KUBE_VERSION: &str = "v1.33.0";

/// The definition name a resource's objects use.
fn definition_name(r: &ResourceInfo) -> String {
    match &r.definition {
        Some(d) => d.clone(),
        None => {
            let rev: Vec<&str> = r.group.split('.').rev().collect();
            format!("{}.{}.{}", rev.join("."), r.version, r.kind)
        }
    }
}

fn gvk(r: &ResourceInfo) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

/// Every definition reachable from `roots`.
fn reachable(defs: &Map<String, Value>, roots: &[String]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = roots.to_vec();
    while let Some(n) = stack.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(d) = defs.get(&n) {
            collect_refs(d, &mut stack);
        }
    }
    seen
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.rsplit('/').next().unwrap_or(r).to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn rewrite_refs(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                let name = r.rsplit('/').next().unwrap_or_default().to_string();
                *r = format!("{prefix}{name}");
            }
            m.values_mut().for_each(|x| rewrite_refs(x, prefix));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, prefix)),
        _ => {}
    }
}

/// Swagger 2.0 allows siblings next to `$ref` (v3 wraps it in a one-entry
/// `allOf`), and kubectl's v2 parser treats an `allOf`-only property as an
/// arbitrary value, so the v2 document uses the plain `$ref` as upstream.
fn unwrap_single_all_of(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let single = match m.get("allOf") {
                Some(Value::Array(a)) if a.len() == 1 && !m.contains_key("$ref") => a[0]
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.get("$ref"))
                    .cloned(),
                _ => None,
            };
            if let Some(r) = single {
                m.remove("allOf");
                m.insert("$ref".into(), r);
            }
            m.values_mut().for_each(unwrap_single_all_of);
        }
        Value::Array(a) => a.iter_mut().for_each(unwrap_single_all_of),
        _ => {}
    }
}

fn query(name: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "description": desc, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(r: &ResourceInfo, action: &str, op_id: &str, schema_ref: &str, v3: bool) -> Value {
    let mut params = vec![];
    if matches!(action, "put" | "patch" | "post") {
        params.push(query(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ));
        params.push(query("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."));
        params.push(query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict."));
    }
    if action == "patch" {
        params.push(query(
            "force",
            "Force is going to \"force\" Apply requests.",
        ));
    }
    if !v3 {
        for p in params.iter_mut() {
            let m = p.as_object_mut().expect("object");
            m.remove("schema");
            m.insert("type".into(), json!("string"));
        }
    }
    let resp_schema = json!({"$ref": schema_ref});
    let responses = if v3 {
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": resp_schema}}}})
    } else {
        json!({"200": {"description": "OK", "schema": resp_schema}})
    };
    let mut op = json!({
        "operationId": op_id,
        "parameters": params,
        "responses": responses,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    });
    if action == "patch" {
        let types = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ];
        if v3 {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        } else {
            op["consumes"] = json!(types);
        }
    }
    op
}

fn paths_for(r: &ResourceInfo, v3: bool, ref_prefix: &str) -> Vec<(String, Value)> {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let schema_ref = format!("{ref_prefix}{}", definition_name(r));
    let op_base = format!("{}{}", r.kind, r.version);
    let coll = if r.namespaced() {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let mut out = vec![];
    let mut c = Map::new();
    c.insert(
        "post".into(),
        operation(r, "post", &format!("create{op_base}"), &schema_ref, v3),
    );
    if r.stored {
        c.insert(
            "get".into(),
            operation(r, "list", &format!("list{op_base}"), &schema_ref, v3),
        );
        let mut item = Map::new();
        item.insert(
            "get".into(),
            operation(r, "get", &format!("read{op_base}"), &schema_ref, v3),
        );
        item.insert(
            "put".into(),
            operation(r, "put", &format!("replace{op_base}"), &schema_ref, v3),
        );
        item.insert(
            "patch".into(),
            operation(r, "patch", &format!("patch{op_base}"), &schema_ref, v3),
        );
        item.insert(
            "delete".into(),
            operation(r, "delete", &format!("delete{op_base}"), &schema_ref, v3),
        );
        out.push((format!("{coll}/{{name}}"), Value::Object(item)));
    }
    out.push((coll, Value::Object(c)));
    out
}

/// Builds a document for the given resources.
fn document(resources: &[Arc<ResourceInfo>], v3: bool) -> Value {
    let all_defs = definitions();
    let ref_prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let roots: Vec<String> = resources
        .iter()
        .filter_map(|r| r.definition.clone())
        .collect();
    let mut extra = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_string(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string(),
        "io.k8s.api.autoscaling.v1.Scale".to_string(),
    ];
    extra.extend(roots);
    let mut schemas = Map::new();
    for name in reachable(all_defs, &extra) {
        if let Some(d) = all_defs.get(&name) {
            let mut d = d.clone();
            rewrite_refs(&mut d, ref_prefix);
            schemas.insert(name, d);
        }
    }
    let mut gvks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in resources {
        let name = definition_name(r);
        gvks.entry(name.clone()).or_default().push(gvk(r));
        if r.definition.is_none() {
            let mut s = r.crd_schema.clone().unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
            if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                props.insert("metadata".into(), json!({"$ref": format!("{ref_prefix}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")}));
            }
            schemas.insert(name, s);
            for n in reachable(
                all_defs,
                &["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".to_string()],
            ) {
                if let Some(d) = all_defs.get(&n) {
                    let mut d = d.clone();
                    rewrite_refs(&mut d, ref_prefix);
                    schemas.entry(n).or_insert(d);
                }
            }
        }
    }
    for (name, list) in gvks {
        if let Some(Value::Object(m)) = schemas.get_mut(&name) {
            m.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
        }
    }
    let mut paths = Map::new();
    for r in resources {
        for (p, v) in paths_for(r, v3, ref_prefix) {
            paths.insert(p, v);
        }
    }
    let info = json!({"title": "Kubernetes", "version": KUBE_VERSION});
    if v3 {
        json!({"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": schemas}})
    } else {
        let mut schemas = Value::Object(schemas);
        unwrap_single_all_of(&mut schemas);
        json!({"swagger": "2.0", "info": info, "paths": paths, "definitions": schemas})
    }
}

/// A rendered document and the resource generation it was built for.
type CachedDoc = (u64, Arc<Vec<u8>>);

/// Caches generated documents until the set of resources changes.
#[derive(Default)]
pub struct OpenApi {
    cache: Mutex<BTreeMap<String, CachedDoc>>,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

impl OpenApi {
    fn cached(&self, key: &str, generation: u64, build: impl FnOnce() -> Value) -> Arc<Vec<u8>> {
        self.cached_bytes(key, generation, || {
            serde_json::to_vec(&build()).unwrap_or_default()
        })
    }

    fn cached_bytes(
        &self,
        key: &str,
        generation: u64,
        build: impl FnOnce() -> Vec<u8>,
    ) -> Arc<Vec<u8>> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, doc)) = c.get(key) {
            if *g == generation {
                return doc.clone();
            }
        }
        let doc = Arc::new(build());
        c.insert(key.to_string(), (generation, doc.clone()));
        doc
    }

    pub fn v2(&self, resources: &Resources) -> Arc<Vec<u8>> {
        self.cached("v2", resources.generation(), || {
            document(&resources.all(), false)
        })
    }

    /// The v2 document as gnostic `openapi.v2.Document` protobuf, the form
    /// client-go's discovery (and so kubectl's validation) asks for.
    pub fn v2_protobuf(&self, resources: &Resources) -> Arc<Vec<u8>> {
        // The key cannot collide with a v3 group-version path.
        self.cached_bytes("v2#protobuf", resources.generation(), || {
            crate::openapi_pb::encode(&document(&resources.all(), false))
        })
    }

    /// The `/openapi/v3` index: one entry per group version.
    pub fn v3_index(&self, resources: &Resources) -> Value {
        let mut paths = Map::new();
        for (g, v) in by_group_version(resources).keys() {
            let p = gv_path(g, v);
            let hash = format!(
                "{:016X}",
                resources.generation().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ fxhash(&p)
            );
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
        json!({"paths": paths})
    }

    /// The v3 document of one group version (`api/v1`, `apis/apps/v1`).
    pub fn v3(&self, resources: &Resources, path: &str) -> Option<Arc<Vec<u8>>> {
        let by = by_group_version(resources);
        let (_, list) = by.iter().find(|((g, v), _)| gv_path(g, v) == path)?;
        let list = list.clone();
        Some(self.cached(path, resources.generation(), || document(&list, true)))
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi_pb::{self, Document};
    use prost::Message;

    #[test]
    fn v2_protobuf_decodes_to_the_json_document() {
        let resources = Resources::new();
        let api = OpenApi::default();
        let bytes = api.v2_protobuf(&resources);
        assert!(Arc::ptr_eq(&bytes, &api.v2_protobuf(&resources)), "cached");
        let doc = Document::decode(bytes.as_slice()).expect("valid protobuf");
        assert_eq!(doc.swagger, "2.0");
        let json: Value = serde_json::from_slice(&api.v2(&resources)).unwrap();
        let defs = &doc.definitions.as_ref().unwrap().additional_properties;
        assert_eq!(defs.len(), json["definitions"].as_object().unwrap().len());
        let dep = defs
            .iter()
            .find(|d| d.name == "io.k8s.api.apps.v1.Deployment")
            .and_then(|d| d.value.clone())
            .expect("Deployment definition");
        let gvk = dep
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-group-version-kind")
            .expect("gvk extension");
        let gvk: Value = serde_yaml::from_str(&gvk.value.as_ref().unwrap().yaml).unwrap();
        assert_eq!(
            gvk,
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        let spec = dep
            .properties
            .as_ref()
            .unwrap()
            .additional_properties
            .iter()
            .find(|p| p.name == "spec")
            .and_then(|p| p.value.clone())
            .unwrap();
        assert_eq!(
            spec.r#ref,
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(spec.all_of.is_empty() && !spec.description.is_empty());
        let paths = &doc.paths.as_ref().unwrap().path;
        assert_eq!(paths.len(), json["paths"].as_object().unwrap().len());
        // Every reference resolves, as kubectl's parser requires.
        fn refs(s: &openapi_pb::Schema, out: &mut Vec<String>) {
            if !s.r#ref.is_empty() {
                out.push(s.r#ref.clone());
            }
            let props = s.properties.iter().flat_map(|p| &p.additional_properties);
            props
                .filter_map(|p| p.value.as_ref())
                .for_each(|x| refs(x, out));
            s.items
                .iter()
                .flat_map(|i| &i.schema)
                .for_each(|x| refs(x, out));
            s.all_of.iter().for_each(|x| refs(x, out));
            if let Some(openapi_pb::additional_properties_item::Oneof::Schema(x)) = s
                .additional_properties
                .as_ref()
                .and_then(|a| a.oneof.as_ref())
            {
                refs(x, out)
            }
        }
        let mut all = vec![];
        defs.iter()
            .filter_map(|d| d.value.as_ref())
            .for_each(|s| refs(s, &mut all));
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/definitions/").expect("v2 prefix");
            assert!(defs.iter().any(|d| d.name == name), "{r} unresolved");
        }
    }
}

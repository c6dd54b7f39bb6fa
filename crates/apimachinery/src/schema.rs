//! OpenAPI schemas of the typed model. Definitions come from k8s-openapi's
//! schemars impls; [`crate::patch_meta`] adds the patch strategy metadata
//! the typed model does not carry. The same definitions serve `/openapi/v2`,
//! `/openapi/v3`, strict field validation and strategic merge patch.

use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// All built-in definitions, keyed by name (`io.k8s.api.core.v1.Pod`).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(build_definitions)
}

fn build_definitions() -> Map<String, Value> {
    use k8s_openapi::api::{autoscaling::v1::Scale, policy::v1::Eviction};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Status, WatchEvent};
    let mut settings = schemars::generate::SchemaSettings::openapi3();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    for r in crate::resource::builtins() {
        if let Some(f) = r.schema_fn {
            f(&mut generator);
        }
    }
    generator.subschema_for::<Scale>();
    generator.subschema_for::<Eviction>();
    generator.subschema_for::<DeleteOptions>();
    generator.subschema_for::<Status>();
    let _ = std::marker::PhantomData::<WatchEvent<()>>;
    let mut defs = generator.take_definitions(true);
    // Upstream never requires `metadata` (Go's ObjectMeta is optional), where
    // k8s-openapi's review kinds (TokenReview, ...) have it non-optional.
    for d in defs.values_mut() {
        if let Some(req) = d.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|f| f != "metadata");
        }
    }
    for m in crate::patch_meta::ENTRIES {
        let Some(prop) = defs
            .get_mut(m.definition)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(m.field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(s) = m.strategy {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(s));
        }
        if let Some(k) = m.merge_key {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        if let Some(t) = m.list_type {
            prop.insert("x-kubernetes-list-type".into(), json!(t));
        }
        if !m.list_map_keys.is_empty() {
            prop.insert("x-kubernetes-list-map-keys".into(), json!(m.list_map_keys));
        }
    }
    defs
}

/// A position in a schema, with `$ref`s resolved against a definitions map.
#[derive(Clone, Copy)]
pub struct SchemaNode<'a> {
    defs: &'a Map<String, Value>,
    node: &'a Value,
}

impl<'a> SchemaNode<'a> {
    /// The schema of a named definition.
    pub fn definition(defs: &'a Map<String, Value>, name: &str) -> Option<Self> {
        defs.get(name).map(|node| SchemaNode { defs, node })
    }
    /// A schema with no external definitions (a CRD's openAPIV3Schema).
    pub fn inline(defs: &'a Map<String, Value>, node: &'a Value) -> Self {
        SchemaNode { defs, node }.resolve()
    }
    fn resolve(self) -> Self {
        let mut cur = self;
        for _ in 0..16 {
            let r = cur.node.get("$ref").and_then(Value::as_str).or_else(|| {
                cur.node
                    .get("allOf")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        if a.len() == 1 {
                            a[0].get("$ref").and_then(Value::as_str)
                        } else {
                            None
                        }
                    })
            });
            let Some(r) = r else { break };
            let name = r.rsplit('/').next().unwrap_or(r);
            match cur.defs.get(name) {
                Some(n) => {
                    cur = SchemaNode {
                        defs: cur.defs,
                        node: n,
                    }
                }
                None => break,
            }
        }
        cur
    }
    pub fn raw(&self) -> &'a Value {
        self.node
    }
    /// The declared properties of an object schema, if it declares any.
    pub fn properties(&self) -> Option<&'a Map<String, Value>> {
        self.node.get("properties").and_then(Value::as_object)
    }
    /// The schema of one property, with its own extensions kept in
    /// [`Field`] (extensions sit beside the `$ref`, not in the target).
    pub fn field(&self, name: &str) -> Option<Field<'a>> {
        let raw = self.properties()?.get(name)?;
        Some(Field {
            raw,
            schema: SchemaNode {
                defs: self.defs,
                node: raw,
            }
            .resolve(),
        })
    }
    pub fn items(&self) -> Option<SchemaNode<'a>> {
        self.node.get("items").map(|n| {
            SchemaNode {
                defs: self.defs,
                node: n,
            }
            .resolve()
        })
    }
    /// The value schema of a map (`additionalProperties`).
    pub fn additional_properties(&self) -> Option<SchemaNode<'a>> {
        match self.node.get("additionalProperties") {
            Some(n) if n.is_object() => Some(
                SchemaNode {
                    defs: self.defs,
                    node: n,
                }
                .resolve(),
            ),
            _ => None,
        }
    }
    pub fn type_name(&self) -> Option<&'a str> {
        self.node.get("type").and_then(Value::as_str)
    }
    pub fn preserves_unknown_fields(&self) -> bool {
        self.node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
    }
    fn ext(&self, key: &str) -> Option<&'a Value> {
        self.node.get(key)
    }
}

/// A property: its own patch metadata and its (resolved) schema.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    raw: &'a Value,
    pub schema: SchemaNode<'a>,
}

impl<'a> Field<'a> {
    fn ext(&self, key: &str) -> Option<&'a Value> {
        self.raw.get(key).or_else(|| self.schema.ext(key))
    }
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`, `replace`, comma-joined).
    pub fn patch_strategy(&self) -> Option<&'a str> {
        self.ext("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
    }
    pub fn patch_merge_key(&self) -> Option<&'a str> {
        self.ext("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
    }
    /// `x-kubernetes-list-type`: `atomic`, `set` or `map`.
    pub fn list_type(&self) -> Option<&'a str> {
        self.ext("x-kubernetes-list-type").and_then(Value::as_str)
    }
    pub fn list_map_keys(&self) -> Vec<&'a str> {
        self.ext("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
    pub fn map_type(&self) -> Option<&'a str> {
        self.ext("x-kubernetes-map-type").and_then(Value::as_str)
    }
}

/// Paths (`spec.replica`) of fields in `value` that `schema` does not
/// declare. Maps, free-form objects and preserved subtrees are not checked.
pub fn unknown_fields(schema: SchemaNode<'_>, value: &Value) -> Vec<String> {
    let mut out = vec![];
    walk_unknown(schema, value, "", &mut out);
    out
}

fn walk_unknown(schema: SchemaNode<'_>, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.preserves_unknown_fields() && schema.properties().is_none() {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.properties() {
                for (k, v) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if props.contains_key(k) {
                        if let Some(f) = schema.field(k) {
                            walk_unknown(f.schema, v, &p, out);
                        }
                    } else if !schema.preserves_unknown_fields()
                        && schema.additional_properties().is_none()
                    {
                        out.push(p);
                    }
                }
            } else if let Some(ap) = schema.additional_properties() {
                for (k, v) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk_unknown(ap, v, &p, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.items() {
                for (i, v) in items.iter().enumerate() {
                    walk_unknown(item, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields `schema` does not declare, as decoding into the typed
/// model does upstream (and pruning does for custom resources).
pub fn prune_unknown(schema: SchemaNode<'_>, value: &mut Value) {
    if schema.preserves_unknown_fields() && schema.properties().is_none() {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.properties() {
                if !schema.preserves_unknown_fields() && schema.additional_properties().is_none() {
                    map.retain(|k, _| props.contains_key(k));
                }
                for (k, v) in map.iter_mut() {
                    if let Some(f) = schema.field(k) {
                        prune_unknown(f.schema, v);
                    }
                }
            } else if let Some(ap) = schema.additional_properties() {
                for v in map.values_mut() {
                    prune_unknown(ap, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.items() {
                for v in items.iter_mut() {
                    prune_unknown(item, v);
                }
            }
        }
        _ => {}
    }
}

/// Removes empty maps (`additionalProperties` fields such as labels,
/// annotations, data), as a typed object's round trip through Go's
/// `omitempty` does: `{"annotations": {}}` is stored without the key.
pub fn drop_empty_maps(schema: SchemaNode<'_>, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if schema.properties().is_some() {
                map.retain(|k, v| {
                    let Some(f) = schema.field(k) else {
                        return true;
                    };
                    let is_map = f.schema.properties().is_none()
                        && f.schema.additional_properties().is_some();
                    !(is_map && v.as_object().is_some_and(|m| m.is_empty()))
                });
                for (k, v) in map.iter_mut() {
                    if let Some(f) = schema.field(k) {
                        drop_empty_maps(f.schema, v);
                    }
                }
            } else if let Some(ap) = schema.additional_properties() {
                for v in map.values_mut() {
                    drop_empty_maps(ap, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.items() {
                for v in items.iter_mut() {
                    drop_empty_maps(item, v);
                }
            }
        }
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "number",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Values whose JSON type does not fit the schema, described as upstream's
/// decoder does (`cannot unmarshal string into Go struct field .spec.replicas of type integer`).
pub fn type_errors(schema: SchemaNode<'_>, value: &Value) -> Vec<String> {
    let mut out = vec![];
    walk_types(schema, value, "", &mut out);
    out
}

fn walk_types(schema: SchemaNode<'_>, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    let int_or_string = schema.raw().get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let ok = if int_or_string {
        value.is_string() || value.is_i64() || value.is_u64() || value.is_f64()
    } else {
        match schema.type_name() {
            Some("integer") => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some("string") => value.is_string(),
            Some("array") => value.is_array(),
            Some("object") => value.is_object(),
            _ => true,
        }
    };
    if !ok {
        let want = schema.type_name().unwrap_or("int-or-string");
        out.push(format!(
            "json: cannot unmarshal {} into Go struct field .{path} of type {want}",
            json_type(value)
        ));
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(f) = schema.field(k) {
                    walk_types(f.schema, v, &p, out);
                } else if let Some(ap) = schema.additional_properties() {
                    walk_types(ap, v, &p, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.items() {
                for v in items {
                    walk_types(item, v, path, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_schema_resolves_and_has_patch_meta() {
        let defs = definitions();
        let pod = SchemaNode::definition(defs, "io.k8s.api.core.v1.Pod").unwrap();
        let spec = pod.field("spec").unwrap().schema;
        let containers = spec.field("containers").unwrap();
        assert_eq!(containers.patch_merge_key(), Some("name"));
        assert_eq!(containers.patch_strategy(), Some("merge"));
        let c = containers.schema.items().unwrap();
        assert!(c.field("image").is_some());
    }

    #[test]
    fn empty_maps_are_dropped_but_empty_structs_kept() {
        let defs = definitions();
        let pod = SchemaNode::definition(defs, "io.k8s.api.core.v1.Pod").unwrap();
        let mut v = serde_json::json!({
            "metadata": {"name": "x", "labels": {}, "annotations": {"a": "b"}},
            "spec": {"nodeSelector": {}, "volumes": [{"name": "v", "emptyDir": {}}],
                     "containers": [{"name": "c", "resources": {"limits": {}}}]}
        });
        drop_empty_maps(pod, &mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "metadata": {"name": "x", "annotations": {"a": "b"}},
                "spec": {"volumes": [{"name": "v", "emptyDir": {}}],
                         "containers": [{"name": "c", "resources": {}}]}
            })
        );
    }

    #[test]
    fn unknown_fields_found_with_paths() {
        let defs = definitions();
        let d = SchemaNode::definition(defs, "io.k8s.api.apps.v1.Deployment").unwrap();
        let v = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "labels": {"any": "thing"}, "bogus": 1},
            "spec": {"replica": 2, "template": {"spec": {"containers": [{"name": "a", "imagee": "b"}]}}}
        });
        let mut u = unknown_fields(d, &v);
        u.sort();
        assert_eq!(
            u,
            vec![
                "metadata.bogus",
                "spec.replica",
                "spec.template.spec.containers[0].imagee"
            ]
        );
        let mut pruned = v.clone();
        prune_unknown(d, &mut pruned);
        assert!(unknown_fields(d, &pruned).is_empty());
        assert_eq!(pruned["metadata"]["labels"]["any"], "thing");
    }

    #[test]
    fn type_errors_name_the_field() {
        let defs = definitions();
        let d = SchemaNode::definition(defs, "io.k8s.api.apps.v1.Deployment").unwrap();
        let v = serde_json::json!({"spec": {"replicas": "three", "strategy": {"rollingUpdate": {"maxSurge": "25%"}},
            "template": {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": 1}}, "env": [{"name": "X", "value": 1}]}]}}}});
        let errs = type_errors(d, &v);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains(".spec.replicas of type integer"));
        assert!(errs[1].contains("cannot unmarshal number into Go struct field .spec.template.spec.containers.env.value of type string"));
    }
}

//! The resources being served right now: the built-ins plus the versions of
//! every established CustomResourceDefinition.

use kobune_apimachinery::resource::{builtins, PrinterColumn, ResourceInfo, ScalePaths, Scope};
use serde_json::Value;
use std::sync::{Arc, RwLock};

pub struct Resources {
    builtin: Vec<Arc<ResourceInfo>>,
    custom: RwLock<Vec<Arc<ResourceInfo>>>,
    /// Bumped on every change, for discovery and OpenAPI caches.
    generation: std::sync::atomic::AtomicU64,
}

impl Default for Resources {
    fn default() -> Self {
        Self::new()
    }
}

impl Resources {
    pub fn new() -> Self {
        Resources {
            builtin: builtins().into_iter().map(Arc::new).collect(),
            custom: RwLock::new(vec![]),
            generation: Default::default(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every served resource, built-ins first.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        let mut v = self.builtin.clone();
        v.extend(
            self.custom
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        v
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        let hit =
            |r: &&Arc<ResourceInfo>| r.group == group && r.version == version && r.plural == plural;
        if let Some(r) = self.builtin.iter().find(hit) {
            return Some(r.clone());
        }
        self.custom
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(hit)
            .cloned()
    }

    pub fn find_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// The version of a resource its objects are stored in (the first one served).
    pub fn storage_version(&self, info: &ResourceInfo) -> Arc<ResourceInfo> {
        self.all()
            .into_iter()
            .find(|r| r.storage == info.storage && r.stored)
            .expect("a resource is its own storage version at worst")
    }

    /// Does this group/version exist at all?
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.all()
            .iter()
            .any(|r| r.group == group && r.version == version)
    }

    /// Replaces the custom resources with those of the given established CRDs.
    pub fn set_crds(&self, crds: &[Arc<Value>]) {
        let mut out = vec![];
        for crd in crds {
            out.extend(crd_resources(crd));
        }
        let mut cur = self.custom.write().unwrap_or_else(|p| p.into_inner());
        let same = cur.len() == out.len()
            && cur.iter().zip(&out).all(|(a, b)| {
                a.group == b.group
                    && a.version == b.version
                    && a.plural == b.plural
                    && a.crd_schema == b.crd_schema
                    && a.printer_columns == b.printer_columns
                    && a.scale == b.scale
                    && a.subresources == b.subresources
                    && a.short_names == b.short_names
                    && a.categories == b.categories
            });
        if !same {
            *cur = out.into_iter().map(Arc::new).collect();
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The resources a CRD serves, once it is not being deleted.
pub fn crd_resources(crd: &Value) -> Vec<ResourceInfo> {
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return vec![];
    }
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let scope = if spec["scope"].as_str() == Some("Cluster") {
        Scope::Cluster
    } else {
        Scope::Namespaced
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    // The storage version is served first so it is the one objects are kept in.
    let mut versions: Vec<Value> = versions
        .into_iter()
        .filter(|v| v["served"].as_bool() != Some(false))
        .collect();
    versions.sort_by_key(|v| v["storage"].as_bool() != Some(true));
    versions
        .into_iter()
        .map(|v| {
            let mut subresources = vec![];
            let subs = &v["subresources"];
            if subs.get("status").is_some() {
                subresources.push("status".to_string());
            }
            let scale = subs.get("scale").map(|s| ScalePaths {
                spec_replicas: s["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                status_replicas: s["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .to_string(),
                label_selector: s["labelSelectorPath"].as_str().map(str::to_string),
            });
            if scale.is_some() {
                subresources.push("scale".to_string());
            }
            let printer_columns = v["additionalPrinterColumns"]
                .as_array()
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: c["name"].as_str().unwrap_or_default().to_string(),
                            type_: c["type"].as_str().unwrap_or("string").to_string(),
                            format: c["format"].as_str().unwrap_or_default().to_string(),
                            description: c["description"].as_str().unwrap_or_default().to_string(),
                            priority: c["priority"].as_i64().unwrap_or(0),
                            json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let schema = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .map(with_object_fields);
            let preserve_unknown = schema
                .as_ref()
                .map(|s| s["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true))
                .unwrap_or(true);
            ResourceInfo {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or_default().to_string(),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                scope,
                short_names: strs(names.get("shortNames")),
                categories: strs(names.get("categories")),
                subresources,
                stored: true,
                storage: format!("{group}/{plural}"),
                definition: None,
                scale,
                crd_schema: schema,
                printer_columns,
                preserve_unknown,
                schema_fn: None,
            }
        })
        .collect()
}

/// Every custom resource may carry apiVersion, kind and standard metadata,
/// whether or not its schema lists them.
fn with_object_fields(mut schema: Value) -> Value {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props
            .entry("apiVersion")
            .or_insert(serde_json::json!({"type": "string"}));
        props
            .entry("kind")
            .or_insert(serde_json::json!({"type": "string"}));
        props.insert(
            "metadata".into(),
            serde_json::json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
        );
    }
    schema
}

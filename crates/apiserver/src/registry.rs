//! The generic registry: create, get, list, update, patch and delete with
//! Kubernetes semantics (optimistic concurrency, generateName, generation,
//! defaulting and validation, finalizers, graceful deletion, dry run,
//! managed fields) on top of the store, reading through the watch cache.
//! The HTTP layer and in-process controllers both use it.

use crate::cache::{rv_of, set_rv, Cache};
use crate::conversion::convert;
use crate::resources::Resources;
use crate::strategy;
use base64::Engine;
use kobune_apimachinery::patch;
use kobune_apimachinery::schema::{self, SchemaNode};
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::{defaults, validation, ApiError, Cause, ResourceInfo};
use kobune_store::{Store, StoreError};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// How unknown or duplicate fields in a request are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    /// Duplicate keys the decoder saw in the body.
    pub duplicates: Vec<String>,
    pub force: bool,
    /// The requesting user, for checks that depend on who writes (RBAC
    /// escalation); None for the server's own writes.
    pub user: Option<crate::auth::UserInfo>,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: Selector,
    pub field_selector: Selector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// "0": any cached state is fine; otherwise a consistent read.
    pub resource_version: Option<String>,
}

#[derive(Debug)]
pub struct WriteResult {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub struct Registry {
    pub store: Arc<dyn Store>,
    pub cache: Arc<Cache>,
    pub resources: Arc<Resources>,
    pub service_cidr: (Ipv4Addr, u8),
    /// Signs and checks service account tokens (none: pods get no token volume).
    pub service_accounts: Option<Arc<crate::serviceaccount::ServiceAccounts>>,
    /// What new pods tolerate of not-ready and unreachable nodes.
    pub default_tolerations: crate::admission::DefaultTolerations,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Names tried for one generateName create before giving up, as upstream.
const GENERATE_NAME_ATTEMPTS: u32 = 8;

fn store_err(info: &ResourceInfo, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists => ApiError::already_exists(&info.plural, &info.group, name),
        StoreError::NotFound => ApiError::not_found(&info.plural, &info.group, name),
        StoreError::Conflict(_) => ApiError::modified(&info.plural, &info.group, name),
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::Unavailable(m) => ApiError::internal(m),
    }
}

/// The OpenAPI schema of a resource's objects, if it has one.
pub fn schema_for(info: &ResourceInfo) -> Option<SchemaNode<'_>> {
    if let Some(def) = &info.definition {
        return SchemaNode::definition(schema::definitions(), def);
    }
    // CRD schemas refer to the built-in ObjectMeta for `metadata`.
    info.crd_schema
        .as_ref()
        .map(|s| SchemaNode::inline(schema::definitions(), s))
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn finalizers(obj: &Value) -> Vec<String> {
    kobune_apimachinery::str_list(obj.pointer("/metadata/finalizers"))
}

/// Is the object waiting only for its finalizers (or the namespace's spec finalizers)?
fn has_pending_finalizers(info: &ResourceInfo, obj: &Value) -> bool {
    if !finalizers(obj).is_empty() {
        return true;
    }
    info.group.is_empty()
        && info.plural == "namespaces"
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
}

/// Equal apart from fields every write changes (compared in place: objects
/// are large and this runs on every update).
fn same_content(a: &Value, b: &Value) -> bool {
    const VOLATILE: [&str; 2] = ["resourceVersion", "managedFields"];
    fn same_map(x: &Map<String, Value>, y: &Map<String, Value>, skip: &[&str]) -> bool {
        let count =
            |m: &Map<String, Value>| m.keys().filter(|k| !skip.contains(&k.as_str())).count();
        count(x) == count(y)
            && x.iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .all(|(k, v)| y.get(k) == Some(v))
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| match (k.as_str(), v, y.get(k)) {
                    ("metadata", Value::Object(m), Some(Value::Object(n))) => {
                        same_map(m, n, &VOLATILE)
                    }
                    (_, _, other) => other == Some(v),
                })
        }
        _ => a == b,
    }
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

#[cfg(test)]
thread_local! {
    /// Tests shrink the alphabet to make collisions likely.
    static SUFFIX_CHARS: std::cell::Cell<&'static [u8]> = const { std::cell::Cell::new(GENERATE_CHARS) };
}

pub fn random_suffix() -> String {
    use rand::Rng;
    #[cfg(test)]
    let chars = SUFFIX_CHARS.get();
    #[cfg(not(test))]
    let chars = GENERATE_CHARS;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| chars[rng.random_range(0..chars.len())] as char)
        .collect()
}

/// Field paths as upstream prints them in strict decoding errors.
fn field_problems(info: &ResourceInfo, obj: &Value, duplicates: &[String]) -> Vec<String> {
    let mut out = vec![];
    if !info.preserve_unknown {
        if let Some(s) = schema_for(info) {
            for f in schema::unknown_fields(s, obj) {
                out.push(format!("unknown field {f:?}"));
            }
        }
    }
    for d in duplicates {
        out.push(format!("json: duplicate field {d:?}"));
    }
    out
}

impl Registry {
    pub fn key(&self, info: &ResourceInfo, ns: Option<&str>, name: &str) -> String {
        info.key(ns, name)
    }

    /// The prefix listing a resource, in one namespace or all.
    pub fn prefix(&self, info: &ResourceInfo, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if info.namespaced() => format!("{}{ns}/", info.key_prefix()),
            _ => info.key_prefix(),
        }
    }

    fn out(&self, info: &ResourceInfo, obj: &Value) -> Value {
        convert(obj.clone(), info)
    }

    /// Unknown/duplicate fields per `fieldValidation`: Strict fails, Warn warns.
    fn check_fields(
        &self,
        info: &ResourceInfo,
        obj: &Value,
        opts: &WriteOptions,
    ) -> Result<Vec<String>, ApiError> {
        if opts.field_validation == FieldValidation::Ignore {
            return Ok(vec![]);
        }
        let problems = field_problems(info, obj, &opts.duplicates);
        if problems.is_empty() {
            return Ok(vec![]);
        }
        if opts.field_validation == FieldValidation::Strict {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                problems.join(", ")
            )));
        }
        Ok(problems)
    }

    fn prune(&self, info: &ResourceInfo, obj: &mut Value) {
        if info.preserve_unknown {
            return;
        }
        if let Some(s) = schema_for(info) {
            schema::prune_unknown(s, obj);
            if info.definition.is_some() {
                // Built-in kinds are typed upstream: empty maps are omitted.
                schema::drop_empty_maps(s, obj);
            }
        }
    }

    fn check_type(&self, info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
        let Some(s) = schema_for(info) else {
            return Ok(());
        };
        let errs = schema::type_errors(s, obj);
        if errs.is_empty() {
            return Ok(());
        }
        if info.definition.is_some() {
            return Err(ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {}",
                info.kind,
                info.version,
                info.kind,
                errs.join(", ")
            )));
        }
        let causes = errs
            .into_iter()
            .map(|e| Cause::new("FieldValueInvalid", "", e))
            .collect();
        Err(ApiError::invalid(
            &info.kind,
            &info.group,
            &meta(obj, "name").unwrap_or_default(),
            causes,
        ))
    }

    /// Checks apiVersion/kind of a request body against the endpoint; absent
    /// ones default to the endpoint's, as upstream decoding does.
    fn check_gvk(&self, info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        };
        for (field, default) in [
            ("kind", info.kind.clone()),
            ("apiVersion", info.api_version()),
        ] {
            if m.get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                m.insert(field.into(), Value::String(default));
            }
        }
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let served =
            self.resources.all().into_iter().any(|r| {
                r.storage == info.storage && r.api_version() == api_version && r.kind == kind
            });
        if !served {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                info.api_version()
            ))
            .with_kind_check(kind, &info.kind));
        }
        Ok(())
    }

    fn namespace_check(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        if !info.namespaced() {
            return Ok(());
        }
        let ns = ns.unwrap_or_default();
        let nsinfo = self
            .resources
            .find("", "v1", "namespaces")
            .expect("namespaces are built in");
        match self.cache.get(&nsinfo.key(None, ns)) {
            None => Err(ApiError::not_found("namespaces", "", ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::forbidden(
                &info.plural,
                &info.group,
                name,
                &format!("unable to create new content in namespace {ns} because it is being terminated"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Upstream's DefaultStorageClass and DefaultIngressClass admission: a
    /// claim without `storageClassName` (an Ingress without
    /// `ingressClassName`) gets the newest class marked default.
    fn default_class(&self, obj: &mut Value, field: &str, group: &str, plural: &str) {
        if obj
            .get("spec")
            .and_then(|s| s.get(field))
            .is_some_and(|v| !v.is_null())
        {
            return;
        }
        let Some(info) = self.resources.find(group, "v1", plural) else {
            return;
        };
        let marker = format!(
            "/metadata/annotations/{}.kubernetes.io~1is-default-class",
            info.singular
        );
        let default = self
            .cache
            .list(&info.key_prefix(), None)
            .0
            .into_iter()
            .filter(|(_, c)| c.pointer(&marker).and_then(Value::as_str) == Some("true"))
            .max_by(|(_, a), (_, b)| {
                let t = |c: &Value| {
                    c.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                t(a).cmp(&t(b))
            });
        if let (Some((_, class)), Some(spec)) =
            (default, obj.get_mut("spec").filter(|s| s.is_object()))
        {
            spec[field] = class["metadata"]["name"].clone();
        }
    }

    pub async fn get(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.cache.sync().await?;
        self.get_cached(info, ns, name)
    }

    /// Reads without waiting for the cache to catch up (controllers).
    pub fn get_cached(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        match self.cache.get(&info.key(ns, name)) {
            Some(o) => Ok(self.out(info, &o)),
            None => Err(ApiError::not_found(&info.plural, &info.group, name)),
        }
    }

    pub async fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let mut start_after = None;
        let mut token_rv = None;
        if let Some(tok) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let bad = || ApiError::bad_request("continue key is not valid: illegal base64 data");
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok.trim_end_matches('='))
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(tok))
                .map_err(|_| bad())?;
            let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
            start_after = v["start"].as_str().map(str::to_string);
            token_rv = v["rv"].as_i64();
        }
        if opts.resource_version.as_deref() != Some("0") {
            match opts
                .resource_version
                .as_deref()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(rv) if rv > 0 => self.cache.wait_for(rv).await?,
                _ => {
                    self.cache.sync().await?;
                }
            }
        }
        let prefix = self.prefix(info, ns);
        let (entries, rev) = self.cache.list(&prefix, start_after.as_deref());
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = vec![];
        let mut last_key = None;
        let mut more = false;
        let mut remaining = 0i64;
        for (key, obj) in entries {
            if !self.matches(info, &obj, &opts.label_selector, &opts.field_selector) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining += 1;
                continue;
            }
            last_key = Some(key);
            items.push(self.out(info, &obj));
        }
        let rv = token_rv.unwrap_or(rev);
        let continue_token = (more && last_key.is_some()).then(|| {
            let tok = json!({"start": last_key, "rv": rv}).to_string();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok)
        });
        Ok(ListResult {
            items,
            resource_version: rv,
            continue_token,
            remaining: more.then_some(remaining),
        })
    }

    /// Does an object match label and field selectors?
    pub fn matches(
        &self,
        info: &ResourceInfo,
        obj: &Value,
        labels: &Selector,
        fields: &Selector,
    ) -> bool {
        let l = obj.pointer("/metadata/labels").and_then(Value::as_object);
        if !labels.matches_labels(l) {
            return false;
        }
        if fields.is_empty() {
            return true;
        }
        let obj = self.out(info, obj);
        fields.matches_with(&|path| field_value(&obj, path))
    }

    /// Validates a field selector's keys for a resource, as upstream does.
    pub fn check_field_selector(
        &self,
        info: &ResourceInfo,
        sel: &Selector,
    ) -> Result<(), ApiError> {
        use kobune_apimachinery::selectors::Requirement::*;
        for r in &sel.0 {
            let key = match r {
                Equals(k, _)
                | NotEquals(k, _)
                | In(k, _)
                | NotIn(k, _)
                | Exists(k)
                | DoesNotExist(k) => k,
            };
            if !supported_field(info, key) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
        }
        Ok(())
    }

    pub async fn create(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<WriteResult, ApiError> {
        self.check_gvk(info, &mut obj)?;
        let warnings = self.check_fields(info, &obj, opts)?;
        self.check_type(info, &obj)?;
        let storage = self.resources.storage_version(info);
        let now = now_rfc3339();
        // generateName's prefix when the name is made here (and remade on a collision).
        let mut generated_from: Option<String> = None;
        {
            let m = meta_mut(&mut obj);
            if info.namespaced() {
                let req_ns = ns.unwrap_or("default");
                match m.get("namespace").and_then(Value::as_str) {
                    Some(n) if !n.is_empty() && n != req_ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ))
                    }
                    _ => {
                        m.insert("namespace".into(), json!(req_ns));
                    }
                }
            } else {
                m.remove("namespace");
            }
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                if let Some(g) = m
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|g| !g.is_empty())
                {
                    generated_from = Some(g.to_string());
                    let generated = format!("{g}{}", random_suffix());
                    m.insert("name".into(), json!(generated));
                }
            }
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                m.remove(f);
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
            if strategy::tracks_generation(info) {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        let mut name = meta(&obj, "name").unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::invalid(
                &info.kind,
                &info.group,
                "",
                vec![Cause::new(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
        // An existing name is reported before anything is allocated for it
        // (a Service's IPs and ports). Other kinds rely on the store's
        // create, which fails on an existing key, so they skip the sync.
        let allocates = storage.group.is_empty() && storage.plural == "services";
        if allocates || opts.dry_run {
            self.cache.sync().await?;
        }
        // A generated name that is taken is generated again, as upstream
        // does (KEP-4420), so a 10,000-pod ReplicaSet never sees a collision.
        let mut attempts = 0;
        while self.cache.get(&storage.key(ns, &name)).is_some() {
            match &generated_from {
                Some(g) if attempts < GENERATE_NAME_ATTEMPTS => {
                    attempts += 1;
                    name = format!("{g}{}", random_suffix());
                    obj["metadata"]["name"] = json!(name);
                }
                _ => return Err(ApiError::already_exists(&info.plural, &info.group, &name)),
            }
        }
        self.prune(info, &mut obj);
        let mut obj = convert(obj, &storage);
        defaults::apply_defaults(&storage, &mut obj);
        strategy::prepare_for_create(&storage, &mut obj, &now);
        match (storage.group.as_str(), storage.plural.as_str()) {
            ("", "persistentvolumeclaims") => self.default_class(
                &mut obj,
                "storageClassName",
                "storage.k8s.io",
                "storageclasses",
            ),
            ("", "pods") => {
                crate::serviceaccount::admit_pod(self, &mut obj, ns.unwrap_or_default());
                crate::admission::default_tolerations(&mut obj, self.default_tolerations);
            }
            ("networking.k8s.io", "ingresses") => self.default_class(
                &mut obj,
                "ingressClassName",
                "networking.k8s.io",
                "ingressclasses",
            ),
            _ => {}
        }
        let mut causes = validation::validate(&storage, &obj, None);
        if storage.group.is_empty()
            && storage.plural == "pods"
            && obj
                .pointer("/spec/ephemeralContainers")
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty())
        {
            causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                "cannot be set on create",
            ));
        }
        if storage.group.is_empty() && storage.plural == "services" {
            if let Err(c) = self.allocate_service(&mut obj, None) {
                causes.extend(c);
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&info.kind, &info.group, &name, causes));
        }
        self.check_escalation(&storage, ns, &obj, opts)?;
        if !allocates && self.namespace_check(info, ns, &name).is_err() {
            // The namespace may have been written a moment ago.
            self.cache.sync().await?;
        }
        self.namespace_check(info, ns, &name)?;
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".into());
        patch::track_update(
            None,
            &mut obj,
            &manager,
            "Update",
            None,
            &now,
            schema_for(&storage),
        );
        let key = storage.key(ns, &name);
        if opts.dry_run {
            if self.cache.get(&key).is_some() {
                return Err(ApiError::already_exists(&info.plural, &info.group, &name));
            }
            return Ok(WriteResult {
                object: convert(obj, info),
                warnings,
                created: true,
            });
        }
        let mut key = key;
        let rev = loop {
            let bytes = serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
            match self.store.create(&key, bytes).await {
                Ok(rev) => break rev,
                // Taken by a write the cache has not seen yet.
                Err(StoreError::AlreadyExists) if attempts < GENERATE_NAME_ATTEMPTS => {
                    let Some(g) = &generated_from else {
                        return Err(ApiError::already_exists(&info.plural, &info.group, &name));
                    };
                    attempts += 1;
                    name = format!("{g}{}", random_suffix());
                    obj["metadata"]["name"] = json!(name);
                    key = storage.key(ns, &name);
                }
                Err(e) => return Err(store_err(info, &name, e)),
            }
        };
        set_rv(&mut obj, rev);
        Ok(WriteResult {
            object: convert(obj, info),
            warnings,
            created: true,
        })
    }

    /// Replaces an object (PUT), or one of its subresources.
    pub async fn update(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        opts: &WriteOptions,
        subresource: Option<&str>,
    ) -> Result<WriteResult, ApiError> {
        self.check_gvk(info, &mut obj)?;
        let warnings = self.check_fields(info, &obj, opts)?;
        self.check_type(info, &obj)?;
        self.cache.sync().await?;
        let storage = self.resources.storage_version(info);
        let key = storage.key(ns, name);
        let Some(current) = self.cache.get(&key) else {
            return Err(ApiError::not_found(&info.plural, &info.group, name));
        };
        if let Some(body_name) = meta(&obj, "name") {
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        let expected = match meta(&obj, "resourceVersion").filter(|s| !s.is_empty()) {
            Some(rv) => {
                let rv: i64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid resourceVersion {rv:?}: must be an integer"
                    ))
                })?;
                if rv != rv_of(&current) {
                    return Err(ApiError::modified(&info.plural, &info.group, name));
                }
                rv
            }
            None => rv_of(&current),
        };
        let mut obj = obj;
        self.prune(info, &mut obj);
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let mut obj = convert(obj, &storage);
        let res = self
            .write_update(
                &storage,
                info,
                &current,
                obj.take(),
                expected,
                opts,
                subresource,
                &manager,
                None,
            )
            .await?;
        Ok(WriteResult {
            object: res,
            warnings,
            created: false,
        })
    }

    /// The shared tail of update and patch: merge rules, validation, store write.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        storage: &ResourceInfo,
        info: &ResourceInfo,
        current: &Value,
        mut obj: Value,
        expected: i64,
        opts: &WriteOptions,
        subresource: Option<&str>,
        manager: &str,
        applied: Option<Value>,
    ) -> Result<Value, ApiError> {
        let name = meta(current, "name").unwrap_or_default();
        let now = now_rfc3339();
        {
            let cm = current["metadata"].as_object().cloned().unwrap_or_default();
            let m = meta_mut(&mut obj);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "generation",
            ] {
                match cm.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.remove("selfLink");
            if applied.is_none() {
                if let Some(mf) = cm.get("managedFields") {
                    m.insert("managedFields".into(), mf.clone());
                }
            }
        }
        defaults::apply_defaults(storage, &mut obj);
        strategy::prepare_for_update(storage, current, &mut obj, subresource);
        if strategy::tracks_generation(storage)
            && strategy::generation_relevant(current) != strategy::generation_relevant(&obj)
        {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut obj).insert("generation".into(), json!(g));
        }
        // Deleting objects may only lose finalizers.
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            let before = finalizers(current);
            if finalizers(&obj).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::forbidden(
                    &info.plural,
                    &info.group,
                    &name,
                    "no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        let mut causes = validation::validate(storage, &obj, Some(current));
        if subresource == Some("ephemeralcontainers") {
            causes.extend(strategy::ephemeral_container_causes(current, &obj));
        }
        if subresource.is_none() && storage.group.is_empty() && storage.plural == "pods" {
            causes.extend(strategy::pod_update_causes(current, &obj));
        }
        if storage.group.is_empty() && storage.plural == "services" {
            if let Err(c) = self.allocate_service(&mut obj, Some(current)) {
                causes.extend(c);
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&info.kind, &info.group, &name, causes));
        }
        // Metadata-only writes (labels, finalizers, owners) grant nothing.
        let granting = ["rules", "aggregationRule", "subjects", "roleRef"]
            .iter()
            .any(|f| obj.get(*f) != current.get(*f));
        if granting {
            self.check_escalation(storage, meta(current, "namespace").as_deref(), &obj, opts)?;
        }
        if applied.is_none() {
            patch::track_update(
                Some(current),
                &mut obj,
                manager,
                "Update",
                subresource,
                &now,
                schema_for(storage),
            );
        }
        set_rv(&mut obj, expected);
        if same_content(current, &obj) {
            return Ok(self.out(info, current));
        }
        let key = self.key(storage, meta(current, "namespace").as_deref(), &name);
        if opts.dry_run {
            return Ok(convert(obj, info));
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some()
            && !has_pending_finalizers(storage, &obj)
        {
            let rev = self
                .store
                .delete(&key, Some(expected))
                .await
                .map_err(|e| store_err(info, &name, e))?;
            set_rv(&mut obj, rev);
            return Ok(convert(obj, info));
        }
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.shift_remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
        let rev = self
            .store
            .update(&key, bytes, expected)
            .await
            .map_err(|e| store_err(info, &name, e))?;
        set_rv(&mut obj, rev);
        Ok(convert(obj, info))
    }

    /// Applies a patch, retrying on write conflicts as upstream does.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &Value,
        opts: &WriteOptions,
        subresource: Option<&str>,
    ) -> Result<WriteResult, ApiError> {
        self.cache.sync().await?;
        let storage = self.resources.storage_version(info);
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".into());
        for _ in 0..8 {
            let key = storage.key(ns, name);
            let current = match self.cache.get(&key) {
                Some(c) => c,
                None => {
                    if matches!(kind, PatchKind::Apply) && subresource.is_none() {
                        return self.apply_create(info, ns, name, body, opts).await;
                    }
                    return Err(ApiError::not_found(&info.plural, &info.group, name));
                }
            };
            let live = self.out(info, &current);
            let mut applied = None;
            let patched = match kind {
                PatchKind::Json => patch::json_patch(&live, body)
                    .map_err(|e| ApiError::new(422, "Invalid", e.0))?,
                PatchKind::Merge => patch::json_merge_patch(&live, body),
                PatchKind::Strategic => {
                    if info.definition.is_none() {
                        return Err(ApiError::unsupported_media_type(
                            "application/strategic-merge-patch+json",
                        ));
                    }
                    patch::strategic_merge_patch(&live, body, schema_for(info))
                        .map_err(|e| ApiError::bad_request(e.0))?
                }
                PatchKind::Apply => {
                    let out = patch::server_side_apply(
                        Some(&live),
                        body,
                        &manager,
                        opts.force,
                        schema_for(info),
                        &now_rfc3339(),
                    )
                    .map_err(|c| apply_conflict_error(info, name, c))?;
                    applied = Some(body.clone());
                    out.object
                }
            };
            let warnings = self.check_fields(info, &patched, opts)?;
            self.check_type(info, &patched)?;
            if meta(&patched, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta(&patched, "name").unwrap_or_default()
                )));
            }
            // A resourceVersion in the patch is a precondition.
            let expected = match body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                Some(rv) if rv != rv_of(&current).to_string() => {
                    return Err(ApiError::modified(&info.plural, &info.group, name))
                }
                _ => rv_of(&current),
            };
            let mut patched = patched;
            self.prune(info, &mut patched);
            let patched = convert(patched, &storage);
            match self
                .write_update(
                    &storage,
                    info,
                    &current,
                    patched,
                    expected,
                    opts,
                    subresource,
                    &manager,
                    applied,
                )
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" => {
                    self.cache.wait_for(expected + 1).await.ok();
                    continue;
                }
                Err(e) => return Err(e),
                Ok(object) => {
                    return Ok(WriteResult {
                        object,
                        warnings,
                        created: false,
                    })
                }
            }
        }
        Err(ApiError::modified(&info.plural, &info.group, name))
    }

    async fn apply_create(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        body: &Value,
        opts: &WriteOptions,
    ) -> Result<WriteResult, ApiError> {
        let manager = opts.field_manager.clone().unwrap_or_default();
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requests require a fieldManager query parameter",
            ));
        }
        let out = patch::server_side_apply(
            None,
            body,
            &manager,
            opts.force,
            schema_for(info),
            &now_rfc3339(),
        )
        .map_err(|c| apply_conflict_error(info, name, c))?;
        let mut obj = out.object;
        if meta(&obj, "name").is_none() {
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        let managed = obj.pointer("/metadata/managedFields").cloned();
        let mut res = self
            .create(
                info,
                ns,
                obj,
                &WriteOptions {
                    field_manager: Some(manager.clone()),
                    ..opts.clone()
                },
            )
            .await?;
        // Keep the Apply entry instead of the Update one create records.
        if let Some(mf) = managed {
            if !opts.dry_run {
                let storage = self.resources.storage_version(info);
                let key = storage.key(ns, name);
                let mut stored = convert(res.object.clone(), &storage);
                meta_mut(&mut stored).insert("managedFields".into(), mf);
                let rev = rv_of(&stored);
                let bytes = serde_json::to_vec(&strip_rv(&stored))
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let new_rev = self
                    .store
                    .update(&key, bytes, rev)
                    .await
                    .map_err(|e| store_err(info, name, e))?;
                set_rv(&mut stored, new_rev);
                res.object = self.out(info, &stored);
            }
        }
        Ok(res)
    }

    /// Deletes an object, honouring finalizers, propagation and grace periods.
    /// Returns the object as of the delete (or as marked for deletion).
    pub async fn delete(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.cache.sync().await?;
        let storage = self.resources.storage_version(info);
        for _ in 0..8 {
            let key = storage.key(ns, name);
            let Some(current) = self.cache.get(&key) else {
                return Err(ApiError::not_found(&info.plural, &info.group, name));
            };
            if let Some(uid) = &opts.precondition_uid {
                let actual = meta(&current, "uid").unwrap_or_default();
                if *uid != actual {
                    return Err(ApiError::conflict(&info.plural, &info.group, name, &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    )));
                }
            }
            if let Some(rv) = &opts.precondition_rv {
                let actual = rv_of(&current).to_string();
                if *rv != actual {
                    return Err(ApiError::conflict(&info.plural, &info.group, name, &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    )));
                }
            }
            let mut obj = (*current).clone();
            let mut fins = finalizers(&obj);
            match opts.propagation_policy.as_deref() {
                Some("Foreground") if !fins.iter().any(|f| f == "foregroundDeletion") => {
                    fins.push("foregroundDeletion".into())
                }
                Some("Orphan") if !fins.iter().any(|f| f == "orphan") => fins.push("orphan".into()),
                _ => {}
            }
            let grace = self.grace_period(&storage, &obj, opts);
            let already = obj.pointer("/metadata/deletionTimestamp").is_some();
            let pending = !fins.is_empty() || has_pending_finalizers(&storage, &obj) || grace > 0;
            if !pending {
                if opts.dry_run {
                    return Ok(self.out(info, &obj));
                }
                match self.store.delete(&key, Some(rv_of(&current))).await {
                    Ok(rev) => {
                        set_rv(&mut obj, rev);
                        return Ok(self.out(info, &obj));
                    }
                    Err(StoreError::Conflict(_)) => {
                        self.cache.wait_for(rv_of(&current) + 1).await.ok();
                        continue;
                    }
                    Err(e) => return Err(store_err(info, name, e)),
                }
            }
            // Mark for deletion; finalizers or the node agent finish it.
            {
                let m = meta_mut(&mut obj);
                if !fins.is_empty() {
                    m.insert("finalizers".into(), json!(fins));
                }
                let shorten = m
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .is_none_or(|g| grace < g);
                if !already || shorten {
                    let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                    );
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
            }
            if storage.group.is_empty() && storage.plural == "namespaces" {
                obj["status"]["phase"] = json!("Terminating");
            }
            if same_content(&current, &obj) || opts.dry_run {
                return Ok(self.out(info, &obj));
            }
            let bytes = serde_json::to_vec(&strip_rv(&obj))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match self.store.update(&key, bytes, rv_of(&current)).await {
                Ok(rev) => {
                    set_rv(&mut obj, rev);
                    return Ok(self.out(info, &obj));
                }
                Err(StoreError::Conflict(_)) => {
                    self.cache.wait_for(rv_of(&current) + 1).await.ok();
                    continue;
                }
                Err(e) => return Err(store_err(info, name, e)),
            }
        }
        Err(ApiError::modified(&info.plural, &info.group, name))
    }

    /// Pods bound to a node wait for the node agent; everything else goes now.
    fn grace_period(&self, storage: &ResourceInfo, obj: &Value, opts: &DeleteOptions) -> i64 {
        if !(storage.group.is_empty() && storage.plural == "pods") {
            return 0;
        }
        if obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            return 0;
        }
        let phase = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return 0;
        }
        opts.grace_period_seconds
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0)
    }

    /// Deletes every matching object; returns what was deleted or marked.
    pub async fn delete_collection(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let items = self
            .list(
                info,
                ns,
                &ListOptions {
                    limit: None,
                    continue_token: None,
                    ..list.clone()
                },
            )
            .await?
            .items;
        let mut out = vec![];
        for item in items {
            let name = meta(&item, "name").unwrap_or_default();
            let item_ns = meta(&item, "namespace");
            match self.delete(info, item_ns.as_deref(), &name, opts).await {
                Ok(v) => out.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Assigns cluster IPs and node ports, keeping what the client chose.
    fn allocate_service(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), Vec<Cause>> {
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty == "ExternalName" {
            return Ok(());
        }
        let own_uid = meta(obj, "uid");
        let (used_ips, used_ports) = self.used_service_addresses(own_uid.as_deref());
        let requested = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ip = if !requested.is_empty() {
            if requested != "None" {
                let ok = requested
                    .parse::<Ipv4Addr>()
                    .is_ok_and(|a| in_cidr(a, self.service_cidr));
                if !ok {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIPs",
                        &json!([requested]),
                        &format!("failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}/{}", self.service_cidr.0, self.service_cidr.1),
                    )]);
                }
                let was_ours = old
                    .and_then(|o| o.pointer("/spec/clusterIP"))
                    .and_then(Value::as_str)
                    == Some(requested.as_str());
                if !was_ours && used_ips.contains(&requested) {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIPs",
                        &json!([requested]),
                        &format!(
                            "failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    )]);
                }
            }
            requested
        } else {
            match self.free_ip(&used_ips) {
                Some(ip) => ip,
                None => {
                    return Err(vec![Cause::new(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        "range is full",
                    )])
                }
            }
        };
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
        if ty == "NodePort" || ty == "LoadBalancer" {
            let mut taken = used_ports;
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut() {
                    if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                        taken.insert(n);
                    }
                }
                for p in ports.iter_mut() {
                    if p.get("nodePort").and_then(Value::as_i64).is_none() {
                        use rand::Rng;
                        let mut rng = rand::rng();
                        for _ in 0..10_000 {
                            let n = rng.random_range(30000..=32767);
                            if taken.insert(n) {
                                p["nodePort"] = json!(n);
                                break;
                            }
                        }
                    }
                }
            }
        } else if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut() {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
        }
        Ok(())
    }

    fn used_service_addresses(
        &self,
        except_uid: Option<&str>,
    ) -> (
        std::collections::HashSet<String>,
        std::collections::HashSet<i64>,
    ) {
        let (svcs, _) = self.cache.list("/registry/core/services/", None);
        let mut ips = std::collections::HashSet::new();
        let mut ports = std::collections::HashSet::new();
        for (_, s) in svcs {
            if except_uid.is_some() && meta(&s, "uid").as_deref() == except_uid {
                continue;
            }
            if let Some(ip) = s.pointer("/spec/clusterIP").and_then(Value::as_str) {
                ips.insert(ip.to_string());
            }
            for p in s
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                    ports.insert(n);
                }
            }
        }
        (ips, ports)
    }

    fn free_ip(&self, used: &std::collections::HashSet<String>) -> Option<String> {
        use rand::Rng;
        let (base, bits) = self.service_cidr;
        let size = 1u64 << (32 - bits as u32);
        let base = u32::from(base) as u64;
        let mut rng = rand::rng();
        // Random probes first, then a scan; .0, .1 (the kubernetes Service's) and broadcast are skipped.
        for i in 0..(size.min(4096) + size) {
            let off = if i < size.min(4096) {
                rng.random_range(2..size.max(3) - 1)
            } else {
                i - size.min(4096)
            };
            if off < 2 || off >= size - 1 {
                continue;
            }
            let ip = Ipv4Addr::from((base + off) as u32).to_string();
            if !used.contains(&ip) {
                return Some(ip);
            }
        }
        None
    }

    /// The first address of the service range: the `kubernetes` Service's.
    /// RBAC's escalation check for writes to roles and bindings by a user.
    fn check_escalation(
        &self,
        storage: &ResourceInfo,
        ns: Option<&str>,
        obj: &Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        match &opts.user {
            Some(user) if storage.group == crate::rbac::GROUP => {
                crate::rbac::check_escalation(self, user, &storage.plural, ns, obj)
            }
            _ => Ok(()),
        }
    }

    pub fn kubernetes_service_ip(&self) -> String {
        Ipv4Addr::from(u32::from(self.service_cidr.0) + 1).to_string()
    }
}

fn in_cidr(a: Ipv4Addr, (base, bits): (Ipv4Addr, u8)) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits as u32)
    };
    u32::from(a) & mask == u32::from(base) & mask
}

fn strip_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn apply_conflict_error(
    info: &ResourceInfo,
    name: &str,
    conflicts: Vec<patch::ApplyConflict>,
) -> ApiError {
    let api_version = info.api_version();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with {:?} using {api_version}: {}",
                c.manager, c.field
            )
        })
        .collect();
    let msg = if conflicts.len() == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes = conflicts
        .iter()
        .map(|c| {
            Cause::new(
                "FieldManagerConflict",
                c.field.clone(),
                format!("conflict with {:?} using {api_version}", c.manager),
            )
        })
        .collect();
    let mut e = ApiError::new(409, "Conflict", msg).with_causes(causes);
    e.name = Some(name.to_string());
    e.group = Some(info.group.clone());
    e.kind = Some(info.plural.clone());
    e
}

/// Reads a dotted field path (`spec.nodeName`) as a selector string.
pub fn field_value(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        _ => None,
    }
}

/// Field selector keys upstream accepts for each kind.
fn supported_field(info: &ResourceInfo, key: &str) -> bool {
    if key == "metadata.name" || key == "metadata.namespace" {
        return true;
    }
    let extra: &[&str] = match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
            "reportingController",
            "note",
        ],
        ("", "secrets") => &["type"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") => &["status.phase"],
        _ => &[],
    };
    extra.contains(&key) || info.definition.is_none()
}

trait KindCheck {
    fn with_kind_check(self, got: &str, want: &str) -> Self;
}

impl KindCheck for ApiError {
    fn with_kind_check(mut self, got: &str, want: &str) -> Self {
        if got != want {
            self.message = format!(
                "{} (kind {got} does not match the expected kind {want})",
                self.message
            );
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_names_that_are_taken_are_generated_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(kobune_store::sqlite::SqliteStore::open(&dir.path().join("db")).unwrap());
        let reg = Registry {
            store: store.clone(),
            cache: Cache::start(store, crate::cache::DEFAULT_HISTORY)
                .await
                .unwrap(),
            resources: Arc::new(Resources::new()),
            service_cidr: ("10.43.0.0".parse().unwrap(), 16),
            service_accounts: None,
            default_tolerations: Default::default(),
        };
        let info = reg.resources.find("", "v1", "namespaces").unwrap();
        // 3^5 = 243 possible names: 40 creates almost surely collide (p ~ 0.96)
        // unless taken names are generated again.
        SUFFIX_CHARS.set(b"bcd");
        let mut names = std::collections::HashSet::new();
        for _ in 0..40 {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "ns-"}});
            let made = reg
                .create(&info, None, ns, &WriteOptions::default())
                .await
                .unwrap();
            names.insert(
                made.object["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(names.len(), 40);
        // A name given by the client is never changed.
        let taken = names.iter().next().unwrap().clone();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": taken}});
        let err = reg
            .create(&info, None, ns, &WriteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.to_status()["reason"], "AlreadyExists");
    }

    #[test]
    fn same_content_ignores_only_resource_version_and_managed_fields() {
        let a = json!({"metadata": {"name": "a", "resourceVersion": "1", "managedFields": [1]},
                       "spec": {"x": 1}});
        let b = json!({"metadata": {"name": "a", "resourceVersion": "2"}, "spec": {"x": 1}});
        assert!(same_content(&a, &b));
        assert!(same_content(&b, &a));
        let c = json!({"metadata": {"name": "a", "labels": {}}, "spec": {"x": 1}});
        assert!(!same_content(&a, &c));
        let d = json!({"metadata": {"name": "a"}, "spec": {"x": 2}});
        assert!(!same_content(&a, &d));
        let e = json!({"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {}});
        assert!(!same_content(&a, &e));
        assert!(!same_content(&e, &a));
    }
}

//! Server-side apply and managed-fields tracking, after upstream's
//! structured-merge-diff and `fieldmanager` packages.
//!
//! A field set is a set of paths; a path is a list of `FieldsV1` path
//! elements (`f:spec`, `k:{"name":"web"}`, `v:"x"`, `i:0`). Only members
//! are stored: leaves, list items, map entries, atomic values, nulls and
//! empty maps; parents are implied.

use super::{ListKind, Sch};
use crate::schema::SchemaNode;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// The result of a successful apply: the object to store, with its
/// `metadata.managedFields` updated.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    pub object: Value,
}

/// One field an apply would take from another manager. `field` is in
/// upstream's notation: `.spec.replicas`,
/// `.spec.template.spec.containers[name="web"].image`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyConflict {
    pub manager: String,
    pub field: String,
}

/// The message of the 409 upstream returns for apply conflicts.
pub fn conflict_message(conflicts: &[ApplyConflict]) -> String {
    let n = conflicts.len();
    let mut msg = format!(
        "Apply failed with {n} conflict{}: ",
        if n == 1 { "" } else { "s" }
    );
    let parts: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with {:?}: {}", c.manager, c.field))
        .collect();
    msg.push_str(&parts.join("\n"));
    msg
}

/// Upstream's manager for the fields of an object that had no managed
/// fields when it was first applied.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// Applies `applied` (a partial object) for `manager`. On success the
/// result holds the merged object with managed fields; on conflict (and
/// without `force`) one [`ApplyConflict`] per field and manager.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: Option<SchemaNode<'_>>,
    now: &str,
) -> Result<ApplyOutcome, Vec<ApplyConflict>> {
    let sch = Sch::root(schema);
    let mut live_obj = live.cloned().unwrap_or_else(|| json!({}));
    let mut managers = live.map(decode_managed).unwrap_or_default();
    strip_managed(&mut live_obj);
    let api_version = str_at(applied, "apiVersion")
        .or_else(|| str_at(&live_obj, "apiVersion"))
        .unwrap_or_default()
        .to_string();

    if live.is_some() && managers.is_empty() {
        let set = field_set(&live_obj, sch);
        if !set.is_empty() {
            managers.push(Managed {
                manager: BEFORE_FIRST_APPLY.into(),
                operation: "Update".into(),
                api_version: str_at(&live_obj, "apiVersion")
                    .unwrap_or_default()
                    .to_string(),
                time: Some(now.to_string()),
                subresource: None,
                set,
            });
        }
    }

    let mut config = applied.clone();
    strip_managed(&mut config);
    let applied_set = field_set(&config, sch);
    let mut merged = merge_values(&live_obj, &config, sch);

    let me = managers
        .iter()
        .position(|m| m.is(manager, "Apply", None, &api_version));
    let last = me.map(|i| std::mem::take(&mut managers[i].set));
    let last_time = me.and_then(|i| managers[i].time.take());
    let me = match me {
        Some(i) => i,
        None => {
            managers.push(Managed {
                manager: manager.to_string(),
                operation: "Apply".into(),
                api_version: api_version.clone(),
                time: None,
                subresource: None,
                set: FieldSet::new(),
            });
            managers.len() - 1
        }
    };
    managers[me].set = applied_set;
    managers[me].api_version = api_version;

    if let Some(last) = last {
        let owned: FieldSet = managers
            .iter()
            .flat_map(|m| m.set.iter().cloned())
            .collect();
        prune(&mut merged, sch, &last, &owned);
    }

    let diff = compare(&live_obj, &merged, sch);
    let changed: FieldSet = diff.added.union(&diff.modified).cloned().collect();
    let mut conflicts = vec![];
    for (i, m) in managers.iter().enumerate() {
        if i == me {
            continue;
        }
        for p in m.set.intersection(&changed) {
            conflicts.push(ApplyConflict {
                manager: m.manager.clone(),
                field: path_string(p),
            });
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(conflicts);
    }
    for (i, m) in managers.iter_mut().enumerate() {
        if i != me {
            m.set
                .retain(|p| !changed.contains(p) && !diff.removed.contains(p));
        }
    }
    // As upstream, the applier's time moves only when the object changes.
    managers[me].time = match last_time {
        Some(t) if merged == live_obj => Some(t),
        _ => Some(now.to_string()),
    };
    encode_managed(&mut merged, managers);
    Ok(ApplyOutcome { object: merged })
}

/// Records a non-apply write (create, update, patch) of `new` over `old`
/// (`None` on create) in `new`'s managed fields: the fields it added or
/// changed go to `(manager, operation, subresource)` and leave every other
/// manager; fields it removed leave every manager.
///
/// As upstream: managed fields the client sent in `new` are kept when not
/// empty (the live ones are used otherwise, and always for subresources);
/// `[{}]` strips them; an update of an object that has none is not tracked.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    now: &str,
    schema: Option<SchemaNode<'_>>,
) {
    let sch = Sch::root(schema);
    let sent = new.pointer("/metadata/managedFields").cloned();
    if let Some(Value::Array(a)) = &sent {
        if a.len() == 1 && a[0].as_object().is_some_and(Map::is_empty) {
            strip_managed(new);
            return;
        }
    }
    let mut managers = match sent.as_ref() {
        Some(Value::Array(a)) if !a.is_empty() && subresource.is_none() => decode_entries(a),
        _ => vec![],
    };
    if managers.is_empty() {
        managers = old.map(decode_managed).unwrap_or_default();
    }
    if old.is_some() && managers.is_empty() {
        strip_managed(new);
        return;
    }
    if old.is_none() && managers.is_empty() {
        // A create: every field of the object is the writer's.
        strip_managed(new);
        let mut tree = Tree::default();
        collect_tree(new, sch, &mut vec![], &mut tree);
        let entry = Managed {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: str_at(new, "apiVersion").unwrap_or_default().to_string(),
            time: Some(now.to_string()),
            subresource: subresource.map(String::from),
            set: FieldSet::new(),
        };
        let fields = (!tree.children.is_empty()).then(|| tree.to_json());
        encode_entries(
            new,
            fields.map(|f| vec![entry.encode(f)]).unwrap_or_default(),
        );
        return;
    }
    let empty = json!({});
    // `compare` never looks at managedFields, so the old object needs no copy.
    let old_obj = old.unwrap_or(&empty);
    strip_managed(new);
    let api_version = str_at(new, "apiVersion").unwrap_or_default().to_string();

    let diff = compare(old_obj, new, sch);
    let changed: FieldSet = diff.added.union(&diff.modified).cloned().collect();
    let me = managers
        .iter()
        .position(|m| m.is(manager, operation, subresource, &api_version));
    for (i, m) in managers.iter_mut().enumerate() {
        m.set.retain(|p| !diff.removed.contains(p));
        if Some(i) != me {
            m.set.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        let i = match me {
            Some(i) => i,
            None => {
                managers.push(Managed {
                    manager: manager.to_string(),
                    operation: operation.to_string(),
                    api_version: api_version.clone(),
                    time: None,
                    subresource: subresource.map(String::from),
                    set: FieldSet::new(),
                });
                managers.len() - 1
            }
        };
        managers[i].set.extend(changed);
        managers[i].time = Some(now.to_string());
        managers[i].api_version = api_version;
    }
    encode_managed(new, managers);
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn strip_managed(obj: &mut Value) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.shift_remove("managedFields");
    }
}

// ---- managed fields entries ----

struct Managed {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    set: FieldSet,
}

impl Managed {
    /// The managedFields entry, with `fields` as its fieldsV1.
    fn encode(&self, fields: Value) -> Value {
        let mut e = Map::new();
        e.insert("manager".into(), json!(self.manager));
        e.insert("operation".into(), json!(self.operation));
        e.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            e.insert("time".into(), json!(t));
        }
        e.insert("fieldsType".into(), json!("FieldsV1"));
        e.insert("fieldsV1".into(), fields);
        if let Some(s) = &self.subresource {
            e.insert("subresource".into(), json!(s));
        }
        Value::Object(e)
    }

    /// Upstream's manager identity: name, operation and subresource, plus
    /// the API version for updates.
    fn is(
        &self,
        manager: &str,
        operation: &str,
        subresource: Option<&str>,
        api_version: &str,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }
}

fn decode_managed(obj: &Value) -> Vec<Managed> {
    match obj.pointer("/metadata/managedFields") {
        Some(Value::Array(a)) => decode_entries(a),
        _ => vec![],
    }
}

fn decode_entries(entries: &[Value]) -> Vec<Managed> {
    let mut out: Vec<Managed> = vec![];
    for e in entries {
        let s = |k: &str| e.get(k).and_then(Value::as_str).map(String::from);
        let (Some(manager), Some(operation)) = (s("manager"), s("operation")) else {
            continue;
        };
        let mut set = FieldSet::new();
        if let Some(Value::Object(f)) = e.get("fieldsV1") {
            decode_fields(f, &mut vec![], &mut set);
        }
        out.push(Managed {
            manager,
            operation,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").filter(|s| !s.is_empty()),
            set,
        });
    }
    out
}

fn decode_fields(tree: &Map<String, Value>, prefix: &mut Path, out: &mut FieldSet) {
    for (k, v) in tree {
        if k == "." {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            continue;
        }
        prefix.push(k.clone());
        match v {
            Value::Object(m) if !m.is_empty() => decode_fields(m, prefix, out),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

#[derive(Default)]
struct Tree {
    member: bool,
    children: BTreeMap<String, Tree>,
}

impl Tree {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }
}

fn encode_fields(set: &FieldSet) -> Value {
    let mut root = Tree::default();
    for p in set {
        let mut node = &mut root;
        for el in p {
            node = node.children.entry(el.clone()).or_default();
        }
        node.member = true;
    }
    root.to_json()
}

fn encode_managed(obj: &mut Value, mut managers: Vec<Managed>) {
    managers.retain(|m| !m.set.is_empty());
    managers.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let entries: Vec<Value> = managers
        .iter()
        .map(|m| m.encode(encode_fields(&m.set)))
        .collect();
    encode_entries(obj, entries);
}

/// Puts `entries` in as the object's managedFields (none: removed).
fn encode_entries(obj: &mut Value, entries: Vec<Value>) {
    if !obj.is_object() {
        return;
    }
    let meta = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut);
    if let Some(meta) = meta {
        if entries.is_empty() {
            meta.shift_remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Renders a path as upstream prints it in conflicts.
fn path_string(p: &Path) -> String {
    let mut s = String::new();
    for el in p {
        if let Some(name) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(name);
        } else if let Some(keys) = el.strip_prefix("k:") {
            let parts: Vec<String> = match serde_json::from_str::<Map<String, Value>>(keys) {
                Ok(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                Err(_) => vec![keys.to_string()],
            };
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = el.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        } else {
            s.push_str(el);
        }
    }
    s
}

// ---- field sets ----

/// Metadata that is never owned (upstream's stripped fields).
fn ignored(p: &[String]) -> bool {
    match p.first().map(String::as_str) {
        Some("f:apiVersion") | Some("f:kind") => true,
        Some("f:metadata") => match p.get(1).map(String::as_str) {
            None => true,
            Some(f) => matches!(
                f,
                "f:name"
                    | "f:namespace"
                    | "f:creationTimestamp"
                    | "f:selfLink"
                    | "f:uid"
                    | "f:clusterName"
                    | "f:generation"
                    | "f:managedFields"
                    | "f:resourceVersion"
            ),
        },
        _ => false,
    }
}

/// The path element of a list item.
fn item_element(item: &Value, kind: &ListKind) -> String {
    match (kind, item) {
        (ListKind::Map(keys), Value::Object(m)) => {
            let mut sorted: Vec<&String> = keys.iter().collect();
            sorted.sort();
            let mut k = Map::new();
            for key in sorted {
                match m.get(key.as_str()) {
                    Some(v) => {
                        k.insert(key.clone(), v.clone());
                    }
                    // Upstream's schemas default the protocol of port lists.
                    None if key == "protocol" => {
                        k.insert(key.clone(), json!("TCP"));
                    }
                    None => {}
                }
            }
            format!("k:{}", Value::Object(k))
        }
        _ => format!("v:{item}"),
    }
}

/// Each member path with its value when it is a leaf (scalar, atomic,
/// null or empty).
///
/// With `maps`, maps (not structs) are members too: upstream's comparison
/// reports a map that appears as added, so writers own it (`".": {}`).
fn collect<'v>(
    v: &'v Value,
    sch: Sch<'_>,
    maps: bool,
    path: &mut Path,
    out: &mut BTreeMap<Path, Option<&'v Value>>,
) {
    match v {
        Value::Object(m) => {
            if !path.is_empty() && (sch.map_type() == Some("atomic") || m.is_empty()) {
                out.insert(path.clone(), Some(v));
                return;
            }
            if maps && !path.is_empty() && sch.is_map() {
                out.insert(path.clone(), None);
            }
            for (k, cv) in m {
                path.push(format!("f:{k}"));
                collect(cv, sch.child(k), maps, path, out);
                if sch.is_map_key(k) {
                    out.entry(path.clone()).or_insert(None);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let kind = sch.list_kind();
            if kind == ListKind::Atomic {
                out.insert(path.clone(), Some(v));
                return;
            }
            let item_sch = sch.items();
            for item in items {
                path.push(item_element(item, &kind));
                match (&kind, item) {
                    (ListKind::Map(_), Value::Object(m)) if !m.is_empty() => {
                        out.insert(path.clone(), None);
                        collect(item, item_sch, maps, path, out);
                    }
                    _ => {
                        out.insert(path.clone(), Some(item));
                    }
                }
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone(), Some(v));
            }
        }
    }
}

/// The owned-fields tree of a whole object: what [`collect`] (with maps)
/// and [`encode_fields`] give for every member path, built in one walk.
fn collect_tree(v: &Value, sch: Sch<'_>, path: &mut Path, node: &mut Tree) {
    match v {
        Value::Object(m) => {
            if !path.is_empty() && (sch.map_type() == Some("atomic") || m.is_empty()) {
                node.member = true;
                return;
            }
            if !path.is_empty() && sch.is_map() {
                node.member = true;
            }
            for (k, cv) in m {
                if skipped(path, k) {
                    continue;
                }
                let el = format!("f:{k}");
                let mut child = node.children.remove(&el).unwrap_or_default();
                path.push(el);
                collect_tree(cv, sch.child(k), path, &mut child);
                if sch.is_map_key(k) {
                    child.member = true;
                }
                let el = path.pop().expect("pushed above");
                if child.member || !child.children.is_empty() {
                    node.children.insert(el, child);
                }
            }
        }
        Value::Array(items) => {
            let kind = sch.list_kind();
            if kind == ListKind::Atomic {
                node.member = true;
                return;
            }
            let item_sch = sch.items();
            for item in items {
                let el = item_element(item, &kind);
                let mut child = node.children.remove(&el).unwrap_or_default();
                child.member = true;
                path.push(el);
                if let (ListKind::Map(_), Value::Object(m)) = (&kind, item) {
                    if !m.is_empty() {
                        collect_tree(item, item_sch, path, &mut child);
                    }
                }
                let el = path.pop().expect("pushed above");
                node.children.insert(el, child);
            }
        }
        _ => {
            if !path.is_empty() {
                node.member = true;
            }
        }
    }
}

fn leaves<'v>(v: &'v Value, sch: Sch<'_>, maps: bool) -> BTreeMap<Path, Option<&'v Value>> {
    let mut out = BTreeMap::new();
    collect(v, sch, maps, &mut vec![], &mut out);
    out.retain(|p, _| !ignored(p));
    out
}

fn field_set(v: &Value, sch: Sch<'_>) -> FieldSet {
    leaves(v, sch, false).into_keys().collect()
}

struct Diff {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

/// Never owned at all, so never collected: `apiVersion`, `kind` and the
/// ignored metadata fields (including the large `managedFields`).
fn skipped(path: &Path, key: &str) -> bool {
    match path.len() {
        0 => key == "apiVersion" || key == "kind",
        1 if path[0] == "f:metadata" => ignored(&[path[0].clone(), format!("f:{key}")]),
        _ => false,
    }
}

/// As [`collect`] with `maps` of `old` into `a` and of `new` into `b`,
/// except that members equal on both sides are left out of both: their
/// leaves would be the same paths with the same values, so they can differ
/// in nothing. Status and metadata writes leave most of an object as it was.
fn collect_pair<'v>(
    old: &'v Value,
    new: &'v Value,
    sch: Sch<'_>,
    path: &mut Path,
    a: &mut BTreeMap<Path, Option<&'v Value>>,
    b: &mut BTreeMap<Path, Option<&'v Value>>,
) {
    let (Value::Object(om), Value::Object(nm)) = (old, new) else {
        collect(old, sch, true, path, a);
        collect(new, sch, true, path, b);
        return;
    };
    if om.is_empty() || nm.is_empty() || (!path.is_empty() && sch.map_type() == Some("atomic")) {
        collect(old, sch, true, path, a);
        collect(new, sch, true, path, b);
        return;
    }
    // The node's own entry (a map's `None`) is the same on both sides.
    for (k, nv) in nm {
        if skipped(path, k) {
            continue;
        }
        let ov = om.get(k);
        if ov == Some(nv) {
            continue;
        }
        path.push(format!("f:{k}"));
        let child = sch.child(k);
        match ov {
            Some(ov) => collect_pair(ov, nv, child, path, a, b),
            None => collect(nv, child, true, path, b),
        }
        if sch.is_map_key(k) {
            if ov.is_some() {
                a.entry(path.clone()).or_insert(None);
            }
            b.entry(path.clone()).or_insert(None);
        }
        path.pop();
    }
    for (k, ov) in om {
        if nm.contains_key(k) || skipped(path, k) {
            continue;
        }
        path.push(format!("f:{k}"));
        collect(ov, sch.child(k), true, path, a);
        if sch.is_map_key(k) {
            a.entry(path.clone()).or_insert(None);
        }
        path.pop();
    }
}

fn compare(old: &Value, new: &Value, sch: Sch<'_>) -> Diff {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    collect_pair(old, new, sch, &mut vec![], &mut a, &mut b);
    a.retain(|p, _| !ignored(p));
    b.retain(|p, _| !ignored(p));
    diff_leaves(&a, &b)
}

/// What differs between two sets of leaves.
fn diff_leaves(a: &BTreeMap<Path, Option<&Value>>, b: &BTreeMap<Path, Option<&Value>>) -> Diff {
    let mut d = Diff {
        added: FieldSet::new(),
        modified: FieldSet::new(),
        removed: FieldSet::new(),
    };
    for (p, nv) in b {
        match a.get(p) {
            None => {
                d.added.insert(p.clone());
            }
            Some(ov) => {
                let differs = match (ov, nv) {
                    (Some(x), Some(y)) => x != y,
                    (None, None) => false,
                    // A map emptied or filled is not itself modified.
                    (Some(v), None) | (None, Some(v)) => {
                        v.as_object().is_none_or(|m| !m.is_empty())
                    }
                };
                if differs {
                    d.modified.insert(p.clone());
                }
            }
        }
    }
    d.removed = a.keys().filter(|p| !b.contains_key(*p)).cloned().collect();
    d
}

// ---- merging ----

/// Merges an applied configuration into the live object: maps merge,
/// keyed lists and sets merge item by item, anything else is replaced.
/// Nulls in the configuration remove the field.
fn merge_values(live: &Value, config: &Value, sch: Sch<'_>) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if sch.map_type() != Some("atomic") => {
            let mut out = l.clone();
            for (k, cv) in c {
                if cv.is_null() {
                    out.shift_remove(k);
                    continue;
                }
                let merged = match l.get(k) {
                    Some(lv) => merge_values(lv, cv, sch.child(k)),
                    None => drop_nulls(cv),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => {
            let kind = sch.list_kind();
            if kind == ListKind::Atomic {
                return drop_nulls(config);
            }
            let items = sch.items();
            merge_lists(l, c, &kind, |lv, cv| match lv {
                Some(lv) => merge_values(lv, cv, items),
                None => drop_nulls(cv),
            })
        }
        _ => drop_nulls(config),
    }
}

fn drop_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), drop_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(drop_nulls).collect()),
        other => other.clone(),
    }
}

/// Merges two associative lists the way structured-merge-diff orders
/// them: the configuration's order for its items, live-only items kept
/// where they were relative to the shared ones.
fn merge_lists(
    live: &[Value],
    config: &[Value],
    kind: &ListKind,
    mut merge_item: impl FnMut(Option<&Value>, &Value) -> Value,
) -> Value {
    let lpe: Vec<String> = live.iter().map(|v| item_element(v, kind)).collect();
    let rpe: Vec<String> = config.iter().map(|v| item_element(v, kind)).collect();
    let lhs: BTreeMap<&str, &Value> = lpe.iter().map(String::as_str).zip(live).rev().collect();
    let rhs: BTreeMap<&str, &Value> = rpe.iter().map(String::as_str).zip(config).rev().collect();
    let mut shared = rpe
        .iter()
        .filter(|p| lhs.contains_key(p.as_str()))
        .peekable();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::with_capacity(live.len().max(config.len()));
    let (mut li, mut ri) = (0, 0);
    while li < lpe.len() || ri < rpe.len() {
        if li < lpe.len() && ri < rpe.len() {
            let pe = lpe[li].as_str();
            if pe == rpe[ri] {
                if done.insert(pe) {
                    out.push(merge_item(lhs.get(pe).copied(), rhs[pe]));
                }
                if shared.peek().is_some_and(|s| s.as_str() == pe) {
                    shared.next();
                }
                li += 1;
                ri += 1;
                continue;
            }
            if rhs.contains_key(pe) && shared.peek().is_some_and(|s| s.as_str() != pe) {
                li += 1;
                continue;
            }
        }
        if li < lpe.len() {
            let pe = lpe[li].as_str();
            if !rhs.contains_key(pe) {
                out.push(live[li].clone());
                li += 1;
                continue;
            }
            if done.contains(pe) {
                li += 1;
                continue;
            }
        }
        if ri < rpe.len() {
            let pe = rpe[ri].as_str();
            if done.insert(pe) {
                out.push(merge_item(lhs.get(pe).copied(), rhs[pe]));
            }
            if shared.peek().is_some_and(|s| s.as_str() == pe) {
                shared.next();
            }
            ri += 1;
        }
    }
    Value::Array(out)
}

// ---- pruning ----

/// Removes from `obj` the fields the applier owned before (`last`) that
/// nobody owns now (`owned`, the applier's new set included), then the
/// struct fields left empty by that.
fn prune(obj: &mut Value, sch: Sch<'_>, last: &FieldSet, owned: &FieldSet) {
    let owns_under = |p: &[String]| {
        owned
            .range(p.to_vec()..)
            .next()
            .is_some_and(|q| q.starts_with(p))
    };
    for p in last {
        if owns_under(p) || ignored(p) {
            continue;
        }
        remove_path(obj, sch, p);
        for n in (1..p.len()).rev() {
            let anc = &p[..n];
            if !anc[n - 1].starts_with("f:") || owns_under(anc) {
                break;
            }
            let empty = locate(obj, sch, anc).is_some_and(|(v, _)| match v {
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            });
            if !empty {
                break;
            }
            remove_path(obj, sch, anc);
        }
    }
}

/// The position of a list item or field named by a path element.
fn step<'s>(v: &Value, sch: Sch<'s>, el: &str) -> Option<(Step, Sch<'s>)> {
    if let Some(name) = el.strip_prefix("f:") {
        return match v {
            Value::Object(m) if m.contains_key(name) => {
                Some((Step::Key(name.to_string()), sch.child(name)))
            }
            _ => None,
        };
    }
    let Value::Array(items) = v else { return None };
    if let Some(i) = el.strip_prefix("i:") {
        let i: usize = i.parse().ok()?;
        return (i < items.len()).then(|| (Step::Index(i), sch.items()));
    }
    let kind = sch.list_kind();
    items
        .iter()
        .position(|item| item_element(item, &kind) == el)
        .map(|i| (Step::Index(i), sch.items()))
}

enum Step {
    Key(String),
    Index(usize),
}

fn locate<'v, 's>(v: &'v Value, sch: Sch<'s>, path: &[String]) -> Option<(&'v Value, Sch<'s>)> {
    let mut cur = (v, sch);
    for el in path {
        let (s, next) = step(cur.0, cur.1, el)?;
        cur.0 = match s {
            Step::Key(k) => cur.0.get(&k)?,
            Step::Index(i) => cur.0.get(i)?,
        };
        cur.1 = next;
    }
    Some(cur)
}

fn remove_path(obj: &mut Value, sch: Sch<'_>, path: &[String]) {
    let mut steps = Vec::with_capacity(path.len());
    let (mut cur, mut cur_sch) = (&*obj, sch);
    for el in path {
        let Some((s, next)) = step(cur, cur_sch, el) else {
            return;
        };
        cur = match &s {
            Step::Key(k) => &cur[k.as_str()],
            Step::Index(i) => &cur[*i],
        };
        cur_sch = next;
        steps.push(s);
    }
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut target = obj;
    for s in parents {
        target = match s {
            Step::Key(k) => &mut target[k.as_str()],
            Step::Index(i) => &mut target[*i],
        };
    }
    match (last, target) {
        (Step::Key(k), Value::Object(m)) => {
            m.shift_remove(k);
        }
        (Step::Index(i), Value::Array(a)) => {
            a.remove(*i);
        }
        _ => {}
    }
}

#[cfg(test)]
mod compare_tests {
    use super::*;
    use crate::schema::{definitions, SchemaNode};

    /// The pruned comparison against the plain one (every leaf of both sides).
    fn compare_full(old: &Value, new: &Value, sch: Sch<'_>) -> (FieldSet, FieldSet, FieldSet) {
        let want = diff_leaves(&leaves(old, sch, true), &leaves(new, sch, true));
        let d = compare(old, new, sch);
        assert_eq!(d.added, want.added, "added");
        assert_eq!(d.modified, want.modified, "modified");
        assert_eq!(d.removed, want.removed, "removed");
        (d.added, d.modified, d.removed)
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"a": "1"},
                         "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:metadata": {"f:labels": {"f:a": {}}}}}]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
                                     "env": [{"name": "A", "value": "1"}]}],
                     "nodeSelector": {}, "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        })
    }

    #[test]
    fn create_tree_equals_the_encoded_leaves() {
        let objects = [
            ("io.k8s.api.core.v1.Pod", pod()),
            (
                "io.k8s.api.core.v1.Pod",
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "labels": {}, "annotations": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "args": ["x"], "ports": [],
                                         "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                                        {"name": "d", "image": "i"}],
                         "volumes": [{"name": "v", "emptyDir": {}}],
                         "securityContext": {}}}),
            ),
            (
                "io.k8s.api.core.v1.Service",
                json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "s"},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 81, "protocol": "UDP"}],
                         "selector": {"app": "a"}}}),
            ),
            (
                "io.k8s.api.core.v1.ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "finalizers": ["a", "b"]}, "data": {"k": "v"}}),
            ),
        ];
        for (def, obj) in objects {
            let sch = Sch::root(SchemaNode::definition(definitions(), def));
            let mut tree = Tree::default();
            collect_tree(&obj, sch, &mut vec![], &mut tree);
            let want = encode_fields(&field_set_with_maps(&obj, sch));
            assert_eq!(tree.to_json(), want, "{def}");
        }
    }

    fn field_set_with_maps(v: &Value, sch: Sch<'_>) -> FieldSet {
        leaves(v, sch, true).into_keys().collect()
    }

    #[test]
    fn pruned_compare_equals_the_full_comparison() {
        let sch = Sch::root(SchemaNode::definition(
            definitions(),
            "io.k8s.api.core.v1.Pod",
        ));
        let base = pod();
        let mut cases = vec![];
        let mut v = base.clone();
        v["status"]["phase"] = json!("Running");
        v["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Ready", "status": "True"}));
        v["status"]["podIP"] = json!("10.0.0.1");
        cases.push(v);
        let mut v = base.clone();
        v["metadata"]["labels"] = json!({"b": "2"});
        v["metadata"]["annotations"] = json!({"x": "y"});
        v["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        cases.push(v);
        let mut v = base.clone();
        v["spec"]["containers"][0]["env"][0]["value"] = json!("2");
        v["spec"]["containers"][0]["image"] = json!("j");
        v["metadata"]["managedFields"] = json!([]);
        v.as_object_mut().unwrap().remove("status");
        cases.push(v);
        let mut v = base.clone();
        v["metadata"]["labels"] = json!({});
        v["spec"]["tolerations"] = json!([]);
        cases.push(v);
        for new in &cases {
            compare_full(&base, new, sch);
            compare_full(new, &base, sch);
            compare_full(&json!({}), new, sch);
        }
        let (added, modified, removed) = compare_full(&base, &cases[0], sch);
        let p = |s: &[&str]| s.iter().map(|e| e.to_string()).collect::<Path>();
        assert!(added.contains(&p(&["f:status", "f:podIP"])));
        assert!(modified.contains(&p(&["f:status", "f:phase"])));
        assert!(removed.is_empty());
        assert!(!added.iter().chain(&modified).any(|p| p[0] == "f:spec"));
    }
}

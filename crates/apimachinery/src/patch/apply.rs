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
    let mut old_obj = old.cloned().unwrap_or_else(|| json!({}));
    strip_managed(&mut old_obj);
    strip_managed(new);
    let api_version = str_at(new, "apiVersion").unwrap_or_default().to_string();

    let diff = compare(&old_obj, new, sch);
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
        .map(|m| {
            let mut e = Map::new();
            e.insert("manager".into(), json!(m.manager));
            e.insert("operation".into(), json!(m.operation));
            e.insert("apiVersion".into(), json!(m.api_version));
            if let Some(t) = &m.time {
                e.insert("time".into(), json!(t));
            }
            e.insert("fieldsType".into(), json!("FieldsV1"));
            e.insert("fieldsV1".into(), encode_fields(&m.set));
            if let Some(s) = &m.subresource {
                e.insert("subresource".into(), json!(s));
            }
            Value::Object(e)
        })
        .collect();
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

fn compare(old: &Value, new: &Value, sch: Sch<'_>) -> Diff {
    let a = leaves(old, sch, true);
    let b = leaves(new, sch, true);
    let mut d = Diff {
        added: FieldSet::new(),
        modified: FieldSet::new(),
        removed: FieldSet::new(),
    };
    for (p, nv) in &b {
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

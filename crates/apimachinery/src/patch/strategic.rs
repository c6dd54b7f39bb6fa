//! Strategic merge patch, after upstream's `strategicpatch` package.

use super::{PatchError, Sch};
use serde_json::{Map, Value};
use std::collections::HashSet;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

fn err(msg: impl Into<String>) -> PatchError {
    PatchError(msg.into())
}

fn is_directive(key: &str) -> bool {
    key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ORDER)
        || key.starts_with(DELETE_PRIMITIVE)
}

pub(super) fn apply(original: &Value, patch: &Value, sch: Sch<'_>) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(err(
            "invalid strategic merge patch: the patch must be a JSON object",
        ));
    };
    let orig = match original {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    Ok(Value::Object(merge_map(orig, p, sch)?.unwrap_or_default()))
}

/// A patch value made fit to store where nothing is merged into it:
/// directives and nulls are dropped, `$patch: delete` maps and list
/// elements vanish. `None` when nothing is left to store.
fn clean(v: &Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.get(PATCH).and_then(Value::as_str) == Some("delete") {
                return None;
            }
            let out: Map<String, Value> = m
                .iter()
                .filter(|(k, v)| !is_directive(k) && !v.is_null())
                .filter_map(|(k, v)| clean(v).map(|c| (k.clone(), c)))
                .collect();
            Some(Value::Object(out))
        }
        Value::Array(a) => Some(Value::Array(clean_list(a))),
        other => Some(other.clone()),
    }
}

/// List elements without the directive elements (`{"$patch": …}`).
fn clean_list(a: &[Value]) -> Vec<Value> {
    a.iter()
        .filter(|e| e.get(PATCH).is_none())
        .filter_map(clean)
        .collect()
}

/// Merges `patch` into `orig`; `None` when the patch deletes the map.
fn merge_map(
    mut orig: Map<String, Value>,
    patch: &Map<String, Value>,
    sch: Sch<'_>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    if let Some(d) = patch.get(PATCH) {
        match d.as_str() {
            Some("replace") => {
                let Some(Value::Object(m)) = clean(&Value::Object(patch.clone())) else {
                    return Ok(Some(Map::new()));
                };
                return Ok(Some(m));
            }
            Some("delete") => return Ok(None),
            Some("merge") => {}
            _ => {
                return Err(err(format!(
                    "unknown patch type: {d} in map: {}",
                    Value::Object(patch.clone())
                )))
            }
        }
    }

    if let Some(rk) = patch.get(RETAIN_KEYS) {
        let keys: Vec<&str> = rk
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .filter(|k: &Vec<&str>| rk.as_array().is_some_and(|a| a.len() == k.len()))
            .ok_or_else(|| {
                err(format!(
                    "invalid $retainKeys: expected a list of strings, got {rk}"
                ))
            })?;
        orig.retain(|k, _| keys.contains(&k.as_str()));
    }

    // Lists with an explicit order: merged here, skipped below.
    let mut ordered: HashSet<&str> = HashSet::new();
    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ORDER) else {
            continue;
        };
        let order = order
            .as_array()
            .ok_or_else(|| err(format!("invalid {k}: expected a list, got {order}")))?;
        let patch_list = match patch.get(field) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(_) => continue,
        };
        let child = sch.child(field);
        let orig_list = orig.get(field).and_then(Value::as_array).cloned();
        let merged = match (&orig_list, patch_list) {
            (Some(o), None) => o.clone(),
            (None, Some(p)) => clean_list(p),
            (Some(o), Some(p)) if child.has_strategy("merge") => merge_list(o.clone(), p, child)?,
            (Some(_), Some(p)) => clean_list(p),
            (None, None) => continue,
        };
        let ident = match child.smp_merge_key() {
            Some(key) if merged.iter().chain(order).any(Value::is_object) => Ident::Key(key),
            _ => Ident::Prim,
        };
        let (in_order, rest): (Vec<Value>, Vec<Value>) = merged
            .into_iter()
            .partition(|v| index_of(order, v, ident).is_some());
        let result = normalize_order(
            in_order,
            rest,
            order,
            orig_list.as_deref().unwrap_or(&[]),
            ident,
        );
        orig.insert(field.to_string(), Value::Array(result));
        ordered.insert(field);
    }

    for (k, pv) in patch {
        if k == PATCH
            || k == RETAIN_KEYS
            || k.starts_with(SET_ORDER)
            || ordered.contains(k.as_str())
        {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let del = pv
                .as_array()
                .ok_or_else(|| err(format!("invalid {k}: expected a list, got {pv}")))?;
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            orig.shift_remove(k);
            continue;
        }
        let child = sch.child(k);
        let Some(ov) = orig.get_mut(k) else {
            if let Some(c) = clean(pv) {
                orig.insert(k.clone(), c);
            }
            continue;
        };
        let merged = match (std::mem::take(ov), pv) {
            (Value::Object(om), Value::Object(pm)) => {
                if child.patch_strategy() == Some("replace") {
                    clean(pv)
                } else {
                    merge_map(om, pm, child)?.map(Value::Object)
                }
            }
            (Value::Array(ol), Value::Array(pl)) => {
                if child.has_strategy("merge") {
                    Some(Value::Array(merge_list(ol, pl, child)?))
                } else {
                    Some(Value::Array(clean_list(pl)))
                }
            }
            _ => clean(pv),
        };
        match merged {
            Some(v) => *ov = v,
            None => {
                orig.shift_remove(k);
            }
        }
    }
    Ok(Some(orig))
}

/// How list elements are identified when ordering: by value, or by the
/// value of the merge key.
#[derive(Clone, Copy)]
enum Ident<'k> {
    Prim,
    Key(&'k str),
}

fn same(a: &Value, b: &Value, ident: Ident<'_>) -> bool {
    match ident {
        Ident::Prim => a == b,
        Ident::Key(k) => match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn index_of(list: &[Value], item: &Value, ident: Ident<'_>) -> Option<usize> {
    list.iter().position(|x| same(x, item, ident))
}

/// Merges a list whose patch strategy is `merge`.
fn merge_list(orig: Vec<Value>, patch: &[Value], sch: Sch<'_>) -> Result<Vec<Value>, PatchError> {
    if orig.is_empty() && patch.is_empty() {
        return Ok(orig);
    }
    if !orig.iter().chain(patch).any(Value::is_object) {
        // Scalars: union without duplicates.
        let mut merged: Vec<Value> = Vec::with_capacity(orig.len() + patch.len());
        for v in orig.iter().chain(patch) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (in_patch, rest): (Vec<Value>, Vec<Value>) =
            merged.into_iter().partition(|v| patch.contains(v));
        return Ok(normalize_order(in_patch, rest, patch, &orig, Ident::Prim));
    }
    let key = sch
        .smp_merge_key()
        .ok_or_else(|| err("cannot merge lists of maps without a merge key"))?;
    let mut orig = orig;
    let mut plain: Vec<&Map<String, Value>> = vec![];
    let mut replace = false;
    for p in patch {
        let Value::Object(pm) = p else {
            return Err(err(format!(
                "unable to merge list: element {p} is not a map"
            )));
        };
        match pm.get(PATCH) {
            None => plain.push(pm),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let kv = pm.get(key).ok_or_else(|| no_merge_key(pm, key))?;
                    orig.retain(|o| o.get(key) != Some(kv));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(err("merging lists cannot yet be specified in the patch"))
                }
                _ => return Err(err(format!("unknown patch type: {d} in map: {p}"))),
            },
        }
    }
    if replace {
        return Ok(plain
            .iter()
            .filter_map(|m| clean(&Value::Object((*m).clone())))
            .collect());
    }
    let items = sch.items();
    let mut merged = orig.clone();
    for pm in &plain {
        let kv = pm.get(key).ok_or_else(|| no_merge_key(pm, key))?;
        match merged.iter().position(|o| o.get(key) == Some(kv)) {
            Some(i) => match std::mem::take(&mut merged[i]) {
                Value::Object(om) => match merge_map(om, pm, items)? {
                    Some(m) => merged[i] = Value::Object(m),
                    None => {
                        merged.remove(i);
                    }
                },
                _ => merged[i] = clean(&Value::Object((*pm).clone())).unwrap_or_default(),
            },
            None => merged.extend(clean(&Value::Object((*pm).clone()))),
        }
    }
    let ident = Ident::Key(key);
    let order: Vec<Value> = plain.iter().map(|m| Value::Object((*m).clone())).collect();
    let (in_patch, rest): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_of(&order, v, ident).is_some());
    Ok(normalize_order(in_patch, rest, &order, &orig, ident))
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    err(format!(
        "map: {} does not contain declared merge key: {key}",
        Value::Object(m.clone())
    ))
}

/// Sorts the patch's items by `patch_order` and the server-only items by
/// `server_order`, then interleaves them keeping both relative orders,
/// placing a server-only item before a patch item when the live list had it
/// first. Items the live list lacks come before the server-only ones, as
/// upstream has it.
fn normalize_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    ident: Ident<'_>,
) -> Vec<Value> {
    patch_items.sort_by_key(|v| index_of(patch_order, v, ident).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| index_of(server_order, v, ident).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (
                    index_of(server_order, l, ident),
                    index_of(server_order, r, ident),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        out.extend(if take_left { left.next() } else { right.next() });
    }
    out
}

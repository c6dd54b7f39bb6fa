//! JSON merge patch (RFC 7386) and JSON Patch (RFC 6902).

use super::PatchError;
use serde_json::{Map, Value};

pub(super) fn merge_patch(original: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut target = match original {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            target.shift_remove(k);
        } else {
            let merged = merge_patch(target.get(k).unwrap_or(&Value::Null), v);
            target.insert(k.clone(), merged);
        }
    }
    Value::Object(target)
}

fn err(msg: impl Into<String>) -> PatchError {
    PatchError(msg.into())
}

/// Splits a JSON pointer into unescaped reference tokens.
fn parse_pointer(ptr: &str) -> Result<Vec<String>, PatchError> {
    if ptr.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = ptr.strip_prefix('/') else {
        return Err(err(format!(
            "invalid JSON pointer {ptr:?}: must start with \"/\""
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// An array index token: decimal digits without leading zeros.
fn parse_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

fn get<'v>(doc: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    tokens.iter().try_fold(doc, |cur, t| match cur {
        Value::Object(m) => m.get(t),
        Value::Array(a) => parse_index(t).and_then(|i| a.get(i)),
        _ => None,
    })
}

fn get_mut<'v>(doc: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    tokens.iter().try_fold(doc, |cur, t| match cur {
        Value::Object(m) => m.get_mut(t),
        Value::Array(a) => parse_index(t).and_then(move |i| a.get_mut(i)),
        _ => None,
    })
}

fn add(doc: &mut Value, path: &str, tokens: &[String], value: Value) -> Result<(), PatchError> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let missing = || {
        err(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match get_mut(doc, parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            match parse_index(last) {
                Some(i) if i <= a.len() => {
                    a.insert(i, value);
                    Ok(())
                }
                Some(i) => Err(err(format!(
                    "add operation does not apply: index {i} out of bounds for array of length {} at {path:?}",
                    a.len()
                ))),
                None => Err(err(format!(
                    "add operation does not apply: invalid array index {last:?} at {path:?}"
                ))),
            }
        }
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, op: &str, path: &str, tokens: &[String]) -> Result<Value, PatchError> {
    let missing = || {
        err(format!(
            "{op} operation does not apply: doc is missing path: {path:?}"
        ))
    };
    let Some((last, parent)) = tokens.split_last() else {
        return Ok(std::mem::take(doc));
    };
    match get_mut(doc, parent).ok_or_else(missing)? {
        Value::Object(m) => m.shift_remove(last).ok_or_else(missing),
        Value::Array(a) => match parse_index(last) {
            Some(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

pub(super) fn apply_json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(err(
            "invalid JSON Patch: the patch must be a JSON array of operations",
        ));
    };
    let mut doc = original.clone();
    for (n, op) in ops.iter().enumerate() {
        let Value::Object(o) = op else {
            return Err(err(format!(
                "invalid JSON Patch: operation {n} is not an object"
            )));
        };
        let name = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("invalid JSON Patch: operation {n} has no \"op\"")))?;
        let str_field = |f: &str| -> Result<&str, PatchError> {
            o.get(f).and_then(Value::as_str).ok_or_else(|| {
                err(format!(
                    "invalid JSON Patch: {name} operation {n} is missing {f:?}"
                ))
            })
        };
        let value = || -> Result<Value, PatchError> {
            o.get("value").cloned().ok_or_else(|| {
                err(format!(
                    "invalid JSON Patch: {name} operation {n} is missing \"value\""
                ))
            })
        };
        let path = str_field("path")?;
        let tokens = parse_pointer(path)?;
        match name {
            "add" => add(&mut doc, path, &tokens, value()?)?,
            "remove" => {
                remove(&mut doc, "remove", path, &tokens)?;
            }
            "replace" => {
                let v = value()?;
                let target = get_mut(&mut doc, &tokens).ok_or_else(|| {
                    err(format!(
                        "replace operation does not apply: doc is missing key: {path:?}"
                    ))
                })?;
                *target = v;
            }
            "move" => {
                let from = str_field("from")?;
                let from_tokens = parse_pointer(from)?;
                if from == path {
                    continue;
                }
                if tokens.len() > from_tokens.len() && tokens.starts_with(&from_tokens) {
                    return Err(err(format!(
                        "move operation does not apply: {from:?} is a prefix of {path:?}"
                    )));
                }
                let v = remove(&mut doc, "move", from, &from_tokens)?;
                add(&mut doc, path, &tokens, v)?;
            }
            "copy" => {
                let from = str_field("from")?;
                let v = get(&doc, &parse_pointer(from)?).cloned().ok_or_else(|| {
                    err(format!(
                        "copy operation does not apply: doc is missing from path: {from:?}"
                    ))
                })?;
                add(&mut doc, path, &tokens, v)?;
            }
            "test" => {
                let expected = value()?;
                let ok = match get(&doc, &tokens) {
                    Some(actual) => json_equal(actual, &expected),
                    // A missing location matches null, as upstream's library has it.
                    None => expected.is_null(),
                };
                if !ok {
                    return Err(err(format!("testing value {path} failed: test failed")));
                }
            }
            other => {
                return Err(err(format!(
                    "invalid JSON Patch: unexpected operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

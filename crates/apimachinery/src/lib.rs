//! API machinery shared by the API server and controllers: which resources
//! exist ([`resource`]), how errors look on the wire ([`status`]), the
//! OpenAPI schemas of the typed model ([`schema`]), patches, selectors,
//! defaulting and validation.

pub mod defaults;
pub mod fields;
pub mod patch;
pub mod patch_meta;
pub mod printers;
pub mod resource;
pub mod schema;
pub mod selectors;
pub mod status;
pub mod validation;

pub use k8s_openapi;
pub use resource::{GroupVersionKind, ResourceInfo, Scope};
pub use status::{ApiError, Cause};

/// `Value::pointer` without its two allocations per path token: for the hot
/// paths of controllers that read a few fields of many objects. Paths with
/// `~` escapes go to `pointer`.
pub fn at<'v>(v: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if path.is_empty() {
        return Some(v);
    }
    if path.contains('~') {
        return v.pointer(path);
    }
    path.strip_prefix('/')?
        .split('/')
        .try_fold(v, |target, token| match target {
            serde_json::Value::Object(map) => map.get(token),
            serde_json::Value::Array(list) => token.parse::<usize>().ok().and_then(|i| list.get(i)),
            _ => None,
        })
}

/// The strings of a JSON array (other items skipped); empty for anything else.
pub fn str_list(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn str_list_keeps_strings() {
        assert_eq!(super::str_list(Some(&json!(["a", 1, "b"]))), vec!["a", "b"]);
        assert!(super::str_list(Some(&json!("a"))).is_empty());
        assert!(super::str_list(None).is_empty());
    }

    #[test]
    fn at_reads_like_pointer() {
        let v = json!({"a": {"b/c": 1, "d": [10, {"e": "x"}], "f~g": 2}});
        for p in [
            "", "/a", "/a/d/0", "/a/d/1/e", "/a/d/2", "/a/b~1c", "/a/f~0g", "/a/x", "a", "/a/d/x",
        ] {
            assert_eq!(super::at(&v, p), v.pointer(p), "{p}");
        }
    }
}

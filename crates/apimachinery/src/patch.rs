//! Patches: JSON merge (RFC 7386), JSON Patch (RFC 6902), strategic merge
//! and server-side apply.
//!
//! Strategic merge follows `k8s.io/apimachinery/pkg/util/strategicpatch`:
//! list strategies and merge keys come from the schema
//! ([`crate::patch_meta`] injects them into the built-in definitions).
//! Server-side apply follows structured-merge-diff: field sets are kept in
//! `metadata.managedFields` as `FieldsV1`, list types come from
//! `x-kubernetes-list-type` / `x-kubernetes-list-map-keys`, falling back to
//! the patch strategy and merge key as upstream's schema conversion does.

mod apply;
mod json;
mod strategic;
#[cfg(test)]
mod tests;

use crate::schema::{Field, SchemaNode};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::OnceLock;

pub use apply::{conflict_message, server_side_apply, track_update, ApplyConflict, ApplyOutcome};

/// Why a patch could not be applied; the message is meant for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchError(pub String);

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatchError {}

/// Applies a JSON merge patch (RFC 7386): objects merge recursively, `null`
/// deletes a key, anything else (arrays included) replaces.
pub fn json_merge_patch(original: &Value, patch: &Value) -> Value {
    json::merge_patch(original, patch)
}

/// Applies a JSON Patch (RFC 6902): an array of `add`, `remove`, `replace`,
/// `move`, `copy` and `test` operations, all or nothing.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    json::apply_json_patch(original, patch)
}

/// Applies a strategic merge patch. With a schema, lists whose patch
/// strategy is `merge` merge by their merge key (or union, for scalars) and
/// the `$patch`, `$retainKeys`, `$setElementOrder/…` and
/// `$deleteFromPrimitiveList/…` directives apply; without one it behaves as
/// a JSON merge patch that still honours and strips the directives.
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    schema: Option<SchemaNode<'_>>,
) -> Result<Value, PatchError> {
    strategic::apply(original, patch, Sch::root(schema))
}

/// A position in a schema: the resolved node and, when reached through a
/// property, that property (whose extensions sit beside its `$ref`).
/// Both empty means "no schema here": maps merge, lists are atomic.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sch<'a> {
    node: Option<SchemaNode<'a>>,
    field: Option<Field<'a>>,
    /// Upstream marks this struct or map atomic (`structType`/`mapType`),
    /// which the typed model's schemas cannot say.
    atomic: bool,
}

fn addr(v: &Value) -> usize {
    v as *const Value as usize
}

/// Addresses of the built-in definitions of atomic structs.
fn atomic_structs() -> &'static HashSet<usize> {
    static SET: OnceLock<HashSet<usize>> = OnceLock::new();
    SET.get_or_init(|| {
        let defs = crate::schema::definitions();
        crate::patch_meta::ATOMIC_STRUCTS
            .iter()
            .filter_map(|d| defs.get(*d))
            .map(addr)
            .collect()
    })
}

/// Addresses of the built-in definitions with atomic map properties, with
/// those properties.
fn atomic_maps() -> &'static HashSet<(usize, &'static str)> {
    static SET: OnceLock<HashSet<(usize, &'static str)>> = OnceLock::new();
    SET.get_or_init(|| {
        let defs = crate::schema::definitions();
        crate::patch_meta::ATOMIC_MAPS
            .iter()
            .filter_map(|(d, f)| defs.get(*d).map(|v| (addr(v), *f)))
            .collect()
    })
}

/// How apply treats a list (structured-merge-diff's element relationship).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

impl<'a> Sch<'a> {
    pub(crate) fn root(node: Option<SchemaNode<'a>>) -> Self {
        Sch::of(node, None, false)
    }

    fn of(node: Option<SchemaNode<'a>>, field: Option<Field<'a>>, atomic_map: bool) -> Self {
        let atomic = atomic_map || node.is_some_and(|n| atomic_structs().contains(&addr(n.raw())));
        Sch {
            node,
            field,
            atomic,
        }
    }

    /// The schema of a key of an object: a declared property, else the map
    /// value schema, else nothing.
    pub(crate) fn child(&self, key: &str) -> Sch<'a> {
        let Some(node) = self.node else {
            return Sch::default();
        };
        if let Some(f) = node.field(key) {
            let atomic_map = atomic_maps().contains(&(addr(node.raw()), key));
            return Sch::of(Some(f.schema), Some(f), atomic_map);
        }
        Sch::of(node.additional_properties(), None, false)
    }

    pub(crate) fn items(&self) -> Sch<'a> {
        Sch::of(self.node.and_then(|n| n.items()), None, false)
    }

    /// Whether `key` is a member of a map (its own field-set member) rather
    /// than a named field of a struct.
    pub(crate) fn is_map_key(&self, key: &str) -> bool {
        let Some(node) = self.node else { return false };
        match node.properties() {
            Some(props) => !props.contains_key(key),
            None => node.additional_properties().is_some(),
        }
    }

    /// Whether this is a map (`additionalProperties`, no properties).
    pub(crate) fn is_map(&self) -> bool {
        self.node
            .is_some_and(|n| n.properties().is_none() && n.additional_properties().is_some())
    }

    fn ext(&self, key: &str) -> Option<&'a Value> {
        self.node.and_then(|n| n.raw().get(key))
    }

    fn ext_str(&self, key: &str) -> Option<&'a str> {
        self.ext(key).and_then(Value::as_str)
    }

    pub(crate) fn patch_strategy(&self) -> Option<&'a str> {
        match self.field {
            Some(f) => f.patch_strategy(),
            None => self.ext_str("x-kubernetes-patch-strategy"),
        }
    }

    pub(crate) fn has_strategy(&self, name: &str) -> bool {
        self.patch_strategy()
            .is_some_and(|s| s.split(',').any(|p| p.trim() == name))
    }

    pub(crate) fn merge_key(&self) -> Option<&'a str> {
        match self.field {
            Some(f) => f.patch_merge_key(),
            None => self.ext_str("x-kubernetes-patch-merge-key"),
        }
    }

    pub(crate) fn list_type(&self) -> Option<&'a str> {
        match self.field {
            Some(f) => f.list_type(),
            None => self.ext_str("x-kubernetes-list-type"),
        }
    }

    pub(crate) fn list_map_keys(&self) -> Vec<&'a str> {
        match self.field {
            Some(f) => f.list_map_keys(),
            None => self
                .ext("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn map_type(&self) -> Option<&'a str> {
        let declared = match self.field {
            Some(f) => f.map_type(),
            None => self.ext_str("x-kubernetes-map-type"),
        };
        declared.or(self.atomic.then_some("atomic"))
    }

    /// The merge key strategic merge uses: the declared one, else the
    /// first list map key.
    pub(crate) fn smp_merge_key(&self) -> Option<&'a str> {
        self.merge_key()
            .or_else(|| self.list_map_keys().first().copied())
    }

    /// The list type apply uses, as upstream converts OpenAPI to
    /// structured-merge-diff schemas: `x-kubernetes-list-type` first, then
    /// a `merge` patch strategy (keyed by the merge key, or a set), else
    /// atomic.
    pub(crate) fn list_kind(&self) -> ListKind {
        match self.list_type() {
            Some("atomic") => ListKind::Atomic,
            Some("set") => ListKind::Set,
            Some("map") => {
                let mut keys: Vec<String> =
                    self.list_map_keys().into_iter().map(String::from).collect();
                if keys.is_empty() {
                    keys.extend(self.merge_key().map(String::from));
                }
                if keys.is_empty() {
                    ListKind::Set
                } else {
                    ListKind::Map(keys)
                }
            }
            _ => match self.patch_strategy() {
                Some("merge") | Some("merge,retainKeys") => match self.merge_key() {
                    Some(k) => ListKind::Map(vec![k.to_string()]),
                    None => ListKind::Set,
                },
                _ => ListKind::Atomic,
            },
        }
    }
}

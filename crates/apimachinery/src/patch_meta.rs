//! Patch strategy metadata of built-in types: what upstream declares with
//! `patchStrategy`, `patchMergeKey`, `listType` and `listMapKeys` struct
//! tags. The typed model lacks it; [`crate::schema`] adds it to the
//! OpenAPI definitions, where strategic merge and apply read it.

/// Metadata of one property of one definition.
pub struct PatchMeta {
    pub definition: &'static str,
    pub field: &'static str,
    pub strategy: Option<&'static str>,
    pub merge_key: Option<&'static str>,
    pub list_type: Option<&'static str>,
    pub list_map_keys: &'static [&'static str],
}

const fn merge(definition: &'static str, field: &'static str, key: &'static str) -> PatchMeta {
    PatchMeta {
        definition,
        field,
        strategy: Some("merge"),
        merge_key: Some(key),
        list_type: Some("map"),
        list_map_keys: &[],
    }
}

pub static ENTRIES: &[PatchMeta] = &[
    merge("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    merge("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    merge("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    merge("io.k8s.api.core.v1.Container", "env", "name"),
    merge("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    merge("io.k8s.api.core.v1.Container", "volumeMounts", "mountPath"),
];

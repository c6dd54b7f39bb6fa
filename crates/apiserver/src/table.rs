//! Server-side `Table` and `PartialObjectMetadata` responses, which kubectl
//! asks for on `get`.

use kobune_apimachinery::printers;
use kobune_apimachinery::ResourceInfo;
use serde_json::{json, Value};

pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("Object") => Ok(IncludeObject::Object),
            Some("None") => Ok(IncludeObject::None),
            Some(o) => Err(format!("includeObject: Unsupported value: {o:?}: supported values: \"None\", \"Metadata\", \"Object\"")),
        }
    }
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

pub fn table(
    info: &ResourceInfo,
    objs: &[Value],
    include: IncludeObject,
    list_meta: Value,
) -> Value {
    let now = chrono::Utc::now();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": printers::cells(info, o, now)});
            match include {
                IncludeObject::Metadata => row["object"] = partial_metadata(o),
                IncludeObject::Object => row["object"] = o.clone(),
                IncludeObject::None => {}
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": printers::column_definitions(info),
        "rows": rows,
    })
}

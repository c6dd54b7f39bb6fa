//! The OpenAPI v2 document as protobuf: gnostic's `openapi.v2.Document`,
//! which client-go's discovery asks for with `Accept:
//! application/com.github.proto-openapi.spec.v2@v1.0+protobuf` and which
//! kubectl's client-side validation parses. Only the messages and fields
//! kobune's documents use are defined; field numbers follow gnostic's
//! `openapiv2/OpenAPIv2.proto`. Values without a fixed shape (defaults,
//! enums, examples, vendor extensions) travel as `Any { yaml }`.

// Oneof variants are whole messages, as in prost-build's generated code;
// they are built once per document generation, so their size is no concern.
#![allow(clippy::large_enum_variant)]

use prost::Message;
use serde_json::{Map, Value};

/// The Content-Type of the answer. Clients ask with the `@v1.0` spelling,
/// but `@` is not a token character, so Go's `mime.ParseMediaType` (which
/// client-go runs on the reply) rejects it: upstream answers with `.v1.0`.
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an Accept header asks for the protobuf v2 document.
pub fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').any(|alt| {
        let t = alt.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case(MEDIA_TYPE)
            || t.eq_ignore_ascii_case("application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    })
}

#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(string, tag = "3")]
    pub host: String,
    #[prost(string, tag = "4")]
    pub base_path: String,
    #[prost(string, repeated, tag = "5")]
    pub schemes: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    pub consumes: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub produces: Vec<String>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
    #[prost(message, repeated, tag = "16")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(message, repeated, tag = "7")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "1")]
    pub vendor_extension: Vec<NamedAny>,
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    #[prost(message, optional, tag = "6")]
    pub options: Option<Operation>,
    #[prost(message, optional, tag = "7")]
    pub head: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
    #[prost(message, repeated, tag = "9")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "10")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, repeated, tag = "1")]
    pub tags: Vec<String>,
    #[prost(string, tag = "2")]
    pub summary: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(string, repeated, tag = "10")]
    pub schemes: Vec<String>,
    #[prost(bool, tag = "11")]
    pub deprecated: bool,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(oneof = "parameters_item::Oneof", tags = "1, 2")]
    pub oneof: Option<parameters_item::Oneof>,
}

pub mod parameters_item {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        Parameter(super::Parameter),
        #[prost(message, tag = "2")]
        JsonReference(super::JsonReference),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct JsonReference {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "2")]
    pub description: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(oneof = "parameter::Oneof", tags = "1, 2")]
    pub oneof: Option<parameter::Oneof>,
}

pub mod parameter {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        BodyParameter(super::BodyParameter),
        #[prost(message, tag = "2")]
        NonBodyParameter(super::NonBodyParameter),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct BodyParameter {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub r#in: String,
    #[prost(bool, tag = "4")]
    pub required: bool,
    #[prost(message, optional, tag = "5")]
    pub schema: Option<Schema>,
    #[prost(message, repeated, tag = "6")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(oneof = "non_body_parameter::Oneof", tags = "1, 3, 4")]
    pub oneof: Option<non_body_parameter::Oneof>,
}

pub mod non_body_parameter {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        HeaderParameterSubSchema(super::PathParameterSubSchema),
        #[prost(message, tag = "3")]
        QueryParameterSubSchema(super::QueryParameterSubSchema),
        #[prost(message, tag = "4")]
        PathParameterSubSchema(super::PathParameterSubSchema),
    }
}

/// `QueryParameterSubSchema` (query parameters may allow empty values,
/// which shifts the later field numbers by one against path and header).
#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(bool, tag = "5")]
    pub allow_empty_value: bool,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(string, tag = "7")]
    pub format: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
    #[prost(message, repeated, tag = "21")]
    pub r#enum: Vec<Any>,
    #[prost(message, repeated, tag = "23")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `PathParameterSubSchema`; `HeaderParameterSubSchema` has the same
/// numbering for the fields used here.
#[derive(Clone, PartialEq, Message)]
pub struct PathParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub r#type: String,
    #[prost(string, tag = "6")]
    pub format: String,
    #[prost(bool, tag = "19")]
    pub unique_items: bool,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, repeated, tag = "22")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
    #[prost(message, repeated, tag = "2")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(oneof = "response_value::Oneof", tags = "1, 2")]
    pub oneof: Option<response_value::Oneof>,
}

pub mod response_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        Response(super::Response),
        #[prost(message, tag = "2")]
        JsonReference(super::JsonReference),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<SchemaItem>,
    #[prost(message, repeated, tag = "5")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SchemaItem {
    /// Only the `schema` alternative (1); `file_schema` (2) is unused.
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    #[prost(oneof = "additional_properties_item::Oneof", tags = "1, 2")]
    pub oneof: Option<additional_properties_item::Oneof>,
}

pub mod additional_properties_item {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        Schema(super::Schema),
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ExternalDocs {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(string, tag = "2")]
    pub url: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(double, tag = "6")]
    pub multiple_of: f64,
    #[prost(double, tag = "7")]
    pub maximum: f64,
    #[prost(bool, tag = "8")]
    pub exclusive_maximum: bool,
    #[prost(double, tag = "9")]
    pub minimum: f64,
    #[prost(bool, tag = "10")]
    pub exclusive_minimum: bool,
    #[prost(int64, tag = "11")]
    pub max_length: i64,
    #[prost(int64, tag = "12")]
    pub min_length: i64,
    #[prost(string, tag = "13")]
    pub pattern: String,
    #[prost(int64, tag = "14")]
    pub max_items: i64,
    #[prost(int64, tag = "15")]
    pub min_items: i64,
    #[prost(bool, tag = "16")]
    pub unique_items: bool,
    #[prost(int64, tag = "17")]
    pub max_properties: i64,
    #[prost(int64, tag = "18")]
    pub min_properties: i64,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(string, tag = "26")]
    pub discriminator: String,
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    #[prost(message, optional, tag = "29")]
    pub external_docs: Option<ExternalDocs>,
    #[prost(message, optional, tag = "30")]
    pub example: Option<Any>,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// A value as gnostic carries it: YAML text.
fn any(v: &Value) -> Any {
    let yaml = serde_yaml::to_string(v).unwrap_or_else(|_| v.to_string());
    Any { yaml }
}

fn text(m: &Map<String, Value>, k: &str) -> String {
    m.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn flag(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn float(m: &Map<String, Value>, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn int(m: &Map<String, Value>, k: &str) -> i64 {
    m.get(k).and_then(Value::as_i64).unwrap_or(0)
}

fn strings(m: &Map<String, Value>, k: &str) -> Vec<String> {
    match m.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![],
    }
}

fn anys(m: &Map<String, Value>, k: &str) -> Vec<Any> {
    match m.get(k) {
        Some(Value::Array(a)) => a.iter().map(any).collect(),
        _ => vec![],
    }
}

/// The `x-` keys of an object, in order.
fn extensions(m: &Map<String, Value>) -> Vec<NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

fn named_schemas(v: Option<&Value>) -> Vec<NamedSchema> {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(name, s)| NamedSchema {
                name: name.clone(),
                value: Some(schema(s)),
            })
            .collect(),
        _ => vec![],
    }
}

/// Converts a JSON schema object; keys outside Swagger 2.0's schema
/// (oneOf, anyOf, nullable...) are dropped, as kube-apiserver drops them.
pub fn schema(v: &Value) -> Schema {
    let empty = Map::new();
    let m = v.as_object().unwrap_or(&empty);
    let additional_properties = match m.get("additionalProperties") {
        Some(Value::Bool(b)) => Some(additional_properties_item::Oneof::Boolean(*b)),
        Some(s @ Value::Object(_)) => Some(additional_properties_item::Oneof::Schema(schema(s))),
        _ => None,
    }
    .map(|o| Box::new(AdditionalPropertiesItem { oneof: Some(o) }));
    let items = match m.get("items") {
        Some(Value::Array(a)) => Some(ItemsItem {
            schema: a.iter().map(schema).collect(),
        }),
        Some(s @ Value::Object(_)) => Some(ItemsItem {
            schema: vec![schema(s)],
        }),
        _ => None,
    };
    let all_of = match m.get("allOf") {
        Some(Value::Array(a)) => a.iter().map(schema).collect(),
        _ => vec![],
    };
    let external_docs = m
        .get("externalDocs")
        .and_then(Value::as_object)
        .map(|d| ExternalDocs {
            description: text(d, "description"),
            url: text(d, "url"),
        });
    Schema {
        r#ref: text(m, "$ref"),
        format: text(m, "format"),
        title: text(m, "title"),
        description: text(m, "description"),
        default: m.get("default").map(any),
        multiple_of: float(m, "multipleOf"),
        maximum: float(m, "maximum"),
        exclusive_maximum: flag(m, "exclusiveMaximum"),
        minimum: float(m, "minimum"),
        exclusive_minimum: flag(m, "exclusiveMinimum"),
        max_length: int(m, "maxLength"),
        min_length: int(m, "minLength"),
        pattern: text(m, "pattern"),
        max_items: int(m, "maxItems"),
        min_items: int(m, "minItems"),
        unique_items: flag(m, "uniqueItems"),
        max_properties: int(m, "maxProperties"),
        min_properties: int(m, "minProperties"),
        required: strings(m, "required"),
        r#enum: anys(m, "enum"),
        additional_properties,
        r#type: m.contains_key("type").then(|| TypeItem {
            value: strings(m, "type"),
        }),
        items,
        all_of,
        properties: m.get("properties").map(|p| Properties {
            additional_properties: named_schemas(Some(p)),
        }),
        discriminator: text(m, "discriminator"),
        read_only: flag(m, "readOnly"),
        external_docs,
        example: m.get("example").map(any),
        vendor_extension: extensions(m),
    }
}

fn parameter(v: &Value) -> ParametersItem {
    let empty = Map::new();
    let m = v.as_object().unwrap_or(&empty);
    let oneof = if m.contains_key("$ref") {
        parameters_item::Oneof::JsonReference(JsonReference {
            r#ref: text(m, "$ref"),
            description: text(m, "description"),
        })
    } else {
        let p = match text(m, "in").as_str() {
            "body" => parameter::Oneof::BodyParameter(BodyParameter {
                description: text(m, "description"),
                name: text(m, "name"),
                r#in: "body".into(),
                required: flag(m, "required"),
                schema: m.get("schema").map(schema),
                vendor_extension: extensions(m),
            }),
            "query" => parameter::Oneof::NonBodyParameter(NonBodyParameter {
                oneof: Some(non_body_parameter::Oneof::QueryParameterSubSchema(
                    QueryParameterSubSchema {
                        required: flag(m, "required"),
                        r#in: "query".into(),
                        description: text(m, "description"),
                        name: text(m, "name"),
                        allow_empty_value: flag(m, "allowEmptyValue"),
                        r#type: text(m, "type"),
                        format: text(m, "format"),
                        unique_items: flag(m, "uniqueItems"),
                        r#enum: anys(m, "enum"),
                        vendor_extension: extensions(m),
                    },
                )),
            }),
            place => {
                let sub = PathParameterSubSchema {
                    required: flag(m, "required"),
                    r#in: place.to_string(),
                    description: text(m, "description"),
                    name: text(m, "name"),
                    r#type: text(m, "type"),
                    format: text(m, "format"),
                    unique_items: flag(m, "uniqueItems"),
                    r#enum: anys(m, "enum"),
                    vendor_extension: extensions(m),
                };
                let o = if place == "header" {
                    non_body_parameter::Oneof::HeaderParameterSubSchema(sub)
                } else {
                    non_body_parameter::Oneof::PathParameterSubSchema(sub)
                };
                parameter::Oneof::NonBodyParameter(NonBodyParameter { oneof: Some(o) })
            }
        };
        parameters_item::Oneof::Parameter(Parameter { oneof: Some(p) })
    };
    ParametersItem { oneof: Some(oneof) }
}

fn parameters(m: &Map<String, Value>) -> Vec<ParametersItem> {
    match m.get("parameters") {
        Some(Value::Array(a)) => a.iter().map(parameter).collect(),
        _ => vec![],
    }
}

fn operation(v: &Value) -> Operation {
    let empty = Map::new();
    let m = v.as_object().unwrap_or(&empty);
    let responses = m.get("responses").and_then(Value::as_object).map(|r| {
        let response_code = r
            .iter()
            .filter(|(k, _)| !k.starts_with("x-"))
            .map(|(code, v)| {
                let rm = v.as_object().unwrap_or(&empty);
                let oneof = if rm.contains_key("$ref") {
                    response_value::Oneof::JsonReference(JsonReference {
                        r#ref: text(rm, "$ref"),
                        description: text(rm, "description"),
                    })
                } else {
                    response_value::Oneof::Response(Response {
                        description: text(rm, "description"),
                        schema: rm.get("schema").map(|s| SchemaItem {
                            schema: Some(schema(s)),
                        }),
                        vendor_extension: extensions(rm),
                    })
                };
                NamedResponseValue {
                    name: code.clone(),
                    value: Some(ResponseValue { oneof: Some(oneof) }),
                }
            })
            .collect();
        Responses {
            response_code,
            vendor_extension: extensions(r),
        }
    });
    Operation {
        tags: strings(m, "tags"),
        summary: text(m, "summary"),
        description: text(m, "description"),
        operation_id: text(m, "operationId"),
        produces: strings(m, "produces"),
        consumes: strings(m, "consumes"),
        parameters: parameters(m),
        responses,
        schemes: strings(m, "schemes"),
        deprecated: flag(m, "deprecated"),
        vendor_extension: extensions(m),
    }
}

fn path_item(v: &Value) -> PathItem {
    let empty = Map::new();
    let m = v.as_object().unwrap_or(&empty);
    let op = |k: &str| m.get(k).map(operation);
    PathItem {
        r#ref: text(m, "$ref"),
        get: op("get"),
        put: op("put"),
        post: op("post"),
        delete: op("delete"),
        options: op("options"),
        head: op("head"),
        patch: op("patch"),
        parameters: parameters(m),
        vendor_extension: extensions(m),
    }
}

/// Converts a Swagger 2.0 JSON document.
pub fn document(v: &Value) -> Document {
    let empty = Map::new();
    let m = v.as_object().unwrap_or(&empty);
    let info = m.get("info").and_then(Value::as_object).map(|i| Info {
        title: text(i, "title"),
        version: text(i, "version"),
        description: text(i, "description"),
        vendor_extension: extensions(i),
    });
    let paths = m.get("paths").and_then(Value::as_object).map(|p| Paths {
        vendor_extension: extensions(p),
        path: p
            .iter()
            .filter(|(k, _)| !k.starts_with("x-"))
            .map(|(name, item)| NamedPathItem {
                name: name.clone(),
                value: Some(path_item(item)),
            })
            .collect(),
    });
    Document {
        swagger: text(m, "swagger"),
        info,
        host: text(m, "host"),
        base_path: text(m, "basePath"),
        schemes: strings(m, "schemes"),
        consumes: strings(m, "consumes"),
        produces: strings(m, "produces"),
        paths,
        definitions: m.get("definitions").map(|d| Definitions {
            additional_properties: named_schemas(Some(d)),
        }),
        vendor_extension: extensions(m),
    }
}

/// The protobuf bytes of a Swagger 2.0 JSON document.
pub fn encode(v: &Value) -> Vec<u8> {
    document(v).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_schema_shapes() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": {"/api/v1/namespaces/{namespace}/configmaps": {"post": {
                "operationId": "createConfigMapv1",
                "parameters": [{"name": "fieldValidation", "in": "query", "type": "string"}],
                "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/cm"}}},
                "x-kubernetes-action": "post",
            }}},
            "definitions": {"cm": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {"type": "object", "additionalProperties": {"type": "string"}},
                    "list": {"type": "array", "items": {"$ref": "#/definitions/x"},
                             "x-kubernetes-patch-merge-key": "name"},
                    "open": {"type": "object", "additionalProperties": true},
                    "n": {"type": "integer", "format": "int32", "minimum": 1.0, "enum": [1, 2]},
                },
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}],
            }},
        });
        let bytes = encode(&doc);
        let back = Document::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back.swagger, "2.0");
        assert_eq!(back.info.as_ref().unwrap().version, "v1.33.0");
        let p = &back.paths.as_ref().unwrap().path[0];
        let post = p.value.as_ref().unwrap().post.as_ref().unwrap();
        assert_eq!(post.operation_id, "createConfigMapv1");
        let Some(parameters_item::Oneof::Parameter(Parameter {
            oneof: Some(parameter::Oneof::NonBodyParameter(nb)),
        })) = &post.parameters[0].oneof
        else {
            panic!("query parameter expected");
        };
        let Some(non_body_parameter::Oneof::QueryParameterSubSchema(q)) = &nb.oneof else {
            panic!("query parameter expected");
        };
        assert_eq!(
            (q.name.as_str(), q.r#type.as_str()),
            ("fieldValidation", "string")
        );
        let cm = &back.definitions.as_ref().unwrap().additional_properties[0];
        let s = cm.value.as_ref().unwrap();
        assert_eq!(s.required, vec!["data"]);
        let props = &s.properties.as_ref().unwrap().additional_properties;
        let get = |n: &str| {
            props
                .iter()
                .find(|p| p.name == n)
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        match get("data").additional_properties.unwrap().oneof {
            Some(additional_properties_item::Oneof::Schema(s)) => {
                assert_eq!(s.r#type.unwrap().value, vec!["string"])
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            get("open").additional_properties.unwrap().oneof,
            Some(additional_properties_item::Oneof::Boolean(true))
        );
        let list = get("list");
        assert_eq!(list.items.unwrap().schema[0].r#ref, "#/definitions/x");
        assert_eq!(
            list.vendor_extension[0].name,
            "x-kubernetes-patch-merge-key"
        );
        let n = get("n");
        assert_eq!((n.format.as_str(), n.minimum), ("int32", 1.0));
        assert_eq!(n.r#enum.len(), 2);
        let ext = &s.vendor_extension[0];
        assert_eq!(ext.name, "x-kubernetes-group-version-kind");
        let gvk: Value = serde_yaml::from_str(&ext.value.as_ref().unwrap().yaml).unwrap();
        assert_eq!(gvk[0]["kind"], "ConfigMap");
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(wants_protobuf(
            "application/json;q=0.5, application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
        ));
        assert!(!wants_protobuf("application/json"));
        assert!(!wants_protobuf(""));
    }
}

//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! kubectl's `create configmap|secret|namespace|deployment|...`, `autoscale`,
//! `create token`, `auth can-i` and some deletes send them. A body is the
//! magic `k8s\0` followed by a `runtime.Unknown` envelope whose `raw` field
//! holds the object message; [`decode`] turns that object into the JSON
//! kubectl would have sent instead.
//!
//! The object is decoded generically from a table of every Kubernetes
//! message ([`schema`], generated from the k8s-pb 0.9 message definitions
//! for the field tags and k8s-openapi for the JSON field names): each field
//! knows its tag, JSON name and type. A few well-known messages are mapped to
//! their JSON forms (Time, MicroTime, Duration, IntOrString, Quantity, raw
//! JSON, string lists). Go's protobuf encoder writes non-pointer fields even
//! when empty, so empty strings and empty messages are left out, as the JSON
//! encoder's `omitempty` would.

#[rustfmt::skip]
mod schema;

use base64::Engine as _;
use kobune_apimachinery::ApiError;
use prost::Message as _;
use serde_json::{Map, Value};

const MAGIC: &[u8] = b"k8s\0";
/// Deeper nesting than any real object; stops hostile input from
/// exhausting the stack through recursive message types.
const MAX_DEPTH: usize = 100;

pub(crate) struct Message {
    name: &'static str,
    special: Special,
    fields: &'static [Field],
}

pub(crate) struct Field {
    tag: u32,
    /// The JSON name; empty for a Go embedded struct, whose fields are
    /// inlined into the parent.
    json: &'static str,
    ty: Ty,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Single,
    Repeated,
    Map,
}

pub(crate) enum Ty {
    Scalar(Scalar),
    Message(u16),
    /// A map entry: key type, value type.
    Map(Scalar, &'static Ty),
}

// Kubernetes messages use only some of the protobuf scalar types.
#[allow(dead_code)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Double,
    Float,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    Time,
    MicroTime,
    Duration,
    IntOrString,
    Quantity,
    /// `raw` bytes holding JSON (RawExtension, FieldsV1, apiextensions JSON).
    Raw,
    /// A Go string slice wrapped in a message (`ExtraValue`, `Verbs`).
    Items,
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    decode_at(bytes, 0)
}

/// Decodes an envelope found `depth` messages deep (embedded objects nest).
fn decode_at(bytes: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(malformed("nesting too deep"));
    }
    let Some(envelope) = bytes.strip_prefix(MAGIC) else {
        return Err(ApiError::bad_request(
            "protobuf body does not start with the k8s envelope magic",
        ));
    };
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(envelope)
        .map_err(|e| ApiError::bad_request(format!("malformed protobuf envelope: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if let Some(encoding) = unknown
        .content_encoding
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "protobuf bodies with content encoding {encoding:?} are not supported; send JSON"
            ),
        ));
    }
    let Some(index) = lookup(&api_version, &kind) else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("protobuf bodies for {kind} {api_version} are not supported; send JSON"),
        ));
    };
    let raw = unknown.raw.unwrap_or_default();
    let mut object = Map::new();
    object.insert("kind".into(), Value::String(kind));
    object.insert("apiVersion".into(), Value::String(api_version));
    decode_fields(&raw, &schema::MESSAGES[index], &mut object, depth)?;
    tidy_top_level(&mut object);
    Ok(Value::Object(object))
}

/// The message for an `apiVersion` and `kind`. The option kinds
/// (`DeleteOptions`, ...) are registered in every group version.
fn lookup(api_version: &str, kind: &str) -> Option<usize> {
    let find = |av: &str| {
        schema::KINDS
            .binary_search_by(|(v, k, _)| (*v, *k).cmp(&(av, kind)))
            .ok()
            .map(|i| schema::KINDS[i].2 as usize)
    };
    find(api_version).or_else(|| {
        const META_KINDS: &[&str] = &[
            "DeleteOptions",
            "CreateOptions",
            "PatchOptions",
            "UpdateOptions",
            "GetOptions",
            "ListOptions",
        ];
        META_KINDS
            .contains(&kind)
            .then(|| find("meta.k8s.io/v1"))
            .flatten()
    })
}

/// Drops what the Go JSON encoder would have left out at the top level
/// but protobuf always carries: a zero `metadata.generation` and a status
/// with nothing but zero values in it.
fn tidy_top_level(object: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        if meta.get("generation").and_then(Value::as_i64) == Some(0) {
            meta.remove("generation");
        }
        if meta.is_empty() {
            object.remove("metadata");
        }
    }
    if object.get("status").is_some_and(is_zero) {
        object.remove("status");
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

fn malformed(what: &str) -> ApiError {
    ApiError::bad_request(format!("malformed protobuf body: {what}"))
}

/// A protobuf wire-format reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

/// One field's value as it appears on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(malformed("truncated varint"));
            };
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(malformed("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field: its number and value.
    fn field(&mut self) -> Result<(u32, Wire<'a>), ApiError> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| malformed("field number out of range"))?;
        if tag == 0 {
            return Err(malformed("field number 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed("length"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(malformed(&format!("unsupported wire type {other}"))),
        };
        Ok((tag, wire))
    }
}

/// Decodes the fields of one message into `out` (which an embedded Go
/// struct shares with its parent).
fn decode_fields(
    bytes: &[u8],
    message: &'static Message,
    out: &mut Map<String, Value>,
    depth: usize,
) -> Result<(), ApiError> {
    if depth > MAX_DEPTH {
        return Err(malformed("nesting too deep"));
    }
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (tag, wire) = reader.field()?;
        let Some(field) = message.fields.iter().find(|f| f.tag == tag) else {
            continue; // unknown fields are skipped, as Go does
        };
        match (field.kind, &field.ty) {
            (Kind::Map, Ty::Map(key_ty, value_ty)) => {
                let Wire::Bytes(entry) = wire else {
                    return Err(wrong_wire(message, field));
                };
                let (key, value) = decode_map_entry(entry, *key_ty, value_ty, depth)?;
                let map = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = map {
                    map.insert(key, value);
                }
            }
            (Kind::Repeated, Ty::Scalar(scalar)) => {
                let mut values = Vec::new();
                match wire {
                    // Packed numbers.
                    Wire::Bytes(packed) if !matches!(scalar, Scalar::String | Scalar::Bytes) => {
                        let mut packed = Reader::new(packed);
                        while !packed.is_empty() {
                            let wire = match scalar {
                                Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => {
                                    Wire::Fixed64(u64::from_le_bytes(
                                        packed.take(8)?.try_into().expect("8 bytes"),
                                    ))
                                }
                                Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => {
                                    Wire::Fixed32(u32::from_le_bytes(
                                        packed.take(4)?.try_into().expect("4 bytes"),
                                    ))
                                }
                                _ => Wire::Varint(packed.varint()?),
                            };
                            values.push(scalar_value(*scalar, wire, message, field)?);
                        }
                    }
                    wire => values.push(scalar_value(*scalar, wire, message, field)?),
                }
                push_all(out, field.json, values);
            }
            (Kind::Repeated, Ty::Message(index)) => {
                let Wire::Bytes(bytes) = wire else {
                    return Err(wrong_wire(message, field));
                };
                let value = message_value(bytes, *index, depth + 1)?.unwrap_or(Value::Null);
                push_all(out, field.json, vec![value]);
            }
            (_, Ty::Scalar(scalar)) => {
                let value = scalar_value(*scalar, wire, message, field)?;
                if value.as_str() == Some("") {
                    out.remove(field.json);
                } else {
                    out.insert(field.json.to_string(), value);
                }
            }
            (_, Ty::Message(index)) => {
                let Wire::Bytes(bytes) = wire else {
                    return Err(wrong_wire(message, field));
                };
                if field.json.is_empty() {
                    decode_fields(bytes, &schema::MESSAGES[*index as usize], out, depth + 1)?;
                } else {
                    match message_value(bytes, *index, depth + 1)? {
                        Some(value) => {
                            out.insert(field.json.to_string(), value);
                        }
                        None => {
                            out.remove(field.json);
                        }
                    }
                }
            }
            (_, Ty::Map(..)) => return Err(wrong_wire(message, field)),
        }
    }
    Ok(())
}

fn push_all(out: &mut Map<String, Value>, name: &str, values: Vec<Value>) {
    let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.extend(values);
    }
}

fn wrong_wire(message: &Message, field: &Field) -> ApiError {
    malformed(&format!(
        "wrong wire type for {}.{}",
        message.name, field.json
    ))
}

fn decode_map_entry(
    entry: &[u8],
    key_ty: Scalar,
    value_ty: &Ty,
    depth: usize,
) -> Result<(String, Value), ApiError> {
    let mut key = String::new();
    let mut value = None;
    let mut reader = Reader::new(entry);
    while !reader.is_empty() {
        let (tag, wire) = reader.field()?;
        match tag {
            1 => {
                key = match scalar_json(key_ty, wire)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            2 => {
                value = Some(match value_ty {
                    Ty::Scalar(scalar) => scalar_json(*scalar, wire)?,
                    Ty::Message(index) => {
                        let Wire::Bytes(bytes) = wire else {
                            return Err(malformed("map value is not a message"));
                        };
                        message_value(bytes, *index, depth + 1)?.unwrap_or(Value::Null)
                    }
                    Ty::Map(..) => return Err(malformed("nested map")),
                })
            }
            _ => {}
        }
    }
    // A missing value is the type's zero value.
    let value = value.unwrap_or_else(|| match value_ty {
        Ty::Scalar(Scalar::String | Scalar::Bytes) => Value::String(String::new()),
        Ty::Scalar(Scalar::Bool) => Value::Bool(false),
        Ty::Scalar(_) => Value::from(0),
        Ty::Message(index) => match schema::MESSAGES[*index as usize].special {
            Special::Quantity => Value::String("0".into()),
            Special::Items => Value::Array(Vec::new()),
            _ => Value::Object(Map::new()),
        },
        Ty::Map(..) => Value::Null,
    });
    Ok((key, value))
}

fn scalar_value(
    scalar: Scalar,
    wire: Wire<'_>,
    message: &Message,
    field: &Field,
) -> Result<Value, ApiError> {
    scalar_json(scalar, wire).map_err(|_| wrong_wire(message, field))
}

/// One scalar as JSON; bytes are base64 as in Go's JSON encoding.
fn scalar_json(scalar: Scalar, wire: Wire<'_>) -> Result<Value, ApiError> {
    let value = match (scalar, wire) {
        (Scalar::String, Wire::Bytes(b)) => Value::String(
            std::str::from_utf8(b)
                .map_err(|_| malformed("string is not UTF-8"))?
                .to_string(),
        ),
        (Scalar::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Scalar::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Scalar::Int32, Wire::Varint(v)) => Value::from(v as i64 as i32),
        (Scalar::Int64, Wire::Varint(v)) => Value::from(v as i64),
        (Scalar::Uint32, Wire::Varint(v)) => Value::from(v as u32),
        (Scalar::Uint64, Wire::Varint(v)) => Value::from(v),
        (Scalar::Sint32, Wire::Varint(v)) => Value::from(zigzag(v) as i32),
        (Scalar::Sint64, Wire::Varint(v)) => Value::from(zigzag(v)),
        (Scalar::Fixed32, Wire::Fixed32(v)) => Value::from(v),
        (Scalar::Sfixed32, Wire::Fixed32(v)) => Value::from(v as i32),
        (Scalar::Float, Wire::Fixed32(v)) => float(f64::from(f32::from_bits(v))),
        (Scalar::Fixed64, Wire::Fixed64(v)) => Value::from(v),
        (Scalar::Sfixed64, Wire::Fixed64(v)) => Value::from(v as i64),
        (Scalar::Double, Wire::Fixed64(v)) => float(f64::from_bits(v)),
        _ => return Err(malformed("wrong wire type")),
    };
    Ok(value)
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A message as JSON, or `None` when it is empty (and so would have been
/// omitted from JSON).
fn message_value(bytes: &[u8], index: u16, depth: usize) -> Result<Option<Value>, ApiError> {
    let message = schema::MESSAGES
        .get(index as usize)
        .ok_or_else(|| malformed("bad schema index"))?;
    if depth > MAX_DEPTH {
        return Err(malformed("nesting too deep"));
    }
    let value = match message.special {
        Special::None => {
            let mut map = Map::new();
            decode_fields(bytes, message, &mut map, depth)?;
            if map.is_empty() {
                return Ok(None);
            }
            Value::Object(map)
        }
        Special::Time | Special::MicroTime => {
            if bytes.is_empty() {
                return Ok(None); // Go's zero time
            }
            let (seconds, nanos) = seconds_nanos(bytes)?;
            let time =
                chrono::DateTime::from_timestamp(seconds, nanos.clamp(0, 999_999_999) as u32)
                    .ok_or_else(|| malformed("time out of range"))?;
            let format = if message.special == Special::Time {
                "%Y-%m-%dT%H:%M:%SZ"
            } else {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            };
            Value::String(time.format(format).to_string())
        }
        Special::Duration => {
            let mut nanos = 0i64;
            let mut reader = Reader::new(bytes);
            while !reader.is_empty() {
                if let (1, Wire::Varint(v)) = reader.field()? {
                    nanos = v as i64;
                }
            }
            Value::String(go_duration(nanos))
        }
        Special::IntOrString => {
            let (mut kind, mut int_val, mut str_val) = (0u64, 0i32, String::new());
            let mut reader = Reader::new(bytes);
            while !reader.is_empty() {
                match reader.field()? {
                    (1, Wire::Varint(v)) => kind = v,
                    (2, Wire::Varint(v)) => int_val = v as i64 as i32,
                    (3, wire @ Wire::Bytes(_)) => {
                        if let Value::String(s) = scalar_json(Scalar::String, wire)? {
                            str_val = s;
                        }
                    }
                    _ => {}
                }
            }
            if kind == 1 {
                Value::String(str_val)
            } else {
                Value::from(int_val)
            }
        }
        Special::Quantity => {
            let mut text = String::new();
            let mut reader = Reader::new(bytes);
            while !reader.is_empty() {
                if let (1, wire @ Wire::Bytes(_)) = reader.field()? {
                    if let Value::String(s) = scalar_json(Scalar::String, wire)? {
                        text = s;
                    }
                }
            }
            if text.is_empty() {
                text.push('0');
            }
            Value::String(text)
        }
        Special::Raw => {
            let mut raw: &[u8] = &[];
            let mut reader = Reader::new(bytes);
            while !reader.is_empty() {
                if let (1, Wire::Bytes(b)) = reader.field()? {
                    raw = b;
                }
            }
            if raw.is_empty() {
                return Ok(None);
            }
            if raw.starts_with(MAGIC) {
                decode_at(raw, depth + 1)?
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| malformed(&format!("embedded object is not JSON: {e}")))?
            }
        }
        Special::Items => {
            let mut items = Vec::new();
            let mut reader = Reader::new(bytes);
            while !reader.is_empty() {
                if let (1, wire @ Wire::Bytes(_)) = reader.field()? {
                    items.push(scalar_json(Scalar::String, wire)?);
                }
            }
            Value::Array(items)
        }
    };
    Ok(Some(value))
}

fn seconds_nanos(bytes: &[u8]) -> Result<(i64, i32), ApiError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        match reader.field()? {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i64 as i32,
            _ => {}
        }
    }
    Ok((seconds, nanos))
}

/// Formats nanoseconds the way Go's `time.Duration.String` does
/// (`1h2m3.5s`, `150ms`, `0s`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", fraction(n, div));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = n / 60_000_000_000 % 60;
    let secs = fraction(n % 60_000_000_000, 1_000_000_000);
    let mut out = sign.to_string();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

/// `n / div` with the fraction's trailing zeros trimmed.
fn fraction(n: u64, div: u64) -> String {
    let whole = n / div;
    let rest = n % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let frac = format!("{rest:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests;

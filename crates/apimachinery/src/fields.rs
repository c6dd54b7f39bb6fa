//! Decoding request bodies: JSON that remembers duplicate keys (for
//! `fieldValidation=Strict`) and YAML (for apply patches).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

/// A decoded body plus the paths of keys that appeared more than once.
pub struct Decoded {
    pub value: Value,
    pub duplicates: Vec<String>,
}

/// Parses JSON, recording duplicate keys (the last value wins, as upstream).
pub fn decode_json(bytes: &[u8]) -> Result<Decoded, String> {
    let dups = RefCell::new(vec![]);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de::DeserializeSeed::deserialize(
        Seed {
            path: String::new(),
            dups: &dups,
        },
        &mut de,
    )
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(Decoded {
        value,
        duplicates: dups.into_inner(),
    })
}

/// Parses YAML (one document) into JSON values.
pub fn decode_yaml(bytes: &[u8]) -> Result<Value, String> {
    serde_yaml::from_slice::<Value>(bytes).map_err(|e| e.to_string())
}

struct Seed<'a> {
    path: String,
    dups: &'a RefCell<Vec<String>>,
}

impl<'de> de::DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = vec![];
        let mut i = 0;
        while let Some(v) = seq.next_element_seed(Seed {
            path: format!("{}[{i}]", self.path),
            dups: self.dups,
        })? {
            out.push(v);
            i += 1;
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let p = if self.path.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.path)
            };
            let v = map.next_value_seed(Seed {
                path: p.clone(),
                dups: self.dups,
            })?;
            if out.insert(k, v).is_some() {
                self.dups.borrow_mut().push(p);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_duplicates_with_paths() {
        let d = decode_json(br#"{"a":1,"spec":{"replicas":1,"replicas":2},"a":3}"#).unwrap();
        assert_eq!(d.duplicates, vec!["spec.replicas", "a"]);
        assert_eq!(d.value["spec"]["replicas"], 2);
    }

    #[test]
    fn rejects_trailing_garbage() {
        assert!(decode_json(b"{} x").is_err());
        assert!(decode_json(b"{").is_err());
    }
}

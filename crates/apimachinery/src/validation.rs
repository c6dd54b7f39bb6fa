//! Validation of names, labels and the fields users touch, with upstream messages.

use crate::resource::ResourceInfo;
use crate::status::Cause;
use serde_json::Value;

/// Validation causes for an object on create (old None) or update (old Some).
pub fn validate(_info: &ResourceInfo, _obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
    vec![]
}

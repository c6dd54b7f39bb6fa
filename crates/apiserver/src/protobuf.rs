//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! kubectl's `create configmap|secret|namespace|...` send them. Decoding is
//! not implemented yet: such requests get a 415 that says so, rather than a
//! misread object.

use kobune_apimachinery::ApiError;
use serde_json::Value;

const MAGIC: &[u8] = b"k8s\0";

pub fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    if !bytes.starts_with(MAGIC) {
        return Err(ApiError::bad_request("protobuf body does not start with the k8s envelope magic"));
    }
    Err(ApiError::new(
        415,
        "UnsupportedMediaType",
        "kobune does not decode protobuf request bodies yet; send JSON (for example `kubectl create -f` or `kubectl apply -f`)",
    ))
}

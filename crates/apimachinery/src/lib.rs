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

//! Patches: JSON merge (RFC 7386), JSON Patch (RFC 6902), strategic merge
//! and server-side apply.

//! Defaulting of fields users leave out, as upstream does it.

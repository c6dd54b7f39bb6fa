//! Validation of names, labels and the fields users touch, with upstream messages.

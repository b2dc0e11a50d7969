//! The `.mlc` bundle.

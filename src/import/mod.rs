//! Front ends: model formats into mlc's IR.

pub mod onnx;

use std::path::Path;

use crate::emit::bundle;
use crate::{Graph, Result};

/// Loads a model file into the IR: an `.mlc` bundle (recognized by its magic
/// bytes or its extension, see [`bundle::looks_like_bundle`]) or an ONNX
/// model.
pub fn load(path: &Path) -> Result<Graph> {
    if bundle::looks_like_bundle(path) {
        return bundle::read(path).map(|(g, _)| g);
    }
    onnx::load(path)
}

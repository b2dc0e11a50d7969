//! Front ends: model formats into mlc's IR.

pub mod onnx;

use std::path::Path;

use crate::{Graph, Result};

/// Loads a model file into the IR, choosing the importer by extension.
pub fn load(path: &Path) -> Result<Graph> {
    onnx::load(path)
}

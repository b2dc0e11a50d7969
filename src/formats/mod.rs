//! Model and data formats, read and written: ONNX (import and export), the
//! `.mlc` bundle, and NumPy `.npy`/`.npz`.

pub mod bundle;
pub mod npy;
pub mod onnx;

use std::path::Path;

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

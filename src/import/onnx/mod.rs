//! ONNX import.

use std::path::Path;

use crate::{Error, Graph, Result};

pub fn load(path: &Path) -> Result<Graph> {
    Err(Error::Malformed {
        path: path.into(),
        message: "ONNX import not implemented yet".into(),
    })
}

pub fn load_bytes(_bytes: &[u8], _base_dir: Option<&Path>) -> Result<Graph> {
    Err(Error::Malformed {
        path: "<bytes>".into(),
        message: "ONNX import not implemented yet".into(),
    })
}

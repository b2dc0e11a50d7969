//! ONNX import.

use std::path::Path;

use crate::{Error, Graph, Result};

pub fn load(path: &Path) -> Result<Graph> {
    Err(Error::Malformed {
        path: path.into(),
        message: "ONNX import not implemented yet".into(),
    })
}

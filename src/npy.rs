//! NumPy `.npy` / `.npz` reading and writing.
use std::path::Path;

use crate::{Error, Result, Tensor};

pub fn read_npy(path: &Path) -> Result<Tensor> {
    Err(Error::Npy {
        path: path.into(),
        message: "not implemented yet".into(),
    })
}
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Err(Error::Npy {
        path: path.into(),
        message: "not implemented yet".into(),
    })
}
pub fn write_npz(path: &Path, _arrays: &[(String, Tensor)]) -> Result<()> {
    Err(Error::Npy {
        path: path.into(),
        message: "not implemented yet".into(),
    })
}
pub fn write_npy(path: &Path, _t: &Tensor) -> Result<()> {
    Err(Error::Npy {
        path: path.into(),
        message: "not implemented yet".into(),
    })
}

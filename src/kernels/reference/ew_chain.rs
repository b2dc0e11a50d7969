//! Reference kernel for Elementwise chains.

use crate::ir::{Op, Tensor};
use crate::{Error, Result};

pub fn eval(op: &Op, _inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    Err(Error::op(op.onnx_type(), "not implemented yet"))
}

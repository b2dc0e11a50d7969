//! The family's reference kernels, one file per kind: `linalg.rs` (MatMul,
//! Gemm), `conv.rs` (Conv, ConvTranspose), `pool.rs` (the pools) and
//! `resize.rs`.

use super::{conv, linalg, pool, resize};
use crate::ir::ops::util::not_held;
use crate::ir::{Op, Tensor};
use crate::{Error, Result};

/// Evaluates one of the family's ops.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    match op {
        Op::MatMul | Op::Gemm { .. } => linalg::eval(op, inputs),
        Op::Conv(_) | Op::ConvTranspose(_) => conv::eval(op, inputs),
        Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool => {
            pool::eval(op, inputs)
        }
        Op::Resize(_) => resize::eval(op, inputs),
        other => Err(Error::Internal(not_held("nn", other))),
    }
}

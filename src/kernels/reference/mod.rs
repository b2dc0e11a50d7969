//! The reference interpreter's kernels: one plain loop nest per op, written to
//! be obviously correct rather than fast. Floating point computes in f32 (f64
//! stays f64 where an op supports it; f16 is widened and narrowed back).
//!
//! Every kernel takes the node's positional inputs (`None` for an omitted
//! optional input) and returns its outputs in ONNX order.

mod array;
mod conv;
mod elementwise;
mod linalg;
mod norm;
mod pool;
mod reduce;
mod resize;
pub mod util;

use crate::ir::{Op, Tensor};
use crate::Result;

/// Ops that only move, copy or describe elements, which therefore take every
/// dtype, the storage-only ones (float8, float4, 4- and 2-bit integers)
/// included. Cast converts them.
fn takes_storage_only_types(op: &Op) -> bool {
    matches!(
        op,
        Op::Cast { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Slice
            | Op::Gather { .. }
            | Op::Shape { .. }
            | Op::Size
            | Op::ConstantOfShape { .. }
            | Op::Expand
            | Op::Tile
            | Op::Identity
            | Op::Dropout
            | Op::Pad { .. }
    )
}

/// Evaluates one op on concrete inputs. `n_outputs` is the number of outputs
/// the node declares (ops such as Split and Dropout depend on it).
pub fn eval(op: &Op, inputs: &[Option<&Tensor>], n_outputs: usize) -> Result<Vec<Tensor>> {
    if !takes_storage_only_types(op) {
        if let Some(t) = inputs
            .iter()
            .flatten()
            .find(|t| t.dtype().is_storage_only())
        {
            return Err(util::storage_only(op.onnx_type(), t.dtype()));
        }
    }
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::Variadic(_) | Op::Clip | Op::Where | Op::Cast { .. } => {
            elementwise::eval(op, inputs)
        }
        Op::Reduce { .. }
        | Op::ArgMax { .. }
        | Op::ArgMin { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. } => reduce::eval(op, inputs),
        Op::MatMul | Op::Gemm { .. } => linalg::eval(op, inputs),
        Op::Conv(_) | Op::ConvTranspose(_) => conv::eval(op, inputs),
        Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool => {
            pool::eval(op, inputs)
        }
        Op::BatchNormalization { .. }
        | Op::LayerNormalization { .. }
        | Op::InstanceNormalization { .. } => norm::eval(op, inputs),
        Op::Resize(_) => resize::eval(op, inputs),
        Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice
        | Op::Gather { .. }
        | Op::Shape { .. }
        | Op::Size
        | Op::ConstantOfShape { .. }
        | Op::Expand
        | Op::Tile
        | Op::Identity
        | Op::Dropout
        | Op::Pad { .. }
        | Op::Range => array::eval(op, inputs, n_outputs),
    }
}

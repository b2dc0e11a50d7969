//! The reference interpreter's kernels: one plain loop nest per op, written to
//! be obviously correct rather than fast. Floating point computes in f32 (f64
//! stays f64 where an op supports it; f16 is widened and narrowed back).
//!
//! Every kernel takes the node's positional inputs (`None` for an omitted
//! optional input) and returns its outputs in ONNX order.

mod array;
pub(crate) mod conv;
pub(crate) mod elementwise;
mod ew_chain;
mod fused;
mod index;
mod linalg;
mod norm;
mod pool;
pub mod quant;
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
            | Op::GatherElements { .. }
            | Op::GatherND { .. }
            | Op::Shape { .. }
            | Op::Size
            | Op::ConstantOfShape { .. }
            | Op::Expand
            | Op::Tile
            | Op::Identity
            | Op::Dropout
            | Op::Pad { .. }
            | Op::QuantizeLinear { .. }
            | Op::DequantizeLinear { .. }
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
        Op::FusedConv { .. } | Op::FusedMatMul { .. } => fused::eval(op, inputs),
        Op::Elementwise { .. } => ew_chain::eval(op, inputs),
        Op::QConv { .. }
        | Op::QMatMul { .. }
        | Op::QuantizeLinear { .. }
        | Op::DequantizeLinear { .. }
        | Op::DynamicQuantizeLinear => quant::eval(op, inputs),
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Variadic(_)
        | Op::Clip
        | Op::Where
        | Op::Cast { .. }
        | Op::IsNaN
        | Op::IsInf { .. }
        | Op::Shrink { .. } => elementwise::eval(op, inputs),
        Op::GatherElements { .. }
        | Op::ScatterElements { .. }
        | Op::GatherND { .. }
        | Op::ScatterND { .. }
        | Op::CumSum { .. } => index::eval(op, inputs),
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
        | Op::InstanceNormalization { .. }
        | Op::Lrn { .. } => norm::eval(op, inputs),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, ReduceOp, TensorData};

    fn bf16(shape: &[usize], v: &[f32]) -> Tensor {
        let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        Tensor::new(shape.to_vec(), TensorData::from_f64(DType::BF16, &v)).unwrap()
    }

    /// The op on bf16 inputs gives bf16 within bf16 rounding of the op on
    /// the same values in f32.
    fn agrees_with_f32(op: Op, ins: &[Tensor]) {
        let refs: Vec<Option<&Tensor>> = ins.iter().map(Some).collect();
        let got = eval(&op, &refs, 1).unwrap().remove(0);
        assert_eq!(got.dtype(), DType::BF16, "{op:?}");
        let f32s: Vec<Tensor> = ins
            .iter()
            .map(|t| match t.dtype() {
                DType::BF16 => Tensor::from_f32(t.shape().to_vec(), t.to_f32_vec()).unwrap(),
                _ => t.clone(),
            })
            .collect();
        let refs: Vec<Option<&Tensor>> = f32s.iter().map(Some).collect();
        let want = eval(&op, &refs, 1).unwrap().remove(0);
        assert_eq!(got.shape(), want.shape(), "{op:?}");
        for (g, w) in got.to_f32_vec().iter().zip(want.to_f32_vec()) {
            assert!((g - w).abs() <= 1e-2 * w.abs() + 1e-6, "{op:?}: {g} vs {w}");
        }
    }

    #[test]
    fn bf16_through_the_compute_kernels() {
        let x = bf16(
            &[1, 2, 2, 2],
            &[0.5, -1.25, 2.0, 3.5, -0.75, 1.0, 0.125, 4.0],
        );
        agrees_with_f32(
            Op::Softmax {
                axis: -1,
                legacy: false,
                nan_to_zero: false,
            },
            std::slice::from_ref(&x),
        );
        agrees_with_f32(
            Op::Reduce {
                op: ReduceOp::Mean,
                keepdims: true,
                noop_with_empty_axes: false,
            },
            std::slice::from_ref(&x),
        );
        agrees_with_f32(Op::GlobalAveragePool, std::slice::from_ref(&x));
        let m = bf16(&[2, 2], &[1.5, -2.0, 0.25, 3.0]);
        agrees_with_f32(Op::MatMul, &[m.clone(), m.clone()]);
        let s = bf16(&[2], &[1.0, 0.5]);
        let b = bf16(&[2], &[0.0, 0.25]);
        agrees_with_f32(
            Op::LayerNormalization {
                axis: -1,
                epsilon: 1e-5,
            },
            &[m, s, b],
        );
    }

    #[test]
    fn storage_only_types_move_but_do_not_compute() {
        let x = Tensor::new(vec![2, 2], TensorData::I4(vec![-8, 7, 1, -1])).unwrap();
        let y = eval(&Op::Transpose { perm: vec![1, 0] }, &[Some(&x)], 1)
            .unwrap()
            .remove(0);
        assert!(y.data() == &TensorData::I4(vec![-8, 1, 7, -1]));
        let c = eval(&Op::Concat { axis: 0 }, &[Some(&x), Some(&x)], 1)
            .unwrap()
            .remove(0);
        assert_eq!(c.shape(), &[4, 2]);
        assert_eq!(c.to_i64_vec().unwrap()[4..], [-8, 7, 1, -1]);
        let f8 = Tensor::new(vec![2, 2], TensorData::F8E4M3FN(vec![0x38; 4])).unwrap();
        for op in [
            Op::MatMul,
            Op::Softmax {
                axis: -1,
                legacy: false,
                nan_to_zero: false,
            },
            Op::Reduce {
                op: ReduceOp::Sum,
                keepdims: true,
                noop_with_empty_axes: false,
            },
            Op::GlobalMaxPool,
        ] {
            let e = eval(&op, &[Some(&f8), Some(&f8)], 1)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("f8e4m3fn inputs are not supported"),
                "{op:?}: {e}"
            );
        }
    }
}

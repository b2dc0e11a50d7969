//! The ops, by family: each family's folder holds what mlc knows about its
//! ops, in one place: `schema.rs` (name, input count, attributes with their
//! text and ONNX names and defaults), `infer.rs` (type and shape inference)
//! and the reference kernels (`reference.rs`, or several files), the plain
//! loop nests that define what the op computes and that every fast kernel
//! is held to.
//!
//! This file routes an op to its family: [`Op::family`] is the one match
//! over every op (no catch-all), so a new variant fails to build until it
//! names its family; the family's own `def`, `visit`, `infer` and `eval`
//! then match the ops they hold, and an op routed to a family that lacks
//! it is an internal error (`util::not_held`; the routing test walks
//! every prototype through all four). `docs/adding-an-op.md` has the recipe.

pub(crate) mod array;
pub(crate) mod fused;
pub(crate) mod index;
pub(crate) mod math;
pub(crate) mod nn;
pub(crate) mod norm;
pub mod quant;
pub(crate) mod reduce;
pub(crate) mod util;

use crate::ir::infer::ctx::Ctx;
use crate::ir::schema::{Msg, OpDef, Visitor, MANY};
use crate::ir::{Node, Op, Tensor, TensorType};
use crate::Result;

/// The op families, one folder each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Elementwise math: unary (activations included), binary, variadic,
    /// Clip, Where, Cast, IsNaN, IsInf, Shrink.
    Math,
    /// MatMul, Gemm, convolutions, pools, Resize.
    Nn,
    /// BatchNormalization, LayerNormalization, InstanceNormalization, LRN.
    Norm,
    /// Shape and layout ops, Gather among them.
    Array,
    /// Reductions, ArgMax/ArgMin, Softmax/LogSoftmax, Hardmax.
    Reduce,
    /// GatherElements, ScatterElements, GatherND, ScatterND, CumSum.
    Index,
    /// QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QConv,
    /// QMatMul.
    Quant,
    /// mlc's fused ops: FusedConv, FusedMatMul, Elementwise.
    Fused,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 8] = [
        Family::Math,
        Family::Nn,
        Family::Norm,
        Family::Array,
        Family::Reduce,
        Family::Index,
        Family::Quant,
        Family::Fused,
    ];
}

impl Op {
    /// The family that holds this op's schema, inference and reference
    /// kernel: the one exhaustive match that routes an op.
    pub fn family(&self) -> Family {
        match self {
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Variadic(_)
            | Op::Clip
            | Op::Where
            | Op::Cast { .. }
            | Op::IsNaN
            | Op::IsInf { .. }
            | Op::Shrink { .. } => Family::Math,
            Op::MatMul
            | Op::Gemm { .. }
            | Op::Conv(_)
            | Op::ConvTranspose(_)
            | Op::MaxPool(_)
            | Op::AveragePool(_)
            | Op::GlobalAveragePool
            | Op::GlobalMaxPool
            | Op::Resize(_) => Family::Nn,
            Op::BatchNormalization { .. }
            | Op::LayerNormalization { .. }
            | Op::InstanceNormalization { .. }
            | Op::Lrn { .. } => Family::Norm,
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
            | Op::Range => Family::Array,
            Op::Reduce { .. }
            | Op::ArgMax { .. }
            | Op::ArgMin { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Hardmax { .. } => Family::Reduce,
            Op::GatherElements { .. }
            | Op::ScatterElements { .. }
            | Op::GatherND { .. }
            | Op::ScatterND { .. }
            | Op::CumSum { .. } => Family::Index,
            Op::QuantizeLinear { .. }
            | Op::DequantizeLinear { .. }
            | Op::DynamicQuantizeLinear
            | Op::QConv { .. }
            | Op::QMatMul { .. } => Family::Quant,
            Op::FusedConv { .. } | Op::FusedMatMul { .. } | Op::Elementwise { .. } => Family::Fused,
        }
    }

    /// The op's name in ONNX and in the text form (mlc's own ops have
    /// names of their own).
    pub fn onnx_type(&self) -> &'static str {
        def(self).name
    }

    /// How many inputs a node of this op may have (optional inputs counted;
    /// an absent optional input in the middle is a `None` slot).
    pub fn input_count(&self) -> std::ops::RangeInclusive<usize> {
        def(self).inputs
    }
}

/// What an op routed to a family that lacks it is called.
const MISROUTED: &str = "<op routed to the wrong family>";

/// The op's name, input count and whether it is a standard ONNX op, from
/// its family's schema.
pub fn def(op: &Op) -> OpDef {
    let d = match op.family() {
        Family::Math => math::schema::def(op),
        Family::Nn => nn::schema::def(op),
        Family::Norm => norm::schema::def(op),
        Family::Array => array::schema::def(op),
        Family::Reduce => reduce::schema::def(op),
        Family::Index => index::schema::def(op),
        Family::Quant => quant::schema::def(op),
        Family::Fused => fused::schema::def(op),
    };
    d.unwrap_or(OpDef::mlc(MISROUTED, 0..=MANY))
}

/// Walks the attributes of `op` in their canonical order, by its family's
/// schema.
pub fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op.family() {
        Family::Math => math::schema::visit(op, v),
        Family::Nn => nn::schema::visit(op, v),
        Family::Norm => norm::schema::visit(op, v),
        Family::Array => array::schema::visit(op, v),
        Family::Reduce => reduce::schema::visit(op, v),
        Family::Index => index::schema::visit(op, v),
        Family::Quant => quant::schema::visit(op, v),
        Family::Fused => fused::schema::visit(op, v),
    }
}

/// Every op kind once, with placeholder attributes: the table from names to
/// ops. Each family lists its own.
pub fn prototypes() -> Vec<Op> {
    let mut ops = Vec::new();
    for f in Family::ALL {
        ops.extend(match f {
            Family::Math => math::schema::prototypes(),
            Family::Nn => nn::schema::prototypes(),
            Family::Norm => norm::schema::prototypes(),
            Family::Array => array::schema::prototypes(),
            Family::Reduce => reduce::schema::prototypes(),
            Family::Index => index::schema::prototypes(),
            Family::Quant => quant::schema::prototypes(),
            Family::Fused => fused::schema::prototypes(),
        });
    }
    ops
}

/// The output types of `node`, by its op's family.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    match node.op.family() {
        Family::Math => math::infer::infer(cx, node),
        Family::Nn => nn::infer::infer(cx, node),
        Family::Norm => norm::infer::infer(cx, node),
        Family::Array => array::infer::infer(cx, node),
        Family::Reduce => reduce::infer::infer(cx, node),
        Family::Index => index::infer::infer(cx, node),
        Family::Quant => quant::infer::infer(cx, node),
        Family::Fused => fused::infer::infer(cx, node),
    }
}

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

/// Evaluates one op on concrete inputs with its reference kernel (the
/// numerical oracle: plain loop nests, written to be obviously correct
/// rather than fast). Floating point computes in f32 (f64 stays f64 where
/// an op supports it; f16 is widened and narrowed back). `inputs` are the
/// node's positional inputs (`None` for an omitted optional input);
/// `n_outputs` is the number of outputs the node declares (ops such as
/// Split and Dropout depend on it). The outputs come in ONNX order.
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
    match op.family() {
        Family::Math => math::reference::eval(op, inputs),
        Family::Nn => nn::reference::eval(op, inputs),
        Family::Norm => norm::reference::eval(op, inputs),
        Family::Array => array::reference::eval(op, inputs, n_outputs),
        Family::Reduce => reduce::reference::eval(op, inputs),
        Family::Index => index::reference::eval(op, inputs),
        Family::Quant => quant::reference::eval(op, inputs),
        Family::Fused => fused::reference::eval(op, inputs),
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

    /// A reader that accepts every attribute.
    struct Accept;

    impl Visitor for Accept {
        fn attr<T: crate::ir::schema::AttrType>(
            &mut self,
            _: crate::ir::schema::AttrDef,
            _: &mut T,
            _: crate::ir::schema::Rule<T>,
        ) -> Msg<()> {
            Ok(())
        }

        fn n_outputs(&self) -> usize {
            1
        }
    }

    /// Whether an error is a family's "does not hold this op".
    fn not_held_error(e: &crate::Error) -> bool {
        matches!(e, crate::Error::Internal(m) if m.contains("which does not hold it"))
    }

    /// Every op kind goes to a family that holds it: [`Op::family`] and the
    /// family's `def`, `visit`, `infer` and `eval` agree. Inference and the
    /// kernels run on placeholder inputs (f32 scalars), which most ops
    /// reject, but with their own errors, not a routing one.
    #[test]
    fn every_op_is_routed_to_a_family_that_holds_it() {
        use crate::ir::{Graph, Node, TensorType};
        let scalar = Tensor::scalar_f32(1.0);
        for p in prototypes() {
            let d = def(&p);
            assert_ne!(d.name, MISROUTED, "{p:?} ({:?})", p.family());
            visit(&mut p.clone(), &mut Accept).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let n_in = *d.inputs.start();
            let mut g = Graph::new("t", 21);
            let inputs = (0..n_in)
                .map(|i| {
                    Some(g.add_input(
                        format!("x{i}"),
                        TensorType::new(crate::ir::DType::F32, crate::ir::Shape::scalar()),
                    ))
                })
                .collect();
            let y = g.add_value(
                "y",
                TensorType::new(crate::ir::DType::F32, crate::ir::Shape::scalar()),
            );
            let node = Node {
                name: "n".into(),
                op: p.clone(),
                inputs,
                outputs: vec![y],
            };
            if let Err(e) = crate::ir::infer::infer_node(&g, &node) {
                assert!(!not_held_error(&e), "infer: {e}");
            }
            let ins = vec![Some(&scalar); n_in];
            if let Err(e) = eval(&p, &ins, 1) {
                assert!(!not_held_error(&e), "eval: {e}");
            }
        }
    }

    /// The routing test above sees a misrouted op.
    #[test]
    fn a_family_refuses_an_op_it_does_not_hold() {
        let e = math::reference::eval(&Op::MatMul, &[]).unwrap_err();
        assert!(not_held_error(&e), "{e}");
        assert!(math::schema::def(&Op::MatMul).is_none());
        let e = math::schema::visit(&mut Op::MatMul, &mut Accept).unwrap_err();
        assert!(e.contains("which does not hold it"), "{e}");
    }
}

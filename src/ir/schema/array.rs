//! Schemas of the array and shape ops: Flatten, Reshape, Transpose,
//! Squeeze, Unsqueeze, Concat, Split, Slice, Shape, Size, ConstantOfShape,
//! Expand, Tile, Identity, Dropout, Pad, Range.

use super::{std, word_attr, Msg, Rule, Visitor};
use crate::ir::{DType, Op, PadMode, Tensor};

word_attr!(
    PadMode,
    [
        ("constant", PadMode::Constant),
        ("reflect", PadMode::Reflect),
        ("edge", PadMode::Edge),
        ("wrap", PadMode::Wrap),
    ]
);

pub(super) fn prototypes() -> Vec<Op> {
    vec![
        Op::Flatten { axis: 1 },
        Op::Reshape { allowzero: false },
        Op::Transpose { perm: vec![] },
        Op::Squeeze,
        Op::Unsqueeze,
        Op::Concat { axis: 0 },
        Op::Split {
            axis: 0,
            num_outputs: 1,
        },
        Op::Slice,
        Op::Shape {
            start: 0,
            end: None,
        },
        Op::Size,
        Op::ConstantOfShape {
            value: Tensor::scalar_f32(0.0),
        },
        Op::Expand,
        Op::Tile,
        Op::Identity,
        Op::Dropout,
        Op::Pad {
            mode: PadMode::Constant,
        },
        Op::Range,
    ]
}

pub(super) fn flatten<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(1))
}

pub(super) fn concat<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Required)
}

pub(super) fn reshape<V: Visitor>(allowzero: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("allowzero"), allowzero, Rule::UnlessDefault(false))
}

/// Always explicit: the importer expands ONNX's default reversal.
pub(super) fn transpose<V: Visitor>(perm: &mut Vec<usize>, v: &mut V) -> Msg<()> {
    v.attr(std("perm"), perm, Rule::Required)
}

/// `num_outputs` defaults to the node's output count. ONNX forbids it
/// beside the `split` input (the exporter drops it then).
pub(super) fn split<V: Visitor>(axis: &mut i64, num_outputs: &mut usize, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))?;
    let n = v.n_outputs();
    v.attr(std("num_outputs"), num_outputs, Rule::Always(n))
}

pub(super) fn shape<V: Visitor>(start: &mut i64, end: &mut Option<i64>, v: &mut V) -> Msg<()> {
    v.attr(std("start"), start, Rule::Always(0))?;
    v.attr(std("end"), end, Rule::UnlessDefault(None))
}

/// The value defaults to one f32 zero.
pub(super) fn constant_of_shape<V: Visitor>(value: &mut Tensor, v: &mut V) -> Msg<()> {
    v.attr(
        std("value"),
        value,
        Rule::Always(Tensor::zeros(DType::F32, vec![1])),
    )
}

pub(super) fn pad<V: Visitor>(mode: &mut PadMode, v: &mut V) -> Msg<()> {
    v.attr(std("mode"), mode, Rule::Always(PadMode::Constant))
}

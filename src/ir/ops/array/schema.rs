//! Schemas of the array and shape ops: Flatten, Reshape, Transpose,
//! Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Shape, Size,
//! ConstantOfShape, Expand, Tile, Identity, Dropout, Pad, Range.

use crate::ir::ops::util::not_held;
use crate::ir::schema::{std, word_attr, Msg, OpDef, Rule, Visitor, MANY};
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

pub(crate) fn prototypes() -> Vec<Op> {
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
        Op::Gather { axis: 0 },
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

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::Flatten { .. } => OpDef::onnx("Flatten", 1..=1),
        Op::Reshape { .. } => OpDef::onnx("Reshape", 2..=2),
        Op::Transpose { .. } => OpDef::onnx("Transpose", 1..=1),
        Op::Squeeze => OpDef::onnx("Squeeze", 1..=2),
        Op::Unsqueeze => OpDef::onnx("Unsqueeze", 2..=2),
        Op::Concat { .. } => OpDef::onnx("Concat", 1..=MANY),
        Op::Split { .. } => OpDef::onnx("Split", 1..=2),
        Op::Slice => OpDef::onnx("Slice", 3..=5),
        Op::Gather { .. } => OpDef::onnx("Gather", 2..=2),
        Op::Shape { .. } => OpDef::onnx("Shape", 1..=1),
        Op::Size => OpDef::onnx("Size", 1..=1),
        Op::ConstantOfShape { .. } => OpDef::onnx("ConstantOfShape", 1..=1),
        Op::Expand => OpDef::onnx("Expand", 2..=2),
        Op::Tile => OpDef::onnx("Tile", 2..=2),
        Op::Identity => OpDef::onnx("Identity", 1..=1),
        Op::Dropout => OpDef::onnx("Dropout", 1..=3),
        Op::Pad { .. } => OpDef::onnx("Pad", 2..=4),
        Op::Range => OpDef::onnx("Range", 3..=3),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::Flatten { axis } => flatten(axis, v),
        Op::Concat { axis } => concat(axis, v),
        Op::Reshape { allowzero } => reshape(allowzero, v),
        Op::Transpose { perm } => transpose(perm, v),
        Op::Split { axis, num_outputs } => split(axis, num_outputs, v),
        Op::Gather { axis } => gather(axis, v),
        Op::Shape { start, end } => shape(start, end, v),
        Op::ConstantOfShape { value } => constant_of_shape(value, v),
        Op::Pad { mode } => pad(mode, v),
        Op::Squeeze
        | Op::Unsqueeze
        | Op::Slice
        | Op::Size
        | Op::Expand
        | Op::Tile
        | Op::Identity
        | Op::Dropout
        | Op::Range => Ok(()),
        _ => Err(not_held("array", op)),
    }
}

fn flatten<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(1))
}

fn concat<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Required)
}

fn reshape<V: Visitor>(allowzero: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("allowzero"), allowzero, Rule::UnlessDefault(false))
}

/// Always explicit: the importer expands ONNX's default reversal.
fn transpose<V: Visitor>(perm: &mut Vec<usize>, v: &mut V) -> Msg<()> {
    v.attr(std("perm"), perm, Rule::Required)
}

/// `num_outputs` defaults to the node's output count. ONNX forbids it
/// beside the `split` input (the exporter drops it then).
fn split<V: Visitor>(axis: &mut i64, num_outputs: &mut usize, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))?;
    let n = v.n_outputs();
    v.attr(std("num_outputs"), num_outputs, Rule::Always(n))
}

fn gather<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))
}

fn shape<V: Visitor>(start: &mut i64, end: &mut Option<i64>, v: &mut V) -> Msg<()> {
    v.attr(std("start"), start, Rule::Always(0))?;
    v.attr(std("end"), end, Rule::UnlessDefault(None))
}

/// The value defaults to one f32 zero.
fn constant_of_shape<V: Visitor>(value: &mut Tensor, v: &mut V) -> Msg<()> {
    v.attr(
        std("value"),
        value,
        Rule::Always(Tensor::zeros(DType::F32, vec![1])),
    )
}

fn pad<V: Visitor>(mode: &mut PadMode, v: &mut V) -> Msg<()> {
    v.attr(std("mode"), mode, Rule::Always(PadMode::Constant))
}

//! Schemas of the index-driven ops: GatherElements, ScatterElements,
//! GatherND, ScatterND, and CumSum.

use crate::ir::ops::util::not_held;
use crate::ir::schema::{std, word_attr, Msg, OpDef, Rule, Visitor};
use crate::ir::{Op, ScatterReduction};

word_attr!(
    ScatterReduction,
    [
        ("none", ScatterReduction::None),
        ("add", ScatterReduction::Add),
        ("mul", ScatterReduction::Mul),
        ("max", ScatterReduction::Max),
        ("min", ScatterReduction::Min),
    ]
);

pub(crate) fn prototypes() -> Vec<Op> {
    vec![
        Op::GatherElements { axis: 0 },
        Op::ScatterElements {
            axis: 0,
            reduction: ScatterReduction::None,
        },
        Op::GatherND { batch_dims: 0 },
        Op::ScatterND {
            reduction: ScatterReduction::None,
        },
        Op::CumSum {
            exclusive: false,
            reverse: false,
        },
    ]
}

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::GatherElements { .. } => OpDef::onnx("GatherElements", 2..=2),
        Op::ScatterElements { .. } => OpDef::onnx("ScatterElements", 3..=3),
        Op::GatherND { .. } => OpDef::onnx("GatherND", 2..=2),
        Op::ScatterND { .. } => OpDef::onnx("ScatterND", 3..=3),
        Op::CumSum { .. } => OpDef::onnx("CumSum", 2..=2),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::GatherElements { axis } => gather_elements(axis, v),
        Op::ScatterElements { axis, reduction } => scatter_elements(axis, reduction, v),
        Op::GatherND { batch_dims } => gather_nd(batch_dims, v),
        Op::ScatterND { reduction } => scatter_nd(reduction, v),
        Op::CumSum { exclusive, reverse } => cumsum(exclusive, reverse, v),
        _ => Err(not_held("index", op)),
    }
}

fn gather_elements<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))
}

fn scatter_elements<V: Visitor>(
    axis: &mut i64,
    reduction: &mut ScatterReduction,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))?;
    scatter_nd(reduction, v)
}

fn gather_nd<V: Visitor>(batch_dims: &mut usize, v: &mut V) -> Msg<()> {
    v.attr(std("batch_dims"), batch_dims, Rule::Always(0))
}

/// ScatterND; also the `reduction` of ScatterElements.
fn scatter_nd<V: Visitor>(reduction: &mut ScatterReduction, v: &mut V) -> Msg<()> {
    v.attr(
        std("reduction"),
        reduction,
        Rule::Always(ScatterReduction::None),
    )
}

fn cumsum<V: Visitor>(exclusive: &mut bool, reverse: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("exclusive"), exclusive, Rule::Always(false))?;
    v.attr(std("reverse"), reverse, Rule::Always(false))
}

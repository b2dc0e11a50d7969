//! Schemas of the index-driven ops: Gather, GatherElements,
//! ScatterElements, GatherND, ScatterND.

use super::{std, word_attr, Msg, Rule, Visitor};
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

pub(super) fn prototypes() -> Vec<Op> {
    vec![
        Op::Gather { axis: 0 },
        Op::GatherElements { axis: 0 },
        Op::ScatterElements {
            axis: 0,
            reduction: ScatterReduction::None,
        },
        Op::GatherND { batch_dims: 0 },
        Op::ScatterND {
            reduction: ScatterReduction::None,
        },
    ]
}

/// Gather and GatherElements.
pub(super) fn gather<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))
}

pub(super) fn scatter_elements<V: Visitor>(
    axis: &mut i64,
    reduction: &mut ScatterReduction,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))?;
    scatter_nd(reduction, v)
}

pub(super) fn gather_nd<V: Visitor>(batch_dims: &mut usize, v: &mut V) -> Msg<()> {
    v.attr(std("batch_dims"), batch_dims, Rule::Always(0))
}

/// ScatterND; also the `reduction` of ScatterElements.
pub(super) fn scatter_nd<V: Visitor>(reduction: &mut ScatterReduction, v: &mut V) -> Msg<()> {
    v.attr(
        std("reduction"),
        reduction,
        Rule::Always(ScatterReduction::None),
    )
}

//! Schemas of the reductions: ReduceMean and its kin (axes as an input),
//! ArgMax, ArgMin, CumSum.

use super::{std, Msg, Rule, Visitor};
use crate::ir::{Op, ReduceOp};

pub(super) fn prototypes() -> Vec<Op> {
    use ReduceOp as R;
    let mut ops: Vec<Op> = [
        R::Mean,
        R::Sum,
        R::Max,
        R::Min,
        R::Prod,
        R::L1,
        R::L2,
        R::SumSquare,
        R::LogSumExp,
    ]
    .map(|op| Op::Reduce {
        op,
        keepdims: true,
        noop_with_empty_axes: false,
    })
    .into();
    ops.extend([
        Op::ArgMax {
            axis: 0,
            keepdims: true,
            select_last_index: false,
        },
        Op::ArgMin {
            axis: 0,
            keepdims: true,
            select_last_index: false,
        },
        Op::CumSum {
            exclusive: false,
            reverse: false,
        },
    ]);
    ops
}

pub(super) fn reduce<V: Visitor>(
    keepdims: &mut bool,
    noop_with_empty_axes: &mut bool,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("keepdims"), keepdims, Rule::Always(true))?;
    v.attr(
        std("noop_with_empty_axes"),
        noop_with_empty_axes,
        Rule::UnlessDefault(false),
    )
}

/// ArgMax and ArgMin.
pub(super) fn arg<V: Visitor>(
    axis: &mut i64,
    keepdims: &mut bool,
    select_last_index: &mut bool,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(0))?;
    v.attr(std("keepdims"), keepdims, Rule::Always(true))?;
    v.attr(
        std("select_last_index"),
        select_last_index,
        Rule::UnlessDefault(false),
    )
}

pub(super) fn cumsum<V: Visitor>(exclusive: &mut bool, reverse: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("exclusive"), exclusive, Rule::Always(false))?;
    v.attr(std("reverse"), reverse, Rule::Always(false))
}

//! Schemas of the reductions: ReduceMean and its kin (axes as an input),
//! ArgMax, ArgMin, Softmax, LogSoftmax, Hardmax.

use crate::ir::ops::util::not_held;
use crate::ir::schema::{mlc, std, Msg, OpDef, Rule, Visitor};
use crate::ir::{Op, ReduceOp};

pub(crate) fn prototypes() -> Vec<Op> {
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
        Op::Softmax {
            axis: -1,
            legacy: false,
            nan_to_zero: false,
        },
        Op::LogSoftmax {
            axis: -1,
            legacy: false,
        },
        Op::Hardmax { axis: -1 },
    ]);
    ops
}

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::Reduce { op, .. } => OpDef::onnx(
            match op {
                ReduceOp::Mean => "ReduceMean",
                ReduceOp::Sum => "ReduceSum",
                ReduceOp::Max => "ReduceMax",
                ReduceOp::Min => "ReduceMin",
                ReduceOp::Prod => "ReduceProd",
                ReduceOp::L1 => "ReduceL1",
                ReduceOp::L2 => "ReduceL2",
                ReduceOp::SumSquare => "ReduceSumSquare",
                ReduceOp::LogSumExp => "ReduceLogSumExp",
            },
            1..=2,
        ),
        Op::ArgMax { .. } => OpDef::onnx("ArgMax", 1..=1),
        Op::ArgMin { .. } => OpDef::onnx("ArgMin", 1..=1),
        Op::Softmax { .. } => OpDef::onnx("Softmax", 1..=1),
        Op::LogSoftmax { .. } => OpDef::onnx("LogSoftmax", 1..=1),
        Op::Hardmax { .. } => OpDef::onnx("Hardmax", 1..=1),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => reduce(keepdims, noop_with_empty_axes, v),
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        }
        | Op::ArgMin {
            axis,
            keepdims,
            select_last_index,
        } => arg(axis, keepdims, select_last_index, v),
        Op::Softmax {
            axis,
            legacy,
            nan_to_zero,
        } => softmax(axis, legacy, Some(nan_to_zero), v),
        Op::LogSoftmax { axis, legacy } => softmax(axis, legacy, None, v),
        Op::Hardmax { axis } => hardmax(axis, v),
        _ => Err(not_held("reduce", op)),
    }
}

fn reduce<V: Visitor>(keepdims: &mut bool, noop_with_empty_axes: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("keepdims"), keepdims, Rule::Always(true))?;
    v.attr(
        std("noop_with_empty_axes"),
        noop_with_empty_axes,
        Rule::UnlessDefault(false),
    )
}

/// ArgMax and ArgMin.
fn arg<V: Visitor>(
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

/// Softmax (with `nan_to_zero`) and LogSoftmax (without). `legacy` (the
/// opset < 13 form) and `nan_to_zero` are mlc's: the exporter expands them.
fn softmax<V: Visitor>(
    axis: &mut i64,
    legacy: &mut bool,
    nan_to_zero: Option<&mut bool>,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(-1))?;
    v.attr(mlc("legacy"), legacy, Rule::UnlessDefault(false))?;
    match nan_to_zero {
        Some(z) => v.attr(mlc("nan_to_zero"), z, Rule::UnlessDefault(false)),
        None => Ok(()),
    }
}

/// https://onnx.ai/onnx/operators/onnx__Hardmax.html (opset 13)
fn hardmax<V: Visitor>(axis: &mut i64, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(-1))
}

//! Importers of elementwise, reduction, softmax and matrix ops.

use super::attrs::Problem;
use super::ctx::{scalar_of, Ctx, Imported, In};
use super::tensor::dtype_of;
use crate::ir::{BinaryOp as B, E8M0Round, Op, ReduceOp, Tensor, UnaryOp};

/// https://onnx.ai/onnx/operators/onnx__LeakyRelu.html
pub fn leaky_relu(c: &Ctx) -> Result<Imported, Problem> {
    let alpha = c.attrs.float("alpha", 0.01)?;
    c.simple(Op::Unary(UnaryOp::LeakyRelu { alpha }))
}

/// https://onnx.ai/onnx/operators/onnx__Elu.html
pub fn elu(c: &Ctx) -> Result<Imported, Problem> {
    let alpha = c.attrs.float("alpha", 1.0)?;
    c.simple(Op::Unary(UnaryOp::Elu { alpha }))
}

/// https://onnx.ai/onnx/operators/onnx__HardSigmoid.html
pub fn hard_sigmoid(c: &Ctx) -> Result<Imported, Problem> {
    let alpha = c.attrs.float("alpha", 0.2)?;
    let beta = c.attrs.float("beta", 0.5)?;
    c.simple(Op::Unary(UnaryOp::HardSigmoid { alpha, beta }))
}

/// https://onnx.ai/onnx/operators/onnx__Gelu.html (opset 20).
pub fn gelu(c: &Ctx) -> Result<Imported, Problem> {
    let tanh_approx = match c.attrs.string("approximate", "none")? {
        "none" => false,
        "tanh" => true,
        other => {
            return Err(format!(
                "attribute 'approximate' must be \"none\" or \"tanh\", got \"{other}\""
            ))
        }
    };
    c.simple(Op::Unary(UnaryOp::Gelu { tanh_approx }))
}

/// https://onnx.ai/onnx/operators/onnx__Clip.html, opset 6 form: `min` and
/// `max` attributes become the constant inputs of the opset 11 form. An
/// absent bound stays an absent input.
pub fn clip_v6(c: &Ctx) -> Result<Imported, Problem> {
    let dtype = c.dtype_hint(0);
    let bound = |v: Option<f32>, label| match v {
        Some(v) => In::Const(label, scalar_of(dtype, v as f64)),
        None => In::Absent,
    };
    let min = bound(c.attrs.opt_float("min")?, "min");
    let max = bound(c.attrs.opt_float("max")?, "max");
    Ok(Imported {
        op: Op::Clip,
        inputs: vec![c.input(0), min, max],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Cast.html. `saturate` (opset 19,
/// default 1) and `round_mode` (opset 24, default "up") only change
/// conversions to float8 (and e8m0); older opsets saturate too.
pub fn cast(c: &Ctx) -> Result<Imported, Problem> {
    let to = c.attrs.opt_int("to")?.ok_or("attribute 'to' is required")?;
    let code =
        i32::try_from(to).map_err(|_| format!("attribute 'to' has an invalid type code {to}"))?;
    let to = dtype_of(code).map_err(|e| format!("cast target: {e}"))?;
    let saturate = c.attrs.bool("saturate", true)?;
    let mode = c.attrs.string("round_mode", "up")?;
    let round_mode = E8M0Round::from_name(mode).ok_or_else(|| {
        format!("attribute 'round_mode' must be \"up\", \"down\" or \"nearest\", got {mode:?}")
    })?;
    c.simple(Op::Cast {
        to,
        saturate,
        round_mode,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Softmax.html and LogSoftmax: before
/// opset 13 the default axis is 1 and the input is coerced to 2-D.
pub fn softmax(c: &Ctx) -> Result<Imported, Problem> {
    let legacy = c.opset < 13;
    let axis = c.attrs.int("axis", if legacy { 1 } else { -1 })?;
    let op = if c.node.op_type == "LogSoftmax" {
        Op::LogSoftmax { axis, legacy }
    } else {
        Op::Softmax {
            axis,
            legacy,
            nan_to_zero: false,
        }
    };
    c.simple(op)
}

/// https://onnx.ai/onnx/operators/onnx__Gemm.html (C is optional from
/// opset 11).
pub fn gemm(c: &Ctx) -> Result<Imported, Problem> {
    let alpha = c.attrs.float("alpha", 1.0)?;
    let beta = c.attrs.float("beta", 1.0)?;
    let trans_a = c.attrs.bool("transA", false)?;
    let trans_b = c.attrs.bool("transB", false)?;
    c.simple(Op::Gemm {
        alpha,
        beta,
        trans_a,
        trans_b,
    })
}

/// https://onnx.ai/onnx/operators/onnx__ReduceSum.html (and the other
/// Reduce* ops) before `axes` became an input: the attribute becomes a
/// constant input; absent means all axes.
pub fn reduce_v1(c: &Ctx, op: ReduceOp) -> Result<Imported, Problem> {
    let keepdims = c.attrs.bool("keepdims", true)?;
    let axes = match c.attrs.opt_ints("axes")? {
        Some(a) => In::Const("axes", Tensor::vec_i64(a.to_vec())),
        None => In::Absent,
    };
    Ok(Imported {
        op: Op::Reduce {
            op,
            keepdims,
            noop_with_empty_axes: false,
        },
        inputs: vec![c.input(0), axes],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__ReduceMean.html, opset 18 form (and
/// ReduceSum from 13): axes is an optional input.
pub fn reduce_v18(c: &Ctx, op: ReduceOp) -> Result<Imported, Problem> {
    let keepdims = c.attrs.bool("keepdims", true)?;
    let noop_with_empty_axes = c.attrs.bool("noop_with_empty_axes", false)?;
    c.simple(Op::Reduce {
        op,
        keepdims,
        noop_with_empty_axes,
    })
}

/// https://onnx.ai/onnx/operators/onnx__ArgMax.html and ArgMin
/// (`select_last_index` from opset 12).
pub fn arg_max_min(c: &Ctx) -> Result<Imported, Problem> {
    let axis = c.attrs.int("axis", 0)?;
    let keepdims = c.attrs.bool("keepdims", true)?;
    let select_last_index = c.attrs.bool("select_last_index", false)?;
    let op = if c.node.op_type == "ArgMin" {
        Op::ArgMin {
            axis,
            keepdims,
            select_last_index,
        }
    } else {
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        }
    };
    c.simple(op)
}

/// https://onnx.ai/onnx/operators/onnx__Mod.html (opset 10; 13 only widened
/// the types): `fmod` picks C's remainder over Python's.
pub fn modulo(c: &Ctx) -> Result<Imported, Problem> {
    let op = if c.attrs.bool("fmod", false)? {
        B::FMod
    } else {
        B::Mod
    };
    c.simple(Op::Binary(op))
}

/// https://onnx.ai/onnx/operators/onnx__IsInf.html (opset 10).
pub fn is_inf(c: &Ctx) -> Result<Imported, Problem> {
    c.simple(Op::IsInf {
        detect_negative: c.attrs.bool("detect_negative", true)?,
        detect_positive: c.attrs.bool("detect_positive", true)?,
    })
}

/// https://onnx.ai/onnx/operators/onnx__CumSum.html (opset 11; 14 only
/// widened the types). The axis stays an input (a scalar).
pub fn cum_sum(c: &Ctx) -> Result<Imported, Problem> {
    c.simple(Op::CumSum {
        exclusive: c.attrs.bool("exclusive", false)?,
        reverse: c.attrs.bool("reverse", false)?,
    })
}

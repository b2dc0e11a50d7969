//! Type and shape inference of the quant family's ops.

use crate::ir::infer::ctx::{in_ty, norm_axis, opt_ty, tt, unify, Ctx};
use crate::ir::ops::fused::infer::{fused_epilogue_operand, fused_linear};
use crate::ir::ops::nn::infer::matmul_type;
use crate::ir::ops::util::not_held;
use crate::ir::{ActQuant, DType, Dim, Node, Op, TensorType};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    match op {
        Op::QConv { .. } | Op::QMatMul { .. } => quantized_linear(cx, node),
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DynamicQuantizeLinear => {
            quantize_ops(cx, node)
        }
        _ => Err(Error::Internal(not_held("quant", op))),
    }
}

/// Inference for QConv and QMatMul: the f32 output of the FusedConv /
/// FusedMatMul they quantize, with the int8 weight and its f32 scale
/// (`[1]` or one per output channel) checked.
fn quantized_linear(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let w = in_ty(cx, node, 1)?;
    let scale = in_ty(cx, node, 2)?;
    if x.dtype != DType::F32 || w.dtype != DType::I8 || scale.dtype != DType::F32 {
        return Err(Error::op(
            name,
            format!(
                "inputs must be f32, i8 and f32 (scale), got {}, {} and {}",
                x.dtype, w.dtype, scale.dtype
            ),
        ));
    }
    // Scales are positive and finite: a zero, negative, NaN or infinite one
    // (a damaged or hostile file) would make every output meaningless.
    let bad_scale = |v: f32| !(v.is_finite() && v > 0.0);
    if let Some(w_scale) = node.input(2).and_then(|v| cx.g.const_value(v)) {
        if let Some(&v) = w_scale
            .as_f32()
            .and_then(|s| s.iter().find(|&&v| bad_scale(v)))
        {
            return Err(Error::op(
                name,
                format!("weight scale {v} is not a positive finite number"),
            ));
        }
    }
    if let Op::QConv { x_quant: q, .. } | Op::QMatMul { a_quant: q, .. } = &node.op {
        if let ActQuant::Static { scale, .. } = q {
            if bad_scale(*scale) {
                return Err(Error::op(
                    name,
                    format!("activation scale {scale} is not a positive finite number"),
                ));
            }
        }
    }
    let out = match &node.op {
        Op::QConv {
            conv: attrs, act, ..
        } => {
            // The FusedConv rule over X, W, B?, R?.
            let float = Node {
                name: node.name.clone(),
                op: Op::FusedConv {
                    conv: attrs.clone(),
                    act: act.clone(),
                },
                inputs: vec![node.input(0), node.input(1), node.input(3), node.input(4)],
                outputs: node.outputs.clone(),
            };
            fused_linear(cx, &float)?.remove(0)
        }
        Op::QMatMul { .. } => {
            if w.shape.rank() != 2 {
                return Err(Error::op(name, format!("B must be 2-D, got {}", w.shape)));
            }
            let b = tt(DType::F32, w.shape.0.clone());
            let out = matmul_type(name, x, &b)?;
            if let Some(bias) = opt_ty(cx, node, 3) {
                fused_epilogue_operand(name, "the bias", bias, &out)?;
            }
            out
        }
        _ => return Err(Error::op(name, "internal: routed to quantized inference")),
    };
    let channels = match &node.op {
        Op::QConv { .. } => &w.shape.dims()[0],
        _ => &w.shape.dims()[1],
    };
    let per_channel_ok = match scale.shape.dims() {
        [Dim::Known(1)] => true,
        [d] => unify(
            name,
            "the scale length and the output channels",
            d,
            channels,
        )
        .is_ok(),
        _ => false,
    };
    if !per_channel_ok {
        return Err(Error::op(
            name,
            format!(
                "the weight scale must be [1] or [{channels}] (one per output channel), got {}",
                scale.shape
            ),
        ));
    }
    Ok(vec![out])
}

/// Inference for QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear
/// (opset 21 forms): the scale is a scalar or 1-D (per tensor, per axis) or
/// has x's rank (blocked); the zero point has the scale's shape.
fn quantize_ops(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let (axis, block_size) = match &node.op {
        Op::DynamicQuantizeLinear => {
            if x.dtype != DType::F32 {
                return Err(Error::op(name, format!("x must be f32, got {}", x.dtype)));
            }
            let scalar = |d| tt(d, vec![]);
            return Ok(vec![
                tt(DType::U8, x.shape.0.clone()),
                scalar(DType::F32),
                scalar(DType::U8),
            ]);
        }
        Op::QuantizeLinear {
            axis, block_size, ..
        }
        | Op::DequantizeLinear { axis, block_size } => (*axis, *block_size),
        _ => return Err(Error::op(name, "internal: routed to quantize inference")),
    };
    let scale = in_ty(cx, node, 1)?;
    if !scale.dtype.is_float() {
        return Err(Error::op(
            name,
            format!("the scale must be a float tensor, got {}", scale.dtype),
        ));
    }
    let zp = opt_ty(cx, node, 2);
    if let Some(z) = zp {
        let one = |t: &TensorType| t.shape.dims().iter().all(Dim::is_one);
        if z.shape != scale.shape && !(one(z) && one(scale)) {
            return Err(Error::op(
                name,
                format!(
                    "the zero point's shape {} differs from the scale's {}",
                    z.shape, scale.shape
                ),
            ));
        }
    }
    let rank = x.shape.rank();
    let per_tensor = scale.shape.rank() == 0
        || (scale.shape.rank() == 1 && scale.shape.dims()[0].is_one() && block_size == 0);
    if per_tensor {
        // One scale for every element.
    } else if scale.shape.rank() == 1 && block_size == 0 {
        let a = norm_axis(name, axis, rank)?;
        unify(
            name,
            "the scale length and the quantized axis",
            &scale.shape.dims()[0],
            &x.shape.dims()[a],
        )?;
    } else if block_size > 0 && scale.shape.rank() == rank {
        let a = norm_axis(name, axis, rank)?;
        for (i, (s, d)) in scale.shape.dims().iter().zip(x.shape.dims()).enumerate() {
            let ok = match (s, d) {
                (Dim::Known(s), Dim::Known(d)) if i == a => *s == d.div_ceil(block_size),
                (Dim::Known(s), Dim::Known(d)) => s == d,
                _ => true,
            };
            if !ok {
                return Err(Error::op(
                    name,
                    format!(
                        "a blocked scale of shape {} does not fit x of shape {} with block size {block_size} on axis {a}",
                        scale.shape, x.shape
                    ),
                ));
            }
        }
    } else {
        return Err(Error::op(
            name,
            format!(
                "the scale of shape {} fits neither per-tensor, per-axis nor blocked quantization of {} (block size {block_size})",
                scale.shape, x.shape
            ),
        ));
    }
    let out = match &node.op {
        Op::QuantizeLinear { output_dtype, .. } => {
            let d = zp.map(|z| z.dtype).or(*output_dtype).unwrap_or(DType::U8);
            if !quantized_dtype(d) {
                return Err(Error::op(
                    name,
                    format!("cannot quantize to {d}: the output must be an 8/4/2-bit integer type"),
                ));
            }
            d
        }
        _ => {
            if !quantized_dtype(x.dtype) && x.dtype != DType::I32 {
                return Err(Error::op(
                    name,
                    format!(
                        "cannot dequantize {}: x must be an 8/4/2-bit integer or i32",
                        x.dtype
                    ),
                ));
            }
            if let Some(z) = zp {
                if z.dtype != x.dtype {
                    return Err(Error::op(
                        name,
                        format!("the zero point is {} but x is {}", z.dtype, x.dtype),
                    ));
                }
            }
            scale.dtype
        }
    };
    Ok(vec![tt(out, x.shape.0.clone())])
}

/// The integer types QuantizeLinear produces and DequantizeLinear reads
/// (float8 forms are not supported).
pub fn quantized_dtype(d: DType) -> bool {
    matches!(
        d,
        DType::I8
            | DType::U8
            | DType::I4
            | DType::U4
            | DType::I2
            | DType::U2
            | DType::I16
            | DType::U16
    )
}

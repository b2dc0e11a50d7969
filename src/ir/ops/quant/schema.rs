//! Schemas of the quantization ops: ONNX's QuantizeLinear,
//! DequantizeLinear, DynamicQuantizeLinear, and mlc's QConv and QMatMul
//! (which the exporter writes as QDQ).

use crate::ir::ops::util::not_held;
use crate::ir::ops::{fused, nn};
use crate::ir::schema::{mlc, std, Msg, OpDef, Rule, Visitor};
use crate::ir::{ActQuant, Activation, ConvAttrs, DType, Op};

pub(crate) fn prototypes() -> Vec<Op> {
    vec![
        Op::QuantizeLinear {
            axis: 1,
            block_size: 0,
            saturate: true,
            output_dtype: None,
        },
        Op::DequantizeLinear {
            axis: 1,
            block_size: 0,
        },
        Op::DynamicQuantizeLinear,
        Op::QConv {
            conv: nn::schema::conv_proto(),
            x_quant: ActQuant::Dynamic,
            act: None,
        },
        Op::QMatMul {
            a_quant: ActQuant::Dynamic,
            act: None,
        },
    ]
}

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::QuantizeLinear { .. } => OpDef::onnx("QuantizeLinear", 2..=3),
        Op::DequantizeLinear { .. } => OpDef::onnx("DequantizeLinear", 2..=3),
        Op::DynamicQuantizeLinear => OpDef::onnx("DynamicQuantizeLinear", 1..=1),
        Op::QConv { .. } => OpDef::mlc("QConv", 3..=5),
        Op::QMatMul { .. } => OpDef::mlc("QMatMul", 3..=4),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::QuantizeLinear {
            axis,
            block_size,
            saturate,
            output_dtype,
        } => quantize(axis, block_size, saturate, output_dtype, v),
        Op::DequantizeLinear { axis, block_size } => dequantize(axis, block_size, v),
        Op::DynamicQuantizeLinear => Ok(()),
        Op::QConv { conv, x_quant, act } => qconv(conv, x_quant, act, v),
        Op::QMatMul { a_quant, act } => qmatmul(a_quant, act, v),
        _ => Err(not_held("quant", op)),
    }
}

/// `output_dtype` is written to ONNX only without a zero point input (the
/// exporter drops it otherwise).
fn quantize<V: Visitor>(
    axis: &mut i64,
    block_size: &mut usize,
    saturate: &mut bool,
    output_dtype: &mut Option<DType>,
    v: &mut V,
) -> Msg<()> {
    dequantize(axis, block_size, v)?;
    v.attr(std("saturate"), saturate, Rule::UnlessDefault(true))?;
    v.attr(std("output_dtype"), output_dtype, Rule::UnlessDefault(None))
}

/// DequantizeLinear; also the first attributes of QuantizeLinear.
fn dequantize<V: Visitor>(axis: &mut i64, block_size: &mut usize, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(1))?;
    v.attr(std("block_size"), block_size, Rule::UnlessDefault(0))
}

fn qconv<V: Visitor>(
    conv: &mut ConvAttrs,
    x_quant: &mut ActQuant,
    act: &mut Option<Activation>,
    v: &mut V,
) -> Msg<()> {
    nn::schema::conv_attrs(conv, v)?;
    v.attr(mlc("x_quant"), x_quant, Rule::Required)?;
    fused::schema::act(act, v)
}

fn qmatmul<V: Visitor>(a_quant: &mut ActQuant, act: &mut Option<Activation>, v: &mut V) -> Msg<()> {
    v.attr(mlc("a_quant"), a_quant, Rule::Required)?;
    fused::schema::act(act, v)
}

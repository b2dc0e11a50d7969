//! Schemas of the quantization ops: ONNX's QuantizeLinear,
//! DequantizeLinear, DynamicQuantizeLinear, and mlc's QConv and QMatMul
//! (which the exporter writes as QDQ).

use super::{fused, mlc, nn, std, Msg, Rule, Visitor};
use crate::ir::{ActQuant, Activation, ConvAttrs, DType, Op};

pub(super) fn prototypes() -> Vec<Op> {
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
            conv: nn::conv_proto(),
            x_quant: ActQuant::Dynamic,
            act: None,
        },
        Op::QMatMul {
            a_quant: ActQuant::Dynamic,
            act: None,
        },
    ]
}

/// `output_dtype` is written to ONNX only without a zero point input (the
/// exporter drops it otherwise).
pub(super) fn quantize<V: Visitor>(
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
pub(super) fn dequantize<V: Visitor>(axis: &mut i64, block_size: &mut usize, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(1))?;
    v.attr(std("block_size"), block_size, Rule::UnlessDefault(0))
}

pub(super) fn qconv<V: Visitor>(
    conv: &mut ConvAttrs,
    x_quant: &mut ActQuant,
    act: &mut Option<Activation>,
    v: &mut V,
) -> Msg<()> {
    nn::conv_attrs(conv, v)?;
    v.attr(mlc("x_quant"), x_quant, Rule::Required)?;
    fused::act(act, v)
}

pub(super) fn qmatmul<V: Visitor>(
    a_quant: &mut ActQuant,
    act: &mut Option<Activation>,
    v: &mut V,
) -> Msg<()> {
    v.attr(mlc("a_quant"), a_quant, Rule::Required)?;
    fused::act(act, v)
}

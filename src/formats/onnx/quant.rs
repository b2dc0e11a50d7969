//! Quantization operators: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear, imported in their opset-21 form (per tensor, per
//! axis, blocked). Float8 quantization is not supported.

use super::attrs::Problem;
use super::ctx::{Ctx, Imported};
use super::tensor::dtype_of;
use crate::ir::Op;

/// https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html: `axis` from
/// opset 13, `saturate` from 19, `block_size` and `output_dtype` from 21.
pub fn quantize_linear(c: &Ctx) -> Result<Imported, Problem> {
    let output_dtype = match c.attrs.int("output_dtype", 0)? {
        0 => None,
        code => Some(
            i32::try_from(code)
                .map_err(|_| format!("attribute 'output_dtype' has an invalid type code {code}"))
                .and_then(|code| dtype_of(code).map_err(|e| format!("output_dtype: {e}")))?,
        ),
    };
    c.simple(Op::QuantizeLinear {
        axis: c.attrs.int("axis", 1)?,
        block_size: block_size(c)?,
        saturate: c.attrs.bool("saturate", true)?,
        output_dtype,
    })
}

/// https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html
pub fn dequantize_linear(c: &Ctx) -> Result<Imported, Problem> {
    c.simple(Op::DequantizeLinear {
        axis: c.attrs.int("axis", 1)?,
        block_size: block_size(c)?,
    })
}

fn block_size(c: &Ctx) -> Result<usize, Problem> {
    let b = c.attrs.int("block_size", 0)?;
    usize::try_from(b).map_err(|_| format!("attribute 'block_size' must not be negative, got {b}"))
}

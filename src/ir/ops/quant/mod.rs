//! Quantization: ONNX's QuantizeLinear, DequantizeLinear (per tensor, per
//! axis, blocked) and DynamicQuantizeLinear, and mlc's QConv and QMatMul,
//! whose reference kernels define the integer arithmetic the int8 kernels
//! match bit for bit.

pub(crate) mod infer;
pub mod reference;
pub(crate) mod schema;

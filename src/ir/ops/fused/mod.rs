//! The ops mlc's passes make: FusedConv and FusedMatMul (a product with a
//! bias, residual and activation epilogue) and Elementwise (a chain of f32
//! elementwise steps). The ONNX exporter expands them into standard ops.

pub(crate) mod ew_chain;
pub(crate) mod infer;
pub(crate) mod reference;
pub(crate) mod schema;

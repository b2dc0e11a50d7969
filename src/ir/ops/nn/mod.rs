//! The neural-network ops with spatial attributes: MatMul, Gemm, Conv,
//! ConvTranspose, the pools and Resize.

pub(crate) mod conv;
pub(crate) mod infer;
pub(crate) mod linalg;
pub(crate) mod pool;
pub(crate) mod reference;
pub(crate) mod resize;
pub(crate) mod schema;

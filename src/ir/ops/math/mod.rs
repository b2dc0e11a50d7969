//! Elementwise math: the unary ops (activations included), binary ops with
//! broadcasting, variadic Sum/Mean/Min/Max, Clip, Where, Cast, IsNaN, IsInf,
//! Shrink.

pub(crate) mod infer;
pub(crate) mod reference;
pub(crate) mod schema;

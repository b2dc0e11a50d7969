//! The reductions: ReduceMean and its kin (axes as an input), ArgMax,
//! ArgMin, and Softmax, LogSoftmax and Hardmax (which reduce along an axis).

pub(crate) mod infer;
pub(crate) mod reference;
pub(crate) mod schema;

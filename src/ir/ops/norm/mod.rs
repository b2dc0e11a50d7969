//! The normalizations: BatchNormalization, LayerNormalization,
//! InstanceNormalization, LRN.

pub(crate) mod infer;
pub(crate) mod reference;
pub(crate) mod schema;

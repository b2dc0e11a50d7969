//! The index-driven ops: GatherElements, ScatterElements, GatherND,
//! ScatterND (scatters are lists of (destination, update) pairs applied in
//! ONNX order), and CumSum, the running sum along an axis.

pub(crate) mod infer;
pub(crate) mod reference;
pub(crate) mod schema;

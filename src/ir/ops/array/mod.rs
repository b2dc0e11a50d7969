//! The array and shape ops: Flatten, Reshape, Transpose, Squeeze,
//! Unsqueeze, Concat, Split, Slice, Gather, Shape, Size, ConstantOfShape,
//! Expand, Tile, Identity, Dropout, Pad, Range.

pub(crate) mod infer;
pub(crate) mod reference;
pub(crate) mod schema;

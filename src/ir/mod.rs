//! mlc's graph IR: typed values with symbolic shapes, a closed op enum
//! whose ops live by family in [`ops`] (schema, inference, reference
//! kernel), a constant store, shape/type inference, a verifier and a
//! deterministic text form.

pub mod bind;
pub mod dtype;
pub mod graph;
pub mod infer;
pub mod lowp;
pub mod op;
pub mod ops;
pub mod schema;
pub mod shape;
pub mod tensor;
pub mod text;
pub mod verify;

pub use dtype::DType;
pub use graph::{Graph, Node, NodeId, Value, ValueDef, ValueId};
pub use lowp::E8M0Round;
pub use op::*;
pub use shape::{Dim, Shape, SymbolBindings, TensorType};
pub use tensor::{checked_numel, ShapeMismatch, Tensor, TensorData};

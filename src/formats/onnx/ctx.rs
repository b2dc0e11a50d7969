//! What an op's import function gets ([`Ctx`]) and returns ([`Imported`]):
//! the types the operator table ([`super::ops`]) and the importers of each
//! op family (array, math, nn, quant) share, beneath both.

use std::path::Path;

use onnx_protobuf::NodeProto;

use super::attrs::{Attrs, Problem};
use crate::ir::{DType, Graph, Op, Tensor, TensorType, ValueDef, ValueId};

/// One input of an imported node.
pub enum In {
    /// A value named in the ONNX graph.
    Name(String),
    /// An omitted optional input.
    Absent,
    /// A constant made from a legacy attribute; the label names it
    /// (`<node>.<label>`).
    Const(&'static str, Tensor),
}

/// Completes an op once the types of the node's inputs are known (e.g. the
/// default Transpose permutation needs the input's rank). Called with the
/// input types in input order.
pub type Fixup = Box<dyn FnOnce(&mut Op, &[Option<TensorType>]) -> Result<(), Problem>>;

/// What importing one node gives.
pub struct Imported {
    pub op: Op,
    pub inputs: Vec<In>,
    /// How many of the node's outputs mlc computes; later declared outputs
    /// are dropped (an error if anything uses them).
    pub outputs: usize,
    pub fixup: Option<Fixup>,
}

/// Everything an import function may look at.
pub struct Ctx<'a> {
    pub node: &'a NodeProto,
    /// The node's (deduplicated) name.
    pub name: &'a str,
    pub opset: i64,
    pub attrs: Attrs<'a>,
    pub base_dir: Option<&'a Path>,
    /// The graph so far: inputs, initializers and Constant node outputs.
    pub graph: &'a Graph,
    pub names: &'a std::collections::HashMap<String, ValueId>,
}

impl Ctx<'_> {
    /// Number of inputs, trailing empty names not counted.
    pub fn n_inputs(&self) -> usize {
        trimmed_len(&self.node.input)
    }

    /// Number of outputs, trailing empty names not counted.
    pub fn n_outputs(&self) -> usize {
        trimmed_len(&self.node.output)
    }

    /// Input `i` as named by the node (absent when empty or not given).
    pub fn input(&self, i: usize) -> In {
        match self.node.input.get(i) {
            Some(n) if !n.is_empty() => In::Name(n.clone()),
            _ => In::Absent,
        }
    }

    /// The node's inputs as given.
    pub fn given(&self) -> Vec<In> {
        (0..self.n_inputs()).map(|i| self.input(i)).collect()
    }

    fn input_id(&self, i: usize) -> Option<ValueId> {
        let n = self.node.input.get(i)?;
        if n.is_empty() {
            return None;
        }
        self.names.get(n).copied()
    }

    /// The value of input `i` when it is a constant (an initializer or a
    /// Constant node).
    pub fn const_input(&self, i: usize) -> Option<&Tensor> {
        self.graph.const_value(self.input_id(i)?)
    }

    /// The type of input `i` when it is known at import time (graph inputs
    /// and constants; node outputs are typed by inference later).
    pub fn known_type(&self, i: usize) -> Option<&TensorType> {
        let id = self.input_id(i)?;
        match self.graph.value(id).def {
            ValueDef::Input | ValueDef::Const => Some(self.graph.ty(id)),
            _ => None,
        }
    }

    /// The element type for constants made from legacy float attributes that
    /// must match input `i` (Clip bounds, Pad value): its known type, else
    /// f32 (the type of nearly all legacy models).
    pub fn dtype_hint(&self, i: usize) -> DType {
        self.known_type(i).map(|t| t.dtype).unwrap_or(DType::F32)
    }

    /// The node's inputs unchanged, one output.
    pub fn simple(&self, op: Op) -> Result<Imported, Problem> {
        Ok(Imported {
            op,
            inputs: self.given(),
            outputs: 1,
            fixup: None,
        })
    }
}

pub(crate) fn trimmed_len(names: &[String]) -> usize {
    names
        .iter()
        .rposition(|n| !n.is_empty())
        .map_or(0, |i| i + 1)
}

/// A scalar of `dtype` holding `v` (for constants made from float
/// attributes).
pub fn scalar_of(dtype: DType, v: f64) -> Tensor {
    let data = crate::ir::TensorData::from_f64(dtype, &[v]);
    // A one-element vector always fits the scalar shape.
    Tensor::new(vec![], data).unwrap_or_else(|_| Tensor::scalar_f32(v as f32))
}

//! Static shapes with symbolic dimensions.
//!
//! A dimension is either a known size or a symbol. Symbols come from the
//! model's inputs (`batch`, `seq`) or are minted by shape inference for sizes
//! that depend on run-time data (`unk_3`). Two different symbols may turn out
//! equal at run time; the same symbol always denotes the same size within one
//! run, which is what lets a graph exported with dynamic batch load once and
//! run at several sizes.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::DType;

/// One dimension of a static shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dim {
    Known(usize),
    Sym(String),
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    pub fn sym(name: impl Into<String>) -> Dim {
        Dim::Sym(name.into())
    }

    pub fn is_one(&self) -> bool {
        *self == Dim::Known(1)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Known(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A static shape: its rank is always known, its dims may be symbolic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    pub fn known(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The concrete sizes, when every dim is known.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::known).collect()
    }

    /// Number of elements, when every dim is known.
    pub fn numel(&self) -> Option<usize> {
        self.concrete().map(|d| d.iter().product())
    }

    /// Whether a run-time shape is an instance of this static shape. Symbols
    /// match any size here; [`SymbolBindings`] checks their consistency.
    pub fn admits(&self, actual: &[usize]) -> bool {
        self.rank() == actual.len()
            && self
                .0
                .iter()
                .zip(actual)
                .all(|(d, &a)| d.known().is_none_or(|k| k == a))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Static type of a value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType { dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

/// Sizes bound to symbols while checking one run's inputs.
#[derive(Clone, Debug, Default)]
pub struct SymbolBindings(pub std::collections::BTreeMap<String, usize>);

impl SymbolBindings {
    /// Binds the symbols of `shape` to the sizes in `actual`. Returns the name
    /// and both sizes of the first symbol bound twice to different sizes.
    pub fn bind(&mut self, shape: &Shape, actual: &[usize]) -> Result<(), (String, usize, usize)> {
        for (d, &a) in shape.0.iter().zip(actual) {
            if let Dim::Sym(s) = d {
                match self.0.get(s) {
                    Some(&prev) if prev != a => return Err((s.clone(), prev, a)),
                    Some(_) => {}
                    None => {
                        self.0.insert(s.clone(), a);
                    }
                }
            }
        }
        Ok(())
    }
}

//! The vocabulary of op schemas: attribute values and kinds, their names
//! in the text form and in ONNX, the rules for absent attributes, the
//! [`Visitor`] that walks an op's attributes, and [`OpDef`], what an op is
//! called and how many inputs it takes. Each op family's `schema.rs`
//! (`ir::ops::<family>`) writes its ops in these terms; `ir::schema` reads
//! and builds ops through them.

use std::ops::RangeInclusive;

use crate::ir::{ActQuant, Activation, DType, EwStep, Tensor};

/// What an op is, apart from its attributes: its name (in ONNX and in the
/// text form) and how many inputs a node of it may have (optional inputs
/// counted; an absent optional input in the middle is a `None` slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpDef {
    pub name: &'static str,
    pub inputs: RangeInclusive<usize>,
    /// An op of ONNX's default domain of the same name, whose ONNX
    /// attributes are the schema's: the exporter writes it as one node.
    /// mlc's own ops (and forms ONNX lacks) are expanded instead.
    pub standard: bool,
}

/// Any number of inputs, at least the lower bound.
pub const MANY: usize = usize::MAX;

impl OpDef {
    /// A standard ONNX op.
    pub const fn onnx(name: &'static str, inputs: RangeInclusive<usize>) -> OpDef {
        OpDef {
            name,
            inputs,
            standard: true,
        }
    }

    /// One of mlc's own ops, which the exporter expands.
    pub const fn mlc(name: &'static str, inputs: RangeInclusive<usize>) -> OpDef {
        OpDef {
            name,
            inputs,
            standard: false,
        }
    }
}

/// An attribute value, independent of how a format spells it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    Bool(bool),
    Ints(Vec<i64>),
    /// An enum value by its lowercase ONNX spelling (`same_upper`, `linear`).
    Word(&'static str),
    DType(DType),
    Tensor(Tensor),
    // mlc-only values (never written to ONNX as attributes).
    Activation(Activation),
    ActQuant(ActQuant),
    Steps(Vec<EwStep>),
}

/// The kind of value an attribute holds: what a parser must read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Int,
    /// A non-negative integer.
    UInt,
    Float,
    Bool,
    Ints,
    /// A list of non-negative integers.
    UInts,
    /// One of these lowercase words.
    Word(&'static [&'static str]),
    DType,
    Tensor,
    Activation,
    ActQuant,
    Steps,
}

impl Kind {
    /// What a value of this kind is, for error messages ("expects ...").
    pub fn what(&self) -> String {
        match self {
            Kind::Int => "an integer".into(),
            Kind::UInt => "a non-negative integer".into(),
            Kind::Float => "a number".into(),
            Kind::Bool => "true or false".into(),
            Kind::Ints => "a list of integers".into(),
            Kind::UInts => "a list of non-negative integers".into(),
            Kind::Word(names) => format!("one of {}", names.join(", ")),
            Kind::DType => "a dtype such as f32".into(),
            Kind::Tensor => "a tensor such as f32[1](0)".into(),
            Kind::Activation => "an activation such as relu or clip(0, 6)".into(),
            Kind::ActQuant => "dynamic or static(scale, zero_point)".into(),
            Kind::Steps => "a list of elementwise steps".into(),
        }
    }
}

/// How an attribute appears in ONNX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Onnx {
    /// The ONNX attribute of the same name, same meaning.
    Same,
    /// The ONNX attribute of this other name, same meaning.
    Named(&'static str),
    /// No ONNX attribute: mlc's own, or one the exporter writes in another
    /// form (see `formats::onnx::export`).
    None,
}

/// An attribute's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrDef {
    /// The name in the text form.
    pub name: &'static str,
    pub onnx: Onnx,
}

impl AttrDef {
    /// The ONNX attribute name, if the attribute has one.
    pub fn onnx_name(&self) -> Option<&'static str> {
        match self.onnx {
            Onnx::Same => Some(self.name),
            Onnx::Named(n) => Some(n),
            Onnx::None => None,
        }
    }
}

/// An attribute that ONNX has under the same name.
pub(crate) const fn std(name: &'static str) -> AttrDef {
    AttrDef {
        name,
        onnx: Onnx::Same,
    }
}

/// An attribute that ONNX calls `onnx`.
pub(crate) const fn renamed(name: &'static str, onnx: &'static str) -> AttrDef {
    AttrDef {
        name,
        onnx: Onnx::Named(onnx),
    }
}

/// An attribute with no ONNX attribute of its own.
pub(crate) const fn mlc(name: &'static str) -> AttrDef {
    AttrDef {
        name,
        onnx: Onnx::None,
    }
}

/// When an attribute is shown, and what an absent one means.
pub enum Rule<T> {
    /// Always shown; absent is an error.
    Required,
    /// Always shown; absent means this value.
    Always(T),
    /// Shown only when the value differs from this default; absent means the
    /// default.
    UnlessDefault(T),
}

/// A Rust type an attribute field can have.
pub trait AttrType: Clone + PartialEq {
    const KIND: Kind;
    /// The value; `None` for an absent optional.
    fn to_value(&self) -> Option<AttrValue>;
    /// The field from a value of [`Self::KIND`]; `None` when it does not fit.
    fn from_value(v: AttrValue) -> Option<Self>;
}

impl AttrType for i64 {
    const KIND: Kind = Kind::Int;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Int(*self))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl AttrType for usize {
    const KIND: Kind = Kind::UInt;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Int(*self as i64))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Int(i) => usize::try_from(i).ok(),
            _ => None,
        }
    }
}

impl AttrType for f32 {
    const KIND: Kind = Kind::Float;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Float(*self))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Float(x) => Some(x),
            _ => None,
        }
    }
}

impl AttrType for bool {
    const KIND: Kind = Kind::Bool;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Bool(*self))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl AttrType for Vec<i64> {
    const KIND: Kind = Kind::Ints;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Ints(self.clone()))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }
}

impl AttrType for Vec<usize> {
    const KIND: Kind = Kind::UInts;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Ints(self.iter().map(|&x| x as i64).collect()))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Ints(v) => v.into_iter().map(|x| usize::try_from(x).ok()).collect(),
            _ => None,
        }
    }
}

impl AttrType for DType {
    const KIND: Kind = Kind::DType;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::DType(*self))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::DType(d) => Some(d),
            _ => None,
        }
    }
}

impl AttrType for Tensor {
    const KIND: Kind = Kind::Tensor;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Tensor(self.clone()))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

impl AttrType for Activation {
    const KIND: Kind = Kind::Activation;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Activation(self.clone()))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Activation(a) => Some(a),
            _ => None,
        }
    }
}

impl AttrType for ActQuant {
    const KIND: Kind = Kind::ActQuant;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::ActQuant(*self))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::ActQuant(q) => Some(q),
            _ => None,
        }
    }
}

impl AttrType for Vec<EwStep> {
    const KIND: Kind = Kind::Steps;
    fn to_value(&self) -> Option<AttrValue> {
        Some(AttrValue::Steps(self.clone()))
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        match v {
            AttrValue::Steps(s) => Some(s),
            _ => None,
        }
    }
}

/// An optional attribute: absent when `None`.
impl<T: AttrType> AttrType for Option<T> {
    const KIND: Kind = T::KIND;
    fn to_value(&self) -> Option<AttrValue> {
        self.as_ref().and_then(T::to_value)
    }
    fn from_value(v: AttrValue) -> Option<Self> {
        T::from_value(v).map(Some)
    }
}

/// An enum attribute spelled as one of a fixed set of lowercase words.
macro_rules! word_attr {
    ($t:ty, [$(($name:literal, $v:expr)),* $(,)?]) => {
        impl $crate::ir::schema::attr::AttrType for $t {
            const KIND: $crate::ir::schema::attr::Kind =
                $crate::ir::schema::attr::Kind::Word(&[$($name),*]);
            fn to_value(&self) -> Option<$crate::ir::schema::attr::AttrValue> {
                $(if *self == $v {
                    return Some($crate::ir::schema::attr::AttrValue::Word($name));
                })*
                None
            }
            fn from_value(v: $crate::ir::schema::attr::AttrValue) -> Option<Self> {
                match v {
                    $($crate::ir::schema::attr::AttrValue::Word($name) => Some($v),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use word_attr;

/// A schema walk's result: an error is a message the caller places.
pub(crate) type Msg<T> = std::result::Result<T, String>;

/// Walks an op's attributes; implemented by the reader
/// ([`attrs`](super::attrs)) and the builder ([`build`](super::build)).
pub trait Visitor {
    /// One attribute field: the reader reads it, the builder overwrites it.
    fn attr<T: AttrType>(&mut self, def: AttrDef, field: &mut T, rule: Rule<T>) -> Msg<()>;

    /// The node's output count (Split's `num_outputs` defaults to it).
    fn n_outputs(&self) -> usize;
}

/// An attribute as shown: its names and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub def: AttrDef,
    pub value: AttrValue,
}

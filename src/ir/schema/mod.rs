//! Op schemas: the one place that says which attributes each op has, what
//! they are called in the text form and in ONNX, and what an absent one
//! means.
//!
//! Each op family has a file (`math`, `array`, `nn`, `norm`, `reduce`,
//! `index`, `quant`, `fused`) with one function per op that walks the op's
//! attribute fields in their canonical order through a [`Visitor`], stating
//! for each its name, its ONNX counterpart ([`Onnx`]) and its [`Rule`]:
//! required, always shown with a default for parsing, or shown only when it
//! differs from its default. The same walk serves both directions: reading
//! an op ([`attrs`]: what the text form prints and the ONNX exporter writes)
//! and building one from named values ([`build`]: what the text parser and
//! the generic ONNX importer call), so a name or a default is written once.
//! [`visit`] matches every op without a catch-all, so a new op that has no
//! schema does not compile. `docs/adding-an-op.md` has the recipe.
//!
//! Values travel as [`AttrValue`]s; how a value is spelled is the format's
//! business (`ir::text` for the text form, `formats::onnx::export` for ONNX
//! protobuf attributes).

use super::{ActQuant, Activation, DType, EwStep, Op, Tensor};

mod array;
mod fused;
mod index;
mod math;
mod nn;
mod norm;
mod quant;
mod reduce;

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
        impl $crate::ir::schema::AttrType for $t {
            const KIND: $crate::ir::schema::Kind =
                $crate::ir::schema::Kind::Word(&[$($name),*]);
            fn to_value(&self) -> Option<$crate::ir::schema::AttrValue> {
                $(if *self == $v {
                    return Some($crate::ir::schema::AttrValue::Word($name));
                })*
                None
            }
            fn from_value(v: $crate::ir::schema::AttrValue) -> Option<Self> {
                match v {
                    $($crate::ir::schema::AttrValue::Word($name) => Some($v),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use word_attr;

type Msg<T> = std::result::Result<T, String>;

/// Walks an op's attributes; implemented by the reader ([`attrs`]) and the
/// builder ([`build`]).
pub trait Visitor {
    /// One attribute field: the reader reads it, the builder overwrites it.
    fn attr<T: AttrType>(&mut self, def: AttrDef, field: &mut T, rule: Rule<T>) -> Msg<()>;

    /// The node's output count (Split's `num_outputs` defaults to it).
    fn n_outputs(&self) -> usize;
}

/// Walks the attributes of `op`, in their canonical order. Exhaustive: a new
/// op variant must be given a schema here.
pub fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::Unary(u) => math::unary(u, v),
        Op::Binary(b) => math::binary(b, v),
        Op::Variadic(_) | Op::Clip | Op::Where | Op::IsNaN => Ok(()),
        Op::IsInf {
            detect_negative,
            detect_positive,
        } => math::is_inf(detect_negative, detect_positive, v),
        Op::Cast {
            to,
            saturate,
            round_mode,
        } => math::cast(to, saturate, round_mode, v),
        Op::Shrink { lambd, bias } => math::shrink(lambd, bias, v),
        Op::MatMul => Ok(()),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => nn::gemm(alpha, beta, trans_a, trans_b, v),
        Op::Conv(c) => nn::conv(c, v),
        Op::ConvTranspose(c) => nn::conv_transpose(c, v),
        Op::MaxPool(p) => nn::pool(p, false, v),
        Op::AveragePool(p) => nn::pool(p, true, v),
        Op::GlobalAveragePool | Op::GlobalMaxPool => Ok(()),
        Op::Resize(r) => nn::resize(r, v),
        Op::Softmax {
            axis,
            legacy,
            nan_to_zero,
        } => norm::softmax(axis, legacy, Some(nan_to_zero), v),
        Op::LogSoftmax { axis, legacy } => norm::softmax(axis, legacy, None, v),
        Op::BatchNormalization {
            epsilon,
            training_momentum,
        } => norm::batch_norm(epsilon, training_momentum, v),
        Op::LayerNormalization { axis, epsilon } => norm::layer_norm(axis, epsilon, v),
        Op::InstanceNormalization { epsilon } => norm::instance_norm(epsilon, v),
        Op::Lrn {
            alpha,
            beta,
            bias,
            size,
        } => norm::lrn(alpha, beta, bias, size, v),
        Op::Flatten { axis } => array::flatten(axis, v),
        Op::Concat { axis } => array::concat(axis, v),
        Op::Reshape { allowzero } => array::reshape(allowzero, v),
        Op::Transpose { perm } => array::transpose(perm, v),
        Op::Split { axis, num_outputs } => array::split(axis, num_outputs, v),
        Op::Shape { start, end } => array::shape(start, end, v),
        Op::ConstantOfShape { value } => array::constant_of_shape(value, v),
        Op::Pad { mode } => array::pad(mode, v),
        Op::Squeeze
        | Op::Unsqueeze
        | Op::Slice
        | Op::Size
        | Op::Expand
        | Op::Tile
        | Op::Identity
        | Op::Dropout
        | Op::Range => Ok(()),
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => reduce::reduce(keepdims, noop_with_empty_axes, v),
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        }
        | Op::ArgMin {
            axis,
            keepdims,
            select_last_index,
        } => reduce::arg(axis, keepdims, select_last_index, v),
        Op::CumSum { exclusive, reverse } => reduce::cumsum(exclusive, reverse, v),
        Op::Gather { axis } | Op::GatherElements { axis } => index::gather(axis, v),
        Op::ScatterElements { axis, reduction } => index::scatter_elements(axis, reduction, v),
        Op::GatherND { batch_dims } => index::gather_nd(batch_dims, v),
        Op::ScatterND { reduction } => index::scatter_nd(reduction, v),
        Op::QuantizeLinear {
            axis,
            block_size,
            saturate,
            output_dtype,
        } => quant::quantize(axis, block_size, saturate, output_dtype, v),
        Op::DequantizeLinear { axis, block_size } => quant::dequantize(axis, block_size, v),
        Op::DynamicQuantizeLinear => Ok(()),
        Op::QConv { conv, x_quant, act } => quant::qconv(conv, x_quant, act, v),
        Op::QMatMul { a_quant, act } => quant::qmatmul(a_quant, act, v),
        Op::FusedConv { conv, act } => fused::fused_conv(conv, act, v),
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha,
            act,
        } => fused::fused_matmul(trans_a, trans_b, alpha, act, v),
        Op::Elementwise { steps } => fused::elementwise(steps, v),
    }
}

/// Every op kind once, with placeholder attributes: the table from names to
/// ops. Each family lists its own.
pub fn prototypes() -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(math::prototypes());
    ops.extend(nn::prototypes());
    ops.extend(norm::prototypes());
    ops.extend(array::prototypes());
    ops.extend(reduce::prototypes());
    ops.extend(index::prototypes());
    ops.extend(quant::prototypes());
    ops.extend(fused::prototypes());
    ops
}

/// An attribute as shown: its names and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub def: AttrDef,
    pub value: AttrValue,
}

/// Equal values, floats compared by their bits (`-0` is not `0`).
fn same(a: Option<AttrValue>, b: Option<AttrValue>) -> bool {
    match (a, b) {
        (Some(AttrValue::Float(x)), Some(AttrValue::Float(y))) => x.to_bits() == y.to_bits(),
        (a, b) => a == b,
    }
}

struct Reader {
    out: Vec<Attr>,
    n_outputs: usize,
}

impl Visitor for Reader {
    fn attr<T: AttrType>(&mut self, def: AttrDef, field: &mut T, rule: Rule<T>) -> Msg<()> {
        let shown = match rule {
            Rule::Required | Rule::Always(_) => true,
            Rule::UnlessDefault(d) => !same(field.to_value(), d.to_value()),
        };
        if let (true, Some(value)) = (shown, field.to_value()) {
            self.out.push(Attr { def, value });
        }
        Ok(())
    }

    fn n_outputs(&self) -> usize {
        self.n_outputs
    }
}

/// The attributes of `op` that are shown (in the text form, and in ONNX for
/// those with an ONNX name), in canonical order. Defaults that the op's
/// schema shows only when changed are left out.
pub fn attrs(op: &Op) -> Vec<Attr> {
    let mut r = Reader {
        out: Vec::new(),
        n_outputs: 0,
    };
    let mut op = op.clone();
    // The reader never fails.
    let _ = visit(&mut op, &mut r);
    r.out
}

struct Builder<F> {
    lookup: F,
    n_outputs: usize,
}

impl<F: FnMut(AttrDef, Kind) -> Msg<Option<AttrValue>>> Visitor for Builder<F> {
    fn attr<T: AttrType>(&mut self, def: AttrDef, field: &mut T, rule: Rule<T>) -> Msg<()> {
        *field = match (self.lookup)(def, T::KIND)? {
            Some(v) => T::from_value(v)
                .ok_or_else(|| format!("attribute '{}' expects {}", def.name, T::KIND.what()))?,
            None => match rule {
                Rule::Required => return Err(format!("missing attribute '{}'", def.name)),
                Rule::Always(d) | Rule::UnlessDefault(d) => d,
            },
        };
        Ok(())
    }

    fn n_outputs(&self) -> usize {
        self.n_outputs
    }
}

/// Builds the op called `name` (its text name, [`Op::onnx_type`]) from
/// named attribute values. `lookup(def, kind)` gives the value of an
/// attribute, `None` when absent (its default then applies); `n_outputs` is
/// the node's output count. Returns `None` for an unknown op name.
pub fn build(
    name: &str,
    n_outputs: usize,
    lookup: impl FnMut(AttrDef, Kind) -> Msg<Option<AttrValue>>,
) -> Msg<Option<Op>> {
    let Some(mut op) = prototypes().into_iter().find(|p| p.onnx_type() == name) else {
        return Ok(None);
    };
    let mut b = Builder { lookup, n_outputs };
    visit(&mut op, &mut b)?;
    Ok(Some(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op name is one op kind, except Mod (Mod and FMod, told apart
    /// by the `fmod` attribute).
    #[test]
    fn prototype_names_are_unique() {
        let protos = prototypes();
        let mut names: Vec<&str> = protos.iter().map(|p| p.onnx_type()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "{names:?}");
    }

    /// Building an op from the attributes it shows gives the op back.
    #[test]
    fn attrs_and_build_are_inverse() {
        for p in prototypes() {
            let shown = attrs(&p);
            let back = build(p.onnx_type(), 1, |def, _| {
                Ok(shown.iter().find(|a| a.def == def).map(|a| a.value.clone()))
            })
            .unwrap()
            .unwrap();
            assert_eq!(back.onnx_type(), p.onnx_type());
            assert_eq!(attrs(&back), shown, "{}", p.onnx_type());
        }
    }
}

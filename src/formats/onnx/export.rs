//! ONNX export: mlc's graph IR back to a standard ONNX `ModelProto`.
//!
//! The exporter writes the default domain only, at one opset: at least
//! [`BASE_OPSET`] (21, where every op mlc holds exists in its newest form:
//! Reduce axes, Squeeze/Unsqueeze axes, Clip bounds and Pad pads as inputs,
//! Split `num_outputs`, Resize with every mode, LayerNormalization, Gelu),
//! raised to the graph's own opset and to the opset that introduced the
//! newest element type the graph holds (float4 e2m1: 23, float8 e8m0: 24,
//! 2-bit integers: 25). Every op is written in that opset's form; the IR
//! version is the one that opset shipped with. Ops without a single ONNX
//! counterpart expand into standard ones: `FusedConv` into Conv (+ Add of the
//! residual) (+ the activation), `FusedMatMul` into Gemm when both operands
//! are matrices and the bias fits Gemm's broadcasting, otherwise (Transpose)
//! MatMul (+ Mul by alpha) (+ Add of the bias) (+ the activation),
//! `Elementwise` into its chain of ops with the scalars as initializers. The
//! legacy (opset < 13) Softmax/LogSoftmax becomes Flatten + Softmax(axis 1) +
//! Reshape back, unless the axis is already the last one.
//!
//! Names: graph inputs keep theirs, graph outputs and other values keep
//! theirs where they are unique (a clash gets a `_<n>` suffix, an empty name
//! `v<id>`), values made by expansions are named after their node. Constants
//! become initializers stored as little-endian `raw_data` (4- and 2-bit
//! types packed). The output is deterministic: the same graph gives the same
//! bytes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::type_proto::{Tensor as TypeTensor, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    SparseTensorProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};

use crate::ir::ops;
use crate::ir::schema::{self, AttrValue};
use crate::ir::{
    lowp, ActQuant, Activation, ConvAttrs, DType, Dim, EwArg, EwStep, Node, Op, TensorData,
    TensorType, UnaryOp, ValueDef, ValueId,
};
use crate::{Error, Graph, Result, Tensor};

/// The lowest opset mlc exports at.
pub const BASE_OPSET: i64 = 21;

/// The IR version an opset of the default domain shipped with.
pub fn ir_version_for(opset: i64) -> i64 {
    match opset {
        ..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => 14,
    }
}

/// The newest opset the exporter targets unless an element type needs more.
const NEWEST_WIDELY_LOADED: i64 = 26;

/// The opset that introduced an element type (types older than
/// [`BASE_OPSET`] give 0).
fn dtype_opset(d: DType) -> i64 {
    match d {
        DType::F4E2M1 => 23,
        DType::F8E8M0 => 24,
        DType::I2 | DType::U2 => 25,
        _ => 0,
    }
}

/// The opset a graph is exported at (see the module docs).
pub fn export_opset(g: &Graph) -> i64 {
    // Opsets 22..28 changed mlc's ops only by adding element types, so a
    // graph imported above NEWEST_WIDELY_LOADED is written at that opset
    // (ONNX Runtime 1.31 loads up to 26); only the types below raise it.
    let mut opset = BASE_OPSET.max(g.opset.min(NEWEST_WIDELY_LOADED));
    let dtype_of = |v: &ValueId| g.values.get(v.0 as usize).map(|x| x.ty.dtype);
    let live = g
        .inputs
        .iter()
        .chain(g.consts.keys())
        .chain(g.nodes().flat_map(|(_, n)| n.outputs.iter()));
    for d in live.filter_map(dtype_of) {
        opset = opset.max(dtype_opset(d));
    }
    for (_, n) in g.nodes() {
        match &n.op {
            Op::Cast { to, round_mode, .. } => {
                opset = opset.max(dtype_opset(*to));
                if *round_mode != crate::ir::E8M0Round::default() {
                    opset = opset.max(24);
                }
            }
            Op::ConstantOfShape { value } => opset = opset.max(dtype_opset(value.dtype())),
            _ => {}
        }
    }
    opset
}

/// How the graph is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Mostly-zero constants (pruned weights) as `sparse_initializer`s
    /// where that is smaller: their nonzero values and linear indices.
    /// ONNX Runtime densifies them at load.
    pub sparse_initializers: bool,
}

/// Converts the graph to an ONNX model, every constant dense.
pub fn to_model(g: &Graph) -> Result<ModelProto> {
    to_model_with(g, ExportOptions::default())
}

/// Converts the graph to an ONNX model as `opts` say.
pub fn to_model_with(g: &Graph, opts: ExportOptions) -> Result<ModelProto> {
    if g.opset > crate::formats::onnx::MAX_OPSET {
        return Err(Error::InvalidGraph(format!(
            "the graph is at opset {}, newer than the newest opset mlc knows ({})",
            g.opset,
            crate::formats::onnx::MAX_OPSET
        )));
    }
    let opset = export_opset(g);
    let mut emitter = Emitter::new(g)?;
    emitter.sparse = opts.sparse_initializers;
    let graph = emitter.run()?;
    Ok(ModelProto {
        ir_version: ir_version_for(opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
            ..Default::default()
        }],
        producer_name: "mlc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: MessageField::some(graph),
        ..Default::default()
    })
}

/// The serialized ONNX model.
pub fn to_bytes(g: &Graph) -> Result<Vec<u8>> {
    to_bytes_with(g, ExportOptions::default())
}

/// The serialized ONNX model, written as `opts` say.
pub fn to_bytes_with(g: &Graph, opts: ExportOptions) -> Result<Vec<u8>> {
    let model = to_model_with(g, opts)?;
    model
        .write_to_bytes()
        .map_err(|e| Error::Internal(format!("serializing the ONNX model: {e}")))
}

/// Writes the graph as an ONNX model file, atomically.
pub fn write(path: &Path, g: &Graph) -> Result<()> {
    write_with(path, g, ExportOptions::default())
}

/// Writes the graph as an ONNX model file as `opts` say, atomically.
pub fn write_with(path: &Path, g: &Graph, opts: ExportOptions) -> Result<()> {
    let bytes = to_bytes_with(g, opts)?;
    crate::fsutil::write_bytes_atomic(path, &bytes)
}

/// `t` as a sparse initializer named `name`, when that is smaller: its
/// nonzero values and their int64 linear indices (ONNX's form) in fewer
/// bytes than the dense tensor (f32 from about 1/3 zeros, int8 from 8/9),
/// 64 elements or more, a type of whole bytes.
fn sparse_proto(name: &str, t: &Tensor) -> Option<SparseTensorProto> {
    fn split<T: Copy + PartialEq + Default>(v: &[T]) -> (Vec<T>, Vec<i64>) {
        let zero = T::default();
        v.iter()
            .enumerate()
            .filter(|(_, x)| **x != zero)
            .map(|(i, x)| (*x, i as i64))
            .unzip()
    }
    let (numel, elem) = (t.numel(), t.dtype().size());
    let nnz = numel - t.zero_count();
    if numel < 64 || nnz * (elem + 8) >= numel * elem {
        return None;
    }
    let (values, indices) = match t.data() {
        TensorData::F32(v) => {
            let (a, i) = split(v);
            (TensorData::F32(a), i)
        }
        TensorData::F16(v) => {
            let (a, i) = split(v);
            (TensorData::F16(a), i)
        }
        TensorData::I8(v) => {
            let (a, i) = split(v);
            (TensorData::I8(a), i)
        }
        TensorData::U8(v) => {
            let (a, i) = split(v);
            (TensorData::U8(a), i)
        }
        TensorData::I32(v) => {
            let (a, i) = split(v);
            (TensorData::I32(a), i)
        }
        _ => return None,
    };
    let nnz = indices.len();
    let values = Tensor::new(vec![nnz], values).ok()?;
    let indices = Tensor::new(vec![nnz], TensorData::I64(indices)).ok()?;
    Some(SparseTensorProto {
        values: MessageField::some(tensor_to_proto(name, &values)),
        indices: MessageField::some(tensor_to_proto("", &indices)),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        ..Default::default()
    })
}

/// An ONNX tensor holding `t`: `raw_data` little endian, the 4-bit types two
/// per byte and the 2-bit types four per byte, first element in the low bits.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    fn le<T, const N: usize>(v: &[T], f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(f).collect()
    }
    let raw = match t.data() {
        TensorData::F32(v) => le(v, |x| x.to_le_bytes()),
        TensorData::F64(v) => le(v, |x| x.to_le_bytes()),
        TensorData::F16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        TensorData::BF16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        TensorData::I8(v) => le(v, |x| x.to_le_bytes()),
        TensorData::I16(v) => le(v, |x| x.to_le_bytes()),
        TensorData::I32(v) => le(v, |x| x.to_le_bytes()),
        TensorData::I64(v) => le(v, |x| x.to_le_bytes()),
        TensorData::U8(v) => v.clone(),
        TensorData::U16(v) => le(v, |x| x.to_le_bytes()),
        TensorData::U32(v) => le(v, |x| x.to_le_bytes()),
        TensorData::U64(v) => le(v, |x| x.to_le_bytes()),
        TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        TensorData::F8E4M3FN(v)
        | TensorData::F8E4M3FNUZ(v)
        | TensorData::F8E5M2(v)
        | TensorData::F8E5M2FNUZ(v)
        | TensorData::F8E8M0(v) => v.clone(),
        TensorData::F4E2M1(v) | TensorData::U4(v) => lowp::pack(4, v),
        TensorData::U2(v) => lowp::pack(2, v),
        // Two's complement codes; `pack` keeps the low bits.
        TensorData::I4(v) => lowp::pack(4, &v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
        TensorData::I2(v) => lowp::pack(2, &v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
    };
    TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: t.dtype().onnx_code(),
        raw_data: raw,
        ..Default::default()
    }
}

/// The ONNX type of a value: element type and shape, symbols as `dim_param`.
fn type_proto(ty: &TensorType) -> TypeProto {
    let dim = ty
        .shape
        .dims()
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Known(n) => DimValue::DimValue(*n as i64),
                Dim::Sym(s) => DimValue::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    TypeProto {
        value: Some(TypeValue::TensorType(TypeTensor {
            elem_type: ty.dtype.onnx_code(),
            shape: MessageField::some(TensorShapeProto {
                dim,
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn value_info(name: &str, ty: &TensorType) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        type_: MessageField::some(type_proto(ty)),
        ..Default::default()
    }
}

// Attribute constructors.

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        type_: EnumOrUnknown::new(ty),
        ..Default::default()
    }
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::INT)
    }
}

fn attr_b(name: &str, v: bool) -> AttributeProto {
    attr_i(name, v as i64)
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: v,
        ..attr(name, AttributeType::FLOAT)
    }
}

fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::STRING)
    }
}

fn attr_ints(name: &str, v: impl IntoIterator<Item = i64>) -> AttributeProto {
    AttributeProto {
        ints: v.into_iter().collect(),
        ..attr(name, AttributeType::INTS)
    }
}

fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        t: MessageField::some(t),
        ..attr(name, AttributeType::TENSOR)
    }
}

/// The ONNX attributes of a standard op: those of its schema
/// (`ir::schema`) that have an ONNX name, as ONNX encodes them (bools and
/// dtypes as integers, enum words as strings), then the ONNX-only rules the
/// schema does not state (see [`onnx_adapt`]).
fn schema_attrs(op: &Op) -> Result<Vec<AttributeProto>> {
    let t = op.onnx_type();
    let mut out = Vec::new();
    for a in schema::attrs(op) {
        let Some(name) = a.def.onnx_name() else {
            continue;
        };
        out.push(match a.value {
            AttrValue::Int(i) => attr_i(name, i),
            AttrValue::Float(x) => attr_f(name, x),
            AttrValue::Bool(b) => attr_b(name, b),
            AttrValue::Ints(v) => attr_ints(name, v),
            AttrValue::Word(w) => attr_s(name, w),
            AttrValue::DType(d) => attr_i(name, d.onnx_code() as i64),
            AttrValue::Tensor(v) => {
                // ConstantOfShape: the spec asks for a one-element 1-D tensor.
                let v = v
                    .reshape(vec![1])
                    .map_err(|e| Error::op(t, format!("attribute '{name}': {e}")))?;
                attr_t(name, tensor_to_proto(name, &v))
            }
            AttrValue::Activation(_) | AttrValue::ActQuant(_) | AttrValue::Steps(_) => {
                return Err(Error::op(t, format!("attribute '{name}' has no ONNX form")))
            }
        });
    }
    Ok(out)
}

/// The ONNX-only adapter: what ONNX spells differently from the schema, or
/// asks to leave out beside an input.
/// - `auto_pad` is upper case; `pads` is written only without `auto_pad`
///   (the two exclude each other) and when some pad is non-zero;
/// - Split's `num_outputs` and QuantizeLinear's `output_dtype` are left out
///   when the node has the input they would contradict (`split`, the zero
///   point);
/// - BatchNormalization's training form is `momentum` + `training_mode`.
///
/// `has_input(i)` says whether the node has its input `i`.
fn onnx_adapt(op: &Op, has_input: impl Fn(usize) -> bool, a: &mut Vec<AttributeProto>) {
    let drop = |a: &mut Vec<AttributeProto>, name: &str| a.retain(|x| x.name != name);
    match op {
        Op::Conv(_) | Op::ConvTranspose(_) | Op::MaxPool(_) | Op::AveragePool(_) => {
            let auto_pad = a.iter_mut().find(|x| x.name == "auto_pad");
            let padded = match auto_pad {
                Some(x) => {
                    x.s = x.s.to_ascii_uppercase();
                    false
                }
                None => a
                    .iter()
                    .any(|x| x.name == "pads" && x.ints.iter().any(|&p| p != 0)),
            };
            if !padded {
                drop(a, "pads");
            }
        }
        Op::Split { .. } if has_input(1) => drop(a, "num_outputs"),
        Op::QuantizeLinear { .. } if has_input(2) => drop(a, "output_dtype"),
        Op::BatchNormalization {
            training_momentum: Some(m),
            ..
        } => {
            a.push(attr_f("momentum", *m));
            a.push(attr_i("training_mode", 1));
        }
        // Every other op is written as its schema says.
        _ => {}
    }
}

/// The ONNX attributes of a node of a standard op.
fn onnx_attrs(node: &Node) -> Result<Vec<AttributeProto>> {
    let mut a = schema_attrs(&node.op)?;
    onnx_adapt(&node.op, |i| node.input(i).is_some(), &mut a);
    Ok(a)
}

/// The ONNX attributes of Conv (the expansions of FusedConv and QConv).
fn conv_attrs(c: &ConvAttrs) -> Result<Vec<AttributeProto>> {
    let op = Op::Conv(c.clone());
    let mut a = schema_attrs(&op)?;
    onnx_adapt(&op, |_| false, &mut a);
    Ok(a)
}

/// Op type and attributes of a unary op.
fn unary(u: &UnaryOp) -> Result<(&'static str, Vec<AttributeProto>)> {
    let op = Op::Unary(u.clone());
    Ok((op.onnx_type(), schema_attrs(&op)?))
}

/// One op applied to the running result of an expansion: the result is its
/// first input, `extra` the others.
struct Stage {
    op_type: &'static str,
    extra: Vec<String>,
    attrs: Vec<AttributeProto>,
}

impl Stage {
    fn new(op_type: &'static str, extra: Vec<String>, attrs: Vec<AttributeProto>) -> Stage {
        Stage {
            op_type,
            extra,
            attrs,
        }
    }
}

/// Builds the ONNX graph.
struct Emitter<'g> {
    g: &'g Graph,
    /// ONNX name of each value (`None`: not referenced by the export).
    names: Vec<Option<String>>,
    /// Every value name in use.
    used: Namer,
    /// Every node name in use.
    used_nodes: Namer,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Name of the node being expanded (prefix of the names it makes).
    cur: String,
    /// Write mostly-zero constants as sparse initializers.
    sparse: bool,
}

/// `base`, or `base_<n>` with the first `n >= 1` not in `used`; marks it used.
/// Names handed out so far, and for each base the next suffix to try, so
/// that the thousandth `base` costs as little as the first.
#[derive(Default)]
struct Namer {
    used: HashSet<String>,
    next: HashMap<String, usize>,
}

fn unique(namer: &mut Namer, base: &str) -> String {
    let mut name = base.to_string();
    let k = namer.next.entry(base.to_string()).or_insert(1);
    while namer.used.contains(&name) {
        name = format!("{base}_{k}");
        *k += 1;
    }
    namer.used.insert(name.clone());
    name
}

impl<'g> Emitter<'g> {
    fn new(g: &'g Graph) -> Result<Emitter<'g>> {
        let mut e = Emitter {
            g,
            names: vec![None; g.values.len()],
            used: Namer::default(),
            used_nodes: Namer::default(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            cur: String::new(),
            sparse: false,
        };
        e.assign_names()?;
        Ok(e)
    }

    fn check_value(&self, v: ValueId, user: &str) -> Result<()> {
        if (v.0 as usize) < self.g.values.len() {
            Ok(())
        } else {
            Err(Error::InvalidGraph(format!(
                "{user} refers to value {v}, which does not exist"
            )))
        }
    }

    /// Names every value the export references: graph inputs first (their
    /// names are the model's interface), then graph outputs, constants and
    /// node outputs in topological order.
    fn assign_names(&mut self) -> Result<()> {
        let g = self.g;
        let mut order: Vec<ValueId> = Vec::new();
        for &v in &g.inputs {
            self.check_value(v, "the graph input list")?;
            order.push(v);
        }
        for &v in &g.outputs {
            self.check_value(v, "the graph output list")?;
            if matches!(g.value(v).def, ValueDef::Node(..)) {
                order.push(v);
            }
        }
        let topo = g.topo_order()?;
        let mut consts = BTreeSet::new();
        for &id in &topo {
            let Some(node) = g.node(id) else { continue };
            let who = format!("node '{}' ({})", node.name, node.op.onnx_type());
            for v in node.inputs.iter().flatten() {
                self.check_value(*v, &who)?;
                match g.value(*v).def {
                    ValueDef::Const => {
                        consts.insert(*v);
                    }
                    ValueDef::Input | ValueDef::Node(..) => {}
                    ValueDef::Undefined => {
                        return Err(Error::InvalidGraph(format!(
                            "{who} uses '{}' ({v}), which nothing defines",
                            g.value(*v).name
                        )))
                    }
                }
            }
        }
        for &v in &g.outputs {
            match g.value(v).def {
                ValueDef::Const => {
                    consts.insert(v);
                }
                ValueDef::Undefined => {
                    return Err(Error::InvalidGraph(format!(
                        "the graph output '{}' ({v}) is not defined by anything",
                        g.value(v).name
                    )))
                }
                _ => {}
            }
        }
        for &v in &consts {
            if g.const_value(v).is_none() {
                return Err(Error::InvalidGraph(format!(
                    "value '{}' ({v}) is marked constant but has no data",
                    g.value(v).name
                )));
            }
        }
        order.extend(consts.iter().copied());
        for &id in &topo {
            if let Some(node) = g.node(id) {
                for &o in &node.outputs {
                    self.check_value(o, &format!("node '{}'", node.name))?;
                    order.push(o);
                }
            }
        }
        for v in order {
            if self.names[v.0 as usize].is_some() {
                continue;
            }
            let name = &g.value(v).name;
            let base = if name.is_empty() {
                format!("v{}", v.0)
            } else {
                name.clone()
            };
            self.names[v.0 as usize] = Some(unique(&mut self.used, &base));
        }
        Ok(())
    }

    fn name(&self, v: ValueId) -> Result<String> {
        self.names
            .get(v.0 as usize)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Internal(format!("value {v} was not named for export")))
    }

    /// A new value name derived from the current node.
    fn fresh(&mut self, label: &str) -> String {
        let base = format!("{}/{label}", self.cur);
        unique(&mut self.used, &base)
    }

    fn push(
        &mut self,
        op_type: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) {
        let base = if self.cur.is_empty() {
            op_type.to_string()
        } else {
            self.cur.clone()
        };
        let name = unique(&mut self.used_nodes, &base);
        let mut inputs = inputs;
        while inputs.last().is_some_and(|s| s.is_empty()) {
            inputs.pop();
        }
        self.nodes.push(NodeProto {
            name,
            op_type: op_type.to_string(),
            input: inputs,
            output: outputs,
            attribute: attrs,
            ..Default::default()
        });
    }

    /// An initializer holding `t`, named after the current node.
    fn constant(&mut self, label: &str, t: &Tensor) -> String {
        let name = self.fresh(label);
        self.initializers.push(tensor_to_proto(&name, t));
        name
    }

    /// A scalar initializer of `dtype` holding `v`.
    fn scalar(&mut self, label: &str, dtype: DType, v: f64) -> Result<String> {
        let data = TensorData::from_f64(dtype, &[v]);
        let t = Tensor::new(vec![], data)
            .map_err(|e| Error::Internal(format!("scalar constant: {e}")))?;
        Ok(self.constant(label, &t))
    }

    fn i64s(&mut self, label: &str, v: Vec<i64>) -> String {
        self.constant(label, &Tensor::vec_i64(v))
    }

    /// Applies `stages` to `first` (the first stage's full inputs); the last
    /// stage writes `out`, the others fresh values.
    fn pipeline(&mut self, first: Vec<String>, stages: Vec<Stage>, out: String) {
        let n = stages.len();
        let mut cur: Option<String> = None;
        for (i, st) in stages.into_iter().enumerate() {
            let inputs = match cur.take() {
                None => first.iter().cloned().chain(st.extra).collect(),
                Some(c) => std::iter::once(c).chain(st.extra).collect(),
            };
            let o = if i + 1 == n {
                out.clone()
            } else {
                self.fresh(&st.op_type.to_ascii_lowercase())
            };
            self.push(st.op_type, inputs, vec![o.clone()], st.attrs);
            cur = Some(o);
        }
    }

    fn activation(&mut self, act: &Activation, dtype: DType) -> Result<Stage> {
        Ok(match act {
            Activation::Relu => Stage::new("Relu", vec![], vec![]),
            Activation::Clip { min, max } => {
                let lo = self.scalar("clip_min", dtype, *min as f64)?;
                let hi = self.scalar("clip_max", dtype, *max as f64)?;
                Stage::new("Clip", vec![lo, hi], vec![])
            }
            Activation::Sigmoid => Stage::new("Sigmoid", vec![], vec![]),
            Activation::Tanh => Stage::new("Tanh", vec![], vec![]),
            Activation::HardSigmoid { alpha, beta } => {
                let (t, a) = unary(&UnaryOp::HardSigmoid {
                    alpha: *alpha,
                    beta: *beta,
                })?;
                Stage::new(t, vec![], a)
            }
            Activation::HardSwish => Stage::new("HardSwish", vec![], vec![]),
            Activation::LeakyRelu { alpha } => {
                let (t, a) = unary(&UnaryOp::LeakyRelu { alpha: *alpha })?;
                Stage::new(t, vec![], a)
            }
            Activation::Gelu { tanh_approx } => {
                let (t, a) = unary(&UnaryOp::Gelu {
                    tanh_approx: *tanh_approx,
                })?;
                Stage::new(t, vec![], a)
            }
        })
    }

    fn run(mut self) -> Result<GraphProto> {
        let g = self.g;
        for id in g.topo_order()? {
            let Some(node) = g.node(id) else { continue };
            self.cur = if node.name.is_empty() {
                format!("{}_{}", node.op.onnx_type(), id.0)
            } else {
                node.name.clone()
            };
            self.node(node)
                .map_err(|e| e.at_node(&node.name, node.op.onnx_type()))?;
        }

        // Outputs that are graph inputs, constants or listed twice get an
        // Identity so every graph output is a distinct node output.
        let mut outputs = Vec::new();
        let mut seen = HashSet::new();
        for &v in &g.outputs {
            let mut name = self.name(v)?;
            let direct = matches!(g.value(v).def, ValueDef::Node(..));
            if !direct || !seen.insert(v) {
                self.cur = name.clone();
                let out = unique(&mut self.used, &format!("{name}_out"));
                self.push("Identity", vec![name], vec![out.clone()], vec![]);
                name = out;
            }
            outputs.push(value_info(&name, g.ty(v)));
        }

        let mut inputs = Vec::new();
        for &v in &g.inputs {
            inputs.push(value_info(&self.name(v)?, g.ty(v)));
        }

        // Constants first, in id order, then those the expansions made.
        let (mut initializers, mut sparse) = (Vec::new(), Vec::new());
        for (&v, t) in &g.consts {
            if let Some(Some(name)) = self.names.get(v.0 as usize) {
                match self.sparse.then(|| sparse_proto(name, t)).flatten() {
                    Some(s) => sparse.push(s),
                    None => initializers.push(tensor_to_proto(name, t)),
                }
            }
        }
        initializers.append(&mut self.initializers);

        // Types of the other values mlc knows.
        let out_set: HashSet<ValueId> = g.outputs.iter().copied().collect();
        let mut infos = Vec::new();
        for id in g.topo_order()? {
            let Some(node) = g.node(id) else { continue };
            for &o in &node.outputs {
                if !out_set.contains(&o) {
                    infos.push(value_info(&self.name(o)?, g.ty(o)));
                }
            }
        }

        Ok(GraphProto {
            name: if g.name.is_empty() {
                "mlc".into()
            } else {
                g.name.clone()
            },
            node: self.nodes,
            initializer: initializers,
            sparse_initializer: sparse,
            input: inputs,
            output: outputs,
            value_info: infos,
            ..Default::default()
        })
    }

    /// The ONNX names of a node's inputs ("" for an absent one).
    fn input_names(&self, node: &Node) -> Result<Vec<String>> {
        node.inputs
            .iter()
            .map(|i| match i {
                Some(v) => self.name(*v),
                None => Ok(String::new()),
            })
            .collect()
    }

    fn output_names(&self, node: &Node) -> Result<Vec<String>> {
        node.outputs.iter().map(|&v| self.name(v)).collect()
    }

    /// The name and type of input `i`, which must be present.
    fn required(&self, node: &Node, i: usize, what: &str) -> Result<(String, &'g TensorType)> {
        let v = node
            .input(i)
            .ok_or_else(|| Error::op(node.op.onnx_type(), format!("input {what} is missing")))?;
        Ok((self.name(v)?, self.g.ty(v)))
    }

    fn single_output(&self, node: &Node) -> Result<(String, &'g TensorType)> {
        match node.outputs.as_slice() {
            [o] => Ok((self.name(*o)?, self.g.ty(*o))),
            outs => Err(Error::op(
                node.op.onnx_type(),
                format!("has {} outputs, expected 1", outs.len()),
            )),
        }
    }

    /// Emits one node as one or more ONNX nodes.
    fn node(&mut self, node: &Node) -> Result<()> {
        let ins = self.input_names(node)?;
        let outs = self.output_names(node)?;
        let t = node.op.onnx_type();
        let attrs = match &node.op {
            // Forms ONNX lacks: expanded into standard ops.
            Op::Softmax {
                axis,
                legacy,
                nan_to_zero: true,
            } => {
                return self.nan_guarded_softmax(node, *axis, *legacy);
            }
            Op::Softmax { axis, legacy, .. } | Op::LogSoftmax { axis, legacy } => {
                return self.softmax(node, *axis, *legacy);
            }
            Op::FusedConv { conv, act } => return self.fused_conv(node, conv, act.as_ref()),
            Op::FusedMatMul {
                trans_a,
                trans_b,
                alpha,
                act,
            } => return self.fused_matmul(node, *trans_a, *trans_b, *alpha, act.as_ref()),
            Op::Elementwise { steps } => return self.elementwise(node, steps),
            Op::QConv { conv, x_quant, act } => {
                return self.qconv(node, conv, *x_quant, act.as_ref())
            }
            Op::QMatMul { a_quant, act } => return self.qmatmul(node, *a_quant, act.as_ref()),
            // Standard ops (by their schema): one ONNX node with the
            // schema's attributes.
            op if ops::def(op).standard => onnx_attrs(node)?,
            op => {
                return Err(Error::Internal(format!(
                    "{} is not a standard ONNX op and has no expansion",
                    op.onnx_type()
                )))
            }
        };
        self.push(t, ins, outs, attrs);
        Ok(())
    }

    /// Softmax and LogSoftmax. The legacy form coerces the input to 2-D at
    /// `axis` and normalizes over the whole trailing block: Flatten, the op
    /// over axis 1, Reshape back (the same as the opset-13 op when `axis` is
    /// the last one).
    /// A Softmax with `nan_to_zero`: Softmax, then `Where(IsNaN(y), 0, y)`,
    /// the form the PyTorch exporter wrote.
    fn nan_guarded_softmax(&mut self, node: &Node, axis: i64, legacy: bool) -> Result<()> {
        let (out, ty) = self.single_output(node)?;
        let y = self.fresh("unguarded");
        let plain = Node {
            op: Op::Softmax {
                axis,
                legacy,
                nan_to_zero: false,
            },
            ..node.clone()
        };
        self.softmax_to(&plain, axis, legacy, y.clone())?;
        let is_nan = self.fresh("isnan");
        self.push("IsNaN", vec![y.clone()], vec![is_nan.clone()], vec![]);
        let zero = self.scalar("zero", ty.dtype, 0.0)?;
        self.push("Where", vec![is_nan, zero, y], vec![out], vec![]);
        Ok(())
    }

    fn softmax(&mut self, node: &Node, axis: i64, legacy: bool) -> Result<()> {
        let (out, _) = self.single_output(node)?;
        self.softmax_to(node, axis, legacy, out)
    }

    /// Softmax or LogSoftmax of the node's input into the value `out`.
    fn softmax_to(&mut self, node: &Node, axis: i64, legacy: bool, out: String) -> Result<()> {
        let t = node.op.onnx_type();
        let ins = self.input_names(node)?;
        let x = node
            .input(0)
            .ok_or_else(|| Error::op(t, "input 'input' is missing"))?;
        let xty = self.g.ty(x);
        let rank = xty.shape.rank() as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if !legacy || a == rank - 1 {
            let axis = if legacy { a } else { axis };
            self.push(t, ins, vec![out], vec![attr_i("axis", axis)]);
            return Ok(());
        }
        if !(0..=rank).contains(&a) {
            return Err(Error::op(
                t,
                format!("axis {axis} is out of range for rank {rank}"),
            ));
        }
        let x = self.name(x)?;
        let shape = match xty.shape.concrete() {
            Some(dims) => self.i64s("shape", dims.iter().map(|&d| d as i64).collect()),
            None => {
                let s = self.fresh("shape");
                self.push("Shape", vec![x.clone()], vec![s.clone()], vec![]);
                s
            }
        };
        self.pipeline(
            vec![x],
            vec![
                Stage::new("Flatten", vec![], vec![attr_i("axis", a)]),
                Stage::new(t, vec![], vec![attr_i("axis", 1)]),
                Stage::new("Reshape", vec![shape], vec![attr_i("allowzero", 1)]),
            ],
            out,
        );
        Ok(())
    }

    /// `act(conv(X, W) + B + R)`: Conv with the bias, Add of the residual,
    /// the activation.
    fn fused_conv(
        &mut self,
        node: &Node,
        conv: &ConvAttrs,
        act: Option<&Activation>,
    ) -> Result<()> {
        let t = node.op.onnx_type();
        let (out, oty) = self.single_output(node)?;
        let ins = self.input_names(node)?;
        if node.input(0).is_none() || node.input(1).is_none() {
            return Err(Error::op(t, "inputs X and W are required"));
        }
        if ins.len() > 4 {
            return Err(Error::op(t, format!("has {} inputs, at most 4", ins.len())));
        }
        let first: Vec<String> = ins.iter().take(3).cloned().collect();
        let residual = node.input(3).map(|r| self.name(r)).transpose()?;
        self.conv_epilogue(first, conv, residual, act, oty.dtype, out)
    }

    /// Conv over `first` (X, W, B?), then Add of the residual, then the
    /// activation, into `out`.
    fn conv_epilogue(
        &mut self,
        first: Vec<String>,
        conv: &ConvAttrs,
        residual: Option<String>,
        act: Option<&Activation>,
        dtype: DType,
        out: String,
    ) -> Result<()> {
        let mut stages = vec![Stage::new("Conv", vec![], conv_attrs(conv)?)];
        if let Some(r) = residual {
            stages.push(Stage::new("Add", vec![r], vec![]));
        }
        if let Some(a) = act {
            stages.push(self.activation(a, dtype)?);
        }
        self.pipeline(first, stages, out);
        Ok(())
    }

    /// The f32 activation `x` (of rank `rank`) quantized to u8 and
    /// dequantized again (QDQ): QuantizeLinear with the calibrated
    /// parameters, or dynamic ones (DynamicQuantizeLinear for a 1-D `x`,
    /// else per item of the first axis: [`Self::per_item_params`]), then
    /// DequantizeLinear. Returns the dequantized value.
    fn qdq_activation(&mut self, x: String, q: ActQuant, rank: usize) -> Result<String> {
        let xq = self.fresh("x_quantized");
        let mut axis = Vec::new();
        let (scale, zp) = match q {
            ActQuant::Dynamic if rank >= 2 => {
                axis = vec![attr_i("axis", 0)];
                let (s, z) = self.per_item_params(&x, rank)?;
                self.push(
                    "QuantizeLinear",
                    vec![x, s.clone(), z.clone()],
                    vec![xq.clone()],
                    axis.clone(),
                );
                (s, z)
            }
            ActQuant::Dynamic => {
                let (s, z) = (self.fresh("x_scale"), self.fresh("x_zero_point"));
                self.push(
                    "DynamicQuantizeLinear",
                    vec![x],
                    vec![xq.clone(), s.clone(), z.clone()],
                    vec![],
                );
                (s, z)
            }
            ActQuant::Static { scale, zero_point } => {
                let s = self.scalar("x_scale", DType::F32, scale as f64)?;
                let z = self.scalar("x_zero_point", DType::U8, zero_point as f64)?;
                self.push(
                    "QuantizeLinear",
                    vec![x, s.clone(), z.clone()],
                    vec![xq.clone()],
                    vec![],
                );
                (s, z)
            }
        };
        let xd = self.fresh("x_dequantized");
        self.push(
            "DequantizeLinear",
            vec![xq, scale, zp],
            vec![xd.clone()],
            axis,
        );
        Ok(xd)
    }

    /// DynamicQuantizeLinear's scale and zero point computed for each item
    /// of `x`'s first axis (mlc's dynamic quantization, see
    /// [`ActQuant`]), as 1-D tensors for per-axis QuantizeLinear: `lo` and
    /// `hi` the item's minimum and maximum widened to hold 0, scale 1 where
    /// they meet. (Non-finite values count in ONNX's reductions where mlc
    /// skips them.)
    fn per_item_params(&mut self, x: &str, rank: usize) -> Result<(String, String)> {
        let axes = self.i64s("item_axes", (1..rank as i64).collect());
        let zero = self.scalar("zero", DType::F32, 0.0)?;
        let one = self.scalar("one", DType::F32, 1.0)?;
        let top = self.scalar("u8_max", DType::F32, 255.0)?;
        let flat = self.i64s("flat", vec![-1]);
        let op = |this: &mut Self, op: &str, ins: Vec<String>, attrs| {
            let out = this.fresh(&format!("item_{}", op.to_ascii_lowercase()));
            this.push(op, ins, vec![out.clone()], attrs);
            out
        };
        let lo = op(self, "ReduceMin", vec![x.to_string(), axes.clone()], vec![]);
        let hi = op(self, "ReduceMax", vec![x.to_string(), axes], vec![]);
        let lo = op(self, "Min", vec![lo, zero.clone()], vec![]);
        let hi = op(self, "Max", vec![hi, zero.clone()], vec![]);
        let range = op(self, "Sub", vec![hi, lo.clone()], vec![]);
        let raw = op(self, "Div", vec![range.clone(), top.clone()], vec![]);
        let flat_range = op(self, "Equal", vec![range, zero.clone()], vec![]);
        let scale = op(self, "Where", vec![flat_range, one, raw], vec![]);
        let neg = op(self, "Neg", vec![lo], vec![]);
        let zp = op(self, "Div", vec![neg, scale.clone()], vec![]);
        let zp = op(self, "Round", vec![zp], vec![]);
        let zp = op(self, "Clip", vec![zp, zero, top], vec![]);
        let zp = op(self, "Cast", vec![zp], vec![attr_i("to", 2)]);
        let scale = op(self, "Reshape", vec![scale, flat.clone()], vec![]);
        let zp = op(self, "Reshape", vec![zp, flat], vec![]);
        Ok((scale, zp))
    }

    /// A symmetric int8 weight dequantized along `axis` (per tensor when
    /// its scale has one value).
    fn dequantized_weight(&mut self, w: String, scale: String, axis: i64) -> String {
        let wd = self.fresh("w_dequantized");
        self.push(
            "DequantizeLinear",
            vec![w, scale],
            vec![wd.clone()],
            vec![attr_i("axis", axis)],
        );
        wd
    }

    /// QConv as QDQ: the dequantized activation and weight into the
    /// FusedConv expansion.
    fn qconv(
        &mut self,
        node: &Node,
        conv: &ConvAttrs,
        x_quant: ActQuant,
        act: Option<&Activation>,
    ) -> Result<()> {
        let (out, oty) = self.single_output(node)?;
        let (x, xty) = self.required(node, 0, "X")?;
        let (w, _) = self.required(node, 1, "W")?;
        let (ws, _) = self.required(node, 2, "w_scale")?;
        let xd = self.qdq_activation(x, x_quant, xty.shape.rank())?;
        let wd = self.dequantized_weight(w, ws, 0);
        let mut first = vec![xd, wd];
        if let Some(b) = node.input(3) {
            first.push(self.name(b)?);
        }
        let residual = node.input(4).map(|r| self.name(r)).transpose()?;
        self.conv_epilogue(first, conv, residual, act, oty.dtype, out)
    }

    /// QMatMul as QDQ: MatMul of the dequantized operands, Add of the bias,
    /// the activation.
    fn qmatmul(&mut self, node: &Node, a_quant: ActQuant, act: Option<&Activation>) -> Result<()> {
        let (out, oty) = self.single_output(node)?;
        let (a, aty) = self.required(node, 0, "A")?;
        let (b, _) = self.required(node, 1, "B")?;
        let (bs, _) = self.required(node, 2, "b_scale")?;
        let ad = self.qdq_activation(a, a_quant, aty.shape.rank())?;
        let bd = self.dequantized_weight(b, bs, 1);
        let mut stages = vec![Stage::new("MatMul", vec![], vec![])];
        if let Some(bias) = node.input(3) {
            stages.push(Stage::new("Add", vec![self.name(bias)?], vec![]));
        }
        if let Some(a) = act {
            stages.push(self.activation(a, oty.dtype)?);
        }
        self.pipeline(vec![ad, bd], stages, out);
        Ok(())
    }

    /// `act(alpha * op(A) @ op(B) + bias)`.
    fn fused_matmul(
        &mut self,
        node: &Node,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        act: Option<&Activation>,
    ) -> Result<()> {
        let t = node.op.onnx_type();
        let (out, oty) = self.single_output(node)?;
        if node.inputs.len() > 3 {
            return Err(Error::op(
                t,
                format!("has {} inputs, at most 3", node.inputs.len()),
            ));
        }
        let (a, aty) = self.required(node, 0, "A")?;
        let (b, bty) = self.required(node, 1, "B")?;
        let bias = node.input(2);
        let (ra, rb) = (aty.shape.rank(), bty.shape.rank());
        for (flag, r, which) in [(trans_a, ra, "A"), (trans_b, rb, "B")] {
            if flag && r < 2 {
                return Err(Error::op(
                    t,
                    format!("{which} has rank {r}; transposing needs at least 2 dims"),
                ));
            }
        }
        let act_stage = match act {
            Some(a) => Some(self.activation(a, oty.dtype)?),
            None => None,
        };

        // Gemm when both operands are matrices and the bias broadcasts
        // one-directionally onto the [M, N] product.
        if ra == 2 && rb == 2 {
            let m = &aty.shape.dims()[if trans_a { 1 } else { 0 }];
            let n = &bty.shape.dims()[if trans_b { 0 } else { 1 }];
            let fits = match bias {
                None => true,
                Some(c) => {
                    let cd = self.g.ty(c).shape.dims();
                    let target = [m, n];
                    cd.len() <= 2
                        && cd
                            .iter()
                            .rev()
                            .zip(target.iter().rev())
                            .all(|(d, t)| d.is_one() || d == *t)
                }
            };
            if fits {
                let mut first = vec![a, b];
                if let Some(c) = bias {
                    first.push(self.name(c)?);
                }
                let mut stages = vec![Stage::new(
                    "Gemm",
                    vec![],
                    vec![
                        attr_f("alpha", alpha),
                        attr_f("beta", 1.0),
                        attr_b("transA", trans_a),
                        attr_b("transB", trans_b),
                    ],
                )];
                stages.extend(act_stage);
                self.pipeline(first, stages, out);
                return Ok(());
            }
        }

        let swap_last = |r: usize| -> Vec<i64> {
            let mut p: Vec<i64> = (0..r as i64).collect();
            p.swap(r - 2, r - 1);
            p
        };
        let a = if trans_a {
            let o = self.fresh("a_t");
            self.push(
                "Transpose",
                vec![a],
                vec![o.clone()],
                vec![attr_ints("perm", swap_last(ra))],
            );
            o
        } else {
            a
        };
        let b = if trans_b {
            let o = self.fresh("b_t");
            self.push(
                "Transpose",
                vec![b],
                vec![o.clone()],
                vec![attr_ints("perm", swap_last(rb))],
            );
            o
        } else {
            b
        };
        let mut stages = vec![Stage::new("MatMul", vec![], vec![])];
        if alpha != 1.0 {
            let s = self.scalar("alpha", oty.dtype, alpha as f64)?;
            stages.push(Stage::new("Mul", vec![s], vec![]));
        }
        if let Some(c) = bias {
            stages.push(Stage::new("Add", vec![self.name(c)?], vec![]));
        }
        stages.extend(act_stage);
        self.pipeline(vec![a, b], stages, out);
        Ok(())
    }

    /// An elementwise chain: one ONNX node per step, scalars as
    /// initializers. The chain's result has the broadcast shape of all the
    /// node's inputs, so inputs the last step does not depend on are
    /// broadcast in with Expand(result, Shape(input)).
    fn elementwise(&mut self, node: &Node, steps: &[EwStep]) -> Result<()> {
        let t = node.op.onnx_type();
        let (out, oty) = self.single_output(node)?;
        let dtype = oty.dtype;
        if steps.is_empty() {
            return Err(Error::op(t, "the chain has no steps"));
        }
        let mut ins = Vec::with_capacity(node.inputs.len());
        for (i, v) in node.inputs.iter().enumerate() {
            let v = v.ok_or_else(|| Error::op(t, format!("input {i} is missing")))?;
            ins.push(self.name(v)?);
        }
        // Check the operands and find the inputs each step depends on.
        let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(steps.len());
        for (j, s) in steps.iter().enumerate() {
            if let EwStep::Binary(b, ..) = s {
                if !b.is_chain_arithmetic() {
                    return Err(Error::op(
                        t,
                        format!("step {j}: {b:?} is not an arithmetic op"),
                    ));
                }
            }
            let mut d = BTreeSet::new();
            for a in step_args(s) {
                match a {
                    EwArg::Input(i) if *i < ins.len() => {
                        d.insert(*i);
                    }
                    EwArg::Input(i) => {
                        return Err(Error::op(
                            t,
                            format!(
                                "step {j} reads input {i}, but the node has {} inputs",
                                ins.len()
                            ),
                        ))
                    }
                    EwArg::Step(k) if *k < j => d.extend(deps[*k].iter().copied()),
                    EwArg::Step(k) => {
                        return Err(Error::op(
                            t,
                            format!("step {j} reads step {k}, which does not come before it"),
                        ))
                    }
                    EwArg::Scalar(_) => {}
                }
            }
            deps.push(d);
        }
        let last = steps.len() - 1;
        let missing: Vec<usize> = (0..ins.len()).filter(|i| !deps[last].contains(i)).collect();

        let mut results: Vec<String> = Vec::with_capacity(steps.len());
        for (j, step) in steps.iter().enumerate() {
            let arg = |e: &mut Self, a: &EwArg, label: &str| -> Result<String> {
                Ok(match a {
                    EwArg::Input(i) => ins[*i].clone(),
                    EwArg::Step(k) => results[*k].clone(),
                    EwArg::Scalar(s) => e.scalar(&format!("s{j}_{label}"), dtype, *s as f64)?,
                })
            };
            let (op_type, inputs, attrs) = match step {
                EwStep::Unary(u, a) => {
                    let x = arg(self, a, "x")?;
                    let (ty, attrs) = unary(u)?;
                    (ty, vec![x], attrs)
                }
                EwStep::Binary(b, x, y) => {
                    let x = arg(self, x, "a")?;
                    let y = arg(self, y, "b")?;
                    (Op::Binary(*b).onnx_type(), vec![x, y], vec![])
                }
                EwStep::Clip(a, lo, hi) => {
                    let x = arg(self, a, "x")?;
                    let lo = self.scalar(&format!("s{j}_min"), dtype, *lo as f64)?;
                    let hi = self.scalar(&format!("s{j}_max"), dtype, *hi as f64)?;
                    ("Clip", vec![x, lo, hi], vec![])
                }
            };
            let o = if j == last && missing.is_empty() {
                out.clone()
            } else {
                self.fresh(&format!("s{j}"))
            };
            self.push(op_type, inputs, vec![o.clone()], attrs);
            results.push(o);
        }
        let mut cur = results[last].clone();
        for (k, &i) in missing.iter().enumerate() {
            let s = self.fresh(&format!("shape{i}"));
            self.push("Shape", vec![ins[i].clone()], vec![s.clone()], vec![]);
            let o = if k + 1 == missing.len() {
                out.clone()
            } else {
                self.fresh(&format!("expand{i}"))
            };
            self.push("Expand", vec![cur, s], vec![o.clone()], vec![]);
            cur = o;
        }
        Ok(())
    }
}

/// The operands of a chain step.
fn step_args(s: &EwStep) -> Vec<&EwArg> {
    match s {
        EwStep::Unary(_, a) | EwStep::Clip(a, ..) => vec![a],
        EwStep::Binary(_, a, b) => vec![a, b],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::onnx::{load_bytes, tensor_from_proto};
    use crate::ir::{infer, AutoPad, PoolAttrs, Shape, UnaryOp};

    fn f32_ty(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, Shape::known(dims))
    }

    /// Adds a node with fresh outputs of the given types.
    fn node(
        g: &mut Graph,
        name: &str,
        op: Op,
        inputs: Vec<ValueId>,
        outs: Vec<TensorType>,
    ) -> Vec<ValueId> {
        let outputs: Vec<ValueId> = outs
            .into_iter()
            .enumerate()
            .map(|(i, t)| g.add_value(format!("{name}_out{i}"), t))
            .collect();
        g.add_node(Node {
            name: name.into(),
            op,
            inputs: inputs.into_iter().map(Some).collect(),
            outputs: outputs.clone(),
        });
        outputs
    }

    fn op_types(m: &ModelProto) -> Vec<String> {
        m.graph.node.iter().map(|n| n.op_type.clone()).collect()
    }

    fn t_f32(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    /// x [2, 16] · W [16, 8], W 75% zeros (-0.0 among them).
    fn pruned_matmul() -> (Graph, Tensor) {
        let mut g = Graph::new("sp", 17);
        let x = g.add_input("x", f32_ty(&[2, 16]));
        let w: Vec<f32> = (0..128)
            .map(|i| match i % 4 {
                0 => i as f32 * 0.5 - 7.0,
                1 => -0.0,
                _ => 0.0,
            })
            .collect();
        let wt = t_f32(&[16, 8], &w);
        let wv = g.add_const("w", wt.clone());
        let y = node(&mut g, "mm", Op::MatMul, vec![x, wv], vec![f32_ty(&[2, 8])]);
        g.outputs.push(y[0]);
        (g, wt)
    }

    #[test]
    fn sparse_initializers_are_smaller_and_read_back() {
        let (g, w) = pruned_matmul();
        let opts = ExportOptions {
            sparse_initializers: true,
        };
        let m = to_model_with(&g, opts).unwrap();
        assert_eq!(m.graph.sparse_initializer.len(), 1);
        assert!(m.graph.initializer.is_empty());
        let (dense, sparse) = (to_bytes(&g).unwrap(), to_bytes_with(&g, opts).unwrap());
        assert!(
            sparse.len() < dense.len(),
            "{} vs {}",
            sparse.len(),
            dense.len()
        );
        let back = load_bytes(&sparse, None).unwrap();
        let (_, t) = back.consts.iter().next().unwrap();
        // Values as they were (the sign of a zero aside).
        assert_eq!(t.shape(), w.shape());
        assert_eq!(t.as_f32().unwrap(), w.as_f32().unwrap());
        // By default everything stays dense.
        assert!(to_model(&g).unwrap().graph.sparse_initializer.is_empty());
    }

    /// `s` with its linear indices edited by `f`.
    fn edit_indices(s: &mut SparseTensorProto, f: impl Fn(&mut Vec<i64>)) {
        let t = tensor_from_proto(s.indices.as_ref().unwrap(), None).unwrap();
        let TensorData::I64(mut v) = t.data().clone() else {
            panic!("int64 indices")
        };
        f(&mut v);
        let t = Tensor::new(vec![v.len()], TensorData::I64(v)).unwrap();
        s.indices = MessageField::some(tensor_to_proto("", &t));
    }

    #[test]
    fn hostile_sparse_initializers_are_one_clear_error() {
        let (g, _) = pruned_matmul();
        let opts = ExportOptions {
            sparse_initializers: true,
        };
        let good = to_model_with(&g, opts).unwrap();
        type Break = Box<dyn Fn(&mut SparseTensorProto)>;
        let cases: Vec<(&str, Break)> = vec![
            (
                "out of range",
                Box::new(|s| edit_indices(s, |v| v[3] = 128)),
            ),
            (
                "appears twice",
                Box::new(|s| edit_indices(s, |v| v[2] = v[1])),
            ),
            (
                "do not fit",
                Box::new(|s| edit_indices(s, |v| v.truncate(v.len() - 1))),
            ),
            ("out of range", Box::new(|s| s.dims = vec![4, 8])),
            ("negative", Box::new(|s| s.dims = vec![16, -8])),
            (
                "has no indices",
                Box::new(|s| s.indices = MessageField::none()),
            ),
            (
                "too many elements",
                Box::new(|s| s.dims = vec![i64::MAX, i64::MAX]),
            ),
        ];
        for (want, break_it) in cases {
            let mut m = good.clone();
            break_it(&mut m.graph.mut_or_insert_default().sparse_initializer[0]);
            let bytes = m.write_to_bytes().unwrap();
            let err = load_bytes(&bytes, None).unwrap_err().to_string();
            assert!(err.contains("sparse initializer 'w'"), "{want}: {err}");
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn tensors_round_trip_for_every_dtype() {
        let vals = [1.0, -2.0, 3.0, 0.5, 0.0];
        for d in DType::ALL {
            let t = Tensor::new(vec![5], TensorData::from_f64(d, &vals)).unwrap();
            let p = tensor_to_proto("w", &t);
            assert_eq!(p.data_type, d.onnx_code(), "{d}");
            assert_eq!(p.raw_data.len(), d.packed_bytes(5).unwrap(), "{d}");
            let back = tensor_from_proto(&p, None).unwrap();
            assert!(back == t, "{d}: {back:?} vs {t:?}");
        }
        // Packing: low nibble first; two's complement codes.
        let t = Tensor::new(vec![3], TensorData::I4(vec![-1, -8, 7])).unwrap();
        assert_eq!(tensor_to_proto("w", &t).raw_data, vec![0x8f, 0x07]);
        let t = Tensor::new(vec![5], TensorData::I2(vec![1, -2, -1, 0, -2])).unwrap();
        assert_eq!(tensor_to_proto("w", &t).raw_data, vec![0b00_11_10_01, 0b10]);
        // Scalars and empty tensors.
        let p = tensor_to_proto("s", &Tensor::scalar_i64(-3));
        assert!(p.dims.is_empty());
        assert_eq!(p.raw_data, (-3i64).to_le_bytes());
        let p = tensor_to_proto("e", &Tensor::zeros(DType::F32, vec![0, 4]));
        assert_eq!(p.dims, vec![0, 4]);
        assert!(p.raw_data.is_empty());
    }

    fn relu_graph(dtype: DType, opset: i64) -> Graph {
        let mut g = Graph::new("g", opset);
        let x = g.add_input("x", TensorType::new(dtype, Shape::known(&[2])));
        let ty = g.ty(x).clone();
        let y = node(&mut g, "id", Op::Identity, vec![x], vec![ty]);
        g.outputs.push(y[0]);
        g
    }

    #[test]
    fn opset_and_ir_version() {
        let m = to_model(&relu_graph(DType::F32, 13)).unwrap();
        assert_eq!((m.opset_import[0].version, m.ir_version), (21, 10));
        assert!(m.opset_import[0].domain.is_empty());
        let m = to_model(&relu_graph(DType::F32, 23)).unwrap();
        assert_eq!((m.opset_import[0].version, m.ir_version), (23, 11));
        for (d, opset, ir) in [
            (DType::I4, 21, 10),
            (DType::F8E4M3FN, 21, 10),
            (DType::F4E2M1, 23, 11),
            (DType::F8E8M0, 24, 12),
            (DType::U2, 25, 13),
        ] {
            let m = to_model(&relu_graph(d, 7)).unwrap();
            assert_eq!(
                (m.opset_import[0].version, m.ir_version),
                (opset, ir),
                "{d}"
            );
        }
        assert!(to_model(&relu_graph(DType::F32, 29)).is_err());
    }

    /// x -> Relu -> Softmax -> y with a weight added, named with clashes.
    fn small_graph() -> Graph {
        let mut g = Graph::new("small", 17);
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, Shape(vec![Dim::sym("n"), 3.into()])),
        );
        let w = g.add_const("x", t_f32(&[3], &[0.5, -1.0, 2.0]));
        let a = node(
            &mut g,
            "n",
            Op::Binary(crate::ir::BinaryOp::Add),
            vec![x, w],
            vec![f32_ty(&[1])],
        );
        let r = node(
            &mut g,
            "n",
            Op::Unary(UnaryOp::Relu),
            vec![a[0]],
            vec![f32_ty(&[1])],
        );
        g.value_mut(r[0]).name = String::new();
        let s = node(
            &mut g,
            "sm",
            Op::Softmax {
                axis: -1,
                legacy: false,
                nan_to_zero: false,
            },
            vec![r[0]],
            vec![f32_ty(&[1])],
        );
        g.value_mut(s[0]).name = "y".into();
        g.outputs.push(s[0]);
        infer::infer_graph(&mut g).unwrap();
        g
    }

    #[test]
    fn names_types_and_determinism() {
        let g = small_graph();
        let m = to_model(&g).unwrap();
        let gp = m.graph.as_ref().unwrap();
        assert_eq!(gp.input[0].name, "x");
        assert_eq!(gp.output[0].name, "y");
        // The constant named like the input gets a suffix; the unnamed value
        // a made-up name; node names are unique.
        assert_eq!(gp.initializer[0].name, "x_1");
        assert_eq!(gp.node[0].input, vec!["x", "x_1"]);
        assert_eq!(gp.node[1].output, vec!["v3"]);
        let names: Vec<&str> = gp.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n", "n_1", "sm"]);
        // Symbolic dims become dim_param.
        let Some(TypeValue::TensorType(tt)) = &gp.input[0].type_.value else {
            panic!("no tensor type")
        };
        assert_eq!(tt.shape.dim[0].value, Some(DimValue::DimParam("n".into())));
        assert_eq!(tt.shape.dim[1].value, Some(DimValue::DimValue(3)));
        assert_eq!(gp.value_info.len(), 2);
        // Same graph, same bytes; the re-imported graph computes the same.
        let bytes = to_bytes(&g).unwrap();
        assert_eq!(bytes, to_bytes(&g).unwrap());
        let back = load_bytes(&bytes, None).unwrap();
        let x = t_f32(&[2, 3], &[1.0, 2.0, 3.0, -4.0, 0.0, 1.0]);
        let want = crate::interp::run(&g, vec![x.clone()]).unwrap();
        let got = crate::interp::run(&back, vec![x]).unwrap();
        assert!(want == got);
        // Exporting the re-imported graph gives the same bytes.
        assert_eq!(to_bytes(&back).unwrap(), bytes);
    }

    #[test]
    fn inputs_constants_and_repeats_as_outputs_get_identities() {
        let mut g = small_graph();
        let x = g.inputs[0];
        let w = *g.consts.keys().next().unwrap();
        let y = g.outputs[0];
        g.outputs = vec![y, x, w, y];
        let m = to_model(&g).unwrap();
        let gp = m.graph.as_ref().unwrap();
        let outs: Vec<&str> = gp.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outs, ["y", "x_out", "x_1_out", "y_out"]);
        assert_eq!(op_types(&m)[3..], ["Identity", "Identity", "Identity"]);
        let back = load_bytes(&to_bytes(&g).unwrap(), None).unwrap();
        let input = t_f32(&[1, 3], &[1.0, 2.0, 3.0]);
        let want = crate::interp::run(&g, vec![input.clone()]).unwrap();
        assert!(want == crate::interp::run(&back, vec![input]).unwrap());
    }

    #[test]
    fn legacy_softmax_is_flatten_softmax_reshape() {
        for (axis, dims, expect) in [
            (
                1,
                vec![Dim::sym("b"), 3.into(), 4.into()],
                vec!["Shape", "Flatten", "LogSoftmax", "Reshape"],
            ),
            (
                0,
                vec![2.into(), 3.into(), 4.into()],
                vec!["Flatten", "LogSoftmax", "Reshape"],
            ),
            (-1, vec![2.into(), 3.into(), 4.into()], vec!["LogSoftmax"]),
            (2, vec![2.into(), 3.into(), 4.into()], vec!["LogSoftmax"]),
        ] {
            let mut g = Graph::new("g", 11);
            let x = g.add_input("x", TensorType::new(DType::F32, Shape(dims)));
            let y = node(
                &mut g,
                "sm",
                Op::LogSoftmax { axis, legacy: true },
                vec![x],
                vec![f32_ty(&[1])],
            );
            g.outputs.push(y[0]);
            infer::infer_graph(&mut g).unwrap();
            let m = to_model(&g).unwrap();
            assert_eq!(op_types(&m), expect, "axis {axis}");
            let back = load_bytes(&to_bytes(&g).unwrap(), None).unwrap();
            let v: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
            let input = t_f32(&[2, 3, 4], &v);
            let want = crate::interp::run(&g, vec![input.clone()]).unwrap();
            let got = crate::interp::run(&back, vec![input]).unwrap();
            let (w, o) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
            assert!(
                w.iter().zip(o).all(|(a, b)| (a - b).abs() < 1e-5),
                "axis {axis}"
            );
        }
    }

    #[test]
    fn attributes_of_legacy_forms() {
        let mut g = Graph::new("g", 14);
        let x = g.add_input("x", f32_ty(&[2, 3, 4, 4]));
        let pool = PoolAttrs {
            kernel_shape: vec![2, 2],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![0, 0, 0, 0],
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            column_major: true,
        };
        let p = node(
            &mut g,
            "pool",
            Op::MaxPool(pool),
            vec![x],
            vec![
                f32_ty(&[1]),
                TensorType::new(DType::I64, Shape::known(&[1])),
            ],
        );
        let stats: Vec<ValueId> = (0..4)
            .map(|i| g.add_const(format!("s{i}"), t_f32(&[3], &[1.0, 0.5, 2.0])))
            .collect();
        let bn = node(
            &mut g,
            "bn",
            Op::BatchNormalization {
                epsilon: 1e-3,
                training_momentum: Some(0.8),
            },
            [vec![p[0]], stats].concat(),
            vec![f32_ty(&[1]), f32_ty(&[1]), f32_ty(&[1])],
        );
        g.outputs.extend([bn[0], bn[1], bn[2], p[1]]);
        infer::infer_graph(&mut g).unwrap();
        let m = to_model(&g).unwrap();
        let gp = m.graph.as_ref().unwrap();
        let find = |n: &NodeProto, a: &str| n.attribute.iter().find(|x| x.name == a).cloned();
        assert_eq!(find(&gp.node[0], "storage_order").unwrap().i, 1);
        assert!(find(&gp.node[0], "pads").is_none());
        assert_eq!(gp.node[0].output.len(), 2);
        assert_eq!(find(&gp.node[1], "training_mode").unwrap().i, 1);
        assert_eq!(find(&gp.node[1], "momentum").unwrap().f, 0.8);
        assert_eq!(gp.node[1].output.len(), 3);
        let back = load_bytes(&to_bytes(&g).unwrap(), None).unwrap();
        let ops: Vec<Op> = back.nodes().map(|(_, n)| n.op.clone()).collect();
        let orig: Vec<Op> = g.nodes().map(|(_, n)| n.op.clone()).collect();
        assert_eq!(ops, orig);
    }

    #[test]
    fn fused_ops_expand() {
        let mut g = Graph::new("g", 21);
        let x = g.add_input("x", f32_ty(&[1, 2, 4, 4]));
        let w = g.add_const("w", Tensor::zeros(DType::F32, vec![3, 2, 1, 1]));
        let b = g.add_const("b", Tensor::zeros(DType::F32, vec![3]));
        let r = g.add_input("r", f32_ty(&[1, 3, 4, 4]));
        let conv = ConvAttrs {
            kernel_shape: vec![1, 1],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let c = node(
            &mut g,
            "fc",
            Op::FusedConv {
                conv: conv.clone(),
                act: Some(Activation::Clip { min: 0.0, max: 6.0 }),
            },
            vec![x, w, b, r],
            vec![f32_ty(&[1, 3, 4, 4])],
        );
        let c2 = node(
            &mut g,
            "fc2",
            Op::FusedConv { conv, act: None },
            vec![x, w],
            vec![f32_ty(&[1, 3, 4, 4])],
        );
        // Gemm form: 2-D operands, bias [N].
        let a = g.add_input("a", f32_ty(&[3, 4]));
        let bm = g.add_const("bm", Tensor::zeros(DType::F32, vec![5, 4]));
        let bias = g.add_const("bias", Tensor::zeros(DType::F32, vec![5]));
        let fm = |trans_b, act| Op::FusedMatMul {
            trans_a: false,
            trans_b,
            alpha: 0.5,
            act,
        };
        let m1 = node(
            &mut g,
            "mm",
            fm(true, Some(Activation::Gelu { tanh_approx: true })),
            vec![a, bm, bias],
            vec![f32_ty(&[3, 5])],
        );
        // MatMul form: batched A.
        let a3 = g.add_input("a3", f32_ty(&[2, 3, 4]));
        let m2 = node(
            &mut g,
            "mm3",
            fm(true, None),
            vec![a3, bm, bias],
            vec![f32_ty(&[2, 3, 5])],
        );
        g.outputs.extend([c[0], c2[0], m1[0], m2[0]]);
        let m = to_model(&g).unwrap();
        assert_eq!(
            op_types(&m),
            [
                "Conv",
                "Add",
                "Clip",
                "Conv",
                "Gemm",
                "Gelu",
                "Transpose",
                "MatMul",
                "Mul",
                "Add"
            ]
        );
        let gp = m.graph.as_ref().unwrap();
        assert_eq!(gp.node[0].input, ["x", "w", "b"]);
        assert_eq!(gp.node[1].input[1], "r");
        assert_eq!(gp.node[2].output, ["fc_out0"]);
        assert_eq!(gp.node[3].input, ["x", "w"]);
        // Transpose swaps the last two dims of B.
        assert_eq!(gp.node[6].attribute[0].ints, [1, 0]);
        // Scalars of the clip and alpha are initializers.
        let inits: Vec<&str> = gp.initializer.iter().map(|t| t.name.as_str()).collect();
        assert!(
            inits.contains(&"fc/clip_min") && inits.contains(&"mm3/alpha"),
            "{inits:?}"
        );
        // Importable as standard ONNX.
        let back = load_bytes(&to_bytes(&g).unwrap(), None).unwrap();
        assert_eq!(back.node_count(), 10);
    }

    #[test]
    fn elementwise_chains_expand() {
        let mut g = Graph::new("g", 21);
        let x = g.add_input("x", f32_ty(&[2, 3]));
        let y = g.add_input("y", f32_ty(&[3]));
        let steps = vec![
            EwStep::Binary(
                crate::ir::BinaryOp::Mul,
                EwArg::Input(0),
                EwArg::Scalar(2.0),
            ),
            EwStep::Binary(crate::ir::BinaryOp::Add, EwArg::Step(0), EwArg::Input(1)),
            EwStep::Unary(UnaryOp::Tanh, EwArg::Step(1)),
            EwStep::Clip(EwArg::Step(2), -0.5, 0.5),
        ];
        let e = node(
            &mut g,
            "ew",
            Op::Elementwise {
                steps: steps.clone(),
            },
            vec![x, y],
            vec![f32_ty(&[2, 3])],
        );
        // The result does not read input 1: it is broadcast in.
        let z = g.add_input("z", f32_ty(&[4, 1, 1]));
        let e2 = node(
            &mut g,
            "ew2",
            Op::Elementwise {
                steps: vec![EwStep::Unary(UnaryOp::Neg, EwArg::Input(0))],
            },
            vec![x, z],
            vec![f32_ty(&[4, 2, 3])],
        );
        g.outputs.extend([e[0], e2[0]]);
        let m = to_model(&g).unwrap();
        assert_eq!(
            op_types(&m),
            ["Mul", "Add", "Tanh", "Clip", "Neg", "Shape", "Expand"]
        );
        let back = load_bytes(&to_bytes(&g).unwrap(), None).unwrap();
        let xv = t_f32(&[2, 3], &[0.1, -0.2, 0.3, 1.0, -1.0, 0.0]);
        let yv = t_f32(&[3], &[0.05, 0.1, -0.3]);
        let zv = Tensor::zeros(DType::F32, vec![4, 1, 1]);
        let out = crate::interp::run(&back, vec![xv, yv, zv]).unwrap();
        let want: Vec<f32> = [0.1f32, -0.2, 0.3, 1.0, -1.0, 0.0]
            .iter()
            .zip([0.05f32, 0.1, -0.3].iter().cycle())
            .map(|(a, b)| (a * 2.0 + b).tanh().clamp(-0.5, 0.5))
            .collect();
        let got = out[0].as_f32().unwrap();
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?}"
        );
        assert_eq!(out[1].shape(), &[4, 2, 3]);
        assert_eq!(out[1].as_f32().unwrap()[6 * 3 + 3], -1.0);

        // Malformed chains are errors, not panics.
        for bad in [
            vec![],
            vec![EwStep::Unary(UnaryOp::Neg, EwArg::Step(0))],
            vec![EwStep::Unary(UnaryOp::Neg, EwArg::Input(5))],
            vec![EwStep::Binary(
                crate::ir::BinaryOp::Less,
                EwArg::Input(0),
                EwArg::Input(0),
            )],
        ] {
            let mut g = Graph::new("g", 21);
            let x = g.add_input("x", f32_ty(&[2]));
            let e = node(
                &mut g,
                "ew",
                Op::Elementwise { steps: bad.clone() },
                vec![x],
                vec![f32_ty(&[2])],
            );
            g.outputs.push(e[0]);
            let err = to_model(&g).unwrap_err().to_string();
            assert!(err.contains("node 'ew' (Elementwise)"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn broken_graphs_are_errors() {
        let mut g = small_graph();
        let first = g.nodes().next().unwrap().0;
        g.remove_node(first);
        let e = to_model(&g).unwrap_err().to_string();
        assert!(e.contains("nothing defines"), "{e}");
        let mut g = small_graph();
        g.outputs.push(ValueId(999));
        let e = to_model(&g).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}

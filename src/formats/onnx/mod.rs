//! ONNX import: a `ModelProto` into mlc's graph IR.
//!
//! The importer never trusts the file. It builds the graph in phases so that
//! hostile graphs (cycles, duplicate or undefined names, nodes out of order)
//! end in a clear error instead of a panic or a loop: initializers become
//! constants, graph inputs get their declared types, `Constant` nodes become
//! constants, every other node is turned into an [`crate::ir::Op`] by the importer its
//! [`ops::OpSpec`] names (legacy attribute forms become constant inputs),
//! then node outputs get values and node inputs are resolved by name. Every
//! problem found on the way (unsupported ops, attributes, dtypes, bad
//! initializers, undefined names) is collected and reported together as one
//! [`Error::Import`]. A few ops need the rank or shape of an input that is
//! only known after inference (the default Transpose perm, Conv without
//! `kernel_shape`); they carry a fixup that runs in topological order with
//! the types inference gives. Finally [`infer::infer_graph`] types every
//! value and [`verify::verify`] checks the result.

mod array;
mod attrs;
mod ctx;
pub mod export;
mod math;
mod nn;
pub mod ops;
mod quant;
mod schema;
mod tensor;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::Value as TypeValue;
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use crate::error::ImportProblem;
use crate::ir::{infer, verify, DType, Dim, Node, NodeId, Shape, TensorType, ValueId};
use crate::{Error, Graph, Result, Tensor};

use attrs::Attrs;
use ctx::{Ctx, Fixup, Imported, In};

/// Oldest default-domain opset mlc imports.
pub use export::{
    export_opset, ir_version_for, tensor_to_proto, to_bytes, to_bytes_with, to_model,
    to_model_with, write, write_with, ExportOptions,
};

pub const MIN_OPSET: i64 = 7;
/// Newest default-domain opset mlc imports. Opsets 22..28 changed the ops mlc
/// supports only by adding element types (bfloat16, float8, float4, 4- and
/// 2-bit integers), plus Cast `round_mode` (read) and Range `stash_type`
/// (f16/bf16 Range computes in f32, the default stash type).
pub const MAX_OPSET: i64 = 28;

/// Reads and imports an ONNX model; external data is resolved against the
/// model's directory.
pub fn load(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_file_bytes(&bytes, path)
}

/// Imports the bytes read from the model file `path` (named in errors;
/// external data is resolved against its directory).
pub fn from_file_bytes(bytes: &[u8], path: &Path) -> Result<Graph> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    import(bytes, path, Some(dir))
}

/// Imports an ONNX model from memory. External data is resolved against
/// `base_dir`; with `None` it is refused.
pub fn load_bytes(bytes: &[u8], base_dir: Option<&Path>) -> Result<Graph> {
    import(bytes, Path::new("<memory>"), base_dir)
}

/// Decodes one ONNX tensor (external data resolved against `base_dir`, or
/// refused when it is `None`).
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor> {
    tensor::decode(t, base_dir).map_err(|m| Error::Import {
        problems: vec![ImportProblem {
            node: t.name.clone(),
            op_type: "tensor".into(),
            opset: 0,
            message: format!("tensor '{}' {m}", t.name),
        }],
    })
}

/// Reads a serialized `TensorProto` file, as the ONNX backend test cases
/// store their inputs and outputs (`test_data_set_0/input_0.pb`). Returns
/// the tensor's name and value.
pub fn read_tensor_pb(path: &Path) -> Result<(String, Tensor)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let malformed = |message: String| Error::Malformed {
        path: path.into(),
        message,
    };
    if bytes.is_empty() {
        return Err(malformed("empty file".into()));
    }
    let t = TensorProto::parse_from_bytes(&bytes)
        .map_err(|e| malformed(format!("not a serialized ONNX tensor: {e}")))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let x = tensor::decode(&t, Some(dir.unwrap_or(Path::new("."))))
        .map_err(|m| malformed(format!("tensor '{}' {m}", t.name)))?;
    Ok((t.name, x))
}

fn import(bytes: &[u8], path: &Path, base_dir: Option<&Path>) -> Result<Graph> {
    let malformed = |message: String| Error::Malformed {
        path: PathBuf::from(path),
        message,
    };
    if bytes.is_empty() {
        return Err(malformed("empty file".into()));
    }
    // Before the decoder, whose skipping of unknown groups recurses without
    // a limit.
    check_structure(bytes).map_err(|m| malformed(format!("not an ONNX model: {m}")))?;
    let model = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| malformed(format!("not an ONNX model: {e}")))?;
    let Some(graph) = model.graph.as_ref() else {
        return Err(malformed("not an ONNX model: it has no graph".into()));
    };
    Builder::new(base_dir).build(&model, graph)
}

/// Walks the serialized model's structure with an explicit stack before the
/// decoder sees it, so that hostile nesting cannot exhaust the stack:
/// every field must lie within the message that holds it (the decoder
/// accepts a nested message cut short at one of its field boundaries, so a
/// truncated file would read as a smaller model), messages nest at most
/// [`MAX_NESTING`] deep, and protobuf groups, which ONNX never uses (and
/// which the decoder skips by recursing once per level), are refused.
fn check_structure(bytes: &[u8]) -> std::result::Result<(), String> {
    fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos)?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    // (end of the message, its type) for every message being read.
    let mut stack: Vec<(usize, Msg)> = vec![(bytes.len(), Msg::Model)];
    let mut pos = 0;
    while let Some(&(end, msg)) = stack.last() {
        if pos == end {
            stack.pop();
            continue;
        }
        let at = pos;
        let tag = varint(bytes, &mut pos)
            .filter(|_| pos <= end)
            .ok_or(format!(
                "a field tag at byte {at} runs past the end of its message"
            ))?;
        let field = tag >> 3;
        let next = match tag & 7 {
            0 => varint(bytes, &mut pos).map(|_| pos),
            1 => pos.checked_add(8),
            5 => pos.checked_add(4),
            2 => {
                let len = varint(bytes, &mut pos).and_then(|l| usize::try_from(l).ok());
                match (len.and_then(|l| pos.checked_add(l)), msg.field(field)) {
                    (Some(e), Some(sub)) if e <= end => {
                        if stack.len() >= MAX_NESTING {
                            return Err(format!(
                                "messages nest more than {MAX_NESTING} deep at byte {at}"
                            ));
                        }
                        stack.push((e, sub));
                        continue;
                    }
                    (e, _) => e,
                }
            }
            w => {
                return Err(format!(
                    "field {field} at byte {at} has wire type {w} (protobuf groups and invalid types are not ONNX)"
                ))
            }
        };
        match next {
            Some(e) if e <= end => pos = e,
            _ => {
                return Err(format!(
                    "field {field} at byte {at} runs past the end of its message"
                ))
            }
        }
    }
    Ok(())
}

/// The ONNX message types (onnx.proto), for [`check_structure`]: which
/// fields hold which messages.
#[derive(Clone, Copy)]
enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    ValueInfo,
    Type,
    TypeTensor,
    TypeElem,
    TypeMap,
    Shape,
    Function,
    TrainingInfo,
    TensorAnnotation,
    /// StringStringEntryProto, OperatorSetIdProto, Segment, Dimension.
    Leaf,
}

impl Msg {
    /// The message type field number `f` holds, when it holds one.
    fn field(self, f: u64) -> Option<Msg> {
        use Msg::*;
        Some(match (self, f) {
            (Model, 7) => Graph,
            (Model, 20) => TrainingInfo,
            (Model, 25) => Function,
            (Model, 8 | 14) => Leaf,
            (Graph, 1) => Node,
            (Graph, 5) => Tensor,
            (Graph, 15) => SparseTensor,
            (Graph, 11..=13) => ValueInfo,
            (Graph, 14) => TensorAnnotation,
            (Graph, 16) => Leaf,
            (Node, 5) => Attribute,
            (Node, 9) => Leaf,
            (Attribute, 5 | 10) => Tensor,
            (Attribute, 6 | 11) => Graph,
            (Attribute, 22 | 23) => SparseTensor,
            (Attribute, 14 | 15) => Type,
            (Tensor, 3 | 13 | 16) => Leaf,
            (SparseTensor, 1 | 2) => Tensor,
            (ValueInfo, 2) => Type,
            (ValueInfo, 4) => Leaf,
            (Type, 1 | 8) => TypeTensor,
            (Type, 4 | 9) => TypeElem,
            (Type, 5) => TypeMap,
            (TypeTensor, 2) => Shape,
            (TypeElem, 1) => Type,
            (TypeMap, 2) => Type,
            (Shape, 1) => Leaf,
            (Function, 7) => Node,
            (Function, 11) => Attribute,
            (Function, 12) => ValueInfo,
            (Function, 9 | 14) => Leaf,
            (TrainingInfo, 1 | 2) => Graph,
            (TrainingInfo, 3 | 4) => Leaf,
            (TensorAnnotation, 2) => Leaf,
            _ => return None,
        })
    }
}

/// Deepest nesting of messages a model may have (the protobuf decoder's own
/// recursion limit).
const MAX_NESTING: usize = 100;

/// The type graph inputs that nodes produce until inference runs.
fn placeholder() -> TensorType {
    TensorType::new(DType::F32, Shape::scalar())
}

/// The declared type of a graph input.
fn input_type(vi: &ValueInfoProto) -> std::result::Result<TensorType, String> {
    let value = vi.type_.as_ref().and_then(|t| t.value.as_ref());
    let t = match value {
        Some(TypeValue::TensorType(t)) => t,
        Some(_) => {
            return Err(
                "is not a tensor (sequence, map, optional and sparse inputs are not supported)"
                    .into(),
            )
        }
        None => return Err("has no type".into()),
    };
    let dtype = tensor::dtype_of(t.elem_type)?;
    let shape = t
        .shape
        .as_ref()
        .ok_or("has no shape (mlc needs the rank of every input)")?;
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(DimValue::DimValue(v)) if *v >= 0 => usize::try_from(*v)
                .map(Dim::Known)
                .unwrap_or_else(|_| Dim::Sym(format!("unk_{}_{axis}", vi.name))),
            Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Sym(p.clone()),
            // Neither a size nor a name (or a negative size, which some
            // exporters write for "unknown").
            _ => Dim::Sym(format!("unk_{}_{axis}", vi.name)),
        })
        .collect();
    Ok(TensorType::new(dtype, Shape(dims)))
}

/// Unique, deterministic node names: the ONNX name, else `<OpType>_<index>`;
/// repeated names get `_<index>` appended.
fn node_names(nodes: &[NodeProto]) -> Vec<String> {
    let mut used = HashSet::new();
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let base = if !n.name.is_empty() {
                n.name.clone()
            } else if !n.op_type.is_empty() {
                format!("{}_{i}", n.op_type)
            } else {
                format!("node_{i}")
            };
            let mut name = base.clone();
            let mut k = i;
            while used.contains(&name) {
                name = format!("{base}_{k}");
                k += 1;
            }
            used.insert(name.clone());
            name
        })
        .collect()
}

/// The value of a `Constant` node.
fn constant_value(c: &Ctx) -> std::result::Result<Tensor, String> {
    for unsupported in ["sparse_value", "value_string", "value_strings"] {
        if c.attrs.has(unsupported) {
            return Err(format!(
                "attribute '{unsupported}' is not supported (only numeric dense constants)"
            ));
        }
    }
    let mut found: Vec<Tensor> = Vec::new();
    if let Some(t) = c.attrs.opt_tensor("value")? {
        found.push(tensor::decode(t, c.base_dir).map_err(|e| format!("attribute 'value' {e}"))?);
    }
    if let Some(v) = c.attrs.opt_float("value_float")? {
        found.push(Tensor::scalar_f32(v));
    }
    if let Some(v) = c.attrs.opt_floats("value_floats")? {
        found.push(Tensor::from_f32(vec![v.len()], v.to_vec()).map_err(|e| e.to_string())?);
    }
    if let Some(v) = c.attrs.opt_int("value_int")? {
        found.push(Tensor::scalar_i64(v));
    }
    if let Some(v) = c.attrs.opt_ints("value_ints")? {
        found.push(Tensor::vec_i64(v.to_vec()));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("has no value attribute".into()),
        n => Err(format!("has {n} value attributes, exactly one is allowed")),
    }
}

struct Builder<'a> {
    g: Graph,
    base_dir: Option<&'a Path>,
    problems: Vec<ImportProblem>,
    /// ONNX names of defined values.
    names: HashMap<String, ValueId>,
    /// Names whose definition failed (already reported): uses are skipped.
    failed: HashSet<String>,
    /// Declared outputs mlc does not compute: name -> (node, op type, index).
    dropped: HashMap<String, (String, String, usize)>,
}

impl<'a> Builder<'a> {
    fn new(base_dir: Option<&'a Path>) -> Builder<'a> {
        Builder {
            g: Graph::default(),
            base_dir,
            problems: Vec::new(),
            names: HashMap::new(),
            failed: HashSet::new(),
            dropped: HashMap::new(),
        }
    }

    fn problem(&mut self, node: &str, op_type: &str, message: impl Into<String>) {
        self.problems.push(ImportProblem {
            node: node.to_string(),
            op_type: op_type.to_string(),
            opset: self.g.opset,
            message: message.into(),
        });
    }

    fn build(mut self, model: &ModelProto, graph: &GraphProto) -> Result<Graph> {
        self.g.name = graph.name.clone();
        let opset_ok = self.opset(model);
        self.initializers(graph);
        self.inputs(graph);
        if !opset_ok {
            return Err(Error::Import {
                problems: self.problems,
            });
        }
        let pending = self.nodes(graph);
        self.outputs(graph);
        if !self.problems.is_empty() {
            return Err(Error::Import {
                problems: self.problems,
            });
        }
        let mut g = self.g;
        g.topo_order()?;
        run_fixups(&mut g, pending)?;
        infer::infer_graph(&mut g)?;
        verify::verify(&g)?;
        Ok(g)
    }

    /// Finds the default-domain opset; false when it is missing or out of
    /// range (node import is then skipped).
    fn opset(&mut self, model: &ModelProto) -> bool {
        let mut found: Option<i64> = None;
        for o in &model.opset_import {
            if o.domain.is_empty() || o.domain == "ai.onnx" {
                match found {
                    Some(v) if v != o.version => {
                        self.problem(
                            "",
                            "graph",
                            format!(
                                "the model imports the default domain twice, at opsets {v} and {}",
                                o.version
                            ),
                        );
                        return false;
                    }
                    _ => found = Some(o.version),
                }
            }
        }
        let Some(v) = found else {
            self.problem(
                "",
                "graph",
                "the model does not import the default ONNX domain (no opset_import entry for \"\" or \"ai.onnx\")",
            );
            return false;
        };
        self.g.opset = v;
        if !(MIN_OPSET..=MAX_OPSET).contains(&v) {
            self.problem(
                "",
                "graph",
                format!("opset {v} is not supported (mlc supports {MIN_OPSET}..{MAX_OPSET})"),
            );
            return false;
        }
        true
    }

    fn initializers(&mut self, graph: &GraphProto) {
        // All initializers together stay within the memory budget.
        let mut total: u64 = 0;
        for t in &graph.initializer {
            if t.name.is_empty() {
                self.problem("", "initializer", "an initializer has no name");
                continue;
            }
            if self.names.contains_key(&t.name) || self.failed.contains(&t.name) {
                self.problem(
                    &t.name,
                    "initializer",
                    format!("initializer '{}' is defined twice", t.name),
                );
                continue;
            }
            match tensor::decode(t, self.base_dir) {
                Ok(x) => {
                    total += x.size_bytes() as u64;
                    if total > crate::limits::max_memory() {
                        self.problem(
                            &t.name,
                            "initializer",
                            format!(
                                "the initializers up to '{}' need {}",
                                t.name,
                                crate::limits::over_budget(total, crate::limits::max_memory())
                            ),
                        );
                        return;
                    }
                    let id = self.g.add_const(t.name.clone(), x);
                    self.names.insert(t.name.clone(), id);
                }
                Err(m) => {
                    self.problem(
                        &t.name,
                        "initializer",
                        format!("initializer '{}' {m}", t.name),
                    );
                    self.failed.insert(t.name.clone());
                }
            }
        }
        // Sparse initializers (named by their values) are held dense.
        for s in &graph.sparse_initializer {
            let name = s
                .values
                .as_ref()
                .map(|v| v.name.clone())
                .unwrap_or_default();
            if name.is_empty() {
                self.problem("", "initializer", "a sparse initializer has no name");
                continue;
            }
            if self.names.contains_key(&name) || self.failed.contains(&name) {
                self.problem(
                    &name,
                    "initializer",
                    format!("initializer '{name}' is defined twice"),
                );
                continue;
            }
            match tensor::decode_sparse(s, self.base_dir) {
                Ok(x) => {
                    total += x.size_bytes() as u64;
                    if total > crate::limits::max_memory() {
                        self.problem(
                            &name,
                            "initializer",
                            format!(
                                "the initializers up to '{name}' need {}",
                                crate::limits::over_budget(total, crate::limits::max_memory())
                            ),
                        );
                        return;
                    }
                    let id = self.g.add_const(name.clone(), x);
                    self.names.insert(name, id);
                }
                Err(m) => {
                    self.problem(
                        &name,
                        "initializer",
                        format!("sparse initializer '{name}' {m}"),
                    );
                    self.failed.insert(name);
                }
            }
        }
    }

    fn inputs(&mut self, graph: &GraphProto) {
        for vi in &graph.input {
            let name = vi.name.as_str();
            if self.failed.contains(name) {
                continue;
            }
            if let Some(&id) = self.names.get(name) {
                if self.g.is_const(id) {
                    // Listed as an input because it has a default value
                    // (always so before IR version 4): a constant.
                    continue;
                }
                self.problem(
                    name,
                    "input",
                    format!("graph input '{name}' is listed twice"),
                );
                continue;
            }
            if name.is_empty() {
                self.problem("", "input", "a graph input has no name");
                continue;
            }
            match input_type(vi) {
                Ok(ty) => {
                    let id = self.g.add_input(name, ty);
                    self.names.insert(name.to_string(), id);
                }
                Err(m) => {
                    self.problem(name, "input", format!("graph input '{name}' {m}"));
                    self.failed.insert(name.to_string());
                }
            }
        }
    }

    fn fail_outputs(&mut self, n: &NodeProto) {
        for o in &n.output {
            if !o.is_empty() {
                self.failed.insert(o.clone());
            }
        }
    }

    /// Imports every node; returns the fixups to run after the graph is
    /// complete.
    fn nodes(&mut self, graph: &GraphProto) -> Vec<(NodeId, Fixup)> {
        let nodes = &graph.node;
        let names = node_names(nodes);
        let mut ok = vec![true; nodes.len()];

        // Every output name must be new.
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                let clash = if let Some(&j) = producer.get(o.as_str()) {
                    Some(format!("node '{}' also defines it", names[j]))
                } else if self.names.contains_key(o) || self.failed.contains(o) {
                    Some("an initializer or graph input has that name".to_string())
                } else {
                    None
                };
                match clash {
                    Some(why) => {
                        self.problem(
                            &names[i],
                            &n.op_type,
                            format!("output '{o}' is defined more than once: {why}"),
                        );
                        ok[i] = false;
                    }
                    None => {
                        producer.insert(o, i);
                    }
                }
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            if !ok[i] {
                self.fail_outputs(n);
            }
        }

        // Domains, then Constant nodes (other importers may read constants).
        for (i, n) in nodes.iter().enumerate() {
            if !ok[i] {
                continue;
            }
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                self.problem(
                    &names[i],
                    &n.op_type,
                    format!(
                        "unsupported domain '{}' (mlc imports only the default ONNX domain)",
                        n.domain
                    ),
                );
                ok[i] = false;
                self.fail_outputs(n);
                continue;
            }
            if n.op_type == "Constant" {
                ok[i] = false; // handled here, not a node
                match self.constant(n, &names[i]) {
                    Ok((out, t)) => {
                        let id = self.g.add_const(out.clone(), t);
                        self.names.insert(out, id);
                    }
                    Err(m) => {
                        self.problem(&names[i], &n.op_type, m);
                        self.fail_outputs(n);
                    }
                }
            }
        }

        // Ops.
        let mut imported: Vec<(usize, Imported)> = Vec::new();
        let mut problems = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if !ok[i] {
                continue;
            }
            let ctx = Ctx {
                node: n,
                name: &names[i],
                opset: self.g.opset,
                attrs: Attrs::new(&n.attribute),
                base_dir: self.base_dir,
                graph: &self.g,
                names: &self.names,
            };
            match import_node(&ctx) {
                Ok(imp) => imported.push((i, imp)),
                Err(m) => problems.push((i, m)),
            }
        }
        for (i, m) in problems {
            self.problem(&names[i], &nodes[i].op_type, m);
            self.fail_outputs(&nodes[i]);
        }

        // Output values.
        let mut outputs: Vec<Vec<ValueId>> = Vec::with_capacity(imported.len());
        for (i, imp) in &imported {
            let n = &nodes[*i];
            let kept = imp.outputs.min(n.output.len());
            let mut ids = Vec::with_capacity(kept);
            for (j, o) in n.output.iter().enumerate() {
                if j < kept {
                    let name = if o.is_empty() {
                        format!("{}.out{j}", names[*i])
                    } else {
                        o.clone()
                    };
                    let id = self.g.add_value(name, placeholder());
                    if !o.is_empty() {
                        self.names.insert(o.clone(), id);
                    }
                    ids.push(id);
                } else if !o.is_empty() {
                    self.dropped
                        .insert(o.clone(), (names[*i].clone(), n.op_type.clone(), j));
                }
            }
            outputs.push(ids);
        }

        // Inputs, then the nodes themselves.
        let mut pending = Vec::new();
        for ((i, imp), outs) in imported.into_iter().zip(outputs) {
            let n = &nodes[i];
            let mut inputs = Vec::with_capacity(imp.inputs.len());
            let mut resolved = true;
            for input in imp.inputs {
                match input {
                    In::Absent => inputs.push(None),
                    In::Const(label, t) => {
                        let id = self.g.add_const(format!("{}.{label}", names[i]), t);
                        inputs.push(Some(id));
                    }
                    In::Name(name) => match self.resolve(
                        &name,
                        &format!("node '{}'", names[i]),
                        &names[i],
                        &n.op_type,
                    ) {
                        Some(id) => inputs.push(Some(id)),
                        None => resolved = false,
                    },
                }
            }
            if !resolved {
                continue;
            }
            let id = self.g.add_node(Node {
                name: names[i].clone(),
                op: imp.op,
                inputs,
                outputs: outs,
            });
            if let Some(f) = imp.fixup {
                pending.push((id, f));
            }
        }
        pending
    }

    /// A `Constant` node's output name and value.
    fn constant(&self, n: &NodeProto, name: &str) -> std::result::Result<(String, Tensor), String> {
        if ctx::trimmed_len(&n.input) != 0 {
            return Err("a Constant node takes no inputs".into());
        }
        if n.output.len() != 1 || n.output[0].is_empty() {
            return Err("a Constant node has exactly one named output".into());
        }
        let ctx = Ctx {
            node: n,
            name,
            opset: self.g.opset,
            attrs: Attrs::new(&n.attribute),
            base_dir: self.base_dir,
            graph: &self.g,
            names: &self.names,
        };
        let t = constant_value(&ctx)?;
        check_attrs(&ctx)?;
        Ok((n.output[0].clone(), t))
    }

    /// The value an input name refers to; records a problem (at `node`, of
    /// `op_type`) when nothing defines it.
    fn resolve(&mut self, name: &str, user: &str, node: &str, op_type: &str) -> Option<ValueId> {
        if let Some(&id) = self.names.get(name) {
            return Some(id);
        }
        if self.failed.contains(name) {
            return None;
        }
        if let Some((producer, op, j)) = self.dropped.get(name).cloned() {
            self.problem(
                &producer,
                &op,
                format!(
                    "its output #{j} ('{name}') is used by {user}, but mlc does not support that output of {op}"
                ),
            );
            return None;
        }
        self.problem(
            node,
            op_type,
            format!("input '{name}' is not defined by any node, initializer or graph input"),
        );
        None
    }

    fn outputs(&mut self, graph: &GraphProto) {
        if graph.output.is_empty() {
            self.problem("", "graph", "the graph has no outputs");
        }
        for vi in &graph.output {
            if vi.name.is_empty() {
                self.problem("", "output", "a graph output has no name");
                continue;
            }
            if let Some(id) = self.resolve(&vi.name, "the graph outputs", &vi.name, "output") {
                self.g.outputs.push(id);
            }
        }
    }
}

/// Unread attributes are not silently ignored.
fn check_attrs(c: &Ctx) -> std::result::Result<(), String> {
    let unread = c.attrs.unread();
    if unread.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unread.iter().map(|a| format!("'{a}'")).collect();
    Err(format!(
        "unsupported attribute{} {} (see {})",
        if unread.len() == 1 { "" } else { "s" },
        list.join(", "),
        ops::spec_url(&c.node.op_type)
    ))
}

/// Imports one (non-Constant) node through its spec.
fn import_node(c: &Ctx) -> std::result::Result<Imported, String> {
    let spec = ops::find(&c.node.op_type, c.opset)?;
    let n_in = c.n_inputs();
    if !spec.inputs.contains(&n_in) {
        return Err(format!(
            "has {n_in} inputs, but {} at opset {} takes {} (see {})",
            spec.name,
            c.opset,
            ops::fmt_count(&spec.inputs),
            ops::spec_url(spec.name)
        ));
    }
    let n_out = c.n_outputs();
    if !spec.outputs.contains(&n_out) {
        return Err(format!(
            "has {n_out} outputs, but {} at opset {} gives {} (see {})",
            spec.name,
            c.opset,
            ops::fmt_count(&spec.outputs),
            ops::spec_url(spec.name)
        ));
    }
    let dups = c.attrs.duplicates();
    if !dups.is_empty() {
        return Err(format!("attribute '{}' is given more than once", dups[0]));
    }
    let imp = (spec.import)(c)?;
    check_attrs(c)?;
    Ok(imp)
}

/// Completes the ops that needed input types, walking the graph in
/// topological order and typing node outputs with inference up to the last
/// such op.
fn run_fixups(g: &mut Graph, pending: Vec<(NodeId, Fixup)>) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut pending: HashMap<NodeId, Fixup> = pending.into_iter().collect();
    let order = g.topo_order()?;
    for id in order {
        if pending.is_empty() {
            break;
        }
        let Some(node) = g.node(id) else { continue };
        if let Some(fix) = pending.remove(&id) {
            let tys: Vec<Option<TensorType>> = node
                .inputs
                .iter()
                .map(|i| i.map(|v| g.ty(v).clone()))
                .collect();
            let opset = g.opset;
            let Some(node) = g.node_mut(id) else { continue };
            if let Err(message) = fix(&mut node.op, &tys) {
                return Err(Error::Import {
                    problems: vec![ImportProblem {
                        node: node.name.clone(),
                        op_type: node.op.onnx_type().to_string(),
                        opset,
                        message,
                    }],
                });
            }
        }
        if pending.is_empty() {
            break;
        }
        let Some(node) = g.node(id) else { continue };
        let tys =
            infer::infer_node(g, node).map_err(|e| e.at_node(&node.name, node.op.onnx_type()))?;
        let outs = node.outputs.clone();
        if tys.len() != outs.len() {
            return Err(Error::Internal(format!(
                "inference gave {} types for the {} outputs of node '{}'",
                tys.len(),
                outs.len(),
                node.name
            )));
        }
        for (o, t) in outs.into_iter().zip(tys) {
            g.value_mut(o).ty = t;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

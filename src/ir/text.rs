//! The canonical text form of a graph (`mlc inspect --ir`, golden tests,
//! bundles), its printer and its parser.
//!
//! One line per input, constant, node and output. Values are numbered
//! canonically: `%0..` for the inputs (in `Graph::inputs` order), then the
//! constants (in `Graph::consts` order), then the node outputs with the nodes
//! in [`Graph::topo_order`]; [`canonicalize`] renumbers a graph's ids that way,
//! so for a canonical graph `ValueId.0` is the printed number. Every
//! attribute needed to rebuild an op exactly is printed (floats in Rust's
//! shortest round-trip form, so `parse(print(g))` is bit-exact), and small
//! constants show their values:
//!
//! ```text
//! graph "mlp" opset 17
//!   input  %0 x: f32[batch,4]
//!   const  %1 w: f32[4,2]
//!   const  %2 b: f32[2] = [0.5, -1]
//!   %3 h: f32[batch,2] = MatMul(%0, %1)  # mm
//!   %4 y: f32[batch,2] = Add(%3, %2)  # "/fc/Add"
//!   output %4 y
//! ```
//!
//! Names are bare when they match `[A-Za-z_][A-Za-z0-9_./-]*` and JSON-quoted
//! otherwise; symbolic dims are bare unless they hold characters outside
//! `[A-Za-z0-9_.*/-]` (or are all digits). An absent optional input is `_`; a
//! node's name follows `#` (omitted when empty). Attribute values are
//! numbers, `true`/`false`, lowercase identifiers for enums, lists `[1, 2]`,
//! calls for activations and elementwise steps (`act=clip(0, 6)`,
//! `steps=[mul(in0, 0.5), erf(s0)]`) and `f32[1](0)` for a tensor.
//!
//! [`parse`] reads the form back (blank lines and whole-line `#` comments
//! are skipped): the opset comes from the header, the numbering may be any
//! set of distinct numbers (values get ids in line order; definitions may
//! come after their uses), attributes the printer always shows may be left
//! out where ONNX has a default, and the result is re-inferred and verified:
//! the declared type of every node output must equal the inferred one,
//! symbolic dim names included. Errors are [`Error::InvalidGraph`] messages
//! starting with the line number.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use half::{bf16, f16};

use super::lowp::{self, Minifloat};
use super::schema::{self, AttrValue, Kind};
use super::{
    infer, verify, ActQuant, Activation, BinaryOp, DType, Dim, E8M0Round, EwArg, EwStep, Graph,
    Node, NodeId, Op, Shape, Tensor, TensorData, TensorType, UnaryOp, ValueDef, ValueId,
};
use crate::{Error, Result};

// ---------------------------------------------------------------------------
// Printing

/// Options for [`print_with`].
#[derive(Clone, Debug)]
pub struct PrintOptions {
    /// Constants with at most this many elements show their values inline;
    /// 0 never shows values (the bundle stores weights separately).
    pub inline_const_limit: usize,
}

impl Default for PrintOptions {
    fn default() -> PrintOptions {
        PrintOptions {
            inline_const_limit: 16,
        }
    }
}

/// Renders the graph in the canonical text form, constants of at most 16
/// elements with their values.
pub fn print(g: &Graph) -> String {
    print_with(g, &PrintOptions::default())
}

/// The canonical numbering of a graph's values and its node order.
struct Numbering {
    /// Values in canonical order.
    order: Vec<ValueId>,
    num: HashMap<ValueId, usize>,
    nodes: Vec<NodeId>,
}

impl Numbering {
    fn new(g: &Graph) -> Numbering {
        let nodes = g
            .topo_order()
            .unwrap_or_else(|_| g.nodes().map(|(id, _)| id).collect());
        let mut nb = Numbering {
            order: Vec::new(),
            num: HashMap::new(),
            nodes,
        };
        for &i in &g.inputs {
            nb.push(g, i);
        }
        for &c in g.consts.keys() {
            nb.push(g, c);
        }
        for k in 0..nb.nodes.len() {
            if let Some(node) = g.node(nb.nodes[k]) {
                for &o in &node.outputs {
                    nb.push(g, o);
                }
            }
        }
        // Values read but defined by nothing (only in a broken graph) still
        // get numbers, so the text shows the problem instead of hiding it.
        for k in 0..nb.nodes.len() {
            if let Some(node) = g.node(nb.nodes[k]) {
                for &i in node.inputs.iter().flatten() {
                    nb.push(g, i);
                }
            }
        }
        for &o in &g.outputs {
            nb.push(g, o);
        }
        nb
    }

    fn push(&mut self, g: &Graph, v: ValueId) {
        if (v.0 as usize) < g.values.len() && !self.num.contains_key(&v) {
            self.num.insert(v, self.order.len());
            self.order.push(v);
        }
    }

    fn text(&self, v: ValueId) -> String {
        match self.num.get(&v) {
            Some(n) => format!("%{n}"),
            // Out of range: the graph is broken; show the raw id.
            None => format!("%?{}", v.0),
        }
    }
}

/// A copy of `g` with value ids renumbered canonically (inputs, constants,
/// node outputs in topological order), nodes stored in topological order and
/// no tombstones or unused values. Constant data is shared, not copied.
pub fn canonicalize(g: &Graph) -> Graph {
    let nb = Numbering::new(g);
    let mut out = Graph::new(g.name.clone(), g.opset);
    for &v in &nb.order {
        let val = g.value(v);
        out.add_value(val.name.clone(), val.ty.clone());
    }
    // Every value in `order` has a number, so the lookups below succeed for
    // the values of a graph whose ids are in range.
    let map = |v: ValueId| nb.num.get(&v).map(|&n| ValueId(n as u32));
    for &i in &g.inputs {
        if let Some(id) = map(i) {
            out.value_mut(id).def = ValueDef::Input;
            out.inputs.push(id);
        }
    }
    for (&c, t) in &g.consts {
        if let Some(id) = map(c) {
            out.value_mut(id).def = ValueDef::Const;
            out.consts.insert(id, Arc::clone(t));
        }
    }
    for &n in &nb.nodes {
        let Some(node) = g.node(n) else { continue };
        out.add_node(Node {
            name: node.name.clone(),
            op: node.op.clone(),
            inputs: node.inputs.iter().map(|i| i.and_then(map)).collect(),
            outputs: node.outputs.iter().filter_map(|&o| map(o)).collect(),
        });
    }
    out.outputs = g.outputs.iter().filter_map(|&o| map(o)).collect();
    out
}

/// Renders the graph in the canonical text form with the given options.
pub fn print_with(g: &Graph, opts: &PrintOptions) -> String {
    let nb = Numbering::new(g);
    let mut s = String::new();
    let _ = writeln!(s, "graph {} opset {}", quote(&g.name), g.opset);
    for &i in &g.inputs {
        let v = g.value(i);
        let _ = writeln!(
            s,
            "  input  {} {}: {}",
            nb.text(i),
            name_text(&v.name),
            type_text(&v.ty)
        );
    }
    for (&c, t) in &g.consts {
        let v = g.value(c);
        let _ = write!(
            s,
            "  const  {} {}: {}",
            nb.text(c),
            name_text(&v.name),
            type_text(&v.ty)
        );
        if t.numel() <= opts.inline_const_limit {
            let _ = write!(s, " = [{}]", tensor_values_text(t));
        }
        s.push('\n');
    }
    for &id in &nb.nodes {
        let Some(node) = g.node(id) else { continue };
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&o| {
                format!(
                    "{} {}: {}",
                    nb.text(o),
                    name_text(&g.value(o).name),
                    type_text(g.ty(o))
                )
            })
            .collect();
        let ins: Vec<String> = node
            .inputs
            .iter()
            .map(|i| i.map_or_else(|| "_".to_string(), |v| nb.text(v)))
            .collect();
        let _ = write!(
            s,
            "  {} = {}{}({})",
            outs.join(", "),
            node.op.onnx_type(),
            attrs_text(&node.op),
            ins.join(", "),
        );
        if !node.name.is_empty() {
            let _ = write!(s, "  # {}", name_text(&node.name));
        }
        s.push('\n');
    }
    for &o in &g.outputs {
        let _ = writeln!(s, "  output {} {}", nb.text(o), name_text(&g.value(o).name));
    }
    s
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    // Serializing a string to JSON cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn is_bare_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
}

/// A name, bare when it is a plain identifier, else quoted.
fn name_text(s: &str) -> String {
    if is_bare_name(s) {
        s.to_string()
    } else {
        quote(s)
    }
}

fn is_dim_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '/' | '-')
}

/// `f32[batch,4]`, with symbolic dims quoted when they would not read back.
pub fn type_text(ty: &TensorType) -> String {
    let dims: Vec<String> = ty
        .shape
        .0
        .iter()
        .map(|d| match d {
            Dim::Known(n) => n.to_string(),
            Dim::Sym(s) => {
                if !s.is_empty()
                    && s.chars().all(is_dim_char)
                    && !s.chars().all(|c| c.is_ascii_digit())
                {
                    s.clone()
                } else {
                    quote(s)
                }
            }
        })
        .collect();
    format!("{}[{}]", ty.dtype, dims.join(","))
}

/// An f32 that reads back bit-exactly (NaN keeps its sign).
fn f32_text(x: f32) -> String {
    if x.is_nan() {
        return if x.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.into();
    }
    let a = x.abs();
    if a == 0.0 || (1e-3..1e16).contains(&a) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

fn f64_text(x: f64) -> String {
    if x.is_nan() {
        return if x.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.into();
    }
    let a = x.abs();
    if a == 0.0 || (1e-3..1e16).contains(&a) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// The elements of a tensor, comma-separated: floats of every width via
/// their f32 value (f64 via f64), integers as integers, bools as words.
fn tensor_values_text(t: &Tensor) -> String {
    fn join<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
        v.iter().map(f).collect::<Vec<_>>().join(", ")
    }
    match t.data() {
        TensorData::F32(v) => join(v, |x| f32_text(*x)),
        TensorData::F64(v) => join(v, |x| f64_text(*x)),
        TensorData::Bool(v) => join(v, |x| x.to_string()),
        TensorData::I8(v) | TensorData::I4(v) | TensorData::I2(v) => join(v, |x| x.to_string()),
        TensorData::I16(v) => join(v, |x| x.to_string()),
        TensorData::I32(v) => join(v, |x| x.to_string()),
        TensorData::I64(v) => join(v, |x| x.to_string()),
        TensorData::U8(v) | TensorData::U4(v) | TensorData::U2(v) => join(v, |x| x.to_string()),
        TensorData::U16(v) => join(v, |x| x.to_string()),
        TensorData::U32(v) => join(v, |x| x.to_string()),
        TensorData::U64(v) => join(v, |x| x.to_string()),
        TensorData::F16(_)
        | TensorData::BF16(_)
        | TensorData::F8E4M3FN(_)
        | TensorData::F8E4M3FNUZ(_)
        | TensorData::F8E5M2(_)
        | TensorData::F8E5M2FNUZ(_)
        | TensorData::F8E8M0(_)
        | TensorData::F4E2M1(_) => join(&t.to_f32_vec(), |x| f32_text(*x)),
    }
}

/// A tensor attribute: `f32[1](0)`.
fn tensor_text(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    format!(
        "{}[{}]({})",
        t.dtype(),
        dims.join(", "),
        tensor_values_text(t)
    )
}

fn list<T: ToString>(v: &[T]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// `[k=v, ...]` for an op's attributes, empty when it has none.
pub fn attrs_text(op: &Op) -> String {
    let a = attrs(op);
    if a.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = a.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("[{}]", parts.join(", "))
}

/// The attributes the op's schema shows, spelled for the text form.
fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    schema::attrs(op)
        .into_iter()
        .map(|a| (a.def.name, value_text(&a.value)))
        .collect()
}

fn value_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(x) => f32_text(*x),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Ints(v) => list(v),
        AttrValue::Word(w) => (*w).to_string(),
        AttrValue::DType(d) => d.to_string(),
        AttrValue::Tensor(t) => tensor_text(t),
        AttrValue::Activation(a) => activation_text(a),
        AttrValue::ActQuant(q) => act_quant_text(q),
        AttrValue::Steps(steps) => {
            let s: Vec<String> = steps.iter().map(step_text).collect();
            format!("[{}]", s.join(", "))
        }
    }
}

/// `dynamic` or `static(scale, zero_point)`.
pub fn act_quant_text(q: &ActQuant) -> String {
    match q {
        ActQuant::Dynamic => "dynamic".into(),
        ActQuant::Static { scale, zero_point } => {
            format!("static({}, {zero_point})", f32_text(*scale))
        }
    }
}

/// `relu`, `clip(0, 6)`, `leaky_relu(0.01)`, `gelu_tanh`, ...
pub fn activation_text(act: &Activation) -> String {
    match act {
        Activation::Relu => "relu".into(),
        Activation::Clip { min, max } => format!("clip({}, {})", f32_text(*min), f32_text(*max)),
        Activation::Sigmoid => "sigmoid".into(),
        Activation::Tanh => "tanh".into(),
        Activation::HardSigmoid { alpha, beta } => {
            format!("hard_sigmoid({}, {})", f32_text(*alpha), f32_text(*beta))
        }
        Activation::HardSwish => "hard_swish".into(),
        Activation::LeakyRelu { alpha } => format!("leaky_relu({})", f32_text(*alpha)),
        Activation::Gelu { tanh_approx: false } => "gelu".into(),
        Activation::Gelu { tanh_approx: true } => "gelu_tanh".into(),
    }
}

fn unary_step_name(u: &UnaryOp) -> &'static str {
    match u {
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Reciprocal => "reciprocal",
        UnaryOp::Neg => "neg",
        UnaryOp::Abs => "abs",
        UnaryOp::Exp => "exp",
        UnaryOp::Log => "log",
        UnaryOp::Erf => "erf",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Sigmoid => "sigmoid",
        UnaryOp::Relu => "relu",
        UnaryOp::Not => "not",
        UnaryOp::Floor => "floor",
        UnaryOp::Ceil => "ceil",
        UnaryOp::Sign => "sign",
        UnaryOp::LeakyRelu { .. } => "leaky_relu",
        UnaryOp::Elu { .. } => "elu",
        UnaryOp::HardSigmoid { .. } => "hard_sigmoid",
        UnaryOp::HardSwish => "hard_swish",
        UnaryOp::Gelu { tanh_approx: false } => "gelu",
        UnaryOp::Gelu { tanh_approx: true } => "gelu_tanh",
        UnaryOp::Sin => "sin",
        UnaryOp::Cos => "cos",
        UnaryOp::Tan => "tan",
        UnaryOp::Asin => "asin",
        UnaryOp::Acos => "acos",
        UnaryOp::Atan => "atan",
        UnaryOp::Sinh => "sinh",
        UnaryOp::Cosh => "cosh",
        UnaryOp::Asinh => "asinh",
        UnaryOp::Acosh => "acosh",
        UnaryOp::Atanh => "atanh",
        UnaryOp::Round => "round",
        UnaryOp::Softplus => "softplus",
        UnaryOp::Softsign => "softsign",
    }
}

const BINARY_STEP_NAMES: [(BinaryOp, &str); 15] = [
    (BinaryOp::Add, "add"),
    (BinaryOp::Sub, "sub"),
    (BinaryOp::Mul, "mul"),
    (BinaryOp::Div, "div"),
    (BinaryOp::Pow, "pow"),
    (BinaryOp::Equal, "equal"),
    (BinaryOp::Greater, "greater"),
    (BinaryOp::Less, "less"),
    (BinaryOp::GreaterOrEqual, "greater_or_equal"),
    (BinaryOp::LessOrEqual, "less_or_equal"),
    (BinaryOp::And, "and"),
    (BinaryOp::Or, "or"),
    (BinaryOp::Xor, "xor"),
    (BinaryOp::Mod, "mod"),
    (BinaryOp::FMod, "fmod"),
];

fn binary_step_name(b: BinaryOp) -> &'static str {
    BINARY_STEP_NAMES
        .iter()
        .find(|(op, _)| *op == b)
        .map_or("?", |(_, n)| n)
}

fn ew_arg_text(a: &EwArg) -> String {
    match a {
        EwArg::Input(i) => format!("in{i}"),
        EwArg::Step(j) => format!("s{j}"),
        EwArg::Scalar(x) => f32_text(*x),
    }
}

/// `mul(in0, 0.5)`, `erf(s0)`, `clip(s1, 0, 6)`, `leaky_relu(s0, 0.01)`.
pub fn step_text(s: &EwStep) -> String {
    match s {
        EwStep::Unary(u, x) => {
            let mut args = vec![ew_arg_text(x)];
            match u {
                UnaryOp::LeakyRelu { alpha } | UnaryOp::Elu { alpha } => {
                    args.push(f32_text(*alpha))
                }
                UnaryOp::HardSigmoid { alpha, beta } => {
                    args.push(f32_text(*alpha));
                    args.push(f32_text(*beta));
                }
                _ => {}
            }
            format!("{}({})", unary_step_name(u), args.join(", "))
        }
        EwStep::Binary(b, x, y) => format!(
            "{}({}, {})",
            binary_step_name(*b),
            ew_arg_text(x),
            ew_arg_text(y)
        ),
        EwStep::Clip(x, lo, hi) => format!(
            "clip({}, {}, {})",
            ew_arg_text(x),
            f32_text(*lo),
            f32_text(*hi)
        ),
    }
}

// ---------------------------------------------------------------------------
// Parsing

/// Parses the text form into a graph, re-infers every type and verifies it.
/// Every constant must show its values.
pub fn parse(text: &str) -> Result<Graph> {
    parse_with(text, &mut |n, name| {
        Err(Error::InvalidGraph(format!(
            "constant %{n} '{name}' has no values in the text"
        )))
    })
}

/// Like [`parse`], with `load_const(N, name)` supplying the data of each
/// constant `%N name` printed without values. The tensor must have the
/// declared type.
pub fn parse_with(
    text: &str,
    load_const: &mut dyn FnMut(usize, &str) -> Result<Tensor>,
) -> Result<Graph> {
    let (mut g, parsed) = build(text, load_const)?;
    infer::infer_graph(&mut g).map_err(|e| locate(e, &parsed, &g))?;
    for (&v, &(line, num)) in &parsed.declared {
        let have = g.ty(v);
        let want = &parsed.types[&v];
        if have != want {
            return Err(at_line(
                line,
                format!(
                    "%{num} '{}' is declared {} but inference gives {}",
                    g.value(v).name,
                    type_text(want),
                    type_text(have)
                ),
            ));
        }
    }
    verify::verify(&g).map_err(|e| locate(e, &parsed, &g))?;
    Ok(g)
}

/// Parses the text form without inference or verification: node outputs
/// keep their declared types. For tests of ops whose inference is missing
/// and for tools that only want the structure.
pub fn parse_unchecked(
    text: &str,
    load_const: &mut dyn FnMut(usize, &str) -> Result<Tensor>,
) -> Result<Graph> {
    build(text, load_const).map(|(g, _)| g)
}

/// What the builder remembers for checks after inference.
struct Parsed {
    /// Node output -> (line, number in the text).
    declared: BTreeMap<ValueId, (usize, usize)>,
    /// Declared types of node outputs.
    types: HashMap<ValueId, TensorType>,
    /// Node name -> line, `None` for a name given more than once.
    node_lines: HashMap<String, Option<usize>>,
    /// The line of each node, indexed by node id.
    lines_by_node: Vec<usize>,
}

fn at_line(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidGraph(format!("line {line}: {msg}"))
}

/// Adds the line of the node an inference or verification error is about:
/// the node it names when that name is unique, else the first node (in
/// topological order) whose inference fails on the types known so far.
fn locate(e: Error, parsed: &Parsed, g: &Graph) -> Error {
    let Error::AtNode { node, .. } = &e else {
        return e;
    };
    if let Some(Some(line)) = parsed.node_lines.get(node) {
        return at_line(*line, e);
    }
    let order = g.topo_order().unwrap_or_default();
    for id in order {
        let Some(n) = g.node(id) else { continue };
        if infer::infer_node(g, n).is_err() {
            if let Some(&line) = parsed.lines_by_node.get(id.0 as usize) {
                return at_line(line, e);
            }
        }
    }
    e
}

/// One definition of a value in the text.
struct Def {
    num: usize,
    name: String,
    ty: TensorType,
    line: usize,
    kind: DefKind,
}

enum DefKind {
    Input,
    Const(Option<AV>),
    /// A node output.
    NodeOut,
}

struct NodeLine {
    line: usize,
    name: String,
    op: Op,
    /// Each input's number and line; `None` for `_`.
    inputs: Vec<Option<(usize, usize)>>,
    outputs: Vec<usize>,
}

fn build(
    text: &str,
    load_const: &mut dyn FnMut(usize, &str) -> Result<Tensor>,
) -> Result<(Graph, Parsed)> {
    let mut header: Option<(String, i64)> = None;
    let mut defs: Vec<Def> = Vec::new();
    let mut nodes: Vec<NodeLine> = Vec::new();
    let mut outputs: Vec<(usize, usize, Option<String>)> = Vec::new();

    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let mut c = Cur::new(raw, line);
        // Blank lines and whole-line `#` comments are skipped.
        if c.at_end() || c.peek() == Some(b'#') {
            continue;
        }
        if header.is_none() {
            if c.keyword("graph") {
                let name = c.name("the graph name")?;
                if !c.keyword("opset") {
                    return Err(c.err("expected 'opset' after the graph name"));
                }
                let opset = c
                    .number()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| c.err("expected the opset number"))?;
                c.end()?;
                header = Some((name, opset));
                continue;
            }
            return Err(c.err("expected the header 'graph <name> opset <n>'"));
        }
        if c.keyword("graph") {
            return Err(c.err("a second 'graph' header"));
        }
        if c.keyword("input") {
            let num = c.value_ref()?;
            let name = c.name("the input name")?;
            c.expect(b':', "after the input name")?;
            let ty = c.ty()?;
            c.end()?;
            defs.push(Def {
                num,
                name,
                ty,
                line,
                kind: DefKind::Input,
            });
        } else if c.keyword("const") {
            let num = c.value_ref()?;
            let name = c.name("the constant name")?;
            c.expect(b':', "after the constant name")?;
            let ty = c.ty()?;
            let vals = if c.eat(b'=') {
                let v = c.attr_value()?;
                if !matches!(v, AV::List(_)) {
                    return Err(c.err("constant values must be a list [..]"));
                }
                Some(v)
            } else {
                None
            };
            c.end()?;
            defs.push(Def {
                num,
                name,
                ty,
                line,
                kind: DefKind::Const(vals),
            });
        } else if c.keyword("output") {
            let num = c.value_ref()?;
            let name = if c.at_end() {
                None
            } else {
                Some(c.name("the output name")?)
            };
            c.end()?;
            outputs.push((num, line, name));
        } else if c.peek() == Some(b'%') {
            let mut outs = Vec::new();
            loop {
                let num = c.value_ref()?;
                let name = c.name("the value name")?;
                c.expect(b':', "after the value name")?;
                let ty = c.ty()?;
                outs.push(num);
                defs.push(Def {
                    num,
                    name,
                    ty,
                    line,
                    kind: DefKind::NodeOut,
                });
                if !c.eat(b',') {
                    break;
                }
            }
            c.expect(b'=', "after the node outputs")?;
            let op_name = c
                .ident()
                .ok_or_else(|| c.err("expected an op name after '='"))?
                .to_string();
            let mut attrs = Attrs::default();
            if c.peek_raw() == Some(b'[') {
                c.pos += 1;
                if !c.eat(b']') {
                    loop {
                        let key = c
                            .ident()
                            .ok_or_else(|| c.err("expected an attribute name"))?
                            .to_string();
                        c.expect(b'=', &format!("after attribute '{key}'"))?;
                        let v = c.attr_value()?;
                        if attrs.items.iter().any(|(k, _)| *k == key) {
                            return Err(c.err(format!("attribute '{key}' given twice")));
                        }
                        attrs.items.push((key, v));
                        if c.eat(b']') {
                            break;
                        }
                        c.expect(b',', "between attributes")?;
                    }
                }
            }
            c.expect(b'(', &format!("after op '{op_name}'"))?;
            let mut inputs = Vec::new();
            if !c.eat(b')') {
                loop {
                    if c.eat(b'_') {
                        inputs.push(None);
                    } else {
                        inputs.push(Some((c.value_ref()?, line)));
                    }
                    if c.eat(b')') {
                        break;
                    }
                    c.expect(b',', "between inputs")?;
                }
            }
            let name = if c.eat(b'#') {
                c.name("the node name")?
            } else {
                String::new()
            };
            c.end()?;
            let op = build_op(&op_name, attrs, outs.len()).map_err(|m| at_line(line, m))?;
            nodes.push(NodeLine {
                line,
                name,
                op,
                inputs,
                outputs: outs,
            });
        } else {
            return Err(
                c.err("expected 'input', 'const', 'output' or a node line '%N ... = Op(...)'")
            );
        }
    }

    let Some((gname, opset)) = header else {
        return Err(Error::InvalidGraph(
            "the text is empty: expected the header 'graph <name> opset <n>'".into(),
        ));
    };
    let mut g = Graph::new(gname, opset);
    let mut ids: HashMap<usize, (ValueId, usize)> = HashMap::new();
    let mut parsed = Parsed {
        declared: BTreeMap::new(),
        types: HashMap::new(),
        node_lines: HashMap::new(),
        lines_by_node: Vec::new(),
    };
    for d in defs {
        if let Some((_, first)) = ids.get(&d.num) {
            return Err(at_line(
                d.line,
                format!("%{} is already defined on line {first}", d.num),
            ));
        }
        let id = match d.kind {
            DefKind::Input => g.add_input(d.name, d.ty),
            DefKind::Const(vals) => {
                let t = match vals {
                    Some(AV::List(items)) => {
                        let shape = d.ty.shape.concrete().ok_or_else(|| {
                            at_line(d.line, "a constant's shape must be concrete")
                        })?;
                        tensor_from_values(d.ty.dtype, shape, &items)
                            .map_err(|m| at_line(d.line, format!("constant %{}: {m}", d.num)))?
                    }
                    _ => {
                        let t = load_const(d.num, &d.name).map_err(|e| at_line(d.line, e))?;
                        let ty = TensorType::new(t.dtype(), Shape::known(t.shape()));
                        if ty != d.ty {
                            return Err(at_line(
                                d.line,
                                format!(
                                    "constant %{} '{}' is declared {} but its data is {}",
                                    d.num,
                                    d.name,
                                    type_text(&d.ty),
                                    type_text(&ty)
                                ),
                            ));
                        }
                        t
                    }
                };
                g.add_const(d.name, t)
            }
            DefKind::NodeOut => {
                let id = g.add_value(d.name, d.ty.clone());
                parsed.declared.insert(id, (d.line, d.num));
                parsed.types.insert(id, d.ty);
                id
            }
        };
        ids.insert(d.num, (id, d.line));
    }
    let lookup = |num: usize, line: usize| -> Result<ValueId> {
        ids.get(&num)
            .map(|&(id, _)| id)
            .ok_or_else(|| at_line(line, format!("%{num} is not defined")))
    };
    for n in nodes {
        let inputs = n
            .inputs
            .iter()
            .map(|i| i.map(|(num, line)| lookup(num, line)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let outputs = n
            .outputs
            .iter()
            .map(|&num| lookup(num, n.line))
            .collect::<Result<Vec<_>>>()?;
        parsed
            .node_lines
            .entry(n.name.clone())
            .and_modify(|l| *l = None)
            .or_insert(Some(n.line));
        parsed.lines_by_node.push(n.line);
        g.add_node(Node {
            name: n.name,
            op: n.op,
            inputs,
            outputs,
        });
    }
    for (num, line, name) in outputs {
        let id = lookup(num, line)?;
        if let Some(name) = name {
            if g.value(id).name != name {
                return Err(at_line(
                    line,
                    format!(
                        "output %{num} is named '{name}' but the value is '{}'",
                        g.value(id).name
                    ),
                ));
            }
        }
        g.outputs.push(id);
    }
    Ok((g, parsed))
}

/// A generic attribute value, decoded per op afterwards.
#[derive(Clone, Debug, PartialEq)]
enum AV {
    /// A number token as written (`1`, `-0.5`, `1e-5`, `inf`, `-nan`).
    Num(String),
    Str(String),
    List(Vec<AV>),
    /// `relu`, `clip(0, 6)`, `f32[1](0)`.
    Ident {
        name: String,
        shape: Option<Vec<AV>>,
        args: Option<Vec<AV>>,
    },
}

impl AV {
    fn word(&self) -> Option<&str> {
        match self {
            AV::Ident {
                name,
                shape: None,
                args: None,
            } => Some(name),
            AV::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The text of a scalar number, idents `inf`/`nan` included.
    fn num_text(&self) -> Option<&str> {
        match self {
            AV::Num(s) => Some(s),
            _ => match self.word() {
                Some(w @ ("inf" | "nan" | "infinity")) => Some(w),
                _ => None,
            },
        }
    }
}

/// A float token parsed directly in the target precision (no double
/// rounding); `nan`, `-nan`, `inf`, `-inf` accepted.
fn parse_float<T: std::str::FromStr + std::ops::Neg<Output = T>>(
    s: &str,
    nan: T,
    inf: T,
) -> Option<T> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = match body.to_ascii_lowercase().as_str() {
        "nan" => nan,
        "inf" | "infinity" => inf,
        b if b.starts_with(|c: char| c.is_ascii_digit() || c == '.') => b.parse::<T>().ok()?,
        _ => return None,
    };
    Some(if neg { -v } else { v })
}

fn av_f32(v: &AV) -> Option<f32> {
    parse_float(v.num_text()?, f32::NAN, f32::INFINITY)
}

fn av_f64(v: &AV) -> Option<f64> {
    parse_float(v.num_text()?, f64::NAN, f64::INFINITY)
}

fn av_int<T: std::str::FromStr>(v: &AV) -> Option<T> {
    match v {
        AV::Num(s) => s.strip_prefix('+').unwrap_or(s).parse::<T>().ok(),
        _ => None,
    }
}

fn av_bool(v: &AV) -> Option<bool> {
    match v {
        AV::Num(s) if s == "0" => Some(false),
        AV::Num(s) if s == "1" => Some(true),
        _ => match v.word() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        },
    }
}

/// Builds a tensor of `dtype` and `shape` from value tokens; every value
/// must be exactly representable... or is rounded the way Cast rounds
/// (floats to nearest even, float8 saturating).
fn tensor_from_values(
    dtype: DType,
    shape: Vec<usize>,
    items: &[AV],
) -> std::result::Result<Tensor, String> {
    let n = super::checked_numel(&shape).ok_or("the shape is too large")?;
    if n != items.len() {
        return Err(format!(
            "{}{} needs {n} values, {} given",
            dtype,
            Shape::known(&shape),
            items.len()
        ));
    }
    fn each<T>(
        items: &[AV],
        what: &str,
        f: impl Fn(&AV) -> Option<T>,
    ) -> std::result::Result<Vec<T>, String> {
        items
            .iter()
            .enumerate()
            .map(|(i, v)| f(v).ok_or_else(|| format!("value {i} is not {what}")))
            .collect()
    }
    let small = |lo: i64, hi: i64| move |v: &AV| av_int::<i64>(v).filter(|x| (lo..=hi).contains(x));
    // Low-precision floats: the code whose value is exactly the one written
    // (so every printed value reads back to its bit pattern), else the value
    // rounded the way Cast rounds.
    let exact = |codes: u32, decode: &dyn Fn(u8) -> f32, x: f32| -> Option<u8> {
        if x.is_nan() {
            return None;
        }
        (0..codes)
            .map(|c| c as u8)
            .find(|&c| decode(c).to_bits() == x.to_bits())
    };
    let mini = |m: Minifloat| {
        let codes = if dtype == DType::F4E2M1 { 16 } else { 256 };
        each(items, "a number", |v| {
            av_f32(v).map(|x| {
                exact(codes, &|c| m.decode(c), x).unwrap_or_else(|| m.encode(x as f64, true))
            })
        })
    };
    let data = match dtype {
        DType::F32 => TensorData::F32(each(items, "a number", av_f32)?),
        DType::F64 => TensorData::F64(each(items, "a number", av_f64)?),
        DType::F16 => TensorData::F16(each(items, "a number", |v| av_f32(v).map(f16::from_f32))?),
        DType::BF16 => {
            TensorData::BF16(each(items, "a number", |v| av_f32(v).map(bf16::from_f32))?)
        }
        DType::I8 => TensorData::I8(each(items, "an i8", av_int)?),
        DType::I16 => TensorData::I16(each(items, "an i16", av_int)?),
        DType::I32 => TensorData::I32(each(items, "an i32", av_int)?),
        DType::I64 => TensorData::I64(each(items, "an i64", av_int)?),
        DType::U8 => TensorData::U8(each(items, "a u8", av_int)?),
        DType::U16 => TensorData::U16(each(items, "a u16", av_int)?),
        DType::U32 => TensorData::U32(each(items, "a u32", av_int)?),
        DType::U64 => TensorData::U64(each(items, "a u64", av_int)?),
        DType::Bool => TensorData::Bool(each(items, "true or false", av_bool)?),
        // The ranges make the narrowing casts below exact.
        DType::I4 => TensorData::I4(each(items, "an i4 (-8..=7)", |v| {
            small(-8, 7)(v).map(|x| x as i8)
        })?),
        DType::U4 => TensorData::U4(each(items, "a u4 (0..=15)", |v| {
            small(0, 15)(v).map(|x| x as u8)
        })?),
        DType::I2 => TensorData::I2(each(items, "an i2 (-2..=1)", |v| {
            small(-2, 1)(v).map(|x| x as i8)
        })?),
        DType::U2 => TensorData::U2(each(items, "a u2 (0..=3)", |v| {
            small(0, 3)(v).map(|x| x as u8)
        })?),
        DType::F8E8M0 => TensorData::F8E8M0(each(items, "a number", |v| {
            av_f32(v).map(|x| {
                exact(256, &lowp::e8m0_decode, x)
                    .unwrap_or_else(|| lowp::e8m0_encode(x, true, E8M0Round::Up))
            })
        })?),
        DType::F8E4M3FN => TensorData::F8E4M3FN(mini(lowp::F8E4M3FN)?),
        DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(mini(lowp::F8E4M3FNUZ)?),
        DType::F8E5M2 => TensorData::F8E5M2(mini(lowp::F8E5M2)?),
        DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(mini(lowp::F8E5M2FNUZ)?),
        DType::F4E2M1 => TensorData::F4E2M1(mini(lowp::F4E2M1)?),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// The attributes of one node line, consumed as the op is built.
#[derive(Default)]
struct Attrs {
    items: Vec<(String, AV)>,
}

type Msg<T> = std::result::Result<T, String>;

impl Attrs {
    fn take(&mut self, k: &str) -> Option<AV> {
        let i = self.items.iter().position(|(key, _)| key == k)?;
        Some(self.items.remove(i).1)
    }

    fn expects(k: &str, what: &str) -> String {
        format!("attribute '{k}' expects {what}")
    }

    fn finish(self, op: &str) -> Msg<()> {
        match self.items.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("{op} has no attribute '{k}'")),
        }
    }
}

/// Call arguments as f32s, exactly `n` of them.
fn f32_args(name: &str, args: &[AV], n: usize) -> Msg<Vec<f32>> {
    if args.len() != n {
        return Err(format!(
            "'{name}' takes {n} arguments, {} given",
            args.len()
        ));
    }
    args.iter()
        .map(|a| av_f32(a).ok_or_else(|| format!("'{name}': arguments must be numbers")))
        .collect()
}

fn act_quant_from(v: &AV) -> Option<ActQuant> {
    match v {
        v if v.word() == Some("dynamic") => Some(ActQuant::Dynamic),
        AV::Ident {
            name,
            shape: None,
            args: Some(args),
        } if name == "static" && args.len() == 2 => {
            let scale = av_f32(&args[0])?;
            let zero_point = args[1].num_text()?.parse::<u8>().ok()?;
            Some(ActQuant::Static { scale, zero_point })
        }
        _ => None,
    }
}

fn activation_from(v: &AV) -> Msg<Activation> {
    let AV::Ident {
        name,
        shape: None,
        args,
    } = v
    else {
        return Err("attribute 'act' expects an activation such as relu or clip(0, 6)".into());
    };
    let args = args.as_deref().unwrap_or(&[]);
    let a = |n| f32_args(name, args, n);
    Ok(match name.as_str() {
        "relu" => a(0).map(|_| Activation::Relu)?,
        "sigmoid" => a(0).map(|_| Activation::Sigmoid)?,
        "tanh" => a(0).map(|_| Activation::Tanh)?,
        "hard_swish" => a(0).map(|_| Activation::HardSwish)?,
        "gelu" => a(0).map(|_| Activation::Gelu { tanh_approx: false })?,
        "gelu_tanh" => a(0).map(|_| Activation::Gelu { tanh_approx: true })?,
        "clip" => {
            let v = a(2)?;
            Activation::Clip {
                min: v[0],
                max: v[1],
            }
        }
        "hard_sigmoid" => {
            let v = a(2)?;
            Activation::HardSigmoid {
                alpha: v[0],
                beta: v[1],
            }
        }
        "leaky_relu" => Activation::LeakyRelu { alpha: a(1)?[0] },
        other => return Err(format!("unknown activation '{other}'")),
    })
}

fn ew_arg_from(v: &AV) -> Msg<EwArg> {
    if let Some(x) = av_f32(v) {
        return Ok(EwArg::Scalar(x));
    }
    let w = v.word().unwrap_or("");
    let idx = |p: &str| w.strip_prefix(p).and_then(|d| d.parse::<usize>().ok());
    if let Some(i) = idx("in") {
        Ok(EwArg::Input(i))
    } else if let Some(j) = idx("s") {
        Ok(EwArg::Step(j))
    } else {
        Err(format!(
            "elementwise operand {v:?} is not an input (in0), a step (s0) or a number"
        ))
    }
}

fn step_from(v: &AV) -> Msg<EwStep> {
    let AV::Ident {
        name,
        shape: None,
        args: Some(args),
    } = v
    else {
        return Err("attribute 'steps' expects a list of steps such as mul(in0, 0.5)".into());
    };
    let count = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "step '{name}' takes {n} operands, {} given",
                args.len()
            ))
        }
    };
    let num = |i: usize| {
        av_f32(&args[i]).ok_or_else(|| format!("step '{name}': operand {i} must be a number"))
    };
    if let Some(&(b, _)) = BINARY_STEP_NAMES.iter().find(|(_, n)| *n == name) {
        count(2)?;
        return Ok(EwStep::Binary(
            b,
            ew_arg_from(&args[0])?,
            ew_arg_from(&args[1])?,
        ));
    }
    if name == "clip" {
        count(3)?;
        return Ok(EwStep::Clip(ew_arg_from(&args[0])?, num(1)?, num(2)?));
    }
    // Unary ops without attributes are steps of one argument.
    let simple = crate::ir::ops::prototypes()
        .into_iter()
        .find_map(|p| match &p {
            Op::Unary(u) if unary_step_name(u) == name && schema::attrs(&p).is_empty() => {
                Some(u.clone())
            }
            _ => None,
        });
    let u = match (simple, name.as_str()) {
        (Some(u), _) => {
            count(1)?;
            u
        }
        (None, "hard_swish") => {
            count(1)?;
            UnaryOp::HardSwish
        }
        (None, "gelu") => {
            count(1)?;
            UnaryOp::Gelu { tanh_approx: false }
        }
        (None, "gelu_tanh") => {
            count(1)?;
            UnaryOp::Gelu { tanh_approx: true }
        }
        (None, "leaky_relu") => {
            count(2)?;
            UnaryOp::LeakyRelu { alpha: num(1)? }
        }
        (None, "elu") => {
            count(2)?;
            UnaryOp::Elu { alpha: num(1)? }
        }
        (None, "hard_sigmoid") => {
            count(3)?;
            UnaryOp::HardSigmoid {
                alpha: num(1)?,
                beta: num(2)?,
            }
        }
        _ => return Err(format!("unknown elementwise step '{name}'")),
    };
    Ok(EwStep::Unary(u, ew_arg_from(&args[0])?))
}

/// The op `name` with its attributes (read as its schema asks); `n_out` is
/// the node's output count.
fn build_op(name: &str, mut a: Attrs, n_out: usize) -> Msg<Op> {
    let op = schema::build(name, n_out, |def, kind| match a.take(def.name) {
        None => Ok(None),
        Some(v) => value_from(def.name, &v, kind).map(Some),
    })?
    .ok_or_else(|| format!("unknown op '{name}'"))?;
    a.finish(name)?;
    Ok(op)
}

/// The value of attribute `k` as `kind` asks.
fn value_from(k: &str, v: &AV, kind: Kind) -> Msg<AttrValue> {
    let expects = || Attrs::expects(k, &kind.what());
    let ints = || match v {
        AV::List(items) => items
            .iter()
            .map(av_int::<i64>)
            .collect::<Option<Vec<i64>>>()
            .map(AttrValue::Ints)
            .ok_or_else(expects),
        _ => Err(Attrs::expects(k, "a list")),
    };
    match kind {
        Kind::Int | Kind::UInt => av_int(v).map(AttrValue::Int).ok_or_else(expects),
        Kind::Float => av_f32(v).map(AttrValue::Float).ok_or_else(expects),
        Kind::Bool => av_bool(v).map(AttrValue::Bool).ok_or_else(expects),
        Kind::Ints | Kind::UInts => ints(),
        Kind::Word(names) => {
            let w = v.word().map(str::to_ascii_lowercase).ok_or_else(expects)?;
            names
                .iter()
                .find(|n| **n == w)
                .map(|n| AttrValue::Word(n))
                .ok_or_else(|| {
                    format!(
                        "attribute '{k}': unknown value '{w}' (expected one of {})",
                        names.join(", ")
                    )
                })
        }
        Kind::DType => v
            .word()
            .and_then(DType::from_name)
            .map(AttrValue::DType)
            .ok_or_else(expects),
        Kind::Tensor => match v {
            AV::Ident {
                name,
                shape: Some(shape),
                args: Some(vals),
            } => {
                let dtype = DType::from_name(name)
                    .ok_or_else(|| format!("attribute '{k}': unknown dtype '{name}'"))?;
                let shape = shape
                    .iter()
                    .map(av_int::<usize>)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("attribute '{k}': bad shape"))?;
                tensor_from_values(dtype, shape, vals)
                    .map(AttrValue::Tensor)
                    .map_err(|m| format!("attribute '{k}': {m}"))
            }
            _ => Err(expects()),
        },
        Kind::Activation => activation_from(v).map(AttrValue::Activation),
        Kind::ActQuant => act_quant_from(v)
            .map(AttrValue::ActQuant)
            .ok_or_else(expects),
        Kind::Steps => match v {
            AV::List(items) => items
                .iter()
                .map(step_from)
                .collect::<Msg<_>>()
                .map(AttrValue::Steps),
            _ => Err(Attrs::expects(k, "a list")),
        },
    }
}

/// A cursor over one line.
struct Cur<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
    /// Nesting of lists and calls being read (bounded, so hostile input
    /// cannot exhaust the stack).
    depth: usize,
}

/// Deepest nesting of lists and calls in an attribute value.
const MAX_DEPTH: usize = 16;

impl<'a> Cur<'a> {
    fn new(s: &'a str, line: usize) -> Cur<'a> {
        Cur {
            s,
            pos: 0,
            line,
            depth: 0,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        at_line(self.line, msg)
    }

    fn ws(&mut self) {
        let b = self.s.as_bytes();
        while self.pos < b.len() && matches!(b[self.pos], b' ' | b'\t' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek_raw(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.peek_raw()
    }

    fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    fn end(&mut self) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err(format!(
                "unexpected '{}' at the end of the line",
                &self.s[self.pos..]
            )))
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8, context: &str) -> Result<()> {
        if self.eat(c) {
            return Ok(());
        }
        let found = match self.peek() {
            None => "the end of the line".to_string(),
            Some(_) => format!("'{}'", self.s[self.pos..].chars().next().unwrap_or(' ')),
        };
        Err(self.err(format!("expected '{}' {context}, found {found}", c as char)))
    }

    /// Bytes from `pos` while `f` holds.
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let b = self.s.as_bytes();
        let start = self.pos;
        while self.pos < b.len() && f(b[self.pos]) {
            self.pos += 1;
        }
        // Only ASCII bytes are taken, so both ends are char boundaries.
        &self.s[start..self.pos]
    }

    /// `[A-Za-z_][A-Za-z0-9_]*`.
    fn ident(&mut self) -> Option<&'a str> {
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                Some(self.take_while(|c| c.is_ascii_alphanumeric() || c == b'_'))
            }
            _ => None,
        }
    }

    /// A word followed by a space or the end of the line.
    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let rest = &self.s[self.pos..];
        if rest.starts_with(kw)
            && rest[kw.len()..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ' || c == '\t')
        {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    /// A JSON string literal.
    fn quoted(&mut self) -> Result<String> {
        let b = self.s.as_bytes();
        let start = self.pos;
        let mut i = start + 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => {
                    let lit = &self.s[start..=i];
                    self.pos = i + 1;
                    return serde_json::from_str::<String>(lit)
                        .map_err(|e| self.err(format!("bad string {lit}: {e}")));
                }
                _ => i += 1,
            }
        }
        Err(self.err("unterminated string"))
    }

    /// A bare name (`[A-Za-z_][A-Za-z0-9_./-]*`) or a quoted one.
    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => Ok(self
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-'))
                .to_string()),
            _ => Err(self.err(format!("expected {what}"))),
        }
    }

    /// `%N`.
    fn value_ref(&mut self) -> Result<usize> {
        if !self.eat(b'%') {
            return Err(self.err("expected a value '%N'"));
        }
        let digits = self.take_while(|c| c.is_ascii_digit());
        digits
            .parse::<usize>()
            .map_err(|_| self.err("expected a number after '%'"))
    }

    /// A number token: sign, digits, '.', exponent, or `inf`/`nan`.
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let b = self.s.as_bytes();
        let start = self.pos;
        let mut i = start;
        if i < b.len() && matches!(b[i], b'-' | b'+') {
            i += 1;
        }
        let numeric = match b.get(i) {
            Some(c) if c.is_ascii_digit() || *c == b'.' => true,
            Some(c) if c.is_ascii_alphabetic() && i > start => false,
            _ => return None,
        };
        while i < b.len() {
            let c = b[i];
            let exp_sign = numeric && matches!(c, b'+' | b'-') && matches!(b[i - 1], b'e' | b'E');
            if c.is_ascii_alphanumeric() || c == b'.' || exp_sign {
                i += 1;
            } else {
                break;
            }
        }
        self.pos = i;
        Some(&self.s[start..i])
    }

    /// `f32[batch,4]`.
    fn ty(&mut self) -> Result<TensorType> {
        let name = self
            .ident()
            .ok_or_else(|| self.err("expected a type such as f32[2,3]"))?;
        let dtype =
            DType::from_name(name).ok_or_else(|| self.err(format!("unknown dtype '{name}'")))?;
        if self.peek_raw() != Some(b'[') {
            return Err(self.err(format!("expected '[' after '{name}' (the shape)")));
        }
        self.pos += 1;
        let mut dims = Vec::new();
        if !self.eat(b']') {
            loop {
                let d = if self.peek() == Some(b'"') {
                    Dim::Sym(self.quoted()?)
                } else {
                    let w = self.take_while(|c| is_dim_char(c as char));
                    if w.is_empty() {
                        return Err(self.err("expected a dim (a size or a symbol)"));
                    }
                    if w.bytes().all(|c| c.is_ascii_digit()) {
                        Dim::Known(
                            w.parse()
                                .map_err(|_| self.err(format!("dim {w} is too large")))?,
                        )
                    } else {
                        Dim::Sym(w.to_string())
                    }
                };
                dims.push(d);
                if self.eat(b']') {
                    break;
                }
                self.expect(b',', "between dims")?;
            }
        }
        Ok(TensorType::new(dtype, Shape(dims)))
    }

    /// A generic attribute value.
    fn attr_value(&mut self) -> Result<AV> {
        match self.peek() {
            Some(b'[') => {
                self.pos += 1;
                Ok(AV::List(self.items(b']')?))
            }
            Some(b'"') => Ok(AV::Str(self.quoted()?)),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let name = self.ident().unwrap_or_default().to_string();
                let shape = if self.peek_raw() == Some(b'[') {
                    self.pos += 1;
                    Some(self.items(b']')?)
                } else {
                    None
                };
                let args = if self.peek_raw() == Some(b'(') {
                    self.pos += 1;
                    Some(self.items(b')')?)
                } else {
                    None
                };
                Ok(AV::Ident { name, shape, args })
            }
            _ => match self.number() {
                Some(n) => Ok(AV::Num(n.to_string())),
                None => Err(self.err("expected a value (a number, a name, a list or a string)")),
            },
        }
    }

    /// Comma-separated values up to `close` (already past the opener).
    fn items(&mut self, close: u8) -> Result<Vec<AV>> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err("attribute value nested too deeply"));
        }
        self.depth += 1;
        let r = self.items_inner(close);
        self.depth -= 1;
        r
    }

    fn items_inner(&mut self, close: u8) -> Result<Vec<AV>> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            out.push(self.attr_value()?);
            if self.eat(close) {
                return Ok(out);
            }
            self.expect(b',', "between list items")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{
        AspectPolicy, AutoPad, ConvAttrs, ConvTransposeAttrs, CoordTransform, NearestMode, PadMode,
        PoolAttrs, ResizeAttrs, ResizeMode, ScatterReduction,
    };
    use std::path::Path;

    /// Parses, checks that printing gives the text back, returns the graph.
    fn round(text: &str) -> Graph {
        let g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let got = print(&g);
        assert!(got == text, "printed:\n{got}\nexpected:\n{text}");
        g
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(g) => panic!("parsed:\n{}", print(&g)),
            Err(e) => e.to_string(),
        }
    }

    /// Field-by-field equality of two graphs (Graph has no PartialEq).
    fn assert_same(a: &Graph, b: &Graph) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.opset, b.opset);
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.outputs, b.outputs);
        assert_eq!(a.values.len(), b.values.len());
        for (x, y) in a.values.iter().zip(&b.values) {
            assert_eq!((&x.name, &x.ty, x.def), (&y.name, &y.ty, y.def));
        }
        assert_eq!(a.node_capacity(), b.node_capacity());
        for ((i, x), (j, y)) in a.nodes().zip(b.nodes()) {
            assert_eq!(i, j);
            assert_eq!(x.name, y.name);
            assert_eq!(x.op, y.op);
            assert_eq!(x.inputs, y.inputs);
            assert_eq!(x.outputs, y.outputs);
        }
        assert_eq!(a.consts.len(), b.consts.len());
        for ((i, x), (j, y)) in a.consts.iter().zip(&b.consts) {
            assert_eq!(i, j);
            assert_eq!(x.shape(), y.shape());
            assert_eq!(x.dtype(), y.dtype());
            assert!(x == y || bits(x) == bits(y), "constant {i:?} differs");
        }
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        t.to_f64_vec().iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn fixtures_round_trip_and_run_identically() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        for name in ["mlp", "cnn", "transformer"] {
            let dir = root.join(name);
            let g = crate::formats::onnx::load(&dir.join("model.onnx")).unwrap();
            let canon = canonicalize(&g);
            let text = print_with(
                &g,
                &PrintOptions {
                    inline_const_limit: 0,
                },
            );
            assert_eq!(
                text,
                print_with(
                    &canon,
                    &PrintOptions {
                        inline_const_limit: 0
                    }
                )
            );
            let parsed = parse_with(&text, &mut |n, _| {
                Ok(canon.const_value(ValueId(n as u32)).unwrap().clone())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                print_with(
                    &parsed,
                    &PrintOptions {
                        inline_const_limit: 0
                    }
                ),
                text
            );
            assert_eq!(print(&parsed), print(&g));
            assert_same(&parsed, &canon);
            // Default inlining too: small constants come from the text.
            let text2 = print(&g);
            let p2 = parse_with(&text2, &mut |n, _| {
                Ok(canon.const_value(ValueId(n as u32)).unwrap().clone())
            })
            .unwrap();
            assert_same(&p2, &canon);

            let io: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("io.json")).unwrap())
                    .unwrap();
            let inputs: Vec<Tensor> = io["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    crate::formats::npy::read_npy(&dir.join(i["file"].as_str().unwrap())).unwrap()
                })
                .collect();
            let want = crate::interp::run(&g, inputs.clone()).unwrap();
            let got = crate::interp::run(&parsed, inputs).unwrap();
            assert_eq!(want.len(), got.len());
            for (a, b) in want.iter().zip(&got) {
                assert_eq!(a.shape(), b.shape());
                assert_eq!(bits(a), bits(b), "{name}");
            }
        }
    }

    #[test]
    fn hand_written_mlp() {
        let t = "graph \"mlp\" opset 17
  input  %0 x: f32[batch,4]
  const  %1 w: f32[4,2] = [1, 2, 3, 4, 5, 6, 7, 8]
  const  %2 b: f32[2] = [0.5, -1]
  %3 h: f32[batch,2] = MatMul(%0, %1)  # mm
  %4 y: f32[batch,2] = Add(%3, %2)  # /fc/\"add\"
  output %4 y
";
        let t = t.replace("# /fc/\"add\"", "# \"/fc/\\\"add\\\"\"");
        let g = round(&t);
        assert_eq!(g.node_count(), 2);
        assert_eq!(
            g.const_value(ValueId(2)).unwrap().as_f32(),
            Some(&[0.5, -1.0][..])
        );
    }

    #[test]
    fn elementwise_families() {
        round(
            r#"graph "ew" opset 21
  input  %0 x: f32[2,3]
  input  %1 m: bool[2,3]
  const  %2 lo: f32[] = [-1]
  %3 a: f32[2,3] = Relu(%0)
  %4 b: f32[2,3] = LeakyRelu[alpha=0.1](%3)
  %5 c: f32[2,3] = Elu[alpha=1](%4)
  %6 d: f32[2,3] = HardSigmoid[alpha=0.2, beta=0.5](%5)
  %7 e: f32[2,3] = Gelu[approximate=tanh](%6)
  %8 f: f32[2,3] = Gelu(%7)
  %9 g: f32[2,3] = HardSwish(%8)
  %10 h: f32[2,3] = Clip(%9, %2, _)
  %11 i: f32[2,3] = Sum(%10, %9, %8)
  %12 j: bool[2,3] = Greater(%11, %2)
  %13 k: bool[2,3] = And(%12, %1)
  %14 l: bool[2,3] = Not(%13)
  %15 n: f32[2,3] = Where(%14, %11, %2)
  %16 o: f16[2,3] = Cast[to=f16](%15)
  %17 p: f8e5m2[2,3] = Cast[to=f8e5m2, saturate=false](%15)
  %18 q: f8e8m0[2,3] = Cast[to=f8e8m0, round_mode=nearest](%15)
  %19 r: f32[2,3] = Softmax[axis=-1](%15)
  %20 s: f32[2,3] = LogSoftmax[axis=1, legacy=true](%19)
  %21 t: f32[2,3] = Pow(%20, %2)
  output %16 o
  output %17 p
  output %18 q
  output %21 t
"#,
        );
    }

    #[test]
    fn nn_families() {
        round(
            r#"graph "nn" opset 21
  input  %0 x: f32[batch,3,8,8]
  input  %1 w: f32[4,3,3,3]
  input  %2 b: f32[4]
  input  %3 s: f32[4]
  input  %4 dw: f32[4,1,1,1]
  %5 c: f32[batch,4,4,4] = Conv[kernel=[3, 3], strides=[2, 2], dilations=[1, 1], pads=[1, 1, 1, 1]](%0, %1, %2)  # conv
  %6 g: f32[batch,4,4,4] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0], auto_pad=same_upper, group=4](%5, %4, _)
  %7 bn: f32[batch,4,4,4], %8 rm: f32[4], %9 rv: f32[4] = BatchNormalization[epsilon=0.001, training_momentum=0.9](%5, %3, %2, %2, %3)
  %10 mp: f32[batch,4,2,2], %11 mi: i64[batch,4,2,2] = MaxPool[kernel=[2, 2], strides=[2, 2], dilations=[1, 1], pads=[0, 0, 0, 0], ceil_mode=true, storage_order=1](%7)
  %12 gmp: f32[batch,4,1,1] = GlobalMaxPool(%10)
  %13 ap: f32[batch,4,2,2] = AveragePool[kernel=[3, 3], strides=[2, 2], dilations=[1, 1], pads=[1, 1, 1, 1], count_include_pad=true](%7)
  %14 in: f32[batch,4,2,2] = InstanceNormalization[epsilon=1e-5](%13, %3, %2)
  %15 ln: f32[batch,4,2,2] = LayerNormalization[axis=-1, epsilon=1e-5](%14, %8, _)
  %16 gap: f32[batch,4,1,1] = GlobalAveragePool(%15)
  %17 ct: f32[batch,3,8,8] = ConvTranspose[kernel=[3, 3], strides=[2, 2], dilations=[1, 1], pads=[1, 1, 1, 1], output_padding=[1, 1]](%5, %1, _)
  output %6 g
  output %9 rv
  output %11 mi
  output %16 gap
  output %12 gmp
  output %17 ct
"#,
        );
    }

    #[test]
    fn shape_families() {
        round(
            r#"graph "shapes" opset 21
  input  %0 x: f32[batch,seq,4]
  const  %1 shape: i64[3] = [0, -1, 2]
  const  %2 axes: i64[1] = [1]
  const  %3 starts: i64[1] = [0]
  const  %4 ends: i64[1] = [1]
  const  %5 idx: i64[2] = [1, 0]
  const  %6 pads: i64[6] = [0, 0, 1, 0, 0, 1]
  const  %7 reps: i64[3] = [1, 1, 2]
  const  %8 zero: i64[] = [0]
  const  %9 five: i64[] = [5]
  const  %10 one: i64[] = [1]
  const  %11 cshape: i64[2] = [2, 3]
  const  %12 axis2: i64[1] = [2]
  %13 r: f32[batch,2*seq,2] = Reshape(%0, %1)
  %14 t: f32[4,seq,batch] = Transpose[perm=[2, 1, 0]](%0)
  %15 u: f32[batch,1,seq,4] = Unsqueeze(%0, %2)
  %16 q: f32[batch,seq,4] = Squeeze(%15, %2)
  %17 c: f32[batch,seq,8] = Concat[axis=-1](%16, %0)
  %18 s0: f32[batch,seq,4], %19 s1: f32[batch,seq,4] = Split[axis=2, num_outputs=2](%17)
  %20 sl: f32[batch,seq,1] = Slice(%18, %3, %4, %12)
  %21 ga: f32[batch,2,4] = Gather[axis=1](%0, %5)
  %22 fl: f32[batch,8] = Flatten[axis=1](%21)
  %23 sh: i64[2] = Shape[start=1, end=3](%0)
  %24 ex: f32[batch,seq,4] = Expand(%20, %23)
  %25 ti: f32[batch,seq,8] = Tile(%24, %7)
  %26 id: f32[batch,seq,8] = Identity(%25)
  %27 dr: f32[batch,seq,8] = Dropout(%26)
  %28 pa: f32[batch,seq,10] = Pad[mode=reflect](%27, %6)
  %29 sz: i64[] = Size(%0)
  %30 cs: i32[2,3] = ConstantOfShape[value=i32[1](7)](%11)
  %31 ra: i64[5] = Range(%8, %9, %10)
  output %13 r
  output %14 t
  output %19 s1
  output %29 sz
  output %30 cs
  output %28 pa
  output %31 ra
  output %22 fl
"#,
        );
    }

    #[test]
    fn reduction_and_resize_families() {
        round(
            r#"graph "red" opset 21
  input  %0 x: f32[1,2,4,4]
  const  %1 axes: i64[1] = [-1]
  const  %2 scales: f32[4] = [1, 1, 2, 2]
  const  %3 sizes: i64[2] = [3, 5]
  %4 a: f32[1,2,4,1] = ReduceMean[keepdims=true](%0, %1)
  %5 b: f32[1,2,4] = ReduceLogSumExp[keepdims=false](%0, %1)
  %6 c: f32[1,2,4,4] = ReduceSum[keepdims=true, noop_with_empty_axes=true](%0)
  %7 m: f32[1,2,4,4] = Max(%0, %6)
  %8 d: i64[1,2,4,1] = ArgMax[axis=3, keepdims=true, select_last_index=true](%0)
  %9 e: i64[2,4,4] = ArgMin[axis=0, keepdims=false](%0)
  %10 f: f32[1,2,8,8] = Resize[mode=linear, coord=align_corners, nearest=round_prefer_floor](%0, _, %2)
  %11 g: f32[1,2,5,5] = Resize[mode=cubic, coord=half_pixel, nearest=floor, exclude_outside=true, cubic_coeff_a=-0.5, extrapolation_value=-1, aspect=not_smaller, axes=[2, 3]](%0, _, _, %3)
  %12 h: f32[1,2,8,8] = Resize[mode=nearest, coord=asymmetric, nearest=ceil, antialias=true](%0, _, %2)
  output %4 a
  output %5 b
  output %8 d
  output %9 e
  output %10 f
  output %11 g
  output %12 h
  output %7 m
"#,
        );
    }

    fn no_consts(n: usize, name: &str) -> Result<Tensor> {
        Err(Error::InvalidGraph(format!(
            "unexpected load of %{n} {name}"
        )))
    }

    #[test]
    fn fused_ops_print_and_parse() {
        let f32t = |dims: &[usize]| TensorType::new(DType::F32, Shape::known(dims));
        let mut g = Graph::new("fused", 21);
        let x = g.add_input("x", f32t(&[1, 3, 4, 4]));
        let w = g.add_input("w", f32t(&[2, 3, 1, 1]));
        let a = g.add_input("a", f32t(&[4, 3]));
        let conv = ConvAttrs {
            kernel_shape: vec![1, 1],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0, 0, 0, 0],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let acts = [
            None,
            Some(Activation::Relu),
            Some(Activation::Clip { min: 0.0, max: 6.0 }),
            Some(Activation::Sigmoid),
            Some(Activation::Tanh),
            Some(Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            }),
            Some(Activation::HardSwish),
            Some(Activation::LeakyRelu { alpha: 0.01 }),
            Some(Activation::Gelu { tanh_approx: false }),
            Some(Activation::Gelu { tanh_approx: true }),
        ];
        let mut ops = Vec::new();
        for act in &acts {
            ops.push((
                Op::FusedConv {
                    conv: conv.clone(),
                    act: act.clone(),
                },
                vec![Some(x), Some(w), None, None],
                f32t(&[1, 2, 4, 4]),
            ));
            ops.push((
                Op::FusedMatMul {
                    trans_a: false,
                    trans_b: true,
                    alpha: 0.125,
                    act: act.clone(),
                },
                vec![Some(a), Some(a)],
                f32t(&[4, 4]),
            ));
        }
        let steps = vec![
            EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Scalar(0.5)),
            EwStep::Unary(UnaryOp::Erf, EwArg::Step(0)),
            EwStep::Binary(BinaryOp::Add, EwArg::Step(1), EwArg::Scalar(1.0)),
            EwStep::Binary(BinaryOp::Mul, EwArg::Input(1), EwArg::Step(2)),
            EwStep::Clip(EwArg::Step(3), 0.0, 6.0),
            EwStep::Unary(UnaryOp::LeakyRelu { alpha: 0.1 }, EwArg::Step(4)),
            EwStep::Unary(UnaryOp::Elu { alpha: 2.0 }, EwArg::Step(5)),
            EwStep::Unary(
                UnaryOp::HardSigmoid {
                    alpha: 0.25,
                    beta: -0.5,
                },
                EwArg::Step(6),
            ),
            EwStep::Unary(UnaryOp::Gelu { tanh_approx: true }, EwArg::Step(7)),
            EwStep::Unary(UnaryOp::HardSwish, EwArg::Step(8)),
            EwStep::Binary(
                BinaryOp::Pow,
                EwArg::Scalar(f32::NEG_INFINITY),
                EwArg::Step(9),
            ),
        ];
        ops.push((
            Op::Elementwise {
                steps: steps.clone(),
            },
            vec![Some(a), Some(a)],
            f32t(&[4, 3]),
        ));
        for (i, (op, inputs, ty)) in ops.into_iter().enumerate() {
            let y = g.add_value(format!("y{i}"), ty);
            g.add_node(Node {
                name: format!("n{i}"),
                op,
                inputs,
                outputs: vec![y],
            });
            g.outputs.push(y);
        }
        let text = print(&g);
        assert!(text.contains(
            "FusedConv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0], act=clip(0, 6)](%0, %1, _, _)"
        ), "{text}");
        assert!(text.contains(
            "FusedMatMul[trans_a=false, trans_b=true, alpha=0.125, act=leaky_relu(0.01)](%2, %2)"
        ), "{text}");
        assert!(text.contains("act=gelu_tanh"), "{text}");
        assert!(text.contains("act=hard_sigmoid(0.2, 0.5)"), "{text}");
        assert!(text.contains(
            "Elementwise[steps=[mul(in0, 0.5), erf(s0), add(s1, 1), mul(in1, s2), clip(s3, 0, 6), \
             leaky_relu(s4, 0.1), elu(s5, 2), hard_sigmoid(s6, 0.25, -0.5), gelu_tanh(s7), \
             hard_swish(s8), pow(-inf, s9)]](%2, %2)"
        ), "{text}");
        let p = parse_unchecked(&text, &mut no_consts).unwrap();
        assert_eq!(print(&p), text);
        assert_same(&p, &canonicalize(&g));
        let last = p.nodes().last().unwrap().1;
        assert_eq!(last.op, Op::Elementwise { steps });
    }

    #[test]
    fn every_dtype_and_special_floats_round_trip_in_constants() {
        let mut g = Graph::new("consts", 21);
        let vals = [0.0, -0.0, 1.5, -2.0, 0.25, 448.0, f64::NAN, f64::INFINITY];
        for d in DType::ALL {
            let t = Tensor::new(vec![2, 4], TensorData::from_f64(d, &vals)).unwrap();
            let c = g.add_const(format!("c_{d}"), t);
            g.outputs.push(c);
        }
        let odd = [
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            -f32::NAN,
            0.1,
            1e-7,
            123456790.0,
            -3.4028235e38,
        ];
        let c = g.add_const("odd", Tensor::from_f32(vec![8], odd.to_vec()).unwrap());
        g.outputs.push(c);
        let big = g.add_const(
            "big",
            Tensor::new(vec![2], TensorData::U64(vec![u64::MAX, 1 << 60])).unwrap(),
        );
        g.outputs.push(big);
        let i = g.add_const(
            "i",
            Tensor::new(vec![2], TensorData::I64(vec![i64::MIN, i64::MAX])).unwrap(),
        );
        g.outputs.push(i);
        let e = g.add_const("empty", Tensor::from_f32(vec![0, 3], vec![]).unwrap());
        g.outputs.push(e);
        let text = print(&g);
        assert!(text.contains("const  %23 odd: f32[8] = [1.1754944e-38, 1e-45, 3.4028235e38, -nan, 0.1, 1e-7, 123456790, -3.4028235e38]"), "{text}");
        assert!(
            text.contains(
                "const  %11 c_bool: bool[2,4] = [false, false, true, true, true, true, true, true]"
            ),
            "{text}"
        );
        assert!(text.contains("empty: f32[0,3] = []"), "{text}");
        let p = parse(&text).unwrap();
        assert_eq!(print(&p), text);
        assert_same(&p, &g);
        // Bit patterns survive, including NaN signs where the format has them.
        for (a, b) in g.consts.values().zip(p.consts.values()) {
            let raw = |t: &Tensor| match t.data() {
                TensorData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
                TensorData::F16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
                TensorData::BF16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
                TensorData::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
                TensorData::F8E4M3FN(v)
                | TensorData::F8E4M3FNUZ(v)
                | TensorData::F8E5M2(v)
                | TensorData::F8E5M2FNUZ(v)
                | TensorData::F8E8M0(v)
                | TensorData::F4E2M1(v) => v.iter().map(|&x| x as u64).collect(),
                _ => Vec::<u64>::new(),
            };
            assert_eq!(raw(a), raw(b), "{:?}", a.dtype());
        }
    }

    #[test]
    fn attribute_floats_are_bit_exact() {
        for x in [0.1f32, 1e-5, -0.0, 3.4028235e38, 1e-45, 0.3, 16777217.0] {
            let op = Op::Gemm {
                alpha: x,
                beta: -x,
                trans_a: true,
                trans_b: false,
            };
            let text = format!(
                "graph g opset 21\n  input  %0 a: f32[2,2]\n  %1 y: f32[2,2] = Gemm{}(%0, %0, _)\n  output %1 y\n",
                attrs_text(&op)
            );
            let g = parse(&text).unwrap();
            assert_eq!(g.nodes().next().unwrap().1.op, op);
            let Op::Gemm { alpha, beta, .. } = g.nodes().next().unwrap().1.op else {
                unreachable!()
            };
            assert_eq!(
                (alpha.to_bits(), beta.to_bits()),
                (x.to_bits(), (-x).to_bits())
            );
        }
    }

    #[test]
    fn defaults_fill_omitted_attributes() {
        let t = r#"graph g opset 21
  input %5 x: f32[1,2,6,6]
  input %9 w: f32[2,2,3,3]
  %1 c: f32[1,2,4,4] = Conv[kernel=[3, 3]](%5, %9)
  %2 p: f32[1,2,2,2] = MaxPool[kernel=[2, 2], strides=[2, 2]](%1)
  %3 s: f32[1,2,2,2] = Softmax(%2)
  %4 g: f32[1,2,2,2] = Gemm(%3, %3)
  output %4
"#;
        // Gemm needs 2-D inputs: that is an inference error on line 7.
        let e = err(t);
        assert!(e.contains("line 7"), "{e}");
        let t = t.replace(
            "  %4 g: f32[1,2,2,2] = Gemm(%3, %3)\n  output %4\n",
            "  %7 r: f32[1,2,2,2] = LeakyRelu(%3)\n  const %10 sc: f32[4] = [1, 1, 1, 1]\n  \
             %8 y: f32[1,2,2,2] = Resize(%7, _, %10)\n  output %8 y\n",
        );
        let g = parse(&t).unwrap();
        let ops: Vec<&Op> = g.nodes().map(|(_, n)| &n.op).collect();
        assert_eq!(
            *ops[0],
            Op::Conv(ConvAttrs {
                kernel_shape: vec![3, 3],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![0, 0, 0, 0],
                auto_pad: AutoPad::NotSet,
                group: 1
            })
        );
        assert_eq!(
            *ops[2],
            Op::Softmax {
                axis: -1,
                legacy: false,
                nan_to_zero: false,
            }
        );
        assert_eq!(*ops[3], Op::Unary(UnaryOp::LeakyRelu { alpha: 0.01 }));
        let Op::Resize(r) = ops[4] else { panic!() };
        assert_eq!(
            (r.mode, r.coord, r.nearest),
            (
                ResizeMode::Nearest,
                CoordTransform::HalfPixel,
                NearestMode::RoundPreferFloor
            )
        );
        // Renumbered canonically, in the order inputs, nodes.
        let text = print(&g);
        assert!(
            text.contains("input  %0 x: f32[1,2,6,6]\n  input  %1 w:"),
            "{text}"
        );
        assert!(
            text.contains(
                "const  %2 sc: f32[4] = [1, 1, 1, 1]\n  %3 c: f32[1,2,4,4] = \
            Conv[kernel=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1)"
            ),
            "{text}"
        );
        assert!(text.contains("LeakyRelu[alpha=0.01](%5)"), "{text}");
        assert_eq!(print(&parse(&text).unwrap()), text);
        // Parsed ids follow the text's line order, not its numbers.
        assert_eq!(ValueId(2), g.nodes().next().unwrap().1.outputs[0]);
    }

    #[test]
    fn forward_references_and_unusual_names() {
        let t = r#"graph "my graph" opset 18
  %2 "y:0": f32["batch size",3] = Relu(%1)  # "node \u00e9 1"
  input %1 x: f32["batch size",3]
  output %2 "y:0"
"#;
        let g = parse(t).unwrap();
        let text = print(&g);
        assert_eq!(
            text,
            "graph \"my graph\" opset 18\n  input  %0 x: f32[\"batch size\",3]\n  %1 \"y:0\": f32[\"batch size\",3] = Relu(%0)  # \"node é 1\"\n  output %1 \"y:0\"\n"
        );
        assert_eq!(g.nodes().next().unwrap().1.name, "node é 1");
        round(&text);
        // Dims that look like numbers or hold odd characters are quoted.
        let ty = TensorType::new(
            DType::I64,
            Shape(vec![
                Dim::sym("12"),
                Dim::sym("a b"),
                Dim::sym("384*seq"),
                Dim::Known(0),
            ]),
        );
        assert_eq!(type_text(&ty), "i64[\"12\",\"a b\",384*seq,0]");
        assert_eq!(name_text("a/b.c-d_1"), "a/b.c-d_1");
        assert_eq!(name_text("/a"), "\"/a\"");
        assert_eq!(name_text(""), "\"\"");
    }

    #[test]
    fn canonicalize_drops_tombstones_and_is_idempotent() {
        let t = |dims: &[usize]| TensorType::new(DType::F32, Shape::known(dims));
        let mut g = Graph::new("g", 17);
        let x = g.add_input("x", t(&[2]));
        let a = g.add_value("a", t(&[2]));
        let dead = g.add_value("dead", t(&[2]));
        let b = g.add_value("b", t(&[2]));
        let c = g.add_const("c", Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap());
        // Nodes inserted out of topological order, plus one removed.
        let nb = g.add_node(Node {
            name: "nb".into(),
            op: Op::Binary(BinaryOp::Add),
            inputs: vec![Some(a), Some(c)],
            outputs: vec![b],
        });
        let nd = g.add_node(Node {
            name: "nd".into(),
            op: Op::Unary(UnaryOp::Neg),
            inputs: vec![Some(x)],
            outputs: vec![dead],
        });
        g.add_node(Node {
            name: "na".into(),
            op: Op::Unary(UnaryOp::Relu),
            inputs: vec![Some(x)],
            outputs: vec![a],
        });
        g.remove_node(nd);
        g.outputs.push(b);
        let cg = canonicalize(&g);
        assert_eq!(cg.node_count(), 2);
        assert_eq!(cg.node_capacity(), 2);
        assert_eq!(cg.values.len(), 4);
        let text = print(&g);
        assert_eq!(print(&cg), text);
        assert_eq!(
            text,
            "graph \"g\" opset 17\n  input  %0 x: f32[2]\n  const  %1 c: f32[2] = [1, 2]\n  %2 a: f32[2] = Relu(%0)  # na\n  %3 b: f32[2] = Add(%2, %1)  # nb\n  output %3 b\n"
        );
        assert_same(&canonicalize(&cg), &cg);
        assert_eq!(g.node(nb).unwrap().name, "nb");
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let head = "graph g opset 21\n  input  %0 x: f32[2,3]\n";
        let case = |body: &str| err(&format!("{head}{body}"));
        let e = case("  %1 y: f32[2,3] = Conv2d(%0)\n  output %1 y\n");
        assert!(e.contains("line 3: unknown op 'Conv2d'"), "{e}");
        let e = case("  %1 y: f32[2,3] = Conv[kernel=3](%0, %0)\n");
        assert!(
            e.contains("line 3: attribute 'kernel' expects a list"),
            "{e}"
        );
        let e = case("  %1 y: f32[2,3] = Relu(%7)\n  output %1 y\n");
        assert!(e.contains("line 3: %7 is not defined"), "{e}");
        let e = case("  %1 y: f32[2,4] = Relu(%0)\n  output %1 y\n");
        assert!(
            e.contains("line 3: %1 'y' is declared f32[2,4] but inference gives f32[2,3]"),
            "{e}"
        );
        let e = case("  %1 y: f32[2,3] = Relu(%0\n");
        assert!(e.contains("line 3: expected ',' between inputs"), "{e}");
        let e = case("  %1 y: f32[2,3] = Relu[alpha=1](%0)\n");
        assert!(e.contains("line 3: Relu has no attribute 'alpha'"), "{e}");
        let e = case("  %1 y: f32[2,3] = LeakyRelu[alpha=x](%0)\n");
        assert!(e.contains("attribute 'alpha' expects a number"), "{e}");
        let e = case("  %0 y: f32[2,3] = Relu(%0)\n");
        assert!(e.contains("line 3: %0 is already defined on line 2"), "{e}");
        let e = case("  const  %1 c: f32[2] = [1]\n");
        assert!(
            e.contains("line 3: constant %1: f32[2] needs 2 values, 1 given"),
            "{e}"
        );
        let e = case("  const  %1 c: f32[2]\n");
        assert!(e.contains("line 3:") && e.contains("no values"), "{e}");
        let e = case("  const  %1 c: i8[1] = [300]\n");
        assert!(e.contains("value 0 is not an i8"), "{e}");
        let e = case("  input  %1 z: f33[2]\n");
        assert!(e.contains("line 3: unknown dtype 'f33'"), "{e}");
        let e = case("  output %0 y\n");
        assert!(
            e.contains("line 3: output %0 is named 'y' but the value is 'x'"),
            "{e}"
        );
        let e = case("  %1 y: f32[2,3] = Relu(%0)  # n\n  %2 z: f32[2,3] = Add(%1, %0) extra\n");
        assert!(e.contains("line 4: unexpected 'extra'"), "{e}");
        let e = case("  %1 a: f32[2,3] = Relu(%2)\n  %2 b: f32[2,3] = Relu(%1)\n");
        assert!(e.contains("cycle"), "{e}");
        let e = case("  %1 y: f32[2,3] = Elementwise[steps=[foo(in0)]](%0)\n");
        assert!(e.contains("line 3: unknown elementwise step 'foo'"), "{e}");
        let e = case("  %1 y: f32[2,3] = FusedConv[kernel=[1], act=swish](%0, %0)\n");
        assert!(e.contains("line 3: unknown activation 'swish'"), "{e}");
        let e = case("  %1 y: f32[2,3] = Relu[](%0)  # \"unterminated\n");
        assert!(e.contains("unterminated string"), "{e}");
        assert!(err("").contains("empty"));
        let deep = format!("  %1 y: f32[2,3] = Relu[a={}](%0)\n", "[".repeat(100_000));
        assert!(case(&deep).contains("nested too deeply"));
        // Whole-line comments are allowed.
        parse(&format!("# a comment\n{head}  # another\n  output %0 x\n")).unwrap();
        assert!(err("input %0 x: f32[1]\n").contains("line 1: expected the header"));
        // An inference failure of an unnamed node still gets its line.
        let e = case("  %1 y: f32[2,3] = Relu(%0)\n  %2 z: f32[3,3] = MatMul(%1, %1)\n");
        assert!(e.contains("line 4:"), "{e}");
        // Load errors and mismatched loaded data.
        let text = format!("{head}  const  %1 c: f32[2]\n");
        let e = parse_with(&text, &mut |_, _| {
            Ok(Tensor::from_f32(vec![3], vec![0.0; 3]).unwrap())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3: constant %1 'c' is declared f32[2] but its data is f32[3]"),
            "{e}"
        );
    }

    /// Every op (every variant and enum value) reads back from its printed
    /// attributes, without inference.
    #[test]
    fn every_op_reads_back_from_its_attributes() {
        let conv = ConvAttrs {
            kernel_shape: vec![3],
            strides: vec![2],
            dilations: vec![1],
            pads: vec![1, 0],
            auto_pad: AutoPad::SameLower,
            group: 2,
        };
        let pool = PoolAttrs {
            kernel_shape: vec![2, 2],
            strides: vec![1, 2],
            dilations: vec![2, 1],
            pads: vec![0, 1, 1, 0],
            auto_pad: AutoPad::Valid,
            ceil_mode: true,
            count_include_pad: true,
            column_major: true,
        };
        let resize = |mode, coord, nearest, aspect| {
            Op::Resize(ResizeAttrs {
                mode,
                coord,
                nearest,
                exclude_outside: false,
                extrapolation_value: 0.0,
                antialias: false,
                axes: None,
                aspect,
                cubic_coeff_a: -0.75,
            })
        };
        let mut ops = vec![
            Op::Clip,
            Op::Where,
            Op::MatMul,
            Op::GlobalAveragePool,
            Op::GlobalMaxPool,
            Op::Squeeze,
            Op::Unsqueeze,
            Op::Slice,
            Op::Size,
            Op::Expand,
            Op::Tile,
            Op::Identity,
            Op::Dropout,
            Op::Range,
            Op::IsNaN,
            Op::IsInf {
                detect_negative: false,
                detect_positive: true,
            },
            Op::CumSum {
                exclusive: true,
                reverse: false,
            },
            Op::GatherElements { axis: -1 },
            Op::ScatterElements {
                axis: 1,
                reduction: ScatterReduction::Max,
            },
            Op::GatherND { batch_dims: 1 },
            Op::ScatterND {
                reduction: ScatterReduction::Add,
            },
            Op::Lrn {
                alpha: 2e-4,
                beta: 0.5,
                bias: 2.0,
                size: 5,
            },
            Op::Softmax {
                axis: 0,
                legacy: true,
                nan_to_zero: false,
            },
            Op::LogSoftmax {
                axis: -2,
                legacy: false,
            },
            Op::Gemm {
                alpha: 0.5,
                beta: 0.0,
                trans_a: true,
                trans_b: false,
            },
            Op::Conv(conv.clone()),
            Op::ConvTranspose(ConvTransposeAttrs {
                conv: conv.clone(),
                output_padding: vec![1],
                output_shape: Some(vec![7]),
            }),
            Op::BatchNormalization {
                epsilon: 1e-3,
                training_momentum: None,
            },
            Op::LayerNormalization {
                axis: 1,
                epsilon: 1e-6,
            },
            Op::InstanceNormalization { epsilon: 0.5 },
            Op::MaxPool(pool.clone()),
            Op::AveragePool(PoolAttrs {
                auto_pad: AutoPad::NotSet,
                ..pool
            }),
            Op::Flatten { axis: 0 },
            Op::Reshape { allowzero: true },
            Op::Reshape { allowzero: false },
            Op::Transpose { perm: vec![] },
            Op::Concat { axis: -3 },
            Op::Split {
                axis: 1,
                num_outputs: 3,
            },
            Op::Gather { axis: -1 },
            Op::Shape {
                start: -2,
                end: None,
            },
            Op::ConstantOfShape {
                value: Tensor::scalar_i64(-4),
            },
            Op::ConstantOfShape {
                value: Tensor::new(vec![1], TensorData::Bool(vec![true])).unwrap(),
            },
            Op::ArgMax {
                axis: 1,
                keepdims: false,
                select_last_index: false,
            },
            Op::ArgMin {
                axis: -1,
                keepdims: true,
                select_last_index: true,
            },
            Op::FusedConv { conv, act: None },
            Op::FusedMatMul {
                trans_a: true,
                trans_b: false,
                alpha: 2.0,
                act: None,
            },
            Op::Elementwise { steps: vec![] },
            Op::Cast {
                to: DType::U2,
                saturate: false,
                round_mode: E8M0Round::Down,
            },
            Op::Unary(UnaryOp::Gelu { tanh_approx: false }),
            Op::Unary(UnaryOp::HardSwish),
            Op::Binary(BinaryOp::FMod),
        ];
        // Every op kind, with its schema's placeholder attributes.
        for p in crate::ir::ops::prototypes() {
            match p {
                Op::Reduce { op, .. } => {
                    for (keepdims, noop) in [(true, false), (false, true)] {
                        ops.push(Op::Reduce {
                            op,
                            keepdims,
                            noop_with_empty_axes: noop,
                        });
                    }
                }
                p => ops.push(p),
            }
        }
        for mode in [
            PadMode::Constant,
            PadMode::Reflect,
            PadMode::Edge,
            PadMode::Wrap,
        ] {
            ops.push(Op::Pad { mode });
        }
        use CoordTransform as C;
        use NearestMode as N;
        for (i, coord) in [
            C::HalfPixel,
            C::HalfPixelSymmetric,
            C::PytorchHalfPixel,
            C::AlignCorners,
            C::Asymmetric,
            C::TfCropAndResize,
        ]
        .into_iter()
        .enumerate()
        {
            let mode = [ResizeMode::Nearest, ResizeMode::Linear, ResizeMode::Cubic][i % 3];
            let nearest = [N::RoundPreferFloor, N::RoundPreferCeil, N::Floor, N::Ceil][i % 4];
            let aspect = [
                AspectPolicy::Stretch,
                AspectPolicy::NotLarger,
                AspectPolicy::NotSmaller,
            ][i % 3];
            ops.push(resize(mode, coord, nearest, aspect));
        }
        for op in ops {
            let text = format!(
                "graph g opset 21\n  %0 y: f32[] = {}{}()\n",
                op.onnx_type(),
                attrs_text(&op)
            );
            let g =
                parse_unchecked(&text, &mut no_consts).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let back = &g.nodes().next().unwrap().1.op;
            assert_eq!(*back, op, "{text}");
        }
    }
}

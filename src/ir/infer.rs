//! Shape and type inference.
//!
//! Every op's output types follow from its input types, its attributes and,
//! for ops whose output shape depends on data (Reshape, Expand, Slice, ...),
//! the *values* of small integer inputs. Ranks are always known; a dim is a
//! known size or a symbol. A size that cannot be worked out statically gets a
//! fresh symbol (`unk_<n>` in [`infer_graph`], `unk_<value>_<n>` in
//! [`infer_node`]), which admits any run-time size.
//!
//! [`infer_graph`] also propagates the values of small integer tensors
//! symbolically (`Shape` of a value yields its dims, constants their
//! elements, and Gather/Concat/Slice/Unsqueeze/Cast/arithmetic/Equal/Where
//! carry them along), so the `Shape -> Gather -> Unsqueeze -> Concat ->
//! Reshape` chains of a PyTorch export with dynamic batch and sequence still
//! give exact shapes such as `[batch,seq,12,32]`. A propagated element is a
//! known integer, a symbolic product of dims (a canonical monomial such as
//! `batch*seq` or `384*seq`, which is also how such dims are named), or
//! unknown. [`infer_node`] sees only the graph's current types and constants.

use std::collections::{HashMap, HashSet};

use super::{
    ActQuant, AspectPolicy, AutoPad, BinaryOp, ConvAttrs, DType, Dim, Graph, Node, Op, PoolAttrs,
    ReduceOp, Shape, SymbolBindings, TensorType, UnaryOp, ValueId, VariadicOp,
};
use crate::{Error, Result};

/// One element of a propagated integer value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SymInt {
    Known(i64),
    /// A product of dims (never negative), named like a [`Dim::Sym`].
    Sym(String),
}

/// A propagated value: one entry per element, `None` where unknown.
pub type SymVec = Vec<Option<SymInt>>;

/// Values longer than this are not propagated.
const MAX_PROP: usize = 64;

/// Infers the output types of one node from the current types of its inputs
/// (and the values of constant inputs). Unknown sizes get symbols named after
/// the node's first output value (`unk_<id>_<n>`).
pub fn infer_node(g: &Graph, node: &Node) -> Result<Vec<TensorType>> {
    let vals = HashMap::new();
    let first = node.outputs.first().map_or(0, |v| v.0);
    let mut mint = Minter::new(format!("unk_{first}_"), HashSet::new());
    let mut cx = Ctx {
        g,
        vals: &vals,
        mint: &mut mint,
    };
    infer_op(&mut cx, node)
}

/// Infers every node output in topological order, propagating the values of
/// small integer tensors, and stores the types in `g.values`.
pub fn infer_graph(g: &mut Graph) -> Result<()> {
    let order = g.topo_order()?;
    // Symbols already used by the inputs are never minted.
    let taken: HashSet<String> = g
        .inputs
        .iter()
        .flat_map(|&i| g.ty(i).shape.0.iter())
        .filter_map(|d| match d {
            Dim::Sym(s) => Some(s.clone()),
            Dim::Known(_) => None,
        })
        .collect();
    let mut mint = Minter::new("unk_".to_string(), taken);
    let mut vals: HashMap<ValueId, SymVec> = HashMap::new();
    for id in order {
        let (outputs, types, props) = {
            let Some(node) = g.node(id) else { continue };
            let at = |e: Error| e.at_node(&node.name, node.op.onnx_type());
            let mut cx = Ctx {
                g,
                vals: &vals,
                mint: &mut mint,
            };
            let types = infer_op(&mut cx, node).map_err(at)?;
            if types.len() != node.outputs.len() {
                return Err(at(Error::op(
                    node.op.onnx_type(),
                    format!(
                        "the node has {} outputs but the op gives {}",
                        node.outputs.len(),
                        types.len()
                    ),
                )));
            }
            let props = propagate(&cx, node, &types);
            (node.outputs.clone(), types, props)
        };
        for ((o, ty), p) in outputs.into_iter().zip(types).zip(props) {
            g.value_mut(o).ty = ty;
            if let Some(p) = p {
                vals.insert(o, p);
            }
        }
    }
    Ok(())
}

/// The size of a dim under run-time symbol bindings, including the product
/// symbols (`batch*seq`, `384*seq`) inference creates.
pub fn eval_dim(d: &Dim, bindings: &SymbolBindings) -> Option<usize> {
    match d {
        Dim::Known(n) => Some(*n),
        Dim::Sym(s) => {
            if let Some(&v) = bindings.0.get(s) {
                return Some(v);
            }
            let m = Mono::parse(s);
            m.syms.iter().try_fold(m.coef, |acc, f| {
                bindings.0.get(f).and_then(|&v| acc.checked_mul(v))
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers shared with the reference kernels (one definition of each rule).

/// Clamped start and length of one sliced axis, following Python's slice
/// semantics (`PySlice_AdjustIndices`). `step` must not be 0.
pub fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> (i64, usize) {
    let d = dim as i64;
    let clamp = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v.saturating_add(d) } else { v };
        v.clamp(lo, hi)
    };
    if step > 0 {
        let s = clamp(start, 0, d);
        let e = clamp(end, 0, d);
        let len = if e > s { (e - s - 1) / step + 1 } else { 0 };
        (s, len as usize)
    } else {
        let s = clamp(start, -1, d - 1);
        let e = clamp(end, -1, d - 1);
        let len = if e < s {
            (s - e - 1) / step.saturating_neg() + 1
        } else {
            0
        };
        (s, len as usize)
    }
}

/// The `[start, end)` range of dims Shape returns (opset 15), clamped.
pub fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let r = rank as i64;
    let norm = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let s = norm(start);
    let e = end.map_or(rank, norm);
    (s, e.max(s))
}

/// Chunk sizes of Split without a `split` input: equal chunks of
/// `ceil(dim / n)`, the last one smaller when not divisible (opset 18).
pub fn split_sizes(op: &'static str, dim: usize, n: usize) -> Result<Vec<usize>> {
    if n == 0 {
        return Err(Error::op(op, "needs at least one output"));
    }
    let chunk = dim.div_ceil(n);
    let used = chunk * (n - 1);
    if used > dim {
        return Err(Error::op(
            op,
            format!("cannot split a dim of {dim} into {n} outputs"),
        ));
    }
    let mut sizes = vec![chunk; n];
    sizes[n - 1] = dim - used;
    Ok(sizes)
}

/// Largest Range the reference kernels build.
pub const MAX_RANGE: usize = 1 << 31;

/// Number of elements of a floating-point Range,
/// `max(ceil((limit - start) / delta), 0)`.
pub fn range_len_f64(op: &'static str, start: f64, limit: f64, delta: f64) -> Result<usize> {
    if delta == 0.0 {
        return Err(Error::op(op, "delta must not be 0"));
    }
    let n = ((limit - start) / delta).ceil();
    if !n.is_finite() {
        return Err(Error::op(op, "the number of elements is not finite"));
    }
    if n > MAX_RANGE as f64 {
        return Err(Error::op(op, format!("{n} elements is too many")));
    }
    Ok(n.max(0.0) as usize)
}

/// Number of elements of an integer Range, exact.
pub fn range_len_i64(op: &'static str, start: i64, limit: i64, delta: i64) -> Result<usize> {
    if delta == 0 {
        return Err(Error::op(op, "delta must not be 0"));
    }
    let (diff, d) = (limit as i128 - start as i128, delta as i128);
    let q = diff / d;
    let n = if diff % d != 0 && (diff < 0) == (d < 0) {
        q + 1
    } else {
        q
    };
    if n > MAX_RANGE as i128 {
        return Err(Error::op(op, format!("{n} elements is too many")));
    }
    Ok(n.max(0) as usize)
}

// ---------------------------------------------------------------------------
// Symbolic products of dims.

/// `coef * syms[0] * syms[1] * ...`, factors sorted: the canonical form of a
/// product of dims, so equal products get equal symbol names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mono {
    coef: usize,
    syms: Vec<String>,
}

impl Mono {
    fn known(n: usize) -> Mono {
        Mono {
            coef: n,
            syms: Vec::new(),
        }
    }

    fn parse(name: &str) -> Mono {
        let mut m = Mono::known(1);
        for part in name.split('*') {
            match part.parse::<usize>() {
                Ok(k) => m.coef = m.coef.saturating_mul(k),
                Err(_) => m.syms.push(part.to_string()),
            }
        }
        m.syms.sort();
        m.norm()
    }

    fn norm(mut self) -> Mono {
        if self.coef == 0 {
            self.syms.clear();
        }
        self
    }

    fn of_dim(d: &Dim) -> Mono {
        match d {
            Dim::Known(n) => Mono::known(*n),
            Dim::Sym(s) => Mono::parse(s),
        }
    }

    fn of_int(s: &SymInt) -> Option<Mono> {
        match s {
            SymInt::Known(k) => usize::try_from(*k).ok().map(Mono::known),
            SymInt::Sym(n) => Some(Mono::parse(n)),
        }
    }

    fn mul(&self, o: &Mono) -> Option<Mono> {
        let mut syms = self.syms.clone();
        syms.extend(o.syms.iter().cloned());
        syms.sort();
        Some(
            Mono {
                coef: self.coef.checked_mul(o.coef)?,
                syms,
            }
            .norm(),
        )
    }

    /// Exact quotient, when `o` divides `self` as a monomial.
    fn div(&self, o: &Mono) -> Option<Mono> {
        if o.coef == 0 {
            return None;
        }
        if self.coef == 0 {
            return Some(Mono::known(0));
        }
        if !self.coef.is_multiple_of(o.coef) {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let i = syms.iter().position(|x| x == s)?;
            syms.remove(i);
        }
        Some(Mono {
            coef: self.coef / o.coef,
            syms,
        })
    }

    fn name(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.coef != 1 {
            parts.push(self.coef.to_string());
        }
        parts.extend(self.syms.iter().cloned());
        parts.join("*")
    }

    fn to_dim(&self) -> Dim {
        if self.syms.is_empty() {
            Dim::Known(self.coef)
        } else {
            Dim::Sym(self.name())
        }
    }

    fn to_int(&self) -> Option<SymInt> {
        if self.syms.is_empty() {
            i64::try_from(self.coef).ok().map(SymInt::Known)
        } else {
            Some(SymInt::Sym(self.name()))
        }
    }
}

fn dim_to_int(d: &Dim) -> Option<SymInt> {
    Mono::of_dim(d).to_int()
}

fn product(dims: &[Dim]) -> Option<Mono> {
    dims.iter()
        .try_fold(Mono::known(1), |acc, d| acc.mul(&Mono::of_dim(d)))
}

// ---------------------------------------------------------------------------
// Inference context.

/// Mints fresh symbols for sizes that cannot be worked out.
struct Minter {
    prefix: String,
    next: usize,
    taken: HashSet<String>,
}

impl Minter {
    fn new(prefix: String, taken: HashSet<String>) -> Minter {
        Minter {
            prefix,
            next: 0,
            taken,
        }
    }

    fn fresh(&mut self) -> Dim {
        loop {
            let name = format!("{}{}", self.prefix, self.next);
            self.next += 1;
            if !self.taken.contains(&name) {
                return Dim::Sym(name);
            }
        }
    }
}

struct Ctx<'a> {
    g: &'a Graph,
    vals: &'a HashMap<ValueId, SymVec>,
    mint: &'a mut Minter,
}

impl Ctx<'_> {
    fn fresh(&mut self) -> Dim {
        self.mint.fresh()
    }

    fn fresh_n(&mut self, n: usize) -> Vec<Dim> {
        (0..n).map(|_| self.fresh()).collect()
    }

    /// The propagated or constant value of an integer/bool input.
    fn val(&self, v: Option<ValueId>) -> Option<SymVec> {
        let v = v?;
        if let Some(t) = self.g.const_value(v) {
            if t.numel() > 4 * MAX_PROP {
                return None;
            }
            let ints: Vec<i64> = match t.dtype() {
                DType::Bool => t.to_f64_vec().iter().map(|&x| x as i64).collect(),
                _ => t.to_i64_vec()?,
            };
            return Some(ints.into_iter().map(|k| Some(SymInt::Known(k))).collect());
        }
        self.vals.get(&v).cloned()
    }

    /// The value, when every element is a known integer.
    fn known_ints(&self, v: Option<ValueId>) -> Option<Vec<i64>> {
        self.val(v)?
            .into_iter()
            .map(|e| match e {
                Some(SymInt::Known(k)) => Some(k),
                _ => None,
            })
            .collect()
    }
}

fn req(node: &Node, i: usize) -> Result<ValueId> {
    node.input(i)
        .ok_or_else(|| Error::op(node.op.onnx_type(), format!("missing required input {i}")))
}

fn in_ty<'a>(cx: &Ctx<'a>, node: &Node, i: usize) -> Result<&'a TensorType> {
    let g = cx.g;
    let v = req(node, i)?;
    if v.0 as usize >= g.values.len() {
        return Err(Error::op(
            node.op.onnx_type(),
            format!("input {i} refers to value {v}, which does not exist"),
        ));
    }
    Ok(g.ty(v))
}

fn opt_ty<'a>(cx: &Ctx<'a>, node: &Node, i: usize) -> Option<&'a TensorType> {
    let g = cx.g;
    node.input(i)
        .filter(|v| (v.0 as usize) < g.values.len())
        .map(|v| g.ty(v))
}

fn tt(dtype: DType, dims: Vec<Dim>) -> TensorType {
    TensorType::new(dtype, Shape(dims))
}

fn norm_axis(op: &'static str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(Error::op(
            op,
            format!("axis {axis} is out of range for rank {rank}"),
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

fn unique_axes(op: &'static str, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(op, a, rank)?;
        if out.contains(&n) {
            return Err(Error::op(op, format!("axes {axes:?} repeat axis {n}")));
        }
        out.push(n);
    }
    Ok(out)
}

/// Length of a 1-D shape-like input, which must be known to infer the rank.
fn vec_len(op: &'static str, what: &str, t: &TensorType) -> Result<usize> {
    if !t.dtype.is_int() {
        return Err(Error::op(
            op,
            format!("{what} must be an integer tensor, got {}", t.dtype),
        ));
    }
    match t.shape.dims() {
        [] => Ok(1),
        [Dim::Known(n)] => Ok(*n),
        [Dim::Sym(s)] => Err(Error::op(
            op,
            format!("the length of {what} ({s}) must be known to infer the output rank"),
        )),
        _ => Err(Error::op(
            op,
            format!("{what} must be 1-D, got shape {}", t.shape),
        )),
    }
}

/// Broadcast of two dims; `None` when two known sizes clash.
fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    match (a, b) {
        _ if a == b => Some(a.clone()),
        (Dim::Known(1), _) => Some(b.clone()),
        (_, Dim::Known(1)) => Some(a.clone()),
        (Dim::Known(_), Dim::Known(_)) => None,
        (Dim::Known(_), Dim::Sym(_)) => Some(a.clone()),
        (Dim::Sym(_), Dim::Known(_)) => Some(b.clone()),
        (Dim::Sym(_), Dim::Sym(_)) => Some(a.clone()),
    }
}

/// Multidirectional broadcast of shapes.
fn broadcast(op: &'static str, shapes: &[&Shape]) -> Result<Vec<Dim>> {
    let rank = shapes.iter().map(|s| s.rank()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.rank();
        for (i, d) in s.dims().iter().enumerate() {
            out[off + i] = broadcast_dim(&out[off + i], d).ok_or_else(|| {
                Error::op(
                    op,
                    format!(
                        "cannot broadcast shapes {}",
                        shapes
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                )
            })?;
        }
    }
    Ok(out)
}

/// Two dims that must be equal: the known one wins; clash of known sizes is
/// an error.
fn unify(op: &'static str, what: &str, a: &Dim, b: &Dim) -> Result<Dim> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => {
            Err(Error::op(op, format!("{what}: {x} does not match {y}")))
        }
        (Dim::Sym(_), Dim::Known(_)) => Ok(b.clone()),
        _ => Ok(a.clone()),
    }
}

// ---------------------------------------------------------------------------
// Per-op inference.

fn infer_op(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
        Op::FusedConv { .. } | Op::FusedMatMul { .. } => fused_linear(cx, node),
        Op::QConv { .. } | Op::QMatMul { .. } => quantized_linear(cx, node),
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DynamicQuantizeLinear => {
            quantize_ops(cx, node)
        }
        Op::Elementwise { .. } => elementwise_chain(cx, node),
        Op::Unary(u) => {
            let x = in_ty(cx, node, 0)?;
            if matches!(u, UnaryOp::Not) && x.dtype != DType::Bool {
                return Err(Error::op(
                    name,
                    format!("input must be bool, got {}", x.dtype),
                ));
            }
            single(x.clone())
        }
        Op::Binary(b) => {
            let a = in_ty(cx, node, 0)?;
            let c = in_ty(cx, node, 1)?;
            if *b != BinaryOp::Pow && a.dtype != c.dtype {
                return Err(Error::op(
                    name,
                    format!("inputs mix {} and {}", a.dtype, c.dtype),
                ));
            }
            let dims = broadcast(name, &[&a.shape, &c.shape])?;
            let dt = if b.returns_bool() {
                DType::Bool
            } else {
                a.dtype
            };
            single(tt(dt, dims))
        }
        Op::Variadic(_) => {
            let tys: Vec<&TensorType> = (0..node.inputs.len())
                .map(|i| in_ty(cx, node, i))
                .collect::<Result<_>>()?;
            let first = tys
                .first()
                .ok_or_else(|| Error::op(name, "needs at least one input"))?;
            if let Some(t) = tys.iter().find(|t| t.dtype != first.dtype) {
                return Err(Error::op(
                    name,
                    format!("inputs mix {} and {}", first.dtype, t.dtype),
                ));
            }
            let shapes: Vec<&Shape> = tys.iter().map(|t| &t.shape).collect();
            single(tt(first.dtype, broadcast(name, &shapes)?))
        }
        Op::Clip | Op::Identity => single(in_ty(cx, node, 0)?.clone()),
        Op::Where => {
            let c = in_ty(cx, node, 0)?;
            let x = in_ty(cx, node, 1)?;
            let y = in_ty(cx, node, 2)?;
            if c.dtype != DType::Bool {
                return Err(Error::op(
                    name,
                    format!("condition must be bool, got {}", c.dtype),
                ));
            }
            if x.dtype != y.dtype {
                return Err(Error::op(
                    name,
                    format!("inputs mix {} and {}", x.dtype, y.dtype),
                ));
            }
            single(tt(
                x.dtype,
                broadcast(name, &[&c.shape, &x.shape, &y.shape])?,
            ))
        }
        Op::Cast { to, .. } => single(tt(*to, in_ty(cx, node, 0)?.shape.0.clone())),
        Op::Softmax { axis, .. } | Op::LogSoftmax { axis, .. } => {
            let x = in_ty(cx, node, 0)?;
            norm_axis(name, *axis, x.shape.rank())?;
            single(x.clone())
        }
        Op::MatMul => matmul(cx, node).map(|t| vec![t]),
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let a = in_ty(cx, node, 0)?;
            let b = in_ty(cx, node, 1)?;
            if a.shape.rank() != 2 || b.shape.rank() != 2 {
                return Err(Error::op(
                    name,
                    format!("A and B must be 2-D, got {} and {}", a.shape, b.shape),
                ));
            }
            let (ad, bd) = (a.shape.dims(), b.shape.dims());
            let (m, ka) = if *trans_a {
                (&ad[1], &ad[0])
            } else {
                (&ad[0], &ad[1])
            };
            let (kb, n) = if *trans_b {
                (&bd[1], &bd[0])
            } else {
                (&bd[0], &bd[1])
            };
            unify(name, "the inner dims of A and B", ka, kb)?;
            let out = Shape(vec![m.clone(), n.clone()]);
            if let Some(c) = opt_ty(cx, node, 2) {
                let bc = broadcast(name, &[&out, &c.shape])?;
                if c.shape.rank() > 2 || Shape(bc) != out {
                    return Err(Error::op(
                        name,
                        format!("C of shape {} does not broadcast to {out}", c.shape),
                    ));
                }
            }
            single(TensorType::new(a.dtype, out))
        }
        Op::Conv(c) => conv(cx, node, c).map(|t| vec![t]),
        Op::ConvTranspose(c) => conv_transpose(cx, node, c).map(|t| vec![t]),
        Op::BatchNormalization {
            training_momentum, ..
        } => {
            let x = in_ty(cx, node, 0)?;
            if x.shape.rank() < 2 {
                return Err(Error::op(
                    name,
                    format!("input must have rank >= 2, got {}", x.shape),
                ));
            }
            match (training_momentum, node.outputs.len()) {
                (_, 0 | 1) => single(x.clone()),
                // running_mean and running_var have the shape of the mean
                // and var inputs: one value per channel.
                (Some(_), 2 | 3) => {
                    // Typed like the mean input.
                    let mean = in_ty(cx, node, 3)?;
                    let c = tt(mean.dtype, vec![x.shape.dims()[1].clone()]);
                    let mut out = vec![x.clone(), c];
                    out.resize(node.outputs.len(), out[1].clone());
                    Ok(out)
                }
                (Some(_), n) => Err(Error::op(
                    name,
                    format!("training mode has at most 3 outputs, the node has {n}"),
                )),
                (None, _) => Err(Error::op(
                    name,
                    "only the Y output is supported outside training mode",
                )),
            }
        }
        Op::InstanceNormalization { .. } => {
            let x = in_ty(cx, node, 0)?;
            if x.shape.rank() < 2 {
                return Err(Error::op(
                    name,
                    format!("input must have rank >= 2, got {}", x.shape),
                ));
            }
            single(x.clone())
        }
        Op::LayerNormalization { axis, .. } => {
            let x = in_ty(cx, node, 0)?;
            let a = norm_axis(name, *axis, x.shape.rank())?;
            // Mean and InvStdDev: X's leading dims, ones from `axis` on.
            let mut stat = x.shape.dims()[..a].to_vec();
            stat.resize(x.shape.rank(), Dim::Known(1));
            let stat = tt(DType::F32, stat);
            match node.outputs.len() {
                0 | 1 => single(x.clone()),
                2 => Ok(vec![x.clone(), stat]),
                3 => Ok(vec![x.clone(), stat.clone(), stat]),
                n => Err(Error::op(
                    name,
                    format!("has at most 3 outputs, the node has {n}"),
                )),
            }
        }
        Op::MaxPool(p) => {
            let y = pool(cx, node, p)?;
            match node.outputs.len() {
                0 | 1 => single(y),
                2 => {
                    let i = tt(DType::I64, y.shape.0.clone());
                    Ok(vec![y, i])
                }
                n => Err(Error::op(
                    name,
                    format!("has at most 2 outputs (Y, Indices), the node has {n}"),
                )),
            }
        }
        Op::AveragePool(p) => {
            if node.outputs.len() > 1 {
                return Err(Error::op(name, "has a single output"));
            }
            pool(cx, node, p).map(|t| vec![t])
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            let x = in_ty(cx, node, 0)?;
            let d = x.shape.dims();
            if d.len() < 2 {
                return Err(Error::op(
                    name,
                    format!("input must have rank >= 2, got {}", x.shape),
                ));
            }
            let mut out = d[..2].to_vec();
            out.extend(std::iter::repeat_n(Dim::Known(1), d.len() - 2));
            single(tt(x.dtype, out))
        }
        Op::Flatten { axis } => {
            let x = in_ty(cx, node, 0)?;
            let r = x.shape.rank() as i64;
            if *axis < -r || *axis > r {
                return Err(Error::op(
                    name,
                    format!("axis {axis} is out of range for rank {r}"),
                ));
            }
            let a = if *axis < 0 { axis + r } else { *axis } as usize;
            let d = x.shape.dims();
            let mut out = Vec::new();
            for part in [&d[..a], &d[a..]] {
                out.push(match product(part) {
                    Some(m) => m.to_dim(),
                    None => cx.fresh(),
                });
            }
            single(tt(x.dtype, out))
        }
        Op::Reshape { allowzero } => reshape(cx, node, *allowzero).map(|t| vec![t]),
        Op::Transpose { perm } => {
            let x = in_ty(cx, node, 0)?;
            let r = x.shape.rank();
            let mut seen = vec![false; r];
            if perm.len() != r
                || perm
                    .iter()
                    .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
            {
                return Err(Error::op(
                    name,
                    format!("perm {perm:?} is not a permutation of the {r} axes"),
                ));
            }
            let d = x.shape.dims();
            single(tt(x.dtype, perm.iter().map(|&p| d[p].clone()).collect()))
        }
        Op::Squeeze => squeeze(cx, node).map(|t| vec![t]),
        Op::Unsqueeze => unsqueeze(cx, node).map(|t| vec![t]),
        Op::Concat { axis } => concat(cx, node, *axis).map(|t| vec![t]),
        Op::Split { axis, .. } => split(cx, node, *axis),
        Op::Slice => slice(cx, node).map(|t| vec![t]),
        Op::Gather { axis } => {
            let x = in_ty(cx, node, 0)?;
            let i = in_ty(cx, node, 1)?;
            if !matches!(i.dtype, DType::I32 | DType::I64) {
                return Err(Error::op(
                    name,
                    format!("indices must be i32 or i64, got {}", i.dtype),
                ));
            }
            let ax = norm_axis(name, *axis, x.shape.rank())?;
            let d = x.shape.dims();
            let mut out = d[..ax].to_vec();
            out.extend(i.shape.0.iter().cloned());
            out.extend(d[ax + 1..].iter().cloned());
            single(tt(x.dtype, out))
        }
        Op::Shape { start, end } => {
            let x = in_ty(cx, node, 0)?;
            let (s, e) = shape_range(x.shape.rank(), *start, *end);
            single(tt(DType::I64, vec![Dim::Known(e - s)]))
        }
        Op::Size => {
            in_ty(cx, node, 0)?;
            single(tt(DType::I64, vec![]))
        }
        Op::ConstantOfShape { value } => {
            if value.numel() != 1 {
                return Err(Error::op(
                    name,
                    format!("value must hold one element, it holds {}", value.numel()),
                ));
            }
            let s = in_ty(cx, node, 0)?;
            let n = vec_len(name, "the shape input", s)?;
            let dims = dims_from_value(cx, name, node.input(0), n)?;
            single(tt(value.dtype(), dims))
        }
        Op::Expand => expand(cx, node).map(|t| vec![t]),
        Op::Tile => {
            let x = in_ty(cx, node, 0)?;
            let r = x.shape.rank();
            let n = vec_len(name, "repeats", in_ty(cx, node, 1)?)?;
            if n != r {
                return Err(Error::op(name, format!("{n} repeats for rank {r}")));
            }
            let reps = cx.val(node.input(1));
            let mut out = Vec::with_capacity(r);
            for (i, d) in x.shape.dims().iter().enumerate() {
                let rep = reps.as_ref().and_then(|v| v.get(i).cloned().flatten());
                if let Some(SymInt::Known(k)) = rep {
                    if k < 0 {
                        return Err(Error::op(name, format!("repeat {k} is negative")));
                    }
                }
                let m = rep
                    .as_ref()
                    .and_then(Mono::of_int)
                    .and_then(|m| m.mul(&Mono::of_dim(d)));
                out.push(match m {
                    Some(m) => m.to_dim(),
                    None => cx.fresh(),
                });
            }
            single(tt(x.dtype, out))
        }
        Op::Dropout => {
            let x = in_ty(cx, node, 0)?;
            let zero_ratio = node
                .input(1)
                .and_then(|r| cx.g.const_value(r))
                .is_some_and(|r| r.to_f64_vec().first() == Some(&0.0));
            if let Some(t) = cx.known_ints(node.input(2)) {
                if t.first().is_some_and(|&v| v != 0) && !zero_ratio {
                    return Err(Error::op(name, "training mode is not supported"));
                }
            }
            match node.outputs.len() {
                0 | 1 => single(x.clone()),
                2 => Ok(vec![x.clone(), tt(DType::Bool, x.shape.0.clone())]),
                n => Err(Error::op(
                    name,
                    format!("has at most 2 outputs, the node has {n}"),
                )),
            }
        }
        Op::Pad { .. } => pad(cx, node).map(|t| vec![t]),
        Op::Range => range(cx, node).map(|t| vec![t]),
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => reduce(cx, node, *keepdims, *noop_with_empty_axes).map(|t| vec![t]),
        Op::ArgMax { axis, keepdims, .. } | Op::ArgMin { axis, keepdims, .. } => {
            let x = in_ty(cx, node, 0)?;
            let ax = norm_axis(name, *axis, x.shape.rank())?;
            let mut out = x.shape.0.clone();
            if *keepdims {
                out[ax] = Dim::Known(1);
            } else {
                out.remove(ax);
            }
            single(tt(DType::I64, out))
        }
        Op::Resize(a) => resize(cx, node, a).map(|t| vec![t]),
        Op::IsNaN | Op::IsInf { .. } => {
            let x = in_ty(cx, node, 0)?;
            if !x.dtype.is_float() {
                return Err(Error::op(
                    name,
                    format!("input must be floating point, got {}", x.dtype),
                ));
            }
            single(tt(DType::Bool, x.shape.0.clone()))
        }
        Op::CumSum { .. } => {
            let x = in_ty(cx, node, 0)?;
            let axis = in_ty(cx, node, 1)?;
            if !matches!(axis.dtype, DType::I32 | DType::I64) || axis.shape.rank() > 1 {
                return Err(Error::op(
                    name,
                    format!("axis must be an i32 or i64 scalar, got {axis}"),
                ));
            }
            if let Some(&[a]) = cx.known_ints(node.input(1)).as_deref() {
                norm_axis(name, a, x.shape.rank())?;
            }
            single(x.clone())
        }
        Op::GatherElements { axis } => {
            let x = in_ty(cx, node, 0)?;
            let i = index_input(cx, node, 1)?;
            if i.shape.rank() != x.shape.rank() {
                return Err(Error::op(
                    name,
                    format!("indices {i} must have the rank of data {x}"),
                ));
            }
            norm_axis(name, *axis, x.shape.rank())?;
            single(tt(x.dtype, i.shape.0.clone()))
        }
        Op::ScatterElements { axis, .. } => {
            let x = in_ty(cx, node, 0)?;
            let i = index_input(cx, node, 1)?;
            let u = in_ty(cx, node, 2)?;
            if i.shape.rank() != x.shape.rank() || u.shape.rank() != x.shape.rank() {
                return Err(Error::op(
                    name,
                    format!("indices {i} and updates {u} must have the rank of data {x}"),
                ));
            }
            if u.dtype != x.dtype {
                return Err(Error::op(
                    name,
                    format!("updates {u} must have the dtype of data {x}"),
                ));
            }
            norm_axis(name, *axis, x.shape.rank())?;
            single(x.clone())
        }
        Op::GatherND { batch_dims } => gather_nd(cx, node, *batch_dims).map(|t| vec![t]),
        Op::ScatterND { .. } => {
            let x = in_ty(cx, node, 0)?;
            let i = index_input(cx, node, 1)?;
            let u = in_ty(cx, node, 2)?;
            if u.dtype != x.dtype {
                return Err(Error::op(
                    name,
                    format!("updates {u} must have the dtype of data {x}"),
                ));
            }
            if let Some(Dim::Known(k)) = i.shape.dims().last() {
                let want = i.shape.rank() - 1 + x.shape.rank().saturating_sub(*k);
                if *k > x.shape.rank() || u.shape.rank() != want {
                    return Err(Error::op(
                        name,
                        format!("indices {i} (tuples of {k}) do not fit data {x} with updates {u}"),
                    ));
                }
            }
            single(x.clone())
        }
        Op::Shrink { .. } => {
            let x = in_ty(cx, node, 0)?;
            if x.dtype == DType::Bool {
                return Err(Error::op(name, "input must be numeric, got bool"));
            }
            single(x.clone())
        }
        Op::Lrn { .. } => {
            let x = in_ty(cx, node, 0)?;
            if !x.dtype.is_float() || x.shape.rank() < 3 {
                return Err(Error::op(
                    name,
                    format!("input must be a floating-point [N, C, D1, ..] tensor, got {x}"),
                ));
            }
            single(x.clone())
        }
    }
}

/// The type of an index input (i32 or i64, with at least one axis).
fn index_input<'a>(cx: &Ctx<'a>, node: &Node, i: usize) -> Result<&'a TensorType> {
    let t = in_ty(cx, node, i)?;
    if !matches!(t.dtype, DType::I32 | DType::I64) || t.shape.rank() == 0 {
        return Err(Error::op(
            node.op.onnx_type(),
            format!("indices must be an i32 or i64 tensor of rank >= 1, got {t}"),
        ));
    }
    Ok(t)
}

/// GatherND: `indices.shape[..-1] ++ data.shape[batch_dims + k..]`, where `k`
/// (the length of an index tuple, the last dim of indices) must be known.
fn gather_nd(cx: &mut Ctx, node: &Node, batch_dims: usize) -> Result<TensorType> {
    const NAME: &str = "GatherND";
    let x = in_ty(cx, node, 0)?;
    let i = index_input(cx, node, 1)?;
    let (xr, ir) = (x.shape.rank(), i.shape.rank());
    let k = match i.shape.dims().last() {
        Some(Dim::Known(k)) => *k,
        _ => {
            return Err(Error::op(
                NAME,
                format!("the last dim of indices {i} (the index length) must be known"),
            ))
        }
    };
    if batch_dims >= ir || batch_dims >= xr || batch_dims + k > xr {
        return Err(Error::op(
            NAME,
            format!("indices {i} with batch_dims {batch_dims} do not fit data {x}"),
        ));
    }
    let mut out: Vec<Dim> = Vec::with_capacity(ir - 1 + xr - batch_dims - k);
    for (a, (di, dx)) in i.shape.dims()[..batch_dims]
        .iter()
        .zip(x.shape.dims())
        .enumerate()
    {
        out.push(unify(NAME, &format!("batch dim {a}"), di, dx)?);
    }
    out.extend(i.shape.dims()[batch_dims..ir - 1].iter().cloned());
    out.extend(x.shape.dims()[batch_dims + k..].iter().cloned());
    Ok(tt(x.dtype, out))
}

fn matmul(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let a = in_ty(cx, node, 0)?;
    let b = in_ty(cx, node, 1)?;
    matmul_type(node.op.onnx_type(), a, b)
}

/// A spatial list attribute, defaulted when empty, checked for length.
fn spatial(
    op: &'static str,
    what: &str,
    v: &[usize],
    n: usize,
    default: usize,
) -> Result<Vec<usize>> {
    if v.is_empty() {
        return Ok(vec![default; n]);
    }
    if v.len() != n {
        return Err(Error::op(
            op,
            format!("{what} has {} entries for {n} spatial axes", v.len()),
        ));
    }
    Ok(v.to_vec())
}

/// Checked spatial parameters of a sliding window.
struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads: Vec<usize>,
}

fn window(
    op: &'static str,
    kernel: Vec<usize>,
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
    n: usize,
) -> Result<Window> {
    let strides = spatial(op, "strides", strides, n, 1)?;
    let dilations = spatial(op, "dilations", dilations, n, 1)?;
    let pads = spatial(op, "pads", pads, 2 * n, 0)?;
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(Error::op(op, "strides and dilations must be positive"));
    }
    if kernel.len() != n {
        return Err(Error::op(
            op,
            format!(
                "kernel_shape has {} entries for {n} spatial axes",
                kernel.len()
            ),
        ));
    }
    if kernel.contains(&0) {
        return Err(Error::op(op, "kernel sizes must be positive"));
    }
    Ok(Window {
        kernel,
        strides,
        dilations,
        pads,
    })
}

/// Output size of a window sliding over one spatial axis (Conv and pools).
fn window_out(
    cx: &mut Ctx,
    op: &'static str,
    w: &Window,
    i: usize,
    input: &Dim,
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<Dim> {
    let n = w.kernel.len();
    let (k, s, d) = (w.kernel[i], w.strides[i], w.dilations[i]);
    let ek = (k - 1)
        .checked_mul(d)
        .and_then(|v| v.checked_add(1))
        .ok_or_else(|| Error::op(op, "the kernel extent overflows"))?;
    let (pb, pe) = (w.pads[i], w.pads[n + i]);
    let Dim::Known(x) = input else {
        // Stride 1 windows that keep the size keep the symbol.
        let same = match auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => s == 1,
            AutoPad::Valid => s == 1 && ek == 1,
            AutoPad::NotSet => s == 1 && pb.saturating_add(pe).saturating_add(1) == ek,
        };
        return Ok(if same { input.clone() } else { cx.fresh() });
    };
    let x = *x;
    let out = match auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => x.div_ceil(s),
        AutoPad::Valid | AutoPad::NotSet => {
            let (pb, pe) = if auto_pad == AutoPad::Valid {
                (0, 0)
            } else {
                (pb, pe)
            };
            let padded = x.saturating_add(pb).saturating_add(pe);
            if padded < ek {
                return Err(Error::op(
                    op,
                    format!(
                        "spatial axis {i}: the input ({x}, padded to {padded}) is smaller than the kernel extent {ek}"
                    ),
                ));
            }
            if ceil_mode {
                let mut o = (padded - ek).div_ceil(s) + 1;
                // The last window must start inside the input or left pad.
                if (o - 1) * s >= x.saturating_add(pb) {
                    o -= 1;
                }
                o
            } else {
                (padded - ek) / s + 1
            }
        }
    };
    Ok(Dim::Known(out))
}

fn conv(cx: &mut Ctx, node: &Node, c: &ConvAttrs) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let w = in_ty(cx, node, 1)?;
    let r = x.shape.rank();
    if r < 3 || w.shape.rank() != r {
        return Err(Error::op(
            name,
            format!(
                "X must have rank >= 3 and W the same rank, got {} and {}",
                x.shape, w.shape
            ),
        ));
    }
    if c.group == 0 {
        return Err(Error::op(name, "group must be positive"));
    }
    let (xd, wd) = (x.shape.dims(), w.shape.dims());
    if let (Dim::Known(cin), Dim::Known(wc)) = (&xd[1], &wd[1]) {
        if wc.checked_mul(c.group) != Some(*cin) {
            return Err(Error::op(
                name,
                format!(
                    "X has {cin} channels but W expects {wc} per group x group {}",
                    c.group
                ),
            ));
        }
    }
    if let Dim::Known(m) = &wd[0] {
        if m % c.group != 0 {
            return Err(Error::op(
                name,
                format!("{m} output channels are not divisible by group {}", c.group),
            ));
        }
    }
    if let Some(b) = opt_ty(cx, node, 2) {
        if b.shape.rank() != 1 {
            return Err(Error::op(name, format!("B must be 1-D, got {}", b.shape)));
        }
        unify(
            name,
            "the bias length and the output channels",
            &b.shape.0[0],
            &wd[0],
        )?;
    }
    let n = r - 2;
    let kernel = if c.kernel_shape.is_empty() {
        match Shape(wd[2..].to_vec()).concrete() {
            Some(k) => k,
            None => {
                let mut out = vec![xd[0].clone(), wd[0].clone()];
                out.extend(cx.fresh_n(n));
                return Ok(tt(x.dtype, out));
            }
        }
    } else {
        c.kernel_shape.clone()
    };
    for (i, (k, wk)) in kernel.iter().zip(&wd[2..]).enumerate() {
        if let Dim::Known(wk) = wk {
            if wk != k {
                return Err(Error::op(
                    name,
                    format!("kernel_shape[{i}] is {k} but W has {wk}"),
                ));
            }
        }
    }
    let win = window(name, kernel, &c.strides, &c.dilations, &c.pads, n)?;
    let mut out = vec![xd[0].clone(), wd[0].clone()];
    for i in 0..n {
        out.push(window_out(
            cx,
            name,
            &win,
            i,
            &xd[2 + i],
            c.auto_pad,
            false,
        )?);
    }
    Ok(tt(x.dtype, out))
}

fn conv_transpose(cx: &mut Ctx, node: &Node, c: &super::ConvTransposeAttrs) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let w = in_ty(cx, node, 1)?;
    let r = x.shape.rank();
    let a = &c.conv;
    if r < 3 || w.shape.rank() != r {
        return Err(Error::op(
            name,
            format!(
                "X must have rank >= 3 and W the same rank, got {} and {}",
                x.shape, w.shape
            ),
        ));
    }
    if a.group == 0 {
        return Err(Error::op(name, "group must be positive"));
    }
    let (xd, wd) = (x.shape.dims(), w.shape.dims());
    unify(name, "X channels and W's first dim", &xd[1], &wd[0])?;
    let cout = Mono::of_dim(&wd[1])
        .mul(&Mono::known(a.group))
        .map_or_else(|| cx.fresh(), |m| m.to_dim());
    let n = r - 2;
    let mut out = vec![xd[0].clone(), cout];
    if let Some(os) = &c.output_shape {
        let spatial_out = if os.len() == r { &os[2..] } else { &os[..] };
        if spatial_out.len() != n {
            return Err(Error::op(
                name,
                format!("output_shape has {} entries for {n} spatial axes", os.len()),
            ));
        }
        out.extend(spatial_out.iter().map(|&d| Dim::Known(d)));
        return Ok(tt(x.dtype, out));
    }
    let kernel = if a.kernel_shape.is_empty() {
        match Shape(wd[2..].to_vec()).concrete() {
            Some(k) => k,
            None => {
                out.extend(cx.fresh_n(n));
                return Ok(tt(x.dtype, out));
            }
        }
    } else {
        a.kernel_shape.clone()
    };
    let win = window(name, kernel, &a.strides, &a.dilations, &a.pads, n)?;
    let opad = spatial(name, "output_padding", &c.output_padding, n, 0)?;
    for i in 0..n {
        let (k, s, d) = (win.kernel[i], win.strides[i], win.dilations[i]);
        let ek = (k - 1).saturating_mul(d).saturating_add(1);
        let (pb, pe) = match a.auto_pad {
            AutoPad::Valid => (0, 0),
            _ => (win.pads[i], win.pads[n + i]),
        };
        let dim = match (&xd[2 + i], a.auto_pad) {
            (Dim::Known(v), AutoPad::SameUpper | AutoPad::SameLower) => {
                Dim::Known(v.saturating_mul(s))
            }
            (Dim::Known(v), _) => {
                let full = s as i128 * (*v as i128 - 1) + opad[i] as i128 + ek as i128;
                let o = full - pb as i128 - pe as i128;
                if *v == 0 || o < 0 || o > usize::MAX as i128 {
                    return Err(Error::op(
                        name,
                        format!("spatial axis {i}: the output size {o} is not positive"),
                    ));
                }
                Dim::Known(o as usize)
            }
            (sym, AutoPad::SameUpper | AutoPad::SameLower) if s == 1 => sym.clone(),
            (sym, _) if s == 1 && opad[i] as u128 + ek as u128 == 1 + pb as u128 + pe as u128 => {
                sym.clone()
            }
            _ => cx.fresh(),
        };
        out.push(dim);
    }
    Ok(tt(x.dtype, out))
}

fn pool(cx: &mut Ctx, node: &Node, p: &PoolAttrs) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let r = x.shape.rank();
    if r < 3 {
        return Err(Error::op(
            name,
            format!("input must have rank >= 3, got {}", x.shape),
        ));
    }
    let n = r - 2;
    let win = window(
        name,
        p.kernel_shape.clone(),
        &p.strides,
        &p.dilations,
        &p.pads,
        n,
    )?;
    let xd = x.shape.dims();
    let mut out = xd[..2].to_vec();
    for i in 0..n {
        out.push(window_out(
            cx,
            name,
            &win,
            i,
            &xd[2 + i],
            p.auto_pad,
            p.ceil_mode,
        )?);
    }
    Ok(tt(x.dtype, out))
}

/// Dims given by a shape-like input of `n` elements: propagated values where
/// known, fresh symbols elsewhere.
fn dims_from_value(
    cx: &mut Ctx,
    op: &'static str,
    v: Option<ValueId>,
    n: usize,
) -> Result<Vec<Dim>> {
    let vals = cx.val(v);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let e = vals.as_ref().and_then(|v| v.get(i).cloned().flatten());
        out.push(match e {
            Some(SymInt::Known(k)) if k < 0 => {
                return Err(Error::op(op, format!("shape entry {k} is negative")))
            }
            Some(e) => Mono::of_int(&e).map_or_else(|| cx.fresh(), |m| m.to_dim()),
            None => cx.fresh(),
        });
    }
    Ok(out)
}

fn reshape(cx: &mut Ctx, node: &Node, allowzero: bool) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let n = vec_len(name, "the shape input", in_ty(cx, node, 1)?)?;
    let Some(vals) = cx.val(node.input(1)) else {
        return Ok(tt(x.dtype, cx.fresh_n(n)));
    };
    if vals.len() != n {
        return Err(Error::Internal(format!(
            "{name}: the shape input has {} values for length {n}",
            vals.len()
        )));
    }
    let in_dims = x.shape.dims();
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(n);
    let mut infer_at = None;
    let mut unknown = false;
    for (i, e) in vals.iter().enumerate() {
        out.push(match e {
            Some(SymInt::Known(-1)) => {
                if infer_at.is_some() {
                    return Err(Error::op(name, "the shape has more than one -1"));
                }
                infer_at = Some(i);
                None
            }
            Some(SymInt::Known(0)) if !allowzero => Some(
                in_dims
                    .get(i)
                    .ok_or_else(|| {
                        Error::op(
                            name,
                            format!(
                                "shape entry {i} is 0 (copy) but the input {} has no dim {i}",
                                x.shape
                            ),
                        )
                    })?
                    .clone(),
            ),
            Some(SymInt::Known(k)) if *k < 0 => {
                return Err(Error::op(name, format!("shape entry {k} is negative")))
            }
            Some(s) => Mono::of_int(s).map(|m| m.to_dim()),
            None => {
                unknown = true;
                None
            }
        });
    }
    if allowzero && infer_at.is_some() && vals.contains(&Some(SymInt::Known(0))) {
        return Err(Error::op(
            name,
            "the shape has both 0 and -1 with allowzero set",
        ));
    }
    let total = product(in_dims);
    let rest: Option<Mono> = out
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != infer_at)
        .try_fold(Mono::known(1), |acc, (_, d)| {
            acc.mul(&Mono::of_dim(d.as_ref()?))
        });
    if let Some(i) = infer_at {
        let q = match (&total, &rest) {
            (Some(t), Some(r)) if !unknown => match t.div(r) {
                Some(q) => Some(q.to_dim()),
                None if t.syms.is_empty() && r.syms.is_empty() => {
                    return Err(Error::op(
                        name,
                        format!(
                            "cannot reshape {} ({} elements) with a -1: {} does not divide it",
                            x.shape, t.coef, r.coef
                        ),
                    ))
                }
                None => None,
            },
            _ => None,
        };
        out[i] = q;
    } else if let (Some(t), Some(r)) = (&total, &rest) {
        if t.syms.is_empty() && r.syms.is_empty() && t.coef != r.coef {
            return Err(Error::op(
                name,
                format!(
                    "cannot reshape {} ({} elements) to {} elements",
                    x.shape, t.coef, r.coef
                ),
            ));
        }
    }
    let dims = out
        .into_iter()
        .map(|d| d.unwrap_or_else(|| cx.fresh()))
        .collect();
    Ok(tt(x.dtype, dims))
}

fn squeeze(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let d = x.shape.dims();
    let Some(a) = node.input(1) else {
        return Ok(tt(
            x.dtype,
            d.iter().filter(|d| !d.is_one()).cloned().collect(),
        ));
    };
    let Some(axes) = cx.known_ints(Some(a)) else {
        let k = vec_len(name, "axes", in_ty(cx, node, 1)?)?;
        if k > d.len() {
            return Err(Error::op(name, format!("{k} axes for rank {}", d.len())));
        }
        return Ok(tt(x.dtype, cx.fresh_n(d.len() - k)));
    };
    let axes = unique_axes(name, &axes, d.len())?;
    for &a in &axes {
        if let Dim::Known(n) = d[a] {
            if n != 1 {
                return Err(Error::op(
                    name,
                    format!("cannot squeeze axis {a} of size {n}"),
                ));
            }
        }
    }
    let out = d
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, d)| d.clone())
        .collect();
    Ok(tt(x.dtype, out))
}

fn unsqueeze(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let d = x.shape.dims();
    let k = vec_len(name, "axes", in_ty(cx, node, 1)?)?;
    let out_rank = d.len() + k;
    let Some(axes) = cx.known_ints(node.input(1)) else {
        return Ok(tt(x.dtype, cx.fresh_n(out_rank)));
    };
    let axes = unique_axes(name, &axes, out_rank)?;
    let mut it = d.iter();
    let out = (0..out_rank)
        .map(|i| {
            if axes.contains(&i) {
                Dim::Known(1)
            } else {
                // Exactly rank(x) output axes are not inserted ones.
                it.next().cloned().unwrap_or(Dim::Known(1))
            }
        })
        .collect();
    Ok(tt(x.dtype, out))
}

fn concat(cx: &mut Ctx, node: &Node, axis: i64) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let tys: Vec<&TensorType> = (0..node.inputs.len())
        .map(|i| in_ty(cx, node, i))
        .collect::<Result<_>>()?;
    let first = tys
        .first()
        .ok_or_else(|| Error::op(name, "needs at least one input"))?;
    let r = first.shape.rank();
    if r == 0 {
        return Err(Error::op(name, "cannot concatenate scalars"));
    }
    let ax = norm_axis(name, axis, r)?;
    let mut out = first.shape.0.clone();
    for t in &tys[1..] {
        if t.dtype != first.dtype {
            return Err(Error::op(
                name,
                format!("inputs mix {} and {}", first.dtype, t.dtype),
            ));
        }
        if t.shape.rank() != r {
            return Err(Error::op(
                name,
                format!(
                    "cannot concatenate {} with {}: ranks differ",
                    first.shape, t.shape
                ),
            ));
        }
        for i in (0..r).filter(|&i| i != ax) {
            out[i] = unify(
                name,
                &format!(
                    "cannot concatenate {} with {} on axis {ax}",
                    first.shape, t.shape
                ),
                &out[i],
                &t.shape.0[i],
            )?;
        }
    }
    let sizes: Vec<&Dim> = tys.iter().map(|t| &t.shape.0[ax]).collect();
    let known: Option<Vec<usize>> = sizes.iter().map(|d| d.known()).collect();
    out[ax] = match known {
        Some(k) => Dim::Known(k.iter().sum()),
        None => {
            let nonzero: Vec<&&Dim> = sizes.iter().filter(|d| d.known() != Some(0)).collect();
            if nonzero.len() == 1 {
                (*nonzero[0]).clone()
            } else {
                cx.fresh()
            }
        }
    };
    Ok(tt(first.dtype, out))
}

fn split(cx: &mut Ctx, node: &Node, axis: i64) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let n = node.outputs.len();
    if n == 0 {
        return Err(Error::op(name, "needs at least one output"));
    }
    let ax = norm_axis(name, axis, x.shape.rank())?;
    let dim = &x.shape.0[ax];
    let sizes: Vec<Dim> = if let Some(s) = node.input(1) {
        let k = vec_len(name, "split", in_ty(cx, node, 1)?)?;
        if k != n {
            return Err(Error::op(name, format!("{k} split sizes for {n} outputs")));
        }
        let dims = dims_from_value(cx, name, Some(s), n)?;
        if let (Some(known), Dim::Known(total)) = (Shape(dims.clone()).concrete(), dim) {
            if known.iter().sum::<usize>() != *total {
                return Err(Error::op(
                    name,
                    format!("split sizes {known:?} do not add up to the dim {total}"),
                ));
            }
        }
        dims
    } else {
        match dim {
            Dim::Known(d) => split_sizes(name, *d, n)?
                .into_iter()
                .map(Dim::Known)
                .collect(),
            _ if n == 1 => vec![dim.clone()],
            _ => match Mono::of_dim(dim).div(&Mono::known(n)) {
                Some(q) => vec![q.to_dim(); n],
                None => cx.fresh_n(n),
            },
        }
    };
    Ok(sizes
        .into_iter()
        .map(|s| {
            let mut d = x.shape.0.clone();
            d[ax] = s;
            tt(x.dtype, d)
        })
        .collect())
}

/// Whether an end bound means "to the end" for any dim.
fn is_open_end(e: i64) -> bool {
    e >= i32::MAX as i64
}

fn slice(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let r = x.shape.rank();
    let ns = vec_len(name, "starts", in_ty(cx, node, 1)?)?;
    let ne = vec_len(name, "ends", in_ty(cx, node, 2)?)?;
    if ns != ne {
        return Err(Error::op(name, format!("{ns} starts but {ne} ends")));
    }
    for (i, what) in [(3, "axes"), (4, "steps")] {
        if let Some(t) = opt_ty(cx, node, i) {
            let k = vec_len(name, what, t)?;
            if k != ns {
                return Err(Error::op(name, format!("{k} {what} for {ns} starts")));
            }
        }
    }
    let axes: Option<Vec<usize>> = match node.input(3) {
        None => {
            if ns > r {
                return Err(Error::op(name, format!("{ns} starts for rank {r}")));
            }
            Some((0..ns).collect())
        }
        Some(a) => match cx.known_ints(Some(a)) {
            Some(v) => Some(unique_axes(name, &v, r)?),
            None => None,
        },
    };
    let Some(axes) = axes else {
        return Ok(tt(x.dtype, cx.fresh_n(r)));
    };
    let steps: Option<SymVec> = match node.input(4) {
        None => Some(vec![Some(SymInt::Known(1)); ns]),
        Some(s) => cx.val(Some(s)),
    };
    let starts = cx.val(node.input(1));
    let ends = cx.val(node.input(2));
    let get = |v: &Option<SymVec>, k: usize| v.as_ref().and_then(|v| v.get(k).cloned().flatten());
    let mut out = x.shape.0.clone();
    for (k, &ax) in axes.iter().enumerate() {
        let step = get(&steps, k);
        if step == Some(SymInt::Known(0)) {
            return Err(Error::op(name, "steps must not be 0"));
        }
        let (st, en) = (get(&starts, k), get(&ends, k));
        let dim = &x.shape.0[ax];
        out[ax] = match (dim, st, en, step) {
            (
                Dim::Known(d),
                Some(SymInt::Known(s)),
                Some(SymInt::Known(e)),
                Some(SymInt::Known(p)),
            ) => Dim::Known(slice_axis(*d, s, e, p).1),
            (
                Dim::Sym(_),
                Some(SymInt::Known(0)),
                Some(SymInt::Known(e)),
                Some(SymInt::Known(1)),
            ) if is_open_end(e) => dim.clone(),
            (Dim::Sym(_), Some(SymInt::Known(0)), Some(SymInt::Sym(e)), Some(SymInt::Known(1)))
                if Some(SymInt::Sym(e.clone())) == dim_to_int(dim) =>
            {
                dim.clone()
            }
            _ => cx.fresh(),
        };
    }
    Ok(tt(x.dtype, out))
}

fn expand(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let n = vec_len(name, "the shape input", in_ty(cx, node, 1)?)?;
    let vals = cx.val(node.input(1));
    let r = x.shape.rank();
    let rank = r.max(n);
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let a = if i + r >= rank {
            x.shape.0[i + r - rank].clone()
        } else {
            Dim::Known(1)
        };
        let s: Option<Option<SymInt>> = if i + n >= rank {
            Some(
                vals.as_ref()
                    .and_then(|v| v.get(i + n - rank).cloned().flatten()),
            )
        } else {
            None
        };
        let d = match s {
            None | Some(Some(SymInt::Known(1))) => a,
            Some(Some(SymInt::Known(k))) if k < 0 => {
                return Err(Error::op(name, format!("shape entry {k} is negative")))
            }
            Some(Some(e)) => {
                let sd = Mono::of_int(&e).map_or_else(|| cx.fresh(), |m| m.to_dim());
                broadcast_dim(&a, &sd).ok_or_else(|| {
                    Error::op(
                        name,
                        format!(
                            "cannot broadcast {} to the requested shape (dim {sd})",
                            x.shape
                        ),
                    )
                })?
            }
            Some(None) => match a {
                Dim::Known(1) => cx.fresh(),
                a => a,
            },
        };
        out.push(d);
    }
    Ok(tt(x.dtype, out))
}

fn pad(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let r = x.shape.rank();
    let np = vec_len(name, "pads", in_ty(cx, node, 1)?)?;
    if let Some(c) = opt_ty(cx, node, 2) {
        if c.dtype != x.dtype {
            return Err(Error::op(
                name,
                format!("constant_value is {} but data is {}", c.dtype, x.dtype),
            ));
        }
    }
    let axes: Option<Vec<usize>> = match node.input(3) {
        None => Some((0..r).collect()),
        Some(a) => match cx.known_ints(Some(a)) {
            Some(v) => Some(unique_axes(name, &v, r)?),
            None => None,
        },
    };
    let Some(axes) = axes else {
        return Ok(tt(x.dtype, cx.fresh_n(r)));
    };
    if np != 2 * axes.len() {
        return Err(Error::op(
            name,
            format!("{np} pads for {} axes (needs twice as many)", axes.len()),
        ));
    }
    let pads = cx.known_ints(node.input(1));
    let mut out = x.shape.0.clone();
    for (k, &a) in axes.iter().enumerate() {
        let Some(p) = &pads else {
            out[a] = cx.fresh();
            continue;
        };
        let (b, e) = (p[k], p[axes.len() + k]);
        out[a] = match &x.shape.0[a] {
            Dim::Known(d) => {
                let n = (*d as i64).checked_add(b).and_then(|v| v.checked_add(e));
                match n {
                    Some(n) if n >= 0 => Dim::Known(n as usize),
                    _ => {
                        return Err(Error::op(
                            name,
                            format!("pads ({b}, {e}) do not fit a dim of {d}"),
                        ))
                    }
                }
            }
            s if b == 0 && e == 0 => s.clone(),
            _ => cx.fresh(),
        };
    }
    Ok(tt(x.dtype, out))
}

fn range(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let tys: Vec<&TensorType> = (0..3).map(|i| in_ty(cx, node, i)).collect::<Result<_>>()?;
    let dt = tys[0].dtype;
    if !matches!(
        dt,
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::I16 | DType::I32 | DType::I64
    ) {
        return Err(Error::op(
            name,
            format!(
                "start, limit and delta must be f32, f64, f16, bf16, i16, i32 or i64, got {dt}"
            ),
        ));
    }
    for t in &tys {
        if t.dtype != dt {
            return Err(Error::op(
                name,
                format!("start, limit and delta mix {dt} and {}", t.dtype),
            ));
        }
        if t.shape.numel().is_some_and(|n| n != 1) {
            return Err(Error::op(
                name,
                format!(
                    "start, limit and delta must be scalars, got shape {}",
                    t.shape
                ),
            ));
        }
    }
    let g = cx.g;
    let consts: Option<Vec<f64>> = (0..3)
        .map(|i| {
            node.input(i)
                .and_then(|v| g.const_value(v))
                .and_then(|t| t.to_f64_vec().first().copied())
        })
        .collect();
    let len = if dt.is_float() {
        match consts {
            Some(c) => Dim::Known(range_len_f64(name, c[0], c[1], c[2])?),
            None => cx.fresh(),
        }
    } else {
        let get = |i: usize| {
            cx.val(node.input(i))
                .and_then(|v| v.first().cloned().flatten())
        };
        match (get(0), get(1), get(2)) {
            (Some(SymInt::Known(a)), Some(SymInt::Known(b)), Some(SymInt::Known(c))) => {
                Dim::Known(range_len_i64(name, a, b, c)?)
            }
            (_, _, Some(SymInt::Known(0))) => return Err(Error::op(name, "delta must not be 0")),
            (Some(SymInt::Known(0)), Some(SymInt::Sym(s)), Some(SymInt::Known(1))) => {
                Mono::parse(&s).to_dim()
            }
            _ => cx.fresh(),
        }
    };
    Ok(tt(dt, vec![len]))
}

fn reduce(cx: &mut Ctx, node: &Node, keepdims: bool, noop: bool) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let r = x.shape.rank();
    let axes: Option<Vec<usize>> = match node.input(1) {
        None => Some(if noop { vec![] } else { (0..r).collect() }),
        Some(a) => match cx.known_ints(Some(a)) {
            Some(v) if v.is_empty() => Some(if noop { vec![] } else { (0..r).collect() }),
            Some(v) => Some(unique_axes(name, &v, r)?),
            None => None,
        },
    };
    let Some(axes) = axes else {
        if keepdims {
            return Ok(tt(x.dtype, cx.fresh_n(r)));
        }
        let k = vec_len(name, "axes", in_ty(cx, node, 1)?)?;
        if k == 0 || k > r {
            return Err(Error::op(
                name,
                "the axes input must be a known constant to infer the output rank",
            ));
        }
        return Ok(tt(x.dtype, cx.fresh_n(r - k)));
    };
    let mut out = Vec::with_capacity(r);
    for (i, d) in x.shape.dims().iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(Dim::Known(1));
            }
        } else {
            out.push(d.clone());
        }
    }
    Ok(tt(x.dtype, out))
}

fn resize(cx: &mut Ctx, node: &Node, a: &super::ResizeAttrs) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let r = x.shape.rank();
    let axes: Vec<usize> = match &a.axes {
        Some(v) => unique_axes(name, v, r)?,
        None => (0..r).collect(),
    };
    // An input is absent when omitted or empty (the opset 11 form).
    let present = |i: usize| {
        opt_ty(cx, node, i)
            .filter(|t| t.shape.numel() != Some(0))
            .map(|t| (node.input(i), t))
    };
    let scales = present(2);
    let sizes = present(3);
    let mut out = x.shape.0.clone();
    match (scales, sizes) {
        (_, Some((v, t))) => {
            let n = vec_len(name, "sizes", t)?;
            if n != axes.len() {
                return Err(Error::op(
                    name,
                    format!("{n} sizes for {} axes", axes.len()),
                ));
            }
            let target = dims_from_value(cx, name, v, n)?;
            if a.aspect == AspectPolicy::Stretch {
                for (k, &ax) in axes.iter().enumerate() {
                    out[ax] = target[k].clone();
                }
            } else {
                let ins: Option<Vec<usize>> = axes.iter().map(|&ax| out[ax].known()).collect();
                let tg: Option<Vec<usize>> = target.iter().map(Dim::known).collect();
                match (ins, tg) {
                    (Some(ins), Some(tg)) => {
                        let ratios = ins.iter().zip(&tg).map(|(&i, &t)| t as f64 / i as f64);
                        let scale = if a.aspect == AspectPolicy::NotLarger {
                            ratios.fold(f64::INFINITY, f64::min)
                        } else {
                            ratios.fold(f64::NEG_INFINITY, f64::max)
                        };
                        for (k, &ax) in axes.iter().enumerate() {
                            out[ax] = Dim::Known((scale * ins[k] as f64 + 0.5) as usize);
                        }
                    }
                    _ => {
                        for &ax in &axes {
                            out[ax] = cx.fresh();
                        }
                    }
                }
            }
        }
        (Some((v, t)), None) => {
            let n = vec_len_any(name, "scales", t)?;
            if n != axes.len() {
                return Err(Error::op(
                    name,
                    format!("{n} scales for {} axes", axes.len()),
                ));
            }
            let sc: Option<Vec<f64>> = v
                .and_then(|v| cx.g.const_value(v))
                .map(|t| t.to_f32_vec().iter().map(|&s| s as f64).collect());
            for (k, &ax) in axes.iter().enumerate() {
                let s = sc.as_ref().and_then(|s| s.get(k).copied());
                out[ax] = match (&out[ax], s) {
                    (_, Some(s)) if !(s > 0.0 && s.is_finite()) => {
                        return Err(Error::op(name, format!("scale {s} is not positive")))
                    }
                    (Dim::Known(d), Some(s)) => Dim::Known((*d as f64 * s).floor() as usize),
                    (d, Some(1.0)) => d.clone(),
                    _ => cx.fresh(),
                };
            }
        }
        (None, None) => {
            return Err(Error::op(name, "one of scales and sizes must be given"));
        }
    }
    Ok(tt(x.dtype, out))
}

/// Length of a 1-D input of any dtype.
fn vec_len_any(op: &'static str, what: &str, t: &TensorType) -> Result<usize> {
    match t.shape.dims() {
        [Dim::Known(n)] => Ok(*n),
        _ => Err(Error::op(
            op,
            format!(
                "{what} must be 1-D with a known length, got shape {}",
                t.shape
            ),
        )),
    }
}

// ---------------------------------------------------------------------------
// Value propagation.

/// The propagated values of a node's outputs (small integer/bool tensors of
/// rank <= 1 only).
fn propagate(cx: &Ctx, node: &Node, types: &[TensorType]) -> Vec<Option<SymVec>> {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let len = match t.shape.dims() {
                [] => 1,
                [Dim::Known(n)] => *n,
                _ => return None,
            };
            if i > 0 || len > MAX_PROP || !(t.dtype.is_int() || t.dtype == DType::Bool) {
                return None;
            }
            let v = propagate_one(cx, node, t, len)?;
            (v.len() == len).then_some(v)
        })
        .collect()
}

/// Length of a propagated input as its type says (rank <= 1).
fn prop_len(cx: &Ctx, v: Option<ValueId>) -> Option<usize> {
    let v = v?;
    match cx.g.ty(v).shape.dims() {
        [] => Some(1),
        [Dim::Known(n)] => Some(*n),
        _ => None,
    }
}

/// Elementwise combination of propagated values with rank <= 1 broadcasting.
fn zip_vals(
    cx: &Ctx,
    node: &Node,
    len: usize,
    f: impl Fn(&[Option<SymInt>]) -> Option<SymInt>,
) -> Option<SymVec> {
    let ins: Vec<SymVec> = (0..node.inputs.len())
        .map(|i| {
            let v = node.input(i)?;
            cx.val(Some(v)).or_else(|| {
                prop_len(cx, Some(v))
                    .filter(|&n| n <= len)
                    .map(|n| vec![None; n])
            })
        })
        .collect::<Option<_>>()?;
    if ins.iter().any(|v| v.len() != 1 && v.len() != len) {
        return None;
    }
    Some(
        (0..len)
            .map(|k| {
                let args: Vec<Option<SymInt>> = ins
                    .iter()
                    .map(|v| {
                        if v.len() == 1 {
                            v[0].clone()
                        } else {
                            v[k].clone()
                        }
                    })
                    .collect();
                f(&args)
            })
            .collect(),
    )
}

fn known(k: i64) -> Option<SymInt> {
    Some(SymInt::Known(k))
}

fn arith(op: BinaryOp, a: &Option<SymInt>, b: &Option<SymInt>) -> Option<SymInt> {
    use SymInt::Known as K;
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    match (op, a, b) {
        (BinaryOp::Add, K(x), K(y)) => x.checked_add(*y).map(K),
        (BinaryOp::Sub, K(x), K(y)) => x.checked_sub(*y).map(K),
        (BinaryOp::Mul, K(x), K(y)) => x.checked_mul(*y).map(K),
        (BinaryOp::Div, K(x), K(y)) => x.checked_div(*y).map(K),
        (BinaryOp::Mod, K(x), K(y)) if *y != 0 => x.checked_rem(*y).map(|r| {
            // The remainder takes the divisor's sign.
            K(if r != 0 && (r < 0) != (*y < 0) {
                r + y
            } else {
                r
            })
        }),
        (BinaryOp::FMod, K(x), K(y)) => x.checked_rem(*y).map(K),
        (BinaryOp::Add | BinaryOp::Sub, s, K(0)) => Some(s.clone()),
        (BinaryOp::Add, K(0), s) => Some(s.clone()),
        (BinaryOp::Sub, x, y) if x == y => known(0),
        (BinaryOp::Mul, _, _) => Mono::of_int(a)?.mul(&Mono::of_int(b)?)?.to_int(),
        (BinaryOp::Div, _, _) => Mono::of_int(a)?.div(&Mono::of_int(b)?)?.to_int(),
        (BinaryOp::Equal, K(x), K(y)) => known((x == y) as i64),
        // Symbols are products of dims, never negative.
        (BinaryOp::Equal, SymInt::Sym(_), K(y)) | (BinaryOp::Equal, K(y), SymInt::Sym(_))
            if *y < 0 =>
        {
            known(0)
        }
        (BinaryOp::Equal, x, y) if x == y => known(1),
        (BinaryOp::Greater, K(x), K(y)) => known((x > y) as i64),
        (BinaryOp::Less, K(x), K(y)) => known((x < y) as i64),
        (BinaryOp::GreaterOrEqual, K(x), K(y)) => known((x >= y) as i64),
        (BinaryOp::LessOrEqual, K(x), K(y)) => known((x <= y) as i64),
        (BinaryOp::And, K(x), K(y)) => known((*x != 0 && *y != 0) as i64),
        (BinaryOp::Or, K(x), K(y)) => known((*x != 0 || *y != 0) as i64),
        _ => None,
    }
}

fn propagate_one(cx: &Ctx, node: &Node, out: &TensorType, len: usize) -> Option<SymVec> {
    let x = node.input(0);
    match &node.op {
        Op::Shape { start, end } => {
            let d = cx.g.ty(x?).shape.dims();
            let (s, e) = shape_range(d.len(), *start, *end);
            Some(d[s..e].iter().map(dim_to_int).collect())
        }
        Op::Size => Some(vec![product(cx.g.ty(x?).shape.dims())?.to_int()]),
        Op::Identity
        | Op::Reshape { .. }
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Flatten { .. }
        | Op::Dropout => cx.val(x),
        Op::Cast { to, .. } => {
            let v = cx.val(x)?;
            if to.is_storage_only() {
                // Values wrap or round in these types; not worth tracking.
                None
            } else if *to == DType::Bool {
                Some(
                    v.into_iter()
                        .map(|e| match e {
                            Some(SymInt::Known(k)) => known((k != 0) as i64),
                            _ => None,
                        })
                        .collect(),
                )
            } else {
                Some(v)
            }
        }
        Op::Gather { .. } => {
            let data = cx.val(x)?;
            if cx.g.ty(x?).shape.rank() != 1 {
                return None;
            }
            let idx = cx.known_ints(node.input(1))?;
            let n = data.len() as i64;
            Some(
                idx.into_iter()
                    .map(|i| {
                        let j = if i < 0 { i + n } else { i };
                        if (0..n).contains(&j) {
                            data[j as usize].clone()
                        } else {
                            None
                        }
                    })
                    .collect(),
            )
        }
        Op::Concat { .. } => {
            let mut v = Vec::with_capacity(len);
            for i in node.inputs.iter() {
                let i = (*i)?;
                match cx.val(Some(i)) {
                    Some(p) => v.extend(p),
                    None => {
                        let n = prop_len(cx, Some(i)).filter(|&n| n <= len)?;
                        v.extend(std::iter::repeat_n(None, n));
                    }
                }
            }
            Some(v)
        }
        Op::Slice => {
            let data = cx.val(x)?;
            if cx.g.ty(x?).shape.rank() != 1 {
                return None;
            }
            let starts = cx.known_ints(node.input(1))?;
            let ends = cx.known_ints(node.input(2))?;
            let step = match node.input(4) {
                Some(s) => *cx.known_ints(Some(s))?.first()?,
                None => 1,
            };
            if starts.len() != 1 || ends.len() != 1 || step == 0 {
                return None;
            }
            let (s, n) = slice_axis(data.len(), starts[0], ends[0], step);
            Some(
                (0..n as i64)
                    .map(|i| data[(s + i * step) as usize].clone())
                    .collect(),
            )
        }
        Op::Unary(UnaryOp::Neg) => Some(
            cx.val(x)?
                .into_iter()
                .map(|e| match e {
                    Some(SymInt::Known(k)) => k.checked_neg().map(SymInt::Known),
                    _ => None,
                })
                .collect(),
        ),
        Op::Unary(UnaryOp::Not) => Some(
            cx.val(x)?
                .into_iter()
                .map(|e| match e {
                    Some(SymInt::Known(k)) => known((k == 0) as i64),
                    _ => None,
                })
                .collect(),
        ),
        Op::Binary(b) => zip_vals(cx, node, len, |a| arith(*b, &a[0], &a[1])),
        Op::Where => zip_vals(cx, node, len, |a| match &a[0] {
            Some(SymInt::Known(0)) => a[2].clone(),
            Some(SymInt::Known(_)) => a[1].clone(),
            _ if a[1] == a[2] => a[1].clone(),
            _ => None,
        }),
        Op::Variadic(v @ (VariadicOp::Min | VariadicOp::Max)) => zip_vals(cx, node, len, |a| {
            let ks: Option<Vec<i64>> = a
                .iter()
                .map(|e| match e {
                    Some(SymInt::Known(k)) => Some(*k),
                    _ => None,
                })
                .collect();
            match ks {
                Some(ks) if *v == VariadicOp::Min => ks.into_iter().min().map(SymInt::Known),
                Some(ks) => ks.into_iter().max().map(SymInt::Known),
                None if a.iter().all(|e| e == &a[0]) => a[0].clone(),
                None => None,
            }
        }),
        Op::Variadic(VariadicOp::Sum) => zip_vals(cx, node, len, |a| {
            a.iter().try_fold(Some(SymInt::Known(0)), |acc, e| {
                Some(arith(BinaryOp::Add, &acc, e))
            })?
        }),
        Op::ConstantOfShape { value } => {
            let k = value.to_i64_vec().or_else(|| {
                (value.dtype() == DType::Bool).then(|| {
                    value
                        .to_f64_vec()
                        .iter()
                        .map(|&v| v as i64)
                        .collect::<Vec<_>>()
                })
            })?;
            Some(vec![known(*k.first()?); len])
        }
        Op::Range => {
            let get = |i| {
                cx.known_ints(node.input(i))
                    .and_then(|v| v.first().copied())
            };
            let (a, d) = (get(0)?, get(2)?);
            Some((0..len as i64).map(|i| known(a + i * d)).collect())
        }
        Op::Reduce {
            op: op @ (ReduceOp::Prod | ReduceOp::Sum),
            noop_with_empty_axes: false,
            ..
        } if cx.g.ty(x?).shape.rank() == 1 && len == 1 => {
            let v = cx.val(x)?;
            let e = if *op == ReduceOp::Prod {
                v.iter()
                    .try_fold(Mono::known(1), |acc, e| {
                        acc.mul(&Mono::of_int(e.as_ref()?)?)
                    })?
                    .to_int()
            } else {
                v.iter().try_fold(Some(SymInt::Known(0)), |acc, e| {
                    Some(arith(BinaryOp::Add, &acc, e))
                })?
            };
            Some(vec![e])
        }
        Op::Expand | Op::Tile => {
            // Only the common "broadcast one element" case.
            let v = cx.val(x)?;
            (v.len() == 1 && out.shape.rank() <= 1).then(|| vec![v[0].clone(); len])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ConvTransposeAttrs, E8M0Round, PadMode, Tensor};

    fn s(dims: &[&str]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| match d.parse::<usize>() {
                    Ok(n) => Dim::Known(n),
                    Err(_) => Dim::Sym(d.to_string()),
                })
                .collect(),
        )
    }
    fn f32t(dims: &[&str]) -> TensorType {
        TensorType::new(DType::F32, s(dims))
    }
    fn placeholder() -> TensorType {
        TensorType::new(DType::F32, Shape::scalar())
    }

    /// Adds a node with `n_out` fresh outputs and returns them.
    fn node(g: &mut Graph, op: Op, inputs: &[Option<ValueId>], n_out: usize) -> Vec<ValueId> {
        let k = g.node_capacity();
        let outs: Vec<ValueId> = (0..n_out)
            .map(|i| g.add_value(format!("n{k}_{i}"), placeholder()))
            .collect();
        g.add_node(Node {
            name: format!("n{k}"),
            op,
            inputs: inputs.to_vec(),
            outputs: outs.clone(),
        });
        outs
    }
    fn node1(g: &mut Graph, op: Op, inputs: &[ValueId]) -> ValueId {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        node(g, op, &ins, 1)[0]
    }
    fn ci(g: &mut Graph, v: &[i64]) -> ValueId {
        g.add_const("c", Tensor::vec_i64(v.to_vec()))
    }
    fn ty(g: &Graph, v: ValueId) -> String {
        g.ty(v).to_string()
    }

    #[test]
    fn torch_dynamic_reshape_chain() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["batch", "seq", "384"]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 0,
                end: None,
            },
            &[x],
        );
        let i0 = g.add_const("i0", Tensor::scalar_i64(0));
        let i1 = g.add_const("i1", Tensor::scalar_i64(1));
        let b = node1(&mut g, Op::Gather { axis: 0 }, &[sh, i0]);
        let sq = node1(&mut g, Op::Gather { axis: 0 }, &[sh, i1]);
        let ax = ci(&mut g, &[0]);
        let bu = node1(&mut g, Op::Unsqueeze, &[b, ax]);
        let su = node1(&mut g, Op::Unsqueeze, &[sq, ax]);
        let tail = ci(&mut g, &[12, -1]);
        let shape = node1(&mut g, Op::Concat { axis: 0 }, &[bu, su, tail]);
        let y = node1(&mut g, Op::Reshape { allowzero: false }, &[x, shape]);
        let t = node1(
            &mut g,
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[y],
        );
        // Flatten back with a product of dims: [batch*seq, 384].
        let bs = node1(&mut g, Op::Binary(BinaryOp::Mul), &[b, sq]);
        let bsu = node1(&mut g, Op::Unsqueeze, &[bs, ax]);
        let m1 = ci(&mut g, &[-1]);
        let shape2 = node1(&mut g, Op::Concat { axis: 0 }, &[bsu, m1]);
        let z = node1(&mut g, Op::Reshape { allowzero: false }, &[x, shape2]);
        // And forward again with -1 in the batch position.
        let tail2 = ci(&mut g, &[12, 32]);
        let shape3 = node1(&mut g, Op::Concat { axis: 0 }, &[m1, su, tail2]);
        let w = node1(&mut g, Op::Reshape { allowzero: false }, &[z, shape3]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sh), "i64[3]");
        assert_eq!(ty(&g, b), "i64[]");
        assert_eq!(ty(&g, shape), "i64[4]");
        assert_eq!(ty(&g, y), "f32[batch,seq,12,32]");
        assert_eq!(ty(&g, t), "f32[batch,12,seq,32]");
        assert_eq!(ty(&g, z), "f32[batch*seq,384]");
        assert_eq!(ty(&g, w), "f32[batch,seq,12,32]");
        // Without propagation the rank is still right.
        let n = g
            .nodes()
            .find(|(_, n)| n.outputs[0] == y)
            .unwrap()
            .1
            .clone();
        let t = infer_node(&g, &n).unwrap();
        assert_eq!(t[0].shape.rank(), 4);
        assert!(t[0].shape.dims().iter().all(|d| d.known().is_none()));
    }

    #[test]
    fn torch_expand_pattern() {
        // torch exports expand(x, [batch, -1, -1]) through ConstantOfShape,
        // Mul, Equal and Where.
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["batch", "7"]));
        let p = g.add_input("p", f32t(&["1", "7", "16"]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 0,
                end: Some(1),
            },
            &[x],
        );
        let tail = ci(&mut g, &[-1, -1]);
        let target = node1(&mut g, Op::Concat { axis: 0 }, &[sh, tail]);
        let three = ci(&mut g, &[3]);
        let ones = node1(
            &mut g,
            Op::ConstantOfShape {
                value: Tensor::vec_i64(vec![1]),
            },
            &[three],
        );
        let neg = g.add_const("neg", Tensor::scalar_i64(-1));
        let negs = node1(&mut g, Op::Binary(BinaryOp::Mul), &[ones, neg]);
        let eq = node1(&mut g, Op::Binary(BinaryOp::Equal), &[target, negs]);
        let fixed = node1(&mut g, Op::Where, &[eq, ones, target]);
        let y = node1(&mut g, Op::Expand, &[p, fixed]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, eq), "bool[3]");
        assert_eq!(ty(&g, y), "f32[batch,7,16]");
    }

    #[test]
    fn broadcasting_and_dtypes() {
        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["b", "1", "4"]));
        let c = g.add_input("c", f32t(&["3", "1"]));
        let d = g.add_input("d", f32t(&["s", "3", "4"]));
        let sum = node1(&mut g, Op::Binary(BinaryOp::Add), &[a, c]);
        let cmp = node1(&mut g, Op::Binary(BinaryOp::Less), &[a, d]);
        let am = node1(
            &mut g,
            Op::ArgMax {
                axis: -1,
                keepdims: false,
                select_last_index: false,
            },
            &[a],
        );
        let cast = node1(
            &mut g,
            Op::Cast {
                to: DType::F16,
                saturate: true,
                round_mode: E8M0Round::Up,
            },
            &[c],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sum), "f32[b,3,4]");
        assert_eq!(ty(&g, cmp), "bool[b,3,4]");
        assert_eq!(ty(&g, am), "i64[b,1]");
        assert_eq!(ty(&g, cast), "f16[3,1]");

        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["2", "3"]));
        let c = g.add_input("c", f32t(&["4"]));
        node1(&mut g, Op::Binary(BinaryOp::Add), &[a, c]);
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("cannot broadcast"), "{e}");
        assert!(e.contains("Add"), "{e}");
    }

    #[test]
    fn matmul_gemm_and_errors() {
        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["b", "s", "8"]));
        let w = g.add_input("w", f32t(&["8", "16"]));
        let v = g.add_input("v", f32t(&["8"]));
        let m = node1(&mut g, Op::MatMul, &[a, w]);
        let mv = node1(&mut g, Op::MatMul, &[a, v]);
        let x = g.add_input("x", f32t(&["4", "8"]));
        let gm = node1(
            &mut g,
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &[x, x],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, m), "f32[b,s,16]");
        assert_eq!(ty(&g, mv), "f32[b,s]");
        assert_eq!(ty(&g, gm), "f32[4,4]");

        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["2", "3"]));
        node1(&mut g, Op::MatMul, &[a, a]);
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("inner dims 3 and 2"), "{e}");
    }

    fn conv_attrs(k: usize, s: usize, p: usize) -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![k, k],
            strides: vec![s, s],
            dilations: vec![1, 1],
            pads: vec![p; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        }
    }

    #[test]
    fn conv_and_pool_sizes() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["n", "3", "32", "h"]));
        let w = g.add_input("w", f32t(&["8", "3", "3", "3"]));
        let c1 = node1(&mut g, Op::Conv(conv_attrs(3, 1, 1)), &[x, w]);
        let c2 = node1(&mut g, Op::Conv(conv_attrs(3, 2, 1)), &[x, w]);
        let mut same = conv_attrs(3, 2, 0);
        same.auto_pad = AutoPad::SameUpper;
        let c3 = node1(&mut g, Op::Conv(same), &[x, w]);
        let pool = |ceil| PoolAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            ceil_mode: ceil,
            count_include_pad: false,
            column_major: false,
        };
        let y = g.add_input("y", f32t(&["1", "1", "6", "5"]));
        let p1 = node1(&mut g, Op::MaxPool(pool(false)), &[y]);
        let p2 = node1(&mut g, Op::MaxPool(pool(true)), &[y]);
        let mut lw = pool(true);
        lw.kernel_shape = vec![2, 2];
        lw.pads = vec![1, 1, 1, 1];
        // 5 + 2 pads, k 2, s 2: ceil gives 4 windows; the 4th would start at
        // 6 >= 5 + 1, so it is dropped.
        let p3 = node1(&mut g, Op::AveragePool(lw), &[y]);
        let ct = g.add_input("ctw", f32t(&["1", "2", "3", "3"]));
        let t = node1(
            &mut g,
            Op::ConvTranspose(ConvTransposeAttrs {
                conv: conv_attrs(3, 2, 1),
                output_padding: vec![1, 1],
                output_shape: None,
            }),
            &[y, ct],
        );
        let gp = node1(&mut g, Op::GlobalAveragePool, &[x]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, c1), "f32[n,8,32,h]");
        let c2t = g.ty(c2).clone();
        assert_eq!(c2t.shape.0[2], Dim::Known(16));
        assert!(matches!(&c2t.shape.0[3], Dim::Sym(s) if s.starts_with("unk_")));
        assert_eq!(g.ty(c3).shape.0[2], Dim::Known(16));
        assert_eq!(ty(&g, p1), "f32[1,1,2,2]");
        assert_eq!(ty(&g, p2), "f32[1,1,3,2]");
        assert_eq!(ty(&g, p3), "f32[1,1,4,3]");
        // (6-1)*2 + 1 + 3 - 2 = 12, (5-1)*2 + 1 + 3 - 2 = 10
        assert_eq!(ty(&g, t), "f32[1,2,12,10]");
        assert_eq!(ty(&g, gp), "f32[n,3,1,1]");

        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["1", "4", "8", "8"]));
        let w = g.add_input("w", f32t(&["8", "3", "3", "3"]));
        node1(&mut g, Op::Conv(conv_attrs(3, 1, 1)), &[x, w]);
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("4 channels"), "{e}");
    }

    #[test]
    fn array_ops() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["b", "1", "6"]));
        let sq = node1(&mut g, Op::Squeeze, &[x]);
        let a1 = ci(&mut g, &[1]);
        let sq1 = node1(&mut g, Op::Squeeze, &[x, a1]);
        let am = ci(&mut g, &[-1, 0]);
        let un = node1(&mut g, Op::Unsqueeze, &[x, am]);
        let fl = node1(&mut g, Op::Flatten { axis: 1 }, &[x]);
        let cat = node1(&mut g, Op::Concat { axis: -1 }, &[x, x]);
        let parts = node(
            &mut g,
            Op::Split {
                axis: 2,
                num_outputs: 4,
            },
            &[Some(x)],
            4,
        );
        let st = ci(&mut g, &[1, 0]);
        let en = ci(&mut g, &[i64::MAX, -1]);
        let axs = ci(&mut g, &[2, 0]);
        let sl = node1(&mut g, Op::Slice, &[x, st, en, axs]);
        let idx = g.add_const("idx", Tensor::from_i64(vec![2, 3], vec![0; 6]).unwrap());
        let ga = node1(&mut g, Op::Gather { axis: 2 }, &[x, idx]);
        let reps = ci(&mut g, &[2, 3, 1]);
        let ti = node1(&mut g, Op::Tile, &[x, reps]);
        let pads = ci(&mut g, &[0, 0, 1, 0, 0, 2]);
        let pd = node1(
            &mut g,
            Op::Pad {
                mode: PadMode::Constant,
            },
            &[x, pads],
        );
        let rs = ci(&mut g, &[0, -1]);
        let re = node1(&mut g, Op::Reshape { allowzero: false }, &[x, rs]);
        let rd = node1(
            &mut g,
            Op::Reduce {
                op: ReduceOp::Sum,
                keepdims: false,
                noop_with_empty_axes: false,
            },
            &[x, a1],
        );
        let sh = node1(
            &mut g,
            Op::Shape {
                start: -2,
                end: None,
            },
            &[x],
        );
        let co = node1(
            &mut g,
            Op::ConstantOfShape {
                value: Tensor::vec_i64(vec![0]),
            },
            &[sh],
        );
        let sz = node1(&mut g, Op::Size, &[x]);
        let dr = node(&mut g, Op::Dropout, &[Some(x)], 2);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sq), "f32[b,6]");
        assert_eq!(ty(&g, sq1), "f32[b,6]");
        assert_eq!(ty(&g, un), "f32[1,b,1,6,1]");
        assert_eq!(ty(&g, fl), "f32[b,6]");
        assert_eq!(ty(&g, cat), "f32[b,1,12]");
        let sizes: Vec<String> = parts.iter().map(|&p| ty(&g, p)).collect();
        assert_eq!(
            sizes,
            ["f32[b,1,2]", "f32[b,1,2]", "f32[b,1,2]", "f32[b,1,0]"]
        );
        assert!(ty(&g, sl).ends_with(",1,5]"), "{}", ty(&g, sl));
        assert_eq!(ty(&g, ga), "f32[b,1,2,3]");
        assert_eq!(ty(&g, ti), "f32[2*b,3,6]");
        assert_eq!(ty(&g, pd), "f32[b,1,9]");
        assert_eq!(ty(&g, re), "f32[b,6]");
        assert_eq!(ty(&g, rd), "f32[b,6]");
        assert_eq!(ty(&g, co), "i64[1,6]");
        assert_eq!(ty(&g, sz), "i64[]");
        assert_eq!(ty(&g, dr[1]), "bool[b,1,6]");

        // Errors that would crash kernels later.
        let y2 = g.add_input("y2", f32t(&["b", "2"]));
        let y3 = g.add_input("y3", f32t(&["3", "2"]));
        let a2 = ci(&mut g, &[2]);
        let r7 = ci(&mut g, &[7, -1]);
        let bad = |op: Op, ins: &[ValueId]| {
            let mut g2 = g.clone();
            node1(&mut g2, op, ins);
            infer_graph(&mut g2).unwrap_err().to_string()
        };
        let e = bad(
            Op::Transpose {
                perm: vec![0, 1, 1],
            },
            &[x],
        );
        assert!(e.contains("not a permutation"), "{e}");
        let e = bad(Op::Gather { axis: 3 }, &[x, idx]);
        assert!(e.contains("out of range"), "{e}");
        let e = bad(Op::Concat { axis: 0 }, &[x, y2]);
        assert!(e.contains("ranks differ"), "{e}");
        let e = bad(Op::Squeeze, &[x, a2]);
        assert!(e.contains("size 6"), "{e}");
        let e = bad(Op::Reshape { allowzero: false }, &[y3, r7]);
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn range_and_resize() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["b", "s"]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 1,
                end: None,
            },
            &[x],
        );
        let zero = ci(&mut g, &[0]);
        let lim = node1(&mut g, Op::Squeeze, &[sh, zero]);
        let s0 = g.add_const("s0", Tensor::scalar_i64(0));
        let d1 = g.add_const("d1", Tensor::scalar_i64(1));
        let r = node1(&mut g, Op::Range, &[s0, lim, d1]);
        let f0 = g.add_const("f0", Tensor::scalar_f32(0.0));
        let f5 = g.add_const("f5", Tensor::scalar_f32(2.5));
        let fh = g.add_const("fh", Tensor::scalar_f32(0.5));
        let rf = node1(&mut g, Op::Range, &[f0, f5, fh]);
        let img = g.add_input("img", f32t(&["1", "3", "10", "w"]));
        let sc = g.add_const(
            "sc",
            Tensor::from_f32(vec![4], vec![1., 1., 1.5, 2.]).unwrap(),
        );
        let attrs = crate::ir::ResizeAttrs {
            mode: crate::ir::ResizeMode::Nearest,
            coord: crate::ir::CoordTransform::HalfPixel,
            nearest: crate::ir::NearestMode::RoundPreferFloor,
            exclude_outside: false,
            extrapolation_value: 0.0,
            antialias: false,
            axes: None,
            aspect: AspectPolicy::Stretch,
            cubic_coeff_a: -0.75,
        };
        let rz = node(
            &mut g,
            Op::Resize(attrs.clone()),
            &[Some(img), None, Some(sc)],
            1,
        )[0];
        let sizes = ci(&mut g, &[7, 9]);
        let mut a2 = attrs;
        a2.axes = Some(vec![2, 3]);
        let rz2 = node(
            &mut g,
            Op::Resize(a2),
            &[Some(img), None, None, Some(sizes)],
            1,
        )[0];
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, r), "i64[s]");
        assert_eq!(ty(&g, rf), "f32[5]");
        let t = g.ty(rz).clone();
        assert_eq!(t.shape.0[2], Dim::Known(15));
        assert!(matches!(&t.shape.0[3], Dim::Sym(s) if s.starts_with("unk_")));
        assert_eq!(ty(&g, rz2), "f32[1,3,7,9]");
    }

    /// Inference and the reference kernels agree on concrete shapes (the
    /// interpreter checks every kernel output against its inferred type).
    #[test]
    fn inference_matches_kernels() {
        let mut g = Graph::new("t", 18);
        let x = g.add_input("x", f32t(&["3", "5", "4"]));
        let mut outs = Vec::new();
        let (st, en, ax, sp) = (
            ci(&mut g, &[-1, 4]),
            ci(&mut g, &[i64::MIN, 0]),
            ci(&mut g, &[2, -2]),
            ci(&mut g, &[-2, -3]),
        );
        outs.push(node1(&mut g, Op::Slice, &[x, st, en, ax, sp]));
        let pads = ci(&mut g, &[1, -1, 0, 2, 0, 3]);
        for mode in [
            PadMode::Constant,
            PadMode::Reflect,
            PadMode::Edge,
            PadMode::Wrap,
        ] {
            outs.push(node1(&mut g, Op::Pad { mode }, &[x, pads]));
        }
        let reps = ci(&mut g, &[1, 2, 3]);
        outs.push(node1(&mut g, Op::Tile, &[x, reps]));
        outs.extend(node(
            &mut g,
            Op::Split {
                axis: 1,
                num_outputs: 2,
            },
            &[Some(x)],
            2,
        ));
        let idx = g.add_const(
            "idx",
            Tensor::from_i64(vec![2, 2], vec![0, -1, 2, 1]).unwrap(),
        );
        outs.push(node1(&mut g, Op::Gather { axis: 1 }, &[x, idx]));
        let es = ci(&mut g, &[2, 1, 1, 4]);
        outs.push(node1(&mut g, Op::Expand, &[x, es]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 1,
                end: None,
            },
            &[x],
        );
        // Only array ops here (the other kernels live elsewhere).
        let (s1, s2) = (ci(&mut g, &[1]), ci(&mut g, &[2]));
        let prod = node1(&mut g, Op::Slice, &[sh, s1, s2]);
        let m1 = ci(&mut g, &[-1]);
        let cat = node1(&mut g, Op::Concat { axis: 0 }, &[m1, prod]);
        outs.push(node1(&mut g, Op::Reshape { allowzero: false }, &[x, cat]));
        outs.push(node1(
            &mut g,
            Op::ConstantOfShape {
                value: Tensor::scalar_f32(1.0),
            },
            &[sh],
        ));
        let (a, b, c) = (
            g.add_const("a", Tensor::scalar_i64(10)),
            g.add_const("b", Tensor::scalar_i64(-3)),
            g.add_const("c", Tensor::scalar_i64(-4)),
        );
        outs.push(node1(&mut g, Op::Range, &[a, b, c]));
        let un = ci(&mut g, &[0, 4]);
        outs.push(node1(&mut g, Op::Unsqueeze, &[x, un]));
        outs.push(node1(&mut g, Op::Flatten { axis: -2 }, &[x]));
        outs.push(node1(
            &mut g,
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[x],
        ));
        g.outputs = outs.clone();
        infer_graph(&mut g).unwrap();
        crate::ir::verify::verify(&g).unwrap();
        let input = Tensor::from_f32(vec![3, 5, 4], (0..60).map(|v| v as f32).collect()).unwrap();
        let res = crate::interp::run(&g, vec![input]).unwrap();
        for (o, t) in outs.iter().zip(&res) {
            assert_eq!(
                g.ty(*o).shape,
                Shape::known(t.shape()),
                "{}",
                g.value(*o).name
            );
        }
        assert_eq!(ty(&g, outs[0]), "f32[3,2,2]");
        assert_eq!(ty(&g, outs[12]), "i64[4]");
        assert_eq!(ty(&g, outs[10]), "f32[15,4]");
    }

    #[test]
    fn cycle_is_an_error() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["2"]));
        let a = g.add_value("a", placeholder());
        let b = g.add_value("b", placeholder());
        g.add_node(Node {
            name: "first".into(),
            op: Op::Binary(BinaryOp::Add),
            inputs: vec![Some(x), Some(b)],
            outputs: vec![a],
        });
        g.add_node(Node {
            name: "second".into(),
            op: Op::Identity,
            inputs: vec![Some(a)],
            outputs: vec![b],
        });
        let e = infer_graph(&mut g).unwrap_err();
        assert!(matches!(e, Error::InvalidGraph(_)));
        let msg = e.to_string();
        assert!(msg.contains("the graph has a cycle through nodes"), "{msg}");
        assert!(msg.contains("'first'") && msg.contains("'second'"), "{msg}");
    }

    #[test]
    fn fresh_symbols_are_deterministic_and_avoid_inputs() {
        let build = || {
            let mut g = Graph::new("t", 17);
            let x = g.add_input("x", f32t(&["unk_0", "8"]));
            let shp = g.add_input("shp", TensorType::new(DType::I64, s(&["2"])));
            let y = node1(&mut g, Op::Reshape { allowzero: false }, &[x, shp]);
            (g, y)
        };
        let (mut g, y) = build();
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, y), "f32[unk_1,unk_2]");
        let (mut g2, _) = build();
        infer_graph(&mut g2).unwrap();
        assert_eq!(crate::ir::text::print(&g), crate::ir::text::print(&g2));
    }

    #[test]
    fn product_symbols_evaluate() {
        let mut b = SymbolBindings::default();
        b.0.insert("batch".into(), 2);
        b.0.insert("seq".into(), 5);
        assert_eq!(eval_dim(&Dim::sym("384*batch*seq"), &b), Some(3840));
        assert_eq!(eval_dim(&Dim::sym("seq"), &b), Some(5));
        assert_eq!(eval_dim(&Dim::sym("other"), &b), None);
        let m = Mono::parse("seq*batch").mul(&Mono::known(3)).unwrap();
        assert_eq!(m.to_dim(), Dim::sym("3*batch*seq"));
        assert_eq!(
            m.div(&Mono::parse("seq")).unwrap().to_dim(),
            Dim::sym("3*batch")
        );
        assert!(m.div(&Mono::known(2)).is_none());
    }

    #[test]
    fn statistics_and_indices_outputs() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["b", "s", "8"]));
        let w = g.add_input("w", f32t(&["8"]));
        let ln = |axis| Op::LayerNormalization {
            axis,
            epsilon: 1e-5,
        };
        let l3 = node(&mut g, ln(-1), &[Some(x), Some(w)], 3);
        let l2 = node(&mut g, ln(1), &[Some(x), Some(w)], 2);
        let l1 = node(&mut g, ln(0), &[Some(x), Some(w)], 1);
        let bn = |m| Op::BatchNormalization {
            epsilon: 1e-5,
            training_momentum: m,
        };
        let p = g.add_input("p", TensorType::new(DType::F64, s(&["s"])));
        let bins = [Some(x), Some(w), Some(w), Some(p), Some(p)];
        let bt = node(&mut g, bn(Some(0.9)), &bins, 3);
        let bi = node(&mut g, bn(None), &bins, 1);
        let xi = g.add_input("xi", f32t(&["b", "3", "7", "7"]));
        let pool = PoolAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            column_major: true,
        };
        let mp = node(&mut g, Op::MaxPool(pool), &[Some(xi)], 2);
        infer_graph(&mut g).unwrap();
        let tys = |v: &[ValueId]| v.iter().map(|&o| ty(&g, o)).collect::<Vec<_>>();
        assert_eq!(tys(&l3), ["f32[b,s,8]", "f32[b,s,1]", "f32[b,s,1]"]);
        assert_eq!(tys(&l2), ["f32[b,s,8]", "f32[b,1,1]"]);
        assert_eq!(tys(&l1), ["f32[b,s,8]"]);
        assert_eq!(tys(&bt), ["f32[b,s,8]", "f64[s]", "f64[s]"]);
        assert_eq!(tys(&bi), ["f32[b,s,8]"]);
        assert_eq!(tys(&mp), ["f32[b,3,3,3]", "i64[b,3,3,3]"]);

        // Too many outputs, and the inference form's statistics outputs.
        for (op, n) in [
            (ln(-1), 4),
            (bn(None), 3),
            (bn(Some(0.9)), 4),
            (
                Op::MaxPool(PoolAttrs {
                    kernel_shape: vec![1, 1],
                    strides: vec![1, 1],
                    dilations: vec![1, 1],
                    pads: vec![0; 4],
                    auto_pad: AutoPad::NotSet,
                    ceil_mode: false,
                    count_include_pad: false,
                    column_major: false,
                }),
                3,
            ),
        ] {
            let mut g = Graph::new("t", 17);
            let x = g.add_input("x", f32t(&["2", "8", "3", "3"]));
            let w = g.add_input("w", f32t(&["8"]));
            let ins: Vec<Option<ValueId>> = match op {
                Op::MaxPool(_) => vec![Some(x)],
                Op::LayerNormalization { .. } => vec![Some(x), Some(w)],
                _ => vec![Some(x), Some(w), Some(w), Some(w), Some(w)],
            };
            node(&mut g, op, &ins, n);
            assert!(infer_graph(&mut g).is_err());
        }
    }
}

/// Inference for FusedConv and FusedMatMul: the output is the underlying
/// Conv / MatMul output (the latter on the operands with their last two dims
/// swapped where flagged); the bias (FusedMatMul) and the residual
/// (FusedConv) must have the output's dtype and broadcast onto it without
/// changing its shape. FusedConv's B is checked by the Conv rule.
fn fused_linear(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    match &node.op {
        Op::FusedConv { conv: attrs, .. } => {
            let out = conv(cx, node, attrs)?;
            if let Some(r) = opt_ty(cx, node, 3) {
                fused_epilogue_operand(name, "the residual R", r, &out)?;
            }
            Ok(vec![out])
        }
        Op::FusedMatMul {
            trans_a, trans_b, ..
        } => {
            let a = fused_operand(name, "A", in_ty(cx, node, 0)?, *trans_a)?;
            let b = fused_operand(name, "B", in_ty(cx, node, 1)?, *trans_b)?;
            let out = matmul_type(name, &a, &b)?;
            if let Some(bias) = opt_ty(cx, node, 2) {
                fused_epilogue_operand(name, "the bias", bias, &out)?;
            }
            Ok(vec![out])
        }
        _ => Err(Error::op(name, "internal: routed to fused inference")),
    }
}

/// Inference for QConv and QMatMul: the f32 output of the FusedConv /
/// FusedMatMul they quantize, with the int8 weight and its f32 scale
/// (`[1]` or one per output channel) checked.
fn quantized_linear(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let w = in_ty(cx, node, 1)?;
    let scale = in_ty(cx, node, 2)?;
    if x.dtype != DType::F32 || w.dtype != DType::I8 || scale.dtype != DType::F32 {
        return Err(Error::op(
            name,
            format!(
                "inputs must be f32, i8 and f32 (scale), got {}, {} and {}",
                x.dtype, w.dtype, scale.dtype
            ),
        ));
    }
    // Scales are positive and finite: a zero, negative, NaN or infinite one
    // (a damaged or hostile file) would make every output meaningless.
    let bad_scale = |v: f32| !(v.is_finite() && v > 0.0);
    if let Some(w_scale) = node.input(2).and_then(|v| cx.g.const_value(v)) {
        if let Some(&v) = w_scale
            .as_f32()
            .and_then(|s| s.iter().find(|&&v| bad_scale(v)))
        {
            return Err(Error::op(
                name,
                format!("weight scale {v} is not a positive finite number"),
            ));
        }
    }
    if let Op::QConv { x_quant: q, .. } | Op::QMatMul { a_quant: q, .. } = &node.op {
        if let ActQuant::Static { scale, .. } = q {
            if bad_scale(*scale) {
                return Err(Error::op(
                    name,
                    format!("activation scale {scale} is not a positive finite number"),
                ));
            }
        }
    }
    let out = match &node.op {
        Op::QConv {
            conv: attrs, act, ..
        } => {
            // The FusedConv rule over X, W, B?, R?.
            let float = Node {
                name: node.name.clone(),
                op: Op::FusedConv {
                    conv: attrs.clone(),
                    act: act.clone(),
                },
                inputs: vec![node.input(0), node.input(1), node.input(3), node.input(4)],
                outputs: node.outputs.clone(),
            };
            fused_linear(cx, &float)?.remove(0)
        }
        Op::QMatMul { .. } => {
            if w.shape.rank() != 2 {
                return Err(Error::op(name, format!("B must be 2-D, got {}", w.shape)));
            }
            let b = tt(DType::F32, w.shape.0.clone());
            let out = matmul_type(name, x, &b)?;
            if let Some(bias) = opt_ty(cx, node, 3) {
                fused_epilogue_operand(name, "the bias", bias, &out)?;
            }
            out
        }
        _ => return Err(Error::op(name, "internal: routed to quantized inference")),
    };
    let channels = match &node.op {
        Op::QConv { .. } => &w.shape.dims()[0],
        _ => &w.shape.dims()[1],
    };
    let per_channel_ok = match scale.shape.dims() {
        [Dim::Known(1)] => true,
        [d] => unify(
            name,
            "the scale length and the output channels",
            d,
            channels,
        )
        .is_ok(),
        _ => false,
    };
    if !per_channel_ok {
        return Err(Error::op(
            name,
            format!(
                "the weight scale must be [1] or [{channels}] (one per output channel), got {}",
                scale.shape
            ),
        ));
    }
    Ok(vec![out])
}

/// Inference for QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear
/// (opset 21 forms): the scale is a scalar or 1-D (per tensor, per axis) or
/// has x's rank (blocked); the zero point has the scale's shape.
fn quantize_ops(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let (axis, block_size) = match &node.op {
        Op::DynamicQuantizeLinear => {
            if x.dtype != DType::F32 {
                return Err(Error::op(name, format!("x must be f32, got {}", x.dtype)));
            }
            let scalar = |d| tt(d, vec![]);
            return Ok(vec![
                tt(DType::U8, x.shape.0.clone()),
                scalar(DType::F32),
                scalar(DType::U8),
            ]);
        }
        Op::QuantizeLinear {
            axis, block_size, ..
        }
        | Op::DequantizeLinear { axis, block_size } => (*axis, *block_size),
        _ => return Err(Error::op(name, "internal: routed to quantize inference")),
    };
    let scale = in_ty(cx, node, 1)?;
    if !scale.dtype.is_float() {
        return Err(Error::op(
            name,
            format!("the scale must be a float tensor, got {}", scale.dtype),
        ));
    }
    let zp = opt_ty(cx, node, 2);
    if let Some(z) = zp {
        let one = |t: &TensorType| t.shape.dims().iter().all(Dim::is_one);
        if z.shape != scale.shape && !(one(z) && one(scale)) {
            return Err(Error::op(
                name,
                format!(
                    "the zero point's shape {} differs from the scale's {}",
                    z.shape, scale.shape
                ),
            ));
        }
    }
    let rank = x.shape.rank();
    let per_tensor = scale.shape.rank() == 0
        || (scale.shape.rank() == 1 && scale.shape.dims()[0].is_one() && block_size == 0);
    if per_tensor {
        // One scale for every element.
    } else if scale.shape.rank() == 1 && block_size == 0 {
        let a = norm_axis(name, axis, rank)?;
        unify(
            name,
            "the scale length and the quantized axis",
            &scale.shape.dims()[0],
            &x.shape.dims()[a],
        )?;
    } else if block_size > 0 && scale.shape.rank() == rank {
        let a = norm_axis(name, axis, rank)?;
        for (i, (s, d)) in scale.shape.dims().iter().zip(x.shape.dims()).enumerate() {
            let ok = match (s, d) {
                (Dim::Known(s), Dim::Known(d)) if i == a => *s == d.div_ceil(block_size),
                (Dim::Known(s), Dim::Known(d)) => s == d,
                _ => true,
            };
            if !ok {
                return Err(Error::op(
                    name,
                    format!(
                        "a blocked scale of shape {} does not fit x of shape {} with block size {block_size} on axis {a}",
                        scale.shape, x.shape
                    ),
                ));
            }
        }
    } else {
        return Err(Error::op(
            name,
            format!(
                "the scale of shape {} fits neither per-tensor, per-axis nor blocked quantization of {} (block size {block_size})",
                scale.shape, x.shape
            ),
        ));
    }
    let out = match &node.op {
        Op::QuantizeLinear { output_dtype, .. } => {
            let d = zp.map(|z| z.dtype).or(*output_dtype).unwrap_or(DType::U8);
            if !quantized_dtype(d) {
                return Err(Error::op(
                    name,
                    format!("cannot quantize to {d}: the output must be an 8/4/2-bit integer type"),
                ));
            }
            d
        }
        _ => {
            if !quantized_dtype(x.dtype) && x.dtype != DType::I32 {
                return Err(Error::op(
                    name,
                    format!(
                        "cannot dequantize {}: x must be an 8/4/2-bit integer or i32",
                        x.dtype
                    ),
                ));
            }
            if let Some(z) = zp {
                if z.dtype != x.dtype {
                    return Err(Error::op(
                        name,
                        format!("the zero point is {} but x is {}", z.dtype, x.dtype),
                    ));
                }
            }
            scale.dtype
        }
    };
    Ok(vec![tt(out, x.shape.0.clone())])
}

/// The integer types QuantizeLinear produces and DequantizeLinear reads
/// (float8 forms are not supported).
pub fn quantized_dtype(d: DType) -> bool {
    matches!(
        d,
        DType::I8
            | DType::U8
            | DType::I4
            | DType::U4
            | DType::I2
            | DType::U2
            | DType::I16
            | DType::U16
    )
}

/// A FusedMatMul operand's type, its last two dims swapped when `trans`.
fn fused_operand(op: &'static str, what: &str, t: &TensorType, trans: bool) -> Result<TensorType> {
    let mut t = t.clone();
    if trans {
        let r = t.shape.rank();
        if r < 2 {
            return Err(Error::op(
                op,
                format!(
                    "{what} is transposed but has shape {}; it needs rank >= 2",
                    t.shape
                ),
            ));
        }
        t.shape.0.swap(r - 2, r - 1);
    }
    Ok(t)
}

/// numpy matmul of two operand types: the MatMul rule, shared with
/// FusedMatMul (whose operands arrive already transposed).
fn matmul_type(op: &'static str, a: &TensorType, b: &TensorType) -> Result<TensorType> {
    if a.dtype != b.dtype {
        return Err(Error::op(
            op,
            format!("inputs mix {} and {}", a.dtype, b.dtype),
        ));
    }
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    if ra == 0 || rb == 0 {
        return Err(Error::op(
            op,
            format!(
                "inputs must have rank >= 1, got {} and {}",
                a.shape, b.shape
            ),
        ));
    }
    let mut ad = a.shape.0.clone();
    if ra == 1 {
        ad.insert(0, Dim::Known(1));
    }
    let mut bd = b.shape.0.clone();
    if rb == 1 {
        bd.push(Dim::Known(1));
    }
    if let (Dim::Known(x), Dim::Known(y)) = (&ad[ad.len() - 1], &bd[bd.len() - 2]) {
        if x != y {
            return Err(Error::op(
                op,
                format!(
                    "cannot multiply {} by {}: inner dims {x} and {y} differ",
                    a.shape, b.shape
                ),
            ));
        }
    }
    let mut out = broadcast(
        op,
        &[
            &Shape(ad[..ad.len() - 2].to_vec()),
            &Shape(bd[..bd.len() - 2].to_vec()),
        ],
    )?;
    if ra > 1 {
        out.push(ad[ad.len() - 2].clone());
    }
    if rb > 1 {
        out.push(bd[bd.len() - 1].clone());
    }
    Ok(tt(a.dtype, out))
}

/// Checks that `e` (bias or residual) has `out`'s dtype and broadcasts onto
/// `out` unidirectionally: no more dims, each dim 1 or equal to the output's.
fn fused_epilogue_operand(
    op: &'static str,
    what: &str,
    e: &TensorType,
    out: &TensorType,
) -> Result<()> {
    if e.dtype != out.dtype {
        return Err(Error::op(
            op,
            format!(
                "{what} has dtype {} but the output has {}",
                e.dtype, out.dtype
            ),
        ));
    }
    let bad = || {
        Error::op(
            op,
            format!(
                "{what} of shape {} does not broadcast onto the output {}",
                e.shape, out.shape
            ),
        )
    };
    if e.shape.rank() > out.shape.rank() {
        return Err(bad());
    }
    for (d, o) in e
        .shape
        .dims()
        .iter()
        .rev()
        .zip(out.shape.dims().iter().rev())
    {
        if d.is_one() || d == o {
            continue;
        }
        // Sizes that cannot be compared statically are accepted; the kernel
        // checks them at run time.
        if let (Dim::Known(_), Dim::Known(_)) = (d, o) {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod fused_linear_tests {
    use super::*;
    use crate::ir::{Activation, AutoPad};

    fn ty(dims: &[&str]) -> TensorType {
        let d = dims
            .iter()
            .map(|d| match d.parse::<usize>() {
                Ok(n) => Dim::Known(n),
                Err(_) => Dim::Sym(d.to_string()),
            })
            .collect();
        TensorType::new(DType::F32, Shape(d))
    }

    /// Infers one node over inputs of the given types (`None`: absent).
    fn infer(op: Op, ins: &[Option<TensorType>]) -> Result<String> {
        let mut g = Graph::new("t", 17);
        let inputs: Vec<Option<ValueId>> = ins
            .iter()
            .enumerate()
            .map(|(i, t)| t.clone().map(|t| g.add_input(format!("i{i}"), t)))
            .collect();
        let out = g.add_value("y", ty(&[]));
        let node = Node {
            name: "n".into(),
            op,
            inputs,
            outputs: vec![out],
        };
        infer_node(&g, &node).map(|t| t[0].to_string())
    }

    fn fmm(trans_a: bool, trans_b: bool) -> Op {
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha: 0.5,
            act: Some(Activation::Relu),
        }
    }

    fn fconv() -> Op {
        Op::FusedConv {
            conv: ConvAttrs {
                kernel_shape: vec![3, 3],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![1, 1, 1, 1],
                auto_pad: AutoPad::NotSet,
                group: 1,
            },
            act: Some(Activation::Relu),
        }
    }

    #[test]
    fn fused_matmul_types() {
        let (a, b) = (Some(ty(&["batch", "3", "4"])), Some(ty(&["4", "5"])));
        assert_eq!(
            infer(fmm(false, false), &[a.clone(), b.clone()]).unwrap(),
            "f32[batch,3,5]"
        );
        let at = Some(ty(&["batch", "4", "3"]));
        let bt = Some(ty(&["5", "4"]));
        assert_eq!(
            infer(fmm(true, true), &[at.clone(), bt.clone()]).unwrap(),
            "f32[batch,3,5]"
        );
        // Bias of [5], [1,5], [3,1] and [batch,1,5] broadcast; [4] and [2,3,5] do not.
        for bias in [
            &["5"][..],
            &["1", "5"],
            &["3", "1"],
            &["batch", "1", "5"],
            &[],
        ] {
            let got = infer(fmm(true, false), &[at.clone(), b.clone(), Some(ty(bias))]);
            assert_eq!(got.unwrap(), "f32[batch,3,5]", "{bias:?}");
        }
        for bias in [&["4"][..], &["2", "5"], &["1", "1", "1", "5"]] {
            let e = infer(fmm(false, false), &[a.clone(), b.clone(), Some(ty(bias))]).unwrap_err();
            assert!(
                e.to_string().contains("does not broadcast onto the output"),
                "{e}"
            );
        }
        // Inner dims clash only once the flag is applied.
        assert!(infer(fmm(false, true), &[a.clone(), b.clone()]).is_err());
        // Transposing a 1-D operand is an error; plain 1-D operands are numpy matmul.
        assert!(infer(fmm(false, true), &[a.clone(), Some(ty(&["4"]))]).is_err());
        assert_eq!(
            infer(fmm(false, false), &[a.clone(), Some(ty(&["4"]))]).unwrap(),
            "f32[batch,3]"
        );
        // Dtype mismatch of the bias.
        let ib = Some(TensorType::new(DType::I64, Shape::known(&[5])));
        assert!(infer(fmm(false, false), &[a, b, ib]).is_err());
    }

    #[test]
    fn fused_conv_types() {
        let x = Some(ty(&["n", "2", "8", "8"]));
        let w = Some(ty(&["4", "2", "3", "3"]));
        let b = Some(ty(&["4"]));
        let r = Some(ty(&["n", "4", "8", "8"]));
        assert_eq!(
            infer(fconv(), &[x.clone(), w.clone(), b.clone(), r.clone()]).unwrap(),
            "f32[n,4,8,8]"
        );
        assert_eq!(
            infer(fconv(), &[x.clone(), w.clone(), None, r.clone()]).unwrap(),
            "f32[n,4,8,8]"
        );
        // Bias of the wrong length (Conv's rule) and a residual of another shape.
        assert!(infer(fconv(), &[x.clone(), w.clone(), Some(ty(&["3"]))]).is_err());
        let e = infer(
            fconv(),
            &[
                x.clone(),
                w.clone(),
                b.clone(),
                Some(ty(&["n", "4", "7", "8"])),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");
        assert!(infer(
            fconv(),
            &[
                x.clone(),
                w.clone(),
                b,
                Some(ty(&["2", "n", "4", "8", "8"]))
            ]
        )
        .is_err());
        // Channel mismatch between X and W.
        assert!(infer(fconv(), &[Some(ty(&["1", "3", "8", "8"])), w]).is_err());
    }
}

/// Inference for Elementwise chains: every input is f32 and the output is
/// the f32 broadcast of all inputs. The steps must be non-empty, arithmetic
/// (no comparisons, no Not) and read only existing inputs and earlier steps.
fn elementwise_chain(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let Op::Elementwise { steps } = &node.op else {
        return Err(Error::op(name, "is not an Elementwise chain"));
    };
    let tys: Vec<&TensorType> = (0..node.inputs.len())
        .map(|i| in_ty(cx, node, i))
        .collect::<Result<_>>()?;
    if let Some((i, t)) = tys.iter().enumerate().find(|(_, t)| t.dtype != DType::F32) {
        return Err(Error::op(
            name,
            format!("input {i} must be f32, got {}", t.dtype),
        ));
    }
    ew_check_steps(name, steps, tys.len())?;
    let shapes: Vec<&Shape> = tys.iter().map(|t| &t.shape).collect();
    Ok(vec![tt(DType::F32, broadcast(name, &shapes)?)])
}

/// Validates the step list of an Elementwise chain with `n_inputs` inputs.
fn ew_check_steps(name: &'static str, steps: &[super::EwStep], n_inputs: usize) -> Result<()> {
    use super::{EwArg, EwStep};
    if steps.is_empty() {
        return Err(Error::op(name, "the chain has no steps"));
    }
    for (k, step) in steps.iter().enumerate() {
        let args: Vec<&EwArg> = match step {
            EwStep::Unary(UnaryOp::Not, _) => {
                return Err(Error::op(
                    name,
                    format!("step {k}: Not is bool-only and cannot be a step"),
                ))
            }
            EwStep::Unary(_, a) | EwStep::Clip(a, _, _) => vec![a],
            EwStep::Binary(b, _, _) if !b.is_chain_arithmetic() => {
                return Err(Error::op(
                    name,
                    format!("step {k}: {b:?} is not an arithmetic op"),
                ))
            }
            EwStep::Binary(_, x, y) => vec![x, y],
        };
        for a in args {
            match *a {
                EwArg::Input(i) if i >= n_inputs => {
                    return Err(Error::op(
                        name,
                        format!("step {k} reads input {i}, but the node has {n_inputs} inputs"),
                    ))
                }
                EwArg::Step(j) if j >= k => {
                    return Err(Error::op(
                        name,
                        format!("step {k} reads step {j}, which does not come before it"),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod elementwise_chain_tests {
    use super::*;
    use crate::ir::{EwArg, EwStep};

    fn chain(g: &mut Graph, steps: Vec<EwStep>, ins: &[ValueId]) -> Result<()> {
        let out = g.add_value("y", TensorType::new(DType::F32, Shape::scalar()));
        g.add_node(Node {
            name: "ew".into(),
            op: Op::Elementwise { steps },
            inputs: ins.iter().map(|&v| Some(v)).collect(),
            outputs: vec![out],
        });
        g.outputs = vec![out];
        infer_graph(g)
    }

    fn ty(dt: DType, dims: Vec<Dim>) -> TensorType {
        TensorType::new(dt, Shape(dims))
    }

    #[test]
    fn broadcasts_inputs_and_checks_steps() {
        let add = |a, b| EwStep::Binary(BinaryOp::Add, a, b);
        let mut g = Graph::new("t", 17);
        let x = g.add_input(
            "x",
            ty(DType::F32, vec![Dim::Sym("b".into()), Dim::Known(1)]),
        );
        let y = g.add_input("y", ty(DType::F32, vec![Dim::Known(4)]));
        let steps = vec![
            add(EwArg::Input(0), EwArg::Input(1)),
            EwStep::Unary(UnaryOp::Tanh, EwArg::Step(0)),
        ];
        chain(&mut g, steps, &[x, y]).unwrap();
        assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[b,4]");

        // Bad references, ops and dtypes.
        for steps in [
            vec![add(EwArg::Input(2), EwArg::Scalar(1.0))],
            vec![add(EwArg::Step(0), EwArg::Scalar(1.0))],
            vec![],
            vec![EwStep::Binary(
                BinaryOp::Equal,
                EwArg::Input(0),
                EwArg::Input(1),
            )],
            vec![EwStep::Unary(UnaryOp::Not, EwArg::Input(0))],
        ] {
            let mut g = Graph::new("t", 17);
            let x = g.add_input("x", ty(DType::F32, vec![Dim::Known(4)]));
            let y = g.add_input("y", ty(DType::F32, vec![Dim::Known(4)]));
            assert!(chain(&mut g, steps, &[x, y]).is_err());
        }
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", ty(DType::F16, vec![Dim::Known(4)]));
        let e = chain(
            &mut g,
            vec![EwStep::Unary(UnaryOp::Relu, EwArg::Input(0))],
            &[x],
        );
        assert!(e.unwrap_err().to_string().contains("must be f32"));
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", ty(DType::F32, vec![Dim::Known(3)]));
        let y = g.add_input("y", ty(DType::F32, vec![Dim::Known(4)]));
        assert!(chain(&mut g, vec![add(EwArg::Input(0), EwArg::Input(1))], &[x, y]).is_err());
    }
}

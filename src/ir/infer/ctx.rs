//! The inference context ([`Ctx`]: the graph, the propagated values, the
//! symbol minter) and the helpers every family's inference uses: input
//! access with errors that name the op, axis normalization, broadcasting,
//! symbolic products of dims; and the rules the reference kernels share
//! (one definition of each: slice bounds, Shape's range, Split's sizes,
//! Range's length).

use std::collections::{HashMap, HashSet};

use crate::ir::{DType, Dim, Graph, Node, Shape, SymbolBindings, TensorType, ValueId};
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
pub(crate) const MAX_PROP: usize = 64;

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

/// `coef * syms[0] * syms[1] * ...`, factors sorted: the canonical form of a
/// product of dims, so equal products get equal symbol names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mono {
    pub(crate) coef: usize,
    pub(crate) syms: Vec<String>,
}

impl Mono {
    pub(crate) fn known(n: usize) -> Mono {
        Mono {
            coef: n,
            syms: Vec::new(),
        }
    }

    pub(crate) fn parse(name: &str) -> Mono {
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

    pub(crate) fn norm(mut self) -> Mono {
        if self.coef == 0 {
            self.syms.clear();
        }
        self
    }

    pub(crate) fn of_dim(d: &Dim) -> Mono {
        match d {
            Dim::Known(n) => Mono::known(*n),
            Dim::Sym(s) => Mono::parse(s),
        }
    }

    pub(crate) fn of_int(s: &SymInt) -> Option<Mono> {
        match s {
            SymInt::Known(k) => usize::try_from(*k).ok().map(Mono::known),
            SymInt::Sym(n) => Some(Mono::parse(n)),
        }
    }

    pub(crate) fn mul(&self, o: &Mono) -> Option<Mono> {
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
    pub(crate) fn div(&self, o: &Mono) -> Option<Mono> {
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

    pub(crate) fn name(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.coef != 1 {
            parts.push(self.coef.to_string());
        }
        parts.extend(self.syms.iter().cloned());
        parts.join("*")
    }

    pub(crate) fn to_dim(&self) -> Dim {
        if self.syms.is_empty() {
            Dim::Known(self.coef)
        } else {
            Dim::Sym(self.name())
        }
    }

    pub(crate) fn to_int(&self) -> Option<SymInt> {
        if self.syms.is_empty() {
            i64::try_from(self.coef).ok().map(SymInt::Known)
        } else {
            Some(SymInt::Sym(self.name()))
        }
    }
}

pub(crate) fn dim_to_int(d: &Dim) -> Option<SymInt> {
    Mono::of_dim(d).to_int()
}

pub(crate) fn product(dims: &[Dim]) -> Option<Mono> {
    dims.iter()
        .try_fold(Mono::known(1), |acc, d| acc.mul(&Mono::of_dim(d)))
}

/// Mints fresh symbols for sizes that cannot be worked out.
pub(crate) struct Minter {
    prefix: String,
    next: usize,
    taken: HashSet<String>,
}

impl Minter {
    pub(crate) fn new(prefix: String, taken: HashSet<String>) -> Minter {
        Minter {
            prefix,
            next: 0,
            taken,
        }
    }

    pub(crate) fn fresh(&mut self) -> Dim {
        loop {
            let name = format!("{}{}", self.prefix, self.next);
            self.next += 1;
            if !self.taken.contains(&name) {
                return Dim::Sym(name);
            }
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) g: &'a Graph,
    pub(crate) vals: &'a HashMap<ValueId, SymVec>,
    pub(crate) mint: &'a mut Minter,
}

impl Ctx<'_> {
    pub(crate) fn fresh(&mut self) -> Dim {
        self.mint.fresh()
    }

    pub(crate) fn fresh_n(&mut self, n: usize) -> Vec<Dim> {
        (0..n).map(|_| self.fresh()).collect()
    }

    /// The propagated or constant value of an integer/bool input.
    pub(crate) fn val(&self, v: Option<ValueId>) -> Option<SymVec> {
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
    pub(crate) fn known_ints(&self, v: Option<ValueId>) -> Option<Vec<i64>> {
        self.val(v)?
            .into_iter()
            .map(|e| match e {
                Some(SymInt::Known(k)) => Some(k),
                _ => None,
            })
            .collect()
    }
}

pub(crate) fn req(node: &Node, i: usize) -> Result<ValueId> {
    node.input(i)
        .ok_or_else(|| Error::op(node.op.onnx_type(), format!("missing required input {i}")))
}

pub(crate) fn in_ty<'a>(cx: &Ctx<'a>, node: &Node, i: usize) -> Result<&'a TensorType> {
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

pub(crate) fn opt_ty<'a>(cx: &Ctx<'a>, node: &Node, i: usize) -> Option<&'a TensorType> {
    let g = cx.g;
    node.input(i)
        .filter(|v| (v.0 as usize) < g.values.len())
        .map(|v| g.ty(v))
}

pub(crate) fn tt(dtype: DType, dims: Vec<Dim>) -> TensorType {
    TensorType::new(dtype, Shape(dims))
}

pub(crate) fn norm_axis(op: &'static str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(Error::op(
            op,
            format!("axis {axis} is out of range for rank {rank}"),
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

pub(crate) fn unique_axes(op: &'static str, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
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
pub(crate) fn vec_len(op: &'static str, what: &str, t: &TensorType) -> Result<usize> {
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
pub(crate) fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
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
pub(crate) fn broadcast(op: &'static str, shapes: &[&Shape]) -> Result<Vec<Dim>> {
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
pub(crate) fn unify(op: &'static str, what: &str, a: &Dim, b: &Dim) -> Result<Dim> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => {
            Err(Error::op(op, format!("{what}: {x} does not match {y}")))
        }
        (Dim::Sym(_), Dim::Known(_)) => Ok(b.clone()),
        _ => Ok(a.clone()),
    }
}

/// Dims given by a shape-like input of `n` elements: propagated values where
/// known, fresh symbols elsewhere.
pub(crate) fn dims_from_value(
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

//! Type and shape inference of the array family's ops.

use crate::ir::infer::ctx::{
    broadcast_dim, dim_to_int, dims_from_value, in_ty, norm_axis, opt_ty, product, range_len_f64,
    range_len_i64, shape_range, slice_axis, split_sizes, tt, unify, unique_axes, vec_len, Ctx,
    Mono, SymInt, SymVec,
};
use crate::ir::ops::util::not_held;
use crate::ir::{DType, Dim, Node, Op, Shape, TensorType};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Identity => single(in_ty(cx, node, 0)?.clone()),
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
        _ => Err(Error::Internal(not_held("array", op))),
    }
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

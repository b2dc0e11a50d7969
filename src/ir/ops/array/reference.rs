//! Reference kernels for data-movement ops: reshapes, transposes, slicing,
//! gathering, concatenation, padding and the small shape-producing ops.
//!
//! None of these ops does arithmetic on elements, so each kernel only works
//! out, for every output element in row-major order, which input element it
//! copies (a flat index list) and then lets [`TensorData::gather`] (or
//! [`gather_multi`] when several inputs feed the output) move the elements.
//! One code path therefore serves every dtype. Shape arguments that arrive as
//! tensors (Reshape's shape, Slice's starts/ends, Pad's pads, ...) are read as
//! i64 and validated before any index is computed, so bad input gives an
//! error rather than a panic.

use crate::ir::infer::{range_len_f64, range_len_i64, shape_range, slice_axis, split_sizes};
use crate::ir::ops::util::{
    broadcast_index_map, broadcast_shape, i64_values, input, not_held, opt_input, strides,
};
use crate::ir::{checked_numel, DType, Op, PadMode, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates one data-movement op. `n_outputs` is the node's output count
/// (Split and Dropout depend on it).
pub fn eval(op: &Op, inputs: &[Option<&Tensor>], n_outputs: usize) -> Result<Vec<Tensor>> {
    let name = op.onnx_type();
    match op {
        Op::Flatten { axis } => flatten(name, input(name, inputs, 0)?, *axis).map(|t| vec![t]),
        Op::Reshape { allowzero } => {
            let x = input(name, inputs, 0)?;
            let shape = i64_values(name, "shape", input(name, inputs, 1)?)?;
            let out = reshape_dims(name, x.shape(), &shape, *allowzero)?;
            Ok(vec![make(name, out, x.data().clone())?])
        }
        Op::Transpose { perm } => transpose(name, input(name, inputs, 0)?, perm).map(|t| vec![t]),
        Op::Squeeze => squeeze(name, inputs).map(|t| vec![t]),
        Op::Unsqueeze => unsqueeze(name, inputs).map(|t| vec![t]),
        Op::Concat { axis } => concat(name, inputs, *axis).map(|t| vec![t]),
        Op::Split { axis, num_outputs } => {
            let n = if *num_outputs > 0 {
                *num_outputs
            } else {
                n_outputs
            };
            split(name, inputs, *axis, n)
        }
        Op::Slice => slice(name, inputs).map(|t| vec![t]),
        Op::Gather { axis } => gather(name, inputs, *axis).map(|t| vec![t]),
        Op::Shape { start, end } => {
            let x = input(name, inputs, 0)?;
            let (s, e) = shape_range(x.rank(), *start, *end);
            let dims: Vec<i64> = x.shape()[s..e].iter().map(|&d| d as i64).collect();
            Ok(vec![Tensor::vec_i64(dims)])
        }
        Op::Size => {
            let x = input(name, inputs, 0)?;
            Ok(vec![Tensor::scalar_i64(x.numel() as i64)])
        }
        Op::ConstantOfShape { value } => constant_of_shape(name, inputs, value).map(|t| vec![t]),
        Op::Expand => expand(name, inputs).map(|t| vec![t]),
        Op::Tile => tile(name, inputs).map(|t| vec![t]),
        Op::Identity => Ok(vec![input(name, inputs, 0)?.clone()]),
        Op::Dropout => dropout(name, inputs, n_outputs),
        Op::Pad { mode } => pad(name, inputs, *mode).map(|t| vec![t]),
        Op::Range => range(name, inputs).map(|t| vec![t]),
        other => Err(Error::Internal(not_held("array", other))),
    }
}

/// Builds a tensor, turning a size mismatch (a bug in a kernel) into an error.
fn make(name: &'static str, shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    Tensor::new(shape, data).map_err(|e| Error::op(name, e.to_string()))
}

/// Element count of an output shape of `elem_bytes`-byte elements, refused
/// on overflow or beyond the memory budget. The kernels here build an index
/// map beside the output, so each element costs a `usize` more.
pub(crate) fn out_numel(name: &'static str, shape: &[usize], elem_bytes: usize) -> Result<usize> {
    crate::limits::check_shape(
        || format!("{name} output of shape {shape:?}"),
        shape,
        elem_bytes + std::mem::size_of::<usize>(),
    )
}

/// For every element of `out_shape` in row-major order, `f(multi_index)`.
fn index_map(out_shape: &[usize], mut f: impl FnMut(&[usize]) -> usize) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let mut idx = vec![0usize; out_shape.len()];
    let mut map = Vec::with_capacity(n);
    for _ in 0..n {
        map.push(f(&idx));
        for ax in (0..out_shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    map
}

/// Elements picked from several same-dtype tensors: `(part, flat index)`.
/// The parts are laid end to end and the picks gathered from that, which
/// serves every dtype with one code path.
pub(crate) fn gather_multi(
    name: &'static str,
    parts: &[&TensorData],
    picks: &[(usize, usize)],
) -> Result<TensorData> {
    let (first, rest) = parts
        .split_first()
        .ok_or_else(|| Error::Internal(format!("{name}: nothing to gather from")))?;
    let mut all = (*first).clone();
    let mut offsets = vec![0usize];
    for p in rest {
        offsets.push(all.len());
        if !all.extend_from(p) {
            return Err(Error::op(
                name,
                "inputs must all have the same element type",
            ));
        }
    }
    let idx = picks
        .iter()
        .map(|&(s, i)| {
            let (start, len) = match offsets.get(s) {
                Some(&o) => (o, parts[s].len()),
                None => (0, 0),
            };
            if i < len {
                Ok(start + i)
            } else {
                Err(Error::Internal(format!(
                    "{name}: element index out of bounds"
                )))
            }
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok(all.gather(&idx))
}

/// Normalizes an axis against `rank`, with the op's name in the error.
fn norm_axis(name: &'static str, axis: i64, rank: usize) -> Result<usize> {
    crate::ir::ops::util::normalize_axis(name, axis, rank)
}

fn flatten(name: &'static str, x: &Tensor, axis: i64) -> Result<Tensor> {
    let r = x.rank() as i64;
    if axis < -r || axis > r {
        return Err(Error::op(
            name,
            format!("axis {axis} is out of range for rank {r}"),
        ));
    }
    let a = if axis < 0 { axis + r } else { axis } as usize;
    let outer: usize = x.shape()[..a].iter().product();
    let inner: usize = x.shape()[a..].iter().product();
    make(name, vec![outer, inner], x.data().clone())
}

/// Output dims of Reshape: 0 copies the input dim (unless `allowzero`), one
/// -1 is inferred from the element count.
pub(crate) fn reshape_dims(
    name: &'static str,
    in_shape: &[usize],
    shape: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>> {
    let total =
        checked_numel(in_shape).ok_or_else(|| Error::op(name, "the input shape overflows"))?;
    let mut out = Vec::with_capacity(shape.len());
    let mut infer_at = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 => {
                if infer_at.is_some() {
                    return Err(Error::op(
                        name,
                        format!("shape {shape:?} has more than one -1"),
                    ));
                }
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => {
                let d = in_shape.get(i).ok_or_else(|| {
                    Error::op(
                        name,
                        format!(
                            "shape {shape:?} copies dim {i} (0) but the input has rank {}",
                            in_shape.len()
                        ),
                    )
                })?;
                out.push(*d);
            }
            s if s < 0 => {
                return Err(Error::op(
                    name,
                    format!("shape {shape:?} has a negative size"),
                ))
            }
            s => out.push(
                usize::try_from(s)
                    .map_err(|_| Error::op(name, format!("size {s} is too large")))?,
            ),
        }
    }
    if allowzero && infer_at.is_some() && shape.contains(&0) {
        return Err(Error::op(
            name,
            format!("shape {shape:?} has both 0 and -1 with allowzero set"),
        ));
    }
    let known = checked_numel(&out).ok_or_else(|| Error::op(name, "the shape overflows"))?;
    if let Some(i) = infer_at {
        if known == 0 || total % known != 0 {
            return Err(Error::op(
                name,
                format!(
                    "cannot reshape {in_shape:?} ({total} elements) to {shape:?}: the -1 cannot be inferred"
                ),
            ));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::op(
            name,
            format!(
                "cannot reshape {in_shape:?} ({total} elements) to {shape:?} ({known} elements)"
            ),
        ));
    }
    Ok(out)
}

fn transpose(name: &'static str, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let r = x.rank();
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
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let st = strides(x.shape());
    let map = index_map(&out_shape, |idx| {
        idx.iter().zip(perm).map(|(&i, &p)| i * st[p]).sum()
    });
    make(name, out_shape, x.data().gather(&map))
}

/// Normalized, duplicate-free axes against `rank`.
fn unique_axes(name: &'static str, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(name, a, rank)?;
        if out.contains(&n) {
            return Err(Error::op(name, format!("axes {axes:?} repeat axis {n}")));
        }
        out.push(n);
    }
    Ok(out)
}

fn squeeze(name: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let out: Vec<usize> = match opt_input(inputs, 1) {
        None => x.shape().iter().copied().filter(|&d| d != 1).collect(),
        Some(a) => {
            let axes = unique_axes(name, &i64_values(name, "axes", a)?, x.rank())?;
            for &a in &axes {
                if x.shape()[a] != 1 {
                    return Err(Error::op(
                        name,
                        format!("cannot squeeze axis {a} of size {}", x.shape()[a]),
                    ));
                }
            }
            x.shape()
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect()
        }
    };
    make(name, out, x.data().clone())
}

fn unsqueeze(name: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let axes = i64_values(name, "axes", input(name, inputs, 1)?)?;
    let out_rank = x.rank() + axes.len();
    let axes = unique_axes(name, &axes, out_rank)?;
    make(name, unsqueezed(x.shape(), &axes), x.data().clone())
}

/// The shape of Unsqueeze: `dims` with a 1 inserted at each of `axes`
/// (checked axes of the output, whose rank is `dims.len() + axes.len()`).
pub(crate) fn unsqueezed(dims: &[usize], axes: &[usize]) -> Vec<usize> {
    let mut dims = dims.iter();
    (0..dims.len() + axes.len())
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                // The output has exactly rank(x) non-inserted axes.
                dims.next().copied().unwrap_or(1)
            }
        })
        .collect()
}

fn concat(name: &'static str, inputs: &[Option<&Tensor>], axis: i64) -> Result<Tensor> {
    let parts: Vec<&Tensor> = inputs
        .iter()
        .map(|t| t.ok_or_else(|| Error::op(name, "an input is missing")))
        .collect::<Result<_>>()?;
    let first = parts
        .first()
        .ok_or_else(|| Error::op(name, "needs at least one input"))?;
    let r = first.rank();
    if r == 0 {
        return Err(Error::op(name, "cannot concatenate scalars"));
    }
    let ax = norm_axis(name, axis, r)?;
    let mut out_shape = first.shape().to_vec();
    out_shape[ax] = 0;
    for p in &parts {
        if p.dtype() != first.dtype() {
            return Err(Error::op(
                name,
                format!("inputs mix {} and {}", first.dtype(), p.dtype()),
            ));
        }
        if p.rank() != r
            || p.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .any(|(i, (a, b))| i != ax && a != b)
        {
            return Err(Error::op(
                name,
                format!(
                    "cannot concatenate {:?} with {:?} on axis {ax}",
                    first.shape(),
                    p.shape()
                ),
            ));
        }
        out_shape[ax] += p.shape()[ax];
    }
    // The parts are copied end to end before the output is gathered.
    out_numel(name, &out_shape, 2 * first.dtype().size())?;
    let outer: usize = out_shape[..ax].iter().product();
    let inner: usize = out_shape[ax + 1..].iter().product();
    let mut picks = Vec::new();
    for o in 0..outer {
        for (pi, p) in parts.iter().enumerate() {
            let block = p.shape()[ax] * inner;
            for k in 0..block {
                picks.push((pi, o * block + k));
            }
        }
    }
    let datas: Vec<&TensorData> = parts.iter().map(|p| p.data()).collect();
    make(name, out_shape, gather_multi(name, &datas, &picks)?)
}

fn split(
    name: &'static str,
    inputs: &[Option<&Tensor>],
    axis: i64,
    n_outputs: usize,
) -> Result<Vec<Tensor>> {
    let x = input(name, inputs, 0)?;
    let ax = norm_axis(name, axis, x.rank())?;
    let dim = x.shape()[ax];
    let sizes: Vec<usize> = match opt_input(inputs, 1) {
        Some(s) => {
            let s = i64_values(name, "split", s)?;
            if s.iter().any(|&v| v < 0) || s.iter().sum::<i64>() != dim as i64 {
                return Err(Error::op(
                    name,
                    format!("split sizes {s:?} do not add up to the dim {dim}"),
                ));
            }
            if s.len() != n_outputs {
                return Err(Error::op(
                    name,
                    format!("{} split sizes for {n_outputs} outputs", s.len()),
                ));
            }
            s.iter().map(|&v| v as usize).collect()
        }
        None => split_sizes(name, dim, n_outputs)?,
    };
    let st = strides(x.shape());
    let mut outs = Vec::with_capacity(sizes.len());
    let mut offset = 0;
    for &s in &sizes {
        let mut shape = x.shape().to_vec();
        shape[ax] = s;
        let map = index_map(&shape, |idx| {
            idx.iter()
                .enumerate()
                .map(|(i, &v)| if i == ax { v + offset } else { v } * st[i])
                .sum()
        });
        outs.push(make(name, shape, x.data().gather(&map))?);
        offset += s;
    }
    Ok(outs)
}

/// Per-axis `(start, step)` and the output shape of Slice.
type SlicePlan = (Vec<(i64, i64)>, Vec<usize>);

/// Works out the [`SlicePlan`] of a Slice, validating its arguments.
pub(crate) fn slice_plan(
    name: &'static str,
    in_shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<SlicePlan> {
    let r = in_shape.len();
    if starts.len() != ends.len() {
        return Err(Error::op(
            name,
            format!("{} starts but {} ends", starts.len(), ends.len()),
        ));
    }
    let axes: Vec<usize> = match axes {
        Some(a) => {
            if a.len() != starts.len() {
                return Err(Error::op(
                    name,
                    format!("{} axes for {} starts", a.len(), starts.len()),
                ));
            }
            unique_axes(name, a, r)?
        }
        None => {
            if starts.len() > r {
                return Err(Error::op(
                    name,
                    format!("{} starts for rank {r}", starts.len()),
                ));
            }
            (0..starts.len()).collect()
        }
    };
    if let Some(s) = steps {
        if s.len() != starts.len() {
            return Err(Error::op(
                name,
                format!("{} steps for {} starts", s.len(), starts.len()),
            ));
        }
    }
    let mut plan: Vec<(i64, i64)> = vec![(0, 1); r];
    let mut out_shape = in_shape.to_vec();
    for (k, &ax) in axes.iter().enumerate() {
        let step = steps.map_or(1, |s| s[k]);
        if step == 0 {
            return Err(Error::op(name, "steps must not be 0"));
        }
        let (s, len) = slice_axis(in_shape[ax], starts[k], ends[k], step);
        plan[ax] = (s, step);
        out_shape[ax] = len;
    }
    Ok((plan, out_shape))
}

fn slice(name: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let starts = i64_values(name, "starts", input(name, inputs, 1)?)?;
    let ends = i64_values(name, "ends", input(name, inputs, 2)?)?;
    let axes = opt_input(inputs, 3)
        .map(|t| i64_values(name, "axes", t))
        .transpose()?;
    let steps = opt_input(inputs, 4)
        .map(|t| i64_values(name, "steps", t))
        .transpose()?;
    let (plan, out_shape) = slice_plan(
        name,
        x.shape(),
        &starts,
        &ends,
        axes.as_deref(),
        steps.as_deref(),
    )?;
    let st = strides(x.shape());
    let map = index_map(&out_shape, |idx| {
        idx.iter()
            .enumerate()
            .map(|(i, &v)| {
                let (s, step) = plan[i];
                // In bounds: slice_axis clamps start and length to the dim.
                (s + v as i64 * step) as usize * st[i]
            })
            .sum()
    });
    make(name, out_shape, x.data().gather(&map))
}

fn gather(name: &'static str, inputs: &[Option<&Tensor>], axis: i64) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let ind = input(name, inputs, 1)?;
    if !matches!(ind.dtype(), DType::I32 | DType::I64) {
        return Err(Error::op(
            name,
            format!("indices must be i32 or i64, got {}", ind.dtype()),
        ));
    }
    let r = x.rank();
    let ax = norm_axis(name, axis, r)?;
    let dim = x.shape()[ax];
    let idx: Vec<usize> = i64_values(name, "indices", ind)?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            if j < 0 || j >= dim as i64 {
                Err(Error::op(
                    name,
                    format!("index {i} is out of range for a dim of {dim}"),
                ))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_>>()?;
    let mut out_shape = x.shape()[..ax].to_vec();
    out_shape.extend_from_slice(ind.shape());
    out_shape.extend_from_slice(&x.shape()[ax + 1..]);
    out_numel(name, &out_shape, x.dtype().size())?;
    let st = strides(x.shape());
    let q = ind.rank();
    let ist = strides(ind.shape());
    let map = index_map(&out_shape, |o| {
        let mut flat = 0;
        for (i, &v) in o[..ax].iter().enumerate() {
            flat += v * st[i];
        }
        let k: usize = o[ax..ax + q].iter().zip(&ist).map(|(a, b)| a * b).sum();
        flat += idx[k] * st[ax];
        for (i, &v) in o[ax + q..].iter().enumerate() {
            flat += v * st[ax + 1 + i];
        }
        flat
    });
    make(name, out_shape, x.data().gather(&map))
}

/// Non-negative sizes from a shape-like input.
fn sizes(name: &'static str, what: &str, t: &Tensor) -> Result<Vec<usize>> {
    i64_values(name, what, t)?
        .into_iter()
        .map(|v| {
            usize::try_from(v)
                .map_err(|_| Error::op(name, format!("{what} has a negative entry {v}")))
        })
        .collect()
}

fn constant_of_shape(
    name: &'static str,
    inputs: &[Option<&Tensor>],
    value: &Tensor,
) -> Result<Tensor> {
    let shape = sizes(name, "shape", input(name, inputs, 0)?)?;
    if value.numel() != 1 {
        return Err(Error::op(
            name,
            format!("value must hold one element, it holds {}", value.numel()),
        ));
    }
    let n = out_numel(name, &shape, value.dtype().size())?;
    make(name, shape, value.data().gather(&vec![0; n]))
}

fn expand(name: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let shape = sizes(name, "shape", input(name, inputs, 1)?)?;
    let out = broadcast_shape(x.shape(), &shape).ok_or_else(|| {
        Error::op(
            name,
            format!("cannot broadcast {:?} to {shape:?}", x.shape()),
        )
    })?;
    out_numel(name, &out, x.dtype().size())?;
    let map = broadcast_index_map(x.shape(), &out);
    make(name, out, x.data().gather(&map))
}

fn tile(name: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let reps = sizes(name, "repeats", input(name, inputs, 1)?)?;
    if reps.len() != x.rank() {
        return Err(Error::op(
            name,
            format!("{} repeats for rank {}", reps.len(), x.rank()),
        ));
    }
    let out: Vec<usize> = x
        .shape()
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| d.checked_mul(r))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::op(name, "the output shape overflows"))?;
    out_numel(name, &out, x.dtype().size())?;
    let st = strides(x.shape());
    let map = index_map(&out, |o| {
        o.iter()
            .enumerate()
            .map(|(i, &v)| (v % x.shape()[i]) * st[i])
            .sum()
    });
    make(name, out, x.data().gather(&map))
}

fn dropout(
    name: &'static str,
    inputs: &[Option<&Tensor>],
    n_outputs: usize,
) -> Result<Vec<Tensor>> {
    let x = input(name, inputs, 0)?;
    if let Some(t) = opt_input(inputs, 2) {
        let on = t.to_f64_vec().first().is_some_and(|&v| v != 0.0);
        // Training with a zero ratio drops nothing: the same as inference.
        let zero_ratio =
            opt_input(inputs, 1).is_some_and(|r| r.to_f64_vec().first().is_some_and(|&v| v == 0.0));
        if on && !zero_ratio {
            return Err(Error::op(name, "training mode is not supported"));
        }
    }
    let mut outs = vec![x.clone()];
    if n_outputs >= 2 {
        outs.push(make(
            name,
            x.shape().to_vec(),
            TensorData::Bool(vec![true; x.numel()]),
        )?);
    }
    Ok(outs)
}

/// Per-axis `(begin, end)` pads of Pad, negative to crop.
pub(crate) fn pad_amounts(
    name: &'static str,
    rank: usize,
    pads: &[i64],
    axes: Option<&[i64]>,
) -> Result<Vec<(i64, i64)>> {
    let axes: Vec<usize> = match axes {
        Some(a) => unique_axes(name, a, rank)?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(Error::op(
            name,
            format!(
                "{} pads for {} axes (needs twice as many)",
                pads.len(),
                axes.len()
            ),
        ));
    }
    let mut out = vec![(0, 0); rank];
    for (k, &a) in axes.iter().enumerate() {
        out[a] = (pads[k], pads[axes.len() + k]);
    }
    Ok(out)
}

fn pad(name: &'static str, inputs: &[Option<&Tensor>], mode: PadMode) -> Result<Tensor> {
    let x = input(name, inputs, 0)?;
    let pads = i64_values(name, "pads", input(name, inputs, 1)?)?;
    let axes = opt_input(inputs, 3)
        .map(|t| i64_values(name, "axes", t))
        .transpose()?;
    let amounts = pad_amounts(name, x.rank(), &pads, axes.as_deref())?;
    let mut out_shape = Vec::with_capacity(x.rank());
    for (&d, &(b, e)) in x.shape().iter().zip(&amounts) {
        let n = (d as i64).checked_add(b).and_then(|v| v.checked_add(e));
        match n {
            Some(n) if n >= 0 => out_shape.push(n as usize),
            _ => {
                return Err(Error::op(
                    name,
                    format!("pads ({b}, {e}) do not fit a dim of {d}"),
                ))
            }
        }
    }
    let n = out_numel(name, &out_shape, x.dtype().size())?;
    let fill = match opt_input(inputs, 2) {
        Some(c) if c.numel() > 0 => {
            if c.dtype() != x.dtype() {
                return Err(Error::op(
                    name,
                    format!("constant_value is {} but data is {}", c.dtype(), x.dtype()),
                ));
            }
            c.data().gather(&[0])
        }
        _ => TensorData::zeros(x.dtype(), 1),
    };
    if mode != PadMode::Constant && n > 0 && x.shape().contains(&0) {
        return Err(Error::op(
            name,
            format!("{mode:?} padding needs a non-empty input"),
        ));
    }
    let st = strides(x.shape());
    let mut picks = Vec::with_capacity(n);
    let mut idx = vec![0usize; out_shape.len()];
    for _ in 0..n {
        let mut flat = Some(0usize);
        for (i, &o) in idx.iter().enumerate() {
            let d = x.shape()[i] as i64;
            let src = o as i64 - amounts[i].0;
            let src = if (0..d).contains(&src) {
                Some(src)
            } else {
                match mode {
                    PadMode::Constant => None,
                    PadMode::Edge => Some(src.clamp(0, d - 1)),
                    PadMode::Wrap => Some(src.rem_euclid(d)),
                    PadMode::Reflect => {
                        if d == 1 {
                            Some(0)
                        } else {
                            let period = 2 * (d - 1);
                            let m = src.rem_euclid(period);
                            Some(if m < d { m } else { period - m })
                        }
                    }
                }
            };
            flat = match (flat, src) {
                (Some(f), Some(s)) => Some(f + s as usize * st[i]),
                _ => None,
            };
        }
        picks.push(flat.map_or((1, 0), |f| (0, f)));
        for ax in (0..out_shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    make(
        name,
        out_shape,
        gather_multi(name, &[x.data(), &fill], &picks)?,
    )
}

fn range(name: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let s = input(name, inputs, 0)?;
    let l = input(name, inputs, 1)?;
    let d = input(name, inputs, 2)?;
    let dt = s.dtype();
    for t in [s, l, d] {
        if t.numel() != 1 {
            return Err(Error::op(
                name,
                format!(
                    "start, limit and delta must be scalars, got shape {:?}",
                    t.shape()
                ),
            ));
        }
        if t.dtype() != dt {
            return Err(Error::op(
                name,
                format!("start, limit and delta mix {dt} and {}", t.dtype()),
            ));
        }
    }
    let data = match dt {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
            let (a, b, c) = (s.to_f64_vec()[0], l.to_f64_vec()[0], d.to_f64_vec()[0]);
            let n = range_len_f64(name, a, b, c)?;
            out_numel(name, &[n], dt.size())?;
            // Like numpy's arange: computed in f64, then narrowed. f16 and
            // bf16 go through f32, Range's default `stash_type`.
            let f32s = || (0..n).map(|i| (a + i as f64 * c) as f32);
            match dt {
                DType::F64 => TensorData::F64((0..n).map(|i| a + i as f64 * c).collect()),
                DType::F16 => TensorData::F16(f32s().map(half::f16::from_f32).collect()),
                DType::BF16 => TensorData::BF16(f32s().map(half::bf16::from_f32).collect()),
                _ => TensorData::F32(f32s().collect()),
            }
        }
        DType::I16 | DType::I32 | DType::I64 => {
            let get = |t: &Tensor| i64_values(name, "range bound", t).map(|v| v[0]);
            let (a, b, c) = (get(s)?, get(l)?, get(d)?);
            let n = range_len_i64(name, a, b, c)?;
            out_numel(name, &[n], dt.size())?;
            // Every element lies between start and limit, so it fits the dtype.
            let vals = (0..n as i64).map(move |i| a + i * c);
            match dt {
                DType::I16 => TensorData::I16(vals.map(|v| v as i16).collect()),
                DType::I32 => TensorData::I32(vals.map(|v| v as i32).collect()),
                _ => TensorData::I64(vals.collect()),
            }
        }
        other => {
            return Err(Error::op(
                name,
                format!(
                "start, limit and delta must be f32, f64, f16, bf16, i16, i32 or i64, got {other}"
            ),
            ))
        }
    };
    let n = data.len();
    make(name, vec![n], data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::PadMode;

    fn f(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    }
    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        f(shape, (0..n).map(|i| i as f32).collect())
    }
    fn i(v: &[i64]) -> Tensor {
        Tensor::vec_i64(v.to_vec())
    }
    fn run1(op: Op, ins: &[Option<&Tensor>]) -> Result<Tensor> {
        eval(&op, ins, 1).map(|mut v| v.remove(0))
    }
    fn vals(t: &Tensor) -> Vec<f32> {
        t.to_f32_vec()
    }

    #[test]
    fn flatten_and_reshape() {
        let x = iota(&[2, 3, 4]);
        let y = run1(Op::Flatten { axis: -1 }, &[Some(&x)]).unwrap();
        assert_eq!(y.shape(), &[6, 4]);
        let y = run1(Op::Flatten { axis: 0 }, &[Some(&x)]).unwrap();
        assert_eq!(y.shape(), &[1, 24]);
        assert!(run1(Op::Flatten { axis: 4 }, &[Some(&x)]).is_err());
        let r = |s: &[i64], z| run1(Op::Reshape { allowzero: z }, &[Some(&x), Some(&i(s))]);
        assert_eq!(r(&[0, -1], false).unwrap().shape(), &[2, 12]);
        assert_eq!(r(&[4, 0, 2], false).unwrap().shape(), &[4, 3, 2]);
        assert!(r(&[-1, -1], false).is_err());
        assert!(r(&[5, -1], false).is_err());
        assert!(r(&[2, 3, 5], false).is_err());
        assert!(r(&[0, 24], true).is_err());
        let e = f(&[0, 3], vec![]);
        let y = run1(
            Op::Reshape { allowzero: true },
            &[Some(&e), Some(&i(&[3, 0]))],
        )
        .unwrap();
        assert_eq!(y.shape(), &[3, 0]);
    }

    #[test]
    fn transpose_moves_elements() {
        let x = iota(&[2, 3]);
        let y = run1(Op::Transpose { perm: vec![1, 0] }, &[Some(&x)]).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(vals(&y), vec![0., 3., 1., 4., 2., 5.]);
        let x = iota(&[2, 3, 4]);
        let y = run1(
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[Some(&x)],
        )
        .unwrap();
        assert_eq!(y.shape(), &[4, 2, 3]);
        // y[1][1][2] = x[1][2][1] = 12 + 8 + 1
        assert_eq!(vals(&y)[6 + 3 + 2], 21.0);
        assert!(run1(
            Op::Transpose {
                perm: vec![0, 0, 1]
            },
            &[Some(&x)]
        )
        .is_err());
    }

    #[test]
    fn squeeze_unsqueeze() {
        let x = iota(&[1, 3, 1]);
        assert_eq!(run1(Op::Squeeze, &[Some(&x)]).unwrap().shape(), &[3]);
        let y = run1(Op::Squeeze, &[Some(&x), Some(&i(&[-1]))]).unwrap();
        assert_eq!(y.shape(), &[1, 3]);
        assert!(run1(Op::Squeeze, &[Some(&x), Some(&i(&[1]))]).is_err());
        let y = run1(Op::Unsqueeze, &[Some(&x), Some(&i(&[0, -1]))]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 1, 1]);
        let s = Tensor::scalar_f32(2.0);
        let y = run1(Op::Unsqueeze, &[Some(&s), Some(&i(&[0]))]).unwrap();
        assert_eq!(y.shape(), &[1]);
        assert!(run1(Op::Unsqueeze, &[Some(&x), Some(&i(&[1, 1]))]).is_err());
        assert!(run1(Op::Unsqueeze, &[Some(&x), Some(&i(&[5]))]).is_err());
    }

    #[test]
    fn concat_and_split() {
        let a = iota(&[2, 2]);
        let b = f(&[2, 1], vec![9., 8.]);
        let y = run1(Op::Concat { axis: -1 }, &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(vals(&y), vec![0., 1., 9., 2., 3., 8.]);
        assert!(run1(Op::Concat { axis: 0 }, &[Some(&a), Some(&b)]).is_err());
        let ints = i(&[1, 2]);
        assert!(run1(Op::Concat { axis: 0 }, &[Some(&a), Some(&ints)]).is_err());

        let x = iota(&[7]);
        let op = Op::Split {
            axis: 0,
            num_outputs: 3,
        };
        let outs = eval(&op, &[Some(&x)], 3).unwrap();
        let shapes: Vec<_> = outs.iter().map(|t| t.shape().to_vec()).collect();
        assert_eq!(shapes, vec![vec![3], vec![3], vec![1]]);
        assert_eq!(vals(&outs[2]), vec![6.]);
        let x = iota(&[2, 4]);
        let op = Op::Split {
            axis: 1,
            num_outputs: 2,
        };
        let outs = eval(&op, &[Some(&x), Some(&i(&[1, 3]))], 2).unwrap();
        assert_eq!(vals(&outs[0]), vec![0., 4.]);
        assert_eq!(vals(&outs[1]), vec![1., 2., 3., 5., 6., 7.]);
        assert!(eval(&op, &[Some(&x), Some(&i(&[1, 2]))], 2).is_err());
    }

    #[test]
    fn slice_follows_numpy() {
        let x = iota(&[3, 4]);
        let s = |st: &[i64], en: &[i64], ax: Option<&[i64]>, sp: Option<&[i64]>| {
            let (st, en) = (i(st), i(en));
            let ax = ax.map(i);
            let sp = sp.map(i);
            run1(
                Op::Slice,
                &[Some(&x), Some(&st), Some(&en), ax.as_ref(), sp.as_ref()],
            )
        };
        let y = s(&[1, 0], &[2, 3], None, None).unwrap();
        assert_eq!(vals(&y), vec![4., 5., 6.]);
        // x[:, ::-2] with INT_MAX-style bounds
        let y = s(&[-1], &[i64::MIN], Some(&[1]), Some(&[-2])).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(vals(&y), vec![3., 1., 7., 5., 11., 9.]);
        let y = s(&[1], &[i64::MAX], Some(&[-2]), None).unwrap();
        assert_eq!(y.shape(), &[2, 4]);
        let y = s(&[10], &[20], Some(&[0]), None).unwrap();
        assert_eq!(y.shape(), &[0, 4]);
        assert!(s(&[0], &[1], Some(&[0]), Some(&[0])).is_err());
        assert!(s(&[0, 0], &[1, 1], Some(&[0, 0]), None).is_err());
    }

    #[test]
    fn gather_any_rank() {
        let x = iota(&[3, 2]);
        let ind = i(&[2, -3]);
        let y = run1(Op::Gather { axis: 0 }, &[Some(&x), Some(&ind)]).unwrap();
        assert_eq!(vals(&y), vec![4., 5., 0., 1.]);
        let ind = Tensor::new(vec![2, 2], TensorData::I32(vec![1, 0, 0, 1])).unwrap();
        let y = run1(Op::Gather { axis: 1 }, &[Some(&x), Some(&ind)]).unwrap();
        assert_eq!(y.shape(), &[3, 2, 2]);
        assert_eq!(&vals(&y)[..4], &[1., 0., 0., 1.]);
        let sc = Tensor::scalar_i64(1);
        let y = run1(Op::Gather { axis: 0 }, &[Some(&x), Some(&sc)]).unwrap();
        assert_eq!(y.shape(), &[2]);
        assert!(run1(Op::Gather { axis: 0 }, &[Some(&x), Some(&i(&[3]))]).is_err());
        assert!(run1(Op::Gather { axis: 2 }, &[Some(&x), Some(&i(&[0]))]).is_err());
    }

    #[test]
    fn shape_size_constant_of_shape() {
        let x = iota(&[2, 3, 4]);
        let sh = |s, e| run1(Op::Shape { start: s, end: e }, &[Some(&x)]).unwrap();
        assert_eq!(sh(0, None).as_i64().unwrap(), &[2, 3, 4]);
        assert_eq!(sh(-2, None).as_i64().unwrap(), &[3, 4]);
        assert_eq!(sh(1, Some(-1)).as_i64().unwrap(), &[3]);
        assert_eq!(sh(-10, Some(10)).as_i64().unwrap(), &[2, 3, 4]);
        assert!(sh(2, Some(1)).as_i64().unwrap().is_empty());
        let n = run1(Op::Size, &[Some(&x)]).unwrap();
        assert_eq!(n.as_i64().unwrap(), &[24]);
        assert_eq!(n.rank(), 0);
        let v = Tensor::new(vec![1], TensorData::I32(vec![7])).unwrap();
        let y = run1(
            Op::ConstantOfShape { value: v.clone() },
            &[Some(&i(&[2, 0]))],
        )
        .unwrap();
        assert_eq!((y.shape(), y.dtype()), (&[2usize, 0][..], DType::I32));
        let y = run1(Op::ConstantOfShape { value: v.clone() }, &[Some(&i(&[2]))]).unwrap();
        assert!(y.data() == &TensorData::I32(vec![7, 7]));
        assert!(run1(Op::ConstantOfShape { value: v }, &[Some(&i(&[-2]))]).is_err());
    }

    #[test]
    fn expand_and_tile() {
        let x = f(&[3, 1], vec![1., 2., 3.]);
        let y = run1(Op::Expand, &[Some(&x), Some(&i(&[2, 1, 2]))]).unwrap();
        assert_eq!(y.shape(), &[2, 3, 2]);
        assert_eq!(&vals(&y)[..6], &[1., 1., 2., 2., 3., 3.]);
        // bidirectional: shape smaller than the input
        let y = run1(Op::Expand, &[Some(&x), Some(&i(&[1]))]).unwrap();
        assert_eq!(y.shape(), &[3, 1]);
        assert!(run1(Op::Expand, &[Some(&x), Some(&i(&[2, 2]))]).is_err());
        let x = f(&[2], vec![1., 2.]);
        let y = run1(Op::Tile, &[Some(&x), Some(&i(&[3]))]).unwrap();
        assert_eq!(vals(&y), vec![1., 2., 1., 2., 1., 2.]);
        assert!(run1(Op::Tile, &[Some(&x), Some(&i(&[3, 1]))]).is_err());
    }

    #[test]
    fn dropout_identity() {
        let x = iota(&[2]);
        let outs = eval(&Op::Dropout, &[Some(&x)], 2).unwrap();
        assert_eq!(outs[0], x);
        assert_eq!(outs[1].as_bool().unwrap(), &[true, true]);
        let tm = Tensor::new(vec![], TensorData::Bool(vec![true])).unwrap();
        let e = eval(&Op::Dropout, &[Some(&x), None, Some(&tm)], 1).unwrap_err();
        assert!(e.to_string().contains("training mode is not supported"));
        let zero = Tensor::scalar_f32(0.0);
        let outs = eval(&Op::Dropout, &[Some(&x), Some(&zero), Some(&tm)], 2).unwrap();
        assert_eq!(outs[0], x);
        assert_eq!(run1(Op::Identity, &[Some(&x)]).unwrap(), x);
    }

    #[test]
    fn pad_modes() {
        let x = f(&[3], vec![1., 2., 3.]);
        let p = |mode, pads: &[i64]| {
            run1(Op::Pad { mode }, &[Some(&x), Some(&i(pads))]).map(|t| vals(&t))
        };
        assert_eq!(
            p(PadMode::Constant, &[2, 1]).unwrap(),
            vec![0., 0., 1., 2., 3., 0.]
        );
        assert_eq!(
            p(PadMode::Reflect, &[2, 2]).unwrap(),
            vec![3., 2., 1., 2., 3., 2., 1.]
        );
        assert_eq!(
            p(PadMode::Edge, &[2, 1]).unwrap(),
            vec![1., 1., 1., 2., 3., 3.]
        );
        assert_eq!(
            p(PadMode::Wrap, &[2, 1]).unwrap(),
            vec![2., 3., 1., 2., 3., 1.]
        );
        assert_eq!(p(PadMode::Constant, &[-1, 1]).unwrap(), vec![2., 3., 0.]);
        assert!(p(PadMode::Constant, &[-4, 0]).is_err());
        assert!(p(PadMode::Constant, &[1]).is_err());
        // constant value and axes on a 2-D input
        let x = iota(&[2, 2]);
        let c = Tensor::scalar_f32(-1.0);
        let y = run1(
            Op::Pad {
                mode: PadMode::Constant,
            },
            &[Some(&x), Some(&i(&[1, 0])), Some(&c), Some(&i(&[-1]))],
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(vals(&y), vec![-1., 0., 1., -1., 2., 3.]);
    }

    #[test]
    fn range_counts() {
        let r = |a: Tensor, b: Tensor, c: Tensor| run1(Op::Range, &[Some(&a), Some(&b), Some(&c)]);
        let y = r(
            Tensor::scalar_i64(10),
            Tensor::scalar_i64(4),
            Tensor::scalar_i64(-3),
        )
        .unwrap();
        assert_eq!(y.as_i64().unwrap(), &[10, 7]);
        let y = r(
            Tensor::scalar_f32(1.),
            Tensor::scalar_f32(5.),
            Tensor::scalar_f32(2.),
        )
        .unwrap();
        assert_eq!(vals(&y), vec![1., 3.]);
        let y = r(
            Tensor::scalar_i64(0),
            Tensor::scalar_i64(-1),
            Tensor::scalar_i64(1),
        )
        .unwrap();
        assert_eq!(y.shape(), &[0]);
        assert!(r(
            Tensor::scalar_i64(0),
            Tensor::scalar_i64(5),
            Tensor::scalar_i64(0)
        )
        .is_err());
        let s16 = |v| Tensor::new(vec![], TensorData::I16(vec![v])).unwrap();
        let y = r(s16(0), s16(5), s16(2)).unwrap();
        assert!(y.data() == &TensorData::I16(vec![0, 2, 4]));
        // f16 and bf16 compute in f32 and round.
        // Delta 0.3 is 1229/4096 in f16 and 77/256 in bf16; the
        // last f16 value ties and rounds to even.
        for (d, want) in [
            (
                DType::F16,
                [0.0, 1229.0 / 4096.0, 1229.0 / 2048.0, 461.0 / 512.0],
            ),
            (
                DType::BF16,
                [0.0, 77.0 / 256.0, 77.0 / 128.0, 231.0 / 256.0],
            ),
        ] {
            let s = |v: f64| Tensor::new(vec![], TensorData::from_f64(d, &[v])).unwrap();
            let y = r(s(1.0), s(5.0), s(2.0)).unwrap();
            assert_eq!((y.dtype(), vals(&y)), (d, vec![1., 3.]));
            let y = r(s(0.0), s(1.0), s(0.3)).unwrap();
            assert_eq!((y.dtype(), vals(&y)), (d, want.to_vec()));
        }
        let f8 = Tensor::new(vec![], TensorData::F8E4M3FN(vec![0x38])).unwrap();
        assert!(r(f8.clone(), f8.clone(), f8).is_err());
    }
}

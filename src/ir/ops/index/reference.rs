//! Reference kernels for the ops that address elements through index
//! tensors (GatherElements, ScatterElements, GatherND, ScatterND) and for
//! CumSum, the running sum along an axis.
//!
//! Like the data-movement kernels, the gathers only work out which input
//! element each output element copies and let [`TensorData::gather`] move
//! them, so every dtype takes one path. A scatter is the same idea run
//! backwards: a list of `(destination, update)` pairs in the order ONNX
//! applies them. Without a reduction the pairs pick between the data and the
//! updates (any dtype); with one they fold the updates into a copy of the
//! data with numeric arithmetic. Every index is checked against its axis
//! (negative ones count from the end) before anything is moved.

use crate::ir::ops::array::reference::{gather_multi, out_numel};
use crate::ir::ops::math::reference::{nan_max, nan_min, with_num_type, Elem, Num};
use half::{bf16, f16};

use crate::ir::ops::util::{i64_values, input, normalize_axis, not_held, storage_only, strides};
use crate::ir::{DType, Op, ScatterReduction, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates one index or scan op.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let name = op.onnx_type();
    let x = input(name, inputs, 0)?;
    let out = match op {
        Op::GatherElements { axis } => gather_elements(name, x, input(name, inputs, 1)?, *axis)?,
        Op::ScatterElements { axis, reduction } => {
            let pairs = scatter_elements_pairs(
                name,
                x,
                input(name, inputs, 1)?,
                input(name, inputs, 2)?,
                *axis,
            )?;
            scatter(name, x, input(name, inputs, 2)?, &pairs, *reduction)?
        }
        Op::GatherND { batch_dims } => gather_nd(name, x, input(name, inputs, 1)?, *batch_dims)?,
        Op::ScatterND { reduction } => {
            let updates = input(name, inputs, 2)?;
            let pairs = scatter_nd_pairs(name, x, input(name, inputs, 1)?, updates)?;
            scatter(name, x, updates, &pairs, *reduction)?
        }
        Op::CumSum { exclusive, reverse } => {
            cum_sum(name, x, input(name, inputs, 1)?, *exclusive, *reverse)?
        }
        other => return Err(Error::Internal(not_held("index", other))),
    };
    Ok(vec![out])
}

fn make(name: &'static str, shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    Tensor::new(shape, data).map_err(|e| Error::op(name, e.to_string()))
}

/// The index values of an i32/i64 input.
fn indices(name: &'static str, t: &Tensor) -> Result<Vec<i64>> {
    if !matches!(t.dtype(), DType::I32 | DType::I64) {
        return Err(Error::op(
            name,
            format!("indices must be i32 or i64, got {}", t.dtype()),
        ));
    }
    i64_values(name, "indices", t)
}

/// `i` as a position along an axis of `dim` elements (negative counts from
/// the end).
fn position(name: &'static str, i: i64, dim: usize) -> Result<usize> {
    let j = if i < 0 { i + dim as i64 } else { i };
    if j < 0 || j >= dim as i64 {
        return Err(Error::op(
            name,
            format!("index {i} is out of range for a dim of {dim}"),
        ));
    }
    Ok(j as usize)
}

/// Calls `f(flat, multi_index)` for every element of `shape` in row-major
/// order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize]) -> Result<()>) -> Result<()> {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx)?;
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok(())
}

/// For each element of `ind` (row-major), the flat index into `data` that
/// the element addresses along `axis` (the other coordinates are its own).
fn element_targets(
    name: &'static str,
    data: &Tensor,
    ind: &Tensor,
    axis: i64,
) -> Result<Vec<usize>> {
    let r = data.rank();
    if ind.rank() != r {
        return Err(Error::op(
            name,
            format!(
                "indices of shape {:?} must have the rank of data {:?}",
                ind.shape(),
                data.shape()
            ),
        ));
    }
    let ax = normalize_axis(name, axis, r)?;
    for (a, (&i, &d)) in ind.shape().iter().zip(data.shape()).enumerate() {
        if a != ax && i > d {
            return Err(Error::op(
                name,
                format!(
                    "indices of shape {:?} do not fit data of shape {:?} on axis {a}",
                    ind.shape(),
                    data.shape()
                ),
            ));
        }
    }
    let values = indices(name, ind)?;
    let st = strides(data.shape());
    let dim = data.shape()[ax];
    let mut out = Vec::with_capacity(values.len());
    for_each_index(ind.shape(), |flat, m| {
        let mut off = 0;
        for (a, (&c, &s)) in m.iter().zip(&st).enumerate() {
            off += if a == ax {
                position(name, values[flat], dim)?
            } else {
                c
            } * s;
        }
        out.push(off);
        Ok(())
    })?;
    Ok(out)
}

fn gather_elements(name: &'static str, data: &Tensor, ind: &Tensor, axis: i64) -> Result<Tensor> {
    let targets = element_targets(name, data, ind, axis)?;
    make(name, ind.shape().to_vec(), data.data().gather(&targets))
}

fn scatter_elements_pairs(
    name: &'static str,
    data: &Tensor,
    ind: &Tensor,
    updates: &Tensor,
    axis: i64,
) -> Result<Vec<(usize, usize)>> {
    if updates.shape() != ind.shape() {
        return Err(Error::op(
            name,
            format!(
                "updates of shape {:?} must have the shape of indices {:?}",
                updates.shape(),
                ind.shape()
            ),
        ));
    }
    let targets = element_targets(name, data, ind, axis)?;
    Ok(targets
        .into_iter()
        .enumerate()
        .map(|(u, d)| (d, u))
        .collect())
}

/// Splits `indices` of GatherND/ScatterND into its index tuples: the tuple
/// length `k` (its last dim) and the tuples' count.
fn tuples(name: &'static str, ind: &Tensor, data_rank: usize) -> Result<(usize, usize)> {
    let Some((&k, lead)) = ind.shape().split_last() else {
        return Err(Error::op(name, "indices must have rank >= 1"));
    };
    if k > data_rank {
        return Err(Error::op(
            name,
            format!("index tuples of length {k} are longer than the data's rank {data_rank}"),
        ));
    }
    Ok((k, lead.iter().product()))
}

/// Flat offset into `data` of the slice an index tuple addresses, the tuple
/// indexing the axes from `first_axis` on.
fn tuple_offset(
    name: &'static str,
    tuple: &[i64],
    shape: &[usize],
    st: &[usize],
    first_axis: usize,
) -> Result<usize> {
    let mut off = 0;
    for (j, &i) in tuple.iter().enumerate() {
        let a = first_axis + j;
        off += position(name, i, shape[a])? * st[a];
    }
    Ok(off)
}

fn gather_nd(name: &'static str, data: &Tensor, ind: &Tensor, batch_dims: usize) -> Result<Tensor> {
    let (ds, is) = (data.shape(), ind.shape());
    if batch_dims >= is.len() || batch_dims >= ds.len() || is[..batch_dims] != ds[..batch_dims] {
        return Err(Error::op(
            name,
            format!("indices of shape {is:?} with batch_dims {batch_dims} do not fit data of shape {ds:?}"),
        ));
    }
    let (k, _) = tuples(name, ind, ds.len() - batch_dims)?;
    let values = indices(name, ind)?;
    let batches: usize = ds[..batch_dims].iter().product();
    let batch_stride: usize = ds[batch_dims..].iter().product();
    let slice: usize = ds[batch_dims + k..].iter().product();
    let per_batch = (values.len() / k.max(1)).checked_div(batches).unwrap_or(0);
    let mut out_shape = is[..is.len() - 1].to_vec();
    out_shape.extend_from_slice(&ds[batch_dims + k..]);
    out_numel(name, &out_shape, data.dtype().size())?;
    let st = strides(ds);
    let mut picks = Vec::with_capacity(batches * per_batch * slice);
    for b in 0..batches {
        for t in 0..per_batch {
            let at = (b * per_batch + t) * k;
            let base =
                b * batch_stride + tuple_offset(name, &values[at..at + k], ds, &st, batch_dims)?;
            picks.extend(base..base + slice);
        }
    }
    make(name, out_shape, data.data().gather(&picks))
}

fn scatter_nd_pairs(
    name: &'static str,
    data: &Tensor,
    ind: &Tensor,
    updates: &Tensor,
) -> Result<Vec<(usize, usize)>> {
    let ds = data.shape();
    let (k, n) = tuples(name, ind, ds.len())?;
    let mut want = ind.shape()[..ind.rank() - 1].to_vec();
    want.extend_from_slice(&ds[k..]);
    if updates.shape() != want.as_slice() {
        return Err(Error::op(
            name,
            format!(
                "updates of shape {:?} must have shape {want:?} (indices {:?}, data {ds:?})",
                updates.shape(),
                ind.shape()
            ),
        ));
    }
    let values = indices(name, ind)?;
    let slice: usize = ds[k..].iter().product();
    let st = strides(ds);
    let mut pairs = Vec::with_capacity(n * slice);
    for t in 0..n {
        let base = tuple_offset(name, &values[t * k..t * k + k], ds, &st, 0)?;
        pairs.extend((0..slice).map(|s| (base + s, t * slice + s)));
    }
    Ok(pairs)
}

/// A copy of `data` with `updates[u]` combined into element `d` for every
/// `(d, u)` pair, in order.
fn scatter(
    name: &'static str,
    data: &Tensor,
    updates: &Tensor,
    pairs: &[(usize, usize)],
    how: ScatterReduction,
) -> Result<Tensor> {
    if updates.dtype() != data.dtype() {
        return Err(Error::op(
            name,
            format!(
                "updates ({}) must have the dtype of data ({})",
                updates.dtype(),
                data.dtype()
            ),
        ));
    }
    let out = if how == ScatterReduction::None {
        let mut picks: Vec<(usize, usize)> = (0..data.numel()).map(|i| (0, i)).collect();
        for &(d, u) in pairs {
            picks[d] = (1, u);
        }
        gather_multi(name, &[data.data(), updates.data()], &picks)?
    } else {
        with_num_type!(name, data.dtype(), T => {
            // Invariant: both dtypes are T (checked above).
            let mut acc = T::slice(data.data()).map(<[T]>::to_vec).unwrap_or_default();
            let src = T::slice(updates.data()).unwrap_or_default();
            for &(d, u) in pairs {
                let (a, b) = (acc[d], src[u]);
                acc[d] = match how {
                    ScatterReduction::Add => a.add(b),
                    ScatterReduction::Mul => a.mul(b),
                    ScatterReduction::Max => nan_max(a, b),
                    ScatterReduction::Min => nan_min(a, b),
                    ScatterReduction::None => b,
                };
            }
            T::wrap(acc)
        }, bool => return Err(Error::op(name, format!("reduction '{}' does not take bool data", how.name()))))
    };
    make(name, data.shape().to_vec(), out)
}

fn cum_sum(
    name: &'static str,
    x: &Tensor,
    axis: &Tensor,
    exclusive: bool,
    reverse: bool,
) -> Result<Tensor> {
    let a = match i64_values(name, "axis", axis)?.as_slice() {
        [a] if matches!(axis.dtype(), DType::I32 | DType::I64) => *a,
        _ => {
            return Err(Error::op(
                name,
                format!("axis must be one i32 or i64 value, got {:?}", axis.shape()),
            ))
        }
    };
    let ax = normalize_axis(name, a, x.rank())?;
    let sh = x.shape();
    let (outer, len, inner) = (
        sh[..ax].iter().product::<usize>(),
        sh[ax],
        sh[ax + 1..].iter().product::<usize>(),
    );
    let data = with_num_type!(name, x.dtype(), T => {
        // Invariant: the slice has x's dtype, T.
        let v = T::slice(x.data()).unwrap_or_default();
        let mut out = v.to_vec();
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + if reverse { len - 1 - j } else { j }) * inner + i;
                let mut sum: Option<T> = None;
                for j in 0..len {
                    let e = v[at(j)];
                    let next = match sum { Some(s) => s.add(e), None => e };
                    out[at(j)] = match (exclusive, sum) {
                        (false, _) => next,
                        (true, Some(s)) => s,
                        (true, None) => T::from_f64(0.0),
                    };
                    sum = Some(next);
                }
            }
        }
        T::wrap(out)
    }, bool => return Err(Error::op(name, "bool input is not supported")));
    make(name, sh.to_vec(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::from_i64(shape.to_vec(), v.to_vec()).unwrap()
    }

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    fn run(op: Op, ins: &[&Tensor]) -> Result<Tensor> {
        let refs: Vec<Option<&Tensor>> = ins.iter().map(|t| Some(*t)).collect();
        eval(&op, &refs).map(|mut v| v.remove(0))
    }

    #[test]
    fn gather_and_scatter_elements_follow_the_spec_examples() {
        let data = f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let ind = i64s(&[2, 2], &[0, 0, 1, 0]);
        let y = run(Op::GatherElements { axis: 1 }, &[&data, &ind]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [1.0, 1.0, 4.0, 3.0]);
        let data = f32s(&[1, 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let ind = i64s(&[1, 2], &[1, -2]);
        let upd = f32s(&[1, 2], &[1.1, 2.1]);
        let op = |reduction| Op::ScatterElements { axis: 1, reduction };
        let y = run(op(ScatterReduction::None), &[&data, &ind, &upd]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [1.0, 1.1, 3.0, 2.1, 5.0]);
        let dup = i64s(&[1, 2], &[1, 1]);
        let y = run(op(ScatterReduction::Add), &[&data, &dup, &upd]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [1.0, 5.2, 3.0, 4.0, 5.0]);
        let y = run(op(ScatterReduction::Max), &[&data, &dup, &upd]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [1.0, 2.1, 3.0, 4.0, 5.0]);
        let bad = i64s(&[1, 2], &[5, 0]);
        let e = run(op(ScatterReduction::None), &[&data, &bad, &upd]).unwrap_err();
        assert!(e.to_string().contains("index 5 is out of range"), "{e}");
    }

    #[test]
    fn gather_nd_with_and_without_batch_dims() {
        let data = i64s(&[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]);
        let ind = i64s(&[2, 2], &[0, 1, 1, 0]);
        let y = run(Op::GatherND { batch_dims: 0 }, &[&data, &ind]).unwrap();
        assert_eq!(y.shape(), [2, 2]);
        assert_eq!(y.as_i64().unwrap(), [2, 3, 4, 5]);
        let ind = i64s(&[2, 1], &[1, 0]);
        let y = run(Op::GatherND { batch_dims: 1 }, &[&data, &ind]).unwrap();
        assert_eq!(y.shape(), [2, 2]);
        assert_eq!(y.as_i64().unwrap(), [2, 3, 4, 5]);
    }

    #[test]
    fn scatter_nd_replaces_and_multiplies_slices() {
        let data = i64s(&[4], &[1, 2, 3, 4]);
        let ind = i64s(&[2, 1], &[3, 1]);
        let upd = i64s(&[2], &[9, 10]);
        let op = |reduction| Op::ScatterND { reduction };
        let y = run(op(ScatterReduction::None), &[&data, &ind, &upd]).unwrap();
        assert_eq!(y.as_i64().unwrap(), [1, 10, 3, 9]);
        let y = run(op(ScatterReduction::Mul), &[&data, &ind, &upd]).unwrap();
        assert_eq!(y.as_i64().unwrap(), [1, 20, 3, 36]);
        let wrong = i64s(&[3], &[1, 2, 3]);
        assert!(run(op(ScatterReduction::None), &[&data, &ind, &wrong]).is_err());
    }

    #[test]
    fn cum_sum_exclusive_and_reverse() {
        let x = f32s(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ax = Tensor::scalar_i64(1);
        let op = |exclusive, reverse| Op::CumSum { exclusive, reverse };
        let y = run(op(false, false), &[&x, &ax]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [1.0, 3.0, 6.0, 4.0, 9.0, 15.0]);
        let y = run(op(true, false), &[&x, &ax]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [0.0, 1.0, 3.0, 0.0, 4.0, 9.0]);
        let y = run(op(false, true), &[&x, &ax]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [6.0, 5.0, 3.0, 15.0, 11.0, 6.0]);
        let y = run(op(true, true), &[&x, &Tensor::scalar_i64(-1)]).unwrap();
        assert_eq!(y.as_f32().unwrap(), [5.0, 3.0, 0.0, 11.0, 6.0, 0.0]);
        let ids = i64s(&[1, 4], &[1, 1, 0, 1]);
        let y = run(op(false, false), &[&ids, &ax]).unwrap();
        assert_eq!(y.as_i64().unwrap(), [1, 2, 2, 3]);
    }
}

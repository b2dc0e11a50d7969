//! Reductions: ReduceMean/Sum/Max/Min/Prod/L1/L2/SumSquare/LogSumExp,
//! ArgMax/ArgMin, Softmax/LogSoftmax and Hardmax.
//!
//! Values are lifted into an exact wide domain first: floats (f16, f32, f64)
//! to f64, integers to i128, bools stay bools. Every input element is mapped
//! to the flat index of the output element it reduces into, and a plain
//! accumulator array folds them in input order; the result is narrowed back to
//! the input's dtype (integers wrap like the ONNX reference's fixed-width
//! arithmetic, floats round). A reduction over an empty set yields the
//! operator's identity (0 for sums, 1 for Prod, -inf / the dtype's minimum for
//! Max, +inf / the maximum for Min, -inf for LogSumExp, NaN for a float Mean).

use half::f16;

use crate::ir::ops::util::{i64_values, input, normalize_axis, not_held, opt_input};
use crate::ir::{DType, Op, ReduceOp, Tensor, TensorData};
use crate::{Error, Result};

/// `y` with its NaN elements made 0 (Softmax's `nan_to_zero`).
fn zero_nans(y: Tensor) -> Tensor {
    match y.as_f32() {
        Some(v) => {
            let v = v
                .iter()
                .map(|&e| if e.is_nan() { 0.0 } else { e })
                .collect();
            Tensor::from_f32(y.shape().to_vec(), v).unwrap_or(y)
        }
        None => {
            let v: Vec<f64> = y
                .to_f64_vec()
                .into_iter()
                .map(|e| if e.is_nan() { 0.0 } else { e })
                .collect();
            let data = crate::ir::TensorData::from_f64(y.dtype(), &v);
            Tensor::new(y.shape().to_vec(), data).unwrap_or(y)
        }
    }
}

/// Evaluates Reduce*, ArgMax/ArgMin, Softmax, LogSoftmax and Hardmax.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let name = op.onnx_type();
    let x = input(name, inputs, 0)?;
    let out = match op {
        Op::Reduce {
            op: r,
            keepdims,
            noop_with_empty_axes,
        } => reduce(
            name,
            *r,
            x,
            opt_input(inputs, 1),
            *keepdims,
            *noop_with_empty_axes,
        )?,
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        } => arg_extreme(name, true, x, *axis, *keepdims, *select_last_index)?,
        Op::ArgMin {
            axis,
            keepdims,
            select_last_index,
        } => arg_extreme(name, false, x, *axis, *keepdims, *select_last_index)?,
        Op::Softmax {
            axis,
            legacy,
            nan_to_zero,
        } => {
            let y = softmax(name, x, *axis, *legacy, false)?;
            if *nan_to_zero {
                zero_nans(y)
            } else {
                y
            }
        }
        Op::LogSoftmax { axis, legacy } => softmax(name, x, *axis, *legacy, true)?,
        Op::Hardmax { axis } => hardmax(name, x, *axis)?,
        other => return Err(Error::Internal(not_held("reduce", other))),
    };
    Ok(vec![out])
}

/// Tensor elements lifted into an exact wide domain.
enum Vals {
    F(Vec<f64>),
    I(Vec<i128>),
    B(Vec<bool>),
}

fn lift(t: &Tensor) -> Vals {
    match t.data() {
        TensorData::Bool(v) => Vals::B(v.clone()),
        TensorData::I8(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::I16(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::I32(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::I64(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::U8(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::U16(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::U32(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::U64(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::I4(v) | TensorData::I2(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        TensorData::U4(v) | TensorData::U2(v) => Vals::I(v.iter().map(|&x| x as i128).collect()),
        // Every float format, decoded exactly.
        _ => Vals::F(t.to_f64_vec()),
    }
}

/// f64 values narrowed to a float dtype (rounding), or to an integer dtype
/// with `as` semantics (truncation toward zero, saturation).
fn lower_f64(dt: DType, v: Vec<f64>) -> TensorData {
    match dt {
        DType::F32 => TensorData::F32(v.into_iter().map(|x| x as f32).collect()),
        DType::F64 => TensorData::F64(v),
        DType::F16 => TensorData::F16(v.into_iter().map(f16::from_f64).collect()),
        // bf16 and the storage-only types (which the kernels refuse first).
        d if d == DType::BF16 || d.is_storage_only() => TensorData::from_f64(d, &v),
        _ => lower_i128(dt, v.into_iter().map(|x| x as i128).collect()),
    }
}

/// i128 values narrowed to an integer dtype with two's-complement wrapping.
fn lower_i128(dt: DType, v: Vec<i128>) -> TensorData {
    match dt {
        DType::I8 => TensorData::I8(v.into_iter().map(|x| x as i8).collect()),
        DType::I16 => TensorData::I16(v.into_iter().map(|x| x as i16).collect()),
        DType::I32 => TensorData::I32(v.into_iter().map(|x| x as i32).collect()),
        DType::I64 => TensorData::I64(v.into_iter().map(|x| x as i64).collect()),
        DType::U8 => TensorData::U8(v.into_iter().map(|x| x as u8).collect()),
        DType::U16 => TensorData::U16(v.into_iter().map(|x| x as u16).collect()),
        DType::U32 => TensorData::U32(v.into_iter().map(|x| x as u32).collect()),
        DType::U64 => TensorData::U64(v.into_iter().map(|x| x as u64).collect()),
        DType::Bool => TensorData::Bool(v.into_iter().map(|x| x != 0).collect()),
        _ => lower_f64(dt, v.into_iter().map(|x| x as f64).collect()),
    }
}

/// Smallest and largest value of an integer dtype.
fn int_range(dt: DType) -> (i128, i128) {
    match dt {
        DType::I8 => (i8::MIN as i128, i8::MAX as i128),
        DType::I16 => (i16::MIN as i128, i16::MAX as i128),
        DType::I32 => (i32::MIN as i128, i32::MAX as i128),
        DType::I64 => (i64::MIN as i128, i64::MAX as i128),
        DType::U8 => (0, u8::MAX as i128),
        DType::U16 => (0, u16::MAX as i128),
        DType::U32 => (0, u32::MAX as i128),
        DType::U64 => (0, u64::MAX as i128),
        _ => (0, 0),
    }
}

fn tensor(op: &'static str, shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    Tensor::new(shape, data).map_err(|e| Error::op(op, format!("internal shape error: {e}")))
}

/// For every input element (row-major), the flat index of the output element
/// it reduces into, where `reduced[a]` marks the reduced axes. Also returns
/// the number of output elements.
fn reduce_map(shape: &[usize], reduced: &[bool]) -> (Vec<usize>, usize) {
    let rank = shape.len();
    // Output strides over the kept axes; reduced axes contribute 0.
    let mut out_stride = vec![0usize; rank];
    let mut n_out = 1usize;
    for a in (0..rank).rev() {
        if !reduced[a] {
            out_stride[a] = n_out;
            n_out *= shape[a];
        }
    }
    let n_in: usize = shape.iter().product();
    let mut map = Vec::with_capacity(n_in);
    let mut idx = vec![0usize; rank];
    let mut flat = 0usize;
    for _ in 0..n_in {
        map.push(flat);
        for a in (0..rank).rev() {
            idx[a] += 1;
            flat += out_stride[a];
            if idx[a] < shape[a] {
                break;
            }
            flat -= out_stride[a] * idx[a];
            idx[a] = 0;
        }
    }
    (map, n_out)
}

/// NaN-propagating max / min on f64.
fn fmax(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn fmin(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn reduce(
    op: &'static str,
    r: ReduceOp,
    x: &Tensor,
    axes: Option<&Tensor>,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> Result<Tensor> {
    let shape = x.shape();
    let rank = shape.len();
    let axes = match axes {
        Some(t) => i64_values(op, "axes", t)?,
        None => Vec::new(),
    };
    if axes.is_empty() && noop_with_empty_axes {
        // The spec: with empty axes and noop_with_empty_axes the output is
        // the input, unchanged.
        return Ok(x.clone());
    }
    let mut reduced = vec![axes.is_empty(); rank];
    for &a in &axes {
        let a = normalize_axis(op, a, rank)?;
        if reduced[a] {
            return Err(Error::op(op, format!("axis {a} appears twice in axes")));
        }
        reduced[a] = true;
    }
    let out_shape: Vec<usize> = (0..rank)
        .filter_map(|a| match (reduced[a], keepdims) {
            (false, _) => Some(shape[a]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    let dt = x.dtype();
    if x.numel() == 0 {
        // Every group is empty (or there are none): identity values.
        return empty_reduction(op, r, dt, out_shape);
    }
    // All dims are non-zero here, so these products are bounded by numel.
    let count: usize = (0..rank)
        .filter(|&a| reduced[a])
        .map(|a| shape[a])
        .product();
    let (map, n_out) = reduce_map(shape, &reduced);

    let data = match lift(x) {
        Vals::F(v) => {
            let init = match r {
                ReduceOp::Max | ReduceOp::LogSumExp => f64::NEG_INFINITY,
                ReduceOp::Min => f64::INFINITY,
                ReduceOp::Prod => 1.0,
                _ => 0.0,
            };
            let mut acc = vec![init; n_out];
            match r {
                ReduceOp::LogSumExp => {
                    // Shift by the largest finite value of each group.
                    let mut shift = vec![f64::NEG_INFINITY; n_out];
                    for (&o, &e) in map.iter().zip(&v) {
                        if e.is_finite() && e > shift[o] {
                            shift[o] = e;
                        }
                    }
                    for s in shift.iter_mut() {
                        if *s == f64::NEG_INFINITY {
                            *s = 0.0;
                        }
                    }
                    let mut sum = vec![0.0; n_out];
                    for (&o, &e) in map.iter().zip(&v) {
                        sum[o] += (e - shift[o]).exp();
                    }
                    for o in 0..n_out {
                        acc[o] = sum[o].ln() + shift[o];
                    }
                }
                _ => {
                    for (&o, &e) in map.iter().zip(&v) {
                        let a = &mut acc[o];
                        *a = match r {
                            ReduceOp::Max => fmax(*a, e),
                            ReduceOp::Min => fmin(*a, e),
                            ReduceOp::Prod => *a * e,
                            ReduceOp::L1 => *a + e.abs(),
                            ReduceOp::L2 | ReduceOp::SumSquare => *a + e * e,
                            _ => *a + e,
                        };
                    }
                    match r {
                        ReduceOp::Mean => acc.iter_mut().for_each(|a| *a /= count as f64),
                        ReduceOp::L2 => acc.iter_mut().for_each(|a| *a = a.sqrt()),
                        _ => {}
                    }
                }
            }
            lower_f64(dt, acc)
        }
        Vals::I(v) => {
            let (lo, hi) = int_range(dt);
            let init = match r {
                ReduceOp::Max => lo,
                ReduceOp::Min => hi,
                ReduceOp::Prod => 1,
                ReduceOp::LogSumExp => {
                    return Err(Error::op(
                        op,
                        format!("integer input ({dt}) is not supported, only floating point"),
                    ))
                }
                _ => 0,
            };
            let mut acc = vec![init; n_out];
            for (&o, &e) in map.iter().zip(&v) {
                let a = &mut acc[o];
                *a = match r {
                    ReduceOp::Max => (*a).max(e),
                    ReduceOp::Min => (*a).min(e),
                    ReduceOp::Prod => a.wrapping_mul(e),
                    ReduceOp::L1 => a.wrapping_add(e.abs()),
                    ReduceOp::L2 | ReduceOp::SumSquare => a.wrapping_add(e.wrapping_mul(e)),
                    _ => a.wrapping_add(e),
                };
            }
            match r {
                ReduceOp::Mean => {
                    if count == 0 {
                        return Err(Error::op(op, "mean of an empty set of integers"));
                    }
                    // Sum in the dtype (wrapping), then divide, truncating.
                    let means = acc.into_iter().map(|s| wrap_int(dt, s) / count as i128);
                    lower_i128(dt, means.collect())
                }
                ReduceOp::L2 => lower_f64(dt, acc.into_iter().map(|a| (a as f64).sqrt()).collect()),
                _ => lower_i128(dt, acc),
            }
        }
        Vals::B(v) => {
            let init = match r {
                ReduceOp::Max => false,
                ReduceOp::Min => true,
                _ => {
                    return Err(Error::op(
                        op,
                        "bool input is only supported by ReduceMax/ReduceMin",
                    ))
                }
            };
            let mut acc = vec![init; n_out];
            for (&o, &e) in map.iter().zip(&v) {
                acc[o] = if init { acc[o] && e } else { acc[o] || e };
            }
            TensorData::Bool(acc)
        }
    };
    tensor(op, out_shape, data)
}

/// The result of reducing an empty input: the operator's identity in every
/// output element (an empty output when a kept axis has size 0).
fn empty_reduction(
    op: &'static str,
    r: ReduceOp,
    dt: DType,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let n = crate::limits::check_shape(
        || format!("{op} output of shape {out_shape:?}"),
        &out_shape,
        dt.size(),
    )?;
    let data = match dt {
        DType::Bool => match r {
            ReduceOp::Max => TensorData::Bool(vec![false; n]),
            ReduceOp::Min => TensorData::Bool(vec![true; n]),
            _ => {
                return Err(Error::op(
                    op,
                    "bool input is only supported by ReduceMax/ReduceMin",
                ))
            }
        },
        d if d.is_float() => {
            let v = match r {
                ReduceOp::Max | ReduceOp::LogSumExp => f64::NEG_INFINITY,
                ReduceOp::Min => f64::INFINITY,
                ReduceOp::Prod => 1.0,
                ReduceOp::Mean => f64::NAN,
                _ => 0.0,
            };
            lower_f64(dt, vec![v; n])
        }
        _ => {
            let (lo, hi) = int_range(dt);
            let v = match r {
                ReduceOp::Max => lo,
                ReduceOp::Min => hi,
                ReduceOp::Prod => 1,
                ReduceOp::Sum | ReduceOp::L1 | ReduceOp::L2 | ReduceOp::SumSquare => 0,
                _ if n == 0 => 0,
                _ => {
                    return Err(Error::op(
                        op,
                        format!("{op} of an empty set is undefined for integer input ({dt})"),
                    ))
                }
            };
            lower_i128(dt, vec![v; n])
        }
    };
    tensor(op, out_shape, data)
}

/// Wraps an i128 into the value range of integer dtype `dt` (two's
/// complement), as fixed-width arithmetic in that dtype would.
fn wrap_int(dt: DType, x: i128) -> i128 {
    match dt {
        DType::I8 => x as i8 as i128,
        DType::I16 => x as i16 as i128,
        DType::I32 => x as i32 as i128,
        DType::I64 => x as i64 as i128,
        DType::U8 => x as u8 as i128,
        DType::U16 => x as u16 as i128,
        DType::U32 => x as u32 as i128,
        DType::U64 => x as u64 as i128,
        _ => x,
    }
}

/// Splits `shape` at `axis` into (outer, len, inner) element counts.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

fn arg_extreme(
    op: &'static str,
    is_max: bool,
    x: &Tensor,
    axis: i64,
    keepdims: bool,
    select_last: bool,
) -> Result<Tensor> {
    let shape = x.shape();
    let a = normalize_axis(op, axis, shape.len())?;
    if shape[a] == 0 {
        return Err(Error::op(
            op,
            format!("cannot take {op} over axis {a} of size 0"),
        ));
    }
    let mut out_shape = shape.to_vec();
    if keepdims {
        out_shape[a] = 1;
    } else {
        out_shape.remove(a);
    }
    if x.numel() == 0 {
        // Another axis is empty: so is the output.
        return tensor(op, out_shape, TensorData::I64(Vec::new()));
    }
    // Compare in f64 for floats (exact for every float dtype) and as i128
    // otherwise; NaN counts as the extreme (like numpy).
    let vals: Vec<f64>;
    let ints: Vec<i128>;
    let (is_float, fv, iv): (bool, &[f64], &[i128]) = match lift(x) {
        Vals::F(v) => {
            vals = v;
            (true, &vals, &[])
        }
        Vals::I(v) => {
            ints = v;
            (false, &[], &ints)
        }
        Vals::B(v) => {
            ints = v.into_iter().map(|b| b as i128).collect();
            (false, &[], &ints)
        }
    };
    let better = |cand: usize, best: usize| -> bool {
        if is_float {
            let (c, b) = (fv[cand], fv[best]);
            if b.is_nan() {
                false
            } else if c.is_nan() {
                true
            } else if is_max {
                c > b
            } else {
                c < b
            }
        } else if is_max {
            iv[cand] > iv[best]
        } else {
            iv[cand] < iv[best]
        }
    };
    let (outer, len, inner) = split_at_axis(shape, a);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * len * inner + k * inner + i;
            let order: Box<dyn Iterator<Item = usize>> = if select_last {
                Box::new((0..len).rev())
            } else {
                Box::new(0..len)
            };
            let mut best: Option<usize> = None;
            for k in order {
                best = match best {
                    None => Some(k),
                    Some(b) if better(at(k), at(b)) => Some(k),
                    keep => keep,
                };
            }
            out.push(best.unwrap_or(0) as i64);
        }
    }
    tensor(op, out_shape, TensorData::I64(out))
}

/// Softmax / LogSoftmax. `legacy` (opset < 13) normalizes over the flattened
/// block `dims[axis..]`; otherwise over the single axis.
fn softmax(op: &'static str, x: &Tensor, axis: i64, legacy: bool, log: bool) -> Result<Tensor> {
    let dt = x.dtype();
    if !dt.is_float() {
        return Err(Error::op(
            op,
            format!("input must be floating point, got {dt}"),
        ));
    }
    let shape = x.shape();
    let a = normalize_axis(op, axis, shape.len())?;
    if x.numel() == 0 {
        return Ok(x.clone());
    }
    let (outer, len, inner) = if legacy {
        (shape[..a].iter().product(), shape[a..].iter().product(), 1)
    } else {
        split_at_axis(shape, a)
    };
    let v = x.to_f64_vec();
    let mut out = vec![0.0f64; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * len * inner + k * inner + i;
            let m = (0..len).map(|k| v[at(k)]).fold(f64::NEG_INFINITY, fmax);
            let sum: f64 = (0..len).map(|k| (v[at(k)] - m).exp()).sum();
            for k in 0..len {
                let z = v[at(k)] - m;
                out[at(k)] = if log { z - sum.ln() } else { z.exp() / sum };
            }
        }
    }
    tensor(op, shape.to_vec(), lower_f64(dt, out))
}

/// Hardmax: the one-hot of ArgMax along `axis` (the first maximum; NaN
/// counts as the maximum), in the input's type.
fn hardmax(op: &'static str, x: &Tensor, axis: i64) -> Result<Tensor> {
    let dt = x.dtype();
    if !dt.is_float() {
        return Err(Error::op(
            op,
            format!("input must be floating point, got {dt}"),
        ));
    }
    let shape = x.shape();
    let a = normalize_axis(op, axis, shape.len())?;
    if x.numel() == 0 {
        return Ok(x.clone());
    }
    let first_max = arg_extreme(op, true, x, axis, true, false)?;
    let Some(at) = first_max.to_i64_vec() else {
        return Err(Error::Internal(format!("{op}: ArgMax gave no indices")));
    };
    let (outer, len, inner) = split_at_axis(shape, a);
    let mut out = vec![0.0f64; x.numel()];
    for o in 0..outer {
        for i in 0..inner {
            let k = at[o * inner + i] as usize;
            out[(o * len + k) * inner + i] = 1.0;
        }
    }
    tensor(op, shape.to_vec(), lower_f64(dt, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t_f32(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }
    fn t(shape: &[usize], d: TensorData) -> Tensor {
        Tensor::new(shape.to_vec(), d).unwrap()
    }
    fn red(
        r: ReduceOp,
        x: &Tensor,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop: bool,
    ) -> Result<Tensor> {
        let op = Op::Reduce {
            op: r,
            keepdims,
            noop_with_empty_axes: noop,
        };
        let axes = axes.map(Tensor::vec_i64);
        eval(&op, &[Some(x), axes.as_ref()]).map(|mut v| v.remove(0))
    }
    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    // data = [[[5,1],[20,2]],[[30,1],[40,2]],[[55,1],[60,2]]] (reduce tests).
    fn data3() -> Tensor {
        t_f32(
            &[3, 2, 2],
            &[5., 1., 20., 2., 30., 1., 40., 2., 55., 1., 60., 2.],
        )
    }

    #[test]
    fn reduce_axes_and_keepdims() {
        let x = data3();
        let y = red(ReduceOp::Mean, &x, Some(vec![1]), true, false).unwrap();
        assert_eq!(y.shape(), &[3, 1, 2]);
        close(y.as_f32().unwrap(), &[12.5, 1.5, 35., 1.5, 57.5, 1.5]);
        let y = red(ReduceOp::Sum, &x, Some(vec![-2]), false, false).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        close(y.as_f32().unwrap(), &[25., 3., 70., 3., 115., 3.]);
        let y = red(ReduceOp::Max, &x, None, true, false).unwrap();
        assert_eq!(y.shape(), &[1, 1, 1]);
        close(y.as_f32().unwrap(), &[60.]);
        let y = red(ReduceOp::Min, &x, Some(vec![0, 2]), false, false).unwrap();
        assert_eq!(y.shape(), &[2]);
        close(y.as_f32().unwrap(), &[1., 2.]);
        let y = red(ReduceOp::Prod, &x, Some(vec![2]), false, false).unwrap();
        close(y.as_f32().unwrap(), &[5., 40., 30., 80., 55., 120.]);
        let y = red(ReduceOp::L2, &x, Some(vec![2]), false, false).unwrap();
        close(
            y.as_f32().unwrap(),
            &[5.0990195, 20.09975, 30.016663, 40.04997, 55.00909, 60.0333],
        );
        let y = red(ReduceOp::SumSquare, &x, Some(vec![2]), false, false).unwrap();
        close(y.as_f32().unwrap(), &[26., 404., 901., 1604., 3026., 3604.]);
        let n = t_f32(&[2, 2], &[-1., 2., -3., -4.]);
        let y = red(ReduceOp::L1, &n, Some(vec![1]), true, false).unwrap();
        close(y.as_f32().unwrap(), &[3., 7.]);
        // numpy: np.log(np.sum(np.exp(x), axis=1))
        let y = red(ReduceOp::LogSumExp, &n, Some(vec![1]), false, false).unwrap();
        close(y.as_f32().unwrap(), &[2.0485873, -2.6867383]);
        let big = t_f32(&[2], &[1000., 1000.]);
        let y = red(ReduceOp::LogSumExp, &big, None, false, false).unwrap();
        close(y.as_f32().unwrap(), &[1000.6931]);
        // Errors: out-of-range and duplicate axes.
        assert!(red(ReduceOp::Sum, &x, Some(vec![3]), true, false).is_err());
        assert!(red(ReduceOp::Sum, &x, Some(vec![1, -2]), true, false).is_err());
    }

    #[test]
    fn empty_axes_and_noop() {
        let x = data3();
        let y = red(ReduceOp::Sum, &x, Some(vec![]), true, true).unwrap();
        assert_eq!(y, x);
        let y = red(ReduceOp::Sum, &x, None, false, false).unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        close(y.as_f32().unwrap(), &[219.]);
        let y = red(ReduceOp::Sum, &x, Some(vec![]), false, false).unwrap();
        close(y.as_f32().unwrap(), &[219.]);
    }

    #[test]
    fn empty_set_identities() {
        let x = t_f32(&[2, 0, 4], &[]);
        let cases: [(ReduceOp, f32); 8] = [
            (ReduceOp::Sum, 0.0),
            (ReduceOp::L1, 0.0),
            (ReduceOp::L2, 0.0),
            (ReduceOp::SumSquare, 0.0),
            (ReduceOp::Prod, 1.0),
            (ReduceOp::Max, f32::NEG_INFINITY),
            (ReduceOp::Min, f32::INFINITY),
            (ReduceOp::LogSumExp, f32::NEG_INFINITY),
        ];
        for (r, want) in cases {
            let y = red(r, &x, Some(vec![1]), true, false).unwrap();
            assert_eq!(y.shape(), &[2, 1, 4]);
            assert!(
                y.as_f32().unwrap().iter().all(|&v| v == want),
                "{r:?}: {y:?}"
            );
        }
        // Non-reduced zero axis: empty output.
        let y = red(ReduceOp::Sum, &x, Some(vec![2]), true, false).unwrap();
        assert_eq!(y.shape(), &[2, 0, 1]);
        // Integer and bool identities.
        let xi = t(&[0, 2], TensorData::I32(vec![]));
        let y = red(ReduceOp::Max, &xi, Some(vec![0]), false, false).unwrap();
        assert!(
            y.data() == &TensorData::I32(vec![i32::MIN, i32::MIN]),
            "{y:?}"
        );
        let y = red(ReduceOp::Min, &xi, Some(vec![0]), false, false).unwrap();
        assert!(
            y.data() == &TensorData::I32(vec![i32::MAX, i32::MAX]),
            "{y:?}"
        );
        let xb = t(&[2, 0], TensorData::Bool(vec![]));
        let y = red(ReduceOp::Max, &xb, Some(vec![1]), false, false).unwrap();
        assert!(y.data() == &TensorData::Bool(vec![false, false]), "{y:?}");
        let y = red(ReduceOp::Min, &xb, Some(vec![1]), false, false).unwrap();
        assert!(y.data() == &TensorData::Bool(vec![true, true]), "{y:?}");
    }

    #[test]
    fn reduce_int_f16_bool() {
        let x = t(&[2, 2], TensorData::U8(vec![200, 100, 3, 4]));
        let y = red(ReduceOp::Sum, &x, Some(vec![1]), false, false).unwrap();
        assert!(y.data() == &TensorData::U8(vec![44, 7]), "{y:?}");
        let y = red(ReduceOp::Mean, &x, Some(vec![0]), false, false).unwrap();
        assert!(y.data() == &TensorData::U8(vec![101, 52]), "{y:?}");
        let x = t(&[3], TensorData::I64(vec![-7, 3, 2]));
        let y = red(ReduceOp::Prod, &x, None, false, false).unwrap();
        assert!(y.data() == &TensorData::I64(vec![-42]), "{y:?}");
        let y = red(ReduceOp::L2, &x, None, false, false).unwrap();
        assert!(y.data() == &TensorData::I64(vec![7]), "{y:?}"); // sqrt(62) = 7.87
        let y = red(ReduceOp::Min, &x, None, false, false).unwrap();
        assert!(y.data() == &TensorData::I64(vec![-7]), "{y:?}");
        assert!(red(ReduceOp::LogSumExp, &x, None, false, false).is_err());
        let h = t(
            &[2],
            TensorData::F16(vec![f16::from_f32(1.5), f16::from_f32(2.25)]),
        );
        let y = red(ReduceOp::Sum, &h, None, false, false).unwrap();
        assert!(
            y.data() == &TensorData::F16(vec![f16::from_f32(3.75)]),
            "{y:?}"
        );
        let b = t(&[2, 2], TensorData::Bool(vec![true, false, false, false]));
        let y = red(ReduceOp::Max, &b, Some(vec![1]), false, false).unwrap();
        assert!(y.data() == &TensorData::Bool(vec![true, false]), "{y:?}");
        assert!(red(ReduceOp::Sum, &b, None, false, false).is_err());
        let n = t_f32(&[2], &[1.0, f32::NAN]);
        let y = red(ReduceOp::Max, &n, None, false, false).unwrap();
        assert!(y.as_f32().unwrap()[0].is_nan());
    }

    #[test]
    fn hostile_empty_shapes() {
        let huge = t_f32(&[0, 1 << 40, 1 << 40], &[]);
        assert!(red(ReduceOp::Sum, &huge, Some(vec![0]), true, false).is_err());
        let y = red(ReduceOp::Sum, &huge, Some(vec![1, 2]), true, false).unwrap();
        assert_eq!(y.shape(), &[0, 1, 1]);
        let y = red(ReduceOp::Max, &huge, None, false, false).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[f32::NEG_INFINITY]);
        let y = arg(true, &huge, 2, false, false).unwrap();
        assert_eq!(y.shape(), &[0, 1 << 40]);
        let y = sm(&huge, 1, true, false).unwrap();
        assert_eq!(y.shape(), huge.shape());
        let xi = t(&[0, 3], TensorData::I32(vec![]));
        assert!(red(ReduceOp::Mean, &xi, Some(vec![0]), false, false).is_err());
    }

    fn arg(max: bool, x: &Tensor, axis: i64, keepdims: bool, last: bool) -> Result<Tensor> {
        let op = if max {
            Op::ArgMax {
                axis,
                keepdims,
                select_last_index: last,
            }
        } else {
            Op::ArgMin {
                axis,
                keepdims,
                select_last_index: last,
            }
        };
        eval(&op, &[Some(x)]).map(|mut v| v.remove(0))
    }

    #[test]
    fn argmax_argmin() {
        let x = t_f32(&[2, 3], &[2., 1., 2., 1., 3., 3.]);
        let y = arg(true, &x, 1, true, false).unwrap();
        assert_eq!(y.shape(), &[2, 1]);
        assert_eq!(y.as_i64().unwrap(), &[0, 1]);
        let y = arg(true, &x, -1, false, true).unwrap();
        assert_eq!(y.shape(), &[2]);
        assert_eq!(y.as_i64().unwrap(), &[2, 2]);
        let y = arg(false, &x, 0, false, false).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[1, 0, 0]);
        let xi = t(&[4], TensorData::I32(vec![3, -1, 7, -1]));
        let y = arg(false, &xi, 0, true, true).unwrap();
        assert_eq!(y.shape(), &[1]);
        assert_eq!(y.as_i64().unwrap(), &[3]);
        assert!(arg(true, &xi, 1, true, false).is_err());
        assert!(arg(true, &t_f32(&[0, 2], &[]), 0, true, false).is_err());
        let y = arg(true, &t_f32(&[0, 2], &[]), 1, true, false).unwrap();
        assert_eq!(y.shape(), &[0, 1]);
    }

    fn sm(x: &Tensor, axis: i64, legacy: bool, log: bool) -> Result<Tensor> {
        let op = if log {
            Op::LogSoftmax { axis, legacy }
        } else {
            Op::Softmax {
                axis,
                legacy,
                nan_to_zero: false,
            }
        };
        eval(&op, &[Some(x)]).map(|mut v| v.remove(0))
    }

    #[test]
    fn softmax_new_vs_legacy() {
        let x = t_f32(&[2, 2], &[0., 1., 2., 3.]);
        // New form, axis 0: normalize columns.
        let y = sm(&x, 0, false, false).unwrap();
        close(
            y.as_f32().unwrap(),
            &[0.11920292, 0.11920292, 0.880797, 0.880797],
        );
        // Legacy, axis 0: the whole tensor is one row.
        let y = sm(&x, 0, true, false).unwrap();
        close(
            y.as_f32().unwrap(),
            &[0.0320586, 0.08714432, 0.23688282, 0.6439142],
        );
        // Axis -1: both forms agree.
        let a = sm(&x, -1, false, false).unwrap();
        let b = sm(&x, -1, true, false).unwrap();
        close(a.as_f32().unwrap(), b.as_f32().unwrap());
        close(
            a.as_f32().unwrap(),
            &[0.26894143, 0.7310586, 0.26894143, 0.7310586],
        );
        let y = sm(&x, 1, false, true).unwrap();
        close(
            y.as_f32().unwrap(),
            &[-1.3132616, -0.31326166, -1.3132616, -0.31326166],
        );
        // Legacy on 3-D at axis 1 flattens dims 1..: [2, 2*1].
        let x3 = t_f32(&[2, 2, 1], &[0., 1., 2., 3.]);
        let y = sm(&x3, 1, true, false).unwrap();
        assert_eq!(y.shape(), &[2, 2, 1]);
        close(
            y.as_f32().unwrap(),
            &[0.26894143, 0.7310586, 0.26894143, 0.7310586],
        );
        // Large values stay finite.
        let y = sm(&t_f32(&[2], &[1000., 1000.]), 0, false, false).unwrap();
        close(y.as_f32().unwrap(), &[0.5, 0.5]);
        // f16 and errors.
        let h = t(&[2], TensorData::F16(vec![f16::ZERO, f16::ZERO]));
        let y = sm(&h, 0, false, false).unwrap();
        assert!(
            y.data() == &TensorData::F16(vec![f16::from_f32(0.5); 2]),
            "{y:?}"
        );
        assert!(sm(&t(&[1], TensorData::I32(vec![1])), 0, false, false).is_err());
        assert!(sm(&x, 2, false, false).is_err());
        let e = t_f32(&[0, 3], &[]);
        assert_eq!(sm(&e, 1, false, false).unwrap().shape(), &[0, 3]);
    }

    #[test]
    fn hardmax_is_the_one_hot_of_the_first_maximum() {
        let x = t_f32(&[2, 3], &[1., 3., 3., f32::NAN, 2., 5.]);
        let hm = |axis| eval(&Op::Hardmax { axis }, &[Some(&x)]).unwrap().remove(0);
        // Rows: the first of two equal maxima; NaN counts as the maximum.
        assert_eq!(hm(-1).as_f32().unwrap(), &[0., 1., 0., 1., 0., 0.]);
        assert_eq!(hm(0).as_f32().unwrap(), &[0., 1., 0., 1., 0., 1.]);
        let i = Tensor::from_i64(vec![2], vec![1, 2]).unwrap();
        assert!(eval(&Op::Hardmax { axis: 0 }, &[Some(&i)]).is_err());
    }
}

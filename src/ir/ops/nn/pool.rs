//! Reference MaxPool, AveragePool, GlobalMaxPool and GlobalAveragePool over
//! any number of spatial axes.
//!
//! The window geometry (output size, padding from explicit pads or
//! `auto_pad`, `ceil_mode` with the rule that the last window starts inside
//! the input or the begin padding) and the walk over every window's taps
//! come from the Conv helpers in `conv.rs`. Padding never takes part in a
//! maximum. An average divides the sum of the input cells in the window by
//! the number of input cells, or with `count_include_pad` by the number of
//! cells inside the padded input: cells that only exist because `ceil_mode`
//! let the last window run past the end padding are never counted (as in
//! ONNX Runtime and PyTorch; `onnx/reference/ops/op_pool_common.py` agrees
//! whenever that overhang is one cell, which covers every conformance case).
//! Values are widened to f64 and rounded back to the input type.
//!
//! MaxPool's Indices output gives, for every output cell, the flat index
//! into X of the (first) maximum: the (batch, channel) plane's offset plus
//! the cell's index inside the plane, row-major or, with `storage_order =
//! 1`, column-major (the first spatial axis varies fastest), as in
//! `onnx/reference/ops/op_max_pool.py`.

use super::conv::{float_values, for_each_window, output_len, window_axes};
use crate::ir::ops::util::{input, not_held};
use crate::ir::{DType, Op, PoolAttrs, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates MaxPool (`[Y, Indices]`; the interpreter drops Indices when the
/// node does not declare it), AveragePool, GlobalMaxPool or
/// GlobalAveragePool (`[Y]`).
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let y = match op {
        Op::MaxPool(a) => return pool(op.onnx_type(), a, inputs, false),
        Op::AveragePool(a) => pool(op.onnx_type(), a, inputs, true)?.remove(0),
        Op::GlobalMaxPool => global(op.onnx_type(), inputs, false)?,
        Op::GlobalAveragePool => global(op.onnx_type(), inputs, true)?,
        other => return Err(Error::Internal(not_held("nn", other))),
    };
    Ok(vec![y])
}

/// The input values as f64 after checking the element type: floats for
/// everything, and also 8/16/32-bit integers for MaxPool (exact in f64).
fn pool_values(op: &'static str, x: &Tensor, average: bool) -> Result<Vec<f64>> {
    let dt = x.dtype();
    let int_ok = !average
        && matches!(
            dt,
            DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::U32
        );
    if int_ok {
        Ok(x.to_f64_vec())
    } else if !average && !dt.is_float() {
        Err(Error::op(
            op,
            format!("X must be a floating point or 8/16/32-bit integer tensor, got {dt}"),
        ))
    } else {
        float_values(op, "X", x)
    }
}

/// Maximum of the values, ignoring NaN (as the ONNX reference does);
/// NaN if every value is NaN, -inf for an empty window.
fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    argmax_of(values.map(|v| (0, v))).0
}

/// Maximum of `(position, value)` pairs as [`max_of`], with the position of
/// the first maximum (of the first value when all are NaN; `None` for no
/// values).
fn argmax_of(values: impl Iterator<Item = (usize, f64)>) -> (f64, Option<usize>) {
    let mut best: Option<(usize, f64)> = None;
    let mut first: Option<usize> = None;
    for (p, v) in values {
        first = first.or(Some(p));
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((p, v));
        }
    }
    match best {
        Some((p, b)) => (b, Some(p)),
        None if first.is_some() => (f64::NAN, first),
        None => (f64::NEG_INFINITY, None),
    }
}

/// The column-major index of the cell at row-major index `p` of a grid of
/// `dims`.
fn column_major(mut p: usize, dims: &[usize]) -> usize {
    let mut idx = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate().rev() {
        idx[i] = p % d;
        p /= d;
    }
    let mut out = 0;
    for (i, &d) in dims.iter().enumerate().rev() {
        out = out * d + idx[i];
    }
    out
}

/// A pooling window op: `[Y]` for an average, `[Y, Indices]` for a maximum.
fn pool(
    op: &'static str,
    attrs: &PoolAttrs,
    inputs: &[Option<&Tensor>],
    average: bool,
) -> Result<Vec<Tensor>> {
    let x = input(op, inputs, 0)?;
    if x.rank() < 3 {
        return Err(Error::op(
            op,
            format!(
                "X must have rank >= 3 (N, C, spatial...), got shape {:?}",
                x.shape()
            ),
        ));
    }
    if attrs.kernel_shape.is_empty() {
        return Err(Error::op(op, "the kernel_shape attribute is required"));
    }
    let xv = pool_values(op, x, average)?;
    let xs = x.shape();
    let axes = window_axes(
        op,
        &xs[2..],
        &attrs.kernel_shape,
        &attrs.strides,
        &attrs.dilations,
        &attrs.pads,
        attrs.auto_pad,
        attrs.ceil_mode,
    )?;
    let mut out_shape = vec![xs[0], xs[1]];
    out_shape.extend(axes.iter().map(|a| a.output));
    let len = output_len(op, &out_shape)?;
    let planes = xs[0] * xs[1];
    let in_sp: usize = xs[2..].iter().product();
    let out_sp: usize = axes.iter().map(|a| a.output).product();
    let mut y = vec![0.0; len];
    let mut indices = vec![-1i64; if average { 0 } else { len }];
    for_each_window(&axes, |o, window| {
        for plane in 0..planes {
            let base = plane * in_sp;
            let cells = window
                .iter()
                .filter_map(|&(_, p)| p.map(|p| (p, xv[base + p])));
            let out = plane * out_sp + o;
            if average {
                let (sum, count) = cells.fold((0.0, 0usize), |(s, n), (_, v)| (s + v, n + 1));
                let divisor = if attrs.count_include_pad {
                    window.len()
                } else {
                    count
                };
                y[out] = sum / divisor as f64;
            } else {
                let (v, at) = argmax_of(cells);
                y[out] = v;
                if let Some(p) = at {
                    let p = if attrs.column_major {
                        column_major(p, &xs[2..])
                    } else {
                        p
                    };
                    // X holds base + p < X.numel() elements in memory, so
                    // the index fits in i64.
                    indices[out] = (base + p) as i64;
                }
            }
        }
    });
    let internal = |e| Error::op(op, format!("internal: output does not fit its shape: {e}"));
    let y =
        Tensor::new(out_shape.clone(), TensorData::from_f64(x.dtype(), &y)).map_err(internal)?;
    if average {
        return Ok(vec![y]);
    }
    let indices = Tensor::new(out_shape, TensorData::I64(indices)).map_err(internal)?;
    Ok(vec![y, indices])
}

fn global(op: &'static str, inputs: &[Option<&Tensor>], average: bool) -> Result<Tensor> {
    let x = input(op, inputs, 0)?;
    if x.rank() < 2 {
        return Err(Error::op(
            op,
            format!(
                "X must have rank >= 2 (N, C, spatial...), got shape {:?}",
                x.shape()
            ),
        ));
    }
    let xv = float_values(op, "X", x)?;
    let xs = x.shape();
    let mut out_shape = vec![xs[0], xs[1]];
    out_shape.extend(std::iter::repeat_n(1, xs.len() - 2));
    let in_sp: usize = xs[2..].iter().product();
    let y: Vec<f64> = (0..xs[0] * xs[1])
        .map(|plane| {
            let cells = xv[plane * in_sp..(plane + 1) * in_sp].iter().copied();
            if average {
                cells.sum::<f64>() / in_sp as f64
            } else {
                max_of(cells)
            }
        })
        .collect();
    Tensor::new(out_shape, TensorData::from_f64(x.dtype(), &y))
        .map_err(|e| Error::op(op, format!("internal: output does not fit its shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::{self, seq, t};
    use crate::ir::AutoPad;

    fn pa(kernel: &[usize]) -> PoolAttrs {
        let n = kernel.len();
        PoolAttrs {
            kernel_shape: kernel.to_vec(),
            strides: vec![1; n],
            dilations: vec![1; n],
            pads: vec![0; 2 * n],
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            column_major: false,
        }
    }

    fn run(op: &Op, x: &Tensor) -> Result<Tensor> {
        eval(op, &[Some(x)]).map(|mut v| v.remove(0))
    }

    fn assert_close(got: &Tensor, shape: &[usize], want: &[f32]) {
        testing::assert_close(got, shape, want, 1e-4);
    }

    #[test]
    fn ceil_mode_cases() {
        let x = t(&[1, 1, 4, 4], (1..=16).map(|i| i as f32).collect());
        let mut a = pa(&[3, 3]);
        a.strides = vec![2, 2];
        a.ceil_mode = true;
        // test_maxpool_2d_ceil / test_averagepool_2d_ceil.
        let y = run(&Op::MaxPool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[11., 12., 15., 16.]);
        let y = run(&Op::AveragePool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[6., 7.5, 12., 13.5]);
        // count_include_pad does not count the ceil overhang.
        a.count_include_pad = true;
        let y = run(&Op::AveragePool(a), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[6., 7.5, 12., 13.5]);

        // test_maxpool_2d_ceil_output_size_reduce_by_one.
        let x = t(&[1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let mut a = pa(&[1, 1]);
        a.strides = vec![2, 2];
        a.ceil_mode = true;
        let y = run(&Op::MaxPool(a), &x).unwrap();
        assert_close(&y, &[1, 1, 1, 1], &[1.]);

        // test_averagepool_2d_ceil_last_window_starts_on_pad.
        let x = t(
            &[1, 3, 2, 2],
            vec![
                0.8580, 0.0786, 0.2692, 0.1537, 0.8816, 0.4353, 0.5772, 0.6623, 0.9067, 0.9483,
                0.5970, 0.7630,
            ],
        );
        let mut a = pa(&[3, 3]);
        a.strides = vec![3, 3];
        a.pads = vec![1, 1, 1, 1];
        a.ceil_mode = true;
        a.count_include_pad = true;
        let y = run(&Op::AveragePool(a), &x).unwrap();
        assert_close(&y, &[1, 3, 1, 1], &[0.151056, 0.284044, 0.357222]);
    }

    #[test]
    fn pads_and_count_include_pad() {
        // torch avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=...)
        // and max_pool2d on x = arange(20).reshape(1,1,4,5).
        let x = seq(&[1, 1, 4, 5]);
        let mut a = pa(&[3, 3]);
        a.strides = vec![2, 2];
        a.pads = vec![1, 1, 1, 1];
        let y = run(&Op::AveragePool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 3], &[3., 4.5, 6., 10.5, 12., 13.5]);
        let y = run(&Op::MaxPool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 3], &[6., 8., 9., 16., 18., 19.]);
        a.count_include_pad = true;
        let y = run(&Op::AveragePool(a), &x).unwrap();
        assert_close(
            &y,
            &[1, 1, 2, 3],
            &[1.333333, 3.0, 2.666667, 7.0, 12.0, 9.0],
        );
        // Asymmetric pads [0,1,1,0] (begin h,w; end h,w), stride 3 > kernel 2.
        let mut a = pa(&[2, 2]);
        a.strides = vec![3, 3];
        a.pads = vec![0, 1, 1, 0];
        let y = run(&Op::AveragePool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[2.5, 5., 15., 17.5]);
        a.count_include_pad = true;
        let y = run(&Op::AveragePool(a), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[1.25, 5., 3.75, 8.75]);
    }

    #[test]
    fn auto_pad_and_dilations() {
        let x = seq(&[1, 1, 4, 5]);
        // SAME_UPPER k2 s1: pad 1 at the end; average excludes the pad.
        let mut a = pa(&[2, 2]);
        a.auto_pad = AutoPad::SameUpper;
        let y = run(&Op::AveragePool(a.clone()), &x).unwrap();
        assert_close(
            &y,
            &[1, 1, 4, 5],
            &[
                3., 4., 5., 6., 6.5, 8., 9., 10., 11., 11.5, 13., 14., 15., 16., 16.5, 15.5, 16.5,
                17.5, 18.5, 19.,
            ],
        );
        a.auto_pad = AutoPad::SameLower;
        let y = run(&Op::MaxPool(a), &x).unwrap();
        assert_close(
            &y,
            &[1, 1, 4, 5],
            &[
                0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15., 16., 17.,
                18., 19.,
            ],
        );
        // test_maxpool_2d_dilations / test_averagepool_3d_dilations_small.
        let x = t(&[1, 1, 4, 4], (1..=16).map(|i| i as f32).collect());
        let mut a = pa(&[2, 2]);
        a.dilations = vec![2, 2];
        let y = run(&Op::MaxPool(a), &x).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[11., 12., 15., 16.]);
        let x3: Vec<f32> = (0..4).flat_map(|_| (1..=16).map(|i| i as f32)).collect();
        let x3 = t(&[1, 1, 4, 4, 4], x3);
        let mut a = pa(&[2, 2, 2]);
        a.dilations = vec![2, 2, 2];
        a.ceil_mode = true;
        let y = run(&Op::AveragePool(a), &x3).unwrap();
        assert_close(&y, &[1, 1, 2, 2, 2], &[6., 7., 10., 11., 6., 7., 10., 11.]);
    }

    #[test]
    fn one_d_three_d_batch_and_ints() {
        // 1-D, batch 2, channels 2: max over k=2 stride 2 with ceil_mode.
        let x = seq(&[2, 2, 5]);
        let mut a = pa(&[2]);
        a.strides = vec![2];
        a.ceil_mode = true;
        let y = run(&Op::MaxPool(a.clone()), &x).unwrap();
        assert_close(
            &y,
            &[2, 2, 3],
            &[1., 3., 4., 6., 8., 9., 11., 13., 14., 16., 18., 19.],
        );
        let y = run(&Op::AveragePool(a), &x).unwrap();
        assert_close(
            &y,
            &[2, 2, 3],
            &[0.5, 2.5, 4., 5.5, 7.5, 9., 10.5, 12.5, 14., 15.5, 17.5, 19.],
        );
        // 3-D average, k 2 stride 2 on 3x3x3 = arange(27): floor mode -> 1.
        let x = seq(&[1, 1, 3, 3, 3]);
        let mut a = pa(&[2, 2, 2]);
        a.strides = vec![2, 2, 2];
        let y = run(&Op::AveragePool(a), &x).unwrap();
        assert_close(&y, &[1, 1, 1, 1, 1], &[6.5]);
        // u8 / i8 MaxPool keep their type.
        let xu = Tensor::new(vec![1, 1, 4], TensorData::U8(vec![3, 250, 7, 1])).unwrap();
        let y = run(&Op::MaxPool(pa(&[2])), &xu).unwrap();
        assert_eq!(y.dtype(), DType::U8);
        assert_eq!(y.to_f64_vec(), vec![250., 250., 7.]);
        let xi = Tensor::new(vec![1, 1, 3], TensorData::I8(vec![-128, -5, -7])).unwrap();
        let mut a = pa(&[2]);
        a.pads = vec![1, 1];
        let y = run(&Op::MaxPool(a), &xi).unwrap();
        assert_eq!(y.dtype(), DType::I8);
        assert_eq!(y.to_f64_vec(), vec![-128., -5., -5., -7.]);
    }

    #[test]
    fn global_pools() {
        let x = seq(&[2, 3, 2, 2]);
        let y = run(&Op::GlobalAveragePool, &x).unwrap();
        assert_close(&y, &[2, 3, 1, 1], &[1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
        let y = run(&Op::GlobalMaxPool, &x).unwrap();
        assert_close(&y, &[2, 3, 1, 1], &[3., 7., 11., 15., 19., 23.]);
        let x = seq(&[1, 2, 2, 1, 3]);
        let y = run(&Op::GlobalMaxPool, &x).unwrap();
        assert_close(&y, &[1, 2, 1, 1, 1], &[5., 11.]);
        let x = seq(&[1, 2, 3]);
        let y = run(&Op::GlobalAveragePool, &x).unwrap();
        assert_close(&y, &[1, 2, 1], &[1., 4.]);
        let xi = Tensor::from_i64(vec![1, 1, 2], vec![1, 2]).unwrap();
        assert!(run(&Op::GlobalAveragePool, &xi).is_err());
        assert!(run(&Op::GlobalMaxPool, &seq(&[3])).is_err());
    }

    #[test]
    fn ceil_mode_window_larger_than_padded_input() {
        // k 3, dilation 2 (extent 5) over 2 cells + 1 begin pad: ceil mode
        // still yields one window (taps -1, 1, 3), floor mode none.
        let x = t(&[1, 1, 2], vec![1., 2.]);
        let mut a = pa(&[3]);
        a.strides = vec![3];
        a.dilations = vec![2];
        a.pads = vec![1, 0];
        a.ceil_mode = true;
        let y = run(&Op::MaxPool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 1], &[2.]);
        a.count_include_pad = true;
        // Taps -1 (pad, counted) and 1; tap 3 lies beyond the padded input.
        // (onnxruntime agrees; the ONNX Python reference, which splits the
        // ceil overhang over both ends, shifts this window and gets 0.5.)
        let y = run(&Op::AveragePool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 1], &[1.]);
        a.count_include_pad = false;
        let y = run(&Op::AveragePool(a.clone()), &x).unwrap();
        assert_close(&y, &[1, 1, 1], &[2.]);
        a.ceil_mode = false;
        assert!(run(&Op::MaxPool(a), &x).is_err());
    }

    fn indices(op: &Op, x: &Tensor) -> Vec<i64> {
        let outs = eval(op, &[Some(x)]).unwrap();
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[1].shape(), outs[0].shape());
        outs[1].as_i64().unwrap().to_vec()
    }

    #[test]
    fn max_pool_indices() {
        // test_maxpool_with_argmax_2d_precomputed_strides (storage_order 1)
        // and its row-major form.
        let x = t(&[1, 1, 5, 5], (1..=25).map(|i| i as f32).collect());
        let mut a = pa(&[2, 2]);
        a.strides = vec![2, 2];
        assert_eq!(indices(&Op::MaxPool(a.clone()), &x), [6, 8, 16, 18]);
        a.column_major = true;
        assert_eq!(indices(&Op::MaxPool(a), &x), [6, 16, 8, 18]);
        // test_maxpool_with_argmax_2d_precomputed_pads.
        let mut a = pa(&[5, 5]);
        a.pads = vec![2, 2, 2, 2];
        let want: Vec<i64> = [12, 13, 14, 14, 14, 17, 18, 19, 19, 19]
            .into_iter()
            .chain([22, 23, 24, 24, 24].repeat(3))
            .collect();
        assert_eq!(indices(&Op::MaxPool(a), &x), want);

        // 3-D, batch 2, channel 2 (plane offsets), asymmetric pads; x =
        // (i * 37) % 96. Values from onnx.reference's MaxPool.
        let x = t(
            &[2, 2, 3, 4, 2],
            (0..96).map(|i| ((i * 37) % 96) as f32).collect(),
        );
        let mut a = pa(&[2, 2, 2]);
        a.strides = vec![1, 2, 1];
        a.pads = vec![0, 1, 0, 0, 0, 1];
        let y = run(&Op::MaxPool(a.clone()), &x).unwrap();
        assert_close(
            &y,
            &[2, 2, 2, 2, 2],
            &[
                45., 45., 89., 89., 53., 53., 90., 31., 69., 69., 84., 47., 77., 77., 92., 55.,
                93., 93., 71., 71., 93., 93., 79., 79., 80., 21., 95., 95., 88., 29., 95., 95.,
            ],
        );
        assert_eq!(
            indices(&Op::MaxPool(a.clone()), &x),
            [
                9, 9, 5, 5, 17, 17, 18, 19, 33, 33, 36, 35, 41, 41, 44, 43, 57, 57, 59, 59, 57, 57,
                67, 67, 80, 81, 83, 83, 88, 89, 83, 83
            ]
        );
        a.column_major = true;
        assert_eq!(
            indices(&Op::MaxPool(a), &x),
            [
                13, 13, 18, 18, 14, 14, 5, 17, 37, 37, 31, 40, 38, 38, 32, 41, 61, 61, 64, 64, 61,
                61, 65, 65, 73, 85, 88, 88, 74, 86, 88, 88
            ]
        );

        // Ties pick the first cell; NaN is skipped unless all are NaN.
        let x = t(&[1, 1, 6], vec![3., 3., f32::NAN, 1., f32::NAN, f32::NAN]);
        let mut a = pa(&[2]);
        a.strides = vec![2];
        assert_eq!(indices(&Op::MaxPool(a.clone()), &x), [0, 3, 4]);
        // Integer input and AveragePool (no Indices).
        let xi = Tensor::new(vec![1, 1, 4], TensorData::I8(vec![-3, -7, 5, 5])).unwrap();
        assert_eq!(indices(&Op::MaxPool(a.clone()), &xi), [0, 2]);
        assert_eq!(eval(&Op::AveragePool(a), &[Some(&x)]).unwrap().len(), 1);
    }

    #[test]
    fn errors() {
        let x = seq(&[1, 1, 4, 4]);
        assert!(run(&Op::MaxPool(pa(&[5, 5])), &x).is_err());
        assert!(run(&Op::MaxPool(pa(&[2])), &x).is_err());
        assert!(run(&Op::MaxPool(pa(&[])), &x).is_err());
        assert!(run(&Op::MaxPool(pa(&[2])), &seq(&[4, 4])).is_err());
        let mut a = pa(&[2, 2]);
        a.strides = vec![0, 1];
        assert!(run(&Op::MaxPool(a), &x).is_err());
        let xi = Tensor::from_i64(vec![1, 1, 2], vec![1, 2]).unwrap();
        assert!(run(&Op::MaxPool(pa(&[1])), &xi).is_err());
        let xu = Tensor::new(vec![1, 1, 2], TensorData::U8(vec![1, 2])).unwrap();
        assert!(run(&Op::AveragePool(pa(&[1])), &xu).is_err());
        assert!(eval(&Op::MaxPool(pa(&[1])), &[None]).is_err());
    }
}

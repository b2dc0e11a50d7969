//! Reference Conv and ConvTranspose for any number of spatial axes.
//!
//! Both ops are written as explicit window walks. The window geometry (output
//! size, begin/end padding per axis, from explicit pads or `auto_pad`) is
//! computed once by [`window_axes`], which pooling shares; [`for_each_window`]
//! then visits every output position with the list of which kernel tap reads
//! which input position (or padding). Conv sums `x * w` over the taps of each output;
//! ConvTranspose scatters each input element through the kernel into the
//! output (`o = i * stride + k * dilation - pad_begin`); its output shape
//! and padding follow `onnx/reference/ops/op_conv_transpose.py`, and ONNX
//! Runtime where that reference fails (see [`transpose_axes`]). Floating point inputs (f16, f32,
//! f64) are widened to f64, accumulated in f64 and rounded once to the input
//! type at the end.

use crate::ir::ops::util::{input, not_held, opt_input};
use crate::ir::{AutoPad, ConvAttrs, ConvTransposeAttrs, DType, Op, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates Conv or ConvTranspose.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    match op {
        Op::Conv(attrs) => conv(attrs, inputs).map(|t| vec![t]),
        Op::ConvTranspose(attrs) => conv_transpose(attrs, inputs).map(|t| vec![t]),
        other => Err(Error::Internal(not_held("nn", other))),
    }
}

/// Geometry of one spatial axis of a sliding-window op (Conv, pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Axis {
    pub input: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
    pub output: usize,
}

/// Per-axis window geometry of Conv / MaxPool / AveragePool.
///
/// `strides` and `dilations` may be empty (all 1), `pads` may be empty (all
/// 0); otherwise they must have one entry per spatial axis (`pads` two). With
/// `auto_pad` SAME_UPPER / SAME_LOWER the output is `ceil(in / stride)` and
/// the total padding `max(0, (out - 1) * stride + (k - 1) * dilation + 1 -
/// in)` is split with the odd cell at the end (UPPER) or the beginning
/// (LOWER); VALID means no padding; in both cases explicit pads and
/// `ceil_mode` are ignored. Otherwise `out = floor_or_ceil((in + pads -
/// dilated_kernel) / stride) + 1`, and with `ceil_mode` the last window must
/// start inside the input or the begin padding (the PyTorch / ONNX rule).
#[allow(clippy::too_many_arguments)]
pub(crate) fn window_axes(
    op: &'static str,
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<Vec<Axis>> {
    let n = input.len();
    if kernel.len() != n {
        return Err(Error::op(
            op,
            format!(
                "kernel_shape {kernel:?} has {} entries but the input has {n} spatial axes",
                kernel.len()
            ),
        ));
    }
    let list = |name: &str, v: &[usize], len: usize, default: usize| -> Result<Vec<usize>> {
        if v.is_empty() {
            Ok(vec![default; len])
        } else if v.len() != len {
            Err(Error::op(
                op,
                format!(
                    "{name} {v:?} has {} entries, expected {len} for {n} spatial axes",
                    v.len()
                ),
            ))
        } else {
            Ok(v.to_vec())
        }
    };
    let strides = list("strides", strides, n, 1)?;
    let dilations = list("dilations", dilations, n, 1)?;
    let pads = list("pads", pads, 2 * n, 0)?;
    let mut axes = Vec::with_capacity(n);
    for d in 0..n {
        let (inp, k, s, dil) = (input[d], kernel[d], strides[d], dilations[d]);
        if k == 0 || s == 0 || dil == 0 {
            return Err(Error::op(
                op,
                format!(
                    "axis {d}: kernel size, stride and dilation must be positive (got {k}, {s}, {dil})"
                ),
            ));
        }
        // i128 keeps every product of two attribute values exact.
        let (inp_w, k_w, s_w, dil_w) = (inp as i128, k as i128, s as i128, dil as i128);
        let dk = (k_w - 1) * dil_w + 1;
        let (out, pb, pe) = match auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = (inp_w + s_w - 1) / s_w;
                let total = ((out - 1) * s_w + dk - inp_w).max(0);
                let small = total / 2;
                let big = total - small;
                if auto_pad == AutoPad::SameUpper {
                    (out, small, big)
                } else {
                    (out, big, small)
                }
            }
            AutoPad::Valid => {
                if inp_w < dk {
                    return Err(Error::op(
                        op,
                        format!("axis {d}: input size {inp} is smaller than the dilated kernel {dk} (auto_pad VALID)"),
                    ));
                }
                ((inp_w - dk) / s_w + 1, 0, 0)
            }
            AutoPad::NotSet => {
                let (pb, pe) = (pads[d] as i128, pads[d + n] as i128);
                let span = inp_w + pb + pe - dk;
                let mut out = span.div_euclid(s_w) + 1;
                if ceil_mode {
                    // ceil(span / s) + 1, with span possibly negative (a
                    // window larger than the padded input still gets one
                    // output in ceil mode, as in the ONNX reference).
                    out = -((-span).div_euclid(s_w)) + 1;
                    // The last window must start inside the input or the
                    // begin padding, not entirely in the end padding.
                    if (out - 1) * s_w >= inp_w + pb {
                        out -= 1;
                    }
                }
                if out < 1 {
                    return Err(Error::op(
                        op,
                        format!(
                            "axis {d}: padded input size {} is smaller than the dilated kernel {dk}",
                            inp_w + pb + pe
                        ),
                    ));
                }
                (out, pb, pe)
            }
        };
        let fit = |v: i128| -> Result<usize> {
            usize::try_from(v)
                .map_err(|_| Error::op(op, format!("axis {d}: window geometry out of range")))
        };
        axes.push(Axis {
            input: inp,
            kernel: k,
            stride: s,
            dilation: dil,
            pad_begin: fit(pb)?,
            pad_end: fit(pe)?,
            output: fit(out)?,
        });
    }
    Ok(axes)
}

/// One tap of a window: the kernel position (row-major flat index over the
/// kernel) and the input spatial position it reads (row-major flat index), or
/// `None` when the tap lands on padding.
pub(crate) type Tap = (usize, Option<usize>);

/// Calls `f(flat_position, taps)` for every cell of a grid, row-major. The
/// grid has `per_axis[d].len()` cells along axis `d`; the taps of a cell are
/// the Cartesian product of its per-axis taps `(kernel index, target
/// index)`, combined row-major over `kernel` and `target` dims (the target is
/// `None` when it is on any axis). Taps are built on the fly into one
/// buffer, so memory stays at one window whatever the grid size.
fn for_each_cell(
    per_axis: &[Vec<Vec<Tap>>],
    kernel: &[usize],
    target: &[usize],
    mut f: impl FnMut(usize, &[Tap]),
) {
    let dims: Vec<usize> = per_axis.iter().map(|a| a.len()).collect();
    let cells: usize = dims.iter().product();
    let mut idx = vec![0usize; dims.len()];
    let mut taps: Vec<Tap> = Vec::new();
    let mut next: Vec<Tap> = Vec::new();
    for flat in 0..cells {
        taps.clear();
        taps.push((0, Some(0)));
        for d in 0..dims.len() {
            next.clear();
            for &(kf, tf) in &taps {
                for &(k, t) in &per_axis[d][idx[d]] {
                    let pos = match (tf, t) {
                        (Some(tf), Some(t)) => Some(tf * target[d] + t),
                        _ => None,
                    };
                    next.push((kf * kernel[d] + k, pos));
                }
            }
            std::mem::swap(&mut taps, &mut next);
        }
        f(flat, &taps);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Calls `f(output_position, taps)` for every output position (row-major
/// over the output spatial shape) with the taps of its window. Taps past the
/// end padding (only possible with `ceil_mode`) are left out, so
/// `taps.len()` is the window size that `count_include_pad` divides by.
pub(crate) fn for_each_window(axes: &[Axis], f: impl FnMut(usize, &[Tap])) {
    // Per axis: for each output index, the (kernel index, input index) taps.
    let mut per_axis: Vec<Vec<Vec<Tap>>> = Vec::with_capacity(axes.len());
    for a in axes {
        let mut rows = Vec::with_capacity(a.output);
        for o in 0..a.output {
            let mut row = Vec::with_capacity(a.kernel);
            for k in 0..a.kernel {
                let p = (o as i128) * (a.stride as i128) + (k as i128) * (a.dilation as i128)
                    - a.pad_begin as i128;
                if p >= a.input as i128 + a.pad_end as i128 {
                    continue;
                }
                let pos = if p < 0 || p >= a.input as i128 {
                    None
                } else {
                    Some(p as usize)
                };
                row.push((k, pos));
            }
            rows.push(row);
        }
        per_axis.push(rows);
    }
    let kernel: Vec<usize> = axes.iter().map(|a| a.kernel).collect();
    let input: Vec<usize> = axes.iter().map(|a| a.input).collect();
    for_each_cell(&per_axis, &kernel, &input, f);
}

/// Float data widened to f64, or an error naming the dtype.
pub(crate) fn float_values(op: &'static str, what: &str, t: &Tensor) -> Result<Vec<f64>> {
    if !t.dtype().is_float() {
        return Err(Error::op(
            op,
            format!(
                "{what} must be a floating point tensor (f16, f32, f64), got {}",
                t.dtype()
            ),
        ));
    }
    Ok(t.to_f64_vec())
}

/// Element count of an output shape, refusing overflow and absurd sizes.
pub(crate) fn output_len(op: &'static str, shape: &[usize]) -> Result<usize> {
    // Computed in f64, then narrowed: 8 bytes and the output's own.
    crate::limits::check_shape(|| format!("{op} output of shape {shape:?}"), shape, 12)
}

/// Builds the output tensor from f64 values.
fn finish(op: &'static str, dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor> {
    Tensor::new(shape, TensorData::from_f64(dtype, &v))
        .map_err(|e| Error::op(op, format!("internal: output does not fit its shape: {e}")))
}

/// Checks X, W (and B) of Conv / ConvTranspose and returns their values.
fn conv_inputs(
    op: &'static str,
    inputs: &[Option<&Tensor>],
) -> Result<(Tensor, Tensor, Option<Vec<f64>>)> {
    let x = input(op, inputs, 0)?;
    let w = input(op, inputs, 1)?;
    if x.rank() < 3 {
        return Err(Error::op(
            op,
            format!(
                "X must have rank >= 3 (N, C, spatial...), got shape {:?}",
                x.shape()
            ),
        ));
    }
    if w.rank() != x.rank() {
        return Err(Error::op(
            op,
            format!(
                "W has shape {:?} but must have the rank of X {:?}",
                w.shape(),
                x.shape()
            ),
        ));
    }
    float_values(op, "X", x)?;
    if w.dtype() != x.dtype() {
        return Err(Error::op(
            op,
            format!("W has dtype {} but X has {}", w.dtype(), x.dtype()),
        ));
    }
    let bias = match opt_input(inputs, 2) {
        None => None,
        Some(b) => {
            if b.dtype() != x.dtype() {
                return Err(Error::op(
                    op,
                    format!("B has dtype {} but X has {}", b.dtype(), x.dtype()),
                ));
            }
            if b.rank() != 1 {
                return Err(Error::op(
                    op,
                    format!("B must be 1-D, got shape {:?}", b.shape()),
                ));
            }
            Some(b.to_f64_vec())
        }
    };
    Ok((x.clone(), w.clone(), bias))
}

/// Checks the `kernel_shape` attribute against the weight's spatial dims.
fn check_kernel_shape(op: &'static str, attr: &[usize], w: &[usize]) -> Result<()> {
    if !attr.is_empty() && attr != w {
        return Err(Error::op(
            op,
            format!("kernel_shape {attr:?} does not match the weight's spatial dims {w:?}"),
        ));
    }
    Ok(())
}

/// Conv: `y[n, m, o] = B[m] + sum_{c, k} x[n, g*C/G + c, o*s + k*d - pb] *
/// w[m, c, k]` where `g` is the group of output channel `m`.
fn conv(attrs: &ConvAttrs, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    const OP: &str = "Conv";
    let (x, w, bias) = conv_inputs(OP, inputs)?;
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c) = (xs[0], xs[1]);
    let m = ws[0];
    let group = attrs.group;
    if group == 0 || c % group != 0 || m % group != 0 {
        return Err(Error::op(
            OP,
            format!(
                "group {group} must be positive and divide both the input channels {c} and the output channels {m}"
            ),
        ));
    }
    let (cg, mg) = (c / group, m / group);
    if ws[1] != cg {
        return Err(Error::op(
            OP,
            format!(
                "W has shape {ws:?}: dim 1 must be input channels / group = {c} / {group} = {cg}"
            ),
        ));
    }
    if let Some(b) = &bias {
        if b.len() != m {
            return Err(Error::op(
                OP,
                format!(
                    "B has {} elements but there are {m} output channels",
                    b.len()
                ),
            ));
        }
    }
    check_kernel_shape(OP, &attrs.kernel_shape, &ws[2..])?;
    let axes = window_axes(
        OP,
        &xs[2..],
        &ws[2..],
        &attrs.strides,
        &attrs.dilations,
        &attrs.pads,
        attrs.auto_pad,
        false,
    )?;
    let mut out_shape = vec![n, m];
    out_shape.extend(axes.iter().map(|a| a.output));
    let len = output_len(OP, &out_shape)?;
    let xv = x.to_f64_vec();
    let wv = w.to_f64_vec();
    let in_sp: usize = xs[2..].iter().product();
    let k_sp: usize = ws[2..].iter().product();
    let out_sp: usize = axes.iter().map(|a| a.output).product();
    let mut y = vec![0.0f64; len];
    for_each_window(&axes, |op_idx, window| {
        for ni in 0..n {
            for mi in 0..m {
                let g = mi / mg;
                let mut acc = bias.as_ref().map_or(0.0, |b| b[mi]);
                for ci in 0..cg {
                    let x_base = (ni * c + g * cg + ci) * in_sp;
                    let w_base = (mi * cg + ci) * k_sp;
                    for &(kf, pos) in window {
                        if let Some(p) = pos {
                            acc += xv[x_base + p] * wv[w_base + kf];
                        }
                    }
                }
                y[(ni * m + mi) * out_sp + op_idx] = acc;
            }
        }
    });
    finish(OP, x.dtype(), out_shape, y)
}

/// ConvTranspose: every `x[n, g*C/G + c, i]` is scattered through
/// `w[g*C/G + c, m, k]` to `y[n, g*M/G + m, i*s + k*d - pb]` (dropped when
/// outside the output).
fn conv_transpose(attrs: &ConvTransposeAttrs, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    const OP: &str = "ConvTranspose";
    let (x, w, bias) = conv_inputs(OP, inputs)?;
    let (xs, ws) = (x.shape(), w.shape());
    let ca = &attrs.conv;
    let (n, c) = (xs[0], xs[1]);
    let group = ca.group;
    if group == 0 || c % group != 0 {
        return Err(Error::op(
            OP,
            format!("group {group} must be positive and divide the input channels {c}"),
        ));
    }
    if ws[0] != c {
        return Err(Error::op(
            OP,
            format!("W has shape {ws:?}: dim 0 must equal the input channels {c}"),
        ));
    }
    let (cg, mg) = (c / group, ws[1]);
    let m = mg
        .checked_mul(group)
        .ok_or_else(|| Error::op(OP, "output channel count overflows"))?;
    if let Some(b) = &bias {
        if b.len() != m {
            return Err(Error::op(
                OP,
                format!(
                    "B has {} elements but there are {m} output channels (W dim 1 * group)",
                    b.len()
                ),
            ));
        }
    }
    check_kernel_shape(OP, &ca.kernel_shape, &ws[2..])?;
    let geo = transpose_axes(attrs, &xs[2..], &ws[2..])?;
    let mut out_shape = vec![n, m];
    out_shape.extend(geo.iter().map(|a| a.output));
    let len = output_len(OP, &out_shape)?;

    // Per axis: for every input index, the (kernel tap, output index) pairs
    // it feeds; taps landing outside the output are dropped.
    let mut per_axis: Vec<Vec<Vec<Tap>>> = Vec::with_capacity(geo.len());
    for a in &geo {
        let mut rows = Vec::with_capacity(a.input);
        for i in 0..a.input {
            let mut row = Vec::new();
            for k in 0..a.kernel {
                let o = (i as i128) * (a.stride as i128) + (k as i128) * (a.dilation as i128)
                    - a.pad_begin as i128;
                if o >= 0 && o < a.output as i128 {
                    row.push((k, Some(o as usize)));
                }
            }
            rows.push(row);
        }
        per_axis.push(rows);
    }
    let kernel: Vec<usize> = geo.iter().map(|a| a.kernel).collect();
    let out_dims: Vec<usize> = geo.iter().map(|a| a.output).collect();
    let in_sp: usize = xs[2..].iter().product();
    let k_sp: usize = ws[2..].iter().product();
    let out_sp: usize = out_dims.iter().product();
    let xv = x.to_f64_vec();
    let wv = w.to_f64_vec();
    let mut y = vec![0.0f64; len];
    if let Some(b) = &bias {
        for (i, v) in y.iter_mut().enumerate() {
            // out_sp > 0 here: an empty spatial output leaves `y` empty.
            *v = b[(i / out_sp) % m];
        }
    }
    for_each_cell(&per_axis, &kernel, &out_dims, |ip, taps| {
        for ni in 0..n {
            for ch in 0..c {
                let g = ch / cg;
                let xval = xv[(ni * c + ch) * in_sp + ip];
                for mj in 0..mg {
                    let mi = g * mg + mj;
                    let w_base = (ch * mg + mj) * k_sp;
                    let y_base = (ni * m + mi) * out_sp;
                    for &(kf, of) in taps {
                        if let Some(of) = of {
                            y[y_base + of] += xval * wv[w_base + kf];
                        }
                    }
                }
            }
        }
    });
    finish(OP, x.dtype(), out_shape, y)
}

/// Geometry of one ConvTranspose axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TAxis {
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    output: usize,
}

/// ConvTranspose output size and begin padding per axis. The natural
/// extent is `stride * (in - 1) + output_padding + dilated_kernel`. When
/// `output_shape` is given (explicit pads are then ignored), or with
/// SAME_UPPER / SAME_LOWER (output `in * stride`), the total padding is
/// `max(0, natural - out)`, split with the odd cell at the end for
/// SAME_UPPER and at the begin otherwise; this matches the ONNX reference
/// on every conformance case and ONNX Runtime where the reference breaks
/// down (output smaller than natural, negative padding). Otherwise the
/// explicit pads (zero for VALID) are used and the output is `natural -
/// pad_begin - pad_end`.
fn transpose_axes(
    attrs: &ConvTransposeAttrs,
    input: &[usize],
    kernel: &[usize],
) -> Result<Vec<TAxis>> {
    const OP: &str = "ConvTranspose";
    let ca = &attrs.conv;
    let n = input.len();
    let list = |name: &str, v: &[usize], len: usize, default: usize| -> Result<Vec<usize>> {
        if v.is_empty() {
            Ok(vec![default; len])
        } else if v.len() != len {
            Err(Error::op(
                OP,
                format!(
                    "{name} {v:?} has {} entries, expected {len} for {n} spatial axes",
                    v.len()
                ),
            ))
        } else {
            Ok(v.to_vec())
        }
    };
    let strides = list("strides", &ca.strides, n, 1)?;
    let dilations = list("dilations", &ca.dilations, n, 1)?;
    let pads = list("pads", &ca.pads, 2 * n, 0)?;
    let out_pad = list("output_padding", &attrs.output_padding, n, 0)?;
    let out_shape = match &attrs.output_shape {
        Some(s) => Some(list("output_shape", s, n, 0)?),
        None => None,
    };
    let mut axes = Vec::with_capacity(n);
    for d in 0..n {
        let (inp, k, s, dil) = (input[d], kernel[d], strides[d], dilations[d]);
        if k == 0 || s == 0 || dil == 0 {
            return Err(Error::op(
                OP,
                format!(
                    "axis {d}: kernel size, stride and dilation must be positive (got {k}, {s}, {dil})"
                ),
            ));
        }
        let (inp_w, s_w) = (inp as i128, s as i128);
        let dk = (k as i128 - 1) * dil as i128 + 1;
        // The natural (unpadded) output extent of the scatter.
        let full = s_w * (inp_w - 1) + out_pad[d] as i128 + dk;
        let same = matches!(ca.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
        let requested = match &out_shape {
            Some(o) => Some(o[d] as i128),
            None if same => Some(inp_w * s_w),
            None => None,
        };
        let (out, pb) = match requested {
            // The output size is fixed: pad the natural extent down to it
            // (never negative padding: a larger output gets zeros at the
            // end), the odd cell at the end for SAME_UPPER and at the begin
            // otherwise, as ONNX Runtime does.
            Some(out) => {
                let total = (full - out).max(0);
                let pb = if ca.auto_pad == AutoPad::SameUpper {
                    total / 2
                } else {
                    total - total / 2
                };
                (out, pb)
            }
            None => {
                let (pb, pe) = if ca.auto_pad == AutoPad::Valid {
                    (0, 0)
                } else {
                    (pads[d] as i128, pads[d + n] as i128)
                };
                (full - pb - pe, pb)
            }
        };
        if out < 0 {
            return Err(Error::op(
                OP,
                format!("axis {d}: the pads leave a negative output size {out}"),
            ));
        }
        let output = usize::try_from(out)
            .map_err(|_| Error::op(OP, format!("axis {d}: output size {out} is too large")))?;
        let pad_begin = usize::try_from(pb)
            .map_err(|_| Error::op(OP, format!("axis {d}: padding {pb} is out of range")))?;
        axes.push(TAxis {
            input: inp,
            kernel: k,
            stride: s,
            dilation: dil,
            pad_begin,
            output,
        });
    }
    Ok(axes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::{self, seq, t};
    use half::f16;

    fn attrs(kernel: &[usize]) -> ConvAttrs {
        let n = kernel.len();
        ConvAttrs {
            kernel_shape: kernel.to_vec(),
            strides: vec![1; n],
            dilations: vec![1; n],
            pads: vec![0; 2 * n],
            auto_pad: AutoPad::NotSet,
            group: 1,
        }
    }

    fn run(op: &Op, ins: &[&Tensor]) -> Result<Tensor> {
        let ins: Vec<Option<&Tensor>> = ins.iter().map(|t| Some(*t)).collect();
        eval(op, &ins).map(|mut v| v.remove(0))
    }

    fn assert_close(got: &Tensor, shape: &[usize], want: &[f32]) {
        testing::assert_close(got, shape, want, 1e-4);
    }

    fn ones(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        t(shape, vec![1.0; n])
    }

    #[test]
    fn conv_basic_and_padded() {
        // onnx test_basic_conv_with_padding / without_padding.
        let x = seq(&[1, 1, 5, 5]);
        let w = ones(&[1, 1, 3, 3]);
        let mut a = attrs(&[3, 3]);
        a.pads = vec![1, 1, 1, 1];
        let y = run(&Op::Conv(a.clone()), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[1, 1, 5, 5],
            &[
                12., 21., 27., 33., 24., 33., 54., 63., 72., 51., 63., 99., 108., 117., 81., 93.,
                144., 153., 162., 111., 72., 111., 117., 123., 84.,
            ],
        );
        a.pads = vec![0; 4];
        let y = run(&Op::Conv(a), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[1, 1, 3, 3],
            &[54., 63., 72., 99., 108., 117., 144., 153., 162.],
        );
    }

    #[test]
    fn conv_strides_asymmetric_pads() {
        // onnx test_conv_with_strides_and_asymmetric_padding: x 7x5, pads
        // [1,0,1,0], strides 2.
        let x = seq(&[1, 1, 7, 5]);
        let w = ones(&[1, 1, 3, 3]);
        let mut a = attrs(&[3, 3]);
        a.strides = vec![2, 2];
        a.pads = vec![1, 0, 1, 0];
        let y = run(&Op::Conv(a), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[1, 1, 4, 2],
            &[21., 33., 99., 117., 189., 207., 171., 183.],
        );
    }

    #[test]
    fn conv_auto_pad_same_lower_and_dilation() {
        // torch: F.conv2d(F.pad(x, (1,0,1,0)), w, stride=2) for x = arange(25)
        // 5x5 and w = ones 2x2: SAME_LOWER puts the odd pad at the begin.
        let x = seq(&[1, 1, 5, 5]);
        let w = ones(&[1, 1, 2, 2]);
        let mut a = attrs(&[2, 2]);
        a.strides = vec![2, 2];
        a.auto_pad = AutoPad::SameLower;
        a.pads = vec![7, 7, 7, 7]; // ignored with auto_pad
        let y = run(&Op::Conv(a.clone()), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[1, 1, 3, 3],
            &[0., 3., 7., 15., 36., 44., 35., 76., 84.],
        );
        // SAME_UPPER: odd pad at the end.
        a.auto_pad = AutoPad::SameUpper;
        let y = run(&Op::Conv(a), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[1, 1, 3, 3],
            &[12., 20., 13., 52., 60., 33., 41., 45., 24.],
        );
        // Dilation 2, 3x3 kernel on 5x5 -> 1x1: corners + edges + centre.
        let mut a = attrs(&[3, 3]);
        a.dilations = vec![2, 2];
        let w = ones(&[1, 1, 3, 3]);
        let y = run(&Op::Conv(a), &[&x, &w]).unwrap();
        assert_close(&y, &[1, 1, 1, 1], &[108.]);
    }

    #[test]
    fn conv_groups_bias_batch_1d() {
        // Depthwise 1-D conv, group = C = 2, batch 2, bias, stride 2 > k.
        // torch.nn.functional.conv1d(x, w, b, stride=3, groups=2)
        let x = seq(&[2, 2, 7]);
        let w = t(&[2, 1, 2], vec![1., -1., 0.5, 2.]);
        let b = t(&[2], vec![10., 20.]);
        let mut a = attrs(&[2]);
        a.group = 2;
        a.strides = vec![3];
        let y = run(&Op::Conv(a), &[&x, &w, &b]).unwrap();
        assert_close(&y, &[2, 2, 2], &[9., 9., 39.5, 47., 9., 9., 74.5, 82.]);
    }

    #[test]
    fn conv_group2_full_channels() {
        // torch.nn.functional.conv2d(x, w, groups=2), x = arange(2*4*3*3)
        // reshaped [2,4,3,3], w = arange(4*2*2*2)/10 reshaped [4,2,2,2].
        let x = seq(&[2, 4, 3, 3]);
        let wv: Vec<f32> = (0..32).map(|i| i as f32 / 10.0).collect();
        let w = t(&[4, 2, 2, 2], wv);
        let mut a = attrs(&[2, 2]);
        a.group = 2;
        let y = run(&Op::Conv(a), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[2, 4, 2, 2],
            &[
                26.8, 29.6, 35.2, 38.0, 68.4, 77.6, 96.0, 105.2, 390.8, 406.4, 437.6, 453.2, 547.6,
                569.6, 613.6, 635.6, 127.6, 130.4, 136.0, 138.8, 399.6, 408.8, 427.2, 436.4, 952.4,
                968.0, 999.2, 1014.8, 1339.6, 1361.6, 1405.6, 1427.6,
            ],
        );
    }

    #[test]
    fn conv_3d_and_f64_f16() {
        let x = seq(&[1, 1, 3, 3, 3]);
        let w = ones(&[1, 1, 2, 2, 2]);
        let y = run(&Op::Conv(attrs(&[2, 2, 2])), &[&x, &w]).unwrap();
        // Each 2x2x2 block sum of arange: 8*base + (0+1+3+4+9+10+12+13).
        assert_close(
            &y,
            &[1, 1, 2, 2, 2],
            &[52., 60., 76., 84., 124., 132., 148., 156.],
        );
        let xd = Tensor::new(vec![1, 1, 2], TensorData::F64(vec![1.5, 2.0])).unwrap();
        let wd = Tensor::new(vec![1, 1, 1], TensorData::F64(vec![2.0])).unwrap();
        let y = run(&Op::Conv(attrs(&[1])), &[&xd, &wd]).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        assert_eq!(y.to_f64_vec(), vec![3.0, 4.0]);
        let xh = Tensor::new(
            vec![1, 1, 2],
            TensorData::F16(vec![f16::from_f32(1.5), f16::from_f32(2.0)]),
        )
        .unwrap();
        let wh = Tensor::new(vec![1, 1, 1], TensorData::F16(vec![f16::from_f32(2.0)])).unwrap();
        let y = run(&Op::Conv(attrs(&[1])), &[&xh, &wh]).unwrap();
        assert_eq!(y.to_f32_vec(), vec![3.0, 4.0]);
        assert_eq!(y.dtype(), DType::F16);
    }

    #[test]
    fn conv_errors() {
        let x = seq(&[1, 2, 4, 4]);
        let w = ones(&[1, 3, 2, 2]);
        let e = run(&Op::Conv(attrs(&[2, 2])), &[&x, &w]).unwrap_err();
        assert!(e.to_string().contains("dim 1"), "{e}");
        let w = ones(&[1, 2, 2, 2]);
        let e = run(&Op::Conv(attrs(&[3, 3])), &[&x, &w]).unwrap_err();
        assert!(e.to_string().contains("kernel_shape"), "{e}");
        let mut a = attrs(&[2, 2]);
        a.group = 3;
        assert!(run(&Op::Conv(a), &[&x, &w]).is_err());
        let w5 = ones(&[1, 2, 5, 5]);
        assert!(run(&Op::Conv(attrs(&[5, 5])), &[&x, &w5]).is_err());
        let xi = Tensor::from_i64(vec![1, 1, 2], vec![1, 2]).unwrap();
        let wi = Tensor::from_i64(vec![1, 1, 1], vec![1]).unwrap();
        assert!(run(&Op::Conv(attrs(&[1])), &[&xi, &wi]).is_err());
        let mut a = attrs(&[2, 2]);
        a.strides = vec![0, 1];
        assert!(run(&Op::Conv(a), &[&x, &w]).is_err());
        let mut a = attrs(&[2, 2]);
        a.pads = vec![usize::MAX, 0, 0, 0];
        assert!(run(&Op::Conv(a), &[&x, &w]).is_err());
        let b = ones(&[2]);
        assert!(run(&Op::Conv(attrs(&[2, 2])), &[&x, &w, &b]).is_err());
        assert!(eval(&Op::Conv(attrs(&[2, 2])), &[Some(&x)]).is_err());
    }

    fn tattrs(kernel: &[usize]) -> ConvTransposeAttrs {
        ConvTransposeAttrs {
            conv: attrs(kernel),
            output_padding: vec![],
            output_shape: None,
        }
    }

    // x = arange(9) 3x3, W = ones [1,2,3,3] as in onnx convtranspose.py.
    const OUT_SHAPE_10X8: [f32; 80] = [
        0., 0., 1., 1., 3., 2., 2., 0., 0., 0., 1., 1., 3., 2., 2., 0., 0., 0., 1., 1., 3., 2., 2.,
        0., 3., 3., 7., 4., 9., 5., 5., 0., 3., 3., 7., 4., 9., 5., 5., 0., 3., 3., 7., 4., 9., 5.,
        5., 0., 6., 6., 13., 7., 15., 8., 8., 0., 6., 6., 13., 7., 15., 8., 8., 0., 6., 6., 13.,
        7., 15., 8., 8., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
    ];

    #[test]
    fn conv_transpose_onnx_cases() {
        let x = seq(&[1, 1, 3, 3]);
        let w = ones(&[1, 2, 3, 3]);
        // test_convtranspose: plain.
        let y = run(&Op::ConvTranspose(tattrs(&[3, 3])), &[&x, &w]).unwrap();
        let plane = [
            0., 1., 3., 3., 2., 3., 8., 15., 12., 7., 9., 21., 36., 27., 15., 9., 20., 33., 24.,
            13., 6., 13., 21., 15., 8.,
        ];
        let want: Vec<f32> = plane.iter().chain(plane.iter()).copied().collect();
        assert_close(&y, &[1, 2, 5, 5], &want);

        let want: Vec<f32> = OUT_SHAPE_10X8
            .iter()
            .chain(OUT_SHAPE_10X8.iter())
            .copied()
            .collect();
        // test_convtranspose_output_shape.
        let mut a = tattrs(&[3, 3]);
        a.conv.strides = vec![3, 2];
        a.output_shape = Some(vec![10, 8]);
        let y = run(&Op::ConvTranspose(a.clone()), &[&x, &w]).unwrap();
        assert_close(&y, &[1, 2, 10, 8], &want);
        // test_convtranspose_pad (output_padding).
        a.output_shape = None;
        a.output_padding = vec![1, 1];
        let y = run(&Op::ConvTranspose(a.clone()), &[&x, &w]).unwrap();
        assert_close(&y, &[1, 2, 10, 8], &want);
        // test_convtranspose_kernel_shape: both.
        a.output_shape = Some(vec![10, 8]);
        let y = run(&Op::ConvTranspose(a), &[&x, &w]).unwrap();
        assert_close(&y, &[1, 2, 10, 8], &want);

        // test_convtranspose_autopad_same.
        let mut a = tattrs(&[3, 3]);
        a.conv.strides = vec![2, 2];
        a.conv.auto_pad = AutoPad::SameUpper;
        let y = run(&Op::ConvTranspose(a), &[&x, &w]).unwrap();
        let plane = [
            0., 0., 1., 1., 3., 2., 0., 0., 1., 1., 3., 2., 3., 3., 8., 5., 12., 7., 3., 3., 7.,
            4., 9., 5., 9., 9., 20., 11., 24., 13., 6., 6., 13., 7., 15., 8.,
        ];
        let want: Vec<f32> = plane.iter().chain(plane.iter()).copied().collect();
        assert_close(&y, &[1, 2, 6, 6], &want);

        // test_convtranspose_pads: strides [3,2], pads [1,2,1,2] -> 7x3.
        let mut a = tattrs(&[3, 3]);
        a.conv.strides = vec![3, 2];
        a.conv.pads = vec![1, 2, 1, 2];
        let y = run(&Op::ConvTranspose(a), &[&x, &w]).unwrap();
        let plane = [
            1., 1., 3., 1., 1., 3., 7., 4., 9., 7., 4., 9., 7., 4., 9., 13., 7., 15., 13., 7., 15.,
        ];
        let want: Vec<f32> = plane.iter().chain(plane.iter()).copied().collect();
        assert_close(&y, &[1, 2, 7, 3], &want);
    }

    #[test]
    fn conv_transpose_dilation_1d_group_bias() {
        // test_convtranspose_dilations: x 3x3, w 2x2, dilations 2 -> 5x5.
        let x = t(&[1, 1, 3, 3], vec![3., 8., 1., 9., 5., 7., 3., 2., 6.]);
        let w = t(&[1, 1, 2, 2], vec![7., 2., 1., 9.]);
        let mut a = tattrs(&[2, 2]);
        a.conv.dilations = vec![2, 2];
        let y = run(&Op::ConvTranspose(a), &[&x, &w]).unwrap();
        assert_close(
            &y,
            &[1, 1, 5, 5],
            &[
                21., 56., 13., 16., 2., 63., 35., 67., 10., 14., 24., 22., 76., 76., 21., 9., 5.,
                88., 45., 63., 3., 2., 33., 18., 54.,
            ],
        );
        // test_convtranspose_1d: x [1,1,3] = 0,1,2, w ones [1,2,3].
        let x = seq(&[1, 1, 3]);
        let w = ones(&[1, 2, 3]);
        let y = run(&Op::ConvTranspose(tattrs(&[3])), &[&x, &w]).unwrap();
        assert_close(&y, &[1, 2, 5], &[0., 1., 3., 3., 2., 0., 1., 3., 3., 2.]);
        // Groups with 2 output channels per group, bias, stride 2, batch 2.
        // torch.nn.functional.conv_transpose1d(x, w, b, stride=2, groups=2)
        // with x = arange(8).reshape(2,2,2), w = arange(8).reshape(2,2,2)/4.
        let x = seq(&[2, 2, 2]);
        let wv: Vec<f32> = (0..8).map(|i| i as f32 / 4.0).collect();
        let w = t(&[2, 2, 2], wv);
        let b = t(&[4], vec![1., 2., 3., 4.]);
        let mut a = tattrs(&[2]);
        a.conv.group = 2;
        a.conv.strides = vec![2];
        let y = run(&Op::ConvTranspose(a), &[&x, &w, &b]).unwrap();
        assert_close(
            &y,
            &[2, 4, 4],
            &[
                1., 1., 1., 1.25, 2., 2., 2.5, 2.75, 5., 5.5, 6., 6.75, 7., 7.5, 8.5, 9.25, 1., 2.,
                1., 2.25, 4., 5., 4.5, 5.75, 9., 10.5, 10., 11.75, 13., 14.5, 14.5, 16.25,
            ],
        );
    }

    #[test]
    fn conv_transpose_output_shape_and_same_rules() {
        // Values checked against onnxruntime 1-D ConvTranspose.
        let x = t(&[1, 1, 4], vec![1., 10., 100., 1000.]);
        let w1 = ones(&[1, 1, 1]);
        let w3 = t(&[1, 1, 3], vec![1., 2., 3.]);
        // Output smaller than natural: odd cell of padding at the begin.
        let mut a = tattrs(&[1]);
        a.output_shape = Some(vec![1]);
        let y = run(&Op::ConvTranspose(a), &[&x, &w1]).unwrap();
        assert_close(&y, &[1, 1, 1], &[100.]);
        let mut a = tattrs(&[3]);
        a.output_shape = Some(vec![3]);
        let y = run(&Op::ConvTranspose(a.clone()), &[&x, &w3]).unwrap();
        assert_close(&y, &[1, 1, 3], &[123., 1230., 2300.]);
        a.conv.auto_pad = AutoPad::SameUpper;
        let y = run(&Op::ConvTranspose(a), &[&x, &w3]).unwrap();
        assert_close(&y, &[1, 1, 3], &[12., 123., 1230.]);
        // SAME with stride 2: output in * stride.
        let mut a = tattrs(&[3]);
        a.conv.strides = vec![2];
        a.conv.auto_pad = AutoPad::SameLower;
        let y = run(&Op::ConvTranspose(a), &[&x, &w3]).unwrap();
        assert_close(
            &y,
            &[1, 1, 8],
            &[2., 13., 20., 130., 200., 1300., 2000., 3000.],
        );
        // SAME where the natural extent is shorter than in * stride: no
        // negative padding, zeros at the end.
        let mut a = tattrs(&[1]);
        a.conv.strides = vec![2];
        a.conv.auto_pad = AutoPad::SameUpper;
        let y = run(&Op::ConvTranspose(a), &[&x, &w1]).unwrap();
        assert_close(&y, &[1, 1, 8], &[1., 0., 10., 0., 100., 0., 1000., 0.]);
        // output_shape overrides explicit pads.
        let x3 = t(&[1, 1, 3], vec![1., 10., 100.]);
        let mut a = tattrs(&[3]);
        a.conv.strides = vec![3];
        a.conv.pads = vec![1, 1];
        a.output_shape = Some(vec![10]);
        let y = run(&Op::ConvTranspose(a), &[&x3, &w3]).unwrap();
        assert_close(
            &y,
            &[1, 1, 10],
            &[1., 2., 3., 10., 20., 30., 100., 200., 300., 0.],
        );
    }

    #[test]
    fn conv_transpose_errors() {
        let x = seq(&[1, 2, 3]);
        let w = ones(&[3, 1, 2]);
        assert!(run(&Op::ConvTranspose(tattrs(&[2])), &[&x, &w]).is_err());
        let w = ones(&[2, 1, 2]);
        let b = ones(&[2]);
        // group 1: 1 output channel but B has 2.
        assert!(run(&Op::ConvTranspose(tattrs(&[2])), &[&x, &w, &b]).is_err());
        let mut a = tattrs(&[2]);
        a.conv.pads = vec![5, 5];
        assert!(run(&Op::ConvTranspose(a), &[&x, &w]).is_err());
        let mut a = tattrs(&[2]);
        a.output_shape = Some(vec![4, 4]);
        assert!(run(&Op::ConvTranspose(a), &[&x, &w]).is_err());
    }

    #[test]
    fn window_axes_rules() {
        // ceil_mode: in 4, k 3, s 2 -> 2; last window must start inside.
        let a = window_axes("t", &[4], &[3], &[2], &[], &[], AutoPad::NotSet, true).unwrap();
        assert_eq!(a[0].output, 2);
        // in 2, k 3, s 3, pads 1/1, ceil -> ceil((4-3)/3)+1 = 2, reduced to 1.
        let a = window_axes("t", &[2], &[3], &[3], &[], &[1, 1], AutoPad::NotSet, true).unwrap();
        assert_eq!(a[0].output, 1);
        let a = window_axes("t", &[5], &[2], &[2], &[], &[], AutoPad::SameUpper, false).unwrap();
        assert_eq!((a[0].output, a[0].pad_begin, a[0].pad_end), (3, 0, 1));
        let a = window_axes("t", &[5], &[2], &[2], &[], &[], AutoPad::SameLower, false).unwrap();
        assert_eq!((a[0].output, a[0].pad_begin, a[0].pad_end), (3, 1, 0));
        let a = window_axes("t", &[7], &[3], &[2], &[2], &[], AutoPad::Valid, false).unwrap();
        assert_eq!(a[0].output, 2);
        assert!(window_axes("t", &[7], &[3], &[2, 2], &[], &[], AutoPad::NotSet, false).is_err());
        assert!(window_axes("t", &[7], &[3, 3], &[], &[], &[], AutoPad::NotSet, false).is_err());
    }
}

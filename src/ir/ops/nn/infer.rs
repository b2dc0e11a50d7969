//! Type and shape inference of the nn family's ops.

use crate::ir::infer::ctx::{
    broadcast, dims_from_value, in_ty, opt_ty, tt, unify, unique_axes, vec_len, Ctx, Mono,
};
use crate::ir::ops::util::not_held;
use crate::ir::{
    AspectPolicy, AutoPad, ConvAttrs, ConvTransposeAttrs, DType, Dim, Node, Op, PoolAttrs,
    ResizeAttrs, Shape, TensorType,
};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
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
        Op::Resize(a) => resize(cx, node, a).map(|t| vec![t]),
        _ => Err(Error::Internal(not_held("nn", op))),
    }
}

fn matmul(cx: &mut Ctx, node: &Node) -> Result<TensorType> {
    let a = in_ty(cx, node, 0)?;
    let b = in_ty(cx, node, 1)?;
    matmul_type(node.op.onnx_type(), a, b)
}

/// A spatial list attribute, defaulted when empty, checked for length.
pub(crate) fn spatial(
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

pub(crate) fn conv(cx: &mut Ctx, node: &Node, c: &ConvAttrs) -> Result<TensorType> {
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

fn conv_transpose(cx: &mut Ctx, node: &Node, c: &ConvTransposeAttrs) -> Result<TensorType> {
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

fn resize(cx: &mut Ctx, node: &Node, a: &ResizeAttrs) -> Result<TensorType> {
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

/// numpy matmul of two operand types: the MatMul rule, shared with
/// FusedMatMul (whose operands arrive already transposed).
pub(crate) fn matmul_type(op: &'static str, a: &TensorType, b: &TensorType) -> Result<TensorType> {
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

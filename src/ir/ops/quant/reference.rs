//! Reference kernels for quantization: the ONNX ops QuantizeLinear,
//! DequantizeLinear and DynamicQuantizeLinear, and mlc's int8 products QConv
//! and QMatMul.
//!
//! QConv and QMatMul follow [`ActQuant`]'s arithmetic: the activation is
//! quantized to u8, the products `(q - zp) * w` are summed exactly (here in
//! f64 through the Conv and MatMul kernels: every term is an integer and the
//! sums stay far below 2^53, so the result is the exact int32 accumulator),
//! then dequantized in f32 and finished with the fused op's epilogue. This is
//! the oracle the int8 kernels are held to bit for bit.

use crate::ir::ops::fused::reference as fused;
use crate::ir::ops::nn::{conv, linalg};
use crate::ir::ops::util::{input, normalize_axis, not_held, opt_input};
use crate::ir::{ActQuant, Activation, ConvAttrs, DType, Op, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates a quantization op.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    match op {
        Op::QConv { conv, x_quant, act } => {
            qconv(conv, *x_quant, act.as_ref(), inputs).map(|t| vec![t])
        }
        Op::QMatMul { a_quant, act } => qmatmul(*a_quant, act.as_ref(), inputs).map(|t| vec![t]),
        Op::QuantizeLinear {
            axis,
            block_size,
            saturate: _,
            output_dtype,
        } => quantize_linear(*axis, *block_size, *output_dtype, inputs).map(|t| vec![t]),
        Op::DequantizeLinear { axis, block_size } => {
            dequantize_linear(*axis, *block_size, inputs).map(|t| vec![t])
        }
        Op::DynamicQuantizeLinear => dynamic_quantize_linear(inputs),
        other => Err(Error::Internal(not_held("quant", other))),
    }
}

/// Scale and zero point of u8 asymmetric quantization of `x`, as ONNX
/// DynamicQuantizeLinear computes them (see [`ActQuant`]).
pub fn dynamic_params(x: &[f32]) -> (f32, u8) {
    let (lo, hi) = finite_range(x);
    range_params(lo, hi)
}

/// The smallest and largest finite values of `x`, widened to hold 0.
/// Minimum and maximum are exact whatever the order (a zero never
/// replaces the starting `+0`, so the sign of zero cannot depend on it),
/// so the 32 running lanes (four independent vectors, no single long
/// chain of dependent min/max; the runtime compiles this for AVX2 too)
/// give a plain loop's values.
#[inline(always)]
pub fn finite_range(x: &[f32]) -> (f32, f32) {
    // A non-finite value counts as 0, which the range holds anyway.
    let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
    const L: usize = 32;
    let (mut lo, mut hi) = ([0f32; L], [0f32; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            let v = finite(c[i]);
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
        }
    }
    let (mut l, mut h) = (0f32, 0f32);
    for &v in chunks.remainder() {
        l = l.min(finite(v));
        h = h.max(finite(v));
    }
    for i in 0..L {
        l = l.min(lo[i]);
        h = h.max(hi[i]);
    }
    (l, h)
}

/// Scale and zero point of u8 asymmetric quantization of `[lo, hi]`
/// (which must contain 0).
pub fn range_params(lo: f32, hi: f32) -> (f32, u8) {
    if hi == lo {
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    let zp = (0.0 - lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// `clamp(round_half_even(x / scale) + zp, 0, 255)`; NaN gives 0.
pub fn quantize_u8(x: f32, scale: f32, zp: u8) -> u8 {
    ((x / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8
}

/// The u8 quantization of `x` with `q`'s parameters, and those parameters.
pub fn quantize_activation(x: &[f32], q: ActQuant) -> (Vec<u8>, f32, u8) {
    let (scale, zp) = match q {
        ActQuant::Dynamic => dynamic_params(x),
        ActQuant::Static { scale, zero_point } => (scale, zero_point),
    };
    (
        x.iter().map(|&v| quantize_u8(v, scale, zp)).collect(),
        scale,
        zp,
    )
}

/// Items of an activation of `shape` that get their own dynamic
/// quantization: the first axis (a batch's samples, a matrix's rows) of
/// anything of rank 2 or more. Per item, a sample's result does not
/// depend on what it is batched with, as a served model's must not.
pub fn quant_items(shape: &[usize]) -> usize {
    match shape {
        [n, _, ..] => *n,
        _ => 1,
    }
}

/// [`quantize_activation`] of an activation of `shape`: dynamic
/// parameters per item ([`quant_items`]). Returns the bytes and each
/// item's `(scale, zero point)`.
pub fn quantize_items(x: &[f32], shape: &[usize], q: ActQuant) -> (Vec<u8>, Vec<(f32, u8)>) {
    let items = quant_items(shape).max(1);
    let per = x.len() / items;
    let mut bytes = Vec::with_capacity(x.len());
    let mut params = Vec::with_capacity(items);
    for i in 0..items {
        let end = if i + 1 == items {
            x.len()
        } else {
            (i + 1) * per
        };
        let (b, scale, zp) = quantize_activation(&x[i * per..end], q);
        bytes.extend(b);
        params.push((scale, zp));
    }
    (bytes, params)
}

/// `(q - zp)` as an f64 tensor of `shape` (exact integers), `zp` per item
/// of the first axis.
fn centered(q: &[u8], params: &[(f32, u8)], shape: &[usize]) -> Result<Tensor> {
    let per = q.len() / params.len().max(1);
    let v: Vec<f64> = q
        .iter()
        .enumerate()
        .map(|(i, &x)| x as f64 - params[(i / per.max(1)).min(params.len() - 1)].1 as f64)
        .collect();
    Tensor::new(shape.to_vec(), TensorData::F64(v)).map_err(|e| Error::Internal(e.to_string()))
}

/// An int8 weight as an f64 tensor (exact).
fn weight_f64(op: &'static str, w: &Tensor) -> Result<Tensor> {
    match w.data() {
        TensorData::I8(v) => Tensor::new(
            w.shape().to_vec(),
            TensorData::F64(v.iter().map(|&x| x as f64).collect()),
        )
        .map_err(|e| Error::Internal(e.to_string())),
        _ => Err(Error::op(
            op,
            format!("the weight must be i8, got {}", w.dtype()),
        )),
    }
}

/// The f32 data of an input, or an error naming it.
fn f32_input<'a>(op: &'static str, what: &str, t: &'a Tensor) -> Result<&'a [f32]> {
    t.as_f32()
        .ok_or_else(|| Error::op(op, format!("{what} must be f32, got {}", t.dtype())))
}

/// `acc * (a_scale * w_scale[c])` in f32 with `c` the channel of each
/// element (`channel(i)`), `w_scale` of length 1 or the channel count,
/// `a_scale` the scale of the element's item (`a_scales` one per item of
/// the first axis).
fn dequantize_acc(
    op: &'static str,
    acc: &Tensor,
    a_scales: &[f32],
    w_scale: &[f32],
    channels: usize,
    channel: impl Fn(usize) -> usize,
) -> Result<Tensor> {
    if w_scale.len() != 1 && w_scale.len() != channels {
        return Err(Error::op(
            op,
            format!(
                "the weight scale has {} values for {channels} output channels",
                w_scale.len()
            ),
        ));
    }
    let per = acc.numel() / a_scales.len().max(1);
    let y: Vec<f32> = acc
        .to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let s = w_scale[if w_scale.len() == 1 { 0 } else { channel(i) }];
            let a_scale = a_scales[(i / per.max(1)).min(a_scales.len() - 1)];
            (a as f32) * (a_scale * s)
        })
        .collect();
    Tensor::from_f32(acc.shape().to_vec(), y).map_err(|e| Error::Internal(e.to_string()))
}

/// `act(dequant(conv(quant(X), W)) + B + R)`.
fn qconv(
    attrs: &ConvAttrs,
    x_quant: ActQuant,
    act: Option<&Activation>,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "QConv";
    let x = input(OP, inputs, 0)?;
    let w = input(OP, inputs, 1)?;
    let w_scale = f32_input(OP, "the weight scale", input(OP, inputs, 2)?)?;
    let (q, params) = quantize_items(f32_input(OP, "X", x)?, x.shape(), x_quant);
    let xc = centered(&q, &params, x.shape())?;
    let wf = weight_f64(OP, w)?;
    let acc = conv::eval(&Op::Conv(attrs.clone()), &[Some(&xc), Some(&wf), None])?
        .pop()
        .ok_or_else(|| Error::op(OP, "internal: the conv kernel gave no output"))?;
    let shape = acc.shape();
    let m = shape.get(1).copied().unwrap_or(1);
    let plane: usize = shape.iter().skip(2).product();
    let a_scales: Vec<f32> = params.iter().map(|p| p.0).collect();
    let y = dequantize_acc(OP, &acc, &a_scales, w_scale, m, |i| (i / plane.max(1)) % m)?;
    epilogue(OP, y, opt_input(inputs, 3), opt_input(inputs, 4), act)
}

/// `act(dequant(quant(A) @ B) + bias)`.
fn qmatmul(
    a_quant: ActQuant,
    act: Option<&Activation>,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "QMatMul";
    let a = input(OP, inputs, 0)?;
    let b = input(OP, inputs, 1)?;
    let b_scale = f32_input(OP, "the weight scale", input(OP, inputs, 2)?)?;
    if b.rank() != 2 {
        return Err(Error::op(
            OP,
            format!("B must be 2-D, got shape {:?}", b.shape()),
        ));
    }
    let (q, params) = quantize_items(f32_input(OP, "A", a)?, a.shape(), a_quant);
    let ac = centered(&q, &params, a.shape())?;
    let bf = weight_f64(OP, b)?;
    let acc = linalg::eval(&Op::MatMul, &[Some(&ac), Some(&bf)])?
        .pop()
        .ok_or_else(|| Error::op(OP, "internal: the MatMul kernel gave no output"))?;
    let n = b.shape()[1];
    let a_scales: Vec<f32> = params.iter().map(|p| p.0).collect();
    let y = dequantize_acc(OP, &acc, &a_scales, b_scale, n, |i| i % n)?;
    epilogue(OP, y, opt_input(inputs, 3), None, act)
}

/// Adds the bias (per channel for a conv, broadcast for a product) and
/// the residual, then applies the activation, with the fused ops' kernels.
fn epilogue(
    op: &'static str,
    y: Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    act: Option<&Activation>,
) -> Result<Tensor> {
    let y = match bias {
        Some(b) if op == "QConv" => {
            // [M] onto [N, M, spatial..]: reshape to [M, 1, ..].
            let mut shape = vec![b.numel()];
            shape.extend(std::iter::repeat_n(1, y.rank().saturating_sub(2)));
            let b = b
                .clone()
                .reshape(shape)
                .map_err(|e| Error::op(op, format!("the bias: {e}")))?;
            fused::add_onto(op, "the bias", y, &b)?
        }
        Some(b) => fused::add_onto(op, "the bias", y, b)?,
        None => y,
    };
    let y = match residual {
        Some(r) => fused::add_onto(op, "the residual R", y, r)?,
        None => y,
    };
    fused::apply_activation(act, y)
}

/// Where the scale of each element of `shape` sits: per tensor, per `axis`
/// or per block of `block_size` along `axis`; checked against the scale's
/// shape.
fn scale_index(
    op: &'static str,
    shape: &[usize],
    scale_shape: &[usize],
    axis: i64,
    block_size: usize,
) -> Result<Box<dyn Fn(usize) -> usize>> {
    let scale_n: usize = scale_shape.iter().product();
    if scale_shape.is_empty() || (scale_n == 1 && scale_shape.len() == 1 && block_size == 0) {
        return Ok(Box::new(|_| 0));
    }
    let a = normalize_axis(op, axis, shape.len())?;
    let d = shape[a];
    let inner: usize = shape[a + 1..].iter().product();
    if block_size == 0 {
        if scale_shape != [d] {
            return Err(Error::op(
                op,
                format!(
                    "a per-axis scale of shape {scale_shape:?} does not fit axis {a} of {shape:?}"
                ),
            ));
        }
        return Ok(Box::new(move |i| (i / inner.max(1)) % d));
    }
    let blocks = d.div_ceil(block_size);
    let mut want = shape.to_vec();
    want[a] = blocks;
    if scale_shape != want.as_slice() {
        return Err(Error::op(
            op,
            format!(
                "a blocked scale of shape {scale_shape:?} does not fit {shape:?} with block size {block_size} on axis {a}"
            ),
        ));
    }
    Ok(Box::new(move |i| {
        let j = i % inner.max(1);
        let r = i / inner.max(1);
        let (o, k) = (r / d, r % d);
        (o * blocks + k / block_size) * inner + j
    }))
}

/// The representable range of a quantized integer type.
fn int_range(op: &'static str, d: DType) -> Result<(f64, f64)> {
    Ok(match d {
        DType::I8 => (-128.0, 127.0),
        DType::U8 => (0.0, 255.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U16 => (0.0, 65535.0),
        DType::I4 => (-8.0, 7.0),
        DType::U4 => (0.0, 15.0),
        DType::I2 => (-2.0, 1.0),
        DType::U2 => (0.0, 3.0),
        other => {
            return Err(Error::op(
                op,
                format!(
                    "cannot quantize to {other}: an 8/4/2-bit or 16-bit integer type is needed"
                ),
            ))
        }
    })
}

/// The elements of an integer tensor as i64 (the quantized types included).
fn int_values(op: &'static str, what: &str, t: &Tensor) -> Result<Vec<i64>> {
    let v: Vec<i64> = match t.data() {
        TensorData::I8(v) | TensorData::I4(v) | TensorData::I2(v) => {
            v.iter().map(|&x| x as i64).collect()
        }
        TensorData::U8(v) | TensorData::U4(v) | TensorData::U2(v) => {
            v.iter().map(|&x| x as i64).collect()
        }
        TensorData::I16(v) => v.iter().map(|&x| x as i64).collect(),
        TensorData::U16(v) => v.iter().map(|&x| x as i64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
        _ => {
            return Err(Error::op(
                op,
                format!("{what} must be an integer tensor, got {}", t.dtype()),
            ))
        }
    };
    Ok(v)
}

/// https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html (opset 21:
/// per tensor, per axis, blocked; float8 outputs are not supported).
fn quantize_linear(
    axis: i64,
    block_size: usize,
    output_dtype: Option<DType>,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "QuantizeLinear";
    let x = input(OP, inputs, 0)?;
    let scale = input(OP, inputs, 1)?;
    let zp = opt_input(inputs, 2);
    let out = zp.map(|z| z.dtype()).or(output_dtype).unwrap_or(DType::U8);
    let (lo, hi) = int_range(OP, out)?;
    let idx = scale_index(OP, x.shape(), scale.shape(), axis, block_size)?;
    let s = scale.to_f64_vec();
    let z = match zp {
        Some(z) => int_values(OP, "the zero point", z)?,
        None => vec![0; s.len()],
    };
    if z.len() != s.len() {
        return Err(Error::op(OP, "the zero point and the scale differ in size"));
    }
    // The division is done in the scale's precision (f32 for f32 scales), as
    // ONNX Runtime does.
    let xs = x.to_f64_vec();
    let q: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = idx(i);
            let r = if scale.dtype() == DType::F64 {
                (v / s[k]).round_ties_even()
            } else {
                ((v as f32) / (s[k] as f32)).round_ties_even() as f64
            };
            if r.is_nan() {
                z[k] as f64
            } else {
                (r + z[k] as f64).clamp(lo, hi)
            }
        })
        .collect();
    Tensor::new(x.shape().to_vec(), TensorData::from_f64(out, &q))
        .map_err(|e| Error::Internal(e.to_string()))
}

/// https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html (opset 21).
fn dequantize_linear(axis: i64, block_size: usize, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    const OP: &str = "DequantizeLinear";
    let x = input(OP, inputs, 0)?;
    let scale = input(OP, inputs, 1)?;
    let xs = int_values(OP, "x", x)?;
    let idx = scale_index(OP, x.shape(), scale.shape(), axis, block_size)?;
    let s = scale.to_f64_vec();
    let z = match opt_input(inputs, 2) {
        Some(z) => int_values(OP, "the zero point", z)?,
        None => vec![0; s.len()],
    };
    if z.len() != s.len() {
        return Err(Error::op(OP, "the zero point and the scale differ in size"));
    }
    let y: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = idx(i);
            if scale.dtype() == DType::F64 {
                (v - z[k]) as f64 * s[k]
            } else {
                ((v - z[k]) as f32 * s[k] as f32) as f64
            }
        })
        .collect();
    Tensor::new(x.shape().to_vec(), TensorData::from_f64(scale.dtype(), &y))
        .map_err(|e| Error::Internal(e.to_string()))
}

/// https://onnx.ai/onnx/operators/onnx__DynamicQuantizeLinear.html
fn dynamic_quantize_linear(inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    const OP: &str = "DynamicQuantizeLinear";
    let x = input(OP, inputs, 0)?;
    let (q, scale, zp) = quantize_activation(f32_input(OP, "x", x)?, ActQuant::Dynamic);
    let y = Tensor::new(x.shape().to_vec(), TensorData::U8(q))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let zp = Tensor::new(vec![], TensorData::U8(vec![zp]))
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(vec![y, Tensor::scalar_f32(scale), zp])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_params_follow_onnx() {
        // ONNX's DynamicQuantizeLinear example: x = [0, 2, -3, -2.5, 1.34, 0.5].
        let (s, z) = dynamic_params(&[0.0, 2.0, -3.0, -2.5, 1.34, 0.5]);
        assert!((s - 0.019_607_844).abs() < 1e-9, "{s}");
        assert_eq!(z, 153);
        let q: Vec<u8> = [0.0f32, 2.0, -3.0, -2.5, 1.34, 0.5]
            .iter()
            .map(|&v| quantize_u8(v, s, z))
            .collect();
        assert_eq!(q, vec![153, 255, 0, 26, 221, 179]);
        assert_eq!(dynamic_params(&[0.0, 0.0]), (1.0, 0));
        assert_eq!(dynamic_params(&[]), (1.0, 0));
        // Only positive values: lo is 0, zero point 0.
        assert_eq!(dynamic_params(&[1.0, 2.0, f32::NAN]).1, 0);
        assert_eq!(quantize_u8(f32::NAN, 0.1, 7), 0);
    }

    #[test]
    fn qmatmul_is_the_exact_integer_product() {
        // A = [[0, 255 * s]] quantized with scale s, zero point 0 -> q = [0, 255].
        let s = 0.5f32;
        let a = Tensor::from_f32(vec![1, 2], vec![0.0, 127.5]).unwrap();
        let b = Tensor::new(vec![2, 2], TensorData::I8(vec![-128, 127, -128, 127])).unwrap();
        let scale = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        let op = Op::QMatMul {
            a_quant: ActQuant::Static {
                scale: s,
                zero_point: 0,
            },
            act: None,
        };
        let y = eval(&op, &[Some(&a), Some(&b), Some(&scale)])
            .unwrap()
            .remove(0);
        // acc = [255 * -128, 255 * 127]
        assert_eq!(
            y.as_f32().unwrap(),
            &[(255.0 * -128.0) * 0.5, (255.0 * 127.0) * 1.0]
        );
    }

    #[test]
    fn qconv_pads_with_the_zero_point() {
        // A 1x1 input with a 3x3 kernel and pad 1: only the centre tap sees data.
        let x = Tensor::from_f32(vec![1, 1, 1, 1], vec![1.0]).unwrap();
        let w = Tensor::new(vec![1, 1, 3, 3], TensorData::I8(vec![1; 9])).unwrap();
        let scale = Tensor::from_f32(vec![1], vec![1.0]).unwrap();
        let attrs = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            auto_pad: Default::default(),
            group: 1,
        };
        let op = Op::QConv {
            conv: attrs,
            x_quant: ActQuant::Static {
                scale: 1.0 / 64.0,
                zero_point: 100,
            },
            act: None,
        };
        let y = eval(&op, &[Some(&x), Some(&w), Some(&scale)])
            .unwrap()
            .remove(0);
        assert_eq!(y.as_f32().unwrap(), &[1.0]);
    }

    #[test]
    fn quantize_and_dequantize_linear() {
        let x = Tensor::from_f32(vec![2, 2], vec![-1.0, 0.26, 300.0, 1.0]).unwrap();
        let scale = Tensor::from_f32(vec![2], vec![0.5, 1.0]).unwrap();
        let zp = Tensor::new(vec![2], TensorData::I8(vec![0, 1])).unwrap();
        let op = Op::QuantizeLinear {
            axis: 0,
            block_size: 0,
            saturate: true,
            output_dtype: None,
        };
        let q = eval(&op, &[Some(&x), Some(&scale), Some(&zp)])
            .unwrap()
            .remove(0);
        assert_eq!(q.to_i64_vec(), Some(vec![-2, 1, 127, 2]));
        let dq = Op::DequantizeLinear {
            axis: 0,
            block_size: 0,
        };
        let y = eval(&dq, &[Some(&q), Some(&scale), Some(&zp)])
            .unwrap()
            .remove(0);
        assert_eq!(y.as_f32().unwrap(), &[-1.0, 0.5, 126.0, 1.0]);

        // Blocked int4 with f16 scales along axis 0, blocks of 2.
        let w = Tensor::new(vec![3, 1], TensorData::I4(vec![-8, 7, 3])).unwrap();
        let s = Tensor::new(
            vec![2, 1],
            TensorData::F16(vec![half::f16::from_f32(0.5), half::f16::from_f32(2.0)]),
        )
        .unwrap();
        let dq = Op::DequantizeLinear {
            axis: 0,
            block_size: 2,
        };
        let y = eval(&dq, &[Some(&w), Some(&s), None]).unwrap().remove(0);
        assert_eq!(y.dtype(), DType::F16);
        assert_eq!(y.to_f32_vec(), vec![-4.0, 3.5, 6.0]);
    }
}

//! Lowering of an mlc [`Graph`] to a candle forward pass with autograd.
//!
//! The f32 weights and biases of the layers distillation trains (Conv,
//! FusedConv, Gemm, MatMul, FusedMatMul, and the scales and shifts of the
//! normalizations) become [`Var`]s; every other constant stays a constant
//! tensor. Each node becomes the candle ops that compute what mlc's
//! reference kernel computes (the reference interpreter is the oracle the
//! tests compare with). An op the lowering does not know is refused when the
//! graph is lowered, naming the op and the node, before any training starts.
//!
//! The int8 products QConv and QMatMul are lowered only for
//! quantization-aware training ([`Lowered::with_qat`], see [`qat`]):
//! fake-quantized, their weights trained in float.

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor as CTensor, Var, D};

use crate::ir::{
    Activation, AutoPad, BinaryOp, ConvAttrs, EwArg, EwStep, Graph, Node, NodeId, Op, PoolAttrs,
    UnaryOp, ValueId,
};
use crate::{Error, Result, Tensor};

pub mod qat;

use qat::QatWeight;

/// A candle error, as an mlc error (candle's errors here are mlc's bugs:
/// the lowering checked what it accepts).
pub(crate) fn cerr(e: candle_core::Error) -> Error {
    Error::Internal(format!("distill: {e}"))
}

/// An mlc f32 tensor as a candle tensor on the CPU.
pub(crate) fn to_candle(t: &Tensor) -> Result<CTensor> {
    let v = t
        .as_f32()
        .ok_or_else(|| Error::Internal(format!("distill: a {} tensor is not f32", t.dtype())))?;
    CTensor::from_vec(v.to_vec(), t.shape().to_vec(), &Device::Cpu).map_err(cerr)
}

/// A candle f32 tensor back as an mlc tensor.
pub(crate) fn from_candle(t: &CTensor) -> Result<Tensor> {
    let v = t
        .flatten_all()
        .and_then(|f| f.to_dtype(CDType::F32))
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(cerr)?;
    Tensor::from_f32(t.dims().to_vec(), v).map_err(|e| Error::Internal(e.to_string()))
}

/// A trained constant: the value it replaces, its variable, and the mask
/// of its nonzero entries when it had exact zeros (a pruned weight).
pub struct Param {
    pub value: ValueId,
    pub var: Var,
    pub mask: Option<CTensor>,
    /// Exact zeros of the weight as given (kept zero by the mask).
    pub zeros: usize,
}

/// A graph lowered to candle: run [`Lowered::forward`] on batched inputs.
pub struct Lowered<'g> {
    pub(super) g: &'g Graph,
    order: Vec<NodeId>,
    consts: HashMap<ValueId, CTensor>,
    pub params: Vec<Param>,
    /// The grids of the int8 weights trained with QAT, by weight value.
    pub(super) qat: HashMap<ValueId, QatWeight>,
}

/// The inputs of `op` whose f32 constants are trained.
fn trainable_inputs(op: &Op) -> &'static [usize] {
    match op {
        Op::Conv(_) | Op::FusedConv { .. } | Op::Gemm { .. } => &[1, 2],
        Op::MatMul => &[0, 1],
        Op::FusedMatMul { .. } => &[0, 1, 2],
        // The i8 weight is a QAT parameter of its own (qat::weight_params).
        Op::QConv { .. } | Op::QMatMul { .. } => &[3],
        Op::BatchNormalization { .. }
        | Op::LayerNormalization { .. }
        | Op::InstanceNormalization { .. } => &[1, 2],
        _ => &[],
    }
}

fn unsupported(node: &Node, why: Option<&str>) -> Error {
    Error::Usage(format!(
        "distill: op {} (node '{}') is not supported by the training lowering{}",
        node.op.onnx_type(),
        node.name,
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    ))
}

fn unary_supported(u: &UnaryOp) -> bool {
    matches!(
        u,
        UnaryOp::Relu
            | UnaryOp::Sigmoid
            | UnaryOp::Tanh
            | UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Neg
            | UnaryOp::Abs
            | UnaryOp::Sqrt
            | UnaryOp::Reciprocal
            | UnaryOp::Erf
            | UnaryOp::Gelu { .. }
            | UnaryOp::LeakyRelu { .. }
            | UnaryOp::HardSigmoid { .. }
            | UnaryOp::HardSwish
    )
}

fn arith(b: BinaryOp) -> bool {
    matches!(
        b,
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
    )
}

/// Whether the lowering handles `node` (with the constants it reads).
fn check_node(g: &Graph, node: &Node) -> Result<()> {
    let konst = |i: usize| node.input(i).and_then(|v| g.consts.get(&v));
    let conv_ok = |c: &ConvAttrs| -> Result<()> {
        let rank = c.kernel_shape.len();
        if !(1..=2).contains(&rank) {
            return Err(unsupported(node, Some("only 1-D and 2-D convolutions")));
        }
        if rank == 2 && c.dilations[0] != c.dilations[1] {
            return Err(unsupported(node, Some("unequal dilations")));
        }
        Ok(())
    };
    let pool_ok = |p: &PoolAttrs| -> Result<()> {
        if p.kernel_shape.len() != 2
            || p.pads.iter().any(|&x| x != 0)
            || p.ceil_mode
            || p.dilations.iter().any(|&d| d != 1)
            || !matches!(p.auto_pad, AutoPad::NotSet | AutoPad::Valid)
        {
            return Err(unsupported(
                node,
                Some("only 2-D pooling without padding, dilation or ceil mode"),
            ));
        }
        Ok(())
    };
    match &node.op {
        Op::Conv(c) => conv_ok(c)?,
        Op::FusedConv { conv, .. } => conv_ok(conv)?,
        Op::Gemm { .. } | Op::MatMul | Op::FusedMatMul { .. } => {}
        Op::Unary(u) if unary_supported(u) => {}
        Op::Binary(b) if arith(*b) => {}
        Op::Clip => {
            for i in [1, 2] {
                if node.input(i).is_some() && konst(i).and_then(|t| t.as_f32()).is_none() {
                    return Err(unsupported(node, Some("bounds must be f32 constants")));
                }
            }
        }
        Op::Elementwise { steps } => {
            for s in steps {
                let ok = match s {
                    EwStep::Unary(u, _) => unary_supported(u),
                    EwStep::Binary(b, _, y) => {
                        arith(*b) || (*b == BinaryOp::Pow && matches!(y, EwArg::Scalar(_)))
                    }
                    EwStep::Clip(..) => true,
                };
                if !ok {
                    return Err(unsupported(node, Some(&format!("chain step {s:?}"))));
                }
            }
        }
        Op::Flatten { .. } | Op::Identity | Op::Transpose { .. } | Op::Concat { .. } => {}
        Op::Dropout => {}
        Op::Reshape { .. } => {
            if konst(1).and_then(|t| t.to_i64_vec()).is_none() {
                return Err(unsupported(node, Some("the shape must be a constant")));
            }
        }
        Op::Softmax { .. } | Op::LogSoftmax { .. } => {}
        Op::MaxPool(p) if node.outputs.len() == 1 => pool_ok(p)?,
        Op::AveragePool(p) => pool_ok(p)?,
        Op::GlobalAveragePool | Op::GlobalMaxPool => {}
        Op::BatchNormalization {
            training_momentum: None,
            ..
        } => {}
        _ => return Err(unsupported(node, None)),
    }
    // Every input is a graph input, a node output or an f32 constant, except
    // the constant operands read above (shapes).
    for (pos, v) in node.inputs.iter().enumerate() {
        let Some(v) = v else { continue };
        if let Some(t) = g.consts.get(v) {
            let shape_arg = matches!(node.op, Op::Reshape { .. }) && pos == 1;
            if !shape_arg && t.as_f32().is_none() {
                return Err(unsupported(
                    node,
                    Some(&format!("constant '{}' is {}", g.value(*v).name, t.dtype())),
                ));
            }
        }
    }
    Ok(())
}

/// An operand of a chain step: a tensor or a scalar.
enum Arg {
    T(CTensor),
    S(f64),
}

pub(super) fn act(x: CTensor, a: &Option<Activation>) -> candle_core::Result<CTensor> {
    let Some(a) = a else { return Ok(x) };
    match a {
        Activation::Relu => x.relu(),
        Activation::Clip { min, max } => x.clamp(*min, *max),
        Activation::Sigmoid => candle_nn::ops::sigmoid(&x),
        Activation::Tanh => x.tanh(),
        Activation::HardSigmoid { alpha, beta } => {
            x.affine(*alpha as f64, *beta as f64)?.clamp(0f32, 1f32)
        }
        Activation::HardSwish => x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?.mul(&x),
        Activation::LeakyRelu { alpha } => candle_nn::ops::leaky_relu(&x, *alpha as f64),
        Activation::Gelu { tanh_approx } => {
            if *tanh_approx {
                x.gelu()
            } else {
                x.gelu_erf()
            }
        }
    }
}

fn unary(u: &UnaryOp, x: &CTensor) -> candle_core::Result<CTensor> {
    match u {
        UnaryOp::Relu => x.relu(),
        UnaryOp::Sigmoid => candle_nn::ops::sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.log(),
        UnaryOp::Neg => x.neg(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Reciprocal => x.recip(),
        UnaryOp::Erf => x.erf(),
        UnaryOp::Gelu { tanh_approx: true } => x.gelu(),
        UnaryOp::Gelu { tanh_approx: false } => x.gelu_erf(),
        UnaryOp::LeakyRelu { alpha } => candle_nn::ops::leaky_relu(x, *alpha as f64),
        UnaryOp::HardSigmoid { alpha, beta } => {
            x.affine(*alpha as f64, *beta as f64)?.clamp(0f32, 1f32)
        }
        UnaryOp::HardSwish => x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?.mul(x),
        other => candle_core::bail!("unary {other:?} is not lowered"),
    }
}

fn binary(b: BinaryOp, x: Arg, y: Arg) -> candle_core::Result<Arg> {
    Ok(Arg::T(match (b, x, y) {
        (_, Arg::S(a), Arg::S(c)) => {
            return Ok(Arg::S(match b {
                BinaryOp::Add => a + c,
                BinaryOp::Sub => a - c,
                BinaryOp::Mul => a * c,
                BinaryOp::Div => a / c,
                BinaryOp::Pow => (a as f32).powf(c as f32) as f64,
                _ => candle_core::bail!("binary {b:?} is not lowered"),
            }))
        }
        (BinaryOp::Add, Arg::T(x), Arg::T(y)) => x.broadcast_add(&y)?,
        (BinaryOp::Sub, Arg::T(x), Arg::T(y)) => x.broadcast_sub(&y)?,
        (BinaryOp::Mul, Arg::T(x), Arg::T(y)) => x.broadcast_mul(&y)?,
        (BinaryOp::Div, Arg::T(x), Arg::T(y)) => x.broadcast_div(&y)?,
        (BinaryOp::Add, Arg::T(x), Arg::S(s)) | (BinaryOp::Add, Arg::S(s), Arg::T(x)) => {
            x.affine(1.0, s)?
        }
        (BinaryOp::Mul, Arg::T(x), Arg::S(s)) | (BinaryOp::Mul, Arg::S(s), Arg::T(x)) => {
            x.affine(s, 0.0)?
        }
        (BinaryOp::Sub, Arg::T(x), Arg::S(s)) => x.affine(1.0, -s)?,
        (BinaryOp::Sub, Arg::S(s), Arg::T(x)) => x.affine(-1.0, s)?,
        (BinaryOp::Div, Arg::T(x), Arg::S(s)) => (x / s)?,
        (BinaryOp::Div, Arg::S(s), Arg::T(x)) => x.recip()?.affine(s, 0.0)?,
        (BinaryOp::Pow, Arg::T(x), Arg::S(e)) => {
            if e == 1.0 {
                x
            } else if e == 2.0 {
                x.sqr()?
            } else if e == 0.5 {
                x.sqrt()?
            } else {
                x.powf(e)?
            }
        }
        _ => candle_core::bail!("binary {b:?} is not lowered for these operands"),
    }))
}

/// Explicit `[begin.., end..]` pads of a convolution, `auto_pad` resolved
/// for the input's spatial dims.
fn conv_pads(c: &ConvAttrs, spatial: &[usize]) -> Vec<usize> {
    let n = spatial.len();
    match c.auto_pad {
        AutoPad::NotSet => c.pads.clone(),
        AutoPad::Valid => vec![0; 2 * n],
        AutoPad::SameUpper | AutoPad::SameLower => {
            let mut pads = vec![0; 2 * n];
            for i in 0..n {
                let out = spatial[i].div_ceil(c.strides[i]);
                let k = (c.kernel_shape[i] - 1) * c.dilations[i] + 1;
                let total = ((out - 1) * c.strides[i] + k).saturating_sub(spatial[i]);
                let small = total / 2;
                let (b, e) = if c.auto_pad == AutoPad::SameUpper {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[i] = b;
                pads[n + i] = e;
            }
            pads
        }
    }
}

/// `conv(x, w) + b`, 1-D or 2-D, any pads, strides, dilations and groups.
pub(super) fn conv(
    x: &CTensor,
    w: &CTensor,
    b: Option<&CTensor>,
    c: &ConvAttrs,
) -> candle_core::Result<CTensor> {
    let one_d = c.kernel_shape.len() == 1;
    let (x, w, c) = if one_d {
        // As a 2-D convolution over a height of 1.
        let c2 = ConvAttrs {
            kernel_shape: vec![1, c.kernel_shape[0]],
            strides: vec![1, c.strides[0]],
            dilations: vec![c.dilations[0], c.dilations[0]],
            pads: vec![0, c.pads[0], 0, c.pads[1]],
            auto_pad: c.auto_pad,
            group: c.group,
        };
        let c2 = ConvAttrs {
            pads: if c.auto_pad == AutoPad::NotSet {
                c2.pads.clone()
            } else {
                let p = conv_pads(c, &x.dims()[2..]);
                vec![0, p[0], 0, p[1]]
            },
            auto_pad: AutoPad::NotSet,
            ..c2
        };
        (x.unsqueeze(2)?, w.unsqueeze(2)?, c2)
    } else {
        (x.clone(), w.clone(), c.clone())
    };
    let pads = conv_pads(&c, &x.dims()[2..]);
    let (pad, x) = if pads.iter().all(|&p| p == pads[0]) {
        (pads[0], x)
    } else {
        let x = x.pad_with_zeros(2, pads[0], pads[2])?;
        (0, x.pad_with_zeros(3, pads[1], pads[3])?)
    };
    let (sh, sw) = (c.strides[0], c.strides[1]);
    let stride = if sh == sw { sh } else { 1 };
    let mut y = x
        .contiguous()?
        .conv2d(&w.contiguous()?, pad, stride, c.dilations[0], c.group)?;
    if sh != sw {
        // Unequal strides: the stride-1 result, subsampled.
        for (dim, s) in [(2, sh), (3, sw)] {
            let n = y.dims()[dim].div_ceil(s);
            let idx: Vec<u32> = (0..n).map(|i| (i * s) as u32).collect();
            let idx = CTensor::from_vec(idx, n, &Device::Cpu)?;
            y = y.index_select(&idx, dim)?;
        }
    }
    if let Some(b) = b {
        y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
    }
    if one_d {
        y = y.squeeze(2)?;
    }
    Ok(y)
}

/// `op(a) @ op(b)` with numpy batching, `op` transposing the last two dims
/// when asked.
pub(super) fn matmul(a: &CTensor, b: &CTensor, ta: bool, tb: bool) -> candle_core::Result<CTensor> {
    if a.rank() < 2 || b.rank() < 2 {
        candle_core::bail!("matrix products of vectors are not lowered");
    }
    let a = if ta {
        a.transpose(D::Minus2, D::Minus1)?
    } else {
        a.clone()
    };
    let b = if tb {
        b.transpose(D::Minus2, D::Minus1)?
    } else {
        b.clone()
    };
    if a.rank() == 2 && b.rank() == 2 {
        a.matmul(&b)
    } else {
        a.broadcast_matmul(&b)
    }
}

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

impl<'g> Lowered<'g> {
    /// Lowers `g`; refuses an op it does not know (naming it and the node),
    /// int8 products included.
    pub fn new(g: &'g Graph) -> Result<Lowered<'g>> {
        Lowered::with_qat(g, false)
    }

    /// Lowers `g`, with its int8 products (QConv, QMatMul) fake-quantized
    /// for quantization-aware training when `qat` is set ([`qat`]),
    /// else refused.
    pub fn with_qat(g: &'g Graph, qat: bool) -> Result<Lowered<'g>> {
        let order = g.topo_order()?;
        let mut read_elsewhere = vec![false; g.values.len()];
        for o in &g.outputs {
            read_elsewhere[o.0 as usize] = true;
        }
        for &id in &order {
            let Some(node) = g.node(id) else { continue };
            if qat::is_int8_layer(&node.op) {
                qat::check(g, node, qat)?;
            } else {
                check_node(g, node)?;
            }
            for v in node.inputs.iter().flatten() {
                read_elsewhere[v.0 as usize] = true;
            }
        }
        for &id in &order {
            let Some(node) = g.node(id) else { continue };
            if node.outputs[1..]
                .iter()
                .any(|o| read_elsewhere[o.0 as usize])
            {
                return Err(unsupported(node, Some("only its first output is lowered")));
            }
        }
        for &i in &g.inputs {
            if g.ty(i).dtype != crate::ir::DType::F32 {
                return Err(Error::Usage(format!(
                    "distill: input '{}' is {}; training takes f32 inputs only",
                    g.value(i).name,
                    g.ty(i).dtype
                )));
            }
        }
        let (mut params, grids) = qat::weight_params(g, &order)?;
        let mut consts = HashMap::new();
        for &id in &order {
            let Some(node) = g.node(id) else { continue };
            for (pos, v) in node.inputs.iter().enumerate() {
                let Some(v) = *v else { continue };
                let Some(t) = g.consts.get(&v) else { continue };
                if t.as_f32().is_none() || consts.contains_key(&v) {
                    continue;
                }
                if params.iter().any(|p| p.value == v) {
                    continue;
                }
                let ct = to_candle(t)?;
                if trainable_inputs(&node.op).contains(&pos) {
                    let zeros = t
                        .as_f32()
                        .map_or(0, |d| d.iter().filter(|&&x| x == 0.0).count());
                    let mask = if zeros > 0 {
                        Some(
                            ct.ne(0f32)
                                .and_then(|m| m.to_dtype(CDType::F32))
                                .map_err(cerr)?,
                        )
                    } else {
                        None
                    };
                    params.push(Param {
                        value: v,
                        var: Var::from_tensor(&ct).map_err(cerr)?,
                        mask,
                        zeros,
                    });
                } else {
                    consts.insert(v, ct);
                }
            }
        }
        Ok(Lowered {
            g,
            order,
            consts,
            params,
            qat: grids,
        })
    }

    /// Trainable values, in the order of [`Lowered::params`].
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// Elements of all trainable values.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Sets every masked weight's pruned entries back to zero.
    pub fn apply_masks(&self) -> Result<()> {
        for p in &self.params {
            if let Some(m) = &p.mask {
                let t = p.var.as_tensor().mul(m).map_err(cerr)?;
                p.var.set(&t).map_err(cerr)?;
            }
        }
        Ok(())
    }

    /// The graph's outputs for `inputs` (positional, batched along the
    /// inputs' first axis).
    pub fn forward(&self, inputs: &[CTensor]) -> Result<Vec<CTensor>> {
        let g = self.g;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Internal(format!(
                "distill: {} inputs for a graph of {}",
                inputs.len(),
                g.inputs.len()
            )));
        }
        let mut env: HashMap<ValueId, CTensor> = HashMap::new();
        for (&id, t) in g.inputs.iter().zip(inputs) {
            env.insert(id, t.clone());
        }
        for p in &self.params {
            env.insert(p.value, p.var.as_tensor().clone());
        }
        for (v, t) in &self.consts {
            env.insert(*v, t.clone());
        }
        for &id in &self.order {
            let Some(node) = self.g.node(id) else {
                continue;
            };
            let y = self.node(node, &env).map_err(|e| Error::AtNode {
                node: node.name.clone(),
                op: node.op.onnx_type(),
                message: format!("distill: {e}"),
                internal: true,
            })?;
            env.insert(node.outputs[0], y);
        }
        g.outputs
            .iter()
            .map(|o| {
                env.get(o).cloned().ok_or_else(|| {
                    Error::Internal(format!(
                        "distill: output '{}' not computed",
                        g.value(*o).name
                    ))
                })
            })
            .collect()
    }

    fn node(&self, node: &Node, env: &HashMap<ValueId, CTensor>) -> candle_core::Result<CTensor> {
        let g = self.g;
        let get = |i: usize| -> candle_core::Result<Option<&CTensor>> {
            match node.input(i) {
                None => Ok(None),
                Some(v) => match env.get(&v) {
                    Some(t) => Ok(Some(t)),
                    None => candle_core::bail!("value '{}' not computed", g.value(v).name),
                },
            }
        };
        let req = |i: usize| -> candle_core::Result<&CTensor> {
            get(i)?.ok_or_else(|| candle_core::Error::Msg(format!("input {i} missing")))
        };
        let scalar_const = |i: usize| -> Option<f32> {
            node.input(i)
                .and_then(|v| g.consts.get(&v))
                .and_then(|t| t.as_f32().and_then(|d| d.first().copied()))
        };
        Ok(match &node.op {
            Op::QConv { .. } | Op::QMatMul { .. } => {
                let grid = self.grid(node.input(1)).ok_or_else(|| {
                    candle_core::Error::Msg(
                        "an int8 layer outside quantization-aware training".into(),
                    )
                })?;
                qat::forward(node, grid, req(0)?, req(1)?, get(3)?, get(4)?)?
            }
            Op::Conv(c) => conv(req(0)?, req(1)?, get(2)?, c)?,
            Op::FusedConv { conv: c, act: a } => {
                let mut y = conv(req(0)?, req(1)?, get(2)?, c)?;
                if let Some(r) = get(3)? {
                    y = y.broadcast_add(r)?;
                }
                act(y, a)?
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let mut y = matmul(req(0)?, req(1)?, *trans_a, *trans_b)?;
                if *alpha != 1.0 {
                    y = y.affine(*alpha as f64, 0.0)?;
                }
                if let Some(c) = get(2)? {
                    let c = if *beta != 1.0 {
                        c.affine(*beta as f64, 0.0)?
                    } else {
                        c.clone()
                    };
                    y = y.broadcast_add(&c)?;
                }
                y
            }
            Op::MatMul => matmul(req(0)?, req(1)?, false, false)?,
            Op::FusedMatMul {
                trans_a,
                trans_b,
                alpha,
                act: a,
            } => {
                let mut y = matmul(req(0)?, req(1)?, *trans_a, *trans_b)?;
                if *alpha != 1.0 {
                    y = y.affine(*alpha as f64, 0.0)?;
                }
                if let Some(b) = get(2)? {
                    y = y.broadcast_add(b)?;
                }
                act(y, a)?
            }
            Op::Unary(u) => unary(u, req(0)?)?,
            Op::Binary(b) => match binary(*b, Arg::T(req(0)?.clone()), Arg::T(req(1)?.clone()))? {
                Arg::T(t) => t,
                Arg::S(_) => candle_core::bail!("scalar result"),
            },
            Op::Clip => {
                let lo = scalar_const(1).unwrap_or(f32::NEG_INFINITY);
                let hi = scalar_const(2).unwrap_or(f32::INFINITY);
                let x = req(0)?;
                let x = if lo > f32::NEG_INFINITY {
                    x.maximum(lo)?
                } else {
                    x.clone()
                };
                if hi < f32::INFINITY {
                    x.minimum(hi)?
                } else {
                    x
                }
            }
            Op::Elementwise { steps } => {
                let mut done: Vec<CTensor> = Vec::with_capacity(steps.len());
                let arg = |a: &EwArg, done: &[CTensor]| -> candle_core::Result<Arg> {
                    Ok(match a {
                        EwArg::Input(i) => Arg::T(req(*i)?.clone()),
                        EwArg::Step(i) => Arg::T(done[*i].clone()),
                        EwArg::Scalar(s) => Arg::S(*s as f64),
                    })
                };
                let as_t = |a: Arg, like: &CTensor| -> candle_core::Result<CTensor> {
                    match a {
                        Arg::T(t) => Ok(t),
                        Arg::S(s) => like.ones_like()?.affine(0.0, s),
                    }
                };
                let first = req(0)?.clone();
                for s in steps {
                    let y = match s {
                        EwStep::Unary(u, a) => unary(u, &as_t(arg(a, &done)?, &first)?)?,
                        EwStep::Binary(b, x, y) => {
                            as_t(binary(*b, arg(x, &done)?, arg(y, &done)?)?, &first)?
                        }
                        EwStep::Clip(a, lo, hi) => as_t(arg(a, &done)?, &first)?.clamp(*lo, *hi)?,
                    };
                    done.push(y);
                }
                done.pop()
                    .ok_or_else(|| candle_core::Error::Msg("an empty chain".into()))?
            }
            Op::Flatten { axis } => {
                let x = req(0)?;
                let a = norm_axis(*axis, x.rank());
                let outer: usize = x.dims()[..a].iter().product();
                let inner: usize = x.dims()[a..].iter().product();
                x.reshape((outer, inner))?
            }
            Op::Reshape { allowzero } => {
                let x = req(0)?;
                let spec = node
                    .input(1)
                    .and_then(|v| g.consts.get(&v))
                    .and_then(|t| t.to_i64_vec())
                    .ok_or_else(|| candle_core::Error::Msg("shape not constant".into()))?;
                let mut shape: Vec<usize> = Vec::with_capacity(spec.len());
                let mut hole = None;
                for (i, &d) in spec.iter().enumerate() {
                    shape.push(match d {
                        -1 => {
                            hole = Some(i);
                            1
                        }
                        0 if !allowzero => x.dims().get(i).copied().unwrap_or(0),
                        d if d >= 0 => d as usize,
                        _ => candle_core::bail!("bad reshape dim {d}"),
                    });
                }
                if let Some(h) = hole {
                    let known: usize = shape.iter().product();
                    shape[h] = x.elem_count() / known.max(1);
                }
                x.reshape(shape)?
            }
            Op::Identity | Op::Dropout => req(0)?.clone(),
            Op::Transpose { perm } => req(0)?.permute(perm.clone())?,
            Op::Concat { axis } => {
                let xs: Vec<&CTensor> = (0..node.inputs.len())
                    .map(req)
                    .collect::<candle_core::Result<_>>()?;
                let a = norm_axis(*axis, xs.first().map_or(0, |t| t.rank()));
                CTensor::cat(&xs, a)?
            }
            Op::Softmax { axis, legacy, .. } | Op::LogSoftmax { axis, legacy } => {
                let x = req(0)?;
                let a = norm_axis(*axis, x.rank());
                let log = matches!(node.op, Op::LogSoftmax { .. });
                let f = |t: &CTensor, d: usize| {
                    if log {
                        candle_nn::ops::log_softmax(t, d)
                    } else {
                        candle_nn::ops::softmax(t, d)
                    }
                };
                if *legacy && a + 1 < x.rank() {
                    let outer: usize = x.dims()[..a].iter().product();
                    let flat = x.reshape((outer, x.elem_count() / outer.max(1)))?;
                    f(&flat, 1)?.reshape(x.dims())?
                } else {
                    f(x, a)?
                }
            }
            Op::MaxPool(p) => req(0)?.max_pool2d_with_stride(
                (p.kernel_shape[0], p.kernel_shape[1]),
                (p.strides[0], p.strides[1]),
            )?,
            Op::AveragePool(p) => req(0)?.avg_pool2d_with_stride(
                (p.kernel_shape[0], p.kernel_shape[1]),
                (p.strides[0], p.strides[1]),
            )?,
            Op::GlobalAveragePool => {
                let x = req(0)?;
                x.mean_keepdim((2..x.rank()).collect::<Vec<_>>())?
            }
            Op::GlobalMaxPool => {
                let x = req(0)?;
                let mut y = x.clone();
                for d in 2..x.rank() {
                    y = y.max_keepdim(d)?;
                }
                y
            }
            Op::BatchNormalization { epsilon, .. } => {
                let x = req(0)?;
                let c = x.dims()[1];
                let mut shape = vec![1usize; x.rank()];
                shape[1] = c;
                let r = |t: &CTensor| t.reshape(shape.clone());
                let (scale, bias, mean, var) = (r(req(1)?)?, r(req(2)?)?, r(req(3)?)?, r(req(4)?)?);
                let inv = var.affine(1.0, *epsilon as f64)?.sqrt()?.recip()?;
                x.broadcast_sub(&mean)?
                    .broadcast_mul(&inv.mul(&scale)?)?
                    .broadcast_add(&bias)?
            }
            _ => candle_core::bail!("op {} is not lowered", node.op.onnx_type()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim, Shape, TensorType};

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * scale, "element {i}: {a} vs {b}");
        }
    }

    /// A grouped convolution with asymmetric pads and unequal strides, a
    /// chain, a pooling and a softmax: candle's forward is the reference's.
    #[test]
    fn conv_and_chain_match_reference() {
        let mut g = Graph::new("t", 17);
        let ty = |d: Vec<Dim>| TensorType::new(DType::F32, Shape(d));
        let x = g.add_input(
            "x",
            ty(vec![
                Dim::sym("batch"),
                Dim::Known(4),
                Dim::Known(9),
                Dim::Known(8),
            ]),
        );
        let w = g.add_const(
            "w",
            Tensor::from_f32(vec![6, 2, 3, 2], seeded(72, 1)).unwrap(),
        );
        let b = g.add_const("b", Tensor::from_f32(vec![6], seeded(6, 2)).unwrap());
        let y = g.add_value("y", ty(vec![]));
        g.add_node(Node {
            name: "conv".into(),
            op: Op::FusedConv {
                conv: ConvAttrs {
                    kernel_shape: vec![3, 2],
                    strides: vec![2, 1],
                    dilations: vec![1, 1],
                    pads: vec![1, 0, 0, 1],
                    auto_pad: AutoPad::NotSet,
                    group: 2,
                },
                act: Some(Activation::LeakyRelu { alpha: 0.1 }),
            },
            inputs: vec![Some(x), Some(w), Some(b)],
            outputs: vec![y],
        });
        let z = g.add_value("z", ty(vec![]));
        g.add_node(Node {
            name: "chain".into(),
            op: Op::Elementwise {
                steps: vec![
                    EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Scalar(0.5)),
                    EwStep::Binary(BinaryOp::Add, EwArg::Step(0), EwArg::Input(0)),
                    EwStep::Clip(EwArg::Step(1), -0.5, 2.0),
                ],
            },
            inputs: vec![Some(y)],
            outputs: vec![z],
        });
        let p = g.add_value("p", ty(vec![]));
        g.add_node(Node {
            name: "pool".into(),
            op: Op::GlobalAveragePool,
            inputs: vec![Some(z)],
            outputs: vec![p],
        });
        let f = g.add_value("f", ty(vec![]));
        g.add_node(Node {
            name: "flat".into(),
            op: Op::Flatten { axis: 1 },
            inputs: vec![Some(p)],
            outputs: vec![f],
        });
        let s = g.add_value("s", ty(vec![]));
        g.add_node(Node {
            name: "softmax".into(),
            op: Op::Softmax {
                axis: -1,
                legacy: false,
                nan_to_zero: false,
            },
            inputs: vec![Some(f)],
            outputs: vec![s],
        });
        g.outputs = vec![z, s];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        let xin = Tensor::from_f32(vec![3, 4, 9, 8], seeded(3 * 4 * 72, 3)).unwrap();
        let want = crate::interp::run(&g, vec![xin.clone()]).unwrap();
        let net = Lowered::new(&g).unwrap();
        assert_eq!(net.params.len(), 2);
        let got = net.forward(&[to_candle(&xin).unwrap()]).unwrap();
        for (a, b) in got.iter().zip(&want) {
            let a = from_candle(a).unwrap();
            assert_eq!(a.shape(), b.shape());
            close(a.as_f32().unwrap(), b.as_f32().unwrap());
        }
    }

    #[test]
    fn unsupported_op_is_named() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, Shape(vec![Dim::sym("batch"), Dim::Known(4)])),
        );
        let y = g.add_value("y", TensorType::new(DType::F32, Shape(vec![])));
        g.add_node(Node {
            name: "the_sine".into(),
            op: Op::Unary(UnaryOp::Sin),
            inputs: vec![Some(x)],
            outputs: vec![y],
        });
        g.outputs = vec![y];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        let err = Lowered::new(&g)
            .err()
            .expect("Sin is not lowered")
            .to_string();
        assert_eq!(
            err,
            "distill: op Sin (node 'the_sine') is not supported by the training lowering"
        );
    }
}

//! Lowering of an mlc [`Graph`] to a candle forward pass with autograd.
//!
//! The f32 weights and biases of the layers distillation trains (Conv,
//! FusedConv, Gemm, MatMul, FusedMatMul, and the scales and shifts of the
//! normalizations) become [`Var`]s. Every value is then one of two kinds:
//!
//! - **differentiable**: it depends on a trained weight. Its node becomes
//!   the candle ops that compute what mlc's reference kernel computes (the
//!   reference interpreter is the oracle the tests compare with), so the
//!   gradient flows through it.
//! - **frozen**: it depends on graph inputs (of any dtype) and constants
//!   only, as the attention-mask arithmetic, position ids and the lookups in
//!   embedding tables of a transformer do. Its node runs on every forward
//!   pass, outside autograd, with mlc's own reference kernel (the one the
//!   reference interpreter runs) on mlc tensors, so every op and dtype the
//!   interpreter knows works there. A frozen f32 value that a
//!   differentiable node reads enters candle as a constant; the integer
//!   and bool operands that shape a differentiable op (a Reshape's shape,
//!   Gather's indices, Where's condition, Slice's starts, a reduction's
//!   axes) are read as mlc tensors.
//!
//! `Shape` and `Size` of a differentiable tensor depend on its shape only:
//! they are frozen values taken from candle's dims. Integer, bool and f32
//! graph inputs are all frozen, so a model of token ids trains as an image
//! model does.
//!
//! A differentiable node whose op the lowering does not know, or whose
//! shaping operand would depend on a trained weight, is refused when the
//! graph is lowered, naming the op and the node, before any training starts.
//!
//! The int8 products QConv and QMatMul are lowered only for
//! quantization-aware training ([`Lowered::with_qat`], see [`qat`]):
//! fake-quantized, their weights trained in float.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor as CTensor, Var, D};

use crate::ir::ops::array::reference::{reshape_dims, slice_plan};
use crate::ir::ops::util::broadcast_shape;
use crate::ir::{
    Activation, AutoPad, BinaryOp, ConvAttrs, DType, EwArg, EwStep, Graph, Node, NodeId, Op,
    PoolAttrs, ReduceOp, TensorData, UnaryOp, ValueId,
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

/// The graph input dtypes training takes, and the candle dtype each is held
/// in (candle has no bool, and i32 is held widened).
fn candle_dtype(dt: DType) -> Option<CDType> {
    match dt {
        DType::F32 => Some(CDType::F32),
        DType::I64 | DType::I32 => Some(CDType::I64),
        DType::U8 | DType::Bool => Some(CDType::U8),
        _ => None,
    }
}

/// An input array (f32, i64, i32, u8 or bool) as a candle tensor, for
/// batching; [`Lowered::forward`] turns it back into the graph's dtype.
pub fn input_to_candle(t: &Tensor) -> Result<CTensor> {
    let shape = t.shape().to_vec();
    let dev = &Device::Cpu;
    match t.data() {
        TensorData::F32(v) => CTensor::from_vec(v.clone(), shape, dev),
        TensorData::I64(v) => CTensor::from_vec(v.clone(), shape, dev),
        TensorData::I32(v) => {
            CTensor::from_vec(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), shape, dev)
        }
        TensorData::U8(v) => CTensor::from_vec(v.clone(), shape, dev),
        TensorData::Bool(v) => {
            CTensor::from_vec(v.iter().map(|&b| b as u8).collect::<Vec<_>>(), shape, dev)
        }
        _ => {
            return Err(Error::Usage(format!(
                "distill: a {} input array; training takes f32, i64, i32, u8 or bool inputs",
                t.dtype()
            )))
        }
    }
    .map_err(cerr)
}

/// A batched candle input back as an mlc tensor of the graph input's
/// `dtype` (the candle dtype must be the one [`input_to_candle`] makes).
fn input_from_candle(t: &CTensor, dtype: DType, name: &str) -> Result<Tensor> {
    if candle_dtype(dtype) != Some(t.dtype()) {
        return Err(Error::Usage(format!(
            "distill: input '{name}' is {dtype} but was given as a candle {:?} tensor",
            t.dtype()
        )));
    }
    let flat = t.flatten_all().map_err(cerr)?;
    let data = match dtype {
        DType::F32 => TensorData::F32(flat.to_vec1().map_err(cerr)?),
        DType::I64 => TensorData::I64(flat.to_vec1().map_err(cerr)?),
        DType::I32 => TensorData::I32(
            flat.to_vec1::<i64>()
                .map_err(cerr)?
                .into_iter()
                .map(|x| x as i32)
                .collect(),
        ),
        DType::U8 => TensorData::U8(flat.to_vec1().map_err(cerr)?),
        _ => TensorData::Bool(
            flat.to_vec1::<u8>()
                .map_err(cerr)?
                .into_iter()
                .map(|x| x != 0)
                .collect(),
        ),
    };
    Tensor::new(t.dims().to_vec(), data).map_err(|e| Error::Internal(e.to_string()))
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

impl Param {
    /// The variable for `value`, starting at `init`; with `zeros` exact
    /// zeros it keeps them zero through [`Lowered::apply_masks`].
    pub(super) fn new(value: ValueId, init: CTensor, zeros: usize) -> Result<Param> {
        let mask = if zeros > 0 {
            Some(
                init.ne(0f32)
                    .and_then(|m| m.to_dtype(CDType::F32))
                    .map_err(cerr)?,
            )
        } else {
            None
        };
        Ok(Param {
            value,
            var: Var::from_tensor(&init).map_err(cerr)?,
            mask,
            zeros,
        })
    }
}

/// How a node is computed on a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// No input depends on a trained weight: the reference kernel, on mlc
    /// tensors, outside autograd.
    Frozen,
    /// Shape or Size of a differentiable tensor: from its dims.
    ShapeOf,
    /// On the differentiable path: candle ops.
    Live,
}

/// A graph lowered to candle: run [`Lowered::forward`] on batched inputs.
pub struct Lowered<'g> {
    pub(super) g: &'g Graph,
    /// The nodes in topological order, with how each is computed.
    steps: Vec<(NodeId, Kind)>,
    /// Candle copies of the constants differentiable nodes read as tensors.
    consts: HashMap<ValueId, CTensor>,
    /// Graph inputs that frozen nodes (or shaping operands) read as mlc
    /// tensors.
    mlc_inputs: HashSet<ValueId>,
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

/// The inputs of a differentiable node that shape it rather than flow
/// through it: read as mlc tensors, so they must be frozen.
fn shaping_inputs(op: &Op) -> &'static [usize] {
    match op {
        Op::Reshape { .. }
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Reduce { .. }
        | Op::Expand
        | Op::Gather { .. } => &[1],
        Op::Clip | Op::Dropout => &[1, 2],
        Op::Slice => &[1, 2, 3, 4],
        Op::Where => &[0],
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

/// Whether the lowering handles the differentiable `node`; `live` marks the
/// values that depend on a trained weight.
fn check_node(g: &Graph, node: &Node, live: &[bool]) -> Result<()> {
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
        Op::Clip => {}
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
        Op::Dropout | Op::Reshape { .. } | Op::Squeeze | Op::Unsqueeze => {}
        Op::Expand | Op::Slice | Op::Gather { .. } | Op::Where => {}
        Op::Cast { to: DType::F32, .. } => {}
        Op::Reduce {
            op: ReduceOp::Sum | ReduceOp::Mean | ReduceOp::L1 | ReduceOp::L2 | ReduceOp::SumSquare,
            ..
        } => {}
        Op::Softmax { .. } | Op::LogSoftmax { .. } => {}
        Op::MaxPool(p) => pool_ok(p)?,
        Op::AveragePool(p) => pool_ok(p)?,
        Op::GlobalAveragePool | Op::GlobalMaxPool => {}
        Op::BatchNormalization {
            training_momentum: None,
            ..
        } => {}
        Op::LayerNormalization { .. } => {}
        _ => return Err(unsupported(node, None)),
    }
    let shaping = shaping_inputs(&node.op);
    for (pos, v) in node.inputs.iter().enumerate() {
        let Some(v) = *v else { continue };
        let name = &g.value(v).name;
        if shaping.contains(&pos) {
            if live[v.0 as usize] {
                return Err(unsupported(
                    node,
                    Some(&format!("its input '{name}' depends on trained weights")),
                ));
            }
        } else if !live[v.0 as usize] && g.ty(v).dtype != DType::F32 {
            // A frozen operand that flows into the result enters candle:
            // f32 only.
            return Err(unsupported(
                node,
                Some(&format!("input '{name}' is {}", g.ty(v).dtype)),
            ));
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

/// A contiguous copy when `t` is a strided view (candle's batched matrix
/// products take only some layouts).
fn dense(t: CTensor) -> candle_core::Result<CTensor> {
    if t.is_contiguous() {
        Ok(t)
    } else {
        t.contiguous()
    }
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
        return a.matmul(&b);
    }
    if b.rank() == 2 {
        // Activations [.., m, k] times a weight: one product over all rows,
        // so the weight's gradient is one product too (broadcasting the
        // weight over the batch would copy it, and its gradient, per item).
        let dims = a.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = a.elem_count() / k.max(1);
        let y = dense(a)?.reshape((rows, k))?.matmul(&b)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(b.dims()[1]);
        return y.reshape(out);
    }
    dense(a)?.broadcast_matmul(&dense(b)?)
}

/// `v`, a vector of `x`'s last dim, repeated over all rows of `x` (shaped
/// like `x`) as the product of a column of ones with it: its gradient is
/// then one matrix product, where candle would sum the gradient of a
/// broadcast over the leading axes element by element (a division per
/// element and axis: a sixth of a MiniLM training step). Other shapes
/// broadcast as usual.
fn over_rows(v: &CTensor, x: &CTensor) -> candle_core::Result<CTensor> {
    let n = x.dims().last().copied().unwrap_or(0);
    if x.rank() < 2 || v.elem_count() != n || v.dims().last() != Some(&n) || n == 0 {
        return v.broadcast_as(x.shape());
    }
    let rows = x.elem_count() / n;
    let ones = CTensor::ones((rows, 1), v.dtype(), v.device())?;
    ones.matmul(&v.reshape((1, n))?)?.reshape(x.shape())
}

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

/// `axis` against `rank`, checked (negative counts from the end).
fn checked_axis(axis: i64, rank: usize) -> candle_core::Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        candle_core::bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// Distinct axes against `rank`, checked.
fn checked_axes(axes: &[i64], rank: usize) -> candle_core::Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = checked_axis(a, rank)?;
        if out.contains(&n) {
            candle_core::bail!("axes {axes:?} repeat axis {n}");
        }
        out.push(n);
    }
    Ok(out)
}

/// An mlc error inside a candle computation.
fn merr(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The integer values of a shaping operand.
fn ints(t: &Tensor, what: &str) -> candle_core::Result<Vec<i64>> {
    match t.dtype() {
        DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 => t
            .to_i64_vec()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what} is not integer"))),
        dt => candle_core::bail!("{what} must be integer, got {dt}"),
    }
}

/// Softmax (or log-softmax) along `dim`. With `nan_to_zero` a row without
/// a finite maximum (all -inf: a fully masked attention row) gives zeros,
/// as the reference kernel's NaN-to-0 does, without a NaN in the gradient.
fn softmax(x: &CTensor, dim: usize, log: bool, nan_to_zero: bool) -> candle_core::Result<CTensor> {
    let f = |t: &CTensor| {
        if log {
            candle_nn::ops::log_softmax(t, dim)
        } else {
            candle_nn::ops::softmax(t, dim)
        }
    };
    if !nan_to_zero {
        return f(x);
    }
    // f32::MIN <= max: false for -inf and NaN rows.
    let ok = x.detach().max_keepdim(dim)?.ge(f32::MIN)?;
    let ok_x = ok.broadcast_as(x.shape())?;
    let safe = ok_x.where_cond(x, &x.zeros_like()?)?;
    f(&safe)?.broadcast_mul(&ok.to_dtype(CDType::F32)?)
}

/// The values of one forward pass: frozen ones as mlc tensors, the
/// differentiable ones (and candle copies of frozen ones) as candle tensors.
struct Env<'a> {
    g: &'a Graph,
    frozen: HashMap<ValueId, Arc<Tensor>>,
    cand: HashMap<ValueId, CTensor>,
}

impl Env<'_> {
    /// A frozen value (a constant or a computed one).
    fn mlc(&self, v: ValueId) -> Option<&Tensor> {
        self.frozen
            .get(&v)
            .or_else(|| self.g.consts.get(&v))
            .map(|t| t.as_ref())
    }

    /// The candle form of `v`, converted from its frozen value the first
    /// time a differentiable node reads it.
    fn ensure_candle(&mut self, v: ValueId) -> Result<()> {
        if self.cand.contains_key(&v) {
            return Ok(());
        }
        let t = self.mlc(v).ok_or_else(|| {
            Error::Internal(format!(
                "distill: value '{}' not computed",
                self.g.value(v).name
            ))
        })?;
        let c = to_candle(t)?;
        self.cand.insert(v, c);
        Ok(())
    }
}

impl<'g> Lowered<'g> {
    /// Lowers `g`; refuses a differentiable op it does not know (naming it
    /// and the node), int8 products included.
    pub fn new(g: &'g Graph) -> Result<Lowered<'g>> {
        Lowered::with_qat(g, false)
    }

    /// Lowers `g`, with its int8 products (QConv, QMatMul) fake-quantized
    /// for quantization-aware training when `qat` is set ([`qat`]),
    /// else refused.
    pub fn with_qat(g: &'g Graph, qat: bool) -> Result<Lowered<'g>> {
        // Only the nodes the outputs need.
        let mut order = g.topo_order()?;
        let mut needed = vec![false; g.values.len()];
        for o in &g.outputs {
            needed[o.0 as usize] = true;
        }
        let mut keep = vec![false; order.len()];
        for (k, &id) in order.iter().enumerate().rev() {
            let Some(node) = g.node(id) else { continue };
            if node.outputs.iter().any(|o| needed[o.0 as usize]) {
                keep[k] = true;
                for v in node.inputs.iter().flatten() {
                    needed[v.0 as usize] = true;
                }
            }
        }
        let mut k = 0;
        order.retain(|_| {
            k += 1;
            keep[k - 1]
        });
        for &i in &g.inputs {
            let dt = g.ty(i).dtype;
            if candle_dtype(dt).is_none() {
                return Err(Error::Usage(format!(
                    "distill: input '{}' is {dt}; training takes f32, i64, i32, u8 or bool inputs",
                    g.value(i).name,
                )));
            }
        }
        for &id in &order {
            let Some(node) = g.node(id) else { continue };
            if qat::is_int8_layer(&node.op) {
                qat::check(g, node, qat)?;
            }
        }
        // The trained weights: int8 weights trained in float (QAT), and f32
        // constants at a trained position.
        let (mut params, grids) = qat::weight_params(g, &order)?;
        for &id in &order {
            let Some(node) = g.node(id) else { continue };
            for &pos in trainable_inputs(&node.op) {
                let Some(v) = node.input(pos) else { continue };
                let Some(t) = g.consts.get(&v) else { continue };
                let Some(d) = t.as_f32() else { continue };
                if params.iter().any(|p| p.value == v) {
                    continue;
                }
                let zeros = d.iter().filter(|&&x| x == 0.0).count();
                params.push(Param::new(v, to_candle(t)?, zeros)?);
            }
        }
        // What depends on them, in topological order.
        let mut live = vec![false; g.values.len()];
        for p in &params {
            live[p.value.0 as usize] = true;
        }
        let mut steps = Vec::with_capacity(order.len());
        for &id in &order {
            let Some(node) = g.node(id) else { continue };
            let any_live = node.inputs.iter().flatten().any(|v| live[v.0 as usize]);
            let kind = if !any_live {
                Kind::Frozen
            } else if matches!(node.op, Op::Shape { .. } | Op::Size) {
                Kind::ShapeOf
            } else {
                // Int8 layers were checked above, with their grids.
                if !qat::is_int8_layer(&node.op) {
                    check_node(g, node, &live)?;
                }
                if node.outputs[1..].iter().any(|o| needed[o.0 as usize]) {
                    return Err(unsupported(node, Some("only its first output is lowered")));
                }
                for o in &node.outputs {
                    live[o.0 as usize] = true;
                }
                Kind::Live
            };
            steps.push((id, kind));
        }
        // Constants that flow into differentiable nodes, copied to candle
        // once; graph inputs read as mlc tensors.
        let mut consts = HashMap::new();
        let mut mlc_inputs = HashSet::new();
        for &(id, kind) in &steps {
            let Some(node) = g.node(id) else { continue };
            let shaping = shaping_inputs(&node.op);
            for (pos, v) in node.inputs.iter().enumerate() {
                let Some(v) = *v else { continue };
                let as_mlc = kind == Kind::Frozen || shaping.contains(&pos);
                if as_mlc {
                    if g.inputs.contains(&v) {
                        mlc_inputs.insert(v);
                    }
                } else if kind == Kind::Live && !live[v.0 as usize] {
                    if let Some(t) = g.consts.get(&v) {
                        if let std::collections::hash_map::Entry::Vacant(e) = consts.entry(v) {
                            e.insert(to_candle(t)?);
                        }
                    }
                }
            }
        }
        Ok(Lowered {
            g,
            steps,
            consts,
            mlc_inputs,
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

    /// Nodes on the differentiable path (the others are frozen).
    pub fn differentiable_nodes(&self) -> usize {
        self.steps.iter().filter(|s| s.1 == Kind::Live).count()
    }

    /// Bytes one training step on inputs of these shapes holds at most:
    /// every node's output (kept for the backward pass) and its gradient,
    /// and each trained weight with its gradient and AdamW's two moments.
    /// `None` when the shapes do not fit the graph.
    pub fn step_bytes(&self, shapes: &[Vec<usize>]) -> Option<u64> {
        let g = self.g;
        let given = g
            .inputs
            .iter()
            .zip(shapes)
            .map(|(&i, s)| (g.ty(i).dtype, s.as_slice()));
        let bindings = crate::ir::bind::check_inputs(g, given).ok()?;
        let mut bytes = 0u64;
        for &(id, _) in &self.steps {
            let Some(node) = g.node(id) else { continue };
            for &o in &node.outputs {
                let ty = g.ty(o);
                let n = ty.shape.dims().iter().try_fold(1u64, |acc, d| {
                    crate::ir::infer::eval_dim(d, &bindings).map(|v| acc.saturating_mul(v as u64))
                })?;
                bytes = bytes.saturating_add(n.saturating_mul(2 * ty.dtype.size() as u64));
            }
        }
        Some(bytes.saturating_add(16 * self.param_count() as u64))
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
    /// inputs' first axis; integer inputs as i64 and bool ones as u8
    /// tensors, as [`input_to_candle`] makes them).
    pub fn forward(&self, inputs: &[CTensor]) -> Result<Vec<CTensor>> {
        let g = self.g;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Internal(format!(
                "distill: {} inputs for a graph of {}",
                inputs.len(),
                g.inputs.len()
            )));
        }
        let mut env = Env {
            g,
            frozen: HashMap::new(),
            cand: HashMap::new(),
        };
        for (&id, t) in g.inputs.iter().zip(inputs) {
            if self.mlc_inputs.contains(&id) {
                let m = input_from_candle(t, g.ty(id).dtype, &g.value(id).name)?;
                env.frozen.insert(id, Arc::new(m));
            }
            if g.ty(id).dtype == DType::F32 {
                env.cand.insert(id, t.clone());
            }
        }
        for p in &self.params {
            env.cand.insert(p.value, p.var.as_tensor().clone());
        }
        for (v, t) in &self.consts {
            env.cand.insert(*v, t.clone());
        }
        for &(id, kind) in &self.steps {
            let Some(node) = g.node(id) else { continue };
            let op_name = node.op.onnx_type();
            match kind {
                Kind::Frozen => {
                    let refs = node
                        .inputs
                        .iter()
                        .map(|i| match i {
                            None => Ok(None),
                            Some(v) => env.mlc(*v).map(Some).ok_or_else(|| {
                                Error::Internal(format!(
                                    "distill: value '{}' not computed before node '{}'",
                                    g.value(*v).name,
                                    node.name
                                ))
                            }),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let outs = crate::ir::ops::eval(&node.op, &refs, node.outputs.len())
                        .map_err(|e| e.at_node(&node.name, op_name))?;
                    for (&o, t) in node.outputs.iter().zip(outs) {
                        env.frozen.insert(o, Arc::new(t));
                    }
                }
                Kind::ShapeOf => {
                    let dims = node
                        .input(0)
                        .and_then(|v| env.cand.get(&v))
                        .map(|t| t.dims().to_vec())
                        .ok_or_else(|| {
                            Error::Internal(format!("distill: node '{}' has no input", node.name))
                        })?;
                    let t = match node.op {
                        Op::Shape { start, end } => {
                            let (s, e) = crate::ir::infer::shape_range(dims.len(), start, end);
                            Tensor::vec_i64(dims[s..e].iter().map(|&d| d as i64).collect())
                        }
                        _ => Tensor::scalar_i64(dims.iter().product::<usize>() as i64),
                    };
                    env.frozen.insert(node.outputs[0], Arc::new(t));
                }
                Kind::Live => {
                    let shaping = shaping_inputs(&node.op);
                    for (pos, v) in node.inputs.iter().enumerate() {
                        if let Some(v) = *v {
                            if !shaping.contains(&pos) {
                                env.ensure_candle(v)?;
                            }
                        }
                    }
                    let y = self.node(node, &env).map_err(|e| Error::AtNode {
                        node: node.name.clone(),
                        op: op_name,
                        message: format!("distill: {e}"),
                        internal: true,
                    })?;
                    env.cand.insert(node.outputs[0], y);
                }
            }
        }
        g.outputs
            .iter()
            .map(|&o| {
                env.ensure_candle(o)?;
                env.cand.get(&o).cloned().ok_or_else(|| {
                    Error::Internal(format!(
                        "distill: output '{}' not computed",
                        g.value(o).name
                    ))
                })
            })
            .collect()
    }

    /// The candle ops of a differentiable node.
    fn node(&self, node: &Node, env: &Env) -> candle_core::Result<CTensor> {
        let g = self.g;
        let get = |i: usize| -> candle_core::Result<Option<&CTensor>> {
            match node.input(i) {
                None => Ok(None),
                Some(v) => match env.cand.get(&v) {
                    Some(t) => Ok(Some(t)),
                    None => candle_core::bail!("value '{}' not computed", g.value(v).name),
                },
            }
        };
        let req = |i: usize| -> candle_core::Result<&CTensor> {
            get(i)?.ok_or_else(|| candle_core::Error::Msg(format!("input {i} missing")))
        };
        // A shaping operand, as an mlc tensor.
        let frozen = |i: usize| -> candle_core::Result<Option<&Tensor>> {
            match node.input(i) {
                None => Ok(None),
                Some(v) => match env.mlc(v) {
                    Some(t) => Ok(Some(t)),
                    None => candle_core::bail!("value '{}' not computed", g.value(v).name),
                },
            }
        };
        let frozen_ints = |i: usize, what: &str| -> candle_core::Result<Option<Vec<i64>>> {
            frozen(i)?.map(|t| ints(t, what)).transpose()
        };
        let scalar = |i: usize| -> candle_core::Result<Option<f32>> {
            let Some(t) = frozen(i)? else { return Ok(None) };
            if t.numel() == 0 {
                return Ok(None);
            }
            if t.numel() != 1 || !t.dtype().is_float() {
                candle_core::bail!("input {i} must be a floating point scalar");
            }
            Ok(t.to_f64_vec().first().map(|&v| v as f32))
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
                    y = y.add(&over_rows(&c, &y)?)?;
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
                    y = y.add(&over_rows(b, &y)?)?;
                }
                act(y, a)?
            }
            Op::Unary(u) => unary(u, req(0)?)?,
            Op::Binary(b) => match binary(*b, Arg::T(req(0)?.clone()), Arg::T(req(1)?.clone()))? {
                Arg::T(t) => t,
                Arg::S(_) => candle_core::bail!("scalar result"),
            },
            Op::Clip => {
                // numpy's clip: minimum(maximum(x, lo), hi).
                let mut x = req(0)?.clone();
                if let Some(lo) = scalar(1)? {
                    x = x.maximum(lo)?;
                }
                if let Some(hi) = scalar(2)? {
                    x = x.minimum(hi)?;
                }
                x
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
                let spec = frozen_ints(1, "the shape")?
                    .ok_or_else(|| candle_core::Error::Msg("no shape".into()))?;
                let out = reshape_dims("Reshape", x.dims(), &spec, *allowzero).map_err(merr)?;
                x.reshape(out)?
            }
            Op::Squeeze => {
                let x = req(0)?;
                let out: Vec<usize> = match frozen_ints(1, "axes")? {
                    None => x.dims().iter().copied().filter(|&d| d != 1).collect(),
                    Some(axes) => {
                        let axes = checked_axes(&axes, x.rank())?;
                        if let Some(&a) = axes.iter().find(|&&a| x.dims()[a] != 1) {
                            candle_core::bail!("cannot squeeze axis {a} of size {}", x.dims()[a]);
                        }
                        (0..x.rank())
                            .filter(|i| !axes.contains(i))
                            .map(|i| x.dims()[i])
                            .collect()
                    }
                };
                x.reshape(out)?
            }
            Op::Unsqueeze => {
                let x = req(0)?;
                let axes = frozen_ints(1, "axes")?
                    .ok_or_else(|| candle_core::Error::Msg("no axes".into()))?;
                let out_rank = x.rank() + axes.len();
                let axes = checked_axes(&axes, out_rank)?;
                x.reshape(crate::ir::ops::array::reference::unsqueezed(
                    x.dims(),
                    &axes,
                ))?
            }
            Op::Expand => {
                let x = req(0)?;
                let shape = frozen_ints(1, "the shape")?
                    .ok_or_else(|| candle_core::Error::Msg("no shape".into()))?;
                let shape = shape
                    .iter()
                    .map(|&d| usize::try_from(d))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| candle_core::Error::Msg(format!("shape {shape:?}")))?;
                let out = broadcast_shape(x.dims(), &shape).ok_or_else(|| {
                    candle_core::Error::Msg(format!("cannot broadcast {:?} to {shape:?}", x.dims()))
                })?;
                x.broadcast_as(out)?
            }
            Op::Slice => {
                let x = req(0)?;
                let starts = frozen_ints(1, "starts")?.unwrap_or_default();
                let ends = frozen_ints(2, "ends")?.unwrap_or_default();
                let axes = frozen_ints(3, "axes")?;
                let steps = frozen_ints(4, "steps")?;
                let (plan, out) = slice_plan(
                    "Slice",
                    x.dims(),
                    &starts,
                    &ends,
                    axes.as_deref(),
                    steps.as_deref(),
                )
                .map_err(merr)?;
                let mut y = x.clone();
                for (ax, (&(s, step), &len)) in plan.iter().zip(&out).enumerate() {
                    if step == 1 {
                        if len != x.dims()[ax] {
                            y = y.narrow(ax, s as usize, len)?;
                        }
                    } else {
                        // In bounds: slice_plan clamps start and length.
                        let idx: Vec<u32> =
                            (0..len as i64).map(|k| (s + k * step) as u32).collect();
                        let idx = CTensor::from_vec(idx, len, &Device::Cpu)?;
                        y = y.index_select(&idx, ax)?;
                    }
                }
                y
            }
            Op::Gather { axis } => {
                let x = req(0)?;
                let ind = frozen(1)?.ok_or_else(|| candle_core::Error::Msg("no indices".into()))?;
                let ax = checked_axis(*axis, x.rank())?;
                let dim = x.dims()[ax] as i64;
                let idx = ints(ind, "indices")?
                    .into_iter()
                    .map(|i| {
                        let j = if i < 0 { i + dim } else { i };
                        if (0..dim).contains(&j) {
                            Ok(j as u32)
                        } else {
                            candle_core::bail!("index {i} is out of range for a dim of {dim}")
                        }
                    })
                    .collect::<candle_core::Result<Vec<u32>>>()?;
                let n = idx.len();
                let y = x.index_select(&CTensor::from_vec(idx, n, &Device::Cpu)?, ax)?;
                let mut out = x.dims()[..ax].to_vec();
                out.extend_from_slice(ind.shape());
                out.extend_from_slice(&x.dims()[ax + 1..]);
                y.reshape(out)?
            }
            Op::Where => {
                let c = frozen(0)?.ok_or_else(|| candle_core::Error::Msg("no condition".into()))?;
                let c_u8: Vec<u8> = match c.as_bool() {
                    Some(b) => b.iter().map(|&b| b as u8).collect(),
                    None => candle_core::bail!("the condition must be bool, got {}", c.dtype()),
                };
                let (x, y) = (req(1)?, req(2)?);
                let out = broadcast_shape(c.shape(), x.dims())
                    .and_then(|s| broadcast_shape(&s, y.dims()))
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "cannot broadcast {:?}, {:?} and {:?}",
                            c.shape(),
                            x.dims(),
                            y.dims()
                        ))
                    })?;
                let c = CTensor::from_vec(c_u8, c.shape(), &Device::Cpu)?;
                c.broadcast_as(out.clone())?
                    .where_cond(&x.broadcast_as(out.clone())?, &y.broadcast_as(out)?)?
            }
            // Only f32 to f32 is lowered (checked): the value itself.
            Op::Cast { .. } => req(0)?.clone(),
            Op::Reduce {
                op,
                keepdims,
                noop_with_empty_axes,
            } => {
                let x = req(0)?;
                let axes = frozen_ints(1, "axes")?.unwrap_or_default();
                if axes.is_empty() && *noop_with_empty_axes {
                    x.clone()
                } else {
                    let mut red = if axes.is_empty() {
                        (0..x.rank()).collect()
                    } else {
                        checked_axes(&axes, x.rank())?
                    };
                    red.sort_unstable();
                    let y = match op {
                        ReduceOp::Sum => x.sum_keepdim(red.clone())?,
                        ReduceOp::Mean => x.mean_keepdim(red.clone())?,
                        ReduceOp::L1 => x.abs()?.sum_keepdim(red.clone())?,
                        ReduceOp::L2 => x.sqr()?.sum_keepdim(red.clone())?.sqrt()?,
                        ReduceOp::SumSquare => x.sqr()?.sum_keepdim(red.clone())?,
                        other => candle_core::bail!("Reduce {other:?} is not lowered"),
                    };
                    if *keepdims {
                        y
                    } else {
                        let out: Vec<usize> = (0..x.rank())
                            .filter(|a| !red.contains(a))
                            .map(|a| x.dims()[a])
                            .collect();
                        y.reshape(out)?
                    }
                }
            }
            Op::LayerNormalization { axis, epsilon } => {
                // Statistics over the trailing dims axis..rank (population
                // variance), scale and bias broadcast onto X.
                let x = req(0)?;
                let a = checked_axis(*axis, x.rank())?;
                let dims: Vec<usize> = (a..x.rank()).collect();
                let mean = x.mean_keepdim(dims.clone())?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(dims)?;
                let inv = var.affine(1.0, *epsilon as f64)?.sqrt()?.recip()?;
                let xn = xc.broadcast_mul(&inv)?;
                let mut y = xn.mul(&over_rows(req(1)?, &xn)?)?;
                if let Some(b) = get(2)? {
                    y = y.add(&over_rows(b, &y)?)?;
                }
                y
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
            Op::Softmax {
                axis,
                legacy,
                nan_to_zero,
            } => self.softmax_node(req(0)?, *axis, *legacy, false, *nan_to_zero)?,
            Op::LogSoftmax { axis, legacy } => {
                self.softmax_node(req(0)?, *axis, *legacy, true, false)?
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

    /// Softmax or log-softmax of a node: along `axis`, or (the opset < 13
    /// form) over the whole trailing block from `axis` on.
    fn softmax_node(
        &self,
        x: &CTensor,
        axis: i64,
        legacy: bool,
        log: bool,
        nan_to_zero: bool,
    ) -> candle_core::Result<CTensor> {
        let a = checked_axis(axis, x.rank())?;
        if legacy && a + 1 < x.rank() {
            let outer: usize = x.dims()[..a].iter().product();
            let flat = x.reshape((outer, x.elem_count() / outer.max(1)))?;
            softmax(&flat, 1, log, nan_to_zero)?.reshape(x.dims())
        } else {
            softmax(x, a, log, nan_to_zero)
        }
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

    /// Sin of the input is frozen (the reference computes it); Sin after a
    /// trained product is refused, naming the node.
    #[test]
    fn unsupported_op_is_named() {
        let mut g = Graph::new("t", 17);
        let ty = || TensorType::new(DType::F32, Shape(vec![]));
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, Shape(vec![Dim::sym("batch"), Dim::Known(4)])),
        );
        let w = g.add_const("w", Tensor::from_f32(vec![4, 4], seeded(16, 1)).unwrap());
        let (s, h, y) = (
            g.add_value("s", ty()),
            g.add_value("h", ty()),
            g.add_value("y", ty()),
        );
        for (name, op, inputs, out) in [
            ("frozen_sine", Op::Unary(UnaryOp::Sin), vec![Some(x)], s),
            ("mm", Op::MatMul, vec![Some(s), Some(w)], h),
            ("the_sine", Op::Unary(UnaryOp::Sin), vec![Some(h)], y),
        ] {
            g.add_node(Node {
                name: name.into(),
                op,
                inputs,
                outputs: vec![out],
            });
        }
        g.outputs = vec![h];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        assert!(Lowered::new(&g).is_ok());
        g.outputs = vec![y];
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

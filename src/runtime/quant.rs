//! Running QConv and QMatMul on the exact int8 kernels
//! ([`crate::kernels::cpu::qgemm`], [`crate::kernels::cpu::qconv`]).
//!
//! At plan time the int8 weight is packed once and the scales and bias are
//! copied out of the graph ([`QuantStep::new`]; None sends the node to the
//! reference kernel: auto padding, non-2-D convolutions, a bias that is not
//! one value per output channel). Each run quantizes the f32 activation
//! into a per-thread u8 buffer (dynamic parameters computed by the
//! reference's definition, so both paths agree bit for bit), then runs the
//! int8 product with the dequantizing epilogue straight into the arena.
//!
//! Or, when the node's [`Choice`] says `run=f32` ([`QuantRun::F32`]): the
//! weight is dequantized once at plan time and the f32 kernels run on the
//! activation as quantization leaves it (quantized and dequantized, or the
//! producer's u8 dequantized), so the layer stays int8 in storage and in
//! arithmetic, up to the f32 rounding of its sums; on a CPU where the
//! f32 kernels are faster that is the tuner's choice.

use std::cell::RefCell;

use crate::ir::ops::quant::reference::quant_items;
use crate::ir::{ActQuant, Activation, AutoPad, Graph, Node, Op, Tensor};
use crate::kernels::cpu::choice::{Choice, ConvAlgo, QuantRun};
use crate::kernels::cpu::qconv::{
    indirect_applies, pack_conv, pack_conv_indirect, pack_conv_sparse, qconv2d, QConvGeom,
    QPackedConv,
};
use crate::kernels::cpu::qgemm::{
    dynamic_params_with, finite_range_with, qgemm, quantize_u8_with, QEpilogue, QMatA, QMatX, QOut,
    QPackedB, QRequant,
};
use crate::kernels::cpu::qsparse::{self, qspmm_wx, QCsr};
use crate::kernels::cpu::sparse;
use crate::kernels::cpu::{conv, prepack_with, run_node_packed, CpuCtx, Prepacked, View, ViewMut};
use crate::{Error, Result};

thread_local! {
    /// The quantized activation of the step running on this thread.
    static QUANTIZED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The transposed quantized activation of a sparse QMatMul.
    static TRANSPOSED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The dequantized activation and the f32 output of a step run on the
    /// f32 kernels (before requantization).
    static DEQUANTIZED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A step's activation: f32, or u8 quantized by its producer.
pub(crate) enum QIn<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

/// A step's output: f32, or u8 requantized for its consumers.
pub(crate) enum QDst<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8], QRequant),
}

impl<'a> QDst<'a> {
    fn len(&self) -> usize {
        match self {
            QDst::F32(o) => o.len(),
            QDst::U8(o, _) => o.len(),
        }
    }

    /// The output cut into `n` equal parts (one per input item).
    fn split(self, n: usize) -> Result<Vec<QDst<'a>>> {
        if n == 0 || !self.len().is_multiple_of(n) {
            return Err(Error::Internal(format!(
                "an output of {} values does not split into {n} items",
                self.len()
            )));
        }
        let per = (self.len() / n).max(1);
        Ok(match self {
            QDst::F32(o) => o.chunks_mut(per).map(QDst::F32).collect(),
            QDst::U8(o, rq) => o.chunks_mut(per).map(|c| QDst::U8(c, rq)).collect(),
        })
    }
}

#[derive(Debug)]
enum Product {
    Conv {
        geom: QConvGeom,
        x_shape: [usize; 4],
        w: QPackedConv,
    },
    MatMul {
        m: usize,
        k: usize,
        b: QPackedB,
    },
    /// A MatMul on the sparse kernel: `Cᵀ = Bᵀ · Aᵀ`, B's columns the
    /// weight rows.
    SparseMatMul {
        m: usize,
        k: usize,
        n: usize,
        bt: QCsr,
    },
    /// The f32 kernels (`run=f32`).
    F32(F32Product),
}

/// A quantized layer as the f32 op it computes (FusedConv, FusedMatMul)
/// on its dequantized weight, packed for the f32 kernels.
#[derive(Debug)]
struct F32Product {
    op: Op,
    w: Tensor,
    packed: Option<Prepacked>,
    x_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

/// A QConv or QMatMul node ready to run on the int8 kernels.
#[derive(Debug)]
pub(crate) struct QuantStep {
    product: Product,
    act_quant: ActQuant,
    scales: Vec<f32>,
    bias: Option<Vec<f32>>,
    act: Option<Activation>,
    /// Input position of the residual (QConv's R), when present.
    pub residual: Option<usize>,
    w_shape: Vec<usize>,
    /// The (work) density of a QConv's weight, for its f32 algorithms
    /// (pruned layers list the sparse kernel).
    w_density: Option<f64>,
    /// Whether the int8 sparse kernel is this layer's default, when it can
    /// run it (a pruned weight, not depthwise); None when it cannot.
    sparse_default: Option<bool>,
    /// Whether the indirect int8 convolution (output channels in the
    /// lanes, `conv=direct-oc`) is this layer's default; the im2col GEMM
    /// (`conv=gemm`) is then its alternative.
    indirect_default: bool,
    out_shape: Vec<usize>,
    /// Items of the input's first axis, each dynamically quantized on its
    /// own ([`crate::ir::ops::quant::reference::quant_items`]).
    items: usize,
}

/// The data of a constant f32 input, or None.
fn const_f32(g: &Graph, node: &Node, pos: usize) -> Option<Vec<f32>> {
    g.const_value(node.input(pos)?)?
        .as_f32()
        .map(<[f32]>::to_vec)
}

impl QuantStep {
    /// Prepares `node` (of the specialized graph `g`, `x_shape` its first
    /// input's shape, `out_shape` its output's) for the int8 kernels, or
    /// for the f32 ones when `choice` says `run=f32` (its `conv` the f32
    /// convolution's algorithm); None when they do not cover it.
    pub fn new(
        g: &Graph,
        node: &Node,
        x_shape: &[usize],
        out_shape: &[usize],
        choice: Choice,
        cx: &CpuCtx,
    ) -> Option<QuantStep> {
        let w = g.const_value(node.input(1)?)?;
        let wq = match w.data() {
            crate::ir::TensorData::I8(v) => v.as_slice(),
            _ => return None,
        };
        let scales = const_f32(g, node, 2)?;
        let sparse_default: Option<bool>;
        // Whether the indirect int8 kernel applies (not asked on the f32
        // kernels).
        let mut indirect = false;
        let (product, act_quant, act, residual, channels) = match &node.op {
            Op::QConv { conv, x_quant, act } => {
                if conv.auto_pad != AutoPad::NotSet
                    || conv.kernel_shape.len() != 2
                    || x_shape.len() != 4
                    || w.rank() != 4
                {
                    return None;
                }
                let geom = QConvGeom {
                    kernel: [conv.kernel_shape[0], conv.kernel_shape[1]],
                    strides: [conv.strides[0], conv.strides[1]],
                    dilations: [conv.dilations[0], conv.dilations[1]],
                    pads: [conv.pads[0], conv.pads[1], conv.pads[2], conv.pads[3]],
                    group: conv.group,
                };
                let ws = w.shape();
                let (oh, ow) = geom.out_hw(x_shape[2], x_shape[3])?;
                let shape = [ws[0], ws[1], ws[2], ws[3]];
                let rows = ws[0];
                let k = ws[1] * ws[2] * ws[3];
                sparse_default =
                    (ws[1] > 1 && sparse::density(&w.to_f32_vec()) <= 0.5).then(|| {
                        qsparse::sparse_by_default(qsparse::work_density(wq, rows, k), oh * ow)
                    });
                let int8 = choice.run.is_none();
                let hw = (x_shape[2], x_shape[3]);
                indirect = int8 && indirect_applies(shape, &geom, hw, cx.features);
                let packed = if int8 && choice.sparse.or(sparse_default) == Some(true) {
                    pack_conv_sparse(wq, shape, conv.group, cx.features)?
                } else if indirect && choice.conv != Some(ConvAlgo::Gemm) {
                    pack_conv_indirect(wq, shape, &geom, hw, cx.features)?
                } else {
                    pack_conv(wq, shape, conv.group, cx.features)?
                };
                if out_shape != [x_shape[0], ws[0], oh, ow] || x_shape[1] != ws[1] * conv.group {
                    return None;
                }
                // The residual must be a whole output-shaped tensor.
                let residual = match node.input(4) {
                    None => None,
                    Some(r) if g.ty(r).shape.concrete().as_deref() == Some(out_shape) => Some(4),
                    Some(_) => return None,
                };
                let product = Product::Conv {
                    geom,
                    x_shape: [x_shape[0], x_shape[1], x_shape[2], x_shape[3]],
                    w: packed,
                };
                (product, *x_quant, act.clone(), residual, ws[0])
            }
            Op::QMatMul { a_quant, act } => {
                if w.rank() != 2 || x_shape.is_empty() {
                    return None;
                }
                let (k, n) = (w.shape()[0], w.shape()[1]);
                if x_shape[x_shape.len() - 1] != k {
                    return None;
                }
                let m = x_shape.iter().product::<usize>() / k.max(1);
                let items = quant_items(x_shape).max(1);
                // Bᵀ: the weight rows of the sparse kernel.
                let bt: Vec<i8> = (0..n * k).map(|i| wq[(i % k) * n + i / k]).collect();
                sparse_default = (sparse::density(&w.to_f32_vec()) <= 0.5).then(|| {
                    qsparse::sparse_by_default(qsparse::work_density(&bt, n, k), m / items)
                });
                let product =
                    if choice.run.is_none() && choice.sparse.or(sparse_default) == Some(true) {
                        let bt = qsparse::prepack(&bt, n, k, cx.features)?;
                        Product::SparseMatMul { m, k, n, bt }
                    } else {
                        Product::MatMul {
                            m,
                            k,
                            b: QPackedB::new(k, n, wq, n, false, cx.features)?,
                        }
                    };
                (product, *a_quant, act.clone(), None, n)
            }
            _ => return None,
        };
        if scales.len() != 1 && scales.len() != channels {
            return None;
        }
        // Both ops take the bias at input 3.
        let bias = match node.input(3) {
            None => None,
            Some(b) => {
                let t = g.const_value(b)?;
                // One value per output channel ([N], [1, N], ...).
                if t.numel() != channels || t.shape().iter().rev().skip(1).any(|&d| d != 1) {
                    return None;
                }
                if matches!(node.op, Op::QConv { .. }) && t.rank() != 1 {
                    return None;
                }
                Some(t.as_f32()?.to_vec())
            }
        };
        let product = match choice.run {
            Some(QuantRun::F32) => {
                let f = F32Product::new(&node.op, w, &scales, x_shape, out_shape);
                Product::F32(f?.packed_for(choice.conv, cx))
            }
            _ => product,
        };
        Some(QuantStep {
            product,
            act_quant,
            scales,
            bias,
            act,
            residual,
            w_shape: w.shape().to_vec(),
            w_density: match &node.op {
                Op::QConv { conv, .. } => crate::kernels::cpu::weight_work_density(
                    &Op::Conv(conv.clone()),
                    &View {
                        shape: w.shape(),
                        data: &w.to_f32_vec(),
                    },
                ),
                _ => None,
            },
            indirect_default: indirect && sparse_default != Some(true),
            sparse_default,
            out_shape: out_shape.to_vec(),
            items: quant_items(x_shape),
        })
    }

    /// Whether its weights run on a sparse kernel (int8, or f32 through
    /// `run=f32`).
    pub fn is_sparse(&self) -> bool {
        match &self.product {
            Product::Conv { w, .. } => w.is_sparse(),
            Product::SparseMatMul { .. } => true,
            Product::MatMul { .. } => false,
            Product::F32(f) => f.packed.as_ref().is_some_and(Prepacked::is_sparse),
        }
    }

    /// The kernel choices this step could take (its own among them), the
    /// default first: the int8 kernels, then the f32 ones with each
    /// algorithm they have for the layer.
    pub fn choices(&self, op: &Op, cx: &CpuCtx) -> Vec<Choice> {
        let f32_run = Choice {
            run: Some(QuantRun::F32),
            ..Choice::default()
        };
        let mut out = vec![Choice::default()];
        // A pruned weight: the other of the int8 sparse and dense kernels.
        if let Some(default) = self.sparse_default {
            out.push(Choice {
                sparse: Some(!default),
                ..Choice::default()
            });
        }
        if self.indirect_default {
            out.push(Choice {
                conv: Some(ConvAlgo::Gemm),
                ..Choice::default()
            });
        }
        out.push(f32_run);
        let f32_op = match op {
            Op::QConv { conv, act, .. } => Op::FusedConv {
                conv: conv.clone(),
                act: act.clone(),
            },
            _ => return out,
        };
        let algos = conv::algorithms(
            &f32_op,
            &self.w_shape,
            self.w_density,
            &self.out_shape,
            cx.features,
        );
        out.extend(algos.into_iter().skip(1).map(|a| Choice {
            conv: Some(a),
            ..f32_run
        }));
        out
    }

    /// The input's static quantization `(scale, zero point)`, when it has
    /// one (a producer may then hand it over already quantized).
    pub fn static_input_quant(&self) -> Option<(f32, u8)> {
        match self.act_quant {
            ActQuant::Static { scale, zero_point } => Some((scale, zero_point)),
            ActQuant::Dynamic => None,
        }
    }

    /// Computes the step: `x` the activation (f32, or already quantized
    /// with [`QuantStep::static_input_quant`]), `residual` QConv's R, `out`
    /// the output (f32, or requantized for a consumer that takes u8).
    pub fn run(&self, x: QIn, residual: Option<&[f32]>, out: QDst, cx: &CpuCtx) -> Result<()> {
        if let Product::F32(f) = &self.product {
            return self.run_f32(f, x, residual, out, cx);
        }
        match x {
            QIn::U8(q) => {
                let (scale, zp) = self.static_input_quant().ok_or_else(|| {
                    Error::Internal("a u8 input for a dynamically quantized step".into())
                })?;
                self.product(q, scale, zp, self.items, residual, out, cx)
            }
            QIn::F32(x) => QUANTIZED.with(|buf| -> Result<()> {
                let mut q = buf.borrow_mut();
                // Every byte is written by the quantization: the buffer
                // only grows (no fill of the whole input on every run).
                if q.len() < x.len() {
                    q.resize(x.len(), 0);
                }
                let q = &mut q[..x.len()];
                match self.act_quant {
                    ActQuant::Static { scale, zero_point } => {
                        quantize_on(cx, x, scale, zero_point, q);
                        self.product(q, scale, zero_point, self.items, residual, out, cx)
                    }
                    // Each item with its own parameters, as its own product.
                    ActQuant::Dynamic if self.items <= 1 => {
                        let (scale, zp) = dynamic_params_on(cx, x);
                        quantize_on(cx, x, scale, zp, q);
                        self.product(q, scale, zp, self.items, residual, out, cx)
                    }
                    ActQuant::Dynamic => {
                        let items = self.items;
                        let outs = out.split(items)?;
                        let (per_x, per_out) = (x.len() / items, outs.first().map_or(0, QDst::len));
                        for (i, o) in outs.into_iter().enumerate() {
                            let (xs, qs) = (&x[i * per_x..][..per_x], &mut q[i * per_x..][..per_x]);
                            let (scale, zp) = dynamic_params_on(cx, xs);
                            quantize_on(cx, xs, scale, zp, qs);
                            let r = residual.map(|r| &r[i * per_out..][..per_out]);
                            self.product(qs, scale, zp, 1, r, o, cx)?;
                        }
                        Ok(())
                    }
                }
            }),
        }
    }

    /// The int8 product of the quantized activation `q`: `items` of the
    /// planned input's first-axis items (all, or one).
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        q: &[u8],
        scale: f32,
        zp: u8,
        items: usize,
        residual: Option<&[f32]>,
        out: QDst,
        cx: &CpuCtx,
    ) -> Result<()> {
        let ep = QEpilogue {
            a_scale: scale,
            b_scales: &self.scales,
            bias: self.bias.as_deref(),
            residual,
            act: self.act.as_ref(),
        };
        let out_len = match &out {
            QDst::F32(o) => o.len(),
            QDst::U8(o, _) => o.len(),
        };
        let out = match out {
            QDst::F32(o) => QOut::F32(o, ep),
            QDst::U8(o, rq) => QOut::U8(o, ep, rq),
        };
        match &self.product {
            Product::MatMul { m, k, b } => {
                let m = m * items / self.items.max(1);
                if q.len() != m * k || out_len != m * b.n() {
                    return Err(Error::Internal("QMatMul: planned sizes differ".into()));
                }
                let a = QMatA {
                    data: q,
                    ld: *k,
                    trans: false,
                    zero_point: zp,
                };
                qgemm(m, a, b, out, b.n(), cx);
            }
            Product::SparseMatMul { m, k, n, bt } => {
                let m = m * items / self.items.max(1);
                if q.len() != m * k || out_len != m * n {
                    return Err(Error::Internal("QMatMul: planned sizes differ".into()));
                }
                // Aᵀ, the pixels of the weights-left product.
                TRANSPOSED.with(|buf| {
                    let mut t = buf.borrow_mut();
                    if t.len() < q.len() {
                        t.resize(q.len(), 0);
                    }
                    for (r, row) in q.chunks_exact((*k).max(1)).enumerate() {
                        for (c, &v) in row.iter().enumerate() {
                            t[c * m + r] = v;
                        }
                    }
                    let x = QMatX {
                        data: &t[..q.len()],
                        ld: m,
                        zero_point: zp,
                    };
                    qspmm_wx(bt, x, m, out, (1, *n), cx);
                });
            }
            Product::Conv { geom, x_shape, w } => {
                let x_shape = [items, x_shape[1], x_shape[2], x_shape[3]];
                if q.len() != x_shape.iter().product::<usize>() {
                    return Err(Error::Internal("QConv: planned sizes differ".into()));
                }
                qconv2d(q, x_shape, zp, geom, w, out, cx);
            }
            Product::F32(_) => {
                return Err(Error::Internal(
                    "an f32 step reached the int8 product".into(),
                ))
            }
        }
        Ok(())
    }

    /// The step on the f32 kernels: the activation as quantization leaves
    /// it, `(q − zp) · scale`, through `f.op`, then requantized when the
    /// output leaves as u8.
    fn run_f32(
        &self,
        f: &F32Product,
        x: QIn,
        residual: Option<&[f32]>,
        out: QDst,
        cx: &CpuCtx,
    ) -> Result<()> {
        let n: usize = f.x_shape.iter().product();
        let x_len = match &x {
            QIn::F32(v) => v.len(),
            QIn::U8(v) => v.len(),
        };
        if x_len != n {
            return Err(Error::Internal(
                "quantized step: planned sizes differ".into(),
            ));
        }
        DEQUANTIZED.with(|cell| -> Result<()> {
            let (xf, yf) = &mut *cell.borrow_mut();
            if xf.len() < n {
                xf.resize(n, 0.0);
            }
            let xf = &mut xf[..n];
            match x {
                QIn::U8(q) => {
                    let (scale, zp) = self.static_input_quant().ok_or_else(|| {
                        Error::Internal("a u8 input for a dynamically quantized step".into())
                    })?;
                    dequantize(q, scale, zp, xf);
                }
                QIn::F32(x) => QUANTIZED.with(|buf| {
                    let mut q = buf.borrow_mut();
                    if q.len() < n {
                        q.resize(n, 0);
                    }
                    // Dynamic parameters per item, as the int8 path.
                    let items = match self.act_quant {
                        ActQuant::Dynamic => self.items.max(1),
                        ActQuant::Static { .. } => 1,
                    };
                    let per = n / items;
                    for i in 0..items {
                        let r = i * per..(i + 1) * per;
                        let (scale, zp) = match self.act_quant {
                            ActQuant::Dynamic => dynamic_params_with(cx.features, &x[r.clone()]),
                            ActQuant::Static { scale, zero_point } => (scale, zero_point),
                        };
                        quantize_u8_with(cx.features, &x[r.clone()], scale, zp, &mut q[r.clone()]);
                        dequantize(&q[r.clone()], scale, zp, &mut xf[r]);
                    }
                }),
            }
            let bias_shape = [self.bias.as_ref().map_or(0, Vec::len)];
            let bias = self.bias.as_deref().map(|data| View {
                shape: &bias_shape,
                data,
            });
            let w = f.w.as_f32().map(|data| View {
                shape: f.w.shape(),
                data,
            });
            let x = Some(View {
                shape: &f.x_shape,
                data: xf,
            });
            let mut inputs = vec![x, w];
            if matches!(f.op, Op::FusedConv { .. }) {
                let r = residual.map(|data| View {
                    shape: &f.out_shape,
                    data,
                });
                inputs.extend([bias, r]);
            } else if bias.is_some() {
                inputs.push(bias);
            }
            let run = |y: &mut [f32]| -> Result<()> {
                let mut outs = [ViewMut {
                    shape: &f.out_shape,
                    data: y,
                }];
                if run_node_packed(&f.op, &inputs, &mut outs, f.packed.as_ref(), cx)? {
                    Ok(())
                } else {
                    Err(Error::Internal(
                        "the f32 kernels declined a quantized step they were planned for".into(),
                    ))
                }
            };
            match out {
                QDst::F32(o) => run(o),
                QDst::U8(o, rq) => {
                    if yf.len() < o.len() {
                        yf.resize(o.len(), 0.0);
                    }
                    let yf = &mut yf[..o.len()];
                    run(yf)?;
                    quantize_u8_with(cx.features, yf, rq.scale, rq.zero_point, o);
                    Ok(())
                }
            }
        })
    }
}

/// Values from which an activation is quantized on all threads (each
/// value's result does not depend on the split).
const PARALLEL_QUANT_MIN: usize = 1 << 16;

/// The pieces a parallel quantization cuts `len` values into: a few per
/// thread, whole cache lines of u8.
fn quant_chunk(len: usize, cx: &CpuCtx) -> usize {
    len.div_ceil(4 * cx.threads).next_multiple_of(64)
}

/// [`quantize_u8_with`] on `cx`'s threads when `x` is large.
fn quantize_on(cx: &CpuCtx, x: &[f32], scale: f32, zp: u8, q: &mut [u8]) {
    if cx.threads <= 1 || x.len() < PARALLEL_QUANT_MIN {
        return quantize_u8_with(cx.features, x, scale, zp, q);
    }
    let chunk = quant_chunk(x.len(), cx);
    cx.for_each_chunk_mut(&mut q[..x.len()], chunk, |i, qc| {
        quantize_u8_with(cx.features, &x[i * chunk..][..qc.len()], scale, zp, qc)
    });
}

/// [`dynamic_params_with`] on `cx`'s threads when `x` is large: the range
/// of each piece, then of the ranges (min and max are exact in any order).
fn dynamic_params_on(cx: &CpuCtx, x: &[f32]) -> (f32, u8) {
    if cx.threads <= 1 || x.len() < PARALLEL_QUANT_MIN {
        return dynamic_params_with(cx.features, x);
    }
    let chunk = quant_chunk(x.len(), cx);
    let mut ranges = vec![(0.0f32, 0.0f32); x.len().div_ceil(chunk)];
    cx.for_each_chunk_mut(&mut ranges, 1, |i, r| {
        r[0] = finite_range_with(cx.features, &x[i * chunk..((i + 1) * chunk).min(x.len())])
    });
    let (lo, hi) = ranges
        .iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), &(l, h)| (lo.min(l), hi.max(h)));
    crate::ir::ops::quant::reference::range_params(lo, hi)
}

/// `(q − zp) · scale`, as DequantizeLinear computes it.
fn dequantize(q: &[u8], scale: f32, zp: u8, out: &mut [f32]) {
    for (y, &v) in out.iter_mut().zip(q) {
        *y = (v as f32 - zp as f32) * scale;
    }
}

impl F32Product {
    /// The f32 form of QConv / QMatMul `op` with int8 weight `w` and its
    /// scales (per output channel or one), before packing.
    fn new(
        op: &Op,
        w: &Tensor,
        scales: &[f32],
        x_shape: &[usize],
        out_shape: &[usize],
    ) -> Option<F32Product> {
        let wq = match w.data() {
            crate::ir::TensorData::I8(v) => v.as_slice(),
            _ => return None,
        };
        let ws = w.shape();
        let scale = |ch: usize| scales.get(ch).or(scales.first()).copied().unwrap_or(0.0);
        let (f32_op, wf): (Op, Vec<f32>) = match op {
            Op::QConv { conv, act, .. } => {
                let per = wq.len() / ws[0].max(1);
                let wf = wq
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * scale(i / per.max(1)))
                    .collect();
                let op = Op::FusedConv {
                    conv: conv.clone(),
                    act: act.clone(),
                };
                (op, wf)
            }
            Op::QMatMul { act, .. } => {
                let n = ws[1].max(1);
                let wf = wq
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * scale(i % n))
                    .collect();
                let op = Op::FusedMatMul {
                    trans_a: false,
                    trans_b: false,
                    alpha: 1.0,
                    act: act.clone(),
                };
                (op, wf)
            }
            _ => return None,
        };
        Some(F32Product {
            op: f32_op,
            w: Tensor::from_f32(ws.to_vec(), wf).ok()?,
            packed: None,
            x_shape: x_shape.to_vec(),
            out_shape: out_shape.to_vec(),
        })
    }

    /// Packs the weight for the f32 kernels (a convolution with `algo`).
    fn packed_for(mut self, algo: Option<ConvAlgo>, cx: &CpuCtx) -> F32Product {
        let consts = [
            None,
            self.w.as_f32().map(|data| View {
                shape: self.w.shape(),
                data,
            }),
        ];
        let choice = Choice {
            conv: algo,
            ..Choice::default()
        };
        self.packed = prepack_with(&self.op, &consts, &self.out_shape, choice, cx);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::qgemm::tests::{features, rand_f32, two_threads};

    /// Quantizing on two threads gives one thread's bytes and dynamic
    /// parameters, special values and signed zeros included.
    #[test]
    fn threaded_quantization_matches_one_thread() {
        let mut x = rand_f32(3 * PARALLEL_QUANT_MIN + 77, 5, 4.0);
        for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e30]
            .into_iter()
            .enumerate()
        {
            x[i * 40_000 + 3] = v;
        }
        for (name, f) in features() {
            let cx = two_threads(f);
            let params = dynamic_params_with(f, &x);
            assert_eq!(dynamic_params_on(&cx, &x), params, "{name}");
            let (mut one, mut two) = (vec![0u8; x.len()], vec![0u8; x.len()]);
            quantize_u8_with(f, &x, params.0, params.1, &mut one);
            quantize_on(&cx, &x, params.0, params.1, &mut two);
            assert_eq!(one, two, "{name}");
        }
    }
}

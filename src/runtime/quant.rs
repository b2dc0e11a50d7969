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

use std::cell::RefCell;

use crate::ir::{ActQuant, Activation, AutoPad, Graph, Node, Op};
use crate::kernels::cpu::qconv::{pack_conv, qconv2d, QConvGeom, QPackedConv};
use crate::kernels::cpu::qgemm::{
    dynamic_params_with, qgemm, quantize_u8_with, QEpilogue, QMatA, QOut, QPackedB, QRequant,
};
use crate::kernels::cpu::CpuCtx;
use crate::{Error, Result};

thread_local! {
    /// The quantized activation of the step running on this thread.
    static QUANTIZED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
}

/// The data of a constant f32 input, or None.
fn const_f32(g: &Graph, node: &Node, pos: usize) -> Option<Vec<f32>> {
    g.const_value(node.input(pos)?)?
        .as_f32()
        .map(<[f32]>::to_vec)
}

impl QuantStep {
    /// Prepares `node` (of the specialized graph `g`, `x_shape` its first
    /// input's shape, `out_shape` its output's) for the int8 kernels; None
    /// when they do not cover it.
    pub fn new(
        g: &Graph,
        node: &Node,
        x_shape: &[usize],
        out_shape: &[usize],
        cx: &CpuCtx,
    ) -> Option<QuantStep> {
        let w = g.const_value(node.input(1)?)?;
        let wq = match w.data() {
            crate::ir::TensorData::I8(v) => v.as_slice(),
            _ => return None,
        };
        let scales = const_f32(g, node, 2)?;
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
                let packed = pack_conv(wq, [ws[0], ws[1], ws[2], ws[3]], conv.group, cx.features)?;
                let (oh, ow) = geom.out_hw(x_shape[2], x_shape[3])?;
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
                let b = QPackedB::new(k, n, wq, n, false, cx.features)?;
                (Product::MatMul { m, k, b }, *a_quant, act.clone(), None, n)
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
        Some(QuantStep {
            product,
            act_quant,
            scales,
            bias,
            act,
            residual,
        })
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
        match x {
            QIn::U8(q) => {
                let (scale, zp) = self.static_input_quant().ok_or_else(|| {
                    Error::Internal("a u8 input for a dynamically quantized step".into())
                })?;
                self.product(q, scale, zp, residual, out, cx)
            }
            QIn::F32(x) => {
                let (scale, zp) = match self.act_quant {
                    ActQuant::Dynamic => dynamic_params_with(cx.features, x),
                    ActQuant::Static { scale, zero_point } => (scale, zero_point),
                };
                QUANTIZED.with(|buf| -> Result<()> {
                    let mut q = buf.borrow_mut();
                    // Every byte is written by the quantization: the buffer
                    // only grows (no fill of the whole input on every run).
                    if q.len() < x.len() {
                        q.resize(x.len(), 0);
                    }
                    let q = &mut q[..x.len()];
                    quantize_u8_with(cx.features, x, scale, zp, q);
                    self.product(q, scale, zp, residual, out, cx)
                })
            }
        }
    }

    /// The int8 product of the quantized activation `q`.
    fn product(
        &self,
        q: &[u8],
        scale: f32,
        zp: u8,
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
                if q.len() != m * k || out_len != m * b.n() {
                    return Err(Error::Internal("QMatMul: planned sizes differ".into()));
                }
                let a = QMatA {
                    data: q,
                    ld: *k,
                    trans: false,
                    zero_point: zp,
                };
                qgemm(*m, a, b, out, b.n(), cx);
            }
            Product::Conv { geom, x_shape, w } => {
                if q.len() != x_shape.iter().product::<usize>() {
                    return Err(Error::Internal("QConv: planned sizes differ".into()));
                }
                qconv2d(q, *x_shape, zp, geom, w, out, cx);
            }
        }
        Ok(())
    }
}

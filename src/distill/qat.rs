//! Quantization-aware fine-tuning of int8 students (`mlc distill --qat`).
//!
//! An int8 student (a bundle from `mlc compress --int8`, whose products
//! are [`Op::QConv`] / [`Op::QMatMul`]) is fine-tuned in float with the
//! integer arithmetic emulated in the forward pass, then written back as
//! int8 into the same nodes.
//!
//! ```text
//! mlc compress cnn.onnx --int8 --calib calib.npz -o cnn8.mlc
//! mlc distill cnn8.mlc --teacher cnn.onnx --data train.npz --labels \
//!     --eval held_out.npz --qat -o cnn8.qat.mlc
//! ```
//!
//! # The lowering
//!
//! - **Weights.** Each int8 weight becomes a trainable f32 variable
//!   initialised to its dequantized value `w_q * w_scale` (per output
//!   channel, or one scale for the tensor). Its bias (QConv's B, QMatMul's
//!   bias) trains as an f32 variable, as for f32 layers.
//! - **Fake quantization.** Every forward pass puts the weight back on the
//!   layer's int8 grid, `clamp(round_half_even(w / w_scale), -qmax, qmax)`
//!   (the formula of [`crate::compress::quantize::symmetric_i8`]), and the
//!   activation on its u8 grid with the node's [`ActQuant`]: the calibrated
//!   static scale and zero point, or for [`ActQuant::Dynamic`] the
//!   per-item (first axis) min/max parameters the kernel computes, taken as
//!   constants for the gradient. Both are computed by the reference
//!   functions ([`quantize_u8`], [`dynamic_params`]) the int8 kernels are
//!   held to bit for bit.
//! - **Integer products.** The product runs on the integer values
//!   (`q - zp` and `w_q`, exact small integers held in f32), and its result
//!   is dequantized as the kernel does: `acc * (x_scale * w_scale[m])`,
//!   then `+ bias`, `+ residual`, the activation. While the accumulators
//!   stay below 2^24 in magnitude (a reduction depth of 1,000 or so at
//!   7-bit weights, 500 at full range, in the worst case) every f32 sum is
//!   exact, so the forward pass computes the int8 kernels' outputs bit for
//!   bit; past that the sums round as f32 products do (relative 6e-8 per
//!   addition). On the digits students the outputs are the runtime's to
//!   the last bit (the tests hold them to 1e-5 of the output's magnitude
//!   and 99% top-1 agreement).
//! - **Straight-through estimator.** The backward pass sees the rounding
//!   as the identity: the quantized operand is `q + (u - detach(u)) *
//!   pass` with `u = x / scale` (so the value is exactly `q`, and the
//!   gradient `pass / scale`), `pass` being 0 where the value was clamped
//!   (the clipped STE: a weight past `±qmax * scale` or an activation past
//!   the u8 range gets no gradient through the rounding), else 1.
//!
//! # Scales stay fixed
//!
//! The weight scales are the ones the bundle stores, for the whole of
//! training, not recomputed from the current weights:
//! - the forward pass is then the written int8 model exactly (the same
//!   scales, the same rounding), at the first step (the dequantized weight
//!   rounds back to its `w_q`) and after training (requantization is the
//!   forward pass's rounding);
//! - a max-abs scale recomputed each step would move all the weights of a
//!   channel onto a new grid whenever its largest weight moves, a jumpy
//!   target for small learning rates, and it would need the f16 rounding
//!   of stored scales replayed in the graph;
//! - fine-tuning moves weights by little; the few that would leave the
//!   grid are clamped to its end, as the int8 model clamps them.
//!
//! The grid is the one the bundle's weights were made on: `qmax` is 63
//! (7-bit weights, `mlc compress`'s default) when every stored value of
//! the layer is within ±63, else 127 (`--full-range`).
//!
//! Activation scales and zero points are not learned: the written bundle
//! keeps its calibrated (or dynamic) activation quantization.
//!
//! # Pruned zeros
//!
//! As for f32 students, a weight stored as exactly zero is kept zero (its
//! mask). On an int8 student that is every `w_q == 0`: the pruned weights,
//! and also the small weights that rounded to zero (a few percent of a
//! dense layer on the 7-bit grid), which therefore stay zero.
//!
//! # Write-back
//!
//! The best weights (by held-out agreement) are requantized with the fixed
//! scales into the same QConv / QMatMul nodes ([`Lowered::stored`]): the
//! result is an ordinary int8 bundle of the same layers and about the same
//! size, and the report's before/after figures come from running it on
//! mlc's int8 kernels, not from this emulation.

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor as CTensor, Var};

use super::lower::{act, cerr, conv, matmul, to_candle, Lowered, Param};
use crate::ir::ops::quant::reference::{dynamic_params, quant_items, quantize_u8};
use crate::ir::{ActQuant, Graph, Node, Op, Tensor, TensorData, ValueId};
use crate::{Error, Result};

/// Whether `op` is an int8 product ([`Op::QConv`], [`Op::QMatMul`]).
pub fn is_int8_layer(op: &Op) -> bool {
    matches!(op, Op::QConv { .. } | Op::QMatMul { .. })
}

/// An int8 weight trained in float: its grid (fixed scales, `qmax`) and
/// where each element's scale sits.
#[derive(Clone, Debug)]
pub struct QatWeight {
    /// One scale per output channel, or one for the tensor.
    pub scales: Vec<f32>,
    /// The grid's largest magnitude: 63 (7-bit weights) or 127.
    pub qmax: f32,
    /// The weight's shape: QConv's `[M, C/group, k..]`, QMatMul's `[K, N]`.
    shape: Vec<usize>,
    /// Whether the output channel is the first axis (QConv) or the last
    /// (QMatMul).
    channel_first: bool,
}

fn refuse(node: &Node, why: &str) -> Error {
    Error::Usage(format!(
        "distill: op {} (node '{}') is not supported by the training lowering ({why})",
        node.op.onnx_type(),
        node.name
    ))
}

/// Checks an int8 product for the lowering: refused without `qat` (with a
/// hint), else its weight must be an i8 constant with f32 scales, one per
/// output channel or one.
pub(super) fn check(g: &Graph, node: &Node, qat: bool) -> Result<()> {
    if !qat {
        return Err(refuse(
            node,
            "an int8 layer: fine-tune an int8 student with --qat, quantization-aware training",
        ));
    }
    if let Op::QConv { conv: c, .. } = &node.op {
        let rank = c.kernel_shape.len();
        if !(1..=2).contains(&rank) {
            return Err(refuse(node, "only 1-D and 2-D convolutions"));
        }
        if rank == 2 && c.dilations[0] != c.dilations[1] {
            return Err(refuse(node, "unequal dilations"));
        }
    }
    weight_of(g, node).map(|_| ())
}

/// The i8 weight of an int8 product, its value, and its grid.
fn weight_of<'g>(g: &'g Graph, node: &Node) -> Result<(ValueId, &'g Tensor, QatWeight)> {
    let konst = |i: usize| node.input(i).and_then(|v| Some((v, g.consts.get(&v)?)));
    let (wv, w) = konst(1).ok_or_else(|| refuse(node, "the weight is not a constant"))?;
    let TensorData::I8(q) = w.data() else {
        return Err(refuse(
            node,
            &format!("the weight '{}' is {}, not i8", g.value(wv).name, w.dtype()),
        ));
    };
    let scales = konst(2)
        .and_then(|(_, s)| s.as_f32())
        .ok_or_else(|| refuse(node, "the weight scale is not an f32 constant"))?
        .to_vec();
    let channel_first = matches!(node.op, Op::QConv { .. });
    let channels = if channel_first {
        w.shape().first().copied()
    } else if w.rank() == 2 {
        w.shape().last().copied()
    } else {
        None
    };
    let channels = channels.ok_or_else(|| {
        refuse(
            node,
            &format!("a weight of shape {:?} is not lowered", w.shape()),
        )
    })?;
    if scales.len() != 1 && scales.len() != channels {
        return Err(refuse(
            node,
            &format!(
                "{} weight scales for {channels} output channels",
                scales.len()
            ),
        ));
    }
    if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(refuse(node, "a weight scale is not a positive number"));
    }
    let amax = q.iter().map(|&x| x.unsigned_abs()).max().unwrap_or(0);
    let qmax = if amax <= 63 { 63.0 } else { 127.0 };
    Ok((
        wv,
        w,
        QatWeight {
            scales,
            qmax,
            shape: w.shape().to_vec(),
            channel_first,
        },
    ))
}

/// The trainable parameters of the int8 products of `g` (in `order`):
/// each i8 weight as an f32 variable holding its dequantized value, with
/// the mask of its zeros, and its grid, keyed by the weight's value.
pub(super) fn weight_params(
    g: &Graph,
    order: &[crate::ir::NodeId],
) -> Result<(Vec<Param>, HashMap<ValueId, QatWeight>)> {
    let mut params = Vec::new();
    let mut grids: HashMap<ValueId, QatWeight> = HashMap::new();
    for &id in order {
        let Some(node) = g.node(id) else { continue };
        if !is_int8_layer(&node.op) {
            continue;
        }
        let (wv, w, grid) = weight_of(g, node)?;
        if let Some(seen) = grids.get(&wv) {
            // A weight shared by two products: one variable, if one grid.
            if seen.scales != grid.scales || seen.channel_first != grid.channel_first {
                return Err(refuse(
                    node,
                    "its weight is shared with another int8 layer on another grid",
                ));
            }
            continue;
        }
        let deq: Vec<f32> = match w.data() {
            TensorData::I8(q) => q
                .iter()
                .enumerate()
                .map(|(i, &x)| x as f32 * grid.scale(i))
                .collect(),
            _ => return Err(refuse(node, "the weight is not i8")),
        };
        let zeros = w.zero_count();
        let ct = to_candle(
            &Tensor::from_f32(w.shape().to_vec(), deq)
                .map_err(|e| Error::Internal(format!("distill: {e}")))?,
        )?;
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
            value: wv,
            var: Var::from_tensor(&ct).map_err(cerr)?,
            mask,
            zeros,
        });
        grids.insert(wv, grid);
    }
    Ok((params, grids))
}

impl QatWeight {
    /// The scale of element `i` of the weight.
    fn scale(&self, i: usize) -> f32 {
        if self.scales.len() == 1 {
            return self.scales[0];
        }
        let ch = if self.channel_first {
            let inner: usize = self.shape.iter().skip(1).product();
            i / inner.max(1)
        } else {
            i % self.shape.last().copied().unwrap_or(1).max(1)
        };
        self.scales[ch.min(self.scales.len() - 1)]
    }

    /// The int8 values of `w` on this grid, and for each whether it was
    /// within the grid (1) or clamped (0).
    fn grid(&self, w: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (mut q, mut pass) = (Vec::with_capacity(w.len()), Vec::with_capacity(w.len()));
        for (i, &x) in w.iter().enumerate() {
            let r = (x / self.scale(i)).round_ties_even();
            q.push(r.clamp(-self.qmax, self.qmax));
            pass.push(if r.abs() <= self.qmax { 1.0 } else { 0.0 });
        }
        (q, pass)
    }

    /// The reciprocal scales shaped to broadcast onto the weight.
    fn inverse_scales(&self) -> candle_core::Result<CTensor> {
        let inv: Vec<f32> = self.scales.iter().map(|s| 1.0 / s).collect();
        let mut shape = vec![1usize; self.shape.len()];
        if inv.len() > 1 {
            let axis = if self.channel_first {
                0
            } else {
                shape.len() - 1
            };
            shape[axis] = inv.len();
        }
        CTensor::from_vec(inv, shape, &Device::Cpu)
    }

    /// The weight's int8 values with a straight-through gradient
    /// (`1 / scale` within the grid, 0 where clamped).
    fn fake_quant(&self, w: &CTensor) -> candle_core::Result<CTensor> {
        let v = w.flatten_all()?.to_vec1::<f32>()?;
        let (q, pass) = self.grid(&v);
        let q = CTensor::from_vec(q, w.dims(), &Device::Cpu)?;
        let pass = CTensor::from_vec(pass, w.dims(), &Device::Cpu)?;
        let u = w.broadcast_mul(&self.inverse_scales()?)?;
        q + (&u - u.detach())?.mul(&pass)?
    }

    /// `w` requantized onto this grid: the i8 tensor the bundle stores.
    pub fn requantize(&self, w: &CTensor) -> Result<Tensor> {
        let v = w
            .flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(cerr)?;
        if v.len() != self.shape.iter().product::<usize>() {
            return Err(Error::Internal(format!(
                "distill: a trained weight of {} values for an int8 weight of shape {:?}",
                v.len(),
                self.shape
            )));
        }
        let q = self.grid(&v).0.into_iter().map(|x| x as i8).collect();
        Tensor::new(self.shape.clone(), TensorData::I8(q))
            .map_err(|e| Error::Internal(format!("distill: {e}")))
    }
}

/// The activation `x` quantized as `quant` says, as the integers `q - zp`
/// with a straight-through gradient, and the scale of each item (one for
/// static parameters, one per first-axis item for dynamic ones).
fn fake_quant_act(x: &CTensor, quant: ActQuant) -> candle_core::Result<(CTensor, Vec<f32>)> {
    let dims = x.dims().to_vec();
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let items = match quant {
        ActQuant::Static { .. } => 1,
        ActQuant::Dynamic => quant_items(&dims).max(1),
    };
    let per = v.len() / items;
    let (mut q, mut pass) = (Vec::with_capacity(v.len()), Vec::with_capacity(v.len()));
    let mut scales = Vec::with_capacity(items);
    for item in 0..items {
        let chunk = &v[item * per..(item + 1) * per];
        let (scale, zp) = match quant {
            ActQuant::Static { scale, zero_point } => (scale, zero_point),
            ActQuant::Dynamic => dynamic_params(chunk),
        };
        scales.push(scale);
        for &a in chunk {
            let r = (a / scale).round_ties_even() + zp as f32;
            q.push(quantize_u8(a, scale, zp) as f32 - zp as f32);
            pass.push(if (0.0..=255.0).contains(&r) {
                1f32
            } else {
                0.0
            });
        }
    }
    let q = CTensor::from_vec(q, dims.as_slice(), &Device::Cpu)?;
    let pass = CTensor::from_vec(pass, dims.as_slice(), &Device::Cpu)?;
    let mut shape = vec![1usize; dims.len()];
    if let Some(first) = shape.first_mut() {
        *first = items;
    }
    let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
    let inv = CTensor::from_vec(inv, shape, &Device::Cpu)?;
    let u = x.broadcast_mul(&inv)?;
    Ok(((q + (&u - u.detach())?.mul(&pass)?)?, scales))
}

/// `x_scale[item] * w_scale[channel]` in f32 (the kernel's dequantizing
/// factor), shaped `[items, .., channels, ..]` for an accumulator of rank
/// `rank` whose channel axis is `axis`.
fn dequant_factor(
    x_scales: &[f32],
    w_scales: &[f32],
    rank: usize,
    axis: usize,
) -> candle_core::Result<CTensor> {
    let mut v = Vec::with_capacity(x_scales.len() * w_scales.len());
    for &a in x_scales {
        for &s in w_scales {
            v.push(a * s);
        }
    }
    let mut shape = vec![1usize; rank];
    if x_scales.len() > 1 {
        shape[0] = x_scales.len();
    }
    shape[axis] = w_scales.len();
    CTensor::from_vec(v, shape, &Device::Cpu)
}

/// The fake-quantized forward pass of an int8 product: `x` its f32 input,
/// `w` the trained f32 weight, then its bias and residual (QConv's R).
pub(super) fn forward(
    node: &Node,
    grid: &QatWeight,
    x: &CTensor,
    w: &CTensor,
    bias: Option<&CTensor>,
    residual: Option<&CTensor>,
) -> candle_core::Result<CTensor> {
    let wq = grid.fake_quant(w)?;
    match &node.op {
        Op::QConv {
            conv: c,
            x_quant,
            act: a,
        } => {
            let (xq, xs) = fake_quant_act(x, *x_quant)?;
            let acc = conv(&xq, &wq, None, c)?;
            let rank = acc.rank();
            let mut y = acc.broadcast_mul(&dequant_factor(&xs, &grid.scales, rank, 1)?)?;
            if let Some(b) = bias {
                let mut shape = vec![1usize; rank];
                shape[1] = b.elem_count();
                y = y.broadcast_add(&b.reshape(shape)?)?;
            }
            if let Some(r) = residual {
                y = y.broadcast_add(r)?;
            }
            act(y, a)
        }
        Op::QMatMul { a_quant, act: a } => {
            let (xq, xs) = fake_quant_act(x, *a_quant)?;
            let acc = matmul(&xq, &wq, false, false)?;
            let rank = acc.rank();
            let mut y = acc.broadcast_mul(&dequant_factor(&xs, &grid.scales, rank, rank - 1)?)?;
            if let Some(b) = bias {
                y = y.broadcast_add(b)?;
            }
            act(y, a)
        }
        other => candle_core::bail!("{} is not an int8 layer", other.onnx_type()),
    }
}

impl Lowered<'_> {
    /// Int8 layers lowered for quantization-aware training.
    pub fn int8_layers(&self) -> usize {
        self.g
            .nodes()
            .filter(|(_, n)| is_int8_layer(&n.op))
            .filter(|(_, n)| n.input(1).is_some_and(|w| self.qat.contains_key(&w)))
            .count()
    }

    /// The constant the graph stores for trained values `value` of `p`:
    /// f32 as trained, or an int8 weight requantized onto its grid.
    pub fn stored(&self, p: &Param, value: &CTensor) -> Result<Tensor> {
        match self.qat.get(&p.value) {
            Some(grid) => grid.requantize(value),
            None => super::lower::from_candle(value),
        }
    }

    /// The grid of the int8 weight `w`, when it is trained with QAT.
    pub(super) fn grid(&self, w: Option<ValueId>) -> Option<&QatWeight> {
        self.qat.get(&w?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(scales: Vec<f32>, shape: Vec<usize>, channel_first: bool) -> QatWeight {
        QatWeight {
            scales,
            qmax: 63.0,
            shape,
            channel_first,
        }
    }

    #[test]
    fn weights_round_clamp_and_pass_gradients_straight_through() {
        // QMatMul B [K=2, N=2], a scale per column.
        let g = grid(vec![0.5, 0.25], vec![2, 2], false);
        let w = Var::from_vec(vec![1.2f32, -0.3, 40.0, 0.124], (2, 2), &Device::Cpu).unwrap();
        let q = g.fake_quant(w.as_tensor()).unwrap();
        let v: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
        // 2.4 -> 2, -1.2 -> -1, 80 -> clamped to 63, 0.496 -> 0.
        assert_eq!(v, vec![2.0, -1.0, 63.0, 0.0]);
        let grads = q.sum_all().unwrap().backward().unwrap();
        let gw: Vec<f32> = grads
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // 1 / scale within the grid, nothing through the clamped one.
        assert_eq!(gw, vec![2.0, 4.0, 0.0, 4.0]);
        let t = g.requantize(w.as_tensor()).unwrap();
        assert_eq!(t.data(), &TensorData::I8(vec![2, -1, 63, 0]));
    }

    #[test]
    fn activations_use_static_or_per_item_dynamic_parameters() {
        let x = Var::from_vec(
            vec![0.0f32, 1.0, 2.0, 40.0, -1.0, 3.0],
            (2, 3),
            &Device::Cpu,
        )
        .unwrap();
        let st = ActQuant::Static {
            scale: 0.1,
            zero_point: 10,
        };
        let (q, s) = fake_quant_act(x.as_tensor(), st).unwrap();
        assert_eq!(s, vec![0.1]);
        let v: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
        // 40 / 0.1 + 10 is past 255: clamped to 245 above the zero point.
        assert_eq!(v, vec![0.0, 10.0, 20.0, 245.0, -10.0, 30.0]);
        let grads = q.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, want) in gx.iter().zip([10.0, 10.0, 10.0, 0.0, 10.0, 10.0]) {
            assert!((g - want).abs() < 1e-4, "{gx:?}");
        }
        // Dynamic: each row its own range, as the kernel quantizes it.
        let (q, s) = fake_quant_act(x.as_tensor(), ActQuant::Dynamic).unwrap();
        let rows = [[0.0f32, 1.0, 2.0], [40.0, -1.0, 3.0]];
        let mut want = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            let (scale, zp) = dynamic_params(row);
            assert_eq!(s[r], scale);
            want.extend(
                row.iter()
                    .map(|&a| quantize_u8(a, scale, zp) as f32 - zp as f32),
            );
        }
        assert_eq!(q.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    }
}

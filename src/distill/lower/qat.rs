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
//! - **Fake quantization.** Every forward pass quantizes the weight as
//!   `mlc compress --int8` would quantize it
//!   ([`crate::compress::quantize::symmetric_i8`]: scales `max|w| / qmax`
//!   per output channel or per tensor, rounded up to an f16 value, then
//!   `clamp(round_half_even(w / scale), -qmax, qmax)`), and the activation
//!   onto its u8 grid with the node's [`ActQuant`]: the calibrated static
//!   scale and zero point, or for [`ActQuant::Dynamic`] the per-item (first
//!   axis) min/max parameters the kernel computes. Scales and zero points
//!   are constants for the gradient. The activation's integers come from
//!   the reference functions ([`quantize_u8`], [`dynamic_params`]) the int8
//!   kernels are held to bit for bit.
//! - **Integer products.** The product runs on the integer values
//!   (`q - zp` and `w_q`, small integers held exactly in f32), and its
//!   result is dequantized as the kernel does: `acc * (x_scale *
//!   w_scale[m])`, then `+ bias`, `+ residual`, the activation. While the
//!   accumulators stay below 2^24 in magnitude (in the worst case a
//!   reduction depth of 1,036 at 7-bit weights, 518 at full range; in
//!   practice far more) every f32 sum is exact, so the forward pass gives
//!   the int8 kernels' outputs bit for bit; past that the sums round as
//!   f32 sums do (relative 6e-8 an addition). On the digits students the
//!   outputs are the runtime's to the last bit (tested, with the general
//!   tolerance: 99% of outputs within 1e-5 of the output's largest
//!   magnitude, 99% top-1 agreement).
//! - **Straight-through estimator.** The backward pass sees the rounding
//!   as the identity: the quantized operand is `q + (u - detach(u)) *
//!   pass` with `u = x / scale`, so its value is exactly `q` and its
//!   gradient `pass / scale`. For activations `pass` is 0 where the u8
//!   value was clamped (the clipped STE: an activation past the static
//!   range gets no gradient), else 1; weights are never clamped (their
//!   largest magnitude sets the scale), so theirs is 1.
//!
//! # Weight scales follow the weights
//!
//! The weight scales are recomputed from the current weights at every
//! step (max-abs, as above) rather than kept at the stored values:
//! - the forward pass is at every step the int8 model that `mlc compress`
//!   makes of the current weights, and the bundle written at the end is
//!   exactly the forward pass that was scored (the same scales, the same
//!   rounding);
//! - at the first step it is the stored model exactly: for a bundle of
//!   `mlc compress`, each channel's largest `|w_q|` is `qmax` and its scale
//!   an f16 value, so `qmax * scale` is exact in f32 and the scale comes
//!   back unchanged, and with it every `w_q` (tested on the digits
//!   students);
//! - fixed scales clamp every weight that needs to grow past the largest
//!   one of its channel, and with a clipped STE it then stops learning.
//!   That cost a lot where QAT matters most: on the digits students pruned
//!   to 90% (uniform, no re-fit) and made int8, fixed scales recovered to
//!   88.9–91.3% top-1 (CNN) and 90.2–91.5% (MLP) at lr 3e-3 and 1e-2,
//!   recomputed scales to 96.9–97.6% and 96.9–97.2%. On the students
//!   pruned with a least-squares re-fit recomputed scales were as good or
//!   better (by up to 0.9 points), on the dense ones the same.
//!
//! Moving a channel's largest weight moves the channel's grid (by a share
//! of a step); the scale is a constant for the gradient, as for dynamic
//! activations. The grid's range is the one the bundle was made with:
//! `qmax` is 63 (7-bit weights, `mlc compress`'s default) when every
//! stored value of the layer is within ±63, else 127 (`--full-range`).
//!
//! Activation scales and zero points are not learned: the written bundle
//! keeps its calibrated (or dynamic) activation quantization.
//!
//! # Pruned zeros
//!
//! As for f32 students, a weight stored as exactly zero is kept zero (its
//! mask). On an int8 student that is every `w_q == 0`: the pruned weights,
//! and also the small weights that rounded to zero (1.4% of the digits
//! CNN's weights on the 7-bit grid), which therefore stay zero.
//!
//! # Write-back
//!
//! The best weights (by held-out agreement) are requantized, with their
//! scales, into the same QConv / QMatMul nodes ([`Lowered::stored`]): the
//! result is an ordinary int8 bundle of the same layers and about the same
//! size, and the report's before/after figures come from running it on
//! mlc's int8 kernels, not from this emulation.

use std::collections::HashMap;

use candle_core::{Device, Tensor as CTensor};

use super::{act, cerr, conv, matmul, to_candle, Lowered, Param};
use crate::compress::quantize::f16_scale;
use crate::ir::ops::quant::reference::{dynamic_params, quant_items, quantize_u8};
use crate::ir::{ActQuant, Graph, Node, NodeId, Op, Tensor, TensorData, ValueId};
use crate::{Error, Result};

/// Whether `op` is an int8 product ([`Op::QConv`], [`Op::QMatMul`]).
pub fn is_int8_layer(op: &Op) -> bool {
    matches!(op, Op::QConv { .. } | Op::QMatMul { .. })
}

/// An int8 weight trained in float: its grid's range, its stored scales,
/// and where each element's scale sits.
#[derive(Clone, Debug)]
pub struct QatWeight {
    /// The stored scales: one per output channel, or one for the tensor.
    pub scales: Vec<f32>,
    /// The grid's largest magnitude: 63 (7-bit weights) or 127.
    pub qmax: f32,
    /// The weight's shape: QConv's `[M, C/group, k..]`, QMatMul's `[K, N]`.
    shape: Vec<usize>,
    /// Whether the output channel is the first axis (QConv) or the last
    /// (QMatMul).
    channel_first: bool,
    /// The scale constant's value (rewritten when the scales move).
    scale_value: ValueId,
}

fn refuse(node: &Node, why: &str) -> Error {
    Error::Usage(format!(
        "distill: op {} (node '{}') is not supported by the training lowering ({why})",
        node.op.onnx_type(),
        node.name
    ))
}

/// `g` with every int8 layer's weight scale a constant: a scale `mlc
/// compress` stored compressed (a DequantizeLinear of constants, for a long
/// scale vector) is evaluated once, so that training can rewrite it. The
/// nodes that computed them go when nothing else reads them.
pub fn with_constant_scales(g: &Graph) -> Result<Graph> {
    let mut out = g.clone();
    let mut folded: HashMap<ValueId, ValueId> = HashMap::new();
    let mut producers = Vec::new();
    for (id, node) in g.nodes() {
        let Some(s) = node.input(2).filter(|_| is_int8_layer(&node.op)) else {
            continue;
        };
        if g.consts.contains_key(&s) {
            continue;
        }
        let c = match folded.get(&s) {
            Some(&c) => c,
            None => {
                // Only a node of constants is folded; anything else stays
                // for `check` to refuse by name.
                let Some((pid, p)) = g.producer(s).and_then(|p| Some((p, g.node(p)?))) else {
                    continue;
                };
                let ins: Option<Vec<Option<&Tensor>>> = p
                    .inputs
                    .iter()
                    .map(|i| match i {
                        None => Some(None),
                        Some(v) => g.consts.get(v).map(|t| Some(t.as_ref())),
                    })
                    .collect();
                let Some(ins) = ins else { continue };
                let t = crate::ir::ops::eval(&p.op, &ins, p.outputs.len())
                    .map_err(|e| e.at_node(&p.name, p.op.onnx_type()))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal(format!("node '{}' gave no output", p.name)))?;
                let c = out.add_const(format!("{}.folded", g.value(s).name), t);
                folded.insert(s, c);
                producers.push((pid, s));
                c
            }
        };
        if let Some(slot) = out.node_mut(id).and_then(|n| n.inputs.get_mut(2)) {
            *slot = Some(c);
        }
    }
    for (pid, s) in producers {
        if out.use_count(s) == 0 && !out.outputs.contains(&s) {
            out.remove_node(pid);
        }
    }
    Ok(out)
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
    let (scale_value, scales) = konst(2)
        .and_then(|(v, s)| Some((v, s.as_f32()?.to_vec())))
        .ok_or_else(|| refuse(node, "the weight scale is not an f32 constant"))?;
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
            scale_value,
        },
    ))
}

/// The trainable parameters of the int8 products of `g` (in `order`):
/// each i8 weight as an f32 variable holding its dequantized value, with
/// the mask of its zeros, and its grid, keyed by the weight's value.
pub(super) fn weight_params(
    g: &Graph,
    order: &[NodeId],
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
            if seen.scale_value != grid.scale_value || seen.channel_first != grid.channel_first {
                return Err(refuse(
                    node,
                    "its weight is shared with another int8 layer with other scales",
                ));
            }
            continue;
        }
        let deq: Vec<f32> = match w.data() {
            TensorData::I8(q) => q
                .iter()
                .enumerate()
                .map(|(i, &x)| x as f32 * grid.scales[grid.slot(i, grid.scales.len())])
                .collect(),
            _ => return Err(refuse(node, "the weight is not i8")),
        };
        let zeros = w.zero_count();
        let ct = to_candle(
            &Tensor::from_f32(w.shape().to_vec(), deq)
                .map_err(|e| Error::Internal(format!("distill: {e}")))?,
        )?;
        params.push(Param::new(wv, ct, zeros)?);
        grids.insert(wv, grid);
    }
    Ok((params, grids))
}

impl QatWeight {
    /// The slot of element `i` of the weight in its scales.
    fn slot(&self, i: usize, n_scales: usize) -> usize {
        if n_scales <= 1 {
            return 0;
        }
        let ch = if self.channel_first {
            let inner: usize = self.shape.iter().skip(1).product();
            i / inner.max(1)
        } else {
            i % self.shape.last().copied().unwrap_or(1).max(1)
        };
        ch.min(n_scales - 1)
    }

    /// The scales `mlc compress` gives the weight `w` (as
    /// [`crate::compress::quantize::symmetric_i8`]: `max|w| / qmax` per
    /// output channel or for the tensor, rounded up to an f16 value; 1 for
    /// all zeros).
    pub fn scales_for(&self, w: &[f32]) -> Vec<f32> {
        let mut amax = vec![0f32; self.scales.len()];
        for (i, &x) in w.iter().enumerate() {
            if x.is_finite() {
                let m = &mut amax[self.slot(i, self.scales.len())];
                *m = m.max(x.abs());
            }
        }
        amax.iter()
            .map(|&m| {
                if m > 0.0 {
                    f16_scale(m / self.qmax)
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// The int8 values of `w` on the grid of `scales`:
    /// `clamp(round_half_even(w / scale), -qmax, qmax)`.
    fn grid(&self, w: &[f32], scales: &[f32]) -> Vec<f32> {
        w.iter()
            .enumerate()
            .map(|(i, &x)| {
                (x / scales[self.slot(i, scales.len())])
                    .round_ties_even()
                    .clamp(-self.qmax, self.qmax)
            })
            .collect()
    }

    /// The reciprocals of `scales` shaped to broadcast onto the weight.
    fn inverse_scales(&self, scales: &[f32]) -> candle_core::Result<CTensor> {
        let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
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

    /// The weight's int8 values on the grid of its current scales, with a
    /// straight-through gradient (`1 / scale`; nothing is clamped, the
    /// largest magnitude maps to at most `qmax`), and those scales.
    fn fake_quant(&self, w: &CTensor) -> candle_core::Result<(CTensor, Vec<f32>)> {
        let v = w.flatten_all()?.to_vec1::<f32>()?;
        let scales = self.scales_for(&v);
        let q = CTensor::from_vec(self.grid(&v, &scales), w.dims(), &Device::Cpu)?;
        let u = w.broadcast_mul(&self.inverse_scales(&scales)?)?;
        Ok(((q + (&u - u.detach())?)?, scales))
    }

    /// `w` requantized: the i8 tensor and the scales the bundle stores.
    pub fn requantize(&self, w: &CTensor) -> Result<(Tensor, Vec<f32>)> {
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
        let scales = self.scales_for(&v);
        let q = self
            .grid(&v, &scales)
            .into_iter()
            .map(|x| x as i8)
            .collect();
        let t = Tensor::new(self.shape.clone(), TensorData::I8(q))
            .map_err(|e| Error::Internal(format!("distill: {e}")))?;
        Ok((t, scales))
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
    let (wq, w_scales) = grid.fake_quant(w)?;
    match &node.op {
        Op::QConv {
            conv: c,
            x_quant,
            act: a,
        } => {
            let (xq, xs) = fake_quant_act(x, *x_quant)?;
            let acc = conv(&xq, &wq, None, c)?;
            let rank = acc.rank();
            let mut y = acc.broadcast_mul(&dequant_factor(&xs, &w_scales, rank, 1)?)?;
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
            let mut y = acc.broadcast_mul(&dequant_factor(&xs, &w_scales, rank, rank - 1)?)?;
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

    /// The trained value `value` of `p` as the graph stores it: f32 as
    /// trained, or an int8 weight requantized, with its scale constant and
    /// new scales.
    pub fn stored(
        &self,
        p: &Param,
        value: &CTensor,
    ) -> Result<(Tensor, Option<(ValueId, Tensor)>)> {
        match self.qat.get(&p.value) {
            Some(grid) => {
                let (q, scales) = grid.requantize(value)?;
                let s = Tensor::from_f32(vec![scales.len()], scales)
                    .map_err(|e| Error::Internal(format!("distill: {e}")))?;
                Ok((q, Some((grid.scale_value, s))))
            }
            None => Ok((super::from_candle(value)?, None)),
        }
    }

    /// Writes the trained value `value` of `p` into `graph` (a copy of the
    /// lowered graph), an int8 weight with its scales; returns the zeros
    /// of the stored weight. A scale constant that anything but the
    /// layers of this weight reads is left as it is, and those layers get
    /// a new one.
    pub fn write_back(&self, graph: &mut Graph, p: &Param, value: &CTensor) -> Result<usize> {
        let (t, scales) = self.stored(p, value)?;
        let zeros = t.zero_count();
        graph.consts.insert(p.value, std::sync::Arc::new(t));
        let Some((sv, s)) = scales else {
            return Ok(zeros);
        };
        let layers: Vec<NodeId> = graph
            .nodes()
            .filter(|(_, n)| is_int8_layer(&n.op) && n.input(1) == Some(p.value))
            .map(|(id, _)| id)
            .collect();
        let own = layers
            .iter()
            .filter(|&&id| graph.node(id).is_some_and(|n| n.input(2) == Some(sv)))
            .count();
        if own == graph.use_count(sv) {
            graph.consts.insert(sv, std::sync::Arc::new(s));
        } else {
            let name = format!("{}.qat", graph.value(sv).name);
            let nv = graph.add_const(name, s);
            for id in layers {
                if let Some(slot) = graph.node_mut(id).and_then(|n| n.inputs.get_mut(2)) {
                    *slot = Some(nv);
                }
            }
        }
        Ok(zeros)
    }

    /// The grid of the int8 weight `w`, when it is trained with QAT.
    pub(super) fn grid(&self, w: Option<ValueId>) -> Option<&QatWeight> {
        self.qat.get(&w?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn i8s(t: &Tensor) -> Vec<i8> {
        match t.data() {
            TensorData::I8(v) => v.clone(),
            _ => panic!("a {} tensor, not i8", t.dtype()),
        }
    }

    fn grid(scales: Vec<f32>, shape: Vec<usize>, channel_first: bool) -> QatWeight {
        QatWeight {
            scales,
            qmax: 63.0,
            shape,
            channel_first,
            scale_value: ValueId(0),
        }
    }

    #[test]
    fn weights_take_compress_scales_and_pass_gradients_straight_through() {
        // QMatMul B [K=3, N=2], a scale per column: max|w| / 63.
        let g = grid(vec![1.0, 1.0], vec![3, 2], false);
        let w = Var::from_vec(
            vec![1.2f32, -0.3, 31.5, 0.124, -7.0, 15.75],
            (3, 2),
            &Device::Cpu,
        )
        .unwrap();
        let (q, scales) = g.fake_quant(w.as_tensor()).unwrap();
        assert_eq!(scales, vec![0.5, 0.25]);
        let v: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
        // 2.4 -> 2, -1.2 -> -1, 0.496 -> 0; the largest of each column 63.
        assert_eq!(v, vec![2.0, -1.0, 63.0, 0.0, -14.0, 63.0]);
        let grads = q.sum_all().unwrap().backward().unwrap();
        let gw: Vec<f32> = grads
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // 1 / scale, straight through the rounding.
        assert_eq!(gw, vec![2.0, 4.0, 2.0, 4.0, 2.0, 4.0]);
        let (t, scales) = g.requantize(w.as_tensor()).unwrap();
        assert_eq!(i8s(&t), vec![2, -1, 63, 0, -14, 63]);
        assert_eq!(scales, vec![0.5, 0.25]);
    }

    #[test]
    fn requantization_is_compress_quantization() {
        use crate::compress::quantize::{symmetric_i8, Granularity};
        // QConv W [2, 1, 1, 3]: per channel (the second all zero), and
        // per tensor, on the full and the 7-bit grids.
        let w = [0.3f32, -0.7, 0.11, 0.0, 0.0, 0.0];
        for (gran, n) in [(Granularity::PerChannel, 2), (Granularity::PerTensor, 1)] {
            for qmax in [63.0, 127.0] {
                let mut g = grid(vec![1.0; n], vec![2, 1, 1, 3], true);
                g.qmax = qmax;
                let (want_q, want_s) = symmetric_i8(&w, 2, |i| i / 3, gran, qmax);
                let wt = CTensor::from_vec(w.to_vec(), (2, 1, 1, 3), &Device::Cpu).unwrap();
                let (t, s) = g.requantize(&wt).unwrap();
                assert_eq!(i8s(&t), want_q, "{gran:?} {qmax}");
                assert_eq!(s, want_s);
                // The forward pass rounds the same way.
                let (q, s) = g.fake_quant(&wt).unwrap();
                let q: Vec<i8> = q
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|&x| x as i8)
                    .collect();
                assert_eq!(i8s(&t), q);
                assert_eq!(s, want_s);
            }
        }
    }

    /// QMatMul layers `mm0`, `mm1`, ... one after the other from `x`, with
    /// the weights `ws` and the scale `s`; returns the last output.
    fn qmatmul_chain(g: &mut Graph, x: ValueId, ws: &[ValueId], s: ValueId) -> ValueId {
        use crate::ir::{DType, Shape, TensorType};
        let mut prev = x;
        for (i, &w) in ws.iter().enumerate() {
            let y = g.add_value(format!("y{i}"), TensorType::new(DType::F32, Shape(vec![])));
            g.add_node(Node {
                name: format!("mm{i}"),
                op: Op::QMatMul {
                    a_quant: ActQuant::Static {
                        scale: 0.02,
                        zero_point: 128,
                    },
                    act: None,
                },
                inputs: vec![Some(prev), Some(w), Some(s)],
                outputs: vec![y],
            });
            prev = y;
        }
        prev
    }

    /// Two QMatMul layers reading one scale constant: each gets its own
    /// scales back, and the written graph computes (on the reference
    /// interpreter) what the trained forward pass computed.
    #[test]
    fn write_back_separates_a_shared_scale_and_matches_the_forward_pass() {
        use crate::ir::{DType, Dim, Shape, TensorType};
        let mut g = Graph::new("t", 17);
        let ty = |d: Vec<Dim>| TensorType::new(DType::F32, Shape(d));
        let x = g.add_input("x", ty(vec![Dim::sym("batch"), Dim::Known(2)]));
        let i8w = |v: Vec<i8>| Tensor::new(vec![2, 2], TensorData::I8(v)).unwrap();
        let w1 = g.add_const("w1", i8w(vec![63, -10, 5, 63]));
        let w2 = g.add_const("w2", i8w(vec![-63, 20, 7, 63]));
        let s = g.add_const("s", Tensor::from_f32(vec![1], vec![0.03125]).unwrap());
        g.outputs = vec![qmatmul_chain(&mut g, x, &[w1, w2], s)];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        let net = Lowered::with_qat(&g, true).unwrap();
        assert_eq!(net.int8_layers(), 2);
        // "Train": the first weight grows, the second shrinks.
        for (p, k) in net.params.iter().zip([3.0, 0.5]) {
            let t = p.var.as_tensor().affine(k, 0.01).unwrap();
            p.var.set(&t).unwrap();
        }
        let xin = Tensor::from_f32(vec![3, 2], vec![0.5, -1.0, 1.5, 0.25, -0.75, 2.0]).unwrap();
        let want = net.forward(&[to_candle(&xin).unwrap()]).unwrap();
        let want: Vec<f32> = want[0].flatten_all().unwrap().to_vec1().unwrap();
        let mut out = g.clone();
        for p in &net.params {
            net.write_back(&mut out, p, p.var.as_tensor()).unwrap();
        }
        let scale_of = |name: &str| {
            let n = out.nodes().find(|(_, n)| n.name == name).unwrap().1;
            out.consts[&n.input(2).unwrap()].as_f32().unwrap().to_vec()
        };
        let (s1, s2) = (scale_of("mm0"), scale_of("mm1"));
        assert_ne!(s1, s2);
        assert!(s1[0] > 0.03125 && s2[0] < 0.03125, "{s1:?} {s2:?}");
        let got = crate::interp::run(&out, vec![xin]).unwrap();
        assert_eq!(got[0].as_f32().unwrap(), want.as_slice());
    }

    /// A weight scale stored compressed (DequantizeLinear of constants, as
    /// `mlc compress` stores long f32 vectors) becomes one constant, shared
    /// by the layers that read it; the node that computed it goes, and the
    /// graph computes the same.
    #[test]
    fn a_computed_weight_scale_is_folded_into_one_constant() {
        use crate::ir::{DType, Dim, Shape, TensorType};
        let mut g = Graph::new("t", 17);
        let ty = |d: Vec<Dim>| TensorType::new(DType::F32, Shape(d));
        let x = g.add_input("x", ty(vec![Dim::sym("batch"), Dim::Known(2)]));
        let w = g.add_const(
            "w",
            Tensor::new(vec![2, 2], TensorData::I8(vec![63, -10, 5, 63])).unwrap(),
        );
        let sq = g.add_const(
            "s.int8",
            Tensor::new(vec![2], TensorData::I8(vec![127, 64])).unwrap(),
        );
        let ss = g.add_const("s.scale", Tensor::from_f32(vec![], vec![0.001]).unwrap());
        let s = g.add_value("s", ty(vec![]));
        g.add_node(Node {
            name: "s.dequantize".into(),
            op: Op::DequantizeLinear {
                axis: 0,
                block_size: 0,
            },
            inputs: vec![Some(sq), Some(ss)],
            outputs: vec![s],
        });
        g.outputs = vec![qmatmul_chain(&mut g, x, &[w, w], s)];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        assert!(
            Lowered::with_qat(&g, true).is_err(),
            "a computed scale is refused"
        );
        let f = with_constant_scales(&g).unwrap();
        assert!(f.nodes().all(|(_, n)| n.name != "s.dequantize"));
        let scales: Vec<ValueId> = f.nodes().filter_map(|(_, n)| n.input(2)).collect();
        assert_eq!(scales.len(), 2);
        assert_eq!(scales[0], scales[1]);
        assert_eq!(
            f.consts[&scales[0]].as_f32().unwrap(),
            &[0.127f32, 0.064][..]
        );
        let net = Lowered::with_qat(&f, true).unwrap();
        assert_eq!(net.int8_layers(), 2);
        let xin = Tensor::from_f32(vec![3, 2], vec![0.5, -1.0, 1.5, 0.25, -0.75, 2.0]).unwrap();
        let a = crate::interp::run(&g, vec![xin.clone()]).unwrap();
        let b = crate::interp::run(&f, vec![xin]).unwrap();
        assert_eq!(a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
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

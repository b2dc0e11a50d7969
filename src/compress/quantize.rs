//! Graph rewrites that store weights in fewer bits.
//!
//! - [`find_layers`] lists the products that can run in int8: convolutions
//!   and matrix products whose weight is a constant f32 tensor.
//! - [`quantize_layer`] turns one of them into [`Op::QConv`] / [`Op::QMatMul`]
//!   with a symmetric int8 weight (per output channel or per tensor).
//! - [`weight_only_except`] stores the remaining large f32 constants (embedding
//!   tables, ...) as int8 behind a DequantizeLinear, per row.
//! - [`int4_weights`] stores the weights of matrix products (and embedding
//!   tables) as int4 in blocks of 32 along the reduction axis (a table's
//!   rows) with f16 scales (DequantizeLinear with `block_size`),
//!   weight-only.
//! - [`fp16_weights`] stores every large f32 constant as f16 behind a Cast.
//!
//! The runtime folds the DequantizeLinear and Cast of constants once per
//! plan, so weight-only forms cost nothing per run; they only make the
//! artifact smaller.

use std::collections::HashSet;
use std::sync::Arc;

use half::f16;
use serde::Serialize;

use crate::ir::{
    ActQuant, DType, Graph, Node, NodeId, Op, Shape, Tensor, TensorData, TensorType, ValueId,
};
use crate::transform::dce::remove_dead;
use crate::{Error, Result};

/// Constants smaller than this stay f32 in the weight-only forms (biases,
/// norms: not worth a DequantizeLinear).
pub const MIN_WEIGHT_ONLY_ELEMENTS: usize = 1024;

/// Block size of int4 weights along the reduction axis.
pub const INT4_BLOCK: usize = 32;

/// Scales of a symmetric int8 weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    PerChannel,
    PerTensor,
}

/// How int8 weights are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightFormat {
    pub granularity: Granularity,
    /// 7-bit weights (`[-63, 63]`): lets the AVX2 `vpmaddubsw` kernel run
    /// (it cannot saturate on them) at some cost in precision.
    pub reduce_range: bool,
}

impl WeightFormat {
    /// The largest quantized magnitude.
    pub fn qmax(self) -> f32 {
        if self.reduce_range {
            63.0
        } else {
            127.0
        }
    }
}

/// What kind of product a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    Conv,
    MatMul,
}

/// A product that can run in int8.
#[derive(Clone, Debug)]
pub struct Layer {
    pub node: NodeId,
    /// The node's name.
    pub name: String,
    pub kind: LayerKind,
    /// The f32 activation input (quantized at run time).
    pub input: ValueId,
    /// The constant f32 weight.
    pub weight: ValueId,
    /// Elements of the weight.
    pub weight_elements: usize,
}

/// The constant f32 tensor behind `v`, if any.
fn const_f32(g: &Graph, v: Option<ValueId>) -> Option<(ValueId, &Tensor)> {
    let v = v?;
    let t = g.const_value(v)?;
    (t.dtype() == DType::F32).then_some((v, t))
}

/// Every product of `g` that [`quantize_layer`] can rewrite, in node order.
pub fn find_layers(g: &Graph) -> Vec<Layer> {
    let mut out = Vec::new();
    for (id, node) in g.nodes() {
        let kind = match &node.op {
            Op::Conv(_) | Op::FusedConv { .. } => LayerKind::Conv,
            Op::MatMul => LayerKind::MatMul,
            Op::FusedMatMul { trans_a: false, .. } => LayerKind::MatMul,
            Op::Gemm { trans_a: false, .. } => {
                // C must be a constant (it becomes the bias) or absent.
                if node.input(2).is_some_and(|c| !g.is_const(c)) {
                    continue;
                }
                LayerKind::MatMul
            }
            _ => continue,
        };
        let Some(input) = node.input(0) else { continue };
        if g.ty(input).dtype != DType::F32 || g.is_const(input) {
            continue;
        }
        let Some((weight, w)) = const_f32(g, node.input(1)) else {
            continue;
        };
        if kind == LayerKind::MatMul && w.rank() != 2 {
            continue;
        }
        out.push(Layer {
            node: id,
            name: node.name.clone(),
            kind,
            input,
            weight,
            weight_elements: w.numel(),
        });
    }
    out
}

/// Symmetric int8 values and scales of `w` whose output channel of element
/// `i` is `channel(i)` (`channels` of them): `scale = max|w| / qmax` rounded
/// up to an f16 value ([`f16_scale`]; 1 for an all-zero channel), `q =
/// clamp(round_half_even(w / scale), -qmax, qmax)`.
pub fn symmetric_i8(
    w: &[f32],
    channels: usize,
    channel: impl Fn(usize) -> usize,
    granularity: Granularity,
    qmax: f32,
) -> (Vec<i8>, Vec<f32>) {
    let n_scales = match granularity {
        Granularity::PerChannel => channels,
        Granularity::PerTensor => 1,
    };
    let slot = |i: usize| match granularity {
        Granularity::PerChannel => channel(i),
        Granularity::PerTensor => 0,
    };
    let mut amax = vec![0f32; n_scales];
    for (i, &x) in w.iter().enumerate() {
        if x.is_finite() {
            let s = &mut amax[slot(i)];
            *s = s.max(x.abs());
        }
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&m| if m > 0.0 { f16_scale(m / qmax) } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| (x / scales[slot(i)]).round_ties_even().clamp(-qmax, qmax) as i8)
        .collect();
    (q, scales)
}

/// `s` (> 0) rounded up to the nearest f16 value when that is a normal f16,
/// so the bundle stores the scale in two bytes, bit for bit (see
/// `bundle::safetensors::f16_exact`); `s` itself outside f16's normal range.
/// Rounding up moves a scale by less than 2^-10 of itself and keeps every
/// `w / scale` within the range the unrounded scale gave.
pub fn f16_scale(s: f32) -> f32 {
    let h = f16::from_f32(s);
    let up = if h.to_f32() < s {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    };
    if up.is_normal() {
        up.to_f32()
    } else {
        s
    }
}

fn tensor(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    Tensor::new(shape, data).map_err(|e| Error::Internal(format!("quantized weight: {e}")))
}

/// Rewrites `layer` into QConv / QMatMul with its activation quantized by
/// `act` and its weight stored as symmetric int8.
pub fn quantize_layer(
    g: &mut Graph,
    layer: &Layer,
    act: ActQuant,
    format: WeightFormat,
) -> Result<()> {
    let (granularity, qmax) = (format.granularity, format.qmax());
    let node = g
        .node(layer.node)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("layer '{}' is gone", layer.name)))?;
    let w = g
        .const_value(layer.weight)
        .ok_or_else(|| Error::Internal(format!("the weight of '{}' is not constant", layer.name)))?
        .clone();
    let wdata = w
        .as_f32()
        .ok_or_else(|| Error::Internal(format!("the weight of '{}' is not f32", layer.name)))?;
    let wname = g.value(layer.weight).name.clone();
    let (op, inputs, qshape, q, mut scales) = match &node.op {
        Op::Conv(conv) | Op::FusedConv { conv, .. } => {
            let act_fn = match &node.op {
                Op::FusedConv { act, .. } => act.clone(),
                _ => None,
            };
            let m = w.shape()[0];
            let inner = w.numel() / m.max(1);
            let (q, s) = symmetric_i8(wdata, m, |i| i / inner.max(1), granularity, qmax);
            let op = Op::QConv {
                conv: conv.clone(),
                x_quant: act,
                act: act_fn,
            };
            // X, W, B?, R? -> X, Wq, scale, B?, R?
            let tail: Vec<Option<ValueId>> = node.inputs.iter().skip(2).copied().collect();
            (op, tail, w.shape().to_vec(), q, s)
        }
        Op::MatMul | Op::FusedMatMul { .. } | Op::Gemm { .. } => {
            let (trans_b, alpha, act_fn) = match &node.op {
                Op::FusedMatMul {
                    trans_b,
                    alpha,
                    act,
                    ..
                } => (*trans_b, *alpha, act.clone()),
                Op::Gemm { trans_b, alpha, .. } => (*trans_b, *alpha, None),
                _ => (false, 1.0, None),
            };
            // B as [K, N].
            let (k, n) = if trans_b {
                (w.shape()[1], w.shape()[0])
            } else {
                (w.shape()[0], w.shape()[1])
            };
            let b: Vec<f32> = if trans_b {
                (0..k * n).map(|i| wdata[(i % n) * k + i / n]).collect()
            } else {
                wdata.to_vec()
            };
            let (q, mut s) = symmetric_i8(&b, n, |i| i % n, granularity, qmax);
            for x in &mut s {
                *x *= alpha;
            }
            let bias = match &node.op {
                Op::Gemm { beta, .. } => match node.input(2) {
                    Some(c) if *beta != 1.0 => {
                        let ct = g.const_value(c).ok_or_else(|| {
                            Error::Internal(format!("the C of '{}' is not constant", layer.name))
                        })?;
                        let scaled: Vec<f32> = ct.to_f32_vec().iter().map(|x| x * beta).collect();
                        let t = Tensor::from_f32(ct.shape().to_vec(), scaled)
                            .map_err(|e| Error::Internal(e.to_string()))?;
                        Some(g.add_const(format!("{}.bias", layer.name), t))
                    }
                    c => c,
                },
                _ => node.input(2),
            };
            let op = Op::QMatMul {
                a_quant: act,
                act: act_fn,
            };
            (op, vec![bias], vec![k, n], q, s)
        }
        other => {
            return Err(Error::op(
                other.onnx_type(),
                format!("node '{}' is not a quantizable product", layer.name),
            ))
        }
    };
    if scales.is_empty() {
        scales.push(1.0);
    }
    let n_scales = scales.len();
    let wq = g.add_const(format!("{wname}.int8"), tensor(qshape, TensorData::I8(q))?);
    let sc = g.add_const(
        format!("{wname}.scale"),
        tensor(vec![n_scales], TensorData::F32(scales))?,
    );
    let mut ins = vec![Some(layer.input), Some(wq), Some(sc)];
    ins.extend(inputs);
    while ins.last() == Some(&None) {
        ins.pop();
    }
    let n = g
        .node_mut(layer.node)
        .ok_or_else(|| Error::Internal(format!("layer '{}' is gone", layer.name)))?;
    n.op = op;
    n.inputs = ins;
    Ok(())
}

/// Adds a node computing `op(inputs)` into a new f32 value shaped like
/// `like`, and points every reader of `old` at it.
fn replace_const_with_node(
    g: &mut Graph,
    old: ValueId,
    name: String,
    op: Op,
    inputs: Vec<Option<ValueId>>,
) {
    let ty = g.ty(old).clone();
    let out = g.add_value(format!("{name}.out"), ty);
    g.replace_uses(old, out);
    g.add_node(Node {
        name,
        op,
        inputs,
        outputs: vec![out],
    });
}

/// The large f32 constants of `g` (at least [`MIN_WEIGHT_ONLY_ELEMENTS`]),
/// excluding graph outputs and `keep`.
fn large_f32_consts(g: &Graph, keep: &HashSet<ValueId>) -> Vec<ValueId> {
    g.consts
        .iter()
        .filter(|(&id, t)| {
            !keep.contains(&id)
                && t.dtype() == DType::F32
                && t.numel() >= MIN_WEIGHT_ONLY_ELEMENTS
                && t.rank() >= 1
                && !g.is_output(id)
                && g.use_count(id) > 0
        })
        .map(|(&id, _)| id)
        .collect()
}

/// Stores every large f32 constant but those in `keep` as int8 with one
/// f32 scale per row (axis 0) behind a DequantizeLinear. Returns how many
/// it rewrote.
pub fn weight_only_except(g: &mut Graph, keep: &HashSet<ValueId>) -> Result<usize> {
    let consts = large_f32_consts(g, keep);
    for &c in &consts {
        let t = g.consts[&c].clone();
        let data = t.as_f32().unwrap_or(&[]);
        let rows = t.shape()[0].max(1);
        let inner = t.numel() / rows;
        let (q, scales) = symmetric_i8(
            data,
            rows,
            |i| i / inner.max(1),
            Granularity::PerChannel,
            127.0,
        );
        let name = g.value(c).name.clone();
        let wq = g.add_const(
            format!("{name}.int8"),
            tensor(t.shape().to_vec(), TensorData::I8(q))?,
        );
        let sc = g.add_const(
            format!("{name}.scale"),
            tensor(vec![rows], TensorData::F32(scales))?,
        );
        replace_const_with_node(
            g,
            c,
            format!("{name}.dequantize"),
            Op::DequantizeLinear {
                axis: 0,
                block_size: 0,
            },
            vec![Some(wq), Some(sc)],
        );
    }
    remove_dead(g)?;
    Ok(consts.len())
}

/// Blockwise symmetric int4 of `w` (shape `[rows, cols]`, blocks of
/// [`INT4_BLOCK`] along `axis`): f16 scales `max|w| / 7` per block (the q
/// values use the f16-rounded scale), `q = clamp(round(w / s), -8, 7)`.
/// None when a scale does not fit f16.
pub fn blockwise_i4(
    w: &[f32],
    rows: usize,
    cols: usize,
    axis: usize,
) -> Option<(Vec<i8>, Vec<f16>, Vec<usize>)> {
    let (nb_r, nb_c) = if axis == 0 {
        (rows.div_ceil(INT4_BLOCK), cols)
    } else {
        (rows, cols.div_ceil(INT4_BLOCK))
    };
    let block = |r: usize, c: usize| {
        if axis == 0 {
            (r / INT4_BLOCK) * nb_c + c
        } else {
            r * nb_c + c / INT4_BLOCK
        }
    };
    let mut amax = vec![0f32; nb_r * nb_c];
    for r in 0..rows {
        for c in 0..cols {
            let x = w[r * cols + c];
            if x.is_finite() {
                let m = &mut amax[block(r, c)];
                *m = m.max(x.abs());
            }
        }
    }
    let mut scales = Vec::with_capacity(amax.len());
    for &m in &amax {
        let s = if m > 0.0 {
            f16::from_f32(m / 7.0)
        } else {
            f16::ONE
        };
        if !s.is_finite() || s.to_f32() == 0.0 {
            return None;
        }
        scales.push(s);
    }
    let q = (0..rows * cols)
        .map(|i| {
            let s = scales[block(i / cols, i % cols)].to_f32();
            (w[i] / s).round_ties_even().clamp(-8.0, 7.0) as i8
        })
        .collect();
    Some((q, scales, vec![nb_r, nb_c]))
}

/// Stores the constant weights of matrix products (MatMul, FusedMatMul,
/// Gemm) and embedding tables (Gather on axis 0) as blockwise int4 behind a
/// DequantizeLinear, and the remaining large constants as int8
/// ([`weight_only_except`]). Returns the number of int4
/// weights.
pub fn int4_weights(g: &mut Graph) -> Result<usize> {
    let mut done = 0;
    // Each 2-D weight with the axis its blocks run along: the reduction axis
    // of a product (rows of B [K, N], columns of a transposed [N, K]), and
    // the row of an embedding table read by Gather.
    let weights: Vec<(ValueId, usize)> = g
        .nodes()
        .filter_map(|(_, n)| {
            let (input, axis) = match &n.op {
                Op::MatMul => (1, 0),
                Op::FusedMatMul { trans_b, .. } | Op::Gemm { trans_b, .. } => {
                    (1, usize::from(*trans_b))
                }
                Op::Gather { axis: 0 } => (0, 1),
                _ => return None,
            };
            let (w, t) = const_f32(g, n.input(input))?;
            (t.rank() == 2 && t.numel() >= MIN_WEIGHT_ONLY_ELEMENTS).then_some((w, axis))
        })
        .collect();
    let mut seen = HashSet::new();
    for (c, axis) in weights {
        if !seen.insert(c) {
            continue;
        }
        let t = g.consts[&c].clone();
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let Some((q, scales, sshape)) = blockwise_i4(t.as_f32().unwrap_or(&[]), rows, cols, axis)
        else {
            continue;
        };
        let name = g.value(c).name.clone();
        let wq = g.add_const(
            format!("{name}.int4"),
            tensor(vec![rows, cols], TensorData::I4(q))?,
        );
        let sc = g.add_const(
            format!("{name}.scale"),
            tensor(sshape, TensorData::F16(scales))?,
        );
        // DequantizeLinear gives the scale's type (f16); cast back to f32.
        let mid_ty = TensorType::new(DType::F16, Shape::known(&[rows, cols]));
        let mid = g.add_value(format!("{name}.f16"), mid_ty);
        g.add_node(Node {
            name: format!("{name}.dequantize"),
            op: Op::DequantizeLinear {
                axis: axis as i64,
                block_size: INT4_BLOCK,
            },
            inputs: vec![Some(wq), Some(sc)],
            outputs: vec![mid],
        });
        replace_const_with_node(
            g,
            c,
            format!("{name}.to_f32"),
            cast_to_f32(),
            vec![Some(mid)],
        );
        done += 1;
    }
    weight_only_except(g, &HashSet::new())?;
    Ok(done)
}

/// Rounds the f32 constants of rank 1 and up that int4 leaves (biases,
/// normalization scales and shifts, small tables) to f16 values, keeping
/// them f32 in the graph: the bundle then stores each in two bytes an
/// element, bit for bit ([`stored_bytes`]). The aggressive size mode
/// treats them as int4 checkpoints do (f16 besides the int4 matrices);
/// their rounding error, under 2^-11 of each value, is far below int4's.
/// Scalars (epsilons, scale factors) stay exact, and a tensor is left as it
/// is when f16 cannot hold it: a value past f16's range, not finite, or
/// moved by more than 2^-11 of the tensor's largest magnitude (tiny values
/// beside large ones). Returns how many tensors were rounded.
pub fn round_params_to_f16(g: &mut Graph) -> Result<usize> {
    let mut rounded = Vec::new();
    for (&id, t) in &g.consts {
        let Some(v) = t.as_f32() else { continue };
        if t.rank() == 0 || crate::formats::bundle::safetensors::f16_exact(v) {
            continue;
        }
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let r: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        let fits = amax.is_finite()
            && amax <= f16::MAX.to_f32()
            && v.iter()
                .zip(&r)
                .all(|(x, y)| (x - y).abs() <= amax / 2048.0);
        if fits {
            rounded.push((id, tensor(t.shape().to_vec(), TensorData::F32(r))?));
        }
    }
    let n = rounded.len();
    for (id, t) in rounded {
        g.consts.insert(id, Arc::new(t));
    }
    Ok(n)
}

fn cast_to_f32() -> Op {
    Op::Cast {
        to: DType::F32,
        saturate: true,
        round_mode: Default::default(),
    }
}

/// Stores every large f32 constant as f16 behind a Cast. Returns how many.
pub fn fp16_weights(g: &mut Graph) -> Result<usize> {
    let consts = large_f32_consts(g, &HashSet::new());
    for &c in &consts {
        let t = g.consts[&c].clone();
        let h: Vec<f16> = t.to_f32_vec().into_iter().map(f16::from_f32).collect();
        let name = g.value(c).name.clone();
        let hc = g.add_const(
            format!("{name}.f16"),
            tensor(t.shape().to_vec(), TensorData::F16(h))?,
        );
        replace_const_with_node(
            g,
            c,
            format!("{name}.to_f32"),
            cast_to_f32(),
            vec![Some(hc)],
        );
    }
    remove_dead(g)?;
    Ok(consts.len())
}

/// Bytes the constants of `g` take, by dtype.
pub fn weight_bytes(g: &Graph) -> usize {
    g.consts.values().map(stored_bytes).sum()
}

/// Bytes a constant's elements take in a bundle before the weights section
/// is deflated (sub-byte types packed, f16-exact f32 tensors narrowed,
/// mostly-zero tensors sparse: their values and index).
pub fn stored_bytes(t: &Arc<Tensor>) -> usize {
    crate::formats::bundle::safetensors::stored_len(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_i8_per_channel_and_tensor() {
        // Two channels (rows) of a [2, 3] weight.
        let w = [1.0, -2.0, 0.5, 0.0, 0.0, 0.0];
        let (q, s) = symmetric_i8(&w, 2, |i| i / 3, Granularity::PerChannel, 127.0);
        assert_eq!(s, vec![f16_scale(2.0 / 127.0), 1.0]);
        // 1 / scale is just under 63.5 with the scale rounded up to f16.
        assert_eq!(q, vec![63, -127, 32, 0, 0, 0]);
        let (q, s) = symmetric_i8(&[4.0, -1.0], 2, |i| i, Granularity::PerTensor, 127.0);
        assert_eq!(s, vec![f16_scale(4.0 / 127.0)]);
        assert_eq!(q, vec![127, -32]);
    }

    #[test]
    fn scales_round_up_to_f16_values() {
        for s in [2.0f32 / 127.0, 1.0 / 63.0, 0.1, 3.0e-4, 1234.5, 1.0] {
            let r = f16_scale(s);
            assert!(r >= s && (r - s) / s < 1.0 / 1024.0, "{s} -> {r}");
            assert_eq!(
                f16::from_f32(r).to_f32(),
                r,
                "{s} -> {r} is not an f16 value"
            );
        }
        // Exact f16 values stay; outside f16's normal range nothing changes.
        assert_eq!(f16_scale(0.5), 0.5);
        for s in [1.0e-6f32, 1.0e5, f32::MIN_POSITIVE] {
            assert_eq!(f16_scale(s), s);
        }
        // The largest weight still maps to +-qmax, never past it.
        let w = [0.3f32, -0.7, 0.11];
        let (q, s) = symmetric_i8(&w, 1, |_| 0, Granularity::PerTensor, 63.0);
        assert!(s[0] > 0.7 / 63.0);
        assert_eq!(q, vec![27, -63, 10]);
    }

    #[test]
    fn int4_rounds_the_remaining_parameters_to_f16_values() {
        let mut g = Graph::default();
        let mut add = |name: &str, shape: Vec<usize>, v: Vec<f32>| {
            let t = Tensor::from_f32(shape, v).unwrap();
            g.add_const(name.to_string(), t)
        };
        let bias = add("bias", vec![3], vec![0.1, -1.0 / 3.0, 7.25]);
        let scalar = add("eps", vec![], vec![0.1]);
        let huge = add("huge", vec![2], vec![0.1, 1.0e5]);
        let tiny = add("tiny", vec![2], vec![1.0e-7, 2.0e-7]);
        let small_beside_large = add("ok", vec![2], vec![1.0e-7, 1.0]);
        assert_eq!(round_params_to_f16(&mut g).unwrap(), 2);
        let f32s = |id| g.consts[&id].as_f32().unwrap().to_vec();
        let b = f32s(bias);
        assert_eq!(b[2], 7.25);
        assert!(b.iter().all(|&x| f16::from_f32(x).to_f32() == x));
        assert!((b[0] - 0.1).abs() < 1e-4 && (b[1] + 1.0 / 3.0).abs() < 2e-4);
        assert_eq!(f32s(scalar), vec![0.1]);
        assert_eq!(f32s(huge), vec![0.1, 1.0e5]);
        assert_eq!(f32s(tiny), vec![1.0e-7, 2.0e-7]);
        assert_eq!(f32s(small_beside_large)[1], 1.0);
    }

    #[test]
    fn blockwise_i4_blocks_along_the_reduction_axis() {
        // [K=40, N=1]: two blocks along axis 0, the second 8 long.
        let w: Vec<f32> = (0..40).map(|i| if i < 32 { 7.0 } else { -0.7 }).collect();
        let (q, s, shape) = blockwise_i4(&w, 40, 1, 0).unwrap();
        assert_eq!(shape, vec![2, 1]);
        assert_eq!(s[0].to_f32(), 1.0);
        assert!((s[1].to_f32() - 0.1).abs() < 1e-3);
        assert!(q[..32].iter().all(|&v| v == 7));
        assert!(q[32..].iter().all(|&v| v == -7));
        // The same weight transposed, blocks along axis 1.
        let (qt, st, shape) = blockwise_i4(&w, 1, 40, 1).unwrap();
        assert_eq!(shape, vec![1, 2]);
        assert_eq!(qt, q);
        assert_eq!(st, s);
    }
}

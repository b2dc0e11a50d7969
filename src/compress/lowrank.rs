//! Low-rank factorization: a layer's weight `W` (`rows` outputs by `cols`
//! inputs) becomes two smaller products, `W ≈ U_r · (U_rᵀ W)`, the first
//! (`U_rᵀ W`, `r × cols`) a new layer in front of the second (`U_r`,
//! `rows × r`, which keeps the bias and activation). For a convolution
//! the columns are its input channels times its window, so the first is a
//! convolution with the same window (strides, padding) into `r` channels
//! and the second a 1x1 convolution back to `rows` (a Tucker-1 split of
//! the output channels).
//!
//! `U_r` holds the leading eigenvectors of `C = W·H·Wᵀ`, where `H` is the
//! Gram matrix of the layer's input vectors on the calibration data
//! ([`super::reconstruct::layer_grams`]): `C` is the second moment of the
//! layer's outputs, so projecting them on its top `r` eigenvectors is the
//! rank-`r` approximation with the least output error on that data, and
//! the eigenvalues left out are that error exactly. This is SVD-LLM's
//! whitened truncation (Wang et al. 2024) without forming the whitening:
//! the left singular vectors of `W·L` (`H = L·Lᵀ`) are the eigenvectors of
//! `C`. Without calibration data `H = I`: a plain truncated SVD of `W`.
//! The eigendecomposition is faer's.
//!
//! Which rank each layer gets: `--low-rank-energy E` keeps the smallest
//! rank whose eigenvalues hold a share `E` of the output energy;
//! `--low-rank RATIO` keeps that share of the factorable layers'
//! parameters, taken greedily where a parameter costs the least relative
//! output error. A layer is factorized only at a rank where the pair has
//! fewer parameters than `W`. The whole model is judged against the
//! accuracy budget and the share bisected up towards 1 until it holds;
//! then every factorized layer is timed as a pair against the original in
//! alternating runs, and with `--goal latency` a pair that is not faster
//! goes back (with the default size goal it stays, noted: on layers of a
//! few microseconds a second node's overhead outweighs the work saved).

use std::collections::HashMap;

use serde::Serialize;

use super::data;
use super::matrix::WeightMatrix;
use super::prune::{SearchStep, Verdict};
use super::quantize::Layer;
use super::reconstruct::Gram;
use crate::ir::{ConvAttrs, Dim, Graph, Node, NodeId, Op, Shape, Tensor, TensorType};
use crate::measure::{self, Measurer};
use crate::{Error, Result};

/// How much of the factorable layers stays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// This share of their parameters (0 to 1), or more when the accuracy
    /// budget breaks.
    Params(f64),
    /// Each layer keeps this share of its output energy (0 to 1), or more
    /// when the budget breaks.
    Energy(f64),
}

impl Target {
    /// The share.
    pub fn value(self) -> f64 {
        match self {
            Target::Params(v) | Target::Energy(v) => v,
        }
    }

    fn with(self, v: f64) -> Target {
        match self {
            Target::Params(_) => Target::Params(v),
            Target::Energy(_) => Target::Energy(v),
        }
    }
}

/// Widest input a layer's Gram matrix is taken for (72 MB of f64 at this
/// width); wider layers are factorized by the plain SVD of their weight.
pub const MAX_GRAM_COLS: usize = 3072;

/// Widest output a layer is factorized at (its `rows × rows` output
/// moment is decomposed).
const MAX_ROWS: usize = 4096;

/// Bisection steps when the budget breaks.
const SEARCH_STEPS: usize = 7;

/// A factorable layer and its decomposition.
struct Factorable {
    layer: Layer,
    node: Node,
    rows: usize,
    cols: usize,
    /// `W` as `rows × cols`, row-major.
    w: Vec<f64>,
    /// Eigenvectors of the output moment, by column (`rows × rows`,
    /// row-major), largest eigenvalue first.
    u: Vec<f64>,
    /// The eigenvalues, descending, clamped at 0.
    energy: Vec<f64>,
    /// Whether `H` came from calibration data.
    whitened: bool,
}

impl Factorable {
    fn params(&self) -> usize {
        self.rows * self.cols
    }

    /// Parameters of the pair at rank `r`.
    fn pair_params(&self, r: usize) -> usize {
        r * (self.rows + self.cols)
    }

    /// The highest rank at which the pair is smaller than `W`.
    fn max_rank(&self) -> usize {
        (self.params().saturating_sub(1)) / (self.rows + self.cols)
    }

    /// Share of the output energy ranks `..r` hold.
    fn kept_energy(&self, r: usize) -> f64 {
        let total: f64 = self.energy.iter().sum();
        if total <= 0.0 {
            return 1.0;
        }
        self.energy[..r.min(self.energy.len())].iter().sum::<f64>() / total
    }

    /// `(U_r, U_rᵀ W)` as f32, row-major (`rows × r`, `r × cols`).
    fn factors(&self, r: usize) -> (Vec<f32>, Vec<f32>) {
        let (rows, cols) = (self.rows, self.cols);
        let a: Vec<f32> = (0..rows)
            .flat_map(|i| (0..r).map(move |j| self.u[i * rows + j] as f32))
            .collect();
        let mut b = vec![0.0f64; r * cols];
        for j in 0..r {
            let row = &mut b[j * cols..(j + 1) * cols];
            for i in 0..rows {
                let u = self.u[i * rows + j];
                if u != 0.0 {
                    for (d, w) in row.iter_mut().zip(&self.w[i * cols..(i + 1) * cols]) {
                        *d += u * w;
                    }
                }
            }
        }
        (a, b.into_iter().map(|v| v as f32).collect())
    }
}

/// Layers left whole, with the reason.
type Skipped = Vec<(String, String)>;

/// What the layer's op computes, for the rewrite.
fn factorable_op(op: &Op, w_shape: &[usize]) -> bool {
    match op {
        Op::Conv(a) | Op::FusedConv { conv: a, .. } => a.group == 1 && w_shape.len() == 4,
        Op::MatMul | Op::Gemm { trans_a: false, .. } | Op::FusedMatMul { trans_a: false, .. } => {
            w_shape.len() == 2
        }
        _ => false,
    }
}

/// The layers of `layers` that can be factorized, decomposed (with their
/// input Gram matrices from `grams` where given), and those left with the
/// reason.
fn factorable(
    g: &Graph,
    layers: &[Layer],
    grams: Option<&HashMap<NodeId, Gram>>,
    progress: bool,
) -> Result<(Vec<Factorable>, Skipped)> {
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    let pb = data::progress(progress, layers.len(), "decompose");
    for l in layers {
        pb.inc(1);
        let (Some(node), Some(w)) = (g.node(l.node), g.const_value(l.weight)) else {
            continue;
        };
        let Some(data) = w.as_f32() else { continue };
        if !factorable_op(&node.op, w.shape()) {
            skipped.push((
                l.name.clone(),
                "not a product or a 2-D convolution of one group".into(),
            ));
            continue;
        }
        if g.use_count(l.weight) > 1 || g.is_output(l.weight) {
            skipped.push((l.name.clone(), "weight shared with other nodes".into()));
            continue;
        }
        let Some(m) = WeightMatrix::of(&node.op, w.shape()) else {
            continue;
        };
        if m.rows > MAX_ROWS {
            skipped.push((
                l.name.clone(),
                format!("{} outputs (above {MAX_ROWS})", m.rows),
            ));
            continue;
        }
        let (rows, cols) = (m.rows, m.cols);
        if (rows * cols).saturating_sub(1) / (rows + cols) == 0 {
            skipped.push((l.name.clone(), "too small to factorize".into()));
            continue;
        }
        let wm: Vec<f64> = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (r, c)))
            .map(|(r, c)| data[m.index(r, c)] as f64)
            .collect();
        let gram = grams.and_then(|g| g.get(&l.node)).filter(|g| g.n() == cols);
        let (u, energy) = output_eigen(&wm, rows, cols, gram).ok_or_else(|| {
            Error::Internal(format!(
                "low-rank: the eigendecomposition of '{}' failed",
                l.name
            ))
        })?;
        out.push(Factorable {
            layer: l.clone(),
            node: node.clone(),
            rows,
            cols,
            w: wm,
            u,
            energy,
            whitened: gram.is_some(),
        });
    }
    pb.finish_and_clear();
    Ok((out, skipped))
}

/// Eigenvectors (by column, descending eigenvalue) and eigenvalues of
/// `W·H·Wᵀ` (`H = I` without a Gram matrix); None when it has non-finite
/// values or the decomposition fails.
fn output_eigen(
    w: &[f64],
    rows: usize,
    cols: usize,
    gram: Option<&Gram>,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let wm = faer::Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j]);
    let c = match gram {
        Some(h) => {
            let hm = faer::Mat::<f64>::from_fn(cols, cols, |i, j| h.at(i, j));
            &wm * &hm * wm.transpose()
        }
        None => &wm * wm.transpose(),
    };
    if (0..rows).any(|i| (0..rows).any(|j| !c[(i, j)].is_finite())) {
        return None;
    }
    let eig = c.self_adjoint_eigen(faer::Side::Lower).ok()?;
    let (vals, vecs) = (eig.S().column_vector(), eig.U());
    // faer gives them ascending.
    let order: Vec<usize> = (0..rows).rev().collect();
    let energy = order.iter().map(|&k| vals[k].max(0.0)).collect();
    let mut u = vec![0.0; rows * rows];
    for (j, &k) in order.iter().enumerate() {
        for i in 0..rows {
            u[i * rows + j] = vecs[(i, k)];
        }
    }
    Some((u, energy))
}

/// Each layer's rank for `target` (0: left whole).
fn ranks(layers: &[Factorable], target: Target) -> Vec<usize> {
    match target {
        Target::Energy(e) => layers
            .iter()
            .map(|f| {
                (1..=f.max_rank())
                    .find(|&r| f.kept_energy(r) >= e)
                    .unwrap_or(0)
            })
            .collect(),
        Target::Params(share) => {
            let total: usize = layers.iter().map(Factorable::params).sum();
            let mut kept = total as f64;
            let want = share.clamp(0.0, 1.0) * total as f64;
            // Each layer's rank, 0 meaning whole; lowering it from whole
            // first goes to the largest rank that saves parameters.
            let mut at: Vec<usize> = vec![0; layers.len()];
            while kept > want {
                let step = |i: usize| -> Option<(f64, usize, usize)> {
                    let f = &layers[i];
                    let (next, saved, err) = match at[i] {
                        0 => {
                            let r = f.max_rank();
                            (r, f.params() - f.pair_params(r), 1.0 - f.kept_energy(r))
                        }
                        1 => return None,
                        r => (
                            r - 1,
                            f.rows + f.cols,
                            f.kept_energy(r) - f.kept_energy(r - 1),
                        ),
                    };
                    Some((err.max(0.0) / saved.max(1) as f64, i, next))
                };
                let best = (0..layers.len())
                    .filter_map(step)
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let Some((_, i, next)) = best else { break };
                let f = &layers[i];
                let before = match at[i] {
                    0 => f.params(),
                    r => f.pair_params(r),
                };
                kept -= (before - f.pair_params(next)) as f64;
                at[i] = next;
            }
            at
        }
    }
}

/// `g` with each layer of `layers` at rank `ranks[i]` (0: whole) split
/// into its pair.
fn apply(g: &Graph, layers: &[Factorable], ranks: &[usize]) -> Result<Graph> {
    let mut out = g.clone();
    for (f, &r) in layers.iter().zip(ranks) {
        if r > 0 {
            split(&mut out, f, r)?;
        }
    }
    Ok(out)
}

/// Name of the first product of a factorized layer.
fn first_name(layer: &str) -> String {
    format!("{layer}.lowrank")
}

/// Replaces layer `f` of `g` by its pair at rank `r`: a new first node
/// (same input, same strides and padding for a convolution) into an
/// `r`-channel value, read by the original node with the `rows × r`
/// factor as its weight.
fn split(g: &mut Graph, f: &Factorable, r: usize) -> Result<()> {
    let bad = |why: &str| Error::Internal(format!("low-rank '{}': {why}", f.layer.name));
    let (a, b) = f.factors(r);
    let x = f.node.input(0).ok_or_else(|| bad("no input"))?;
    let out = *f.node.outputs.first().ok_or_else(|| bad("no output"))?;
    let out_ty = g.ty(out).clone();
    let mut dims: Vec<Dim> = out_ty.shape.dims().to_vec();
    let (first_op, first_w, second_w, channel_axis) = match &f.node.op {
        Op::Conv(c) | Op::FusedConv { conv: c, .. } => {
            // The first convolution keeps the window: `[r, C, kh, kw]`.
            let w_shape = g
                .const_value(f.layer.weight)
                .map(|t| t.shape().to_vec())
                .ok_or_else(|| bad("weight gone"))?;
            let mut first_shape = w_shape.clone();
            first_shape[0] = r;
            let bw = Tensor::from_f32(first_shape, b);
            let aw = Tensor::from_f32(vec![f.rows, r, 1, 1], a);
            (Op::Conv(c.clone()), bw, aw, 1)
        }
        Op::Gemm { trans_b, .. } | Op::FusedMatMul { trans_b, .. } => {
            let bw = Tensor::from_f32(vec![f.cols, r], transpose(&b, r, f.cols));
            let aw = if *trans_b {
                Tensor::from_f32(vec![f.rows, r], a)
            } else {
                Tensor::from_f32(vec![r, f.rows], transpose(&a, f.rows, r))
            };
            (Op::MatMul, bw, aw, dims.len().saturating_sub(1))
        }
        Op::MatMul => {
            let bw = Tensor::from_f32(vec![f.cols, r], transpose(&b, r, f.cols));
            let aw = Tensor::from_f32(vec![r, f.rows], transpose(&a, f.rows, r));
            (Op::MatMul, bw, aw, dims.len().saturating_sub(1))
        }
        _ => return Err(bad("not a factorable op")),
    };
    let (first_w, second_w) = (
        first_w.map_err(|e| bad(&e.to_string()))?,
        second_w.map_err(|e| bad(&e.to_string()))?,
    );
    *dims
        .get_mut(channel_axis)
        .ok_or_else(|| bad("output of rank 0"))? = Dim::Known(r);
    let mid = g.add_value(
        format!("{}.lowrank.out", f.layer.name),
        TensorType::new(out_ty.dtype, Shape(dims)),
    );
    let bw = g.add_const(format!("{}.lowrank.w", f.layer.name), first_w);
    g.add_node(Node {
        name: first_name(&f.layer.name),
        op: first_op,
        inputs: vec![Some(x), Some(bw)],
        outputs: vec![mid],
    });
    let aw = g.add_const(format!("{}.w", f.layer.name), second_w);
    let node = g.node_mut(f.layer.node).ok_or_else(|| bad("node gone"))?;
    node.inputs[0] = Some(mid);
    node.inputs[1] = Some(aw);
    if let Op::Conv(c) | Op::FusedConv { conv: c, .. } = &mut node.op {
        // The pointwise second half: the first did the striding/padding.
        *c = ConvAttrs {
            kernel_shape: vec![1, 1],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: crate::ir::AutoPad::NotSet,
            group: 1,
        };
    }
    // The old weight is no longer read.
    g.consts.remove(&f.layer.weight);
    Ok(())
}

/// `m` (`rows × cols`, row-major) transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| m[r * cols + c]))
        .collect()
}

/// What happened to one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerLowRank {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Rank of the pair (None: left whole).
    pub rank: Option<usize>,
    pub params_before: usize,
    pub params_after: usize,
    /// Share of the layer's output energy on the calibration data (or of
    /// its weight's, without data) the pair keeps.
    pub energy_kept: f64,
    /// Median time of the original and of the pair, ms (speed check).
    pub ms_before: Option<f64>,
    pub ms_after: Option<f64>,
    /// Why it was left whole or put back.
    pub note: Option<String>,
}

/// The factorized model and how it was reached.
pub struct Factorized {
    pub graph: Graph,
    pub requested: Target,
    /// The share the search settled on.
    pub reached: Target,
    pub whitened: bool,
    pub layers: Vec<LayerLowRank>,
    pub skipped: Skipped,
    pub steps: Vec<SearchStep>,
}

/// Factorizes the layers of `g` among `layers` for `target`, judged by
/// `verdict` (the f32 model against the accuracy budget), then times each
/// pair against its original on this machine (with `meas` on `sample`,
/// alternating `runs` times): with `only_faster` a pair that is not faster
/// goes back, else it stays (smaller) with a note.
#[allow(clippy::too_many_arguments)]
pub fn factorize(
    g: &Graph,
    layers: &[Layer],
    grams: Option<&HashMap<NodeId, Gram>>,
    target: Target,
    verdict: &mut dyn FnMut(&Graph) -> Result<Verdict>,
    meas: &Measurer,
    sample: &[Tensor],
    runs: usize,
    only_faster: bool,
    progress: bool,
) -> Result<Factorized> {
    let (fs, skipped) = factorable(g, layers, grams, progress)?;
    let mut steps = Vec::new();
    let mut judge = |t: Target, steps: &mut Vec<SearchStep>| -> Result<(Vec<usize>, bool)> {
        let rs = ranks(&fs, t);
        let v = verdict(&apply(g, &fs, &rs)?)?;
        let holds = v.holds;
        steps.push(SearchStep {
            sparsity: t.value(),
            verdict: v,
        });
        Ok((rs, holds))
    };
    let pb = data::progress(progress, SEARCH_STEPS + 1, "low-rank search");
    let (first, holds) = judge(target, &mut steps)?;
    pb.inc(1);
    let (mut chosen, mut reached) = (vec![0; fs.len()], target.with(1.0));
    if holds {
        (chosen, reached) = (first, target);
    } else {
        // The least share above the target that holds the budget.
        let (mut lo, mut hi) = (target.value(), 1.0);
        for _ in 0..SEARCH_STEPS {
            let mid = 0.5 * (lo + hi);
            let (rs, holds) = judge(target.with(mid), &mut steps)?;
            if holds {
                hi = mid;
                (chosen, reached) = (rs, target.with(mid));
            } else {
                lo = mid;
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();

    let mut notes: Vec<Option<String>> = vec![None; fs.len()];
    for (i, f) in fs.iter().enumerate() {
        if chosen[i] == 0 {
            notes[i] = Some(if f.max_rank() == 0 {
                "no rank makes the pair smaller".into()
            } else {
                "kept whole by the rank allocation".into()
            });
        }
    }
    // Speed: a pair that is not faster than the original goes back.
    let mut times: Vec<(Option<f64>, Option<f64>)> = vec![(None, None); fs.len()];
    if chosen.iter().any(|&r| r > 0) && runs > 0 {
        let shapes: Vec<Vec<usize>> = sample.iter().map(|t| t.shape().to_vec()).collect();
        let mut before = meas.plan(g, &shapes)?;
        let mut after = meas.plan(&apply(g, &fs, &chosen)?, &shapes)?;
        let (tb, ta) = measure::alternate_nodes(&mut before, &mut after, sample, 2, runs)?;
        for (i, f) in fs.iter().enumerate() {
            if chosen[i] == 0 {
                continue;
            }
            let name = &f.layer.name;
            let (Some(b), Some(a2), Some(a1)) =
                (tb.get(name), ta.get(name), ta.get(&first_name(name)))
            else {
                continue;
            };
            let pair = a1.median_ms + a2.median_ms;
            times[i] = (Some(b.median_ms), Some(pair));
            if pair >= b.median_ms {
                let timing = format!(
                    "the pair takes {pair:.4} ms, the original {:.4} ms on this machine",
                    b.median_ms
                );
                notes[i] = Some(if only_faster {
                    chosen[i] = 0;
                    format!("put back (--goal latency): {timing}")
                } else {
                    format!("kept for its size: {timing} (--goal latency puts it back)")
                });
            }
        }
    }
    let graph = apply(g, &fs, &chosen)?;
    let layers_out = fs
        .iter()
        .zip(&chosen)
        .zip(notes.into_iter().zip(times))
        .map(|((f, &r), (note, (tb, ta)))| LayerLowRank {
            name: f.layer.name.clone(),
            rows: f.rows,
            cols: f.cols,
            rank: (r > 0).then_some(r),
            params_before: f.params(),
            params_after: if r > 0 { f.pair_params(r) } else { f.params() },
            energy_kept: if r > 0 { f.kept_energy(r) } else { 1.0 },
            ms_before: tb,
            ms_after: if r > 0 { ta } else { None },
            note,
        })
        .collect();
    Ok(Factorized {
        graph,
        requested: target,
        reached,
        whitened: fs.iter().any(|f| f.whitened),
        layers: layers_out,
        skipped,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_of(w: Vec<f64>, rows: usize, cols: usize, gram: Option<&Gram>) -> Factorable {
        let (u, energy) = output_eigen(&w, rows, cols, gram).unwrap();
        let node = Node {
            name: "l".into(),
            op: Op::MatMul,
            inputs: vec![],
            outputs: vec![],
        };
        Factorable {
            layer: Layer {
                node: NodeId(0),
                name: "l".into(),
                kind: super::super::quantize::LayerKind::MatMul,
                input: crate::ir::ValueId(0),
                weight: crate::ir::ValueId(1),
                weight_elements: rows * cols,
            },
            node,
            rows,
            cols,
            w,
            u,
            energy,
            whitened: gram.is_some(),
        }
    }

    #[test]
    fn a_rank_two_weight_factorizes_exactly_at_rank_two() {
        let (rows, cols) = (6, 5);
        // Outer products of two pairs of vectors.
        let w: Vec<f64> = (0..rows * cols)
            .map(|k| {
                let (i, j) = ((k / cols) as f64, (k % cols) as f64);
                (i + 1.0) * (j - 2.0) + (i * i - 3.0) * (0.5 * j + 1.0)
            })
            .collect();
        let f = layer_of(w.clone(), rows, cols, None);
        assert!(f.kept_energy(2) > 1.0 - 1e-12, "{:?}", f.energy);
        assert!(f.kept_energy(1) < 0.999);
        let (a, b) = f.factors(2);
        for i in 0..rows {
            for j in 0..cols {
                let p: f64 = (0..2)
                    .map(|k| a[i * 2 + k] as f64 * b[k * cols + j] as f64)
                    .sum();
                assert!(
                    (p - w[i * cols + j]).abs() < 1e-4,
                    "({i},{j}): {p} vs {}",
                    w[i * cols + j]
                );
            }
        }
    }

    #[test]
    fn a_split_convolution_at_full_rank_computes_the_original() {
        use crate::ir::{AutoPad, DType};
        // x [1, 3, 7, 6] -> 3x3 conv, stride 2, pads (1, 0, 2, 1), 8
        // outputs with bias and Relu; then a MatMul-free check of the
        // pair at full rank (U·Uᵀ = I) and a truncated one's shape.
        let mut g = Graph::new("conv", 17);
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, Shape::known(&[1, 3, 7, 6])),
        );
        let w: Vec<f32> = (0..8 * 27)
            .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let w = g.add_const("w", Tensor::from_f32(vec![8, 3, 3, 3], w).unwrap());
        let b = g.add_const("b", Tensor::from_f32(vec![8], vec![0.25; 8]).unwrap());
        let y = g.add_value(
            "y",
            TensorType::new(DType::F32, Shape::known(&[1, 8, 4, 3])),
        );
        let conv = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![1, 0, 2, 1],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let node = g.add_node(Node {
            name: "c".into(),
            op: Op::FusedConv {
                conv,
                act: Some(crate::ir::Activation::Relu),
            },
            inputs: vec![Some(x), Some(w), Some(b)],
            outputs: vec![y],
        });
        g.outputs.push(y);
        let layer = Layer {
            node,
            name: "c".into(),
            kind: super::super::quantize::LayerKind::Conv,
            input: x,
            weight: w,
            weight_elements: 8 * 27,
        };
        let (fs, skipped) = factorable(&g, &[layer], None, false).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let input: Vec<f32> = (0..3 * 42)
            .map(|i| ((i * 11) % 13) as f32 / 6.0 - 1.0)
            .collect();
        let input = Tensor::from_f32(vec![1, 3, 7, 6], input).unwrap();
        let want = crate::interp::run(&g, vec![input.clone()]).unwrap();
        let full = apply(&g, &fs, &[8]).unwrap();
        let got = crate::interp::run(&full, vec![input.clone()]).unwrap();
        let (a, b) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-4, "{i}: {x} vs {y}");
        }
        // Rank 2: a [2, 3, 3, 3] window into a 1x1 back to 8 channels.
        let low = apply(&g, &fs, &[2]).unwrap();
        let first = low.nodes().find(|(_, n)| n.name == "c.lowrank").unwrap().1;
        let fw = low.const_value(first.input(1).unwrap()).unwrap();
        assert_eq!(fw.shape(), &[2, 3, 3, 3]);
        let out = crate::interp::run(&low, vec![input]).unwrap();
        assert_eq!(out[0].shape(), &[1, 8, 4, 3]);
    }

    #[test]
    fn the_allocation_keeps_the_share_asked_and_cuts_the_cheapest_energy() {
        // Layer 0: one strong direction; layer 1: flat spectrum.
        let (rows, cols) = (8, 8);
        let spiky: Vec<f64> = (0..64)
            .map(|k| {
                if k % 9 == 0 {
                    if k == 0 {
                        10.0
                    } else {
                        0.01
                    }
                } else {
                    0.0
                }
            })
            .collect();
        let flat: Vec<f64> = (0..64)
            .map(|k| if k % 9 == 0 { 1.0 } else { 0.0 })
            .collect();
        let fs = [
            layer_of(spiky, rows, cols, None),
            layer_of(flat, rows, cols, None),
        ];
        let rs = ranks(&fs, Target::Params(0.5));
        let kept: usize = fs
            .iter()
            .zip(&rs)
            .map(|(f, &r)| if r == 0 { f.params() } else { f.pair_params(r) })
            .sum();
        assert!(kept as f64 <= 0.5 * 128.0, "{rs:?}: {kept}");
        // The spiky layer gives up its rank first.
        assert_eq!(rs[0], 1, "{rs:?}");
        let energy = ranks(&fs, Target::Energy(0.99));
        assert_eq!(energy[0], 1);
        assert_eq!(energy[1], 0, "the flat layer needs every rank: left whole");
    }
}

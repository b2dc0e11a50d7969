//! Unstructured pruning: the least important weights (or blocks of them)
//! of convolutions and matrix products set to zero.
//!
//! A layer's weight is seen as a matrix of output rows by reduction
//! columns ([`WeightMatrix`]). Its *units* are single elements, or blocks
//! of 4 consecutive output rows at one column ([`Block::Rows4`]: the sparse
//! kernel then loads each input row once for 4 outputs). A unit's
//! importance is its magnitude (L2 norm of a block), times the L2 norm of
//! the input channel it reads over the calibration data with
//! [`Importance::Activation`] (Wanda's score, Sun et al. 2023: |w|·‖x‖).
//!
//! How much of each layer goes ([`Allocation`]): the same share everywhere,
//! one magnitude threshold over every layer, or by measured sensitivity:
//! each layer is pruned alone to a ladder of sparsities and the model's
//! output error measured ([`Evaluator::error`]); the allocation then
//! greedily raises the layer whose next step costs the least error per
//! weight removed until the target is reached. The whole model is then
//! judged against the accuracy budget ([`Evaluator::verdict`]); when it
//! breaks it, or with [`Target::Max`], a bisection finds the highest
//! sparsity that holds it.

use std::collections::HashMap;

use serde::Serialize;

use super::data::{self, Dataset};
pub use super::matrix::WeightMatrix;
use super::quantize::Layer;
use super::reconstruct::{self, Gram};
use crate::ir::{Graph, NodeId, Tensor, ValueId};
use crate::measure::Measurer;
use crate::{Error, Result};

/// How sparse the pruned layers must get.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// This share of the prunable weights zero (0 to 1), or less when the
    /// accuracy budget breaks first.
    Sparsity(f64),
    /// The highest share the accuracy budget allows.
    Max,
}

/// How the target is shared among the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    /// By each layer's measured effect on the output.
    Sensitivity,
    /// The same share of every layer.
    Uniform,
    /// One importance threshold over every layer's weights.
    Global,
}

impl Allocation {
    pub fn name(self) -> &'static str {
        match self {
            Allocation::Sensitivity => "sensitivity",
            Allocation::Uniform => "uniform",
            Allocation::Global => "global",
        }
    }
}

/// The unit of pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Block {
    /// Single weights.
    #[serde(rename = "1x1")]
    Single,
    /// 4 consecutive output rows at one reduction column.
    #[serde(rename = "4x1")]
    Rows4,
}

impl Block {
    pub fn rows(self) -> usize {
        match self {
            Block::Single => 1,
            Block::Rows4 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Block::Single => "1x1",
            Block::Rows4 => "4x1",
        }
    }
}

/// What ranks the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Importance {
    /// |w|, ranked over the whole layer.
    Magnitude,
    /// |w| times the norm of its input channel over the calibration data
    /// (Wanda's score).
    Activation,
}

impl Importance {
    pub fn name(self) -> &'static str {
        match self {
            Importance::Magnitude => "magnitude",
            Importance::Activation => "activation",
        }
    }
}

/// What happens to the weights pruning leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Update {
    /// [`Update::LeastSquares`] when calibration data is given, else
    /// [`Update::None`].
    Auto,
    /// Re-fit to the unpruned outputs on the calibration data
    /// ([`super::reconstruct`]).
    LeastSquares,
    /// Kept as they were.
    None,
}

impl Update {
    pub fn name(self) -> &'static str {
        match self {
            Update::Auto => "auto",
            Update::LeastSquares => "least-squares",
            Update::None => "none",
        }
    }
}

/// Everything pruning can be told.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    pub target: Target,
    pub allocation: Allocation,
    pub block: Block,
    pub importance: Importance,
    pub update: Update,
}

impl PruneOptions {
    /// Sensitivity-allocated magnitude pruning of single weights.
    pub fn new(target: Target) -> PruneOptions {
        PruneOptions {
            target,
            allocation: Allocation::Sensitivity,
            block: Block::Single,
            importance: Importance::Magnitude,
            update: Update::Auto,
        }
    }
}

/// Each unit's importance: the L2 norm of its weights, each scaled by its
/// input channel's norm when `norms` are given.
fn unit_scores(w: &[f32], m: &WeightMatrix, block: Block, norms: Option<&[f32]>) -> Vec<f32> {
    (0..m.units(block.rows()))
        .map(|u| {
            let (rb, c) = (u / m.cols, u % m.cols);
            let rows = rb * block.rows()..((rb + 1) * block.rows()).min(m.rows);
            let sq: f64 = rows
                .map(|r| {
                    let x = w[m.index(r, c)] as f64;
                    let n = norms.map_or(1.0, |n| {
                        n.get(m.input_channel(r, c)).copied().unwrap_or(1.0) as f64
                    });
                    (x * n) * (x * n)
                })
                .sum();
            sq.sqrt() as f32
        })
        .collect()
}

/// Units in pruning order, least important first, ranked over the whole
/// layer. Wanda ranks within each output row instead; on the digits
/// models that pruned less within the same accuracy budget (CNN 0.78 vs
/// 0.80 sparsity, MLP 0.56 vs 0.64). Ties break by index so that pruning
/// is deterministic; NaN scores rank as the most important (never pruned
/// silently).
pub fn pruning_order(m: &WeightMatrix, block: Block, scores: &[f32]) -> Vec<usize> {
    let key = |u: usize| {
        if scores[u].is_nan() {
            f32::INFINITY
        } else {
            scores[u]
        }
    };
    let mut order: Vec<usize> = (0..m.units(block.rows())).collect();
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
    order
}

/// `w` (laid out as `m` says) with `fraction` (0 to 1) of its elements
/// set to zero, least important units of `order` first (a block of rows
/// may take the count up to 3 past it).
pub fn prune_weight(
    w: &[f32],
    m: &WeightMatrix,
    block: Block,
    order: &[usize],
    fraction: f64,
) -> Vec<f32> {
    let want = (fraction.clamp(0.0, 1.0) * w.len() as f64).round() as usize;
    let mut out = w.to_vec();
    let mut zeroed = 0;
    for &u in order {
        if zeroed >= want {
            break;
        }
        for i in m.unit_elements(block.rows(), u) {
            out[i] = 0.0;
            zeroed += 1;
        }
    }
    out
}

/// What pruning knows of one layer.
struct Prunable {
    layer: Layer,
    matrix: WeightMatrix,
    weight: Vec<f32>,
    scores: Vec<f32>,
    /// Units least important first (see [`pruning_order`]).
    order: Vec<usize>,
    /// Its input vectors' Gram matrix, when the survivors are re-fit.
    gram: Option<Gram>,
}

impl Prunable {
    fn shape(&self, g: &Graph) -> Vec<usize> {
        g.const_value(self.layer.weight)
            .map(|t| t.shape().to_vec())
            .unwrap_or_default()
    }

    fn pruned(&self, block: Block, fraction: f64) -> Vec<f32> {
        let mut w = prune_weight(&self.weight, &self.matrix, block, &self.order, fraction);
        if let Some(gram) = &self.gram {
            reconstruct::update(&self.weight, &mut w, &self.matrix, gram);
        }
        w
    }
}

/// How the pruned model is judged: the compression's data and budget.
pub trait Evaluator {
    /// Output error of model `g` (1 - cosine similarity with the f32
    /// model), on the sensitivity samples.
    fn error(&mut self, g: &Graph) -> Result<f64>;
    /// Whether model `g` (as the compression will finish it: quantized
    /// too when asked) holds the accuracy budget, on the evaluation set.
    fn verdict(&mut self, g: &Graph) -> Result<Verdict>;
}

/// A model judged against the accuracy budget.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub holds: bool,
    /// Top-1 drop (points) against the f32 model, where one applies.
    pub drop_points: Option<f64>,
    pub min_cosine_similarity: f64,
}

/// One model the search judged.
#[derive(Clone, Debug, Serialize)]
pub struct SearchStep {
    /// Share of the prunable weights zero.
    pub sparsity: f64,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// What happened to one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerPruning {
    pub name: String,
    pub elements: usize,
    /// Zero weights after pruning (including those already zero).
    pub zeros: usize,
    /// Output error with this layer alone pruned, at each measured
    /// sparsity (sensitivity allocation).
    pub sensitivity: Vec<(f64, f64)>,
    /// Whether its surviving weights were re-fit (least-squares update).
    pub updated: bool,
}

/// The pruned model and how it was reached.
pub struct Pruned {
    pub graph: Graph,
    pub layers: Vec<LayerPruning>,
    /// Share of all prunable weights zero.
    pub sparsity: f64,
    pub requested: Target,
    pub steps: Vec<SearchStep>,
    /// Layers left whole, and why (shared or depthwise weights).
    pub skipped: Vec<(String, String)>,
    /// What happened to the surviving weights ([`Update::LeastSquares`]
    /// or [`Update::None`]).
    pub update: Update,
    /// Layers pruned without the least-squares update, and why.
    pub not_updated: Vec<(String, String)>,
}

/// Sparsities each layer is pruned to alone to measure its sensitivity.
const LADDER: [f64; 10] = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98];

/// Highest sparsity any layer is given: a layer with no weights left
/// outputs only its bias.
const MAX_LAYER_SPARSITY: f64 = 0.98;

/// Output error past which a layer's ladder stops (the model is broken).
const LADDER_STOP_ERROR: f64 = 0.5;

/// Bisection steps when the budget breaks (about 1/100 of the range).
pub const SEARCH_STEPS: usize = 7;

/// Layers of `layers` that pruning can take, and those it leaves (with
/// the reason): depthwise convolutions (a few taps per channel, no sparse
/// kernel) and weights several nodes share.
fn prunable(
    g: &Graph,
    layers: &[Layer],
    opts: &PruneOptions,
    stats: &mut LayerStats,
) -> (Vec<Prunable>, Vec<(String, String)>) {
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for l in layers {
        let Some(node) = g.node(l.node) else { continue };
        let Some(w) = g.const_value(l.weight) else {
            continue;
        };
        let Some(m) = WeightMatrix::of(&node.op, w.shape()) else {
            continue;
        };
        let Some(data) = w.as_f32() else { continue };
        if m.is_depthwise() {
            skipped.push((l.name.clone(), "depthwise".into()));
            continue;
        }
        if g.use_count(l.weight) > 1 || g.is_output(l.weight) {
            skipped.push((l.name.clone(), "weight shared with other nodes".into()));
            continue;
        }
        let norms = stats.norms.as_ref().and_then(|n| n.get(&l.input));
        let scores = unit_scores(data, &m, opts.block, norms.map(|v| v.as_slice()));
        out.push(Prunable {
            layer: l.clone(),
            matrix: m,
            weight: data.to_vec(),
            order: pruning_order(&m, opts.block, &scores),
            scores,
            gram: stats.grams.as_mut().and_then(|g| g.remove(&l.node)),
        });
    }
    (out, skipped)
}

/// `g` with each layer's weight replaced by its pruned form at `fractions`.
fn apply(g: &Graph, layers: &[Prunable], fractions: &[f64], opts: &PruneOptions) -> Result<Graph> {
    let mut out = g.clone();
    for (p, &f) in layers.iter().zip(fractions) {
        let data = p.pruned(opts.block, f);
        let t = Tensor::from_f32(p.shape(g), data)
            .map_err(|e| Error::Internal(format!("pruned weight of '{}': {e}", p.layer.name)))?;
        out.consts.insert(p.layer.weight, t.into());
    }
    Ok(out)
}

/// Per-layer fractions for overall sparsity `target` by one threshold on
/// the units' importance over every layer.
fn global_fractions(layers: &[Prunable], block: Block, target: f64) -> Vec<f64> {
    let total: usize = layers.iter().map(|p| p.weight.len()).sum();
    let mut units: Vec<(f32, usize, usize)> = layers
        .iter()
        .enumerate()
        .flat_map(|(li, p)| p.scores.iter().enumerate().map(move |(u, &s)| (s, li, u)))
        .collect();
    units.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let mut counts = vec![0usize; layers.len()];
    let want = (target * total as f64).round() as usize;
    let mut removed = 0usize;
    for (_, li, u) in units {
        if removed >= want {
            break;
        }
        counts[li] += 1;
        removed += layers[li].matrix.unit_elements(block.rows(), u).count();
    }
    layers
        .iter()
        .zip(counts)
        .map(|(p, c)| c as f64 / p.matrix.units(block.rows()).max(1) as f64)
        .collect()
}

/// Per-layer fractions for overall sparsity `target` from the measured
/// sensitivity curves: greedily the step with the least error per weight
/// removed, the last one cut to land on the target.
fn sensitivity_fractions(layers: &[Prunable], curves: &[Vec<(f64, f64)>], target: f64) -> Vec<f64> {
    let sizes: Vec<f64> = layers.iter().map(|p| p.weight.len() as f64).collect();
    let total: f64 = sizes.iter().sum();
    let mut want = target * total;
    let mut at = vec![0usize; layers.len()];
    let mut fractions = vec![0.0; layers.len()];
    while want > 0.5 {
        // (error per weight, layer) of each layer's next step.
        let next = (0..layers.len())
            .filter(|&i| at[i] + 1 < curves[i].len())
            .map(|i| {
                let (s0, e0) = curves[i][at[i]];
                let (s1, e1) = curves[i][at[i] + 1];
                let removed = (s1 - s0) * sizes[i];
                ((e1 - e0).max(0.0) / removed.max(1.0), i)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, i)) = next else { break };
        let (s0, _) = curves[i][at[i]];
        let (s1, _) = curves[i][at[i] + 1];
        let step = (s1 - s0) * sizes[i];
        if step >= want {
            fractions[i] = s0 + want / sizes[i];
            break;
        }
        want -= step;
        at[i] += 1;
        fractions[i] = s1;
    }
    fractions
}

/// What pruning measured of the layers' inputs on calibration data.
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Each input channel's norm, by value ([`input_norms`]), for
    /// [`Importance::Activation`].
    pub norms: Option<HashMap<ValueId, Vec<f32>>>,
    /// Each layer's input Gram matrix, by node
    /// ([`reconstruct::layer_grams`]), for [`Update::LeastSquares`].
    pub grams: Option<HashMap<NodeId, Gram>>,
}

/// Prunes the layers of `g` among `layers` as `opts` say, judged by
/// `eval`, with the calibration statistics `stats` that `opts` need.
pub fn prune(
    g: &Graph,
    layers: &[Layer],
    mut stats: LayerStats,
    opts: &PruneOptions,
    eval: &mut dyn Evaluator,
    progress: bool,
) -> Result<Pruned> {
    if opts.importance == Importance::Activation && stats.norms.is_none() {
        return Err(Error::Usage(
            "activation-aware pruning needs calibration data (--calib)".into(),
        ));
    }
    let updating = stats.grams.is_some();
    let (layers, skipped) = prunable(g, layers, opts, &mut stats);
    let not_updated = if updating {
        layers
            .iter()
            .filter(|p| p.gram.is_none())
            .map(|p| {
                let why = if !reconstruct::fits(&p.matrix) {
                    format!(
                        "too large to re-fit at every step ({} rows of {} weights)",
                        p.matrix.rows, p.matrix.cols
                    )
                } else {
                    "a grouped, auto-padded or non-2-D convolution".into()
                };
                (p.layer.name.clone(), why)
            })
            .collect()
    } else {
        Vec::new()
    };
    let total: usize = layers.iter().map(|p| p.weight.len()).sum();
    // Each layer's output error pruned alone, up the ladder.
    let mut curves: Vec<Vec<(f64, f64)>> = vec![vec![(0.0, 0.0)]; layers.len()];
    if opts.allocation == Allocation::Sensitivity {
        let pb = data::progress(progress, layers.len() * LADDER.len(), "sensitivity");
        for (i, p) in layers.iter().enumerate() {
            for &s in &LADDER {
                let e = eval.error(&apply(g, std::slice::from_ref(p), &[s], opts)?)?;
                curves[i].push((s, e));
                pb.inc(1);
                if e > LADDER_STOP_ERROR {
                    pb.inc((LADDER.len() - curves[i].len() + 1) as u64);
                    break;
                }
            }
            // Errors are not always monotone in the sparsity (noise on few
            // samples): the allocation needs a curve that never falls.
            for j in 1..curves[i].len() {
                curves[i][j].1 = curves[i][j].1.max(curves[i][j - 1].1);
            }
        }
        pb.finish_and_clear();
    }
    let reachable = match opts.allocation {
        Allocation::Sensitivity => {
            let top: f64 = layers
                .iter()
                .zip(&curves)
                .map(|(p, c)| c.last().map_or(0.0, |l| l.0) * p.weight.len() as f64)
                .sum();
            top / total.max(1) as f64
        }
        _ => MAX_LAYER_SPARSITY,
    };
    let fractions = |s: f64| -> Vec<f64> {
        match opts.allocation {
            Allocation::Uniform => vec![s; layers.len()],
            Allocation::Global => global_fractions(&layers, opts.block, s),
            Allocation::Sensitivity => sensitivity_fractions(&layers, &curves, s),
        }
    };
    let mut steps: Vec<SearchStep> = Vec::new();
    let mut judge = |s: f64, steps: &mut Vec<SearchStep>| -> Result<(Graph, bool)> {
        let pruned = apply(g, &layers, &fractions(s), opts)?;
        let verdict = eval.verdict(&pruned)?;
        let holds = verdict.holds;
        steps.push(SearchStep {
            sparsity: overall_sparsity(&pruned, &layers),
            verdict,
        });
        Ok((pruned, holds))
    };
    let pb = data::progress(progress, SEARCH_STEPS + 1, "prune search");
    let hi = match opts.target {
        Target::Sparsity(s) => s.min(reachable),
        Target::Max => reachable,
    };
    let (first, holds) = judge(hi, &mut steps)?;
    pb.inc(1);
    let graph = if holds {
        first
    } else {
        // The highest sparsity below `hi` that holds the budget.
        let (mut lo, mut hi) = (0.0, hi);
        let mut best = g.clone();
        for _ in 0..SEARCH_STEPS {
            let mid = 0.5 * (lo + hi);
            let (pruned, holds) = judge(mid, &mut steps)?;
            if holds {
                lo = mid;
                best = pruned;
            } else {
                hi = mid;
            }
            pb.inc(1);
        }
        best
    };
    pb.finish_and_clear();
    let layers_out = layers
        .iter()
        .zip(curves)
        .map(|(p, sensitivity)| {
            let zeros = graph
                .const_value(p.layer.weight)
                .map_or(0, |t| t.zero_count());
            LayerPruning {
                name: p.layer.name.clone(),
                elements: p.weight.len(),
                zeros,
                sensitivity: sensitivity.into_iter().skip(1).collect(),
                updated: p.gram.is_some(),
            }
        })
        .collect();
    let sparsity = overall_sparsity(&graph, &layers);
    Ok(Pruned {
        graph,
        layers: layers_out,
        sparsity,
        requested: opts.target,
        steps,
        skipped,
        update: if updating {
            Update::LeastSquares
        } else {
            Update::None
        },
        not_updated,
    })
}

/// Share of the prunable layers' weights that are zero in `g`.
fn overall_sparsity(g: &Graph, layers: &[Prunable]) -> f64 {
    let (mut zeros, mut total) = (0usize, 0usize);
    for p in layers {
        if let Some(w) = g.const_value(p.layer.weight) {
            zeros += w.zero_count();
            total += w.numel();
        }
    }
    zeros as f64 / total.max(1) as f64
}

/// The L2 norm of each input channel of every layer's activation input
/// over `data` (channel axis 1 of a convolution's input, the last axis of
/// a product's), by value.
pub fn input_norms(
    g: &Graph,
    layers: &[Layer],
    data: &Dataset,
    meas: &Measurer,
    progress: bool,
) -> Result<HashMap<ValueId, Vec<f32>>> {
    let mut observed: Vec<(ValueId, bool)> = layers
        .iter()
        .map(|l| (l.input, l.kind == super::quantize::LayerKind::Conv))
        .collect();
    observed.sort();
    observed.dedup_by_key(|o| o.0);
    let values: Vec<ValueId> = observed.iter().map(|o| o.0).collect();
    let mut sums: Vec<Vec<f64>> = vec![Vec::new(); observed.len()];
    let pb = data::progress(progress, data.samples, "input norms");
    data::observe(g, &values, data, meas, &pb, |j, t| {
        let (conv, sum) = (observed[j].1, &mut sums[j]);
        let (Some(v), shape) = (t.as_f32(), t.shape()) else {
            return;
        };
        let channels = if conv {
            shape.get(1).copied().unwrap_or(1)
        } else {
            shape.last().copied().unwrap_or(1)
        }
        .max(1);
        // Elements per channel run (conv: a plane; product: 1).
        let inner = if conv {
            shape.get(2..).map_or(1, |s| s.iter().product::<usize>())
        } else {
            1
        }
        .max(1);
        sum.resize(channels, 0.0);
        for (j, x) in v.iter().enumerate() {
            sum[(j / inner) % channels] += (*x as f64) * (*x as f64);
        }
    })?;
    pb.finish_and_clear();
    Ok(observed
        .iter()
        .zip(sums)
        .map(|(&(v, _), s)| (v, s.into_iter().map(|x| x.sqrt() as f32).collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ConvAttrs, Op};

    fn conv_op(group: usize) -> Op {
        Op::Conv(ConvAttrs {
            kernel_shape: Vec::new(),
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: crate::ir::AutoPad::NotSet,
            group,
        })
    }

    #[test]
    fn matrices_index_each_layout() {
        // Conv [M=4, C=2, 1, 3]: row r, column c at r*6 + c.
        let m = WeightMatrix::of(&conv_op(1), &[4, 2, 1, 3]).unwrap();
        assert_eq!((m.rows, m.cols), (4, 6));
        assert_eq!(m.index(2, 5), 17);
        assert_eq!(m.input_channel(2, 4), 1);
        // Grouped: 2 groups of 2 outputs over 1 channel each.
        let m = WeightMatrix::of(&conv_op(2), &[4, 1, 3, 3]).unwrap();
        assert_eq!(m.input_channel(3, 8), 1);
        assert_eq!(m.input_channel(1, 8), 0);
        // MatMul [K=3, N=5]: output row n, reduction column k at k*5 + n.
        let m = WeightMatrix::of(&Op::MatMul, &[3, 5]).unwrap();
        assert_eq!((m.rows, m.cols), (5, 3));
        assert_eq!(m.index(4, 2), 14);
        assert_eq!(m.input_channel(4, 2), 2);
        // Gemm with transB: [N=5, K=3].
        let gemm = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        };
        let m = WeightMatrix::of(&gemm, &[5, 3]).unwrap();
        assert_eq!(m.index(4, 2), 14);
        assert_eq!(m.index(1, 0), 3);
    }

    /// `w` pruned to `fraction` in the order `scores` give.
    fn pruned(
        w: &[f32],
        m: &WeightMatrix,
        block: Block,
        scores: &[f32],
        fraction: f64,
    ) -> Vec<f32> {
        prune_weight(w, m, block, &pruning_order(m, block, scores), fraction)
    }

    #[test]
    fn magnitude_pruning_zeroes_the_smallest() {
        let w: Vec<f32> = vec![0.5, -0.1, 0.3, -0.9, 0.05, 0.7, -0.2, 0.0];
        let m = WeightMatrix::of(&Op::MatMul, &[4, 2]).unwrap();
        let scores = unit_scores(&w, &m, Block::Single, None);
        let order = pruning_order(&m, Block::Single, &scores);
        let p = prune_weight(&w, &m, Block::Single, &order, 0.5);
        assert_eq!(p, vec![0.5, 0.0, 0.3, -0.9, 0.0, 0.7, 0.0, 0.0]);
        // Nothing and everything.
        assert_eq!(prune_weight(&w, &m, Block::Single, &order, 0.0), w);
        assert!(prune_weight(&w, &m, Block::Single, &order, 1.0)
            .iter()
            .all(|&x| x == 0.0));
    }

    #[test]
    fn blocks_of_four_rows_go_together() {
        // Conv [M=6, C=1, 1, 2]: units are rows 0-3 and rows 4-5 at each
        // of the 2 columns.
        let w: Vec<f32> = vec![1.0, 0.1, 1.0, 0.1, 1.0, 0.1, 1.0, 0.1, 0.2, 3.0, 0.2, 3.0];
        let m = WeightMatrix::of(&conv_op(1), &[6, 1, 1, 2]).unwrap();
        assert_eq!(m.units(Block::Rows4.rows()), 4);
        let scores = unit_scores(&w, &m, Block::Rows4, None);
        let p = pruned(&w, &m, Block::Rows4, &scores, 0.5);
        // Column 1 of rows 0-3 (norm 0.2) and column 0 of rows 4-5 (0.28).
        assert_eq!(
            p,
            vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 3.0]
        );
    }

    #[test]
    fn activation_importance_scales_by_the_input_norm() {
        // MatMul [K=2, N=2]: input channel 1 is 100x louder, so its small
        // weights outrank channel 0's large ones.
        let w: Vec<f32> = vec![0.5, -0.6, 0.01, 0.02];
        let m = WeightMatrix::of(&Op::MatMul, &[2, 2]).unwrap();
        let scores = unit_scores(&w, &m, Block::Single, Some(&[1.0, 100.0]));
        let p = pruned(&w, &m, Block::Single, &scores, 0.5);
        assert_eq!(p, vec![0.0, 0.0, 0.01, 0.02]);
    }

    #[test]
    fn pruning_is_deterministic_on_ties_and_keeps_nan() {
        let w = vec![1.0f32; 8];
        let m = WeightMatrix::of(&Op::MatMul, &[8, 1]).unwrap();
        let scores = unit_scores(&w, &m, Block::Single, None);
        let p = pruned(&w, &m, Block::Single, &scores, 0.5);
        assert_eq!(p, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        let w = vec![f32::NAN, 0.1, 0.2, 0.3];
        let m = WeightMatrix::of(&Op::MatMul, &[4, 1]).unwrap();
        let scores = unit_scores(&w, &m, Block::Single, None);
        let p = pruned(&w, &m, Block::Single, &scores, 0.75);
        assert!(p[0].is_nan());
    }

    fn prunable_of(weights: &[Vec<f32>]) -> Vec<Prunable> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let m = WeightMatrix::of(&Op::MatMul, &[w.len(), 1]).unwrap();
                Prunable {
                    layer: Layer {
                        node: crate::ir::NodeId(i as u32),
                        name: format!("l{i}"),
                        kind: super::super::quantize::LayerKind::MatMul,
                        input: ValueId(0),
                        weight: ValueId(i as u32 + 1),
                        weight_elements: w.len(),
                    },
                    matrix: m,
                    order: Vec::new(),
                    scores: unit_scores(w, &m, Block::Single, None),
                    weight: w.clone(),
                    gram: None,
                }
            })
            .collect()
    }

    #[test]
    fn sensitivity_allocation_spends_error_where_it_is_cheap() {
        let layers = prunable_of(&[vec![1.0; 100], vec![1.0; 100]]);
        // Layer 0 is 10x as sensitive as layer 1.
        let curve = |k: f64| -> Vec<(f64, f64)> {
            std::iter::once((0.0, 0.0))
                .chain(LADDER.iter().map(|&s| (s, k * s * s)))
                .collect()
        };
        let curves = vec![curve(10.0), curve(1.0)];
        let f = sensitivity_fractions(&layers, &curves, 0.5);
        assert!(f[1] > f[0], "{f:?}");
        // The target is met exactly.
        assert!(((f[0] + f[1]) / 2.0 - 0.5).abs() < 1e-9, "{f:?}");
        // More than the curves reach: every layer at its top.
        let f = sensitivity_fractions(&layers, &curves, 1.0);
        assert_eq!(f, vec![0.98, 0.98]);
    }

    #[test]
    fn global_threshold_prunes_the_smaller_layer_more() {
        let layers = prunable_of(&[vec![0.1; 50], (1..=50).map(|i| i as f32).collect()]);
        let f = global_fractions(&layers, Block::Single, 0.5);
        assert_eq!(f, vec![1.0, 0.0]);
    }
}

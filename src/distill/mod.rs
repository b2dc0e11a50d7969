//! `mlc distill`: knowledge distillation of a compressed student from its
//! teacher, trained on the CPU with candle.
//!
//! The student (an mlc graph, after `O2` and any compression rewrites) is
//! lowered to a candle forward pass ([`lower`]) whose layer weights and
//! biases are variables; what does not depend on them (a transformer's
//! mask arithmetic and embedding lookups, from integer inputs) is computed
//! per batch by mlc's reference kernels outside autograd. The teacher runs
//! once per sample on mlc's own runtime and its outputs are cached (within
//! the memory budget). Each mini-batch (a seeded shuffle) is scored per
//! output ([`Objective`]): class scores (rank-2 `[batch, classes]`) by the
//! KL divergence of the temperature-softened scores × T², plus
//! cross-entropy with the labels when asked; an embedding (rank-2 rows of
//! unit length with signed entries, as a sentence encoder's L2-normalized
//! output) by 1 − its cosine similarity with the teacher's, averaged over
//! the batch; other outputs by their mean squared error. AdamW steps with
//! a cosine learning-rate schedule. Weights that were exactly zero (pruned)
//! are set back to zero after every step, so sparsity survives. After every
//! epoch the student is scored on held-out data: top-1 agreement with the
//! teacher for class scores, the mean cosine similarity with the teacher's
//! outputs otherwise (top-1 agreement means nothing for an embedding), then
//! the distillation loss; training stops after `patience` epochs without
//! improvement and the best weights are written back into the graph's
//! constants. The memory a training step holds (values kept for the
//! backward pass, gradients, AdamW's state) is checked against the budget
//! before training starts.
//!
//! An int8 student (QConv / QMatMul from `mlc compress --int8`) is refused
//! unless [`DistillOptions::qat`] (`--qat`) asks for quantization-aware
//! training: its products are then fake-quantized in the forward pass with
//! straight-through gradients, and the trained weights are requantized
//! into the same int8 nodes ([`qat`]). The before/after figures are always
//! those of the written graph on mlc's runtime (its int8 kernels).
//!
//! Same seed, same data, same machine and thread count: same weights, bit
//! for bit. Nothing draws random numbers but the seeded shuffle; candle's
//! CPU matrix products (the `gemm` crate, under its convolutions too) split
//! the work over output tiles, so each element is summed in one order;
//! gradients accumulate in the fixed order of the backward pass. A test
//! writes the bundle twice and compares the bytes (on 2 threads here); the
//! thread count candle uses can be pinned with `RAYON_NUM_THREADS`.

pub mod lower;
pub use lower::qat;

use std::time::Instant;

use candle_core::{Device, Tensor as CTensor, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::compress::data::{self, Dataset};
use crate::ir::{Dim, Graph};
use crate::kernels::cpu::CpuCtx;
use crate::measure::Measurer;
use crate::rng::SplitMix64;
use crate::{Error, Result, Tensor};
use lower::{cerr, input_to_candle, Lowered};

/// What the student's outputs are trained to match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Per output, from its rank and the teacher's values: KL for class
    /// scores, 1 − cosine for embeddings (rank-2 rows of unit length with
    /// signed entries), MSE for the rest.
    #[default]
    Auto,
    /// KL on softened class scores for rank-2 outputs, MSE for others (what
    /// `Auto` does when no output is an embedding).
    Kl,
    /// Mean squared error for every output.
    Mse,
    /// 1 − cosine similarity per sample for every output.
    Cosine,
}

/// The loss one output is trained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// KL of temperature-softened class scores × T².
    Kl,
    Mse,
    /// 1 − cosine similarity, per sample.
    Cosine,
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Loss::Kl => "KL",
            Loss::Mse => "MSE",
            Loss::Cosine => "1 - cosine",
        }
    }
}

/// Whether every row (last axis) of the teacher's outputs has unit L2 norm
/// and some entry is negative: an L2-normalized embedding, not class scores
/// (probabilities are never negative; logits are not normalized).
fn normalized_embedding(outs: &[&Tensor]) -> bool {
    let mut negative = false;
    for t in outs {
        let v = t.to_f64_vec();
        let c = t.shape().last().copied().unwrap_or(0);
        if c == 0 || v.is_empty() {
            return false;
        }
        for row in v.chunks(c) {
            let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            if (n - 1.0).abs() > 1e-3 {
                return false;
            }
            negative |= row.iter().any(|&x| x < 0.0);
        }
    }
    negative
}

/// The loss of each output: `rank` is its rank in the graph, `teacher` its
/// value on each training sample.
fn losses(objective: Objective, outputs: &[(usize, Vec<&Tensor>)]) -> Vec<Loss> {
    outputs
        .iter()
        .map(|(rank, teacher)| match objective {
            Objective::Mse => Loss::Mse,
            Objective::Cosine => Loss::Cosine,
            Objective::Kl if *rank == 2 => Loss::Kl,
            Objective::Auto if *rank == 2 => {
                if normalized_embedding(teacher) {
                    Loss::Cosine
                } else {
                    Loss::Kl
                }
            }
            Objective::Kl | Objective::Auto => Loss::Mse,
        })
        .collect()
}

/// How [`distill`] trains.
#[derive(Clone, Debug, PartialEq)]
pub struct DistillOptions {
    /// Passes over the training data (at most).
    pub epochs: usize,
    /// Peak learning rate (the cosine schedule starts here and ends at 0).
    pub lr: f64,
    /// Samples per step (1 when a model input has no batch axis).
    pub batch: usize,
    /// Softens both models' class scores for the KL term (scaled by T²).
    pub temperature: f64,
    /// Add cross-entropy with the training data's labels.
    pub labels: bool,
    /// Seeds the shuffle of the training samples.
    pub seed: u64,
    /// Stop after this many epochs without a better held-out score (0:
    /// never stop early).
    pub patience: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Threads for the teacher and the evaluation runs (0: all cores).
    pub threads: usize,
    /// Quantization-aware training of an int8 student: its QConv and
    /// QMatMul layers train on float copies of their weights, fake-quantized
    /// in the forward pass, and are written back as int8 ([`qat`]). Without
    /// it an int8 student is refused; with it, a student without int8
    /// layers is refused.
    pub qat: bool,
    /// What the outputs are trained to match.
    pub objective: Objective,
}

impl Default for DistillOptions {
    /// 30 epochs at lr 3e-3 (AdamW, cosine), batches of 32, T = 4, no
    /// labels, seed 0, patience 5, weight decay 1e-4, objective per output,
    /// no QAT.
    fn default() -> DistillOptions {
        DistillOptions {
            epochs: 30,
            lr: 3e-3,
            batch: 32,
            temperature: 4.0,
            labels: false,
            seed: 0,
            patience: 5,
            weight_decay: 1e-4,
            threads: 0,
            qat: false,
            objective: Objective::Auto,
        }
    }
}

impl DistillOptions {
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Usage(format!("distill: {what}")));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr must be a positive number");
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1");
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("--temperature must be a positive number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be a non-negative number");
        }
        Ok(())
    }
}

/// The student's quality on the evaluation data, measured on mlc's runtime.
#[derive(Clone, Debug, Serialize)]
pub struct Quality {
    /// Share of samples whose top-1 class is the teacher's.
    pub top1_agreement: f64,
    /// Top-1 accuracy against the labels (when the data has labels).
    pub accuracy: Option<f64>,
    /// Cosine similarity with the teacher's outputs (all outputs of a
    /// sample flattened), averaged over samples.
    pub cosine_similarity: f64,
    /// The lowest cosine similarity of a sample.
    pub min_cosine_similarity: f64,
}

/// What [`distill`] did.
#[derive(Clone, Debug, Serialize)]
pub struct DistillReport {
    pub student: String,
    pub teacher: String,
    pub data: String,
    pub train_samples: usize,
    /// Where before/after are measured: the held-out data, else the
    /// training data.
    pub evaluated_on: String,
    pub eval_samples: usize,
    /// Whether `evaluated_on` is held-out data (not the training data).
    pub held_out: bool,
    pub teacher_accuracy: Option<f64>,
    pub epochs_requested: usize,
    pub epochs_run: usize,
    /// The epoch whose weights were kept (0: none beat the student as given).
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub batch: usize,
    pub steps: usize,
    pub lr: f64,
    pub temperature: f64,
    pub labels: bool,
    pub seed: u64,
    /// Quantization-aware training (`--qat`).
    pub qat: bool,
    /// Int8 layers trained with fake quantization and written back as int8.
    pub int8_layers: usize,
    /// The loss of each output.
    pub losses: Vec<Loss>,
    /// What picks the best epoch (and early stopping watches): "top-1
    /// agreement" when the first output is class scores, else "mean cosine".
    pub selected_by: String,
    /// Mean training loss of each epoch.
    pub train_loss: Vec<f64>,
    /// Distillation loss on the evaluation data after each epoch.
    pub eval_loss: Vec<f64>,
    /// Top-1 agreement with the teacher on the evaluation data after each
    /// epoch.
    pub eval_agreement: Vec<f64>,
    /// Mean cosine similarity with the teacher on the evaluation data after
    /// each epoch.
    pub eval_cosine: Vec<f64>,
    /// Lowest per-sample cosine similarity after each epoch.
    pub eval_min_cosine: Vec<f64>,
    pub before: Quality,
    pub after: Quality,
    /// Elements of the trained weights and biases.
    pub trainable_params: usize,
    /// Pruned (exactly zero) weights, kept zero (for an int8 weight, its
    /// stored zeros).
    pub masked_zeros: usize,
    /// Exact zeros of the trained weights in the result (as stored: an int8
    /// weight's zeros after requantization).
    pub zeros_after: usize,
    pub seconds: f64,
    /// The file written (filled in by the caller that writes it).
    pub output: String,
    pub bytes: u64,
}

impl DistillReport {
    /// One line per epoch: training loss, then the loss, top-1 agreement
    /// and cosine with the teacher on the evaluation data (`mlc distill -v`).
    pub fn epochs(&self) -> String {
        let mut s =
            String::from("epoch  train loss  eval loss  agreement  cosine mean  cosine min\n");
        for (i, loss) in self.train_loss.iter().enumerate() {
            let at = |v: &[f64]| v.get(i).copied().unwrap_or(f64::NAN);
            s += &format!(
                "{:>5}  {:>10.5}  {:>9.5}  {:>8.2}%  {:>11.5}  {:>10.5}{}\n",
                i + 1,
                loss,
                at(&self.eval_loss),
                100.0 * at(&self.eval_agreement),
                at(&self.eval_cosine),
                at(&self.eval_min_cosine),
                if i + 1 == self.best_epoch {
                    "  (kept)"
                } else {
                    ""
                }
            );
        }
        s
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let pct = |x: f64| format!("{:.2}%", 100.0 * x);
        let mut s = format!(
            "distilled {} from {} on {} ({} samples): {} of {} epochs (best {}{}), batch {}, {} steps, {:.1} s\n",
            self.student,
            self.teacher,
            self.data,
            self.train_samples,
            self.epochs_run,
            self.epochs_requested,
            self.best_epoch,
            if self.stopped_early { ", stopped early" } else { "" },
            self.batch,
            self.steps,
            self.seconds
        );
        let losses: Vec<&str> = self.losses.iter().map(|l| l.name()).collect();
        s += &format!(
            "trained {} weights on {}; {} pruned zeros kept ({} zeros after)\n",
            self.trainable_params,
            losses.join(", "),
            self.masked_zeros,
            self.zeros_after
        );
        if self.qat {
            s += &format!(
                "quantization-aware: {} int8 layers fake-quantized in training, written back as int8\n",
                self.int8_layers
            );
        }
        let what = if self.held_out {
            "held-out"
        } else {
            "training (no held-out data)"
        };
        let cosine = format!(
            "cosine mean {:.5} -> {:.5}, min {:.5} -> {:.5}",
            self.before.cosine_similarity,
            self.after.cosine_similarity,
            self.before.min_cosine_similarity,
            self.after.min_cosine_similarity
        );
        if self.losses.first() == Some(&Loss::Kl) {
            s += &format!(
                "on {} {} ({} samples): agreement with the teacher {} -> {}, {}\n",
                what,
                self.evaluated_on,
                self.eval_samples,
                pct(self.before.top1_agreement),
                pct(self.after.top1_agreement),
                cosine
            );
        } else {
            s += &format!(
                "on {} {} ({} samples): {} with the teacher\n",
                what, self.evaluated_on, self.eval_samples, cosine
            );
        }
        if let (Some(b), Some(a)) = (self.before.accuracy, self.after.accuracy) {
            s += &format!(
                "top-1 accuracy: {} -> {} ({:+.2} points; teacher {})\n",
                pct(b),
                pct(a),
                100.0 * (a - b),
                self.teacher_accuracy.map_or("-".into(), pct)
            );
        }
        if !self.output.is_empty() {
            s += &format!(
                "wrote {} ({})\n",
                self.output,
                crate::limits::human_bytes(self.bytes)
            );
        }
        s
    }
}

/// The distilled student and what happened.
pub struct Distilled {
    pub graph: Graph,
    pub report: DistillReport,
}

/// Checks that student and teacher take the same inputs and give outputs
/// of the same count, types and shapes.
pub fn check_compatible(student: &Graph, teacher: &Graph) -> Result<()> {
    let sig = |g: &Graph, ids: &[crate::ir::ValueId], names: bool| -> Vec<String> {
        ids.iter()
            .map(|&i| {
                if names {
                    format!("{}: {}", g.value(i).name, g.ty(i))
                } else {
                    g.ty(i).to_string()
                }
            })
            .collect()
    };
    let (si, ti) = (
        sig(student, &student.inputs, true),
        sig(teacher, &teacher.inputs, true),
    );
    if si != ti {
        return Err(Error::Usage(format!(
            "distill: the student's inputs ({}) differ from the teacher's ({})",
            si.join(", "),
            ti.join(", ")
        )));
    }
    let (so, to) = (
        sig(student, &student.outputs, false),
        sig(teacher, &teacher.outputs, false),
    );
    if so != to {
        return Err(Error::Usage(format!(
            "distill: the student's outputs ({}) differ from the teacher's ({})",
            so.join(", "),
            to.join(", ")
        )));
    }
    Ok(())
}

/// Runs `g` on every sample of `data` on mlc's runtime.
fn run_all(
    g: &Graph,
    data: &Dataset,
    threads: usize,
    pb: &ProgressBar,
) -> Result<Vec<Vec<Tensor>>> {
    let meas = Measurer::new(CpuCtx::new(threads)?);
    let first = data.sample(0)?;
    let shapes: Vec<Vec<usize>> = first.iter().map(|t| t.shape().to_vec()).collect();
    let mut plan = meas.plan(g, &shapes)?;
    data::run_plan(&mut plan, data, pb)
}

/// One data split on the device: inputs `[N, ..]`, teacher outputs
/// `[N, ..]`, labels, and the teacher's top-1 of each sample.
struct Split {
    inputs: Vec<CTensor>,
    targets: Vec<CTensor>,
    labels: Option<CTensor>,
    teacher_top1: Vec<u32>,
    samples: usize,
}

/// Stacks per-sample tensors of one shape into `[N, ..shape]`.
fn stack(per: &[&Tensor]) -> Result<CTensor> {
    let shape = per.first().map(|t| t.shape().to_vec()).unwrap_or_default();
    let mut v = Vec::with_capacity(per.len() * shape.iter().product::<usize>());
    for t in per {
        if t.shape() != shape.as_slice() {
            return Err(Error::Usage(format!(
                "distill: an output's shape changes between samples ({:?} and {:?})",
                shape,
                t.shape()
            )));
        }
        v.extend(t.to_f32_vec());
    }
    let mut full = vec![per.len()];
    full.extend(shape);
    CTensor::from_vec(v, full, &Device::Cpu).map_err(cerr)
}

fn argmax_rows(t: &CTensor) -> Result<Vec<u32>> {
    let c = t.dims().last().copied().unwrap_or(1).max(1);
    let v = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(cerr)?;
    // The first maximum, as data::agreement takes it.
    Ok(v.chunks(c)
        .map(|row| {
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect())
}

impl Split {
    fn new(data: &Dataset, teacher_out: &[Vec<Tensor>], want_labels: bool) -> Result<Split> {
        let inputs = data
            .arrays
            .iter()
            .map(input_to_candle)
            .collect::<Result<Vec<_>>>()?;
        // Without a sample axis each sample is one row of the batch axis.
        let inputs = if data.extra_axis {
            inputs
        } else {
            inputs
                .into_iter()
                .map(|t| {
                    let mut s = t.dims().to_vec();
                    s.insert(1, 1);
                    t.reshape(s).map_err(cerr)
                })
                .collect::<Result<_>>()?
        };
        let n_out = teacher_out.first().map_or(0, Vec::len);
        let targets = (0..n_out)
            .map(|k| stack(&teacher_out.iter().map(|o| &o[k]).collect::<Vec<_>>()))
            .collect::<Result<Vec<_>>>()?;
        let teacher_top1 = match targets.first() {
            Some(t) => argmax_rows(t)?,
            None => Vec::new(),
        };
        let labels = match (&data.labels, want_labels) {
            (Some(l), true) => {
                let classes = targets
                    .first()
                    .and_then(|t| t.dims().last().copied())
                    .unwrap_or(0);
                let v = l
                    .iter()
                    .map(|&x| {
                        if x >= 0 && (x as usize) < classes {
                            Ok(x as u32)
                        } else {
                            Err(Error::Usage(format!(
                                "distill: {}: label {x} is not a class of the {classes} outputs",
                                data.source
                            )))
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?;
                Some(CTensor::from_vec(v, l.len(), &Device::Cpu).map_err(cerr)?)
            }
            _ => None,
        };
        Ok(Split {
            inputs,
            targets,
            labels,
            teacher_top1,
            samples: data.samples,
        })
    }

    /// Rows `idx` of a `[N, ..]` tensor with the first two axes merged
    /// (each sample's own leading axis becomes the batch axis).
    fn take(t: &CTensor, idx: &CTensor) -> Result<CTensor> {
        let picked = t.index_select(idx, 0).map_err(cerr)?;
        let d = picked.dims();
        let mut s = vec![d[0] * d.get(1).copied().unwrap_or(1)];
        s.extend_from_slice(d.get(2..).unwrap_or(&[]));
        if d.len() < 2 {
            return Ok(picked);
        }
        picked.reshape(s).map_err(cerr)
    }

    fn batch(&self, rows: &[u32]) -> Result<(Vec<CTensor>, Vec<CTensor>, Option<CTensor>)> {
        let idx = CTensor::from_vec(rows.to_vec(), rows.len(), &Device::Cpu).map_err(cerr)?;
        let x = self
            .inputs
            .iter()
            .map(|t| Split::take(t, &idx))
            .collect::<Result<_>>()?;
        let y = self
            .targets
            .iter()
            .map(|t| Split::take(t, &idx))
            .collect::<Result<_>>()?;
        let l = match &self.labels {
            Some(l) => Some(l.index_select(&idx, 0).map_err(cerr)?),
            None => None,
        };
        Ok((x, y, l))
    }
}

/// 1 − the cosine similarity of each sample's values (the first axis
/// indexes samples), averaged.
fn cosine_loss(s: &CTensor, q: &CTensor) -> candle_core::Result<CTensor> {
    let rows = s.dims().first().copied().unwrap_or(1).max(1);
    let (s, q) = (s.reshape((rows, ()))?, q.reshape((rows, ()))?);
    let dot = s.mul(&q)?.sum(1)?;
    // The floor keeps a zero output's gradient finite.
    let ns = s.sqr()?.sum(1)?.sqrt()?.maximum(1e-12f32)?;
    let nq = q.sqr()?.sum(1)?.sqrt()?.maximum(1e-12f32)?;
    dot.div(&ns.mul(&nq)?)?.mean_all()?.affine(-1.0, 1.0)
}

/// The distillation loss of one batch: each output's [`Loss`], plus
/// cross-entropy on the first output when it is class scores with labels.
fn loss(
    kinds: &[Loss],
    student: &[CTensor],
    teacher: &[CTensor],
    labels: Option<&CTensor>,
    t: f64,
) -> candle_core::Result<CTensor> {
    let mut total: Option<CTensor> = None;
    for (k, (s, q)) in student.iter().zip(teacher).enumerate() {
        let kind = kinds.get(k).copied().unwrap_or(Loss::Mse);
        let term = if kind == Loss::Cosine {
            cosine_loss(s, q)?
        } else if kind == Loss::Kl && s.rank() == 2 {
            let rows = s.dims()[0] as f64;
            let ls = candle_nn::ops::log_softmax(&s.affine(1.0 / t, 0.0)?, D::Minus1)?;
            let lt = candle_nn::ops::log_softmax(&q.affine(1.0 / t, 0.0)?, D::Minus1)?;
            let kl = lt.exp()?.mul(&(lt - &ls)?)?.sum_all()?;
            let mut term = kl.affine(t * t / rows, 0.0)?;
            if let (0, Some(l)) = (k, labels) {
                term = (term + candle_nn::loss::cross_entropy(s, l)?)?;
            }
            term
        } else {
            (s - q)?.sqr()?.mean_all()?
        };
        total = Some(match total {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    total.ok_or_else(|| candle_core::Error::Msg("a graph without outputs".into()))
}

/// The student's score on a split.
#[derive(Clone, Copy, Debug)]
struct Score {
    /// Top-1 agreement with the teacher (first output).
    agreement: f64,
    /// Mean distillation loss.
    loss: f64,
    /// Mean and lowest per-sample cosine similarity with the teacher (all
    /// outputs of a sample flattened).
    cosine: f64,
    min_cosine: f64,
}

impl Score {
    /// Whether `self` beats `best`: on top-1 agreement for class scores, on
    /// mean cosine otherwise, then on the loss.
    fn beats(&self, best: &Score, by_agreement: bool) -> bool {
        let (a, b) = if by_agreement {
            (self.agreement, best.agreement)
        } else {
            (self.cosine, best.cosine)
        };
        a > b || (a == b && self.loss < best.loss)
    }
}

/// Per-sample cosine similarity of `got` with `want` (`[samples * rows,
/// ..]` each, `samples` samples), added to `dots` and the squared norms.
fn cosine_parts(
    got: &CTensor,
    want: &CTensor,
    samples: usize,
    parts: &mut [(f64, f64, f64)],
) -> Result<()> {
    let flat = |t: &CTensor| {
        t.flatten_all()
            .and_then(|f| f.to_dtype(candle_core::DType::F32))
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(cerr)
    };
    let (g, w) = (flat(got)?, flat(want)?);
    let per = g.len() / samples.max(1);
    for (j, p) in parts.iter_mut().enumerate().take(samples) {
        let range = j * per..(j + 1) * per;
        for (&x, &y) in g[range.clone()].iter().zip(&w[range]) {
            let (x, y) = (x as f64, y as f64);
            p.0 += x * y;
            p.1 += x * x;
            p.2 += y * y;
        }
    }
    Ok(())
}

/// Held-out score of the lowered student.
fn evaluate(net: &Lowered, split: &Split, kinds: &[Loss], batch: usize, t: f64) -> Result<Score> {
    let (mut same, mut rows, mut loss_sum) = (0usize, 0usize, 0.0f64);
    let (mut cos_sum, mut cos_min) = (0.0f64, f64::INFINITY);
    let all: Vec<u32> = (0..split.samples as u32).collect();
    for chunk in all.chunks(batch.max(1)) {
        let (x, y, _) = split.batch(chunk)?;
        let out: Vec<CTensor> = net.forward(&x)?.into_iter().map(|o| o.detach()).collect();
        let l = loss(kinds, &out, &y, None, t)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(cerr)?;
        loss_sum += l as f64 * chunk.len() as f64;
        // As data::agreement computes it from the runtime's outputs.
        let mut parts = vec![(0.0, 0.0, 0.0); chunk.len()];
        for (o, w) in out.iter().zip(&y) {
            cosine_parts(o, w, chunk.len(), &mut parts)?;
        }
        for (dot, ng, nw) in parts {
            let cos = crate::compress::data::cosine_from_sums(dot, ng, nw);
            cos_sum += cos;
            cos_min = cos_min.min(cos);
        }
        if let Some(o) = out.first() {
            let got = argmax_rows(o)?;
            let per = got.len() / chunk.len().max(1);
            for (j, &r) in chunk.iter().enumerate() {
                for c in 0..per {
                    rows += 1;
                    let want = split.teacher_top1[r as usize * per + c];
                    if got[j * per + c] == want {
                        same += 1;
                    }
                }
            }
        }
    }
    let n = split.samples.max(1) as f64;
    Ok(Score {
        agreement: if rows == 0 {
            1.0
        } else {
            same as f64 / rows as f64
        },
        loss: loss_sum / n,
        cosine: cos_sum / n,
        min_cosine: if cos_min.is_finite() { cos_min } else { 1.0 },
    })
}

fn quality(teacher: &[Vec<Tensor>], got: &[Vec<Tensor>], labels: Option<&[i64]>) -> Quality {
    let a = data::agreement(teacher, got);
    Quality {
        top1_agreement: a.top1_agreement,
        accuracy: labels.map(|l| data::accuracy(got, l)),
        cosine_similarity: a.cosine_similarity,
        min_cosine_similarity: a.min_cosine_similarity,
    }
}

/// Bytes the teacher's cached outputs take for `samples` samples.
fn output_bytes(outs: &[Tensor]) -> u64 {
    outs.iter().map(|t| t.size_bytes() as u64).sum()
}

/// Distills `student` from `teacher` on `train` (see the module docs);
/// `held_out` scores each epoch for early stopping and the report (the
/// training data does, without it).
pub fn distill(
    student: &Graph,
    teacher: &Graph,
    train: &Dataset,
    held_out: Option<&Dataset>,
    opts: &DistillOptions,
    progress: bool,
) -> Result<Distilled> {
    let start = Instant::now();
    opts.check()?;
    check_compatible(student, teacher)?;
    if opts.labels && train.labels.is_none() {
        return Err(Error::Usage(format!(
            "distill: --labels asks for labels, but {} has no 'labels' array",
            train.source
        )));
    }
    let constant_scales;
    let student = if opts.qat {
        constant_scales = lower::qat::with_constant_scales(student)?;
        &constant_scales
    } else {
        student
    };
    let net = Lowered::with_qat(student, opts.qat)?;
    let int8_layers = net.int8_layers();
    if opts.qat && int8_layers == 0 {
        return Err(Error::Usage(
            "distill: --qat fine-tunes int8 layers (QConv, QMatMul: a student from `mlc compress --int8`), and this student has none; leave --qat out to distill an f32 student".into(),
        ));
    }
    if net.params.is_empty() {
        return Err(Error::Usage(
            "distill: the student has no f32 weights to train".into(),
        ));
    }

    // Teacher outputs, once per sample, within the memory budget.
    let eval = held_out.unwrap_or(train);
    let first = {
        let meas = Measurer::new(CpuCtx::new(opts.threads)?);
        let x = train.sample(0)?;
        let shapes: Vec<Vec<usize>> = x.iter().map(|t| t.shape().to_vec()).collect();
        meas.plan(teacher, &shapes)?.run(&x)?
    };
    let per_sample = output_bytes(&first);
    let samples = train.samples + held_out.map_or(0, |d| d.samples);
    // The cache is held twice (as mlc tensors, then stacked for candle).
    crate::limits::check(
        || format!("distill: caching the teacher's outputs for {samples} samples"),
        per_sample.checked_mul(2 * samples as u64),
    )?;
    for t in &first {
        if !t.dtype().is_float() {
            return Err(Error::Usage(format!(
                "distill: the teacher's outputs must be floating point, one is {}",
                t.dtype()
            )));
        }
    }
    let pb_teacher = data::progress(progress, samples, "teacher");
    let train_teacher = run_all(teacher, train, opts.threads, &pb_teacher)?;
    let eval_teacher = match held_out {
        Some(h) => run_all(teacher, h, opts.threads, &pb_teacher)?,
        None => train_teacher.clone(),
    };
    pb_teacher.finish_and_clear();
    let teacher_accuracy = eval
        .labels
        .as_deref()
        .map(|l| data::accuracy(&eval_teacher, l));

    let before_out = run_all(student, eval, opts.threads, &ProgressBar::hidden())?;
    let before = quality(&eval_teacher, &before_out, eval.labels.as_deref());

    // Each output's loss, from its rank and the teacher's values.
    let outputs: Vec<(usize, Vec<&Tensor>)> = student
        .outputs
        .iter()
        .enumerate()
        .map(|(k, &o)| {
            let rank = student.ty(o).shape.rank();
            (
                rank,
                train_teacher.iter().filter_map(|t| t.get(k)).collect(),
            )
        })
        .collect();
    let kinds = losses(opts.objective, &outputs);
    drop(outputs);
    let by_agreement = kinds.first() == Some(&Loss::Kl);
    if opts.labels && !by_agreement {
        return Err(Error::Usage(
            "distill: --labels needs class scores as the first output (trained with KL)".into(),
        ));
    }

    let train_split = Split::new(train, &train_teacher, opts.labels)?;
    let eval_split = Split::new(eval, &eval_teacher, false)?;
    drop(train_teacher);

    // Batches only where every input's first axis is a batch axis.
    let batchable = student
        .inputs
        .iter()
        .all(|&i| matches!(student.ty(i).shape.dims().first(), Some(Dim::Sym(_))))
        && train_split
            .inputs
            .iter()
            .all(|t| t.dims().get(1) == Some(&1));
    let batch = if batchable {
        opts.batch.min(train.samples)
    } else {
        1
    };
    let per_epoch = train.samples.div_ceil(batch);
    let total_steps = (per_epoch * opts.epochs).max(1);

    // What one step holds, for the largest batch (training's or scoring's).
    let rows = batch.max(32).min(train.samples.max(eval.samples));
    let shapes: Vec<Vec<usize>> = train_split
        .inputs
        .iter()
        .map(|t| {
            let d = t.dims();
            let mut s = vec![rows * d.get(1).copied().unwrap_or(1)];
            s.extend_from_slice(d.get(2..).unwrap_or(&[]));
            s
        })
        .collect();
    crate::limits::check(
        || {
            format!("distill: a training step on a batch of {rows} (values kept for the backward pass, gradients, AdamW's state)")
        },
        net.step_bytes(&shapes),
    )?;

    let mut opt = AdamW::new(
        net.vars(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: opts.weight_decay,
            ..ParamsAdamW::default()
        },
    )
    .map_err(cerr)?;
    let snapshot = |net: &Lowered| -> Result<Vec<CTensor>> {
        net.params
            .iter()
            .map(|p| p.var.as_tensor().copy().map_err(cerr))
            .collect()
    };
    let score = |net: &Lowered| evaluate(net, &eval_split, &kinds, batch.max(32), opts.temperature);
    let describe = |s: &Score| {
        if by_agreement {
            format!("agreement {:.2}%", 100.0 * s.agreement)
        } else {
            format!("cosine {:.4} (min {:.4})", s.cosine, s.min_cosine)
        }
    };
    let score0 = score(&net)?;
    let mut best = (score0, 0usize, snapshot(&net)?);
    let pb = if progress {
        let pb = ProgressBar::new(total_steps as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>48} [{bar:30}] {pos}/{len} {elapsed_precise}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(format!("epoch 0/{}: {}", opts.epochs, describe(&score0)));
        pb
    } else {
        ProgressBar::hidden()
    };

    let mut rng = SplitMix64::new(opts.seed);
    let (mut train_loss, mut eval_loss, mut eval_agreement) = (Vec::new(), Vec::new(), Vec::new());
    let (mut eval_cosine, mut eval_min_cosine) = (Vec::new(), Vec::new());
    let mut step = 0usize;
    let mut since_best = 0usize;
    let mut stopped_early = false;
    for epoch in 1..=opts.epochs {
        let mut order: Vec<u32> = (0..train.samples as u32).collect();
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut sum = 0.0f64;
        for rows in order.chunks(batch) {
            let lr = opts.lr
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos());
            opt.set_learning_rate(lr);
            let (x, y, l) = train_split.batch(rows)?;
            let out = net.forward(&x)?;
            let l = loss(&kinds, &out, &y, l.as_ref(), opts.temperature).map_err(cerr)?;
            let v = l.to_scalar::<f32>().map_err(cerr)?;
            if !v.is_finite() {
                return Err(Error::Usage(format!(
                    "distill: the loss became {v} at epoch {epoch}; try a smaller --lr"
                )));
            }
            sum += v as f64 * rows.len() as f64;
            opt.backward_step(&l).map_err(cerr)?;
            net.apply_masks()?;
            step += 1;
            pb.inc(1);
        }
        train_loss.push(sum / train.samples as f64);
        let sc = score(&net)?;
        eval_loss.push(sc.loss);
        eval_agreement.push(sc.agreement);
        eval_cosine.push(sc.cosine);
        eval_min_cosine.push(sc.min_cosine);
        pb.set_message(format!(
            "epoch {epoch}/{}: loss {:.4}, {}",
            opts.epochs,
            sum / train.samples as f64,
            describe(&sc)
        ));
        if sc.beats(&best.0, by_agreement) {
            best = (sc, epoch, snapshot(&net)?);
            since_best = 0;
        } else {
            since_best += 1;
            if opts.patience > 0 && since_best >= opts.patience {
                stopped_early = epoch < opts.epochs;
                break;
            }
        }
    }
    pb.finish_and_clear();

    // The best weights, back into the student's constants (int8 weights
    // requantized onto their grids).
    let mut graph = student.clone();
    let mut zeros_after = 0usize;
    for (p, w) in net.params.iter().zip(&best.2) {
        zeros_after += net.write_back(&mut graph, p, w)?;
    }
    let after_out = run_all(&graph, eval, opts.threads, &ProgressBar::hidden())?;
    let after = quality(&eval_teacher, &after_out, eval.labels.as_deref());

    let report = DistillReport {
        student: student.name.clone(),
        teacher: teacher.name.clone(),
        data: train.source.clone(),
        train_samples: train.samples,
        evaluated_on: eval.source.clone(),
        eval_samples: eval.samples,
        held_out: held_out.is_some(),
        teacher_accuracy,
        epochs_requested: opts.epochs,
        epochs_run: train_loss.len(),
        best_epoch: best.1,
        stopped_early,
        batch,
        steps: step,
        lr: opts.lr,
        temperature: opts.temperature,
        labels: opts.labels,
        seed: opts.seed,
        qat: opts.qat,
        int8_layers,
        losses: kinds,
        selected_by: if by_agreement {
            "top-1 agreement".into()
        } else {
            "mean cosine".into()
        },
        train_loss,
        eval_loss,
        eval_agreement,
        eval_cosine,
        eval_min_cosine,
        before,
        after,
        trainable_params: net.param_count(),
        masked_zeros: net.params.iter().map(|p| p.zeros).sum(),
        zeros_after,
        seconds: start.elapsed().as_secs_f64(),
        output: String::new(),
        bytes: 0,
    };
    Ok(Distilled { graph, report })
}

//! `mlc distill`: knowledge distillation of a compressed student from its
//! teacher, trained on the CPU with candle.
//!
//! The student (an mlc graph, after `O2` and any compression rewrites) is
//! lowered to a candle forward pass ([`lower`]) whose layer weights and
//! biases are variables. The teacher runs once per sample on mlc's own
//! runtime and its outputs are cached (within the memory budget). Each
//! mini-batch (a seeded shuffle) is scored by the KL divergence of the
//! temperature-softened class scores × T² (rank-2 `[batch, classes]`
//! outputs; mean squared error for other outputs), plus cross-entropy with
//! the labels when asked; AdamW steps with a cosine learning-rate schedule.
//! Weights that were exactly zero (pruned) are set back to zero after every
//! step, so sparsity survives. After every epoch the student is scored on
//! held-out data (top-1 agreement with the teacher, then the distillation
//! loss); training stops after `patience` epochs without improvement and
//! the best weights are written back into the graph's constants.
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
use lower::{cerr, Lowered};

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
}

impl Default for DistillOptions {
    /// 30 epochs at lr 3e-3 (AdamW, cosine), batches of 32, T = 4, no
    /// labels, seed 0, patience 5, weight decay 1e-4, no QAT.
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
    /// Cosine similarity with the teacher's outputs, averaged over samples.
    pub cosine_similarity: f64,
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
    /// Mean training loss of each epoch.
    pub train_loss: Vec<f64>,
    /// Distillation loss on the evaluation data after each epoch.
    pub eval_loss: Vec<f64>,
    /// Top-1 agreement with the teacher on the evaluation data after each
    /// epoch.
    pub eval_agreement: Vec<f64>,
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
        s += &format!(
            "trained {} weights; {} pruned zeros kept ({} zeros after)\n",
            self.trainable_params, self.masked_zeros, self.zeros_after
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
        s += &format!(
            "on {} {} ({} samples): agreement with the teacher {} -> {}, cosine {:.5} -> {:.5}\n",
            what,
            self.evaluated_on,
            self.eval_samples,
            pct(self.before.top1_agreement),
            pct(self.after.top1_agreement),
            self.before.cosine_similarity,
            self.after.cosine_similarity
        );
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
            .map(|a| {
                let v = a.as_f32().ok_or_else(|| {
                    Error::Usage(format!(
                        "distill: {}: inputs must be f32 arrays",
                        data.source
                    ))
                })?;
                CTensor::from_vec(v.to_vec(), a.shape().to_vec(), &Device::Cpu).map_err(cerr)
            })
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

/// The distillation loss of one batch: KL × T² for `[batch, classes]`
/// outputs, MSE otherwise, plus cross-entropy on the first output.
fn loss(
    student: &[CTensor],
    teacher: &[CTensor],
    labels: Option<&CTensor>,
    t: f64,
) -> candle_core::Result<CTensor> {
    let mut total: Option<CTensor> = None;
    for (k, (s, q)) in student.iter().zip(teacher).enumerate() {
        let term = if s.rank() == 2 {
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

/// Held-out score: (top-1 agreement with the teacher, mean loss).
fn evaluate(net: &Lowered, split: &Split, batch: usize, t: f64) -> Result<(f64, f64)> {
    let (mut same, mut rows, mut loss_sum) = (0usize, 0usize, 0.0f64);
    let all: Vec<u32> = (0..split.samples as u32).collect();
    for chunk in all.chunks(batch.max(1)) {
        let (x, y, _) = split.batch(chunk)?;
        let out: Vec<CTensor> = net.forward(&x)?.into_iter().map(|o| o.detach()).collect();
        let l = loss(&out, &y, None, t)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(cerr)?;
        loss_sum += l as f64 * chunk.len() as f64;
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
    Ok((
        if rows == 0 {
            1.0
        } else {
            same as f64 / rows as f64
        },
        loss_sum / split.samples.max(1) as f64,
    ))
}

fn quality(teacher: &[Vec<Tensor>], got: &[Vec<Tensor>], labels: Option<&[i64]>) -> Quality {
    let a = data::agreement(teacher, got);
    Quality {
        top1_agreement: a.top1_agreement,
        accuracy: labels.map(|l| data::accuracy(got, l)),
        cosine_similarity: a.cosine_similarity,
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
    let (agree0, loss0) = evaluate(&net, &eval_split, batch.max(32), opts.temperature)?;
    let mut best = (agree0, loss0, 0usize, snapshot(&net)?);
    let pb = if progress {
        let pb = ProgressBar::new(total_steps as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>48} [{bar:30}] {pos}/{len} {elapsed_precise}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(format!(
            "epoch 0/{}: agreement {:.2}%",
            opts.epochs,
            100.0 * agree0
        ));
        pb
    } else {
        ProgressBar::hidden()
    };

    let mut rng = SplitMix64::new(opts.seed);
    let (mut train_loss, mut eval_loss, mut eval_agreement) = (Vec::new(), Vec::new(), Vec::new());
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
            let l = loss(&out, &y, l.as_ref(), opts.temperature).map_err(cerr)?;
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
        let (agree, el) = evaluate(&net, &eval_split, batch.max(32), opts.temperature)?;
        eval_loss.push(el);
        eval_agreement.push(agree);
        pb.set_message(format!(
            "epoch {epoch}/{}: loss {:.4}, agreement {:.2}%",
            opts.epochs,
            sum / train.samples as f64,
            100.0 * agree
        ));
        if agree > best.0 || (agree == best.0 && el < best.1) {
            best = (agree, el, epoch, snapshot(&net)?);
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
    for (p, w) in net.params.iter().zip(&best.3) {
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
        best_epoch: best.2,
        stopped_early,
        batch,
        steps: step,
        lr: opts.lr,
        temperature: opts.temperature,
        labels: opts.labels,
        seed: opts.seed,
        qat: opts.qat,
        int8_layers,
        train_loss,
        eval_loss,
        eval_agreement,
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

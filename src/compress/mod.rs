//! `mlc compress`: post-training quantization with measurements.
//!
//! The model is compiled with `O2` (so BatchNorm is folded and epilogues are
//! fused), then:
//! 1. **int8** ([`Mode::Int8`]): every convolution and matrix product with a
//!    constant weight ([`quantize::find_layers`]) becomes QConv / QMatMul:
//!    symmetric int8 weights (per output channel by default), u8 activations
//!    quantized per run (dynamic) or with ranges from a calibration set
//!    (static; [`crate::quant::calib`] histograms, streamed sample by
//!    sample, cached by a hash of model, data and method).
//!    Mixed precision is decided by measurement ([`crate::measure`]: every
//!    graph is planned once, candidates share packed weights): each layer's
//!    int8 node is timed against its f32 node where it runs, inside the
//!    all-int8 and the f32 model run alternately (slower by more than
//!    [`SPEED_TIE_MS`]: it stays f32, unless the whole model with those
//!    layers int8 again times as fast as with them f32),
//!    each layer's contribution to the output error is measured by
//!    quantizing it alone, and while the whole model breaks the accuracy
//!    budget the most sensitive int8 layer goes back to f32.
//!    Other large constants (embedding tables) are stored int8 per row.
//! 2. **int4** ([`Mode::Int4`]): weights of matrix products as blockwise
//!    int4 with f16 scales, weight-only.
//! 3. **fp16** ([`Mode::Fp16`]): large constants stored as f16.
//!
//! The [`report::Report`] gives size, latency and accuracy before and after.

pub mod channels;
pub mod data;
pub mod lowrank;
pub mod matrix;
pub mod prune;
pub mod quantize;
pub mod reconstruct;
pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::formats::bundle;
use crate::ir::{infer, ActQuant, Graph, NodeId, ValueId};
use crate::kernels::cpu::choice::QuantRun;
use crate::kernels::cpu::CpuCtx;
use crate::measure::{self, Measurer};
use crate::quant::calib::{quant_params, CalibMethod, Observer};
use crate::runtime::Plan;
use crate::transform::recipe::Recipe;
use crate::transform::runner::{self, RunOptions};
use crate::{Result, Tensor};
use data::{Agreement, Dataset};
use quantize::{Granularity, Layer, WeightFormat};
use report::{
    AccuracyReport, CalibrationReport, LatencyReport, LayerReport, MeasurementReport, Precision,
    Report, SizeReport,
};

/// What the weights become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Int8,
    Int4,
    Fp16,
    /// Weights stay f32 (pruning alone).
    F32,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Int8 => "int8",
            Mode::Int4 => "int4",
            Mode::Fp16 => "fp16",
            Mode::F32 => "f32",
        }
    }
}

/// What a compression optimizes when storage and speed disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Every layer the accuracy budget allows is stored int8; which
    /// kernels run it is the tuner's decision (`mlc tune`), not storage's.
    Size,
    /// Also keep f32 in storage the layers whose int8 kernel is slower on
    /// this machine (the model then depends on the machine and the noise
    /// of its timings).
    Latency,
}

impl Goal {
    pub fn name(self) -> &'static str {
        match self {
            Goal::Size => "size",
            Goal::Latency => "latency",
        }
    }
}

/// How int8 activations get their quantization parameters.
#[derive(Clone, Debug)]
pub enum Activations {
    Dynamic,
    Static { calib: PathBuf, method: CalibMethod },
}

/// Fine-tuning of the compressed model against the original
/// ([`crate::distill`]), run after structured pruning, low-rank
/// factorization and pruning, before quantization. The accuracy budget
/// then judges the model after distillation: the searches before it apply
/// what was asked without backing off (so `--prune max`, a search without
/// fine-tuning, is refused with it), and int8 keeps layers f32 as usual.
/// Early stopping scores the calibration data when there is some (never
/// the evaluation data the budget judges), else the training data.
#[cfg(feature = "distill")]
#[derive(Clone, Debug)]
pub struct Distillation {
    /// Training samples (`.npz` keyed by input name, optional `labels`).
    pub data: PathBuf,
    pub options: crate::distill::DistillOptions,
}

/// Everything `mlc compress` can be told.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Prune the weights first (then quantize the survivors as `mode` says).
    pub prune: Option<prune::PruneOptions>,
    /// Remove this share of the channels of every convolution and product
    /// whose channels can go (before anything else; see [`channels`]).
    pub prune_channels: Option<f64>,
    /// Remove this many heads from every attention block whose heads can
    /// go (instead of `prune_channels`' share of them).
    pub prune_heads: Option<usize>,
    /// Factorize products and 1x1 convolutions into pairs of smaller ones
    /// (after structured pruning, before pruning and quantization; see
    /// [`lowrank`]).
    pub low_rank: Option<lowrank::Target>,
    /// Distill the pruned / factorized model from the f32 one right after
    /// pruning, before quantization (see [`Distillation`]).
    #[cfg(feature = "distill")]
    pub distill: Option<Distillation>,
    pub weights: WeightFormat,
    pub activations: Activations,
    /// Inputs (and optional `labels`) to measure accuracy on.
    pub eval: Option<PathBuf>,
    /// Largest allowed top-1 accuracy drop in points (labels), or top-1
    /// disagreement in points (class-score outputs without labels).
    pub max_accuracy_drop: f64,
    /// Smallest allowed cosine similarity with the f32 outputs, of every
    /// sample (a budget holds in the worst case, not on average).
    pub min_cosine: Option<f64>,
    /// Time each layer's int8 and f32 kernels here (reported; with
    /// [`Goal::Latency`], a layer whose int8 kernel is slower by more than
    /// [`SPEED_TIE_MS`] stays f32).
    pub check_speed: bool,
    pub goal: Goal,
    /// Samples used to measure each layer's sensitivity.
    pub sensitivity_samples: usize,
    /// Timed runs of each model for the latency figures.
    pub latency_runs: usize,
    pub threads: usize,
    /// Sizes of symbolic dims other than the batch (e.g. `seq`).
    pub dims: BTreeMap<String, usize>,
    /// Calibration cache folder (None: no caching).
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
}

/// What [`compress`] produced.
pub struct Outcome {
    pub graph: Graph,
    pub report: Report,
    /// Nodes of the model as imported.
    pub nodes_before: usize,
}

impl Options {
    /// The command line's defaults for `mode`: per-channel 7-bit int8
    /// weights, dynamic activations, seeded random evaluation data, a
    /// 1-point accuracy budget, layers timed for speed, 20 latency runs on
    /// all cores, no calibration cache, no progress bars.
    pub fn new(mode: Mode) -> Options {
        Options {
            mode,
            prune: None,
            prune_channels: None,
            prune_heads: None,
            low_rank: None,
            #[cfg(feature = "distill")]
            distill: None,
            weights: WeightFormat {
                granularity: Granularity::PerChannel,
                reduce_range: true,
            },
            activations: Activations::Dynamic,
            eval: None,
            max_accuracy_drop: 1.0,
            min_cosine: None,
            check_speed: true,
            goal: Goal::Size,
            sensitivity_samples: 32,
            latency_runs: 20,
            threads: 0,
            dims: BTreeMap::new(),
            cache_dir: None,
            progress: false,
        }
    }
}

/// The default calibration cache: `$MLC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/mlc`, else `~/.cache/mlc`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MLC_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("mlc"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("mlc"))
}

/// Compresses `imported` (a model as loaded, before any pass) as `opts`
/// say. `model_path` names it in the report and `source` is its file's
/// bytes (for the size figures and the calibration cache key).
pub fn compress(
    imported: Graph,
    model_path: &Path,
    source: &[u8],
    opts: &Options,
) -> Result<Outcome> {
    let started = Instant::now();
    crate::ir::bind::check_dim_names(&imported, opts.dims.keys())?;
    if distills(opts) && opts.prune.is_some_and(|p| p.target == prune::Target::Max) {
        return Err(crate::Error::Usage(
            "--prune max searches for the sparsity the model keeps without fine-tuning; with --distill give one (e.g. --prune 0.9)".into(),
        ));
    }
    let mut g = imported;
    let nodes_before = g.node_count();
    let o2 = Recipe::resolve("O2")?;
    runner::run(&mut g, &o2, &RunOptions::default())?;
    let f32_graph = g.clone();
    let meas = Measurer::new(CpuCtx::new(opts.threads)?);
    let float_model = data::float_inputs(&g);

    // Data: evaluation set, calibration set, else random inputs.
    let calib = match &opts.activations {
        Activations::Static { calib, .. } => Some(Dataset::load(calib, &g)?),
        Activations::Dynamic => None,
    };
    let eval = match &opts.eval {
        Some(p) => Dataset::load(p, &g)?,
        None => match &calib {
            Some(c) => c.clone(),
            None => Dataset::random(&g, 16, &opts.dims)?,
        },
    };
    // Every measurement runs one sample at a time: one plan per graph.
    let sample = eval.sample(0)?;
    let shapes = shapes_of(&sample);
    let mut f32_plan = meas.plan(&f32_graph, &shapes)?;
    let pb = data::progress(opts.progress, eval.samples, "f32 reference");
    let reference = data::run_plan(&mut f32_plan, &eval, &pb)?;
    pb.finish_and_clear();

    let budget = Budget::new(&eval, &reference, opts);
    // With distillation the budget judges the distilled model; the
    // searches before it apply what was asked.
    let search_budget = match distills(opts) {
        true => budget.unbounded(),
        false => budget,
    };
    // Structured pruning: the graph itself shrinks.
    let mut channel_pruning = None;
    if opts.prune_channels.is_some() || opts.prune_heads.is_some() {
        let data = calib.as_ref().unwrap_or(&eval);
        let norms = prune::input_norms(&g, &quantize::find_layers(&g), data, &meas, opts.progress)?;
        let (pruned, rep) = prune_structure(&g, &norms, &search_budget, &meas, &shapes, opts)?;
        g = pruned;
        channel_pruning = Some(rep);
    }

    // Low-rank factorization: two smaller products per layer.
    let mut low_rank = None;
    if let Some(target) = opts.low_rank {
        let layers = quantize::find_layers(&g);
        let grams = match &calib {
            Some(c) => Some(reconstruct::layer_grams(
                &g,
                &layers,
                c,
                &meas,
                |m| m.cols <= lowrank::MAX_GRAM_COLS,
                opts.progress,
            )?),
            None => None,
        };
        let mut verdict = |cand: &Graph| -> Result<prune::Verdict> {
            let mut c = Candidate::from_graph(cand.clone(), HashSet::new(), &meas, &shapes)?;
            let j = search_budget.judge(c.outputs(budget.eval)?);
            Ok(prune::Verdict {
                holds: !(j.breaks_drop || j.breaks_cos),
                drop_points: j.drop,
                min_cosine_similarity: j.agreement.min_cosine_similarity,
            })
        };
        let runs = if opts.check_speed {
            speed_runs(&mut f32_plan, &sample, layers.len())?
        } else {
            0
        };
        let f = lowrank::factorize(
            &g,
            &layers,
            grams.as_ref(),
            target,
            &mut verdict,
            &meas,
            &sample,
            runs,
            opts.goal == Goal::Latency,
            opts.progress,
        )?;
        g = f.graph.clone();
        low_rank = Some(f);
    }

    let layers = quantize::find_layers(&g);
    let mut layer_reports: Vec<LayerReport> =
        layers.iter().map(|l| LayerReport::new(l, &g)).collect();
    let mut calibration = None;
    let mut kept_f32: HashSet<NodeId> = HashSet::new();
    // Every int8 model the accuracy budget judged (the trade-off plot).
    let mut int8_search: Vec<report::Int8Step> = Vec::new();
    // f32 parameters int4 rounds to f16 values.
    let mut params_f16 = 0;
    let mut act_of: HashMap<NodeId, ActQuant> = HashMap::new();

    // Activation quantization of each int8 layer, calibrated on the f32
    // model.
    if opts.mode == Mode::Int8 {
        (act_of, calibration) = activation_quant(&g, &layers, calib.as_ref(), source, opts, &meas)?;
    }

    // Pruning, judged on the model as it will be finished (quantized too
    // with int8); what is left of each weight is quantized below.
    let mut pruning = None;
    if let Some(p) = &opts.prune {
        let needs_calib = |what: &str| {
            crate::Error::Usage(format!("{what} needs calibration data: give --calib"))
        };
        let mut stats = prune::LayerStats::default();
        if p.importance == prune::Importance::Activation {
            let c = calib.as_ref().ok_or_else(|| {
                needs_calib("activation-aware pruning (--prune-importance activation)")
            })?;
            stats.norms = Some(prune::input_norms(&g, &layers, c, &meas, opts.progress)?);
        }
        match (p.update, &calib) {
            (prune::Update::LeastSquares | prune::Update::Auto, Some(c)) => {
                stats.grams = Some(reconstruct::layer_grams(
                    &g,
                    &layers,
                    c,
                    &meas,
                    reconstruct::fits,
                    opts.progress,
                )?);
            }
            (prune::Update::LeastSquares, None) => {
                return Err(needs_calib(
                    "the least-squares update (--prune-update least-squares)",
                ));
            }
            _ => {}
        }
        let mut sens_data = eval.clone();
        sens_data.truncate(opts.sensitivity_samples.max(1));
        let mut judge = PruneJudge {
            meas: &meas,
            shapes: &shapes,
            sens_ref: &reference[..sens_data.samples],
            sens_data,
            budget: &search_budget,
            quantized: (opts.mode == Mode::Int8).then_some((layers.as_slice(), &act_of, opts)),
        };
        let pruned = prune::prune(&g, &layers, stats, p, &mut judge, opts.progress)?;
        g = pruned.graph.clone();
        pruning = Some(pruned);
    }
    #[cfg(feature = "distill")]
    let distillation = match &opts.distill {
        Some(d) => {
            let before = {
                let mut c = Candidate::from_graph(g.clone(), HashSet::new(), &meas, &shapes)?;
                accuracy_report(&eval, &reference, c.outputs(&eval)?)
            };
            let train = Dataset::load(&d.data, &g)?;
            let out = crate::distill::distill(
                &g,
                &f32_graph,
                &train,
                calib.as_ref(),
                &d.options,
                opts.progress,
            )?;
            g = out.graph;
            let mut report = out.report;
            report.student = "the compressed model".into();
            report.teacher = model_path.display().to_string();
            if opts.mode == Mode::Int8 {
                // Ranges of the model as distilled; the calibration cache
                // keys the source model, not these weights.
                let fresh = Options {
                    cache_dir: None,
                    ..opts.clone()
                };
                (act_of, calibration) =
                    activation_quant(&g, &layers, calib.as_ref(), source, &fresh, &meas)?;
            }
            Some(report::DistillationReport {
                before,
                training: report,
            })
        }
        None => None,
    };
    // The model int8 quantizes: f32, pruned (and distilled) when asked.
    let base = g.clone();
    // int8 is judged against the f32 model, unless distillation left a
    // model that breaks the budget by itself: then against that model
    // (keeping layers f32 cannot mend what distillation did not).
    let distilled_outputs;
    let mut quant_budget = budget;
    let mut judged_against_distilled = false;
    if distills(opts) && opts.mode == Mode::Int8 {
        let mut c = Candidate::from_graph(base.clone(), HashSet::new(), &meas, &shapes)?;
        distilled_outputs = c.outputs(&eval)?.clone();
        let j = budget.judge(&distilled_outputs);
        if j.breaks_drop || j.breaks_cos {
            quant_budget = Budget::new(&eval, &distilled_outputs, opts);
            judged_against_distilled = true;
        }
    }

    // The compressed model with its plan (int8: the candidate chosen).
    let mut compressed: Option<Candidate> = None;
    match opts.mode {
        Mode::Int8 => {
            // Speed: keep f32 where the int8 kernel is slower here, each
            // layer timed where it runs, in the f32 model and in the model
            // with every layer int8, run alternately.
            let mut for_speed: Vec<usize> = Vec::new();
            let mut all_int8 = None;
            if opts.check_speed {
                let mut c = Candidate::new(
                    &base,
                    &layers,
                    &HashSet::new(),
                    &act_of,
                    opts,
                    &meas,
                    &shapes,
                )?;
                let pb = data::progress(opts.progress, 1, "layer timing");
                let runs = speed_runs(&mut f32_plan, &sample, layers.len())?;
                let (tf, tq) =
                    measure::alternate_nodes(&mut f32_plan, &mut c.plan, &sample, 2, runs)?;
                for (i, (l, rep)) in layers.iter().zip(&mut layer_reports).enumerate() {
                    let name = &l.name;
                    let (Some(f), Some(q)) = (tf.get(name), tq.get(name)) else {
                        continue;
                    };
                    rep.f32_ms = Some(f.median_ms);
                    rep.int8_ms = Some(q.median_ms);
                    if q.slower_than(f, SPEED_TIE_MS) {
                        let timings = format!(
                            "the int8 kernel takes {:.3} ms (p10-p90 {:.3}-{:.3}), the f32 one {:.3} ms ({:.3}-{:.3}) on this machine",
                            q.median_ms, q.p10_ms, q.p90_ms, f.median_ms, f.p10_ms, f.p90_ms
                        );
                        if opts.goal == Goal::Latency {
                            kept_f32.insert(l.node);
                            for_speed.push(i);
                            rep.reason = Some(format!("speed (--goal latency): {timings}"));
                        } else {
                            rep.note = Some(format!(
                                "{timings}: `mlc tune` can run it on the f32 kernels, its weights staying int8"
                            ));
                        }
                    }
                }
                pb.finish_and_clear();
                all_int8 = Some(c);
            }

            // Each layer's contribution to the output error, alone: one
            // model run per layer, so it is measured only when the model
            // breaks the accuracy budget and layers must go back to f32.
            let measure_sensitivity =
                |layer_reports: &mut [report::LayerReport]| -> Result<Vec<usize>> {
                    let mut sens_data = eval.clone();
                    sens_data.truncate(opts.sensitivity_samples.max(1));
                    let sens_ref = &reference[..sens_data.samples];
                    let pb = data::progress(opts.progress, layers.len(), "sensitivity");
                    for (l, rep) in layers.iter().zip(layer_reports.iter_mut()) {
                        let mut one = base.clone();
                        quantize::quantize_layer(&mut one, l, act_of[&l.node], opts.weights)?;
                        let mut plan = meas.plan(&one, &shapes)?;
                        let out = data::run_plan(
                            &mut plan,
                            &sens_data,
                            &indicatif::ProgressBar::hidden(),
                        )?;
                        let a = data::agreement(sens_ref, &out);
                        rep.error_alone = Some(1.0 - a.cosine_similarity);
                        if let Some(labels) = &sens_data.labels {
                            let base = data::accuracy(sens_ref, labels);
                            rep.top1_drop_alone =
                                Some(100.0 * (base - data::accuracy(&out, labels)));
                        }
                        pb.inc(1);
                    }
                    pb.finish_and_clear();
                    // Most sensitive first.
                    let mut order: Vec<usize> = (0..layers.len()).collect();
                    order.sort_by(|&a, &b| {
                        let s = |i: usize| layer_reports[i].error_alone.unwrap_or(0.0);
                        s(b).total_cmp(&s(a))
                    });
                    Ok(order)
                };

            // Accuracy budget: revert the most sensitive layers until it holds.
            let judge = |c: &mut Candidate| -> Result<(Option<f64>, Agreement, bool, bool)> {
                let j = quant_budget.judge(c.outputs(&eval)?);
                Ok((j.drop, j.agreement, j.breaks_drop, j.breaks_cos))
            };
            // The last candidate is the model unless the whole-model check
            // below takes the one with fewer layers f32.
            let mut order: Option<Vec<usize>> = None;
            let mut chosen = loop {
                let mut candidate = match all_int8.take() {
                    Some(c) if c.kept == kept_f32 => c,
                    other => {
                        all_int8 = other;
                        Candidate::new(&base, &layers, &kept_f32, &act_of, opts, &meas, &shapes)?
                    }
                };
                let (drop, a, breaks_drop, breaks_cos) = judge(&mut candidate)?;
                int8_search.push(report::Int8Step {
                    int8_layers: layers.len() - candidate.kept.len(),
                    holds: !(breaks_drop || breaks_cos),
                    drop_points: drop,
                    min_cosine_similarity: a.min_cosine_similarity,
                });
                if !(breaks_drop || breaks_cos) {
                    break candidate;
                }
                if order.is_none() {
                    order = Some(measure_sensitivity(&mut layer_reports)?);
                }
                let next = order
                    .iter()
                    .flatten()
                    .copied()
                    .find(|&i| !kept_f32.contains(&layers[i].node));
                match next {
                    Some(i) => {
                        kept_f32.insert(layers[i].node);
                        layer_reports[i].reason = Some(format!(
                            "accuracy: the most sensitive int8 layer left (output error {:.2e} alone) while the model {}",
                            layer_reports[i].error_alone.unwrap_or(0.0),
                            if breaks_drop {
                                format!(
                                    "dropped {:.2} points (budget {:.2})",
                                    drop.unwrap_or(0.0),
                                    opts.max_accuracy_drop
                                )
                            } else {
                                format!(
                                    "had a sample at cosine similarity {:.5} (minimum {:.5})",
                                    a.min_cosine_similarity,
                                    opts.min_cosine.unwrap_or(0.0)
                                )
                            }
                        ));
                    }
                    _ => break candidate,
                }
            };
            // Whole model: near-ties in the per-layer timings can keep
            // layers f32 that the whole model runs as fast in int8. Time
            // the model with them int8 against the mixed one, alternating,
            // and take it when it is not slower (within [`MODEL_SPEED_TIE`])
            // and within the accuracy budget.
            if !for_speed.is_empty() {
                let mut fewer = kept_f32.clone();
                for &i in &for_speed {
                    fewer.remove(&layers[i].node);
                }
                let mut all = match all_int8.take() {
                    Some(c) if c.kept == fewer => c,
                    _ => Candidate::new(&base, &layers, &fewer, &act_of, opts, &meas, &shapes)?,
                };
                let (drop, a, breaks_drop, breaks_cos) = judge(&mut all)?;
                int8_search.push(report::Int8Step {
                    int8_layers: layers.len() - all.kept.len(),
                    holds: !(breaks_drop || breaks_cos),
                    drop_points: drop,
                    min_cosine_similarity: a.min_cosine_similarity,
                });
                if !breaks_drop && !breaks_cos {
                    let (ta, tm) = measure::alternate(
                        &mut all.plan,
                        &mut chosen.plan,
                        &sample,
                        &sample,
                        2,
                        MODEL_SPEED_RUNS,
                    )?;
                    let (ta, tm) = (ta.median_ms, tm.median_ms);
                    let int8_wins = ta <= tm * (1.0 + MODEL_SPEED_TIE);
                    for &i in &for_speed {
                        let r = layer_reports[i].reason.take().unwrap_or_default();
                        layer_reports[i].reason = (!int8_wins).then(|| {
                            format!("{r}; the whole model with these layers int8 takes {ta:.3} ms, {tm:.3} ms with them f32")
                        });
                    }
                    if int8_wins {
                        kept_f32 = fewer;
                        chosen = all;
                    }
                }
            }
            compressed = Some(chosen);
        }
        Mode::Int4 => {
            quantize::int4_weights(&mut g)?;
            params_f16 = quantize::round_params_to_f16(&mut g)?;
        }
        Mode::Fp16 => {
            quantize::fp16_weights(&mut g)?;
        }
        Mode::F32 => {}
    }
    let mut compressed = match compressed {
        Some(c) => c,
        None => {
            infer::infer_graph(&mut g)?;
            Candidate::from_graph(g, HashSet::new(), &meas, &shapes)?
        }
    };
    let g = compressed.graph.clone();
    // Which kernels run each layer here: the tuning database's choices
    // for this machine, else the defaults (int8 layers on the int8 ones).
    let db_choices = match crate::tune::default_database()? {
        Some(db) => crate::tune::database_choices(&db, compressed.plan.graph(), meas.cx().threads),
        None => Default::default(),
    };
    if !db_choices.is_empty() {
        compressed.plan = meas.plan_with(compressed.plan.graph().clone(), &db_choices)?;
    }

    if let Some(c) = &mut channel_pruning {
        let flops = |p: &Plan| -> u64 { p.steps().iter().filter_map(|s| s.flops).sum() };
        c.flops_before = flops(&f32_plan);
        c.flops_after = flops(&compressed.plan);
    }
    // Per-layer precision and bytes after.
    let sparse_steps: HashSet<String> = compressed
        .plan
        .steps()
        .into_iter()
        .filter(|s| s.sparse)
        .map(|s| s.node)
        .collect();
    for (l, rep) in layers.iter().zip(&mut layer_reports) {
        rep.precision = match opts.mode {
            Mode::Int8 if kept_f32.contains(&l.node) => Precision::F32,
            Mode::Int8 => Precision::Int8,
            Mode::Int4 if l.kind == quantize::LayerKind::MatMul => Precision::Int4,
            Mode::Int4 => Precision::Int8WeightOnly,
            Mode::Fp16 => Precision::Fp16,
            Mode::F32 => Precision::F32,
        };
        let (before, after) = layer_bytes(&g, l.node, &f32_graph, l.weight);
        rep.f32_bytes = before;
        rep.stored_bytes = after;
        let chosen = db_choices.get(&l.name).copied().unwrap_or_default();
        rep.runs_as = match (rep.precision, chosen.run) {
            (Precision::Int8, Some(QuantRun::F32)) => {
                "f32 kernels, weights dequantized at load (tuning database)".into()
            }
            (Precision::Int8, _) => "int8 kernels".into(),
            (Precision::F32, _) => "f32 kernels".into(),
            _ => "f32 kernels, weights dequantized at load".into(),
        };
        if sparse_steps.contains(&l.name) {
            rep.runs_as = rep.runs_as.replacen("f32 kernels", "f32 sparse kernel", 1);
        }
    }
    // Sparsity and work of each layer, when pruning.
    let pruning = match pruning {
        Some(p) => {
            let flops_of: HashMap<String, u64> = f32_plan
                .steps()
                .into_iter()
                .filter_map(|s| Some((s.node, s.flops?)))
                .collect();
            let (mut flops, mut flops_nonzero) = (0u64, 0u64);
            for (l, rep) in layers.iter().zip(&mut layer_reports) {
                // The weight as stored (int8 codes can add zeros), else
                // the pruned f32 one.
                let w = g
                    .node(l.node)
                    .and_then(|n| n.input(1))
                    .and_then(|v| g.const_value(v))
                    .or_else(|| base.const_value(l.weight));
                let Some(w) = w.filter(|w| w.numel() > 0) else {
                    continue;
                };
                let share = w.zero_count() as f64 / w.numel() as f64;
                rep.sparsity = Some(share);
                if let Some(&f) = flops_of.get(&l.name) {
                    rep.flops = Some(f);
                    let nz = (f as f64 * (1.0 - share)).round() as u64;
                    rep.flops_nonzero = Some(nz);
                    flops += f;
                    flops_nonzero += nz;
                }
                if let Some(lp) = p.layers.iter().find(|lp| lp.name == l.name) {
                    rep.prune_sensitivity = lp.sensitivity.clone();
                }
            }
            let spec = opts.prune;
            Some(report::PruningReport {
                requested: match p.requested {
                    prune::Target::Sparsity(s) => format!("{s}"),
                    prune::Target::Max => "max".into(),
                },
                allocation: spec.map_or(prune::Allocation::Sensitivity, |o| o.allocation),
                block: spec.map_or(prune::Block::Single, |o| o.block),
                importance: spec.map_or(prune::Importance::Magnitude, |o| o.importance),
                update: p.update,
                not_updated: p.not_updated,
                sparsity: p.sparsity,
                elements: p.layers.iter().map(|l| l.elements).sum(),
                zeros: p.layers.iter().map(|l| l.zeros).sum(),
                search: p.steps,
                skipped: p.skipped,
                flops,
                flops_nonzero,
            })
        }
        None => None,
    };
    let mut warnings = Vec::new();
    if let Some(p) = &pruning {
        if let Some(prune::Target::Sparsity(asked)) = opts.prune.map(|o| o.target) {
            if p.sparsity + 0.005 < asked {
                warnings.push(format!(
                    "pruned to sparsity {:.3}, not the {asked} asked: the accuracy budget broke above it (see the pruning search)",
                    p.sparsity
                ));
            }
        }
    }
    if opts.mode == Mode::Int8
        && !layers.is_empty()
        && layer_reports.iter().all(|r| r.precision == Precision::F32)
    {
        warnings.push(format!(
            "every one of the {} layers stayed f32: the output is no smaller than the f32 model (see each layer's reason)",
            layers.len()
        ));
    }
    if eval.synthetic {
        warnings.push(format!(
            "accuracy measured on {} (no --eval or --calib data): it says little about the model on real inputs",
            eval.source
        ));
    }

    // Accuracy of the final model (the outputs its last judgement ran).
    let outputs = compressed.outputs(&eval)?;
    if distills(opts) {
        let j = budget.judge(outputs);
        if j.breaks_drop || j.breaks_cos {
            warnings.push(match j.breaks_drop {
                true => format!(
                    "after distillation the model is {:.2} points below f32, beyond the {:.2}-point budget",
                    j.drop.unwrap_or(0.0),
                    opts.max_accuracy_drop
                ),
                false => format!(
                    "after distillation a sample is at cosine similarity {:.5}, below the {:.5} budget",
                    j.agreement.min_cosine_similarity,
                    opts.min_cosine.unwrap_or(0.0)
                ),
            });
        }
    }
    if judged_against_distilled {
        warnings.push(
            "the distilled f32 model breaks the accuracy budget by itself: int8 was held to the budget against it, not against the original".into(),
        );
    }
    let accuracy = accuracy_report(&eval, &reference, outputs);

    // Latency, f32 and compressed alternating, batch 1.
    let latency = measure_latency(
        &mut f32_plan,
        &mut compressed.plan,
        &sample,
        opts,
        meas.cx(),
    )?;

    let f32_pipeline = bundle::PipelineInfo {
        name: o2.name.clone(),
        summary: o2.summary(),
    };
    let f32_meta = metadata(&f32_graph, model_path, source, f32_pipeline, nodes_before);
    let f32_bundle = bundle::to_bytes(&f32_graph, &f32_meta)?.len() as u64;
    let size = SizeReport {
        source_bytes: source.len() as u64,
        f32_bundle_bytes: f32_bundle,
        output_bytes: 0,
        ratio: 0.0,
        weights_f32_bytes: quantize::weight_bytes(&f32_graph) as u64,
        weights_bytes: quantize::weight_bytes(&g) as u64,
    };
    let report = Report {
        header: crate::provenance::Header::new(
            "compress",
            meas.cx().threads,
            Some((model_path, source)),
        ),
        model: model_path.display().to_string(),
        output: String::new(),
        format: String::new(),
        mode: opts.mode.name().to_string(),
        activations: match (opts.mode, &opts.activations) {
            (Mode::Int8, Activations::Dynamic) => "dynamic (u8, per run)".into(),
            (Mode::Int8, Activations::Static { method, .. }) => {
                format!("static (u8, calibrated: {method})")
            }
            _ => "f32 (weight-only)".into(),
        },
        granularity: format!(
            "{}{}",
            match opts.weights.granularity {
                Granularity::PerChannel => "per-channel",
                Granularity::PerTensor => "per-tensor",
            },
            if opts.weights.reduce_range && opts.mode == Mode::Int8 {
                ", 7-bit"
            } else {
                ""
            }
        ),
        float_inputs: float_model,
        size,
        layers: layer_reports,
        latency,
        accuracy,
        calibration,
        int8_search,
        pruning,
        channel_pruning,
        low_rank: low_rank.map(|f| report::LowRankReport {
            target: match f.requested {
                lowrank::Target::Params(_) => "params",
                lowrank::Target::Energy(_) => "energy",
            },
            requested: f.requested.value(),
            reached: f.reached.value(),
            activation_aware: f.whitened,
            params_before: f.layers.iter().map(|l| l.params_before).sum(),
            params_after: f.layers.iter().map(|l| l.params_after).sum(),
            layers: f.layers,
            skipped: f.skipped,
            search: f.steps,
        }),
        #[cfg(feature = "distill")]
        distillation,
        goal: opts.goal.name().to_string(),
        warnings,
        max_accuracy_drop: opts.max_accuracy_drop,
        min_cosine: opts.min_cosine,
        params_f16,
        measurement: {
            let work = meas.work();
            MeasurementReport {
                plans_built: work.plans_built,
                weights_packed: work.weights_packed,
                seconds: started.elapsed().as_secs_f64(),
            }
        },
    };
    Ok(Outcome {
        graph: g,
        report,
        nodes_before,
    })
}

/// `outputs` judged against the f32 model's (`reference`) on `eval`.
fn accuracy_report(
    eval: &Dataset,
    reference: &[Vec<Tensor>],
    outputs: &[Vec<Tensor>],
) -> AccuracyReport {
    let (top1_f32, top1_compressed) = match &eval.labels {
        Some(l) => (
            Some(data::accuracy(reference, l)),
            Some(data::accuracy(outputs, l)),
        ),
        None => (None, None),
    };
    AccuracyReport {
        data: eval.source.clone(),
        samples: eval.samples,
        labeled: eval.labels.is_some(),
        synthetic: eval.synthetic,
        top1_f32,
        top1_compressed,
        drop_points: top1_f32.zip(top1_compressed).map(|(a, b)| 100.0 * (a - b)),
        agreement: data::agreement(reference, outputs),
    }
}

/// Whether `opts` distill the compressed model (a build without the
/// `distill` feature never does).
fn distills(opts: &Options) -> bool {
    #[cfg(feature = "distill")]
    return opts.distill.is_some();
    #[cfg(not(feature = "distill"))]
    {
        let _ = opts;
        false
    }
}

/// The accuracy budget, and the f32 model's outputs it is judged on.
#[derive(Clone, Copy)]
struct Budget<'a> {
    eval: &'a Dataset,
    reference: &'a [Vec<Tensor>],
    /// The f32 model's top-1 accuracy (labeled data).
    base_accuracy: Option<f64>,
    /// The first output is class scores (rows of a 2-D tensor).
    classifier: bool,
    max_drop: f64,
    min_cosine: Option<f64>,
}

/// A model's outputs judged against the budget.
struct Judgement {
    /// Top-1 accuracy drop (labels) or disagreement (class scores), points.
    drop: Option<f64>,
    agreement: Agreement,
    breaks_drop: bool,
    breaks_cos: bool,
}

impl<'a> Budget<'a> {
    /// The same judge with no limits: every judgement holds.
    fn unbounded(&self) -> Budget<'a> {
        Budget {
            max_drop: f64::INFINITY,
            min_cosine: None,
            ..*self
        }
    }

    fn new(eval: &'a Dataset, reference: &'a [Vec<Tensor>], opts: &Options) -> Budget<'a> {
        Budget {
            eval,
            reference,
            base_accuracy: eval.labels.as_ref().map(|l| data::accuracy(reference, l)),
            classifier: reference
                .first()
                .and_then(|o| o.first())
                .is_some_and(|t| t.rank() == 2),
            max_drop: opts.max_accuracy_drop,
            min_cosine: opts.min_cosine,
        }
    }

    fn judge(&self, out: &[Vec<Tensor>]) -> Judgement {
        let agreement = data::agreement(self.reference, out);
        let drop = match (&self.eval.labels, self.base_accuracy) {
            (Some(l), Some(b)) => Some(100.0 * (b - data::accuracy(out, l))),
            _ if self.classifier => Some(100.0 * (1.0 - agreement.top1_agreement)),
            _ => None,
        };
        Judgement {
            drop,
            breaks_drop: drop.is_some_and(|d| d > self.max_drop),
            breaks_cos: self
                .min_cosine
                .is_some_and(|m| agreement.min_cosine_similarity < m),
            agreement,
        }
    }
}

/// Pruning's view of the compression: sensitivity on a few samples, the
/// budget on the model as it will be finished (every layer int8 when
/// `quantized`).
struct PruneJudge<'a> {
    meas: &'a Measurer,
    shapes: &'a [Vec<usize>],
    sens_data: Dataset,
    sens_ref: &'a [Vec<Tensor>],
    budget: &'a Budget<'a>,
    #[allow(clippy::type_complexity)]
    quantized: Option<(&'a [Layer], &'a HashMap<NodeId, ActQuant>, &'a Options)>,
}

impl prune::Evaluator for PruneJudge<'_> {
    fn error(&mut self, g: &Graph) -> Result<f64> {
        let mut plan = self.meas.plan(g, self.shapes)?;
        let out = data::run_plan(
            &mut plan,
            &self.sens_data,
            &indicatif::ProgressBar::hidden(),
        )?;
        Ok(1.0 - data::agreement(self.sens_ref, &out).cosine_similarity)
    }

    fn verdict(&mut self, g: &Graph) -> Result<prune::Verdict> {
        let mut c = match self.quantized {
            Some((layers, act_of, opts)) => Candidate::new(
                g,
                layers,
                &HashSet::new(),
                act_of,
                opts,
                self.meas,
                self.shapes,
            )?,
            None => Candidate::from_graph(g.clone(), HashSet::new(), self.meas, self.shapes)?,
        };
        let j = self.budget.judge(c.outputs(self.budget.eval)?);
        Ok(prune::Verdict {
            holds: !(j.breaks_drop || j.breaks_cos),
            drop_points: j.drop,
            min_cosine_similarity: j.agreement.min_cosine_similarity,
        })
    }
}

/// Structured pruning ([`channels`]) as `opts` ask (`prune_channels` of
/// the channels of every space, `prune_heads` whole heads of every
/// attention space), both scaled down by bisection until the f32 model
/// holds the accuracy budget. `norms` are the layers' input channel norms.
fn prune_structure(
    g: &Graph,
    norms: &HashMap<ValueId, Vec<f32>>,
    budget: &Budget,
    meas: &Measurer,
    shapes: &[Vec<usize>],
    opts: &Options,
) -> Result<(Graph, report::ChannelReport)> {
    let fraction = opts.prune_channels.unwrap_or(0.0);
    let at = |scale: f64| -> (f64, Option<usize>) {
        let heads = opts
            .prune_heads
            .map(|n| (n as f64 * scale).round() as usize);
        (fraction * scale, heads)
    };
    let mut search = Vec::new();
    let mut judge = |scale: f64| -> Result<(channels::Pruned, bool)> {
        let (f, heads) = at(scale);
        let pruned = channels::prune_channels(g, f, heads, norms)?;
        let mut c = Candidate::from_graph(pruned.graph.clone(), HashSet::new(), meas, shapes)?;
        let j = budget.judge(c.outputs(budget.eval)?);
        let holds = !(j.breaks_drop || j.breaks_cos);
        search.push(report::ChannelStep {
            fraction: f,
            heads,
            holds,
            drop_points: j.drop,
            min_cosine_similarity: j.agreement.min_cosine_similarity,
        });
        Ok((pruned, holds))
    };
    let pb = data::progress(opts.progress, prune::SEARCH_STEPS + 1, "channel search");
    let (first, holds) = judge(1.0)?;
    pb.inc(1);
    let (mut best, mut best_scale) = (None, 0.0);
    if holds {
        (best, best_scale) = (Some(first), 1.0);
    } else {
        let (mut lo, mut hi) = (0.0, 1.0);
        for _ in 0..prune::SEARCH_STEPS {
            let mid = 0.5 * (lo + hi);
            let (p, holds) = judge(mid)?;
            if holds {
                lo = mid;
                (best, best_scale) = (Some(p), mid);
            } else {
                hi = mid;
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let pruned = match best {
        Some(p) => p,
        None => channels::prune_channels(g, 0.0, Some(0), norms)?,
    };
    let (f, heads) = at(best_scale);
    let rep = report::ChannelReport {
        requested: fraction,
        requested_heads: opts.prune_heads,
        fraction: f,
        heads,
        params_before: g.param_count(),
        params_after: pruned.graph.param_count(),
        // Filled in once the final model is planned.
        flops_before: 0,
        flops_after: 0,
        spaces: pruned.spaces,
        search,
    };
    Ok((pruned.graph, rep))
}

/// Alternating runs that time each of `layers` layers of the model
/// `plan` runs: about 40 ms of its time per layer (as when layers were
/// timed alone), within 9..=101 runs.
fn speed_runs(plan: &mut Plan, sample: &[Tensor], layers: usize) -> Result<usize> {
    let t = Instant::now();
    plan.run(sample)?;
    let model_ms = t.elapsed().as_secs_f64() * 1e3;
    let budget_ms = (40.0 * layers as f64).max(1000.0);
    Ok(((budget_ms / model_ms.max(1e-3)) as usize).clamp(9, 101))
}

fn shapes_of(inputs: &[Tensor]) -> Vec<Vec<usize>> {
    inputs.iter().map(|t| t.shape().to_vec()).collect()
}

/// `f32_graph` with every layer not in `kept_f32` quantized, and the other
/// large constants (embedding tables, ...) stored int8 per row; the weights
/// of f32-kept layers stay f32.
/// A compressed model being measured: its graph, its plan (built once)
/// and, once evaluated, its outputs on the evaluation set.
struct Candidate {
    /// Layers left f32.
    kept: HashSet<NodeId>,
    graph: Graph,
    plan: Plan,
    outputs: Option<Vec<Vec<Tensor>>>,
}

impl Candidate {
    /// The f32 model with every layer but those in `kept_f32` int8.
    fn new(
        f32_graph: &Graph,
        layers: &[Layer],
        kept_f32: &HashSet<NodeId>,
        act_of: &HashMap<NodeId, ActQuant>,
        opts: &Options,
        meas: &Measurer,
        shapes: &[Vec<usize>],
    ) -> Result<Candidate> {
        let mut g = f32_graph.clone();
        for l in layers.iter().filter(|l| !kept_f32.contains(&l.node)) {
            quantize::quantize_layer(&mut g, l, act_of[&l.node], opts.weights)?;
        }
        let keep: HashSet<ValueId> = layers
            .iter()
            .filter(|l| kept_f32.contains(&l.node))
            .map(|l| l.weight)
            .collect();
        crate::transform::dce::remove_dead(&mut g)?;
        quantize::weight_only_except(&mut g, &keep)?;
        infer::infer_graph(&mut g)?;
        Candidate::from_graph(g, kept_f32.clone(), meas, shapes)
    }

    fn from_graph(
        graph: Graph,
        kept: HashSet<NodeId>,
        meas: &Measurer,
        shapes: &[Vec<usize>],
    ) -> Result<Candidate> {
        let plan = meas.plan(&graph, shapes)?;
        Ok(Candidate {
            kept,
            graph,
            plan,
            outputs: None,
        })
    }

    /// The outputs on every sample of `eval`, run once.
    fn outputs(&mut self, eval: &Dataset) -> Result<&Vec<Vec<Tensor>>> {
        if self.outputs.is_none() {
            let out = data::run_plan(&mut self.plan, eval, &indicatif::ProgressBar::hidden())?;
            self.outputs = Some(out);
        }
        Ok(self.outputs.get_or_insert_with(Vec::new))
    }
}

/// Bytes of a layer's weight before (f32) and after compression: the
/// constants the node reads directly or through a DequantizeLinear/Cast.
fn layer_bytes(g: &Graph, node: NodeId, f32_graph: &Graph, weight: ValueId) -> (u64, u64) {
    let before = f32_graph
        .const_value(weight)
        .map_or(0, |t| t.size_bytes() as u64);
    let Some(n) = g.node(node) else {
        return (before, 0);
    };
    let mut after = 0u64;
    // The weight, and its scale for the int8 ops.
    let weight_inputs = match n.op {
        crate::ir::Op::QConv { .. } | crate::ir::Op::QMatMul { .. } => 1..3,
        _ => 1..2,
    };
    for v in n.inputs
        [weight_inputs.start.min(n.inputs.len())..weight_inputs.end.min(n.inputs.len())]
        .iter()
        .flatten()
    {
        if let Some(t) = g.consts.get(v) {
            after += quantize::stored_bytes(t) as u64;
        } else if let Some(p) = g.producer(*v).and_then(|p| g.node(p)) {
            // Weight-only forms: DequantizeLinear (+ Cast) of constants.
            let mut stack = vec![p.clone()];
            while let Some(p) = stack.pop() {
                if !matches!(
                    p.op,
                    crate::ir::Op::DequantizeLinear { .. } | crate::ir::Op::Cast { .. }
                ) {
                    continue;
                }
                for i in p.inputs.iter().flatten() {
                    if let Some(t) = g.consts.get(i) {
                        after += quantize::stored_bytes(t) as u64;
                    } else if let Some(q) = g.producer(*i).and_then(|q| g.node(q)) {
                        stack.push(q.clone());
                    }
                }
            }
        }
    }
    (before, after)
}

/// Bundle metadata for `g` made from the model at `model_path` (whose bytes
/// are `source`) by `pipeline`.
pub fn metadata(
    g: &Graph,
    model_path: &Path,
    source: &[u8],
    pipeline: bundle::PipelineInfo,
    nodes_before: usize,
) -> bundle::Metadata {
    let file_name = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bundle::Metadata::new(
        bundle::SourceInfo::from_bytes(file_name, source),
        pipeline,
        Vec::new(),
        bundle::NodeCounts {
            before: nodes_before,
            after: g.node_count(),
        },
    )
}

/// What calibration found.
struct Calibrated {
    /// Each observed tensor's `(lo, hi)` range, by value name.
    ranges: BTreeMap<String, (f32, f32)>,
    /// Whether the ranges came from the cache.
    cached: bool,
    cache_key: String,
}

/// Streams the calibration set through the f32 model and measures the
/// range of every layer's activation input (or reads them from the cache).
/// How each int8 layer of `g` quantizes its activation: calibrated static
/// parameters when `opts` ask for them (with the calibration report), else
/// dynamic ones.
fn activation_quant(
    g: &Graph,
    layers: &[Layer],
    calib: Option<&Dataset>,
    source: &[u8],
    opts: &Options,
    meas: &Measurer,
) -> Result<(HashMap<NodeId, ActQuant>, Option<CalibrationReport>)> {
    let (
        Activations::Static {
            calib: path,
            method,
        },
        Some(c),
    ) = (&opts.activations, calib)
    else {
        return Ok((
            layers.iter().map(|l| (l.node, ActQuant::Dynamic)).collect(),
            None,
        ));
    };
    let Calibrated {
        ranges,
        cached,
        cache_key,
    } = calibrate(g, layers, c, *method, source, opts, meas)?;
    let act_of = layers
        .iter()
        .map(|l| {
            let r = ranges
                .get(&g.value(l.input).name)
                .copied()
                .unwrap_or((0.0, 0.0));
            let (scale, zero_point) = quant_params(crate::quant::calib::Range { lo: r.0, hi: r.1 });
            (l.node, ActQuant::Static { scale, zero_point })
        })
        .collect();
    let report = CalibrationReport {
        method: method.to_string(),
        data: path.display().to_string(),
        samples: c.samples,
        cached,
        cache_key,
    };
    Ok((act_of, Some(report)))
}

fn calibrate(
    g: &Graph,
    layers: &[Layer],
    data: &Dataset,
    method: CalibMethod,
    source: &[u8],
    opts: &Options,
    meas: &Measurer,
) -> Result<Calibrated> {
    let mut observed: Vec<ValueId> = layers.iter().map(|l| l.input).collect();
    observed.sort();
    observed.dedup();
    let names: Vec<String> = observed.iter().map(|&v| g.value(v).name.clone()).collect();

    let mut key_bytes = Vec::new();
    key_bytes.extend(bundle::sha256_hex(source).bytes());
    key_bytes.extend(bundle::sha256_hex(&data.fingerprint_bytes()).bytes());
    // The parameter count tells a model with channels removed apart.
    key_bytes.extend(format!("{method}|{}|{}", names.join(","), g.param_count()).bytes());
    key_bytes.extend(env!("CARGO_PKG_VERSION").bytes());
    let key = bundle::sha256_hex(&key_bytes);
    let cache_file = opts
        .cache_dir
        .as_ref()
        .map(|d| d.join("calib").join(format!("{key}.json")));
    if let Some(f) = &cache_file {
        if let Ok(text) = std::fs::read_to_string(f) {
            if let Ok(ranges) = serde_json::from_str::<BTreeMap<String, (f32, f32)>>(&text) {
                if names.iter().all(|n| ranges.contains_key(n)) {
                    return Ok(Calibrated {
                        ranges,
                        cached: true,
                        cache_key: key,
                    });
                }
            }
        }
    }

    // The observed values become extra outputs of a copy of the model.
    let mut probe = g.clone();
    let n_out = probe.outputs.len();
    probe.outputs.extend(observed.iter().copied());
    let mut observers: Vec<Observer> = observed.iter().map(|_| Observer::new()).collect();
    let first = data.sample(0)?;
    let mut plan = meas.plan(&probe, &shapes_of(&first))?;
    let pb = data::progress(opts.progress, data.samples, "calibration");
    for i in 0..data.samples {
        let outs = plan.run(&data.sample(i)?)?;
        for (obs, t) in observers.iter_mut().zip(&outs[n_out..]) {
            if let Some(v) = t.as_f32() {
                obs.observe(v);
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let ranges: BTreeMap<String, (f32, f32)> = names
        .iter()
        .zip(&observers)
        .map(|(n, o)| {
            let r = o.range(method);
            (n.clone(), (r.lo, r.hi))
        })
        .collect();
    if let Some(f) = &cache_file {
        // A cache that cannot be written only costs the next run time.
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(text) = serde_json::to_string(&ranges) {
            let _ = crate::fsutil::write_bytes_atomic(f, text.as_bytes());
        }
    }
    Ok(Calibrated {
        ranges,
        cached: false,
        cache_key: key,
    })
}

/// Alternating timed runs of the whole model with the layers kept f32 for
/// speed made int8 again, against the mixed model.
const MODEL_SPEED_RUNS: usize = 10;

/// How much slower (relative) the model with those layers int8 may time
/// and still be taken: within noise, the smaller model wins.
const MODEL_SPEED_TIE: f64 = 0.01;

/// How much slower than f32 (in ms) an int8 layer may time and still be
/// taken: within the timing noise of a microsecond-scale layer, the layer
/// with a quarter of the weights wins (a 0.045 vs 0.045 ms tie kept the
/// digits CNN entirely f32), while a millisecond-scale layer must not be
/// slower at all (a relative allowance let ResNet's near-ties add up to an
/// int8 model slower than f32).
pub const SPEED_TIE_MS: f64 = 0.005;

/// Latency of the f32 and compressed models on one sample, alternating.
fn measure_latency(
    f32_plan: &mut Plan,
    plan: &mut Plan,
    sample: &[Tensor],
    opts: &Options,
    cx: &CpuCtx,
) -> Result<Option<LatencyReport>> {
    if opts.latency_runs == 0 {
        return Ok(None);
    }
    let (tf, tq) = measure::alternate(f32_plan, plan, sample, sample, 3, opts.latency_runs)?;
    let (f, q) = (tf.median_ms, tq.median_ms);
    Ok(Some(LatencyReport {
        threads: cx.threads,
        inputs: shapes_of(sample),
        runs: opts.latency_runs,
        f32_ms: f,
        f32_ms_range: (tf.p10_ms, tf.p90_ms),
        compressed_ms: q,
        compressed_ms_range: (tq.p10_ms, tq.p90_ms),
        speedup: if q > 0.0 { f / q } else { 0.0 },
    }))
}

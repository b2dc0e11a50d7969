//! The compression report: size, latency and accuracy before and after,
//! and what happened to each layer, as JSON and Markdown.

use std::fmt::Write;

use serde::Serialize;

use super::data::Agreement;
use super::quantize::{Layer, LayerKind};
use crate::ir::Graph;
use crate::limits::human_bytes;

/// How a layer's weight is stored and computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    F32,
    Int8,
    Int8WeightOnly,
    Int4,
    Fp16,
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Int8WeightOnly => "int8 weights",
            Precision::Int4 => "int4 weights",
            Precision::Fp16 => "fp16 weights",
        }
    }
}

/// One convolution or matrix product.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub kind: LayerKind,
    pub precision: Precision,
    /// Why the layer stayed f32 (int8 mode).
    pub reason: Option<String>,
    pub weight_shape: Vec<usize>,
    /// Weight bytes in f32 and as stored now (scales included).
    pub f32_bytes: u64,
    pub stored_bytes: u64,
    /// Output error (1 - cosine similarity with the f32 model) with only
    /// this layer in int8; measured only when the int8 model broke the
    /// accuracy budget (it orders the layers that go back to f32).
    pub error_alone: Option<f64>,
    /// Top-1 accuracy drop (points) with only this layer in int8.
    pub top1_drop_alone: Option<f64>,
    /// Median time of the layer's f32 and int8 kernels on this machine.
    pub f32_ms: Option<f64>,
    pub int8_ms: Option<f64>,
    /// Which kernels run it on this machine (storage is `precision`).
    pub runs_as: String,
    /// What the timings suggest (an int8 layer whose kernel is slower
    /// here than the f32 one).
    pub note: Option<String>,
    /// Share of the weight's elements that are zero (when pruning).
    pub sparsity: Option<f64>,
    /// Multiply-adds x 2 of one run at the measured input shapes: all of
    /// them, and those on nonzero weights (when pruning).
    pub flops: Option<u64>,
    pub flops_nonzero: Option<u64>,
    /// Output error (1 - cosine) with only this layer pruned, at each
    /// sparsity measured (sensitivity allocation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prune_sensitivity: Vec<(f64, f64)>,
}

impl LayerReport {
    pub fn new(l: &Layer, g: &Graph) -> LayerReport {
        LayerReport {
            name: l.name.clone(),
            kind: l.kind,
            precision: Precision::F32,
            reason: None,
            weight_shape: g
                .const_value(l.weight)
                .map(|t| t.shape().to_vec())
                .unwrap_or_default(),
            f32_bytes: 0,
            stored_bytes: 0,
            error_alone: None,
            top1_drop_alone: None,
            runs_as: String::new(),
            note: None,
            f32_ms: None,
            int8_ms: None,
            sparsity: None,
            flops: None,
            flops_nonzero: None,
            prune_sensitivity: Vec::new(),
        }
    }
}

/// What structured pruning did (see [`super::channels`]).
#[derive(Clone, Debug, Serialize)]
pub struct ChannelReport {
    /// The share of channels asked to go, and the share that went (less
    /// when the accuracy budget broke).
    pub requested: f64,
    pub fraction: f64,
    /// Heads asked to go from every attention block, and that went.
    pub requested_heads: Option<usize>,
    pub heads: Option<usize>,
    /// Parameters (constant elements) before and after.
    pub params_before: usize,
    pub params_after: usize,
    /// FLOPs of one run (convolutions and products) before and after.
    pub flops_before: u64,
    pub flops_after: u64,
    /// Every channel space: its producers and widths, or why it kept them.
    pub spaces: Vec<super::channels::SpaceReport>,
    pub search: Vec<ChannelStep>,
}

/// One share of channels judged against the accuracy budget.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelStep {
    pub fraction: f64,
    pub heads: Option<usize>,
    pub holds: bool,
    pub drop_points: Option<f64>,
    pub min_cosine_similarity: f64,
}

impl ChannelReport {
    fn summary(&self) -> String {
        let pruned = self
            .spaces
            .iter()
            .filter(|s| s.kept_because.is_none())
            .count();
        format!(
            "channels: {:.3} of the channels{} removed in the {} of {} channel spaces that can shrink (asked {}{}); parameters {} -> {} ({:.3}x), FLOPs {:.1}M -> {:.1}M ({:.3}x)",
            self.fraction,
            self.heads
                .map_or(String::new(), |h| format!(" and {h} head(s) an attention block")),
            pruned,
            self.spaces.len(),
            self.requested,
            self.requested_heads
                .map_or(String::new(), |h| format!(", {h} head(s)")),
            self.params_before,
            self.params_after,
            self.params_after as f64 / self.params_before.max(1) as f64,
            self.flops_before as f64 / 1e6,
            self.flops_after as f64 / 1e6,
            self.flops_after as f64 / self.flops_before.max(1) as f64
        )
    }
}

/// One int8 model the accuracy budget judged (see [`Report::int8_search`]).
#[derive(Clone, Debug, Serialize)]
pub struct Int8Step {
    /// Layers stored int8 in it (the rest f32).
    pub int8_layers: usize,
    pub holds: bool,
    pub drop_points: Option<f64>,
    pub min_cosine_similarity: f64,
}

/// What pruning did (see [`super::prune`]).
#[derive(Clone, Debug, Serialize)]
pub struct PruningReport {
    /// The sparsity asked for (`0.8`), or `max`.
    pub requested: String,
    pub allocation: super::prune::Allocation,
    pub block: super::prune::Block,
    pub importance: super::prune::Importance,
    /// What happened to the surviving weights (`least-squares`: re-fit
    /// to the unpruned outputs on the calibration data).
    pub update: super::prune::Update,
    /// Layers whose survivors were not re-fit, with the reason.
    pub not_updated: Vec<(String, String)>,
    /// Share of the pruned layers' weights that are zero.
    pub sparsity: f64,
    /// Weights of the layers pruning could take, and of those zero.
    pub elements: usize,
    pub zeros: usize,
    /// Every model the search judged against the accuracy budget.
    pub search: Vec<super::prune::SearchStep>,
    /// Layers left whole, with the reason.
    pub skipped: Vec<(String, String)>,
    /// FLOPs of one run of every layer, and on nonzero weights only.
    pub flops: u64,
    pub flops_nonzero: u64,
}

/// What low-rank factorization did (see [`super::lowrank`]).
#[derive(Clone, Debug, Serialize)]
pub struct LowRankReport {
    /// `params` (share of the factorable layers' parameters) or `energy`
    /// (share of each layer's output energy), asked and reached (more
    /// when the accuracy budget broke).
    pub target: &'static str,
    pub requested: f64,
    pub reached: f64,
    /// Ranks chosen on calibration activations (else on the weights).
    pub activation_aware: bool,
    pub params_before: usize,
    pub params_after: usize,
    pub layers: Vec<super::lowrank::LayerLowRank>,
    pub skipped: Vec<(String, String)>,
    /// Every share the search judged against the accuracy budget (its
    /// `sparsity` field holds the share).
    pub search: Vec<super::prune::SearchStep>,
}

impl LowRankReport {
    /// `factorized 12 of 14 layers: parameters 1.2M -> 0.6M (...)`.
    fn summary(&self) -> String {
        let done = self.layers.iter().filter(|l| l.rank.is_some()).count();
        format!(
            "factorized {done} of {} layers ({} {:.3} asked, {:.3} reached, {}): their parameters {} -> {} ({:.3}x)",
            self.layers.len(),
            self.target,
            self.requested,
            self.reached,
            if self.activation_aware { "activation-aware" } else { "weights only" },
            self.params_before,
            self.params_after,
            self.params_after as f64 / self.params_before.max(1) as f64,
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SizeReport {
    /// The model file given.
    pub source_bytes: u64,
    /// The f32 model compiled with O2 as a bundle.
    pub f32_bundle_bytes: u64,
    /// The file written.
    pub output_bytes: u64,
    /// `output_bytes / f32_bundle_bytes` for a bundle, `/ source_bytes`
    /// for ONNX.
    pub ratio: f64,
    /// All constants, f32 and as stored (sub-byte types packed, f16-exact
    /// tensors two bytes an element), before the bundle deflates them.
    pub weights_f32_bytes: u64,
    pub weights_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub threads: usize,
    pub inputs: Vec<Vec<usize>>,
    pub runs: usize,
    /// Medians, with (min, max).
    pub f32_ms: f64,
    pub f32_ms_range: (f64, f64),
    pub compressed_ms: f64,
    pub compressed_ms_range: (f64, f64),
    /// `f32_ms / compressed_ms`.
    pub speedup: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AccuracyReport {
    pub data: String,
    pub samples: usize,
    pub labeled: bool,
    /// The data was made up (seeded random inputs), not given.
    pub synthetic: bool,
    pub top1_f32: Option<f64>,
    pub top1_compressed: Option<f64>,
    pub drop_points: Option<f64>,
    /// The compressed model's outputs against the f32 model's.
    pub agreement: Agreement,
}

#[derive(Clone, Debug, Serialize)]
pub struct CalibrationReport {
    pub method: String,
    pub data: String,
    pub samples: usize,
    /// Ranges read from the calibration cache.
    pub cached: bool,
    pub cache_key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What made the report, where and when (schema version included).
    pub header: crate::provenance::Header,
    pub model: String,
    pub output: String,
    pub format: String,
    pub mode: String,
    pub activations: String,
    pub granularity: String,
    pub float_inputs: bool,
    pub size: SizeReport,
    pub layers: Vec<LayerReport>,
    pub latency: Option<LatencyReport>,
    pub accuracy: AccuracyReport,
    pub calibration: Option<CalibrationReport>,
    /// Every int8 model judged against the accuracy budget: all layers
    /// int8 first, then one more sensitive layer back in f32 each step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub int8_search: Vec<Int8Step>,
    pub pruning: Option<PruningReport>,
    pub channel_pruning: Option<ChannelReport>,
    pub low_rank: Option<LowRankReport>,
    /// Fine-tuning against the f32 model after pruning / low rank
    /// (`--distill`).
    #[cfg(feature = "distill")]
    pub distillation: Option<DistillationReport>,
    pub max_accuracy_drop: f64,
    pub min_cosine: Option<f64>,
    /// `size` (storage int8 wherever accuracy allows) or `latency`.
    pub goal: String,
    /// What the user must not miss (every layer f32, synthetic data).
    pub warnings: Vec<String>,
    /// f32 parameter tensors (biases, norms) rounded to f16 values, stored
    /// in two bytes an element (int4).
    pub params_f16: usize,
    /// What measuring cost: execution plans built and weights packed for
    /// them, and the wall time of the whole compression.
    pub measurement: MeasurementReport,
}

/// See [`Report::measurement`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct MeasurementReport {
    pub plans_built: u64,
    pub weights_packed: u64,
    pub seconds: f64,
}

/// The distillation step of `mlc compress --distill`.
#[cfg(feature = "distill")]
#[derive(Clone, Debug, Serialize)]
pub struct DistillationReport {
    /// The model before distillation (pruned / factorized, f32) on the
    /// evaluation data, against the f32 model.
    pub before: AccuracyReport,
    /// What training did (scored on its held-out data: the calibration
    /// data, else the training data).
    pub training: crate::distill::DistillReport,
}

/// `distilled on ... : 34 of 60 epochs (best 24), ...`: one line of the
/// distillation step.
#[cfg(feature = "distill")]
fn distill_summary(r: &DistillationReport) -> String {
    let d = &r.training;
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let mut s = format!(
        "distilled on {} ({} samples): {} of {} epochs (best {}{}), {:.1} s; on {} {}: agreement with f32 {} -> {}",
        d.data,
        d.train_samples,
        d.epochs_run,
        d.epochs_requested,
        d.best_epoch,
        if d.stopped_early { ", stopped early" } else { "" },
        d.seconds,
        if d.held_out { "held-out" } else { "training data" },
        d.evaluated_on,
        pct(d.before.top1_agreement),
        pct(d.after.top1_agreement),
    );
    if let (Some(b), Some(a)) = (d.before.accuracy, d.after.accuracy) {
        s += &format!(", top-1 {} -> {}", pct(b), pct(a));
    }
    let e = &r.before;
    match e.top1_compressed {
        Some(t) => s += &format!("; before it, top-1 on {} {}", e.data, pct(t)),
        None => {
            s += &format!(
                "; before it, on {}: cosine {:.5} (min {:.5})",
                e.data, e.agreement.cosine_similarity, e.agreement.min_cosine_similarity
            )
        }
    }
    s
}

impl LayerReport {
    /// The kind of reason this layer is as it is, shared by the layers the
    /// same reason holds for (the sentence itself carries each layer's
    /// figures).
    fn why_label(&self) -> Option<&'static str> {
        match (&self.reason, &self.note) {
            (Some(r), _) if r.starts_with("accuracy") => {
                Some("kept f32 for accuracy (the most sensitive int8 layers, reverted until the budget held)")
            }
            (Some(r), _) if r.starts_with("speed") => {
                Some("kept f32 for speed (--goal latency: the int8 kernel timed slower here)")
            }
            (Some(_), _) => Some("kept f32"),
            (None, Some(_)) => Some(
                "stored int8 whose int8 kernel timed slower here than the f32 one (`mlc tune` can run them on the f32 kernels; storage stays int8)",
            ),
            (None, None) => None,
        }
    }
}

impl PruningReport {
    /// `pruned to 0.812 sparsity (asked max, sensitivity allocation, ...)`.
    fn summary(&self) -> String {
        format!(
            "pruned to sparsity {:.3} of {} prunable weights (asked {}; {} allocation, {} blocks, {} importance, {} update); FLOPs {:.1}M -> {:.1}M on nonzero weights",
            self.sparsity,
            self.elements,
            self.requested,
            self.allocation.name(),
            self.block.name(),
            self.importance.name(),
            self.update.name(),
            self.flops as f64 / 1e6,
            self.flops_nonzero as f64 / 1e6,
        )
    }
}

impl Report {
    /// Layers by precision.
    pub fn count(&self, p: Precision) -> usize {
        self.layers.iter().filter(|l| l.precision == p).count()
    }

    /// `f32 98.70%, int8 98.33% (-0.37 points)` when there were labels.
    fn top1_text(&self) -> Option<String> {
        let (f, c) = (self.accuracy.top1_f32?, self.accuracy.top1_compressed?);
        Some(format!(
            "f32 {:.2}%, {} {:.2}% ({:+.2} points)",
            100.0 * f,
            self.mode,
            100.0 * c,
            100.0 * (c - f)
        ))
    }

    /// Top-1 agreement, cosine (named `cosine`) and max error with f32.
    fn agreement_text(&self, cosine: &str) -> String {
        let g = &self.accuracy.agreement;
        format!(
            "top-1 {:.2}%, {cosine} {:.5} (min {:.5}), max |error| {:.3e}",
            100.0 * g.top1_agreement,
            g.cosine_similarity,
            g.min_cosine_similarity,
            g.max_abs_error
        )
    }

    /// The short summary printed by the CLI.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let z = &self.size;
        let _ = writeln!(
            s,
            "{} -> {} ({}, {}): {} -> {} ({:.3}x); weights {} -> {} before deflate",
            self.model,
            self.output,
            self.format,
            self.mode,
            human_bytes(z.f32_bundle_bytes),
            human_bytes(z.output_bytes),
            z.ratio,
            human_bytes(z.weights_f32_bytes),
            human_bytes(z.weights_bytes)
        );
        if self.mode == "int8" {
            let on_f32 = self
                .layers
                .iter()
                .filter(|l| l.precision == Precision::Int8 && l.runs_as.starts_with("f32"))
                .count();
            let slower = self
                .layers
                .iter()
                .filter(|l| l.precision == Precision::Int8 && l.note.is_some())
                .count();
            let _ = writeln!(
                s,
                "layers: {} stored int8 ({} run on the f32 kernels here; {} whose int8 kernel timed slower here: `mlc tune` decides), {} kept f32{}; activations {}",
                self.count(Precision::Int8),
                on_f32,
                slower,
                self.count(Precision::F32),
                match self.count(Precision::F32) {
                    0 => String::new(),
                    _ => format!(
                        " ({})",
                        self.layers
                            .iter()
                            .filter(|l| l.precision == Precision::F32)
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                self.activations
            );
        }
        if let Some(c) = &self.channel_pruning {
            let _ = writeln!(s, "{}", c.summary());
        }
        if let Some(l) = &self.low_rank {
            let _ = writeln!(s, "{}", l.summary());
        }
        if let Some(p) = &self.pruning {
            let _ = writeln!(s, "{}", p.summary());
        }
        #[cfg(feature = "distill")]
        if let Some(d) = &self.distillation {
            let _ = writeln!(s, "{}", distill_summary(d));
        }
        if self.params_f16 > 0 {
            let _ = writeln!(
                s,
                "other parameters: {} f32 tensors (biases, norms) rounded to f16 values",
                self.params_f16
            );
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                s,
                "latency ({} thread{}, median of {}): f32 {:.3} ms, {} {:.3} ms ({:.2}x)",
                l.threads,
                if l.threads == 1 { "" } else { "s" },
                l.runs,
                l.f32_ms,
                self.mode,
                l.compressed_ms,
                l.speedup
            );
        }
        let a = &self.accuracy;
        if let Some(t) = self.top1_text() {
            let _ = writeln!(s, "top-1 accuracy on {} samples: {t}", a.samples);
        }
        let _ = writeln!(
            s,
            "agreement with f32 on {} ({} samples): {}",
            a.data,
            a.samples,
            self.agreement_text("cosine")
        );
        let m = &self.measurement;
        let _ = writeln!(
            s,
            "measured in {:.1} s: {} execution plans built, {} weights packed",
            m.seconds, m.plans_built, m.weights_packed
        );
        s
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Compression report: {}\n", self.model);
        let _ = writeln!(s, "{}", self.header.markdown());
        for w in &self.warnings {
            let _ = writeln!(s, "> **Warning:** {w}\n");
        }
        let _ = writeln!(
            s,
            "- output: `{}` ({})\n- mode: {}, weights {}, activations {}",
            self.output, self.format, self.mode, self.granularity, self.activations
        );
        if let Some(c) = &self.calibration {
            let _ = writeln!(
                s,
                "- calibration: {} over {} samples of `{}`{}",
                c.method,
                c.samples,
                c.data,
                if c.cached { " (from the cache)" } else { "" }
            );
        }
        if let Some(c) = &self.channel_pruning {
            let _ = writeln!(s, "- structured pruning: {}", c.summary());
        }
        if let Some(l) = &self.low_rank {
            let _ = writeln!(s, "- low rank: {}", l.summary());
        }
        if let Some(p) = &self.pruning {
            let _ = writeln!(s, "- pruning: {}", p.summary());
        }
        #[cfg(feature = "distill")]
        if let Some(d) = &self.distillation {
            let _ = writeln!(s, "- {}", distill_summary(d));
        }
        let z = &self.size;
        let _ = writeln!(s, "\n## Size\n");
        let _ = writeln!(s, "| | bytes |\n|---|---|");
        let _ = writeln!(s, "| source model | {} |", z.source_bytes);
        let _ = writeln!(s, "| f32 bundle (O2) | {} |", z.f32_bundle_bytes);
        let _ = writeln!(s, "| output | {} ({:.3}x) |", z.output_bytes, z.ratio);
        let _ = writeln!(
            s,
            "| weights, before the bundle's deflate | {} -> {} ({:.3}x) |",
            z.weights_f32_bytes,
            z.weights_bytes,
            z.weights_bytes as f64 / z.weights_f32_bytes.max(1) as f64
        );
        if self.params_f16 > 0 {
            let _ = writeln!(
                s,
                "\n{} f32 parameter tensors (biases, norms) were rounded to f16 values.",
                self.params_f16
            );
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(s, "\n## Latency (this machine)\n");
            let _ = writeln!(
                s,
                "{} thread(s), inputs {:?}, median of {} alternating runs (min-max):\n",
                l.threads, l.inputs, l.runs
            );
            let _ = writeln!(s, "| model | ms |\n|---|---|");
            let _ = writeln!(
                s,
                "| f32 | {:.3} ({:.3}-{:.3}) |",
                l.f32_ms, l.f32_ms_range.0, l.f32_ms_range.1
            );
            let _ = writeln!(
                s,
                "| {} | {:.3} ({:.3}-{:.3}) |",
                self.mode, l.compressed_ms, l.compressed_ms_range.0, l.compressed_ms_range.1
            );
            let _ = writeln!(s, "\nspeedup {:.2}x", l.speedup);
        }
        let a = &self.accuracy;
        let _ = writeln!(s, "\n## Accuracy ({} samples of {})\n", a.samples, a.data);
        if let Some(t) = self.top1_text() {
            let _ = writeln!(s, "- top-1: {t}");
        }
        let _ = writeln!(
            s,
            "- agreement with f32: {}, relative MSE {:.3e}",
            self.agreement_text("cosine similarity"),
            a.agreement.relative_mse
        );
        if let Some(p) = &self.pruning {
            let _ = writeln!(s, "\n## Pruning search\n");
            let _ = writeln!(s, "| sparsity | top-1 drop (points) | min cosine | holds the budget |\n|---|---|---|---|");
            for st in &p.search {
                let _ = writeln!(
                    s,
                    "| {:.4} | {} | {:.5} | {} |",
                    st.sparsity,
                    st.verdict
                        .drop_points
                        .map_or("-".into(), |d| format!("{d:.2}")),
                    st.verdict.min_cosine_similarity,
                    if st.verdict.holds { "yes" } else { "no" }
                );
            }
            for (name, why) in &p.skipped {
                let _ = writeln!(s, "\n- `{name}` not pruned: {why}");
            }
            for (name, why) in &p.not_updated {
                let _ = writeln!(
                    s,
                    "\n- `{name}` pruned without the least-squares update: {why}"
                );
            }
        }
        if let Some(c) = &self.channel_pruning {
            let _ = writeln!(s, "\n## Channel spaces\n");
            let _ = writeln!(
                s,
                "| produced by | channels | kept because |\n|---|---|---|"
            );
            for sp in &c.spaces {
                let heads = sp.head_width.map_or(String::new(), |w| {
                    format!(
                        " ({} -> {} heads of {w})",
                        sp.channels_before / w,
                        sp.channels_after / w
                    )
                });
                let _ = writeln!(
                    s,
                    "| {} | {} -> {}{heads} | {} |",
                    sp.producers.join(", "),
                    sp.channels_before,
                    sp.channels_after,
                    sp.kept_because.as_deref().unwrap_or("")
                );
            }
        }
        // Each reason once, with the layers it holds for, instead of one
        // sentence per layer row.
        let mut groups: Vec<(&'static str, Vec<&LayerReport>)> = Vec::new();
        for l in &self.layers {
            if let Some(label) = l.why_label() {
                match groups.iter_mut().find(|(g, _)| *g == label) {
                    Some((_, ls)) => ls.push(l),
                    None => groups.push((label, vec![l])),
                }
            }
        }
        if !groups.is_empty() {
            let _ = writeln!(s, "\n## Why layers are as they are\n");
        }
        for (i, (label, ls)) in groups.iter().enumerate() {
            let median = |v: Vec<f64>| {
                let mut v = v;
                v.sort_by(f64::total_cmp);
                crate::measure::percentile(&v, 50.0)
            };
            let int8: Vec<f64> = ls.iter().filter_map(|l| l.int8_ms).collect();
            let f32: Vec<f64> = ls.iter().filter_map(|l| l.f32_ms).collect();
            let timings = match (int8.is_empty(), f32.is_empty()) {
                (false, false) => format!(
                    " (median over them: int8 {:.3} ms, f32 {:.3} ms)",
                    median(int8),
                    median(f32)
                ),
                _ => String::new(),
            };
            let mut names: Vec<String> =
                ls.iter().take(8).map(|l| format!("`{}`", l.name)).collect();
            if ls.len() > 8 {
                names.push(format!("and {} more", ls.len() - 8));
            }
            let _ = writeln!(
                s,
                "- [{}] {} layer{} {label}{timings}: {} (each layer's own figures: the JSON report's `reason`/`note`)",
                i + 1,
                ls.len(),
                if ls.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
        }
        let _ = writeln!(s, "\n## Layers\n");
        let _ = writeln!(
            s,
            "| layer | kind | stored as | runs as | weight | sparsity | f32 bytes | bytes | MFLOP (nonzero) | error alone | f32 ms | int8 ms | why |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        for l in &self.layers {
            let _ = writeln!(
                s,
                "| {} | {:?} | {} | {} | {:?} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.name,
                l.kind,
                l.precision.name(),
                l.runs_as,
                l.weight_shape,
                opt(l.sparsity, 3),
                l.f32_bytes,
                l.stored_bytes,
                match (l.flops, l.flops_nonzero) {
                    (Some(f), Some(n)) => format!("{:.2} ({:.2})", f as f64 / 1e6, n as f64 / 1e6),
                    (Some(f), None) => format!("{:.2}", f as f64 / 1e6),
                    _ => "-".into(),
                },
                l.error_alone.map_or("-".into(), |e| format!("{e:.2e}")),
                opt(l.f32_ms, 3),
                opt(l.int8_ms, 3),
                l.why_label()
                    .and_then(|w| groups.iter().position(|(g, _)| *g == w))
                    .map_or(String::new(), |i| format!("[{}]", i + 1))
            );
        }
        s
    }

    /// The report as one self-contained HTML page with plots: size per
    /// layer by storage type, latency, accuracy, and the trade-off of every
    /// search that judged candidates against the accuracy budget.
    pub fn html(&self) -> String {
        use crate::report::svg::{Bar, BarRow, Bars, Point, Scatter, Series};
        use crate::report::{Page, Tone};
        let mut p = Page::new(&format!("Compression report: {}", self.model));
        p.header(&self.header);
        for w in &self.warnings {
            p.warning(&format!("Warning: {w}"));
        }
        p.pre(&self.summary());

        let z = &self.size;
        p.heading("Size");
        let kib = |b: u64| b as f64 / 1024.0;
        p.plot(
            Bars {
                axis: "KiB".into(),
                ..Bars::simple(
                    "Model size",
                    "KiB",
                    &[
                        ("source model".into(), kib(z.source_bytes)),
                        ("f32 bundle (O2)".into(), kib(z.f32_bundle_bytes)),
                        (format!("output ({:.3}x)", z.ratio), kib(z.output_bytes)),
                    ],
                )
            }
            .draw(),
        );
        // One colour per storage type; each layer's f32 weight against its
        // weight as stored.
        const STORED: [Precision; 5] = [
            Precision::F32,
            Precision::Int8,
            Precision::Int8WeightOnly,
            Precision::Int4,
            Precision::Fp16,
        ];
        let series_of = |pr: Precision| STORED.iter().position(|&q| q == pr).unwrap_or(0);
        p.plot(
            Bars {
                title: "Weight size per layer, before (f32) and after (as stored)".into(),
                axis: "KiB".into(),
                series: STORED.iter().map(|q| q.name().to_string()).collect(),
                rows: self
                    .layers
                    .iter()
                    .map(|l| BarRow {
                        label: l.name.clone(),
                        bars: vec![
                            Bar {
                                label: "before".into(),
                                segments: vec![(0, kib(l.f32_bytes))],
                                range: None,
                            },
                            Bar {
                                label: "after".into(),
                                segments: vec![(series_of(l.precision), kib(l.stored_bytes))],
                                range: None,
                            },
                        ],
                    })
                    .collect(),
                caption: "Weights with their scales, before the bundle deflates them; colour: how the layer is stored.".into(),
                reference: None,
            }
            .draw(),
        );

        p.heading("Latency (this machine)");
        match &self.latency {
            Some(l) => p.plot(
                Bars {
                    title: "Whole model, alternating runs".into(),
                    axis: "ms (median, whiskers min-max)".into(),
                    rows: [
                        ("f32", l.f32_ms, l.f32_ms_range),
                        (self.mode.as_str(), l.compressed_ms, l.compressed_ms_range),
                    ]
                    .iter()
                    .map(|(name, ms, range)| BarRow {
                        label: name.to_string(),
                        bars: vec![Bar {
                            label: String::new(),
                            segments: vec![(0, *ms)],
                            range: Some(*range),
                        }],
                    })
                    .collect(),
                    caption: format!(
                        "{} thread(s), inputs {:?}, {} runs each; speedup {:.2}x.",
                        l.threads, l.inputs, l.runs, l.speedup
                    ),
                    ..Bars::default()
                }
                .draw(),
            ),
            None => p.paragraph("Latency was not measured (--no-speed-check)."),
        }
        let timed: Vec<&LayerReport> = self
            .layers
            .iter()
            .filter(|l| l.f32_ms.is_some() || l.int8_ms.is_some())
            .collect();
        if !timed.is_empty() {
            let mut kinds: Vec<(String, Vec<Option<f64>>)> = Vec::new();
            for l in &timed {
                let kind = format!("{:?}", l.kind);
                let i = match kinds.iter().position(|(k, _)| *k == kind) {
                    Some(i) => i,
                    None => {
                        kinds.push((kind, vec![None, None]));
                        kinds.len() - 1
                    }
                };
                for (slot, v) in kinds[i].1.iter_mut().zip([l.f32_ms, l.int8_ms]) {
                    if let Some(v) = v {
                        *slot = Some(slot.unwrap_or(0.0) + v);
                    }
                }
            }
            p.plot(
                Bars {
                    caption: "Sum over the layers of each kind of their median times, timed inside the whole models, run alternately.".into(),
                    ..Bars::grouped("Layer time per op type", "ms", &["f32 kernel", "int8 kernel"], &kinds)
                }
                .draw(),
            );
            let rows: Vec<(String, Vec<Option<f64>>)> = timed
                .iter()
                .map(|l| (l.name.clone(), vec![l.f32_ms, l.int8_ms]))
                .collect();
            p.plot(
                Bars::grouped(
                    "Layer time per layer",
                    "ms (median)",
                    &["f32 kernel", "int8 kernel"],
                    &rows,
                )
                .draw(),
            );
        }

        let a = &self.accuracy;
        p.heading(&format!("Accuracy ({} samples of {})", a.samples, a.data));
        let g = &a.agreement;
        let mut metrics: Vec<(String, f64)> = Vec::new();
        if let (Some(f), Some(c)) = (a.top1_f32, a.top1_compressed) {
            metrics.push(("top-1 accuracy, f32".into(), f));
            metrics.push((format!("top-1 accuracy, {}", self.mode), c));
        }
        metrics.push(("top-1 agreement with f32".into(), g.top1_agreement));
        metrics.push(("cosine similarity (mean)".into(), g.cosine_similarity));
        metrics.push((
            "cosine similarity (lowest sample)".into(),
            g.min_cosine_similarity,
        ));
        p.plot(
            Bars {
                caption: format!(
                    "Max |error| {:.3e}, relative MSE {:.3e}{}.",
                    g.max_abs_error,
                    g.relative_mse,
                    if a.synthetic {
                        "; on synthetic (seeded random) inputs"
                    } else {
                        ""
                    }
                ),
                ..Bars::simple(
                    "Accuracy and agreement with the f32 model",
                    "share (1 = all)",
                    &metrics,
                )
            }
            .draw(),
        );
        let sensitive: Vec<(String, f64)> = self
            .layers
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.error_alone?)))
            .collect();
        if !sensitive.is_empty() {
            p.plot(
                Bars::simple(
                    "Output error with only this layer int8 (1 - cosine)",
                    "1 - cosine similarity",
                    &sensitive,
                )
                .draw(),
            );
        }

        // Trade-offs: every candidate a search judged.
        let budget_line = self.min_cosine.map(|c| (c, format!("--min-cosine {c}")));
        let tradeoff = |title: &str, x_axis: &str, steps: Vec<(f64, bool, f64, String)>| {
            let (holds, breaks): (Vec<_>, Vec<_>) = steps.into_iter().partition(|s| s.1);
            let series = |name: &str, pts: Vec<(f64, bool, f64, String)>, hollow: bool| Series {
                name: name.into(),
                points: pts
                    .into_iter()
                    .map(|(x, _, y, label)| Point {
                        x,
                        y,
                        label,
                        hollow,
                    })
                    .collect(),
                line: false,
            };
            Scatter {
                title: title.into(),
                x_axis: x_axis.into(),
                y_axis: "lowest cosine similarity with f32".into(),
                series: vec![
                    series("holds the accuracy budget", holds, false),
                    series("breaks it", breaks, true),
                ],
                caption: "Each point a model judged against the accuracy budget.".into(),
                y_reference: budget_line.clone(),
            }
            .draw()
        };
        let mut searched = false;
        if !self.int8_search.is_empty() {
            searched = true;
            p.heading("Int8 layers against accuracy");
            p.plot(tradeoff(
                "Layers stored int8 against accuracy",
                "layers stored int8 (more: smaller)",
                self.int8_search
                    .iter()
                    .map(|s| {
                        (
                            s.int8_layers as f64,
                            s.holds,
                            s.min_cosine_similarity,
                            drop_label(s.drop_points),
                        )
                    })
                    .collect(),
            ));
        }
        if let Some(pr) = &self.pruning {
            searched = true;
            p.heading("Pruning search");
            p.plot(tradeoff(
                "Sparsity against accuracy",
                "share of prunable weights zero (more: smaller)",
                pr.search
                    .iter()
                    .map(|s| search_point(s.sparsity, &s.verdict))
                    .collect(),
            ));
        }
        if let Some(lr) = &self.low_rank {
            searched = true;
            p.heading("Low-rank search");
            p.plot(tradeoff(
                &format!("Low-rank target ({}) against accuracy", lr.target),
                &format!("{} share kept (less: smaller)", lr.target),
                lr.search
                    .iter()
                    .map(|s| search_point(s.sparsity, &s.verdict))
                    .collect(),
            ));
        }
        if let Some(c) = &self.channel_pruning {
            searched = true;
            p.heading("Structured pruning search");
            p.plot(tradeoff(
                "Channels removed against accuracy",
                "share of channels removed (more: smaller)",
                c.search
                    .iter()
                    .map(|s| {
                        (
                            s.fraction,
                            s.holds,
                            s.min_cosine_similarity,
                            drop_label(s.drop_points),
                        )
                    })
                    .collect(),
            ));
        }
        if !searched {
            p.paragraph(
                "No search judged candidates against the accuracy budget (nothing to trade off).",
            );
        }

        p.heading("Layers");
        let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
        let rows: Vec<Vec<(String, Tone)>> = self
            .layers
            .iter()
            .map(|l| {
                let plain = |t: String| (t, Tone::Plain);
                vec![
                    plain(l.name.clone()),
                    plain(format!("{:?}", l.kind)),
                    plain(l.precision.name().to_string()),
                    plain(l.runs_as.clone()),
                    plain(format!("{:?}", l.weight_shape)),
                    plain(opt(l.sparsity, 3)),
                    plain(l.f32_bytes.to_string()),
                    plain(l.stored_bytes.to_string()),
                    plain(opt(l.f32_ms, 3)),
                    plain(opt(l.int8_ms, 3)),
                    plain(
                        [l.reason.as_deref(), l.note.as_deref()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                ]
            })
            .collect();
        p.table(
            &[
                "layer",
                "kind",
                "stored as",
                "runs as",
                "weight",
                "sparsity",
                "f32 bytes",
                "bytes",
                "f32 ms",
                "int8 ms",
                "why",
            ],
            &rows,
            &[5, 6, 7, 8, 9],
        );
        p.finish()
    }
}

/// A candidate's tooltip: its top-1 drop, when there were labels.
/// A candidate of a pruning or low-rank search as a trade-off point: its
/// size knob, whether it held the budget, its lowest cosine, its drop.
fn search_point(x: f64, v: &super::prune::Verdict) -> (f64, bool, f64, String) {
    (
        x,
        v.holds,
        v.min_cosine_similarity,
        drop_label(v.drop_points),
    )
}

fn drop_label(drop: Option<f64>) -> String {
    drop.map_or(String::new(), |d| format!("top-1 drop {d:.2} points"))
}

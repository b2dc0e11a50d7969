//! The command line's arguments (clap definitions and value checks); `main.rs`
//! turns them into library calls.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mlc",
    version,
    about = "Model compression and compilation toolchain"
)]
pub(crate) struct Cli {
    /// Most memory a model or input file may make mlc allocate (e.g. 512MB,
    /// 8GiB); beyond it a command stops with a clear error before
    /// allocating. Default 4GiB.
    #[arg(long, global = true, value_name = "SIZE", value_parser = mlc::api::parse_bytes)]
    pub(crate) max_memory: Option<u64>,
    /// Print only errors and what the command is asked to produce (data,
    /// --json): no progress bars, no summaries of files written.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Print more: every pass's changes (compile), the whole report
    /// (compress, tune, check, bench --compare), each epoch (distill).
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum GoalArg {
    Size,
    Latency,
}

/// `mlc distill --objective`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ObjectiveArg {
    Auto,
    Kl,
    Mse,
    Cosine,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Emit {
    Mlc,
    Onnx,
    /// ONNX with pruned weights as sparse initializers.
    OnnxSparse,
}

/// Where a run's inputs come from, and the sizes of symbolic dims.
#[derive(clap::Args)]
pub(crate) struct InputArgs {
    /// Input as NAME=FILE.npy; repeat for several inputs.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub(crate) input: Vec<String>,
    /// Inputs from one .npz, keyed by input name.
    #[arg(long, value_name = "FILE.npz")]
    pub(crate) inputs: Option<PathBuf>,
    /// Size of a symbolic dim for random inputs, as NAME=SIZE (default 1).
    #[arg(long = "dim", value_name = "NAME=SIZE")]
    pub(crate) dim: Vec<String>,
    /// Batch size: binds the first symbolic dim of each input.
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Threads for the kernels (default: the machine's cores).
    #[arg(long, value_parser = thread_count)]
    pub(crate) threads: Option<usize>,
    /// Ignore the model's kernel choices (`mlc tune`): run every node's
    /// default kernels.
    #[arg(long)]
    pub(crate) untuned: bool,
    /// Run a batch as one: do not split it into items where the model
    /// computes each item on its own (by default such a batch runs item
    /// by item, each thread its own items).
    #[arg(long)]
    pub(crate) whole_batch: bool,
}

/// The flags of `mlc bench --compare`.
#[derive(Args, Debug)]
pub(crate) struct CompareArgs {
    /// Compare the models given (every one on the first one's inputs) in
    /// alternating rounds; prints a Markdown table (JSON with --json).
    #[arg(long)]
    pub(crate) compare: bool,
    /// Also run every .onnx model on ONNX Runtime (needs a Python with
    /// onnxruntime: --python).
    #[arg(long, requires = "compare")]
    pub(crate) ort: bool,
    /// The Python for --ort (default: .venv/bin/python of the working
    /// directory or of the repository mlc was built in, else python3).
    #[arg(long, value_name = "PATH", requires = "ort")]
    pub(crate) python: Option<PathBuf>,
    /// Measure for this long (e.g. 30s, 2m) instead of --runs runs.
    #[arg(long, value_parser = crate::budget, requires = "compare")]
    pub(crate) duration: Option<std::time::Duration>,
    /// Rounds the runs are spread over (who goes first changes every round).
    #[arg(long, default_value_t = 10, value_parser = run_count, requires = "compare")]
    pub(crate) rounds: usize,
    /// Write the report to FILE too, in the format its extension names
    /// (.json, .html, else Markdown); repeat for several.
    #[arg(short, long = "output", value_name = "FILE", requires = "compare")]
    pub(crate) output: Vec<PathBuf>,
    /// Write the HTML report (with plots) to FILE.
    #[arg(long, value_name = "FILE", requires = "compare")]
    pub(crate) html: Option<PathBuf>,
    /// Write every run's time (per model, with its round) to FILE as JSON.
    #[arg(long, value_name = "FILE", requires = "compare")]
    pub(crate) export_times: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Summarize a model: inputs/outputs, op histogram, parameters, unsupported ops.
    Inspect {
        model: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Print the imported graph in mlc's IR text form.
        #[arg(long, conflicts_with = "json")]
        ir: bool,
    },
    /// List every registered pass with its summary and parameters.
    Passes {
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Optimize a model with a pass pipeline and write a .mlc bundle or ONNX.
    Compile {
        model: PathBuf,
        /// Output file (.mlc bundle, or .onnx with --emit onnx).
        #[arg(long, short)]
        output: PathBuf,
        /// Pipeline: a built-in recipe name (O0, O1, O2) or a recipe file.
        #[arg(long, default_value = "O2")]
        pipeline: String,
        /// What to write (default: from the output's extension, else mlc).
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// After every pass, run the reference interpreter on seeded sample
        /// inputs and stop at the first pass whose outputs drift.
        #[arg(long)]
        verify: bool,
        /// Size of a symbolic dim for --verify's sample inputs, as NAME=SIZE.
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dim: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on the fast CPU runtime (or the reference interpreter).
    Run {
        model: PathBuf,
        #[command(flatten)]
        inputs: InputArgs,
        /// Feed seeded random inputs to every input not given otherwise.
        #[arg(long, value_name = "SEED")]
        random: Option<u64>,
        /// Run the reference interpreter, the numerical oracle, instead.
        #[arg(long)]
        reference: bool,
        /// Write the outputs to this .npz (or .npy when the model has one output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time a model on the CPU runtime: latency percentiles, throughput,
    /// peak memory, and per-op time with --profile. With --compare, several
    /// models (an .onnx and its .mlc variants) in alternating rounds on the
    /// same inputs, and with --ort ONNX Runtime on the .onnx ones: one table
    /// (median with min-max, ratio to the first, size, memory).
    Bench {
        /// The model; several with --compare.
        #[arg(required = true, num_args = 1.., value_name = "MODEL")]
        model: Vec<PathBuf>,
        #[command(flatten)]
        inputs: InputArgs,
        /// Untimed runs first.
        #[arg(long, default_value_t = 5, value_parser = run_count)]
        warmup: usize,
        /// Timed runs.
        #[arg(long, default_value_t = 50, value_parser = run_count)]
        runs: usize,
        /// Pipeline to compile with first: a built-in recipe or a recipe file
        /// (default O2, or none for an .mlc bundle; O0 skips compilation).
        #[arg(long)]
        pipeline: Option<String>,
        /// Seed of the random inputs (inputs not given as files).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Time every node and report time, share and GFLOP/s per op type.
        #[arg(long)]
        profile: bool,
        /// Also run the reference interpreter on the original model with the
        /// same inputs and check the outputs agree (rtol 1e-3, atol 1e-5);
        /// exit 1 when they do not.
        #[arg(long)]
        verify: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        compare: CompareArgs,
    },
    /// Tune a model's kernel choices on this machine by measuring them per
    /// node (checked against the reference first), and write a bundle that
    /// carries them, with a tuning report (JSON and Markdown) beside it.
    Tune {
        model: PathBuf,
        /// The tuned bundle (default: MODEL's name with `.tuned.mlc`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        inputs: InputArgs,
        /// The target: `host` (this machine, measured).
        #[arg(long, default_value = "host")]
        target: String,
        /// Wall time for the per-node measurements, e.g. 30s, 2m, 1m30s.
        #[arg(long, default_value = "1m", value_parser = crate::budget)]
        budget: std::time::Duration,
        /// The tuning database (JSON lines; default: tuning.jsonl in the
        /// user's cache directory, or $MLC_TUNING_DB).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Pipeline to compile an ONNX model with first.
        #[arg(long, default_value = "O2")]
        pipeline: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compress a model: int8 post-training quantization (or int4/fp16
    /// weights), with a size/latency/accuracy report written beside the output.
    Compress(Box<CompressArgs>),
    /// Distill a student (a compressed model) from its teacher on sample
    /// data: KL on softened class scores, 1 - cosine for L2-normalized
    /// embeddings (MSE for other outputs), AdamW with a cosine schedule,
    /// pruned zeros kept, early stop on held-out agreement (mean cosine for
    /// embeddings).
    Distill(Box<DistillArgs>),
    /// The CI gate: measure the budgets a model must hold (size, latency,
    /// accuracy, agreement, regression against a baseline), one PASS/FAIL
    /// line each; exit 0 when all hold, 3 when one fails (2: bad input,
    /// 1: internal error).
    Check(Box<CheckArgs>),
    /// List the target descriptions: this machine (probed), then the
    /// built-in ones (targets/*.toml).
    Targets {
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine: f32 FMA peak and memory read bandwidth, on one
    /// thread and on all threads.
    Probe {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Rough time budget for the whole probe, in seconds.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// The model (.onnx or .mlc); optional with --budget (then every model
    /// of the file, or only this one's entries).
    pub(crate) model: Option<PathBuf>,
    /// A budget file (TOML) with [[model]] entries.
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) budget: Option<PathBuf>,
    /// Largest file size (e.g. 5MB, 200KiB, 123456).
    #[arg(long, value_name = "SIZE", value_parser = check_size)]
    pub(crate) max_size: Option<u64>,
    /// Largest median latency; fails only when beyond the noise.
    #[arg(long, value_name = "MS")]
    pub(crate) max_latency_ms: Option<f64>,
    /// Smallest top-1 accuracy (0 to 1) on --eval.
    #[arg(long, value_name = "SHARE")]
    pub(crate) min_accuracy: Option<f64>,
    /// Labeled data (.npz with `labels`) for --min-accuracy.
    #[arg(long, value_name = "DATA.npz")]
    pub(crate) eval: Option<PathBuf>,
    /// Smallest per-sample cosine similarity with --reference on --data.
    #[arg(long, value_name = "COS")]
    pub(crate) min_cosine: Option<f64>,
    /// The model to agree with (e.g. the original .onnx).
    #[arg(long, value_name = "MODEL")]
    pub(crate) reference: Option<PathBuf>,
    /// Inputs (.npz keyed by input name) for --min-cosine.
    #[arg(long, value_name = "DATA.npz")]
    pub(crate) data: Option<PathBuf>,
    /// Largest latency regression against --baseline (5% or 0.05); fails
    /// only when beyond the noise.
    #[arg(long, value_name = "SHARE", value_parser = check_share)]
    pub(crate) max_regression: Option<f64>,
    /// The model to compare latency with, run alternately.
    #[arg(long, value_name = "MODEL")]
    pub(crate) baseline: Option<PathBuf>,
    /// Threads for the latency runs (default: the machine's cores).
    #[arg(long, value_parser = thread_count)]
    pub(crate) threads: Option<usize>,
    /// Batch size of the latency runs' seeded random inputs.
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Timed rounds of the latency budgets (at least 5).
    #[arg(long)]
    pub(crate) rounds: Option<usize>,
    /// Also write the verdicts as JUnit XML.
    #[arg(long, value_name = "FILE.xml")]
    pub(crate) junit: Option<PathBuf>,
    /// Also write the report as one HTML page (verdicts and a plot).
    #[arg(long, value_name = "FILE.html")]
    pub(crate) html: Option<PathBuf>,
    /// Print one JSON object instead of the lines.
    #[arg(long)]
    pub(crate) json: bool,
}

fn check_size(s: &str) -> Result<u64, String> {
    mlc::api::check::parse_size(s)
}

fn check_share(s: &str) -> Result<f64, String> {
    mlc::api::check::parse_share(s)
}

/// How distillation trains (`mlc distill`, `mlc compress --distill`).
#[derive(clap::Args)]
#[command(next_help_heading = "Training (distillation)")]
pub(crate) struct TrainingArgs {
    #[arg(long, default_value_t = 30)]
    pub(crate) epochs: usize,
    /// Peak learning rate (AdamW, cosine schedule to 0).
    #[arg(long, default_value_t = 3e-3)]
    pub(crate) lr: f64,
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// Softmax temperature of the KL term.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) temperature: f64,
    /// Add cross-entropy with the data's `labels`.
    #[arg(long)]
    pub(crate) labels: bool,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Epochs without a better held-out score before stopping (0: never).
    #[arg(long, default_value_t = 5)]
    pub(crate) patience: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) weight_decay: f64,
    /// What the outputs are trained to match: auto (KL for class scores, 1 -
    /// cosine for L2-normalized embeddings, MSE for other outputs), kl (KL
    /// for every rank-2 output), mse, or cosine.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Auto)]
    pub(crate) objective: ObjectiveArg,
}

#[derive(clap::Args)]
pub(crate) struct DistillArgs {
    /// The student (.onnx, compiled with O2 first, or .mlc).
    pub(crate) student: PathBuf,
    /// The teacher (.onnx or .mlc), run on mlc's runtime.
    #[arg(long)]
    pub(crate) teacher: PathBuf,
    /// Training samples: a .npz keyed by input name (optional `labels`).
    #[arg(long, value_name = "DATA.npz")]
    pub(crate) data: PathBuf,
    /// Held-out samples for early stopping and the before/after figures
    /// (top-1 agreement with the teacher, mean and lowest cosine).
    #[arg(long, value_name = "HELD_OUT.npz")]
    pub(crate) eval: Option<PathBuf>,
    /// Output bundle (default: <student stem>.distilled.mlc beside it).
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) training: TrainingArgs,
    /// Threads for the teacher and the evaluation runs (default: all cores).
    #[arg(long, value_parser = thread_count)]
    pub(crate) threads: Option<usize>,
    /// Quantization-aware training of an int8 student (from `mlc compress
    /// --int8`): its QConv/QMatMul weights train in float, quantized in the
    /// forward pass as `mlc compress` quantizes them (scales recomputed
    /// each step) with the layers' u8 activation quantization, and
    /// straight-through gradients; the result is written back as int8. An
    /// int8 student needs it; a student without int8 layers is refused
    /// with it.
    #[arg(long)]
    pub(crate) qat: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["int8", "int4", "fp16"])))]
#[command(group(clap::ArgGroup::new("job").required(true).multiple(true).args(["int8", "int4", "fp16", "prune", "prune_channels", "prune_heads", "low_rank", "low_rank_energy"])))]
pub(crate) struct CompressArgs {
    pub(crate) model: PathBuf,
    /// Output file (.mlc bundle, or .onnx / --emit onnx for QDQ ONNX).
    #[arg(long, short)]
    pub(crate) output: PathBuf,
    /// Int8: symmetric int8 weights, u8 activations (static with --calib,
    /// else dynamic).
    #[arg(long)]
    pub(crate) int8: bool,
    /// Int4 weights of matrix products (blocks of 32, f16 scales), weight-only.
    #[arg(long)]
    pub(crate) int4: bool,
    /// Weights stored as f16.
    #[arg(long)]
    pub(crate) fp16: bool,
    /// Prune convolution and matrix-product weights to this sparsity (a
    /// share of zeros from 0 to 1, or a percentage like 80%), or `max`: the
    /// highest the accuracy budget allows. Combines with --int8/--int4
    /// (prune, then quantize what is left).
    #[arg(long, value_name = "SPARSITY|max", value_parser = prune_target)]
    pub(crate) prune: Option<PruneTarget>,
    /// How the sparsity is shared among layers: by each layer's measured
    /// effect on the output (sensitivity), the same share of each
    /// (uniform), or one magnitude threshold over all (global).
    #[arg(long, value_enum, default_value = "sensitivity", requires = "prune")]
    pub(crate) prune_allocation: PruneAllocationArg,
    /// Unit of pruning: single weights (1x1) or blocks of 4 output
    /// channels at one input position (4x1; faster sparse kernels).
    #[arg(long, value_enum, default_value = "1x1", requires = "prune")]
    pub(crate) prune_block: PruneBlockArg,
    /// What ranks weights: |w| (magnitude), or |w| times its input's norm
    /// over the calibration data (activation, Wanda's score; needs --calib).
    #[arg(long, value_enum, default_value = "magnitude", requires = "prune")]
    pub(crate) prune_importance: PruneImportanceArg,
    /// What happens to the weights pruning leaves: re-fit row by row to
    /// the unpruned layer's outputs on the calibration data
    /// (least-squares), or kept (none); auto: least-squares when --calib
    /// is given.
    #[arg(long, value_enum, default_value = "auto", requires = "prune")]
    pub(crate) prune_update: PruneUpdateArg,
    /// Remove this share of the output channels of convolutions and
    /// products (and the matching inputs of their consumers) wherever the
    /// graph allows, least important first: the model gets smaller and
    /// faster on the dense kernels. Less goes when the accuracy budget
    /// breaks.
    #[arg(long, value_name = "FRACTION", value_parser = channel_fraction)]
    pub(crate) prune_channels: Option<f64>,
    /// Remove this many attention heads from every attention block whose
    /// heads can go (least important first; fewer when the accuracy
    /// budget breaks).
    #[arg(long, value_name = "N")]
    pub(crate) prune_heads: Option<usize>,
    /// Factorize matrix products and 1x1 convolutions into pairs of
    /// smaller ones keeping this share of their parameters (0.5 or 50% or
    /// 2x: half), ranks allocated where they cost the least output error
    /// on the calibration data (--calib; else the weights' own spectra);
    /// more stays when the accuracy budget breaks, and a pair slower than
    /// its layer is put back.
    #[arg(long, value_name = "RATIO", value_parser = low_rank_ratio, conflicts_with = "low_rank_energy")]
    pub(crate) low_rank: Option<f64>,
    /// Low-rank factorization where each layer keeps the least rank that
    /// holds this share of its output energy (0 to 1).
    #[arg(long, value_name = "E", value_parser = unit_share)]
    pub(crate) low_rank_energy: Option<f64>,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    pub(crate) per_tensor: bool,
    /// Fine-tune the pruned / low-rank model against the original on these
    /// training samples (.npz keyed by input name, optional `labels`)
    /// before quantization; the accuracy budget then judges the
    /// distilled model (early stopping scores --calib data when given).
    #[arg(long, value_name = "DATA.npz")]
    pub(crate) distill: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) training: TrainingArgs,
    /// Full 8-bit int8 weights ([-127, 127]) instead of the default 7-bit
    /// ([-63, 63]), which lets the AVX2 kernel without VNNI run exactly.
    #[arg(long)]
    pub(crate) full_range: bool,
    /// Activation scales computed at run time (the default without --calib).
    #[arg(long, conflicts_with = "calib")]
    pub(crate) dynamic: bool,
    /// Calibration inputs (.npz, one array per model input, first axis
    /// indexing samples) for static activation scales.
    #[arg(long, value_name = "DATA.npz")]
    pub(crate) calib: Option<PathBuf>,
    /// Calibration method: minmax, percentile[:P], entropy or mse.
    #[arg(long, default_value = "minmax", requires = "calib")]
    pub(crate) method: String,
    /// Data to measure accuracy on (.npz: the inputs by name, and an integer
    /// `labels` array for top-1 accuracy); default: the calibration set, else
    /// seeded random inputs.
    #[arg(long, value_name = "DATA.npz")]
    pub(crate) eval: Option<PathBuf>,
    /// Largest top-1 accuracy drop in points (with labels; top-1
    /// disagreement for class-score outputs without) before layers go back
    /// to f32.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) max_accuracy_drop: f64,
    /// Smallest cosine similarity with the f32 outputs that every sample
    /// must keep; below it layers go back to f32.
    #[arg(long)]
    pub(crate) min_cosine: Option<f64>,
    /// Do not time layers' int8 and f32 kernels.
    #[arg(long)]
    pub(crate) no_speed_check: bool,
    /// `size`: every layer the accuracy budget allows is stored int8, and
    /// which kernels run it is `mlc tune`'s decision; `latency`: also keep
    /// f32 the layers whose int8 kernel is slower on this machine.
    #[arg(long, value_enum, default_value = "size")]
    pub(crate) goal: GoalArg,
    /// Samples used to measure each layer's contribution to the error.
    #[arg(long, default_value_t = 32, value_parser = run_count)]
    pub(crate) sensitivity_samples: usize,
    /// Timed runs for the latency figures (0: none).
    #[arg(long, default_value_t = 20, value_parser = run_count)]
    pub(crate) latency_runs: usize,
    /// Threads (default: the machine's cores).
    #[arg(long, value_parser = thread_count)]
    pub(crate) threads: Option<usize>,
    /// Size of a symbolic dim other than the batch for random data, NAME=SIZE.
    #[arg(long = "dim", value_name = "NAME=SIZE")]
    pub(crate) dim: Vec<String>,
    /// Calibration cache folder (default $MLC_CACHE_DIR, else ~/.cache/mlc).
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Do not read or write the calibration cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// What to write (default: from the output's extension).
    #[arg(long, value_enum)]
    pub(crate) emit: Option<Emit>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--low-rank`'s value: a share of parameters kept (`0.5`, `50%`) or a
/// reduction factor (`2x`).
pub(crate) fn low_rank_ratio(s: &str) -> Result<f64, String> {
    if let Some(f) = s.strip_suffix('x') {
        let f: f64 = f
            .parse()
            .map_err(|_| format!("'{s}' is not a reduction factor like 2x"))?;
        if !(f > 1.0 && f.is_finite()) {
            return Err(format!("a reduction factor must be above 1x, not '{s}'"));
        }
        return Ok(1.0 / f);
    }
    unit_share(s)
}

/// A share strictly between 0 and 1 (`0.5` or `50%`).
pub(crate) fn unit_share(s: &str) -> Result<f64, String> {
    let (num, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 0.01),
        None => (s, 1.0),
    };
    let v = num
        .parse::<f64>()
        .map_err(|_| format!("'{s}' is not a share like 0.5 or 50%"))?
        * scale;
    if !(v > 0.0 && v < 1.0) {
        return Err(format!(
            "a share must lie strictly between 0 and 1, not '{s}'"
        ));
    }
    Ok(v)
}

/// `--prune`'s value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PruneTarget {
    Sparsity(f64),
    Max,
}

pub(crate) fn prune_target(s: &str) -> Result<PruneTarget, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(PruneTarget::Max);
    }
    let (text, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 0.01),
        None => (s, 1.0),
    };
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&(v * scale)) => Ok(PruneTarget::Sparsity(v * scale)),
        _ => Err(format!(
            "'{s}' is not a sparsity: give a share of zeros from 0 to below 1 (0.8), a percentage (80%) or max"
        )),
    }
}

pub(crate) fn channel_fraction(s: &str) -> Result<f64, String> {
    match prune_target(s) {
        Ok(PruneTarget::Sparsity(f)) => Ok(f),
        _ => Err(format!(
            "'{s}' is not a share of channels: give one from 0 to below 1 (0.25) or a percentage (25%)"
        )),
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum PruneAllocationArg {
    Sensitivity,
    Uniform,
    Global,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum PruneBlockArg {
    #[value(name = "1x1")]
    Single,
    #[value(name = "4x1")]
    Rows4,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum PruneImportanceArg {
    Magnitude,
    Activation,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum PruneUpdateArg {
    Auto,
    LeastSquares,
    None,
}

/// Most threads a command takes: far past any core count, short of the
/// thread spawns that would exhaust the machine.
pub(crate) const MAX_THREADS: usize = 1024;
/// Most repetitions (runs, warm-ups, samples) a command takes.
pub(crate) const MAX_RUNS: usize = 1_000_000;

pub(crate) fn thread_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a thread count from 1 to {MAX_THREADS}"
        )),
    }
}

pub(crate) fn run_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_RUNS => Ok(n),
        _ => Err(format!("'{s}' is not a count from 0 to {MAX_RUNS}")),
    }
}

//! The `mlc` command line: parses arguments, calls the library, prints, and
//! maps errors to exit codes (0 success, 2 bad input or unsupported model,
//! 1 internal error).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlc::formats::bundle;
use mlc::formats::npy;
use mlc::ir::{text, Tensor};
use mlc::transform::recipe::Recipe;
use mlc::transform::runner::{self, DriftCheck, RunOptions};
use mlc::{inputs, inspect, interp, transform, Error};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "mlc",
    version,
    about = "Model compression and compilation toolchain"
)]
struct Cli {
    /// Most memory a model or input file may make mlc allocate (e.g. 512MB,
    /// 8GiB); beyond it a command stops with a clear error before
    /// allocating. Default 4GiB.
    #[arg(long, global = true, value_name = "SIZE", value_parser = mlc::limits::parse_bytes)]
    max_memory: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    Mlc,
    Onnx,
}

#[derive(Subcommand)]
enum Command {
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
        /// What to write: an mlc bundle or standard ONNX (default: from the
        /// output's extension, else mlc).
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// After every pass, run the reference interpreter on seeded sample
        /// inputs and stop at the first pass whose outputs drift.
        #[arg(long)]
        verify: bool,
        /// Size of a symbolic dim for --verify's sample inputs, as NAME=SIZE.
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dim: Vec<String>,
        /// Print what each pass changed.
        #[arg(long, short)]
        verbose: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a model with the reference interpreter.
    Run {
        model: PathBuf,
        /// Input as NAME=FILE.npy; repeat for several inputs.
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        input: Vec<String>,
        /// All inputs from one .npz, keyed by input name.
        #[arg(long, value_name = "FILE.npz")]
        inputs: Option<PathBuf>,
        /// Feed seeded random inputs to every input not given otherwise.
        #[arg(long, value_name = "SEED")]
        random: Option<u64>,
        /// Size of a symbolic dim for random inputs, as NAME=SIZE (default 1).
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dim: Vec<String>,
        /// Write the outputs to this .npz (or .npy when the model has one output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time a model on the CPU runtime: latency percentiles, throughput,
    /// peak memory, and per-op time with --profile.
    Bench {
        model: PathBuf,
        /// Threads for the kernels (default: the machine's cores).
        #[arg(long, value_parser = thread_count)]
        threads: Option<usize>,
        /// Batch size: binds the first symbolic dim of each input (default 1).
        #[arg(long)]
        batch: Option<usize>,
        /// Size of another symbolic dim, as NAME=SIZE (default 1; e.g. seq=128).
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dim: Vec<String>,
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
        /// Input as NAME=FILE.npy; others get seeded random values.
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        input: Vec<String>,
        /// Seed of the random inputs.
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
    },
    /// Compress a model: int8 post-training quantization (or int4/fp16
    /// weights), with a size/latency/accuracy report written beside the output.
    Compress(Box<CompressArgs>),
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

/// Lets a closed pipe end the process quietly (`mlc bench m.onnx | head`),
/// as it does for other command-line tools, instead of `println!`
/// panicking on the write error.
#[cfg(unix)]
fn default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: restoring the default disposition of one signal before any
    // thread starts; `signal` has this C signature on every Unix.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

/// Most threads a command takes: far past any core count, short of the
/// thread spawns that would exhaust the machine.
const MAX_THREADS: usize = 1024;
/// Most repetitions (runs, warm-ups, samples) a command takes.
const MAX_RUNS: usize = 1_000_000;

fn thread_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a thread count from 1 to {MAX_THREADS}"
        )),
    }
}

fn run_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_RUNS => Ok(n),
        _ => Err(format!("'{s}' is not a count from 0 to {MAX_RUNS}")),
    }
}

/// The longest error line the CLI prints, in bytes.
const MAX_ERROR_LINE: usize = 1000;

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let cli = Cli::parse();
    if let Some(bytes) = cli.max_memory {
        mlc::limits::set_max_memory(bytes);
    }
    let result = match cli.command {
        Command::Inspect { model, json, ir } => cmd_inspect(&model, json, ir),
        Command::Passes { json } => cmd_passes(json),
        Command::Compile {
            model,
            output,
            pipeline,
            emit,
            verify,
            dim,
            verbose,
            json,
        } => cmd_compile(
            &model, &output, &pipeline, emit, verify, &dim, verbose, json,
        ),
        Command::Run {
            model,
            input,
            inputs,
            random,
            dim,
            output,
            json,
        } => cmd_run(
            &model,
            &input,
            inputs.as_deref(),
            random,
            &dim,
            output.as_deref(),
            json,
        ),
        Command::Bench {
            model,
            threads,
            batch,
            dim,
            warmup,
            runs,
            pipeline,
            input,
            seed,
            profile,
            verify,
            json,
        } => cmd_bench(&BenchArgs {
            model,
            threads,
            batch,
            dim,
            warmup,
            runs,
            pipeline,
            input,
            seed,
            profile,
            verify,
            json,
        }),
        Command::Compress(a) => cmd_compress(&a),
        Command::Probe { json, seconds } => cmd_probe(json, seconds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, of bounded length, whatever the input quoted.
            let line = e.to_string().replace('\n', " ");
            eprintln!("error: {}", mlc::error::excerpt(&line, MAX_ERROR_LINE));
            if e.is_user_error() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn cmd_inspect(model: &Path, json: bool, ir: bool) -> Result<(), Error> {
    if ir {
        let g = mlc::formats::load(model)?;
        print!("{}", text::print(&g));
        return Ok(());
    }
    let summary = if mlc::formats::bundle::looks_like_bundle(model) {
        inspect::inspect_bundle(model)?
    } else {
        inspect::inspect_onnx(model)?
    };
    if json {
        println!("{}", to_json(&summary)?);
    } else {
        print!("{}", inspect::render(&summary));
    }
    Ok(())
}

#[derive(Serialize)]
struct PassListing {
    name: &'static str,
    summary: &'static str,
    params: Vec<ParamListing>,
}

#[derive(Serialize)]
struct ParamListing {
    name: &'static str,
    default: String,
    help: &'static str,
}

fn cmd_passes(json: bool) -> Result<(), Error> {
    let list: Vec<PassListing> = transform::registry()
        .iter()
        .map(|p| PassListing {
            name: p.name,
            summary: p.summary,
            params: p
                .params
                .iter()
                .map(|q| ParamListing {
                    name: q.name,
                    default: (q.default)().to_string(),
                    help: q.help,
                })
                .collect(),
        })
        .collect();
    if json {
        println!("{}", to_json(&list)?);
        return Ok(());
    }
    for p in &list {
        println!("{:<24} {}", p.name, p.summary);
        for q in &p.params {
            println!("{:<26} {} = {}  {}", "", q.name, q.default, q.help);
        }
    }
    Ok(())
}

fn parse_dims(dim_args: &[String]) -> Result<BTreeMap<String, usize>, Error> {
    let mut dims = BTreeMap::new();
    for arg in dim_args {
        let (name, size) = split_assignment(arg, "--dim")?;
        let size = size.parse::<usize>().map_err(|_| Error::Input {
            name: name.to_string(),
            message: format!("--dim size '{size}' is not a non-negative integer"),
        })?;
        dims.insert(name.to_string(), size);
    }
    Ok(dims)
}

#[allow(clippy::too_many_arguments)]
fn cmd_compile(
    model: &Path,
    output: &Path,
    pipeline: &str,
    emit: Option<Emit>,
    verify: bool,
    dim_args: &[String],
    verbose: bool,
    json: bool,
) -> Result<(), Error> {
    let recipe = Recipe::resolve(pipeline)?;
    let emit = emit.unwrap_or(match output.extension().and_then(|e| e.to_str()) {
        Some("onnx") => Emit::Onnx,
        _ => Emit::Mlc,
    });
    mlc::fsutil::ensure_not_input(output, model)?;
    let source = std::fs::read(model).map_err(|e| Error::io(model, e))?;
    let mut g = mlc::formats::load(model)?;
    let nodes_before = g.node_count();
    let dims = parse_dims(dim_args)?;
    let opts = RunOptions {
        drift: if verify {
            let sample = inputs::random_inputs(&g, 0, &dims)?;
            Some(DriftCheck::new(&g, sample, 1e-4, 1e-5)?)
        } else {
            None
        },
    };
    let log = runner::run(&mut g, &recipe, &opts)?;
    let written = match emit {
        Emit::Mlc => {
            let file_name = model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = bundle::Metadata::new(
                bundle::SourceInfo::from_bytes(file_name, &source),
                bundle::PipelineInfo {
                    name: recipe.name.clone(),
                    summary: recipe.summary(),
                },
                log.clone(),
                bundle::NodeCounts {
                    before: nodes_before,
                    after: g.node_count(),
                },
            );
            bundle::write(output, &g, &meta)?;
            "mlc bundle"
        }
        Emit::Onnx => {
            mlc::formats::onnx::write(output, &g)?;
            "ONNX"
        }
    };
    let size = std::fs::metadata(output)
        .map_err(|e| Error::io(output, e))?
        .len();
    let report = CompileReport {
        model: model.display().to_string(),
        output: output.display().to_string(),
        format: written,
        pipeline: recipe.name.clone(),
        nodes_before,
        nodes_after: g.node_count(),
        bytes: size,
        verified: verify,
        pass_log: log,
    };
    if json {
        println!("{}", to_json(&report)?);
    } else {
        if verbose {
            print!("{}", runner::render_log(&report.pass_log));
        }
        println!(
            "{} -> {} ({}, pipeline {}): nodes {} -> {}, {}{}",
            report.model,
            report.output,
            report.format,
            report.pipeline,
            report.nodes_before,
            report.nodes_after,
            inspect::human_bytes(report.bytes),
            if verify {
                ", outputs verified after every pass"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct CompileReport {
    model: String,
    output: String,
    format: &'static str,
    pipeline: String,
    nodes_before: usize,
    nodes_after: usize,
    bytes: u64,
    verified: bool,
    pass_log: Vec<runner::PassLogEntry>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["int8", "int4", "fp16"])))]
struct CompressArgs {
    model: PathBuf,
    /// Output file (.mlc bundle, or .onnx / --emit onnx for QDQ ONNX).
    #[arg(long, short)]
    output: PathBuf,
    /// Int8: symmetric int8 weights, u8 activations (static with --calib,
    /// else dynamic).
    #[arg(long)]
    int8: bool,
    /// Int4 weights of matrix products (blocks of 32, f16 scales), weight-only.
    #[arg(long)]
    int4: bool,
    /// Weights stored as f16.
    #[arg(long)]
    fp16: bool,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Full 8-bit int8 weights ([-127, 127]) instead of the default 7-bit
    /// ([-63, 63]). 7-bit weights let the AVX2 vpmaddubsw kernel run
    /// exactly (it cannot saturate on them), about 1.2x faster than the
    /// 8-bit kernel on AVX2 machines without VNNI; the mixed-precision
    /// check still keeps layers whose accuracy suffers in f32.
    #[arg(long)]
    full_range: bool,
    /// Activation scales computed at run time (the default without --calib).
    #[arg(long, conflicts_with = "calib")]
    dynamic: bool,
    /// Calibration inputs (.npz, one array per model input, first axis
    /// indexing samples) for static activation scales.
    #[arg(long, value_name = "DATA.npz")]
    calib: Option<PathBuf>,
    /// Calibration method: minmax, percentile[:P], entropy or mse.
    #[arg(long, default_value = "minmax", requires = "calib")]
    method: String,
    /// Data to measure accuracy on (.npz: the inputs by name, and an integer
    /// `labels` array for top-1 accuracy); default: the calibration set, else
    /// seeded random inputs.
    #[arg(long, value_name = "DATA.npz")]
    eval: Option<PathBuf>,
    /// Largest top-1 accuracy drop in points (with labels; top-1
    /// disagreement for class-score outputs without) before layers go back
    /// to f32.
    #[arg(long, default_value_t = 1.0)]
    max_accuracy_drop: f64,
    /// Smallest cosine similarity with the f32 outputs that every sample
    /// must keep; below it layers go back to f32.
    #[arg(long)]
    min_cosine: Option<f64>,
    /// Do not time layers (no layer stays f32 for speed).
    #[arg(long)]
    no_speed_check: bool,
    /// Samples used to measure each layer's contribution to the error.
    #[arg(long, default_value_t = 32, value_parser = run_count)]
    sensitivity_samples: usize,
    /// Timed runs for the latency figures (0: none).
    #[arg(long, default_value_t = 20, value_parser = run_count)]
    latency_runs: usize,
    /// Threads (default: the machine's cores).
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
    /// Size of a symbolic dim other than the batch for random data, NAME=SIZE.
    #[arg(long = "dim", value_name = "NAME=SIZE")]
    dim: Vec<String>,
    /// Calibration cache folder (default $MLC_CACHE_DIR, else ~/.cache/mlc).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the calibration cache.
    #[arg(long)]
    no_cache: bool,
    /// What to write: an mlc bundle or QDQ ONNX (default: from the output's
    /// extension).
    #[arg(long, value_enum)]
    emit: Option<Emit>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn cmd_compress(a: &CompressArgs) -> Result<(), Error> {
    use mlc::compress::{
        self,
        quantize::{Granularity, WeightFormat},
        Activations, Mode, Options,
    };
    use std::io::IsTerminal;

    let emit = a
        .emit
        .unwrap_or(match a.output.extension().and_then(|e| e.to_str()) {
            Some("onnx") => Emit::Onnx,
            _ => Emit::Mlc,
        });
    let stem = a.output.with_extension("");
    let json_path = PathBuf::from(format!("{}.report.json", stem.display()));
    let md_path = PathBuf::from(format!("{}.report.md", stem.display()));
    let mut reads = vec![a.model.as_path()];
    reads.extend(a.calib.as_deref());
    reads.extend(a.eval.as_deref());
    mlc::fsutil::ensure_outputs_apart(&[&a.output, &json_path, &md_path], &reads)?;
    if a.threads == Some(0) {
        return Err(Error::Input {
            name: "--threads".into(),
            message: "at least one thread is needed".into(),
        });
    }
    let mode = if a.int4 {
        Mode::Int4
    } else if a.fp16 {
        Mode::Fp16
    } else {
        Mode::Int8
    };
    let activations = match &a.calib {
        Some(p) => Activations::Static {
            calib: p.clone(),
            method: a.method.parse().map_err(|e| Error::Input {
                name: "--method".into(),
                message: format!("{e}"),
            })?,
        },
        None => Activations::Dynamic,
    };
    let opts = Options {
        mode,
        weights: WeightFormat {
            granularity: if a.per_tensor {
                Granularity::PerTensor
            } else {
                Granularity::PerChannel
            },
            reduce_range: !a.full_range,
        },
        activations,
        eval: a.eval.clone(),
        max_accuracy_drop: a.max_accuracy_drop,
        min_cosine: a.min_cosine,
        check_speed: !a.no_speed_check,
        sensitivity_samples: a.sensitivity_samples,
        latency_runs: a.latency_runs,
        threads: a.threads.unwrap_or(0),
        dims: parse_dims(&a.dim)?,
        cache_dir: if a.no_cache {
            None
        } else {
            a.cache_dir.clone().or_else(compress::default_cache_dir)
        },
        progress: std::io::stderr().is_terminal() && !a.json,
    };
    let source = std::fs::read(&a.model).map_err(|e| Error::io(&a.model, e))?;
    let compress::Outcome {
        graph,
        mut report,
        nodes_before,
    } = compress::compress(&a.model, &source, &opts)?;
    // Reports of an earlier run go first, so that a run killed between the
    // bundle and its reports never leaves a new bundle beside old reports.
    for stale in [&json_path, &md_path] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(stale, e)),
            _ => {}
        }
    }
    let format = match emit {
        Emit::Mlc => {
            let pipeline = bundle::PipelineInfo {
                name: mode.name().to_string(),
                summary: format!("O2, then mlc compress --{}", mode.name()),
            };
            let meta = compress::metadata(&graph, &a.model, &source, pipeline, nodes_before);
            bundle::write(&a.output, &graph, &meta)?;
            "mlc bundle"
        }
        Emit::Onnx => {
            mlc::formats::onnx::write(&a.output, &graph)?;
            "QDQ ONNX"
        }
    };
    let out_bytes = std::fs::metadata(&a.output)
        .map_err(|e| Error::io(&a.output, e))?
        .len();
    report.output = a.output.display().to_string();
    report.format = format.to_string();
    report.size.output_bytes = out_bytes;
    let base = match emit {
        Emit::Mlc => report.size.f32_bundle_bytes,
        Emit::Onnx => report.size.source_bytes,
    };
    report.size.ratio = out_bytes as f64 / base.max(1) as f64;
    let json = to_json(&report)?;
    mlc::fsutil::write_bytes_atomic(&json_path, json.as_bytes())?;
    mlc::fsutil::write_bytes_atomic(&md_path, report.markdown().as_bytes())?;
    if a.json {
        println!("{json}");
    } else {
        print!("{}", report.summary());
        println!("report: {} and {}", json_path.display(), md_path.display());
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string_pretty(v)
        .map_err(|e| Error::Internal(format!("JSON encoding failed: {e}")))
}

/// Splits `NAME=VALUE`; the name may not be empty.
fn split_assignment<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str), Error> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => Err(Error::Input {
            name: arg.to_string(),
            message: format!("{flag} takes NAME=VALUE"),
        }),
    }
}

fn cmd_run(
    model: &Path,
    input_args: &[String],
    inputs_npz: Option<&Path>,
    random: Option<u64>,
    dim_args: &[String],
    output: Option<&Path>,
    json: bool,
) -> Result<(), Error> {
    if let Some(out) = output {
        let mut reads = vec![model];
        reads.extend(inputs_npz);
        for arg in input_args {
            reads.push(Path::new(split_assignment(arg, "--input")?.1));
        }
        mlc::fsutil::ensure_outputs_apart(&[out], &reads)?;
    }
    let g = mlc::formats::load(model)?;

    let mut given: HashMap<String, Tensor> = HashMap::new();
    if let Some(p) = inputs_npz {
        given.extend(npy::read_npz(p)?);
    }
    for arg in input_args {
        let (name, file) = split_assignment(arg, "--input")?;
        given.insert(name.to_string(), npy::read_npy(Path::new(file))?);
    }
    let mut dims = parse_dims(dim_args)?;
    if let Some(seed) = random {
        // Symbolic dims bound by the inputs that were given take those sizes.
        let mut bindings = mlc::ir::SymbolBindings::default();
        for &id in &g.inputs {
            let v = g.value(id);
            if let Some(t) = given.get(&v.name) {
                let _ = bindings.bind(&v.ty.shape, t.shape());
            }
        }
        for (k, v) in bindings.0 {
            dims.entry(k).or_insert(v);
        }
        let random = inputs::random_inputs(&g, seed, &dims)?;
        for (&id, t) in g.inputs.iter().zip(random) {
            given.entry(g.value(id).name.clone()).or_insert(t);
        }
    }

    let outputs = interp::run_named(&g, given)?;
    let named: Vec<(String, Tensor)> = g
        .outputs
        .iter()
        .map(|&o| g.value(o).name.clone())
        .zip(outputs)
        .collect();

    if let Some(path) = output {
        write_outputs(path, &named)?;
    }
    let report = RunReport {
        model: model.display().to_string(),
        outputs: named
            .iter()
            .map(|(n, t)| OutputSummary::new(n, t))
            .collect(),
        output_file: output.map(|p| p.display().to_string()),
    };
    if json {
        println!("{}", to_json(&report)?);
    } else {
        print_run_report(&report);
    }
    Ok(())
}

fn cmd_probe(json: bool, seconds: f64) -> Result<(), Error> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 600.0) {
        return Err(Error::Input {
            name: "--seconds".into(),
            message: format!("{seconds} is not a time between 0 and 600 seconds"),
        });
    }
    let report = mlc::probe::run(seconds);
    if json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", mlc::probe::render(&report));
    }
    Ok(())
}

fn write_outputs(path: &Path, named: &[(String, Tensor)]) -> Result<(), Error> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => npy::write_npz(path, named),
        Some("npy") if named.len() == 1 => npy::write_npy(path, &named[0].1),
        Some("npy") => Err(Error::Input {
            name: path.display().to_string(),
            message: format!(
                "the model has {} outputs; write them to a .npz",
                named.len()
            ),
        }),
        _ => Err(Error::Input {
            name: path.display().to_string(),
            message: "the output file must end in .npz or .npy".into(),
        }),
    }
}

#[derive(Serialize)]
struct RunReport {
    model: String,
    outputs: Vec<OutputSummary>,
    output_file: Option<String>,
}

#[derive(Serialize)]
struct OutputSummary {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    /// The first few values, for a quick look.
    head: Vec<f64>,
}

impl OutputSummary {
    /// Statistics over the finite elements, read a block at a time (an
    /// output of gigabytes is not copied whole to f64 for a summary).
    fn new(name: &str, t: &Tensor) -> OutputSummary {
        const BLOCK: usize = 1 << 16;
        let (mut min, mut max, mut sum, mut finite) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0);
        let mut head = Vec::new();
        for start in (0..t.numel()).step_by(BLOCK) {
            let idx: Vec<usize> = (start..(start + BLOCK).min(t.numel())).collect();
            let block = Tensor::new(vec![idx.len()], t.data().gather(&idx))
                .map(|b| b.to_f64_vec())
                .unwrap_or_default();
            if head.is_empty() {
                head = block.iter().take(6).copied().collect();
            }
            for x in block.into_iter().filter(|x| x.is_finite()) {
                min = min.min(x);
                max = max.max(x);
                sum += x;
                finite += 1;
            }
        }
        let (min, max, mean) = match (t.numel(), finite) {
            (0, _) => (None, None, None),
            (_, 0) => (None, None, Some(0.0)),
            (_, n) => (Some(min), Some(max), Some(sum / n as f64)),
        };
        OutputSummary {
            name: name.to_string(),
            dtype: t.dtype().to_string(),
            shape: t.shape().to_vec(),
            min,
            max,
            mean,
            head,
        }
    }
}

fn print_run_report(r: &RunReport) {
    for o in &r.outputs {
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.6}"));
        let head: Vec<String> = o.head.iter().map(|x| format!("{x:.6}")).collect();
        println!(
            "{}: {}{:?}  min {}  max {}  mean {}  [{}{}]",
            o.name,
            o.dtype,
            o.shape,
            fmt(o.min),
            fmt(o.max),
            fmt(o.mean),
            head.join(", "),
            if o.shape.iter().product::<usize>() > head.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    if let Some(f) = &r.output_file {
        println!("wrote {f}");
    }
}

struct BenchArgs {
    model: PathBuf,
    threads: Option<usize>,
    batch: Option<usize>,
    dim: Vec<String>,
    warmup: usize,
    runs: usize,
    pipeline: Option<String>,
    input: Vec<String>,
    seed: u64,
    profile: bool,
    verify: bool,
    json: bool,
}

#[derive(Serialize)]
struct BenchReport {
    model: String,
    /// The recipe the model was compiled with, or "none".
    pipeline: String,
    threads: usize,
    batch: usize,
    inputs: BTreeMap<String, Vec<usize>>,
    warmup: usize,
    runs: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Items (batch elements) per second at the mean latency.
    throughput_per_s: f64,
    /// Peak resident memory of the process; null where unknown.
    peak_rss_bytes: Option<u64>,
    arena_bytes: usize,
    plan: mlc::runtime::PlanStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<mlc::runtime::Profile>,
    /// With --verify: each output against the reference interpreter.
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<VerifyReport>,
}

/// `mlc bench --verify`: the runtime against the reference interpreter.
#[derive(Serialize)]
struct VerifyReport {
    rtol: f64,
    atol: f64,
    ok: bool,
    outputs: Vec<mlc::runtime::OutputCheck>,
}

/// Tolerance of `--verify` for f32 model outputs (GUIDE: rtol 1e-3, atol
/// 1e-5 against the reference).
const VERIFY_RTOL: f64 = 1e-3;
const VERIFY_ATOL: f64 = 1e-5;

/// The `p`-th percentile (0..=100) of sorted samples, linearly interpolated.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let w = rank - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi.min(sorted.len() - 1)] * w
}

/// Peak resident set size of this process (Linux: VmHWM), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn cmd_bench(a: &BenchArgs) -> Result<(), Error> {
    use mlc::ir::Dim;
    use std::io::IsTerminal;

    if a.runs == 0 {
        return Err(Error::Input {
            name: "--runs".into(),
            message: "at least one timed run is needed".into(),
        });
    }
    if a.threads == Some(0) {
        return Err(Error::Input {
            name: "--threads".into(),
            message: "at least one thread is needed".into(),
        });
    }
    let mut g = mlc::formats::load(&a.model)?;
    // The oracle for --verify: the model as loaded, before any pass.
    let original = a.verify.then(|| g.clone());
    let is_bundle = bundle::looks_like_bundle(&a.model);
    let pipeline = match (&a.pipeline, is_bundle) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some("O2".to_string()),
    };
    let pipeline_name = match pipeline.as_deref() {
        None | Some("O0") => "none".to_string(),
        Some(spec) => {
            let recipe = Recipe::resolve(spec)?;
            runner::run(&mut g, &recipe, &RunOptions::default())?;
            recipe.name
        }
    };

    // Inputs given as files, by name.
    let mut given: HashMap<String, Tensor> = HashMap::new();
    for arg in &a.input {
        let (name, file) = split_assignment(arg, "--input")?;
        if !g.inputs.iter().any(|&i| g.value(i).name == name) {
            let known: Vec<&str> = g.inputs.iter().map(|&i| g.value(i).name.as_str()).collect();
            return Err(Error::Input {
                name: name.to_string(),
                message: format!("the model has no such input (inputs: {})", known.join(", ")),
            });
        }
        given.insert(name.to_string(), npy::read_npy(Path::new(file))?);
    }

    // Symbolic dims: from --dim, the given inputs, and --batch for the first
    // symbolic dim of each input.
    let mut dims = parse_dims(&a.dim)?;
    let mut bound = mlc::ir::SymbolBindings::default();
    for &id in &g.inputs {
        let v = g.value(id);
        if let Some(t) = given.get(&v.name) {
            bound
                .bind(&v.ty.shape, t.shape())
                .map_err(|(sym, x, y)| Error::Input {
                    name: v.name.clone(),
                    message: format!("dim '{sym}' is {y} here but {x} in an earlier input"),
                })?;
        }
    }
    for (k, v) in bound.0 {
        match dims.get(&k) {
            Some(&d) if d != v => {
                return Err(Error::Input {
                    name: k.clone(),
                    message: format!("--dim {k}={d} conflicts with the given inputs ({v})"),
                })
            }
            _ => {
                dims.insert(k, v);
            }
        }
    }
    let first_syms: Vec<String> = g
        .inputs
        .iter()
        .filter_map(|&id| {
            g.ty(id).shape.dims().iter().find_map(|d| match d {
                Dim::Sym(s) => Some(s.clone()),
                Dim::Known(_) => None,
            })
        })
        .collect();
    if let Some(b) = a.batch {
        if first_syms.is_empty() {
            return Err(Error::Input {
                name: "--batch".into(),
                message: "the model's inputs have no symbolic dim to bind the batch size to".into(),
            });
        }
        for s in &first_syms {
            match dims.get(s) {
                Some(&d) if d != b => {
                    return Err(Error::Input {
                        name: s.clone(),
                        message: format!("--batch {b} conflicts with {s}={d}"),
                    })
                }
                _ => {
                    dims.insert(s.clone(), b);
                }
            }
        }
    }
    let batch = match first_syms.first() {
        Some(s) => dims.get(s).copied().unwrap_or(1),
        None => g
            .inputs
            .first()
            .and_then(|&i| g.ty(i).shape.dims().first().and_then(Dim::known))
            .unwrap_or(1),
    };

    let random = inputs::random_inputs(&g, a.seed, &dims)?;
    let feed: Vec<Tensor> = g
        .inputs
        .iter()
        .zip(random)
        .map(|(&id, r)| given.remove(&g.value(id).name).unwrap_or(r))
        .collect();
    let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
    let cx = mlc::kernels::cpu::CpuCtx::new(a.threads.unwrap_or(0))?;
    let mut plan = mlc::runtime::Plan::new(&g, &shapes, cx)?;

    for _ in 0..a.warmup {
        plan.run(&feed)?;
    }
    if a.profile {
        plan.set_profiling(true);
    }
    let bar = if a.json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(a.runs as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} bench [{bar:30}] {pos}/{len} runs ({eta} left)",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    };
    let mut ms: Vec<f64> = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let t0 = std::time::Instant::now();
        let out = plan.run(&feed)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(out);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let verify = match &original {
        Some(original) => {
            let got = plan.run(&feed)?;
            let want = mlc::interp::run(original, feed.clone())?;
            let names: Vec<String> = g.outputs.iter().map(|&o| g.value(o).name.clone()).collect();
            let outputs = mlc::runtime::compare(&names, &got, &want, VERIFY_RTOL, VERIFY_ATOL);
            Some(VerifyReport {
                rtol: VERIFY_RTOL,
                atol: VERIFY_ATOL,
                ok: outputs.iter().all(|o| o.ok()),
                outputs,
            })
        }
        None => None,
    };
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let report = BenchReport {
        model: a.model.display().to_string(),
        pipeline: pipeline_name,
        threads: plan.threads(),
        batch,
        inputs: g
            .inputs
            .iter()
            .zip(&shapes)
            .map(|(&id, s)| (g.value(id).name.clone(), s.clone()))
            .collect(),
        warmup: a.warmup,
        runs: a.runs,
        p50_ms: percentile(&ms, 50.0),
        p90_ms: percentile(&ms, 90.0),
        p99_ms: percentile(&ms, 99.0),
        mean_ms: mean,
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        throughput_per_s: if mean > 0.0 {
            batch as f64 / (mean / 1e3)
        } else {
            0.0
        },
        peak_rss_bytes: peak_rss_bytes(),
        arena_bytes: plan.stats().arena_bytes,
        plan: plan.stats().clone(),
        profile: plan.profile(),
        verify,
    };
    let verdict = match &report.verify {
        Some(v) if !v.ok => Err(Error::Internal(format!(
            "the runtime's outputs differ from the reference interpreter's beyond rtol {} atol {}: {}",
            v.rtol,
            v.atol,
            v.outputs
                .iter()
                .filter(|o| !o.ok())
                .map(|o| match &o.mismatch {
                    Some(m) => format!("'{}' {m}", o.name),
                    None => format!(
                        "'{}' {} of {} elements outside (max |diff| {:.3e})",
                        o.name, o.outside, o.elements, o.max_abs_err
                    ),
                })
                .collect::<Vec<_>>()
                .join("; ")
        ))),
        _ => Ok(()),
    };
    if a.json {
        println!("{}", to_json(&report)?);
        return verdict;
    }
    let ins: Vec<String> = g
        .inputs
        .iter()
        .zip(&shapes)
        .map(|(&id, s)| format!("{}{s:?}", g.value(id).name))
        .collect();
    println!(
        "{} (pipeline {}): threads {}, batch {}, inputs {}",
        report.model,
        report.pipeline,
        report.threads,
        report.batch,
        ins.join(" ")
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  mean {:.3}  min {:.3}  max {:.3}  ({} runs after {} warmup)",
        report.p50_ms,
        report.p90_ms,
        report.p99_ms,
        report.mean_ms,
        report.min_ms,
        report.max_ms,
        report.runs,
        report.warmup
    );
    println!("throughput {:.2} items/s", report.throughput_per_s);
    let p = &report.plan;
    println!(
        "peak RSS {}; arena {} ({} unshared, reuse {:.2}x); nodes {}: {} fast, {} in place, {} aliased, {} copies, {} reference",
        report
            .peak_rss_bytes
            .map_or("unknown".to_string(), |b| format!(
                "{} ({b} bytes)",
                inspect::human_bytes(b)
            )),
        inspect::human_bytes(p.arena_bytes as u64),
        inspect::human_bytes(p.unshared_bytes as u64),
        p.reuse_ratio,
        p.nodes,
        p.fast_nodes,
        p.in_place_nodes,
        p.aliased_nodes,
        p.copy_nodes,
        p.reference_nodes
    );
    if let Some(prof) = &report.profile {
        print!("{}", prof.render());
    }
    if let Some(v) = &report.verify {
        for o in &v.outputs {
            println!(
                "verify {}: {} against the reference interpreter (max |diff| {:.3e}, {:.3} of the tolerance rtol {} atol {})",
                o.name,
                if o.ok() { "ok" } else { "DIFFERS" },
                o.max_abs_err,
                o.worst_tolerance_share,
                v.rtol,
                v.atol
            );
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert!((percentile(&v, 90.0) - 4.6).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}

//! The `mlc` command line: argument parsing, printing and exit codes. Every
//! subcommand is one call into the library ([`mlc::api`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlc::api::{self, Binding, Format, InputFiles};
use mlc::api::{Activations, CompressMode as Mode, CompressOptions, Granularity, WeightFormat};
use mlc::Error;
use serde::Serialize;

/// The longest error line the CLI prints, in bytes.
const MAX_ERROR_LINE: usize = 1000;

mod cli;
mod stdio;
use cli::{Cli, Command, CompressArgs, DistillArgs, Emit, InputArgs};

/// Splits `NAME=VALUE`; neither side may be empty.
fn split_assignment<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str), Error> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => Err(Error::Input {
            name: arg.to_string(),
            message: format!("{flag} takes NAME=VALUE"),
        }),
    }
}

fn parse_dims(args: &[String]) -> Result<BTreeMap<String, usize>, Error> {
    let mut dims = BTreeMap::new();
    for arg in args {
        let (name, size) = split_assignment(arg, "--dim")?;
        let size = size.parse::<usize>().map_err(|_| Error::Dim {
            name: name.to_string(),
            message: format!("--dim size '{size}' is not a non-negative integer"),
        })?;
        dims.insert(name.to_string(), size);
    }
    Ok(dims)
}

impl InputArgs {
    fn files(&self) -> Result<InputFiles, Error> {
        let npy = self.input.iter().map(|a| {
            split_assignment(a, "--input").map(|(n, f)| (n.to_string(), PathBuf::from(f)))
        });
        Ok(InputFiles {
            npz: self.inputs.clone(),
            npy: npy.collect::<Result<_, _>>()?,
        })
    }

    fn binding(&self, random_seed: Option<u64>) -> Result<Binding, Error> {
        Ok(Binding {
            dims: parse_dims(&self.dim)?,
            batch: self.batch,
            random_seed,
        })
    }
}

fn emit_format(e: Option<Emit>) -> Option<Format> {
    e.map(|e| match e {
        Emit::Mlc => Format::Bundle,
        Emit::Onnx => Format::Onnx,
        Emit::OnnxSparse => Format::OnnxSparse,
    })
}

/// Parses a `--budget` (see [`api::parse_budget`]).
fn budget(s: &str) -> Result<std::time::Duration, String> {
    api::parse_budget(s)
}

/// How much a command prints (`-q`, `-v`).
#[derive(Clone, Copy)]
struct Ui {
    quiet: bool,
    verbose: bool,
}

impl Ui {
    /// Whether to draw progress bars: on a terminal, without --json or -q.
    fn progress(self, json: bool) -> bool {
        use std::io::IsTerminal;
        !json && !self.quiet && std::io::stderr().is_terminal()
    }

    /// Prints what is said about work done (a summary of files written),
    /// unless -q.
    fn say(self, text: &str) {
        if !self.quiet {
            print!("{text}");
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Internal(format!("JSON encoding failed: {e}")))?;
    println!("{text}");
    Ok(())
}

fn compress_options(a: &CompressArgs, ui: Ui) -> Result<CompressOptions, Error> {
    #[cfg(not(feature = "distill"))]
    if a.distill.is_some() {
        return Err(no_distillation());
    }
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
    Ok(CompressOptions {
        mode: match (a.int8, a.int4, a.fp16) {
            (_, true, _) => Mode::Int4,
            (_, _, true) => Mode::Fp16,
            (true, _, _) => Mode::Int8,
            _ => Mode::F32,
        },
        prune_channels: a.prune_channels,
        low_rank: match (a.low_rank, a.low_rank_energy) {
            (Some(r), _) => Some(api::LowRankTarget::Params(r)),
            (None, Some(e)) => Some(api::LowRankTarget::Energy(e)),
            (None, None) => None,
        },
        prune_heads: a.prune_heads,
        #[cfg(feature = "distill")]
        distill: a.distill.clone().map(|data| api::Distillation {
            data,
            options: distill_options(&a.training, a.threads),
        }),
        prune: a.prune.map(|t| {
            use api::{PruneAllocation, PruneBlock, PruneImportance, PruneTarget, PruneUpdate};
            api::PruneOptions {
                target: match t {
                    cli::PruneTarget::Sparsity(s) => PruneTarget::Sparsity(s),
                    cli::PruneTarget::Max => PruneTarget::Max,
                },
                allocation: match a.prune_allocation {
                    cli::PruneAllocationArg::Sensitivity => PruneAllocation::Sensitivity,
                    cli::PruneAllocationArg::Uniform => PruneAllocation::Uniform,
                    cli::PruneAllocationArg::Global => PruneAllocation::Global,
                },
                block: match a.prune_block {
                    cli::PruneBlockArg::Single => PruneBlock::Single,
                    cli::PruneBlockArg::Rows4 => PruneBlock::Rows4,
                },
                importance: match a.prune_importance {
                    cli::PruneImportanceArg::Magnitude => PruneImportance::Magnitude,
                    cli::PruneImportanceArg::Activation => PruneImportance::Activation,
                },
                update: match a.prune_update {
                    cli::PruneUpdateArg::Auto => PruneUpdate::Auto,
                    cli::PruneUpdateArg::LeastSquares => PruneUpdate::LeastSquares,
                    cli::PruneUpdateArg::None => PruneUpdate::None,
                },
            }
        }),
        weights: WeightFormat {
            granularity: match a.per_tensor {
                true => Granularity::PerTensor,
                false => Granularity::PerChannel,
            },
            reduce_range: !a.full_range,
        },
        activations,
        eval: a.eval.clone(),
        max_accuracy_drop: a.max_accuracy_drop,
        min_cosine: a.min_cosine,
        check_speed: !a.no_speed_check,
        goal: match a.goal {
            cli::GoalArg::Size => api::Goal::Size,
            cli::GoalArg::Latency => api::Goal::Latency,
        },
        sensitivity_samples: a.sensitivity_samples,
        latency_runs: a.latency_runs,
        threads: a.threads.unwrap_or(0),
        dims: parse_dims(&a.dim)?,
        cache_dir: match a.no_cache {
            true => None,
            false => a.cache_dir.clone().or_else(api::default_cache_dir),
        },
        progress: ui.progress(a.json),
    })
}

/// Runs `command`, with `-` standing for stdin or stdout where a file is
/// named (the summaries of work done are then left out: stdout carries the
/// file).
fn run(command: Command, ui: Ui) -> Result<(), Error> {
    let mut io = stdio::Stdio::default();
    let mut command = command;
    let to_stdout = io.redirect(&mut command)?;
    let ui = Ui {
        quiet: ui.quiet || to_stdout,
        ..ui
    };
    // A file written before a failure (JUnit of a failed budget) still
    // goes out.
    let done = dispatch(command, ui);
    let flushed = io.flush();
    done.and(flushed)
}

fn dispatch(command: Command, ui: Ui) -> Result<(), Error> {
    match command {
        Command::Inspect { model, json, ir } => match (ir, json) {
            (true, _) => print!("{}", api::Model::load(&model)?.ir_text()),
            (false, true) => print_json(&api::inspect(&model)?)?,
            (false, false) => print!("{}", api::render_inspect(&api::inspect(&model)?)),
        },
        Command::Passes { json } => match json {
            true => print_json(&api::passes())?,
            false => print!("{}", api::render_passes(&api::passes())),
        },
        Command::Compile {
            model,
            output,
            pipeline,
            emit,
            verify,
            dim,
            json,
        } => {
            let opts = api::CompileOptions {
                verify,
                binding: Binding {
                    dims: parse_dims(&dim)?,
                    ..Binding::default()
                },
            };
            let report = api::compile_file(&model, &output, &pipeline, emit_format(emit), &opts)?;
            match json {
                true => print_json(&report)?,
                false => ui.say(&report.render(ui.verbose)),
            }
        }
        Command::Run {
            model,
            inputs,
            random,
            reference,
            output,
            json,
        } => {
            let binding = inputs.binding(random)?;
            let session = api::SessionOptions {
                threads: inputs.threads.unwrap_or(0),
                untuned: inputs.untuned,
                whole_batch: inputs.whole_batch,
            };
            let report = api::run_file(
                &model,
                &inputs.files()?,
                &binding,
                output.as_deref(),
                reference,
                &session,
            )?;
            match json {
                true => print_json(&report)?,
                // The outputs' summary is what `run` prints without -o.
                false if output.is_some() => ui.say(&report.render()),
                false => print!("{}", report.render()),
            }
        }
        Command::Bench {
            model,
            inputs,
            warmup,
            runs,
            pipeline,
            seed,
            profile,
            verify,
            json,
            compare,
        } => {
            if compare.compare {
                return bench_compare(
                    &model, &inputs, warmup, runs, pipeline, seed, profile, verify, json, &compare,
                    ui,
                );
            }
            let [model] = &model[..] else {
                return Err(Error::Usage(format!(
                    "bench: {} models given; add --compare to compare them",
                    model.len()
                )));
            };
            let opts = api::BenchOptions {
                warmup,
                runs,
                profile,
                progress: ui.progress(json),
            };
            let session = api::SessionOptions {
                threads: inputs.threads.unwrap_or(0),
                untuned: inputs.untuned,
                whole_batch: inputs.whole_batch,
            };
            let binding = inputs.binding(Some(seed))?;
            let report = api::bench_file(
                model,
                pipeline.as_deref(),
                &inputs.files()?,
                &binding,
                &session,
                &opts,
                verify,
            )?;
            match json {
                true => print_json(&report)?,
                false => print!("{}", report.render()),
            }
            report.verdict()?;
        }
        Command::Compress(a) => {
            let opts = compress_options(&a, ui)?;
            let out = api::compress_file(&a.model, &a.output, emit_format(a.emit), &opts)?;
            match a.json {
                true => print_json(&out.report)?,
                false => {
                    if ui.verbose {
                        ui.say(&out.report.markdown());
                    }
                    ui.say(&out.report.summary());
                    ui.say(&format!(
                        "report: {}, {} and {}\n",
                        out.json_path.display(),
                        out.md_path.display(),
                        out.html_path.display()
                    ));
                }
            }
        }
        Command::Distill(a) => distill(&a, ui)?,
        Command::Check(a) => check(&a, ui)?,
        Command::Tune {
            model,
            output,
            inputs,
            target,
            budget,
            db,
            pipeline,
            json,
        } => {
            let output = output.unwrap_or_else(|| {
                let stem = model
                    .file_stem()
                    .map_or("model".into(), |s| s.to_string_lossy());
                model.with_file_name(format!("{stem}.tuned.mlc"))
            });
            let opts = api::TuneFileOptions {
                target,
                threads: inputs.threads.unwrap_or(0),
                budget,
                db,
                pipeline,
                progress: ui.progress(json),
            };
            let binding = inputs.binding(Some(0))?;
            let report = api::tune_file(&model, &output, &inputs.files()?, &binding, &opts)?;
            match json {
                true => print_json(&report)?,
                false => {
                    if ui.verbose {
                        ui.say(&report.markdown());
                    }
                    ui.say(&report.render());
                }
            }
        }
        Command::Targets { json } => {
            let targets = api::targets();
            match json {
                true => print_json(&targets)?,
                false => print!("{}", api::render_targets(&targets)),
            }
        }
        Command::Probe { json, seconds } => {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 600.0) {
                return Err(Error::Input {
                    name: "--seconds".into(),
                    message: format!("{seconds} is not a time between 0 and 600 seconds"),
                });
            }
            let report = api::probe(seconds);
            match json {
                true => print_json(&report)?,
                false => print!("{}", api::render_probe(&report)),
            }
        }
    }
    Ok(())
}

/// `mlc bench MODEL... --compare`.
#[allow(clippy::too_many_arguments)]
fn bench_compare(
    models: &[PathBuf],
    inputs: &InputArgs,
    warmup: usize,
    runs: usize,
    pipeline: Option<String>,
    seed: u64,
    profile: bool,
    verify: bool,
    json: bool,
    a: &cli::CompareArgs,
    ui: Ui,
) -> Result<(), Error> {
    if verify {
        return Err(Error::Usage(
            "bench: --verify checks one model; leave it out of --compare".into(),
        ));
    }
    let opts = api::CompareOptions {
        pipeline,
        warmup,
        stop: match a.duration {
            Some(d) => api::Stop::Duration(d),
            None => api::Stop::Runs(runs),
        },
        rounds: a.rounds,
        ort: a
            .ort
            .then(|| a.python.clone().unwrap_or_else(api::default_python)),
        profile,
        outputs: a.output.iter().chain(&a.html).cloned().collect(),
        export_times: a.export_times.clone(),
        progress: ui.progress(json),
    };
    let session = api::SessionOptions {
        threads: inputs.threads.unwrap_or(0),
        untuned: inputs.untuned,
        whole_batch: inputs.whole_batch,
    };
    let report = api::bench_compare(
        models,
        &inputs.files()?,
        &inputs.binding(Some(seed))?,
        &session,
        &opts,
    )?;
    match json {
        true => println!("{}", report.json()?),
        false => print!("{}", report.markdown()),
    }
    Ok(())
}

#[cfg(feature = "distill")]
fn distill_options(t: &cli::TrainingArgs, threads: Option<usize>) -> api::DistillOptions {
    api::DistillOptions {
        epochs: t.epochs,
        lr: t.lr,
        batch: t.batch,
        temperature: t.temperature,
        labels: t.labels,
        seed: t.seed,
        patience: t.patience,
        weight_decay: t.weight_decay,
        threads: threads.unwrap_or(0),
        objective: match t.objective {
            cli::ObjectiveArg::Auto => api::DistillObjective::Auto,
            cli::ObjectiveArg::Kl => api::DistillObjective::Kl,
            cli::ObjectiveArg::Mse => api::DistillObjective::Mse,
            cli::ObjectiveArg::Cosine => api::DistillObjective::Cosine,
        },
        qat: false,
    }
}

#[cfg(feature = "distill")]
fn distill(a: &DistillArgs, ui: Ui) -> Result<(), Error> {
    let opts = api::DistillOptions {
        qat: a.qat,
        ..distill_options(&a.training, a.threads)
    };
    let output = a.output.clone().unwrap_or_else(|| {
        let stem = a
            .student
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy());
        a.student.with_file_name(format!("{stem}.distilled.mlc"))
    });
    let progress = ui.progress(a.json);
    let report = api::distill_file(
        &a.student,
        &a.teacher,
        &a.data,
        a.eval.as_deref(),
        &output,
        &opts,
        progress,
    )?;
    match a.json {
        true => print_json(&report)?,
        false => {
            if ui.verbose {
                ui.say(&report.epochs());
            }
            ui.say(&report.summary());
        }
    }
    Ok(())
}

#[cfg(not(feature = "distill"))]
fn distill(_: &DistillArgs, _: Ui) -> Result<(), Error> {
    Err(no_distillation())
}

#[cfg(not(feature = "distill"))]
fn no_distillation() -> Error {
    Error::Usage(
        "this mlc was built without distillation (cargo feature `distill`, on by default)".into(),
    )
}

fn check(a: &cli::CheckArgs, ui: Ui) -> Result<(), Error> {
    let defaults = api::CheckOptions {
        progress: ui.progress(a.json),
        ..Default::default()
    };
    let flags = api::CheckCase {
        model: a.model.clone().unwrap_or_default(),
        max_size: a.max_size,
        max_latency_ms: a.max_latency_ms,
        min_accuracy: a.min_accuracy,
        eval: a.eval.clone(),
        min_cosine: a.min_cosine,
        reference: a.reference.clone(),
        data: a.data.clone(),
        max_regression: a.max_regression,
        baseline: a.baseline.clone(),
    };
    let (mut cases, mut opts) = match &a.budget {
        Some(file) => api::check::read_budget_file(file, &defaults)?,
        None => (Vec::new(), defaults),
    };
    let has_flags = flags
        != api::CheckCase {
            model: flags.model.clone(),
            ..Default::default()
        };
    match (&a.model, &a.budget) {
        (None, None) => {
            return Err(Error::Usage(
                "check: give a MODEL with budgets, or --budget FILE.toml".into(),
            ))
        }
        (None, Some(_)) if has_flags => {
            return Err(Error::Usage(
                "check: budget flags need a MODEL (the file's models have their own)".into(),
            ))
        }
        (None, Some(_)) => {}
        (Some(_), None) => cases.push(flags),
        (Some(m), Some(file)) => {
            // Only this model's entries, the flags added to them.
            cases.retain(|c| same_file(&c.model, m));
            if cases.is_empty() {
                return Err(Error::Usage(format!(
                    "check: {} has no entry for {}",
                    file.display(),
                    m.display()
                )));
            }
            for c in &mut cases {
                c.max_size = flags.max_size.or(c.max_size);
                c.max_latency_ms = flags.max_latency_ms.or(c.max_latency_ms);
                c.min_accuracy = flags.min_accuracy.or(c.min_accuracy);
                c.eval = flags.eval.clone().or(c.eval.take());
                c.min_cosine = flags.min_cosine.or(c.min_cosine);
                c.reference = flags.reference.clone().or(c.reference.take());
                c.data = flags.data.clone().or(c.data.take());
                c.max_regression = flags.max_regression.or(c.max_regression);
                c.baseline = flags.baseline.clone().or(c.baseline.take());
            }
        }
    }
    opts.threads = a.threads.unwrap_or(opts.threads);
    opts.batch = a.batch.unwrap_or(opts.batch);
    opts.rounds = a.rounds.unwrap_or(opts.rounds);
    for path in a.junit.iter().chain(&a.html) {
        api::check::ensure_apart(&cases, path)?;
    }
    let report = api::check(&cases, &opts)?;
    if let Some(path) = &a.junit {
        report.write_junit(path)?;
    }
    if let Some(path) = &a.html {
        report.write_html(path)?;
    }
    match a.json {
        true => print_json(&report)?,
        false => ui.say(&report.render()),
    }
    match report.ok() {
        true => Ok(()),
        false => Err(Error::BudgetFailed {
            failed: report.failed,
            total: report.results.len(),
        }),
    }
}

/// Whether two paths name the same file (as given, else canonical).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
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

/// The command that does what a command name from other tools asks for.
fn command_tip(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "prune" | "sparsify" => "pruning is `mlc compress MODEL --prune 0.5` (or --prune-channels, --prune-heads)",
        "quantize" | "quantise" | "int8" | "ptq" => "quantization is `mlc compress MODEL --int8` (or --int4, --fp16)",
        "lowrank" | "low-rank" | "factorize" | "svd" => "low-rank factorization is `mlc compress MODEL --low-rank 2x`",
        "optimize" | "optimise" | "build" | "convert" => "`mlc compile MODEL -o OUT.mlc` runs the pass pipeline (`--emit onnx` for ONNX)",
        "benchmark" | "perf" | "profile" => "`mlc bench MODEL` (`--profile` for per-op time)",
        "autotune" | "tuning" => "`mlc tune MODEL -o OUT.mlc`",
        "gate" | "verify" | "budget" => "`mlc check MODEL --max-size 5MB ...` is the CI gate",
        "train" | "finetune" | "fine-tune" | "qat" => "fine-tuning is `mlc distill STUDENT --teacher MODEL --data DATA.npz` (`--qat` for int8 students)",
        "info" | "show" | "summary" => "`mlc inspect MODEL`",
        _ => return None,
    })
}

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
                if let Some(tip) = std::env::args().nth(1).as_deref().and_then(command_tip) {
                    eprintln!(
                        "error: there is no `mlc {}`: {tip}",
                        std::env::args().nth(1).unwrap_or_default()
                    );
                    return ExitCode::from(2);
                }
            }
            e.exit()
        }
    };
    if let Some(bytes) = cli.max_memory {
        api::set_max_memory(bytes);
    }
    let ui = Ui {
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    match run(cli.command, ui) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, of bounded length, whatever the input quoted.
            let line = e.to_string().replace('\n', " ");
            eprintln!("error: {}", api::excerpt(&line, MAX_ERROR_LINE));
            ExitCode::from(e.exit_code())
        }
    }
}

//! The library API: everything the `mlc` command line does, as calls.
//!
//! A [`Model`] is loaded once (ONNX or an `.mlc` bundle) and keeps its
//! source (bytes and hash) and the log of the passes run on it. It compiles
//! with a recipe ([`Model::compile`]), compresses ([`Model::compress`]),
//! writes a bundle or ONNX ([`Model::write`]), and opens a [`Session`]: the
//! fast CPU runtime with one plan per set of input shapes, run on named
//! tensors as often as needed, and benchmarked ([`Session::bench`]).
//! [`inspect`] summarizes a model file; [`npy`] reads and writes NumPy
//! arrays.
//!
//! ```
//! use mlc::api::{Model, SessionOptions};
//! use mlc::Tensor;
//!
//! # fn main() -> mlc::Result<()> {
//! let mut model = Model::load("fixtures/mlp/model.onnx")?;
//! model.compile("O2")?;
//! let mut session = model.session(&SessionOptions { threads: 1, ..Default::default() })?;
//! let x = Tensor::from_f32(vec![2, 64], vec![0.5; 128]).expect("128 values fill [2, 64]");
//! let outputs = session.run(vec![("x".to_string(), x)])?;
//! assert_eq!(outputs[0].0, "y");
//! assert_eq!(outputs[0].1.shape(), &[2, 10]);
//!
//! // A mistake gets one error that lists what the model expects.
//! let wrong = Tensor::from_f32(vec![2, 3], vec![0.0; 6]).expect("6 values fill [2, 3]");
//! let err = session.run(vec![("x".to_string(), wrong)]).unwrap_err();
//! assert_eq!(err.to_string(), "input 'x': expects f32[batch,64], got f32[2, 3]");
//! # Ok(())
//! # }
//! ```

mod bench;
pub mod check;
mod compare;
mod jobs;
mod session;
mod tune;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::compress::lowrank::Target as LowRankTarget;
pub use crate::compress::prune::{
    Allocation as PruneAllocation, Block as PruneBlock, Importance as PruneImportance,
    PruneOptions, Target as PruneTarget, Update as PruneUpdate,
};
pub use crate::compress::quantize::{Granularity, WeightFormat};
pub use crate::compress::report::Report as CompressReport;
#[cfg(feature = "distill")]
pub use crate::compress::Distillation;
pub use crate::compress::{
    default_cache_dir, Activations, Goal, Mode as CompressMode, Options as CompressOptions,
};
#[cfg(feature = "distill")]
pub use crate::distill::{DistillOptions, DistillReport, Objective as DistillObjective};
pub use crate::error::{excerpt, human_bytes};
pub use crate::formats::bundle::has_magic as is_bundle;
pub use crate::formats::npy;
pub use crate::inputs::Binding;
pub use crate::inspect::render as render_inspect;
pub use crate::inspect::Summary as InspectSummary;
pub use crate::limits::{max_memory, parse_bytes, set_max_memory};
pub use crate::probe::{render as render_probe, run as probe, ProbeReport};
pub use crate::target::{render as render_targets, Arch, Caches, Feature, FmaUnits, Target};
pub use crate::transform::runner::PassLogEntry;
pub use crate::tune::{host_fingerprint, parse_budget};
pub use bench::{BenchOptions, BenchReport, VerifyReport};
pub use check::{check, CheckCase, CheckOptions, CheckReport, EXIT_BUDGET_FAILED};
pub use compare::{
    bench_compare, default_python, CompareEntry, CompareOptions, CompareReport, Stop,
};
#[cfg(feature = "distill")]
pub use jobs::distill_file;
pub use jobs::{
    bench_file, compile_file, compress_file, run_file, CompileReport, CompressOutcome, InputFiles,
};
pub use session::{OutputSummary, RunReport, Session, SessionOptions};
pub use tune::{tune_file, TuneFileOptions, TuneReport};

use crate::formats::{self, bundle};
use crate::ir::{Graph, Tensor, TensorType};
use crate::runtime::Choices;
use crate::transform::recipe::Recipe;
use crate::transform::runner::{self, DriftCheck, RunOptions};
use crate::{Error, Result};

/// The file a model was loaded from.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    /// The file's bytes (for size figures and cache keys).
    pub bytes: Arc<[u8]>,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// A model in mlc's IR with where it came from and what was done to it.
#[derive(Clone, Debug)]
pub struct Model {
    graph: Graph,
    source: Option<Source>,
    /// Nodes of the graph as imported.
    nodes_imported: usize,
    /// The recipe(s) run on it, and every pass run, in order.
    pipeline: Option<bundle::PipelineInfo>,
    pass_log: Vec<PassLogEntry>,
    /// Kernel choices by node name (`mlc tune`), and how they were made.
    choices: Choices,
    tuning: Option<bundle::TuningInfo>,
}

/// What writing a model produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An `.mlc` bundle.
    Bundle,
    /// Standard ONNX (fused ops expanded; int8 layers as QDQ).
    Onnx,
    /// ONNX as [`Format::Onnx`], with pruned (mostly zero) weights as
    /// sparse initializers.
    OnnxSparse,
}

impl Format {
    /// The format a path's extension names: `.onnx` is ONNX, anything else
    /// a bundle.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => Format::Onnx,
            _ => Format::Bundle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Bundle => "mlc bundle",
            Format::Onnx => "ONNX",
            Format::OnnxSparse => "ONNX (sparse initializers)",
        }
    }
}

/// How [`Model::compile_with`] runs.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// After every pass, run the reference interpreter on seeded inputs and
    /// stop at the first pass whose outputs drift.
    pub verify: bool,
    /// Sizes of symbolic dims for the verification inputs.
    pub binding: Binding,
}

/// What [`Model::compile_with`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompileSummary {
    pub pipeline: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub verified: bool,
    pub pass_log: Vec<PassLogEntry>,
}

/// A distilled student and its report.
#[cfg(feature = "distill")]
pub struct Distilled {
    pub model: Model,
    pub report: DistillReport,
}

/// A compressed model and its report.
pub struct Compressed {
    pub model: Model,
    pub report: CompressReport,
}

impl Model {
    /// Loads an ONNX model or an `.mlc` bundle (by its magic bytes or
    /// extension).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes: Arc<[u8]> = std::fs::read(path).map_err(|e| Error::io(path, e))?.into();
        let source = Source {
            path: path.to_path_buf(),
            sha256: bundle::sha256_hex(&bytes),
            bytes,
        };
        if bundle::looks_like_bundle(path) {
            let (graph, meta) = bundle::from_bytes(&source.bytes, path)?;
            return Ok(Model {
                graph,
                source: Some(source),
                nodes_imported: meta.nodes.before,
                pipeline: Some(meta.pipeline),
                pass_log: meta.pass_log,
                choices: meta.kernel_choices,
                tuning: meta.tuning,
            });
        }
        let graph = formats::onnx::from_file_bytes(&source.bytes, path)?;
        Ok(Model::with_source(graph, Some(source)))
    }

    /// A model built in code (no source file).
    pub fn from_graph(graph: Graph) -> Model {
        Model::with_source(graph, None)
    }

    fn with_source(graph: Graph, source: Option<Source>) -> Model {
        Model {
            nodes_imported: graph.node_count(),
            graph,
            source,
            pipeline: None,
            pass_log: Vec::new(),
            choices: Choices::new(),
            tuning: None,
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// Every pass run on the model so far (from the bundle it was loaded
    /// from, then from [`Model::compile`]).
    pub fn pass_log(&self) -> &[PassLogEntry] {
        &self.pass_log
    }

    /// The graph in mlc's IR text form.
    pub fn ir_text(&self) -> String {
        crate::ir::text::print(&self.graph)
    }

    /// The model's inputs: name and declared type.
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        let g = &self.graph;
        g.inputs
            .iter()
            .map(|&id| (g.value(id).name.clone(), g.ty(id).clone()))
            .collect()
    }

    /// The model's outputs: name and inferred type.
    pub fn outputs(&self) -> Vec<(String, TensorType)> {
        let g = &self.graph;
        g.outputs
            .iter()
            .map(|&id| (g.value(id).name.clone(), g.ty(id).clone()))
            .collect()
    }

    /// Runs a pipeline: a built-in recipe name (`O0`, `O1`, `O2`) or a
    /// recipe file.
    pub fn compile(&mut self, pipeline: &str) -> Result<CompileSummary> {
        self.compile_with(&Recipe::resolve(pipeline)?, &CompileOptions::default())
    }

    /// Runs `recipe` as `opts` say.
    pub fn compile_with(
        &mut self,
        recipe: &Recipe,
        opts: &CompileOptions,
    ) -> Result<CompileSummary> {
        let nodes_before = self.graph.node_count();
        let run_opts = RunOptions {
            drift: if opts.verify {
                let sample = crate::inputs::bind(
                    &self.graph,
                    Vec::new(),
                    &Binding {
                        random_seed: Some(0),
                        ..opts.binding.clone()
                    },
                )?;
                Some(DriftCheck::new(&self.graph, sample, 1e-4, 1e-5)?)
            } else {
                None
            },
        };
        let log = runner::run(&mut self.graph, recipe, &run_opts)?;
        self.pass_log.extend(log.iter().cloned());
        self.pipeline = Some(match self.pipeline.take() {
            None => bundle::PipelineInfo {
                name: recipe.name.clone(),
                summary: recipe.summary(),
            },
            Some(p) => bundle::PipelineInfo {
                name: format!("{} + {}", p.name, recipe.name),
                summary: format!("{} -> {}", p.summary, recipe.summary()),
            },
        });
        Ok(CompileSummary {
            pipeline: recipe.name.clone(),
            nodes_before,
            nodes_after: self.graph.node_count(),
            verified: opts.verify,
            pass_log: log,
        })
    }

    /// Compresses the model (int8, int4 or fp16 as `opts` say) with
    /// measurements: the model is compiled with `O2` first.
    ///
    /// ```
    /// use mlc::api::{CompressMode, CompressOptions, Format, Model};
    ///
    /// # fn main() -> mlc::Result<()> {
    /// let model = Model::load("fixtures/mlp/model.onnx")?;
    /// let mut opts = CompressOptions::new(CompressMode::Int8);
    /// opts.latency_runs = 0; // no latency figures in a doc test
    /// let small = model.compress(&opts)?;
    /// println!("{}", small.report.summary());
    /// assert!(small.report.size.weights_bytes < small.report.size.weights_f32_bytes / 3);
    /// let dir = std::env::temp_dir().join(format!("mlc-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).expect("a temp folder");
    /// let bytes = small.model.write(&dir.join("mlp.int8.mlc"), Format::Bundle)?;
    /// let onnx = small.model.write(&dir.join("mlp.int8.onnx"), Format::Onnx)?;
    /// assert!(bytes > 0 && onnx > 0);
    /// // A bundle mlc writes is one it reads back.
    /// let back = Model::load(dir.join("mlp.int8.mlc"))?;
    /// assert_eq!(back.graph().node_count(), small.model.graph().node_count());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok(())
    /// # }
    /// ```
    pub fn compress(&self, opts: &CompressOptions) -> Result<Compressed> {
        let (path, bytes) = match &self.source {
            Some(s) => (s.path.clone(), s.bytes.clone()),
            None => (PathBuf::from(&self.graph.name), Arc::from(&[][..])),
        };
        let out = crate::compress::compress(self.graph.clone(), &path, &bytes, opts)?;
        let pipeline = bundle::PipelineInfo {
            name: opts.mode.name().to_string(),
            summary: format!("O2, then mlc compress --{}", opts.mode.name()),
        };
        Ok(Compressed {
            model: Model {
                graph: out.graph,
                source: self.source.clone(),
                nodes_imported: out.nodes_before,
                pipeline: Some(pipeline),
                pass_log: Vec::new(),
                choices: Choices::new(),
                tuning: None,
            },
            report: out.report,
        })
    }

    /// The model as distillation and compression see it: an ONNX model as
    /// loaded is compiled with `O2` first; a bundle is used as it is.
    #[cfg(feature = "distill")]
    fn compiled(&self) -> Result<Model> {
        let mut m = self.clone();
        if m.pipeline.is_none() {
            m.compile("O2")?;
        }
        Ok(m)
    }

    #[cfg(feature = "distill")]
    /// Distills this model (the student, e.g. a pruned or low-rank
    /// compression of the teacher) from `teacher` on the samples of
    /// `train` (a `.npz` keyed by input name, optional `labels`), scoring
    /// each epoch on `held_out` (see [`crate::distill`]). Both models must
    /// have the same inputs and outputs; ONNX models are compiled with
    /// `O2` first.
    ///
    /// ```
    /// use mlc::api::{DistillOptions, Model};
    /// use std::path::Path;
    ///
    /// # fn main() -> mlc::Result<()> {
    /// let teacher = Model::load("fixtures/digits/mlp.onnx")?;
    /// let opts = DistillOptions { epochs: 2, ..Default::default() };
    /// let data = Path::new("fixtures/digits/calib_mlp.npz");
    /// let held_out = Path::new("fixtures/digits/eval_mlp.npz");
    /// // A student distilled from its own teacher stays where it is.
    /// let out = teacher.distill(&teacher, data, Some(held_out), &opts, false)?;
    /// assert!(out.report.after.top1_agreement > 0.99);
    /// # Ok(())
    /// # }
    /// ```
    pub fn distill(
        &self,
        teacher: &Model,
        train: &Path,
        held_out: Option<&Path>,
        opts: &DistillOptions,
        progress: bool,
    ) -> Result<Distilled> {
        let student = self.compiled()?;
        let teacher = teacher.compiled()?;
        crate::distill::check_compatible(student.graph(), teacher.graph())?;
        let train = crate::compress::data::Dataset::load(train, student.graph())?;
        let held_out = match held_out {
            Some(p) => Some(crate::compress::data::Dataset::load(p, student.graph())?),
            None => None,
        };
        let out = crate::distill::distill(
            student.graph(),
            teacher.graph(),
            &train,
            held_out.as_ref(),
            opts,
            progress,
        )?;
        let mut report = out.report;
        let name = |m: &Model| {
            m.source
                .as_ref()
                .map_or(m.graph.name.clone(), |s| s.path.display().to_string())
        };
        report.student = name(self);
        report.teacher = name(&teacher);
        let step = if opts.qat { "distill --qat" } else { "distill" };
        let pipeline = student.pipeline.clone().map_or(
            bundle::PipelineInfo {
                name: step.into(),
                summary: format!("mlc {step}"),
            },
            |p| bundle::PipelineInfo {
                name: format!("{} + {step}", p.name),
                summary: format!("{} -> mlc {step}", p.summary),
            },
        );
        Ok(Distilled {
            model: Model {
                graph: out.graph,
                pipeline: Some(pipeline),
                ..student
            },
            report,
        })
    }

    /// Opens a session on the fast CPU runtime.
    pub fn session(&self, opts: &SessionOptions) -> Result<Session> {
        let choices = if opts.untuned {
            Choices::new()
        } else {
            self.choices.clone()
        };
        Session::new(self.graph.clone(), choices, opts)
    }

    /// The kernel choices the model carries (by node name; empty when
    /// untuned) and how they were made.
    pub fn kernel_choices(&self) -> (&Choices, Option<&bundle::TuningInfo>) {
        (&self.choices, self.tuning.as_ref())
    }

    /// Sets the kernel choices the model carries into its bundle.
    pub fn set_kernel_choices(&mut self, choices: Choices, tuning: Option<bundle::TuningInfo>) {
        self.choices = choices;
        self.tuning = tuning;
    }

    /// Writes the model as `format` to `path` (atomically) and returns the
    /// file's size in bytes.
    pub fn write(&self, path: &Path, format: Format) -> Result<u64> {
        match format {
            Format::Bundle => bundle::write(path, &self.graph, &self.metadata())?,
            Format::Onnx => formats::onnx::write(path, &self.graph)?,
            Format::OnnxSparse => {
                let opts = formats::onnx::ExportOptions {
                    sparse_initializers: true,
                };
                formats::onnx::write_with(path, &self.graph, opts)?
            }
        }
        Ok(std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len())
    }

    /// The bundle metadata of the model as it is now.
    pub fn metadata(&self) -> bundle::Metadata {
        let source = match &self.source {
            Some(s) => bundle::SourceInfo {
                file_name: s
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: s.sha256.clone(),
            },
            None => bundle::SourceInfo::from_bytes(self.graph.name.clone(), &[]),
        };
        let mut meta = bundle::Metadata::new(
            source,
            self.pipeline.clone().unwrap_or(bundle::PipelineInfo {
                name: "none".into(),
                summary: "no passes".into(),
            }),
            self.pass_log.clone(),
            bundle::NodeCounts {
                before: self.nodes_imported,
                after: self.graph.node_count(),
            },
        );
        meta.kernel_choices = self.choices.clone();
        meta.tuning = self.tuning.clone();
        if let Some(t) = &self.tuning {
            meta.target = t.target.clone();
        }
        meta
    }
}

/// Summarizes a model file (ONNX or bundle): inputs, outputs, op
/// histogram, parameters, and what mlc cannot import, without failing on it.
///
/// ```
/// # fn main() -> mlc::Result<()> {
/// let summary = mlc::api::inspect(std::path::Path::new("fixtures/cnn/model.onnx"))?;
/// assert!(summary.supported);
/// print!("{}", mlc::inspect::render(&summary));
/// # Ok(())
/// # }
/// ```
pub fn inspect(path: &Path) -> Result<InspectSummary> {
    if bundle::looks_like_bundle(path) {
        crate::inspect::inspect_bundle(path)
    } else {
        crate::inspect::inspect_onnx(path)
    }
}

/// Writes named tensors to `path`: a `.npz` holding them all, or a `.npy`
/// holding the only one. [`npy`] reads them back.
///
/// ```
/// use mlc::api::{npy, write_tensors};
/// use mlc::Tensor;
///
/// # fn main() -> mlc::Result<()> {
/// let path = std::env::temp_dir().join(format!("mlc-doc-{}.npz", std::process::id()));
/// let t = Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).expect("4 values");
/// write_tensors(&path, &[("a".to_string(), t.clone())])?;
/// let back = npy::read_npz(&path)?;
/// assert_eq!(back, vec![("a".to_string(), t)]);
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
pub fn write_tensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => npy::write_npz(path, named),
        Some("npy") if named.len() == 1 => npy::write_npy(path, &named[0].1),
        Some("npy") => Err(Error::Input {
            name: path.display().to_string(),
            message: format!(
                "{} tensors do not fit one .npy; write them to a .npz",
                named.len()
            ),
        }),
        _ => Err(Error::Input {
            name: path.display().to_string(),
            message: "the file must end in .npz or .npy".into(),
        }),
    }
}

/// The targets `mlc targets` lists: `host` (this machine, probed), then the
/// built-in ones (`targets/*.toml`).
///
/// ```
/// let targets = mlc::api::targets();
/// assert_eq!(targets[0].name, "host");
/// assert!(targets.iter().any(|t| t.name == "cortex-a55"));
/// print!("{}", mlc::api::render_targets(&targets));
/// ```
pub fn targets() -> Vec<Target> {
    std::iter::once(Target::host())
        .chain(Target::builtin())
        .collect()
}

/// A registered pass, as `mlc passes` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PassListing {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: Vec<ParamListing>,
}

/// One parameter of a pass, with its default.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParamListing {
    pub name: &'static str,
    pub default: String,
    pub help: &'static str,
}

/// Every registered pass with its summary and parameters.
pub fn passes() -> Vec<PassListing> {
    crate::transform::registry()
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
        .collect()
}

/// The pass list as text.
pub fn render_passes(list: &[PassListing]) -> String {
    let mut s = String::new();
    for p in list {
        s += &format!("{:<24} {}\n", p.name, p.summary);
        for q in &p.params {
            s += &format!("{:<26} {} = {}  {}\n", "", q.name, q.default, q.help);
        }
    }
    s
}

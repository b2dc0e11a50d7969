//! The command line's jobs as calls: each reads its files, does the work
//! through [`Model`] and [`Session`], writes its outputs (checked against
//! every file it reads) and returns a report the caller prints.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    BenchOptions, BenchReport, Binding, CompileOptions, CompressOptions, CompressReport, Format,
    Model, OutputSummary, PassLogEntry, RunReport, SessionOptions,
};
use crate::formats::npy;
use crate::ir::Tensor;
use crate::limits::human_bytes;
use crate::transform::recipe::Recipe;
use crate::{Error, Result};

/// What [`compile_file`] did.
#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub model: String,
    pub output: String,
    pub format: &'static str,
    pub pipeline: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub bytes: u64,
    pub verified: bool,
    pub pass_log: Vec<PassLogEntry>,
}

impl CompileReport {
    /// One line; with `verbose`, the pass log before it.
    pub fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        if verbose {
            s += &crate::transform::runner::render_log(&self.pass_log);
        }
        s += &format!(
            "{} -> {} ({}, pipeline {}): nodes {} -> {}, {}{}\n",
            self.model,
            self.output,
            self.format,
            self.pipeline,
            self.nodes_before,
            self.nodes_after,
            human_bytes(self.bytes),
            if self.verified {
                ", outputs verified after every pass"
            } else {
                ""
            }
        );
        s
    }
}

/// `mlc compile`: loads `model`, runs `pipeline`, writes `output` as
/// `format` (default: from its extension).
pub fn compile_file(
    model: &Path,
    output: &Path,
    pipeline: &str,
    format: Option<Format>,
    opts: &CompileOptions,
) -> Result<CompileReport> {
    let recipe = Recipe::resolve(pipeline)?;
    crate::fsutil::ensure_not_input(output, model)?;
    let mut m = Model::load(model)?;
    crate::ir::bind::check_dim_names(m.graph(), opts.binding.dims.keys())?;
    let summary = m.compile_with(&recipe, opts)?;
    let format = format.unwrap_or_else(|| Format::from_path(output));
    let bytes = m.write(output, format)?;
    Ok(CompileReport {
        model: model.display().to_string(),
        output: output.display().to_string(),
        format: format.name(),
        pipeline: summary.pipeline,
        nodes_before: summary.nodes_before,
        nodes_after: summary.nodes_after,
        bytes,
        verified: summary.verified,
        pass_log: summary.pass_log,
    })
}

/// Where [`compress_file`] wrote its reports.
pub struct CompressOutcome {
    pub report: CompressReport,
    pub json_path: PathBuf,
    pub md_path: PathBuf,
    pub html_path: PathBuf,
}

/// The JSON, Markdown and HTML reports of `output`: `<output>.<kind>.json`,
/// `.md` and `.html` beside it.
pub(crate) fn report_paths(output: &Path, kind: &str) -> [PathBuf; 3] {
    let named = |ext: &str| {
        let mut name = output.as_os_str().to_owned();
        name.push(format!(".{kind}.{ext}"));
        PathBuf::from(name)
    };
    [named("json"), named("md"), named("html")]
}

/// `mlc compress`: compresses `model` into `output` (as `format`, default
/// from the extension) and writes the report beside it as
/// `<output>.report.json`, `.report.md` and `.report.html` (named after
/// the whole file name, so `x.onnx` and `x.mlc` keep reports of their
/// own).
pub fn compress_file(
    model: &Path,
    output: &Path,
    format: Option<Format>,
    opts: &CompressOptions,
) -> Result<CompressOutcome> {
    let format = format.unwrap_or_else(|| Format::from_path(output));
    let [json_path, md_path, html_path] = report_paths(output, "report");
    let mut reads = vec![model];
    if let crate::compress::Activations::Static { calib, .. } = &opts.activations {
        reads.push(calib);
    }
    reads.extend(opts.eval.as_deref());
    #[cfg(feature = "distill")]
    reads.extend(opts.distill.as_ref().map(|d| d.data.as_path()));
    crate::fsutil::ensure_outputs_apart(&[output, &json_path, &md_path, &html_path], &reads)?;
    let m = Model::load(model)?;
    let compressed = m.compress(opts)?;
    // Reports of an earlier run go first, so that a run killed between the
    // bundle and its reports never leaves a new bundle beside old reports.
    for stale in [&json_path, &md_path, &html_path] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(stale, e)),
            _ => {}
        }
    }
    let out_bytes = compressed.model.write(output, format)?;
    let mut report = compressed.report;
    report.output = output.display().to_string();
    report.format = match format {
        Format::Bundle => "mlc bundle".into(),
        Format::Onnx => "QDQ ONNX".into(),
        Format::OnnxSparse => "QDQ ONNX, sparse initializers".into(),
    };
    report.size.output_bytes = out_bytes;
    let base = match format {
        Format::Bundle => report.size.f32_bundle_bytes,
        Format::Onnx | Format::OnnxSparse => report.size.source_bytes,
    };
    report.size.ratio = out_bytes as f64 / base.max(1) as f64;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Internal(format!("JSON encoding failed: {e}")))?;
    crate::fsutil::write_bytes_atomic(&json_path, json.as_bytes())?;
    crate::fsutil::write_bytes_atomic(&md_path, report.markdown().as_bytes())?;
    crate::fsutil::write_bytes_atomic(&html_path, report.html().as_bytes())?;
    Ok(CompressOutcome {
        report,
        json_path,
        md_path,
        html_path,
    })
}

/// `mlc distill`: distills `student` from `teacher` on `data` (scored on
/// `held_out`) and writes the result to `output` as a bundle (atomically:
/// nothing is written when anything fails).
#[cfg(feature = "distill")]
pub fn distill_file(
    student: &Path,
    teacher: &Path,
    data: &Path,
    held_out: Option<&Path>,
    output: &Path,
    opts: &super::DistillOptions,
    progress: bool,
) -> Result<super::DistillReport> {
    let mut reads = vec![student, teacher, data];
    reads.extend(held_out);
    crate::fsutil::ensure_outputs_apart(&[output], &reads)?;
    let s = Model::load(student)?;
    let t = Model::load(teacher)?;
    let out = s.distill(&t, data, held_out, opts, progress)?;
    let bytes = out.model.write(output, Format::Bundle)?;
    let mut report = out.report;
    report.output = output.display().to_string();
    report.bytes = bytes;
    Ok(report)
}

/// Where `mlc run` and `mlc bench` take their inputs from.
#[derive(Clone, Debug, Default)]
pub struct InputFiles {
    /// A `.npz` with arrays named after the model's inputs.
    pub npz: Option<PathBuf>,
    /// Single inputs: name and `.npy` file.
    pub npy: Vec<(String, PathBuf)>,
}

impl InputFiles {
    pub(crate) fn paths(&self) -> Vec<&Path> {
        self.npz
            .iter()
            .map(PathBuf::as_path)
            .chain(self.npy.iter().map(|(_, p)| p.as_path()))
            .collect()
    }

    /// Reads them; a name given twice is an error.
    pub fn read(&self) -> Result<Vec<(String, Tensor)>> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        if let Some(p) = &self.npz {
            named.extend(npy::read_npz(p)?);
        }
        for (name, p) in &self.npy {
            if named.iter().any(|(n, _)| n == name) {
                return Err(Error::Input {
                    name: name.clone(),
                    message: "given twice".into(),
                });
            }
            named.push((name.clone(), npy::read_npy(p)?));
        }
        Ok(named)
    }
}

/// `mlc run`: runs `model` once on the fast runtime (or the reference
/// interpreter with `reference`), optionally writing the outputs.
pub fn run_file(
    model: &Path,
    inputs: &InputFiles,
    binding: &Binding,
    output: Option<&Path>,
    reference: bool,
    session: &SessionOptions,
) -> Result<RunReport> {
    if let Some(out) = output {
        let mut reads = vec![model];
        reads.extend(inputs.paths());
        crate::fsutil::ensure_outputs_apart(&[out], &reads)?;
    }
    let m = Model::load(model)?;
    let mut session = m.session(session)?;
    let feed = session.bind(inputs.read()?, binding)?;
    let out = if reference {
        session.run_reference(feed)?
    } else {
        session.run_positional(&feed)?
    };
    let named = session.name_outputs(out);
    if let Some(path) = output {
        super::write_tensors(path, &named)?;
    }
    Ok(RunReport {
        model: model.display().to_string(),
        engine: if reference { "reference" } else { "runtime" }.into(),
        outputs: named
            .iter()
            .map(|(n, t)| OutputSummary::new(n, t))
            .collect(),
        output_file: output.map(|p| p.display().to_string()),
    })
}

/// `mlc bench`: compiles `model` with `pipeline` (default `O2` for ONNX,
/// none for a bundle), binds the inputs (files, then seeded random data
/// from `binding`) and times it; `verify` checks the runtime against the
/// reference interpreter running the model as loaded.
pub fn bench_file(
    model: &Path,
    pipeline: Option<&str>,
    inputs: &InputFiles,
    binding: &Binding,
    session: &SessionOptions,
    opts: &BenchOptions,
    verify: bool,
) -> Result<BenchReport> {
    let mut m = Model::load(model)?;
    let original = verify.then(|| m.graph().clone());
    let pipeline = match pipeline {
        Some(p) => Some(p.to_string()),
        None if crate::formats::bundle::looks_like_bundle(model) => None,
        None => Some("O2".to_string()),
    };
    let pipeline_name = match pipeline.as_deref() {
        None | Some("O0") => "none".to_string(),
        Some(spec) => m.compile(spec)?.pipeline,
    };
    let mut session = m.session(session)?;
    let feed = session.bind(inputs.read()?, binding)?;
    let mut report = session.bench(&feed, opts, original.as_ref())?;
    report.header = crate::provenance::Header::for_file("bench", report.threads, model);
    report.model = model.display().to_string();
    report.pipeline = pipeline_name;
    Ok(report)
}

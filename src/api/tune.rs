//! `mlc tune` as a library call: [`tune_file`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{InputFiles, Model, SessionOptions};
use crate::formats::bundle::{self, TuningInfo};
use crate::inputs::Binding;
use crate::kernels::cpu::CpuCtx;
use crate::target::Target;
use crate::tune::db::Db;
use crate::tune::{host_fingerprint, tune, TuneOptions, TuneOutcome};
use crate::{Error, Result};

/// How [`tune_file`] runs.
#[derive(Clone, Debug)]
pub struct TuneFileOptions {
    /// `host` (measured); other targets need the cost model, not yet here.
    pub target: String,
    /// Threads (0: the machine's cores).
    pub threads: usize,
    pub budget: Duration,
    /// The tuning database (None: [`Db::default_path`], or memory only
    /// when there is no cache directory).
    pub db: Option<PathBuf>,
    /// Pipeline for an ONNX model (a bundle is tuned as it is).
    pub pipeline: String,
    pub progress: bool,
}

/// What `mlc tune` did.
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub schema_version: u32,
    pub model: String,
    pub output: String,
    pub report_files: Vec<String>,
    /// The tuning database read and extended (null: memory only).
    pub db: Option<String>,
    pub fingerprint: String,
    pub inputs: Vec<(String, Vec<usize>)>,
    #[serde(flatten)]
    pub outcome: TuneOutcome,
}

/// `mlc tune`: measures kernel choices for `model` (compiled with the
/// pipeline first when it is ONNX) on this machine and writes a bundle
/// carrying them to `output`, with the tuning report beside it
/// (`<output stem>.tune.json` and `.tune.md`).
pub fn tune_file(
    model: &Path,
    output: &Path,
    inputs: &InputFiles,
    binding: &Binding,
    opts: &TuneFileOptions,
) -> Result<TuneReport> {
    // An unknown name is an error listing the known ones; a known target
    // other than this machine needs the cost model.
    let target = Target::by_name(&opts.target)?;
    if target.name != crate::target::HOST {
        return Err(Error::Input {
            name: "--target".into(),
            message: format!(
                "'{}': tuning for a machine other than this one needs the cost model, which mlc does not have yet; use --target host",
                target.name
            ),
        });
    }
    let stem = output.with_extension("");
    let (json_path, md_path) = (
        PathBuf::from(format!("{}.tune.json", stem.display())),
        PathBuf::from(format!("{}.tune.md", stem.display())),
    );
    let mut reads = vec![model];
    reads.extend(inputs.paths());
    crate::fsutil::ensure_outputs_apart(&[output, &json_path, &md_path], &reads)?;
    let mut m = Model::load(model)?;
    if !bundle::looks_like_bundle(model) {
        m.compile(&opts.pipeline)?;
    }
    let session = m.session(&SessionOptions {
        threads: 1,
        untuned: true,
    })?;
    let feed = session.bind(inputs.read()?, binding)?;
    let db_path = opts.db.clone().or_else(Db::default_path);
    let mut db = match &db_path {
        Some(p) => Db::open(p)?,
        None => Db::in_memory(),
    };
    let fingerprint = host_fingerprint();
    let cx = CpuCtx::new(opts.threads)?;
    let tune_opts = TuneOptions {
        budget: opts.budget,
        runs_per_round: 10,
        max_samples: 60,
        final_runs: 20,
        seed: 0,
        target: fingerprint.clone(),
        progress: opts.progress,
    };
    let outcome = tune(m.graph(), &feed, cx, &mut db, &tune_opts)?;
    let info = (!outcome.choices.is_empty()).then(|| TuningInfo {
        target: opts.target.clone(),
        fingerprint: fingerprint.clone(),
        threads: outcome.threads,
        estimated: false,
    });
    m.set_kernel_choices(outcome.choices.clone(), info);
    m.write(output, super::Format::Bundle)?;
    let report = TuneReport {
        schema_version: 1,
        model: model.display().to_string(),
        output: output.display().to_string(),
        report_files: vec![
            json_path.display().to_string(),
            md_path.display().to_string(),
        ],
        db: db_path.map(|p| p.display().to_string()),
        fingerprint,
        inputs: m
            .graph()
            .inputs
            .iter()
            .zip(&feed)
            .map(|(&v, t)| (m.graph().value(v).name.clone(), t.shape().to_vec()))
            .collect(),
        outcome,
    };
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| Error::Internal(format!("encoding the tuning report: {e}")))?;
    crate::fsutil::write_bytes_atomic(&json_path, &json)?;
    crate::fsutil::write_bytes_atomic(&md_path, report.markdown().as_bytes())?;
    Ok(report)
}

impl TuneReport {
    /// The summary `mlc tune` prints.
    pub fn render(&self) -> String {
        let o = &self.outcome;
        let changed = o.nodes.iter().filter(|n| !n.choice.is_default()).count();
        let from_db = o.nodes.iter().filter(|n| n.source == "database").count();
        let mut s = format!(
            "{}: {} nodes with a choice ({} from the database), {} changed; {} rounds in {:.1} s, {} threads\n",
            self.model,
            o.nodes.len(),
            from_db,
            changed,
            o.rounds,
            o.elapsed_s,
            o.threads
        );
        s += &format!(
            "whole model: untuned {:.3} ms [{:.3}-{:.3}], tuned {:.3} ms [{:.3}-{:.3}] (median [p10-p90], alternating): {}\n",
            o.untuned.median_ms,
            o.untuned.p10_ms,
            o.untuned.p90_ms,
            o.tuned.median_ms,
            o.tuned.p10_ms,
            o.tuned.p90_ms,
            if o.kept {
                "tuned choices kept"
            } else if changed == 0 {
                "every default kept"
            } else {
                "tuned plan not faster, defaults kept"
            }
        );
        s += &format!(
            "wrote {} (reports {})\n",
            self.output,
            self.report_files.join(", ")
        );
        s
    }

    /// The Markdown report: per node, the candidates with their medians and
    /// spreads, the choice and its gain.
    pub fn markdown(&self) -> String {
        let o = &self.outcome;
        let mut s = format!("# Tuning report: {}\n\n", self.model);
        s += &format!(
            "- target: host ({})\n- threads: {}\n- inputs: {}\n- database: {}\n- rounds: {}, {:.1} s\n",
            self.fingerprint,
            o.threads,
            self.inputs
                .iter()
                .map(|(n, s)| format!("{n}{s:?}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.db.as_deref().unwrap_or("none (memory only)"),
            o.rounds,
            o.elapsed_s
        );
        s += &format!(
            "- whole model (alternating runs, median [p10–p90]): untuned {:.3} ms [{:.3}–{:.3}], tuned {:.3} ms [{:.3}–{:.3}]; {}\n\n",
            o.untuned.median_ms,
            o.untuned.p10_ms,
            o.untuned.p90_ms,
            o.tuned.median_ms,
            o.tuned.p10_ms,
            o.tuned.p90_ms,
            if o.kept { "the tuned choices are kept" } else { "the defaults are kept" }
        );
        s += "| node | op | candidates: median ms [p10–p90] | choice | gain | source |\n|---|---|---|---|---|---|\n";
        for n in &o.nodes {
            let cands: Vec<String> = n
                .candidates
                .iter()
                .map(|c| match (&c.timing, &c.rejected) {
                    (Some(t), _) => format!(
                        "{} {:.4} [{:.4}–{:.4}]",
                        c.choice, t.median_ms, t.p10_ms, t.p90_ms
                    ),
                    (None, Some(why)) => format!("{} rejected: {why}", c.choice),
                    (None, None) => format!("{} not timed (budget)", c.choice),
                })
                .collect();
            s += &format!(
                "| {} | {} | {} | {} | {:.2}x | {} |\n",
                n.node,
                n.op,
                cands.join("; "),
                n.choice,
                n.gain,
                n.source
            );
        }
        s
    }
}

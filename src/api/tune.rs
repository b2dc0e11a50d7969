//! `mlc tune` as a library call: [`tune_file`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{InputFiles, Model, SessionOptions};
use crate::formats::bundle::{self, TuningInfo};
use crate::inputs::Binding;
use crate::kernels::cpu::CpuCtx;
use crate::target::Target;
use crate::tune::cost::CostModel;
use crate::tune::db::Db;
use crate::tune::db::Record;
use crate::tune::Second;
use crate::tune::{estimate, host_fingerprint, tune, Candidate, Scale, TuneOptions, TuneOutcome};

/// Measured records (with features) the cost model needs before it may
/// choose for another target.
const MIN_RECORDS: usize = 20;
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
    /// What made the report, where and when (schema version included).
    pub header: crate::provenance::Header,
    /// The target's name; its fingerprint below.
    pub target: String,
    /// Chosen by the cost model, nothing measured (a target not at hand).
    pub estimated: bool,
    /// The target against this machine, for the cost model (estimated).
    pub scale: Option<Scale>,
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
/// (`<output>.tune.json`, `.tune.md` and `.tune.html`).
pub fn tune_file(
    model: &Path,
    output: &Path,
    inputs: &InputFiles,
    binding: &Binding,
    opts: &TuneFileOptions,
) -> Result<TuneReport> {
    // An unknown name is an error listing the known ones.
    let target = Target::by_name(&opts.target)?;
    let on_host = target.name == crate::target::HOST;
    let [json_path, md_path, html_path] = super::jobs::report_paths(output, "tune");
    let mut reads = vec![model];
    reads.extend(inputs.paths());
    crate::fsutil::ensure_outputs_apart(&[output, &json_path, &md_path, &html_path], &reads)?;
    let mut m = Model::load(model)?;
    if !bundle::looks_like_bundle(model) {
        m.compile(&opts.pipeline)?;
    }
    let session = m.session(&SessionOptions {
        threads: 1,
        untuned: true,
        ..SessionOptions::default()
    })?;
    let feed = session.bind(inputs.read()?, binding)?;
    let db_path = opts.db.clone().or_else(Db::default_path);
    let mut db = match &db_path {
        Some(p) => Db::open(p)?,
        None => Db::in_memory(),
    };
    let host = host_fingerprint();
    let cx = CpuCtx::new(opts.threads)?;
    let threads = cx.threads;
    let (outcome, scale) = if on_host {
        let tune_opts = TuneOptions {
            budget: opts.budget,
            runs_per_round: 10,
            max_samples: 60,
            final_runs: 20,
            seed: 0,
            target: host.clone(),
            progress: opts.progress,
        };
        (tune(m.graph(), &feed, cx, &mut db, &tune_opts)?, None)
    } else {
        // Another machine: the cost model of this machine's records,
        // scaled by the two machines' peaks.
        let records: Vec<Record> = db.of_target(&host, cx.threads).cloned().collect();
        if records.iter().filter(|r| r.features.is_some()).count() < MIN_RECORDS {
            return Err(Error::Input {
                name: "--target".into(),
                message: format!(
                    "'{}': choosing kernels for a machine other than this one takes the cost model, fitted on this machine's measurements at {} thread(s), and the tuning database {} holds {} of them (at least {MIN_RECORDS} needed): run `mlc tune` on a few models here first",
                    target.name,
                    cx.threads,
                    db_path.as_ref().map_or("(none)".to_string(), |p| p.display().to_string()),
                    records.len()
                ),
            });
        }
        let model = CostModel::fit(&records);
        let accuracy = CostModel::evaluate(&records);
        let budget = std::time::Duration::from_millis(300);
        let gflops = crate::probe::measure_fma(cx.threads, cx.features, budget);
        let buf = crate::probe::filled_buffer(64 << 20);
        let gbps = crate::probe::measure_mem_read(&buf, cx.threads, cx.features, budget);
        let scale = Scale::of(&target, gflops, gbps, cx.threads);
        let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
        let outcome = estimate(
            m.graph(),
            &shapes,
            &target,
            cx.threads,
            &model,
            scale,
            Some(accuracy),
        )?;
        (outcome, Some(scale))
    };
    let fingerprint = if on_host { host } else { target.fingerprint() };
    let info = (!outcome.choices.is_empty()).then(|| TuningInfo {
        target: target.name.clone(),
        fingerprint: fingerprint.clone(),
        threads: outcome.threads,
        estimated: !on_host,
    });
    m.set_kernel_choices(outcome.choices.clone(), info);
    m.write(output, super::Format::Bundle)?;
    let report = TuneReport {
        header: crate::provenance::Header::for_file("tune", threads, model),
        target: target.name.clone(),
        estimated: !on_host,
        scale,
        model: model.display().to_string(),
        output: output.display().to_string(),
        report_files: vec![
            json_path.display().to_string(),
            md_path.display().to_string(),
            html_path.display().to_string(),
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
    crate::fsutil::write_bytes_atomic(&html_path, report.html().as_bytes())?;
    Ok(report)
}

impl TuneReport {
    /// The summary `mlc tune` prints.
    pub fn render(&self) -> String {
        let o = &self.outcome;
        let changed = o.nodes.iter().filter(|n| !n.choice.is_default()).count();
        let from_db = o.nodes.iter().filter(|n| n.source == "database").count();
        if self.estimated {
            let scale = self.scale.map_or(String::new(), |sc| {
                format!(
                    " (its compute {:.2}x and memory {:.2}x this machine's time)",
                    sc.compute, sc.memory
                )
            });
            return format!(
                "{} for target {} ({}): ESTIMATED by the cost model{scale}, nothing measured; {} nodes with a choice, {} changed; predicted untuned {:.3} ms, tuned {:.3} ms, {} threads\n{}wrote {} (reports {})\n",
                self.model,
                self.target,
                self.fingerprint,
                o.nodes.len(),
                changed,
                o.untuned.median_ms,
                o.tuned.median_ms,
                o.threads,
                o.cost_model.as_ref().map_or(String::new(), |c| format!("{}\n", cost_line(c))),
                self.output,
                self.report_files.join(", ")
            );
        }
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
            "whole model: untuned {}, tuned {} (median [p10-p90], alternating){}: {}\n",
            span(&o.untuned),
            span(&o.tuned),
            ratio_note(o),
            verdict(o)
        );
        if let Some(c) = &o.cost_model {
            s += &format!("{}\n", cost_line(c));
        }
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
        s += &self.header.markdown();
        s += "\n";
        if self.estimated {
            s += &format!(
                "> **Estimated.** Target {} is not this machine: every choice and time below is the cost model's prediction (fitted on this machine's records{}); nothing was measured.\n\n",
                self.target,
                self.scale.map_or(String::new(), |sc| format!(
                    ", the target's compute taking {:.2}x and its memory traffic {:.2}x this machine's time",
                    sc.compute, sc.memory
                ))
            );
        }
        s += &format!(
            "- target: {} ({})\n- threads: {}\n- inputs: {}\n- database: {}\n- rounds: {}, {:.1} s\n",
            self.target,
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
        let whole = if self.estimated {
            "predicted"
        } else {
            "alternating runs, median [p10–p90]"
        };
        s += &format!(
            "- whole model ({whole}): untuned {}, tuned {}{}; {}\n\n",
            span(&o.untuned),
            span(&o.tuned),
            ratio_note(o),
            verdict(o)
        );
        if let Some(c) = &o.cost_model {
            s += &format!("- {}\n\n", cost_line(c));
        }
        s += "| node | op | candidates: median ms [p10–p90], time over the default's run by run (95% interval) | choice | gain | source |\n|---|---|---|---|---|---|\n";
        for n in &o.nodes {
            let cands: Vec<String> = n
                .candidates
                .iter()
                .map(|c| format!("{} {}", c.choice, candidate_time(c)))
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

impl TuneReport {
    /// The report as one self-contained HTML page: the whole model untuned
    /// against tuned, time per op type and per node with the default
    /// kernel and the chosen one, and every candidate's timing.
    pub fn html(&self) -> String {
        use crate::report::svg::{Bar, BarRow, Bars};
        use crate::report::{Page, Tone};
        let o = &self.outcome;
        let mut p = Page::new(&format!("Tuning report: {}", self.model));
        p.header(&self.header);
        if self.estimated {
            p.warning(&format!(
                "Estimated: target {} is not this machine; every time below is the cost model's prediction, nothing was measured.",
                self.target
            ));
        }
        p.pre(&self.render());
        let what = if self.estimated {
            "predicted"
        } else {
            "median, whiskers p10-p90, alternating runs"
        };
        p.plot(
            Bars {
                title: "Whole model".into(),
                axis: format!("ms ({what})"),
                rows: [("untuned", &o.untuned), ("tuned", &o.tuned)]
                    .iter()
                    .map(|(name, t)| BarRow {
                        label: name.to_string(),
                        bars: vec![Bar {
                            label: String::new(),
                            segments: vec![(0, t.median_ms)],
                            range: Some((t.p10_ms, t.p90_ms)),
                        }],
                    })
                    .collect(),
                caption: verdict(o).to_string(),
                ..Bars::default()
            }
            .draw(),
        );
        // Each node's default candidate (listed first) and its choice.
        let timed: Vec<(&crate::tune::NodeTuning, f64, f64)> = o
            .nodes
            .iter()
            .filter_map(|n| {
                let default = n.candidates.first()?.timing.as_ref()?.median_ms;
                let chosen = n
                    .candidates
                    .iter()
                    .find(|c| c.choice == n.choice)
                    .and_then(|c| c.timing.as_ref())
                    .map_or(default, |t| t.median_ms);
                Some((n, default, chosen))
            })
            .collect();
        let series = ["default kernel", "chosen kernel"];
        let mut ops: Vec<(String, Vec<Option<f64>>)> = Vec::new();
        for (n, d, c) in &timed {
            match ops.iter_mut().find(|(op, _)| op == &n.op) {
                Some((_, v)) => {
                    v[0] = Some(v[0].unwrap_or(0.0) + d);
                    v[1] = Some(v[1].unwrap_or(0.0) + c);
                }
                None => ops.push((n.op.clone(), vec![Some(*d), Some(*c)])),
            }
        }
        p.heading("Time per op type and per node");
        p.plot(
            Bars {
                caption: "Sum over the nodes of each op type of their median node times.".into(),
                ..Bars::grouped("Node time per op type", "ms", &series, &ops)
            }
            .draw(),
        );
        let per_node: Vec<(String, Vec<Option<f64>>)> = timed
            .iter()
            .map(|(n, d, c)| (n.node.clone(), vec![Some(*d), Some(*c)]))
            .collect();
        p.plot(Bars::grouped("Node time per node", "ms (median)", &series, &per_node).draw());
        p.paragraph(
            "Every candidate computes the same outputs (each is checked against the reference first), so tuning trades nothing for speed: there is no accuracy trade-off to plot.",
        );
        p.heading("Candidates");
        let rows: Vec<Vec<(String, Tone)>> = o
            .nodes
            .iter()
            .flat_map(|n| {
                n.candidates.iter().map(move |c| {
                    let chosen = c.choice == n.choice;
                    vec![
                        (n.node.clone(), Tone::Plain),
                        (n.op.clone(), Tone::Plain),
                        (
                            c.choice.to_string(),
                            if chosen { Tone::Good } else { Tone::Plain },
                        ),
                        (candidate_time(c), Tone::Plain),
                        (
                            if chosen {
                                format!("chosen ({:.2}x)", n.gain)
                            } else {
                                String::new()
                            },
                            Tone::Plain,
                        ),
                        (n.source.to_string(), Tone::Plain),
                    ]
                })
            })
            .collect();
        p.table(
            &[
                "node",
                "op",
                "candidate",
                "median ms [p10-p90], x default (95% interval)",
                "choice",
                "source",
            ],
            &rows,
            &[3],
        );
        p.finish()
    }
}

/// The cost model's held-out accuracy in one line.
fn cost_line(c: &crate::tune::cost::Accuracy) -> String {
    format!(
        "cost model on this target's records (held out 5 ways, {} workloads, {} predictions): rank correlation {:.3}, regret of its pick median {:.1}%, mean {:.1}%",
        c.workloads,
        c.predictions,
        c.rank_correlation,
        100.0 * c.median_regret,
        100.0 * c.mean_regret
    )
}

/// `12.345 ms [12.000-13.000]`: a timing's median and p10-p90.
fn span(t: &crate::measure::Timing) -> String {
    format!("{:.3} ms [{:.3}-{:.3}]", t.median_ms, t.p10_ms, t.p90_ms)
}

/// What the final whole-model comparison decided, in words.
fn verdict(o: &TuneOutcome) -> &'static str {
    match (o.kept, o.second) {
        (true, Some(_)) => {
            "tuned choices kept (faster within the noise; a second comparison agreed)"
        }
        (true, None) => "tuned choices kept",
        (false, Some(Second::NoBudget)) => {
            "tuned plan faster within the noise, no budget left to confirm it: defaults kept"
        }
        (false, Some(_)) => {
            "tuned plan faster within the noise, not in a second comparison: defaults kept"
        }
        // No node beat its default, or the tuned plan lost the model run
        // (its choices are then recorded as defaults).
        (false, None) => "every default kept",
    }
}

/// The final comparison's tuned-to-untuned ratio, run by run, for the
/// reports' whole-model line (empty when estimated).
fn ratio_note(o: &TuneOutcome) -> String {
    o.tuned_vs_untuned.map_or(String::new(), |r| {
        format!(
            ", tuned/untuned run by run x{:.3} (95% interval {:.3}–{:.3}, {} pairs)",
            r.median, r.low, r.high, r.pairs
        )
    })
}

/// A candidate's time for the reports: median [p10–p90] ms, and for a
/// measured alternative its time over the default's, run by run, with the
/// 95% interval the choice was made on.
fn candidate_time(c: &Candidate) -> String {
    match (&c.timing, &c.rejected) {
        (Some(t), _) => {
            let mut s = format!("{:.4} [{:.4}–{:.4}]", t.median_ms, t.p10_ms, t.p90_ms);
            if let Some(r) = &c.vs_default {
                s += &format!(" x{:.3} ({:.3}–{:.3})", r.median, r.low, r.high);
            }
            s
        }
        (None, Some(why)) => format!("rejected: {why}"),
        (None, None) => "not timed (budget)".into(),
    }
}

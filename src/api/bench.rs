//! [`Session::bench`]: latency percentiles, throughput, memory and per-op
//! time, optionally checked against the reference interpreter.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::session::Session;
use crate::ir::{Dim, Graph, Tensor};
use crate::limits::human_bytes;
use crate::measure::percentile;
use crate::{Error, Result};

/// How [`Session::bench`] runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub warmup: usize,
    /// Timed runs (at least one).
    pub runs: usize,
    /// Per-op and per-node timing of the timed runs.
    pub profile: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            warmup: 3,
            runs: 20,
            profile: false,
            progress: false,
        }
    }
}

/// Tolerance of the check against the reference interpreter for f32
/// outputs (GUIDE: rtol 1e-3, atol 1e-5).
pub const VERIFY_RTOL: f64 = 1e-3;
pub const VERIFY_ATOL: f64 = 1e-5;

/// What [`Session::bench`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// What made the report, where and when (schema version included).
    pub header: crate::provenance::Header,
    pub model: String,
    /// The recipe the model was compiled with, or "none".
    pub pipeline: String,
    pub threads: usize,
    pub batch: usize,
    pub inputs: BTreeMap<String, Vec<usize>>,
    pub warmup: usize,
    pub runs: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Items (batch elements) per second at the mean latency.
    pub throughput_per_s: f64,
    /// Peak resident memory of the process; null where unknown.
    pub peak_rss_bytes: Option<u64>,
    pub arena_bytes: usize,
    pub plan: crate::runtime::PlanStats,
    /// Nodes running a kernel choice other than their default (`mlc
    /// tune`); 0: untuned.
    pub tuned_nodes: usize,
    /// Steps that ran item by item (the first ones in schedule order),
    /// the rest on the whole batch; 0 when the whole batch ran together
    /// (`src/runtime/items.rs`).
    pub item_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::runtime::Profile>,
    /// Each output against the reference interpreter, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
}

/// The runtime's outputs against the reference interpreter's.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub rtol: f64,
    pub atol: f64,
    pub ok: bool,
    pub outputs: Vec<crate::runtime::OutputCheck>,
}

impl Session {
    /// Times the model on `feed` (positional inputs, e.g. from
    /// [`Session::bind`]). With `oracle` (the model before any pass, or the
    /// same graph), the runtime's outputs are also checked against the
    /// reference interpreter running it.
    ///
    /// ```
    /// use mlc::api::{BenchOptions, Binding, Model, SessionOptions};
    ///
    /// # fn main() -> mlc::Result<()> {
    /// let mut model = Model::load("fixtures/cnn/model.onnx")?;
    /// let original = model.graph().clone();
    /// model.compile("O2")?;
    /// let mut session = model.session(&SessionOptions { threads: 1, ..Default::default() })?;
    /// // Seeded random data for every input, batch 4.
    /// let binding = Binding { batch: Some(4), random_seed: Some(0), ..Binding::default() };
    /// let feed = session.bind(Vec::new(), &binding)?;
    /// let opts = BenchOptions { warmup: 1, runs: 5, ..BenchOptions::default() };
    /// let report = session.bench(&feed, &opts, Some(&original))?;
    /// report.verdict()?; // the runtime agrees with the reference interpreter
    /// assert_eq!((report.batch, report.runs), (4, 5));
    /// print!("{}", report.render());
    /// # Ok(())
    /// # }
    /// ```
    pub fn bench(
        &mut self,
        feed: &[Tensor],
        opts: &BenchOptions,
        oracle: Option<&Graph>,
    ) -> Result<BenchReport> {
        if opts.runs == 0 {
            return Err(Error::Input {
                name: "runs".into(),
                message: "at least one timed run is needed".into(),
            });
        }
        let batch = batch_of(self.graph(), feed);
        let output_names: Vec<String> = self
            .graph()
            .outputs
            .iter()
            .map(|&o| self.graph().value(o).name.clone())
            .collect();
        let inputs = self
            .graph()
            .inputs
            .iter()
            .zip(feed)
            .map(|(&id, t)| (self.graph().value(id).name.clone(), t.shape().to_vec()))
            .collect();
        let threads = self.threads();
        let model = self.graph().name.clone();
        let plan = self.plan(feed)?;
        for _ in 0..opts.warmup {
            plan.run(feed)?;
        }
        plan.set_profiling(opts.profile);
        let bar = if opts.progress {
            let b = indicatif::ProgressBar::new(opts.runs as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} bench [{bar:30}] {pos}/{len} runs ({eta} left)",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut ms: Vec<f64> = Vec::with_capacity(opts.runs);
        for _ in 0..opts.runs {
            let t0 = Instant::now();
            let out = plan.run(feed)?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
            drop(out);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let verify = match oracle {
            Some(original) => {
                let got = plan.run(feed)?;
                let want = crate::interp::run(original, feed.to_vec())?;
                let outputs =
                    crate::runtime::compare(&output_names, &got, &want, VERIFY_RTOL, VERIFY_ATOL);
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
        let tuned_nodes = plan
            .steps()
            .iter()
            .filter(|s| !s.choice.is_default())
            .count();
        Ok(BenchReport {
            header: crate::provenance::Header::new("bench", threads, None),
            model,
            pipeline: "none".into(),
            threads,
            batch,
            inputs,
            warmup: opts.warmup,
            runs: opts.runs,
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
            peak_rss_bytes: proc_status_bytes("VmHWM"),
            arena_bytes: plan.stats().arena_bytes,
            tuned_nodes,
            item_steps: plan.items().map_or(0, |(_, steps)| steps),
            plan: plan.stats().clone(),
            profile: plan.profile(),
            verify,
        })
    }
}

/// The batch size of a feed: the size of the first symbolic dim of the
/// first input that has one, else the first input's first dim, else 1.
fn batch_of(g: &Graph, feed: &[Tensor]) -> usize {
    for (&id, t) in g.inputs.iter().zip(feed) {
        if let Some(pos) = g
            .ty(id)
            .shape
            .dims()
            .iter()
            .position(|d| matches!(d, Dim::Sym(_)))
        {
            return t.shape().get(pos).copied().unwrap_or(1);
        }
    }
    feed.first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(1)
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM`:
/// peak resident; `VmRSS`: resident now), in bytes, where Linux gives it.
pub(super) fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line[key.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl BenchReport {
    /// An error when the check against the reference interpreter failed.
    pub fn verdict(&self) -> Result<()> {
        match &self.verify {
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
        }
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let ins: Vec<String> = self
            .inputs
            .iter()
            .map(|(n, s)| format!("{n}{s:?}"))
            .collect();
        let tuned = match self.tuned_nodes {
            0 => "untuned".to_string(),
            n => format!("tuned: {n} nodes on chosen kernels"),
        };
        s += &format!(
            "{} (pipeline {}, {tuned}): threads {}, batch {}, inputs {}\n",
            self.model,
            self.pipeline,
            self.threads,
            self.batch,
            ins.join(" ")
        );
        s += &format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  mean {:.3}  min {:.3}  max {:.3}  ({} runs after {} warmup)\n",
            self.p50_ms, self.p90_ms, self.p99_ms, self.mean_ms, self.min_ms, self.max_ms, self.runs, self.warmup
        );
        s += &format!("throughput {:.2} items/s\n", self.throughput_per_s);
        if self.item_steps >= self.plan.nodes && self.item_steps > 0 {
            s += "batch run item by item (each thread its own items)\n";
        } else if self.item_steps > 0 {
            s += &format!(
                "batch run item by item for the first {} of {} steps (each thread its own items), the rest on the whole batch\n",
                self.item_steps, self.plan.nodes
            );
        }
        let p = &self.plan;
        s += &format!(
            "peak RSS {}; arena {} ({} unshared, reuse {:.2}x); nodes {}: {} fast, {} in place, {} aliased, {} copies, {} reference\n",
            self.peak_rss_bytes
                .map_or("unknown".to_string(), |b| format!("{} ({b} bytes)", human_bytes(b))),
            human_bytes(p.arena_bytes as u64),
            human_bytes(p.unshared_bytes as u64),
            p.reuse_ratio,
            p.nodes,
            p.fast_nodes,
            p.in_place_nodes,
            p.aliased_nodes,
            p.copy_nodes,
            p.reference_nodes
        );
        if let Some(prof) = &self.profile {
            if self.item_steps > 0 && self.threads > 1 {
                s += "(a step run item by item: its time summed over the items, and over the threads that ran them side by side)\n";
            }
            s += &prof.render();
        }
        if let Some(v) = &self.verify {
            for o in &v.outputs {
                s += &format!(
                    "verify {}: {} against the reference interpreter (max |diff| {:.3e}, {:.3} of the tolerance rtol {} atol {})\n",
                    o.name,
                    if o.ok() { "ok" } else { "DIFFERS" },
                    o.max_abs_err,
                    o.worst_tolerance_share,
                    v.rtol,
                    v.atol
                );
            }
        }
        s
    }
}

//! `mlc bench MODEL... --compare` as a library call: [`bench_compare`].
//!
//! Several models (an `.onnx` and its `.mlc` variants: f32, int8, pruned,
//! tuned) run on the same inputs in alternating rounds, so that drift in
//! the machine's speed (other load, clock, temperature) hits them alike:
//! round r starts with entry r and goes round (A B C, B C A, C A B, ...).
//! With ONNX Runtime ([`CompareOptions::ort`]) every `.onnx` model is also
//! an entry, run by a worker process of a Python that has `onnxruntime`
//! (`ort_worker.py`, embedded), which times its own runs and serves them
//! over stdin/stdout, so its rounds alternate with mlc's like any other.
//!
//! The result is one table (median with min–max, ratio to the first
//! entry, size on disk, memory), as Markdown, JSON and HTML with plots,
//! and every run's time ([`CompareReport::times_json`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench::proc_status_bytes;
use super::{Binding, InputFiles, Model, Session, SessionOptions};
use crate::ir::Tensor;
use crate::limits::human_bytes;
use crate::measure::percentile;
use crate::{Error, Result};

/// The ONNX Runtime worker, run as `python -c`.
const ORT_WORKER: &str = include_str!("ort_worker.py");

/// How long [`bench_compare`] measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// This many timed runs of every entry, spread over the rounds.
    Runs(usize),
    /// Rounds until this much time has passed (at least one round).
    Duration(Duration),
}

/// How [`bench_compare`] runs.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Pipeline for ONNX models (None: O2; bundles run as they are).
    pub pipeline: Option<String>,
    /// Untimed runs of every entry before the first round.
    pub warmup: usize,
    pub stop: Stop,
    /// Rounds the runs of [`Stop::Runs`] are spread over (with
    /// [`Stop::Duration`], rounds of about a tenth of it each).
    pub rounds: usize,
    /// Also run every `.onnx` model on ONNX Runtime with this Python.
    pub ort: Option<PathBuf>,
    /// Per-op time of every mlc entry, from extra profiled runs after the
    /// rounds (profiling slows runs down, so the timed runs go without).
    pub profile: bool,
    /// Reports to write, the format from each extension: `.json`, `.html`,
    /// anything else Markdown.
    pub outputs: Vec<PathBuf>,
    /// Every run's time as JSON ([`CompareReport::times_json`]).
    pub export_times: Option<PathBuf>,
    pub progress: bool,
}

impl Default for CompareOptions {
    fn default() -> CompareOptions {
        CompareOptions {
            pipeline: None,
            warmup: 5,
            stop: Stop::Runs(50),
            rounds: 10,
            ort: None,
            profile: false,
            outputs: Vec::new(),
            export_times: None,
            progress: false,
        }
    }
}

/// One row of the comparison: a model on an engine.
#[derive(Clone, Debug, Serialize)]
pub struct CompareEntry {
    /// `cnn.int8.mlc (mlc)`.
    pub label: String,
    pub model: String,
    /// `mlc` or `onnxruntime`.
    pub engine: String,
    /// mlc: the pipeline run first (`none` for a bundle); ONNX Runtime:
    /// its version, all graph optimizations.
    pub pipeline: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub mean_ms: f64,
    /// This entry's median over the first entry's.
    pub ratio: f64,
    /// Resident memory added by loading the model, planning it and one
    /// run (mlc: in this process; ONNX Runtime: in its worker); None where
    /// unknown.
    pub memory_bytes: Option<u64>,
    /// mlc: nodes on tuned kernel choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned_nodes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::runtime::Profile>,
    /// Every timed run: its round and milliseconds, in order.
    #[serde(skip)]
    pub times: Vec<(usize, f64)>,
}

/// What [`bench_compare`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// What made the report, where and when (no single model hash: each
    /// entry has its own).
    pub header: crate::provenance::Header,
    pub threads: usize,
    pub batch: usize,
    pub inputs: BTreeMap<String, Vec<usize>>,
    pub warmup: usize,
    pub rounds: usize,
    /// Peak resident memory of this process (every mlc entry together).
    pub peak_rss_bytes: Option<u64>,
    pub entries: Vec<CompareEntry>,
}

/// One engine running one model, timed a batch of runs at a time.
enum Runner {
    Mlc {
        session: Box<Session>,
        feed: Vec<Tensor>,
    },
    Ort(OrtWorker),
}

impl Runner {
    fn warmup(&mut self, n: usize) -> Result<()> {
        match self {
            Runner::Mlc { session, feed } => {
                let plan = session.plan(feed)?;
                for _ in 0..n {
                    plan.run(feed)?;
                }
                Ok(())
            }
            Runner::Ort(w) => w.request(&format!("warmup {n}")).map(drop),
        }
    }

    fn time(&mut self, n: usize) -> Result<Vec<f64>> {
        match self {
            Runner::Mlc { session, feed } => {
                let plan = session.plan(feed)?;
                let mut ms = Vec::with_capacity(n);
                for _ in 0..n {
                    let t0 = Instant::now();
                    let out = plan.run(feed)?;
                    ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    drop(out);
                }
                Ok(ms)
            }
            Runner::Ort(w) => {
                let reply = w.request(&format!("run {n}"))?;
                let ms: Vec<f64> = reply
                    .get("ms")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .ok_or_else(|| w.failed(&format!("no times in its reply {reply}")))?;
                match ms.len() == n {
                    true => Ok(ms),
                    false => Err(w.failed(&format!("{} times for {n} runs", ms.len()))),
                }
            }
        }
    }
}

/// A running `ort_worker.py` (see the module docs); killed when dropped.
struct OrtWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    model: PathBuf,
}

impl OrtWorker {
    /// Starts the worker on `model` with the inputs in `npz` and waits for
    /// it to be ready: its ONNX Runtime version and memory.
    fn start(
        python: &Path,
        model: &Path,
        npz: &Path,
        threads: usize,
    ) -> Result<(OrtWorker, String, Option<u64>)> {
        let mut child = Command::new(python)
            .arg("-c")
            .arg(ORT_WORKER)
            .arg(model)
            .arg(npz)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::Usage(format!(
                    "--ort: cannot start Python '{}' ({e}); give --python PATH of a Python with onnxruntime (tests/python/setup_venv.sh builds one)",
                    python.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(Error::Internal(
                "the ONNX Runtime worker has no pipes".into(),
            ));
        };
        let mut w = OrtWorker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            model: model.to_path_buf(),
        };
        let ready = w.reply().map_err(|e| match e {
            Error::Usage(m) if m.contains("cannot import onnxruntime") => Error::Usage(format!(
                "--ort: Python '{}' has no onnxruntime ({}); install it (pip install onnxruntime) or give --python PATH (tests/python/setup_venv.sh builds a venv with it)",
                python.display(),
                m.rsplit(": ").next().unwrap_or(&m)
            )),
            e => e,
        })?;
        let version = ready
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        let memory = ready.get("memory_bytes").and_then(|v| v.as_u64());
        Ok((w, version, memory))
    }

    /// An error about this worker's model.
    fn failed(&self, what: &str) -> Error {
        Error::Usage(format!("ONNX Runtime on {}: {what}", self.model.display()))
    }

    /// The next JSON line it writes; its `error` as an error.
    fn reply(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| self.failed(&format!("reading its reply: {e}")))?;
        if n == 0 {
            let status = self
                .child
                .wait()
                .map_or("unknown".into(), |s| s.to_string());
            return Err(self.failed(&format!("the worker ended ({status}) without a reply")));
        }
        let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
            self.failed(&format!(
                "unreadable reply ({e}): {}",
                crate::error::excerpt(line.trim(), 200)
            ))
        })?;
        match v.get("error").and_then(|e| e.as_str()) {
            Some(msg) => Err(self.failed(msg)),
            None => Ok(v),
        }
    }

    fn request(&mut self, line: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.failed(&format!("sending '{line}': {e}")))?;
        self.reply()
    }
}

impl Drop for OrtWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python `--ort` uses when none is given: the test venv that
/// `tests/python/setup_venv.sh` makes (`.venv` in the working directory,
/// or in the repository a `target/<profile>/mlc` binary was built in),
/// else `python3`.
pub fn default_python() -> PathBuf {
    let mut candidates = vec![PathBuf::from(".venv/bin/python")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(repo.join(".venv/bin/python"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// A scratch folder removed when dropped (the inputs file ONNX Runtime
/// reads).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("mlc-compare-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `mlc bench MODEL... --compare`: loads every model (ONNX compiled with
/// the pipeline, default O2), binds the inputs on the first (files, then
/// seeded random data from `binding`) and gives every model those same
/// tensors, times them in alternating rounds (see the module docs), and
/// writes the reports and times `opts` names.
///
/// ```
/// use mlc::api::{bench_compare, Binding, CompareOptions, InputFiles, SessionOptions, Stop};
/// use std::path::PathBuf;
///
/// # fn main() -> mlc::Result<()> {
/// let models = [PathBuf::from("fixtures/mlp/model.onnx"), PathBuf::from("fixtures/mlp/model.onnx")];
/// let binding = Binding { batch: Some(2), random_seed: Some(0), ..Binding::default() };
/// let opts = CompareOptions { warmup: 1, stop: Stop::Runs(6), rounds: 3, ..CompareOptions::default() };
/// let session = SessionOptions { threads: 1, ..SessionOptions::default() };
/// let report = bench_compare(&models, &InputFiles::default(), &binding, &session, &opts)?;
/// assert_eq!(report.entries.len(), 2);
/// assert_eq!(report.entries[1].runs, 6);
/// assert!(report.markdown().contains("| ratio |"));
/// # Ok(())
/// # }
/// ```
pub fn bench_compare(
    models: &[PathBuf],
    inputs: &InputFiles,
    binding: &Binding,
    session: &SessionOptions,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    if models.is_empty() {
        return Err(Error::Usage("bench --compare: no model given".into()));
    }
    match opts.stop {
        Stop::Runs(0) => {
            return Err(Error::Usage(
                "--runs: at least one timed run is needed".into(),
            ))
        }
        Stop::Duration(d) if d.is_zero() => {
            return Err(Error::Usage("--duration: must be more than zero".into()))
        }
        _ => {}
    }
    let mut reads: Vec<&Path> = models.iter().map(PathBuf::as_path).collect();
    reads.extend(inputs.paths());
    let mut writes: Vec<&Path> = opts.outputs.iter().map(PathBuf::as_path).collect();
    writes.extend(opts.export_times.as_deref());
    crate::fsutil::ensure_outputs_apart(&writes, &reads)?;
    for m in models {
        if !m.is_file() {
            return Err(Error::io(
                m,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
            ));
        }
    }

    // Every model on mlc, on the first one's inputs.
    let mut runners: Vec<Runner> = Vec::new();
    let mut entries: Vec<CompareEntry> = Vec::new();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let mut threads = 0;
    for (i, path) in models.iter().enumerate() {
        let rss_before = proc_status_bytes("VmRSS");
        let mut m = Model::load(path)?;
        let is_bundle = crate::formats::bundle::looks_like_bundle(path);
        let pipeline = match (&opts.pipeline, is_bundle) {
            (Some(p), _) if p.eq_ignore_ascii_case("O0") => "none".to_string(),
            (Some(p), _) => m.compile(p)?.pipeline,
            (None, true) => "none".to_string(),
            (None, false) => m.compile("O2")?.pipeline,
        };
        let sha256 = m.source().map_or(String::new(), |s| s.sha256.clone());
        let mut s = m.session(session)?;
        let feed = if i == 0 {
            let feed = s.bind(inputs.read()?, binding)?;
            named = s
                .graph()
                .inputs
                .iter()
                .zip(&feed)
                .map(|(&v, t)| (s.graph().value(v).name.clone(), t.clone()))
                .collect();
            threads = s.threads();
            feed
        } else {
            s.bind(
                named.clone(),
                &Binding {
                    random_seed: None,
                    ..binding.clone()
                },
            )
            .map_err(|e| mismatched(path, &models[0], &named, e))?
        };
        let tuned_nodes = s
            .plan(&feed)?
            .steps()
            .iter()
            .filter(|st| !st.choice.is_default())
            .count();
        let mut runner = Runner::Mlc {
            session: Box::new(s),
            feed,
        };
        runner.warmup(1)?;
        let memory = match (rss_before, proc_status_bytes("VmRSS")) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let mut e = entry(path, "mlc", pipeline, sha256, memory)?;
        e.tuned_nodes = Some(tuned_nodes);
        entries.push(e);
        runners.push(runner);
    }

    // The .onnx models on ONNX Runtime, on the same inputs.
    let _scratch = match &opts.ort {
        Some(python) => {
            let scratch = Scratch::new()?;
            let npz = scratch.0.join("inputs.npz");
            crate::formats::npy::write_npz(&npz, &named)?;
            let onnx: Vec<&PathBuf> = models
                .iter()
                .filter(|p| !crate::formats::bundle::looks_like_bundle(p))
                .collect();
            if onnx.is_empty() {
                return Err(Error::Usage(
                    "--ort: none of the models is an .onnx file".into(),
                ));
            }
            for path in onnx {
                let (w, version, memory) = OrtWorker::start(python, path, &npz, threads)?;
                let sha = entries
                    .iter()
                    .find(|e| Path::new(&e.model) == path.as_path())
                    .map_or(String::new(), |e| e.sha256.clone());
                entries.push(entry(
                    path,
                    "onnxruntime",
                    format!("onnxruntime {version}, all optimizations"),
                    sha,
                    memory,
                )?);
                runners.push(Runner::Ort(w));
            }
            Some(scratch)
        }
        None => None,
    };

    for r in &mut runners {
        r.warmup(opts.warmup)?;
    }
    let n = runners.len();
    let rounds = opts.rounds.max(1);
    // Runs of entry i in round r.
    let per_round: Vec<usize> = match opts.stop {
        Stop::Runs(total) => vec![total.div_ceil(rounds); n],
        Stop::Duration(d) => {
            let slot = d.as_secs_f64() * 1e3 / rounds as f64 / n as f64;
            let mut counts = Vec::with_capacity(n);
            for r in &mut runners {
                let probe = r.time(3)?;
                let mut sorted = probe.clone();
                sorted.sort_by(f64::total_cmp);
                let ms = percentile(&sorted, 50.0).max(1e-3);
                counts.push(((slot / ms) as usize).clamp(1, 100_000));
            }
            counts
        }
    };
    let bar = match opts.progress {
        true => indicatif::ProgressBar::new(match opts.stop {
            Stop::Runs(total) => {
                total.div_ceil(per_round.iter().copied().max().unwrap_or(1)) as u64
            }
            Stop::Duration(_) => rounds as u64,
        }),
        false => indicatif::ProgressBar::hidden(),
    };
    let started = Instant::now();
    let mut round = 0;
    loop {
        for k in 0..n {
            let i = (round + k) % n;
            let want = match opts.stop {
                Stop::Runs(total) => per_round[i].min(total - entries[i].times.len()),
                Stop::Duration(_) => per_round[i],
            };
            if want == 0 {
                continue;
            }
            for ms in runners[i].time(want)? {
                entries[i].times.push((round, ms));
            }
        }
        round += 1;
        bar.inc(1);
        let done = match opts.stop {
            Stop::Runs(total) => entries.iter().all(|e| e.times.len() >= total),
            Stop::Duration(d) => started.elapsed() >= d,
        };
        if done {
            break;
        }
    }
    bar.finish_and_clear();

    if opts.profile {
        for (r, e) in runners.iter_mut().zip(&mut entries) {
            if let Runner::Mlc { session, feed } = r {
                let plan = session.plan(feed)?;
                plan.set_profiling(true);
                for _ in 0..e.times.len().clamp(1, 20) {
                    plan.run(feed)?;
                }
                e.profile = plan.profile();
                plan.set_profiling(false);
            }
        }
    }
    drop(runners);

    let first = summarize(&mut entries[0]);
    for e in entries.iter_mut().skip(1) {
        summarize(e);
    }
    for e in &mut entries {
        e.ratio = e.median_ms / first.max(f64::MIN_POSITIVE);
    }
    let batch = named
        .first()
        .and_then(|(_, t)| t.shape().first().copied())
        .unwrap_or(1);
    let report = CompareReport {
        header: crate::provenance::Header::new("bench", threads, None),
        threads,
        batch,
        inputs: named
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .collect(),
        warmup: opts.warmup,
        rounds: round,
        peak_rss_bytes: proc_status_bytes("VmHWM"),
        entries,
    };
    for path in &opts.outputs {
        let text = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => report.json()?,
            Some("html" | "htm") => report.html(),
            _ => report.markdown(),
        };
        crate::fsutil::write_bytes_atomic(path, text.as_bytes())?;
    }
    if let Some(path) = &opts.export_times {
        crate::fsutil::write_bytes_atomic(path, report.times_json()?.as_bytes())?;
    }
    Ok(report)
}

/// The error of a model that cannot take the first model's inputs.
fn mismatched(path: &Path, first: &Path, named: &[(String, Tensor)], e: Error) -> Error {
    let given: Vec<String> = named
        .iter()
        .map(|(n, t)| format!("{n}: {:?}{:?}", t.dtype(), t.shape()))
        .collect();
    Error::Input {
        name: path.display().to_string(),
        message: format!(
            "does not take the inputs of {} ({}), which --compare runs every model on: {e}",
            first.display(),
            given.join(", ")
        ),
    }
}

/// A new entry for `path` on `engine` (its times to come).
fn entry(
    path: &Path,
    engine: &str,
    pipeline: String,
    sha256: String,
    memory: Option<u64>,
) -> Result<CompareEntry> {
    let size_bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let name = path.file_name().map_or(path.display().to_string(), |n| {
        n.to_string_lossy().into_owned()
    });
    Ok(CompareEntry {
        label: format!("{name} ({engine})"),
        model: path.display().to_string(),
        engine: engine.into(),
        pipeline,
        sha256,
        size_bytes,
        runs: 0,
        median_ms: 0.0,
        min_ms: 0.0,
        max_ms: 0.0,
        p10_ms: 0.0,
        p90_ms: 0.0,
        mean_ms: 0.0,
        ratio: 1.0,
        memory_bytes: memory,
        tuned_nodes: None,
        profile: None,
        times: Vec::new(),
    })
}

/// Fills in the statistics of an entry's times; returns its median.
fn summarize(e: &mut CompareEntry) -> f64 {
    let mut ms: Vec<f64> = e.times.iter().map(|t| t.1).collect();
    ms.sort_by(f64::total_cmp);
    e.runs = ms.len();
    e.median_ms = percentile(&ms, 50.0);
    e.p10_ms = percentile(&ms, 10.0);
    e.p90_ms = percentile(&ms, 90.0);
    e.min_ms = ms.first().copied().unwrap_or(0.0);
    e.max_ms = ms.last().copied().unwrap_or(0.0);
    e.mean_ms = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    e.median_ms
}

/// `--export-times`: every run of every entry.
#[derive(Serialize)]
struct Times<'a> {
    header: &'a crate::provenance::Header,
    unit: &'static str,
    entries: Vec<EntryTimes<'a>>,
}

#[derive(Serialize)]
struct EntryTimes<'a> {
    label: &'a str,
    model: &'a str,
    engine: &'a str,
    /// In the order run: `{"round": r, "ms": t}`.
    runs: Vec<RunTime>,
}

#[derive(Serialize)]
struct RunTime {
    round: usize,
    ms: f64,
}

impl CompareReport {
    /// The report as JSON (the raw times left out: [`Self::times_json`]).
    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("JSON encoding failed: {e}")))
    }

    /// Every timed run of every entry, in order, with its round, as JSON
    /// (what trtexec's `--exportTimes` gives).
    pub fn times_json(&self) -> Result<String> {
        let t = Times {
            header: &self.header,
            unit: "ms",
            entries: self
                .entries
                .iter()
                .map(|e| EntryTimes {
                    label: &e.label,
                    model: &e.model,
                    engine: &e.engine,
                    runs: e
                        .times
                        .iter()
                        .map(|&(round, ms)| RunTime { round, ms })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&t)
            .map_err(|e| Error::Internal(format!("JSON encoding failed: {e}")))
    }

    fn memory(e: &CompareEntry) -> String {
        e.memory_bytes.map_or("-".into(), human_bytes)
    }

    fn setup(&self) -> String {
        format!(
            "{} thread(s), batch {}, inputs {}; {} warm-up runs, then {} alternating rounds",
            self.threads,
            self.batch,
            self.inputs
                .iter()
                .map(|(n, s)| format!("{n}{s:?}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.warmup,
            self.rounds
        )
    }

    /// The table as Markdown (what `mlc bench --compare` prints).
    pub fn markdown(&self) -> String {
        let mut s = String::from("# Benchmark comparison\n\n");
        s += &self.header.markdown();
        s += &format!("- {}\n\n", self.setup());
        s += "| # | model | engine | median ms (min–max) | ratio | size | memory | runs |\n|---|---|---|---|---|---|---|---|\n";
        for (i, e) in self.entries.iter().enumerate() {
            s += &format!(
                "| {} | {} | {} | {:.3} ({:.3}–{:.3}) | {:.2}x | {} | {} | {} |\n",
                i + 1,
                e.model,
                e.engine,
                e.median_ms,
                e.min_ms,
                e.max_ms,
                e.ratio,
                human_bytes(e.size_bytes),
                Self::memory(e),
                e.runs
            );
        }
        s += "\nratio: median over the first row's. memory: resident memory added by loading the model, planning it and one run (mlc in this process, ONNX Runtime in its worker process).\n";
        for e in &self.entries {
            if let Some(p) = &e.profile {
                s += &format!("\n## Profile: {}\n\n```\n{}```\n", e.label, p.render());
            }
        }
        s
    }

    /// The report as one self-contained HTML page: the table, each
    /// entry's latency distribution, medians, sizes, memory and (with a
    /// profile) time per op type.
    pub fn html(&self) -> String {
        use crate::report::svg::{Bar, BarRow, Bars, Boxes};
        use crate::report::{Page, Tone};
        let mut p = Page::new("Benchmark comparison");
        p.header(&self.header);
        p.paragraph(&self.setup());
        let rows: Vec<Vec<(String, Tone)>> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let tone = match i {
                    0 => Tone::Plain,
                    _ if e.ratio < 1.0 => Tone::Good,
                    _ => Tone::Bad,
                };
                vec![
                    ((i + 1).to_string(), Tone::Plain),
                    (e.model.clone(), Tone::Plain),
                    (e.engine.clone(), Tone::Plain),
                    (
                        format!("{:.3} ({:.3}–{:.3})", e.median_ms, e.min_ms, e.max_ms),
                        Tone::Plain,
                    ),
                    (format!("{:.2}x", e.ratio), tone),
                    (human_bytes(e.size_bytes), Tone::Plain),
                    (Self::memory(e), Tone::Plain),
                    (e.runs.to_string(), Tone::Plain),
                ]
            })
            .collect();
        p.table(
            &[
                "#",
                "model",
                "engine",
                "median ms (min–max)",
                "ratio to #1",
                "size",
                "memory",
                "runs",
            ],
            &rows,
            &[3, 4, 5, 6, 7],
        );
        p.heading("Latency");
        p.plot(
            Boxes {
                title: "Latency distribution per model".into(),
                axis: "ms per run".into(),
                rows: self
                    .entries
                    .iter()
                    .map(|e| (e.label.clone(), e.times.iter().map(|t| t.1).collect()))
                    .collect(),
                caption: "Every timed run of the alternating rounds.".into(),
            }
            .draw(),
        );
        p.plot(
            Bars {
                title: "Median latency".into(),
                axis: "ms (median, whiskers min-max)".into(),
                rows: self
                    .entries
                    .iter()
                    .map(|e| BarRow {
                        label: format!("{} ({:.2}x)", e.label, e.ratio),
                        bars: vec![Bar {
                            label: String::new(),
                            segments: vec![(0, e.median_ms)],
                            range: Some((e.min_ms, e.max_ms)),
                        }],
                    })
                    .collect(),
                ..Bars::default()
            }
            .draw(),
        );
        p.heading("Size and memory");
        let kib = |b: u64| b as f64 / 1024.0;
        let mut seen = Vec::new();
        let sizes: Vec<(String, f64)> = self
            .entries
            .iter()
            .filter(|e| {
                let new = !seen.contains(&&e.model);
                seen.push(&e.model);
                new
            })
            .map(|e| (e.model.clone(), kib(e.size_bytes)))
            .collect();
        p.plot(Bars::simple("Size on disk", "KiB", &sizes).draw());
        let memory: Vec<(String, f64)> = self
            .entries
            .iter()
            .filter_map(|e| Some((e.label.clone(), kib(e.memory_bytes?))))
            .collect();
        p.plot(
            Bars {
                caption: "Resident memory added by loading, planning and one run.".into(),
                ..Bars::simple("Memory", "KiB", &memory)
            }
            .draw(),
        );
        let profiled: Vec<&CompareEntry> = self
            .entries
            .iter()
            .filter(|e| e.profile.is_some())
            .collect();
        if !profiled.is_empty() {
            p.heading("Time per op type (profiled runs)");
            let mut ops: Vec<(String, Vec<Option<f64>>)> = Vec::new();
            for (k, e) in profiled.iter().enumerate() {
                for op in e.profile.iter().flat_map(|pr| &pr.ops) {
                    let i = match ops.iter().position(|(o, _)| *o == op.op) {
                        Some(i) => i,
                        None => {
                            ops.push((op.op.clone(), vec![None; profiled.len()]));
                            ops.len() - 1
                        }
                    };
                    ops[i].1[k] = Some(op.ms_per_run);
                }
            }
            let names: Vec<&str> = profiled.iter().map(|e| e.label.as_str()).collect();
            p.plot(
                Bars {
                    caption: "Mean time per run of all nodes of each op type, from extra profiled runs after the rounds.".into(),
                    ..Bars::grouped("Time per op type", "ms per run", &names, &ops)
                }
                .draw(),
            );
            for e in profiled {
                if let Some(pr) = &e.profile {
                    let rows: Vec<(String, f64)> = pr
                        .top_nodes
                        .iter()
                        .map(|n| (format!("{} ({})", n.node, n.op), n.ms_per_run))
                        .collect();
                    p.plot(
                        Bars::simple(&format!("Slowest nodes: {}", e.label), "ms per run", &rows)
                            .draw(),
                    );
                }
            }
        }
        p.finish()
    }
}

//! `mlc check`: budgets a model must hold, each measured and printed as one
//! PASS or FAIL line, for a CI gate. Exit codes of the command line: 0 when
//! every budget holds, [`EXIT_BUDGET_FAILED`] when one does not, 2 for bad
//! input (a missing file, a budget without the data it needs) and 1 for an
//! internal error.
//!
//! Budgets:
//! - `max-size`: the file's size on disk.
//! - `max-latency-ms`: the median latency of rounds of runs (seeded random
//!   inputs, `batch`, `threads`). A 95% confidence interval of the median
//!   comes from the rounds' order statistics (distribution-free); the
//!   budget fails only when the whole interval lies above the limit, so
//!   noise alone never fails it (a median above the limit with the
//!   interval reaching below it passes, and says so).
//! - `max-regression`: latency against a `baseline` model, the two run in
//!   alternating order within each round; the round's ratio of medians,
//!   its median over the rounds and the same interval. Fails only when
//!   the interval's lower end exceeds `1 + max-regression`.
//! - `min-accuracy`: top-1 accuracy on labeled data (`eval`, an `.npz`
//!   with a `labels` array).
//! - `min-cosine`: the smallest per-sample cosine similarity of the
//!   model's outputs with a `reference` model's on `data`.
//!
//! A budget file (TOML) holds several models:
//!
//! ```toml
//! threads = 1          # optional defaults for every model
//! [[model]]
//! path = "cnn.int8.mlc"  # relative to the budget file
//! max-size = "20KB"
//! min-accuracy = 0.98
//! eval = "eval_cnn.npz"
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Model, Session, SessionOptions};
use crate::compress::data::{self, Dataset};
use crate::inputs::Binding;
use crate::limits::human_bytes;
use crate::measure::{median, median_interval};
use crate::{Error, Result, Tensor};

/// Exit code of `mlc check` when a budget fails (1 is an internal error,
/// 2 bad input).
pub const EXIT_BUDGET_FAILED: u8 = 3;

/// One model and the budgets it must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckCase {
    /// The model (.onnx, compiled with O2 first, or .mlc).
    pub model: PathBuf,
    /// Largest file size, bytes.
    pub max_size: Option<u64>,
    /// Largest median latency, milliseconds.
    pub max_latency_ms: Option<f64>,
    /// Smallest top-1 accuracy (0 to 1) on `eval`.
    pub min_accuracy: Option<f64>,
    pub eval: Option<PathBuf>,
    /// Smallest per-sample cosine similarity with `reference` on `data`.
    pub min_cosine: Option<f64>,
    pub reference: Option<PathBuf>,
    pub data: Option<PathBuf>,
    /// Largest latency regression against `baseline` (0.05: 5% slower).
    pub max_regression: Option<f64>,
    pub baseline: Option<PathBuf>,
}

/// How the latency budgets are measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckOptions {
    /// Threads (0: the machine's cores).
    pub threads: usize,
    /// Batch size of the seeded random inputs.
    pub batch: usize,
    /// Timed rounds (at least 5); each round runs the model (and the
    /// baseline, alternating) several times, about 20 ms worth.
    pub rounds: usize,
    pub progress: bool,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            threads: 0,
            batch: 1,
            rounds: 15,
            progress: false,
        }
    }
}

/// One budget's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetResult {
    pub model: String,
    /// `max-size`, `max-latency-ms`, `max-regression`, `min-accuracy` or
    /// `min-cosine`.
    pub budget: String,
    pub measured: f64,
    pub limit: f64,
    pub pass: bool,
    /// The measured value and the limit for people, with the confidence
    /// interval or the data it was measured on.
    pub detail: String,
    pub seconds: f64,
}

impl BudgetResult {
    /// The measured value over the limit; for `max-regression` (a
    /// relative change, negative when faster) the time ratio over the
    /// largest one allowed.
    pub fn share_of_limit(&self) -> f64 {
        match self.budget.as_str() {
            "max-regression" => (1.0 + self.measured) / (1.0 + self.limit),
            _ => self.measured / self.limit,
        }
    }
}

/// Every budget of every model.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// What made the report, where and when (schema version included).
    pub header: crate::provenance::Header,
    pub results: Vec<BudgetResult>,
    pub passed: usize,
    pub failed: usize,
    /// Threads and batch of the latency measurements.
    pub threads: usize,
    pub batch: usize,
}

impl CheckReport {
    /// Whether every budget holds.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// One line per budget, then the count.
    pub fn render(&self) -> String {
        let h = &self.header;
        let mut s = format!(
            "mlc check ({} on {}, {} thread{}, {})\n",
            h.mlc_version,
            h.cpu,
            h.threads,
            if h.threads == 1 { "" } else { "s" },
            h.date
        );
        let width = self
            .results
            .iter()
            .map(|r| r.model.len())
            .max()
            .unwrap_or(0);
        for r in &self.results {
            let _ = writeln!(
                s,
                "{}  {:width$}  {:15} {}",
                if r.pass { "PASS" } else { "FAIL" },
                r.model,
                r.budget,
                r.detail
            );
        }
        let _ = writeln!(
            s,
            "check: {} of {} budgets passed{}",
            self.passed,
            self.results.len(),
            if self.ok() { "" } else { " (exit code 3)" }
        );
        s
    }

    /// The report as one self-contained HTML page: every budget's verdict,
    /// and each measured value as a share of its limit.
    pub fn html(&self) -> String {
        use crate::report::svg::{Bar, BarRow, Bars};
        use crate::report::{Page, Tone};
        let mut p = Page::new(&format!(
            "mlc check: {} of {} budgets passed",
            self.passed,
            self.results.len()
        ));
        p.header(&self.header);
        p.paragraph(&format!(
            "Latency measured on {} thread(s), batch {}.",
            self.threads, self.batch
        ));
        let rows: Vec<Vec<(String, Tone)>> = self
            .results
            .iter()
            .map(|r| {
                vec![
                    match r.pass {
                        true => ("PASS".to_string(), Tone::Good),
                        false => ("FAIL".to_string(), Tone::Bad),
                    },
                    (r.model.clone(), Tone::Plain),
                    (r.budget.clone(), Tone::Plain),
                    (crate::report::svg::number(r.measured), Tone::Plain),
                    (crate::report::svg::number(r.limit), Tone::Plain),
                    (r.detail.clone(), Tone::Plain),
                ]
            })
            .collect();
        p.table(
            &["verdict", "model", "budget", "measured", "limit", "detail"],
            &rows,
            &[3, 4],
        );
        p.plot(
            Bars {
                title: "Measured value as a share of its limit".into(),
                axis: "measured / limit".into(),
                series: vec!["pass".into(), "fail".into()],
                rows: self
                    .results
                    .iter()
                    .map(|r| BarRow {
                        label: format!("{} {}", r.model, r.budget),
                        bars: vec![Bar {
                            label: String::new(),
                            segments: vec![(usize::from(!r.pass), r.share_of_limit())],
                            range: None,
                        }],
                    })
                    .collect(),
                caption: "max-* budgets pass at or below 1, min-* budgets at or above 1 (a latency budget fails only beyond the noise: see its detail); max-regression as the time ratio over the largest one allowed.".into(),
                reference: Some((1.0, "limit".into())),
            }
            .draw(),
        );
        p.finish()
    }

    /// Writes [`CheckReport::html`] to `path` (atomically).
    pub fn write_html(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_bytes_atomic(path, self.html().as_bytes())
    }

    /// Writes [`CheckReport::junit`] to `path` (atomically: a reader never
    /// sees half a file).
    pub fn write_junit(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_bytes_atomic(path, self.junit().as_bytes())
    }

    /// The report as JUnit XML: one test suite per model, one test case
    /// per budget, a failure element for each broken one.
    pub fn junit(&self) -> String {
        let mut models: Vec<&str> = Vec::new();
        for r in &self.results {
            if !models.contains(&r.model.as_str()) {
                models.push(&r.model);
            }
        }
        let total: f64 = self.results.iter().map(|r| r.seconds).sum();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"mlc check\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{total:.3}\">",
            self.results.len(),
            self.failed
        );
        for m in models {
            let rs: Vec<&BudgetResult> = self.results.iter().filter(|r| r.model == m).collect();
            let _ = writeln!(
                x,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\">",
                xml_escape(m),
                rs.len(),
                rs.iter().filter(|r| !r.pass).count(),
                rs.iter().map(|r| r.seconds).sum::<f64>()
            );
            for r in rs {
                let _ = write!(
                    x,
                    "    <testcase classname=\"mlc.check\" name=\"{} {}\" time=\"{:.3}\">",
                    xml_escape(m),
                    r.budget,
                    r.seconds
                );
                if !r.pass {
                    let _ = write!(
                        x,
                        "\n      <failure type=\"budget\" message=\"{}\">{}</failure>\n    ",
                        xml_escape(&format!("{} broken", r.budget)),
                        xml_escape(&r.detail)
                    );
                } else {
                    let _ = write!(x, "<system-out>{}</system-out>", xml_escape(&r.detail));
                }
                x.push_str("</testcase>\n");
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

/// Text as XML character data or an attribute value; characters XML 1.0
/// cannot hold become U+FFFD.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// A number, or a string with a unit (`"5MB"`, `"5%"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileCase {
    path: PathBuf,
    max_size: Option<Quantity>,
    max_latency_ms: Option<f64>,
    min_accuracy: Option<f64>,
    eval: Option<PathBuf>,
    min_cosine: Option<f64>,
    reference: Option<PathBuf>,
    data: Option<PathBuf>,
    max_regression: Option<Quantity>,
    baseline: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct BudgetFile {
    threads: Option<usize>,
    batch: Option<usize>,
    rounds: Option<usize>,
    #[serde(default)]
    model: Vec<FileCase>,
}

/// Parses a size budget: bytes, or a string such as `5MB` or `1.5 MiB`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    crate::limits::parse_bytes(text)
}

/// Parses a regression budget: `5%` or a share such as `0.05`.
pub fn parse_share(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("'{t}' is not a share (5% or 0.05)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("'{t}' is not a share of at least 0"));
    }
    Ok(v)
}

/// Reads a budget file: its models (paths relative to the file's folder)
/// and the options it sets over `defaults`.
pub fn read_budget_file(
    path: &Path,
    defaults: &CheckOptions,
) -> Result<(Vec<CheckCase>, CheckOptions)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: BudgetFile = toml::from_str(&text).map_err(|e| Error::Malformed {
        path: path.to_path_buf(),
        message: e.to_string().replace('\n', " "),
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let at = |p: PathBuf| match p.is_absolute() {
        true => p,
        false => lexically_normal(&dir.join(p)),
    };
    let bad = |what: &str, message: String| Error::Malformed {
        path: path.to_path_buf(),
        message: format!("{what}: {message}"),
    };
    let mut cases = Vec::new();
    for c in file.model {
        let name = c.path.display().to_string();
        let max_size = match c.max_size {
            None => None,
            Some(Quantity::Number(n)) if n >= 0.0 && n.fract() == 0.0 => Some(n as u64),
            Some(Quantity::Number(n)) => {
                return Err(bad(&name, format!("max-size {n} is not a byte count")))
            }
            Some(Quantity::Text(t)) => Some(parse_size(&t).map_err(|e| bad(&name, e))?),
        };
        let max_regression = match c.max_regression {
            None => None,
            Some(Quantity::Number(n)) => {
                Some(parse_share(&n.to_string()).map_err(|e| bad(&name, e))?)
            }
            Some(Quantity::Text(t)) => Some(parse_share(&t).map_err(|e| bad(&name, e))?),
        };
        cases.push(CheckCase {
            model: at(c.path),
            max_size,
            max_latency_ms: c.max_latency_ms,
            min_accuracy: c.min_accuracy,
            eval: c.eval.map(at),
            min_cosine: c.min_cosine,
            reference: c.reference.map(at),
            data: c.data.map(at),
            max_regression,
            baseline: c.baseline.map(at),
        });
    }
    if cases.is_empty() {
        return Err(bad("budget file", "no [[model]] entries".into()));
    }
    let opts = CheckOptions {
        threads: file.threads.unwrap_or(defaults.threads),
        batch: file.batch.unwrap_or(defaults.batch),
        rounds: file.rounds.unwrap_or(defaults.rounds),
        progress: defaults.progress,
    };
    Ok((cases, opts))
}

/// Refuses an output file (`--junit`, `--html`) that is one of the files
/// `cases` read.
pub fn ensure_apart(cases: &[CheckCase], output: &Path) -> Result<()> {
    let reads: Vec<&Path> = cases
        .iter()
        .flat_map(|c| {
            [&c.eval, &c.reference, &c.data, &c.baseline]
                .into_iter()
                .flatten()
                .chain([&c.model])
                .map(PathBuf::as_path)
        })
        .collect();
    crate::fsutil::ensure_outputs_apart(&[output], &reads)
}

/// `a/b/../c` as `a/c`, without touching the file system (the budget
/// file's folder joined to its paths, as people read them).
fn lexically_normal(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    match out.is_empty() {
        true => PathBuf::from("."),
        false => out.iter().collect(),
    }
}

impl CheckCase {
    /// Refuses a case without budgets, a budget without the data it needs,
    /// or a limit out of range, before anything is measured.
    pub fn validate(&self) -> Result<()> {
        let name = self.model.display();
        let usage = |m: String| Err(Error::Usage(format!("check {name}: {m}")));
        if self.max_size.is_none()
            && self.max_latency_ms.is_none()
            && self.min_accuracy.is_none()
            && self.min_cosine.is_none()
            && self.max_regression.is_none()
        {
            return usage("no budget given (--max-size, --max-latency-ms, --min-accuracy, --min-cosine, --max-regression, or a budget file)".into());
        }
        if let Some(a) = self.min_accuracy {
            if !(0.0..=1.0).contains(&a) {
                return usage(format!("min-accuracy {a} is not between 0 and 1"));
            }
            if self.eval.is_none() {
                return usage("min-accuracy needs labeled data: --eval DATA.npz".into());
            }
        }
        if let Some(c) = self.min_cosine {
            if !(-1.0..=1.0).contains(&c) {
                return usage(format!("min-cosine {c} is not between -1 and 1"));
            }
            if self.reference.is_none() || self.data.is_none() {
                return usage(
                    "min-cosine needs the model to compare with and inputs: --reference ORIG --data DATA.npz".into(),
                );
            }
        }
        if let Some(l) = self.max_latency_ms {
            if !(l.is_finite() && l > 0.0) {
                return usage(format!("max-latency-ms {l} is not a positive time"));
            }
        }
        if self.max_regression.is_some() && self.baseline.is_none() {
            return usage("max-regression needs a model to compare with: --baseline OLD".into());
        }
        Ok(())
    }
}

/// Measures every budget of every case (all validated first).
pub fn check(cases: &[CheckCase], opts: &CheckOptions) -> Result<CheckReport> {
    if opts.rounds < 5 {
        return Err(Error::Usage(format!(
            "check: {} rounds are too few for a confidence interval (at least 5)",
            opts.rounds
        )));
    }
    if opts.batch == 0 {
        return Err(Error::Usage("check: batch 0".into()));
    }
    for c in cases {
        c.validate()?;
        for p in [&c.eval, &c.reference, &c.data, &c.baseline]
            .into_iter()
            .flatten()
            .chain([&c.model])
        {
            if !p.is_file() {
                return Err(Error::Usage(format!(
                    "check: {} is not a file",
                    p.display()
                )));
            }
        }
    }
    let session_opts = SessionOptions {
        threads: opts.threads,
        ..Default::default()
    };
    let mut results = Vec::new();
    let mut threads = match opts.threads {
        0 => crate::probe::available_threads(),
        n => n,
    };
    for c in cases {
        let name = c.model.display().to_string();
        let result =
            |budget: &str, measured: f64, limit: f64, pass: bool, detail: String, t: Instant| {
                BudgetResult {
                    model: name.clone(),
                    budget: budget.into(),
                    measured,
                    limit,
                    pass,
                    detail,
                    seconds: t.elapsed().as_secs_f64(),
                }
            };
        if let Some(limit) = c.max_size {
            let t = Instant::now();
            let size = std::fs::metadata(&c.model)
                .map_err(|e| Error::io(&c.model, e))?
                .len();
            let pass = size <= limit;
            let detail = format!(
                "{} {} {} ({} bytes)",
                human_bytes(size),
                if pass { "<=" } else { ">" },
                human_bytes(limit),
                size
            );
            results.push(result(
                "max-size",
                size as f64,
                limit as f64,
                pass,
                detail,
                t,
            ));
        }
        let needs_model = c.max_latency_ms.is_some()
            || c.max_regression.is_some()
            || c.min_accuracy.is_some()
            || c.min_cosine.is_some();
        if !needs_model {
            continue;
        }
        let mut session = runnable(&c.model)?.session(&session_opts)?;
        threads = session.threads();
        if let (Some(limit), Some(eval)) = (c.min_accuracy, &c.eval) {
            let t = Instant::now();
            let ds = Dataset::load(eval, session.graph())?;
            let Some(labels) = ds.labels.clone() else {
                return Err(Error::Usage(format!(
                    "check {name}: min-accuracy needs a 'labels' array in {}",
                    eval.display()
                )));
            };
            let out = run_all(&mut session, &ds)?;
            let acc = data::accuracy(&out, &labels);
            let pass = acc >= limit;
            let detail = format!(
                "top-1 {:.2}% {} {:.2}% on {} ({} samples)",
                100.0 * acc,
                if pass { ">=" } else { "<" },
                100.0 * limit,
                eval.display(),
                ds.samples
            );
            results.push(result("min-accuracy", acc, limit, pass, detail, t));
        }
        if let (Some(limit), Some(reference), Some(path)) = (c.min_cosine, &c.reference, &c.data) {
            let t = Instant::now();
            let ds = Dataset::load(path, session.graph())?;
            let out = run_all(&mut session, &ds)?;
            let mut reference = runnable(reference)?.session(&session_opts)?;
            let want = run_all(&mut reference, &ds)?;
            let a = data::agreement(&want, &out);
            let m = a.min_cosine_similarity;
            let pass = m >= limit;
            let detail = format!(
                "min cosine {m:.5} {} {limit:.5} (mean {:.5}) against {} on {} ({} samples)",
                if pass { ">=" } else { "<" },
                a.cosine_similarity,
                c.reference
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
                path.display(),
                ds.samples
            );
            results.push(result("min-cosine", m, limit, pass, detail, t));
        }
        if c.max_latency_ms.is_some() || c.max_regression.is_some() {
            let t = Instant::now();
            let binding = Binding {
                batch: Some(opts.batch),
                random_seed: Some(0),
                ..Default::default()
            };
            let feed = session.bind(Vec::new(), &binding)?;
            let mut base = match &c.baseline {
                Some(b) => {
                    let mut s = runnable(b)?.session(&session_opts)?;
                    let f = s.bind(Vec::new(), &binding)?;
                    s.plan(&f)?;
                    Some((s, f))
                }
                None => None,
            };
            let timed = time_rounds(
                &mut session,
                &feed,
                base.as_mut().map(|(s, f)| (s, f.as_slice())),
                opts,
            )?;
            if let Some(limit) = c.max_latency_ms {
                let (m, lo, hi) = timed.model;
                let pass = lo <= limit;
                let verdict = match (m <= limit, pass) {
                    (true, _) => "<=",
                    (false, true) => "> (within noise: the interval reaches the limit)",
                    (false, false) => ">",
                };
                let detail = format!(
                    "median {m:.3} ms (95% CI {lo:.3}-{hi:.3}, {} rounds of {} runs) {verdict} {limit:.3} ms",
                    opts.rounds, timed.runs
                );
                results.push(result("max-latency-ms", m, limit, pass, detail, t));
            }
            // The rounds timed both budgets: each counts half the time.
            let both = c.max_latency_ms.is_some() && c.max_regression.is_some();
            if both {
                if let Some(last) = results.last_mut() {
                    last.seconds /= 2.0;
                }
            }
            if let (Some(limit), Some((r, lo, hi))) = (c.max_regression, timed.ratio) {
                let pass = lo <= 1.0 + limit;
                let verdict = match (r <= 1.0 + limit, pass) {
                    (true, _) => "within",
                    (false, true) => "beyond the budget but within noise, so",
                    (false, false) => "beyond",
                };
                let detail = format!(
                    "{:+.1}% against {} (time ratio {r:.3}, 95% CI {lo:.3}-{hi:.3}, {} alternating rounds of {} runs), {verdict} {:.1}%",
                    100.0 * (r - 1.0),
                    c.baseline.as_ref().map_or(String::new(), |p| p.display().to_string()),
                    opts.rounds,
                    timed.runs,
                    100.0 * limit
                );
                let mut res = result("max-regression", r - 1.0, limit, pass, detail, t);
                if both {
                    res.seconds /= 2.0;
                }
                results.push(res);
            }
        }
    }
    let failed = results.iter().filter(|r| !r.pass).count();
    Ok(CheckReport {
        header: crate::provenance::Header::new("check", threads, None),
        passed: results.len() - failed,
        failed,
        results,
        threads,
        batch: opts.batch,
    })
}

/// The model ready to run: an ONNX model compiled with O2, a bundle as
/// it is.
fn runnable(path: &Path) -> Result<Model> {
    let mut m = Model::load(path)?;
    if !crate::formats::bundle::looks_like_bundle(path) {
        m.compile("O2")?;
    }
    Ok(m)
}

fn run_all(session: &mut Session, ds: &Dataset) -> Result<Vec<Vec<Tensor>>> {
    (0..ds.samples)
        .map(|i| session.run_positional(&ds.sample(i)?))
        .collect()
}

/// Median and 95% confidence interval (low, high) of each measured
/// quantity.
struct Timed {
    model: (f64, f64, f64),
    ratio: Option<(f64, f64, f64)>,
    runs: usize,
}

/// Times `rounds` rounds; in each, `runs` runs of the model and, when
/// given, of the baseline, alternating run by run (the first of each pair
/// swapping every round).
fn time_rounds(
    model: &mut Session,
    feed: &[Tensor],
    mut base: Option<(&mut Session, &[Tensor])>,
    opts: &CheckOptions,
) -> Result<Timed> {
    let once = |s: &mut Session, f: &[Tensor]| -> Result<f64> {
        let t = Instant::now();
        s.run_positional(f)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    // Warm up, and size a round to about 20 ms of each model.
    let mut first = f64::INFINITY;
    for _ in 0..3 {
        first = first.min(once(model, feed)?);
        if let Some((s, f)) = base.as_mut() {
            once(s, f)?;
        }
    }
    let runs = ((20.0 / first.max(1e-3)).ceil() as usize).clamp(3, 200);
    let pb = data::progress(opts.progress, opts.rounds, "latency rounds");
    let (mut medians, mut ratios) = (Vec::new(), Vec::new());
    for round in 0..opts.rounds {
        let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            match base.as_mut() {
                Some((s, f)) if round % 2 == 1 => {
                    b.push(once(s, f)?);
                    a.push(once(model, feed)?);
                }
                Some((s, f)) => {
                    a.push(once(model, feed)?);
                    b.push(once(s, f)?);
                }
                None => a.push(once(model, feed)?),
            }
        }
        let m = median(&mut a);
        medians.push(m);
        if !b.is_empty() {
            ratios.push(m / median(&mut b).max(1e-9));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(Timed {
        model: median_interval(&mut medians),
        ratio: (!ratios.is_empty()).then(|| median_interval(&mut ratios)),
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_paths_read_as_written() {
        assert_eq!(
            lexically_normal(Path::new("docs/examples/../../gate/m.mlc")),
            Path::new("gate/m.mlc")
        );
        assert_eq!(lexically_normal(Path::new("../a/./b")), Path::new("../a/b"));
        assert_eq!(lexically_normal(Path::new("a/..")), Path::new("."));
    }

    #[test]
    fn shares_and_sizes_parse() {
        assert_eq!(parse_share("5%"), Ok(0.05));
        assert_eq!(parse_share("0.1"), Ok(0.1));
        assert!(parse_share("-1%").is_err());
        assert!(parse_share("fast").is_err());
        assert_eq!(parse_size("2KB"), Ok(2000));
    }

    #[test]
    fn junit_escapes_and_counts() {
        let r = |pass: bool| BudgetResult {
            model: "a<&\"b\".mlc".into(),
            budget: "max-size".into(),
            measured: 1.0,
            limit: 2.0,
            pass,
            detail: "1 B <= 2 B \u{1}".into(),
            seconds: 0.5,
        };
        let rep = CheckReport {
            header: crate::provenance::Header::new("check", 1, None),
            results: vec![r(true), r(false)],
            passed: 1,
            failed: 1,
            threads: 1,
            batch: 1,
        };
        let x = rep.junit();
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("a&lt;&amp;&quot;b&quot;.mlc"), "{x}");
        assert!(!x.contains('\u{1}'), "{x}");
        assert_eq!(x.matches("<failure").count(), 1);
        assert!(!rep.ok());
    }
}

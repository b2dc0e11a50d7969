//! `mlc tune`: kernel choices measured per node, in place.
//!
//! Every node the runtime can run more than one way lists its legal
//! choices (`StepInfo::choices`, the default first: today's hand-set
//! thresholds). Each non-default choice is first checked against the
//! reference interpreter on the node alone ([`check_choice`]); only the
//! ones that agree are timed. Timing runs the whole model, so every node
//! sees its real shapes, thread count and cache state: round `r` plans the
//! model with every node on its `r`-th candidate and runs it alternately
//! with the untuned plan, reading each node's time from the runtime's
//! per-step clock. Each candidate's runs are paired with the default's
//! runs beside them ([`PairedRatios`]: the median ratio with its 95%
//! interval). Rounds repeat until every node's candidates are decided
//! (the interval either side of `1 - MIN_GAIN`) or the budget is spent; a
//! candidate replaces the default only when its whole interval is below.
//! Finally the whole model runs tuned against untuned, alternately, and
//! the tuned plan is kept only if it is faster run by run (faster by less
//! than the noise: only if a second comparison agrees).
//!
//! Measurements go to the tuning database ([`db`]); a node whose workload
//! the database already holds for this target is not measured again.

pub mod cost;
pub mod db;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inputs::random_inputs;
use crate::ir::{Graph, Node, Op, Tensor};
use crate::kernels::cpu::choice::Choice;
use crate::kernels::cpu::CpuCtx;
use crate::measure::{
    alternate_node_samples, alternate_paired, Measurer, PairedRatios, RatioInterval, Timing,
};
use crate::runtime::{Choices, PackCache, Plan};
use crate::target::Target;
use crate::transform::specialize::specialize;
use crate::Result;
use cost::{Accuracy, CostModel, Features};
use db::{Db, Measured, Record, KERNELS};

/// How [`tune`] measures.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Wall time for the per-node rounds (the checks and the final
    /// whole-model comparison come on top, a few seconds).
    pub budget: Duration,
    /// Timed runs of each plan per round.
    pub runs_per_round: usize,
    /// Most samples of one candidate before it counts as settled.
    pub max_samples: usize,
    /// Timed runs of the final tuned-against-untuned comparison.
    pub final_runs: usize,
    /// Seed of the inputs the candidates are checked on.
    pub seed: u64,
    /// The target's fingerprint, the database's key.
    pub target: String,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// One candidate of a node: its timing, or why it was not timed.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub choice: Choice,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Its time over the default's, run by run in the same rounds (a
    /// measured candidate other than the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_default: Option<RatioInterval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// What tuning decided for one node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeTuning {
    pub node: String,
    pub op: String,
    pub workload: String,
    /// The default first.
    pub candidates: Vec<Candidate>,
    pub choice: Choice,
    /// The default's median over the choice's (1: the default kept).
    pub gain: f64,
    /// `measured`, or `database` when a record of the workload was used.
    pub source: &'static str,
}

/// The second whole-model comparison, run when the first found the tuned
/// plan faster by less than the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Second {
    /// Tuned faster again: kept.
    Agreed,
    /// Not faster this time: the defaults kept.
    Disagreed,
    /// No budget left to run it: the defaults kept.
    NoBudget,
}

/// What [`tune`] found.
#[derive(Clone, Debug, Serialize)]
pub struct TuneOutcome {
    /// The target's fingerprint (the report gives it as `fingerprint`).
    #[serde(skip)]
    pub target: String,
    pub threads: usize,
    pub nodes: Vec<NodeTuning>,
    /// The choices kept (empty when the tuned plan did not win).
    pub choices: Choices,
    pub untuned: Timing,
    pub tuned: Timing,
    /// The tuned plan's time over the untuned one's, run by run in the
    /// (last) final comparison (None when estimated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned_vs_untuned: Option<RatioInterval>,
    /// Whether the tuned plan won the final comparison.
    pub kept: bool,
    /// When the first final comparison found the tuned plan faster but
    /// within the noise: what the second one (whose timings `untuned` and
    /// `tuned` then are) said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second: Option<Second>,
    /// Rounds of per-node timing run.
    pub rounds: usize,
    pub elapsed_s: f64,
    /// The cost model's accuracy on the database's records of this target
    /// and thread count, held out five ways (None with too few).
    pub cost_model: Option<Accuracy>,
}

/// The tuning database's key for this machine ([`Target::fingerprint`]
/// of the probed host: CPU model, features as the kernels see them,
/// cores).
pub fn host_fingerprint() -> String {
    Target::host().fingerprint()
}

/// The kernel choices the tuning database at `db` holds for the nodes of
/// the specialized graph `spec` on this machine at `threads` threads (the
/// default ones left out).
pub fn database_choices(db: &Db, spec: &Graph, threads: usize) -> Choices {
    let target = host_fingerprint();
    spec.nodes()
        .filter_map(|(_, n)| {
            let r = db.lookup(&workload(spec, n), &target, threads)?;
            (!r.choice.is_default()).then(|| (n.name.clone(), r.choice))
        })
        .collect()
}

/// The default tuning database ([`Db::default_path`]) when its file
/// exists; None otherwise.
pub fn default_database() -> Result<Option<Db>> {
    match Db::default_path() {
        Some(p) if p.is_file() => Ok(Some(Db::open(&p)?)),
        _ => Ok(None),
    }
}

/// The key of a node's workload in the database: its op with every
/// attribute, and its inputs' types and shapes (constants marked).
pub fn workload(g: &Graph, node: &Node) -> String {
    let inputs: Vec<String> = node
        .inputs
        .iter()
        .map(|v| match v {
            None => "_".to_string(),
            Some(v) => {
                let ty = g.ty(*v);
                let kind = if g.is_const(*v) { "const " } else { "" };
                format!("{kind}{}{}", ty.dtype, ty.shape)
            }
        })
        .collect();
    format!("{:?}({})", node.op, inputs.join(", "))
}

/// What the cost model reads of node `node` of the specialized graph `g`.
pub fn features(g: &Graph, node: &Node) -> Features {
    let shape = |v: crate::ir::ValueId| g.ty(v).shape.concrete();
    let ins: Vec<Option<Vec<usize>>> = node.inputs.iter().map(|v| v.and_then(shape)).collect();
    let outs: Vec<Vec<usize>> = node.outputs.iter().filter_map(|&o| shape(o)).collect();
    let in_refs: Vec<Option<&[usize]>> = ins.iter().map(|s| s.as_deref()).collect();
    let out_refs: Vec<&[usize]> = outs.iter().map(Vec::as_slice).collect();
    let flops = crate::runtime::profile::flops(&node.op, &in_refs, &out_refs).unwrap_or(0);
    let bytes: usize = node
        .inputs
        .iter()
        .flatten()
        .chain(&node.outputs)
        .filter_map(|&v| Some(shape(v)?.iter().product::<usize>() * g.ty(v).dtype.size()))
        .sum();
    Features {
        flops: flops as f64,
        bytes: bytes as f64,
    }
}

/// Runs node `node` of the specialized graph `g` alone with kernel
/// `choice`, on seeded random inputs, against the reference interpreter;
/// `Err` says how it failed (or that the choice does not apply).
pub fn check_choice(
    g: &Graph,
    node: &Node,
    choice: Choice,
    cx: &CpuCtx,
    seed: u64,
) -> std::result::Result<(), String> {
    let mut sub = Graph::new(format!("check {}", node.name), g.opset);
    // A convolution is checked on one image: its batch runs image by image
    // on the same kernels, and the reference's time grows with it.
    let one_image = matches!(
        node.op,
        Op::Conv(_) | Op::FusedConv { .. } | Op::QConv { .. }
    );
    let ty = |v: crate::ir::ValueId| {
        let mut t = g.ty(v).clone();
        if one_image && t.shape.rank() >= 3 {
            if let Some(mut dims) = t.shape.concrete() {
                dims[0] = 1;
                t.shape = crate::ir::Shape::known(&dims);
            }
        }
        t
    };
    let mut inputs = Vec::with_capacity(node.inputs.len());
    for v in &node.inputs {
        inputs.push(v.map(|v| {
            let name = g.value(v).name.clone();
            match g.consts.get(&v) {
                Some(t) => sub.add_const(name, t.clone()),
                None => sub.add_input(name, ty(v)),
            }
        }));
    }
    let outputs: Vec<_> = node
        .outputs
        .iter()
        .map(|&o| sub.add_value(g.value(o).name.clone(), ty(o)))
        .collect();
    sub.add_node(Node {
        name: node.name.clone(),
        op: node.op.clone(),
        inputs,
        outputs: outputs.clone(),
    });
    sub.outputs = outputs;
    let feed = random_inputs(&sub, seed, &BTreeMap::new()).map_err(|e| e.to_string())?;
    let want = crate::interp::run(&sub, feed.clone()).map_err(|e| format!("reference: {e}"))?;
    let names: Vec<String> = sub
        .outputs
        .iter()
        .map(|&o| sub.value(o).name.clone())
        .collect();
    let choices: Choices = [(node.name.clone(), choice)].into();
    let mut plan = Plan::with_choices(sub, cx.clone(), &PackCache::default(), &choices)
        .map_err(|e| e.to_string())?;
    let taken = plan.steps().first().map(|s| s.choice);
    if taken != Some(choice) {
        return Err("does not apply to these shapes".into());
    }
    let got = plan.run(&feed).map_err(|e| e.to_string())?;
    let checks = crate::runtime::compare(&names, &got, &want, CHECK_RTOL, CHECK_ATOL);
    match checks.iter().find(|c| !c.ok()) {
        None => Ok(()),
        Some(c) => Err(format!("differs from the reference: {c:?}")),
    }
}

/// Tolerance of [`check_choice`] (Winograd's rounding and the f32 sums of
/// an int8 layer on the f32 kernels stay far inside it).
const CHECK_RTOL: f64 = 1e-3;
const CHECK_ATOL: f64 = 1e-4;

/// Tunes the kernel choices of `g` (compiled, not yet specialized) for
/// inputs `feed` on `cx`'s CPU and threads, consulting and filling `db`.
pub fn tune(
    g: &Graph,
    feed: &[Tensor],
    cx: CpuCtx,
    db: &mut Db,
    opts: &TuneOptions,
) -> Result<TuneOutcome> {
    let started = Instant::now();
    let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
    let spec = specialize(g, &shapes)?;
    let measurer = Measurer::new(cx.clone());
    let mut base = measurer.plan_with(spec.clone(), &Choices::new())?;
    let threads = cx.threads;
    let by_name: HashMap<&str, &Node> = spec.nodes().map(|(_, n)| (n.name.as_str(), n)).collect();

    // The nodes with a choice, their candidates checked (or taken from the
    // database).
    struct Work {
        node: String,
        op: String,
        workload: String,
        /// Candidates that passed the check, the default first.
        valid: Vec<Choice>,
        rejected: Vec<(Choice, String)>,
        samples: Vec<Vec<f64>>,
        /// Per candidate, its runs against the default's in the same
        /// rounds (index 0 unused).
        pairs: Vec<PairedRatios>,
        from_db: Option<Record>,
        features: Features,
    }
    // The cost model of this target's records orders each node's
    // candidates, the most promising timed first.
    let model = CostModel::fit(db.of_target(&opts.target, threads));
    // The budget covers the checks too: past it, candidates go unchecked.
    let budget_start = Instant::now();
    let mut work: Vec<Work> = Vec::new();
    for step in base.steps() {
        if step.choices.len() < 2 {
            continue;
        }
        let Some(node) = by_name.get(step.node.as_str()) else {
            continue;
        };
        let wl = workload(&spec, node);
        let from_db = db
            .lookup(&wl, &opts.target, threads)
            .filter(|r| step.choices.contains(&r.choice))
            .cloned();
        let (mut valid, mut rejected) = (vec![Choice::default()], Vec::new());
        let feats = features(&spec, node);
        let mut order: Vec<Choice> = step.choices[1..].to_vec();
        if !model.is_empty() {
            let guess = |c: &Choice| model.predict(step.op, *c, feats).unwrap_or(f64::MAX);
            order.sort_by(|a, b| guess(a).total_cmp(&guess(b)));
        }
        if from_db.is_none() {
            for (i, &c) in order.iter().enumerate() {
                if budget_start.elapsed() >= opts.budget {
                    rejected.push((c, "not checked: the budget was spent".to_string()));
                    continue;
                }
                match check_choice(&spec, node, c, &cx, opts.seed + 1 + i as u64) {
                    Ok(()) => valid.push(c),
                    Err(why) => rejected.push((c, why)),
                }
            }
        }
        work.push(Work {
            node: step.node.clone(),
            op: step.op.to_string(),
            workload: wl,
            samples: vec![Vec::new(); valid.len()],
            pairs: vec![PairedRatios::default(); valid.len()],
            valid,
            rejected,
            from_db,
            features: feats,
        });
    }

    // Rounds of in-place timing until each node is settled or the budget
    // is spent.
    let bar = progress_bar(opts.progress, opts.budget);
    let timing = |s: &[f64]| Timing::from_samples(s);
    // A candidate is settled when its runs against the default's decide
    // (paired by run: see `PairedRatios`) or it has all its samples.
    let settled = |w: &Work| {
        w.from_db.is_some()
            || w.samples[1..]
                .iter()
                .zip(&w.pairs[1..])
                .all(|(s, p)| s.len() >= opts.max_samples || p.decided())
    };
    let widest = work.iter().map(|w| w.valid.len()).max().unwrap_or(1);
    let mut rounds = 0;
    // A round is not started when the last one's time would overrun the
    // budget, which also keeps room for two final comparisons (two plans,
    // `final_runs` runs each: about a round's time each).
    let mut last_round = Duration::ZERO;
    'rounds: while work.iter().any(|w| !settled(w)) {
        for r in 1..widest {
            if budget_start.elapsed() + 3 * last_round >= opts.budget {
                break 'rounds;
            }
            let round_start = Instant::now();
            let choices: Choices = work
                .iter()
                .filter(|w| r < w.valid.len() && !settled(w))
                .map(|w| (w.node.clone(), w.valid[r]))
                .collect();
            if choices.is_empty() {
                continue;
            }
            let mut cand = measurer.plan_with(spec.clone(), &choices)?;
            let [base_ms, cand_ms] =
                alternate_node_samples(&mut base, &mut cand, feed, 1, opts.runs_per_round)?;
            for w in work.iter_mut().filter(|w| choices.contains_key(&w.node)) {
                if let (Some(b), Some(c)) = (base_ms.get(&w.node), cand_ms.get(&w.node)) {
                    w.samples[0].extend(b);
                    w.samples[r].extend(c);
                    for (&tb, &tc) in b.iter().zip(c) {
                        w.pairs[r].push(tb, tc);
                    }
                }
            }
            rounds += 1;
            last_round = round_start.elapsed();
            bar.set_position(budget_start.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{} of {} nodes settled",
                work.iter().filter(|w| settled(w)).count(),
                work.len()
            ));
        }
    }
    bar.finish_and_clear();

    // Decisions, records, and the report's rows.
    let mut nodes = Vec::with_capacity(work.len());
    let mut records = Vec::new();
    let mut chosen = Choices::new();
    for w in work {
        if let Some(r) = w.from_db {
            let t = |c: Choice| {
                r.candidates
                    .iter()
                    .find(|m| m.choice == c)
                    .map(Measured::timing)
            };
            let gain = match (t(Choice::default()), t(r.choice)) {
                (Some(d), Some(c)) if c.median_ms > 0.0 => d.median_ms / c.median_ms,
                _ => 1.0,
            };
            if !r.choice.is_default() {
                chosen.insert(w.node.clone(), r.choice);
            }
            nodes.push(NodeTuning {
                node: w.node,
                op: w.op,
                workload: w.workload,
                candidates: r
                    .candidates
                    .iter()
                    .map(|m| Candidate {
                        choice: m.choice,
                        timing: Some(m.timing()),
                        vs_default: None,
                        rejected: None,
                    })
                    .collect(),
                choice: r.choice,
                gain,
                source: "database",
            });
            continue;
        }
        let timings: Vec<Option<Timing>> = w
            .samples
            .iter()
            .map(|s| (!s.is_empty()).then(|| timing(s)))
            .collect();
        if timings[0].is_none() {
            // The budget ran out before this node was timed at all.
            nodes.push(NodeTuning {
                node: w.node,
                op: w.op,
                workload: w.workload,
                candidates: candidates(&w.valid, &timings, &w.pairs, &w.rejected),
                choice: Choice::default(),
                gain: 1.0,
                source: "measured",
            });
            continue;
        }
        // The fastest of the candidates that beat the default beyond the
        // noise, by their runs against it.
        let best = (1..w.valid.len())
            .filter(|&i| w.pairs[i].wins())
            .filter_map(|i| Some((i, w.pairs[i].interval()?.median)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let (choice, gain) = match best {
            Some((i, ratio)) => (w.valid[i], 1.0 / ratio.max(1e-12)),
            None => (Choice::default(), 1.0),
        };
        if !choice.is_default() {
            chosen.insert(w.node.clone(), choice);
        }
        if timings.iter().all(Option::is_some) {
            records.push(Record {
                workload: w.workload.clone(),
                target: opts.target.clone(),
                threads,
                kernels: KERNELS.to_string(),
                candidates: w
                    .valid
                    .iter()
                    .zip(&timings)
                    .filter_map(|(&c, t)| Some(Measured::new(c, t.as_ref()?)))
                    .collect(),
                choice,
                features: Some(w.features),
            });
        }
        nodes.push(NodeTuning {
            node: w.node,
            op: w.op,
            workload: w.workload,
            candidates: candidates(&w.valid, &timings, &w.pairs, &w.rejected),
            choice,
            gain,
            source: "measured",
        });
    }

    // The whole model, tuned against untuned.
    let mut tuned_plan = measurer.plan_with(spec, &chosen)?;
    let compared = Instant::now();
    let (mut untuned, mut tuned, mut pairs) =
        alternate_paired(&mut base, &mut tuned_plan, feed, feed, 2, opts.final_runs)?;
    let mut verdict = Verdict::of(&untuned, &tuned, &pairs);
    let measured_now = !records.is_empty();
    let mut second = None;
    if measured_now && !chosen.is_empty() && verdict == Verdict::WithinNoise {
        // Faster, but within the noise: a second comparison must agree, or
        // noise alone keeps a plan half the time.
        second = Some(
            if budget_start.elapsed() + compared.elapsed() <= opts.budget {
                (untuned, tuned, pairs) =
                    alternate_paired(&mut base, &mut tuned_plan, feed, feed, 2, opts.final_runs)?;
                verdict = Verdict::of(&untuned, &tuned, &pairs);
                if verdict == Verdict::NotFaster {
                    Second::Disagreed
                } else {
                    Second::Agreed
                }
            } else {
                Second::NoBudget
            },
        );
    }
    // Choices that all come from the database stand as recorded (so the
    // same records give the same bundle); new ones only if the model won
    // (and, by less than the noise, won again).
    let kept = !chosen.is_empty()
        && (!measured_now || (verdict != Verdict::NotFaster && second != Some(Second::NoBudget)));
    if !kept {
        // Recorded as the default: in place they won, but not together.
        for r in &mut records {
            r.choice = Choice::default();
        }
        for n in nodes.iter_mut().filter(|n| n.source == "measured") {
            n.choice = Choice::default();
            n.gain = 1.0;
        }
    }
    db.append(records)?;
    let mine: Vec<Record> = db.of_target(&opts.target, threads).cloned().collect();
    let cost_model = (mine.len() >= 10).then(|| CostModel::evaluate(&mine));
    Ok(TuneOutcome {
        target: opts.target.clone(),
        threads,
        nodes,
        choices: if kept { chosen } else { Choices::new() },
        untuned,
        tuned,
        tuned_vs_untuned: pairs.interval(),
        kept,
        second,
        rounds,
        elapsed_s: started.elapsed().as_secs_f64(),
        cost_model,
    })
}

/// How a target's speed relates to the host's, for the cost model: the
/// compute terms (flops and fixed cost) scale by `compute`, the memory term
/// by `memory` (a target twice as fast: 0.5).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Scale {
    pub compute: f64,
    pub memory: f64,
}

impl Scale {
    /// `target` against the host, whose f32 peak (`host_gflops`, measured)
    /// and read bandwidth (`host_gbps`) are given, at `threads` threads:
    /// the target's peak is its FMA width and units at its boost (else
    /// base) clock on `min(threads, cores)` cores. A figure the target
    /// does not give leaves that term unscaled.
    pub fn of(target: &Target, host_gflops: f64, host_gbps: f64, threads: usize) -> Scale {
        let cores = (threads as f64).min(target.cores.max(1) as f64);
        let clock = target.boost_ghz.or(target.base_ghz);
        let peak = match (target.f32_flops_per_cycle(), clock) {
            (Some(f), Some(ghz)) => Some(f as f64 * ghz * cores),
            _ => None,
        };
        let compute = peak
            .filter(|p| *p > 0.0 && host_gflops > 0.0)
            .map_or(1.0, |p| host_gflops / p);
        let memory = target
            .mem_bandwidth_gbps
            .filter(|b| *b > 0.0 && host_gbps > 0.0)
            .map_or(compute, |b| host_gbps / b);
        Scale { compute, memory }
    }
}

/// Kernel choices for `target`, a machine not at hand, picked by the cost
/// model fitted on this machine's records (`model`) with its terms scaled
/// by `scale`: every candidate the target's kernels have for a node of `g`
/// (specialized to `shapes`) is predicted, the fastest chosen. Nothing runs;
/// every figure in the outcome is an estimate (runs 0).
pub fn estimate(
    g: &Graph,
    shapes: &[Vec<usize>],
    target: &Target,
    threads: usize,
    model: &CostModel,
    scale: Scale,
    accuracy: Option<Accuracy>,
) -> Result<TuneOutcome> {
    let started = Instant::now();
    let spec = specialize(g, shapes)?;
    let cx = CpuCtx::single(target.kernel_features());
    let plan = Plan::with_choices(spec.clone(), cx, &PackCache::default(), &Choices::new())?;
    let by_name: HashMap<&str, &Node> = spec.nodes().map(|(_, n)| (n.name.as_str(), n)).collect();
    let (mut nodes, mut chosen) = (Vec::new(), Choices::new());
    let (mut untuned, mut tuned) = (0.0, 0.0);
    for step in plan.steps() {
        let Some(node) = by_name.get(step.node.as_str()) else {
            continue;
        };
        let f = features(&spec, node);
        let scaled = Features {
            flops: f.flops * scale.compute,
            bytes: f.bytes * scale.memory,
        };
        let predict = |c: Choice| {
            let p = model.predict(step.op, c, scaled)?;
            // The fixed cost scales with compute too.
            let base = model.predict(step.op, c, Features::default())?;
            Some(p + base * (scale.compute - 1.0))
        };
        if step.choices.len() < 2 {
            continue;
        }
        let guesses: Vec<Option<f64>> = step.choices.iter().map(|&c| predict(c)).collect();
        let Some(default) = guesses[0] else { continue };
        let (best, best_ms) = step
            .choices
            .iter()
            .zip(&guesses)
            .filter_map(|(&c, g)| Some((c, (*g)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((Choice::default(), default));
        untuned += default;
        tuned += best_ms;
        if !best.is_default() {
            chosen.insert(step.node.clone(), best);
        }
        let estimate = |ms: f64| Timing {
            median_ms: ms,
            p10_ms: ms,
            p90_ms: ms,
            runs: 0,
        };
        nodes.push(NodeTuning {
            node: step.node.clone(),
            op: step.op.to_string(),
            workload: workload(&spec, node),
            candidates: step
                .choices
                .iter()
                .zip(&guesses)
                .map(|(&choice, g)| Candidate {
                    choice,
                    timing: g.map(estimate),
                    vs_default: None,
                    rejected: None,
                })
                .collect(),
            choice: best,
            gain: if best_ms > 0.0 {
                default / best_ms
            } else {
                1.0
            },
            source: "estimated",
        });
    }
    let total = |ms: f64| Timing {
        median_ms: ms,
        p10_ms: ms,
        p90_ms: ms,
        runs: 0,
    };
    Ok(TuneOutcome {
        target: target.fingerprint(),
        threads,
        nodes,
        kept: !chosen.is_empty(),
        second: None,
        choices: chosen,
        untuned: total(untuned),
        tuned: total(tuned),
        tuned_vs_untuned: None,
        rounds: 0,
        elapsed_s: started.elapsed().as_secs_f64(),
        cost_model: accuracy,
    })
}

/// The report rows of a node's candidates: the valid ones with their
/// timings, then the rejected ones with the reason.
fn candidates(
    valid: &[Choice],
    timings: &[Option<Timing>],
    pairs: &[PairedRatios],
    rejected: &[(Choice, String)],
) -> Vec<Candidate> {
    valid
        .iter()
        .zip(timings)
        .zip(pairs)
        .map(|((&choice, t), p)| Candidate {
            choice,
            timing: t.clone(),
            vs_default: p.interval(),
            rejected: None,
        })
        .chain(rejected.iter().map(|(choice, why)| Candidate {
            choice: *choice,
            timing: None,
            vs_default: None,
            rejected: Some(why.clone()),
        }))
        .collect()
}

/// The whole model tuned against untuned, run by run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Faster beyond the noise: the 95% interval of the tuned-to-untuned
    /// ratios below 1.
    Faster,
    /// The median ratio below 1, its interval not.
    WithinNoise,
    NotFaster,
}

impl Verdict {
    /// From the paired ratios; with too few pairs for an interval, from
    /// the medians (always "within the noise").
    fn of(untuned: &Timing, tuned: &Timing, pairs: &PairedRatios) -> Verdict {
        match pairs.interval() {
            Some(r) if r.high < 1.0 => Verdict::Faster,
            Some(r) if r.median < 1.0 => Verdict::WithinNoise,
            None if tuned.median_ms < untuned.median_ms => Verdict::WithinNoise,
            _ => Verdict::NotFaster,
        }
    }
}

/// A bar over the budget's milliseconds (hidden unless asked).
fn progress_bar(show: bool, budget: Duration) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(budget.as_millis().max(1) as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} tune [{bar:30}] {msg} ({eta} left of the budget)",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

/// A `--budget` value: `90s`, `2m`, `1m30s`, or plain seconds.
pub fn parse_budget(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("budget '{s}': use seconds or minutes, e.g. 30s, 2m, 1m30s");
    let mut total = 0f64;
    let mut num = String::new();
    let mut any = false;
    for ch in s.trim().chars() {
        match ch {
            '0'..='9' | '.' => num.push(ch),
            'm' | 's' | 'h' => {
                let v: f64 = num.parse().map_err(|_| bad())?;
                total += v * match ch {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                num.clear();
                any = true;
            }
            _ => return Err(bad()),
        }
    }
    if !num.is_empty() {
        total += num.parse::<f64>().map_err(|_| bad())?;
        any = true;
    }
    if !any || !total.is_finite() || total <= 0.0 || total > 24.0 * 3600.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_wins_within_the_noise_are_compared_again() {
        use crate::measure::{PairedRatios, Timing};
        let t = |ms: f64| Timing::from_samples(&[ms]);
        let pairs = |ratios: &[f64]| {
            let mut p = PairedRatios::default();
            for (i, &r) in ratios.iter().enumerate() {
                let base = 10.0 + i as f64;
                p.push(base, base * r);
            }
            p
        };
        use super::Verdict;
        // Every run faster: beyond the noise.
        let clear = pairs(&[0.9, 0.92, 0.95, 0.91, 0.93, 0.9, 0.94, 0.96]);
        assert_eq!(Verdict::of(&t(10.0), &t(9.0), &clear), Verdict::Faster);
        // Faster by the median, with runs either side: within the noise.
        let mixed = pairs(&[0.97, 1.02, 0.98, 0.96, 1.01, 0.99, 0.97, 1.03]);
        assert_eq!(Verdict::of(&t(10.0), &t(9.9), &mixed), Verdict::WithinNoise);
        // Slower or level: nothing to confirm.
        let slower = pairs(&[1.01, 1.03, 0.99, 1.05, 1.02, 1.0, 1.04, 1.02]);
        assert_eq!(Verdict::of(&t(10.0), &t(10.2), &slower), Verdict::NotFaster);
        // Too few pairs: the medians, at best within the noise.
        let few = pairs(&[0.5, 0.5]);
        assert_eq!(Verdict::of(&t(10.0), &t(5.0), &few), Verdict::WithinNoise);
        assert_eq!(Verdict::of(&t(10.0), &t(10.0), &few), Verdict::NotFaster);
    }

    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!(parse_budget("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_budget("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_budget("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_budget("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "0", "-3s", "2x", "m", "1e99h"] {
            assert!(parse_budget(bad).is_err(), "{bad}");
        }
    }
}

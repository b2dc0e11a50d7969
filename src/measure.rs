//! The measurement core: plans built once and reused, packed weights shared
//! between plans, and timings taken by alternating candidates.
//!
//! Every number `mlc compress` (and the tuner to come) decides by comes
//! from here. A [`Measurer`] holds the CPU context and one [`PackCache`]:
//! each graph it plans is specialized to the given input shapes and
//! planned once by the caller, who keeps the [`Plan`] for as long as it
//! measures that graph; a candidate graph that differs from an earlier one
//! in a layer takes the packed weights of the rest from the cache. Timings
//! run two plans alternately (so drift in the machine's speed hits both),
//! whole ([`alternate`]) or per node ([`alternate_nodes`], from the
//! runtime's per-step clock), and are summarized as a median with its
//! spread ([`Timing`]); [`Timing::slower_than`] is the noise rule a
//! decision uses.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::ir::{Graph, Tensor};
use crate::kernels::cpu::CpuCtx;
use crate::runtime::{build_counters, BuildCounters, Choices, PackCache, Plan};
use crate::transform::specialize::specialize;
use crate::Result;

/// Plans graphs for measurement (see the module docs).
pub struct Measurer {
    cx: CpuCtx,
    packs: PackCache,
    started: BuildCounters,
}

impl Measurer {
    pub fn new(cx: CpuCtx) -> Measurer {
        Measurer {
            cx,
            packs: PackCache::default(),
            started: build_counters(),
        }
    }

    pub fn cx(&self) -> &CpuCtx {
        &self.cx
    }

    /// A plan of `g` for inputs of `shapes` (in the order of `g.inputs`),
    /// sharing packed weights with every plan this measurer built.
    pub fn plan(&self, g: &Graph, shapes: &[Vec<usize>]) -> Result<Plan> {
        Plan::with_packs(specialize(g, shapes)?, self.cx.clone(), &self.packs)
    }

    /// A plan of the already specialized graph `spec` with kernel
    /// `choices` (see [`Plan::with_choices`]), sharing packed weights.
    pub fn plan_with(&self, spec: Graph, choices: &Choices) -> Result<Plan> {
        Plan::with_choices(spec, self.cx.clone(), &self.packs, choices)
    }

    /// Plans built and weights packed since this measurer was made (by any
    /// thread of the process: run one measuring job at a time for exact
    /// figures).
    pub fn work(&self) -> BuildCounters {
        build_counters() - self.started
    }
}

/// Milliseconds of repeated runs: the median and the spread around it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    /// 10th and 90th percentiles.
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub runs: usize,
}

impl Timing {
    pub fn from_samples(ms: &[f64]) -> Timing {
        let mut s = ms.to_vec();
        s.sort_by(f64::total_cmp);
        Timing {
            median_ms: percentile(&s, 50.0),
            p10_ms: percentile(&s, 10.0),
            p90_ms: percentile(&s, 90.0),
            runs: s.len(),
        }
    }

    /// Whether this is slower than `other` by more than `tie_ms`: within
    /// the tie, timing noise decides nothing.
    pub fn slower_than(&self, other: &Timing, tie_ms: f64) -> bool {
        self.median_ms > other.median_ms + tie_ms
    }

    /// Whether this is faster than `other` beyond the noise: its median
    /// lower by more than half the wider of the two p10–p90 spreads, and
    /// by at least [`MIN_GAIN`] of `other`'s (a gain smaller than that is
    /// not worth a choice that differs from the default).
    pub fn beats(&self, other: &Timing) -> bool {
        let spread = (self.p90_ms - self.p10_ms).max(other.p90_ms - other.p10_ms);
        let gap = other.median_ms - self.median_ms;
        gap > spread / 2.0 && gap >= MIN_GAIN * other.median_ms
    }
}

/// The smallest relative gain [`Timing::beats`] counts.
pub const MIN_GAIN: f64 = 0.02;

impl Timing {
    /// Whether the two are told apart: one beats the other.
    pub fn separated(&self, other: &Timing) -> bool {
        self.beats(other) || other.beats(self)
    }
}

/// The `p`-th percentile (0..=100) of sorted samples, linearly
/// interpolated; 0 for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let w = rank - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi.min(sorted.len() - 1)] * w
}

/// Runs `a` on `ia` and `b` on `ib` alternately: `warmup` untimed rounds,
/// then `runs` timed ones; each plan's timing.
pub fn alternate(
    a: &mut Plan,
    b: &mut Plan,
    ia: &[Tensor],
    ib: &[Tensor],
    warmup: usize,
    runs: usize,
) -> Result<(Timing, Timing)> {
    for _ in 0..warmup {
        a.run(ia)?;
        b.run(ib)?;
    }
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let t = Instant::now();
        a.run(ia)?;
        ta.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        b.run(ib)?;
        tb.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((Timing::from_samples(&ta), Timing::from_samples(&tb)))
}

/// Per-node timings of two plans run alternately on the same inputs, by
/// node name: each node timed where it runs, inside its model (its inputs
/// come from the node before it, as in deployment). Profiling is off again
/// afterwards.
pub fn alternate_nodes(
    a: &mut Plan,
    b: &mut Plan,
    feed: &[Tensor],
    warmup: usize,
    runs: usize,
) -> Result<(HashMap<String, Timing>, HashMap<String, Timing>)> {
    let [sa, sb] = alternate_node_samples(a, b, feed, warmup, runs)?;
    let summarize = |s: HashMap<String, Vec<f64>>| {
        s.into_iter()
            .map(|(k, v)| (k, Timing::from_samples(&v)))
            .collect()
    };
    Ok((summarize(sa), summarize(sb)))
}

/// The samples behind [`alternate_nodes`]: each plan's milliseconds per
/// node name, one sample a run.
pub fn alternate_node_samples(
    a: &mut Plan,
    b: &mut Plan,
    feed: &[Tensor],
    warmup: usize,
    runs: usize,
) -> Result<[HashMap<String, Vec<f64>>; 2]> {
    for _ in 0..warmup {
        a.run(feed)?;
        b.run(feed)?;
    }
    a.set_profiling(true);
    b.set_profiling(true);
    let mut samples: [HashMap<String, Vec<f64>>; 2] = Default::default();
    for _ in 0..runs {
        for (plan, into) in [&mut *a, &mut *b].into_iter().zip(samples.iter_mut()) {
            let before = step_ms(plan);
            plan.run(feed)?;
            for ((name, after), (_, was)) in step_ms(plan).into_iter().zip(before) {
                into.entry(name).or_default().push(after - was);
            }
        }
    }
    a.set_profiling(false);
    b.set_profiling(false);
    Ok(samples)
}

/// Each step's node name and profiled milliseconds so far (empty when
/// profiling is off).
fn step_ms(plan: &Plan) -> Vec<(String, f64)> {
    plan.step_times()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, t)| (n, t.as_secs_f64() * 1e3))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert!((percentile(&v, 90.0) - 4.6).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let t = Timing::from_samples(&[5.0, 1.0, 3.0]);
        assert_eq!((t.median_ms, t.runs), (3.0, 3));
        assert!(t.slower_than(&Timing::from_samples(&[2.0]), 0.5));
        assert!(!t.slower_than(&Timing::from_samples(&[2.9]), 0.5));
        // Beyond the noise: the gap against half the wider spread.
        let at = |m: f64, spread: f64| Timing {
            median_ms: m,
            p10_ms: m - spread / 2.0,
            p90_ms: m + spread / 2.0,
            runs: 10,
        };
        assert!(at(1.0, 0.1).beats(&at(1.2, 0.1)));
        assert!(!at(1.0, 0.5).beats(&at(1.2, 0.1)));
        assert!(!at(1.0, 0.0).beats(&at(1.01, 0.0)), "under 2%");
        assert!(!at(1.2, 0.1).beats(&at(1.0, 0.1)));
        assert!(at(1.2, 0.1).separated(&at(1.0, 0.1)));
        assert!(!at(1.05, 0.4).separated(&at(1.0, 0.4)));
    }
}

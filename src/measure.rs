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
}

/// The smallest relative gain a [`PairedRatios`] decision counts (a gain
/// smaller than that is not worth a choice that differs from the default).
pub const MIN_GAIN: f64 = 0.02;

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

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 50.0)
}

/// The median of `v` (sorted in place) with a distribution-free 95%
/// confidence interval: the order statistics `k` and `n + 1 - k` (1-based)
/// with `k` the largest for which `P(Binomial(n, 1/2) < k) <= 2.5%`.
pub fn median_interval(v: &mut [f64]) -> (f64, f64, f64) {
    let n = v.len();
    let m = median(v);
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let k = if n > 1000 {
        // 2^-n underflows: the normal approximation, exact enough here.
        ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0)
            .floor()
            .max(1.0) as usize
    } else {
        // [x_k, x_(n+1-k)] covers the median with probability
        // 1 - 2 P(X <= k - 1): k - 1 is the last j with P(X <= j) <= 2.5%
        // (k = 1, the whole range, when even P(X = 0) is above it).
        let mut k = 1;
        let mut cdf = 0.0;
        let mut pmf = 0.5f64.powi(n as i32); // P(X = 0)
        for j in 0..n {
            cdf += pmf;
            if cdf > 0.025 {
                break;
            }
            k = j + 1;
            pmf *= (n - j) as f64 / (j + 1) as f64;
        }
        k
    };
    let k = k.min(n.div_ceil(2));
    (m, v[k - 1], v[n - k])
}

/// A candidate timed against a baseline run by run, alternately: each pair
/// of runs saw the same moment of the machine, so their ratio cancels
/// what slows both (another tenant's burst, a frequency step), which the
/// two timings' own spreads cannot tell from a difference.
#[derive(Clone, Debug, Default)]
pub struct PairedRatios(Vec<f64>);

/// Pairs below which [`PairedRatios`] decides nothing: the 95% interval of
/// fewer is the whole range of ratios.
pub const MIN_PAIRS: usize = 6;

/// The median of candidate-to-baseline time ratios with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RatioInterval {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub pairs: usize,
}

impl PairedRatios {
    /// Adds one pair (milliseconds); a pair with a time not positive and
    /// finite is left out.
    pub fn push(&mut self, baseline_ms: f64, candidate_ms: f64) {
        let ok = |t: f64| t > 0.0 && t.is_finite();
        if ok(baseline_ms) && ok(candidate_ms) {
            self.0.push(candidate_ms / baseline_ms);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The median ratio and its interval; None below [`MIN_PAIRS`].
    pub fn interval(&self) -> Option<RatioInterval> {
        if self.0.len() < MIN_PAIRS {
            return None;
        }
        let mut v = self.0.clone();
        let (median, low, high) = median_interval(&mut v);
        Some(RatioInterval {
            median,
            low,
            high,
            pairs: v.len(),
        })
    }

    /// Whether the candidate is faster beyond the noise: the whole interval
    /// below `1 - MIN_GAIN` (a gain smaller than [`MIN_GAIN`] is not worth
    /// a choice that differs from the default).
    pub fn wins(&self) -> bool {
        self.interval().is_some_and(|r| r.high < 1.0 - MIN_GAIN)
    }

    /// Whether more pairs would change nothing: the candidate wins, or the
    /// whole interval is above `1 - MIN_GAIN` (it cannot win).
    pub fn decided(&self) -> bool {
        self.interval()
            .is_some_and(|r| r.high < 1.0 - MIN_GAIN || r.low > 1.0 - MIN_GAIN)
    }
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
    alternate_paired(a, b, ia, ib, warmup, runs).map(|(ta, tb, _)| (ta, tb))
}

/// [`alternate`], with `b`'s runs against `a`'s beside them.
pub fn alternate_paired(
    a: &mut Plan,
    b: &mut Plan,
    ia: &[Tensor],
    ib: &[Tensor],
    warmup: usize,
    runs: usize,
) -> Result<(Timing, Timing, PairedRatios)> {
    for _ in 0..warmup {
        a.run(ia)?;
        b.run(ib)?;
    }
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let mut pairs = PairedRatios::default();
    for _ in 0..runs {
        let t = Instant::now();
        a.run(ia)?;
        ta.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        b.run(ib)?;
        tb.push(t.elapsed().as_secs_f64() * 1e3);
        pairs.push(ta[ta.len() - 1], tb[tb.len() - 1]);
    }
    Ok((Timing::from_samples(&ta), Timing::from_samples(&tb), pairs))
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
    fn median_interval_uses_the_binomial_order_statistics() {
        // n = 15: P(X <= 3) = 1.76% and P(X <= 4) = 5.9%, so k = 4.
        let mut v: Vec<f64> = (1..=15).map(f64::from).collect();
        assert_eq!(median_interval(&mut v), (8.0, 4.0, 12.0));
        // n = 5: P(X = 0) = 3.1% > 2.5%: the interval is the range.
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median_interval(&mut v), (3.0, 1.0, 5.0));
        // Past 2^-n's range the normal approximation: about ±0.98·√n
        // ranks around the middle.
        let mut v: Vec<f64> = (0..4000).map(f64::from).collect();
        let (m, lo, hi) = median_interval(&mut v);
        assert_eq!(m, 1999.5);
        assert!(
            (1935.0..1945.0).contains(&lo) && (2055.0..2065.0).contains(&hi),
            "{lo} {hi}"
        );
    }

    #[test]
    fn paired_ratios_see_through_noise_both_timings_share() {
        // A candidate 10% faster than the baseline, both slowed alike by
        // bursts up to 2x: the timings' spreads (p10-p90 over half the
        // median) hide the gain; paired, the ratios show it.
        let mut rng = crate::rng::SplitMix64::new(7);
        let (mut base, mut cand, mut pairs) = (Vec::new(), Vec::new(), PairedRatios::default());
        for i in 0..40 {
            let slow = 1.0 + rng.next_f64() * if i % 3 == 0 { 1.0 } else { 0.2 };
            let (b, c) = (1.0 * slow, 0.9 * slow * (1.0 + 0.01 * rng.next_f64()));
            base.push(b);
            cand.push(c);
            pairs.push(b, c);
        }
        let (tb, tc) = (Timing::from_samples(&base), Timing::from_samples(&cand));
        assert!(tb.median_ms - tc.median_ms < (tc.p90_ms - tc.p10_ms) / 2.0);
        let r = pairs.interval().expect("40 pairs");
        assert!(r.high < 0.95 && r.low > 0.85, "{r:?}");
        assert!(pairs.wins() && pairs.decided());
        // The same noise with no difference: no win, and undecided while
        // the interval straddles 0.98 (or decided against once above it).
        let mut same = PairedRatios::default();
        for _ in 0..40 {
            let slow = 1.0 + rng.next_f64();
            same.push(slow, slow * (0.99 + 0.02 * rng.next_f64()));
        }
        assert!(!same.wins());
        // 3% slower: decided, not a win.
        let mut slower = PairedRatios::default();
        for _ in 0..20 {
            let slow = 1.0 + rng.next_f64();
            slower.push(slow, slow * (1.02 + 0.02 * rng.next_f64()));
        }
        assert!(slower.decided() && !slower.wins());
        // Too few pairs decide nothing; bad times are left out.
        let mut few = PairedRatios::default();
        for _ in 0..MIN_PAIRS - 1 {
            few.push(1.0, 0.5);
        }
        few.push(0.0, 0.5);
        few.push(f64::NAN, 0.5);
        assert_eq!(few.len(), MIN_PAIRS - 1);
        assert!(few.interval().is_none() && !few.wins() && !few.decided());
    }

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
    }
}

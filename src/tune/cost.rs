//! The cost model: a node's time under a kernel choice predicted from the
//! tuning database's measured records.
//!
//! As tract does per kernel and CPU, one linear model per kernel: here a
//! kernel is an op type with a choice (`FusedConv|conv=winograd`), and its
//! time is `a · flops + b · bytes + c` (multiply-adds counted twice; bytes
//! of every input and output), fitted by least squares with non-negative
//! coefficients over the records of one target and thread count. A kernel
//! with too few records borrows its op type's model (all choices pooled),
//! then the model of every record. [`CostModel::evaluate`] measures it on
//! held-out records: rank correlation of predicted and measured times, and
//! the regret of its pick (the measured time of the candidate it would
//! choose over the best measured one).

use std::collections::BTreeMap;

use serde::Serialize;

pub use super::db::Features;
use super::db::Record;
use crate::kernels::cpu::choice::Choice;

/// `time_ms = a · flops + b · bytes + c`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Linear {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    /// Records it was fitted on.
    pub n: usize,
}

impl Linear {
    pub fn predict(&self, f: Features) -> f64 {
        self.a * f.flops + self.b * f.bytes + self.c
    }

    /// Least squares over `(features, ms)` with every coefficient kept
    /// non-negative: the best fit among the subsets of the three terms
    /// whose least-squares solution is non-negative (exact NNLS for three
    /// terms).
    fn fit(points: &[(Features, f64)]) -> Option<Linear> {
        if points.is_empty() {
            return None;
        }
        let mut best: Option<(f64, Linear)> = None;
        for mask in [0b111u8, 0b011, 0b101, 0b110, 0b001, 0b010, 0b100] {
            let cols: Vec<usize> = (0..3).filter(|i| mask & (1 << i) != 0).collect();
            let x = |f: &Features, i: usize| match i {
                0 => f.flops,
                1 => f.bytes,
                _ => 1.0,
            };
            // Normal equations, scaled by each column's largest value so
            // that flops (1e9) and the constant (1) stay conditioned.
            let scale: Vec<f64> = cols
                .iter()
                .map(|&i| {
                    points
                        .iter()
                        .map(|(f, _)| x(f, i).abs())
                        .fold(0.0, f64::max)
                        .max(1e-30)
                })
                .collect();
            let k = cols.len();
            let mut m = vec![vec![0.0; k + 1]; k];
            for (f, t) in points {
                for r in 0..k {
                    let xr = x(f, cols[r]) / scale[r];
                    for c in 0..k {
                        m[r][c] += xr * x(f, cols[c]) / scale[c];
                    }
                    m[r][k] += xr * t;
                }
            }
            let Some(sol) = solve(m) else { continue };
            if sol.iter().any(|v| *v < 0.0 || !v.is_finite()) {
                continue;
            }
            let mut coef = [0.0; 3];
            for (j, &i) in cols.iter().enumerate() {
                coef[i] = sol[j] / scale[j];
            }
            let l = Linear {
                a: coef[0],
                b: coef[1],
                c: coef[2],
                n: points.len(),
            };
            let sse: f64 = points
                .iter()
                .map(|(f, t)| (l.predict(*f) - t).powi(2))
                .sum();
            if best.as_ref().is_none_or(|(b, _)| sse < *b) {
                best = Some((sse, l));
            }
        }
        best.map(|(_, l)| l)
    }
}

/// Gaussian elimination with partial pivoting on an augmented `k × (k+1)`
/// matrix; None when singular.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = m.len();
    for col in 0..k {
        let piv = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, piv);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..k).map(|r| m[r][k] / m[r][r]).collect())
}

/// The kernel key of a record's op and a choice: `OpType|choice`.
fn key(op: &str, choice: Choice) -> String {
    format!("{op}|{choice}")
}

/// The op type a workload key starts with (`FusedConv { .. }(..)`).
fn op_of(workload: &str) -> &str {
    workload
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
}

/// Kernel models fitted on measured records.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CostModel {
    kernels: BTreeMap<String, Linear>,
    ops: BTreeMap<String, Linear>,
    global: Option<Linear>,
}

/// Records below which a kernel borrows a wider model.
const MIN_POINTS: usize = 4;

impl CostModel {
    /// Fits the records (of one target and thread count) that carry
    /// features.
    pub fn fit<'a>(records: impl IntoIterator<Item = &'a Record>) -> CostModel {
        let mut by_kernel: BTreeMap<String, Vec<(Features, f64)>> = BTreeMap::new();
        let mut by_op: BTreeMap<String, Vec<(Features, f64)>> = BTreeMap::new();
        let mut all = Vec::new();
        for r in records {
            let Some(f) = r.features else { continue };
            let op = op_of(&r.workload);
            for m in &r.candidates {
                let p = (f, m.median_ms);
                by_kernel.entry(key(op, m.choice)).or_default().push(p);
                by_op.entry(op.to_string()).or_default().push(p);
                all.push(p);
            }
        }
        let fit_all = |m: BTreeMap<String, Vec<(Features, f64)>>| {
            m.into_iter()
                .filter(|(_, p)| p.len() >= MIN_POINTS)
                .filter_map(|(k, p)| Some((k, Linear::fit(&p)?)))
                .collect()
        };
        CostModel {
            kernels: fit_all(by_kernel),
            ops: fit_all(by_op),
            global: Linear::fit(&all),
        }
    }

    /// Whether it has anything to predict with.
    pub fn is_empty(&self) -> bool {
        self.global.is_none()
    }

    /// Predicted milliseconds of op type `op` (`Conv`, `FusedConv`, ...)
    /// with `choice` on a node of `features`; None with no model at all.
    pub fn predict(&self, op: &str, choice: Choice, f: Features) -> Option<f64> {
        let m = self
            .kernels
            .get(&key(op, choice))
            .or_else(|| self.ops.get(op))
            .or(self.global.as_ref())?;
        Some(m.predict(f))
    }

    /// Held-out accuracy over `records` (those with features and at least
    /// two candidates): each fifth of the workloads predicted by a model
    /// fitted on the other four fifths.
    pub fn evaluate(records: &[Record]) -> Accuracy {
        let usable: Vec<&Record> = records
            .iter()
            .filter(|r| r.features.is_some() && r.candidates.len() >= 2)
            .collect();
        const FOLDS: usize = 5;
        let (mut pred, mut meas, mut regrets) = (Vec::new(), Vec::new(), Vec::new());
        for fold in 0..FOLDS {
            let train = usable.iter().enumerate().filter(|(i, _)| i % FOLDS != fold);
            let model = CostModel::fit(train.map(|(_, r)| *r));
            if model.is_empty() {
                continue;
            }
            for r in usable.iter().skip(fold).step_by(FOLDS) {
                let (Some(f), op) = (r.features, op_of(&r.workload)) else {
                    continue;
                };
                let guesses: Vec<f64> = r
                    .candidates
                    .iter()
                    .filter_map(|m| model.predict(op, m.choice, f))
                    .collect();
                if guesses.len() != r.candidates.len() {
                    continue;
                }
                for (g, m) in guesses.iter().zip(&r.candidates) {
                    pred.push(*g);
                    meas.push(m.median_ms);
                }
                let pick = (0..guesses.len())
                    .min_by(|&a, &b| guesses[a].total_cmp(&guesses[b]))
                    .unwrap_or(0);
                let best = r
                    .candidates
                    .iter()
                    .map(|m| m.median_ms)
                    .fold(f64::INFINITY, f64::min);
                if best > 0.0 {
                    regrets.push(r.candidates[pick].median_ms / best - 1.0);
                }
            }
        }
        regrets.sort_by(f64::total_cmp);
        Accuracy {
            workloads: regrets.len(),
            predictions: pred.len(),
            rank_correlation: spearman(&pred, &meas),
            median_regret: crate::measure::percentile(&regrets, 50.0),
            mean_regret: if regrets.is_empty() {
                0.0
            } else {
                regrets.iter().sum::<f64>() / regrets.len() as f64
            },
        }
    }
}

/// How well the model predicts held-out records.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Accuracy {
    /// Held-out workloads and candidate predictions scored.
    pub workloads: usize,
    pub predictions: usize,
    /// Spearman rank correlation of predicted and measured times over every
    /// held-out candidate.
    pub rank_correlation: f64,
    /// Measured time of the model's pick over the best measured one, minus
    /// 1, per workload: median and mean.
    pub median_regret: f64,
    pub mean_regret: f64,
}

/// Spearman's rank correlation (average ranks for ties); 0 for fewer than
/// two points.
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() < 2 || a.len() != b.len() {
        return 0.0;
    }
    let ranks = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&x, &y| v[x].total_cmp(&v[y]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0;
            for &k in &idx[i..=j] {
                r[k] = avg;
            }
            i = j + 1;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        num += (x - mean) * (y - mean);
        da += (x - mean) * (x - mean);
        db += (y - mean) * (y - mean);
    }
    if da == 0.0 || db == 0.0 {
        0.0
    } else {
        num / (da * db).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Timing;
    use crate::tune::db::{Measured, KERNELS};

    fn record(i: usize, flops: f64, bytes: f64) -> Record {
        // Two kernels: "gemm" costs flops, "direct" more per flop but
        // less per byte; the truth is linear, so the model must find it.
        let t = |ms: f64| Timing {
            median_ms: ms,
            p10_ms: ms,
            p90_ms: ms,
            runs: 5,
        };
        let gemm = 1e-9 * flops + 2e-7 * bytes + 0.01;
        let direct = 1.5e-9 * flops + 0.5e-7 * bytes + 0.02;
        Record {
            workload: format!("Conv {{ w{i} }}(f32[..])"),
            target: "cpu".into(),
            threads: 1,
            kernels: KERNELS.into(),
            candidates: vec![
                Measured::new(Choice::default(), &t(gemm)),
                Measured::new("conv=direct".parse().unwrap(), &t(direct)),
            ],
            choice: Choice::default(),
            features: Some(Features { flops, bytes }),
        }
    }

    #[test]
    fn a_linear_truth_is_found_and_picks_the_faster_kernel() {
        let records: Vec<Record> = (0..40)
            .map(|i| {
                let flops = 1e6 * (1 + (i * 7919) % 97) as f64;
                let bytes = 1e4 * (1 + (i * 104729) % 89) as f64;
                record(i, flops, bytes)
            })
            .collect();
        let m = CostModel::fit(&records);
        let f = Features {
            flops: 5e7,
            bytes: 3e5,
        };
        let g = m.predict("Conv", Choice::default(), f).unwrap();
        assert!((g - (0.05 + 0.06 + 0.01)).abs() < 1e-6, "{g}");
        let acc = CostModel::evaluate(&records);
        assert!(acc.rank_correlation > 0.99, "{acc:?}");
        assert!(acc.median_regret < 1e-9, "{acc:?}");
        assert_eq!(acc.workloads, 40);
    }

    #[test]
    fn fits_stay_non_negative_and_spearman_handles_ties() {
        // Times falling with flops: no negative slope, a constant instead.
        let pts: Vec<(Features, f64)> = (1..10)
            .map(|i| {
                (
                    Features {
                        flops: i as f64,
                        bytes: 0.0,
                    },
                    10.0 - i as f64,
                )
            })
            .collect();
        let l = Linear::fit(&pts).unwrap();
        assert!(l.a >= 0.0 && l.b >= 0.0 && l.c > 0.0, "{l:?}");
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }
}

//! Sample data for compression: calibration and evaluation sets read from
//! `.npz` files, running a graph over them on the CPU runtime, and the
//! quality measures of the report.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::formats::npy;
use crate::ir::bind;
use crate::ir::{DType, Graph, TensorData, ValueId};
use crate::measure::Measurer;

use crate::runtime::Plan;
use crate::{inputs, Error, Result, Tensor};

/// Samples for every model input (first axis indexing samples), with
/// optional integer labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// One array per model input, in the model's input order.
    pub arrays: Vec<Tensor>,
    /// Whether the arrays carry an extra leading sample axis (`[N, ..input
    /// shape]`) rather than the model's batch axis (`[N, ..]` of the input's
    /// rank, sliced `[i..i+1]`).
    pub extra_axis: bool,
    pub samples: usize,
    pub labels: Option<Vec<i64>>,
    /// Where the data came from (a file, or "random inputs").
    pub source: String,
    /// Made up (seeded random inputs), not the user's data.
    pub synthetic: bool,
}

impl Dataset {
    /// Reads `path`: one array per model input keyed by input name, and an
    /// optional integer `labels` array with one label per sample.
    pub fn load(path: &Path, g: &Graph) -> Result<Dataset> {
        let mut arrays: BTreeMap<String, Tensor> = npy::read_npz(path)?.into_iter().collect();
        let bad = |message: String| Error::Input {
            name: path.display().to_string(),
            message,
        };
        let labels =
            match arrays.remove("labels") {
                None => None,
                Some(t) => Some(t.to_i64_vec().filter(|_| t.dtype().is_int()).ok_or_else(
                    || {
                        bad(format!(
                            "'labels' must be an integer array, got {}",
                            t.dtype()
                        ))
                    },
                )?),
            };
        let mut picked = Vec::with_capacity(g.inputs.len());
        let mut extra_axis = None;
        let mut samples = None;
        if let Some(name) = arrays
            .keys()
            .find(|n| !g.inputs.iter().any(|&id| g.value(id).name == **n))
        {
            return Err(bind::unknown_input(g, name));
        }
        for &id in &g.inputs {
            let v = g.value(id);
            let t = arrays
                .remove(&v.name)
                .ok_or_else(|| bind::missing_input(g, id))?;
            let rank = v.ty.shape.rank();
            let extra = if t.rank() == rank + 1 {
                true
            } else if t.rank() == rank && rank > 0 {
                false
            } else {
                return Err(bad(format!(
                    "array '{}' has shape {:?}; input {} needs samples along a first axis",
                    v.name,
                    t.shape(),
                    v.ty.shape
                )));
            };
            if extra_axis.is_some_and(|e| e != extra) {
                return Err(bad(
                    "arrays mix a leading sample axis and a batch axis".into()
                ));
            }
            extra_axis = Some(extra);
            let n = t.shape()[0];
            if samples.is_some_and(|s| s != n) {
                return Err(bad(format!(
                    "array '{}' holds {n} samples, an earlier one {}",
                    v.name,
                    samples.unwrap_or(0)
                )));
            }
            samples = Some(n);
            picked.push(t);
        }
        let samples = samples.unwrap_or(0);
        if samples == 0 {
            return Err(bad("the file holds no samples".into()));
        }
        if let Some(l) = &labels {
            if l.len() != samples {
                return Err(bad(format!("{} labels for {samples} samples", l.len())));
            }
        }
        let data = Dataset {
            arrays: picked,
            extra_axis: extra_axis.unwrap_or(false),
            samples,
            labels,
            source: path.display().to_string(),
            synthetic: false,
        };
        // Each sample must fit the inputs (same check, same words as a run).
        let first = data.sample(0)?;
        bind::check_inputs(g, first.iter().map(|t| (t.dtype(), t.shape())))?;
        Ok(data)
    }

    /// `n` seeded random samples (batch 1, other symbolic dims from `dims`
    /// or 1), for models given without data.
    pub fn random(g: &Graph, n: usize, dims: &BTreeMap<String, usize>) -> Result<Dataset> {
        let per: Vec<Vec<Tensor>> = (0..n)
            .map(|s| inputs::random_inputs(g, s as u64, dims))
            .collect::<Result<_>>()?;
        let arrays = (0..g.inputs.len())
            .map(|i| {
                let first = &per[0][i];
                let mut data = TensorData::zeros(first.dtype(), 0);
                for p in &per {
                    data.extend_from(p[i].data());
                }
                let mut shape = vec![n];
                shape.extend_from_slice(first.shape());
                Tensor::new(shape, data).map_err(|e| Error::Internal(e.to_string()))
            })
            .collect::<Result<_>>()?;
        Ok(Dataset {
            arrays,
            extra_axis: true,
            samples: n,
            labels: None,
            source: format!("{n} seeded random inputs (uniform in [-1, 1))"),
            synthetic: true,
        })
    }

    /// The model inputs of sample `i`.
    pub fn sample(&self, i: usize) -> Result<Vec<Tensor>> {
        self.arrays
            .iter()
            .map(|t| {
                let inner: usize = t.shape()[1..].iter().product();
                let idx: Vec<usize> = (i * inner..(i + 1) * inner).collect();
                let shape = if self.extra_axis {
                    t.shape()[1..].to_vec()
                } else {
                    let mut s = t.shape().to_vec();
                    s[0] = 1;
                    s
                };
                Tensor::new(shape, t.data().gather(&idx))
                    .map_err(|e| Error::Internal(e.to_string()))
            })
            .collect()
    }

    /// The first `n` samples only.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.samples {
            return;
        }
        for t in &mut self.arrays {
            let inner: usize = t.shape()[1..].iter().product();
            let idx: Vec<usize> = (0..n * inner).collect();
            let mut shape = t.shape().to_vec();
            shape[0] = n;
            if let Ok(s) = Tensor::new(shape, t.data().gather(&idx)) {
                *t = s;
            }
        }
        if let Some(l) = &mut self.labels {
            l.truncate(n);
        }
        self.samples = n;
    }

    /// Bytes of the data, for cache keys.
    pub fn fingerprint_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for t in &self.arrays {
            out.extend(format!("{:?}{:?}", t.dtype(), t.shape()).bytes());
            out.extend(crate::formats::bundle::safetensors::tensor_bytes(t));
        }
        out
    }
}

/// A progress bar on stderr when `show` (hidden otherwise).
pub fn progress(show: bool, len: usize, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Runs `plan` (built for one sample's shapes) on every sample of `data`
/// and returns each sample's outputs.
pub fn run_plan(plan: &mut Plan, data: &Dataset, pb: &ProgressBar) -> Result<Vec<Vec<Tensor>>> {
    let mut out = Vec::with_capacity(data.samples);
    for i in 0..data.samples {
        out.push(plan.run(&data.sample(i)?)?);
        pb.inc(1);
    }
    Ok(out)
}

/// Runs `g` on every sample of `data` and hands each of `values` (by its
/// position in `values`) to `seen` as the sample computes it: the
/// activations a calibration statistic is taken over.
pub fn observe(
    g: &Graph,
    values: &[ValueId],
    data: &Dataset,
    meas: &Measurer,
    pb: &ProgressBar,
    mut seen: impl FnMut(usize, &Tensor),
) -> Result<()> {
    let mut probe = g.clone();
    let n_out = probe.outputs.len();
    probe.outputs.extend_from_slice(values);
    let first = data.sample(0)?;
    let shapes: Vec<Vec<usize>> = first.iter().map(|t| t.shape().to_vec()).collect();
    let mut plan = meas.plan(&probe, &shapes)?;
    for i in 0..data.samples {
        let outs = plan.run(&data.sample(i)?)?;
        for (j, t) in outs[n_out..].iter().enumerate() {
            seen(j, t);
        }
        pb.inc(1);
    }
    Ok(())
}

/// How the outputs of a compressed model compare with the f32 model's on
/// the same inputs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Agreement {
    /// Share of rows (of the first output's last axis) whose arg-max is
    /// unchanged.
    pub top1_agreement: f64,
    /// Cosine similarity of all outputs, flattened per sample, averaged
    /// over samples.
    pub cosine_similarity: f64,
    /// The lowest per-sample cosine similarity.
    pub min_cosine_similarity: f64,
    pub max_abs_error: f64,
    /// Mean of `|y - y_ref|² / |y_ref|²` over samples.
    pub relative_mse: f64,
}

fn floats(t: &Tensor) -> Vec<f64> {
    if t.dtype().is_float() {
        t.to_f64_vec()
    } else {
        Vec::new()
    }
}

/// Arg-max of each row of the last axis.
fn row_argmax(t: &Tensor) -> Vec<usize> {
    let v = floats(t);
    let c = t.shape().last().copied().unwrap_or(1).max(1);
    v.chunks(c)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv {
                        (i, x)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        })
        .collect()
}

/// Compares `got` with `want` (per sample, all outputs).
pub fn agreement(want: &[Vec<Tensor>], got: &[Vec<Tensor>]) -> Agreement {
    let (mut rows, mut same) = (0usize, 0usize);
    let mut cos_sum = 0.0;
    let mut cos_min = f64::INFINITY;
    let mut max_abs = 0f64;
    let mut rel = 0.0;
    for (w, g) in want.iter().zip(got) {
        if let (Some(w0), Some(g0)) = (w.first(), g.first()) {
            let (a, b) = (row_argmax(w0), row_argmax(g0));
            rows += a.len();
            same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        }
        let (mut dot, mut nw, mut ng, mut err) = (0.0, 0.0, 0.0, 0.0);
        for (wt, gt) in w.iter().zip(g) {
            for (x, y) in floats(wt).iter().zip(floats(gt)) {
                dot += x * y;
                nw += x * x;
                ng += y * y;
                err += (x - y) * (x - y);
                max_abs = max_abs.max((x - y).abs());
            }
        }
        let cos = cosine_from_sums(dot, ng, nw);
        cos_sum += cos;
        cos_min = cos_min.min(cos);
        rel += if nw > 0.0 { err / nw } else { err };
    }
    let n = want.len().max(1) as f64;
    Agreement {
        top1_agreement: if rows == 0 {
            1.0
        } else {
            same as f64 / rows as f64
        },
        cosine_similarity: cos_sum / n,
        min_cosine_similarity: if cos_min.is_finite() { cos_min } else { 1.0 },
        max_abs_error: max_abs,
        relative_mse: rel / n,
    }
}

/// Top-1 accuracy of the first output (arg-max of its last axis, one row
/// per sample) against `labels`.
pub fn accuracy(outputs: &[Vec<Tensor>], labels: &[i64]) -> f64 {
    let correct = outputs
        .iter()
        .zip(labels)
        .filter(|(o, &l)| {
            o.first()
                .and_then(|t| row_argmax(t).first().copied())
                .is_some_and(|p| p as i64 == l)
        })
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// Whether a model's inputs are all f32 (image-like) or take integer data.
pub fn float_inputs(g: &Graph) -> bool {
    g.inputs.iter().all(|&i| g.ty(i).dtype == DType::F32)
}

/// Cosine similarity from the sums a pass over two vectors gathers: their
/// dot product and squared norms. Two zero vectors agree (1); a zero
/// vector against another does not (0).
pub(crate) fn cosine_from_sums(dot: f64, norm2_a: f64, norm2_b: f64) -> f64 {
    if norm2_a == 0.0 && norm2_b == 0.0 {
        1.0
    } else if norm2_a == 0.0 || norm2_b == 0.0 {
        0.0
    } else {
        dot / (norm2_a.sqrt() * norm2_b.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    }

    #[test]
    fn agreement_measures() {
        let want = vec![vec![t(&[1, 3], vec![1.0, 2.0, 0.0])]];
        let same = agreement(&want, &want);
        assert_eq!(same.top1_agreement, 1.0);
        assert!((same.cosine_similarity - 1.0).abs() < 1e-12);
        assert_eq!(same.max_abs_error, 0.0);
        let got = vec![vec![t(&[1, 3], vec![3.0, 2.0, 0.0])]];
        let a = agreement(&want, &got);
        assert_eq!(a.top1_agreement, 0.0);
        assert_eq!(a.max_abs_error, 2.0);
        assert!(a.cosine_similarity < 0.9);
        assert_eq!(accuracy(&got, &[0]), 1.0);
        assert_eq!(accuracy(&want, &[0]), 0.0);
    }
}

//! The least-squares update of what pruning leaves: each output row's
//! surviving weights are re-fit so that the row's output on the
//! calibration activations stays as close as possible to the unpruned
//! row's (the objective of OBS and SparseGPT, Frantar & Alistarh 2023,
//! solved exactly row by row instead of SparseGPT's column sweep).
//!
//! With `H = Σ x·xᵀ` the Gram matrix of the layer's input vectors over
//! the calibration data (a product's input rows, a convolution's patches:
//! [`layer_grams`]), a row `w` whose kept columns are `S` and pruned ones
//! `P` minimizes `(w' − w)ᵀ H (w' − w)` with `w'_P = 0` at
//! `w'_S = w_S + δ`, `(H_SS + λI) δ = H_SP w_P` ([`update`], by conjugate
//! gradients). `λ` is 1% of H's mean diagonal, SparseGPT's damping: it
//! keeps the system well posed when the calibration vectors span fewer
//! dimensions than the row has (an input pixel that is always 0).

use std::collections::HashMap;

use super::data::{self, Dataset};
use super::prune::WeightMatrix;
use super::quantize::Layer;
use crate::ir::{AutoPad, Graph, NodeId, Op, Tensor};
use crate::measure::Measurer;
use crate::Result;

/// Widest reduction a Gram matrix is taken for (`cols²` f64 values: 42 MB
/// at this width, a 3x3 convolution of 256 channels). Wider layers are
/// pruned without the update (reported).
pub const MAX_COLS: usize = 2304;

/// Largest `rows · cols²` a layer is re-fit at (one conjugate-gradient
/// iteration over every row of a dense layer): the update is solved again
/// for every sparsity the allocation and the search try, so its cost must
/// stay near a model run's.
pub const MAX_WORK: usize = 1 << 28;

/// Whether the update covers a layer of this shape.
pub fn fits(m: &WeightMatrix) -> bool {
    m.cols <= MAX_COLS && m.rows.saturating_mul(m.cols).saturating_mul(m.cols) <= MAX_WORK
}

/// Input vectors a layer's Gram matrix is summed over, at most (spread
/// evenly over the samples and their positions).
const MAX_VECTORS: usize = 4096;

/// Share of the mean diagonal added to H's diagonal.
const DAMPING: f64 = 0.01;

/// Conjugate-gradient iterations per row, at most.
const MAX_ITERATIONS: usize = 100;

/// `Σ x·xᵀ` over a layer's input vectors.
#[derive(Clone, Debug)]
pub struct Gram {
    n: usize,
    /// Row-major `n × n`.
    h: Vec<f64>,
    vectors: usize,
    /// Vectors not yet added, row-major `pending × n`: they are added as
    /// one product (faer's), far faster than one outer product each.
    pending: Vec<f64>,
}

/// Vectors [`Gram::add`] gathers before adding them as one product.
const GRAM_BATCH: usize = 256;

impl Gram {
    fn new(n: usize) -> Gram {
        Gram {
            n,
            h: vec![0.0; n * n],
            vectors: 0,
            pending: Vec::new(),
        }
    }

    fn add(&mut self, x: &[f64]) {
        debug_assert_eq!(x.len(), self.n);
        self.pending.extend_from_slice(x);
        self.vectors += 1;
        if self.pending.len() >= GRAM_BATCH * self.n {
            self.flush();
        }
    }

    /// `H += Xᵀ·X` for the pending vectors `X`.
    fn flush(&mut self) {
        let (n, rows) = (self.n, self.pending.len() / self.n.max(1));
        if rows == 0 {
            return;
        }
        let x = faer::MatRef::from_row_major_slice(&self.pending, rows, n);
        let mut h = faer::MatMut::from_row_major_slice_mut(&mut self.h, n, n);
        faer::linalg::matmul::matmul(
            h.as_mut(),
            faer::Accum::Add,
            x.transpose(),
            x,
            1.0,
            faer::Par::Seq,
        );
        self.pending.clear();
    }

    fn finish(&mut self) {
        self.flush();
        self.pending = Vec::new();
    }

    /// Columns (the reduction length of the layer's rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input vectors summed.
    pub fn vectors(&self) -> usize {
        self.vectors
    }

    /// Element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.h[i * self.n + j]
    }
}

/// How a layer's input tensor becomes reduction vectors.
#[derive(Clone, Copy, Debug)]
enum Vectors {
    /// The last axis of a product's input.
    Rows,
    /// The patches of a 2-D convolution of one group.
    Patches {
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        /// `[top, left, bottom, right]`.
        pads: [usize; 4],
    },
}

impl Vectors {
    /// How `op` reads its input, when the update covers it: products, and
    /// 2-D convolutions with one group and explicit padding.
    fn of(op: &Op) -> Option<Vectors> {
        match op {
            Op::Conv(a) | Op::FusedConv { conv: a, .. } => {
                if a.group != 1 || a.auto_pad != AutoPad::NotSet || a.kernel_shape.len() != 2 {
                    return None;
                }
                Some(Vectors::Patches {
                    kernel: [a.kernel_shape[0], a.kernel_shape[1]],
                    strides: [*a.strides.first()?, *a.strides.get(1)?],
                    dilations: [*a.dilations.first()?, *a.dilations.get(1)?],
                    pads: [
                        *a.pads.first()?,
                        *a.pads.get(1)?,
                        *a.pads.get(2)?,
                        *a.pads.get(3)?,
                    ],
                })
            }
            Op::MatMul
            | Op::Gemm { trans_a: false, .. }
            | Op::FusedMatMul { trans_a: false, .. } => Some(Vectors::Rows),
            _ => None,
        }
    }

    /// About `per_sample` of `t`'s vectors (`cols` long), evenly spaced,
    /// handed to `f`; false when `t` does not have the shape they need.
    fn each(self, t: &Tensor, cols: usize, per_sample: usize, f: &mut dyn FnMut(&[f64])) -> bool {
        let (Some(x), shape) = (t.as_f32(), t.shape()) else {
            return false;
        };
        let mut v = vec![0.0f64; cols];
        match self {
            Vectors::Rows => {
                if shape.last() != Some(&cols) || cols == 0 {
                    return false;
                }
                let rows = x.len() / cols;
                for r in (0..rows).step_by(rows.div_ceil(per_sample).max(1)) {
                    for (d, s) in v.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
                        *d = *s as f64;
                    }
                    f(&v);
                }
            }
            Vectors::Patches {
                kernel,
                strides,
                dilations,
                pads,
            } => {
                let &[n, c, h, w] = shape else { return false };
                let taps = kernel[0] * kernel[1];
                if c * taps != cols || strides.contains(&0) {
                    return false;
                }
                // Output extent along one axis.
                let out = |len: usize, a: usize| {
                    let span = (kernel[a].max(1) - 1) * dilations[a] + 1;
                    (len + pads[a] + pads[a + 2]).saturating_sub(span) / strides[a] + 1
                };
                let (oh, ow) = (out(h, 0), out(w, 1));
                let positions = n * oh * ow;
                for p in (0..positions).step_by(positions.div_ceil(per_sample).max(1)) {
                    let (b, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
                    for ci in 0..c {
                        let plane = &x[(b * c + ci) * h * w..][..h * w];
                        for ky in 0..kernel[0] {
                            let iy = (oy * strides[0] + ky * dilations[0]).checked_sub(pads[0]);
                            for kx in 0..kernel[1] {
                                let ix = (ox * strides[1] + kx * dilations[1]).checked_sub(pads[1]);
                                v[ci * taps + ky * kernel[1] + kx] = match (iy, ix) {
                                    (Some(iy), Some(ix)) if iy < h && ix < w => {
                                        plane[iy * w + ix] as f64
                                    }
                                    _ => 0.0,
                                };
                            }
                        }
                    }
                    f(&v);
                }
            }
        }
        true
    }
}

/// The Gram matrix of each layer's input vectors over `data`, by node, for
/// the layers whose input `Vectors::of` can read and whose weight
/// matrix `wanted` takes ([`fits`] for the least-squares update).
pub fn layer_grams(
    g: &Graph,
    layers: &[Layer],
    data: &Dataset,
    meas: &Measurer,
    wanted: impl Fn(&WeightMatrix) -> bool,
    progress: bool,
) -> Result<HashMap<NodeId, Gram>> {
    // (layer index, how it reads its input, columns).
    let mut covered = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let (Some(node), Some(w)) = (g.node(l.node), g.const_value(l.weight)) else {
            continue;
        };
        let (Some(vectors), Some(m)) =
            (Vectors::of(&node.op), WeightMatrix::of(&node.op, w.shape()))
        else {
            continue;
        };
        if wanted(&m) {
            covered.push((i, vectors, m.cols));
        }
    }
    let values: Vec<_> = covered.iter().map(|&(i, ..)| layers[i].input).collect();
    let mut grams: Vec<Option<Gram>> = covered.iter().map(|c| Some(Gram::new(c.2))).collect();
    let per_sample = MAX_VECTORS.div_ceil(data.samples.max(1));
    let pb = data::progress(progress, data.samples, "input statistics");
    data::observe(g, &values, data, meas, &pb, |j, t| {
        let (_, vectors, cols) = covered[j];
        if let Some(gram) = &mut grams[j] {
            if !vectors.each(t, cols, per_sample, &mut |v| gram.add(v)) {
                grams[j] = None;
            }
        }
    })?;
    pb.finish_and_clear();
    Ok(covered
        .iter()
        .zip(grams)
        .filter_map(|(&(i, ..), gram)| {
            let mut gram = gram?;
            gram.finish();
            (gram.vectors > 0 && gram.h.iter().all(|h| h.is_finite()))
                .then_some((layers[i].node, gram))
        })
        .collect())
}

/// Re-fits the nonzero weights of `pruned` (laid out as `m` says; pruned
/// from `orig`) row by row to the unpruned rows' outputs under `gram` (see
/// the module documentation). Rows nothing was pruned from are left as
/// they are.
pub fn update(orig: &[f32], pruned: &mut [f32], m: &WeightMatrix, gram: &Gram) {
    if gram.n != m.cols {
        return;
    }
    let n = gram.n;
    let mean_diag = (0..n).map(|i| gram.h[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let lambda = (DAMPING * mean_diag).max(f64::MIN_POSITIVE);
    for r in 0..m.rows {
        let at = |c: usize| m.index(r, c);
        let (mut kept, mut gone) = (Vec::new(), Vec::new());
        for c in 0..m.cols {
            if pruned[at(c)] != 0.0 {
                kept.push(c);
            } else if orig[at(c)] != 0.0 {
                gone.push(c);
            }
        }
        if kept.is_empty() || gone.is_empty() {
            continue;
        }
        // b = H_SP w_P, A = H_SS + λI.
        let b: Vec<f64> = kept
            .iter()
            .map(|&s| {
                gone.iter()
                    .map(|&p| gram.h[s * n + p] * orig[at(p)] as f64)
                    .sum::<f64>()
            })
            .collect();
        let a: Vec<f64> = kept
            .iter()
            .flat_map(|&s| {
                kept.iter()
                    .map(move |&t| gram.h[s * n + t] + if s == t { lambda } else { 0.0 })
            })
            .collect();
        let delta = conjugate_gradients(&a, &b);
        for (&c, d) in kept.iter().zip(delta) {
            let w = (pruned[at(c)] as f64 + d) as f32;
            // A weight the update would zero stays nonzero (the count is
            // pruning's), and a non-finite one is not taken.
            if w != 0.0 && w.is_finite() {
                pruned[at(c)] = w;
            }
        }
    }
}

/// Solves `a·x = b` for symmetric positive definite `a` (`n × n`,
/// row-major) by conjugate gradients from `x = 0`, until the residual is
/// 1e-5 of `b` or [`MAX_ITERATIONS`].
fn conjugate_gradients(a: &[f64], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut x = vec![0.0; n];
    let mut r = b.to_vec();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|v| v * v).sum();
    let stop = rr * 1e-10;
    let mut ap = vec![0.0; n];
    for _ in 0..MAX_ITERATIONS.min(4 * n + 4) {
        if rr <= stop || rr == 0.0 {
            break;
        }
        for (i, v) in ap.iter_mut().enumerate() {
            *v = a[i * n..(i + 1) * n]
                .iter()
                .zip(&p)
                .map(|(a, p)| a * p)
                .sum();
        }
        let pap: f64 = p.iter().zip(&ap).map(|(p, q)| p * q).sum();
        if pap <= 0.0 || !pap.is_finite() {
            break;
        }
        let alpha = rr / pap;
        for i in 0..n {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        let next: f64 = r.iter().map(|v| v * v).sum();
        let beta = next / rr;
        rr = next;
        for i in 0..n {
            p[i] = r[i] + beta * p[i];
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_sums_equal_outer_products() {
        let n = 5;
        let vs: Vec<Vec<f64>> = (0..GRAM_BATCH + 7)
            .map(|k| {
                (0..n)
                    .map(|i| ((k * 13 + i * 7) % 17) as f64 - 8.0)
                    .collect()
            })
            .collect();
        let g = gram_of(&vs);
        for i in 0..n {
            for j in 0..n {
                let want: f64 = vs.iter().map(|v| v[i] * v[j]).sum();
                assert_eq!(g.at(i, j), want, "({i},{j})");
            }
        }
        assert_eq!(g.vectors(), GRAM_BATCH + 7);
    }

    fn gram_of(vectors: &[Vec<f64>]) -> Gram {
        let mut g = Gram::new(vectors[0].len());
        for v in vectors {
            g.add(v);
        }
        g.finish();
        g
    }

    #[test]
    fn conjugate_gradients_solve_a_small_system() {
        let a = [4.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 2.0];
        let b = [1.0, 2.0, 3.0];
        let x = conjugate_gradients(&a, &b);
        for i in 0..3 {
            let ax: f64 = (0..3).map(|j| a[i * 3 + j] * x[j]).sum();
            assert!((ax - b[i]).abs() < 1e-9, "row {i}: {ax} vs {}", b[i]);
        }
    }

    #[test]
    fn update_moves_a_pruned_weight_onto_its_correlated_twin() {
        // Inputs 0 and 1 always equal: pruning w0 loses nothing if w1
        // takes its value; input 2 is independent and keeps its weight.
        let xs: Vec<Vec<f64>> = (0..50)
            .map(|i| {
                let a = ((i * 7919) % 97) as f64 / 97.0 - 0.5;
                let c = ((i * 104_729) % 89) as f64 / 89.0 - 0.5;
                vec![a, a, c]
            })
            .collect();
        let gram = gram_of(&xs);
        let m = WeightMatrix::of(&Op::MatMul, &[3, 1]).unwrap();
        let orig = [0.5f32, 1.0, 2.0];
        let mut pruned = [0.0f32, 1.0, 2.0];
        update(&orig, &mut pruned, &m, &gram);
        let out =
            |w: &[f32], x: &[f64]| -> f64 { w.iter().zip(x).map(|(w, x)| *w as f64 * x).sum() };
        let err =
            |w: &[f32]| -> f64 { xs.iter().map(|x| (out(w, x) - out(&orig, x)).powi(2)).sum() };
        assert_eq!(pruned[0], 0.0, "a pruned weight stays zero");
        assert!(
            (pruned[1] - 1.5).abs() < 0.02,
            "w1 took w0's share: {pruned:?}"
        );
        assert!((pruned[2] - 2.0).abs() < 0.02, "{pruned:?}");
        assert!(err(&pruned) < 0.01 * err(&[0.0, 1.0, 2.0]), "{pruned:?}");
    }

    #[test]
    fn patches_match_a_direct_convolution() {
        // The Gram matrix's vectors, dotted with a weight row, must give
        // the convolution's outputs: check one 3x3, stride 2, pad 1 layer
        // by the sum of squares of its outputs (wᵀ H w).
        let (c, h, w) = (2, 5, 4);
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 37) % 11) as f32 - 5.0)
            .collect();
        let t = Tensor::from_f32(vec![1, c, h, w], x.clone()).unwrap();
        let vectors = Vectors::Patches {
            kernel: [3, 3],
            strides: [2, 2],
            dilations: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let mut gram = Gram::new(c * 9);
        assert!(vectors.each(&t, c * 9, usize::MAX, &mut |v| gram.add(v)));
        gram.finish();
        let wt: Vec<f64> = (0..c * 9).map(|i| (i % 5) as f64 - 2.0).collect();
        let mut direct = 0.0;
        for oy in 0..3 {
            for ox in 0..2 {
                let mut y = 0.0;
                for ci in 0..c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                y += wt[ci * 9 + ky * 3 + kx]
                                    * x[ci * h * w + iy as usize * w + ix as usize] as f64;
                            }
                        }
                    }
                }
                direct += y * y;
            }
        }
        assert_eq!(gram.vectors(), 6);
        let n = c * 9;
        let quad: f64 = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| wt[i] * gram.h[i * n + j] * wt[j])
                    .sum::<f64>()
            })
            .sum();
        assert!(
            (quad - direct).abs() < 1e-6 * direct.abs().max(1.0),
            "{quad} vs {direct}"
        );
    }
}

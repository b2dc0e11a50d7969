//! Sparse-weight × dense-activation f32 products (`conv=sparse`, and
//! MatMul/Gemm with `sparse=1`), for pruned layers whose weights are mostly
//! exact zeros.
//!
//! The layout follows XNNPACK's sparse kernels: the weight `W[M][K]` is
//! stored row by row as its nonzero values and their columns (CSR), and
//! the activation `X[K][P]` has its P pixels (or MatMul rows) in the vector
//! lanes. For each output row, every nonzero `W[m][k]` is broadcast and
//! multiplied into a register tile of pixels of row `k` of X, so the work
//! is proportional to the nonzeros, not to `M·K`. Where every group of 4
//! consecutive output rows has the same nonzero columns (structured
//! pruning, or by chance at low sparsity), the rows are packed as blocks
//! of 4 sharing one column list, and one load of an input row feeds 4
//! FMAs. The columns are stored as deltas (in rows of X) from the previous
//! nonzero's, so the inner loop only advances a pointer.
//!
//! The tile loops are written once over `Row` and instantiated for
//! AVX-512 (16 lanes), AVX2/FMA and the portable 8-lane arrays (which also
//! serve aarch64). Bias, a residual and Relu/Clip are fused into the store
//! of each tile; other activations run on each task's finished rows while
//! they are in cache. Every output element is the same sequence of FMAs
//! whatever the tile or thread split, so results do not depend on threads.

use super::gemm::split_act;
use super::lanes::{Row, P8};
#[cfg(target_arch = "x86_64")]
use super::lanes::{A16, A8};
use super::{ops, CpuCtx, Features};
use crate::ir::Activation;

/// Rows per block when the pattern allows it.
pub const BLOCK_ROWS: usize = 4;

/// A run of output rows sharing one column pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    /// First output row.
    row: u32,
    /// Rows in the block (1 or [`BLOCK_ROWS`]).
    rows: u32,
    /// Its column deltas at `deltas[start..start + len]`, its values at
    /// `values[start * BLOCK_ROWS..]`-style offset `vstart`, `len * rows`
    /// of them (for each nonzero, the rows' values in order).
    start: u32,
    len: u32,
    vstart: u32,
}

/// A weight matrix `W[M][K]` packed for [`spmm`]: its nonzeros row block
/// by row block.
#[derive(Clone, Debug)]
pub struct Csr {
    m: usize,
    k: usize,
    blocks: Vec<Block>,
    /// Column of each nonzero minus the previous one's in its block (the
    /// first: its column).
    deltas: Vec<u32>,
    values: Vec<f32>,
    nnz: usize,
    blocked: bool,
}

impl Csr {
    /// Output rows.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Reduction depth (columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Nonzero weights.
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// Whether the rows were packed in blocks of [`BLOCK_ROWS`].
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Share of nonzero weights.
    pub fn density(&self) -> f64 {
        self.nnz as f64 / (self.m * self.k).max(1) as f64
    }
}

/// Share of `w`'s values that are not exactly zero (0 for no values).
pub fn density(w: &[f32]) -> f64 {
    if w.is_empty() {
        return 0.0;
    }
    w.iter().filter(|v| **v != 0.0).count() as f64 / w.len() as f64
}

/// How many times more useful work a second the kernel does on rows
/// packed in blocks of 4 than on single rows. `sparse_speed` on the Intel
/// Xeon of 2026-12-06 (AVX-512, 1 thread, 70-95% sparsity): 2.5x on a 1x1
/// convolution, 2.3x through im2col, 1.5x on a MatMul of 128 rows, 2.6x
/// on one row.
pub const BLOCK_GAIN: f64 = 2.0;

/// The density the default thresholds compare with: the share of
/// nonzeros of `W[rows][cols]`, divided by [`BLOCK_GAIN`] when its rows
/// pack in blocks of 4 (as [`prepack`] finds them) and it is at most half
/// nonzero. `w` holds the rows
/// one after the other, or with `transposed` the columns (`[cols][rows]`,
/// a MatMul's B).
pub fn work_density(w: &[f32], rows: usize, cols: usize, transposed: bool) -> f64 {
    if rows * cols != w.len() || w.is_empty() {
        return density(w);
    }
    let at = |r: usize, c: usize| {
        if transposed {
            w[c * rows + r]
        } else {
            w[r * cols + c]
        }
    };
    let full = rows / BLOCK_ROWS * BLOCK_ROWS;
    let blocked = full > 0
        && (0..full).step_by(BLOCK_ROWS).all(|r0| {
            (0..cols).all(|c| {
                let nz = at(r0, c) != 0.0;
                (r0 + 1..r0 + BLOCK_ROWS).all(|r| (at(r, c) != 0.0) == nz)
            })
        });
    let d = density(w);
    // Unpruned weights (all nonzero: "blocked" trivially) stay dense.
    if blocked && d <= 0.5 {
        d / BLOCK_GAIN
    } else {
        d
    }
}

/// Nonzero values of `w` (a NaN counts: it must propagate).
pub fn nnz(w: &[f32]) -> usize {
    w.iter().filter(|v| **v != 0.0).count()
}

/// Packs row-major `w[m][k]` (blocks of 4 rows when every full group of 4
/// rows has one nonzero pattern; the last `m % 4` rows alone).
///
/// # Panics
/// When `w` holds fewer than `m * k` values, or `k` or the nonzeros do not
/// fit 32 bits.
pub fn prepack(w: &[f32], m: usize, k: usize) -> Csr {
    assert!(
        w.len() >= m * k,
        "sparse pack: {} values for {m}x{k}",
        w.len()
    );
    assert!(
        u32::try_from(m.max(k)).is_ok(),
        "sparse pack: {m}x{k} too large"
    );
    let row = |r: usize| &w[r * k..(r + 1) * k];
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (*x != 0.0) == (*y != 0.0));
    let full = m / BLOCK_ROWS * BLOCK_ROWS;
    let blocked = full > 0
        && (0..full)
            .step_by(BLOCK_ROWS)
            .all(|r0| (r0 + 1..r0 + BLOCK_ROWS).all(|r| same(row(r0), row(r))));
    let mut csr = Csr {
        m,
        k,
        blocks: Vec::new(),
        deltas: Vec::new(),
        values: Vec::new(),
        nnz: 0,
        blocked,
    };
    let mut r0 = 0;
    while r0 < m {
        let rows = if blocked && r0 + BLOCK_ROWS <= full {
            BLOCK_ROWS
        } else {
            1
        };
        let (start, vstart) = (csr.deltas.len(), csr.values.len());
        let mut prev = 0;
        for (c, &v) in row(r0).iter().enumerate() {
            if v != 0.0 {
                csr.deltas.push((c - prev) as u32);
                prev = c;
                csr.values.extend((r0..r0 + rows).map(|r| w[r * k + c]));
            }
        }
        let len = csr.deltas.len() - start;
        csr.nnz += len * rows;
        let fit = |v: usize| u32::try_from(v).expect("sparse pack: too many nonzeros");
        csr.blocks.push(Block {
            row: r0 as u32,
            rows: rows as u32,
            start: fit(start),
            len: fit(len),
            vstart: fit(vstart),
        });
        r0 += rows;
    }
    csr
}

/// What [`spmm`] adds to the product: a bias per output row, a residual
/// laid out like the output (same row stride), then an activation
/// (Relu/Clip fused into the stores, the others on the finished rows).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub act: Option<&'a Activation>,
}

/// The register tiles: lanes and vectors of pixels per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX-512: 16 lanes, 4 vectors (64 pixels) for blocks of 4 rows and
    /// single rows (16 + 4 + 1 of the 32 registers).
    Avx512,
    /// AVX2/FMA: 8 lanes, 2 vectors for blocks of 4 rows (8 + 2 + 1 of the
    /// 16 registers), 4 for single rows.
    Avx2,
    /// Portable 8-lane arrays, as AVX2.
    Portable,
}

impl Kernel {
    fn for_cpu(f: Features) -> Kernel {
        if f.avx512f {
            Kernel::Avx512
        } else if f.avx2_fma {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Pixels per window: the widest tile (a multiple of every tile).
    fn window(self) -> usize {
        match self {
            Kernel::Avx512 => 64,
            Kernel::Avx2 | Kernel::Portable => 32,
        }
    }
}

/// The output, written by disjoint tiles from several threads.
#[derive(Clone, Copy)]
struct YPtr(*mut f32);
// SAFETY: tasks write disjoint (row, pixel) sets of the output, whose
// extent `spmm` checked; the pointer outlives the tasks (scoped).
unsafe impl Send for YPtr {}
unsafe impl Sync for YPtr {}

/// What every task of one product shares.
struct Job<'a> {
    w: &'a Csr,
    x: &'a [f32],
    ldx: usize,
    y: YPtr,
    ldy: usize,
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
}

/// `Y[m][p] = Σ_k W[m][k]·X[k][p]` for `p < pixels`, then the epilogue:
/// X rows `ldx` apart, Y (and the residual) rows `ldy` apart. Work is
/// split over blocks of rows (balanced by nonzeros) and windows of pixels.
///
/// # Panics
/// When a slice is too short for its rows and stride, or a stride is
/// shorter than `pixels` (a caller bug: the kernel reads through raw
/// pointers and checks first).
#[allow(clippy::too_many_arguments)]
pub fn spmm(
    w: &Csr,
    x: &[f32],
    ldx: usize,
    pixels: usize,
    y: &mut [f32],
    ldy: usize,
    ep: &Epilogue,
    cx: &CpuCtx,
) {
    let (m, k) = (w.m, w.k);
    if m == 0 || pixels == 0 {
        return;
    }
    assert!(
        ldx >= pixels && ldy >= pixels,
        "spmm: strides below {pixels}"
    );
    assert!(
        k == 0 || x.len() >= (k - 1) * ldx + pixels,
        "spmm: X too short"
    );
    let ylen = (m - 1) * ldy + pixels;
    assert!(y.len() >= ylen, "spmm: Y too short");
    if let Some(r) = ep.residual {
        assert!(r.len() >= ylen, "spmm: residual too short");
    }
    if let Some(b) = ep.bias {
        assert!(b.len() >= m, "spmm: bias too short");
    }
    let (clamp, late) = split_act(ep.act);
    let job = Job {
        w,
        x,
        ldx,
        y: YPtr(y.as_mut_ptr()),
        ldy,
        bias: ep.bias,
        residual: ep.residual,
        clamp,
    };
    let kernel = Kernel::for_cpu(cx.features);
    let win = kernel.window();
    let windows = pixels.div_ceil(win);
    let nb = w.blocks.len();
    let want = if cx.threads > 1 && w.nnz * pixels >= PAR_MIN_MACS {
        4 * cx.threads
    } else {
        1
    };
    let pc = want.min(windows);
    let rc = want.div_ceil(pc).min(nb).max(1);
    let per = windows.div_ceil(pc);
    let pc = windows.div_ceil(per);
    let cuts = row_cuts(&w.blocks, rc);
    let task = |t: usize| {
        let (r, c) = (t / pc, t % pc);
        let p0 = c * per * win;
        let p1 = ((c + 1) * per * win).min(pixels);
        let blocks = &w.blocks[cuts[r]..cuts[r + 1]];
        job.run(kernel, blocks, p0, p1);
        if let (Some(act), Some(first), Some(last)) = (late, blocks.first(), blocks.last()) {
            for row in first.row as usize..(last.row + last.rows) as usize {
                // SAFETY: this task alone wrote (and now owns) these
                // positions of Y, inside the checked extent.
                let seg =
                    unsafe { std::slice::from_raw_parts_mut(job.y.0.add(row * ldy + p0), p1 - p0) };
                ops::activation(act, seg, cx.features);
            }
        }
    };
    cx.for_each((cuts.len() - 1) * pc, task);
}

/// Multiply-adds below which [`spmm`] stays on one thread.
const PAR_MIN_MACS: usize = 1 << 15;

/// Cuts `blocks` into at most `parts` runs of about equal work (nonzeros
/// plus the store, times rows): the runs' bounds, first 0 and last the
/// number of blocks, no run empty.
fn row_cuts(blocks: &[Block], parts: usize) -> Vec<usize> {
    let cost = |b: &Block| (b.len as usize + 2) * b.rows as usize;
    let total: usize = blocks.iter().map(cost).sum();
    let mut cuts = vec![0];
    let mut acc = 0;
    for (i, b) in blocks.iter().enumerate() {
        acc += cost(b);
        let done = cuts.len();
        if done < parts && acc * parts >= total * done && i + 1 < blocks.len() {
            cuts.push(i + 1);
        }
    }
    cuts.push(blocks.len());
    cuts
}

impl Job<'_> {
    fn run(&self, kernel: Kernel, blocks: &[Block], p0: usize, p1: usize) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only when the CPU has AVX-512F (`for_cpu`).
            Kernel::Avx512 => unsafe { self.run_avx512(blocks, p0, p1) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only when the CPU has AVX2 and FMA.
            Kernel::Avx2 => unsafe { self.run_avx2(blocks, p0, p1) },
            // SAFETY: portable lanes run anywhere.
            _ => unsafe { self.windows::<P8, 2, 4>(blocks, p0, p1, 32) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(&self, blocks: &[Block], p0: usize, p1: usize) {
        self.windows::<A16, 4, 4>(blocks, p0, p1, 64)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, blocks: &[Block], p0: usize, p1: usize) {
        self.windows::<A8, 2, 4>(blocks, p0, p1, 32)
    }

    /// Pixels `p0..p1` of the rows of `blocks`, a window of `win` pixels
    /// at a time (its X columns stay in cache while every block reads
    /// them), tiles of `T4` vectors for blocks of 4 rows and `T1` for
    /// single rows.
    ///
    /// # Safety
    /// The CPU must run `V`.
    #[inline(always)]
    unsafe fn windows<V: Row, const T4: usize, const T1: usize>(
        &self,
        blocks: &[Block],
        p0: usize,
        p1: usize,
        win: usize,
    ) {
        let mut q = p0;
        while q < p1 {
            let q1 = (q + win).min(p1);
            for b in blocks {
                if b.rows as usize == BLOCK_ROWS {
                    self.tiles::<V, BLOCK_ROWS, T4>(b, q, q1);
                } else {
                    self.tiles::<V, 1, T1>(b, q, q1);
                }
            }
            q = q1;
        }
    }

    /// Block `b`'s rows at pixels `q..q1`: full tiles of `T` vectors, then
    /// the rest in one tile of as many vectors as it needs, its last one
    /// masked.
    #[inline(always)]
    unsafe fn tiles<V: Row, const R: usize, const T: usize>(&self, b: &Block, q: usize, q1: usize) {
        let full = T * V::WIDTH;
        let mut p = q;
        while p + full <= q1 {
            self.tile::<V, R, T, false>(b, p, V::WIDTH);
            p += full;
        }
        let rest = q1 - p;
        if rest == 0 {
            return;
        }
        let nv = rest.div_ceil(V::WIDTH);
        let last = rest - (nv - 1) * V::WIDTH;
        match (nv, last == V::WIDTH) {
            (1, true) => self.tile::<V, R, 1, false>(b, p, last),
            (1, false) => self.tile::<V, R, 1, true>(b, p, last),
            (2, true) => self.tile::<V, R, 2, false>(b, p, last),
            (2, false) => self.tile::<V, R, 2, true>(b, p, last),
            (3, true) => self.tile::<V, R, 3, false>(b, p, last),
            (3, false) => self.tile::<V, R, 3, true>(b, p, last),
            (_, true) => self.tile::<V, R, 4, false>(b, p, last),
            (_, false) => self.tile::<V, R, 4, true>(b, p, last),
        }
    }

    /// One register tile: rows of block `b`, `T` vectors of pixels from
    /// `p` (the last holding `last` pixels when `MASKED`).
    #[inline(always)]
    unsafe fn tile<V: Row, const R: usize, const T: usize, const MASKED: bool>(
        &self,
        b: &Block,
        p: usize,
        last: usize,
    ) {
        let w = self.w;
        let row0 = b.row as usize;
        let deltas = &w.deltas[b.start as usize..][..b.len as usize];
        let vals = w.values[b.vstart as usize..][..b.len as usize * R].as_ptr();
        let mut acc: [[V; T]; R] =
            std::array::from_fn(|r| [V::splat(self.bias.map_or(0.0, |bias| bias[row0 + r])); T]);
        // SAFETY (of the reads): each delta moves to a column < k, and
        // `spmm` checked that X holds `pixels` floats from every row start.
        let mut px = self.x.as_ptr().add(p);
        let ldx = self.ldx;
        let mut vp = vals;
        for &d in deltas {
            px = px.add(d as usize * ldx);
            let xv: [V; T] = std::array::from_fn(|t| {
                if MASKED && t == T - 1 {
                    V::load_n(px.add(t * V::WIDTH), last)
                } else {
                    V::load(px.add(t * V::WIDTH))
                }
            });
            for a in acc.iter_mut() {
                let wv = V::splat(*vp);
                vp = vp.add(1);
                for t in 0..T {
                    a[t] = V::mul_add(wv, xv[t], a[t]);
                }
            }
        }
        let clamp = self.clamp.map(|(lo, hi)| (V::splat(lo), V::splat(hi)));
        for (r, a) in acc.iter().enumerate() {
            let at = (row0 + r) * self.ldy + p;
            for (t, &v) in a.iter().enumerate() {
                let at = at + t * V::WIDTH;
                let n = if MASKED && t == T - 1 { last } else { V::WIDTH };
                let mut v = v;
                if let Some(res) = self.residual {
                    let rv = if n == V::WIDTH {
                        V::load(res.as_ptr().add(at))
                    } else {
                        V::load_n(res.as_ptr().add(at), n)
                    };
                    v = V::add(v, rv);
                }
                if let Some((lo, hi)) = clamp {
                    v = v.clamp(lo, hi);
                }
                // SAFETY: inside the checked extent of Y; this task alone
                // writes these (row, pixel) positions.
                if n == V::WIDTH {
                    v.store(self.y.0.add(at));
                } else {
                    v.store_n(self.y.0.add(at), n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// `m x k` weights with about `sparsity` of them zero; `blocked`:
    /// groups of 4 rows share their pattern.
    pub(crate) fn pruned(m: usize, k: usize, sparsity: f64, blocked: bool, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut w = vec![0.0f32; m * k];
        for r in 0..m {
            let src = if blocked { r / 4 * 4 } else { r };
            for c in 0..k {
                let keep = if src != r {
                    w[src * k + c] != 0.0
                } else {
                    rng.next_f64() >= sparsity
                };
                let v = rng.next_f64() as f32 * 2.0 - 1.0;
                if keep {
                    w[r * k + c] = if v == 0.0 { 0.5 } else { v };
                }
            }
        }
        w
    }

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    /// The feature sets this CPU can run, by name.
    fn feature_sets() -> Vec<(&'static str, Features)> {
        let d = Features::detect();
        let mut out = vec![("portable", Features::portable())];
        if d.avx2_fma {
            out.push(("avx2", Features::avx2_only()));
        }
        if d.avx512f {
            out.push(("avx512", d));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn naive(
        w: &[f32],
        m: usize,
        k: usize,
        x: &[f32],
        ldx: usize,
        pixels: usize,
        ldy: usize,
        ep: &Epilogue,
    ) -> Vec<f32> {
        let mut y = vec![f32::NAN; (m.max(1) - 1) * ldy + pixels];
        for r in 0..m {
            for p in 0..pixels {
                let mut s = ep.bias.map_or(0.0, |b| b[r]) as f64;
                for c in 0..k {
                    s += w[r * k + c] as f64 * x[c * ldx + p] as f64;
                }
                if let Some(res) = ep.residual {
                    s += res[r * ldy + p] as f64;
                }
                y[r * ldy + p] = s as f32;
            }
            if let Some(act) = ep.act {
                super::super::apply_activation_exact(act, &mut y[r * ldy..r * ldy + pixels]);
            }
        }
        y
    }

    #[test]
    fn packs_blocks_only_when_groups_share_patterns() {
        let w = pruned(10, 9, 0.6, true, 1);
        let p = prepack(&w, 10, 9);
        assert!(p.blocked());
        assert_eq!(p.nnz(), nnz(&w));
        // Two blocks of 4 and two single tail rows.
        assert_eq!(
            p.blocks.iter().map(|b| b.rows).collect::<Vec<_>>(),
            [4, 4, 1, 1]
        );
        let w = pruned(8, 40, 0.6, false, 2);
        assert!(!prepack(&w, 8, 40).blocked());
        assert!((density(&[0.0, 1.0, 0.0, 2.0]) - 0.5).abs() < 1e-12);
        assert_eq!(density(&[]), 0.0);
        let z = prepack(&[0.0; 12], 4, 3);
        assert!(z.blocked() && z.nnz() == 0 && z.density() == 0.0);
    }

    #[test]
    fn row_cuts_balance_and_cover() {
        let w = pruned(37, 50, 0.7, false, 3);
        let p = prepack(&w, 37, 50);
        for parts in [1, 2, 3, 8, 100] {
            let c = row_cuts(&p.blocks, parts);
            assert_eq!(c[0], 0);
            assert_eq!(*c.last().unwrap(), p.blocks.len());
            assert!(c.windows(2).all(|w| w[0] < w[1]), "{parts}: {c:?}");
            assert!(c.len() - 1 <= parts.max(1));
        }
    }

    /// Every sparsity, pattern, width, stride and epilogue on every kernel
    /// this CPU has, on one and two threads (the same bits).
    #[test]
    fn spmm_matches_the_naive_product() {
        let acts = [
            None,
            Some(Activation::Relu),
            Some(Activation::Clip {
                min: -0.5,
                max: 0.5,
            }),
            Some(Activation::Tanh),
        ];
        let mut ran = Vec::new();
        let mut seed = 10;
        for (name, f) in feature_sets() {
            ran.push(name);
            let one = CpuCtx::single(f);
            let two = CpuCtx {
                features: f,
                ..CpuCtx::new(2).unwrap()
            };
            for (m, k) in [(1, 1), (4, 3), (9, 17), (16, 64), (13, 300)] {
                for sparsity in [0.0, 0.5, 0.9, 1.0] {
                    for blocked in [false, true] {
                        seed += 1;
                        let mut w = pruned(m, k, sparsity, blocked, seed);
                        if m > 2 && sparsity < 1.0 {
                            // An all-zero row.
                            w[k..2 * k].fill(0.0);
                        }
                        let packed = prepack(&w, m, k);
                        assert_eq!(packed.nnz(), nnz(&w));
                        for pixels in [1, 7, 15, 16, 17, 100] {
                            let (ldx, ldy) = (pixels + seed as usize % 3, pixels + 1);
                            let x = randv(k * ldx, seed + 1);
                            let bias = randv(m, seed + 2);
                            let res = randv(m * ldy, seed + 3);
                            let act = &acts[(seed as usize + pixels) % acts.len()];
                            let ep = Epilogue {
                                bias: (seed % 2 == 0).then_some(&bias[..]),
                                residual: (pixels % 2 == 1).then_some(&res[..]),
                                act: act.as_ref(),
                            };
                            let want = naive(&w, m, k, &x, ldx, pixels, ldy, &ep);
                            let mut got = vec![f32::NAN; want.len()];
                            spmm(&packed, &x, ldx, pixels, &mut got, ldy, &ep, &one);
                            let mut got2 = vec![f32::NAN; want.len()];
                            spmm(&packed, &x, ldx, pixels, &mut got2, ldy, &ep, &two);
                            for r in 0..m {
                                for p in 0..pixels {
                                    let i = r * ldy + p;
                                    let (g, e) = (got[i], want[i]);
                                    assert!(
                                        (g - e).abs() <= 1e-5 + 1e-4 * e.abs(),
                                        "{name} {m}x{k} s={sparsity} b={blocked} P={pixels} \
                                         ({r},{p}): {g} vs {e}"
                                    );
                                    assert_eq!(g.to_bits(), got2[i].to_bits(), "1 vs 2 threads");
                                }
                            }
                            // Stride gaps untouched.
                            for r in 0..m.saturating_sub(1) {
                                assert!(got[r * ldy + pixels].is_nan());
                            }
                        }
                    }
                }
            }
        }
        // Under qemu the aarch64 build runs the portable (NEON) tiles and
        // writes a file of its own.
        #[cfg(target_arch = "x86_64")]
        let (paths, file) = (
            [("avx2", "AVX2+FMA"), ("avx512", "AVX-512F")].as_slice(),
            "sparse_kernels.txt",
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (paths, file) = ([].as_slice(), "sparse_kernels.aarch64.txt");
        super::super::testing::report_kernel_paths("sparse f32", &ran, paths, file);
    }

    /// Large enough for the threads to split both rows and pixels.
    #[test]
    fn blocks_of_rows_weigh_less_in_the_work_density() {
        let unblocked = pruned(8, 16, 0.8, false, 7);
        let blocked = pruned(8, 16, 0.8, true, 7);
        let d = density(&blocked);
        assert_eq!(work_density(&unblocked, 8, 16, false), density(&unblocked));
        assert_eq!(work_density(&blocked, 8, 16, false), d / BLOCK_GAIN);
        // The same matrix stored by columns ([K][N], a MatMul's B).
        let mut t = vec![0.0; 8 * 16];
        for r in 0..8 {
            for c in 0..16 {
                t[c * 8 + r] = blocked[r * 16 + c];
            }
        }
        assert_eq!(work_density(&t, 8, 16, true), d / BLOCK_GAIN);
        // Unpruned weights are no blocks.
        assert_eq!(work_density(&[1.0; 32], 8, 4, false), 1.0);
    }

    #[test]
    fn spmm_splits_over_threads_exactly() {
        let (m, k, pixels) = (70, 130, 333);
        let w = pruned(m, k, 0.8, false, 77);
        let packed = prepack(&w, m, k);
        let x = randv(k * pixels, 78);
        let bias = randv(m, 79);
        let ep = Epilogue {
            bias: Some(&bias),
            ..Epilogue::default()
        };
        let want = naive(&w, m, k, &x, pixels, pixels, pixels, &ep);
        for (_, f) in feature_sets() {
            let mut one = vec![0.0; m * pixels];
            spmm(
                &packed,
                &x,
                pixels,
                pixels,
                &mut one,
                pixels,
                &ep,
                &CpuCtx::single(f),
            );
            for threads in [2, 3] {
                let cx = CpuCtx {
                    features: f,
                    ..CpuCtx::new(threads).unwrap()
                };
                let mut y = vec![0.0; m * pixels];
                spmm(&packed, &x, pixels, pixels, &mut y, pixels, &ep, &cx);
                assert_eq!(y, one);
            }
            for (g, e) in one.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-5 + 1e-4 * e.abs());
            }
        }
    }
}

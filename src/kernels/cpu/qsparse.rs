//! Exact int8 sparse-weight × dense-activation products, for pruned int8
//! layers whose i8 weights are mostly exact zeros: [`qspmm_wx`] computes
//! the same accumulators and output as [`qgemm_wx`](super::qgemm::qgemm_wx) bit for bit, with work
//! proportional to the stored weights.
//!
//! The layout follows the f32 sparse kernel ([`super::sparse`]): the
//! weight `W[M][K]` is stored row by row (or in blocks of 4 output rows
//! sharing one nonzero pattern) and the activation `X[K][P]` has its P
//! pixels in the vector lanes. What is stored is not single weights but
//! **quads**: 4 consecutive depths `4q..4q + 4` of a row, kept (zeros
//! included) when any of them is nonzero, as one 32-bit word of 4 i8 (for
//! a block of 4 rows, 4 words). That is the operand of `vpdpbusd`, which
//! adds 4 u8 × s8 products into each i32 lane: per window of pixels the
//! X rows are interleaved once into quads (`X4[q][p] = x[4q..4q + 4][p]`,
//! 4 bytes a pixel, zeros past k and past the pixels), then for every
//! stored quad the weight word is broadcast and `vpdpbusd`-ed into a
//! register tile of pixels; in a block one load of X feeds 4 rows. The
//! quads' positions are stored as deltas (in quads) from the previous
//! one's, so the inner loop only advances a pointer. A quad of an
//! unstructured row at sparsity `s` is stored with probability `1 − s⁴`
//! (0.59 at 80%, 0.34 at 90%, 0.19 at 95%): fewer instructions than one
//! per nonzero at every sparsity, and the dense kernel's instruction.
//!
//! The accumulator is `Σ w·x` over the stored quads (a padded depth meets
//! a zero weight), then the zero point folds out as in [`qgemm_wx`](super::qgemm::qgemm_wx):
//! `acc − za·Σ_k w[i][k]` in wrapping i32 arithmetic, exact because
//! `k ≤` [`MAX_K`]. Tiles of accumulators go through the dense kernels'
//! epilogue (`Finish`), so f32 and u8 outputs are the same bits as
//! [`qgemm_wx`](super::qgemm::qgemm_wx)'s.
//!
//! Paths, all exact and giving the same i32 accumulators:
//!
//! * **AVX512-VNNI**: 16 pixels a register, tiles of 4 registers (64
//!   pixels) for blocks of 4 rows (16 accumulators) and single rows.
//! * **AVX-VNNI** (`vpdpbusd` on 256-bit registers): 8 pixels a register,
//!   tiles of 2 registers for blocks, 4 for single rows.
//! * **AVX2** without VNNI: `vpmaddubsw` would saturate on u8 × i8, so each
//!   X register is split into its even and odd bytes (as i16: `x & 0xff`,
//!   `x >> 8` per 16-bit lane) and `vpmaddwd` multiplies them by the
//!   quad's weights as i16 pairs `(w0, w2)` and `(w1, w3)` (packed so at
//!   [`prepack`]): two exact multiplies per quad.
//! * **portable** Rust on 8-lane i32 arrays (also aarch64).
//!
//! Tiles of fewer than 8 registers (few pixels, as a MatMul of one row)
//! spread the quads over 2 to 8 sets of accumulators, summed at the end,
//! so `vpdpbusd`'s latency does not serialize them (integer sums: the same
//! bits in any order). The accumulators of consecutive blocks of a window
//! are staged for up to the epilogue's MR rows (12 on AVX512-VNNI) and
//! finished one `MR × 16` tile at a time: one epilogue call per block and
//! 16 pixels cost more than the products at high sparsity. With AVX-512
//! the window's quads are interleaved 64 pixels a step (byte and word
//! unpacks, then a 128-bit lane transpose). Work is split over blocks of
//! rows (balanced by stored quads) and windows of pixels; each element of
//! C is computed by one task, so results do not depend on the thread
//! count.
//!
//! Speed (`qsparse_speed`, see [`QSPARSE_DEFAULT_DENSITY`]): unstructured
//! sparsity pays from about 85-90% (a quad of 4 random weights is rarely
//! all zero), blocks of 4 rows from about 50-70%; a MatMul of one row
//! gains least (the dense kernel also fills one lane of 16 there).

use std::cell::RefCell;

use super::gemm::with_buf;
use super::qgemm::{aligned, checked_out, Finish, QKernel, QMatX, QOut, MAX_K, NR};
use super::sparse::BLOCK_ROWS;
use super::{CpuCtx, Features};

/// Depths per stored group: a quad of 4 consecutive depths of a row.
const QUAD: usize = 4;

/// A run of output rows sharing one quad pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    /// First output row.
    row: u32,
    /// Rows in the block (1 or [`BLOCK_ROWS`]).
    rows: u32,
    /// Its quad deltas at `deltas[start..start + len]`.
    start: u32,
    len: u32,
    /// Its weight words from `words[wstart..]`: for each stored quad, the
    /// rows' words in order ([`Path::words`] a row).
    wstart: u32,
}

/// The kernel a [`QCsr`] was packed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// AVX512-VNNI `vpdpbusd`, 16 pixels a register.
    Vnni512,
    /// AVX-VNNI `vpdpbusd`, 8 pixels a register.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Vnni256,
    /// AVX2 `vpmaddwd` on i16-split bytes, 8 pixels a register.
    Avx2,
    /// Plain Rust, 8-lane arrays.
    Portable,
}

impl Path {
    fn for_cpu(f: Features) -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            if f.avx512vnni {
                return Path::Vnni512;
            }
            if f.avxvnni && f.avx2_fma {
                return Path::Vnni256;
            }
            if f.avx2_fma {
                return Path::Avx2;
            }
        }
        let _ = f;
        Path::Portable
    }

    fn runs_on(self, f: Features) -> bool {
        self.finish().runs_on(f)
    }

    /// The dense kernel whose epilogue finishes the tiles (its MR is at
    /// least [`BLOCK_ROWS`], and `f` runs it exactly when it runs `self`).
    fn finish(self) -> QKernel {
        match self {
            Path::Vnni512 => QKernel::Vnni512,
            Path::Vnni256 => QKernel::Vnni256,
            Path::Avx2 => QKernel::Avx2Madd16,
            Path::Portable => QKernel::Portable,
        }
    }

    /// Pixels per window: the widest tile (a multiple of every tile and of
    /// [`NR`]).
    fn window(self) -> usize {
        match self {
            Path::Vnni512 => 64,
            _ => 32,
        }
    }
}

/// An i8 weight matrix `W[M][K]` packed for [`qspmm_wx`]: its stored quads
/// row block by row block, and each row's sum (for the zero point).
#[derive(Clone, Debug)]
pub struct QCsr {
    m: usize,
    k: usize,
    path: Path,
    blocks: Vec<Block>,
    /// Quad index of each stored quad minus the previous one's in its
    /// block (the first: its quad index).
    deltas: Vec<u32>,
    words: Vec<i32>,
    /// `Σ_k w[i][k]` for each row.
    row_sums: Vec<i32>,
    nnz: usize,
    /// Stored quads times their block's rows.
    slots: usize,
    blocked: bool,
}

impl QCsr {
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

    /// Share of the `m · ⌈k/4⌉` quads of rows stored (the dense kernel's
    /// `vpdpbusd` count is 1; the sparse kernel's is this).
    pub fn quad_density(&self) -> f64 {
        self.slots as f64 / (self.m * self.k.div_ceil(QUAD)).max(1) as f64
    }
}

/// Whether every full group of [`BLOCK_ROWS`] rows of row-major
/// `w[m][k]` has one nonzero pattern (as [`super::sparse::prepack`]
/// decides).
fn blocked_pattern(w: &[i8], m: usize, k: usize) -> bool {
    let row = |r: usize| &w[r * k..(r + 1) * k];
    let same = |a: &[i8], b: &[i8]| a.iter().zip(b).all(|(x, y)| (*x != 0) == (*y != 0));
    let full = m / BLOCK_ROWS * BLOCK_ROWS;
    full > 0
        && (0..full)
            .step_by(BLOCK_ROWS)
            .all(|r0| (r0 + 1..r0 + BLOCK_ROWS).all(|r| same(row(r0), row(r))))
}

/// Quad `q` of row `r` (zeros past k).
fn quad_of(w: &[i8], k: usize, r: usize, q: usize) -> [i8; QUAD] {
    std::array::from_fn(|d| {
        let c = q * QUAD + d;
        if c < k {
            w[r * k + c]
        } else {
            0
        }
    })
}

/// How many times more useful work a second the kernel does on rows
/// packed in blocks of 4 than on single rows at the same share of stored
/// quads (one X load feeds 4 rows, and 16 accumulators hide `vpdpbusd`'s
/// latency). `qsparse_speed` on the Intel Xeon of 2026-12-06 (AVX512-VNNI,
/// 1 thread), blocked speedup over unblocked at quad densities 0.6 / 0.35 /
/// 0.19: 1.5 / 1.4 / 1.4x on the 1x1 convolution, 2.1 / 1.8 / 1.6x through
/// im2col, 1.5 / 1.4 / 1.3x on a MatMul of 128 rows, 2.0 / 1.9 / 1.9x on
/// one row.
pub const QBLOCK_GAIN: f64 = 1.6;

/// Work density (see [`work_density`]) up to which a weights-left int8
/// product over many pixels (a convolution) runs sparse by default.
/// `qsparse_speed` on the Intel Xeon of 2026-12-06 (AVX512-VNNI, 1 thread,
/// f32 output with per-row scales and bias) against `qgemm_wx`: the 1x1
/// convolution 256->256 at 28x28 ran 0.98x at quad density 0.60, 1.35x at
/// 0.35, 1.75x at 0.19 (4x1 blocks: 1.13x at 0.94, 1.47x at 0.60, 2.4x at
/// 0.19); through im2col (128->128 3x3) 0.75x / 1.27x / 1.98x (blocks
/// 1.13x / 1.59x / 3.15x). Break-even near work density 0.45-0.5 for
/// single rows and above 0.55 for blocks. A MatMul of 128 rows (weights
/// left, C transposed) breaks even near 0.35 (1.02x at 0.34, blocks 1.08x
/// at work 0.37).
pub const QSPARSE_DEFAULT_DENSITY: f64 = 0.4;

/// As [`QSPARSE_DEFAULT_DENSITY`] for a product over a few pixels (a
/// MatMul of 1 row, weights left, `n` = 1), where every register holds one
/// useful lane for the dense kernel as for this one: 1x768x768 ran 0.76x
/// at quad density 0.34 and 1.07x at 0.19 on single rows, 1.01x at 0.60,
/// 1.46x at 0.35 and 2.05x at 0.19 in blocks (work 0.37, 0.22, 0.12).
pub const QSPARSE_DEFAULT_DENSITY_FEW: f64 = 0.2;

/// Whether a product of work density `work` (see [`work_density`]) over
/// `pixels` columns runs sparse by default: [`QSPARSE_DEFAULT_DENSITY`]
/// from 256 pixels, [`QSPARSE_DEFAULT_DENSITY_FEW`] below 16, and between
/// them 0.33 (a MatMul of 128 rows broke even near 0.35).
pub fn sparse_by_default(work: f64, pixels: usize) -> bool {
    let limit = match pixels {
        256.. => QSPARSE_DEFAULT_DENSITY,
        16..=255 => 0.33,
        _ => QSPARSE_DEFAULT_DENSITY_FEW,
    };
    work <= limit
}

/// The share of the dense int8 kernel's work that [`qspmm_wx`] does on
/// row-major `w[m][k]`: its stored quad slots over `m · k` (a quad is
/// stored whole when any of its 4 weights is nonzero), divided by
/// [`QBLOCK_GAIN`] when its rows pack in blocks of 4 (as [`prepack`] finds
/// them) and it is at most half nonzero. Compare it with
/// [`QSPARSE_DEFAULT_DENSITY`]. 1 for no weights or a short slice.
pub fn work_density(w: &[i8], m: usize, k: usize) -> f64 {
    if m * k == 0 || w.len() < m * k {
        return 1.0;
    }
    let kq = k.div_ceil(QUAD);
    let slots: usize = (0..m)
        .map(|r| {
            (0..kq)
                .filter(|&q| quad_of(w, k, r, q) != [0; QUAD])
                .count()
        })
        .sum();
    let d = (slots * QUAD) as f64 / (m * k) as f64;
    let nnz = w[..m * k].iter().filter(|v| **v != 0).count();
    // Unpruned weights (all nonzero: "blocked" trivially) stay dense.
    if 2 * nnz <= m * k && blocked_pattern(w, m, k) {
        d / QBLOCK_GAIN
    } else {
        d
    }
}

/// Packs row-major `w[m][k]` for the kernel `features` selects (blocks of 4
/// rows when every full group of 4 rows has one nonzero pattern; the last
/// `m % 4` rows alone). None when `k >` [`MAX_K`] (an i32 accumulator could
/// overflow).
///
/// # Panics
/// When `w` holds fewer than `m * k` values, or `m`, `k` or the stored
/// quads do not fit 32 bits.
pub fn prepack(w: &[i8], m: usize, k: usize, features: Features) -> Option<QCsr> {
    if k > MAX_K {
        return None;
    }
    assert!(
        w.len() >= m * k,
        "qsparse pack: {} values for {m}x{k}",
        w.len()
    );
    assert!(
        u32::try_from(m.max(k)).is_ok(),
        "qsparse pack: {m}x{k} too large"
    );
    let path = Path::for_cpu(features);
    let blocked = blocked_pattern(w, m, k);
    let full = m / BLOCK_ROWS * BLOCK_ROWS;
    let kq = k.div_ceil(QUAD);
    let mut p = QCsr {
        m,
        k,
        path,
        blocks: Vec::new(),
        deltas: Vec::new(),
        words: Vec::new(),
        row_sums: (0..m)
            .map(|r| w[r * k..(r + 1) * k].iter().map(|&v| v as i32).sum())
            .collect(),
        nnz: w[..m * k].iter().filter(|v| **v != 0).count(),
        slots: 0,
        blocked,
    };
    let fit = |v: usize| u32::try_from(v).expect("qsparse pack: too many quads");
    let mut r0 = 0;
    while r0 < m {
        let rows = if blocked && r0 + BLOCK_ROWS <= full {
            BLOCK_ROWS
        } else {
            1
        };
        let (start, wstart) = (p.deltas.len(), p.words.len());
        let mut prev = 0;
        for q in 0..kq {
            let quads: Vec<[i8; QUAD]> = (r0..r0 + rows).map(|r| quad_of(w, k, r, q)).collect();
            if quads.iter().all(|x| *x == [0; QUAD]) {
                continue;
            }
            p.deltas.push(fit(q - prev));
            prev = q;
            for x in quads {
                let b = x.map(|v| v as u8);
                if path == Path::Avx2 {
                    // i16 pairs (w0, w2) and (w1, w3), for `vpmaddwd` on
                    // X's even and odd bytes.
                    let pair = |a: i8, c: i8| {
                        (a as i16 as u16 as u32 | (c as i16 as u16 as u32) << 16) as i32
                    };
                    p.words.push(pair(x[0], x[2]));
                    p.words.push(pair(x[1], x[3]));
                } else {
                    p.words.push(i32::from_le_bytes(b));
                }
            }
        }
        let len = p.deltas.len() - start;
        p.slots += len * rows;
        p.blocks.push(Block {
            row: r0 as u32,
            rows: rows as u32,
            start: fit(start),
            len: fit(len),
            wstart: fit(wstart),
        });
        r0 += rows;
    }
    Some(p)
}

/// `C[m×n] = W · (X − za)` through `out`'s epilogue, as [`qgemm_wx`](super::qgemm::qgemm_wx)
/// (the same i32 accumulators, the same epilogue, scales and bias by W's
/// rows), with C element (i, j) at `i * strides.0 + j * strides.1` (the
/// residual likewise): `(ldc, 1)` for row-major C, `(1, ldc)` for `Cᵀ`
/// (a MatMul's `Cᵀ = Bᵀ · Aᵀ`). Elements of C not in `m × n` are not
/// touched.
///
/// # Panics
/// When a slice is too short for its dimensions and strides, the strides
/// make two elements of C meet, the scales are neither 1 nor m long, or
/// W was packed for a kernel `cx.features` cannot run (caller bugs: the
/// kernel works through raw pointers and checks first).
pub fn qspmm_wx(w: &QCsr, x: QMatX, n: usize, out: QOut, strides: (usize, usize), cx: &CpuCtx) {
    let (m, k) = (w.m, w.k);
    assert!(
        w.path.runs_on(cx.features),
        "qspmm_wx: W packed for {:?}, which {:?} cannot run",
        w.path,
        cx.features
    );
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!(
            x.ld >= n && x.data.len() >= (k - 1) * x.ld + n,
            "qspmm_wx: X ({k}x{n}, ld {}) does not fit in {} elements",
            x.ld,
            x.data.len()
        );
    }
    let (rs, cs) = strides;
    // Row-major-like (a row's elements, then the next row past them) or
    // column-major-like: no two elements meet.
    let by_rows = (n == 1 || cs >= 1) && (m == 1 || rs > (n - 1) * cs);
    let by_cols = (m == 1 || rs >= 1) && (n == 1 || cs > (m - 1) * rs);
    assert!(
        by_rows || by_cols,
        "qspmm_wx: strides {strides:?} overlap C's {m}x{n} elements"
    );
    let span = (m - 1) * rs + (n - 1) * cs + 1;
    let (dst, ep) = checked_out(out, span, m);
    let job = Job {
        w,
        x,
        fin: Finish::new(x.zero_point as i32, &w.row_sums, true, dst, strides, ep),
    };
    let win = w.path.window();
    let windows = n.div_ceil(win);
    let nb = w.blocks.len();
    let want = if cx.threads > 1 && w.slots * QUAD * n >= PAR_MIN_MACS {
        4 * cx.threads
    } else {
        1
    };
    let pc = want.min(windows);
    let rc = want.div_ceil(pc).min(nb).max(1);
    let per = windows.div_ceil(pc);
    let pc = windows.div_ceil(per);
    let cuts = row_cuts(&w.blocks, rc);
    let tasks = (cuts.len() - 1) * pc;
    if cuts.len() > 2 {
        // Several row tasks read each window: pack every window once, up
        // front, rather than once per task (a 7x7 layer of 512 channels
        // has one window, which 8 tasks packed 8 times: 1.4x slower than
        // the dense kernel on 2 threads).
        with_buf(&BUF_X4_SHARED, |buf| {
            let packed = job.pack_all(buf, n);
            cx.for_each(tasks, |t| {
                let (r, c) = (t / pc, t % pc);
                let p0 = c * per * win;
                let p1 = ((c + 1) * per * win).min(n);
                job.run(&w.blocks[cuts[r]..cuts[r + 1]], p0, p1, Some(&packed));
            });
        });
        return;
    }
    cx.for_each(tasks, |t| {
        let (r, c) = (t / pc, t % pc);
        let p0 = c * per * win;
        let p1 = ((c + 1) * per * win).min(n);
        job.run(&w.blocks[cuts[r]..cuts[r + 1]], p0, p1, None);
    });
}

/// Every window of X packed: the buffer and each window's offset and
/// quad-row stride in it.
struct Packed<'a> {
    buf: &'a [u8],
    windows: Vec<(usize, usize)>,
}

/// Multiply-adds (stored quad slots · 4 · pixels) below which [`qspmm_wx`]
/// stays on one thread.
const PAR_MIN_MACS: usize = 1 << 16;

/// Cuts `blocks` into at most `parts` runs of about equal work (stored
/// quads plus the store, times rows): the runs' bounds, first 0 and last
/// the number of blocks, no run empty.
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

thread_local! {
    /// A task's window of X interleaved in quads.
    static BUF_X4: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Every window of X, packed by the calling thread for all tasks.
    static BUF_X4_SHARED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What every task of one product shares.
struct Job<'a> {
    w: &'a QCsr,
    x: QMatX<'a>,
    fin: Finish<'a>,
}

/// A window of X interleaved in quads: `X4[q][p]` (4 bytes) at
/// `ptr + q * stride + 4 * (p − p0)`.
#[derive(Clone, Copy)]
struct Window {
    ptr: *const u8,
    /// Bytes per quad row.
    stride: usize,
    /// First pixel.
    p0: usize,
}

impl Job<'_> {
    /// Bytes of one packed window of `pixels` pixels, and its quad-row
    /// stride: pixels rounded up to whole NR chunks (every register a tile
    /// loads lies in the buffer), plus slack for the last vector.
    fn window_bytes(&self, pixels: usize) -> (usize, usize) {
        let stride = pixels.div_ceil(NR) * NR * QUAD;
        (self.w.k.div_ceil(QUAD) * stride + 64, stride)
    }

    /// Packs every window of the `n` pixels into `buf`.
    fn pack_all<'b>(&self, buf: &'b mut Vec<u8>, n: usize) -> Packed<'b> {
        let win = self.w.path.window();
        let mut windows = Vec::with_capacity(n.div_ceil(win));
        let mut total = 0;
        for q in (0..n).step_by(win) {
            let (len, stride) = self.window_bytes((q + win).min(n) - q);
            windows.push((total, stride));
            total += len.next_multiple_of(64);
        }
        // 64-byte aligned: a register's load never splits a cache line
        // (unaligned, ResNet-18's layers ran 8.8 or 12.7 ms by the luck of
        // the allocation).
        let base = aligned(buf, total);
        for (i, &(off, stride)) in windows.iter().enumerate() {
            let q = i * win;
            let pixels = (q + win).min(n) - q;
            let wide = self.w.path == Path::Vnni512;
            pack_window(
                &self.x,
                self.w.k,
                q,
                pixels,
                stride,
                &mut buf[base + off..],
                wide,
            );
        }
        Packed {
            buf: &buf[base..],
            windows,
        }
    }

    /// Rows of `blocks`, pixels `p0..p1`, a window at a time: packed here,
    /// or taken from `packed`.
    fn run(&self, blocks: &[Block], p0: usize, p1: usize, packed: Option<&Packed>) {
        let path = self.w.path;
        let win = path.window();
        with_buf(&BUF_X4, |buf| {
            let mut q = p0;
            while q < p1 {
                let q1 = (q + win).min(p1);
                let xw = match packed {
                    Some(p) => {
                        let (off, stride) = p.windows[q / win];
                        Window {
                            ptr: p.buf[off..].as_ptr(),
                            stride,
                            p0: q,
                        }
                    }
                    None => {
                        let (len, stride) = self.window_bytes(q1 - q);
                        let base = aligned(buf, len);
                        let wide = path == Path::Vnni512;
                        let out = &mut buf[base..];
                        pack_window(&self.x, self.w.k, q, q1 - q, stride, out, wide);
                        Window {
                            ptr: out.as_ptr(),
                            stride,
                            p0: q,
                        }
                    }
                };
                match path {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: packed for (and `qspmm_wx` checked) a CPU
                    // with AVX512-VNNI.
                    Path::Vnni512 => unsafe { self.run_vnni512(blocks, xw, q, q1) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: a CPU with AVX-VNNI and AVX2.
                    Path::Vnni256 => unsafe { self.run_vnni256(blocks, xw, q, q1) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: a CPU with AVX2.
                    Path::Avx2 => unsafe { self.run_avx2(blocks, xw, q, q1) },
                    // SAFETY: portable lanes run anywhere.
                    _ => unsafe { self.window::<P8, 2, 4>(blocks, xw, q, q1) },
                }
                q = q1;
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni,avx2")]
    unsafe fn run_vnni512(&self, blocks: &[Block], xw: Window, q: usize, q1: usize) {
        self.window::<x86::Z16, 4, 4>(blocks, xw, q, q1)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn run_vnni256(&self, blocks: &[Block], xw: Window, q: usize, q1: usize) {
        self.window::<x86::Y8, 2, 4>(blocks, xw, q, q1)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, blocks: &[Block], xw: Window, q: usize, q1: usize) {
        self.window::<x86::M8, 2, 4>(blocks, xw, q, q1)
    }

    /// Every block's rows at pixels `q..q1` of the packed window `xw`,
    /// tiles of `T4` registers for blocks of 4 rows and `T1` for single
    /// rows. The accumulators of consecutive blocks are staged for up to
    /// the epilogue kernel's MR rows, then finished in tiles of those rows
    /// by [`NR`] pixels (one epilogue call per tile, not per block).
    ///
    /// # Safety
    /// The CPU must run `L`; `xw` holds the window's quads.
    #[inline(always)]
    unsafe fn window<L: QLanes, const T4: usize, const T1: usize>(
        &self,
        blocks: &[Block],
        xw: Window,
        q: usize,
        q1: usize,
    ) {
        let kern = self.w.path.finish();
        let g = kern.mr().min(STAGE_ROWS);
        let chunks = (q1 - q).div_ceil(NR);
        debug_assert!(chunks <= STAGE_CHUNKS && g >= BLOCK_ROWS);
        // Chunk c, row r of the run at `stage[(c * g + r) * NR..][..NR]`.
        let mut stage = StageBuf([0i32; STAGE_ROWS * STAGE_CHUNKS * NR]);
        let st = Stage {
            ptr: stage.0.as_mut_ptr(),
            g,
        };
        let flush = |r0: usize, rows: usize| {
            for c in 0..chunks {
                let j = q + c * NR;
                // SAFETY: inside the stage (c < chunks, rows <= g), which
                // no tile writes while it is read.
                let tile = std::slice::from_raw_parts(st.ptr.add(c * g * NR), rows * NR);
                self.fin.tile(kern, tile, r0, rows, j, NR.min(q1 - j));
            }
        };
        let (mut r0, mut rows) = (blocks.first().map_or(0, |b| b.row as usize), 0);
        for b in blocks {
            if rows + b.rows as usize > g {
                flush(r0, rows);
                (r0, rows) = (b.row as usize, 0);
            }
            if b.rows as usize == BLOCK_ROWS {
                self.tiles::<L, BLOCK_ROWS, T4>(b, xw, q, q1, st, rows);
            } else {
                self.tiles::<L, 1, T1>(b, xw, q, q1, st, rows);
            }
            rows += b.rows as usize;
        }
        if rows > 0 {
            flush(r0, rows);
        }
    }

    /// Block `b`'s rows at pixels `q..q1`: full tiles of `T` registers,
    /// then the rest in one tile of as many registers as it needs; into
    /// rows `sr..` of the stage.
    #[inline(always)]
    unsafe fn tiles<L: QLanes, const R: usize, const T: usize>(
        &self,
        b: &Block,
        xw: Window,
        q: usize,
        q1: usize,
        st: Stage,
        sr: usize,
    ) {
        let full = T * L::WIDTH;
        let mut p = q;
        while p + full <= q1 {
            self.tile::<L, R, T>(b, xw, p, st, sr);
            p += full;
        }
        // The rest takes up to T registers (the window holds whole NR
        // chunks, zero past q1, so a full tile may read past it).
        match (q1 - p).div_ceil(L::WIDTH) {
            0 => {}
            1 => self.tile::<L, R, 1>(b, xw, p, st, sr),
            2 => self.tile::<L, R, 2>(b, xw, p, st, sr),
            3 => self.tile::<L, R, 3>(b, xw, p, st, sr),
            _ => self.tile::<L, R, T>(b, xw, p, st, sr),
        }
    }

    /// One register tile: `T` registers of pixels from `p`, for the rows
    /// of block `b`; tiles of fewer than 8 registers spread the quads over
    /// 2 to 8 sets of accumulators.
    #[inline(always)]
    unsafe fn tile<L: QLanes, const R: usize, const T: usize>(
        &self,
        b: &Block,
        xw: Window,
        p: usize,
        st: Stage,
        sr: usize,
    ) {
        // About 8 independent accumulator chains.
        match R * T {
            1 => self.tile_sets::<L, R, T, 8>(b, xw, p, st, sr),
            2 => self.tile_sets::<L, R, T, 4>(b, xw, p, st, sr),
            3..=4 => self.tile_sets::<L, R, T, 2>(b, xw, p, st, sr),
            _ => self.tile_sets::<L, R, T, 1>(b, xw, p, st, sr),
        }
    }

    #[inline(always)]
    unsafe fn tile_sets<L: QLanes, const R: usize, const T: usize, const S: usize>(
        &self,
        b: &Block,
        xw: Window,
        p: usize,
        st: Stage,
        sr: usize,
    ) {
        let w = self.w;
        let deltas = &w.deltas[b.start as usize..][..b.len as usize];
        let words = &w.words[b.wstart as usize..][..b.len as usize * R * L::WORDS];
        let mut acc = [[[L::zero(); T]; R]; S];
        // SAFETY (of the reads): each delta moves to a quad < ⌈k/4⌉, and
        // the window holds its quads' rows, NR-pixel chunks whole.
        let mut px = xw.ptr.add((p - xw.p0) * QUAD);
        let mut wp = words.as_ptr();
        let mut chunks = deltas.chunks_exact(S);
        for c in &mut chunks {
            for s in 0..S {
                quad_step(&mut acc[s], &mut px, &mut wp, c[s], xw.stride);
            }
        }
        // The last quads (fewer than S) on sets of their own.
        for (set, &d) in acc.iter_mut().zip(chunks.remainder()) {
            quad_step(set, &mut px, &mut wp, d, xw.stride);
        }
        let mut sum = acc[0];
        for set in &acc[1..] {
            for (sr, ar) in sum.iter_mut().zip(set) {
                for (s, &a) in sr.iter_mut().zip(ar) {
                    *s = s.add(a);
                }
            }
        }
        // SAFETY: the tile's pixels lie in the window's NR chunks (at most
        // STAGE_CHUNKS), its rows in the stage's `g`.
        let pw = p - xw.p0;
        for (r, row) in sum.iter().enumerate() {
            for (t, v) in row.iter().enumerate() {
                let at = pw + t * L::WIDTH;
                v.store(st.ptr.add(((at / NR) * st.g + sr + r) * NR + at % NR));
            }
        }
    }
}

/// Rows of the staged accumulators (the tallest epilogue tile used).
const STAGE_ROWS: usize = 12;
/// [`NR`]-pixel chunks of the widest window.
const STAGE_CHUNKS: usize = 64 / NR;

/// The staged accumulators' storage, 64-byte aligned (a tile's stores
/// never split a cache line).
#[repr(align(64))]
struct StageBuf([i32; STAGE_ROWS * STAGE_CHUNKS * NR]);

/// A window's staged accumulators: chunk c, row r at `ptr + (c * g + r) *
/// NR`.
#[derive(Clone, Copy)]
struct Stage {
    ptr: *mut i32,
    g: usize,
}

/// One stored quad into a set of accumulators: moves `px` `d` quad rows
/// on, loads its `T` registers of pixels, and multiplies each row's
/// weight words (from `wp`, which moves past them) into them.
///
/// # Safety
/// The CPU must run `L`; the quad row and the words must be readable.
#[inline(always)]
unsafe fn quad_step<L: QLanes, const R: usize, const T: usize>(
    set: &mut [[L; T]; R],
    px: &mut *const u8,
    wp: &mut *const i32,
    d: u32,
    stride: usize,
) {
    *px = px.add(d as usize * stride);
    let mut xv = [L::load(*px); T];
    for (t, x) in xv.iter_mut().enumerate().skip(1) {
        *x = L::load(px.add(t * L::WIDTH * QUAD));
    }
    for a in set.iter_mut() {
        let wv = L::weight(*wp);
        *wp = wp.add(L::WORDS);
        for t in 0..T {
            a[t] = a[t].dot(xv[t], wv);
        }
    }
}

/// Interleaves pixels `p0..p0 + n` of X's rows into quads: `out[q *
/// stride + 4p + d] = x[4q + d][p0 + p]`, 0 past k and past n (up to
/// `stride / 4` pixels); `wide512`: with AVX-512 BW, 64 pixels a step.
#[allow(clippy::too_many_arguments)]
fn pack_window(
    x: &QMatX,
    k: usize,
    p0: usize,
    n: usize,
    stride: usize,
    out: &mut [u8],
    wide512: bool,
) {
    let _ = wide512;
    let kq = k.div_ceil(QUAD);
    let wide = stride / QUAD;
    for q in 0..kq {
        let row = &mut out[q * stride..(q + 1) * stride];
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut p = 0;
        #[cfg(target_arch = "x86_64")]
        if (q + 1) * QUAD <= k && wide512 {
            while p + 64 <= n {
                let at = q * QUAD * x.ld + p0 + p;
                assert!(x.data.len() >= at + 3 * x.ld + 64, "X holds the run");
                // SAFETY: AVX-512 BW (`wide512`); the four rows' 64 bytes
                // from `at` (checked) and the 256 bytes of the row.
                unsafe {
                    x86::interleave4x64(x.data.as_ptr().add(at), x.ld, &mut row[p * QUAD..][..256])
                };
                p += 64;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if (q + 1) * QUAD <= k {
            while p + NR <= n {
                let src: [&[u8; NR]; QUAD] = std::array::from_fn(|d| {
                    let at = (q * QUAD + d) * x.ld + p0 + p;
                    x.data[at..at + NR].try_into().expect("NR bytes")
                });
                super::qgemm::interleave4(&src, &mut row[p * QUAD..(p + NR) * QUAD]);
                p += NR;
            }
        }
        for d in 0..QUAD {
            let c = q * QUAD + d;
            if c < k {
                let src = &x.data[c * x.ld + p0..];
                for pp in p..n {
                    row[pp * QUAD + d] = src[pp];
                }
            } else {
                for pp in p..n {
                    row[pp * QUAD + d] = 0;
                }
            }
        }
        row[n * QUAD..wide * QUAD].fill(0);
    }
}

/// A register of i32 accumulators, one a pixel, and the quad
/// multiply-add of the kernels.
trait QLanes: Copy {
    /// Pixels a register (a divisor of [`NR`]).
    const WIDTH: usize;
    /// Weight words per quad of a row.
    const WORDS: usize;
    /// `WIDTH` pixels' quads, as the multiply reads them.
    type X: Copy;
    /// A quad's weights, broadcast.
    type W: Copy;
    unsafe fn zero() -> Self;
    /// `WIDTH` pixels' quads from `p` (`4 · WIDTH` bytes).
    unsafe fn load(p: *const u8) -> Self::X;
    /// The `WORDS` words of a row's quad from `w`.
    unsafe fn weight(w: *const i32) -> Self::W;
    /// `self + Σ_d x[d] · w[d]` in each lane, exact.
    unsafe fn dot(self, x: Self::X, w: Self::W) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    /// `WIDTH` i32 to `p`.
    unsafe fn store(self, p: *mut i32);
}

/// Portable 8 lanes.
#[derive(Clone, Copy)]
struct P8([i32; 8]);

impl QLanes for P8 {
    const WIDTH: usize = 8;
    const WORDS: usize = 1;
    type X = [[u8; QUAD]; 8];
    type W = [i32; QUAD];
    #[inline(always)]
    unsafe fn zero() -> Self {
        P8([0; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self::X {
        (p as *const [[u8; QUAD]; 8]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn weight(w: *const i32) -> Self::W {
        w.read().to_le_bytes().map(|b| b as i8 as i32)
    }
    #[inline(always)]
    unsafe fn dot(self, x: Self::X, w: Self::W) -> Self {
        let mut a = self.0;
        for (a, x) in a.iter_mut().zip(x) {
            let q =
                x[0] as i32 * w[0] + x[1] as i32 * w[1] + x[2] as i32 * w[2] + x[3] as i32 * w[3];
            *a = a.wrapping_add(q);
        }
        P8(a)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        P8(std::array::from_fn(|l| self.0[l].wrapping_add(o.0[l])))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut i32) {
        (p as *mut [i32; 8]).write_unaligned(self.0)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QLanes, QUAD};
    use std::arch::x86_64::*;

    /// AVX512-VNNI: 16 pixels.
    #[derive(Clone, Copy)]
    pub(super) struct Z16(__m512i);

    impl QLanes for Z16 {
        const WIDTH: usize = 16;
        const WORDS: usize = 1;
        type X = __m512i;
        type W = __m512i;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Z16(_mm512_setzero_si512())
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512i {
            _mm512_loadu_si512(p as *const __m512i)
        }
        #[inline(always)]
        unsafe fn weight(w: *const i32) -> __m512i {
            _mm512_set1_epi32(w.read())
        }
        #[inline(always)]
        unsafe fn dot(self, x: __m512i, w: __m512i) -> Self {
            Z16(_mm512_dpbusd_epi32(self.0, x, w))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Z16(_mm512_add_epi32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm512_storeu_si512(p as *mut __m512i, self.0)
        }
    }

    /// AVX-VNNI: 8 pixels.
    #[derive(Clone, Copy)]
    pub(super) struct Y8(__m256i);

    impl QLanes for Y8 {
        const WIDTH: usize = 8;
        const WORDS: usize = 1;
        type X = __m256i;
        type W = __m256i;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Y8(_mm256_setzero_si256())
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }
        #[inline(always)]
        unsafe fn weight(w: *const i32) -> __m256i {
            _mm256_set1_epi32(w.read())
        }
        #[inline(always)]
        unsafe fn dot(self, x: __m256i, w: __m256i) -> Self {
            Y8(_mm256_dpbusd_avx_epi32(self.0, x, w))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Y8(_mm256_add_epi32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm256_storeu_si256(p as *mut __m256i, self.0)
        }
    }

    /// AVX2 without VNNI: 8 pixels, each quad's bytes split into i16 pairs
    /// (even and odd depths) for two exact `vpmaddwd`.
    #[derive(Clone, Copy)]
    pub(super) struct M8(__m256i);

    impl QLanes for M8 {
        const WIDTH: usize = 8;
        const WORDS: usize = 2;
        type X = (__m256i, __m256i);
        type W = (__m256i, __m256i);
        #[inline(always)]
        unsafe fn zero() -> Self {
            M8(_mm256_setzero_si256())
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> (__m256i, __m256i) {
            let v = _mm256_loadu_si256(p as *const __m256i);
            // Per 32-bit lane [x0 x1 x2 x3]: the even bytes (x0, x2) and the
            // odd bytes (x1, x3) as i16 pairs.
            (
                _mm256_and_si256(v, _mm256_set1_epi16(0xff)),
                _mm256_srli_epi16::<8>(v),
            )
        }
        #[inline(always)]
        unsafe fn weight(w: *const i32) -> (__m256i, __m256i) {
            (
                _mm256_set1_epi32(w.read()),
                _mm256_set1_epi32(w.add(1).read()),
            )
        }
        #[inline(always)]
        unsafe fn dot(self, x: (__m256i, __m256i), w: (__m256i, __m256i)) -> Self {
            // (x0·w0 + x2·w2) + (x1·w1 + x3·w3): every product at most
            // 255 · 128 in magnitude, exact in vpmaddwd.
            let even = _mm256_madd_epi16(x.0, w.0);
            let odd = _mm256_madd_epi16(x.1, w.1);
            M8(_mm256_add_epi32(self.0, _mm256_add_epi32(even, odd)))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            M8(_mm256_add_epi32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm256_storeu_si256(p as *mut __m256i, self.0)
        }
    }

    /// Interleaves 64 bytes of four rows `ld` apart from `src` into
    /// `out[4c + d] = row d [c]` (the quads of 64 pixels, as
    /// [`quads_of_64`](super::super::qgemm::quads_of_64) orders them).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; each row's 64 bytes must be
    /// readable; `out` holds 256 bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn interleave4x64(src: *const u8, ld: usize, out: &mut [u8]) {
        assert!(out.len() >= 256, "256 bytes of quads");
        let r: [__m512i; 4] =
            std::array::from_fn(|d| _mm512_loadu_si512(src.add(d * ld) as *const __m512i));
        let p = super::super::qgemm::quads_of_64(r);
        let o = out.as_mut_ptr() as *mut __m512i;
        for (l, v) in p.into_iter().enumerate() {
            _mm512_storeu_si512(o.add(l), v);
        }
    }

    const _: () = assert!(QUAD == 4);
}

#[cfg(test)]
mod tests {
    use super::super::qgemm::tests::{rand_f32, rand_u8, two_threads};
    use super::super::qgemm::{qgemm_wx, QEpilogue, QPackedA, QRequant};
    use super::*;
    use crate::ir::Activation;
    use crate::rng::SplitMix64;

    /// `m x k` i8 weights with about `sparsity` of them zero (the others
    /// random nonzero in [-128, 127]); `blocked`: groups of 4 rows share
    /// their pattern.
    pub(crate) fn pruned(m: usize, k: usize, sparsity: f64, blocked: bool, seed: u64) -> Vec<i8> {
        let mut rng = SplitMix64::new(seed);
        let mut w = vec![0i8; m * k];
        for r in 0..m {
            let src = if blocked { r / 4 * 4 } else { r };
            for c in 0..k {
                let keep = if src != r {
                    w[src * k + c] != 0
                } else {
                    rng.next_f64() >= sparsity
                };
                let v = rng.below(255) as i32 - 128;
                if keep {
                    w[r * k + c] = if v >= 0 { v as i8 + 1 } else { v as i8 };
                }
            }
        }
        w
    }

    /// The int8 feature sets of this CPU (AMX adds nothing here: the
    /// 512-bit VNNI path).
    fn feature_sets() -> Vec<(&'static str, Features)> {
        super::super::qgemm::tests::features()
            .into_iter()
            .filter(|(n, _)| *n != "amx")
            .collect()
    }

    /// `Σ_k w[i][k] · (x[k][j] − za)` in i64.
    fn reference(w: &[i8], m: usize, k: usize, x: &QMatX, n: usize) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        w[i * k + p] as i64 * (x.data[p * x.ld + j] as i64 - x.zero_point as i64)
                    })
                    .sum();
            }
        }
        c
    }

    const SENTINEL: i32 = i32::MIN + 7;

    /// The raw accumulators with C at `strides` in a buffer of sentinels.
    fn run_i32(p: &QCsr, x: QMatX, n: usize, strides: (usize, usize), cx: &CpuCtx) -> Vec<i32> {
        let len = (p.m().max(1) - 1) * strides.0 + (n.max(1) - 1) * strides.1 + 1;
        let mut c = vec![SENTINEL; len + 3];
        qspmm_wx(p, x, n, QOut::I32(&mut c), strides, cx);
        c
    }

    /// `got` (C at `strides`) holds `want` (`m x n`) and sentinels
    /// everywhere else.
    fn check(got: &[i32], want: &[i64], m: usize, n: usize, strides: (usize, usize), what: &str) {
        let mut inside = vec![false; got.len()];
        for i in 0..m {
            for j in 0..n {
                let at = i * strides.0 + j * strides.1;
                inside[at] = true;
                assert_eq!(got[at] as i64, want[i * n + j], "{what}: ({i}, {j})");
            }
        }
        for (at, &v) in got.iter().enumerate() {
            if !inside[at] {
                assert_eq!(v, SENTINEL, "{what}: wrote {at} outside C");
            }
        }
    }

    #[test]
    fn packs_quads_and_blocks() {
        let f = Features::detect();
        // Blocks of 4 when the groups share patterns; the tail rows alone.
        let w = pruned(10, 9, 0.6, true, 1);
        let p = prepack(&w, 10, 9, f).unwrap();
        assert!(p.blocked());
        assert_eq!(p.nnz(), w.iter().filter(|v| **v != 0).count());
        assert_eq!(
            p.blocks.iter().map(|b| b.rows).collect::<Vec<_>>(),
            [4, 4, 1, 1]
        );
        assert!(!prepack(&pruned(8, 40, 0.6, false, 2), 8, 40, f)
            .unwrap()
            .blocked());
        // One row, k = 9 (3 quads, the last padded): quads 0 and 2 stored.
        let w = [0, 0, 5, 0, 0, 0, 0, 0, -3];
        let p = prepack(&w, 1, 9, Features::portable()).unwrap();
        assert_eq!(p.deltas, [0, 2]);
        assert_eq!(
            p.words,
            [i32::from_le_bytes([0, 0, 5, 0]), (-3i8 as u8) as i32]
        );
        assert_eq!(p.row_sums, [2]);
        assert_eq!(p.nnz(), 2);
        assert!((p.quad_density() - 2.0 / 3.0).abs() < 1e-12);
        assert!((p.density() - 2.0 / 9.0).abs() < 1e-12);
        // The AVX2 pack: i16 pairs (w0, w2), (w1, w3).
        #[cfg(target_arch = "x86_64")]
        if Features::detect().avx2_fma {
            let p = prepack(&[1, -2, 3, -128], 1, 4, Features::avx2_only()).unwrap();
            assert_eq!(p.path, Path::Avx2);
            assert_eq!(
                p.words,
                [1 | 3 << 16, (-2i16 as u16 as i32) | (-128i32 << 16)]
            );
        }
        assert!(prepack(&[0; 12], 4, 3, f).unwrap().nnz() == 0);
        // Too deep for exact i32 accumulators.
        assert!(prepack(&[], 0, MAX_K + 1, f).is_none());
        assert!(prepack(&[0], 1, 1, f).is_some());
    }

    #[test]
    fn work_density_counts_stored_quads() {
        // Row 0 has quads 0 and 1 (of 2), row 1 quad 1: 12 slots of 16.
        let w = [1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 3, 0, 0];
        assert_eq!(work_density(&w, 2, 8), 12.0 / 16.0);
        let blocked = pruned(8, 64, 0.9, true, 3);
        let p = prepack(&blocked, 8, 64, Features::portable()).unwrap();
        assert!(p.blocked());
        let d = p.quad_density();
        assert!((work_density(&blocked, 8, 64) - d / QBLOCK_GAIN).abs() < 1e-12);
        let unblocked = pruned(8, 64, 0.9, false, 3);
        let p = prepack(&unblocked, 8, 64, Features::portable()).unwrap();
        assert!((work_density(&unblocked, 8, 64) - p.quad_density()).abs() < 1e-12);
        // Unpruned weights (trivially "blocked") are no blocks.
        assert_eq!(work_density(&[1; 32], 8, 4), 1.0);
    }

    #[test]
    fn row_cuts_balance_and_cover() {
        let w = pruned(37, 50, 0.7, false, 3);
        let p = prepack(&w, 37, 50, Features::portable()).unwrap();
        for parts in [1, 2, 3, 8, 100] {
            let c = row_cuts(&p.blocks, parts);
            assert_eq!(c[0], 0);
            assert_eq!(*c.last().unwrap(), p.blocks.len());
            assert!(c.windows(2).all(|w| w[0] < w[1]), "{parts}: {c:?}");
            assert!(c.len() - 1 <= parts.max(1));
        }
    }

    /// Every path this CPU runs, every sparsity and pattern, edge shapes,
    /// zero points, strides (C and its transpose), against i64 sums.
    #[test]
    fn qspmm_accumulators_match_the_i64_reference() {
        let mut ran = Vec::new();
        let mut seed = 100;
        for (name, f) in feature_sets() {
            ran.push(name);
            let cx = CpuCtx::single(f);
            for m in [1, 3, 5, 17] {
                for k in [1, 3, 5, 130] {
                    for sparsity in [0.0, 0.5, 0.8, 0.95, 1.0] {
                        for blocked in [false, true] {
                            seed += 1;
                            let mut w = pruned(m, k, sparsity, blocked, seed);
                            if m > 4 && k > 1 && sparsity < 1.0 {
                                // An all-zero row (it breaks the blocks).
                                w[4 * k..5 * k].fill(0);
                            }
                            let p = prepack(&w, m, k, f).unwrap();
                            // 30 and 49: a rest of 4 registers (8 and 16 lanes).
                            for n in [1, 15, 17, 30, 49, 100] {
                                let za = [0, 128, 255, 7][(seed as usize + n) % 4];
                                let ld = n + seed as usize % 3;
                                let xs = rand_u8(k * ld, seed + n as u64);
                                let x = QMatX {
                                    data: &xs,
                                    ld,
                                    zero_point: za,
                                };
                                let want = reference(&w, m, k, &x, n);
                                for strides in [(n + 2, 1), (1, m + 1)] {
                                    let got = run_i32(&p, x, n, strides, &cx);
                                    let what = format!(
                                        "{name} {m}x{k}x{n} s{sparsity} b{blocked} za{za} \
                                         {strides:?}"
                                    );
                                    check(&got, &want, m, n, strides, &what);
                                }
                            }
                        }
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        let (paths, file) = (
            [
                ("avx2", "AVX2"),
                ("avx-vnni", "AVX-VNNI"),
                ("avx512-vnni", "AVX512-VNNI"),
            ]
            .as_slice(),
            "qsparse_kernels.txt",
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (paths, file) = ([].as_slice(), "qsparse_kernels.other.txt");
        super::super::testing::report_kernel_paths("sparse int8", &ran, paths, file);
    }

    /// u8 255 against i8 −128 in every stored weight, over the deepest
    /// exact depth: the extremes of every product and of the sum.
    #[test]
    fn adversarial_extremes_are_bit_exact() {
        for (name, f) in feature_sets() {
            let cx = CpuCtx::single(f);
            for (wv, xv, za) in [(-128i8, 255u8, 0u8), (127, 255, 0), (-128, 0, 255)] {
                // A sparse pattern over 2 x 300 depths, 7 rows.
                let (m, k, n) = (7, 300, 33);
                let w: Vec<i8> = pruned(m, k, 0.7, false, 9)
                    .iter()
                    .map(|&v| if v != 0 { wv } else { 0 })
                    .collect();
                let xs = vec![xv; k * n];
                let x = QMatX {
                    data: &xs,
                    ld: n,
                    zero_point: za,
                };
                let p = prepack(&w, m, k, f).unwrap();
                let got = run_i32(&p, x, n, (n, 1), &cx);
                check(&got, &reference(&w, m, k, &x, n), m, n, (n, 1), name);
            }
            // One dense row over MAX_K: Σ = 65793 · 255 · (−128), a hair
            // above i32::MIN (and the same with a sparse row).
            let k = MAX_K;
            for w in [vec![-128i8; k], pruned(1, k, 0.9, false, 4)] {
                let n = 17;
                let xs = vec![255u8; k * n];
                let x = QMatX {
                    data: &xs,
                    ld: n,
                    zero_point: 0,
                };
                let p = prepack(&w, 1, k, f).unwrap();
                let got = run_i32(&p, x, n, (n, 1), &cx);
                let want = reference(&w, 1, k, &x, n);
                if w[1] == -128 {
                    assert_eq!(want[0], -(MAX_K as i64) * 255 * 128);
                }
                check(&got, &want, 1, n, (n, 1), name);
            }
        }
    }

    fn acts() -> Vec<Option<Activation>> {
        vec![
            None,
            Some(Activation::Relu),
            Some(Activation::Clip {
                min: -0.5,
                max: 2.0,
            }),
        ]
    }

    /// All three outputs equal `qgemm_wx`'s on the same dense weight, bit
    /// for bit (the same accumulators through the same epilogue), at C's
    /// strides and transposed, with bias, per-row scales and a residual.
    #[test]
    fn outputs_equal_the_dense_kernel() {
        let mut seed = 500;
        for (name, f) in feature_sets() {
            let cx = CpuCtx::single(f);
            for (m, k, n) in [(1, 5, 1), (5, 130, 17), (17, 40, 100), (24, 64, 70)] {
                for (sparsity, blocked) in [(0.5, false), (0.9, false), (0.8, true)] {
                    seed += 1;
                    let w = pruned(m, k, sparsity, blocked, seed);
                    let sp = prepack(&w, m, k, f).unwrap();
                    let dense = QPackedA::new(m, k, &w, f).unwrap();
                    let xs = rand_u8(k * n, seed + 1);
                    let x = QMatX {
                        data: &xs,
                        ld: n,
                        zero_point: (seed % 256) as u8,
                    };
                    let scales = rand_f32(m, seed + 2, 0.02);
                    let one_scale = [0.015f32];
                    let bias = rand_f32(m, seed + 3, 1.0);
                    let res = rand_f32(m * n, seed + 4, 1.0);
                    // The residual of the transposed C: res[j][i].
                    let res_t: Vec<f32> = (0..n * m).map(|a| res[(a % m) * n + a / m]).collect();
                    for (e, act) in acts().iter().enumerate() {
                        let what = format!("{name} {m}x{k}x{n} s{sparsity} b{blocked} act{e}");
                        let ep_c = QEpilogue {
                            a_scale: 0.03,
                            b_scales: if e == 1 { &one_scale } else { &scales },
                            bias: (e != 2).then_some(&bias[..]),
                            residual: (e != 1).then_some(&res[..]),
                            act: act.as_ref(),
                        };
                        let ep_t = QEpilogue {
                            residual: (e != 1).then_some(&res_t[..]),
                            ..ep_c
                        };
                        // f32.
                        let mut want = vec![0f32; m * n];
                        qgemm_wx(&dense, x, n, QOut::F32(&mut want, ep_c), n, &cx);
                        let mut got = vec![0f32; m * n];
                        qspmm_wx(&sp, x, n, QOut::F32(&mut got, ep_c), (n, 1), &cx);
                        let mut got_t = vec![0f32; m * n];
                        qspmm_wx(&sp, x, n, QOut::F32(&mut got_t, ep_t), (1, m), &cx);
                        for i in 0..m {
                            for j in 0..n {
                                let v = want[i * n + j].to_bits();
                                assert_eq!(got[i * n + j].to_bits(), v, "{what} f32 ({i}, {j})");
                                assert_eq!(got_t[j * m + i].to_bits(), v, "{what} f32ᵀ ({i}, {j})");
                            }
                        }
                        // u8.
                        let rq = QRequant {
                            scale: 0.05,
                            zero_point: 100,
                        };
                        let mut want = vec![0u8; m * n];
                        qgemm_wx(&dense, x, n, QOut::U8(&mut want, ep_c, rq), n, &cx);
                        let mut got = vec![0u8; m * n];
                        qspmm_wx(&sp, x, n, QOut::U8(&mut got, ep_c, rq), (n, 1), &cx);
                        let mut got_t = vec![0u8; m * n];
                        qspmm_wx(&sp, x, n, QOut::U8(&mut got_t, ep_t, rq), (1, m), &cx);
                        for i in 0..m {
                            for j in 0..n {
                                let v = want[i * n + j];
                                assert_eq!(got[i * n + j], v, "{what} u8 ({i}, {j})");
                                assert_eq!(got_t[j * m + i], v, "{what} u8ᵀ ({i}, {j})");
                            }
                        }
                    }
                    // i32.
                    let mut want = vec![0i32; m * n];
                    qgemm_wx(&dense, x, n, QOut::I32(&mut want), n, &cx);
                    let mut got = vec![0i32; m * n];
                    qspmm_wx(&sp, x, n, QOut::I32(&mut got), (n, 1), &cx);
                    assert_eq!(got, want, "{name} {m}x{k}x{n} i32");
                }
            }
        }
    }

    /// Large enough for the threads to split both rows and pixels: 1, 2
    /// and 3 threads give the same bits, and the reference.
    #[test]
    fn thread_splits_are_exact() {
        for (m, k, n, blocked) in [
            (70, 300, 333, false),
            (64, 200, 300, true),
            (1024, 256, 1, false),
        ] {
            let w = pruned(m, k, 0.8, blocked, 77);
            let xs = rand_u8(k * n, 78);
            let x = QMatX {
                data: &xs,
                ld: n,
                zero_point: 131,
            };
            let want = reference(&w, m, k, &x, n);
            for (name, f) in feature_sets() {
                let p = prepack(&w, m, k, f).unwrap();
                assert!(p.slots * QUAD * n >= PAR_MIN_MACS, "too small to split");
                let one = run_i32(&p, x, n, (n, 1), &CpuCtx::single(f));
                check(&one, &want, m, n, (n, 1), name);
                for threads in [2, 3] {
                    let cx = if threads == 2 {
                        two_threads(f)
                    } else {
                        CpuCtx {
                            features: f,
                            ..CpuCtx::new(3).unwrap()
                        }
                    };
                    assert_eq!(
                        run_i32(&p, x, n, (n, 1), &cx),
                        one,
                        "{name} {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_strides_are_refused() {
        let p = prepack(&[1; 8], 2, 4, Features::portable()).unwrap();
        let xs = [0u8; 12];
        let x = QMatX {
            data: &xs,
            ld: 3,
            zero_point: 0,
        };
        let mut c = [0i32; 16];
        qspmm_wx(
            &p,
            x,
            3,
            QOut::I32(&mut c),
            (2, 1),
            &CpuCtx::single(Features::portable()),
        );
    }

    #[test]
    #[should_panic(expected = "shorter")]
    fn a_short_output_is_refused() {
        let p = prepack(&[1; 8], 2, 4, Features::portable()).unwrap();
        let xs = [0u8; 12];
        let x = QMatX {
            data: &xs,
            ld: 3,
            zero_point: 0,
        };
        let mut c = [0i32; 5];
        qspmm_wx(
            &p,
            x,
            3,
            QOut::I32(&mut c),
            (3, 1),
            &CpuCtx::single(Features::portable()),
        );
    }

    /// The sparse int8 kernel against the dense one (`qgemm_wx` on the
    /// dense pack) on pruned weights: a 1x1 and a 3x3 (im2col) convolution
    /// and MatMuls of 128 and 1 rows (weights left, `n` = rows, C
    /// transposed): `cargo test --release --lib qsparse_speed -- --ignored
    /// --nocapture` (`SPARSE_THREADS`, default 1; `SPARSE_ROUNDS`, default
    /// 6). GOP/s counts the useful work, 2 · nonzeros · n.
    #[test]
    #[ignore]
    fn qsparse_speed() {
        const SPARSITIES: [f64; 5] = [0.5, 0.7, 0.8, 0.9, 0.95];
        let threads: usize = std::env::var("SPARSE_THREADS").map_or(1, |t| t.parse().unwrap());
        let rounds: usize = std::env::var("SPARSE_ROUNDS").map_or(6, |t| t.parse().unwrap());
        let cx = CpuCtx::new(threads).unwrap();
        println!("threads {threads}, {:?}", cx.features);
        // (name, m, k, n, C transposed)
        let shapes = [
            ("conv 256->256 1x1 28x28", 256, 256, 784, false),
            ("conv 128->128 3x3 28x28", 128, 1152, 784, false),
            ("matmul 128x768x768", 768, 768, 128, true),
            ("matmul 1x768x768", 768, 768, 1, true),
        ];
        for (name, m, k, n, trans) in shapes {
            let xs = rand_u8(k * n, 1);
            let x = QMatX {
                data: &xs,
                ld: n,
                zero_point: 128,
            };
            let scales = rand_f32(m, 2, 0.02);
            let bias = rand_f32(m, 3, 1.0);
            let ep = QEpilogue {
                a_scale: 0.03,
                b_scales: &scales,
                bias: Some(&bias),
                residual: None,
                act: None,
            };
            let strides = if trans { (1, m) } else { (n, 1) };
            for (sparsity, blocked) in SPARSITIES.iter().flat_map(|&s| [(s, false), (s, true)]) {
                let w = pruned(m, k, sparsity, blocked, 4);
                let dense = QPackedA::new(m, k, &w, cx.features).unwrap();
                let sp = prepack(&w, m, k, cx.features).unwrap();
                let mut y = vec![0f32; m * n];
                // Dense and sparse alternating, `rounds` times best of 4.
                let mut t = [f64::INFINITY; 2];
                for _ in 0..rounds {
                    for (v, t) in t.iter_mut().enumerate() {
                        for _ in 0..4 {
                            let t0 = std::time::Instant::now();
                            if v == 0 {
                                qgemm_wx(&dense, x, n, QOut::F32(&mut y, ep), n, &cx);
                            } else {
                                qspmm_wx(&sp, x, n, QOut::F32(&mut y, ep), strides, &cx);
                            }
                            *t = t.min(t0.elapsed().as_secs_f64());
                        }
                    }
                }
                let useful = 2.0 * (sp.nnz() * n) as f64;
                println!(
                    "int8 {name} sparsity {:.0}% {}: work {:.3}, dense {:.3} ms, sparse {:.3} ms \
                     ({:.1} GOP/s useful), {:.2}x",
                    sparsity * 100.0,
                    if blocked { "4x1" } else { "1x1" },
                    work_density(&w, m, k),
                    t[0] * 1e3,
                    t[1] * 1e3,
                    useful / t[1] / 1e9,
                    t[0] / t[1]
                );
            }
        }
    }
}

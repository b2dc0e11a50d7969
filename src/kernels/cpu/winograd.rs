//! 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).
//!
//! Each 2x2 block of outputs ("tile") of a channel is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ
//! d B)] A`, where `g` is the 3x3 kernel and `d` the 4x4 input patch the
//! tile reads: 16 multiplies per tile and channel pair instead of 36. Over
//! all channels the 16 element-wise products become 16 GEMMs,
//! `M_k[M, T] = U_k[M, C] · V_k[C, T]` (T tiles), which run on the packed
//! GEMM:
//!
//! * the weights are transformed once per plan (`U = G g Gᵀ` in f64,
//!   rounded once) and packed as 16 A operands ([`prepack`]);
//! * the input transform `V = Bᵀ d B` runs 8 tiles at a time along a tile
//!   row, from a per-channel copy of the plane whose rows are split into
//!   even and odd columns (so the 4 columns of 8 neighbouring tiles are 4
//!   contiguous runs), zero outside the input;
//! * the output transform `Aᵀ M A` adds the bias and residual and applies
//!   the activation on each finished plane.
//!
//! The transforms only add and subtract (exact up to one rounding each);
//! the result differs from direct convolution by the usual f32 rounding of
//! a differently ordered sum, bounded in the tests relative to `Σ|x||w|`.
//! It is used where it pays (see [`applies`]): ResNet-18's 56x56, 28x28
//! and 14x14 stages (1 thread on Zen 2: 51 -> 46.6 ms with the 14x14
//! stage, which the first cut left out), not the 7x7 one, where 16 tiles
//! per plane and weights 16/9 as large (streamed from memory) gain 1-3%.

use super::gemm::{gemm, pack_a, split_act, with_buf, ASrc, BSrc, Epilogue, PackedA};
use super::geometry::Window2d;
use super::ops;
use super::{CpuCtx, Features};
use crate::ir::Activation;

/// Values per tile transform (4x4).
const K16: usize = 16;
/// Tiles transformed together (one vector of 8 lanes).
const V8: usize = 8;

/// Output planes below this many pixels keep the direct paths.
const MIN_PLANE: usize = 14 * 14;

/// Whether a 3x3 stride-1 undilated convolution with `group` groups, `c`
/// input and `m` output channels and output planes of `out_plane` pixels
/// runs through Winograd F(2x2, 3x3).
pub(crate) fn applies(group: usize, c: usize, m: usize, out_plane: usize) -> bool {
    group == 1 && c >= 8 && m >= 8 && out_plane >= MIN_PLANE
}

/// The 16 transformed weight matrices `U_k[M, C]`, packed as GEMM A
/// operands, from weights `[M, C, 3, 3]`.
pub(crate) fn prepack(w: &[f32], m: usize, c: usize, features: Features) -> Vec<PackedA> {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0.0f32; K16 * m * c];
    for (mc, g) in w.chunks_exact(9).enumerate() {
        // G g Gᵀ, element (i, j).
        for i in 0..4 {
            for j in 0..4 {
                let mut s = 0.0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        s += G[i][a] * g[a * 3 + b] as f64 * G[j][b];
                    }
                }
                u[(i * 4 + j) * m * c + mc] = s as f32;
            }
        }
    }
    u.chunks_exact(m * c)
        .map(|uk| pack_a(m, c, uk, c, false, features))
        .collect()
}

/// Tile counts of an output plane.
fn tiles_of(win: &Window2d) -> (usize, usize) {
    (win.oh.div_ceil(2), win.ow.div_ceil(2))
}

thread_local! {
    /// One part's transformed input `[16, C, Tp]` and products `[16, M, Tp]`,
    /// reused.
    static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// One channel's even/odd split copy, reused per thread.
    static SPLIT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most bytes of one part's transformed input and products (`(C + M) × 16`
/// floats a tile), so that the 16 products read and write them in L2.
const PART_BYTES: usize = 4 << 20;

/// The convolution of batch item planes `x` (`[C, H, W]` each, `n` items)
/// into `y` (`[M, OH, OW]` each) with the transformed weights `u`, then
/// `+ bias[m] + residual`, then `act`.
///
/// Each item's tiles go in parts of consecutive tiles (row-major), each
/// part start to finish on one thread: input transform, the 16 products
/// (single-threaded), output transform. Parts are sized to stay in L2
/// ([`PART_BYTES`]) and, on several threads, numbered so that every thread
/// gets as many: one fork and join per convolution, where splitting each of
/// the 16 products and both transforms over the threads cost 18 per batch
/// item and kept V and the products (6.4 MB for ResNet's 56x56 stage) out
/// of cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    win: &Window2d,
    n: usize,
    c: usize,
    u: &[PackedA],
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    run_parts(win, n, c, u, x, bias, residual, act, y, cx, PART_BYTES)
}

/// [`run`] with parts of at most `part_bytes` (tests use small ones).
#[allow(clippy::too_many_arguments)]
fn run_parts(
    win: &Window2d,
    n: usize,
    c: usize,
    u: &[PackedA],
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
    part_bytes: usize,
) {
    let m = u.first().map_or(0, PackedA::m);
    let (ty, tx) = tiles_of(win);
    let t = ty * tx;
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    assert!(
        u.len() == K16
            && u.iter().all(|uk| uk.m() == m && uk.k() == c)
            && x.len() >= n * c * in_plane
            && y.len() >= n * m * out_plane
            && bias.is_none_or(|b| b.len() >= m)
            && residual.is_none_or(|r| r.len() >= n * m * out_plane),
        "winograd: operands do not fit {n} items of {c} -> {m} channels"
    );
    if n == 0 || m == 0 || t == 0 {
        return;
    }
    let parts = parts_per_item(n, (c + m) * K16 * 4, t, cx.threads, part_bytes);
    let single = CpuCtx::single(cx.features);
    let (clamp, late_act) = split_act(act);
    let out = OutPtr(y.as_mut_ptr());
    let one = |w: usize| {
        let (ni, p) = (w / parts, w % parts);
        let part = Part {
            win,
            c,
            m,
            tiles: p * t / parts..(p + 1) * t / parts,
            avx: cx.features.avx2_fma,
        };
        let xn = &x[ni * c * in_plane..(ni + 1) * c * in_plane];
        let rn = residual.map(|r| &r[ni * m * out_plane..(ni + 1) * m * out_plane]);
        let ep = PartEpilogue {
            bias,
            residual: rn,
            clamp,
            late_act,
        };
        // SAFETY: `y` holds item ni's planes (asserted above) and stays
        // borrowed until every part has ended; parts write only the outputs
        // of their own tiles, and tiles do not share outputs.
        unsafe { part.run(u, xn, &ep, out.at(ni * m * out_plane), &single) };
    };
    let work = n * parts;
    cx.for_each(work, one);
}

/// Parts per batch item of `t` tiles at `tile_bytes` each: enough to stay
/// within `part_bytes` each; on several threads at least one per thread,
/// and a number that gives every thread as many (where the tiles allow).
fn parts_per_item(
    n: usize,
    tile_bytes: usize,
    t: usize,
    threads: usize,
    part_bytes: usize,
) -> usize {
    let mut p = (tile_bytes * t).div_ceil(part_bytes.max(1)).max(1);
    if threads > 1 {
        p = p.max(threads.div_ceil(n));
        while !(n * p).is_multiple_of(threads) && p < t {
            p += 1;
        }
    }
    p.min(t)
}

/// The batch item's output planes, shared by the parts of one convolution.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the parts write disjoint outputs of a buffer that outlives them
// (`run_parts` holds it until they end).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address `offset` floats in (the caller keeps it inside the
    /// buffer).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// What the output transform adds to the products: bias, residual (the
/// batch item's planes), then clamp and any other activation.
struct PartEpilogue<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
    late_act: Option<&'a Activation>,
}

/// A run of consecutive tiles of one batch item's planes.
struct Part<'a> {
    win: &'a Window2d,
    c: usize,
    m: usize,
    tiles: std::ops::Range<usize>,
    avx: bool,
}

impl Part<'_> {
    /// Transforms the part's input tiles of every channel of `x`, multiplies
    /// by `u` and writes the part's outputs of every output plane at `y`.
    ///
    /// # Safety
    /// `y` is valid for writes of `M` output planes, and no one else
    /// accesses this part's outputs while it runs.
    unsafe fn run(
        &self,
        u: &[PackedA],
        x: &[f32],
        ep: &PartEpilogue,
        y: *mut f32,
        single: &CpuCtx,
    ) {
        let (c, m, tp) = (self.c, self.m, self.tiles.len());
        let (in_plane, out_plane) = (self.win.in_plane(), self.win.out_plane());
        BUFS.with(|cell| {
            let mut fresh = (Vec::new(), Vec::new());
            let mut guard = cell.try_borrow_mut();
            let (v, prod) = match guard.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut fresh,
            };
            v.resize(c * K16 * tp, 0.0);
            prod.resize(m * K16 * tp, 0.0);
            with_buf(&SPLIT, |split| {
                for ch in 0..c {
                    let xc = &x[ch * in_plane..(ch + 1) * in_plane];
                    let rows = Rows {
                        stride: c * tp,
                        first: ch * tp,
                    };
                    input_tiles(self.avx, self.win, xc, split, v, rows, self.tiles.clone());
                }
            });
            for (k, uk) in u.iter().enumerate() {
                let b = BSrc::Raw {
                    b: &v[k * c * tp..(k + 1) * c * tp],
                    ldb: tp,
                    trans: false,
                };
                let pk = &mut prod[k * m * tp..(k + 1) * m * tp];
                gemm(
                    m,
                    tp,
                    c,
                    1.0,
                    ASrc::Packed(uk),
                    b,
                    pk,
                    tp,
                    &Epilogue::default(),
                    single,
                );
            }
            for mi in 0..m {
                let rows = Rows {
                    stride: m * tp,
                    first: mi * tp,
                };
                let plane = OutPlane {
                    // SAFETY: plane mi of the M the caller vouches for.
                    y: unsafe { y.add(mi * out_plane) },
                    bias: ep.bias.map_or(0.0, |b| b[mi]),
                    residual: ep
                        .residual
                        .map(|r| &r[mi * out_plane..(mi + 1) * out_plane]),
                    clamp: ep.clamp,
                    late_act: ep.late_act,
                };
                // SAFETY: the caller's contract, for this plane.
                unsafe { output_tiles(self.avx, self.win, prod, rows, &plane, self.tiles.clone()) };
            }
        })
    }
}

/// Where one channel's 16 rows (one per transform element) lie in a `[16,
/// C, Tp]` buffer: row k at `k * stride + first`.
#[derive(Clone, Copy)]
struct Rows {
    stride: usize,
    first: usize,
}

ops::multiversion!(
    /// `V = Bᵀ d B` for tiles `tiles` of channel plane `x` into the
    /// channel's rows of `v` (at `rows`, tile `tiles.start` first), through
    /// `split` (the plane's rows split into even and odd columns, zero
    /// outside the input).
    fn input_tiles(
        win: &Window2d,
        x: &[f32],
        split: &mut Vec<f32>,
        v: &mut [f32],
        rows: Rows,
        tiles: std::ops::Range<usize>,
    ) => input_tiles_impl
);

/// Lane-wise `a + b` and `a - b` on 8 tiles (plain arrays and loops:
/// vector ops once inlined into the AVX2 build; `array::from_fn` would
/// stay an out-of-line call without AVX).
#[inline(always)]
fn add(a: [f32; V8], b: [f32; V8]) -> [f32; V8] {
    let mut r = a;
    for l in 0..V8 {
        r[l] += b[l];
    }
    r
}

#[inline(always)]
fn sub(a: [f32; V8], b: [f32; V8]) -> [f32; V8] {
    let mut r = a;
    for l in 0..V8 {
        r[l] -= b[l];
    }
    r
}

/// `x Bᵀ`-style combination of four values: `(x0 - x2, x1 + x2, x2 - x1,
/// x1 - x3)`, lane-wise (rows of `Bᵀ d`, then columns of `(Bᵀ d) B`).
#[inline(always)]
fn bt(x: [[f32; V8]; 4]) -> [[f32; V8]; 4] {
    [
        sub(x[0], x[2]),
        add(x[1], x[2]),
        sub(x[2], x[1]),
        sub(x[1], x[3]),
    ]
}

/// 8 floats of `s` from `at`. (Element loops here and below: the
/// compiler turns them into vector moves, where a slice copy could stay a
/// `memcpy` call.)
#[inline(always)]
#[allow(clippy::manual_memcpy)]
fn load8(s: &[f32], at: usize) -> [f32; V8] {
    let src = &s[at..at + V8];
    let mut r = [0.0; V8];
    for l in 0..V8 {
        r[l] = src[l];
    }
    r
}

#[inline(always)]
#[allow(clippy::manual_memcpy)]
fn input_tiles_impl(
    win: &Window2d,
    x: &[f32],
    split: &mut Vec<f32>,
    v: &mut [f32],
    rows: Rows,
    tiles: std::ops::Range<usize>,
) {
    let tx = tiles_of(win).1;
    if tiles.is_empty() {
        return;
    }
    // Tile rows ya..=yb read padded rows 2ya..2yb+4 (input row r - pad_top);
    // per row the even and the odd padded columns, `half` each (room for a
    // last full vector from any start).
    let (ya, yb) = (tiles.start / tx, (tiles.end - 1) / tx);
    let n_rows = 2 * (yb - ya) + 4;
    let half = tx + V8 + 1;
    split.clear();
    split.resize(n_rows * 2 * half, 0.0);
    // Input column iw is padded column iw + pad_left: with an even pad the
    // even input columns are the even padded ones.
    let (pl, shift) = (win.pad_left, win.pad_left % 2);
    for r in 0..n_rows {
        let Some(ih) = (2 * ya + r)
            .checked_sub(win.pad_top)
            .filter(|&ih| ih < win.h)
        else {
            continue;
        };
        let src = &x[ih * win.w..(ih + 1) * win.w];
        let (even, odd) = split[r * 2 * half..(r + 1) * 2 * half].split_at_mut(half);
        // Input columns 2i + a land in phase (a + pl) % 2 at (2i + a + pl) / 2.
        let (to_a, to_b) = if shift == 0 { (even, odd) } else { (odd, even) };
        let (n_a, n_b) = (win.w.div_ceil(2), win.w / 2);
        let (a0, b0) = (pl / 2, pl.div_ceil(2));
        let fit = |start: usize, n: usize| n.min(half.saturating_sub(start));
        let (n_a, n_b) = (fit(a0, n_a), fit(b0, n_b));
        let pairs = n_a.min(n_b);
        let (to_a, to_b) = (&mut to_a[a0..a0 + n_a], &mut to_b[b0..b0 + n_b]);
        // Pairs of columns in one pass (a vector de-interleave), then the
        // odd one out.
        for ((pair, a), b) in src
            .chunks_exact(2)
            .zip(&mut *to_a)
            .zip(&mut *to_b)
            .take(pairs)
        {
            *a = pair[0];
            *b = pair[1];
        }
        if n_a > pairs {
            to_a[pairs] = src[2 * pairs];
        }
    }
    for y in ya..=yb {
        let xs = if y == ya { tiles.start % tx } else { 0 };
        let xe = if y == yb {
            (tiles.end - 1) % tx + 1
        } else {
            tx
        };
        for x0 in (xs..xe).step_by(V8) {
            // d[i][j] for 8 tiles: padded row 2y + i, columns 2x + j.
            let mut d = [[[0.0f32; V8]; 4]; 4];
            for (i, di) in d.iter_mut().enumerate() {
                let r = (2 * (y - ya) + i) * 2 * half;
                *di = [
                    load8(split, r + x0),
                    load8(split, r + half + x0),
                    load8(split, r + x0 + 1),
                    load8(split, r + half + x0 + 1),
                ];
            }
            // Bᵀ d by rows (for each column j), then (Bᵀ d) B by columns.
            let mut cols = [[[0.0f32; V8]; 4]; 4];
            for (j, cj) in cols.iter_mut().enumerate() {
                *cj = bt([d[0][j], d[1][j], d[2][j], d[3][j]]);
            }
            let n = (xe - x0).min(V8);
            let at = rows.first + y * tx + x0 - tiles.start;
            // Row i of (Bᵀ d) B: element i of each column's combination.
            let col_i = |i: usize| bt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
            for (i, vi) in (0..4).map(col_i).enumerate() {
                for (j, vals) in vi.iter().enumerate() {
                    let o = (i * 4 + j) * rows.stride + at;
                    if n == V8 {
                        // A fixed-size copy: one vector store, not a call.
                        let dst = &mut v[o..o + V8];
                        for l in 0..V8 {
                            dst[l] = vals[l];
                        }
                    } else {
                        v[o..o + n].copy_from_slice(&vals[..n]);
                    }
                }
            }
        }
    }
}

/// One output plane and what its outputs get added and applied.
struct OutPlane<'a> {
    y: *mut f32,
    bias: f32,
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
    late_act: Option<&'a Activation>,
}

/// `Aᵀ M A + bias + residual`, clamped and activated, for tiles `tiles` of
/// one output plane: the tiles' 16 products are the rows of `pm` at
/// `rows`, tile `tiles.start` first.
///
/// # Safety
/// `plane.y` is valid for writes of the plane's `OH × OW` floats, and no
/// one else accesses the outputs of `tiles` while this runs.
unsafe fn output_tiles(
    avx: bool,
    win: &Window2d,
    pm: &[f32],
    rows: Rows,
    plane: &OutPlane,
    tiles: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast(
            win: &Window2d,
            pm: &[f32],
            rows: Rows,
            plane: &OutPlane,
            tiles: std::ops::Range<usize>,
        ) {
            // SAFETY: the caller's contract.
            unsafe { output_tiles_impl(win, pm, rows, plane, tiles, true) }
        }
        if avx && ops::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above);
            // the rest is the caller's contract.
            return unsafe { fast(win, pm, rows, plane, tiles) };
        }
    }
    // SAFETY: the caller's contract. (`avx` is false here unless the CPU
    // lacks what the features claimed; the activation checks again.)
    unsafe { output_tiles_impl(win, pm, rows, plane, tiles, avx) }
}

/// [`output_tiles`], inlined into each build.
///
/// # Safety
/// As [`output_tiles`].
#[inline(always)]
#[allow(clippy::manual_memcpy)]
unsafe fn output_tiles_impl(
    win: &Window2d,
    pm: &[f32],
    rows: Rows,
    plane: &OutPlane,
    tiles: std::ops::Range<usize>,
    avx: bool,
) {
    let tx = tiles_of(win).1;
    if tiles.is_empty() {
        return;
    }
    let (lo, hi) = plane.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (ya, yb) = (tiles.start / tx, (tiles.end - 1) / tx);
    for ty0 in ya..=yb {
        let xs = if ty0 == ya { tiles.start % tx } else { 0 };
        let xe = if ty0 == yb {
            (tiles.end - 1) % tx + 1
        } else {
            tx
        };
        for x0 in (xs..xe).step_by(V8) {
            let n = (xe - x0).min(V8);
            let at = rows.first + ty0 * tx + x0 - tiles.start;
            let mut mk = [[0.0f32; V8]; K16];
            for (k, row) in mk.iter_mut().enumerate() {
                let o = k * rows.stride + at;
                if n == V8 {
                    *row = load8(pm, o);
                } else {
                    row[..n].copy_from_slice(&pm[o..o + n]);
                }
            }
            // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] on rows, then columns.
            let mut u = [[[0.0f32; V8]; 4]; 2];
            for j in 0..4 {
                u[0][j] = add(add(mk[j], mk[4 + j]), mk[8 + j]);
                u[1][j] = sub(sub(mk[4 + j], mk[8 + j]), mk[12 + j]);
            }
            for (r, u) in u.iter().enumerate() {
                let oh = 2 * ty0 + r;
                if oh >= win.oh {
                    break;
                }
                let y0 = add(add(u[0], u[1]), u[2]);
                let y1 = sub(sub(u[1], u[2]), u[3]);
                // Columns 2x and 2x + 1 of the 8 tiles, interleaved.
                let mut vals = [0.0f32; 2 * V8];
                for l in 0..V8 {
                    vals[2 * l] = y0[l];
                    vals[2 * l + 1] = y1[l];
                }
                let c0 = 2 * x0;
                let cnt = (win.ow - c0).min(2 * n);
                let base = oh * win.ow + c0;
                // + bias + residual, clamp: fixed-size loops (vectors) for
                // a whole run of 16 outputs.
                let full = cnt == 2 * V8;
                for val in vals.iter_mut() {
                    *val += plane.bias;
                }
                if let Some(res) = plane.residual {
                    if full {
                        let r = &res[base..base + 2 * V8];
                        for l in 0..2 * V8 {
                            vals[l] += r[l];
                        }
                    } else {
                        for (val, &r) in vals.iter_mut().zip(&res[base..base + cnt]) {
                            *val += r;
                        }
                    }
                }
                if plane.clamp.is_some() {
                    for val in vals.iter_mut() {
                        *val = val.max(lo).min(hi);
                    }
                }
                debug_assert!(base + cnt <= win.out_plane());
                // SAFETY: outputs base..base + cnt of the plane (inside it:
                // row oh < OH, columns c0..c0 + cnt <= OW) belong to these
                // tiles, which the caller gives to this call alone.
                let out = unsafe { std::slice::from_raw_parts_mut(plane.y.add(base), cnt) };
                if full {
                    for l in 0..2 * V8 {
                        out[l] = vals[l];
                    }
                } else {
                    out.copy_from_slice(&vals[..cnt]);
                }
            }
        }
    }
    // Any other activation over the finished outputs, one output row piece
    // at a time (out of the loop above, which keeps its values in vector
    // registers).
    if let Some(a) = plane.late_act {
        for ty0 in ya..=yb {
            let xs = if ty0 == ya { tiles.start % tx } else { 0 };
            let xe = if ty0 == yb {
                (tiles.end - 1) % tx + 1
            } else {
                tx
            };
            let (c0, c1) = (2 * xs, (2 * xe).min(win.ow));
            for oh in (2 * ty0..2 * ty0 + 2).take_while(|&oh| oh < win.oh) {
                // SAFETY: as above, the outputs of these tiles.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(plane.y.add(oh * win.ow + c0), c1 - c0)
                };
                ops::activation(a, out, avx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::random;

    fn window(h: usize, w: usize, pads: [usize; 4]) -> Window2d {
        let [pt, pl, pb, pr] = pads;
        Window2d {
            h,
            w,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pad_top: pt,
            pad_left: pl,
            pad_bottom: pb,
            pad_right: pr,
            oh: h + pt + pb - 2,
            ow: w + pl + pr - 2,
        }
    }

    /// Runs `run` on a random case and checks every output against the
    /// reference convolution within f32 rounding of its magnitude
    /// (`Σ|x||w| + |b|`, from the reference on absolute values); returns
    /// the outputs.
    #[allow(clippy::too_many_arguments)]
    fn check(
        n: usize,
        c: usize,
        m: usize,
        hw: [usize; 2],
        pads: [usize; 4],
        residual: bool,
        act: Option<Activation>,
        cx: &CpuCtx,
        part_bytes: usize,
    ) -> Vec<f32> {
        use crate::ir::ops::eval;
        use crate::ir::{ConvAttrs, Op, Tensor};
        let win = window(hw[0], hw[1], pads);
        let seed = (n * 1000 + c * 100 + m * 10 + hw[0]) as u64;
        let x = random(&[n, c, hw[0], hw[1]], seed, 1.0);
        let w = random(&[m, c, 3, 3], seed + 1, 1.0);
        let b = random(&[m], seed + 2, 1.0);
        let r = random(&[n, m, win.oh, win.ow], seed + 3, 1.0);
        let attrs = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![pads[0], pads[1], pads[2], pads[3]],
            auto_pad: crate::ir::AutoPad::NotSet,
            group: 1,
        };
        let op = Op::FusedConv {
            conv: attrs.clone(),
            act: act.clone(),
        };
        let ins = [Some(&x), Some(&w), Some(&b), residual.then_some(&r)];
        let want = eval(&op, &ins, 1).unwrap().remove(0);
        let abs = |t: &Tensor| {
            let v: Vec<f32> = t.as_f32().unwrap().iter().map(|v| v.abs()).collect();
            Tensor::from_f32(t.shape().to_vec(), v).unwrap()
        };
        let (xa, wa, ba) = (abs(&x), abs(&w), abs(&b));
        let plain = Op::Conv(attrs);
        let bound = eval(&plain, &[Some(&xa), Some(&wa), Some(&ba)], 1)
            .unwrap()
            .remove(0);
        let u = prepack(w.as_f32().unwrap(), m, c, cx.features);
        let mut got = vec![f32::NAN; want.numel()];
        let res = residual.then(|| r.as_f32().unwrap());
        let bias = Some(b.as_f32().unwrap());
        run_parts(
            &win,
            n,
            c,
            &u,
            x.as_f32().unwrap(),
            bias,
            res,
            act.as_ref(),
            &mut got,
            cx,
            part_bytes,
        );
        let (want, bound) = (want.as_f32().unwrap(), bound.as_f32().unwrap());
        for (i, ((&g, &w), &bd)) in got.iter().zip(want).zip(bound).enumerate() {
            // Residual and activation add at most one more rounding.
            let tol = 1e-5 * (bd + 1.0);
            assert!(
                (g - w).abs() <= tol,
                "{n}x{c}x{hw:?} -> {m}, pads {pads:?}, at {i}: {g} vs {w}"
            );
        }
        got
    }

    #[test]
    fn matches_the_reference_on_odd_shapes_pads_and_epilogues() {
        let relu = Some(Activation::Relu);
        let clip = Some(Activation::Clip {
            min: -0.5,
            max: 0.5,
        });
        let sig = Some(Activation::Sigmoid);
        for (name, f) in [
            ("portable", Features::portable()),
            ("detected", Features::detect()),
        ] {
            let one = CpuCtx::single(f);
            let mut two = CpuCtx::new(2).unwrap();
            two.features = f;
            for (n, c, m, hw, pads, residual, act) in [
                (1, 8, 8, [6, 6], [1, 1, 1, 1], false, None),
                // Odd output sizes (partial tiles), more than 8 tiles a row.
                (2, 9, 13, [21, 19], [1, 1, 1, 1], true, relu.clone()),
                (1, 3, 5, [7, 30], [0, 2, 1, 0], false, clip.clone()),
                (1, 16, 8, [12, 11], [2, 0, 0, 2], true, sig.clone()),
                // No padding, a 3x3 input: one output.
                (1, 4, 4, [3, 3], [0, 0, 0, 0], false, None),
            ] {
                let a = check(n, c, m, hw, pads, residual, act.clone(), &one, PART_BYTES);
                let b = check(n, c, m, hw, pads, residual, act.clone(), &two, PART_BYTES);
                assert_eq!(a, b, "{name}: 1 vs 2 threads");
                // Parts of a few tiles each, starting and ending inside
                // tile rows and inside runs of 8 tiles.
                for part_bytes in [1, 5 * (c + m) * K16 * 4] {
                    let p = check(n, c, m, hw, pads, residual, act.clone(), &two, part_bytes);
                    assert_eq!(a, p, "{name}: whole planes vs parts of {part_bytes} bytes");
                }
            }
        }
    }

    #[test]
    fn parts_cover_every_tile_once_and_spread_evenly() {
        // 56x56 outputs (784 tiles) of 64 -> 64 channels: 6.4 MB in 4 MB
        // parts; on 2 threads a number that splits evenly; never more
        // parts than tiles.
        let tile = 128 * K16 * 4;
        assert_eq!(parts_per_item(1, tile, 784, 1, PART_BYTES), 2);
        assert_eq!(parts_per_item(1, tile, 196, 1, PART_BYTES), 1);
        assert_eq!(parts_per_item(1, tile, 196, 2, PART_BYTES), 2);
        assert_eq!(parts_per_item(8, tile, 196, 2, PART_BYTES), 1);
        assert_eq!(parts_per_item(3, tile, 196, 2, PART_BYTES), 2);
        assert_eq!(parts_per_item(3, tile, 4, 2, PART_BYTES), 2);
        assert_eq!(parts_per_item(1, tile, 1, 2, PART_BYTES), 1);
        assert_eq!(parts_per_item(1, tile, 49, 4, 1 << 30), 4);
    }

    #[test]
    fn convolutions_that_qualify_take_it_through_prepack() {
        use crate::ir::{ConvAttrs, Op};
        use crate::kernels::cpu::{conv, Prepacked, View, ViewMut};
        // 28x28 outputs, 8 channels: Winograd; a stride, a group, too few
        // channels or a plane under 14x14: not.
        assert!(applies(1, 8, 8, 196) && applies(1, 8, 8, 784));
        assert!(!applies(1, 8, 8, 195) && !applies(2, 8, 8, 784) && !applies(1, 4, 8, 784));
        let attrs = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1; 4],
            auto_pad: crate::ir::AutoPad::NotSet,
            group: 1,
        };
        let op = Op::Conv(attrs.clone());
        let x = random(&[1, 8, 28, 28], 5, 1.0);
        let w = random(&[8, 8, 3, 3], 6, 1.0);
        let want = crate::ir::ops::eval(&op, &[Some(&x), Some(&w)], 1)
            .unwrap()
            .remove(0);
        let cx = CpuCtx::single(Features::detect());
        let wv = View {
            shape: w.shape(),
            data: w.as_f32().unwrap(),
        };
        let packed = conv::prepack(&op, &[None, Some(wv)], want.shape(), &cx).unwrap();
        assert!(matches!(packed, Prepacked::ConvWinograd(_)));
        let xv = View {
            shape: x.shape(),
            data: x.as_f32().unwrap(),
        };
        let mut got = vec![f32::NAN; want.numel()];
        let mut outs = [ViewMut {
            shape: want.shape(),
            data: &mut got,
        }];
        assert!(
            conv::run_packed(&op, &[Some(xv), Some(wv)], &mut outs, Some(&packed), &cx).unwrap()
        );
        for (g, w) in got.iter().zip(want.as_f32().unwrap()) {
            assert!((g - w).abs() <= 1e-4, "{g} vs {w}");
        }
        // Weights packed for another shape (16 input channels here) are
        // ignored, not trusted: the result is still the convolution.
        let x16 = random(&[1, 16, 28, 28], 7, 1.0);
        let w16 = random(&[8, 16, 3, 3], 8, 1.0);
        let want16 = crate::ir::ops::eval(&op, &[Some(&x16), Some(&w16)], 1)
            .unwrap()
            .remove(0);
        let views16 = [
            Some(View {
                shape: x16.shape(),
                data: x16.as_f32().unwrap(),
            }),
            Some(View {
                shape: w16.shape(),
                data: w16.as_f32().unwrap(),
            }),
        ];
        let mut got16 = vec![f32::NAN; want16.numel()];
        let mut outs = [ViewMut {
            shape: want16.shape(),
            data: &mut got16,
        }];
        assert!(conv::run_packed(&op, &views16, &mut outs, Some(&packed), &cx).unwrap());
        for (g, w) in got16.iter().zip(want16.as_f32().unwrap()) {
            assert!((g - w).abs() <= 1e-4, "{g} vs {w}");
        }
        let strided = Op::Conv(ConvAttrs {
            strides: vec![2, 2],
            ..attrs
        });
        let small = [1, 8, 14, 14];
        assert!(!matches!(
            conv::prepack(&strided, &[None, Some(wv)], &small, &cx),
            Some(Prepacked::ConvWinograd(_))
        ));
    }

    /// Phases of ResNet's stages, one thread:
    /// `cargo test --release --lib winograd_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn winograd_speed() {
        let cx = CpuCtx::single(Features::detect());
        let avx = cx.features.avx2_fma;
        for (c, hw) in [(64, 56), (128, 28), (256, 14)] {
            let win = window(hw, hw, [1; 4]);
            let x = random(&[c, hw, hw], 1, 1.0).to_f32_vec();
            let w = random(&[c, c, 3, 3], 2, 1.0).to_f32_vec();
            let u = prepack(&w, c, c, cx.features);
            let (ty, tx) = tiles_of(&win);
            let t = ty * tx;
            let mut v = vec![0.0; c * K16 * t];
            let mut prod = vec![0.0; c * K16 * t];
            let mut y = vec![0.0; c * win.out_plane()];
            let mut split = Vec::new();
            let best = |f: &mut dyn FnMut()| {
                (0..20)
                    .map(|_| {
                        let t0 = std::time::Instant::now();
                        f();
                        t0.elapsed().as_secs_f64() * 1e3
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let plane = win.in_plane();
            let ti = best(&mut || {
                for ch in 0..c {
                    let xc = &x[ch * plane..(ch + 1) * plane];
                    let rows = Rows {
                        stride: c * t,
                        first: ch * t,
                    };
                    input_tiles(avx, &win, xc, &mut split, &mut v, rows, 0..t);
                }
            });
            let tg = best(&mut || {
                for (k, uk) in u.iter().enumerate() {
                    let b = BSrc::Raw {
                        b: &v[k * c * t..(k + 1) * c * t],
                        ldb: t,
                        trans: false,
                    };
                    let ep = Epilogue::default();
                    let pk = &mut prod[k * c * t..(k + 1) * c * t];
                    gemm(c, t, c, 1.0, ASrc::Packed(uk), b, pk, t, &ep, &cx);
                }
            });
            let out_plane = win.out_plane();
            let to = best(&mut || {
                for (mi, p) in y.chunks_mut(out_plane).enumerate() {
                    let rows = Rows {
                        stride: c * t,
                        first: mi * t,
                    };
                    let plane = OutPlane {
                        y: p.as_mut_ptr(),
                        bias: 0.0,
                        residual: None,
                        clamp: None,
                        late_act: None,
                    };
                    // SAFETY: one whole plane at a time, borrowed mutably.
                    unsafe { output_tiles(avx, &win, &prod, rows, &plane, 0..t) };
                }
            });
            let whole = best(&mut || {
                let mut out = vec![0.0; c * out_plane];
                run(&win, 1, c, &u, &x, None, None, None, &mut out, &cx);
            });
            println!(
                "{c}x{hw}x{hw}: input {ti:.3} ms, 16 GEMMs {tg:.3} ms, output {to:.3} ms \
                 (whole planes); run in parts {whole:.3} ms"
            );
        }
    }
}

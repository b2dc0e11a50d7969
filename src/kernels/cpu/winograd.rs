//! 3x3 stride-1 convolution by Winograd's minimal filtering F(m×m, 3×3),
//! with output tiles of m = 2 or 4 ([`Tile`]).
//!
//! Each m×m block of outputs ("tile") of a channel is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ
//! d B)] A`, where `g` is the 3x3 kernel and `d` the (m+2)² input patch the
//! tile reads: (m+2)² multiplies per tile and channel pair instead of 9m²
//! (F(2x2): 16 for 36, F(4x4): 36 for 144). Over all channels the
//! element-wise products become (m+2)² GEMMs, `M_k[M, T] = U_k[M, C] ·
//! V_k[C, T]` (T tiles), which run on the packed GEMM:
//!
//! * the weights are transformed once per plan (`U = G g Gᵀ` in f64,
//!   rounded once) and packed as (m+2)² A operands (`prepack`);
//! * the input transform `V = Bᵀ d B` runs 8 tiles at a time along a tile
//!   row, from a per-channel copy of the plane whose rows are split into m
//!   phases (column mod m), so that each of the m+2 columns of 8
//!   neighbouring tiles is one contiguous run, zero outside the input;
//! * the output transform `Aᵀ M A` adds the bias and residual and applies
//!   the activation on each finished plane.
//!
//! F(2x2)'s transforms only add and subtract (exact up to one rounding
//! each); F(4x4)'s scale by 2, 4, 5 and 8, and its weight transform by
//! 1/6 and 1/24, so its rounding error is larger (bounded in the tests
//! relative to `Σ|x||w|`, as F(2x2)'s). The default algorithm uses F(2x2)
//! where it pays (see `applies`): ResNet-18's 56x56, 28x28 and 14x14
//! stages (1 thread on Zen 2: 51 -> 46.6 ms with the 14x14 stage, which
//! the first cut left out), not the 7x7 one, where 16 tiles per plane and
//! weights 16/9 as large (streamed from memory) gain 1-3%. F(4x4) is a
//! candidate the tuner measures (`conv=winograd4`).

use super::gemm::{gemm, pack_a, split_act, with_buf, ASrc, BSrc, Epilogue, PackedA};
use super::geometry::Window2d;
use super::ops;
use super::{CpuCtx, Features, OutPtr};
use crate::ir::Activation;

/// Tiles transformed together (one vector of 8 lanes).
const V8: usize = 8;
/// Edge of the largest input patch (F(4x4)'s 6x6).
const MAX_A: usize = 6;

/// Output planes below this many pixels keep the direct paths.
const MIN_PLANE: usize = 14 * 14;

/// The output tile of a Winograd variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// F(2x2, 3x3): 16 products per 4 outputs.
    F2,
    /// F(4x4, 3x3): 36 products per 16 outputs.
    F4,
}

impl Tile {
    /// Outputs along a tile's edge.
    pub const fn edge(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Transform elements ((edge + 2)²): the number of GEMMs.
    pub const fn elems(self) -> usize {
        (self.edge() + 2) * (self.edge() + 2)
    }
}

/// A 3x3 convolution's weights transformed for one Winograd variant:
/// [`Tile::elems`] packed A operands `[M, C]`.
#[derive(Clone, Debug)]
pub struct Weights {
    pub tile: Tile,
    pub u: Vec<PackedA>,
}

impl Weights {
    /// Output and input channels.
    pub fn channels(&self) -> (usize, usize) {
        self.u.first().map_or((0, 0), |u| (u.m(), u.k()))
    }
}

/// Whether a 3x3 stride-1 undilated convolution with `group` groups, `c`
/// input and `m` output channels and output planes of `out_plane` pixels
/// runs through Winograd F(2x2, 3x3) by default.
pub(crate) fn applies(group: usize, c: usize, m: usize, out_plane: usize) -> bool {
    group == 1 && c >= 8 && m >= 8 && out_plane >= MIN_PLANE
}

/// The transformed weight matrices `U_k[M, C]` of `tile`, packed as GEMM A
/// operands, from weights `[M, C, 3, 3]`.
pub(crate) fn prepack(w: &[f32], m: usize, c: usize, tile: Tile, features: Features) -> Weights {
    // G for F(2x2): [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]];
    // for F(4x4) Lavin and Gray's, at the points 0, ±1, ±2 and infinity.
    const G2: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const G4: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    let g_rows: &[[f64; 3]] = match tile {
        Tile::F2 => &G2,
        Tile::F4 => &G4,
    };
    let (a, k) = (g_rows.len(), tile.elems());
    let mut u = vec![0.0f32; k * m * c];
    for (mc, g) in w.chunks_exact(9).enumerate() {
        // G g Gᵀ, element (i, j).
        for (i, gi) in g_rows.iter().enumerate() {
            for (j, gj) in g_rows.iter().enumerate() {
                let mut s = 0.0f64;
                for p in 0..3 {
                    for q in 0..3 {
                        s += gi[p] * g[p * 3 + q] as f64 * gj[q];
                    }
                }
                u[(i * a + j) * m * c + mc] = s as f32;
            }
        }
    }
    let u = u
        .chunks_exact(m * c)
        .map(|uk| pack_a(m, c, uk, c, false, features))
        .collect();
    Weights { tile, u }
}

/// Tile counts of an output plane for tiles of edge `t`.
fn tiles_of(win: &Window2d, t: usize) -> (usize, usize) {
    (win.oh.div_ceil(t), win.ow.div_ceil(t))
}

thread_local! {
    /// One part's transformed input `[K, C, Tp]` and products `[K, M, Tp]`,
    /// reused.
    static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// One channel's phase-split copy, reused per thread.
    static SPLIT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most bytes of one part's transformed input and products (`(C + M) × K`
/// floats a tile), so that the K products read and write them in L2.
const PART_BYTES: usize = 4 << 20;

/// The convolution of batch item planes `x` (`[C, H, W]` each, `n` items)
/// into `y` (`[M, OH, OW]` each) with the transformed weights `w`, then
/// `+ bias[m] + residual`, then `act`.
///
/// Each item's tiles go in parts of consecutive tiles (row-major), each
/// part start to finish on one thread: input transform, the K products
/// (single-threaded), output transform. Parts are sized to stay in L2
/// ([`PART_BYTES`]) and, on several threads, numbered so that every thread
/// gets as many: one fork and join per convolution, where splitting each of
/// the products and both transforms over the threads cost 18 per batch
/// item and kept V and the products (6.4 MB for ResNet's 56x56 stage) out
/// of cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    win: &Window2d,
    n: usize,
    c: usize,
    w: &Weights,
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    run_parts(win, n, c, w, x, bias, residual, act, y, cx, PART_BYTES)
}

/// [`run`] with parts of at most `part_bytes` (tests use small ones).
#[allow(clippy::too_many_arguments)]
fn run_parts(
    win: &Window2d,
    n: usize,
    c: usize,
    w: &Weights,
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
    part_bytes: usize,
) {
    let (tile, u) = (w.tile, &w.u);
    let m = w.channels().0;
    let (ty, tx) = tiles_of(win, tile.edge());
    let t = ty * tx;
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    assert!(
        u.len() == tile.elems()
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
    let tile_bytes = (c + m) * tile.elems() * 4;
    let parts = parts_per_item(n, tile_bytes, t, cx.threads, part_bytes);
    // The products run single-threaded (each part is one thread's), with
    // the step's knobs (a tuned block depth).
    let single = CpuCtx {
        knobs: cx.knobs,
        ..CpuCtx::single(cx.features)
    };
    let (clamp, late_act) = split_act(act);
    let out = OutPtr(y.as_mut_ptr());
    let one = |wk: usize| {
        let (ni, p) = (wk / parts, wk % parts);
        let part = Part {
            win,
            c,
            m,
            tile,
            tiles: p * t / parts..(p + 1) * t / parts,
            features: cx.features,
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
    tile: Tile,
    tiles: std::ops::Range<usize>,
    features: Features,
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
        let k_elems = self.tile.elems();
        let (in_plane, out_plane) = (self.win.in_plane(), self.win.out_plane());
        BUFS.with(|cell| {
            let mut fresh = (Vec::new(), Vec::new());
            let mut guard = cell.try_borrow_mut();
            let (v, prod) = match guard.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut fresh,
            };
            let (vs, ps) = (spaced(c * tp), spaced(m * tp));
            v.resize(vs * k_elems, 0.0);
            prod.resize(ps * k_elems, 0.0);
            with_buf(&SPLIT, |split| {
                for ch in 0..c {
                    let xc = &x[ch * in_plane..(ch + 1) * in_plane];
                    let rows = Rows {
                        stride: vs,
                        first: ch * tp,
                    };
                    let tiles = self.tiles.clone();
                    let transform = match self.tile {
                        Tile::F2 => input_tiles_f2,
                        Tile::F4 => input_tiles_f4,
                    };
                    transform(self.features.avx2_fma, self.win, xc, split, v, rows, tiles)
                }
            });
            for (k, uk) in u.iter().enumerate() {
                let b = BSrc::Raw {
                    b: &v[k * vs..k * vs + c * tp],
                    ldb: tp,
                    trans: false,
                };
                let pk = &mut prod[k * ps..k * ps + m * tp];
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
                    stride: ps,
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
                let tiles = self.tiles.clone();
                // SAFETY: the caller's contract, for this plane.
                unsafe {
                    output_tiles(
                        self.tile,
                        self.features,
                        self.win,
                        prod,
                        rows,
                        &plane,
                        tiles,
                    )
                };
            }
        })
    }
}

/// Floats between the starts of consecutive transform matrices holding
/// `len` floats each: rounded up to 4 KiB and one cache line more, so that
/// the rows a tile's transform writes or reads at once fall in different
/// L1 sets (at a multiple of 4 KiB they all share one, and the 64x56x56
/// input transform ran at 60% of its speed on an Intel Xeon).
fn spaced(len: usize) -> usize {
    len.next_multiple_of(1024) + 16
}

/// Where one channel's K rows (one per transform element) lie in a `[K,
/// C, Tp]` buffer: row k at `k * stride + first`.
#[derive(Clone, Copy)]
struct Rows {
    stride: usize,
    first: usize,
}

ops::multiversion!(
    /// `V = Bᵀ d B` of F(2x2) for tiles `tiles` of channel plane `x` into
    /// the channel's rows of `v` (at `rows`, tile `tiles.start` first),
    /// through `split` (the plane's rows split into phases, zero outside
    /// the input).
    fn input_tiles_f2(
        win: &Window2d,
        x: &[f32],
        split: &mut Vec<f32>,
        v: &mut [f32],
        rows: Rows,
        tiles: std::ops::Range<usize>,
    ) => input_tiles_impl::<2>
);

ops::multiversion!(
    /// [`input_tiles_f2`] for F(4x4).
    fn input_tiles_f4(
        win: &Window2d,
        x: &[f32],
        split: &mut Vec<f32>,
        v: &mut [f32],
        rows: Rows,
        tiles: std::ops::Range<usize>,
    ) => input_tiles_impl::<4>
);

/// Eight lanes, one per tile.
type Lanes = [f32; V8];

/// Lane-wise `a + b` and `a - b` on 8 tiles (plain arrays and loops:
/// vector ops once inlined into the AVX2 build; `array::from_fn` would
/// stay an out-of-line call without AVX).
#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    let mut r = a;
    for l in 0..V8 {
        r[l] += b[l];
    }
    r
}

#[inline(always)]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    let mut r = a;
    for l in 0..V8 {
        r[l] -= b[l];
    }
    r
}

/// Lane-wise `a + s·b`.
#[inline(always)]
fn add_scaled(a: Lanes, s: f32, b: Lanes) -> Lanes {
    let mut r = a;
    for l in 0..V8 {
        r[l] += s * b[l];
    }
    r
}

/// `Bᵀ x` for one column (or row) `x` of T + 2 values, lane-wise (rows of
/// `Bᵀ d`, then columns of `(Bᵀ d) B`). F(2x2): `(x0 - x2, x1 + x2, x2 -
/// x1, x1 - x3)`; F(4x4): Lavin and Gray's `Bᵀ` = [[4, 0, -5, 0, 1, 0],
/// [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2,
/// -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
#[inline(always)]
fn bt<const T: usize>(x: [Lanes; MAX_A]) -> [Lanes; MAX_A] {
    let z = [0.0; V8];
    if T == 2 {
        [
            sub(x[0], x[2]),
            add(x[1], x[2]),
            sub(x[2], x[1]),
            sub(x[1], x[3]),
            z,
            z,
        ]
    } else {
        let (s12, d12) = (add(x[1], x[2]), sub(x[1], x[2]));
        let (s34, d34) = (add(x[3], x[4]), sub(x[4], x[3]));
        let (d42, d31) = (sub(x[4], x[2]), sub(x[3], x[1]));
        [
            add_scaled(add_scaled(x[4], -5.0, x[2]), 4.0, x[0]),
            add_scaled(s34, -4.0, s12),
            add_scaled(d34, 4.0, d12),
            add_scaled(d42, 2.0, d31),
            add_scaled(d42, -2.0, d31),
            add_scaled(add_scaled(x[5], -5.0, x[3]), 4.0, x[1]),
        ]
    }
}

/// `Aᵀ m` for one column (or row) `m` of T + 2 products, lane-wise: T
/// values. F(2x2): `Aᵀ` = [[1, 1, 1, 0], [0, 1, -1, -1]]; F(4x4): [[1, 1,
/// 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8,
/// -8, 1]].
#[inline(always)]
fn at<const T: usize>(m: [Lanes; MAX_A]) -> [Lanes; 4] {
    let z = [0.0; V8];
    if T == 2 {
        [add(add(m[0], m[1]), m[2]), sub(sub(m[1], m[2]), m[3]), z, z]
    } else {
        let (s12, d12) = (add(m[1], m[2]), sub(m[1], m[2]));
        let (s34, d34) = (add(m[3], m[4]), sub(m[3], m[4]));
        [
            add(add(m[0], s12), s34),
            add_scaled(d12, 2.0, d34),
            add_scaled(s12, 4.0, s34),
            add(add_scaled(d12, 8.0, d34), m[5]),
        ]
    }
}

/// 8 floats of `s` from `at`. (Element loops here and below: the
/// compiler turns them into vector moves, where a slice copy could stay a
/// `memcpy` call.)
#[inline(always)]
#[allow(clippy::manual_memcpy)]
fn load8(s: &[f32], at: usize) -> Lanes {
    let src = &s[at..at + V8];
    let mut r = [0.0; V8];
    for l in 0..V8 {
        r[l] = src[l];
    }
    r
}

#[inline(always)]
#[allow(clippy::manual_memcpy, clippy::needless_range_loop)]
fn input_tiles_impl<const T: usize>(
    win: &Window2d,
    x: &[f32],
    split: &mut Vec<f32>,
    v: &mut [f32],
    rows: Rows,
    tiles: std::ops::Range<usize>,
) {
    let a = T + 2;
    let tx = tiles_of(win, T).1;
    if tiles.is_empty() {
        return;
    }
    // Tile rows ya..=yb read padded rows T·ya..T·yb + T + 2 (input row r -
    // pad_top); per row T phases, padded column q at `(q % T) * phase + q
    // / T`, `phase` floats each (room for a last full vector from any
    // start).
    let (ya, yb) = (tiles.start / tx, (tiles.end - 1) / tx);
    let n_rows = T * (yb - ya) + a;
    let phase = tx + V8 + 1;
    split.clear();
    split.resize(n_rows * T * phase, 0.0);
    let pl = win.pad_left;
    // Input columns that land inside a phase (the last tile reads at most
    // padded column T·tx + 1).
    let w_in = win.w.min((T * phase).saturating_sub(pl));
    for r in 0..n_rows {
        let Some(ih) = (T * ya + r)
            .checked_sub(win.pad_top)
            .filter(|&ih| ih < win.h)
        else {
            continue;
        };
        let src = &x[ih * win.w..ih * win.w + w_in];
        let dst = &mut split[r * T * phase..(r + 1) * T * phase];
        // Up to the first padded column that starts a phase group, one by
        // one; then T columns at a time, one to each phase (a vector
        // de-interleave).
        let lead = ((T - pl % T) % T).min(src.len());
        for (iw, &val) in src[..lead].iter().enumerate() {
            let q = iw + pl;
            dst[(q % T) * phase + q / T] = val;
        }
        let g0 = (lead + pl) / T;
        let body = &src[lead..];
        let groups = body.len() / T;
        for (gi, chunk) in body.chunks_exact(T).enumerate() {
            for (p, &val) in chunk.iter().enumerate() {
                dst[p * phase + g0 + gi] = val;
            }
        }
        for (p, &val) in body[groups * T..].iter().enumerate() {
            dst[p * phase + g0 + groups] = val;
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
            // d[i][j] for 8 tiles: padded row T·y + i, columns T·x + j.
            let mut d = [[[0.0f32; V8]; MAX_A]; MAX_A];
            for (i, di) in d.iter_mut().enumerate().take(a) {
                let r = (T * (y - ya) + i) * T * phase;
                for (j, dij) in di.iter_mut().enumerate().take(a) {
                    *dij = load8(split, r + (j % T) * phase + x0 + j / T);
                }
            }
            // Bᵀ d by rows (for each column j), then (Bᵀ d) B by columns.
            let mut cols = [[[0.0f32; V8]; MAX_A]; MAX_A];
            for (j, cj) in cols.iter_mut().enumerate().take(a) {
                *cj = bt::<T>(std::array::from_fn(|i| d[i][j]));
            }
            let n = (xe - x0).min(V8);
            let at = rows.first + y * tx + x0 - tiles.start;
            for i in 0..a {
                // Row i of (Bᵀ d) B: element i of each column's combination.
                let vi = bt::<T>(std::array::from_fn(|j| cols[j][i]));
                for (j, vals) in vi.iter().enumerate().take(a) {
                    let o = (i * a + j) * rows.stride + at;
                    if n == V8 {
                        // A fixed-size copy: one vector store, not a call.
                        let dst = &mut v[o..o + V8];
                        for l in 0..V8 {
                            dst[l] = vals[l];
                        }
                    } else {
                        // Element by element: a slice copy is a `memcpy`
                        // call (3% of ResNet-18 in these partial runs).
                        for (d, &val) in v[o..o + n].iter_mut().zip(vals) {
                            *d = val;
                        }
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
/// one output plane: the tiles' K products are the rows of `pm` at
/// `rows`, tile `tiles.start` first.
///
/// # Safety
/// `plane.y` is valid for writes of the plane's `OH × OW` floats, and no
/// one else accesses the outputs of `tiles` while this runs.
unsafe fn output_tiles(
    tile: Tile,
    features: Features,
    win: &Window2d,
    pm: &[f32],
    rows: Rows,
    plane: &OutPlane,
    tiles: std::ops::Range<usize>,
) {
    /// One build of the output transform per variant and instruction set.
    ///
    /// # Safety
    /// As [`output_tiles`].
    unsafe fn portable(
        tile: Tile,
        win: &Window2d,
        pm: &[f32],
        rows: Rows,
        plane: &OutPlane,
        tiles: std::ops::Range<usize>,
        features: Features,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            match tile {
                Tile::F2 => output_tiles_impl::<2>(win, pm, rows, plane, tiles, features),
                Tile::F4 => output_tiles_impl::<4>(win, pm, rows, plane, tiles, features),
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast(
            tile: Tile,
            win: &Window2d,
            pm: &[f32],
            rows: Rows,
            plane: &OutPlane,
            tiles: std::ops::Range<usize>,
            features: Features,
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                match tile {
                    Tile::F2 => output_tiles_impl::<2>(win, pm, rows, plane, tiles, features),
                    Tile::F4 => output_tiles_impl::<4>(win, pm, rows, plane, tiles, features),
                }
            }
        }
        if features.avx2_fma && ops::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above);
            // the rest is the caller's contract.
            return unsafe { fast(tile, win, pm, rows, plane, tiles, features) };
        }
    }
    // SAFETY: the caller's contract. (AVX2 is off here unless the CPU
    // lacks what the features claimed; the activation checks again.)
    unsafe { portable(tile, win, pm, rows, plane, tiles, features) }
}

/// [`output_tiles`] for tiles of edge `T`, inlined into each build.
///
/// # Safety
/// As [`output_tiles`].
#[inline(always)]
#[allow(clippy::manual_memcpy)]
unsafe fn output_tiles_impl<const T: usize>(
    win: &Window2d,
    pm: &[f32],
    rows: Rows,
    plane: &OutPlane,
    tiles: std::ops::Range<usize>,
    features: Features,
) {
    let a = T + 2;
    let tx = tiles_of(win, T).1;
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
            let at_tile = rows.first + ty0 * tx + x0 - tiles.start;
            let mut mk = [[[0.0f32; V8]; MAX_A]; MAX_A];
            for (i, mi) in mk.iter_mut().enumerate().take(a) {
                for (j, row) in mi.iter_mut().enumerate().take(a) {
                    let o = (i * a + j) * rows.stride + at_tile;
                    if n == V8 {
                        *row = load8(pm, o);
                    } else {
                        for (d, &val) in row.iter_mut().zip(&pm[o..o + n]) {
                            *d = val;
                        }
                    }
                }
            }
            // Aᵀ on rows (for each column j), then on columns.
            let mut u = [[[0.0f32; V8]; MAX_A]; 4];
            for j in 0..a {
                let col = at::<T>(std::array::from_fn(|i| mk[i][j]));
                for r in 0..T {
                    u[r][j] = col[r];
                }
            }
            for (r, ur) in u.iter().enumerate().take(T) {
                let oh = T * ty0 + r;
                if oh >= win.oh {
                    break;
                }
                let yr = at::<T>(*ur);
                // Columns T·x .. T·x + T of the 8 tiles, interleaved.
                let mut vals = [0.0f32; 4 * V8];
                for l in 0..V8 {
                    for (cix, ycol) in yr.iter().enumerate().take(T) {
                        vals[T * l + cix] = ycol[l];
                    }
                }
                let c0 = T * x0;
                let cnt = (win.ow - c0).min(T * n);
                let base = oh * win.ow + c0;
                // + bias + residual, clamp: fixed-size loops (vectors) for
                // a whole run of T·8 outputs.
                let full = cnt == T * V8;
                let vals = &mut vals[..T * V8];
                for val in vals.iter_mut() {
                    *val += plane.bias;
                }
                if let Some(res) = plane.residual {
                    if full {
                        let r = &res[base..base + T * V8];
                        for l in 0..T * V8 {
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
                    for l in 0..T * V8 {
                        out[l] = vals[l];
                    }
                } else {
                    for (d, &val) in out.iter_mut().zip(vals.iter()) {
                        *d = val;
                    }
                }
            }
        }
    }
    // Any other activation over the finished outputs, one output row piece
    // at a time (out of the loop above, which keeps its values in vector
    // registers).
    if let Some(act) = plane.late_act {
        for ty0 in ya..=yb {
            let xs = if ty0 == ya { tiles.start % tx } else { 0 };
            let xe = if ty0 == yb {
                (tiles.end - 1) % tx + 1
            } else {
                tx
            };
            let (c0, c1) = (T * xs, (T * xe).min(win.ow));
            for oh in (T * ty0..T * ty0 + T).take_while(|&oh| oh < win.oh) {
                // SAFETY: as above, the outputs of these tiles.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(plane.y.add(oh * win.ow + c0), c1 - c0)
                };
                ops::activation(act, out, features);
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
        tile: Tile,
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
        let u = prepack(w.as_f32().unwrap(), m, c, tile, cx.features);
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
            let tol = rel_bound(tile) * (bd + 1.0);
            assert!(
                (g - w).abs() <= tol,
                "{n}x{c}x{hw:?} -> {m}, pads {pads:?}, at {i}: {g} vs {w}"
            );
        }
        got
    }

    /// Error bound relative to `Σ|x||w| + 1`: F(4x4)'s transforms scale by
    /// up to 8 (input) and 1/24 (weights), so its rounding grows by about
    /// the products' sum of absolute transform coefficients.
    fn rel_bound(tile: Tile) -> f32 {
        match tile {
            Tile::F2 => 1e-5,
            Tile::F4 => 3e-5,
        }
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
                // Pads of 2 and 3 on the left start the phases elsewhere.
                (1, 5, 7, [9, 13], [1, 3, 2, 1], false, None),
            ] {
                for tile in [Tile::F2, Tile::F4] {
                    let case = |cx: &CpuCtx, part_bytes: usize| {
                        let act = act.clone();
                        check(tile, n, c, m, hw, pads, residual, act, cx, part_bytes)
                    };
                    let a = case(&one, PART_BYTES);
                    let b = case(&two, PART_BYTES);
                    assert_eq!(a, b, "{name} {tile:?}: 1 vs 2 threads");
                    // Parts of a few tiles each, starting and ending inside
                    // tile rows and inside runs of 8 tiles.
                    for part_bytes in [1, 5 * (c + m) * tile.elems() * 4] {
                        let p = case(&two, part_bytes);
                        assert_eq!(
                            a, p,
                            "{name} {tile:?}: whole vs parts of {part_bytes} bytes"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn parts_cover_every_tile_once_and_spread_evenly() {
        // 56x56 outputs (784 tiles) of 64 -> 64 channels: 6.4 MB in 4 MB
        // parts; on 2 threads a number that splits evenly; never more
        // parts than tiles.
        let tile = 128 * Tile::F2.elems() * 4;
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

    /// Phases of ResNet's stages, one thread, both variants:
    /// `cargo test --release --lib winograd_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn winograd_speed() {
        let cx = CpuCtx::single(Features::detect());
        let avx = cx.features.avx2_fma;
        for (c, hw, tile) in [56, 28, 14]
            .into_iter()
            .flat_map(|hw| [Tile::F2, Tile::F4].map(|t| (64 * 56 / hw, hw, t)))
        {
            let win = window(hw, hw, [1; 4]);
            let x = random(&[c, hw, hw], 1, 1.0).to_f32_vec();
            let w = random(&[c, c, 3, 3], 2, 1.0).to_f32_vec();
            let wt = prepack(&w, c, c, tile, cx.features);
            let (ty, tx) = tiles_of(&win, tile.edge());
            let t = ty * tx;
            let st = spaced(c * t);
            let mut v = vec![0.0; st * tile.elems()];
            let mut prod = vec![0.0; st * tile.elems()];
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
                        stride: st,
                        first: ch * t,
                    };
                    match tile {
                        Tile::F2 => input_tiles_f2(avx, &win, xc, &mut split, &mut v, rows, 0..t),
                        Tile::F4 => input_tiles_f4(avx, &win, xc, &mut split, &mut v, rows, 0..t),
                    }
                }
            });
            let tg = best(&mut || {
                for (k, uk) in wt.u.iter().enumerate() {
                    let b = BSrc::Raw {
                        b: &v[k * st..k * st + c * t],
                        ldb: t,
                        trans: false,
                    };
                    let ep = Epilogue::default();
                    let pk = &mut prod[k * st..k * st + c * t];
                    gemm(c, t, c, 1.0, ASrc::Packed(uk), b, pk, t, &ep, &cx);
                }
            });
            let out_plane = win.out_plane();
            let to = best(&mut || {
                for (mi, p) in y.chunks_mut(out_plane).enumerate() {
                    let rows = Rows {
                        stride: st,
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
                    unsafe { output_tiles(tile, cx.features, &win, &prod, rows, &plane, 0..t) };
                }
            });
            let whole = best(&mut || {
                let mut out = vec![0.0; c * out_plane];
                run(&win, 1, c, &wt, &x, None, None, None, &mut out, &cx);
            });
            println!(
                "{c}x{hw}x{hw} {tile:?}: input {ti:.3} ms, {} GEMMs {tg:.3} ms, output \
                 {to:.3} ms (whole planes); run in parts {whole:.3} ms",
                tile.elems()
            );
        }
    }
}

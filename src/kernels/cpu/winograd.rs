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

use rayon::prelude::*;

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
fn tiles(win: &Window2d) -> (usize, usize) {
    (win.oh.div_ceil(2), win.ow.div_ceil(2))
}

thread_local! {
    /// The transformed input `[C, 16, T]` and products `[M, 16, T]`, reused.
    static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// One channel's even/odd split copy, reused per thread.
    static SPLIT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The convolution of batch item planes `x` (`[C, H, W]` each, `n` items)
/// into `y` (`[M, OH, OW]` each) with the transformed weights `u`, then
/// `+ bias[m] + residual`, then `act`.
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
    let m = u.first().map_or(0, PackedA::m);
    let (ty, tx) = tiles(win);
    let t = ty * tx;
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    let avx = cx.features.avx2_fma;
    let par = cx.threads > 1;
    BUFS.with(|cell| {
        let mut fresh = (Vec::new(), Vec::new());
        let mut guard = cell.try_borrow_mut();
        let (v, prod) = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        v.resize(c * K16 * t, 0.0);
        prod.resize(m * K16 * t, 0.0);
        for ni in 0..n {
            let xn = &x[ni * c * in_plane..(ni + 1) * c * in_plane];
            let vout = VOut {
                ptr: v.as_mut_ptr(),
                len: v.len(),
                c,
                t,
            };
            let transform_in = |ch: usize| {
                with_buf(&SPLIT, |split| {
                    let xc = &xn[ch * in_plane..(ch + 1) * in_plane];
                    // SAFETY: each channel writes only its own rows of V.
                    unsafe { input_tiles(avx, win, xc, split, vout, ch) };
                })
            };
            if par {
                cx.install(|| (0..c).into_par_iter().for_each(transform_in));
            } else {
                (0..c).for_each(transform_in);
            }
            for (k, uk) in u.iter().enumerate() {
                let b = BSrc::Raw {
                    b: &v[k * c * t..(k + 1) * c * t],
                    ldb: t,
                    trans: false,
                };
                let ep = Epilogue::default();
                gemm(
                    m,
                    t,
                    c,
                    1.0,
                    ASrc::Packed(uk),
                    b,
                    &mut prod[k * m * t..(k + 1) * m * t],
                    t,
                    &ep,
                    cx,
                );
            }
            let yn = &mut y[ni * m * out_plane..(ni + 1) * m * out_plane];
            let rn = residual.map(|r| &r[ni * m * out_plane..(ni + 1) * m * out_plane]);
            let (clamp, late_act) = split_act(act);
            let transform_out = |mi: usize, plane: &mut [f32]| {
                let res = rn.map(|r| &r[mi * out_plane..(mi + 1) * out_plane]);
                let b = bias.map_or(0.0, |b| b[mi]);
                output_tiles(avx, win, prod, m * t, mi * t, b, res, clamp, plane);
                if let Some(a) = late_act {
                    ops::activation(a, plane, avx);
                }
            };
            if par {
                cx.install(|| {
                    yn.par_chunks_mut(out_plane)
                        .enumerate()
                        .for_each(|(mi, p)| transform_out(mi, p))
                });
            } else {
                yn.chunks_mut(out_plane)
                    .enumerate()
                    .for_each(|(mi, p)| transform_out(mi, p));
            }
        }
    });
}

/// Where the input transform writes: V as `[16, C, T]`, shared by the
/// tasks of one convolution, each writing its own channels' rows.
#[derive(Clone, Copy)]
struct VOut {
    ptr: *mut f32,
    len: usize,
    c: usize,
    t: usize,
}
// SAFETY: the tasks write disjoint rows (one channel each) of a buffer that
// outlives them (`run` holds it until they end).
unsafe impl Send for VOut {}
unsafe impl Sync for VOut {}

/// `V = Bᵀ d B` for every tile of channel `ch`'s plane `x` into its rows
/// of `v`, through `split` (the plane's rows split into even and odd
/// columns, zero outside the input).
///
/// # Safety
/// `v` is valid for `16 * C * T` floats and no one else accesses channel
/// `ch`'s rows while this runs.
unsafe fn input_tiles(
    avx: bool,
    win: &Window2d,
    x: &[f32],
    split: &mut Vec<f32>,
    v: VOut,
    ch: usize,
) {
    debug_assert!(v.len == K16 * v.c * v.t && ch < v.c);
    // Row k of the channel: 16 disjoint slices of T floats.
    let rows: [&mut [f32]; K16] = std::array::from_fn(|k| {
        // SAFETY: inside the buffer (the caller's contract), disjoint
        // from every other channel's rows and from each other.
        unsafe { std::slice::from_raw_parts_mut(v.ptr.add((k * v.c + ch) * v.t), v.t) }
    });
    input_tiles_rows(avx, win, x, split, rows)
}

ops::multiversion!(
    /// [`input_tiles`] into the channel's 16 rows of V.
    fn input_tiles_rows(win: &Window2d, x: &[f32], split: &mut Vec<f32>, v: [&mut [f32]; K16])
        => input_tiles_impl
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
fn input_tiles_impl(win: &Window2d, x: &[f32], split: &mut Vec<f32>, v: [&mut [f32]; K16]) {
    let (ty, tx) = tiles(win);
    // Padded rows 0..2ty+2 (input row r - pad_top); per row the even and
    // the odd padded columns, `half` each (room for a last full vector).
    let rows = 2 * ty + 2;
    let half = tx.div_ceil(V8) * V8 + 1;
    split.clear();
    split.resize(rows * 2 * half, 0.0);
    // Input column iw is padded column iw + pad_left: with an even pad the
    // even input columns are the even padded ones.
    let (pl, shift) = (win.pad_left, win.pad_left % 2);
    for r in 0..rows {
        let Some(ih) = r.checked_sub(win.pad_top).filter(|&ih| ih < win.h) else {
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
    for y in 0..ty {
        for x0 in (0..tx).step_by(V8) {
            // d[i][j] for 8 tiles: padded row 2y + i, columns 2x + j.
            let mut d = [[[0.0f32; V8]; 4]; 4];
            for (i, di) in d.iter_mut().enumerate() {
                let r = (2 * y + i) * 2 * half;
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
            let n = (tx - x0).min(V8);
            let at = y * tx + x0;
            for i in 0..4 {
                let vi = bt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                for (j, vals) in vi.iter().enumerate() {
                    let row = &mut *v[i * 4 + j];
                    if n == V8 {
                        // A fixed-size copy: one vector store, not a call.
                        let dst = &mut row[at..at + V8];
                        for l in 0..V8 {
                            dst[l] = vals[l];
                        }
                    } else {
                        row[at..at + n].copy_from_slice(&vals[..n]);
                    }
                }
            }
        }
    }
}

ops::multiversion!(
    /// `Aᵀ M A + bias + residual`, clamped, for every tile of one output
    /// channel: its 16 products are `pm[k * kstride + first..][..T]`, `y`
    /// the plane.
    fn output_tiles(
        win: &Window2d,
        pm: &[f32],
        kstride: usize,
        first: usize,
        bias: f32,
        res: Option<&[f32]>,
        clamp: Option<(f32, f32)>,
        y: &mut [f32],
    ) => output_tiles_impl
);

#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::manual_memcpy)]
fn output_tiles_impl(
    win: &Window2d,
    pm: &[f32],
    kstride: usize,
    first: usize,
    bias: f32,
    res: Option<&[f32]>,
    clamp: Option<(f32, f32)>,
    y: &mut [f32],
) {
    let (ty, tx) = tiles(win);
    let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    for ty0 in 0..ty {
        for x0 in (0..tx).step_by(V8) {
            let n = (tx - x0).min(V8);
            let at = ty0 * tx + x0;
            let mut mk = [[0.0f32; V8]; K16];
            for (k, row) in mk.iter_mut().enumerate() {
                let o = k * kstride + first + at;
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
                    *val += bias;
                }
                if let Some(res) = res {
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
                if clamp.is_some() {
                    for val in vals.iter_mut() {
                        *val = val.max(lo).min(hi);
                    }
                }
                if full {
                    let out = &mut y[base..base + 2 * V8];
                    for l in 0..2 * V8 {
                        out[l] = vals[l];
                    }
                } else {
                    y[base..base + cnt].copy_from_slice(&vals[..cnt]);
                }
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
        run(
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
                let a = check(n, c, m, hw, pads, residual, act.clone(), &one);
                let b = check(n, c, m, hw, pads, residual, act, &two);
                assert_eq!(a, b, "{name}: 1 vs 2 threads");
            }
        }
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
            let (ty, tx) = tiles(&win);
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
            let vout = VOut {
                ptr: v.as_mut_ptr(),
                len: v.len(),
                c,
                t,
            };
            let ti = best(&mut || {
                for ch in 0..c {
                    let xc = &x[ch * plane..(ch + 1) * plane];
                    // SAFETY: one channel at a time, inside V.
                    unsafe { input_tiles(avx, &win, xc, &mut split, vout, ch) };
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
                    output_tiles(avx, &win, &prod, c * t, mi * t, 0.0, None, None, p);
                }
            });
            println!("{c}x{hw}x{hw}: input {ti:.3} ms, 16 GEMMs {tg:.3} ms, output {to:.3} ms");
        }
    }
}

//! The int8 depthwise plane kernel: one output plane of a convolution with
//! one input channel per group, `acc = Σ_taps (x − za) · w` exactly in i32,
//! then the epilogue.
//!
//! Each input row is expanded once per plane into **quads**: for output
//! column `ox` and tap group `g` (taps `4g..4g+4` of a kernel row), one
//! 32-bit word holding the four u8 inputs those taps read
//! (`row[ox·sw + (4g + j)·dw − pl]`, the zero point `za` where that is
//! padding; the bytes of taps past `kw` have weight 0 and may hold
//! anything). A kernel row's contribution to 16 (or 8) outputs is then one
//! load and one `vpdpbusd` (u8 × s8, four products summed into each i32,
//! wrapping) with the four weights broadcast; rows above and below the
//! input read a row of `za` quads. The zero point is folded into the start
//! value, `−za · Σ w`: padding reads `za`, so every tap contributes
//! `x · w`, and `Σ x·w − za·Σ w = Σ (x − za)·w` holds in wrapping i32
//! arithmetic, exact because the true sum fits (`kh·kw ≤ MAX_K`).
//!
//! Kernels, chosen by the CPU's features (all give the same i32 bit for
//! bit): AVX512-VNNI (16 outputs a vector), AVX-VNNI (8), AVX2 `vpmaddwd`
//! (8; each quad split into its even and odd bytes as i16 pairs, two
//! multiplies per quad, exact for any i8 weight), and a portable loop. On
//! x86 with AVX2 a quad row is built with one `vpshufb` per 8 outputs when
//! every byte of 4 neighbouring quads lies in 16 bytes (`3·(sw + dw) ≤
//! 15`: strides and dilations up to 2 and more), otherwise byte by byte.
//!
//! The epilogue is the GEMM's, element by element in the same order:
//! `(acc as f32) · (sa · sb)`, `+ bias`, `+ residual`, activation (on the
//! whole plane), then the store or the requantization ([`quantize_u8`]).

use std::cell::RefCell;

use super::super::gemm::with_buf;
use super::super::qgemm::{quantize_u8, QEpilogue, QOut, QRequant};
use super::super::Features;
use super::QConvGeom;

/// Output columns of a quad row are padded to a multiple of this (the
/// widest vector's i32 lanes).
const PAD: usize = 16;

/// A thread's buffers for [`plane`]: they only grow.
struct Scratch {
    /// The quad rows of the input plane, then one row of `za` quads.
    quads: Vec<u32>,
    /// The input plane, each row with `za` padding on both sides.
    row: Vec<u8>,
    /// The plane's accumulators (plus a vector of slack).
    acc: Vec<i32>,
    /// The dequantized plane before requantization.
    yf: Vec<f32>,
    /// The weights of each (kernel row, tap group), four bytes a word.
    wq: Vec<u32>,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            quads: Vec::new(),
            row: Vec::new(),
            acc: Vec::new(),
            yf: Vec::new(),
            wq: Vec::new(),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Grows `v` to at least `len` elements.
pub(super) fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// The shape of one plane's work.
#[derive(Clone, Copy)]
struct Shape {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// `ow` rounded up to [`PAD`]: the pitch of a quad row's group.
    owp: usize,
    /// Tap groups per kernel row (`⌈kw / 4⌉`).
    groups: usize,
    /// Bytes of a padded input row.
    row_len: usize,
}

/// Output channels per task: a divisor of `m` (so a task's channels share
/// one batch item and one slice of the epilogue), about 4096 outputs a
/// task but enough tasks to balance `threads`.
pub(super) fn channels_per_task(m: usize, p: usize, nb: usize, threads: usize) -> usize {
    if threads <= 1 {
        return m;
    }
    let want = (4096 / p.max(1)).min((nb * m).div_ceil(4 * threads)).max(1);
    (1..=want.min(m))
        .rev()
        .find(|&d| m.is_multiple_of(d))
        .unwrap_or(1)
}

/// Whether [`planes_via_f32`] runs a depthwise convolution of `m` output
/// and `c` input channels, `geom` and `p` output pixels a plane: multiplier
/// 1, a CPU whose f32 depthwise kernels are vectorized, and few enough
/// taps that every partial sum is an integer below 2²⁴ (`taps · 255 ·
/// 128`), exact in f32 in any order. Where it is faster: stride 1, or
/// output planes of at most 256 pixels (the channel-interleaved f32
/// kernel); the quads win on larger strided planes. (MobileNetV2's
/// depthwise layers on an Intel Xeon with AVX512-VNNI: 7x7 to 14x14 planes
/// 1.2-1.8x faster than the quads, 112x112 at stride 1 1.15x; 56x56 and
/// 28x28 outputs at stride 2 1.5-1.65x slower.)
pub(super) fn exact_in_f32(
    features: Features,
    m: usize,
    c: usize,
    geom: &QConvGeom,
    p: usize,
) -> bool {
    let taps = geom.kernel[0] * geom.kernel[1];
    m == c
        && taps * 255 * 128 < 1 << 24
        && features.avx2_fma
        && (geom.strides == [1, 1] || p <= 256)
}

thread_local! {
    /// The f32 input planes of [`planes_via_f32`].
    static F32_IN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Its f32 accumulator planes.
    static F32_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `cpc` output planes of one batch item through the f32 depthwise kernel
/// ([`crate::kernels::cpu::conv::depthwise_plain`]) on `x − za` and the
/// weights as f32 (`wf`, `cpc · kh · kw`): products and every partial sum
/// are integers below 2²⁴ ([`exact_in_f32`]), so the f32 sums are the exact
/// accumulators whatever the kernel's order, and the f32 kernel's channel
/// interleaving for small planes and its register blocking serve the int8
/// convolution too. Then each plane's epilogue, as [`plane`]'s.
#[allow(clippy::too_many_arguments)]
pub(super) fn planes_via_f32(
    features: Features,
    x: &[u8],
    cpc: usize,
    (h, w): (usize, usize),
    za: u8,
    geom: &QConvGeom,
    (oh, ow): (usize, usize),
    wf: &[f32],
    out: QOut,
) {
    let win = geom.window((h, w), (oh, ow));
    let (p, hw) = (oh * ow, h * w);
    let one = crate::kernels::cpu::CpuCtx::single(features);
    // Channels converted, convolved and finished together: their f32
    // planes stay in L2 (whole groups of 8 for the interleaved kernel).
    let mut sub = (F32_BLOCK_FLOATS / (hw + p)).clamp(1, cpc);
    if sub >= 8 {
        sub -= sub % 8;
    }
    let outs = super::split_out(out, cpc * p, 1, cpc, p);
    let mut outs = outs.into_iter();
    with_buf(&F32_IN, |xf| {
        with_buf(&F32_OUT, |yf| {
            grow(xf, sub * hw);
            grow(yf, sub * p);
            with_scratch(|buf| {
                grow(&mut buf.acc, p);
                for c0 in (0..cpc).step_by(sub) {
                    let n = sub.min(cpc - c0);
                    let (xb, yb) = (&mut xf[..n * hw], &mut yf[..n * p]);
                    to_f32_minus(&x[c0 * hw..(c0 + n) * hw], za, xb);
                    let wb = &wf[c0 * win.kh * win.kw..(c0 + n) * win.kh * win.kw];
                    crate::kernels::cpu::conv::depthwise_plain(&win, n, xb, wb, yb, &one);
                    for (o, yp) in outs.by_ref().take(n).zip(yb.chunks_exact(p)) {
                        finish_f32_sums(features, yp, &mut buf.acc[..p], &mut buf.yf, o);
                    }
                }
            })
        })
    })
}

/// f32 values (input and output planes) [`planes_via_f32`] keeps in flight.
const F32_BLOCK_FLOATS: usize = 1 << 16;

/// `out[i] = (x[i] − za) as f32`, vectorized where the f32 path runs.
fn to_f32_minus(x: &[u8], za: u8, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the f32 path runs only on CPUs with AVX2
        // (`exact_in_f32`).
        unsafe { x86::to_f32_minus(x, za, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &v) in out.iter_mut().zip(x) {
        *d = (v as i32 - za as i32) as f32;
    }
}

/// `out[i] = y[i] as i32` for f32 values that are exact integers below
/// 2²⁴ (the f32 path's sums).
fn to_i32_exact(y: &[f32], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as for `to_f32_minus`.
        unsafe { x86::to_i32_exact(y, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &v) in out.iter_mut().zip(y) {
        *d = v as i32;
    }
}

/// The epilogue of one plane's accumulators on the best path `features`
/// allow.
pub(super) fn finish_any(features: Features, acc: &[i32], yf: &mut Vec<f32>, out: QOut) {
    #[cfg(target_arch = "x86_64")]
    if features.avx512f {
        // SAFETY: the CPU has AVX-512 F (the features say so).
        match unsafe { x86::finish_avx512(x86::Sums::I32(acc), out) } {
            None => return,
            Some(out) => return finish(acc, yf, out, features),
        }
    }
    finish(acc, yf, out, features)
}

/// [`finish_any`] on the f32 path's sums (exact integers below 2²⁴): read
/// as they are where the AVX-512 epilogue runs (the same values it would
/// convert from i32), else converted into `acc` first.
fn finish_f32_sums(
    features: Features,
    sums: &[f32],
    acc: &mut [i32],
    yf: &mut Vec<f32>,
    out: QOut,
) {
    #[cfg(target_arch = "x86_64")]
    let out = if features.avx512f {
        // SAFETY: the CPU has AVX-512 F (the features say so).
        match unsafe { x86::finish_avx512(x86::Sums::F32(sums), out) } {
            None => return,
            Some(back) => back,
        }
    } else {
        out
    };
    to_i32_exact(sums, acc);
    finish(acc, yf, out, features)
}

/// Padded-row bytes of a plane above which [`plane`] takes the plain loop.
const PLAIN_ABOVE: usize = 1 << 26;

/// [`plane`] for geometries whose padded rows would be huge: each output
/// sums the taps that land inside the plane (`Σ (x − za) · w`, exact in
/// i32), with checked index arithmetic (such a geometry has few outputs).
#[allow(clippy::too_many_arguments)]
fn plane_plain(
    features: Features,
    x: &[u8],
    (h, w): (usize, usize),
    za: u8,
    geom: &QConvGeom,
    (oh, ow): (usize, usize),
    wt: &[i8],
    out: QOut,
) {
    let [kh, kw] = geom.kernel;
    // The input index of output position `o`, tap `k` along one axis, or
    // None in the padding.
    let at = |o: usize, k: usize, axis: usize| -> Option<usize> {
        let pos = o
            .checked_mul(geom.strides[axis])?
            .checked_add(k.checked_mul(geom.dilations[axis])?)?;
        pos.checked_sub(geom.pads[axis])
    };
    let mut acc = vec![0i32; oh * ow];
    for oy in 0..oh {
        for ox in 0..ow {
            let mut a = 0i32;
            for ki in 0..kh {
                let Some(iy) = at(oy, ki, 0).filter(|&iy| iy < h) else {
                    continue;
                };
                for kj in 0..kw {
                    if let Some(ix) = at(ox, kj, 1).filter(|&ix| ix < w) {
                        let v = x[iy * w + ix] as i32 - za as i32;
                        a = a.wrapping_add(v * wt[ki * kw + kj] as i32);
                    }
                }
            }
            acc[oy * ow + ox] = a;
        }
    }
    finish_any(features, &acc, &mut Vec::new(), out);
}

/// One output plane: `x` the input plane (`h × w` u8, zero point `za`),
/// `wt` the channel's `kh · kw` weights, `out` the plane's output with a
/// one-channel epilogue.
#[allow(clippy::too_many_arguments)]
pub(super) fn plane(
    features: Features,
    x: &[u8],
    (h, w): (usize, usize),
    za: u8,
    geom: &QConvGeom,
    (oh, ow): (usize, usize),
    wt: &[i8],
    out: QOut,
) {
    let kw = geom.kernel[1];
    let [sw, dw] = [geom.strides[1], geom.dilations[1]];
    let groups = kw.div_ceil(4);
    let owp = ow.div_ceil(PAD) * PAD;
    let pl = geom.pads[1];
    // Every byte a quad (scalar or shuffled) reads: see `build_row_*`. A
    // geometry whose padded rows would be huge (strides, dilations or pads
    // far beyond the plane: a hostile model's 2^62 stride) takes the plain
    // loop instead.
    let row_len = owp
        .checked_mul(sw)
        .zip((4 * groups).checked_mul(dw))
        .and_then(|(a, b)| a.checked_add(b)?.checked_add(pl)?.checked_add(w + 32))
        .filter(|&r| r.checked_mul(h).is_some_and(|n| n <= PLAIN_ABOVE));
    let Some(row_len) = row_len else {
        return plane_plain(features, x, (h, w), za, geom, (oh, ow), wt, out);
    };
    let s = Shape {
        h,
        w,
        oh,
        ow,
        owp,
        groups,
        row_len,
    };
    with_scratch(|buf| one(features, x, za, geom, &s, wt, buf, out))
}

/// Runs `f` with this thread's [`Scratch`] (a fresh one if it is in use).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// [`plane`] with the thread's buffers.
#[allow(clippy::too_many_arguments)]
fn one(
    features: Features,
    x: &[u8],
    za: u8,
    geom: &QConvGeom,
    s: &Shape,
    wt: &[i8],
    buf: &mut Scratch,
    out: QOut,
) {
    let [kh, kw] = geom.kernel;
    // The weights of each (kernel row, group) as four bytes, and the start
    // value that folds the zero point in.
    let mut sum = 0i32;
    buf.wq.clear();
    for t in 0..kh * s.groups {
        let (ki, g) = (t / s.groups, t % s.groups);
        let b: [u8; 4] = std::array::from_fn(|j| {
            let kj = 4 * g + j;
            if kj < kw {
                sum += wt[ki * kw + kj] as i32;
                wt[ki * kw + kj] as u8
            } else {
                0
            }
        });
        buf.wq.push(u32::from_le_bytes(b));
    }
    let init = sum.wrapping_mul(-(za as i32));
    grow(&mut buf.quads, (s.h + 1) * s.groups * s.owp);
    grow(&mut buf.row, s.h * s.row_len);
    grow(&mut buf.acc, s.oh * s.ow + PAD);
    run(features, x, za, geom, s, init, buf, out);
}

/// Builds the quads, accumulates and finishes, on the kernel `features`
/// select.
#[allow(clippy::too_many_arguments)]
fn run(
    features: Features,
    x: &[u8],
    za: u8,
    geom: &QConvGeom,
    s: &Shape,
    init: i32,
    buf: &mut Scratch,
    out: QOut,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::*;
        if features.avx512vnni {
            // SAFETY: the CPU has AVX-512 F/BW/VL and AVX512-VNNI (the
            // features say so); the buffers were sized by `plane`.
            unsafe { run_vnni512(x, za, geom, s, init, buf, out, features) };
            return;
        }
        if features.avxvnni {
            // SAFETY: the CPU has AVX2 and AVX-VNNI; buffers as above.
            unsafe { run_vnni256(x, za, geom, s, init, buf, out, features) };
            return;
        }
        if features.avx2_fma {
            // SAFETY: the CPU has AVX2; buffers as above.
            unsafe { run_avx2(x, za, geom, s, init, buf, out, features) };
            return;
        }
    }
    let _ = features;
    build(x, za, geom, s, buf, false);
    accumulate_portable(geom, s, init, buf);
    finish(&buf.acc[..s.oh * s.ow], &mut buf.yf, out, features);
}

/// Writes the quad rows of the plane (rows `0..h`, then the `za` row) into
/// `buf.quads`; `shuffle` (AVX2 only) builds a row with `vpshufb` where
/// the geometry allows.
#[inline(always)]
fn build(x: &[u8], za: u8, geom: &QConvGeom, s: &Shape, buf: &mut Scratch, shuffle: bool) {
    let (sw, dw, pl) = (geom.strides[1], geom.dilations[1], geom.pads[1]);
    let Scratch { quads, row, .. } = buf;
    // The whole plane padded first, then the quads: a quad row's loads
    // never wait on the stores of its row's copy (a 16-byte load over
    // several recent smaller stores cannot be forwarded from them).
    let rl = s.row_len;
    let padded = &mut row[..s.h * rl];
    for (iy, r) in padded.chunks_exact_mut(rl).enumerate() {
        r[..pl].fill(za);
        r[pl..pl + s.w].copy_from_slice(&x[iy * s.w..(iy + 1) * s.w]);
        r[pl + s.w..].fill(za);
    }
    let pitch = s.groups * s.owp;
    let quads = &mut quads[..(s.h + 1) * pitch];
    let (rows, pad) = quads.split_at_mut(s.h * pitch);
    pad.fill(u32::from_le_bytes([za; 4]));
    let shuffled = shuffle && 3 * (sw + dw) <= 15;
    for (q, row) in rows.chunks_exact_mut(pitch).zip(padded.chunks_exact(rl)) {
        #[cfg(target_arch = "x86_64")]
        if shuffled {
            // SAFETY: `shuffle` is only set on CPUs with AVX2; the row holds
            // every byte read (`row_len`), `q` a whole quad row.
            unsafe { x86::build_row_shuffle(row, sw, dw, s.groups, s.owp, q) };
            continue;
        }
        let _ = shuffled;
        for g in 0..s.groups {
            for (ox, d) in q[g * s.owp..(g + 1) * s.owp].iter_mut().enumerate() {
                let at = ox * sw + 4 * g * dw;
                *d = u32::from_le_bytes(std::array::from_fn(|j| row[at + j * dw]));
            }
        }
    }
}

/// The quad row read by kernel row `ki` of output row `oy`: an input row,
/// or the `za` row (index `h`) where the tap reads padding.
#[inline(always)]
fn src_row(geom: &QConvGeom, s: &Shape, oy: usize, ki: usize) -> usize {
    let r = oy * geom.strides[0] + ki * geom.dilations[0];
    match r.checked_sub(geom.pads[0]) {
        Some(iy) if iy < s.h => iy,
        _ => s.h,
    }
}

/// The accumulators of the plane, `acc[oy · ow + ox]`, in plain Rust.
fn accumulate_portable(geom: &QConvGeom, s: &Shape, init: i32, buf: &mut Scratch) {
    let pitch = s.groups * s.owp;
    let kh = geom.kernel[0];
    for (oy, a) in buf.acc[..s.oh * s.ow].chunks_exact_mut(s.ow).enumerate() {
        a.fill(init);
        for ki in 0..kh {
            let r = src_row(geom, s, oy, ki) * pitch;
            for g in 0..s.groups {
                let wb = buf.wq[ki * s.groups + g]
                    .to_le_bytes()
                    .map(|b| b as i8 as i32);
                let q = &buf.quads[r + g * s.owp..r + g * s.owp + s.ow];
                for (a, &q) in a.iter_mut().zip(q) {
                    let xb = q.to_le_bytes();
                    let d = (0..4).map(|j| xb[j] as i32 * wb[j]).sum::<i32>();
                    *a = a.wrapping_add(d);
                }
            }
        }
    }
}

/// The epilogue of one output channel's plane of accumulators, in the
/// order of the GEMM's: `(acc as f32) · (sa · sb)`, `+ bias`, `+ residual`,
/// activation, then the store or requantization (through `yf`).
#[inline(always)]
fn finish(acc: &[i32], yf: &mut Vec<f32>, out: QOut, features: Features) {
    fn dequant(acc: &[i32], ep: &QEpilogue, y: &mut [f32], features: Features) {
        let s = ep.a_scale * ep.b_scales[0];
        let y = &mut y[..acc.len()];
        // One pass, each step rounded on its own (no contraction in Rust).
        match (ep.bias.map(|b| b[0]), ep.residual) {
            (None, None) => y.iter_mut().zip(acc).for_each(|(y, &a)| *y = a as f32 * s),
            (Some(b), None) => y.iter_mut().zip(acc).for_each(|(y, &a)| {
                let v = a as f32 * s;
                *y = v + b
            }),
            (None, Some(r)) => y.iter_mut().zip(acc).zip(r).for_each(|((y, &a), &r)| {
                let v = a as f32 * s;
                *y = v + r
            }),
            (Some(b), Some(r)) => y.iter_mut().zip(acc).zip(r).for_each(|((y, &a), &r)| {
                let v = a as f32 * s;
                let v = v + b;
                *y = v + r
            }),
        }
        if let Some(act) = ep.act {
            super::super::ops::activation(act, y, features);
        }
    }
    match out {
        QOut::I32(c) => c[..acc.len()].copy_from_slice(acc),
        QOut::F32(c, ep) => dequant(acc, &ep, c, features),
        QOut::U8(c, ep, QRequant { scale, zero_point }) => {
            grow(yf, acc.len());
            dequant(acc, &ep, yf, features);
            quantize_u8(&yf[..acc.len()], scale, zero_point, &mut c[..acc.len()]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// A vector of i32 accumulators and its multiply-add of quads.
    pub(super) trait DwVec: Copy {
        /// i32 lanes.
        const N: usize;
        /// The broadcast weights of one group.
        type W: Copy;
        unsafe fn splat(v: i32) -> Self;
        unsafe fn weights(w: u32) -> Self::W;
        unsafe fn load(p: *const u32) -> Self;
        /// `self + Σ_j quad byte j (u8) · weight byte j (i8)`, wrapping.
        unsafe fn dp(self, q: Self, w: Self::W) -> Self;
        unsafe fn store(self, p: *mut i32);
    }

    /// 16 lanes, AVX512-VNNI `vpdpbusd`.
    #[derive(Clone, Copy)]
    pub(super) struct Z(__m512i);
    /// 8 lanes, AVX-VNNI `vpdpbusd`.
    #[derive(Clone, Copy)]
    pub(super) struct Y(__m256i);
    /// 8 lanes, AVX2 `vpmaddwd` on the even and odd bytes.
    #[derive(Clone, Copy)]
    pub(super) struct M(__m256i);

    impl DwVec for Z {
        const N: usize = 16;
        type W = __m512i;
        #[inline(always)]
        unsafe fn splat(v: i32) -> Self {
            Z(_mm512_set1_epi32(v))
        }
        #[inline(always)]
        unsafe fn weights(w: u32) -> __m512i {
            _mm512_set1_epi32(w as i32)
        }
        #[inline(always)]
        unsafe fn load(p: *const u32) -> Self {
            Z(_mm512_loadu_si512(p as *const _))
        }
        #[inline(always)]
        unsafe fn dp(self, q: Self, w: __m512i) -> Self {
            Z(_mm512_dpbusd_epi32(self.0, q.0, w))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm512_storeu_si512(p as *mut _, self.0)
        }
    }

    impl DwVec for Y {
        const N: usize = 8;
        type W = __m256i;
        #[inline(always)]
        unsafe fn splat(v: i32) -> Self {
            Y(_mm256_set1_epi32(v))
        }
        #[inline(always)]
        unsafe fn weights(w: u32) -> __m256i {
            _mm256_set1_epi32(w as i32)
        }
        #[inline(always)]
        unsafe fn load(p: *const u32) -> Self {
            Y(_mm256_loadu_si256(p as *const _))
        }
        #[inline(always)]
        unsafe fn dp(self, q: Self, w: __m256i) -> Self {
            Y(_mm256_dpbusd_avx_epi32(self.0, q.0, w))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm256_storeu_si256(p as *mut _, self.0)
        }
    }

    impl DwVec for M {
        const N: usize = 8;
        /// Weights of bytes (0, 2) and (1, 3) as i16 pairs.
        type W = (__m256i, __m256i);
        #[inline(always)]
        unsafe fn splat(v: i32) -> Self {
            M(_mm256_set1_epi32(v))
        }
        #[inline(always)]
        unsafe fn weights(w: u32) -> (__m256i, __m256i) {
            let b = w.to_le_bytes().map(|b| b as i8 as i16 as u16 as u32);
            (
                _mm256_set1_epi32((b[0] | b[2] << 16) as i32),
                _mm256_set1_epi32((b[1] | b[3] << 16) as i32),
            )
        }
        #[inline(always)]
        unsafe fn load(p: *const u32) -> Self {
            M(_mm256_loadu_si256(p as *const _))
        }
        #[inline(always)]
        unsafe fn dp(self, q: Self, w: (__m256i, __m256i)) -> Self {
            // Bytes 0 and 2 zero-extended to i16, then bytes 1 and 3: each
            // vpmaddwd pair is at most 2 · 255 · 128 in magnitude (exact).
            let even = _mm256_and_si256(q.0, _mm256_set1_epi32(0x00FF_00FF));
            let odd = _mm256_srli_epi16::<8>(q.0);
            let s = _mm256_add_epi32(_mm256_madd_epi16(even, w.0), _mm256_madd_epi16(odd, w.1));
            M(_mm256_add_epi32(self.0, s))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm256_storeu_si256(p as *mut _, self.0)
        }
    }

    /// The accumulators of the plane, `acc[oy · ow + ox]`, `V::N` outputs a
    /// vector and up to 4 vectors at once; the vectors past `ow` spill into
    /// the next row (rewritten after) or the slack.
    ///
    /// # Safety
    /// The CPU supports `V`'s instructions; the buffers were sized by
    /// [`plane`] and the quads built.
    #[inline(always)]
    unsafe fn accumulate<V: DwVec>(geom: &QConvGeom, s: &Shape, init: i32, buf: &mut Scratch) {
        let wq = buf.wq.as_ptr();
        let pitch = s.groups * s.owp;
        let kh = geom.kernel[0];
        let q = buf.quads.as_ptr();
        let acc = buf.acc.as_mut_ptr();
        let n = V::N;
        let vinit = V::splat(init);
        for oy in 0..s.oh {
            let dst = acc.add(oy * s.ow);
            let mut ox = 0;
            macro_rules! block {
                ($u:literal) => {{
                    let mut a = [vinit; $u];
                    for ki in 0..kh {
                        let r = q.add(src_row(geom, s, oy, ki) * pitch + ox);
                        for g in 0..s.groups {
                            let w = V::weights(*wq.add(ki * s.groups + g));
                            let src = r.add(g * s.owp);
                            for (u, a) in a.iter_mut().enumerate() {
                                *a = a.dp(V::load(src.add(u * n)), w);
                            }
                        }
                    }
                    for (u, a) in a.iter().enumerate() {
                        a.store(dst.add(ox + u * n));
                    }
                    ox += $u * n;
                }};
            }
            while ox + 3 * n < s.ow {
                block!(4);
            }
            while ox < s.ow {
                block!(1);
            }
        }
    }

    /// One quad row from a padded input row with `vpshufb`: 8 quads from
    /// two 16-byte loads, `4·sw` bytes apart (quad `i` of a half reads
    /// bytes `i·sw + j·dw`, all below 16 when `3·(sw + dw) ≤ 15`).
    ///
    /// # Safety
    /// The CPU has AVX2; `row` holds every byte read (`(owp − 8)·sw +
    /// 4·(groups − 1)·dw + 4·sw + 16` at most), `q` `groups · owp` quads,
    /// `owp` a multiple of 8.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn build_row_shuffle(
        row: &[u8],
        sw: usize,
        dw: usize,
        groups: usize,
        owp: usize,
        q: &mut [u32],
    ) {
        let pat: [u8; 16] = std::array::from_fn(|b| ((b / 4) * sw + (b % 4) * dw) as u8);
        let pat = _mm256_broadcastsi128_si256(_mm_loadu_si128(pat.as_ptr() as *const _));
        let (rp, qp) = (row.as_ptr(), q.as_mut_ptr());
        for g in 0..groups {
            let base = rp.add(4 * g * dw);
            let d = qp.add(g * owp);
            for ox in (0..owp).step_by(8) {
                let at = base.add(ox * sw);
                let v = _mm256_loadu2_m128i(at.add(4 * sw) as *const _, at as *const _);
                _mm256_storeu_si256(d.add(ox) as *mut _, _mm256_shuffle_epi8(v, pat));
            }
        }
    }

    /// The whole plane on AVX512-VNNI.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL, AVX512-VNNI and AVX2; buffers sized by
    /// [`plane`].
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_vnni512(
        x: &[u8],
        za: u8,
        geom: &QConvGeom,
        s: &Shape,
        init: i32,
        buf: &mut Scratch,
        out: QOut,
        features: Features,
    ) {
        build(x, za, geom, s, buf, true);
        accumulate::<Z>(geom, s, init, buf);
        let acc = &buf.acc[..s.oh * s.ow];
        match finish_avx512(Sums::I32(acc), out) {
            None => {}
            Some(out) => finish(acc, &mut buf.yf, out, features),
        }
    }

    /// A plane's accumulators: i32, or the f32 path's sums, which are exact
    /// integers below 2²⁴ (so the same values as converted from i32).
    #[derive(Clone, Copy)]
    pub(super) enum Sums<'a> {
        I32(&'a [i32]),
        F32(&'a [f32]),
    }

    impl Sums<'_> {
        fn len(&self) -> usize {
            match self {
                Sums::I32(v) => v.len(),
                Sums::F32(v) => v.len(),
            }
        }
    }

    /// [`finish`] in AVX-512 registers, one pass over the plane, for f32
    /// and u8 outputs with Relu, Clip or no activation: the same steps in
    /// the same order (`acc as f32 · (sa·sb)`, `+ bias`, `+ residual`,
    /// `y < lo → lo`, `y > hi → hi` keeping NaN as the scalar comparisons
    /// do, then the requantization of [`quantize_u8`]), so bit for bit the
    /// same. Gives `out` back, untouched, for anything else.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn finish_avx512<'a>(acc: Sums, out: QOut<'a>) -> Option<QOut<'a>> {
        use crate::kernels::cpu::qgemm::{round_div_avx512, Reciprocal};
        let (ep, rq) = match &out {
            QOut::F32(_, ep) => (*ep, None),
            QOut::U8(_, ep, rq) => (*ep, Some(*rq)),
            QOut::I32(_) => return Some(out),
        };
        let (lo, hi) = match ep.act {
            None => (f32::NEG_INFINITY, f32::INFINITY),
            Some(crate::ir::Activation::Relu) => (0.0, f32::INFINITY),
            Some(crate::ir::Activation::Clip { min, max }) => (*min, *max),
            Some(_) => return Some(out),
        };
        let clamp = ep.act.is_some();
        let n = acc.len();
        let s = _mm512_set1_ps(ep.a_scale * ep.b_scales[0]);
        let bias = ep.bias.map(|b| _mm512_set1_ps(b[0]));
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let rcp = Reciprocal::new(rq.map_or(1.0, |r| r.scale));
        // The output's first byte and element size: written through raw
        // pointers, lanes masked past n.
        let (f32_out, u8_out) = match out {
            QOut::F32(c, _) => {
                assert!(c.len() >= n, "depthwise: output shorter than the plane");
                (Some(c.as_mut_ptr()), None)
            }
            QOut::U8(c, _, _) => {
                assert!(c.len() >= n, "depthwise: output shorter than the plane");
                (None, Some(c.as_mut_ptr()))
            }
            QOut::I32(_) => unreachable!("returned above"),
        };
        if let Some(r) = ep.residual {
            assert!(r.len() >= n, "depthwise: residual shorter than the plane");
        }
        for i in (0..n).step_by(16) {
            let live = 16.min(n - i);
            let mask: __mmask16 = if live == 16 {
                0xffff
            } else {
                (1u16 << live) - 1
            };
            // SAFETY: lanes past `live` are masked off in every load and
            // store; the rest lie in `acc`, the residual and the output
            // (each at least n long).
            let a = match acc {
                Sums::I32(v) => {
                    _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, v.as_ptr().add(i)))
                }
                Sums::F32(v) => _mm512_maskz_loadu_ps(mask, v.as_ptr().add(i)),
            };
            let mut y = _mm512_mul_ps(a, s);
            if let Some(b) = bias {
                y = _mm512_add_ps(y, b);
            }
            if let Some(r) = ep.residual {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(i)));
            }
            if clamp {
                // vmaxps/vminps return the second operand on NaN: y.
                y = _mm512_min_ps(vhi, _mm512_max_ps(vlo, y));
            }
            if let Some(c) = f32_out {
                _mm512_mask_storeu_ps(c.add(i), mask, y);
            }
            if let (Some(c), Some(rq)) = (u8_out, rq) {
                let q = round_div_avx512(y, rq.scale, rcp);
                let q = _mm512_add_ps(q, _mm512_set1_ps(rq.zero_point as f32));
                // vmaxps returns the second operand (0) on NaN.
                let q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
                _mm512_mask_cvtepi32_storeu_epi8(c.add(i) as *mut i8, mask, _mm512_cvtps_epi32(q));
            }
        }
        None
    }

    /// [`super::to_f32_minus`] in AVX2 registers.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_f32_minus(x: &[u8], za: u8, out: &mut [f32]) {
        let n = x.len().min(out.len());
        let z = _mm256_set1_epi32(za as i32);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: 8 bytes at i lie in x, 8 floats at i in out.
            let b = _mm_loadl_epi64(x.as_ptr().add(i) as *const __m128i);
            let v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(b), z);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtepi32_ps(v));
            i += 8;
        }
        for (d, &v) in out[i..n].iter_mut().zip(&x[i..n]) {
            *d = (v as i32 - za as i32) as f32;
        }
    }

    /// [`super::to_i32_exact`] in AVX2 registers (`vcvtps2dq` is exact on
    /// integers).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_i32_exact(y: &[f32], out: &mut [i32]) {
        let n = y.len().min(out.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: 8 floats at i lie in y, 8 ints at i in out.
            let v = _mm256_cvtps_epi32(_mm256_loadu_ps(y.as_ptr().add(i)));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, v);
            i += 8;
        }
        for (d, &v) in out[i..n].iter_mut().zip(&y[i..n]) {
            *d = v as i32;
        }
    }

    /// The whole plane on AVX-VNNI.
    ///
    /// # Safety
    /// The CPU has AVX2 and AVX-VNNI; buffers sized by [`plane`].
    #[target_feature(enable = "avx2,fma,avxvnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_vnni256(
        x: &[u8],
        za: u8,
        geom: &QConvGeom,
        s: &Shape,
        init: i32,
        buf: &mut Scratch,
        out: QOut,
        features: Features,
    ) {
        build(x, za, geom, s, buf, true);
        accumulate::<Y>(geom, s, init, buf);
        finish(&buf.acc[..s.oh * s.ow], &mut buf.yf, out, features);
    }

    /// The whole plane on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2; buffers sized by [`plane`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_avx2(
        x: &[u8],
        za: u8,
        geom: &QConvGeom,
        s: &Shape,
        init: i32,
        buf: &mut Scratch,
        out: QOut,
        features: Features,
    ) {
        build(x, za, geom, s, buf, true);
        accumulate::<M>(geom, s, init, buf);
        finish(&buf.acc[..s.oh * s.ow], &mut buf.yf, out, features);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile model's 2^62 stride (and a pad past the plane): the quad
    /// path's padded rows would not fit, so the plain loop runs, exactly.
    #[test]
    fn huge_strides_and_pads_take_the_plain_loop() {
        let x: Vec<u8> = (0..16).map(|v| v as u8 * 10).collect();
        let wt = [1i8, -2, 3, -4];
        for (strides, pads, want) in [
            // Output (0, 0) reads x[0], x[1], x[4], x[5].
            ([1usize << 62, 1 << 62], [0usize; 4], {
                let (a, b, c, d) = (0 - 5, 10 - 5, 40 - 5, 50 - 5);
                a - 2 * b + 3 * c - 4 * d
            }),
            // Padded by 2^40 on top: every tap of the one row lands above
            // the plane.
            ([1 << 62, 1 << 62], [1usize << 40, 0, 0, 0], 0),
        ] {
            let geom = QConvGeom {
                kernel: [2, 2],
                strides,
                dilations: [1, 1],
                pads,
                group: 1,
            };
            let (oh, ow) = geom.out_hw(4, 4).expect("the window fits");
            let mut acc = vec![7i32; oh * ow];
            for f in [Features::portable(), Features::detect()] {
                plane(f, &x, (4, 4), 5, &geom, (oh, ow), &wt, QOut::I32(&mut acc));
                assert_eq!(acc[0], want, "{strides:?} {pads:?}");
            }
        }
    }
}

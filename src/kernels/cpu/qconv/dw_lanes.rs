//! The int8 depthwise kernel with **channels in the vector lanes**
//! (AVX512-VNNI): sixteen output channels of one batch item at a time, so
//! a plane of any size fills every lane (MobileNetV2's 7x7 planes waste
//! two thirds of a pixel-lane vector) and the per-plane set-up is paid once
//! per sixteen channels.
//!
//! For a group of sixteen channels:
//! 1. Their input planes are interleaved, `[row][column][16]` bytes, with
//!    the padding rows and columns the window reads set to the zero point
//!    `za` (a 16x16 byte transpose per sixteen pixels).
//! 2. Each output pixel starts from `−za · Σ w` per channel and adds, for
//!    each kernel row and each group of four taps, one `vpdpbusd`: the
//!    64 bytes of four neighbouring pixels (the taps of one kernel row read
//!    neighbouring columns: dilation 1 along the width) are turned into one
//!    4-tap word per channel (`vpermd` then `vpshufb`) and multiplied by
//!    the channel's four weights (0 past the kernel's width). Padding reads
//!    `za`, so `Σ x·w − za·Σ w = Σ (x − za)·w`, exact in wrapping i32
//!    arithmetic because the true sum fits.
//! 3. A requantized output without residual is finished in the lanes
//!    (per-channel scale and bias, then the requantization with the
//!    activation's clamp folded in, [`super::super::qgemm`]'s `RequantZ`:
//!    the reference's values bit for bit), four pixels packed into 64
//!    bytes, and transposed back into the channels' planes; any other
//!    output transposes the accumulators and runs the plane epilogue on
//!    each channel.
//!
//! On a 2-core Xeon with AVX512-VNNI (CPUID family 6 model 207) this took
//! MobileNetV2's int8 depthwise layers from 3.3 to 1.7 ms a
//! 224x224 image on one thread, 2-3x per layer (the plane kernels run
//! 7x7 to 28x28 planes mostly on empty lanes and set up per plane).

use super::super::geometry::Window2d;
use super::super::qgemm::QOut;
use super::super::Features;
use super::QConvGeom;

/// Channels in one vector (i32 lanes of a 512-bit register).
pub(super) const LANES: usize = 16;

/// Interleaved input bytes of one group above which the kernel steps
/// aside (a geometry whose padded plane is huge: a hostile model's pads).
const MAX_INTERLEAVED: usize = 1 << 26;

/// The geometry of one group's work, checked once per convolution.
#[derive(Clone, Debug)]
// Off x86-64 no plan is made (`Plan::new`), so no field is read.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Plan {
    win: Window2d,
    /// Groups of four taps per kernel row.
    quads: usize,
    /// Rows and columns of the interleaved input: every row and column a
    /// window reads, padding included.
    hp: usize,
    wp: usize,
    /// Output channels per input channel.
    mult: usize,
}

impl Plan {
    /// The plan for a depthwise convolution (`c` input, `m` output
    /// channels, one input channel per group) of an `h × w` input into `oh
    /// × ow`, when this kernel runs it: AVX512-VNNI, dilation 1 along the
    /// width, and a padded plane of bounded size.
    pub(super) fn new(
        features: Features,
        geom: &QConvGeom,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        (m, c): (usize, usize),
    ) -> Option<Plan> {
        if !features.avx512vnni || !cfg!(target_arch = "x86_64") {
            return None;
        }
        if geom.group != c || c == 0 || !m.is_multiple_of(c) || geom.dilations[1] != 1 {
            return None;
        }
        let [kh, kw] = geom.kernel;
        let quads = kw.div_ceil(4);
        // Every row and column a window reads: the last output's window
        // ends there (`out_hw` guarantees it lies in the padded input, but
        // the last group of four taps may read up to three columns past).
        let hp = (oh - 1)
            .checked_mul(geom.strides[0])?
            .checked_add((kh - 1).checked_mul(geom.dilations[0])?)?
            .checked_add(1)?;
        let wp = (ow - 1)
            .checked_mul(geom.strides[1])?
            .checked_add(4 * quads)?;
        let bytes = hp.checked_mul(wp)?.checked_mul(LANES)?;
        (bytes <= MAX_INTERLEAVED).then_some(Plan {
            win: geom.window((h, w), (oh, ow)),
            quads,
            hp,
            wp,
            mult: m / c,
        })
    }
}

/// The weights as the lane kernel reads them, made when the convolution is
/// packed: per group of sixteen output channels and per (kernel row, group
/// of four taps), one vector whose dword `l` holds channel `16q + l`'s four
/// taps (0 past the kernel's width and past `m`); and each channel's sum
/// of weights (the start value is `−za` times it).
#[derive(Clone, Debug)]
// Read by the x86-64 kernel only (made everywhere: packs are plain data).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct LaneWeights {
    /// `(kh · quads)` vectors of sixteen dwords per group.
    words: Vec<u32>,
    /// Per channel, padded with zeros to whole groups.
    sums: Vec<i32>,
    /// Vectors per group.
    per_group: usize,
}

impl LaneWeights {
    /// From the `[m, kh · kw]` weights of a depthwise convolution.
    pub(super) fn new(w: &[i8], m: usize, [kh, kw]: [usize; 2]) -> LaneWeights {
        let (taps, quads) = (kh * kw, kw.div_ceil(4));
        let groups = m.div_ceil(LANES);
        let per_group = kh * quads;
        let mut words = vec![0u32; groups * per_group * LANES];
        let mut sums = vec![0i32; groups * LANES];
        for (ch, wc) in w.chunks_exact(taps).take(m).enumerate() {
            sums[ch] = wc.iter().map(|&v| v as i32).sum();
            let (q, l) = (ch / LANES, ch % LANES);
            for ki in 0..kh {
                let row = &wc[ki * kw..(ki + 1) * kw];
                for g in 0..quads {
                    let b: [u8; 4] =
                        std::array::from_fn(|j| row.get(4 * g + j).map_or(0, |&v| v as u8));
                    words[((q * per_group) + ki * quads + g) * LANES + l] = u32::from_le_bytes(b);
                }
            }
        }
        LaneWeights {
            words,
            sums,
            per_group,
        }
    }
}

/// Output channels per task: a divisor of `m` that is a whole number of
/// vectors where one exists (so no task but the last of an item has a
/// partial group), about a quarter of the work a thread gets.
pub(super) fn channels_per_task(m: usize, nb: usize, threads: usize) -> usize {
    if threads <= 1 {
        return m;
    }
    let want = (nb * m).div_ceil(4 * threads).max(LANES);
    (1..=want.min(m))
        .rev()
        .find(|&d| m.is_multiple_of(d) && d.is_multiple_of(LANES))
        .unwrap_or(m)
}

/// Output channels `ch0 .. ch0 + out's channels` of one batch item (`ch0`
/// a multiple of sixteen, as [`channels_per_task`] makes them): `x` the
/// item's input planes, `lw` the weights, `out` these channels' planes
/// (`cpc · oh · ow`) with their epilogue.
#[allow(clippy::too_many_arguments)]
pub(super) fn planes(
    plan: &Plan,
    features: Features,
    x: &[u8],
    za: u8,
    lw: &LaneWeights,
    ch0: usize,
    cpc: usize,
    out: QOut,
) {
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(features.avx512vnni, "Plan::new checks the CPU");
        // SAFETY: a plan exists only where the CPU has AVX512-VNNI (and
        // with it AVX-512 F and BW; VL comes with BW on every such CPU).
        unsafe { x86::planes(plan, features, x, za, lw, ch0, cpc, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (plan, features, x, za, lw, ch0, cpc, out);
        unreachable!("Plan::new gives no plan off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::super::super::gemm::with_buf;
    use super::super::super::qgemm::{
        byte_mask, pack_u8x64, panel_mask, QEpilogue, QOut, RequantZ,
    };
    use super::super::super::Features;
    use super::super::dw::{self, grow};
    use super::super::split_out;
    use super::{LaneWeights, Plan, LANES};

    thread_local! {
        /// One group's interleaved input planes.
        static INTERLEAVED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        /// One group's outputs, `[pixel][16]`, on their way into planes.
        static LANE_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        /// One group's accumulators, `[pixel][16]`, for the plane epilogue.
        static LANE_ACC: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
        /// Accumulator planes for the plane epilogue.
        static PLANES: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    }

    /// The requantizing epilogue in the lanes: per-channel scale and bias
    /// of one group, then the requantization with the clamp folded in.
    struct LaneEpilogue {
        scale: __m512,
        bias: Option<__m512>,
        requant: RequantZ,
    }

    /// The part of `out` (a task's `cpc` channels) for channels `g0 .. g0
    /// + n`, `p` pixels a channel.
    fn group_out<'a>(out: &'a mut QOut, g0: usize, n: usize, p: usize) -> QOut<'a> {
        let sub = |ep: &QEpilogue<'a>| {
            let mut e = *ep;
            if e.b_scales.len() != 1 {
                e.b_scales = &ep.b_scales[g0..g0 + n];
            }
            e.bias = ep.bias.map(|b| &b[g0..g0 + n]);
            e.residual = ep.residual.map(|r| &r[g0 * p..(g0 + n) * p]);
            e
        };
        let at = g0 * p..(g0 + n) * p;
        match out {
            QOut::I32(c) => QOut::I32(&mut c[at]),
            QOut::F32(c, ep) => QOut::F32(&mut c[at], sub(ep)),
            QOut::U8(c, ep, rq) => QOut::U8(&mut c[at], sub(ep), *rq),
        }
    }

    /// The in-lane epilogue of a group's output, when it is one: a
    /// requantized output, no residual, no activation but a clamp.
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_epilogue(out: &QOut, n: usize) -> Option<LaneEpilogue> {
        let QOut::U8(_, ep, rq) = out else {
            return None;
        };
        if ep.residual.is_some() {
            return None;
        }
        let clamp = match ep.act {
            None => None,
            Some(crate::ir::Activation::Relu) => Some((0.0, f32::INFINITY)),
            Some(crate::ir::Activation::Clip { min, max }) => Some((*min, *max)),
            Some(_) => return None,
        };
        // Lanes past n are never stored; scale 0 keeps them finite.
        let mut scale = [0f32; LANES];
        let mut bias = [0f32; LANES];
        for c in 0..n {
            scale[c] = ep.a_scale * ep.b_scales[if ep.b_scales.len() == 1 { 0 } else { c }];
            if let Some(b) = ep.bias {
                bias[c] = b[c];
            }
        }
        Some(LaneEpilogue {
            scale: _mm512_loadu_ps(scale.as_ptr()),
            bias: ep.bias.map(|_| _mm512_loadu_ps(bias.as_ptr())),
            requant: RequantZ::new(*rq, clamp)?,
        })
    }

    /// See [`super::planes`].
    ///
    /// # Safety
    /// The CPU must support AVX512-VNNI, AVX-512 F, BW and VL.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn planes(
        plan: &Plan,
        features: Features,
        x: &[u8],
        za: u8,
        lw: &LaneWeights,
        ch0: usize,
        cpc: usize,
        mut out: QOut,
    ) {
        let p = plan.win.oh * plan.win.ow;
        let plane_in = plan.win.h * plan.win.w;
        assert!(
            x.len() >= (ch0 + cpc).div_ceil(plan.mult) * plane_in,
            "depthwise: input shorter than its channels"
        );
        assert!(
            ch0.is_multiple_of(LANES)
                && lw.per_group == plan.win.kh * plan.quads
                && lw.sums.len() >= (ch0 + cpc).next_multiple_of(LANES),
            "depthwise: weights packed for another kernel or channels"
        );
        with_buf(&INTERLEAVED, |buf| {
            with_buf(&LANE_OUT, |lane_out| {
                let in_len = plan.hp * plan.wp * LANES;
                // Slack: the last four-pixel load of a row may pass the
                // plane's end by a vector, and the output transposes read
                // whole sixteen-pixel blocks.
                grow(buf, in_len + 64);
                grow(lane_out, p.next_multiple_of(LANES) * LANES);
                // A group's weight vectors, loaded into the same room.
                let mut w = Vec::with_capacity(lw.per_group);
                for g0 in (0..cpc).step_by(LANES) {
                    let n = LANES.min(cpc - g0);
                    let first = ch0 + g0;
                    let go = group_out(&mut out, g0, n, p);
                    interleave(plan, x, za, first, n, buf);
                    let init = weights(lw, za, first / LANES, &mut w);
                    match lane_epilogue(&go, n) {
                        Some(ep) => {
                            accumulate(plan, buf, init, &w, |i, accs| {
                                store_u8(&ep, accs, lane_out.as_mut_ptr().add(i * LANES))
                            });
                            let QOut::U8(dst, ..) = go else {
                                unreachable!("lane epilogues requantize")
                            };
                            untangle_u8(lane_out, n, p, dst);
                        }
                        None => with_buf(&LANE_ACC, |accs| {
                            grow(accs, p * LANES);
                            let dst = accs.as_mut_ptr();
                            accumulate(plan, buf, init, &w, |i, accs| {
                                for (u, acc) in accs.iter().enumerate() {
                                    let at = dst.add((i + u) * LANES) as *mut __m512i;
                                    _mm512_storeu_si512(at, *acc)
                                }
                            });
                            finish_planes(features, accs, n, p, go);
                        }),
                    }
                }
            })
        })
    }

    /// Interleaves the input planes of output channels `first .. first +
    /// n` into `buf` (`[hp][wp][16]`), `za` wherever a window reads
    /// padding; lanes past `n` hold anything finite (their weights are 0).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn interleave(plan: &Plan, x: &[u8], za: u8, first: usize, n: usize, buf: &mut [u8]) {
        let row_bytes = plan.wp * LANES;
        let plane_in = plan.win.h * plan.win.w;
        // The columns that hold input: `pad_left ..`, as far as the
        // window reads.
        let c0 = plan.win.pad_left.min(plan.wp);
        let c1 = (plan.win.pad_left + plan.win.w).min(plan.wp);
        // The lanes' input planes: channel `first + l` reads input channel
        // `(first + l) / mult` (found once: sixteen divisions a row were a
        // fifth of this function's time).
        let planes: [*const u8; LANES] = std::array::from_fn(|l| {
            let ci = (first + l.min(n - 1)) / plan.mult;
            x.as_ptr().add(ci * plane_in)
        });
        for br in 0..plan.hp {
            let bytes = &mut buf[br * row_bytes..(br + 1) * row_bytes];
            let iy = br.wrapping_sub(plan.win.pad_top);
            if iy >= plan.win.h || c1 <= c0 {
                bytes.fill(za);
                continue;
            }
            bytes[..c0 * LANES].fill(za);
            bytes[c1 * LANES..].fill(za);
            let row = bytes.as_mut_ptr();
            let src = planes.map(|p| p.add(iy * plan.win.w));
            let cols = c1 - c0;
            for ix in (0..cols).step_by(16) {
                let live = 16.min(cols - ix);
                let m16 = panel_mask(live);
                let z: [__m512i; 4] = std::array::from_fn(|r| {
                    let lane =
                        |l: usize| _mm_maskz_loadu_epi8(m16, src[4 * l + r].add(ix) as *const i8);
                    let v = _mm512_castsi128_si512(lane(0));
                    let v = _mm512_inserti32x4::<1>(v, lane(1));
                    let v = _mm512_inserti32x4::<2>(v, lane(2));
                    _mm512_inserti32x4::<3>(v, lane(3))
                });
                let t = transpose16(z);
                let dst = row.add((c0 + ix) * LANES);
                for (k, v) in t.iter().enumerate() {
                    let bytes = (live * LANES).saturating_sub(64 * k);
                    if bytes > 0 {
                        _mm512_mask_storeu_epi8(dst.add(64 * k) as *mut i8, byte_mask(bytes), *v);
                    }
                }
            }
        }
    }

    /// A 16x16 byte transpose: `z[r]` holds rows `r, r + 4, r + 8, r + 12`
    /// in its four 128-bit lanes; the result's vector `k` holds columns `4k
    /// .. 4k + 4` as rows, in lane order.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn transpose16(z: [__m512i; 4]) -> [__m512i; 4] {
        // In each 128-bit lane L: rows 4L, 4L + 1 byte-interleaved, and
        // rows 4L + 2, 4L + 3 (columns 0-7, then 8-15) ...
        let t0 = _mm512_unpacklo_epi8(z[0], z[1]);
        let t1 = _mm512_unpackhi_epi8(z[0], z[1]);
        let t2 = _mm512_unpacklo_epi8(z[2], z[3]);
        let t3 = _mm512_unpackhi_epi8(z[2], z[3]);
        // ... then dword j of lane L is column j (of 0-3, 4-7, 8-11,
        // 12-15) of rows 4L .. 4L + 4 ...
        let u = [
            _mm512_unpacklo_epi16(t0, t2),
            _mm512_unpackhi_epi16(t0, t2),
            _mm512_unpacklo_epi16(t1, t3),
            _mm512_unpackhi_epi16(t1, t3),
        ];
        // ... and a 4x4 dword transpose puts a column's four dwords side
        // by side.
        let idx = dword_transpose();
        u.map(|v| _mm512_permutexvar_epi32(idx, v))
    }

    /// The dword permutation that transposes a 4x4 matrix of dwords (`out
    /// [4i + j] = in[4j + i]`).
    #[target_feature(enable = "avx512f")]
    unsafe fn dword_transpose() -> __m512i {
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
    }

    /// Group `q`'s start value (`−za · Σ w` per channel), returned, and
    /// its weight vectors, into `w`.
    #[target_feature(enable = "avx512f")]
    unsafe fn weights(lw: &LaneWeights, za: u8, q: usize, w: &mut Vec<__m512i>) -> __m512i {
        let words = &lw.words[q * lw.per_group * LANES..(q + 1) * lw.per_group * LANES];
        w.clear();
        for v in words.chunks_exact(LANES) {
            w.push(_mm512_loadu_si512(v.as_ptr() as *const __m512i));
        }
        let sums = _mm512_loadu_si512(lw.sums[q * LANES..].as_ptr() as *const __m512i);
        _mm512_mullo_epi32(sums, _mm512_set1_epi32(-(za as i32)))
    }

    /// Every output pixel's accumulators (sixteen channels), handed to
    /// `emit` four pixels at a time (fewer at a row's end) with the first
    /// one's index.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn accumulate(
        plan: &Plan,
        buf: &[u8],
        init: __m512i,
        w: &[__m512i],
        emit: impl FnMut(usize, &[__m512i]),
    ) {
        // The 3x3 kernels (one quad of taps a row) with the kernel's shape
        // known to the compiler: their loops unrolled and the three weight
        // vectors in registers (the general loop kept its counters and
        // weights on the stack: 1.3x slower per layer on a Zen 5).
        if plan.win.kh == 3 && plan.quads == 1 {
            accumulate_k::<3, 1>(plan, buf, init, w, emit)
        } else {
            accumulate_k::<0, 0>(plan, buf, init, w, emit)
        }
    }

    /// [`accumulate`] for `KH` kernel rows of `Q` quads of taps, or the
    /// plan's own when they are 0.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn accumulate_k<const KH: usize, const Q: usize>(
        plan: &Plan,
        buf: &[u8],
        init: __m512i,
        w: &[__m512i],
        mut emit: impl FnMut(usize, &[__m512i]),
    ) {
        let kh = if KH == 0 { plan.win.kh } else { KH };
        let quads = if Q == 0 { plan.quads } else { Q };
        debug_assert!(kh == plan.win.kh && quads == plan.quads && w.len() >= kh * quads);
        // A known shape's weights, loaded once (`emit` stores through a
        // raw pointer, so the compiler would reload them per pixel).
        let fixed: [__m512i; 3] = std::array::from_fn(|i| {
            if KH * Q > i {
                w[i]
            } else {
                _mm512_setzero_si512()
            }
        });
        let weight = |i: usize| if KH * Q > 0 { fixed[i] } else { w[i] };
        let row_bytes = plan.wp * LANES;
        // Opaque to the compiler: it would otherwise merge the two shuffles
        // below into nine narrower ones.
        let perm = std::hint::black_box(dword_transpose());
        // Within each 128-bit lane: byte 4i + j from byte 4j + i (four
        // pixels' bytes of one channel into that channel's word).
        let shuf = _mm512_broadcast_i32x4(_mm_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
        ));
        let quad = |p: *const u8| {
            let v = _mm512_loadu_si512(p as *const __m512i);
            _mm512_shuffle_epi8(_mm512_permutexvar_epi32(perm, v), shuf)
        };
        let step = plan.win.sw * LANES;
        let dh_bytes = plan.win.dh * row_bytes;
        for oy in 0..plan.win.oh {
            let base = buf.as_ptr().add(oy * plan.win.sh * row_bytes);
            let mut ox = 0;
            while ox + 4 <= plan.win.ow {
                let mut acc = [init; 4];
                for ki in 0..kh {
                    let row = base.add(ki * dh_bytes + ox * step);
                    for g in 0..quads {
                        let wv = weight(ki * quads + g);
                        let at = row.add(4 * g * LANES);
                        for (u, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_dpbusd_epi32(*a, quad(at.add(u * step)), wv);
                        }
                    }
                }
                emit(oy * plan.win.ow + ox, &acc);
                ox += 4;
            }
            while ox < plan.win.ow {
                let mut acc = init;
                for ki in 0..kh {
                    let row = base.add(ki * dh_bytes + ox * step);
                    for g in 0..quads {
                        let wv = weight(ki * quads + g);
                        acc = _mm512_dpbusd_epi32(acc, quad(row.add(4 * g * LANES)), wv);
                    }
                }
                emit(oy * plan.win.ow + ox, &[acc]);
                ox += 1;
            }
        }
    }

    /// Finishes up to four pixels' accumulators through the lane epilogue
    /// and stores their sixteen bytes each from `dst`: the plane
    /// epilogue's operations in its order (`(acc as f32) · scale`, `+
    /// bias`, then the clamp and the requantization).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn store_u8(ep: &LaneEpilogue, accs: &[__m512i], dst: *mut u8) {
        let mut v = [_mm512_setzero_si512(); 4];
        for (q, &acc) in v.iter_mut().zip(accs) {
            let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), ep.scale);
            if let Some(b) = ep.bias {
                y = _mm512_add_ps(y, b);
            }
            *q = ep.requant.lanes(y);
        }
        let mask = byte_mask(accs.len() * LANES);
        _mm512_mask_storeu_epi8(dst as *mut i8, mask, pack_u8x64(v));
    }

    /// `[pixel][16]` bytes into the first `n` channels' planes of `dst`
    /// (`p` pixels each).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn untangle_u8(lanes: &[u8], n: usize, p: usize, dst: &mut [u8]) {
        assert!(dst.len() >= n * p && lanes.len() >= p.next_multiple_of(16) * LANES);
        let src = lanes.as_ptr();
        for q0 in (0..p).step_by(16) {
            let live = 16.min(p - q0);
            let m16 = panel_mask(live);
            // Rows are pixels here: vector r's lane L is pixel 4L + r.
            let z: [__m512i; 4] = std::array::from_fn(|r| {
                let px =
                    |l: usize| _mm_loadu_si128(src.add((q0 + 4 * l + r) * LANES) as *const __m128i);
                let v = _mm512_castsi128_si512(px(0));
                let v = _mm512_inserti32x4::<1>(v, px(1));
                let v = _mm512_inserti32x4::<2>(v, px(2));
                _mm512_inserti32x4::<3>(v, px(3))
            });
            for (k, v) in transpose16(z).iter().enumerate() {
                let mut lanes16 = [0u8; 64];
                _mm512_storeu_si512(lanes16.as_mut_ptr() as *mut __m512i, *v);
                for j in 0..4 {
                    let c = 4 * k + j;
                    if c < n {
                        let row = _mm_loadu_si128(lanes16.as_ptr().add(16 * j) as *const __m128i);
                        _mm_mask_storeu_epi8(dst.as_mut_ptr().add(c * p + q0) as *mut i8, m16, row);
                    }
                }
            }
        }
    }

    /// The general epilogue: the accumulators (`[pixel][16]` i32) into
    /// planes, then the plane epilogue on each of the `n` channels.
    fn finish_planes(features: Features, accs: &[i32], n: usize, p: usize, out: QOut) {
        with_buf(&PLANES, |planes| {
            grow(planes, n * p);
            for (q, px) in accs.chunks_exact(LANES).take(p).enumerate() {
                for (c, &v) in px.iter().take(n).enumerate() {
                    planes[c * p + q] = v;
                }
            }
            let mut yf = Vec::new();
            for (c, o) in split_out(out, n * p, 1, n, p).into_iter().enumerate() {
                dw::finish_any(features, &planes[c * p..(c + 1) * p], &mut yf, o);
            }
        })
    }
}

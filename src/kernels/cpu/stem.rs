//! Convolutions over a few input channels with a 3x3 stride-2 window on
//! AVX-512, straight from the input: the stems of MobileNet, EfficientNet
//! and their kin (3 -> 32 channels, 224x224 -> 112x112).
//!
//! The direct GEMM path copies the input split into stride phases, then
//! sweeps a reduction only 27 deep per register tile: most of its time is
//! the copy and the stores. Here every output row's `3 C` input rows are
//! split into even and odd columns once ([`lanes::HalvedRow`]), the `9 C`
//! tap vectors of 16 outputs stay in registers, and each output channel is
//! `9 C` fused multiply-adds of them with broadcast weights (in the order
//! of the weights: channel, kernel row, kernel column), plus the bias,
//! residual and Relu/Clip, stored straight into its plane. Output rows are
//! split across threads; every output gets the same arithmetic whatever
//! the split.

use super::geometry::Window2d;
use super::{ops, CpuCtx, Features, OutPtr};
use crate::ir::Activation;

/// Most input channels (per group of one) this path takes: `9 C` tap
/// vectors, two accumulators and two broadcasts fit the 32 registers.
const MAX_CHANNELS: usize = 3;

/// Most vectors of 16 outputs in a row.
const MAX_VECTORS: usize = 8;

/// Whether [`run`] computes a convolution of window `win` with `group`
/// groups of `cg` input channels on this CPU.
pub(super) fn applies(win: &Window2d, cg: usize, group: usize, features: Features) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        features.avx512f
            && ops::has_avx512()
            && group == 1
            && (1..=MAX_CHANNELS).contains(&cg)
            && win.halved_3x3()
            && (1..=MAX_VECTORS).contains(&win.ow.div_ceil(16))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (win, cg, group, features, MAX_CHANNELS, MAX_VECTORS);
        false
    }
}

/// `y = act(conv(x, w) + bias + residual)` for `n` batch items of `c`
/// input and `m` output channels, where [`applies`] holds: `w` is `[m][c][3][3]`, `x`
/// `[n][c][h][w]`, `y` and the residual `[n][m][oh][ow]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    win: &Window2d,
    n: usize,
    c: usize,
    m: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    let fits = applies(win, c, 1, cx.features)
        && x.len() == n * c * in_plane
        && w.len() == m * c * 9
        && y.len() == n * m * out_plane
        && bias.is_none_or(|b| b.len() == m)
        && residual.is_none_or(|r| r.len() == y.len());
    if !fits {
        // Unreachable from `conv`, which checks `applies` and the shapes.
        debug_assert!(false, "stem::run: inconsistent arguments");
        return;
    }
    let (clamp, late_act) = super::gemm::split_act(act);
    let zeros = vec![0.0; m];
    let bias = bias.unwrap_or(&zeros);
    // Bands of output rows: a few per thread, each at least a few rows.
    let per = win.oh.div_ceil(4 * cx.threads).max(4).min(win.oh.max(1));
    let bands = win.oh.div_ceil(per);
    let out = OutPtr(y.as_mut_ptr());
    cx.for_each(n * bands, |t| {
        let (ni, band) = (t / bands, t % bands);
        let rows = band * per..((band + 1) * per).min(win.oh);
        let item = Item {
            win,
            m,
            x: &x[ni * c * in_plane..(ni + 1) * c * in_plane],
            w,
            bias,
            residual: residual.map(|r| &r[ni * m * out_plane..(ni + 1) * m * out_plane]),
            clamp,
            y: out.at(ni * m * out_plane),
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `applies` checked AVX-512; the shapes were checked above;
        // band `t` alone writes rows `rows` of batch item `ni`'s planes.
        unsafe {
            item.rows_avx512(c, rows.clone())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = item;
        if let Some(act) = late_act {
            for plane in 0..m {
                let at = ni * m * out_plane + plane * out_plane;
                // SAFETY: as above: these rows are this task's alone, and
                // `y` outlives the tasks.
                let band = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.at(at + rows.start * win.ow),
                        rows.len() * win.ow,
                    )
                };
                ops::activation(act, band, cx.features);
            }
        }
    });
}

/// One batch item's convolution.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Item<'a> {
    win: &'a Window2d,
    m: usize,
    /// The item's input planes.
    x: &'a [f32],
    w: &'a [f32],
    bias: &'a [f32],
    /// The item's residual planes.
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
    /// The item's first output plane.
    y: *mut f32,
}

#[cfg(target_arch = "x86_64")]
impl Item<'_> {
    /// Output rows `rows` of every plane, for `c` input channels.
    ///
    /// # Safety
    /// AVX-512F; [`applies`] holds and the shapes are [`run`]'s; no other
    /// thread accesses these rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_avx512(&self, c: usize, rows: std::ops::Range<usize>) {
        macro_rules! by_width {
            ($c:literal) => {
                match self.win.ow.div_ceil(16) {
                    1 => self.rows::<$c, 1>(rows),
                    2 => self.rows::<$c, 2>(rows),
                    3 => self.rows::<$c, 3>(rows),
                    4 => self.rows::<$c, 4>(rows),
                    5 => self.rows::<$c, 5>(rows),
                    6 => self.rows::<$c, 6>(rows),
                    7 => self.rows::<$c, 7>(rows),
                    _ => self.rows::<$c, 8>(rows),
                }
            };
        }
        match c {
            1 => by_width!(1),
            2 => by_width!(2),
            _ => by_width!(3),
        }
    }

    /// [`Item::rows_avx512`] for `C` input channels and `NB` vectors a row.
    ///
    /// # Safety
    /// As [`Item::rows_avx512`].
    #[inline(always)]
    unsafe fn rows<const C: usize, const NB: usize>(&self, rows: std::ops::Range<usize>) {
        use super::lanes::{HalvedRow, Halves};
        use std::arch::x86_64::*;
        let win = self.win;
        let (h, w, oh, ow) = (win.h, win.w, win.oh, win.ow);
        let (in_plane, out_plane) = (h * w, oh * ow);
        let last = ow - 16 * (NB - 1);
        let (lo, hi) = self.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let zero = _mm512_setzero_ps();
        let split = HalvedRow::<NB>::new(w, win.pad_left == 1, zero);
        let taps_per_channel = 9 * C;
        for oy in rows {
            // Input row (channel ci, kernel row ky) split, at 3 ci + ky; a
            // padding row is zeros, its taps multiplied in like the others.
            let mut split_rows: [Halves<NB>; 3 * MAX_CHANNELS] =
                [split.padding(); 3 * MAX_CHANNELS];
            for ci in 0..C {
                for ky in 0..3 {
                    if let Some(iy) = (2 * oy + ky).checked_sub(win.pad_top).filter(|&iy| iy < h) {
                        let row = self.x.as_ptr().add(ci * in_plane + iy * w);
                        split_rows[3 * ci + ky] = split.split(row);
                    }
                }
            }
            for b in 0..NB {
                // Tap (ci, ky, kx) at 9 ci + 3 ky + kx: the weights' order.
                let mut taps = [zero; 9 * MAX_CHANNELS];
                for (r, halves) in split_rows[..3 * C].iter().enumerate() {
                    let t = halves.taps(b);
                    taps[3 * r] = t[0];
                    taps[3 * r + 1] = t[1];
                    taps[3 * r + 2] = t[2];
                }
                let mask: __mmask16 = if b + 1 < NB || last == 16 {
                    0xffff
                } else {
                    ((1u32 << last) - 1) as __mmask16
                };
                let at = oy * ow + 16 * b;
                // Two output channels at a time: two chains of
                // multiply-adds in flight.
                let mut oc = 0;
                while oc < self.m {
                    let pair = oc + 1 < self.m;
                    let w0 = self.w.as_ptr().add(oc * taps_per_channel);
                    let w1 = if pair { w0.add(taps_per_channel) } else { w0 };
                    let mut a0 = _mm512_set1_ps(self.bias[oc]);
                    let mut a1 = _mm512_set1_ps(self.bias[if pair { oc + 1 } else { oc }]);
                    for (t, &x) in taps[..taps_per_channel].iter().enumerate() {
                        a0 = _mm512_fmadd_ps(_mm512_set1_ps(*w0.add(t)), x, a0);
                        a1 = _mm512_fmadd_ps(_mm512_set1_ps(*w1.add(t)), x, a1);
                    }
                    for (k, a) in [a0, a1].into_iter().enumerate().take(1 + pair as usize) {
                        let plane = (oc + k) * out_plane;
                        let mut y = a;
                        if let Some(r) = self.residual {
                            let rp = r.as_ptr().add(plane + at);
                            y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, rp));
                        }
                        if self.clamp.is_some() {
                            // max_ps / min_ps return the second operand on
                            // NaN: NaN stays NaN, as the other paths' clamp.
                            y = _mm512_min_ps(vhi, _mm512_max_ps(vlo, y));
                        }
                        _mm512_mask_storeu_ps(self.y.add(plane + at), mask, y);
                    }
                    oc += 2;
                }
            }
        }
    }
}

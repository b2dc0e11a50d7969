//! f32 depthwise convolution with sixteen channels in the lanes of an
//! AVX-512 register: [`super::dw_c8`]'s kernel at twice its width.
//!
//! Sixteen input planes are transposed, 16 × 16 floats at a time, into a
//! padded scratch where a position's sixteen channels are one vector; each
//! output's taps accumulate in one register (the bias first, then the taps
//! in the plane kernel's order, so every output is bit for bit the plane
//! kernel's); the outputs are transposed back into their planes, with the
//! residual and the clamp. On small planes this beats the plane kernel,
//! which leaves most lanes of a 7- or 14-wide row empty, and the 8-lane
//! kernel, which needs twice the instructions for the same outputs.

use std::arch::x86_64::*;

use super::InterleavedPlan;

/// Channels a vector holds.
pub(super) const LANES: usize = 16;

/// Transposes sixteen rows of sixteen floats: `r[i][j]` becomes `r[j][i]`.
/// (Pairs interleaved, then quads, then 128-bit lanes twice: 64 shuffles.)
/// Plain loops, not `array::from_fn`: its closures do not inline into the
/// `target_feature` caller, and every shuffle became a call.
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    // t[2p], t[2p+1]: rows 2p and 2p+1 interleaved (low and high pairs of
    // each 128-bit lane).
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    // u[4q + k]: lane L holds column 4L + k of rows 4q .. 4q + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        for h in 0..2 {
            let (a, b) = (t[4 * q + h], t[4 * q + 2 + h]);
            u[4 * q + 2 * h] = _mm512_shuffle_ps::<0x44>(a, b);
            u[4 * q + 2 * h + 1] = _mm512_shuffle_ps::<0xEE>(a, b);
        }
    }
    // v[k] (k < 4): lanes 0, 2 of rows 0-3 and 4-7 (columns k, 8 + k);
    // v[4 + k]: lanes 1, 3 (columns 4 + k, 12 + k); v[8 + ..]: rows 8-15.
    let mut v = [_mm512_setzero_ps(); 16];
    for h in 0..2 {
        for k in 0..4 {
            let (a, b) = (u[8 * h + k], u[8 * h + 4 + k]);
            v[8 * h + k] = _mm512_shuffle_f32x4::<0x88>(a, b);
            v[8 * h + 4 + k] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }
    // Column j = 8m + 4o + k: v[4o + k] and v[8 + 4o + k], their even
    // (m = 0) or odd (m = 1) lanes.
    let mut out = [_mm512_setzero_ps(); 16];
    for ok in 0..8 {
        out[ok] = _mm512_shuffle_f32x4::<0x88>(v[ok], v[8 + ok]);
        out[8 + ok] = _mm512_shuffle_f32x4::<0xDD>(v[ok], v[8 + ok]);
    }
    out
}

/// Mask of the first `n` lanes.
#[inline(always)]
fn first(n: usize) -> __mmask16 {
    ((1u32 << n.min(LANES)) - 1) as __mmask16
}

/// Depthwise convolution of the sixteen planes `first..first + 16` (flat
/// batch * C + channel): `x` their input planes, `y` their output planes,
/// `res` their residual, `buf` the plan's scratch (padding zero).
///
/// # Safety
/// The CPU must support AVX-512F; the sizes are [`super::dw_c8`]'s
/// checked ones for a plan of sixteen lanes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dw_c16(
    plan: &InterleavedPlan,
    first_plane: usize,
    x: &[f32],
    res: Option<&[f32]>,
    buf: &mut [f32],
    y: &mut [f32],
) {
    let win = plan.win;
    let (in_plane, out_plane, ntaps) = (win.in_plane(), win.out_plane(), plan.taps.len());
    debug_assert!(plan.lanes == LANES && buf.len() == plan.scratch_len());
    let (xi, rest) = buf.split_at_mut(plan.hp * plan.wp * LANES);
    let (o16, rest) = rest.split_at_mut(out_plane * LANES);
    let (w16, b16) = rest.split_at_mut(ntaps * LANES);
    weights(plan, first_plane, w16, b16);
    // Input rows, 16 columns at a time, transposed into the scratch.
    let xp = x.as_ptr();
    for ih in 0..win.h {
        let dst = xi
            .as_mut_ptr()
            .add(((ih + win.pad_top) * plan.wp + win.pad_left) * LANES);
        for iw in (0..win.w).step_by(LANES) {
            let n = (win.w - iw).min(LANES);
            let mut r = [_mm512_setzero_ps(); 16];
            for (c, v) in r.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(first(n), xp.add(c * in_plane + ih * win.w + iw));
            }
            let r = transpose16(r);
            // (A loop over the first n would compile to a memcpy call.)
            if n == LANES {
                for (j, v) in r.iter().enumerate() {
                    _mm512_storeu_ps(dst.add((iw + j) * LANES), *v);
                }
            } else {
                for (j, v) in r.iter().enumerate().take(n) {
                    _mm512_storeu_ps(dst.add((iw + j) * LANES), *v);
                }
            }
        }
    }
    // Each output: bias, then the taps in order (as the plane kernel).
    let vb = _mm512_loadu_ps(b16.as_ptr());
    let (xs, ws, os) = (xi.as_ptr(), w16.as_ptr(), o16.as_mut_ptr());
    let step = win.sw * LANES;
    for oh in 0..win.oh {
        let row = xs.add(oh * win.sh * plan.wp * LANES);
        let out = os.add(oh * win.ow * LANES);
        let mut ow = 0;
        // Four outputs at once: four independent FMA chains.
        while ow + 4 <= win.ow {
            let x0 = row.add(ow * step);
            let mut acc = [vb; 4];
            for (t, &off) in plan.taps.iter().enumerate() {
                let wv = _mm512_loadu_ps(ws.add(t * LANES));
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0.add(u * step + off)), *a);
                }
            }
            for (u, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add((ow + u) * LANES), *a);
            }
            ow += 4;
        }
        while ow < win.ow {
            let x0 = row.add(ow * step);
            let mut acc = vb;
            for (t, &off) in plan.taps.iter().enumerate() {
                let wv = _mm512_loadu_ps(ws.add(t * LANES));
                acc = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0.add(off)), acc);
            }
            _mm512_storeu_ps(out.add(ow * LANES), acc);
            ow += 1;
        }
    }
    // Back to the planes, 16 positions at a time: residual, clamp, store.
    let (lo, hi) = plan.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let yp = y.as_mut_ptr();
    for p0 in (0..out_plane).step_by(LANES) {
        let n = (out_plane - p0).min(LANES);
        let mut r = [_mm512_setzero_ps(); 16];
        for (j, v) in r.iter_mut().enumerate().take(n) {
            *v = _mm512_loadu_ps(os.add((p0 + j) * LANES));
        }
        let r = transpose16(r);
        for (c, &v) in r.iter().enumerate() {
            let at = c * out_plane + p0;
            let mut v = v;
            if let Some(res) = res {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(first(n), res.as_ptr().add(at)));
            }
            if plan.clamp.is_some() {
                // As the plane kernel: max/min return the bound for NaN.
                v = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));
            }
            _mm512_mask_storeu_ps(yp.add(at), first(n), v);
        }
    }
}

/// The group's weights by tap (`w16[t · 16 + l]`: tap `t` of the channel
/// of plane `first_plane + l`) and its biases.
///
/// # Safety
/// The CPU must support AVX-512F; `w16` holds `taps · 16` floats, `b16`
/// 16, and the plan's weights `c · taps`.
#[inline(always)]
unsafe fn weights(plan: &InterleavedPlan, first_plane: usize, w16: &mut [f32], b16: &mut [f32]) {
    let ntaps = plan.taps.len();
    let ch0 = first_plane % plan.c;
    for l in 0..LANES {
        b16[l] = plan.bias.map_or(0.0, |b| b[(ch0 + l) % plan.c]);
    }
    if ch0 + LANES > plan.c {
        // The group wraps to the next batch item's first channels.
        for l in 0..LANES {
            let ch = (ch0 + l) % plan.c;
            for t in 0..ntaps {
                w16[t * LANES + l] = plan.w[ch * ntaps + t];
            }
        }
        return;
    }
    // Sixteen consecutive channels: their taps transposed, 16 at a time.
    let wp = plan.w.as_ptr().add(ch0 * ntaps);
    for t0 in (0..ntaps).step_by(LANES) {
        let n = (ntaps - t0).min(LANES);
        let mut r = [_mm512_setzero_ps(); 16];
        for (l, v) in r.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(first(n), wp.add(l * ntaps + t0));
        }
        let r = transpose16(r);
        for (j, v) in r.iter().enumerate().take(n) {
            _mm512_storeu_ps(w16.as_mut_ptr().add((t0 + j) * LANES), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: CPU lacks AVX-512F");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut out = [0f32; 256];
        // SAFETY: AVX-512F checked above; 16 rows of 16 floats in `m` and
        // `out`.
        unsafe {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(m.as_ptr().add(16 * i));
            }
            let r = transpose16(r);
            for (i, v) in r.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *v);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * i + j], m[16 * j + i], "({i}, {j})");
            }
        }
    }
}

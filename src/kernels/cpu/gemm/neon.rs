//! The aarch64 NEON f32 micro-kernel of the GEMM: a `6 × 16` register tile
//! (24 of the 32 128-bit registers as accumulators, four for a B row, two
//! for a depth step's six A values), one `FMLA` by element per 4 products.
//!
//! It reads the packed panels of the AVX2 kernel's shape (A in panels of 6
//! rows, B of 16 columns) and B through the same cursor ([`BRows`]), so it
//! serves every operand form of the driver: packed, B read in place, and
//! the direct convolution's tap table ([`super::gemm_direct`]). Like the
//! x86 kernels it has an instance per tile height and width in vectors, so
//! edge tiles compute only their rows and vectors; partial vectors and
//! tiles stored by pieces go through the scalar epilogue (`mul_add`, one
//! rounding, as `FMLA`), so every lane rounds as the vector store does.
//!
//! Tested under qemu (`tests/aarch64/`); its speed on real hardware is for
//! the cost model to estimate, emulated timings mean nothing.

use std::arch::aarch64::*;

use super::{ep_scalar, BRows, Strided, Tile};

/// Rows of the NEON register tile.
pub(super) const MR_NEON: usize = 6;
/// Columns of the NEON register tile (four q registers).
pub(super) const NR_NEON: usize = 16;

/// NEON micro-kernel for a tile of any size up to `6 × 16`, B's rows
/// `bstep` apart.
///
/// # Safety
/// The CPU must support NEON; `a` holds `kc*6` floats, `b` `kc` rows of 16
/// floats `bstep` apart, and the tile lies inside C with no other live
/// reference to it.
#[target_feature(enable = "neon")]
pub(super) unsafe fn kernel_neon(kc: usize, a: &[f32], b: &[f32], bstep: usize, t: &Tile) {
    debug_assert!(a.len() >= kc * MR_NEON && b.len() >= (kc - 1) * bstep + NR_NEON);
    let b = Strided {
        p: b.as_ptr(),
        step: bstep,
    };
    kernel_neon_rows(kc, a.as_ptr(), b, t)
}

/// [`kernel_neon`] with B's rows given by a cursor: picks the instance of
/// [`tile_neon`] that computes just the tile's rows and column vectors.
///
/// # Safety
/// As [`kernel_neon`]: `a` points at `kc*6` floats and `b` yields `kc`
/// rows of 16 readable floats.
#[target_feature(enable = "neon")]
pub(super) unsafe fn kernel_neon_rows<B: BRows>(kc: usize, a: *const f32, b: B, t: &Tile) {
    debug_assert!(t.rows >= 1 && t.rows <= MR_NEON && t.cols >= 1 && t.cols <= NR_NEON);
    macro_rules! by_rows {
        ($($r:literal)*) => {
            match (t.rows, t.cols.div_ceil(4)) {
                $(
                    ($r, 1) => tile_neon::<$r, 1, B>(kc, a, b, t),
                    ($r, 2) => tile_neon::<$r, 2, B>(kc, a, b, t),
                    ($r, 3) => tile_neon::<$r, 3, B>(kc, a, b, t),
                    ($r, _) => tile_neon::<$r, 4, B>(kc, a, b, t),
                )*
                _ => unreachable!("a tile has 1 to {MR_NEON} rows"),
            }
        };
    }
    by_rows!(1 2 3 4 5 6)
}

/// The kernel body: rows `0..R`, `NV` vectors of 4 columns, in `R·NV`
/// accumulators. Per depth step: `NV` loads of B, one 4-float and one
/// 2-float load of A (the panel always holds 6), `R·NV` `FMLA`s by lane.
///
/// # Safety
/// As [`kernel_neon_rows`], with `R` the tile's rows and `NV` vectors
/// covering its columns.
#[target_feature(enable = "neon")]
unsafe fn tile_neon<const R: usize, const NV: usize, B: BRows>(
    kc: usize,
    a: *const f32,
    mut b: B,
    t: &Tile,
) {
    let mut acc = [[vdupq_n_f32(0.0); NV]; R];
    let mut ap = a;
    for _ in 0..kc {
        let bp = b.next_row();
        let bv: [float32x4_t; NV] = std::array::from_fn(|v| vld1q_f32(bp.add(4 * v)));
        let a03 = vld1q_f32(ap);
        let a45 = vld1_f32(ap.add(4));
        macro_rules! row {
            ($r:literal, $fma:ident, $src:ident, $lane:literal) => {
                if $r < R {
                    for (c, &bv) in acc[$r].iter_mut().zip(&bv) {
                        *c = $fma::<$lane>(*c, bv, $src);
                    }
                }
            };
        }
        row!(0, vfmaq_laneq_f32, a03, 0);
        row!(1, vfmaq_laneq_f32, a03, 1);
        row!(2, vfmaq_laneq_f32, a03, 2);
        row!(3, vfmaq_laneq_f32, a03, 3);
        row!(4, vfmaq_lane_f32, a45, 0);
        row!(5, vfmaq_lane_f32, a45, 1);
        ap = ap.add(MR_NEON);
    }
    if t.pieces.is_empty() {
        store(&acc, t);
    } else {
        store_pieces(&acc, t);
    }
}

/// Stores the tile: `alpha·acc` (plus C when accumulating, fused), then
/// the epilogue's adds and clamp in [`ep_scalar`]'s order; whole vectors
/// in registers, a partial last vector lane by lane with the same
/// roundings.
///
/// # Safety
/// As [`tile_neon`].
#[target_feature(enable = "neon")]
unsafe fn store<const R: usize, const NV: usize>(acc: &[[float32x4_t; NV]; R], t: &Tile) {
    let alpha = vdupq_n_f32(t.alpha);
    let ep = t.ep;
    let (lo, hi) = ep.clamp.unwrap_or((0.0, 0.0));
    let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
    for (r, acc_r) in acc.iter().enumerate() {
        let cp = t.c.add(r * t.ldc);
        for (v, &acc_v) in acc_r.iter().enumerate() {
            let off = 4 * v;
            if t.cols < off + 4 {
                store_lanes(acc_v, t, r, off, t.cols - off);
                continue;
            }
            let mut x = if t.accumulate {
                vfmaq_f32(vld1q_f32(cp.add(off)), acc_v, alpha)
            } else {
                vmulq_f32(acc_v, alpha)
            };
            if !ep.bias_col.is_null() {
                x = vaddq_f32(x, vld1q_f32(ep.bias_col.add(off)));
            }
            if !ep.bias_row.is_null() {
                x = vaddq_f32(x, vdupq_n_f32(*ep.bias_row.add(r)));
            }
            if !ep.residual.is_null() {
                x = vaddq_f32(x, vld1q_f32(ep.residual.add(r * t.ldc + off)));
            }
            if ep.clamp.is_some() {
                // maxNum first, then minNum: NaN becomes lo like f32::max.
                x = vminnmq_f32(vmaxnmq_f32(x, lo), hi);
            }
            vst1q_f32(cp.add(off), x);
        }
    }
}

/// Stores lanes `0..n` of one accumulator vector at column `off` of row
/// `r`, through [`ep_scalar`].
///
/// # Safety
/// As [`tile_neon`]; columns `off..off + n` lie in the tile.
#[inline(always)]
unsafe fn store_lanes(acc: float32x4_t, t: &Tile, r: usize, off: usize, n: usize) {
    let mut vals = [0.0f32; 4];
    vst1q_f32(vals.as_mut_ptr(), acc);
    for (l, &v) in vals.iter().enumerate().take(n) {
        let c = off + l;
        let p = t.c.add(r * t.ldc + c);
        let x = if t.accumulate {
            v.mul_add(t.alpha, *p)
        } else {
            v * t.alpha
        };
        *p = ep_scalar(t, r, c, x);
    }
}

/// The store of a tile whose lanes land in C by pieces
/// ([`Tile::pieces`]): lane by lane through [`ep_scalar`] (the residual,
/// like C, is addressed from column 0).
///
/// # Safety
/// As [`tile_neon`]; the pieces' columns lie in C (and the residual) on
/// every row of the tile, and `bias_col` is null.
#[target_feature(enable = "neon")]
unsafe fn store_pieces<const R: usize, const NV: usize>(acc: &[[float32x4_t; NV]; R], t: &Tile) {
    debug_assert!(t.ep.bias_col.is_null());
    for (r, acc_r) in acc.iter().enumerate() {
        let mut vals = [0.0f32; 16];
        for (v, &acc_v) in acc_r.iter().enumerate() {
            vst1q_f32(vals.as_mut_ptr().add(4 * v), acc_v);
        }
        for pc in t.pieces {
            for (l, &v) in vals.iter().enumerate().take(pc.hi).skip(pc.lo) {
                let c = pc.col + l - pc.lo;
                let p = t.c.add(r * t.ldc + c);
                let x = if t.accumulate {
                    v.mul_add(t.alpha, *p)
                } else {
                    v * t.alpha
                };
                *p = ep_scalar(t, r, c, x);
            }
        }
    }
}

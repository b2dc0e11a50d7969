//! The aarch64 int8 micro-kernels: exact u8 × i8 products into i32 on NEON,
//! with `SDOT` where the CPU has the dotprod extension (chosen at run time)
//! and a plain NEON kernel everywhere else.
//!
//! * **`SDOT`** (`6 × 16`, 4 depths per instruction): B is packed as for
//!   x86 VNNI (each column's 4 depths side by side, 64 bytes a group), A
//!   as 6 rows of 4-byte groups; `sdot v.4s, b.16b, a.4b[r]` adds the four
//!   products of row r with four columns into each lane. `SDOT` is signed ×
//!   signed where VNNI is unsigned × signed, so the u8 activations are
//!   packed shifted to i8 (`a − 128`, a flip of the top bit: [`flip_signs`])
//!   and the product's zero point becomes `za − 128` (the driver's
//!   `QKernel::act_offset`): `Σ (a − za)·b = Σ (a − 128)·b − (za − 128)·Σ b`.
//!   Each product is at most `128 · 128` in magnitude, and the i32 sums are
//!   exact (wrapping, then corrected by the zero point term) for every depth
//!   up to `MAX_K`.
//! * **plain NEON** (`4 × 16`, one depth per instruction, two per loop
//!   step): the operands are widened to i16 in registers (u8 zero-extended,
//!   i8 sign-extended) and `SMLAL`/`SMLAL2` by element add i16 × i16
//!   products into i32 lanes, exact for any weights (each product is at
//!   most `255 · 128`). It reads the portable kernel's packing (4 rows, one
//!   depth a row of bytes), so no activation shift.
//!
//! `SDOT` has no stable Rust intrinsic yet (`vdotq_laneq_s32` is behind
//! `stdarch_neon_dotprod` on Rust 1.96), so it is one `asm!` instruction in
//! a function compiled with the `dotprod` target feature. Both kernels are
//! tested bit for bit against the integer reference under qemu
//! (`tests/aarch64/`).

use std::arch::aarch64::*;
use std::arch::asm;

use super::NR;

/// Rows of the `SDOT` kernel's tile.
pub(super) const MR_SDOT: usize = 6;
/// Rows of the plain NEON kernel's tile.
pub(super) const MR_MLAL: usize = 4;

/// The activation shift of the `SDOT` kernel's packing: u8 `a` is stored
/// as the i8 `a − 128`.
pub(super) const SDOT_ACT_OFFSET: i32 = 128;

/// Shifts packed u8 activations to i8 (`a − 128`, the same bits with the
/// top one flipped) for the `SDOT` kernel. Padding bytes become −128 too,
/// which is harmless: the weights are zero there.
pub(super) fn flip_signs(buf: &mut [u8]) {
    for x in buf {
        *x ^= 0x80;
    }
}

/// `SDOT` `6 × 16` kernel over `groups` groups of 4 depths: `a` is an A
/// panel (6 rows × 4 bytes a group), `b` a B panel (16 columns × 4 bytes a
/// group), both i8 (activations shifted by [`flip_signs`]); the tile's i32
/// `(r, c)` at `tile[r * 16 + c]` is added to when `accumulate`, else
/// overwritten.
///
/// # Safety
/// The CPU must support NEON and dotprod; `a` holds `groups * 24` bytes,
/// `b` `groups * 64`, `tile` 96 i32.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn kernel_sdot(
    groups: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
) {
    debug_assert!(tile.len() >= MR_SDOT * NR);
    let t = tile.as_mut_ptr();
    let mut c = [[vdupq_n_s32(0); 4]; MR_SDOT];
    if accumulate {
        for (r, cr) in c.iter_mut().enumerate() {
            for (v, cv) in cr.iter_mut().enumerate() {
                *cv = vld1q_s32(t.add(r * NR + 4 * v));
            }
        }
    }
    let (mut ap, mut bp) = (a as *const i8, b as *const i8);
    for _ in 0..groups {
        let bv: [int8x16_t; 4] = std::array::from_fn(|v| vld1q_s8(bp.add(16 * v)));
        let a03 = vld1q_s8(ap);
        let a45 = vld1_s8(ap.add(16));
        macro_rules! row {
            ($r:literal, $src:ident, $lane:literal) => {
                for (cv, &bv) in c[$r].iter_mut().zip(&bv) {
                    // SAFETY: SDOT reads and writes registers only; the
                    // dotprod feature is enabled on this function.
                    asm!(
                        concat!("sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[", $lane, "]"),
                        acc = inout(vreg) *cv,
                        b = in(vreg) bv,
                        a = in(vreg) $src,
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
            };
        }
        row!(0, a03, 0);
        row!(1, a03, 1);
        row!(2, a03, 2);
        row!(3, a03, 3);
        row!(4, a45, 0);
        row!(5, a45, 1);
        ap = ap.add(4 * MR_SDOT);
        bp = bp.add(4 * NR);
    }
    for (r, cr) in c.iter().enumerate() {
        for (v, &cv) in cr.iter().enumerate() {
            vst1q_s32(t.add(r * NR + 4 * v), cv);
        }
    }
}

/// Plain NEON `4 × 16` kernel over `depths` depths, on the portable
/// kernel's packing (A: 4 bytes a depth, B: 16): A is u8 and B i8, or A i8
/// and B u8 when `WX` (weights on the left). The tile is as for
/// [`kernel_sdot`] (`4 × 16` i32).
///
/// # Safety
/// The CPU must support NEON; `a` holds `depths * 4` bytes, `b` `depths *
/// 16`, `tile` 64 i32.
#[target_feature(enable = "neon")]
pub(super) unsafe fn kernel_mlal<const WX: bool>(
    depths: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
) {
    debug_assert!(tile.len() >= MR_MLAL * NR);
    let t = tile.as_mut_ptr();
    let mut c = [[vdupq_n_s32(0); 4]; MR_MLAL];
    if accumulate {
        for (r, cr) in c.iter_mut().enumerate() {
            for (v, cv) in cr.iter_mut().enumerate() {
                *cv = vld1q_s32(t.add(r * NR + 4 * v));
            }
        }
    }
    // One B row (16 bytes) as two vectors of eight i16 lanes.
    let widen_b = |p: *const u8| -> [int16x8_t; 2] {
        let v = vld1q_u8(p);
        if WX {
            [
                vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(v))),
                vreinterpretq_s16_u16(vmovl_high_u8(v)),
            ]
        } else {
            let s = vreinterpretq_s8_u8(v);
            [vmovl_s8(vget_low_s8(s)), vmovl_high_s8(s)]
        }
    };
    // Eight A bytes (two depths of four rows) as i16 lanes.
    let widen_a = |v: uint8x8_t| -> int16x8_t {
        if WX {
            vmovl_s8(vreinterpret_s8_u8(v))
        } else {
            vreinterpretq_s16_u16(vmovl_u8(v))
        }
    };
    // Row r's products with one B row, A's value in lane `$lane`.
    macro_rules! rows {
        ($av:ident, $b:ident, $($r:literal $lane:literal),*) => {
            $(
                let cr = &mut c[$r];
                cr[0] = vmlal_laneq_s16::<$lane>(cr[0], vget_low_s16($b[0]), $av);
                cr[1] = vmlal_high_laneq_s16::<$lane>(cr[1], $b[0], $av);
                cr[2] = vmlal_laneq_s16::<$lane>(cr[2], vget_low_s16($b[1]), $av);
                cr[3] = vmlal_high_laneq_s16::<$lane>(cr[3], $b[1], $av);
            )*
        };
    }
    let (mut ap, mut bp) = (a, b);
    let mut d = 0;
    while d + 2 <= depths {
        // Lanes 0..4: depth d's rows; lanes 4..8: depth d + 1's.
        let av = widen_a(vld1_u8(ap));
        let b0 = widen_b(bp);
        let b1 = widen_b(bp.add(NR));
        rows!(av, b0, 0 0, 1 1, 2 2, 3 3);
        rows!(av, b1, 0 4, 1 5, 2 6, 3 7);
        ap = ap.add(2 * MR_MLAL);
        bp = bp.add(2 * NR);
        d += 2;
    }
    if d < depths {
        // The last odd depth: only its four A bytes are there to read.
        let av = widen_a(vcreate_u8((ap as *const u32).read_unaligned() as u64));
        let b0 = widen_b(bp);
        rows!(av, b0, 0 0, 1 1, 2 2, 3 3);
    }
    for (r, cr) in c.iter().enumerate() {
        for (v, &cv) in cr.iter().enumerate() {
            vst1q_s32(t.add(r * NR + 4 * v), cv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::features;
    use super::super::{qgemm, qgemm_wx, QMatA, QMatX, QOut, QPackedA, QPackedB, MAX_K};
    use crate::kernels::cpu::CpuCtx;

    /// `Σ_k (a[i, k] − za) · w[k, j]` in i64, A `m × k`, W `k × n`.
    fn reference(a: &[u8], za: u8, w: &[i8], m: usize, k: usize, n: usize) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for i in 0..m {
            for p in 0..k {
                let x = a[i * k + p] as i64 - za as i64;
                for j in 0..n {
                    c[i * n + j] += x * w[p * n + j] as i64;
                }
            }
        }
        c
    }

    /// The product both ways, activations on the left ([`qgemm`]) and
    /// weights on the left ([`qgemm_wx`], computing the transpose), against
    /// [`reference`], bit for bit.
    fn check(
        a: &[u8],
        za: u8,
        w: &[i8],
        (m, k, n): (usize, usize, usize),
        cx: &CpuCtx,
        what: &str,
    ) {
        let want = reference(a, za, w, m, k, n);
        let pb = QPackedB::new(k, n, w, n, false, cx.features).expect("k within MAX_K");
        let qa = QMatA {
            data: a,
            ld: k,
            trans: false,
            zero_point: za,
        };
        let mut c = vec![0i32; m * n];
        qgemm(m, qa, &pb, QOut::I32(&mut c), n, cx);
        for (x, (&g, &r)) in c.iter().zip(&want).enumerate() {
            assert_eq!(
                g as i64,
                r,
                "{what} m{m} k{k} n{n} za{za}: ({}, {})",
                x / n,
                x % n
            );
        }
        // Weights left: W' = Wᵀ (n × k), X' = Aᵀ (k × m), C' = Cᵀ.
        let wt: Vec<i8> = (0..n * k).map(|x| w[(x % k) * n + x / k]).collect();
        let at: Vec<u8> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
        let pw = QPackedA::new(n, k, &wt, cx.features).expect("k within MAX_K");
        let qx = QMatX {
            data: &at,
            ld: m,
            zero_point: za,
        };
        let mut ct = vec![0i32; n * m];
        qgemm_wx(&pw, qx, m, QOut::I32(&mut ct), m, cx);
        for j in 0..n {
            for i in 0..m {
                let (g, r) = (ct[j * m + i] as i64, want[i * n + j]);
                assert_eq!(
                    g, r,
                    "{what} (weights left) m{m} k{k} n{n} za{za}: ({i}, {j})"
                );
            }
        }
    }

    /// The extremes of `SDOT`'s shifted activations: `a = 0` becomes −128
    /// (so `(−128)·(−128)` products), `a = 255` becomes 127, every zero point
    /// around the shift, depths around the 4-depth group and the plain
    /// kernel's 2-depth step; on every aarch64 feature set.
    #[test]
    fn shifted_activation_extremes_are_bit_exact() {
        let (m, n) = (7, 19);
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            for k in [1usize, 2, 3, 4, 5, 8, 255] {
                for za in [0u8, 1, 127, 128, 129, 255] {
                    for av in [0u8, 127, 128, 255] {
                        for wv in [-128i8, -1, 127] {
                            let a = vec![av; m * k];
                            let w = vec![wv; k * n];
                            check(&a, za, &w, (m, k, n), &cx, &format!("{name} a{av} w{wv}"));
                        }
                    }
                }
            }
            // Alternating signs along the depth, the rows and the columns.
            for k in [4usize, 7, 3001] {
                for za in [0u8, 128, 255] {
                    let a: Vec<u8> = (0..m * k)
                        .map(|x| if (x / k + x) % 2 == 0 { 0 } else { 255 })
                        .collect();
                    let w: Vec<i8> = (0..k * n)
                        .map(|x| if (x / n + x % n) % 3 == 0 { -128 } else { 127 })
                        .collect();
                    check(&a, za, &w, (m, k, n), &cx, &format!("{name} alternating"));
                }
            }
        }
    }

    /// At the largest depth, `(0 − 255) · (−128)` summed `MAX_K` times is
    /// the largest accumulator there is, 2_147_483_520; `SDOT`'s raw sum
    /// `(−128)·(−128)·MAX_K` and its correction wrap and come back to it.
    #[test]
    fn largest_accumulator_through_the_shift() {
        let (m, n, k) = (2, 3, MAX_K);
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            let pb = QPackedB::new(k, n, &vec![-128i8; k * n], n, false, f).expect("MAX_K");
            let a = vec![0u8; m * k];
            let qa = QMatA {
                data: &a,
                ld: k,
                trans: false,
                zero_point: 255,
            };
            let mut c = vec![0i32; m * n];
            qgemm(m, qa, &pb, QOut::I32(&mut c), n, &cx);
            assert!(c.iter().all(|&v| v == 2_147_483_520), "{name}: {c:?}");
        }
    }
}

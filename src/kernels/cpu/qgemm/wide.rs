//! The weights-left product ([`super::qgemm_wx`]) on AVX512-VNNI with
//! wide tiles: `6 × 64` (six rows of W, four X panels of 16 columns).
//!
//! The `12 × 16` kernel of [`super::kernel_vnni512`] loads one X vector and
//! broadcasts twelve weight words for twelve `vpdpbusd`: thirteen loads
//! for twelve products, so it waits on the load ports, and its 16-column
//! tiles make the epilogue's per-row work (zero point correction, scale,
//! bias) run once per 16 outputs. A `6 × 64` tile loads four X vectors and
//! broadcasts six weight words for 24 `vpdpbusd` (10 loads), and runs the
//! whole depth in registers: no depth blocks, no accumulator traffic
//! through memory. The operands are the same packs: W's 12-row panels are
//! read six rows at a time (a panel's weight words for one depth group are
//! contiguous, 4 bytes a row), X's 16-column panels four at a time.
//!
//! The whole depth of a 64-column X block (`64 · k` bytes) is read by every
//! row tile: in L1 for k up to ~700, from L2 beyond (it holds 2 MiB on the
//! CPUs this runs on; a 4608-deep layer's block is 288 KiB).
//!
//! The accumulators are the `12 × 16` kernel's, bit for bit (integer sums
//! in another order), and the epilogue ([`super::Finish::wide_tile`])
//! does the same operations, so results do not depend on the path.

use std::ops::Range;

use super::{QGemmWx, QKernel, NR};

/// Rows of W a wide tile covers (half of the packed panel's 12).
const ROWS: usize = 6;
/// X panels a wide tile covers.
const PANELS: usize = 4;

/// Where the wide kernel reads X: the 64 bytes of column panel `q`
/// (16 columns, four depths each), depth group `g`, at `data[q · panel +
/// g · group..]`: packed column blocks ([`super::pack_x`]) and filled
/// panels ([`super::FillPanels`]) have `group` = 64 and `panel` the bytes
/// of all the depth groups.
#[derive(Clone, Copy)]
pub(super) struct XQuads<'a> {
    pub(super) data: &'a [u8],
    pub(super) panel: usize,
    pub(super) group: usize,
}

impl QGemmWx<'_> {
    /// Rows `rows` (`rows.start` a multiple of the packed panel height) and
    /// columns `j0..j0 + nc` of C, X's panel 0 being columns `j0..j0 + 16`.
    pub(super) fn region_wide(&self, x: XQuads, rows: Range<usize>, j0: usize, nc: usize) {
        let mr = self.w.kern.mr();
        debug_assert!(self.w.kern == QKernel::Vnni512 && mr.is_multiple_of(ROWS));
        let groups = self.w.k.div_ceil(4);
        let wdata = &self.w.buf[self.w.off..];
        let panels = nc.div_ceil(NR);
        let mut tile = Tile([0; PANELS * ROWS * NR]);
        for q0 in (0..panels).step_by(PANELS) {
            let v = PANELS.min(panels - q0);
            let xs = XQuads {
                data: &x.data[q0 * x.panel..][..(groups - 1) * x.group + (v - 1) * x.panel + 64],
                ..x
            };
            for i in rows.clone().step_by(ROWS) {
                // Row i's weight words: panel i / mr, at byte 4 · (i % mr)
                // of each group's `4 · mr` bytes.
                let w = &wdata[(i / mr) * self.w.panel_bytes + 4 * (i % mr)..]
                    [..(groups - 1) * 4 * mr + 4 * ROWS];
                // SAFETY: W is packed for AVX512-VNNI only on CPUs that
                // have it (`runs_on`, asserted by the caller); `w` holds
                // `groups` groups of `4 · mr` bytes from this row (the
                // panel is zero-padded past m), `xs` `v` panels of `groups`
                // groups (sliced above), `tile` `v` tiles of ROWS × NR.
                unsafe {
                    match v {
                        4 => kernel::<4>(groups, w, mr, xs, &mut tile.0),
                        3 => kernel::<3>(groups, w, mr, xs, &mut tile.0),
                        2 => kernel::<2>(groups, w, mr, xs, &mut tile.0),
                        _ => kernel::<1>(groups, w, mr, xs, &mut tile.0),
                    }
                }
                let j = j0 + q0 * NR;
                let (r, c) = (ROWS.min(rows.end - i), (v * NR).min(j0 + nc - j));
                self.fin
                    .wide_tile(&tile.0[..v * ROWS * NR], ROWS, i, r, j, c);
            }
        }
    }
}

/// A wide tile's accumulators, panel after panel (`ROWS × NR` each, as the
/// epilogue reads a tile), aligned for whole-vector stores.
#[repr(align(64))]
struct Tile([i32; PANELS * ROWS * NR]);

/// `ROWS × 16V` accumulators over `groups` depth groups: W's weight words
/// at `w` (group stride `4 · mr` bytes), X's `V` panels in `x`; the result
/// stored into `tile` panel after panel.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-VNNI; the slices must hold
/// what the indexing reads (checked in debug builds).
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel<const V: usize>(
    groups: usize,
    w: &[u8],
    mr: usize,
    x: XQuads,
    tile: &mut [i32; PANELS * ROWS * NR],
) {
    use std::arch::x86_64::*;
    debug_assert!(groups > 0 && w.len() >= (groups - 1) * 4 * mr + 4 * ROWS);
    debug_assert!(x.data.len() >= (groups - 1) * x.group + (V - 1) * x.panel + 64);
    let mut c = [[_mm512_setzero_si512(); V]; ROWS];
    let (mut wp, mut xp) = (w.as_ptr(), x.data.as_ptr());
    for _ in 0..groups {
        let xv: [__m512i; V] =
            std::array::from_fn(|q| _mm512_loadu_si512(xp.add(q * x.panel) as *const _));
        for (r, cr) in c.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32((wp.add(4 * r) as *const i32).read_unaligned());
            for (acc, &xq) in cr.iter_mut().zip(&xv) {
                *acc = _mm512_dpbusd_epi32(*acc, xq, wv);
            }
        }
        wp = wp.add(4 * mr);
        xp = xp.add(x.group);
    }
    let t = tile.as_mut_ptr() as *mut __m512i;
    for (r, cr) in c.iter().enumerate() {
        for (q, &acc) in cr.iter().enumerate() {
            _mm512_store_si512(t.add(q * ROWS + r), acc);
        }
    }
}

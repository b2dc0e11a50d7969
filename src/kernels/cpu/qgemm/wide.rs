//! The AVX512-VNNI products with wide tiles: `6 × 64`, six rows of the
//! left operand by four 16-column panels of the right one. Weights on the
//! left ([`super::qgemm_wx`]: W's rows, X's panels) and activations on the
//! left ([`super::qgemm`]: A's rows, packed here over the whole depth, and
//! B's prepacked panels) run the same kernel, the operands of `vpdpbusd`
//! swapped (its first is the u8 one).
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
//! With activations on the left (a transformer's projections: 128 tokens
//! by 384-1536 channels; a classifier's one row) the `12 × 16` kernel
//! also blocked the depth by 512 and kept its accumulators in memory
//! between blocks. On one Zen 5 core (CPUID family 26 model 2) the wide
//! one took the BERT-style encoder's 36 int8 products from 5.52 to 5.11
//! ms a 128-token sequence (the kernel itself now near the `vpdpbusd`
//! peak: the rest is quantization, packing and epilogues), and
//! MobileNetV2's 1280 -> 1000 classifier from 0.046 to 0.019 ms.
//!
//! The accumulators are the `12 × 16` kernel's, bit for bit (integer sums
//! in another order), and the epilogue ([`super::Finish::wide_tile`])
//! does the same operations, so results do not depend on the path.

use std::ops::Range;

use super::{aligned, pack_a, QGemm, QGemmWx, QKernel, MC, NR};

/// Rows of W a wide tile covers (half of the packed panel's 12).
const ROWS: usize = 6;
/// X panels a wide tile covers.
const PANELS: usize = 4;

/// Where the wide kernel reads the right operand (X, or B): the 64 bytes
/// of column panel `q` (16 columns, four depths each), depth group `g`, at
/// `data[q · panel + g · group..]`: packed column blocks
/// ([`super::pack_x`]), filled panels ([`super::FillPanels`]) and
/// [`super::QPackedB`] have `group` = 64 and `panel` the bytes of all the
/// depth groups.
#[derive(Clone, Copy)]
pub(super) struct ColumnQuads<'a> {
    pub(super) data: &'a [u8],
    pub(super) panel: usize,
    pub(super) group: usize,
}

impl QGemmWx<'_> {
    /// Rows `rows` (`rows.start` a multiple of the packed panel height) and
    /// columns `j0..j0 + nc` of C, X's panel 0 being columns `j0..j0 + 16`.
    pub(super) fn region_wide(&self, x: ColumnQuads, rows: Range<usize>, j0: usize, nc: usize) {
        // SAFETY: W is packed for AVX512-VNNI only on CPUs that have it
        // (`runs_on`, asserted by the caller; the feature implies AVX-512
        // F and BW in `Features`).
        unsafe { self.region_wide_avx512(x, rows, j0, nc) }
    }

    /// [`Self::region_wide`], compiled for AVX512-VNNI so that the kernel
    /// and the common u8 epilogue ([`super::RowsU8Out`], set up once here
    /// instead of once a tile) inline into the tile loop.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW and AVX512-VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn region_wide_avx512(&self, x: ColumnQuads, rows: Range<usize>, j0: usize, nc: usize) {
        let mr = self.w.kern.mr();
        debug_assert!(self.w.kern == QKernel::Vnni512 && mr.is_multiple_of(ROWS));
        let groups = self.w.k.div_ceil(4);
        let wdata = &self.w.buf[self.w.off..];
        let panels = nc.div_ceil(NR);
        let mut tile = Tile([0; PANELS * ROWS * NR]);
        let u8_out = self.fin.rows_u8();
        for q0 in (0..panels).step_by(PANELS) {
            let v = PANELS.min(panels - q0);
            let xs = ColumnQuads {
                data: &x.data[q0 * x.panel..][..(groups - 1) * x.group + (v - 1) * x.panel + 64],
                ..x
            };
            for i in rows.clone().step_by(ROWS) {
                // Row i's weight words: panel i / mr, at byte 4 · (i % mr)
                // of each group's `4 · mr` bytes.
                let w = &wdata[(i / mr) * self.w.panel_bytes + 4 * (i % mr)..]
                    [..(groups - 1) * 4 * mr + 4 * ROWS];
                // SAFETY: the CPU's features as this function's; `w` holds
                // `groups` groups of `4 · mr` bytes from this row (the
                // panel is zero-padded past m), `xs` `v` panels of `groups`
                // groups (sliced above), `tile` `v` tiles of ROWS × NR.
                kernel_v::<true>(v, groups, w, mr, xs, &mut tile.0);
                let j = j0 + q0 * NR;
                let (r, c) = (ROWS.min(rows.end - i), (v * NR).min(j0 + nc - j));
                let t = &tile.0[..v * ROWS * NR];
                match &u8_out {
                    // SAFETY: rows i..i + r, columns j..j + c of C are this
                    // task's rectangle (`rows`, `j0..j0 + nc`).
                    Some(out) => self.fin.rows_u8_tile(out, t, ROWS, i..i + r, j..j + c),
                    None => self.fin.wide_tile(t, ROWS, i, r, j, c),
                }
            }
        }
    }
}

/// A wide tile's accumulators, panel after panel (`ROWS × NR` each, as the
/// epilogue reads a tile), aligned for whole-vector stores.
#[repr(align(64))]
struct Tile([i32; PANELS * ROWS * NR]);

impl QGemm<'_> {
    /// Rows `rows`, columns `cols` (`cols.start` a multiple of NR) of C on
    /// AVX512-VNNI with the wide kernel: A's rows packed [`MC`] at a time
    /// over the whole depth (in L2: 110 KiB for a 1536-deep product), then
    /// for each 64 columns of B (`64 · k` bytes, in L1 or L2) every six
    /// rows of the block. The depth must not be 0 (no group to read).
    pub(super) fn region_wide(&self, abuf: &mut Vec<u8>, rows: Range<usize>, cols: Range<usize>) {
        let kern = self.b.kern;
        let mr = kern.mr();
        debug_assert!(kern == QKernel::Vnni512 && mr.is_multiple_of(ROWS));
        debug_assert!(cols.start.is_multiple_of(NR) && self.b.k > 0);
        let k = self.b.k;
        let groups = k.div_ceil(4);
        let a_panel = groups * 4 * mr;
        let a_off = aligned(abuf, MC.div_ceil(mr) * a_panel);
        let bdata = self.b.data();
        let (first, end) = (cols.start / NR, cols.end.div_ceil(NR));
        let mut tile = Tile([0; PANELS * ROWS * NR]);
        for ic in rows.clone().step_by(MC) {
            let mc = MC.min(rows.end - ic);
            let a_len = mc.div_ceil(mr) * a_panel;
            pack_a(
                &mut abuf[a_off..][..a_len],
                kern,
                false,
                &self.a,
                self.m,
                ic,
                mc,
                0,
                k,
            );
            let ablock = &abuf[a_off..][..a_len];
            for q0 in (first..end).step_by(PANELS) {
                let v = PANELS.min(end - q0);
                let bs = ColumnQuads {
                    data: &bdata[q0 * self.b.panel_bytes..]
                        [..(groups - 1) * 64 + (v - 1) * self.b.panel_bytes + 64],
                    panel: self.b.panel_bytes,
                    group: 64,
                };
                for i in (0..mc).step_by(ROWS) {
                    // Rows i .. i + 6 of the block: panel i / mr, at byte
                    // 4 · (i % mr) of each group's `4 · mr` bytes (a
                    // partial panel is zero-padded to mr rows).
                    let a = &ablock[(i / mr) * a_panel + 4 * (i % mr)..]
                        [..(groups - 1) * 4 * mr + 4 * ROWS];
                    // SAFETY: B is packed for AVX512-VNNI only on CPUs that
                    // have it (`runs_on`, asserted before any product); `a`
                    // holds `groups` groups of `4 · mr` bytes from row i,
                    // `bs` `v` panels of `groups` groups (sliced above).
                    unsafe { kernel_v::<false>(v, groups, a, mr, bs, &mut tile.0) };
                    let j = q0 * NR;
                    let (r, c) = (ROWS.min(mc - i), (v * NR).min(cols.end - j));
                    self.fin
                        .wide_tile(&tile.0[..v * ROWS * NR], ROWS, ic + i, r, j, c);
                }
            }
        }
    }
}

/// [`kernel`] for `v` (1 to 4) panels.
///
/// # Safety
/// As [`kernel`]'s.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel_v<const WX: bool>(
    v: usize,
    groups: usize,
    rows: &[u8],
    mr: usize,
    cols: ColumnQuads,
    tile: &mut [i32; PANELS * ROWS * NR],
) {
    match v {
        4 => kernel::<4, WX>(groups, rows, mr, cols, tile),
        3 => kernel::<3, WX>(groups, rows, mr, cols, tile),
        2 => kernel::<2, WX>(groups, rows, mr, cols, tile),
        _ => kernel::<1, WX>(groups, rows, mr, cols, tile),
    }
}

/// `ROWS × 16V` accumulators over `groups` depth groups: the left
/// operand's words at `rows` (group stride `4 · mr` bytes), broadcast; the
/// right operand's `V` panels in `cols`; the result stored into `tile`
/// panel after panel. `WX`: i8 weights on the left and u8 columns (X),
/// else u8 activations on the left and i8 columns (B).
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-VNNI; the slices must hold
/// what the indexing reads (checked in debug builds).
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel<const V: usize, const WX: bool>(
    groups: usize,
    rows: &[u8],
    mr: usize,
    cols: ColumnQuads,
    tile: &mut [i32; PANELS * ROWS * NR],
) {
    use std::arch::x86_64::*;
    debug_assert!(groups > 0 && rows.len() >= (groups - 1) * 4 * mr + 4 * ROWS);
    debug_assert!(cols.data.len() >= (groups - 1) * cols.group + (V - 1) * cols.panel + 64);
    let mut c = [[_mm512_setzero_si512(); V]; ROWS];
    let (mut rp, mut cp) = (rows.as_ptr(), cols.data.as_ptr());
    for _ in 0..groups {
        let cv: [__m512i; V] =
            std::array::from_fn(|q| _mm512_loadu_si512(cp.add(q * cols.panel) as *const _));
        for (r, cr) in c.iter_mut().enumerate() {
            let rv = _mm512_set1_epi32((rp.add(4 * r) as *const i32).read_unaligned());
            for (acc, &cq) in cr.iter_mut().zip(&cv) {
                // vpdpbusd multiplies its first operand's u8 by the second's i8.
                *acc = if WX {
                    _mm512_dpbusd_epi32(*acc, cq, rv)
                } else {
                    _mm512_dpbusd_epi32(*acc, rv, cq)
                };
            }
        }
        rp = rp.add(4 * mr);
        cp = cp.add(cols.group);
    }
    let t = tile.as_mut_ptr() as *mut __m512i;
    for (r, cr) in c.iter().enumerate() {
        for (q, &acc) in cr.iter().enumerate() {
            _mm512_store_si512(t.add(q * ROWS + r), acc);
        }
    }
}

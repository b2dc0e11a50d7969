//! AMX-INT8 products: Intel's tile unit (Sapphire Rapids and later)
//! multiplies a `16 × 64` byte tile by a `16 × 64` byte tile into a
//! `16 × 16` i32 tile in one instruction (`tdpbusd`/`tdpbsud`: 16,384
//! multiply-adds, each dword adding four u8 × s8 products, wrapping, so
//! exactly the VNNI arithmetic).
//!
//! Layouts (one tile is 1 KiB, 16 rows of 64 bytes):
//! * the **left operand** (u8 activations for [`qgemm`](super::qgemm), i8
//!   weights for [`qgemm_wx`](super::qgemm_wx)) in panels of 16 rows, each
//!   panel a run of depth chunks `[chunk][row][64 depths]`;
//! * the **right operand** in the VNNI panels of every other x86 kernel
//!   (`[depth / 4][16 columns][4 depths]`): 16 of its 64-byte rows are one
//!   B tile, so a chunk of a panel is again 1 KiB. Panels are zero-padded to
//!   whole chunks of 64 depths.
//!
//! The micro-kernel keeps up to 2 × 2 accumulator tiles (a `32 × 32` block
//! of C) in tile registers over the whole depth, loading two left and two
//! right tiles per chunk, then stores them for the common epilogue.
//!
//! Measured on an Intel Xeon with AMX (model name hidden by the hypervisor,
//! 2 vCPUs): a 2 × 2 block on L1/L2-resident panels did about 650–675 G
//! multiply-adds a second on one core (and on both at once), against about
//! 350 for the AVX512-VNNI kernel; int8 ResNet-18 at batch 1 on one thread
//! went from 14.1 to 6.7 ms with this kernel and the AVX-512 packing and
//! epilogue.
//!
//! Linux gives a process the tile state only when it asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`]
//! asks once. A thread configures its tiles ([`Tiles::configure`]) for the
//! length of one product and releases them after.

use std::arch::asm;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::OnceLock;

use super::{aligned, pack_x, Finish, QGemm, QGemmWx, QKernel, QMatX, NR};

/// Depths of one tile row (bytes of u8/i8).
pub(super) const CHUNK: usize = 64;
/// Bytes of one tile (16 rows of 64 bytes).
const TILE_BYTES: usize = 1024;
/// Rows of a tile (and of a left-operand panel).
pub(super) const ROWS: usize = 16;
/// Columns of C whose right-operand panels are packed together (weights
/// left) or walked together (activations left): with the left rows they
/// stay in L2.
const NC: usize = 256;
/// Rows of the left operand packed together when it is the activations.
const MC: usize = 64;

/// Whether this CPU has AMX-INT8 and the OS lets this process use the tile
/// state (asked once per process).
pub(crate) fn available() -> bool {
    cpu_has_amx(AMX_INT8) && tile_data_granted()
}

/// Whether this CPU has AMX-BF16 and the OS lets this process use the tile
/// state. No kernel uses it; `mlc probe` and the host target report it.
pub(crate) fn bf16_available() -> bool {
    cpu_has_amx(AMX_BF16) && tile_data_granted()
}

/// CPUID leaf 7 EDX bits: AMX-BF16, AMX-TILE, AMX-INT8.
const AMX_BF16: u32 = 1 << 22;
const AMX_TILE: u32 = 1 << 24;
const AMX_INT8: u32 = 1 << 25;

/// Whether CPUID leaf 7 says AMX-TILE and the `unit` bit.
fn cpu_has_amx(unit: u32) -> bool {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is read only when
    // leaf 0 says it exists.
    #[allow(unused_unsafe)]
    let leaf7 = unsafe {
        if __cpuid_count(0, 0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0)
    };
    leaf7.edx & AMX_TILE != 0 && leaf7.edx & unit != 0
}

/// Whether the OS granted this process the tile data state (asked once per
/// process, and only on a CPU with AMX-TILE).
fn tile_data_granted() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx(AMX_TILE) && request_tile_data())
}

/// Asks Linux for the AMX tile data state; true when granted.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl only changes this process's permitted xsave
    // features; the syscall clobbers rcx and r11, declared here.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

/// Other systems are not asked (none of mlc's targets).
#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The tile configuration (palette 1): tiles 0–7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// This thread's tiles, configured; released when dropped. Not `Send`: the
/// configuration belongs to the thread.
pub(super) struct Tiles(PhantomData<*const ()>);

impl Tiles {
    /// # Safety
    /// [`available`] must have returned true (the CPU has AMX and the OS
    /// granted the tile state).
    pub(super) unsafe fn configure() -> Tiles {
        // SAFETY: per the contract; the configuration is a valid palette-1
        // layout read from a 64-byte aligned static.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        Tiles(PhantomData)
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure` on this thread
        // (the type is not Send).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `RA × RB` accumulator tiles, 64-byte aligned for the tile stores; tile
/// `(r, s)` is `c[r * RB + s]`, 16 rows of 16 i32.
#[repr(C, align(64))]
struct Acc([[i32; ROWS * NR]; 4]);

/// Generates a micro-kernel: `$op` (`tdpbusd` for u8 left × i8 right,
/// `tdpbsud` for i8 left × u8 right) over `chunks` depth chunks into
/// 2 × 2, 2 × 1, 1 × 2 or 1 × 1 accumulator tiles. `a` is the first left
/// panel (the second `a_panel` bytes on), `b` the first right panel (the
/// second `b_panel` bytes on); chunk `c` of a panel is at `c * 1024`.
macro_rules! tile_kernels {
    ($op:literal, $k22:ident, $k21:ident, $k12:ident, $k11:ident) => {
        /// # Safety
        /// Tiles configured on this thread; `chunks ≥ 1`; both left and both
        /// right panels hold `chunks` KiB; `c` holds four 64-byte aligned
        /// tiles.
        unsafe fn $k22(a: *const u8, a_panel: usize, b: *const u8, b_panel: usize, chunks: usize, c: *mut i32) {
            unsafe {
                asm!(
                    "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    concat!($op, " tmm1, tmm4, tmm7"),
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    concat!($op, " tmm2, tmm5, tmm6"),
                    concat!($op, " tmm3, tmm5, tmm7"),
                    "add {a0}, 1024", "add {a1}, 1024", "add {b0}, 1024", "add {b1}, 1024",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {s}*1], tmm0",
                    "add {c}, 1024",
                    "tilestored [{c} + {s}*1], tmm1",
                    "add {c}, 1024",
                    "tilestored [{c} + {s}*1], tmm2",
                    "add {c}, 1024",
                    "tilestored [{c} + {s}*1], tmm3",
                    a0 = inout(reg) a => _,
                    a1 = inout(reg) a.add(a_panel) => _,
                    b0 = inout(reg) b => _,
                    b1 = inout(reg) b.add(b_panel) => _,
                    n = inout(reg) chunks => _,
                    c = inout(reg) c => _,
                    s = in(reg) 64usize,
                    options(nostack)
                );
            }
        }

        /// As the 2 × 2 kernel, two left panels by one right panel.
        unsafe fn $k21(a: *const u8, a_panel: usize, b: *const u8, _b_panel: usize, chunks: usize, c: *mut i32) {
            unsafe {
                asm!(
                    "tilezero tmm0", "tilezero tmm2",
                    "2:",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    concat!($op, " tmm2, tmm5, tmm6"),
                    "add {a0}, 1024", "add {a1}, 1024", "add {b0}, 1024",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {s}*1], tmm0",
                    "add {c}, 1024",
                    "tilestored [{c} + {s}*1], tmm2",
                    a0 = inout(reg) a => _,
                    a1 = inout(reg) a.add(a_panel) => _,
                    b0 = inout(reg) b => _,
                    n = inout(reg) chunks => _,
                    c = inout(reg) c => _,
                    s = in(reg) 64usize,
                    options(nostack)
                );
            }
        }

        /// As the 2 × 2 kernel, one left panel by two right panels.
        unsafe fn $k12(a: *const u8, _a_panel: usize, b: *const u8, b_panel: usize, chunks: usize, c: *mut i32) {
            unsafe {
                asm!(
                    "tilezero tmm0", "tilezero tmm1",
                    "2:",
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    concat!($op, " tmm1, tmm4, tmm7"),
                    "add {a0}, 1024", "add {b0}, 1024", "add {b1}, 1024",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {s}*1], tmm0",
                    "add {c}, 1024",
                    "tilestored [{c} + {s}*1], tmm1",
                    a0 = inout(reg) a => _,
                    b0 = inout(reg) b => _,
                    b1 = inout(reg) b.add(b_panel) => _,
                    n = inout(reg) chunks => _,
                    c = inout(reg) c => _,
                    s = in(reg) 64usize,
                    options(nostack)
                );
            }
        }

        /// As the 2 × 2 kernel, one left panel by one right panel.
        unsafe fn $k11(a: *const u8, _a_panel: usize, b: *const u8, _b_panel: usize, chunks: usize, c: *mut i32) {
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "2:",
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    "add {a0}, 1024", "add {b0}, 1024",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {s}*1], tmm0",
                    a0 = inout(reg) a => _,
                    b0 = inout(reg) b => _,
                    n = inout(reg) chunks => _,
                    c = inout(reg) c => _,
                    s = in(reg) 64usize,
                    options(nostack)
                );
            }
        }
    };
}

tile_kernels!("tdpbusd", busd_2x2, busd_2x1, busd_1x2, busd_1x1);
tile_kernels!("tdpbsud", bsud_2x2, bsud_2x1, bsud_1x2, bsud_1x1);

type TileKernel = unsafe fn(*const u8, usize, *const u8, usize, usize, *mut i32);

/// The kernel for `ra × rb` tiles; `signed_left` for i8 weights on the
/// left (`tdpbsud`), else u8 activations on the left (`tdpbusd`).
fn tile_kernel(signed_left: bool, ra: usize, rb: usize) -> TileKernel {
    match (signed_left, ra, rb) {
        (true, 2, 2) => bsud_2x2,
        (true, 2, _) => bsud_2x1,
        (true, _, 2) => bsud_1x2,
        (true, _, _) => bsud_1x1,
        (false, 2, 2) => busd_2x2,
        (false, 2, _) => busd_2x1,
        (false, _, 2) => busd_1x2,
        (false, _, _) => busd_1x1,
    }
}

/// Bytes of a panel (left or right) over `k` depths: whole chunks.
pub(super) fn panel_bytes(k: usize) -> usize {
    k.div_ceil(CHUNK) * TILE_BYTES
}

/// Packs rows `i0..i0 + rows` of a row-major `[m × k]` byte matrix (leading
/// dimension `ld`) into left-operand panels at `dst` (each
/// [`panel_bytes`]`(k)` long): row `r` of a panel, depth `p`, at
/// `(p / 64) * 1024 + r * 64 + p % 64`; zeros past k and past the rows.
pub(super) fn pack_left(dst: &mut [u8], src: &[u8], ld: usize, k: usize, rows: Range<usize>) {
    let pb = panel_bytes(k);
    let n_rows = rows.len();
    for (t, panel) in dst
        .chunks_exact_mut(pb)
        .take(n_rows.div_ceil(ROWS))
        .enumerate()
    {
        let live = ROWS.min(n_rows - t * ROWS);
        if live < ROWS || !k.is_multiple_of(CHUNK) {
            panel.fill(0);
        }
        for r in 0..live {
            let s = (rows.start + t * ROWS + r) * ld;
            for (c, piece) in src[s..s + k].chunks(CHUNK).enumerate() {
                let o = c * TILE_BYTES + r * CHUNK;
                panel[o..o + piece.len()].copy_from_slice(piece);
            }
        }
    }
}

/// As [`pack_left`] for a matrix stored transposed (`[k × m]`, leading
/// dimension `ld`): depth `p` of row `i` is `src[p * ld + i]`.
fn pack_left_transposed(dst: &mut [u8], src: &[u8], ld: usize, k: usize, rows: Range<usize>) {
    let pb = panel_bytes(k);
    let n_rows = rows.len();
    for (t, panel) in dst
        .chunks_exact_mut(pb)
        .take(n_rows.div_ceil(ROWS))
        .enumerate()
    {
        panel.fill(0);
        let live = ROWS.min(n_rows - t * ROWS);
        for p in 0..k {
            let s = p * ld + rows.start + t * ROWS;
            for (r, &v) in src[s..s + live].iter().enumerate() {
                panel[(p / CHUNK) * TILE_BYTES + r * CHUNK + p % CHUNK] = v;
            }
        }
    }
}

/// Runs the tiles of C's rows `rows` (a multiple of 16 from the first) and
/// columns `j0..`, two by two: `left` holds the rows' panels (from the
/// first row), `right` the columns' panels (from column `j0`'s), each
/// `pb` bytes; then the epilogue of every tile.
#[allow(clippy::too_many_arguments)]
fn run_block(
    fin: &Finish,
    signed_left: bool,
    chunks: usize,
    left: &[u8],
    right: &[u8],
    pb: usize,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    let mut acc = Acc([[0; ROWS * NR]; 4]);
    let (row_tiles, col_tiles) = (rows.len().div_ceil(ROWS), cols.len().div_ceil(NR));
    assert!(
        left.len() >= row_tiles * pb && right.len() >= col_tiles * pb && pb >= chunks * TILE_BYTES,
        "amx: panels shorter than their depth"
    );
    for t in (0..row_tiles).step_by(2) {
        let ra = 2.min(row_tiles - t);
        for q in (0..col_tiles).step_by(2) {
            let rb = 2.min(col_tiles - q);
            if chunks > 0 {
                let kernel = tile_kernel(signed_left, ra, rb);
                // SAFETY: the caller configured the tiles; the panels hold
                // `chunks` KiB each (checked above: tile t + 1 and panel
                // q + 1 are used only when they exist); `acc` holds four
                // aligned tiles.
                unsafe {
                    kernel(
                        left.as_ptr().add(t * pb),
                        pb,
                        right.as_ptr().add(q * pb),
                        pb,
                        chunks,
                        acc.0.as_mut_ptr() as *mut i32,
                    )
                };
            } else {
                acc.0.iter_mut().for_each(|a| a.fill(0));
            }
            for r in 0..ra {
                for s in 0..rb {
                    let (i, j) = (rows.start + (t + r) * ROWS, cols.start + (q + s) * NR);
                    let live_r = ROWS.min(rows.end - i);
                    let live_c = NR.min(cols.end - j);
                    fin.tile(QKernel::Amx, &acc.0[r * rb + s], i, live_r, j, live_c);
                }
            }
        }
    }
}

impl QGemmWx<'_> {
    /// [`QGemmWx::region`] on AMX: X's columns are packed a block at a time
    /// and every row pair of W runs over them.
    pub(super) fn region_amx(
        &self,
        x: QMatX,
        xbuf: &mut Vec<u8>,
        rows: Range<usize>,
        cols: Range<usize>,
    ) {
        let k = self.w.k;
        let (chunks, pb) = (k.div_ceil(CHUNK), panel_bytes(k));
        let x_off = aligned(xbuf, (NC / NR) * pb.max(1));
        let wdata = &self.w.buf[self.w.off..];
        let left = &wdata[(rows.start / ROWS) * pb..];
        // SAFETY: W is packed for AMX only when `available()` said so.
        let _tiles = unsafe { Tiles::configure() };
        for jc in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - jc);
            let xblock = &mut xbuf[x_off..x_off + nc.div_ceil(NR) * pb];
            pack_x(xblock, QKernel::Amx, &x, k, jc, nc);
            let xblock = &xbuf[x_off..x_off + nc.div_ceil(NR) * pb];
            run_block(
                &self.fin,
                true,
                chunks,
                left,
                xblock,
                pb,
                rows.clone(),
                jc..jc + nc,
            );
        }
    }
}

impl QGemm<'_> {
    /// [`QGemm::region`] on AMX: A's rows are packed `MC` at a time and run
    /// over every column pair of the region.
    pub(super) fn region_amx(&self, abuf: &mut Vec<u8>, rows: Range<usize>, cols: Range<usize>) {
        let k = self.b.k;
        let (chunks, pb) = (k.div_ceil(CHUNK), panel_bytes(k));
        let a_off = aligned(abuf, (MC / ROWS) * pb.max(1));
        let bdata = self.b.data();
        // SAFETY: B is packed for AMX only when `available()` said so.
        let _tiles = unsafe { Tiles::configure() };
        for ic in rows.clone().step_by(MC) {
            let mc = MC.min(rows.end - ic);
            let ablock = &mut abuf[a_off..a_off + mc.div_ceil(ROWS) * pb];
            if self.a.trans {
                pack_left_transposed(ablock, self.a.data, self.a.ld, k, ic..ic + mc);
            } else {
                pack_left(ablock, self.a.data, self.a.ld, k, ic..ic + mc);
            }
            let ablock = &abuf[a_off..a_off + mc.div_ceil(ROWS) * pb];
            for jc in cols.clone().step_by(NC) {
                let nc = NC.min(cols.end - jc);
                let right = &bdata[(jc / NR) * pb..];
                run_block(
                    &self.fin,
                    false,
                    chunks,
                    ablock,
                    right,
                    pb,
                    ic..ic + mc,
                    jc..jc + nc,
                );
            }
        }
    }
}

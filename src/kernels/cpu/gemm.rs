//! f32 GEMM: `C = alpha * op(A) * op(B)` followed by a fused epilogue.
//!
//! The classic Goto/BLIS structure. B is cut into column blocks of `NC` and
//! depth blocks of `KC`; each block is packed into micro-panels of `NR`
//! columns (`kc × NR`, contiguous, zero-padded), which stay in L3/L2. A is
//! cut into row blocks of `MC` packed into micro-panels of `MR` rows
//! (`kc × MR`), which stay in L2. The micro-kernel multiplies one A
//! micro-panel by one B micro-panel into an `MR × NR` register tile, the B
//! micro-panel staying in L1 while the kernel walks down the A block.
//! Four micro-kernels, picked at run time through [`Features`]: on
//! aarch64 NEON `6 × 16` (`gemm/neon.rs`), on x86_64 AVX-512F `12 × 32`
//! (24 zmm accumulators: two FMA pipes of latency 4 need at least 8
//! independent chains, and 2 B loads + 12 broadcasts per 24 FMAs
//! leave the load ports idle half the time), AVX2/FMA `6 × 16`, and a
//! portable `4 × 16` in plain Rust that the compiler vectorizes for whatever
//! the target offers. The AVX-512 kernel has an instance per tile height and
//! width in vectors, so edge tiles cost what they compute, and masked loads
//! and stores for partial columns; it also reads a raw B in place (depth
//! steps `ldb` apart) when each B panel would serve a single A block, where
//! packing would cost as much as it saves (small-M products such as 1x1
//! convolutions). Transposed operands are handled by the packing routines,
//! `alpha` when the tile is stored. On the last depth block the kernels
//! apply the epilogue's adds (bias by column or row, residual) and a Relu or
//! Clip on the registers before the store; other activations run on each
//! finished block of C (rows of up to `NC`: called per tile, their
//! overhead cost more than the block's trip to L2).
//!
//! Either operand can also come ready-made ([`ASrc`], [`BSrc`]): packed
//! once for the whole model ([`pack_a`], [`pack_b`]: constant weights are
//! then never repacked), or, for B, generated block by block by the caller
//! ([`PackB`]: a convolution packs its im2col columns straight from the
//! input, with no im2col matrix in memory).
//!
//! With several threads, C is split into a grid of rectangles whose edges
//! are multiples of the tile, one per task, each computed with its own
//! packing buffers. Every element of C is then computed by exactly one task
//! with the same sequence of operations as single-threaded (the depth blocks
//! always start at 0), so results do not depend on the thread count.
//! Packing buffers are thread-local and reused, so steady-state calls do not
//! allocate.

use std::cell::RefCell;

use super::choice::Split;
use super::{CpuCtx, Features};
use crate::ir::Activation;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
use neon::{kernel_neon, kernel_neon_rows, MR_NEON, NR_NEON};

/// Columns of a packed B micro-panel for the AVX2 and portable kernels (the
/// AVX-512 kernel's are `NR_AVX512` wide; a [`PackedB`] records its own).
pub const NR: usize = 16;
/// Depth of a packed block: a `KC × 32` B micro-panel (32 KiB) stays in L1
/// (48 KiB on Zen 5) next to the A micro-panel being streamed.
pub(crate) const KC: usize = 256;
/// Rows of a packed A block (a multiple of every kernel's MR): `MC × KC`
/// (144 KiB) stays in L2.
const MC: usize = 144;
/// Columns of a packed B block (a multiple of NR): `KC × NC` fits in L3.
const NC: usize = 3072;
/// Below this many multiply-adds a product runs on one thread: waking the
/// pool costs about as much as ~1M multiply-adds on one core (a 64³ product
/// is 3x slower on two threads than on one).
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 20;

/// What happens to each element of C after the product, in this order:
/// bias by column, bias by row, residual, activation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every row (length n): a MatMul/Gemm bias.
    pub bias_col: Option<&'a [f32]>,
    /// Added to every column (length m): a Conv bias when rows are channels.
    pub bias_row: Option<&'a [f32]>,
    /// Added elementwise, laid out like C (same ldc).
    pub residual: Option<&'a [f32]>,
    pub act: Option<&'a Activation>,
}

/// `C[m×n] = alpha · op(A)[m×k] · op(B)[k×n]`, then the epilogue; C is
/// overwritten. Row-major with leading dimensions `lda`, `ldb`, `ldc`;
/// `op(A)` is A transposed when `trans_a` (then A is stored k×m).
///
/// # Panics
/// When a slice is too short for its dimensions and leading dimension (a
/// caller bug: the kernel writes through raw pointers and checks first).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    c: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
    cx: &CpuCtx,
) {
    let a = ASrc::Raw {
        a,
        lda,
        trans: trans_a,
    };
    let b = BSrc::Raw {
        b,
        ldb,
        trans: trans_b,
    };
    gemm(m, n, k, alpha, a, b, c, ldc, ep, cx);
}

/// Where op(A) (`m × k`) comes from.
#[derive(Clone, Copy)]
pub enum ASrc<'a> {
    /// Row-major A with leading dimension `lda`, stored `k × m` when `trans`.
    Raw {
        a: &'a [f32],
        lda: usize,
        trans: bool,
    },
    /// Packed once by [`pack_a`] (for a constant weight, e.g. a convolution's).
    Packed(&'a PackedA),
}

/// Where op(B) (`k × n`) comes from.
#[derive(Clone, Copy)]
pub enum BSrc<'a> {
    /// Row-major B with leading dimension `ldb`, stored `n × k` when `trans`.
    Raw {
        b: &'a [f32],
        ldb: usize,
        trans: bool,
    },
    /// Packed once by [`pack_b`] (for a constant weight of a MatMul).
    Packed(&'a PackedB),
    /// Generated block by block by the caller, e.g. im2col columns packed
    /// straight from a convolution's input.
    Gen(&'a dyn PackB),
}

/// A B operand that packs itself: the GEMM asks for one block at a time.
pub trait PackB: Sync {
    /// Writes depths `p0..p0+kc`, columns `j0..j0+nc` of op(B) into `dst` as
    /// panels of `nr` columns: element (p, j) at `((j - j0) / nr) * kc * nr +
    /// (p - p0) * nr + (j - j0) % nr`, with zeros in the last panel's
    /// columns past `nc`. `dst` holds exactly `nc.div_ceil(nr) * nr * kc`
    /// floats.
    fn pack(&self, dst: &mut [f32], nr: usize, p0: usize, kc: usize, j0: usize, nc: usize);
}

/// op(B) packed once into the micro-panel layout (all of k, panels of the
/// kernel's NR columns, zero-padded), for a constant weight used by many
/// products.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// Columns per panel (the micro-kernel's NR).
    nr: usize,
    buf: super::Floats,
}

impl PackedB {
    /// Rows of op(B).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns of op(B).
    pub fn n(&self) -> usize {
        self.n
    }
    fn data(&self) -> &[f32] {
        &self.buf
    }
}

/// op(A) packed once into micro-panels of the kernel's MR rows over all of
/// k (element (i, p) of panel t at `t*k*MR + p*MR + i`, zero-padded rows).
#[derive(Clone, Debug)]
pub struct PackedA {
    m: usize,
    k: usize,
    /// Rows per panel (the micro-kernel's MR).
    mr: usize,
    buf: super::Floats,
}

impl PackedA {
    /// Rows of op(A).
    pub fn m(&self) -> usize {
        self.m
    }
    /// Columns of op(A).
    pub fn k(&self) -> usize {
        self.k
    }
    fn data(&self) -> &[f32] {
        &self.buf
    }
}

/// Packs op(B) (`k × n`; B stored `n × k` when `trans_b`) for the kernel
/// that `features` select, to pass as [`BSrc::Packed`].
///
/// # Panics
/// When `b` is too short for `k`, `n` and `ldb`.
pub fn pack_b(
    k: usize,
    n: usize,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    features: Features,
) -> PackedB {
    check_operand("B", b, ldb, k, n, trans_b);
    let nr = Kernel::select(features).nr();
    let mut buf = super::Floats::zeros(n.div_ceil(nr) * nr * k);
    pack_b_panels(&mut buf, nr, b, ldb, trans_b, 0, k, 0, n);
    PackedB { k, n, nr, buf }
}

/// Packs op(A) (`m × k`; A stored `k × m` when `trans_a`) for the kernel
/// that `features` select, to pass as [`ASrc::Packed`].
///
/// # Panics
/// When `a` is too short for `m`, `k` and `lda`.
pub fn pack_a(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    features: Features,
) -> PackedA {
    check_operand("A", a, lda, m, k, trans_a);
    let mr = Kernel::select(features).mr();
    let mut buf = super::Floats::zeros(m.div_ceil(mr) * mr * k);
    pack_a_panels(&mut buf, mr, a, lda, trans_a, 0, m, 0, k);
    PackedA { m, k, mr, buf }
}

/// [`sgemm`] with B already packed by [`pack_b`] (n and k come from it).
///
/// # Panics
/// Like [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed(
    m: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
    cx: &CpuCtx,
) {
    let a = ASrc::Raw {
        a,
        lda,
        trans: trans_a,
    };
    gemm(m, b.n, b.k, alpha, a, BSrc::Packed(b), c, ldc, ep, cx);
}

/// The widest segment [`gemm_direct`] takes with the kernel `features`
/// select (its register tile's columns); `None` when it runs no direct
/// product (the portable kernel).
pub fn direct_lanes(features: Features) -> Option<usize> {
    let kern = Kernel::select(features);
    (kern != Kernel::Portable).then(|| kern.nr())
}

/// Most pieces a [`DirectSeg`] has.
pub const DIRECT_PIECES: usize = 3;

/// Lanes `lo..hi` of a [`DirectSeg`] go to columns `col..col + hi - lo`
/// of C.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectPiece {
    pub lo: usize,
    pub hi: usize,
    pub col: usize,
}

/// Up to [`direct_lanes`] consecutive columns ("lanes") of a B read in place through a
/// depth offset table (see [`gemm_direct`]): B row p of the segment is the
/// `width` floats at `offs[p] + b_off`. Its lanes land in C as up to
/// [`DIRECT_PIECES`] runs (`pieces[..n]`); lanes in no piece are computed
/// and dropped (a convolution's padding columns between output rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectSeg {
    pub b_off: usize,
    pub width: usize,
    pub pieces: [DirectPiece; DIRECT_PIECES],
    pub n: usize,
}

/// `C[m × ·] = A · B + epilogue` with A prepacked ([`pack_a`]) and B never
/// packed: the columns of C come in segments ([`DirectSeg`]), and the B
/// values of a segment's depth p are the `width` consecutive floats at
/// `data[offs[p] + b_off..]`. A direct convolution is this product with
/// `data` the padded input, `offs` where each tap reads and segments
/// running along the padded rows, their pieces the output pixels. Columns
/// of C outside the segments are not touched; the epilogue's `bias_col`
/// is not supported (a convolution's bias is by row). AVX-512 and AVX2
/// kernels only (segments at most [`direct_lanes`] wide): returns `false`
/// (touching nothing) when `cx.features` select the portable kernel or A
/// was packed for another one, or when the depth is 0.
///
/// # Panics
/// When `offs` does not have A's depth, a segment is too wide, reads (the
/// kernel's lanes per row, whatever its width) or writes out of bounds, the pieces of the
/// segments do not come in increasing, disjoint column order (which makes
/// the segments' columns disjoint) or `bias_col` is given (caller bugs).
#[allow(clippy::too_many_arguments)]
pub fn gemm_direct(
    a: &PackedA,
    data: &[f32],
    offs: &[usize],
    segs: &[DirectSeg],
    c: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
    cx: &CpuCtx,
) -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let kern = Kernel::select(cx.features);
        if kern == Kernel::Portable || a.mr != kern.mr() {
            return false;
        }
        let (mr, nr) = (kern.mr(), kern.nr());
        let (m, k) = (a.m, a.k);
        assert_eq!(offs.len(), k, "gemm_direct: one offset per depth step");
        if k == 0 {
            // Nothing to multiply: the caller's general path writes the
            // epilogue alone.
            return false;
        }
        if m == 0 || segs.is_empty() {
            return true;
        }
        let max_off = offs.iter().copied().max().unwrap_or(0);
        let mut end = 0;
        for s in segs {
            assert!(
                (1..=nr).contains(&s.width) && (1..=DIRECT_PIECES).contains(&s.n),
                "gemm_direct: segment {s:?} has no lanes, too many or no pieces"
            );
            for pc in &s.pieces[..s.n] {
                assert!(
                    pc.lo < pc.hi && pc.hi <= s.width && pc.col >= end,
                    "gemm_direct: segment {s:?}: pieces out of order"
                );
                end = pc.col + (pc.hi - pc.lo);
                assert!(end <= ldc, "gemm_direct: segment {s:?} past ldc {ldc}");
            }
            assert!(
                k == 0 || max_off + s.b_off + nr <= data.len(),
                "gemm_direct: segment {s:?} reads past the {} floats of B",
                data.len()
            );
        }
        let c_len = (m - 1) * ldc + ldc;
        assert!(
            c.len() >= c_len,
            "gemm_direct: C shorter than {m} rows of {ldc}"
        );
        if let Some(r) = ep.residual {
            assert!(r.len() >= c_len, "gemm_direct: residual shorter than C");
        }
        assert!(ep.bias_col.is_none(), "gemm_direct: no bias_col");
        if let Some(b) = ep.bias_row {
            assert!(b.len() >= m, "gemm_direct: bias_row shorter than m = {m}");
        }
        let (clamp, late_act) = split_act(ep.act);
        let cp = CPtr(c.as_mut_ptr());
        // Segments go in blocks whose C columns (all of A's rows) stay in
        // L2 while every depth block of A streams through them.
        let block = (DIRECT_C_BLOCK / (m * nr)).max(1);
        let panels = m.div_ceil(mr);
        // Segments `chunk` on A panels `p0..p1`.
        let depth = cx.knobs.kc.unwrap_or(DIRECT_KC).max(1);
        let run = |chunk: &[DirectSeg], p0: usize, p1: usize| {
            for blk in chunk.chunks(block) {
                // SAFETY: the kernel's features are present (it was
                // selected); the segments' reads and C's rectangle were
                // checked above, and each (segment, panel) tile belongs to
                // one task only.
                unsafe {
                    direct_block(
                        kern,
                        depth,
                        a,
                        data,
                        offs,
                        blk,
                        p0..p1,
                        cp,
                        ldc,
                        ep,
                        clamp,
                        late_act,
                    )
                }
            }
        };
        let (t, n_seg) = (cx.threads, segs.len());
        let macs = m * k * n_seg * nr;
        if t > 1 && macs >= PARALLEL_MIN_MACS && (n_seg > 1 || panels > 1) {
            let by_segments = match cx.knobs.split {
                Some(Split::Cols) => true,
                Some(Split::Rows) => false,
                None => n_seg >= 8 * t || panels < t,
            };
            if by_segments {
                // Even ranges of segments, a few per thread.
                let tasks = n_seg.min(16 * t);
                cx.for_each(tasks, |i| {
                    run(&segs[i * n_seg / tasks..(i + 1) * n_seg / tasks], 0, panels)
                });
            } else {
                // Few segments (small planes): the threads split A's panels
                // instead, each running every segment.
                cx.for_each(t, |i| run(segs, i * panels / t, (i + 1) * panels / t));
            }
        } else {
            run(segs, 0, panels);
        }
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (a, data, offs, segs, c, ldc, ep, cx);
        false
    }
}

/// Floats of C that one block of [`gemm_direct`]'s segments covers (256
/// KiB, in L2 with a depth block of A).
const DIRECT_C_BLOCK: usize = 1 << 16;

/// Depth of a block of [`gemm_direct`]: there is no packing to amortize,
/// so deeper than `KC` (fewer passes over C); measured on ResNet-18's 3x3
/// convolutions, 384 runs 5-10% faster than 256 and as fast as 768.
pub(crate) const DIRECT_KC: usize = 384;

/// A block of segments of [`gemm_direct`]: depth blocks of `depth`, each
/// through every segment and, per segment, the A panels `panels` (the segment's B
/// rows stay in L1 across the panels, the A depth block in L2 across the
/// segments).
///
/// # Safety
/// `kern` is AVX-512 or AVX2 and its features are present; each segment's
/// B rows (the kernel's NR floats at `offs[p] + b_off`) lie in `data`, and
/// its C columns (all of A's rows) lie in C and belong to the caller alone.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn direct_block(
    kern: Kernel,
    depth: usize,
    a: &PackedA,
    data: &[f32],
    offs: &[usize],
    segs: &[DirectSeg],
    panels: std::ops::Range<usize>,
    c: CPtr,
    ldc: usize,
    ep: &Epilogue,
    clamp: Option<(f32, f32)>,
    late_act: Option<&Activation>,
) {
    let (m, k, mr) = (a.m, a.k, kern.mr());
    let ad = a.data();
    for pc in (0..k).step_by(depth) {
        let kc = depth.min(k - pc);
        let (first, last) = (pc == 0, pc + kc == k);
        // Shallow: each A panel along the segments, as in
        // `Gemm::macro_kernel`.
        let (np, ns) = (panels.len(), segs.len());
        let shallow = kc <= SHALLOW_KC;
        for idx in 0..np * ns {
            let (si, t) = if shallow {
                (idx % ns, panels.start + idx / ns)
            } else {
                (idx / np, panels.start + idx % np)
            };
            let s = &segs[si];
            if !shallow && si + 1 < ns {
                // The next segment's B rows: a share with each panel (see
                // `Gemm::macro_kernel`).
                let per = kc.div_ceil(np);
                let p0 = (t - panels.start) * per;
                let next = data.as_ptr().wrapping_add(segs[si + 1].b_off);
                for &off in offs[pc..pc + kc].iter().skip(p0).take(per) {
                    prefetch_rows(next.wrapping_add(off), 0..1, 0, kern.nr());
                }
            }
            let base = data.as_ptr().add(s.b_off);
            let i = t * mr;
            let rows = mr.min(m - i);
            let ap = ad[t * k * mr + pc * mr..].as_ptr();
            // A segment that is one run of C from its lane 0 is stored as
            // a plain tile at that run (no per-piece masks).
            let (col0, pieces) = match s.pieces[..s.n] {
                [p] if p.lo == 0 => (p.col, &[][..]),
                _ => (0, &s.pieces[..s.n]),
            };
            let tep = if last {
                TileEp {
                    bias_col: std::ptr::null(),
                    bias_row: ep.bias_row.map_or(std::ptr::null(), |b| b[i..].as_ptr()),
                    residual: ep
                        .residual
                        .map_or(std::ptr::null(), |r| r[i * ldc + col0..].as_ptr()),
                    clamp,
                }
            } else {
                TileEp::NONE
            };
            let tile = Tile {
                c: c.0.add(i * ldc + col0),
                ldc,
                rows,
                cols: s.width,
                alpha: 1.0,
                accumulate: !first,
                ep: tep,
                pieces,
            };
            let b = Offsets {
                base,
                offs: offs[pc..].as_ptr(),
            };
            match kern {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => kernel_avx512_rows(kc, ap, b, &tile),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => kernel_avx2_rows(kc, ap, b, &tile),
                #[cfg(target_arch = "aarch64")]
                Kernel::Neon => kernel_neon_rows(kc, ap, b, &tile),
                Kernel::Portable => unreachable!("gemm_direct declines the portable kernel"),
            }
            if let (true, Some(act)) = (last, late_act) {
                for r in i..i + rows {
                    for pc in &s.pieces[..s.n] {
                        let row = std::slice::from_raw_parts_mut(
                            c.0.add(r * ldc + pc.col),
                            pc.hi - pc.lo,
                        );
                        super::apply_activation(act, row);
                    }
                }
            }
        }
    }
}

/// The micro-kernel in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
    Portable,
}

/// Rows of the AVX-512 register tile.
const MR_AVX512: usize = 12;
/// Columns of the AVX-512 register tile (two zmm vectors).
const NR_AVX512: usize = 32;
/// Rows of the AVX2 register tile.
#[cfg(target_arch = "x86_64")]
const MR_AVX2: usize = 6;
/// Columns of the AVX2 register tile (two ymm vectors).
#[cfg(target_arch = "x86_64")]
const NR_AVX2: usize = 16;

impl Kernel {
    fn select(f: Features) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if f.avx512f && f.avx2_fma {
                return Kernel::Avx512;
            }
            if f.avx2_fma {
                return Kernel::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if f.neon {
            return Kernel::Neon;
        }
        let _ = f;
        Kernel::Portable
    }

    /// Rows of the register tile.
    fn mr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => MR_AVX512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => MR_AVX2,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => MR_NEON,
            Kernel::Portable => 4,
        }
    }

    /// Whether the kernel can read B's panels in place (depth steps any
    /// stride apart) rather than packed.
    fn reads_b_in_place(self) -> bool {
        self != Kernel::Portable
    }

    /// Columns of the register tile (and of a packed B panel).
    fn nr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => NR_AVX512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => NR_AVX2,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => NR_NEON,
            Kernel::Portable => 16,
        }
    }
}

/// Checks that a `rows × cols` operand (stored transposed when `trans`) fits
/// in `v` with leading dimension `ld`.
fn check_operand(what: &str, v: &[f32], ld: usize, rows: usize, cols: usize, trans: bool) {
    let (sr, sc) = if trans { (cols, rows) } else { (rows, cols) };
    if sr == 0 || sc == 0 {
        return;
    }
    assert!(
        ld >= sc && v.len() >= (sr - 1) * ld + sc,
        "sgemm: {what} ({sr}x{sc} stored, ld {ld}) does not fit in {} elements",
        v.len()
    );
}

/// The general product: [`sgemm`] with each operand raw, prepacked or
/// generated (see [`ASrc`], [`BSrc`]).
///
/// # Panics
/// When a slice is too short for its dimensions, or a packed operand does
/// not have the shape given or was packed for another kernel (caller bugs).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: ASrc,
    b: BSrc,
    c: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
    cx: &CpuCtx,
) {
    let kern = Kernel::select(cx.features);
    let (mr, nr) = (kern.mr(), kern.nr());
    match a {
        ASrc::Raw { a, lda, trans } => check_operand("A", a, lda, m, k, trans),
        ASrc::Packed(p) => assert!(
            (p.m, p.k, p.mr) == (m, k, mr),
            "sgemm: A packed as {}x{} in panels of {} rows, used as {m}x{k} with {mr}",
            p.m,
            p.k,
            p.mr
        ),
    }
    match b {
        BSrc::Raw { b, ldb, trans } => check_operand("B", b, ldb, k, n, trans),
        BSrc::Packed(p) => assert!(
            (p.k, p.n, p.nr) == (k, n, nr),
            "sgemm: B packed as {}x{} in panels of {} columns, used as {k}x{n} with {nr}",
            p.k,
            p.n,
            p.nr
        ),
        BSrc::Gen(_) => {}
    }
    if m == 0 || n == 0 {
        return;
    }
    check_operand("C", c, ldc, m, n, false);
    if let Some(r) = ep.residual {
        check_operand("the residual", r, ldc, m, n, false);
    }
    if let Some(bc) = ep.bias_col {
        assert!(bc.len() >= n, "sgemm: bias_col shorter than n = {n}");
    }
    if let Some(br) = ep.bias_row {
        assert!(br.len() >= m, "sgemm: bias_row shorter than m = {m}");
    }
    if k == 0 {
        for i in 0..m {
            c[i * ldc..i * ldc + n].fill(0.0);
            epilogue_rows(c, ldc, i, i + 1, 0, n, ep);
        }
        return;
    }
    let (clamp, late_act) = split_act(ep.act);
    let g = Gemm {
        kern,
        k,
        kc_block: cx.knobs.kc.unwrap_or(KC).max(1),
        alpha,
        a,
        b,
        c: CPtr(c.as_mut_ptr()),
        ldc,
        ep: *ep,
        clamp,
        late_act,
    };
    let (tm, tn) = if cx.threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        // Floats each task packs per row of A / column of B it covers.
        let a_pack = match a {
            ASrc::Packed(_) => 0,
            ASrc::Raw { .. } => k,
        };
        let b_pack = match b {
            BSrc::Packed(_) => 0,
            BSrc::Raw { .. } | BSrc::Gen(_) => k,
        };
        // A raw B is read in place by a task of at most MC rows
        // (`Gemm::region_in`).
        let b_in_place_rows = match b {
            BSrc::Raw { trans: false, .. } if kern.reads_b_in_place() => MC,
            _ => 0,
        };
        match cx.knobs.split {
            Some(Split::Rows) => (cx.threads.min(m.div_ceil(mr)), 1),
            Some(Split::Cols) => (1, cx.threads.min(n.div_ceil(nr))),
            None => grid(
                m,
                n,
                k,
                (mr, nr),
                (a_pack, b_pack),
                b_in_place_rows,
                cx.threads,
            ),
        }
    } else {
        (1, 1)
    };
    if tm * tn == 1 {
        g.region(0, m, 0, n);
        return;
    }
    // Row chunks are multiples of MR and column chunks multiples of NR, so
    // every element sees the same tiles' arithmetic as single-threaded.
    let rows = m.div_ceil(mr).div_ceil(tm) * mr;
    let cols = n.div_ceil(nr).div_ceil(tn) * nr;
    let (tm, tn) = (m.div_ceil(rows), n.div_ceil(cols));
    cx.for_each(tm * tn, |t| {
        let (i0, j0) = ((t / tn) * rows, (t % tn) * cols);
        g.region(i0, (i0 + rows).min(m), j0, (j0 + cols).min(n));
    });
}

/// Depth blocks at most this deep run along C's rows ([`Gemm::macro_kernel`]).
const SHALLOW_KC: usize = 64;

/// Multiply-adds that packing one float costs about as much time as (a
/// strided read and a write against ~100 FMAs a nanosecond).
const PACK_COST_MACS: usize = 16;

/// Multiply-adds that streaming one float of A or B through a task costs
/// about as much time as (each task reads its rows of A and its columns of
/// B once per block, from L2 or beyond): what makes splitting C's rows
/// expensive when the rows are few and B is long, and the other way round.
const READ_COST_MACS: usize = 4;

/// Splits `threads` into a `tm × tn` grid of pieces of whole tiles that
/// finishes soonest: each task computes its piece, reads the rows of A and
/// the columns of B it covers, and packs them (`pack.0` / `pack.1` floats
/// each; 0 for a prepacked operand), so splitting C's rows makes every task
/// pack all of B's columns, and the other way round. A task of at most
/// `b_in_place_rows` rows reads B in place instead of packing it (0: never).
/// Splitting the rows of a 96 × 196 × 576 product (a 1x1 convolution whose
/// 196 pixels are 7 panels, 4 + 3 on two threads) ran 1.19× faster than
/// splitting its columns on an Intel Xeon (AVX-512, 2 threads).
fn grid(
    m: usize,
    n: usize,
    k: usize,
    (mr, nr): (usize, usize),
    pack: (usize, usize),
    b_in_place_rows: usize,
    threads: usize,
) -> (usize, usize) {
    let (mt, nt) = (m.div_ceil(mr), n.div_ceil(nr));
    let mut best = (1, 1);
    let mut best_cost = usize::MAX;
    for tm in 1..=threads {
        if !threads.is_multiple_of(tm) {
            continue;
        }
        let tn = threads / tm;
        if tm > mt || tn > nt {
            continue;
        }
        // The largest piece, in whole tiles.
        let (rows, cols) = (mt.div_ceil(tm) * mr, nt.div_ceil(tn) * nr);
        let b_pack = if rows <= b_in_place_rows { 0 } else { pack.1 };
        let cost = rows * cols * k
            + READ_COST_MACS * (rows + cols) * k
            + PACK_COST_MACS * (rows * pack.0 + cols * b_pack);
        // Ties go to wider pieces (a B panel is shared along a row of tiles).
        if cost < best_cost {
            best_cost = cost;
            best = (tm, tn);
        }
    }
    if best == (1, 1) && threads > 1 {
        // Not enough tiles for a full grid: split the longer side as far as
        // it goes.
        if nt >= mt {
            best = (1, threads.min(nt));
        } else {
            best = (threads.min(mt), 1);
        }
    }
    best
}

/// C's base pointer, shared by the tasks of one product.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: the tasks of one product write disjoint rectangles of C (see
// `gemm_impl`), and the pointer outlives them (the `&mut` it came from is
// held by `gemm_impl` until `install` returns).
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

/// One product, ready to compute any rectangle of C.
#[derive(Clone, Copy)]
struct Gemm<'a> {
    kern: Kernel,
    k: usize,
    /// Depth of a packed block (`KC` unless a tuned choice sets it).
    kc_block: usize,
    alpha: f32,
    a: ASrc<'a>,
    b: BSrc<'a>,
    c: CPtr,
    ldc: usize,
    ep: Epilogue<'a>,
    /// Relu or Clip as `(lo, hi)`, fused into the kernels' store.
    clamp: Option<(f32, f32)>,
    /// Any other activation, applied to each tile once stored.
    late_act: Option<&'a Activation>,
}

thread_local! {
    static BUF_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static BUF_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable buffer (a fresh one if it is in use,
/// say by an outer product on the same thread).
pub(super) fn with_buf<T: 'static, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Grows `v` to hold `len` floats from a 64-byte aligned start; returns the
/// start's offset.
fn aligned(v: &mut Vec<f32>, len: usize) -> usize {
    const ALIGN_F32: usize = 16;
    if v.len() < len + ALIGN_F32 {
        v.clear();
        v.resize(len + ALIGN_F32, 0.0);
    }
    let addr = v.as_ptr() as usize;
    (64 - addr % 64) % 64 / std::mem::size_of::<f32>()
}

impl Gemm<'_> {
    /// Computes rows `i0..i1` and columns `j0..j1` of C (j0 a multiple of NR
    /// when B is prepacked).
    fn region(&self, i0: usize, i1: usize, j0: usize, j1: usize) {
        with_buf(&BUF_A, |abuf| {
            with_buf(&BUF_B, |bbuf| self.region_in(abuf, bbuf, i0, i1, j0, j1))
        })
    }

    fn region_in(
        &self,
        abuf: &mut Vec<f32>,
        bbuf: &mut Vec<f32>,
        i0: usize,
        i1: usize,
        j0: usize,
        j1: usize,
    ) {
        let (mr, nr) = (self.kern.mr(), self.kern.nr());
        let (k, kcb) = (self.k, self.kc_block);
        let a_off = match self.a {
            ASrc::Raw { .. } => aligned(abuf, MC.min((i1 - i0).div_ceil(mr) * mr) * kcb.min(k)),
            ASrc::Packed(_) => 0,
        };
        let b_off = match self.b {
            BSrc::Raw { .. } | BSrc::Gen(_) => {
                aligned(bbuf, NC.min((j1 - j0).div_ceil(nr) * nr) * kcb.min(k))
            }
            BSrc::Packed(_) => 0,
        };
        // A raw B whose panels are each used by a single A block is read in
        // place rather than packed (packing would cost as much as it saves).
        let direct = self.kern.reads_b_in_place() && i1 - i0 <= MC;
        for jc in (j0..j1).step_by(NC) {
            let nc = NC.min(j1 - jc);
            for pc in (0..k).step_by(kcb) {
                let kc = kcb.min(k - pc);
                // Packed B block: micro-panel q starts at q * bstride.
                let blen = nc.div_ceil(nr) * nr * kc;
                // Whether B's panels come from memory (read in place or
                // prepacked) rather than from the block just packed here,
                // which is still in L2.
                let b_far = matches!(self.b, BSrc::Packed(_))
                    || matches!(self.b, BSrc::Raw { trans: false, .. } if direct);
                let (bblock, bstride, bstep, tail): (&[f32], usize, usize, Option<&[f32]>) =
                    match self.b {
                        BSrc::Raw {
                            b,
                            ldb,
                            trans: false,
                        } if direct => {
                            // Full panels are read in place; a partial last one
                            // is packed.
                            let (full, rem) = (nc / nr * nr, nc % nr);
                            let tail = if rem > 0 {
                                let dst = &mut bbuf[b_off..b_off + kc * nr];
                                pack_b_panels(dst, nr, b, ldb, false, pc, kc, jc + full, rem);
                                Some(&bbuf[b_off..b_off + kc * nr])
                            } else {
                                None
                            };
                            (&b[pc * ldb + jc..], nr, ldb, tail)
                        }
                        BSrc::Raw { b, ldb, trans } => {
                            let dst = &mut bbuf[b_off..b_off + blen];
                            pack_b_panels(dst, nr, b, ldb, trans, pc, kc, jc, nc);
                            (&bbuf[b_off..b_off + blen], kc * nr, nr, None)
                        }
                        BSrc::Gen(g) => {
                            let dst = &mut bbuf[b_off..b_off + blen];
                            g.pack(dst, nr, pc, kc, jc, nc);
                            (&bbuf[b_off..b_off + blen], kc * nr, nr, None)
                        }
                        BSrc::Packed(p) => {
                            let start = (jc / nr) * k * nr + pc * nr;
                            (&p.data()[start..], k * nr, nr, None)
                        }
                    };
                let first = pc == 0;
                let last = pc + kc == k;
                for ic in (i0..i1).step_by(MC) {
                    let mc = MC.min(i1 - ic);
                    // Packed A block: micro-panel t starts at t * astride.
                    let (ablock, astride): (&[f32], usize) = match self.a {
                        ASrc::Raw { a, lda, trans } => {
                            let alen = mc.div_ceil(mr) * mr * kc;
                            let dst = &mut abuf[a_off..a_off + alen];
                            pack_a_panels(dst, mr, a, lda, trans, ic, mc, pc, kc);
                            (&abuf[a_off..a_off + alen], kc * mr)
                        }
                        ASrc::Packed(p) => {
                            let start = (ic / mr) * k * mr + pc * mr;
                            (&p.data()[start..], k * mr)
                        }
                    };
                    let blocks = Blocks {
                        a: ablock,
                        astride,
                        b: bblock,
                        bstride,
                        bstep,
                        tail,
                        b_far,
                    };
                    self.macro_kernel(&blocks, ic, mc, jc, nc, kc, first, last);
                    if let (true, Some(act)) = (last, self.late_act) {
                        // Once per block, on rows of nc: per tile, the call
                        // overhead cost more than the block's trip to L2/L3.
                        self.activate_tile(ic, mc, jc, nc, act);
                    }
                }
            }
        }
    }

    /// Multiplies a packed A block by a packed B block into C; on the last
    /// depth block the kernels also apply the epilogue's adds and clamp as
    /// they store (the caller applies any other activation).
    #[allow(clippy::too_many_arguments)]
    fn macro_kernel(
        &self,
        blk: &Blocks,
        ic: usize,
        mc: usize,
        jc: usize,
        nc: usize,
        kc: usize,
        first: bool,
        last: bool,
    ) {
        let (mr, nr) = (self.kern.mr(), self.kern.nr());
        let (nq, nt) = (nc.div_ceil(nr), mc.div_ceil(mr));
        // A shallow product (a 1x1 convolution over few channels) is bound
        // by C's stores: each A panel sweeps along C's rows (a few
        // sequential streams) instead of each B panel down C's columns (a
        // line in every row at once).
        let along_rows = kc <= SHALLOW_KC;
        for idx in 0..nq * nt {
            let (q, t) = if along_rows {
                (idx % nq, idx / nq)
            } else {
                (idx / nt, idx % nt)
            };
            let j = jc + q * nr;
            let cols = nr.min(nc - q * nr);
            let (bp, bstep) = match blk.tail {
                Some(tail) if cols < nr => (&tail[..kc * nr], nr),
                _ => {
                    let s = q * blk.bstride;
                    (&blk.b[s..s + (kc - 1) * blk.bstep + nr], blk.bstep)
                }
            };
            if blk.b_far && !along_rows && q + 1 < nq {
                // B's next panel comes from memory (weights streamed once
                // per run, or an input read in place): fetch a share of its
                // rows into L2 with each tile of this one. Not a block
                // packed here, which is in L2 already: there the prefetches
                // only cost (5% of a 1024^3 product on a Sapphire
                // Rapids-class Xeon).
                let per = kc.div_ceil(nt);
                let rows = (t * per).min(kc)..((t + 1) * per).min(kc);
                let next = blk.b.as_ptr().wrapping_add((q + 1) * blk.bstride);
                prefetch_rows(next, rows, blk.bstep, nr);
            }
            {
                let i = ic + t * mr;
                let rows = mr.min(mc - t * mr);
                let ap = &blk.a[t * blk.astride..t * blk.astride + kc * mr];
                // SAFETY: the tile rows i..i+rows, columns j..j+cols lie inside
                // C (checked against its length in `gemm`) and inside this
                // task's rectangle, which no other task touches.
                let cp = unsafe { self.c.0.add(i * self.ldc + j) };
                let tile = Tile {
                    c: cp,
                    ldc: self.ldc,
                    rows,
                    cols,
                    alpha: self.alpha,
                    accumulate: !first,
                    pieces: &[],
                    ep: if last {
                        self.tile_ep(i, j)
                    } else {
                        TileEp::NONE
                    },
                };
                match self.kern {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: Avx512 is only selected when the CPU has
                    // AVX-512F; `ap`/`bp` hold kc*12 and kc*32 floats.
                    Kernel::Avx512 => unsafe { kernel_avx512(kc, ap, bp, bstep, &tile) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: Avx2 is only selected when the CPU has AVX2
                    // and FMA; `ap` holds kc*6 floats, `bp` kc rows of 16.
                    Kernel::Avx2 => unsafe { kernel_avx2(kc, ap, bp, bstep, &tile) },
                    #[cfg(target_arch = "aarch64")]
                    // SAFETY: NEON is only selected when the CPU has it;
                    // `ap` holds kc*6 floats, `bp` kc rows of 16.
                    Kernel::Neon => unsafe { kernel_neon(kc, ap, bp, bstep, &tile) },
                    // SAFETY: `ap`/`bp` hold kc*4 and kc*16 floats.
                    Kernel::Portable => unsafe { kernel_portable(kc, ap, bp, &tile) },
                }
            }
        }
    }

    /// The fused part of the epilogue for the tile at row `i`, column `j`.
    fn tile_ep(&self, i: usize, j: usize) -> TileEp {
        let ep = &self.ep;
        TileEp {
            bias_col: ep.bias_col.map_or(std::ptr::null(), |b| b[j..].as_ptr()),
            bias_row: ep.bias_row.map_or(std::ptr::null(), |b| b[i..].as_ptr()),
            residual: ep
                .residual
                .map_or(std::ptr::null(), |r| r[i * self.ldc + j..].as_ptr()),
            clamp: self.clamp,
        }
    }

    /// Applies an activation that is not fused into the kernels to a stored
    /// rectangle of C.
    fn activate_tile(&self, i: usize, rows: usize, j: usize, cols: usize, act: &Activation) {
        for r in i..i + rows {
            // SAFETY: row r, columns j..j+cols of C belong to this task's
            // rectangle and lie inside C; no other reference to them is live.
            let row =
                unsafe { std::slice::from_raw_parts_mut(self.c.0.add(r * self.ldc + j), cols) };
            super::apply_activation(act, row);
        }
    }
}

/// Hints the CPU to fetch rows `rows` (each `width` floats, `step` apart)
/// of the block at `p` into L2. Only a hint: the addresses need not be
/// valid.
#[inline(always)]
fn prefetch_rows(p: *const f32, rows: std::ops::Range<usize>, step: usize, width: usize) {
    #[cfg(target_arch = "x86_64")]
    for r in rows {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let row = p.wrapping_add(r * step);
        // SAFETY: a prefetch never faults and reads nothing architecturally.
        unsafe {
            _mm_prefetch::<_MM_HINT_T1>(row as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(width - 1) as *const i8);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, rows, step, width);
}

/// How the epilogue's activation runs: as a clamp fused into the kernels'
/// store (Relu, Clip), or afterwards on the stored tile (the others).
pub(super) fn split_act(act: Option<&Activation>) -> (Option<(f32, f32)>, Option<&Activation>) {
    match act {
        Some(Activation::Relu) => (Some((0.0, f32::INFINITY)), None),
        Some(Activation::Clip { min, max }) => (Some((*min, *max)), None),
        other => (None, other),
    }
}

/// One depth block of both operands: A micro-panel t at `a[t * astride..]`,
/// B micro-panel q at `b[q * bstride..]` with its depth steps `bstep`
/// apart (NR when packed; B's `ldb` when read in place, in which case the
/// last panel, if partial, is packed in `tail`).
struct Blocks<'a> {
    a: &'a [f32],
    astride: usize,
    b: &'a [f32],
    bstride: usize,
    bstep: usize,
    tail: Option<&'a [f32]>,
    /// B's panels come from memory, not from a block packed for this
    /// product (worth prefetching ahead of the kernel).
    b_far: bool,
}

/// Epilogue on rows `i0..i1`, columns `j0..j1` of a C slice.
fn epilogue_rows(
    c: &mut [f32],
    ldc: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    ep: &Epilogue,
) {
    for r in i0..i1 {
        epilogue_row(&mut c[r * ldc + j0..r * ldc + j1], r, j0, ldc, ep);
    }
}

/// Epilogue on one row segment: row `r` of C, starting at column `j`.
fn epilogue_row(row: &mut [f32], r: usize, j: usize, ldc: usize, ep: &Epilogue) {
    let n = row.len();
    if let Some(bc) = ep.bias_col {
        for (x, &b) in row.iter_mut().zip(&bc[j..j + n]) {
            *x += b;
        }
    }
    if let Some(br) = ep.bias_row {
        let b = br[r];
        row.iter_mut().for_each(|x| *x += b);
    }
    if let Some(res) = ep.residual {
        let s = r * ldc + j;
        for (x, &v) in row.iter_mut().zip(&res[s..s + n]) {
            *x += v;
        }
    }
    if let Some(act) = ep.act {
        super::apply_activation(act, row);
    }
}

/// Packs rows `i0..i0+mc`, depths `p0..p0+kc` of op(A) into micro-panels of
/// `mr` rows: element (i, p) of panel t at `t*kc*mr + p*mr + i`, padded with
/// zero rows.
#[allow(clippy::too_many_arguments)]
fn pack_a_panels(
    dst: &mut [f32],
    mr: usize,
    a: &[f32],
    lda: usize,
    trans: bool,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
) {
    match mr {
        MR_AVX512 => pack_panels::<MR_AVX512>(dst, a, lda, !trans, i0, mc, p0, kc),
        6 => pack_panels::<6>(dst, a, lda, !trans, i0, mc, p0, kc),
        4 => pack_panels::<4>(dst, a, lda, !trans, i0, mc, p0, kc),
        _ => unreachable!("every kernel has MR 4, 6 or {MR_AVX512}"),
    }
}

/// Packs depths `p0..p0+kc`, columns `j0..j0+nc` of op(B) into micro-panels
/// of `nr` columns: element (p, j) of panel q at `q*kc*nr + p*nr + j`, padded
/// with zero columns.
#[allow(clippy::too_many_arguments)]
fn pack_b_panels(
    dst: &mut [f32],
    nr: usize,
    b: &[f32],
    ldb: usize,
    trans: bool,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
) {
    match nr {
        16 => pack_panels::<16>(dst, b, ldb, trans, j0, nc, p0, kc),
        NR_AVX512 => pack_panels::<NR_AVX512>(dst, b, ldb, trans, j0, nc, p0, kc),
        _ => unreachable!("every kernel has NR 16 or {NR_AVX512}"),
    }
}

/// The packing both operands share: `W` "lanes" (rows of op(A) or columns
/// of op(B)) `l0..l0+nl` by depths `p0..p0+kc` into panels of W lanes,
/// element (lane l, depth p) of panel t at `t*kc*W + p*W + l`, zero-padded.
/// `lane_major`: a lane is contiguous in `src` (lane l, depth p at
/// `l*ld + p`), else a depth is (at `p*ld + l`).
#[allow(clippy::too_many_arguments)]
fn pack_panels<const W: usize>(
    dst: &mut [f32],
    src: &[f32],
    ld: usize,
    lane_major: bool,
    l0: usize,
    nl: usize,
    p0: usize,
    kc: usize,
) {
    if kc == 0 {
        return;
    }
    for (t, panel) in dst.chunks_exact_mut(kc * W).enumerate() {
        let lb = l0 + t * W;
        let lanes = W.min(l0 + nl - lb);
        if lane_major {
            if lanes == W {
                // Read W lanes side by side, write each depth's W values
                // contiguously.
                let rows: [&[f32]; W] = std::array::from_fn(|l| {
                    let s = (lb + l) * ld + p0;
                    &src[s..s + kc]
                });
                #[cfg(target_arch = "x86_64")]
                if W.is_multiple_of(4) && Features::detect().avx512f {
                    assert!(panel.len() >= kc * W, "a panel holds kc lanes of W");
                    let words = rows.map(|r| r.as_ptr() as *const u32);
                    // SAFETY: the CPU has AVX-512F; each row holds kc
                    // floats and the panel kc * W.
                    unsafe {
                        x86_pack::transpose_words(&words, kc, panel.as_mut_ptr() as *mut u32)
                    };
                    continue;
                }
                for (p, out) in panel.chunks_exact_mut(W).enumerate() {
                    for l in 0..W {
                        out[l] = rows[l][p];
                    }
                }
            } else {
                panel.fill(0.0);
                for l in 0..lanes {
                    let s = (lb + l) * ld + p0;
                    for (p, &v) in src[s..s + kc].iter().enumerate() {
                        panel[p * W + l] = v;
                    }
                }
            }
        } else if lanes == W {
            #[cfg(target_arch = "x86_64")]
            if W.is_multiple_of(16) && Features::detect().avx512f {
                let last = (p0 + kc - 1) * ld + lb;
                assert!(last + W <= src.len(), "B's rows lie in its slice");
                // SAFETY: the CPU has AVX-512F; kc rows of W floats, `ld`
                // apart from `src[p0 * ld + lb]`, lie in `src` (checked),
                // and the panel holds kc * W.
                unsafe { x86_pack::copy_rows::<W>(src[p0 * ld + lb..].as_ptr(), ld, kc, panel) };
                continue;
            }
            for (p, out) in panel.chunks_exact_mut(W).enumerate() {
                let s = (p0 + p) * ld + lb;
                let run: &[f32; W] = src[s..s + W]
                    .try_into()
                    .expect("a slice of length W converts to [f32; W]");
                out.copy_from_slice(run);
            }
        } else {
            for (p, out) in panel.chunks_exact_mut(W).enumerate() {
                let s = (p0 + p) * ld + lb;
                out[..lanes].copy_from_slice(&src[s..s + lanes]);
                out[lanes..].fill(0.0);
            }
        }
    }
}

/// [`pack_panels`]' full panels with AVX-512: what the AVX-512 kernel packs
/// (12-row A panels, 32-column B panels) at memory speed. The scalar loops
/// were a tenth of a 1024^3 product on one Zen 5 core: one 4-byte store
/// per element of A, and B's rows, 4 KiB apart, fetched one at a time.
#[cfg(target_arch = "x86_64")]
pub(super) mod x86_pack {
    use std::arch::x86_64::*;

    /// Rows of B (or 64-byte lines of an A row) fetched ahead of their
    /// copy: far enough to hide an L3 hit.
    const AHEAD: usize = 8;

    /// `W` lanes of 32-bit words (`rows[l]` holds `kc` depths) interleaved
    /// at `out` (`kc × W` words, depth-major): sixteen depths of four lanes
    /// at a time, a 4x4 transpose in each 128-bit lane of four vectors.
    /// Words, not floats: the int8 kernels pack their A panels (four u8
    /// depths a word) the same way ([`super::super::qgemm`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; every `rows[l]` points at `kc` words and
    /// `out` at room for `kc * W` (any alignment); `W` is a multiple of 4.
    #[target_feature(enable = "avx512f")]
    pub(in crate::kernels::cpu) unsafe fn transpose_words<const W: usize>(
        rows: &[*const u32; W],
        kc: usize,
        out: *mut u32,
    ) {
        assert!(W.is_multiple_of(4), "lanes in fours");
        let full = kc / 16 * 16;
        for p in (0..full).step_by(16) {
            for g in (0..W).step_by(4) {
                let r: [__m512i; 4] = std::array::from_fn(|i| {
                    let row = rows[g + i];
                    // A prefetch never faults, past the row's end too.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(p + 16 * AHEAD) as *const i8);
                    _mm512_loadu_si512(row.add(p) as *const __m512i)
                });
                // In each 128-bit lane d (depths p + 4d ..): t[j] holds
                // depth 4d + j of lanes g .. g + 4.
                let lo01 = _mm512_unpacklo_epi32(r[0], r[1]);
                let hi01 = _mm512_unpackhi_epi32(r[0], r[1]);
                let lo23 = _mm512_unpacklo_epi32(r[2], r[3]);
                let hi23 = _mm512_unpackhi_epi32(r[2], r[3]);
                let t = [
                    _mm512_unpacklo_epi64(lo01, lo23),
                    _mm512_unpackhi_epi64(lo01, lo23),
                    _mm512_unpacklo_epi64(hi01, hi23),
                    _mm512_unpackhi_epi64(hi01, hi23),
                ];
                for (j, &tj) in t.iter().enumerate() {
                    let at = |d: usize| out.add((p + 4 * d + j) * W + g) as *mut __m128i;
                    _mm_storeu_si128(at(0), _mm512_castsi512_si128(tj));
                    _mm_storeu_si128(at(1), _mm512_extracti32x4_epi32::<1>(tj));
                    _mm_storeu_si128(at(2), _mm512_extracti32x4_epi32::<2>(tj));
                    _mm_storeu_si128(at(3), _mm512_extracti32x4_epi32::<3>(tj));
                }
            }
        }
        for p in full..kc {
            for (l, row) in rows.iter().enumerate() {
                out.add(p * W + l)
                    .write_unaligned(row.add(p).read_unaligned());
            }
        }
    }

    /// `kc` rows of `W` floats, `ld` apart from `src`, into `panel`
    /// back to back, fetching rows [`AHEAD`] ahead.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `W` is a multiple of 16; the rows lie
    /// in one allocation and `panel` holds `kc * W`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_rows<const W: usize>(
        src: *const f32,
        ld: usize,
        kc: usize,
        panel: &mut [f32],
    ) {
        assert!(
            W.is_multiple_of(16) && panel.len() >= kc * W,
            "panel holds kc rows of W"
        );
        let out = panel.as_mut_ptr();
        for p in 0..kc {
            let row = src.add(p * ld);
            let ahead = src.wrapping_add((p + AHEAD) * ld);
            for v in (0..W).step_by(16) {
                // A prefetch never faults, wherever `ahead` points.
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(v) as *const i8);
                _mm512_storeu_ps(out.add(p * W + v), _mm512_loadu_ps(row.add(v)));
            }
        }
    }
}

/// Where a micro-kernel stores its tile: `rows × cols` (at most MR × NR) of
/// C at `c` with stride `ldc`; `C = alpha·acc`, or `C += alpha·acc` when
/// `accumulate` (a later depth block); then the fused epilogue `ep`.
struct Tile<'a> {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    accumulate: bool,
    ep: TileEp,
    /// When not empty (AVX-512 kernel only): the tile's columns are lanes
    /// that land in C by pieces, `c` pointing at column 0 of C (and the
    /// residual likewise); lanes in no piece are dropped.
    pieces: &'a [DirectPiece],
}

/// The part of the epilogue a kernel applies to its registers before the
/// store (on the last depth block only), in this order: `+ bias_col[c]`,
/// `+ bias_row[r]`, `+ residual[r * ldc + c]`, then `min(max(x, lo), hi)`.
/// Pointers are offset to the tile's first row and column; null when
/// absent.
#[derive(Clone, Copy)]
struct TileEp {
    bias_col: *const f32,
    bias_row: *const f32,
    residual: *const f32,
    clamp: Option<(f32, f32)>,
}

impl TileEp {
    const NONE: TileEp = TileEp {
        bias_col: std::ptr::null(),
        bias_row: std::ptr::null(),
        residual: std::ptr::null(),
        clamp: None,
    };
}

/// The fused epilogue on one value `v` (already `alpha·acc`, plus C when
/// accumulating) at row `r`, column `c` of the tile; the same operations in
/// the same order as the vector stores, so every path rounds alike.
///
/// # Safety
/// `(r, c)` lies inside the tile, and the tile's epilogue pointers cover it.
#[inline(always)]
unsafe fn ep_scalar(t: &Tile, r: usize, c: usize, mut v: f32) -> f32 {
    let ep = &t.ep;
    if !ep.bias_col.is_null() {
        v += *ep.bias_col.add(c);
    }
    if !ep.bias_row.is_null() {
        v += *ep.bias_row.add(r);
    }
    if !ep.residual.is_null() {
        v += *ep.residual.add(r * t.ldc + c);
    }
    if let Some((lo, hi)) = ep.clamp {
        v = v.max(lo).min(hi);
    }
    v
}

/// Portable micro-kernel: a `4 × 16` tile in plain Rust (the inner loops are
/// fixed-width, so the compiler keeps the tile in vector registers).
///
/// # Safety
/// The tile must lie inside C with no other live reference to it.
unsafe fn kernel_portable(kc: usize, a: &[f32], b: &[f32], t: &Tile) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0.0f32; NR]; MR];
    for (av, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for r in 0..MR {
            let x = av[r];
            for c in 0..NR {
                acc[r][c] += x * bv[c];
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        // SAFETY: the tile (rows × cols at c, stride ldc) lies inside C and
        // belongs to the calling task (see `Gemm::macro_kernel`).
        let out = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), t.cols) };
        for (c, (o, &v)) in out.iter_mut().zip(row).enumerate() {
            let x = if t.accumulate {
                *o + t.alpha * v
            } else {
                t.alpha * v
            };
            // SAFETY: (r, c) is inside the tile.
            *o = unsafe { ep_scalar(t, r, c, x) };
        }
    }
}

/// AVX2/FMA micro-kernel for a tile of any size up to `6 × 16`: picks the
/// instance of [`tile_avx2`] that computes just the tile's rows and column
/// vectors.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` holds `kc*6` floats, `b` `kc`
/// rows of 16 floats `bstep` apart, and the tile lies inside C with no
/// other live reference to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: &[f32], b: &[f32], bstep: usize, t: &Tile) {
    debug_assert!(a.len() >= kc * MR_AVX2 && b.len() >= (kc - 1) * bstep + NR_AVX2);
    let b = Strided {
        p: b.as_ptr(),
        step: bstep,
    };
    kernel_avx2_rows(kc, a.as_ptr(), b, t)
}

/// [`kernel_avx2`] with B's rows given by a cursor.
///
/// # Safety
/// As [`kernel_avx2`]: `a` points at `kc*6` floats and `b` yields `kc`
/// rows of 16 readable floats (8 when the tile has at most 8 columns).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2_rows<B: BRows>(kc: usize, a: *const f32, b: B, t: &Tile) {
    debug_assert!(t.rows >= 1 && t.rows <= MR_AVX2 && t.cols >= 1 && t.cols <= NR_AVX2);
    macro_rules! by_rows {
        ($($r:literal)*) => {
            match (t.rows, t.cols > 8) {
                $(
                    ($r, true) => tile_avx2::<$r, 2, B>(kc, a, b, t),
                    ($r, false) => tile_avx2::<$r, 1, B>(kc, a, b, t),
                )*
                _ => unreachable!("a tile has 1 to {MR_AVX2} rows"),
            }
        };
    }
    by_rows!(1 2 3 4 5 6)
}

/// The AVX2 lane mask (all bits set in lane i) of the lanes whose bit is
/// set in `bits`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lane_mask_avx2(bits: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32(bits as i32), lane_bits),
        lane_bits,
    )
}

/// AVX2 micro-kernel body: rows `0..R` of a `6 × 16` panel pair, `NV` (1 or
/// 2) vectors of 8 columns, in `R·NV` ymm accumulators (12 for a full tile:
/// enough independent FMA chains for two FMA pipes of latency 4 or 5, with
/// registers left for two B vectors and a broadcast). Per depth step: `NV`
/// loads of B, `R` broadcasts of A, `R·NV` FMAs. The store scales by alpha,
/// applies the fused epilogue and masks the columns past the tile.
///
/// # Safety
/// As [`kernel_avx2_rows`], with `R` the tile's rows and `NV` covering its
/// columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const NV: usize, B: BRows>(
    kc: usize,
    a: *const f32,
    mut b: B,
    t: &Tile,
) {
    use std::arch::x86_64::*;
    // Start fetching C's lines (read when accumulating, written at the end).
    for r in 0..R {
        let cp = t.c.add(r * t.ldc) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(cp);
        _mm_prefetch::<_MM_HINT_T0>(cp.add((t.cols - 1) * 4));
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    let mut ap = a;
    macro_rules! step {
        () => {{
            let bp = b.next_row();
            let b0 = _mm256_loadu_ps(bp);
            let b1 = if NV == 2 {
                _mm256_loadu_ps(bp.add(8))
            } else {
                b0
            };
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*ap.add(r));
                acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
                if NV == 2 {
                    acc[r][NV - 1] = _mm256_fmadd_ps(x, b1, acc[r][NV - 1]);
                }
            }
            ap = ap.add(MR_AVX2);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    if !t.pieces.is_empty() {
        store_pieces_avx2::<R, NV>(&acc, t);
        return;
    }
    let alpha = _mm256_set1_ps(t.alpha);
    let ep = t.ep;
    let (lo, hi) = ep.clamp.unwrap_or((0.0, 0.0));
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    // Per vector: its columns in the tile, and their lane mask.
    let widths: [usize; NV] = std::array::from_fn(|v| t.cols.saturating_sub(v * 8).min(8));
    let masks: [__m256i; NV] = std::array::from_fn(|v| lane_mask_avx2((1u32 << widths[v]) - 1));
    for (r, acc_r) in acc.iter().enumerate() {
        let cp = t.c.add(r * t.ldc);
        for (v, &acc_v) in acc_r.iter().enumerate() {
            let (off, m, full) = (v * 8, masks[v], widths[v] == 8);
            macro_rules! load {
                ($p:expr) => {
                    if full {
                        _mm256_loadu_ps($p)
                    } else {
                        _mm256_maskload_ps($p, m)
                    }
                };
            }
            let mut x = if t.accumulate {
                _mm256_fmadd_ps(acc_v, alpha, load!(cp.add(off)))
            } else {
                _mm256_mul_ps(acc_v, alpha)
            };
            if !ep.bias_col.is_null() {
                x = _mm256_add_ps(x, load!(ep.bias_col.add(off)));
            }
            if !ep.bias_row.is_null() {
                x = _mm256_add_ps(x, _mm256_set1_ps(*ep.bias_row.add(r)));
            }
            if !ep.residual.is_null() {
                x = _mm256_add_ps(x, load!(ep.residual.add(r * t.ldc + off)));
            }
            if ep.clamp.is_some() {
                // max first, then min: NaN becomes lo like f32::max.
                x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
            }
            if full {
                _mm256_storeu_ps(cp.add(off), x);
            } else {
                _mm256_maskstore_ps(cp.add(off), m, x);
            }
        }
    }
}

/// The store of [`tile_avx2`] for a tile stored by pieces
/// ([`Tile::pieces`]), as [`store_pieces`] does for AVX-512: each vector is
/// read (when accumulating, and the residual) and written with one masked
/// access per piece it overlaps, at the piece's own offset.
///
/// # Safety
/// As [`tile_avx2`]; the pieces' columns lie in C (and the residual) on
/// every row of the tile, and `bias_col` is null.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_pieces_avx2<const R: usize, const NV: usize>(
    acc: &[[std::arch::x86_64::__m256; NV]; R],
    t: &Tile,
) {
    use std::arch::x86_64::*;
    debug_assert!(t.ep.bias_col.is_null());
    let alpha = _mm256_set1_ps(t.alpha);
    let ep = t.ep;
    let (lo, hi) = ep.clamp.unwrap_or((0.0, 0.0));
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    // Per piece and vector: whether it has lanes there, their mask, and
    // where lane 0 of the vector would land (only masked lanes are ever
    // accessed).
    // A vector that one piece covers whole is accessed unmasked (masked
    // stores are slow on some CPUs).
    let mut parts = [[(0u32, _mm256_setzero_si256(), 0isize); NV]; DIRECT_PIECES];
    for (pc, part) in t.pieces.iter().zip(parts.iter_mut()) {
        let lanes = (1u32 << pc.hi) - (1u32 << pc.lo);
        for (v, pv) in part.iter_mut().enumerate() {
            let bits = (lanes >> (8 * v)) & 0xFF;
            let off = pc.col as isize - pc.lo as isize + 8 * v as isize;
            *pv = (bits, lane_mask_avx2(bits), off);
        }
    }
    let parts = &parts[..t.pieces.len()];
    // Disjoint pieces: OR-ing their masked (zero elsewhere) loads is exact.
    macro_rules! gather {
        ($p:expr, $v:expr) => {{
            let mut x = _mm256_setzero_ps();
            for part in parts {
                let (bits, m, off) = part[$v];
                if bits == 0xFF {
                    x = _mm256_loadu_ps($p.wrapping_offset(off));
                } else if bits != 0 {
                    x = _mm256_or_ps(x, _mm256_maskload_ps($p.wrapping_offset(off), m));
                }
            }
            x
        }};
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let cp = t.c.add(r * t.ldc);
        for (v, &acc_v) in acc_r.iter().enumerate() {
            let mut x = if t.accumulate {
                _mm256_fmadd_ps(acc_v, alpha, gather!(cp as *const f32, v))
            } else {
                _mm256_mul_ps(acc_v, alpha)
            };
            if !ep.bias_row.is_null() {
                x = _mm256_add_ps(x, _mm256_set1_ps(*ep.bias_row.add(r)));
            }
            if !ep.residual.is_null() {
                x = _mm256_add_ps(x, gather!(ep.residual.add(r * t.ldc), v));
            }
            if ep.clamp.is_some() {
                x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
            }
            for part in parts {
                let (bits, m, off) = part[v];
                if bits == 0xFF {
                    _mm256_storeu_ps(cp.wrapping_offset(off), x);
                } else if bits != 0 {
                    _mm256_maskstore_ps(cp.wrapping_offset(off), m, x);
                }
            }
        }
    }
}

/// How the AVX-512 kernel finds B's row (32 floats) at each depth step:
/// a cursor that yields the row of step 0, then 1, and so on.
trait BRows: Copy {
    /// The current depth step's row; moves to the next step.
    ///
    /// # Safety
    /// At most as many calls as the depth the cursor was made for.
    unsafe fn next_row(&mut self) -> *const f32;
}

/// B rows a fixed stride apart (a packed panel, or B read in place).
#[derive(Clone, Copy)]
struct Strided {
    p: *const f32,
    step: usize,
}

impl BRows for Strided {
    #[inline(always)]
    unsafe fn next_row(&mut self) -> *const f32 {
        let r = self.p;
        self.p = self.p.add(self.step);
        r
    }
}

/// B rows at `base + offs[p]`: a direct convolution's taps, each row the
/// pixels one tap reads.
#[derive(Clone, Copy)]
struct Offsets {
    base: *const f32,
    offs: *const usize,
}

impl BRows for Offsets {
    #[inline(always)]
    unsafe fn next_row(&mut self) -> *const f32 {
        let r = self.base.add(*self.offs);
        self.offs = self.offs.add(1);
        r
    }
}

/// AVX-512 micro-kernel for a tile of any size up to `12 × 32`: picks the
/// instance of [`tile_avx512`] that computes just the tile's rows and
/// column vectors.
///
/// # Safety
/// The CPU must support AVX-512F; `a` holds `kc*12` floats, `b` `kc` rows
/// of 32 floats `bstep` apart,
/// and the tile lies inside C with no other live reference to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(kc: usize, a: &[f32], b: &[f32], bstep: usize, t: &Tile) {
    debug_assert!(a.len() >= kc * MR_AVX512 && b.len() >= (kc - 1) * bstep + NR_AVX512);
    let b = Strided {
        p: b.as_ptr(),
        step: bstep,
    };
    kernel_avx512_rows(kc, a.as_ptr(), b, t)
}

/// [`kernel_avx512`] with B's rows given by a cursor.
///
/// # Safety
/// As [`kernel_avx512`]: `a` points at `kc*12` floats and `b` yields `kc`
/// rows of 32 readable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512_rows<B: BRows>(kc: usize, a: *const f32, b: B, t: &Tile) {
    debug_assert!(t.rows >= 1 && t.rows <= MR_AVX512 && t.cols >= 1 && t.cols <= NR_AVX512);
    macro_rules! by_rows {
        ($($r:literal)*) => {
            match (t.rows, t.cols > 16) {
                $(
                    ($r, true) => tile_avx512::<$r, 2, B>(kc, a, b, t),
                    ($r, false) => tile_avx512::<$r, 1, B>(kc, a, b, t),
                )*
                _ => unreachable!("a tile has 1 to {MR_AVX512} rows"),
            }
        };
    }
    by_rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// AVX-512 micro-kernel body: rows `0..R` of a `12 × 32` panel pair, `NV`
/// (1 or 2) vectors of 16 columns, in `R·NV` zmm accumulators (24 for a
/// full tile: enough independent FMA chains to cover two FMA pipes of
/// latency 4, with registers left for two B vectors and a broadcast). Per
/// depth step: `NV` loads of B, `R` broadcasts of A, `R·NV` FMAs. The store
/// scales by alpha, applies the fused epilogue and masks the columns past
/// the tile.
///
/// # Safety
/// As [`kernel_avx512_rows`], with `R` the tile's rows and `NV` covering
/// its columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const NV: usize, B: BRows>(
    kc: usize,
    a: *const f32,
    mut b: B,
    t: &Tile,
) {
    use std::arch::x86_64::*;
    // Start fetching C's lines (read when accumulating, written at the end).
    for r in 0..R {
        let cp = t.c.add(r * t.ldc) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(cp);
        _mm_prefetch::<_MM_HINT_T0>(cp.add((t.cols - 1) * 2));
        _mm_prefetch::<_MM_HINT_T0>(cp.add((t.cols - 1) * 4));
    }
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let mut ap = a;
    macro_rules! step {
        () => {{
            let bp = b.next_row();
            let b0 = _mm512_loadu_ps(bp);
            let b1 = if NV == 2 {
                _mm512_loadu_ps(bp.add(16))
            } else {
                b0
            };
            for r in 0..R {
                let x = _mm512_set1_ps(*ap.add(r));
                acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
                if NV == 2 {
                    acc[r][NV - 1] = _mm512_fmadd_ps(x, b1, acc[r][NV - 1]);
                }
            }
            ap = ap.add(MR_AVX512);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    if !t.pieces.is_empty() {
        store_pieces::<R, NV>(&acc, t);
        return;
    }
    let alpha = _mm512_set1_ps(t.alpha);
    let ep = t.ep;
    let (lo, hi) = ep.clamp.unwrap_or((0.0, 0.0));
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let masks: [__mmask16; NV] = std::array::from_fn(|v| {
        let c = t.cols.saturating_sub(v * 16).min(16);
        ((1u32 << c) - 1) as __mmask16
    });
    for (r, acc_r) in acc.iter().enumerate() {
        let cp = t.c.add(r * t.ldc);
        for (v, (&m, &acc_v)) in masks.iter().zip(acc_r).enumerate() {
            let off = v * 16;
            let mut x = if t.accumulate {
                _mm512_fmadd_ps(acc_v, alpha, _mm512_maskz_loadu_ps(m, cp.add(off)))
            } else {
                _mm512_mul_ps(acc_v, alpha)
            };
            if !ep.bias_col.is_null() {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, ep.bias_col.add(off)));
            }
            if !ep.bias_row.is_null() {
                x = _mm512_add_ps(x, _mm512_set1_ps(*ep.bias_row.add(r)));
            }
            if !ep.residual.is_null() {
                let rp = ep.residual.add(r * t.ldc + off);
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, rp));
            }
            if ep.clamp.is_some() {
                // max first, then min: NaN becomes lo like f32::max.
                x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
            }
            if m == 0xFFFF {
                _mm512_storeu_ps(cp.add(off), x);
            } else {
                _mm512_mask_storeu_ps(cp.add(off), m, x);
            }
        }
    }
}

/// The store of [`tile_avx512`] for a tile stored by pieces
/// ([`Tile::pieces`]): each vector is read (when accumulating, and the
/// residual) and written with one masked access per piece it overlaps, at
/// the piece's own offset. The same operations in the same order as the
/// plain store.
///
/// # Safety
/// As [`tile_avx512`]; the pieces' columns lie in C (and the residual) on
/// every row of the tile, and `bias_col` is null.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_pieces<const R: usize, const NV: usize>(
    acc: &[[std::arch::x86_64::__m512; NV]; R],
    t: &Tile,
) {
    use std::arch::x86_64::*;
    debug_assert!(t.ep.bias_col.is_null());
    let alpha = _mm512_set1_ps(t.alpha);
    let ep = t.ep;
    let (lo, hi) = ep.clamp.unwrap_or((0.0, 0.0));
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    // Per piece: its lanes' mask in each vector and where lane 0 of the
    // vector would land (only masked lanes are ever accessed).
    let mut parts = [[(0 as __mmask16, 0isize); NV]; DIRECT_PIECES];
    for (pc, part) in t.pieces.iter().zip(parts.iter_mut()) {
        let lanes = ((1u64 << pc.hi) - (1u64 << pc.lo)) as u32;
        for (v, pv) in part.iter_mut().enumerate() {
            let m = (lanes >> (16 * v)) as __mmask16;
            *pv = (m, pc.col as isize - pc.lo as isize + 16 * v as isize);
        }
    }
    let parts = &parts[..t.pieces.len()];
    macro_rules! gather {
        ($p:expr, $v:expr) => {{
            let mut x = _mm512_setzero_ps();
            for part in parts {
                let (m, off) = part[$v];
                if m != 0 {
                    x = _mm512_mask_loadu_ps(x, m, $p.wrapping_offset(off));
                }
            }
            x
        }};
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let cp = t.c.add(r * t.ldc);
        for (v, &acc_v) in acc_r.iter().enumerate() {
            let mut x = if t.accumulate {
                _mm512_fmadd_ps(acc_v, alpha, gather!(cp as *const f32, v))
            } else {
                _mm512_mul_ps(acc_v, alpha)
            };
            if !ep.bias_row.is_null() {
                x = _mm512_add_ps(x, _mm512_set1_ps(*ep.bias_row.add(r)));
            }
            if !ep.residual.is_null() {
                x = _mm512_add_ps(x, gather!(ep.residual.add(r * t.ldc), v));
            }
            if ep.clamp.is_some() {
                x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
            }
            for part in parts {
                let (m, off) = part[v];
                if m != 0 {
                    _mm512_mask_storeu_ps(cp.wrapping_offset(off), m, x);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * 2.0)
            .collect()
    }

    /// One test problem: op(A) m×k, op(B) k×n, with padded leading dims.
    struct Prob {
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        alpha: f32,
        a: Vec<f32>,
        lda: usize,
        b: Vec<f32>,
        ldb: usize,
        ldc: usize,
    }

    fn prob(m: usize, n: usize, k: usize, ta: bool, tb: bool, alpha: f32, seed: u64) -> Prob {
        // Leading dims larger than needed catch stride mistakes.
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
        Prob {
            m,
            n,
            k,
            ta,
            tb,
            alpha,
            a: rand_vec(ar * lda, seed),
            lda,
            b: rand_vec(br * ldb, seed + 1),
            ldb,
            ldc,
        }
    }

    /// f64 triple loop with the epilogue, reference activation math; also
    /// returns per element the worst-case f32 rounding bound of the sum.
    fn naive(p: &Prob, ep: &Epilogue) -> Vec<(f64, f64)> {
        let mut out = vec![(0.0f64, 0.0f64); p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for q in 0..p.k {
                    let av = if p.ta {
                        p.a[q * p.lda + i]
                    } else {
                        p.a[i * p.lda + q]
                    };
                    let bv = if p.tb {
                        p.b[j * p.ldb + q]
                    } else {
                        p.b[q * p.ldb + j]
                    };
                    s += av as f64 * bv as f64;
                    mag += (av as f64 * bv as f64).abs();
                }
                let mut v = p.alpha as f64 * s;
                mag *= p.alpha.abs() as f64;
                if let Some(bc) = ep.bias_col {
                    v += bc[j] as f64;
                    mag += bc[j].abs() as f64;
                }
                if let Some(br) = ep.bias_row {
                    v += br[i] as f64;
                    mag += br[i].abs() as f64;
                }
                if let Some(r) = ep.residual {
                    v += r[i * p.ldc + j] as f64;
                    mag += r[i * p.ldc + j].abs() as f64;
                }
                if let Some(act) = ep.act {
                    let mut x = [v as f32];
                    super::super::apply_activation_exact(act, &mut x);
                    v = x[0] as f64;
                }
                // Each of the k + 4 roundings is at most 2^-24 of the
                // running magnitude; activations here are 1.2-Lipschitz.
                let bound = 1.2 * (p.k as f64 + 4.0) * 6.0e-8 * mag + 1e-6 * v.abs() + 1e-7;
                out[i * p.n + j] = (v, bound);
            }
        }
        out
    }

    fn run(p: &Prob, ep: &Epilogue, cx: &CpuCtx) -> Vec<f32> {
        // Poisoned C: every element must be overwritten; padding untouched.
        let mut c = vec![f32::NAN; p.m.max(1) * p.ldc];
        sgemm(
            p.m, p.n, p.k, p.alpha, &p.a, p.lda, p.ta, &p.b, p.ldb, p.tb, &mut c, p.ldc, ep, cx,
        );
        for i in 0..p.m {
            for j in p.n..p.ldc {
                assert!(c[i * p.ldc + j].is_nan(), "padding of row {i} written");
            }
        }
        c
    }

    fn check(p: &Prob, ep: &Epilogue, got: &[f32], what: &str) {
        let want = naive(p, ep);
        for i in 0..p.m {
            for j in 0..p.n {
                let (g, (w, tol)) = (got[i * p.ldc + j] as f64, want[i * p.n + j]);
                assert!(
                    (g - w).abs() <= tol,
                    "{what}: m{} n{} k{} ta{} tb{} at ({i},{j}): {g} vs {w}",
                    p.m,
                    p.n,
                    p.k,
                    p.ta,
                    p.tb
                );
            }
        }
    }

    /// Every feature set with its own kernel on this machine: portable,
    /// AVX2 (when present), AVX-512 (when present); on aarch64 NEON. The
    /// ones the CPU lacks are printed as skipped.
    pub(crate) fn features() -> Vec<(&'static str, Features)> {
        let mut v = vec![("portable", Features::portable())];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = Features::avx2_only();
            if avx2 != Features::portable() {
                v.push(("avx2", avx2));
            } else {
                println!("skipped: CPU lacks AVX2/FMA (the AVX2 f32 kernel)");
            }
            let det = Features::detect();
            if det.avx512f {
                v.push(("avx512", det));
            } else {
                println!("skipped: CPU lacks AVX-512F (the AVX-512 f32 kernel)");
            }
        }
        #[cfg(target_arch = "aarch64")]
        match Features::neon_only() {
            Some(f) => v.push(("neon", f)),
            None => println!("skipped: CPU lacks NEON (the NEON f32 kernel)"),
        }
        v
    }

    /// Which f32 GEMM kernel paths the tests ran on this CPU, for the
    /// suite's summary (`tests/run_all.sh` prints the file; under qemu the
    /// aarch64 build writes a file of its own): a path the CPU lacks is
    /// said to be skipped, never passed silently.
    #[test]
    fn f32_kernel_paths_on_this_cpu_are_reported() {
        let ran: Vec<&str> = features().iter().map(|(n, _)| *n).collect();
        #[cfg(target_arch = "x86_64")]
        let (paths, file) = (
            [("avx2", "AVX2/FMA"), ("avx512", "AVX-512F")].as_slice(),
            "f32_kernels.txt",
        );
        #[cfg(target_arch = "aarch64")]
        let (paths, file) = ([("neon", "NEON")].as_slice(), "f32_kernels.aarch64.txt");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let (paths, file) = ([].as_slice(), "f32_kernels.other.txt");
        crate::kernels::cpu::testing::report_kernel_paths("f32 GEMM", &ran, paths, file);
    }

    fn ctxs() -> Vec<(&'static str, CpuCtx)> {
        features()
            .into_iter()
            .map(|(name, f)| (name, CpuCtx::single(f)))
            .collect()
    }

    fn two_threads(f: Features) -> CpuCtx {
        let mut cx = CpuCtx::new(2).expect("a 2-thread pool starts");
        cx.features = f;
        cx
    }

    const SIZES: [usize; 9] = [1, 2, 5, 7, 13, 16, 17, 33, 97];

    #[test]
    fn shapes_and_transposes_match_naive() {
        let ep = Epilogue::default();
        let mut seed = 1;
        for (name, cx) in ctxs() {
            for &m in &SIZES {
                for &n in &[1usize, 7, 13, 16, 31, 97] {
                    for &k in &[1usize, 3, 13, 64] {
                        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)]
                        {
                            seed += 2;
                            let p = prob(m, n, k, ta, tb, 1.0, seed);
                            check(&p, &ep, &run(&p, &ep, &cx), name);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn large_and_multi_block_shapes() {
        // 257x129x300 crosses a KC boundary; 150x40x600 crosses MC and KC
        // several times with accumulate-into-C; alpha != 1 on all of them.
        let ep = Epilogue::default();
        for (name, cx) in ctxs() {
            for (i, &(m, n, k)) in [(257, 129, 300), (150, 40, 600), (6, 3100, 20)]
                .iter()
                .enumerate()
            {
                for (ta, tb) in [(false, false), (true, true)] {
                    let p = prob(m, n, k, ta, tb, -0.75, 100 + i as u64);
                    check(&p, &ep, &run(&p, &ep, &cx), name);
                }
            }
        }
    }

    #[test]
    fn epilogue_parts() {
        let (m, n, k) = (13, 37, 29);
        let bias_col = rand_vec(n, 7);
        let bias_row = rand_vec(m, 8);
        let acts = [
            Activation::Relu,
            Activation::Clip {
                min: -0.5,
                max: 1.5,
            },
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Gelu { tanh_approx: false },
            Activation::LeakyRelu { alpha: 0.1 },
        ];
        for (name, cx) in ctxs() {
            let p = prob(m, n, k, false, true, 0.5, 9);
            let residual = rand_vec(m * p.ldc, 10);
            let mut eps = vec![
                Epilogue {
                    bias_col: Some(&bias_col),
                    ..Default::default()
                },
                Epilogue {
                    bias_row: Some(&bias_row),
                    ..Default::default()
                },
                Epilogue {
                    residual: Some(&residual),
                    ..Default::default()
                },
            ];
            for act in &acts {
                eps.push(Epilogue {
                    act: Some(act),
                    ..Default::default()
                });
            }
            eps.push(Epilogue {
                bias_col: Some(&bias_col),
                bias_row: Some(&bias_row),
                residual: Some(&residual),
                act: Some(&acts[0]),
            });
            for ep in &eps {
                check(&p, ep, &run(&p, ep, &cx), name);
                // k = 0: the epilogue on a zero product.
                let z = prob(m, n, 0, false, false, 1.0, 11);
                check(&z, ep, &run(&z, ep, &cx), name);
            }
            // The epilogue is applied once even when k spans several blocks.
            let big = prob(m, n, 2 * KC + 5, false, false, 1.0, 12);
            let big_res = rand_vec(m * big.ldc, 13);
            let ep = Epilogue {
                bias_col: Some(&bias_col),
                residual: Some(&big_res),
                act: Some(&acts[1]),
                ..Default::default()
            };
            check(&big, &ep, &run(&big, &ep, &cx), name);
        }
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let bias = rand_vec(300, 21);
        let act = Activation::Relu;
        let ep = Epilogue {
            bias_col: Some(&bias),
            act: Some(&act),
            ..Default::default()
        };
        for (_, f) in features() {
            let one = CpuCtx::single(f);
            let two = two_threads(f);
            for (i, &(m, n, k)) in [(257, 129, 300), (97, 300, 97), (300, 17, 64), (7, 250, 130)]
                .iter()
                .enumerate()
            {
                let p = prob(m, n, k, i % 2 == 1, i >= 2, 1.25, 30 + i as u64);
                let (a, b) = (run(&p, &ep, &one), run(&p, &ep, &two));
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{f:?} m{m} n{n} k{k}: 1 and 2 threads differ"
                );
                check(&p, &ep, &b, "2 threads");
            }
        }
    }

    /// A generated B operand that packs from a plain row-major matrix, with
    /// a row offset so a wrong `p0` cannot go unnoticed.
    struct ShiftedB<'a> {
        b: &'a [f32],
        ldb: usize,
        trans: bool,
    }

    impl PackB for ShiftedB<'_> {
        fn pack(&self, dst: &mut [f32], nr: usize, p0: usize, kc: usize, j0: usize, nc: usize) {
            pack_b_panels(dst, nr, self.b, self.ldb, self.trans, p0, kc, j0, nc);
        }
    }

    #[test]
    fn prepacked_and_generated_operands_match_sgemm() {
        let bias = rand_vec(600, 41);
        let ep = Epilogue {
            bias_col: Some(&bias),
            ..Default::default()
        };
        for (_, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for &(m, n, k, ta, tb) in &[
                    (5, 33, 7, false, false),
                    (64, 200, 300, true, true),
                    (1, 17, 1, false, false),
                    (157, 531, 600, false, true),
                ] {
                    let p = prob(m, n, k, ta, tb, 2.0, 50 + m as u64);
                    let direct = run(&p, &ep, &cx);
                    let pa = pack_a(m, k, &p.a, p.lda, ta, f);
                    let pb = pack_b(k, n, &p.b, p.ldb, tb, f);
                    assert_eq!((pa.m(), pa.k(), pb.k(), pb.n()), (m, k, k, n));
                    let gen = ShiftedB {
                        b: &p.b,
                        ldb: p.ldb,
                        trans: tb,
                    };
                    let raw_a = ASrc::Raw {
                        a: &p.a,
                        lda: p.lda,
                        trans: ta,
                    };
                    let combos = [
                        ("packed A", ASrc::Packed(&pa), BSrc::Gen(&gen)),
                        ("packed B", raw_a, BSrc::Packed(&pb)),
                        ("both packed", ASrc::Packed(&pa), BSrc::Packed(&pb)),
                        ("generated B", raw_a, BSrc::Gen(&gen)),
                    ];
                    for (what, a, b) in combos {
                        let mut c = vec![0.0f32; m * p.ldc];
                        gemm(m, n, k, p.alpha, a, b, &mut c, p.ldc, &ep, &cx);
                        for i in 0..m {
                            for j in 0..n {
                                let (x, y) = (c[i * p.ldc + j], direct[i * p.ldc + j]);
                                assert_eq!(x.to_bits(), y.to_bits(), "{what} ({i},{j}) {x} vs {y}");
                            }
                        }
                    }
                    if !ta {
                        let mut c = vec![0.0f32; m * p.ldc];
                        sgemm_packed(m, p.alpha, &p.a, p.lda, false, &pb, &mut c, p.ldc, &ep, &cx);
                        for i in 0..m {
                            let (x, y) = (
                                &c[i * p.ldc..i * p.ldc + n],
                                &direct[i * p.ldc..i * p.ldc + n],
                            );
                            assert!(x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tuned_knobs_keep_the_result() {
        use crate::kernels::cpu::choice::{ProductKnobs, KC_CHOICES};
        // Every split and block depth a tuner may pick, on products large
        // enough for two threads, crossing depth blocks and tiles.
        for (name, f) in features() {
            for &(m, n, k) in &[(37, 171, 300), (150, 40, 600), (5, 2000, 129)] {
                let p = prob(m, n, k, false, false, 1.0, 7);
                let ep = Epilogue::default();
                let splits = [None, Some(Split::Rows), Some(Split::Cols)];
                let kcs = std::iter::once(None).chain(KC_CHOICES.map(|kc| Some(usize::from(kc))));
                for (split, kc) in kcs.flat_map(|kc| splits.map(|s| (s, kc))) {
                    let cx = CpuCtx {
                        knobs: ProductKnobs { split, kc },
                        ..two_threads(f)
                    };
                    let got = run(&p, &ep, &cx);
                    check(
                        &p,
                        &ep,
                        &got,
                        &format!("{name} {m}x{n}x{k} {split:?} kc {kc:?}"),
                    );
                }
            }
        }
    }

    #[test]
    fn empty_products_touch_nothing() {
        let cx = CpuCtx::single(Features::detect());
        let mut c = vec![7.0f32; 4];
        sgemm(
            0,
            2,
            3,
            1.0,
            &[],
            3,
            false,
            &[0.0; 6],
            2,
            false,
            &mut c,
            2,
            &Epilogue::default(),
            &cx,
        );
        sgemm(
            2,
            0,
            3,
            1.0,
            &[0.0; 6],
            3,
            false,
            &[],
            0,
            false,
            &mut c,
            2,
            &Epilogue::default(),
            &cx,
        );
        assert_eq!(c, vec![7.0; 4]);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn short_operand_is_caught_before_any_write() {
        let cx = CpuCtx::single(Features::detect());
        let mut c = vec![0.0f32; 4];
        sgemm(
            2,
            2,
            3,
            1.0,
            &[0.0; 5],
            3,
            false,
            &[0.0; 6],
            2,
            false,
            &mut c,
            2,
            &Epilogue::default(),
            &cx,
        );
    }

    #[test]
    fn grid_keeps_pieces_tile_sized() {
        let raw = (1024, 1024);
        assert_eq!(grid(1024, 1024, 1024, (6, 16), raw, MC, 2), (1, 2));
        assert_eq!(grid(4, 1024, 1024, (6, 16), raw, MC, 4), (1, 4));
        assert_eq!(grid(1000, 10, 1024, (6, 16), raw, MC, 4), (4, 1));
        assert_eq!(grid(1024, 1024, 1024, (6, 16), raw, MC, 4), (2, 2));
        // A prepacked A (conv weights): split the columns, so no task packs
        // all of B; a prepacked B (MatMul weights): split the rows.
        assert_eq!(grid(128, 784, 1152, (12, 32), (0, 1152), 0, 2), (1, 2));
        assert_eq!(grid(512, 512, 384, (12, 32), (384, 0), 0, 2), (2, 1));
        // 1x1 convolutions reading their input in place: few pixels
        // (7 panels) split the rows; few rows (2 tiles) the pixels.
        assert_eq!(grid(96, 196, 576, (12, 32), (0, 576), MC, 2), (2, 1));
        assert_eq!(grid(160, 49, 960, (12, 32), (0, 960), MC, 2), (2, 1));
        assert_eq!(grid(24, 784, 144, (12, 32), (0, 144), MC, 2), (1, 2));
        assert_eq!(grid(24, 3136, 144, (12, 32), (0, 144), MC, 2), (1, 2));
    }

    /// The speed tests' shapes: `GEMM_SHAPES="m,n,k;..."`, else `default`.
    pub(crate) fn shapes_from_env(default: &[(usize, usize, usize)]) -> Vec<(usize, usize, usize)> {
        match std::env::var("GEMM_SHAPES") {
            Ok(s) => s
                .split(';')
                .filter_map(|t| {
                    let v: Vec<usize> =
                        t.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                    (v.len() == 3).then(|| (v[0], v[1], v[2]))
                })
                .collect(),
            Err(_) => default.to_vec(),
        }
    }

    /// Single-thread GFLOP/s at 1024³ (run in release:
    /// `cargo test --release --lib gemm_speed -- --ignored --nocapture`;
    /// `GEMM_ISA=avx2` runs the AVX2 kernel on an AVX-512 machine, to set
    /// both paths against their own peaks from `mlc probe`).
    #[test]
    #[ignore]
    fn gemm_speed() {
        let threads: usize = std::env::var("GEMM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let mut cx = CpuCtx::new(threads).expect("pool");
        if std::env::var("GEMM_ISA").as_deref() == Ok("avx2") {
            cx.features = Features::avx2_only();
        }
        println!("gemm_speed: kernel {:?}", Kernel::select(cx.features));
        let shapes = shapes_from_env(&[(1024, 1024, 1024), (128, 384, 384), (256, 256, 256)]);
        for &(m, n, k) in &shapes {
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let mut c = vec![0.0f32; m * n];
            // GEMM_EP=relu: a convolution's bias by row and Relu; gelu: a
            // MatMul's bias by column and Gelu (not fused into the store).
            let (bias_row, bias_col) = (rand_vec(m, 3), rand_vec(n, 4));
            let (relu, gelu) = (Activation::Relu, Activation::Gelu { tanh_approx: false });
            let ep = match std::env::var("GEMM_EP").as_deref() {
                Ok("relu") => Epilogue {
                    bias_row: Some(&bias_row),
                    act: Some(&relu),
                    ..Default::default()
                },
                Ok("gelu") => Epilogue {
                    bias_col: Some(&bias_col),
                    act: Some(&gelu),
                    ..Default::default()
                },
                _ => Epilogue::default(),
            };
            let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
            let reps = (6e10 / (2.0 * (m * n * k) as f64)).clamp(3.0, 200.0) as usize;
            // GEMM_PACK=a or b: that operand prepacked (a convolution's or a
            // MatMul's constant weight), as the runtime runs them.
            let pack = std::env::var("GEMM_PACK").unwrap_or_default();
            let pa = pack_a(m, k, &a, k, false, cx.features);
            let pb = pack_b(k, n, &b, n, false, cx.features);
            let raw_a = ASrc::Raw {
                a: &a,
                lda: k,
                trans: false,
            };
            let raw_b = BSrc::Raw {
                b: &b,
                ldb: n,
                trans: false,
            };
            let (asrc, bsrc) = match pack.as_str() {
                "a" => (ASrc::Packed(&pa), raw_b),
                "b" => (raw_a, BSrc::Packed(&pb)),
                _ => (raw_a, raw_b),
            };
            for _ in 0..reps {
                let cpu0 = thread_cpu_s();
                let t = std::time::Instant::now();
                gemm(m, n, k, 1.0, asrc, bsrc, &mut c, n, &ep, &cx);
                best = best.min(t.elapsed().as_secs_f64());
                best_cpu = best_cpu.min(thread_cpu_s() - cpu0);
            }
            let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
            println!(
                "{m}x{n}x{k} threads {threads} pack {pack:?}: {:.1} GFLOP/s wall, {:.1} on-CPU (best of {reps})",
                gf(best),
                gf(best_cpu)
            );
        }
    }

    /// This thread's CPU time (Linux `CLOCK_THREAD_CPUTIME_ID`), which
    /// leaves out the time other processes on a shared machine preempt it.
    #[cfg(target_os = "linux")]
    fn thread_cpu_s() -> f64 {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clk: i32, tp: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: clock_gettime writes one timespec (two longs on 64-bit
        // Linux) to the pointer it is given.
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return f64::NAN;
        }
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    }

    #[cfg(not(target_os = "linux"))]
    fn thread_cpu_s() -> f64 {
        f64::NAN
    }
}

//! Exact int8 GEMM: `C[m×n] = epilogue(A_u8[m×k] · B_i8[k×n])`, with u8
//! asymmetric activations (zero point `za`) and i8 symmetric weights.
//!
//! The accumulator is `acc[i,n] = Σ_k (a[i,k] − za) · b[k,n]`, exact in i32
//! (`k ≤` [`MAX_K`] keeps every partial sum in range). B is a constant
//! weight packed once ([`QPackedB`]), which also records each column's
//! weight sum so that the zero point folds out of the inner loop:
//! `acc = Σ a·b − za·Σ_k b` (computed with wrapping i32 arithmetic, exact
//! because the true result fits in i32). The structure follows the f32
//! GEMM ([`super::gemm`]): C is cut into column blocks of `NC`, row blocks
//! of `MC` whose A rows are packed into micro-panels, and depth blocks of
//! `KC`; a micro-kernel multiplies one A micro-panel by one B micro-panel
//! into an `MR × NR` tile of i32 accumulators (kept in a small per-thread
//! i32 block between depth blocks). On the last depth block the tile goes
//! through the epilogue: raw i32, dequantized f32
//! (`(acc as f32) · (sa · sb[n])`, `+ bias[n]`, `+ residual`, activation,
//! each step rounded on its own), or requantized u8.
//!
//! The micro-kernel is chosen when the constant operand is packed, the
//! fastest the CPU has:
//!
//! * **AMX-INT8** (`qgemm/amx.rs`): `16 × 16` i32 tiles two by two, 64
//!   depths per `tdpbusd`/`tdpbsud`, when the CPU has AMX and Linux grants
//!   the tile state.
//! * **AVX512-VNNI / AVX-VNNI `vpdpbusd`** (`12 × 16` on 512-bit registers,
//!   `6 × 16` on 256-bit ones): four u8 × s8 products into an i32 per lane,
//!   exact for any i8 weights.
//! * **AVX2 `vpmaddubsw`** (`6 × 16`, 2 depths per instruction) when every
//!   weight is in `[−64, 63]`. `vpmaddubsw` adds two u8 × s8 products into
//!   an i16 with saturation; with `|b| ≤ 64` a pair is at most
//!   `255 · 64 · 2 = 32640 ≤ 32767` in magnitude, so it never saturates.
//!   Each i16 lane is one column; the pair sums are widened into i32 without
//!   a second multiply (a bit flip, a shift and two adds: see
//!   `kernel_maddubs`).
//! * **AVX2 `vpmaddwd`** (`6 × 16`, 2 depths per instruction) for any i8
//!   weights: A is zero-extended to i16 and B sign-extended to i16 at
//!   packing, and `vpmaddwd` adds two i16 × i16 products into an i32.
//!   Its only overflow is `(−32768)² · 2`; here each product is at most
//!   `255 · 128` in magnitude, so the pair is exact.
//! * **NEON** `SDOT` / `SMLAL` on aarch64 (`qgemm/neon.rs`).
//! * **portable** (`4 × 16`): plain i32 multiply-adds the compiler
//!   vectorizes for the target.
//!
//! All give the same i32 accumulators bit for bit, and the epilogue
//! performs the same operations in the same order on every path (scalar,
//! or AVX-512 registers), so results depend neither
//! on the kernel nor on the thread count (each element of C is computed by
//! exactly one task, with the same operations as single-threaded).
//!
//! Speed on AVX2 without VNNI: Zen 2 issues every vector integer multiply
//! (`vpmaddwd`, `vpmaddubsw`) on one pipe, one a cycle, and its two f32 FMA
//! pipes do 16 multiply-adds a cycle. `vpmaddwd` also does 16, so the
//! 8-bit kernel runs at about the f32 kernel's rate. The 7-bit kernel's one
//! `vpmaddubsw` does 32, and its widening runs on the other pipes (the
//! shift on the shuffle pipe, flip and adds on any): measured in L1 it does
//! ~16–19 multiply-adds a cycle against the 8-bit kernel's ~13.6, limited
//! by the five vector instructions per 32 multiply-adds; in a product, where
//! the f32 GEMM loses more to memory, it runs ~1.2–1.4× the f32 GEMM.
//!
//! [`quantize_u8`] is the quantization that feeds A (its dynamic
//! parameters are `reference::quant::dynamic_params`, one definition for
//! both paths).

use std::cell::RefCell;
use std::ops::Range;

use super::gemm::with_buf;
use super::{CpuCtx, Features};
use crate::ir::Activation;

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod wide;

/// Largest depth for which no i32 accumulator can overflow: every product
/// is at most `255 · 128 = 32640` in magnitude, and `65793 · 32640 =
/// 2_147_483_520 < 2^31`.
pub const MAX_K: usize = 65793;

/// Rows of a packed A block (a multiple of every kernel's MR).
const MC: usize = 72;
/// Columns of a C block (a multiple of NR): the block's i32 accumulators
/// (`MC × NC`, 72 KiB) and B's `KC`-deep slice of it stay in L2.
const NC: usize = 256;
/// Depth of a block, in bytes of a packed B row (`KC_BYTES / elem` depths):
/// a B micro-panel (`16 × KC_BYTES`, 8 KiB) stays in L1.
const KC_BYTES: usize = 512;
/// Columns of every micro-kernel's tile and of a packed B panel.
pub(crate) const NR: usize = 16;
/// The tallest tile (MR) of any kernel.
#[cfg(target_arch = "x86_64")]
const MR_MAX: usize = 16;
/// Bytes of X's panels a weights-left product on filled panels
/// ([`qgemm_wx_filled`]) writes and then reads at a time.
const FILL_BLOCK_BYTES: usize = 256 << 10;
/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// The micro-kernel a [`QPackedB`] was packed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKernel {
    /// Plain Rust, `4 × 16` tiles, one depth at a time.
    Portable,
    /// AVX2 `vpmaddwd` on i16-widened operands, `6 × 16`: exact for any i8
    /// weights.
    Avx2Madd16,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`, `6 × 16`: only for weights in
    /// `[−64, 63]` (7-bit), where it cannot saturate.
    Avx2Maddubs,
    /// AVX512-VNNI `vpdpbusd` on 512-bit registers, `6 × 16`, 4 depths per
    /// instruction: exact for any i8 weights (no i16 intermediate).
    Vnni512,
    /// AVX-VNNI `vpdpbusd` on 256-bit registers, `6 × 16` (two registers a
    /// row), 4 depths per instruction: exact for any i8 weights.
    Vnni256,
    /// AMX-INT8 tiles (`tdpbusd`/`tdpbsud`), `16 × 16` tiles two by two, 64
    /// depths per instruction, the VNNI arithmetic (`qgemm/amx.rs`).
    Amx,
    /// aarch64 NEON `SMLAL` on i16-widened operands, `4 × 16`, the portable
    /// kernel's packing: exact for any i8 weights (`qgemm/neon.rs`).
    NeonMlal,
    /// aarch64 `SDOT` (dotprod), `6 × 16`, 4 depths per instruction, the
    /// VNNI packing with activations shifted to i8: exact for any i8
    /// weights (`qgemm/neon.rs`).
    NeonSdot,
}

impl QKernel {
    /// The kernel for weights whose values all lie in `[lo, hi]`.
    fn select(f: Features, lo: i8, hi: i8) -> QKernel {
        #[cfg(target_arch = "x86_64")]
        if f.amx_int8 {
            return QKernel::Amx;
        }
        #[cfg(target_arch = "x86_64")]
        if f.avx512vnni {
            return QKernel::Vnni512;
        }
        #[cfg(target_arch = "x86_64")]
        if f.avxvnni {
            return QKernel::Vnni256;
        }
        #[cfg(target_arch = "x86_64")]
        if f.avx2_fma {
            return if lo >= -64 && hi <= 63 {
                QKernel::Avx2Maddubs
            } else {
                QKernel::Avx2Madd16
            };
        }
        #[cfg(target_arch = "aarch64")]
        if f.dotprod {
            return QKernel::NeonSdot;
        }
        #[cfg(target_arch = "aarch64")]
        if f.neon {
            return QKernel::NeonMlal;
        }
        let _ = (f, lo, hi);
        QKernel::Portable
    }

    /// What the packing subtracts from each u8 activation (the `SDOT`
    /// kernel's shift to i8); the zero point correction subtracts it too.
    fn act_offset(self) -> i32 {
        match self {
            #[cfg(target_arch = "aarch64")]
            QKernel::NeonSdot => neon::SDOT_ACT_OFFSET,
            _ => 0,
        }
    }

    /// Rows of the register tile.
    pub(crate) fn mr(self) -> usize {
        match self {
            QKernel::Portable | QKernel::NeonMlal => 4,
            QKernel::Avx2Madd16 | QKernel::Avx2Maddubs | QKernel::Vnni256 | QKernel::NeonSdot => 6,
            // 12 accumulators (of 32 registers) hide vpdpbusd's latency.
            QKernel::Vnni512 => 12,
            QKernel::Amx => 16,
        }
    }

    /// Depths per group: a packed row of a panel holds `group` consecutive
    /// depths of each lane side by side.
    fn group(self) -> usize {
        match self {
            QKernel::Portable | QKernel::NeonMlal => 1,
            QKernel::Avx2Madd16 | QKernel::Avx2Maddubs => 2,
            QKernel::Vnni512 | QKernel::Vnni256 | QKernel::NeonSdot | QKernel::Amx => 4,
        }
    }

    /// Depths a packed panel is padded to: whole groups, or for AMX whole
    /// tile rows.
    fn depth_pad(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            QKernel::Amx => amx::CHUNK,
            _ => self.group(),
        }
    }

    /// Bytes per packed element (2 when widened to i16).
    fn elem(self) -> usize {
        match self {
            QKernel::Avx2Madd16 => 2,
            QKernel::Portable
            | QKernel::Avx2Maddubs
            | QKernel::Vnni512
            | QKernel::Vnni256
            | QKernel::Amx
            | QKernel::NeonMlal
            | QKernel::NeonSdot => 1,
        }
    }

    /// Bytes of one row's group in a packed A panel: the group's elements,
    /// twice over for the `vpmaddubsw` kernel's u8 activations (their pair
    /// is broadcast as a 4-byte word, a plain load, where a 2-byte
    /// broadcast also takes a shuffle). Its i8 weights on the left (`wx`)
    /// are stored once: they are streamed from memory, activations are not.
    fn a_group_bytes(self, wx: bool) -> usize {
        let copies = if self == QKernel::Avx2Maddubs && !wx {
            2
        } else {
            1
        };
        self.group() * self.elem() * copies
    }

    /// Depths per block (a multiple of the group).
    fn kc(self) -> usize {
        KC_BYTES / self.elem()
    }

    /// Whether `f` can run this kernel.
    pub(crate) fn runs_on(self, f: Features) -> bool {
        match self {
            QKernel::Portable => true,
            QKernel::Avx2Madd16 | QKernel::Avx2Maddubs => f.avx2_fma,
            QKernel::Vnni512 => f.avx512vnni,
            QKernel::Vnni256 => f.avxvnni && f.avx2_fma,
            QKernel::Amx => f.amx_int8,
            QKernel::NeonMlal => f.neon,
            QKernel::NeonSdot => f.neon && f.dotprod,
        }
    }
}

/// A constant i8 weight `B[k×n]` packed once for the int8 micro-kernels:
/// panels of 16 columns over all of k (depths in groups of the kernel's
/// width, zero-padded), plus the sum of each column (to fold A's zero
/// point out of the product).
#[derive(Clone, Debug)]
pub struct QPackedB {
    k: usize,
    n: usize,
    kern: QKernel,
    /// Bytes of one panel: `k.div_ceil(group) * group * NR * elem`.
    panel_bytes: usize,
    buf: Vec<u8>,
    /// Offset of the 64-byte aligned start in `buf`.
    off: usize,
    /// `Σ_k b[k, j]` for each column, zero past n up to a whole panel.
    col_sums: Vec<i32>,
}

impl QPackedB {
    /// Packs `B[k×n]`, stored row-major with leading dimension `ldb`, or
    /// stored `n × k` (B transposed, e.g. a convolution's `[M, C·kh·kw]`
    /// weights) when `trans`. The kernel is chosen from `features` and the
    /// weights' range (7-bit weights get the `vpmaddubsw` kernel). None when
    /// `k > MAX_K` (the i32 accumulators could overflow: keep f32).
    ///
    /// # Panics
    /// When `b` is too short for `k`, `n` and `ldb`.
    pub fn new(
        k: usize,
        n: usize,
        b: &[i8],
        ldb: usize,
        trans: bool,
        features: Features,
    ) -> Option<QPackedB> {
        if k > MAX_K {
            return None;
        }
        let (sr, sc) = if trans { (n, k) } else { (k, n) };
        if sr > 0 && sc > 0 {
            assert!(
                ldb >= sc && b.len() >= (sr - 1) * ldb + sc,
                "QPackedB: B ({sr}x{sc} stored, ld {ldb}) does not fit in {} elements",
                b.len()
            );
        }
        let at = |p: usize, j: usize| {
            if trans {
                b[j * ldb + p]
            } else {
                b[p * ldb + j]
            }
        };
        let (mut lo, mut hi) = (0i8, 0i8);
        let mut col_sums = vec![0i32; n.div_ceil(NR) * NR];
        for p in 0..k {
            for (j, s) in col_sums.iter_mut().enumerate().take(n) {
                let v = at(p, j);
                lo = lo.min(v);
                hi = hi.max(v);
                *s += v as i32;
            }
        }
        let kern = QKernel::select(features, lo, hi);
        let (g, e, pad) = (kern.group(), kern.elem(), kern.depth_pad());
        let panel_bytes = k.div_ceil(pad) * pad * NR * e;
        let len = n.div_ceil(NR) * panel_bytes;
        let mut buf = Vec::new();
        let off = aligned(&mut buf, len);
        let dst = &mut buf[off..off + len];
        for (q, panel) in dst.chunks_exact_mut(panel_bytes.max(1)).enumerate() {
            let j0 = q * NR;
            for c in 0..NR.min(n - j0) {
                for p in 0..k {
                    let v = at(p, j0 + c);
                    let o = ((p / g) * NR + c) * g * e + (p % g) * e;
                    if e == 2 {
                        panel[o..o + 2].copy_from_slice(&(v as i16).to_le_bytes());
                    } else {
                        panel[o] = v as u8;
                    }
                }
            }
        }
        Some(QPackedB {
            k,
            n,
            kern,
            panel_bytes,
            buf,
            off,
            col_sums,
        })
    }

    /// Rows of B (the depth).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns of B.
    pub fn n(&self) -> usize {
        self.n
    }
    /// The micro-kernel the pack is laid out for.
    pub fn kernel(&self) -> QKernel {
        self.kern
    }
    /// `Σ_k b[k, j]` for each column j (length n).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums[..self.n]
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.off..]
    }
}

/// Grows `v` to hold `len` bytes from a 64-byte aligned start; returns the
/// start's offset.
pub(crate) fn aligned<T: Default + Clone>(v: &mut Vec<T>, len: usize) -> usize {
    let sz = std::mem::size_of::<T>();
    let extra = 64 / sz;
    if v.len() < len + extra {
        v.clear();
        v.resize(len + extra, T::default());
    }
    let addr = v.as_ptr() as usize;
    (64 - addr % 64) % 64 / sz
}

/// The u8 A operand of a product: `m × k`, row-major with leading dimension
/// `ld`, or stored `k × m` when `trans` (a convolution's im2col columns);
/// its quantization zero point is `zero_point`.
#[derive(Clone, Copy, Debug)]
pub struct QMatA<'a> {
    pub data: &'a [u8],
    pub ld: usize,
    pub trans: bool,
    pub zero_point: u8,
}

/// The dequantizing epilogue: `y = (acc as f32) · (a_scale · b_scales[j])`,
/// then `+ bias[j]`, then `+ residual` (laid out like C), then the
/// activation, each step rounded separately.
#[derive(Clone, Copy, Debug)]
pub struct QEpilogue<'a> {
    /// A's scale.
    pub a_scale: f32,
    /// B's scales: one per column (length n), or one for all (length 1).
    pub b_scales: &'a [f32],
    /// Added to every row (length n).
    pub bias: Option<&'a [f32]>,
    /// Added elementwise, laid out like C (same ldc).
    pub residual: Option<&'a [f32]>,
    pub act: Option<&'a Activation>,
}

impl QEpilogue<'_> {
    /// Checks the epilogue against an output of `channels` channels and
    /// `len` elements: `channels` scales (or one), at least `channels` bias
    /// values, a residual as long as the output. `who` names the caller.
    ///
    /// # Panics
    /// When a slice is too short or the scales have another length.
    pub(crate) fn check(&self, channels: usize, len: usize, who: &str) {
        assert!(
            self.b_scales.len() == 1 || self.b_scales.len() == channels,
            "{who}: {} weight scales for {channels} channels",
            self.b_scales.len()
        );
        assert!(
            self.bias.is_none_or(|b| b.len() >= channels),
            "{who}: bias shorter than {channels}"
        );
        assert!(
            self.residual.is_none_or(|r| r.len() >= len),
            "{who}: residual shorter than the output"
        );
    }
}

/// Requantization of the dequantized result to u8:
/// `clamp(round_ties_even(y / scale) + zero_point, 0, 255)` (NaN → 0).
#[derive(Clone, Copy, Debug)]
pub struct QRequant {
    pub scale: f32,
    pub zero_point: u8,
}

/// Where a product goes, and in what form.
#[derive(Debug)]
pub enum QOut<'a> {
    /// The exact accumulators `Σ_k (a − za) · b`.
    I32(&'a mut [i32]),
    /// Dequantized through the epilogue.
    F32(&'a mut [f32], QEpilogue<'a>),
    /// Dequantized through the epilogue, then requantized.
    U8(&'a mut [u8], QEpilogue<'a>, QRequant),
}

/// `C[m×n] = A · B` for u8 A and a packed i8 B, through `out`'s epilogue;
/// C (row-major, leading dimension `ldc`) is overwritten, columns past n
/// are not touched.
///
/// # Panics
/// When a slice is too short for its dimensions, `b_scales` has neither 1
/// nor n elements, or B was packed for a kernel `cx.features` cannot run
/// (caller bugs: the kernel writes through raw pointers and checks first).
pub fn qgemm(m: usize, a: QMatA, b: &QPackedB, out: QOut, ldc: usize, cx: &CpuCtx) {
    let n = b.n;
    if m > 0 && n > 0 {
        assert!(ldc >= n, "qgemm: ldc {ldc} < n = {n}");
    }
    qgemm_strided(m, a, b, out, (ldc, 1), cx);
}

/// [`qgemm`] with C element (i, j) at `i * strides.0 + j * strides.1` (the
/// residual likewise): a convolution stores `Cᵀ`, channels by pixels.
pub(crate) fn qgemm_strided(
    m: usize,
    a: QMatA,
    b: &QPackedB,
    out: QOut,
    strides: (usize, usize),
    cx: &CpuCtx,
) {
    let (n, k) = (b.n, b.k);
    assert!(
        b.kern.runs_on(cx.features),
        "qgemm: B packed for {:?}, which {:?} cannot run",
        b.kern,
        cx.features
    );
    if m == 0 || n == 0 {
        return;
    }
    let (sa, sl) = if a.trans { (k, m) } else { (m, k) };
    if sa > 0 && sl > 0 {
        assert!(
            a.ld >= sl && a.data.len() >= (sa - 1) * a.ld + sl,
            "qgemm: A ({sa}x{sl} stored, ld {}) does not fit in {} elements",
            a.ld,
            a.data.len()
        );
    }
    let span = (m - 1) * strides.0 + (n - 1) * strides.1 + 1;
    let (dst, ep) = checked_out(out, span, n);
    let g = QGemm {
        a,
        b,
        m,
        fin: Finish::new(
            a.zero_point as i32 - b.kern.act_offset(),
            &b.col_sums,
            false,
            dst,
            strides,
            ep,
        ),
    };
    // Each task reads all of the operand along the side it does not
    // split: split the side of the larger operand (A: m × k, B: n × k).
    let split = Split {
        mr: b.kern.mr(),
        macs: m * n * k,
        rows_first: m >= n,
    };
    split.run(m, n, cx, |rows, cols| g.region(rows, cols));
}

/// How a product's C is cut into tasks: whole `mr × NR` tiles, so every
/// element's arithmetic is that of one thread.
struct Split {
    mr: usize,
    macs: usize,
    /// Split rows when there are enough row tiles (else columns); columns
    /// first otherwise. Each task reads only its part of the split side's
    /// operand, and all of the other.
    rows_first: bool,
}

impl Split {
    /// Runs `region(rows, cols)` over C's `m × n`: whole on one thread for
    /// a small product, else in one rectangle per thread.
    fn run(
        &self,
        m: usize,
        n: usize,
        cx: &CpuCtx,
        region: impl Fn(Range<usize>, Range<usize>) + Sync,
    ) {
        let (tiles_m, tiles_n) = (m.div_ceil(self.mr), n.div_ceil(NR));
        let threads = if self.macs >= PARALLEL_MIN_MACS {
            cx.threads
        } else {
            1
        };
        if threads <= 1 || tiles_m * tiles_n < 2 {
            region(0..m, 0..n);
            return;
        }
        let (first, other) = if self.rows_first {
            (tiles_m, tiles_n)
        } else {
            (tiles_n, tiles_m)
        };
        let split_first = first >= 2 * threads || first >= other;
        let (tm, tn) = match (split_first, self.rows_first) {
            (true, true) | (false, false) => (threads.min(tiles_m), 1),
            _ => (1, threads.min(tiles_n)),
        };
        let rows = tiles_m.div_ceil(tm) * self.mr;
        let cols = tiles_n.div_ceil(tn) * NR;
        let (tm, tn) = (m.div_ceil(rows), n.div_ceil(cols));
        cx.for_each(tm * tn, |t| {
            let (i0, j0) = ((t / tn) * rows, (t % tn) * cols);
            region(i0..(i0 + rows).min(m), j0..(j0 + cols).min(n));
        });
    }
}

/// C's pointer and epilogue from `out`, checked to cover `span` elements,
/// with `channels` scales (or one) and bias values, and a residual as long
/// as C.
///
/// # Panics
/// When a slice is too short or the scales have another length.
pub(crate) fn checked_out(
    out: QOut<'_>,
    span: usize,
    channels: usize,
) -> (Dst, Option<QEpilogue<'_>>) {
    let (dst, len, ep) = match out {
        QOut::I32(c) => (Dst::I32(c.as_mut_ptr()), c.len(), None),
        QOut::F32(c, ep) => (Dst::F32(c.as_mut_ptr()), c.len(), Some(ep)),
        QOut::U8(c, ep, rq) => (Dst::U8(c.as_mut_ptr(), rq), c.len(), Some(ep)),
    };
    assert!(len >= span, "qgemm: C shorter than {span}");
    if let Some(ep) = &ep {
        ep.check(channels, span, "qgemm");
    }
    (dst, ep)
}

/// C's base pointer and element type.
#[derive(Clone, Copy)]
pub(crate) enum Dst {
    I32(*mut i32),
    F32(*mut f32),
    U8(*mut u8, QRequant),
}
// SAFETY: the tasks of one product write disjoint rectangles of C, and the
// pointer outlives them (the `&mut` it came from is held by
// `qgemm_strided` until `install` returns).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// One product, ready to compute any rectangle of C.
struct QGemm<'a> {
    a: QMatA<'a>,
    b: &'a QPackedB,
    m: usize,
    fin: Finish<'a>,
}

/// What turns a tile of raw products into C: the zero point correction
/// `za · sums`, and the output with its epilogue. The constant operand's
/// sums, scales and bias run along C's columns (u8 activations on the
/// left, [`qgemm`]) or its rows (i8 weights on the left, [`qgemm_wx`]).
pub(crate) struct Finish<'a> {
    pub(crate) za: i32,
    /// The constant operand's sums over the depth, padded to whole panels
    /// (at least to the rows or columns of every tile finished).
    pub(crate) sums: &'a [i32],
    pub(crate) by_row: bool,
    pub(crate) dst: Dst,
    pub(crate) strides: (usize, usize),
    pub(crate) ep: Option<QEpilogue<'a>>,
    /// A u8 output's requantization with the activation's clamp, when
    /// they fold ([`RequantConsts::new`]).
    #[cfg(target_arch = "x86_64")]
    requant: Option<RequantConsts>,
    /// Weights on the left, with an epilogue: per row of C, the zero point
    /// correction `za · sums[r]`, the scale and the bias, worked out once
    /// per product (per tile they were a fifth of MobileNetV2's shallow
    /// 1x1 epilogues, six rows by 64 columns a tile).
    #[cfg(target_arch = "x86_64")]
    rows: RowConsts,
}

/// [`Finish::rows`]: empty unless the rows carry the epilogue's constants.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct RowConsts {
    z: Vec<i32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
impl RowConsts {
    fn new(za: i32, sums: &[i32], by_row: bool, ep: Option<&QEpilogue>) -> RowConsts {
        let Some(ep) = ep.filter(|_| by_row) else {
            return RowConsts::default();
        };
        let scale_of = |r: usize| match ep.b_scales {
            [sb] => *sb,
            sbs => sbs.get(r).copied().unwrap_or(0.0),
        };
        RowConsts {
            z: sums.iter().map(|&s| za.wrapping_mul(s)).collect(),
            scale: (0..sums.len()).map(|r| ep.a_scale * scale_of(r)).collect(),
            bias: match ep.bias {
                Some(b) => (0..sums.len())
                    .map(|r| b.get(r).copied().unwrap_or(0.0))
                    .collect(),
                None => vec![0.0; sums.len()],
            },
        }
    }
}

impl<'a> Finish<'a> {
    pub(crate) fn new(
        za: i32,
        sums: &'a [i32],
        by_row: bool,
        dst: Dst,
        strides: (usize, usize),
        ep: Option<QEpilogue<'a>>,
    ) -> Finish<'a> {
        #[cfg(target_arch = "x86_64")]
        let requant = match (dst, &ep) {
            (Dst::U8(_, rq), Some(ep)) => match super::gemm::split_act(ep.act) {
                (clamp, None) => RequantConsts::new(rq, clamp),
                _ => None,
            },
            _ => None,
        };
        Finish {
            za,
            sums,
            by_row,
            dst,
            strides,
            #[cfg(target_arch = "x86_64")]
            rows: RowConsts::new(za, sums, by_row, ep.as_ref()),
            ep,
            #[cfg(target_arch = "x86_64")]
            requant,
        }
    }
}

thread_local! {
    static BUF_A: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static BUF_ACC: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

impl QGemm<'_> {
    /// Computes rows `i0..i1`, columns `j0..j1` of C (`j0` a multiple of NR).
    fn region(&self, rows: Range<usize>, cols: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        if self.b.kern == QKernel::Amx {
            return with_buf(&BUF_A, |abuf| self.region_amx(abuf, rows, cols));
        }
        #[cfg(target_arch = "x86_64")]
        if self.b.kern == QKernel::Vnni512 && self.b.k > 0 {
            return with_buf(&BUF_A, |abuf| self.region_wide(abuf, rows, cols));
        }
        with_buf(&BUF_A, |abuf| {
            with_buf(&BUF_ACC, |acc| {
                self.region_in(abuf, acc, rows.start, rows.end, cols.start, cols.end)
            })
        })
    }

    fn region_in(
        &self,
        abuf: &mut Vec<u8>,
        accbuf: &mut Vec<i32>,
        i0: usize,
        i1: usize,
        j0: usize,
        j1: usize,
    ) {
        let kern = self.b.kern;
        let (mr, g, e, kc_max) = (kern.mr(), kern.group(), kern.elem(), kern.kc());
        let ag = kern.a_group_bytes(false);
        let k = self.b.k;
        // A's rows are packed once per row block for all depths (block
        // after depth block) and reused by every column block.
        let block_bytes = MC * (kc_max / g) * ag;
        let a_off = aligned(abuf, k.div_ceil(kc_max).max(1) * block_bytes);
        let acc_off = aligned(accbuf, MC * NC);
        let bdata = self.b.data();
        for ic in (i0..i1).step_by(MC) {
            let mc = MC.min(i1 - ic);
            let tiles = mc.div_ceil(mr);
            for (x, pc) in (0..k).step_by(kc_max).enumerate() {
                let kc = kc_max.min(k - pc);
                let a_panel = mr * kc.div_ceil(g) * ag;
                let ablock = &mut abuf[a_off + x * block_bytes..][..tiles * a_panel];
                pack_a(ablock, kern, false, &self.a, self.m, ic, mc, pc, kc);
            }
            for jc in (j0..j1).step_by(NC) {
                let nc = NC.min(j1 - jc);
                let panels = nc.div_ceil(NR);
                let acc = &mut accbuf[acc_off..acc_off + MC * NC];
                if k == 0 {
                    acc.fill(0);
                }
                for (x, pc) in (0..k).step_by(kc_max).enumerate() {
                    let kc = kc_max.min(k - pc);
                    let groups = kc.div_ceil(g);
                    let a_panel = mr * groups * ag;
                    let ablock = &abuf[a_off + x * block_bytes..][..tiles * a_panel];
                    for q in 0..panels {
                        let boff = ((jc / NR) + q) * self.b.panel_bytes + (pc / g) * NR * g * e;
                        let bp = &bdata[boff..boff + groups * NR * g * e];
                        for t in 0..tiles {
                            let ap = &ablock[t * a_panel..(t + 1) * a_panel];
                            let tile = &mut acc[(q * (MC / mr) + t) * mr * NR..][..mr * NR];
                            run_kernel(kern, false, groups, ap, bp, tile, pc > 0);
                        }
                    }
                }
                for q in 0..panels {
                    for t in 0..tiles {
                        let tile = &acc[(q * (MC / mr) + t) * mr * NR..][..mr * NR];
                        let (i, j) = (ic + t * mr, jc + q * NR);
                        let rows = mr.min(i1 - i);
                        let cols = NR.min(j1 - j);
                        self.fin.tile(kern, tile, i, rows, j, cols);
                    }
                }
            }
        }
    }
}

impl Finish<'_> {
    /// The epilogue of the AVX512-VNNI kernels' wide tiles
    /// (`qgemm/wide.rs`): `tile` holds `cols.div_ceil(16)` panels of
    /// `tile_rows × 16` accumulators, of which `rows × cols` at row i,
    /// column j of C are kept. Per-row constants are computed once for
    /// all the panels.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn wide_tile(
        &self,
        tile: &[i32],
        tile_rows: usize,
        i: usize,
        rows: usize,
        j: usize,
        cols: usize,
    ) {
        // SAFETY: wide tiles come from AVX512-VNNI packs, made only for
        // CPUs with AVX-512F.
        if unsafe { finish_rows_avx512(self, tile, tile_rows, i, rows, j, cols) } {
            return;
        }
        for (q, panel) in tile
            .chunks_exact(tile_rows * NR)
            .take(cols.div_ceil(NR))
            .enumerate()
        {
            let c = NR.min(cols - q * NR);
            // SAFETY: as above (AVX-512 implies AVX2 and FMA); a tile has at
            // most MR_MAX rows.
            unsafe { finish_tile_avx2::<MR_MAX>(self, panel, i, rows, j + q * NR, c) };
        }
    }

    /// The epilogue of one tile of accumulators (`rows × cols` of an
    /// `mr × NR` tile at row `i`, column `j` of C).
    pub(crate) fn tile(
        &self,
        kern: QKernel,
        tile: &[i32],
        i: usize,
        rows: usize,
        j: usize,
        cols: usize,
    ) {
        // The tile's height as a constant: the epilogue's row arrays are no
        // taller than the kernel's tile.
        #[cfg(target_arch = "x86_64")]
        if kern == QKernel::Vnni512 || kern == QKernel::Amx {
            // SAFETY: AVX512-VNNI and AMX packs run only on CPUs with
            // AVX-512F.
            if unsafe { finish_rows_avx512(self, tile, tile.len() / NR, i, rows, j, cols) } {
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if kern != QKernel::Portable {
            // SAFETY: AVX2 (and VNNI) kernels are only packed for CPUs that
            // have AVX2 (`runs_on` is checked before any product runs).
            unsafe {
                match kern.mr() {
                    6 => finish_tile_avx2::<6>(self, tile, i, rows, j, cols),
                    12 => finish_tile_avx2::<12>(self, tile, i, rows, j, cols),
                    _ => finish_tile_avx2::<MR_MAX>(self, tile, i, rows, j, cols),
                }
            }
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if kern.mr() == neon::MR_SDOT {
            finish_tile_impl::<{ neon::MR_SDOT }>(self, tile, i, rows, j, cols);
            return;
        }
        let _ = kern;
        finish_tile_impl::<4>(self, tile, i, rows, j, cols);
    }
}

/// Constant i8 weights `W[m×k]` (row-major) packed once as the left
/// operand of [`qgemm_wx`]: panels of the kernel's MR rows over all of k,
/// laid out as the micro-kernels read A, plus each row's sum (to fold the
/// activations' zero point out of the product). A convolution's weights
/// are this operand: the pixels are then C's columns, the vector lanes.
#[derive(Clone, Debug)]
pub struct QPackedA {
    m: usize,
    k: usize,
    kern: QKernel,
    /// Bytes of one panel: `k.div_ceil(group) * mr * a_group_bytes`.
    panel_bytes: usize,
    buf: Vec<u8>,
    /// Offset of the 64-byte aligned start in `buf`.
    off: usize,
    /// `Σ_k w[i, k]` for each row, zero past m up to a whole panel.
    row_sums: Vec<i32>,
}

impl QPackedA {
    /// Packs `W[m×k]` (row-major) for the kernel `features` and the
    /// weights' range select (as [`QPackedB::new`]). None when `k >`
    /// [`MAX_K`].
    ///
    /// # Panics
    /// When `w` is shorter than `m · k`.
    pub fn new(m: usize, k: usize, w: &[i8], features: Features) -> Option<QPackedA> {
        if k > MAX_K {
            return None;
        }
        let w = &w[..m * k];
        let (lo, hi) = w
            .iter()
            .fold((0i8, 0i8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let kern = QKernel::select(features, lo, hi);
        let mr = kern.mr();
        let pad = kern.depth_pad();
        let panel_bytes = k.div_ceil(pad) * pad / kern.group() * mr * kern.a_group_bytes(true);
        let len = m.div_ceil(mr) * panel_bytes;
        let mut buf = Vec::new();
        let off = aligned(&mut buf, len);
        #[cfg(target_arch = "x86_64")]
        if kern == QKernel::Amx && m > 0 && k > 0 {
            let bytes: Vec<u8> = w.iter().map(|&v| v as u8).collect();
            amx::pack_left(&mut buf[off..off + len], &bytes, k, k, 0..m);
        }
        if m > 0 && k > 0 && kern != QKernel::Amx {
            let bytes: Vec<u8> = w.iter().map(|&v| v as u8).collect();
            let a = QMatA {
                data: &bytes,
                ld: k,
                trans: false,
                zero_point: 0,
            };
            pack_a(&mut buf[off..off + len], kern, true, &a, m, 0, m, 0, k);
        }
        let mut row_sums = vec![0i32; m.div_ceil(mr) * mr];
        for (s, row) in row_sums.iter_mut().zip(w.chunks_exact(k.max(1))) {
            *s = row.iter().map(|&v| v as i32).sum();
        }
        Some(QPackedA {
            m,
            k,
            kern,
            panel_bytes,
            buf,
            off,
            row_sums,
        })
    }

    /// Rows of W (C's rows).
    pub fn m(&self) -> usize {
        self.m
    }
    /// Columns of W (the depth).
    pub fn k(&self) -> usize {
        self.k
    }
    /// The micro-kernel the pack is laid out for.
    pub fn kernel(&self) -> QKernel {
        self.kern
    }
}

/// The u8 right operand of [`qgemm_wx`]: `X[k×n]` row-major with leading
/// dimension `ld` (a convolution's im2col rows, or its input planes), and
/// its quantization zero point.
#[derive(Clone, Copy, Debug)]
pub struct QMatX<'a> {
    pub data: &'a [u8],
    pub ld: usize,
    pub zero_point: u8,
}

/// `C[m×n] = W · (X − za)` through `out`'s epilogue, the constant i8
/// weights on the left: the same exact accumulators and epilogue steps as
/// [`qgemm`], but the scales and bias index C's **rows** (W's rows). C
/// (row-major, leading dimension `ldc`, residual likewise) is overwritten,
/// columns past n are not touched.
///
/// # Panics
/// When a slice is too short for its dimensions, the scales are neither 1
/// nor m long, or W was packed for a kernel `cx.features` cannot run.
pub fn qgemm_wx(w: &QPackedA, x: QMatX, n: usize, out: QOut, ldc: usize, cx: &CpuCtx) {
    if w.k > 0 && w.m > 0 && n > 0 {
        assert!(
            x.ld >= n && x.data.len() >= (w.k - 1) * x.ld + n,
            "qgemm_wx: X ({}x{n}, ld {}) does not fit in {} elements",
            w.k,
            x.ld,
            x.data.len()
        );
    }
    wx_product(w, XSource::Rows(x), x.zero_point, n, out, ldc, cx);
}

/// Writes X's columns `cols` (`cols.start` a multiple of 16), all of its
/// depth, into `dst` as the AVX512-VNNI kernel reads them: panels of 16
/// columns, each all of the depth in groups of four, a group 64 bytes
/// (four bytes a column): `dst[(j / 16) · panel + g · 64 + 4 · (j % 16) +
/// d] = X[4g + d, cols.start + j]` with `panel = ⌈k/4⌉ · 64`, for
/// `⌈cols.len() / 64⌉ · 4` panels (`dst` is that long; columns past the
/// end and depths past k may hold any value: their weights are 0 or their
/// results are not kept). A convolution's im2col writes them so
/// ([`super::qconv`]).
pub type FillPanels<'a> = &'a (dyn Fn(Range<usize>, &mut [u8]) + Sync);

/// Bytes [`FillPanels`] writes for `cols` columns of a `k`-deep X.
pub fn panels_len(k: usize, cols: usize) -> usize {
    k.div_ceil(4) * 64 * cols.div_ceil(64) * 4
}

/// Whether [`qgemm_wx_filled`] can run `w` (its kernel reads X in the
/// panels [`FillPanels`] writes: AVX512-VNNI).
pub fn reads_panels(w: &QPackedA) -> bool {
    w.kern == QKernel::Vnni512
}

/// [`qgemm_wx`] with X (`k × n`, zero point `za`) written by `fill` in the
/// kernel's panels, for each task's columns where the task runs: no
/// packing, and the X a thread computes with is the X it wrote (a
/// convolution's im2col stays in that core's cache).
///
/// # Panics
/// As [`qgemm_wx`], and when W's kernel does not read panels
/// ([`reads_panels`]).
pub fn qgemm_wx_filled(
    w: &QPackedA,
    fill: FillPanels,
    za: u8,
    n: usize,
    out: QOut,
    ldc: usize,
    cx: &CpuCtx,
) {
    assert!(
        reads_panels(w),
        "qgemm_wx_filled: W packed for {:?}",
        w.kern
    );
    // No depth: no X to write, every accumulator 0 (the rows path).
    let x = match w.k {
        0 => XSource::Rows(QMatX {
            data: &[],
            ld: n,
            zero_point: za,
        }),
        _ => XSource::Filled(fill),
    };
    wx_product(w, x, za, n, out, ldc, cx);
}

/// Where a weights-left product reads X.
#[derive(Clone, Copy)]
enum XSource<'a> {
    /// Rows in memory, packed per column block.
    Rows(QMatX<'a>),
    /// Panels written per task ([`qgemm_wx_filled`]).
    Filled(FillPanels<'a>),
}

/// The body of [`qgemm_wx`] and [`qgemm_wx_filled`] (X's size checked).
fn wx_product(w: &QPackedA, x: XSource, za: u8, n: usize, out: QOut, ldc: usize, cx: &CpuCtx) {
    let (m, k) = (w.m, w.k);
    assert!(
        w.kern.runs_on(cx.features),
        "qgemm_wx: W packed for {:?}, which {:?} cannot run",
        w.kern,
        cx.features
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "qgemm_wx: ldc {ldc} < n = {n}");
    let span = (m - 1) * ldc + n;
    let (dst, ep) = checked_out(out, span, m);
    let g = QGemmWx {
        w,
        x,
        fin: Finish::new(
            za as i32 - w.kern.act_offset(),
            &w.row_sums,
            true,
            dst,
            (ldc, 1),
            ep,
        ),
    };
    // Each task reads (and packs) all of the operand along the side it
    // does not split: split the side of the larger operand (W: m × k, X:
    // k × n). Splitting X's pixels would stream all of a deep layer's
    // weights through both cores (ResNet-18's 512-channel 7x7 layers ran
    // 2x slower on two threads than on one).
    let split = Split {
        mr: w.kern.mr(),
        macs: m * n * k,
        rows_first: m > n,
    };
    split.run(m, n, cx, |rows, cols| g.region(rows, cols));
}

/// One weights-left product, ready to compute any rectangle of C.
struct QGemmWx<'a> {
    w: &'a QPackedA,
    x: XSource<'a>,
    fin: Finish<'a>,
}

impl QGemmWx<'_> {
    /// Computes rows `i0..i1` (`i0` a multiple of MR), columns `j0..j1`
    /// (`j0` a multiple of NR) of C.
    fn region(&self, rows: Range<usize>, cols: Range<usize>) {
        let x = match self.x {
            XSource::Rows(x) => x,
            XSource::Filled(fill) => {
                // Column blocks whose panels stay in L2 from the fill to
                // the product (whole runs of 64 columns).
                let per_column = self.w.k.div_ceil(4) * 4;
                let block = (FILL_BLOCK_BYTES / per_column.max(1) / 64).max(1) * 64;
                return with_buf(&BUF_A, |xbuf| {
                    let len = panels_len(self.w.k, block.min(cols.len()));
                    let at = aligned(xbuf, len);
                    for j in cols.clone().step_by(block) {
                        let part = j..(j + block).min(cols.end);
                        let len = panels_len(self.w.k, part.len());
                        fill(part.clone(), &mut xbuf[at..at + len]);
                        self.region_filled(&xbuf[at..at + len], rows.clone(), part);
                    }
                });
            }
        };
        #[cfg(target_arch = "x86_64")]
        if self.w.kern == QKernel::Amx {
            return with_buf(&BUF_A, |xbuf| self.region_amx(x, xbuf, rows, cols));
        }
        with_buf(&BUF_A, |xbuf| {
            with_buf(&BUF_ACC, |acc| self.region_in(x, xbuf, acc, rows, cols))
        })
    }

    /// Rows `rows`, columns `cols` of C from X's panels for those columns.
    fn region_filled(&self, panels: &[u8], rows: Range<usize>, cols: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            let x = wide::ColumnQuads {
                data: panels,
                panel: self.w.k.div_ceil(4) * 64,
                group: 64,
            };
            self.region_wide(x, rows, cols.start, cols.len())
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "filled panels are read by the AVX512-VNNI kernel only ({} rows, {:?}, {} bytes)",
            rows.len(),
            cols,
            panels.len()
        )
    }

    fn region_in(
        &self,
        x: QMatX,
        xbuf: &mut Vec<u8>,
        accbuf: &mut Vec<i32>,
        rows: Range<usize>,
        cols: Range<usize>,
    ) {
        let kern = self.w.kern;
        let (mr, g, e, kc_max) = (kern.mr(), kern.group(), kern.elem(), kern.kc());
        let ag = kern.a_group_bytes(true);
        let k = self.w.k;
        // X's columns are packed once per column block for all depths (NR
        // columns over all of k per panel) and reused by every row block.
        let x_panel = k.div_ceil(g) * NR * g * e;
        let x_off = aligned(xbuf, (NC / NR) * x_panel.max(1));
        let acc_off = aligned(accbuf, MC * NC);
        let wdata = &self.w.buf[self.w.off..];
        for jc in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - jc);
            let panels = nc.div_ceil(NR);
            let xblock = &mut xbuf[x_off..x_off + panels * x_panel];
            pack_x(xblock, kern, &x, k, jc, nc);
            let xblock = &xbuf[x_off..x_off + panels * x_panel];
            #[cfg(target_arch = "x86_64")]
            if kern == QKernel::Vnni512 && k > 0 {
                let x = wide::ColumnQuads {
                    data: xblock,
                    panel: x_panel,
                    group: 64,
                };
                self.region_wide(x, rows.clone(), jc, nc);
                continue;
            }
            for ic in rows.clone().step_by(MC) {
                let mc = MC.min(rows.end - ic);
                let tiles = mc.div_ceil(mr);
                let acc = &mut accbuf[acc_off..acc_off + MC * NC];
                if k == 0 {
                    acc.fill(0);
                }
                for pc in (0..k).step_by(kc_max) {
                    let groups = kc_max.min(k - pc).div_ceil(g);
                    for q in 0..panels {
                        let xp =
                            &xblock[q * x_panel + (pc / g) * NR * g * e..][..groups * NR * g * e];
                        for t in 0..tiles {
                            let wp = &wdata
                                [(ic / mr + t) * self.w.panel_bytes + (pc / g) * mr * ag..]
                                [..groups * mr * ag];
                            let tile = &mut acc[(q * (MC / mr) + t) * mr * NR..][..mr * NR];
                            run_kernel(kern, true, groups, wp, xp, tile, pc > 0);
                        }
                    }
                }
                for q in 0..panels {
                    for t in 0..tiles {
                        let tile = &acc[(q * (MC / mr) + t) * mr * NR..][..mr * NR];
                        let (i, j) = (ic + t * mr, jc + q * NR);
                        let r = mr.min(rows.end - i);
                        let c = NR.min(cols.end - j);
                        self.fin.tile(kern, tile, i, r, j, c);
                    }
                }
            }
        }
    }
}

/// Packs columns `j0..j0+nc` of X (all k depths) into NR-column panels as
/// the micro-kernels read B: depths in groups of the kernel's width, each
/// u8 zero-extended to its element size, zero past k and past nc.
fn pack_x(dst: &mut [u8], kern: QKernel, x: &QMatX, k: usize, j0: usize, nc: usize) {
    let kp = k.div_ceil(kern.depth_pad()) * kern.depth_pad();
    match kern {
        QKernel::Portable | QKernel::NeonMlal => pack_x_impl::<1, 1>(dst, x, k, kp, j0, nc, 0),
        QKernel::Avx2Madd16 => pack_x_impl::<2, 2>(dst, x, k, kp, j0, nc, 0),
        QKernel::Avx2Maddubs => pack_x_impl::<2, 1>(dst, x, k, kp, j0, nc, 0),
        #[cfg(target_arch = "x86_64")]
        QKernel::Vnni512 | QKernel::Amx => {
            // SAFETY: these packs are made only for CPUs with AVX-512F
            // (AVX512-VNNI, which AMX implies in `Features`).
            let done = unsafe { pack_x4_avx512(dst, x, k, kp, j0, nc) };
            pack_x_impl::<4, 1>(dst, x, k, kp, j0, nc, done)
        }
        QKernel::Vnni256 => pack_x_impl::<4, 1>(dst, x, k, kp, j0, nc, 0),
        #[cfg(not(target_arch = "x86_64"))]
        QKernel::Vnni512 | QKernel::Amx => unreachable!("x86 kernels are only selected on x86_64"),
        QKernel::NeonSdot => {
            pack_x_impl::<4, 1>(dst, x, k, kp, j0, nc, 0);
            #[cfg(target_arch = "aarch64")]
            neon::flip_signs(dst);
        }
    }
}

/// Panels are `kp` depths long (k rounded up to the kernel's
/// [`QKernel::depth_pad`]). The first `done` panels already hold their
/// whole groups of depths (all but the last partial one and the padding).
fn pack_x_impl<const G: usize, const E: usize>(
    dst: &mut [u8],
    x: &QMatX,
    k: usize,
    kp: usize,
    j0: usize,
    nc: usize,
    done: usize,
) {
    let step = NR * G * E;
    let panel = kp.div_ceil(G) * step;
    if panel == 0 {
        return;
    }
    for (q, pd) in dst.chunks_exact_mut(panel).enumerate() {
        let c0 = j0 + q * NR;
        let cols = NR.min(j0 + nc - c0);
        for (gi, out) in pd.chunks_exact_mut(step).enumerate() {
            let whole = cols == NR && (gi + 1) * G <= k;
            if whole && q < done {
                continue;
            }
            if whole {
                // G rows of NR bytes interleaved (and widened): the loops
                // have constant bounds and vectorize.
                let src: [&[u8; NR]; G] = std::array::from_fn(|d| {
                    let at = (gi * G + d) * x.ld + c0;
                    x.data[at..at + NR].try_into().expect("NR bytes")
                });
                #[cfg(target_arch = "x86_64")]
                if G == 4 && E == 1 {
                    // The VNNI layout: four rows' bytes side by side, by
                    // unpacking (the loop below compiles to byte inserts).
                    interleave4(&src[..], out);
                    continue;
                }
                for c in 0..NR {
                    for (d, row) in src.iter().enumerate() {
                        out[(c * G + d) * E] = row[c];
                        if E == 2 {
                            out[(c * G + d) * E + 1] = 0;
                        }
                    }
                }
            } else {
                out.fill(0);
                for d in 0..G.min(k.saturating_sub(gi * G)) {
                    let at = (gi * G + d) * x.ld + c0;
                    for (c, &v) in x.data[at..at + cols].iter().enumerate() {
                        out[(c * G + d) * E] = v;
                    }
                }
            }
        }
    }
}

/// The VNNI packing of [`pack_x_impl`] (`G = 4`, `E = 1`) for whole groups
/// of four depths and whole runs of 64 columns: each step loads four rows'
/// 64 bytes and stores one 64-byte group row into each of four panels (the
/// 128-bit lanes of the byte interleave are the panels' quarters, put in
/// place by a 4 × 4 lane transpose). Returns how many leading panels it
/// filled (a multiple of 4).
///
/// # Safety
/// Four rows of 64 bytes (4 consecutive depths of 64 columns) interleaved
/// into the columns' quads: vector `l` holds columns `16l .. 16l + 16`,
/// each as its 4 bytes in depth order. The byte and word unpacks
/// interleave within 128-bit lanes, and a 4 × 4 transpose of the lanes
/// puts them in order.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn quads_of_64(
    r: [std::arch::x86_64::__m512i; 4],
) -> [std::arch::x86_64::__m512i; 4] {
    use std::arch::x86_64::*;
    let t01lo = _mm512_unpacklo_epi8(r[0], r[1]);
    let t01hi = _mm512_unpackhi_epi8(r[0], r[1]);
    let t23lo = _mm512_unpacklo_epi8(r[2], r[3]);
    let t23hi = _mm512_unpackhi_epi8(r[2], r[3]);
    // Lane L of o_q holds columns 16L + 4q .. 16L + 4q + 3.
    let o0 = _mm512_unpacklo_epi16(t01lo, t23lo);
    let o1 = _mm512_unpackhi_epi16(t01lo, t23lo);
    let o2 = _mm512_unpacklo_epi16(t01hi, t23hi);
    let o3 = _mm512_unpackhi_epi16(t01hi, t23hi);
    let a = _mm512_shuffle_i64x2::<0x44>(o0, o1);
    let b = _mm512_shuffle_i64x2::<0x44>(o2, o3);
    let c = _mm512_shuffle_i64x2::<0xEE>(o0, o1);
    let d = _mm512_shuffle_i64x2::<0xEE>(o2, o3);
    [
        _mm512_shuffle_i64x2::<0x88>(a, b),
        _mm512_shuffle_i64x2::<0xDD>(a, b),
        _mm512_shuffle_i64x2::<0x88>(c, d),
        _mm512_shuffle_i64x2::<0xDD>(c, d),
    ]
}

/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_x4_avx512(
    dst: &mut [u8],
    x: &QMatX,
    k: usize,
    kp: usize,
    j0: usize,
    nc: usize,
) -> usize {
    use std::arch::x86_64::*;
    let panel = kp.div_ceil(4) * 4 * NR;
    let (runs, groups) = (nc / 64, k / 4);
    if panel == 0 || runs == 0 || groups == 0 {
        return 0;
    }
    assert!(
        dst.len() >= runs * 4 * panel && x.data.len() >= (groups * 4 - 1) * x.ld + j0 + runs * 64,
        "pack_x4_avx512: buffers shorter than the block"
    );
    for run in 0..runs {
        let c0 = j0 + run * 64;
        let out = dst.as_mut_ptr().add(run * 4 * panel);
        for gi in 0..groups {
            // SAFETY: the four rows' 64 bytes at column c0 lie in X and the
            // four 64-byte stores in the run's panels (both checked above).
            let r: [__m512i; 4] = std::array::from_fn(|d| {
                _mm512_loadu_si512(x.data.as_ptr().add((gi * 4 + d) * x.ld + c0) as *const __m512i)
            });
            let p = quads_of_64(r);
            for (l, v) in p.into_iter().enumerate() {
                _mm512_storeu_si512(out.add(l * panel + gi * 64) as *mut __m512i, v);
            }
        }
    }
    runs * 4
}

/// Interleaves four rows of 16 bytes into 64: `out[4c + d] = rows[d][c]`,
/// with SSE2 unpacks (part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn interleave4(rows: &[&[u8; NR]], out: &mut [u8]) {
    use std::arch::x86_64::*;
    assert!(
        rows.len() == 4 && out.len() >= 64,
        "four rows into 64 bytes"
    );
    // SAFETY: SSE2 is part of x86_64; the loads read 16 bytes from each
    // 16-byte row and the stores write the 64 bytes checked above.
    unsafe {
        let r: [__m128i; 4] =
            std::array::from_fn(|d| _mm_loadu_si128(rows[d].as_ptr() as *const __m128i));
        let t01lo = _mm_unpacklo_epi8(r[0], r[1]);
        let t01hi = _mm_unpackhi_epi8(r[0], r[1]);
        let t23lo = _mm_unpacklo_epi8(r[2], r[3]);
        let t23hi = _mm_unpackhi_epi8(r[2], r[3]);
        let o = out.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(o, _mm_unpacklo_epi16(t01lo, t23lo));
        _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(t01lo, t23lo));
        _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(t01hi, t23hi));
        _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(t01hi, t23hi));
    }
}

/// The epilogue in AVX-512 registers, one 16-column tile row at a time,
/// for f32 and requantized u8 outputs of `tile`: `cols.div_ceil(16)`
/// panels of `tile_rows × 16` accumulators (one panel, or a wide tile's
/// several), `rows × cols` of them kept at row i, column j of C. Scales
/// and bias per row (weights left) or per column, a residual when C's rows
/// are contiguous, Relu/Clip or no activation, a partial last panel
/// through masked loads and stores. The
/// same operations in the same order as [`finish_tile_impl`] (`(acc − z)
/// as f32 · scale`, `+ bias`, `+ residual`, `max(lo)`, `min(hi)`, then
/// `round_ties_even(y / scale) + zp` clamped to `[0, 255]` with NaN → 0),
/// so the results are the same bit for bit; a u8 output folds the clamp
/// into the requantization ([`RequantZ`], the same values) and stores
/// four panels of a row at once. Returns false, doing nothing, for raw
/// i32 outputs, other activations, or columns not contiguous.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn finish_rows_avx512(
    g: &Finish,
    tile: &[i32],
    tile_rows: usize,
    i: usize,
    rows: usize,
    j: usize,
    cols: usize,
) -> bool {
    use std::arch::x86_64::*;
    let Some(ep) = &g.ep else {
        return false;
    };
    let (rs, cs) = g.strides;
    let (clamp, rest) = super::gemm::split_act(ep.act);
    // An activation other than a clamp (GELU after a transformer's first
    // feed-forward product) runs on the stored f32 rows; a u8 output would
    // need them before its requantization.
    let f32_out = matches!(g.dst, Dst::F32(_));
    if matches!(g.dst, Dst::I32(_)) || (rest.is_some() && !f32_out) || cs != 1 {
        return false;
    }
    debug_assert!(rows <= tile_rows && tile_rows <= MR_MAX);
    let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    // Per-row zero point corrections, scales and bias (weights on the
    // left), worked out when the product's `Finish` was made.
    let (row_z, row_scale, row_bias) = if g.by_row {
        let r = i..i + rows;
        (
            &g.rows.z[r.clone()],
            &g.rows.scale[r.clone()],
            &g.rows.bias[r],
        )
    } else {
        (&[][..], &[][..], &[][..])
    };
    // Per-column scales, zero point corrections and bias of panel q
    // (activations on the left).
    let col_consts = |q: usize| -> (__m512, __m512i, __m512) {
        if g.by_row {
            return (
                _mm512_setzero_ps(),
                _mm512_setzero_si512(),
                _mm512_setzero_ps(),
            );
        }
        let jq = j + q * NR;
        let mask = panel_mask(cols - q * NR);
        let sums = _mm512_loadu_si512(g.sums[jq..jq + NR].as_ptr() as *const __m512i);
        let scale = match ep.b_scales {
            [sb] => _mm512_set1_ps(ep.a_scale * sb),
            sbs => _mm512_mul_ps(
                _mm512_set1_ps(ep.a_scale),
                _mm512_maskz_loadu_ps(mask, sbs[jq..].as_ptr()),
            ),
        };
        let bias = match ep.bias {
            Some(bv) => _mm512_maskz_loadu_ps(mask, bv[jq..].as_ptr()),
            None => _mm512_setzero_ps(),
        };
        (
            scale,
            _mm512_mullo_epi32(sums, _mm512_set1_epi32(g.za)),
            bias,
        )
    };
    // Row r, panel q of the tile dequantized, with bias and residual (no
    // activation yet).
    let dequant = |r: usize, q: usize, (col_scale, col_z, col_bias): (__m512, __m512i, __m512)| {
        let jq = j + q * NR;
        let mask = panel_mask(cols - q * NR);
        let t = &tile[q * tile_rows * NR + r * NR..][..NR];
        let acc = _mm512_loadu_si512(t.as_ptr() as *const __m512i);
        let mut y = if g.by_row {
            let acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(row_z[r]));
            let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(row_scale[r]));
            if ep.bias.is_some() {
                y = _mm512_add_ps(y, _mm512_set1_ps(row_bias[r]));
            }
            y
        } else {
            let acc = _mm512_sub_epi32(acc, col_z);
            let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), col_scale);
            if ep.bias.is_some() {
                y = _mm512_add_ps(y, col_bias);
            }
            y
        };
        if let Some(res) = ep.residual {
            y = _mm512_add_ps(
                y,
                _mm512_maskz_loadu_ps(mask, res[(i + r) * rs + jq..].as_ptr()),
            );
        }
        y
    };
    let panels = cols.div_ceil(NR);
    if let Some(out) = g.rows_u8() {
        g.rows_u8_tile(&out, tile, tile_rows, i..i + rows, j..j + cols);
        return true;
    }
    if let (Dst::U8(p, _), Some(req)) = (g.dst, &g.requant) {
        let req = RequantZ::of(req);
        // Row by row, four panels (64 bytes of C) at a time: the clamp
        // folded into the requantization, saturating packs, one store.
        for q0 in (0..panels).step_by(4) {
            let four = panels.min(q0 + 4) - q0;
            let consts: [_; 4] = std::array::from_fn(|u| {
                if u < four {
                    col_consts(q0 + u)
                } else {
                    col_consts(q0)
                }
            });
            let bytes = (cols - q0 * NR).min(4 * NR);
            for r in 0..rows {
                let v: [__m512i; 4] = std::array::from_fn(|u| {
                    if u < four {
                        req.lanes(dequant(r, q0 + u, consts[u]))
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                // SAFETY: row i + r, columns j + 16·q0 .. + bytes lie
                // inside C (checked against its length in
                // `qgemm_strided`/`qgemm_wx`) and in this task's
                // rectangle, which no other task touches.
                _mm512_mask_storeu_epi8(
                    p.add((i + r) * rs + j + q0 * NR) as *mut i8,
                    byte_mask(bytes),
                    pack_u8x64(v),
                );
            }
        }
        return true;
    }
    // The rare outputs whose requantization does not fold (a scale not
    // positive and finite, a NaN bound): vector by vector.
    let rcp = match g.dst {
        Dst::U8(_, rq) => Reciprocal::new(rq.scale),
        _ => Reciprocal::DIVIDE,
    };
    for q in 0..panels {
        let jq = j + q * NR;
        let mask = panel_mask(cols - q * NR);
        let consts = col_consts(q);
        for r in 0..rows {
            let at = (i + r) * rs + jq;
            let mut y = dequant(r, q, consts);
            if clamp.is_some() {
                y = _mm512_min_ps(_mm512_max_ps(y, vlo), vhi);
            }
            // SAFETY (both stores): row i + r, columns jq..jq + 16 (masked)
            // lie inside C (checked against its length in
            // `qgemm_strided`/`qgemm_wx`) and in this task's rectangle,
            // which no other task touches.
            match g.dst {
                Dst::F32(p) => _mm512_mask_storeu_ps(p.add(at), mask, y),
                Dst::U8(p, rq) => {
                    let q = round_div_avx512(y, rq.scale, rcp);
                    let q = _mm512_add_ps(q, _mm512_set1_ps(rq.zero_point as f32));
                    // vmaxps returns the second operand when the first is NaN.
                    let q =
                        _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
                    _mm512_mask_cvtepi32_storeu_epi8(
                        p.add(at) as *mut i8,
                        mask,
                        _mm512_cvtps_epi32(q),
                    );
                }
                Dst::I32(_) => unreachable!("raw outputs return above"),
            }
        }
    }
    if let (Some(act), Dst::F32(p)) = (rest, g.dst) {
        for r in 0..rows {
            // SAFETY: row i + r, columns j .. j + cols were just stored
            // above, inside C and this task's rectangle.
            let row = std::slice::from_raw_parts_mut(p.add((i + r) * rs + j), cols);
            super::apply_activation(act, row);
        }
    }
    true
}

/// The common epilogue of a weights-left product with a u8 output (per-row
/// constants, no residual, a usable reciprocal), set up once for many
/// tiles: [`Finish::rows_u8`] checks that it applies and puts the
/// requantization's constants in registers, [`Finish::rows_u8_tile`]
/// finishes a tile with them. A caller that finishes many small tiles
/// (the weights-left wide kernel's six rows by 64 columns) keeps the setup
/// out of its loop: through [`finish_rows_avx512`], one call and its setup
/// a tile were a quarter of MobileNetV2 int8's epilogue time (Zen 5).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct RowsU8Out {
    req: RequantZ,
    dst: *mut u8,
    rs: usize,
    bias: bool,
}

#[cfg(target_arch = "x86_64")]
impl Finish<'_> {
    /// [`RowsU8Out`] for this product, when its epilogue is that one.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[inline(always)]
    pub(super) unsafe fn rows_u8(&self) -> Option<RowsU8Out> {
        match (self.dst, self.by_row, &self.ep, &self.requant) {
            (Dst::U8(p, _), true, Some(ep), Some(req))
                if ep.residual.is_none() && req.rcp.usable && self.strides.1 == 1 =>
            {
                Some(RowsU8Out {
                    req: RequantZ::of(req),
                    dst: p,
                    rs: self.strides.0,
                    bias: ep.bias.is_some(),
                })
            }
            _ => None,
        }
    }

    /// Rows `rows`, columns `cols` of C from `tile` (`⌈cols.len() / 16⌉`
    /// panels of `tile_rows × 16` accumulators) through `out`, this
    /// product's [`Finish::rows_u8`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; the rectangle lies in C and
    /// is the caller's task's alone.
    #[inline(always)]
    pub(super) unsafe fn rows_u8_tile(
        &self,
        out: &RowsU8Out,
        tile: &[i32],
        tile_rows: usize,
        rows: Range<usize>,
        cols: Range<usize>,
    ) {
        debug_assert!(
            rows.len() <= tile_rows && tile.len() >= cols.len().div_ceil(NR) * tile_rows * NR
        );
        let rows_u8 = RowsU8 {
            tile,
            tile_rows,
            z: &self.rows.z[rows.clone()],
            scale: &self.rows.scale[rows.clone()],
            bias: &self.rows.bias[rows.clone()],
            req: out.req,
            dst: out.dst.add(rows.start * out.rs + cols.start),
            rs: out.rs,
            cols: cols.len(),
        };
        match out.bias {
            true => rows_u8.run::<true>(),
            false => rows_u8.run::<false>(),
        }
    }
}

/// A wide tile's u8 rows with per-row constants (weights on the left), no
/// residual and a usable reciprocal: [`finish_rows_avx512`]'s operations
/// in its order, specialized on the bias so that the loop over a row's
/// four panels has no branch but one rounding check for all four.
#[cfg(target_arch = "x86_64")]
struct RowsU8<'a> {
    tile: &'a [i32],
    tile_rows: usize,
    /// Per row: the zero point correction, the scale, the bias.
    z: &'a [i32],
    scale: &'a [f32],
    bias: &'a [f32],
    req: RequantZ,
    /// Row 0, column 0 of the tile in C; rows `rs` bytes apart.
    dst: *mut u8,
    rs: usize,
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
impl RowsU8<'_> {
    /// # Safety
    /// The CPU must support AVX-512 F and BW; `dst` and `rs` address the
    /// tile's `z.len() × cols` bytes of C, this task's alone; the tile
    /// holds `cols.div_ceil(16)` panels of `tile_rows × 16` accumulators.
    #[inline(always)]
    unsafe fn run<const BIAS: bool>(&self) {
        use std::arch::x86_64::*;
        let panels = self.cols.div_ceil(NR);
        let t = self.tile.as_ptr();
        for q0 in (0..panels).step_by(4) {
            let four = panels.min(q0 + 4) - q0;
            let mask = byte_mask((self.cols - q0 * NR).min(4 * NR));
            for (r, ((&z, &s), &b)) in self.z.iter().zip(self.scale).zip(self.bias).enumerate() {
                let (vz, vs, vb) = (_mm512_set1_epi32(z), _mm512_set1_ps(s), _mm512_set1_ps(b));
                let mut y = [_mm512_setzero_ps(); 4];
                for (u, yu) in y.iter_mut().enumerate().take(four) {
                    let acc = _mm512_loadu_si512(
                        t.add((q0 + u) * self.tile_rows * NR + r * NR) as *const __m512i
                    );
                    *yu = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, vz)), vs);
                    if BIAS {
                        *yu = _mm512_add_ps(*yu, vb);
                    }
                }
                _mm512_mask_storeu_epi8(
                    self.dst.add(r * self.rs + q0 * NR) as *mut i8,
                    mask,
                    pack_u8x64(self.req.lanes_n(y)),
                );
            }
        }
    }
}

/// The lanes of a 16-lane panel that hold one of its `live` columns.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn panel_mask(live: usize) -> u16 {
    if live >= NR {
        0xffff
    } else {
        (1u16 << live) - 1
    }
}

/// The lanes of a 64-byte vector that hold one of its first `bytes`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn byte_mask(bytes: usize) -> u64 {
    if bytes >= 64 {
        !0
    } else {
        (1u64 << bytes) - 1
    }
}

/// Requantization to u8 in AVX-512 registers with the activation's clamp
/// folded into the output's: `g(y) = round_ties_even(y / scale) + zp` is
/// monotone in `y` for a positive scale, so clamping `y` to `[lo, hi]`
/// first and clamping `g(y)` to `[g(lo), g(hi)]` after give the same value;
/// with the output's `[0, 255]` the bounds are `qlo = g(lo)` and `qhi =
/// g(hi)`, each clamped to `[0, 255]`. NaN goes to `qlo`: `g(lo)` where the activation
/// has a bound above 0 (the reference's `max(lo)` returns `lo` on NaN),
/// else 0 (as a NaN quantizes).
///
/// The quotient is `r = y · RN(1/scale)` ([`Reciprocal`]), clamped to the
/// integers `[qlo − zp, qhi − zp]` (rounding commutes with a clamp to
/// integer bounds) and rounded by one add: `t = r + 768` lies in `[512,
/// 1024)`, where floats are `2⁻¹⁴` apart, so `t`'s bits minus 768's are
/// `n = RN(2¹⁴ · r)`, and `x = n + 2¹³ + 2 + 2¹⁴ · zp` (one integer
/// subtraction) has `round(r) + zp` above its fourteenth bit (`x >> 14`).
/// When `x`'s low fourteen bits are not 0–3 (`x & 0x3FFC ≠ 0`), `r` is at
/// least `1.5 · 2⁻¹⁴ ≈ 9.2e-5` from every half-integer, farther than the
/// multiply's error from the division (`3u · 256 ≈ 4.6e-5` for `|r| ≤
/// 256`; a larger `|r|` clamps the same way on both paths), so `round(r)`
/// is the division's rounding; otherwise (a lane in 4096 on random data)
/// all `N` vectors are divided instead. That is five vector operations and
/// a mask test for the rounding, the check, the conversion and the zero
/// point, where `vrndscaleps`, a subtraction, an `abs`, a compare, an add
/// and `vcvtps2dq` were seven.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct RequantZ {
    scale: f32,
    rcp: Reciprocal,
    zero_point: std::arch::x86_64::__m512,
    /// `qlo` and `qhi` (the division's path) ...
    qlo: std::arch::x86_64::__m512,
    qhi: std::arch::x86_64::__m512,
    /// ... and less the zero point (the multiply's).
    rlo: std::arch::x86_64::__m512,
    rhi: std::arch::x86_64::__m512,
    /// `bits(768) − 2¹³ − 2 − 2¹⁴ · zp`.
    offset: std::arch::x86_64::__m512i,
}

/// The float `r` is added to so that the sum's bits, less its own, are
/// `2¹⁴ · r` rounded (see [`RequantZ`]).
#[cfg(target_arch = "x86_64")]
const ROUNDING_MAGIC: f32 = 768.0;

/// [`RequantZ`]'s constants as scalars, worked out once for a product (a
/// tile of a small product has only a few dozen vectors to finish, and
/// three divisions there took a third of the epilogue's time).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct RequantConsts {
    scale: f32,
    rcp: Reciprocal,
    zero_point: u8,
    qlo: f32,
    qhi: f32,
}

#[cfg(target_arch = "x86_64")]
impl RequantConsts {
    /// The requantization to `rq` after the activation's clamp `clamp`;
    /// None where the fold does not hold (a scale not positive and finite,
    /// a NaN bound).
    pub(crate) fn new(rq: QRequant, clamp: Option<(f32, f32)>) -> Option<RequantConsts> {
        let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        if !(rq.scale > 0.0 && rq.scale.is_finite()) || lo.is_nan() || hi.is_nan() {
            return None;
        }
        let g = |v: f32| (v / rq.scale).round_ties_even() + rq.zero_point as f32;
        // Both bounds in [0, 255] keep `r` near 0 (see above); with `lo >
        // hi` every value becomes `qhi`, as the reference's max then min.
        Some(RequantConsts {
            scale: rq.scale,
            rcp: Reciprocal::new(rq.scale),
            zero_point: rq.zero_point,
            qlo: g(lo).clamp(0.0, 255.0),
            qhi: g(hi).clamp(0.0, 255.0),
        })
    }
}

#[cfg(target_arch = "x86_64")]
impl RequantZ {
    /// [`RequantConsts::new`] in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn new(rq: QRequant, clamp: Option<(f32, f32)>) -> Option<RequantZ> {
        RequantConsts::new(rq, clamp).map(|c| RequantZ::of(&c))
    }

    /// The constants `c` in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[inline(always)]
    pub(super) unsafe fn of(c: &RequantConsts) -> RequantZ {
        use std::arch::x86_64::*;
        let zp = c.zero_point as f32;
        let offset =
            ROUNDING_MAGIC.to_bits() as i32 - (1 << 13) - 2 - (c.zero_point as i32) * (1 << 14);
        RequantZ {
            scale: c.scale,
            rcp: c.rcp,
            zero_point: _mm512_set1_ps(zp),
            qlo: _mm512_set1_ps(c.qlo),
            qhi: _mm512_set1_ps(c.qhi),
            rlo: _mm512_set1_ps(c.qlo - zp),
            rhi: _mm512_set1_ps(c.qhi - zp),
            offset: _mm512_set1_epi32(offset),
        }
    }

    /// `y` requantized, as i32 lanes in `[0, 255]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[inline(always)]
    pub(super) unsafe fn lanes(&self, y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
        self.lanes_n([y])[0]
    }

    /// [`RequantZ::lanes`] for `N` vectors, one rounding check for all.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[inline(always)]
    pub(super) unsafe fn lanes_n<const N: usize>(
        &self,
        y: [std::arch::x86_64::__m512; N],
    ) -> [std::arch::x86_64::__m512i; N] {
        use std::arch::x86_64::*;
        let mut v = [_mm512_setzero_si512(); N];
        if self.rcp.usable {
            let (inv, magic, low) = (
                _mm512_set1_ps(self.rcp.inv),
                _mm512_set1_ps(ROUNDING_MAGIC),
                _mm512_set1_epi32(0x3FFC),
            );
            let mut near = 0u16;
            // Plain loops: closures would not inline into the caller's
            // target_feature.
            for (vu, &yu) in v.iter_mut().zip(&y) {
                // vmaxps returns the second operand (rlo) on NaN.
                let r = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(yu, inv), self.rlo), self.rhi);
                let x = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(r, magic)), self.offset);
                near |= _mm512_testn_epi32_mask(x, low);
                *vu = _mm512_srai_epi32::<14>(x);
            }
            if near == 0 {
                return v;
            }
        }
        let k = round_div_avx512_n(y, self.scale, Reciprocal::DIVIDE);
        for (vu, &ku) in v.iter_mut().zip(&k) {
            // vmaxps returns the second operand (qlo) on NaN.
            let q = _mm512_max_ps(_mm512_add_ps(ku, self.zero_point), self.qlo);
            *vu = _mm512_cvtps_epi32(_mm512_min_ps(q, self.qhi));
        }
        v
    }
}

/// Four vectors of [`RequantZ::lanes`] as 64 bytes in order, saturated to
/// `[0, 255]` (negative lanes and `i32::MIN` to 0).
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn pack_u8x64(v: [std::arch::x86_64::__m512i; 4]) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let ab = _mm512_packus_epi32(v[0], v[1]);
    let cd = _mm512_packus_epi32(v[2], v[3]);
    // 128-bit lane L now holds the L-th four bytes of each vector in turn:
    // a 4x4 dword transpose puts each vector's sixteen back together.
    let bytes = _mm512_packus_epi16(ab, cd);
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_epi32(idx, bytes)
}

/// `round_ties_even(y / scale)` in AVX-512 registers for `N` vectors at
/// once, by a multiply with `rcp` (the scale's [`Reciprocal`]) where that
/// gives the division's result for every lane of the `N`, else by the
/// division (one check and one branch for all of them).
///
/// # Safety
/// The CPU must support AVX-512 F (the caller's `target_feature`, into
/// which this inlines).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn round_div_avx512_n<const N: usize>(
    y: [std::arch::x86_64::__m512; N],
    scale: f32,
    rcp: Reciprocal,
) -> [std::arch::x86_64::__m512; N] {
    use std::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let mut k = [_mm512_setzero_ps(); N];
    if rcp.usable {
        let (inv, half) = (
            _mm512_set1_ps(rcp.inv),
            _mm512_set1_ps(0.5 - FAST_QUANT_EPS),
        );
        let mut near = 0u16;
        // Plain loops: closures would not inline into the caller's
        // target_feature.
        for (ku, &yu) in k.iter_mut().zip(&y) {
            let r = _mm512_mul_ps(yu, inv);
            *ku = _mm512_roundscale_ps::<NEAREST>(r);
            let frac = _mm512_abs_ps(_mm512_sub_ps(r, *ku));
            near |= _mm512_cmp_ps_mask::<_CMP_GT_OQ>(frac, half);
        }
        if near == 0 {
            return k;
        }
    }
    let vs = _mm512_set1_ps(scale);
    for (ku, &yu) in k.iter_mut().zip(&y) {
        *ku = _mm512_roundscale_ps::<NEAREST>(_mm512_div_ps(yu, vs));
    }
    k
}

/// [`round_div_avx512_n`] for one vector.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn round_div_avx512(
    y: std::arch::x86_64::__m512,
    scale: f32,
    rcp: Reciprocal,
) -> std::arch::x86_64::__m512 {
    round_div_avx512_n([y], scale, rcp)[0]
}

/// [`finish_tile_impl`] compiled for AVX2 (vector rounding and conversions).
///
/// # Safety
/// The CPU must support AVX2 and FMA (no FMA is emitted: Rust never
/// contracts a multiply and an add).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_tile_avx2<const MR: usize>(
    g: &Finish,
    tile: &[i32],
    i: usize,
    rows: usize,
    j: usize,
    cols: usize,
) {
    finish_tile_impl::<MR>(g, tile, i, rows, j, cols)
}

/// Corrects a tile for the zero point, then stores it through the output's
/// epilogue. Element (r, c) of the tile is `tile[r * NR + c]`.
#[inline(always)]
fn finish_tile_impl<const MR: usize>(
    g: &Finish,
    tile: &[i32],
    i: usize,
    rows: usize,
    j: usize,
    cols: usize,
) {
    debug_assert!(rows <= MR);
    let za = g.za;
    let mut accs = [[0i32; NR]; MR];
    if g.by_row {
        for (r, (row, t)) in accs.iter_mut().zip(tile.chunks_exact(NR)).enumerate() {
            if r < rows {
                let z = za.wrapping_mul(g.sums[i + r]);
                for c in 0..NR {
                    row[c] = t[c].wrapping_sub(z);
                }
            }
        }
    } else {
        let sums: &[i32; NR] = g.sums[j..j + NR]
            .try_into()
            .expect("sums are padded to whole panels");
        let zs: [i32; NR] = std::array::from_fn(|c| za.wrapping_mul(sums[c]));
        for (row, t) in accs.iter_mut().zip(tile.chunks_exact(NR)).take(rows) {
            for c in 0..NR {
                row[c] = t[c].wrapping_sub(zs[c]);
            }
        }
    }
    let (rs, cs) = g.strides;
    let base = i * rs + j * cs;
    let ep = match (g.dst, &g.ep) {
        (Dst::I32(p), _) => {
            for (r, row) in accs.iter().enumerate().take(rows) {
                // SAFETY: (i + r, j + c) lies inside C (checked against its
                // length in `qgemm_strided`) and inside this task's
                // rectangle, which no other task touches.
                unsafe { store_row(p, base + r * rs, cs, row, cols) };
            }
            return;
        }
        (_, Some(ep)) => ep,
        (_, None) => unreachable!("f32 and u8 outputs carry an epilogue"),
    };
    // Scales and bias of C's columns, or of its rows.
    let (at, len) = if g.by_row { (i, rows) } else { (j, cols) };
    let mut scale = [0.0f32; NR];
    let mut bias = [0.0f32; NR];
    match ep.b_scales {
        [sb] => scale[..len].fill(ep.a_scale * sb),
        sbs => {
            for (s, &sb) in scale.iter_mut().zip(&sbs[at..at + len]) {
                *s = ep.a_scale * sb;
            }
        }
    }
    if let Some(bv) = ep.bias {
        bias[..len].copy_from_slice(&bv[at..at + len]);
    }
    let mut y = [[0.0f32; NR]; MR];
    for (r, (yr, ar)) in y.iter_mut().zip(&accs).enumerate().take(rows) {
        if g.by_row {
            for (v, &a) in yr.iter_mut().zip(ar) {
                *v = a as f32 * scale[r];
            }
            if ep.bias.is_some() {
                for v in yr.iter_mut() {
                    *v += bias[r];
                }
            }
        } else {
            for c in 0..NR {
                yr[c] = ar[c] as f32 * scale[c];
            }
            if ep.bias.is_some() {
                for c in 0..NR {
                    yr[c] += bias[c];
                }
            }
        }
        if let Some(res) = ep.residual {
            let s = base + r * rs;
            if cs == 1 {
                for (v, &x) in yr.iter_mut().zip(&res[s..s + cols]) {
                    *v += x;
                }
            } else {
                for (c, v) in yr.iter_mut().enumerate().take(cols) {
                    *v += res[s + c * cs];
                }
            }
        }
    }
    // Relu and Clip as an inline clamp; the others through the activation
    // kernel.
    let (clamp, rest) = super::gemm::split_act(ep.act);
    if let Some((lo, hi)) = clamp {
        for yr in y.iter_mut().take(rows) {
            for v in yr.iter_mut() {
                *v = v.max(lo).min(hi);
            }
        }
    }
    if let Some(act) = rest {
        super::apply_activation(act, &mut y.as_flattened_mut()[..rows * NR]);
    }
    match g.dst {
        Dst::F32(p) => {
            for (r, row) in y.iter().enumerate().take(rows) {
                // SAFETY: as for the i32 store above.
                unsafe { store_row(p, base + r * rs, cs, row, cols) };
            }
        }
        Dst::U8(p, rq) => {
            let zp = rq.zero_point as f32;
            for (r, row) in y.iter().enumerate().take(rows) {
                let mut q = [0u8; NR];
                for c in 0..NR {
                    q[c] = quantize_one(row[c], rq.scale, zp);
                }
                // SAFETY: as for the i32 store above.
                unsafe { store_row(p, base + r * rs, cs, &q, cols) };
            }
        }
        Dst::I32(_) => unreachable!("handled above"),
    }
}

/// Stores the first `cols` values of a tile row at `p[at + c * cs]`: one
/// unaligned 16-value store for a whole contiguous row.
///
/// # Safety
/// Every `p[at + c * cs]`, `c < cols`, must be writable and not in use.
#[inline(always)]
unsafe fn store_row<T: Copy>(p: *mut T, at: usize, cs: usize, row: &[T; NR], cols: usize) {
    if cs == 1 && cols == NR {
        (p.add(at) as *mut [T; NR]).write_unaligned(*row);
    } else {
        for (c, &v) in row.iter().enumerate().take(cols) {
            *p.add(at + c * cs) = v;
        }
    }
}

/// The reciprocal of a quantization scale, for quantizing with a multiply
/// instead of a division (`vdivps` is 10–16 cycles a vector, a multiply
/// half a cycle) with the division's exact result.
///
/// `r = x · RN(1/s)` is within `3u·|x/s|` of `q = RN(x/s)` (u = 2⁻²⁴: one
/// rounding each for the reciprocal, the product and the quotient), below
/// [`FAST_QUANT_EPS`] while `|r| < 512`. So when `r` is farther than that
/// from every half-integer, `round_ties_even(r) = round_ties_even(q)`; when
/// `|r| ≥ 512` both clamp the same way (`zp ≤ 255`), so larger values need
/// no check. A vector with a lane near a half-integer (`|r − round(r)| >
/// 0.5 − eps`) is divided instead (on random data, about one vector in 70
/// with 16 lanes). NaN stays NaN on both paths.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Reciprocal {
    inv: f32,
    /// Whether the multiply may stand in (scale and reciprocal normal).
    usable: bool,
}

/// Distance to a half-integer below which the multiply's rounding could
/// differ from the division's: `3u · 513 ≈ 9.2e-5`, with margin.
#[cfg(target_arch = "x86_64")]
const FAST_QUANT_EPS: f32 = 2.5e-4;

#[cfg(target_arch = "x86_64")]
impl Reciprocal {
    /// No reciprocal: always divide.
    pub(super) const DIVIDE: Reciprocal = Reciprocal {
        inv: 0.0,
        usable: false,
    };

    pub(super) fn new(scale: f32) -> Reciprocal {
        let inv = 1.0 / scale;
        Reciprocal {
            inv,
            usable: scale.is_normal() && inv.is_normal(),
        }
    }
}

/// The quantization of one value: `clamp(round_ties_even(x / scale) + zp,
/// 0, 255) as u8`, NaN → 0.
#[inline(always)]
fn quantize_one(x: f32, scale: f32, zp: f32) -> u8 {
    // A NaN stays NaN through `clamp` and `as u8` makes it 0 (the AVX2
    // kernel's `vmaxps` order does the same).
    let v = (x / scale).round_ties_even() + zp;
    v.clamp(0.0, 255.0) as u8
}

/// Packs rows `i0..i0+mc`, depths `p0..p0+kc` of A into micro-panels of
/// the kernel's MR rows: depths in groups of G, element (row r, depth p)
/// of panel t at byte `t*mr*groups*G*E + ((p/G)*mr + r)*G*E + (p%G)*E`
/// (u8 zero-extended to two bytes when E = 2), zero-padded to whole
/// panels and groups.
///
/// A's bytes are u8 activations, or i8 weights (their bytes) when
/// `signed`, which only matters where E = 2 widens them.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    dst: &mut [u8],
    kern: QKernel,
    signed: bool,
    a: &QMatA,
    m: usize,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
) {
    match (kern, signed) {
        (QKernel::Portable, _) => pack_a_impl::<4, 1, 1, 1, false>(dst, a, m, i0, mc, p0, kc),
        (QKernel::Avx2Madd16, false) => pack_a_impl::<6, 2, 2, 1, false>(dst, a, m, i0, mc, p0, kc),
        (QKernel::Avx2Madd16, true) => pack_a_impl::<6, 2, 2, 1, true>(dst, a, m, i0, mc, p0, kc),
        (QKernel::Avx2Maddubs, false) => {
            pack_a_impl::<6, 2, 1, 2, false>(dst, a, m, i0, mc, p0, kc)
        }
        (QKernel::Avx2Maddubs, true) => pack_a_impl::<6, 2, 1, 1, true>(dst, a, m, i0, mc, p0, kc),
        // Four u8 (or i8) depths side by side: one broadcast 32-bit word.
        (QKernel::Vnni512, _) => pack_a_vnni512(dst, a, m, i0, mc, p0, kc),
        (QKernel::Vnni256, _) => pack_a_impl::<6, 4, 1, 1, false>(dst, a, m, i0, mc, p0, kc),
        (QKernel::Amx, _) => unreachable!("AMX packs its own tile panels (qgemm/amx.rs)"),
        (QKernel::NeonMlal, _) => pack_a_impl::<4, 1, 1, 1, false>(dst, a, m, i0, mc, p0, kc),
        // The VNNI layout; u8 activations shifted to i8 for `SDOT`.
        (QKernel::NeonSdot, signed) => {
            pack_a_impl::<6, 4, 1, 1, false>(dst, a, m, i0, mc, p0, kc);
            #[cfg(target_arch = "aarch64")]
            if !signed {
                neon::flip_signs(dst);
            }
            let _ = signed;
        }
    }
}

/// [`pack_a`] for the AVX512-VNNI kernels: a full panel of rows stored
/// row-major, over whole words of depth, is a 12-lane transpose of 32-bit
/// words (the f32 GEMM's, [`super::gemm::x86_pack::transpose_words`]);
/// anything else by [`pack_a_impl`]. The BERT-style encoder's int8 products
/// spent 3% of its time here, a 4-byte store per row and group.
fn pack_a_vnni512(dst: &mut [u8], a: &QMatA, m: usize, i0: usize, mc: usize, p0: usize, kc: usize) {
    const MR: usize = 12;
    #[cfg(target_arch = "x86_64")]
    if !a.trans && kc.is_multiple_of(4) && kc > 0 && Features::detect().avx512f {
        let panel_bytes = kc * MR;
        for (t, panel) in dst.chunks_exact_mut(panel_bytes).enumerate() {
            let ib = i0 + t * MR;
            if ib + MR > i0 + mc {
                pack_a_impl::<MR, 4, 1, 1, false>(panel, a, m, ib, i0 + mc - ib, p0, kc);
                continue;
            }
            let rows: [*const u32; MR] = std::array::from_fn(|r| {
                let s = (ib + r) * a.ld + p0;
                a.data[s..s + kc].as_ptr() as *const u32
            });
            // SAFETY: the CPU has AVX-512F; each row holds kc bytes (kc / 4
            // words, sliced above) and the panel kc * 12 bytes.
            unsafe {
                super::gemm::x86_pack::transpose_words(
                    &rows,
                    kc / 4,
                    panel.as_mut_ptr() as *mut u32,
                )
            };
        }
        return;
    }
    pack_a_impl::<MR, 4, 1, 1, false>(dst, a, m, i0, mc, p0, kc)
}

fn pack_a_impl<
    const MR: usize,
    const G: usize,
    const E: usize,
    const COPIES: usize,
    const SIGNED: bool,
>(
    dst: &mut [u8],
    a: &QMatA,
    m: usize,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
) {
    let groups = kc.div_ceil(G);
    let row_bytes = G * E * COPIES;
    let step = MR * row_bytes;
    debug_assert!(i0 + mc <= m);
    let _ = m;
    for (t, panel) in dst.chunks_exact_mut(groups * step).enumerate() {
        let ib = i0 + t * MR;
        let rows = MR.min(i0 + mc - ib);
        if rows < MR {
            panel.fill(0);
        }
        if a.trans {
            // Depth p of the block is the `rows` bytes at (p0+p)*ld + ib.
            // Depths past kc read a row of zeros.
            let zeros = [0u8; MR];
            for gi in 0..groups {
                let src: [&[u8]; G] = std::array::from_fn(|x| {
                    let p = gi * G + x;
                    if p < kc {
                        let at = (p0 + p) * a.ld + ib;
                        &a.data[at..at + rows]
                    } else {
                        &zeros[..rows]
                    }
                });
                #[allow(clippy::needless_range_loop)] // r indexes all G rows
                for r in 0..rows {
                    let vals = std::array::from_fn(|x| src[x][r]);
                    put_group::<G, E, COPIES, SIGNED>(panel, gi * step + r * row_bytes, vals);
                }
            }
        } else {
            for r in 0..rows {
                let s = (ib + r) * a.ld + p0;
                let src = &a.data[s..s + kc];
                let mut full = src.chunks_exact(G);
                for (gi, grp) in full.by_ref().enumerate() {
                    let vals = grp.try_into().expect("chunks of G");
                    put_group::<G, E, COPIES, SIGNED>(panel, gi * step + r * row_bytes, vals);
                }
                let rem = full.remainder();
                if !rem.is_empty() {
                    let mut vals = [0u8; G];
                    for (v, &x) in vals.iter_mut().zip(rem) {
                        *v = x;
                    }
                    put_group::<G, E, COPIES, SIGNED>(panel, (kc / G) * step + r * row_bytes, vals);
                }
            }
        }
    }
}

/// Stores one row's group of a packed A panel at `panel[o..]`: its `G`
/// values (zero past the block's depth), each zero- (or, `SIGNED`,
/// sign-) extended to `E` bytes,
/// `COPIES` times over, as one store of at most 8 bytes.
#[inline(always)]
fn put_group<const G: usize, const E: usize, const COPIES: usize, const SIGNED: bool>(
    panel: &mut [u8],
    o: usize,
    vals: [u8; G],
) {
    let len = const {
        assert!(G * E * COPIES <= 8);
        G * E * COPIES
    };
    // Built in a register: byte stores into a stack array read back as one
    // word would stall store-to-load forwarding.
    let mut w = 0u64;
    for c in 0..COPIES {
        for (x, &v) in vals.iter().enumerate() {
            // Sign-extended only when there is room (E = 2).
            let v = if SIGNED && E == 2 {
                v as i8 as i16 as u16 as u64
            } else {
                v as u64
            };
            w |= v << (8 * (c * G + x) * E);
        }
    }
    panel[o..o + len].copy_from_slice(&w.to_le_bytes()[..len]);
}

/// Runs one micro-kernel over `groups` depth groups: `a` is an A panel,
/// `b` a B panel (both at the block's first group), `tile` the `mr × NR`
/// i32 tile, added to when `accumulate`, else overwritten. A holds the u8
/// operand and B the i8 one, or the other way round when `wx` (weights
/// on the left, [`qgemm_wx`]).
fn run_kernel(
    kern: QKernel,
    wx: bool,
    groups: usize,
    a: &[u8],
    b: &[u8],
    tile: &mut [i32],
    accumulate: bool,
) {
    let mr = kern.mr();
    let (g, e) = (kern.group(), kern.elem());
    assert!(
        a.len() >= groups * mr * kern.a_group_bytes(wx)
            && b.len() >= groups * NR * g * e
            && tile.len() >= mr * NR,
        "qgemm: micro-panel shorter than its depth"
    );
    match kern {
        QKernel::Portable if wx => kernel_portable::<true>(groups, a, b, tile, accumulate),
        QKernel::Portable => kernel_portable::<false>(groups, a, b, tile, accumulate),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 packs are only run when the CPU has AVX2 (checked in
        // `qgemm_strided`); the panels and tile have the lengths checked
        // above.
        QKernel::Avx2Madd16 => unsafe {
            kernel_madd16(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QKernel::Avx2Maddubs if wx => unsafe {
            kernel_maddubs::<true>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QKernel::Avx2Maddubs => unsafe {
            kernel_maddubs::<false>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: VNNI packs are only run when the CPU has AVX512-VNNI
        // (`runs_on`, checked before any product); lengths as above.
        QKernel::Vnni512 => unsafe {
            if wx {
                kernel_vnni512::<true>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
            } else {
                kernel_vnni512::<false>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX-VNNI.
        QKernel::Vnni256 => unsafe {
            if wx {
                kernel_vnni256::<true>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
            } else {
                kernel_vnni256::<false>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
            }
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON packs are only run when the CPU has NEON (and
        // dotprod for SDOT; `runs_on`, checked before any product);
        // lengths as above.
        QKernel::NeonMlal => unsafe {
            if wx {
                neon::kernel_mlal::<true>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
            } else {
                neon::kernel_mlal::<false>(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
            }
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        QKernel::NeonSdot => unsafe {
            neon::kernel_sdot(groups, a.as_ptr(), b.as_ptr(), tile, accumulate)
        },
        QKernel::Amx => unreachable!("AMX products run their own tile kernels (qgemm/amx.rs)"),
        #[cfg(not(target_arch = "x86_64"))]
        QKernel::Avx2Madd16 | QKernel::Avx2Maddubs | QKernel::Vnni512 | QKernel::Vnni256 => {
            unreachable!("AVX2 and VNNI kernels are only selected on x86_64")
        }
        #[cfg(not(target_arch = "aarch64"))]
        QKernel::NeonMlal | QKernel::NeonSdot => {
            unreachable!("NEON kernels are only selected on aarch64")
        }
    }
}

/// Portable micro-kernel: a `4 × 16` tile, one depth per step; A is u8 and
/// B i8, or A i8 and B u8 when `WX`.
fn kernel_portable<const WX: bool>(
    kc: usize,
    a: &[u8],
    b: &[u8],
    tile: &mut [i32],
    accumulate: bool,
) {
    const MR: usize = 4;
    let mut acc = [[0i32; NR]; MR];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(&tile[r * NR..(r + 1) * NR]);
        }
    }
    for (av, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for r in 0..MR {
            if WX {
                let x = av[r] as i8 as i32;
                for c in 0..NR {
                    acc[r][c] += x * bv[c] as i32;
                }
            } else {
                let x = av[r] as i32;
                for c in 0..NR {
                    acc[r][c] += x * (bv[c] as i8 as i32);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        tile[r * NR..(r + 1) * NR].copy_from_slice(row);
    }
}

/// AVX2 `6 × 16` kernel on i16 operands: per depth pair, two B loads (8
/// columns × 2 depths each), six broadcasts of an A pair, twelve
/// `vpmaddwd` + `vpaddd`. Exact for any u8 A and i8 B (see the module
/// docs).
///
/// # Safety
/// The CPU must support AVX2; `a` holds `groups * 24` bytes, `b` `groups
/// * 64`, `tile` 96 i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_madd16(
    groups: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    kernel_2x256(groups, a, b, tile, accumulate, |c, x, bv| {
        _mm256_add_epi32(c, _mm256_madd_epi16(x, bv))
    })
}

/// The `6 × 16` scaffold of the 256-bit kernels that read a group as one
/// 32-bit A word per row and 64 bytes of B (two registers, columns 0..8 and
/// 8..16): `mac(acc, broadcast A word, B register)` is the kernel's
/// multiply-accumulate. Inlined into each kernel, so it compiles with the
/// kernel's target features.
///
/// # Safety
/// As for the kernel that calls it: `a` holds `groups * 24` bytes, `b`
/// `groups * 64`, `tile` 96 i32, and the CPU runs `mac`'s instructions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_2x256(
    groups: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
    mac: impl Fn(
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    assert!(tile.len() >= MR * 16, "a 6x16 tile");
    let t = tile.as_mut_ptr() as *mut __m256i;
    let mut c0 = [_mm256_setzero_si256(); MR];
    let mut c1 = [_mm256_setzero_si256(); MR];
    if accumulate {
        for r in 0..MR {
            c0[r] = _mm256_loadu_si256(t.add(2 * r));
            c1[r] = _mm256_loadu_si256(t.add(2 * r + 1));
        }
    }
    let (mut ap, mut bp) = (a, b);
    for _ in 0..groups {
        let b0 = _mm256_loadu_si256(bp as *const __m256i);
        let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
        for r in 0..MR {
            let x = _mm256_set1_epi32((ap.add(4 * r) as *const i32).read_unaligned());
            c0[r] = mac(c0[r], x, b0);
            c1[r] = mac(c1[r], x, b1);
        }
        ap = ap.add(4 * MR);
        bp = bp.add(64);
    }
    for r in 0..MR {
        _mm256_storeu_si256(t.add(2 * r), c0[r]);
        _mm256_storeu_si256(t.add(2 * r + 1), c1[r]);
    }
}

/// AVX2 `6 × 16` kernel for 7-bit weights, one multiply per 32
/// multiply-adds: per depth pair, one B load (16 columns × 2 depths), six
/// broadcasts of an A pair and six `vpmaddubsw` (u8 × s8 pairs into i16
/// lane c = column c: cannot saturate as every weight is in [−64, 63], see
/// the module docs). The i16 pair sums are widened without a second
/// multiply: with bit 15 flipped, each i32 lane holding columns (2i, 2i+1)
/// reads as `odd · 65536 + even + 32768`, summed into `all`, while an
/// arithmetic shift sums `odd` alone; at the end `even = all − odd · 65536
/// − 32768 · steps` in wrapping i32 arithmetic, exact because the true sum
/// fits i32. With `WX` the broadcast A pair is the i8 weights' and B the u8
/// activations (`vpmaddubsw`'s unsigned operand is then B).
///
/// # Safety
/// The CPU must support AVX2; every packed weight must lie in [−64, 63];
/// `a` holds `groups * 24` bytes (each A pair twice; `groups * 12`, once,
/// when `WX`), `b` `groups * 32`,
/// `tile` 96 i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_maddubs<const WX: bool>(
    groups: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    let t = tile.as_mut_ptr() as *mut __m256i;
    let flip = _mm256_set1_epi32(0x8000);
    let mut all = [_mm256_setzero_si256(); MR];
    let mut odd = [_mm256_setzero_si256(); MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..groups {
        let bv = _mm256_loadu_si256(bp as *const __m256i);
        for r in 0..MR {
            let x = if WX {
                _mm256_set1_epi16((ap.add(2 * r) as *const i16).read_unaligned())
            } else {
                _mm256_set1_epi32((ap.add(4 * r) as *const i32).read_unaligned())
            };
            let prod = if WX {
                _mm256_maddubs_epi16(bv, x)
            } else {
                _mm256_maddubs_epi16(x, bv)
            };
            let p = _mm256_xor_si256(prod, flip);
            all[r] = _mm256_add_epi32(all[r], p);
            odd[r] = _mm256_add_epi32(odd[r], _mm256_srai_epi32::<16>(p));
        }
        ap = ap.add(if WX { 2 * MR } else { 4 * MR });
        bp = bp.add(32);
    }
    // 32768 per step, modulo 2^32 like the sums it corrects.
    let bias = _mm256_set1_epi32((groups as u32).wrapping_mul(0x8000) as i32);
    for r in 0..MR {
        let even = _mm256_sub_epi32(
            _mm256_sub_epi32(all[r], _mm256_slli_epi32::<16>(odd[r])),
            bias,
        );
        // Lanes (e0 o0 e1 o1 | e4 o4 e5 o5) and (e2 o2 e3 o3 | e6 o6 e7 o7)
        // into columns 0..8 and 8..16.
        let lo = _mm256_unpacklo_epi32(even, odd[r]);
        let hi = _mm256_unpackhi_epi32(even, odd[r]);
        let mut c0 = _mm256_permute2x128_si256::<0x20>(lo, hi);
        let mut c1 = _mm256_permute2x128_si256::<0x31>(lo, hi);
        if accumulate {
            c0 = _mm256_add_epi32(c0, _mm256_loadu_si256(t.add(2 * r)));
            c1 = _mm256_add_epi32(c1, _mm256_loadu_si256(t.add(2 * r + 1)));
        }
        _mm256_storeu_si256(t.add(2 * r), c0);
        _mm256_storeu_si256(t.add(2 * r + 1), c1);
    }
}

/// AVX512-VNNI `12 × 16` kernel: per group of 4 depths, one B load (16
/// columns × 4 depths: one lane a column), twelve broadcasts of an A row's 4
/// depths as one 32-bit word and twelve `vpdpbusd`, each adding four u8 ×
/// s8 products into every i32 lane. No intermediate narrower than i32, so
/// it is exact for any weights. `vpdpbusd`'s unsigned operand is the first:
/// the broadcast A word, or B (the u8 activations) when `WX`.
///
/// # Safety
/// The CPU must support AVX-512 F and AVX512-VNNI; `a` holds `groups * 48`
/// bytes, `b` `groups * 64`, `tile` 192 i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel_vnni512<const WX: bool>(
    groups: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    let t = tile.as_mut_ptr() as *mut __m512i;
    let mut c = [_mm512_setzero_si512(); MR];
    if accumulate {
        for (r, cr) in c.iter_mut().enumerate() {
            *cr = _mm512_loadu_si512(t.add(r));
        }
    }
    let (mut ap, mut bp) = (a, b);
    for _ in 0..groups {
        let bv = _mm512_loadu_si512(bp as *const __m512i);
        for (r, cr) in c.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((ap.add(4 * r) as *const i32).read_unaligned());
            *cr = if WX {
                _mm512_dpbusd_epi32(*cr, bv, x)
            } else {
                _mm512_dpbusd_epi32(*cr, x, bv)
            };
        }
        ap = ap.add(4 * MR);
        bp = bp.add(64);
    }
    for (r, cr) in c.iter().enumerate() {
        _mm512_storeu_si512(t.add(r), *cr);
    }
}

/// AVX-VNNI `6 × 16` kernel: [`kernel_vnni512`] on 256-bit registers, two a
/// row (columns 0..8 and 8..16 of the group's 64-byte B row).
///
/// # Safety
/// The CPU must support AVX2 and AVX-VNNI; `a` holds `groups * 24` bytes,
/// `b` `groups * 64`, `tile` 96 i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn kernel_vnni256<const WX: bool>(
    groups: usize,
    a: *const u8,
    b: *const u8,
    tile: &mut [i32],
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    kernel_2x256(groups, a, b, tile, accumulate, |c, x, bv| {
        if WX {
            _mm256_dpbusd_avx_epi32(c, bv, x)
        } else {
            _mm256_dpbusd_avx_epi32(c, x, bv)
        }
    })
}

/// Quantizes `x` into `out` (same length): `clamp(round_ties_even(x /
/// scale) + zp, 0, 255) as u8`, NaN → 0, on the fastest kernel the CPU has
/// (all kernels agree bit for bit).
///
/// # Panics
/// When `out` and `x` differ in length.
pub fn quantize_u8(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    quantize_u8_with(Features::detect(), x, scale, zp, out)
}

/// [`quantize_u8`] on the kernel `features` select.
///
/// # Panics
/// When `out` and `x` differ in length.
pub fn quantize_u8_with(features: Features, x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "quantize_u8: input and output lengths");
    #[cfg(target_arch = "x86_64")]
    if features.avx512f && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512 F (the features say so) and BW.
        if unsafe { quantize_avx512(x, scale, zp, out) } {
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if features.avx2_fma {
        // SAFETY: the CPU has AVX2 (the features say so).
        unsafe { quantize_avx2(x, scale, zp, out) };
        return;
    }
    let _ = features;
    let z = zp as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, scale, z);
    }
}

/// ONNX DynamicQuantizeLinear's scale and zero point of `x`
/// ([`dynamic_params`](crate::ir::ops::quant::reference::dynamic_params)),
/// its range found with AVX2 where the CPU has it (same values).
pub fn dynamic_params_with(features: Features, x: &[f32]) -> (f32, u8) {
    let (lo, hi) = finite_range_with(features, x);
    crate::ir::ops::quant::reference::range_params(lo, hi)
}

/// The reference's `finite_range` (the smallest and largest finite values,
/// widened to hold 0) compiled for the features: the same values on every
/// path, and the range of a whole is the min and max of its parts' ranges.
pub fn finite_range_with(features: Features, x: &[f32]) -> (f32, f32) {
    use crate::ir::ops::quant::reference::finite_range;
    #[cfg(target_arch = "x86_64")]
    if features.avx2_fma {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn range_avx2(x: &[f32]) -> (f32, f32) {
            finite_range(x)
        }
        // SAFETY: the CPU has AVX2 (the features say so).
        return unsafe { range_avx2(x) };
    }
    let _ = features;
    finite_range(x)
}

/// AVX2 quantization, 32 values a step: `vdivps`, `vroundps` to nearest
/// even, `vaddps` the zero point, `vmaxps` 0 (first, so NaN → 0) and
/// `vminps` 255, then an exact conversion and packs to u8.
///
/// # Safety
/// The CPU must support AVX2; `out` is as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let (s, z) = (_mm256_set1_ps(scale), _mm256_set1_ps(zp as f32));
    let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    let rcp = Reciprocal::new(scale);
    let (inv, near_tie) = (
        _mm256_set1_ps(rcp.inv),
        _mm256_set1_ps(0.5 - FAST_QUANT_EPS),
    );
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let xp = x.as_ptr();
    let op = out.as_mut_ptr();
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    macro_rules! q {
        ($p:expr) => {{
            let x = _mm256_loadu_ps($p);
            // round_ties_even(x / scale), by a multiply where that is exact
            // (see `Reciprocal`).
            let v = if rcp.usable {
                let r = _mm256_mul_ps(x, inv);
                let k = _mm256_round_ps::<NEAREST>(r);
                let frac = _mm256_and_ps(_mm256_sub_ps(r, k), abs);
                let near = _mm256_cmp_ps::<_CMP_GT_OQ>(frac, near_tie);
                if _mm256_movemask_ps(near) == 0 {
                    k
                } else {
                    _mm256_round_ps::<NEAREST>(_mm256_div_ps(x, s))
                }
            } else {
                _mm256_round_ps::<NEAREST>(_mm256_div_ps(x, s))
            };
            let v = _mm256_add_ps(v, z);
            // vmaxps returns the second operand when the first is NaN.
            let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            _mm256_cvtps_epi32(v)
        }};
    }
    let mut i = 0;
    while i + 32 <= n {
        let (a, b) = (q!(xp.add(i)), q!(xp.add(i + 8)));
        let (c, d) = (q!(xp.add(i + 16)), q!(xp.add(i + 24)));
        // packs work within 128-bit lanes: fix the order with a permute.
        let ab = _mm256_packs_epi32(a, b);
        let cd = _mm256_packs_epi32(c, d);
        let v = _mm256_packus_epi16(ab, cd);
        let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(op.add(i) as *mut __m256i, v);
        i += 32;
    }
    let z = zp as f32;
    while i < n {
        *op.add(i) = quantize_one(*xp.add(i), scale, z);
        i += 1;
    }
}

/// [`quantize_u8_with`] on AVX-512, 64 values a step: the requantization
/// of the epilogues ([`RequantZ`] without a clamp, the rounding checked
/// once for four vectors), saturating packs, one store. Returns false,
/// doing nothing, for a scale that is not positive and finite (the AVX2 or
/// scalar path takes it).
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `out` is as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(x: &[f32], scale: f32, zero_point: u8, out: &mut [u8]) -> bool {
    use std::arch::x86_64::*;
    let Some(req) = RequantZ::new(QRequant { scale, zero_point }, None) else {
        return false;
    };
    for (xs, os) in x.chunks(64).zip(out.chunks_mut(64)) {
        let n = xs.len();
        let mut y = [_mm512_setzero_ps(); 4];
        for (u, yu) in y.iter_mut().enumerate() {
            let live = n.saturating_sub(16 * u).min(16);
            if live > 0 {
                *yu = _mm512_maskz_loadu_ps(panel_mask(live), xs.as_ptr().add(16 * u));
            }
        }
        let v = req.lanes_n(y);
        _mm512_mask_storeu_epi8(os.as_mut_ptr() as *mut i8, byte_mask(n), pack_u8x64(v));
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    pub(crate) fn rand_u8(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = SplitMix64::new(seed);
        (0..len).map(|_| rng.below(256) as u8).collect()
    }

    /// Weights in `[lo, hi]`.
    pub(crate) fn rand_i8(len: usize, lo: i8, hi: i8, seed: u64) -> Vec<i8> {
        let mut rng = SplitMix64::new(seed);
        let span = (hi as i64 - lo as i64 + 1) as u64;
        (0..len)
            .map(|_| (lo as i64 + rng.below(span) as i64) as i8)
            .collect()
    }

    pub(crate) fn rand_f32(len: usize, seed: u64, mag: f32) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * mag)
            .collect()
    }

    /// Every feature set with its own int8 kernels on this machine; the
    /// ones it lacks are printed as skipped.
    pub(crate) fn features() -> Vec<(&'static str, Features)> {
        let mut v = vec![("portable", Features::portable())];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = Features::avx2_only();
            if avx2 != Features::portable() {
                v.push(("avx2", avx2));
            } else {
                println!("skipped: CPU lacks AVX2 (the AVX2 int8 kernels)");
            }
            match Features::avxvnni_only() {
                Some(f) => v.push(("avx-vnni", f)),
                None => println!("skipped: CPU lacks AVX-VNNI (the 256-bit vpdpbusd kernel)"),
            }
            let all = Features::detect();
            match Features::without_amx() {
                Some(f) => v.push(("avx512-vnni", f)),
                None if all.avx512vnni => v.push(("avx512-vnni", all)),
                None => println!("skipped: CPU lacks AVX512-VNNI (the 512-bit vpdpbusd kernel)"),
            }
            if all.amx_int8 {
                v.push(("amx", all));
            } else {
                println!("skipped: CPU lacks AMX-INT8 (or the OS did not grant tile data; the tile kernels)");
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match Features::neon_only() {
                Some(f) => v.push(("neon", f)),
                None => println!("skipped: CPU lacks NEON (the SMLAL int8 kernel)"),
            }
            let all = Features::detect();
            if all.dotprod {
                v.push(("neon+dotprod", all));
            } else {
                println!("skipped: CPU lacks dotprod (the SDOT int8 kernel)");
            }
        }
        v
    }

    pub(crate) fn two_threads(f: Features) -> CpuCtx {
        let mut cx = CpuCtx::new(2).expect("a 2-thread pool starts");
        cx.features = f;
        cx
    }

    /// One product: A `m × k` (stored transposed when `ta`), B `k × n`
    /// (stored transposed when `tb`), with padded leading dimensions.
    struct Prob {
        m: usize,
        n: usize,
        k: usize,
        a: Vec<u8>,
        lda: usize,
        ta: bool,
        za: u8,
        b: Vec<i8>,
        ldb: usize,
        tb: bool,
        ldc: usize,
    }

    #[allow(clippy::too_many_arguments)]
    fn prob(
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        za: u8,
        wrange: (i8, i8),
        seed: u64,
    ) -> Prob {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
        Prob {
            m,
            n,
            k,
            a: rand_u8(ar * lda, seed),
            lda,
            ta,
            za,
            b: rand_i8(br * ldb, wrange.0, wrange.1, seed + 1),
            ldb,
            tb,
            ldc,
        }
    }

    impl Prob {
        fn a_at(&self, i: usize, p: usize) -> u8 {
            if self.ta {
                self.a[p * self.lda + i]
            } else {
                self.a[i * self.lda + p]
            }
        }
        fn b_at(&self, p: usize, j: usize) -> i8 {
            if self.tb {
                self.b[j * self.ldb + p]
            } else {
                self.b[p * self.ldb + j]
            }
        }
        /// The reference accumulators (i64 sums, checked to fit i32),
        /// row-major `m × n`.
        fn reference(&self) -> Vec<i32> {
            let mut out = vec![0i32; self.m * self.n];
            for i in 0..self.m {
                for j in 0..self.n {
                    let mut s = 0i64;
                    for p in 0..self.k {
                        s += (self.a_at(i, p) as i64 - self.za as i64) * self.b_at(p, j) as i64;
                    }
                    out[i * self.n + j] = i32::try_from(s).expect("the reference fits i32");
                }
            }
            out
        }
        fn pack(&self, f: Features) -> QPackedB {
            QPackedB::new(self.k, self.n, &self.b, self.ldb, self.tb, f).expect("k is within MAX_K")
        }
        fn qa(&self) -> QMatA<'_> {
            QMatA {
                data: &self.a,
                ld: self.lda,
                trans: self.ta,
                zero_point: self.za,
            }
        }
        /// Raw accumulators through `qgemm`, checking C's padding is left
        /// alone.
        fn run_i32(&self, pb: &QPackedB, cx: &CpuCtx) -> Vec<i32> {
            let mut c = vec![i32::MIN + 7; self.m.max(1) * self.ldc];
            qgemm(self.m, self.qa(), pb, QOut::I32(&mut c), self.ldc, cx);
            let mut out = vec![0; self.m * self.n];
            for i in 0..self.m {
                for j in self.n..self.ldc {
                    assert_eq!(c[i * self.ldc + j], i32::MIN + 7, "padding written");
                }
                out[i * self.n..(i + 1) * self.n]
                    .copy_from_slice(&c[i * self.ldc..i * self.ldc + self.n]);
            }
            out
        }
    }

    fn check_acc(p: &Prob, cx: &CpuCtx, what: &str) {
        let pb = p.pack(cx.features);
        let got = p.run_i32(&pb, cx);
        let want = p.reference();
        if let Some(x) = (0..got.len()).find(|&x| got[x] != want[x]) {
            panic!(
                "{what} {:?}: m{} n{} k{} ta{} tb{} za{} at ({}, {}): {} vs {}",
                pb.kernel(),
                p.m,
                p.n,
                p.k,
                p.ta,
                p.tb,
                p.za,
                x / p.n,
                x % p.n,
                got[x],
                want[x]
            );
        }
    }

    #[test]
    fn accumulators_match_reference() {
        let mut seed = 1;
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            for &m in &[1usize, 2, 5, 6, 7, 13, 73] {
                for &n in &[1usize, 15, 16, 17, 33] {
                    for &k in &[1usize, 2, 3, 5, 13, 64, 97] {
                        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)]
                        {
                            for wr in [(-128, 127), (-64, 63)] {
                                seed += 2;
                                let za = [0u8, 128, 255][seed as usize % 3];
                                check_acc(&prob(m, n, k, ta, tb, za, wr, seed), &cx, name);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn multi_block_shapes_match_reference() {
        // Depths across KC (256 i16 / 512 u8 per block), rows across MC,
        // columns across NC.
        let mut seed = 500;
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for &(m, n, k) in &[
                    (7, 19, 257),
                    (150, 33, 513),
                    (73, 300, 1030),
                    (5, 600, 600),
                    (200, 40, 9),
                ] {
                    for wr in [(-128, 127), (-64, 63)] {
                        for za in [0u8, 128, 255] {
                            seed += 2;
                            let p = prob(m, n, k, seed % 4 == 1, seed % 3 == 0, za, wr, seed);
                            check_acc(&p, &cx, name);
                        }
                    }
                }
            }
        }
    }

    /// Runs B given as one row of `k × n` values with all-255 (or `a`) A.
    fn extreme(k: usize, n: usize, a: u8, za: u8, b: impl Fn(usize, usize) -> i8) -> Prob {
        let m = 7;
        let bv: Vec<i8> = (0..k * n).map(|x| b(x / n, x % n)).collect();
        Prob {
            m,
            n,
            k,
            a: vec![a; m * k],
            lda: k,
            ta: false,
            za,
            b: bv,
            ldb: n,
            tb: false,
            ldc: n,
        }
    }

    type WeightFn = Box<dyn Fn(usize, usize) -> i8>;

    #[test]
    fn adversarial_extremes_are_bit_exact() {
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            for &k in &[1usize, 2, 3, 4, 255, 1024, 3001] {
                for za in [0u8, 128, 255] {
                    let cases: [(&str, WeightFn); 5] = [
                        ("+127", Box::new(|_, _| 127)),
                        ("-128", Box::new(|_, _| -128)),
                        (
                            "alt k",
                            Box::new(|p, _| if p % 2 == 0 { 127 } else { -128 }),
                        ),
                        (
                            "alt n",
                            Box::new(|_, j| if j % 2 == 0 { -128 } else { 127 }),
                        ),
                        ("-64", Box::new(|_, _| -64)),
                    ];
                    for (what, b) in cases {
                        let p = extreme(k, 19, 255, za, b);
                        check_acc(&p, &cx, &format!("{name} {what}"));
                    }
                }
                // The closed form for the worst case, not only the
                // reference: 255 · (−128) · k.
                let p = extreme(k, 3, 255, 0, |_, _| -128);
                let got = p.run_i32(&p.pack(f), &cx);
                assert!(
                    got.iter().all(|&v| v as i64 == -32640 * k as i64),
                    "{name} k{k}"
                );
            }
        }
    }

    #[test]
    fn largest_depth_is_exact_and_larger_is_refused() {
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            let p = extreme(MAX_K, 2, 255, 0, |_, _| -128);
            let got = p.run_i32(&p.pack(f), &cx);
            assert!(got.iter().all(|&v| v == -2_147_483_520), "{name}");
            let p = extreme(MAX_K, 2, 0, 255, |_, _| 127);
            let got = p.run_i32(&p.pack(f), &cx);
            assert!(got.iter().all(|&v| v == -2_130_706_305), "{name}");
            let b = vec![1i8; MAX_K + 1];
            assert!(QPackedB::new(MAX_K + 1, 1, &b, 1, false, f).is_none());
        }
    }

    #[test]
    fn maddubs_kernel_only_for_7bit_weights() {
        let avx2 = Features::avx2_only();
        for (lo, hi, want_7bit) in [
            (-64i8, 63i8, true),
            (0, 0, true),
            (-64, 64, false),
            (-65, 63, false),
            (-128, 127, false),
            (-128, -128, false),
            (127, 127, false),
        ] {
            let mut b = rand_i8(40 * 9, lo, hi, 3);
            b[17] = lo;
            b[100] = hi;
            let pb = QPackedB::new(40, 9, &b, 9, false, avx2).expect("small k");
            let want = if !avx2.avx2_fma {
                QKernel::Portable
            } else if want_7bit {
                QKernel::Avx2Maddubs
            } else {
                QKernel::Avx2Madd16
            };
            assert_eq!(pb.kernel(), want, "weights in [{lo}, {hi}]");
            let pp = QPackedB::new(40, 9, &b, 9, false, Features::portable()).expect("small k");
            assert_eq!(pp.kernel(), QKernel::Portable);
        }
        // One weight out of the 7-bit range anywhere (here the last column
        // of the last depth) is enough to take the exact path, and then the
        // saturating case is exact.
        let mut p = extreme(301, 19, 255, 0, |_, _| -64);
        let last = p.b.len() - 1;
        p.b[last] = -65;
        let pb = p.pack(avx2);
        if avx2.avx2_fma {
            assert_eq!(pb.kernel(), QKernel::Avx2Madd16);
        }
        check_acc(&p, &CpuCtx::single(avx2), "one weight past 7 bits");
    }

    /// Which int8 kernel paths the tests ran on this CPU, for the suite's
    /// summary (`tests/run_all.sh` prints the file): a path the CPU lacks is
    /// said to be skipped, never passed silently.
    #[test]
    fn int8_kernel_paths_on_this_cpu_are_reported() {
        let ran: Vec<&str> = features().iter().map(|(n, _)| *n).collect();
        #[cfg(target_arch = "x86_64")]
        let (paths, file) = (
            [
                ("avx2", "AVX2"),
                ("avx-vnni", "AVX-VNNI"),
                ("avx512-vnni", "AVX512-VNNI"),
                ("amx", "AMX-INT8"),
            ]
            .as_slice(),
            "int8_kernels.txt",
        );
        // Under qemu the test binary runs from the same tree: a file of
        // its own, for the aarch64 summary.
        #[cfg(target_arch = "aarch64")]
        let (paths, file) = (
            [("neon", "NEON"), ("neon+dotprod", "dotprod")].as_slice(),
            "int8_kernels.aarch64.txt",
        );
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let (paths, file) = ([].as_slice(), "int8_kernels.other.txt");
        crate::kernels::cpu::testing::report_kernel_paths("int8", &ran, paths, file);
    }

    /// On a VNNI machine every weight range takes the VNNI kernel (it has
    /// no 7-bit restriction), the 512-bit one where AVX512-VNNI is there.
    #[test]
    fn vnni_kernels_take_any_weights() {
        let b = rand_i8(40 * 9, -128, 127, 5);
        let kernel = |f: Features| QPackedB::new(40, 9, &b, 9, false, f).unwrap().kernel();
        if let Some(f) = Features::avxvnni_only() {
            assert_eq!(kernel(f), QKernel::Vnni256);
        }
        let d = Features::without_amx().unwrap_or_else(Features::detect);
        if d.avx512vnni {
            assert_eq!(kernel(d), QKernel::Vnni512);
            let w = QPackedA::new(9, 40, &b, d).unwrap();
            assert_eq!(w.kernel(), QKernel::Vnni512);
        } else {
            println!("skipped: CPU lacks AVX512-VNNI");
        }
        let d = Features::detect();
        if d.amx_int8 {
            assert_eq!(kernel(d), QKernel::Amx);
            let w = QPackedA::new(9, 40, &b, d).unwrap();
            assert_eq!(w.kernel(), QKernel::Amx);
        } else {
            println!("skipped: CPU lacks AMX-INT8");
        }
    }

    /// Shapes at the AMX kernel's edges: tiles of 16 rows and columns taken
    /// two by two (one left over), chunks of 64 depths, the 64-row A
    /// blocks and 256-column blocks; on every path, both orientations.
    #[test]
    fn tile_edges_match_reference() {
        let mut seed = 7000;
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for &(m, n, k) in &[
                    (16, 16, 64),
                    (17, 33, 65),
                    (31, 47, 63),
                    (32, 32, 128),
                    (48, 16, 1),
                    (65, 257, 129),
                    (130, 20, 200),
                    (3, 290, 70),
                ] {
                    seed += 1;
                    let za = [0u8, 37, 255][seed as usize % 3];
                    let p = prob(m, n, k, seed % 2 == 0, false, za, (-128, 127), seed);
                    check_acc(&p, &cx, name);
                    let what = format!("{name} weights left {m}x{n}x{k}");
                    check_wx((m, n, k), za, (-128, 127), (None, None), seed, &cx, &what);
                }
            }
        }
    }

    /// The reference dequantizing epilogue on reference accumulators
    /// (row-major `m × n`; residual laid out with `ldc`), activation left
    /// to the caller.
    fn ref_dequant(acc: &[i32], m: usize, n: usize, ldc: usize, ep: &QEpilogue) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sb = ep.b_scales[if ep.b_scales.len() == 1 { 0 } else { j }];
                let mut v = acc[i * n + j] as f32 * (ep.a_scale * sb);
                if let Some(b) = ep.bias {
                    v += b[j];
                }
                if let Some(r) = ep.residual {
                    v += r[i * ldc + j];
                }
                y[i * n + j] = v;
            }
        }
        y
    }

    fn acts() -> Vec<Option<Activation>> {
        vec![
            None,
            Some(Activation::Relu),
            Some(Activation::Clip {
                min: -0.5,
                max: 2.0,
            }),
            Some(Activation::Gelu { tanh_approx: false }),
        ]
    }

    #[test]
    fn epilogues_match_reference() {
        let mut seed = 900;
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for &(m, n, k) in &[(1, 1, 1), (7, 23, 37), (13, 40, 300), (150, 70, 130)] {
                    for wr in [(-128i8, 127i8), (-64, 63)] {
                        seed += 3;
                        let p = prob(
                            m,
                            n,
                            k,
                            false,
                            seed % 2 == 0,
                            [0, 128, 255][seed as usize % 3],
                            wr,
                            seed,
                        );
                        let pb = p.pack(f);
                        let acc = p.reference();
                        let per_ch = rand_f32(n, seed + 5, 0.01)
                            .iter()
                            .map(|v| v.abs() + 1e-4)
                            .collect::<Vec<_>>();
                        let bias = rand_f32(n, seed + 6, 3.0);
                        let res = rand_f32(m * p.ldc, seed + 7, 3.0);
                        for act in acts() {
                            for (bs, bi, re) in [
                                (&[0.003f32][..], false, false),
                                (&per_ch[..], true, false),
                                (&per_ch[..], true, true),
                                (&[0.0021f32][..], false, true),
                            ] {
                                let ep = QEpilogue {
                                    a_scale: 0.05,
                                    b_scales: bs,
                                    bias: bi.then_some(&bias[..]),
                                    residual: re.then_some(&res[..]),
                                    act: act.as_ref(),
                                };
                                let pre = ref_dequant(&acc, m, n, p.ldc, &ep);
                                let mut want = pre.clone();
                                let exact_act = matches!(
                                    act,
                                    None | Some(Activation::Relu) | Some(Activation::Clip { .. })
                                );
                                if let Some(a) = &act {
                                    crate::kernels::cpu::apply_activation_exact(a, &mut want);
                                }
                                let mut c = vec![f32::NAN; m * p.ldc];
                                qgemm(m, p.qa(), &pb, QOut::F32(&mut c, ep), p.ldc, &cx);
                                let rq = QRequant {
                                    scale: 0.04,
                                    zero_point: [0u8, 100, 255][seed as usize % 3],
                                };
                                let mut q = vec![7u8; m * p.ldc];
                                qgemm(m, p.qa(), &pb, QOut::U8(&mut q, ep, rq), p.ldc, &cx);
                                for i in 0..m {
                                    for j in 0..n {
                                        let (g, w) = (c[i * p.ldc + j], want[i * n + j]);
                                        let ok = if exact_act {
                                            g.to_bits() == w.to_bits()
                                        } else {
                                            (g - w).abs() <= 1e-5 * w.abs() + 1e-6
                                        };
                                        assert!(
                                            ok,
                                            "{name} {act:?} m{m} n{n} k{k} ({i},{j}): {g} vs {w}"
                                        );
                                        let wq = quantize_one(w, rq.scale, rq.zero_point as f32);
                                        let gq = q[i * p.ldc + j];
                                        let tol = if exact_act { 0 } else { 1 };
                                        assert!(
                                            (gq as i32 - wq as i32).abs() <= tol,
                                            "{name} {act:?} u8 ({i},{j}): {gq} vs {wq}"
                                        );
                                    }
                                    for j in n..p.ldc {
                                        assert!(c[i * p.ldc + j].is_nan() && q[i * p.ldc + j] == 7);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let act = Activation::Gelu { tanh_approx: true };
        for (name, f) in features() {
            let (one, two) = (CpuCtx::single(f), two_threads(f));
            for (x, &(m, n, k)) in [(257, 129, 300), (31, 700, 200), (600, 17, 150)]
                .iter()
                .enumerate()
            {
                let p = prob(m, n, k, x == 1, x == 2, 131, (-128, 127), 70 + x as u64);
                let pb = p.pack(f);
                let bias = rand_f32(n, 3, 1.0);
                let ep = QEpilogue {
                    a_scale: 0.02,
                    b_scales: &[0.01],
                    bias: Some(&bias),
                    residual: None,
                    act: Some(&act),
                };
                let mut c1 = vec![0.0f32; m * p.ldc];
                let mut c2 = vec![0.0f32; m * p.ldc];
                qgemm(m, p.qa(), &pb, QOut::F32(&mut c1, ep), p.ldc, &one);
                qgemm(m, p.qa(), &pb, QOut::F32(&mut c2, ep), p.ldc, &two);
                assert!(
                    c1.iter().zip(&c2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name} m{m} n{n} k{k}: 1 and 2 threads differ"
                );
            }
        }
    }

    /// Weights-left products: `W[m×k]` i8 (weights in `wrange`, or all
    /// `w_fill`) times `X[k×n]` u8 (random, or all `x_fill`) against i64
    /// sums, C's padding untouched.
    #[allow(clippy::too_many_arguments)]
    fn check_wx(
        (m, n, k): (usize, usize, usize),
        za: u8,
        wrange: (i8, i8),
        fills: (Option<i8>, Option<u8>),
        seed: u64,
        cx: &CpuCtx,
        what: &str,
    ) {
        let w = match fills.0 {
            Some(v) => vec![v; m * k],
            None => rand_i8(m * k, wrange.0, wrange.1, seed),
        };
        let ld = n + 5;
        let x = match fills.1 {
            Some(v) => vec![v; k * ld],
            None => rand_u8(k * ld, seed + 1),
        };
        let pa = QPackedA::new(m, k, &w, cx.features).expect("k within MAX_K");
        let ldc = n + 2;
        let mut c = vec![i32::MIN + 7; m.max(1) * ldc];
        let qx = QMatX {
            data: &x,
            ld,
            zero_point: za,
        };
        qgemm_wx(&pa, qx, n, QOut::I32(&mut c), ldc, cx);
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j >= n {
                    assert_eq!(got, i32::MIN + 7, "{what}: padding written");
                    continue;
                }
                let want: i64 = (0..k)
                    .map(|p| w[i * k + p] as i64 * (x[p * ld + j] as i64 - za as i64))
                    .sum();
                assert_eq!(
                    got as i64,
                    want,
                    "{what} {:?}: m{m} n{n} k{k} za{za} at ({i}, {j})",
                    pa.kernel()
                );
            }
        }
    }

    #[test]
    fn weights_left_accumulators_match_reference() {
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for (x, &(m, n, k)) in [
                    (1, 1, 1),
                    (7, 17, 3),
                    (64, 300, 27),
                    (13, 40, 1201),
                    (80, 33, 9),
                    (6, 16, 512),
                    (100, 700, 64),
                ]
                .iter()
                .enumerate()
                {
                    for wrange in [(-128, 127), (-64, 63)] {
                        let what = format!("{name} {} threads", cx.threads);
                        check_wx(
                            (m, n, k),
                            3 * x as u8 + 1,
                            wrange,
                            (None, None),
                            x as u64,
                            &cx,
                            &what,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weights_left_extremes_are_bit_exact() {
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            // All-255 activations against the weights' extremes, with and
            // without a zero point: a saturating vpmaddubsw would be off.
            for (w, xv, za) in [
                (-128i8, 255u8, 0u8),
                (127, 255, 0),
                (-128, 255, 255),
                (-64, 255, 0),
                (63, 255, 0),
                (-64, 0, 255),
            ] {
                let what = format!("{name} w{w} x{xv} za{za}");
                check_wx(
                    (13, 37, 1025),
                    za,
                    (0, 0),
                    (Some(w), Some(xv)),
                    1,
                    &cx,
                    &what,
                );
            }
        }
    }

    #[test]
    fn weights_left_epilogue_runs_by_row() {
        let (m, n, k) = (20, 45, 70);
        let w = rand_i8(m * k, -128, 127, 5);
        let x = rand_u8(k * n, 6);
        let scales = rand_f32(m, 7, 0.02);
        let bias = rand_f32(m, 8, 1.0);
        let res = rand_f32(m * n, 9, 1.0);
        let ep = QEpilogue {
            a_scale: 0.03,
            b_scales: &scales,
            bias: Some(&bias),
            residual: Some(&res),
            act: Some(&Activation::Relu),
        };
        let qx = QMatX {
            data: &x,
            ld: n,
            zero_point: 17,
        };
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            let pa = QPackedA::new(m, k, &w, f).expect("small k");
            let mut acc = vec![0i32; m * n];
            qgemm_wx(&pa, qx, n, QOut::I32(&mut acc), n, &cx);
            let mut y = vec![0f32; m * n];
            qgemm_wx(&pa, qx, n, QOut::F32(&mut y, ep), n, &cx);
            for i in 0..m {
                for j in 0..n {
                    let v = acc[i * n + j] as f32 * (0.03 * scales[i]) + bias[i] + res[i * n + j];
                    assert_eq!(
                        y[i * n + j].to_bits(),
                        v.max(0.0).to_bits(),
                        "{name} ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn dynamic_range_matches_a_plain_loop() {
        let mut x = rand_f32(203, 8, 3.0);
        x[5] = f32::NAN;
        x[77] = f32::INFINITY;
        x[150] = f32::NEG_INFINITY;
        x[200] = -7.5;
        let shifted: Vec<f32> = x.iter().map(|v| v + 10.0).collect();
        for data in [&x[..], &shifted[..]] {
            for len in [0, 1, 7, 8, 9, 16, 77, 151, 201, 203] {
                let v = &data[..len];
                let (mut lo, mut hi) = (0f32, 0f32);
                for &e in v.iter().filter(|e| e.is_finite()) {
                    lo = lo.min(e);
                    hi = hi.max(e);
                }
                let want = crate::ir::ops::quant::reference::range_params(lo, hi);
                for (name, f) in features() {
                    assert_eq!(dynamic_params_with(f, v), want, "{name} len {len}");
                }
            }
        }
    }

    #[test]
    fn quantize_follows_onnx() {
        // ONNX DynamicQuantizeLinear's example, with its parameters (the
        // parameters themselves: `reference::quant::dynamic_params`).
        let mut q = [0u8; 6];
        quantize_u8(&[0.0, 2.0, -3.0, -2.5, 1.34, 0.5], 5.0 / 255.0, 153, &mut q);
        assert_eq!(q, [153, 255, 0, 26, 221, 179]);
    }

    #[test]
    fn quantize_kernels_agree_bit_for_bit() {
        let mut x = rand_f32(1000, 5, 10.0);
        let scale = 0.037f32;
        // Exact ties, specials, and values far out of range.
        for (i, t) in (0..40).enumerate() {
            x[i * 7] = (t as f32 - 20.0 + 0.5) * scale;
        }
        x[3] = f32::NAN;
        x[4] = f32::INFINITY;
        x[5] = f32::NEG_INFINITY;
        x[6] = -0.0;
        x[8] = 1e30;
        x[9] = -1e30;
        for zp in [0u8, 1, 128, 255] {
            for len in [0usize, 1, 31, 32, 33, 999, 1000] {
                let want: Vec<u8> = x[..len]
                    .iter()
                    .map(|&v| {
                        let q = (v / scale).round_ties_even() + zp as f32;
                        q.clamp(0.0, 255.0) as u8
                    })
                    .collect();
                for (name, f) in features() {
                    let mut got = vec![9u8; len];
                    quantize_u8_with(f, &x[..len], scale, zp, &mut got);
                    assert_eq!(got, want, "{name} zp{zp} len{len}");
                }
            }
        }
    }

    /// Values a few ulps either side of every half-integer quotient (where
    /// a multiply by the reciprocal could round the other way than the
    /// division), over scales of every magnitude, subnormal and huge ones
    /// included: the vector quantizations (AVX2, and the AVX-512 epilogue's
    /// `round_div_avx512`) equal the scalar division bit for bit.
    #[test]
    fn quantization_by_reciprocal_equals_the_division() {
        let mut rng = SplitMix64::new(77);
        let mut scales = vec![1.0f32, 0.1, 0.037, 3.0, 1e-30, 1e30, 1e-40, 3e38, 1.0 / 3.0];
        scales.extend((0..40).map(|_| (rng.next_f64() as f32 * 40.0 - 20.0).exp2()));
        let mut x = Vec::new();
        for &s in &scales {
            x.clear();
            for h in -600..600 {
                let tie = (h as f32 + 0.5) * s;
                let mut up = tie;
                let mut down = tie;
                x.push(tie);
                for _ in 0..4 {
                    up = up.next_up();
                    down = down.next_down();
                    x.extend([up, down]);
                }
            }
            x.extend((0..4000).map(|_| (rng.next_f64() as f32 - 0.5) * 700.0 * s));
            x.extend([
                f32::NAN,
                f32::INFINITY,
                -f32::INFINITY,
                0.0,
                -0.0,
                f32::MIN_POSITIVE,
            ]);
            for zp in [0u8, 128, 255] {
                let want: Vec<u8> = x.iter().map(|&v| quantize_one(v, s, zp as f32)).collect();
                for (name, f) in features() {
                    let mut got = vec![9u8; x.len()];
                    quantize_u8_with(f, &x, s, zp, &mut got);
                    assert_eq!(got, want, "{name} scale {s:e} zp {zp}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if Features::detect().avx512f {
                use std::arch::x86_64::*;
                let rcp = Reciprocal::new(s);
                // One vector, and four with one check (a near lane in any
                // of them sends all four to the division).
                #[target_feature(enable = "avx512f")]
                unsafe fn four(c: &[f32], s: f32, rcp: Reciprocal, got: &mut [f32]) {
                    let mut y = [_mm512_setzero_ps(); 4];
                    for (u, yu) in y.iter_mut().enumerate() {
                        *yu = _mm512_loadu_ps(c[16 * u..].as_ptr());
                    }
                    for (u, v) in round_div_avx512_n(y, s, rcp).into_iter().enumerate() {
                        _mm512_storeu_ps(got[16 * u..].as_mut_ptr(), v);
                    }
                }
                let ones = x.len() / 16;
                for (n, c) in x.chunks_exact(16).chain(x.chunks_exact(64)).enumerate() {
                    let mut got = [0f32; 64];
                    // SAFETY: the CPU has AVX-512 F (checked above); `c`
                    // and `got` hold the vectors read and written.
                    unsafe {
                        if n < ones {
                            let v = round_div_avx512(_mm512_loadu_ps(c.as_ptr()), s, rcp);
                            _mm512_storeu_ps(got.as_mut_ptr(), v);
                        } else {
                            four(c, s, rcp, &mut got);
                        }
                    }
                    // Equal once clamped (beyond ±512 they may round apart).
                    for zp in [0.0f32, 128.0, 255.0] {
                        for (g, &v) in got.iter().zip(c) {
                            // max/min as the kernels do: NaN becomes 0.
                            #[allow(clippy::manual_clamp)]
                            let g = (g + zp).max(0.0).min(255.0);
                            let w = quantize_one(v, s, zp) as f32;
                            assert!(
                                g == w || (g.is_nan() && w == 0.0),
                                "avx512 {v:e} / {s:e} + {zp}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 requantization with a folded clamp ([`RequantZ`]: the
    /// rounding by one add, its check on the low bits) equals the scalar
    /// reference `quantize(min(max(y, lo), hi))` bit for bit, one vector and
    /// four at a time: values a few ulps around every half-integer quotient
    /// (mostly near ties, so most groups of four take the division), random
    /// values (mostly the add), infinities and NaN, for clamps that are
    /// absent, one-sided, inside and outside the u8 range, and reversed.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn requantization_with_a_clamp_equals_the_reference() {
        use std::arch::x86_64::*;
        if !Features::detect().avx512f {
            eprintln!("skipped: CPU lacks AVX-512");
            return;
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn run(req: &RequantZ, c: &[f32], got: &mut [i32; 64]) {
            let mut y = [_mm512_setzero_ps(); 4];
            for (u, yu) in y.iter_mut().enumerate() {
                *yu = _mm512_loadu_ps(c[16 * u..].as_ptr());
            }
            let (one, four) = (req.lanes(y[0]), req.lanes_n(y));
            _mm512_storeu_si512(got.as_mut_ptr() as *mut _, one);
            for (u, v) in four.into_iter().enumerate().skip(1) {
                _mm512_storeu_si512(got[16 * u..].as_mut_ptr() as *mut _, v);
            }
            // Lanes 0..16 came from `lanes`; they must also equal `lanes_n`'s.
            let mut first = [0i32; 16];
            _mm512_storeu_si512(first.as_mut_ptr() as *mut _, four[0]);
            assert_eq!(first[..], got[..16]);
        }
        let mut rng = SplitMix64::new(5);
        let inf = f32::INFINITY;
        for s in [1.0f32, 0.0371, 3.0, 1e-6, 250.0, 1.0 / 3.0] {
            let mut x = Vec::new();
            for h in -300..300 {
                let tie = (h as f32 + 0.5) * s;
                let (mut up, mut down) = (tie, tie);
                x.push(tie);
                for _ in 0..3 {
                    up = up.next_up();
                    down = down.next_down();
                    x.extend([up, down]);
                }
            }
            x.extend((0..4096).map(|_| (rng.next_f64() as f32 - 0.5) * 600.0 * s));
            x.extend([f32::NAN, inf, -inf, 0.0, -0.0, 1e30, -1e30]);
            x.resize(x.len().next_multiple_of(64), f32::NAN);
            for zp in [0u8, 7, 128, 255] {
                for clamp in [
                    None,
                    Some((0.0, inf)),
                    Some((0.0, 6.0 * s)),
                    Some((-20.3 * s, 17.5 * s)),
                    Some((-inf, -3.0 * s)),
                    Some((400.0 * s, inf)),
                    Some((5.0 * s, 2.0 * s)),
                ] {
                    let rq = QRequant {
                        scale: s,
                        zero_point: zp,
                    };
                    // SAFETY: the CPU has AVX-512 F (checked above).
                    let req = unsafe { RequantZ::new(rq, clamp) }.expect("a positive scale");
                    let (lo, hi) = clamp.unwrap_or((-inf, inf));
                    for c in x.chunks_exact(64) {
                        let mut got = [0i32; 64];
                        // SAFETY: as above; `c` holds four vectors.
                        unsafe { run(&req, c, &mut got) };
                        for (&g, &v) in got.iter().zip(c) {
                            let w = quantize_one(v.max(lo).min(hi), s, zp as f32) as i32;
                            assert_eq!(g, w, "{v:e} / {s:e} + {zp}, clamp {clamp:?}");
                        }
                    }
                }
            }
        }
    }

    /// Single-thread GOP/s of the int8 product, 8-bit and 7-bit weights
    /// (run in release: `cargo test --release --lib qgemm_speed -- --ignored
    /// --nocapture`; `GEMM_SHAPES="m,n,k;..."` as for `gemm_speed`).
    #[test]
    #[ignore]
    fn qgemm_speed() {
        let cx = CpuCtx::single(Features::detect());
        let shapes = crate::kernels::cpu::gemm::tests::shapes_from_env(&[
            (128, 3072, 768),
            (128, 768, 3072),
            (1024, 1024, 1024),
        ]);
        for &(m, n, k) in &shapes {
            for wrange in [(-128i8, 127i8), (-64, 63)] {
                let p = prob(m, n, k, false, false, 128, wrange, 9);
                let pb = p.pack(cx.features);
                let scales = rand_f32(n, 4, 0.01);
                let ep = QEpilogue {
                    a_scale: 0.02,
                    b_scales: &scales,
                    bias: None,
                    residual: None,
                    act: None,
                };
                let mut c = vec![0.0f32; m * p.ldc];
                let reps = (2e10 / (2.0 * (m * n * k) as f64)).clamp(3.0, 200.0) as usize;
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    qgemm(m, p.qa(), &pb, QOut::F32(&mut c, ep), p.ldc, &cx);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let gops = 2.0 * (m * n * k) as f64 / best / 1e9;
                println!(
                    "qgemm {m}x{n}x{k} {:?}: {:.3} ms, {gops:.1} GOP/s",
                    pb.kernel(),
                    best * 1e3
                );
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod kernel_bench {
    use super::*;

    /// Micro-kernels alone on L1-resident panels.
    #[test]
    #[ignore]
    fn qkernel_speed() {
        if !Features::detect().avx2_fma {
            return;
        }
        let groups = 256;
        let a = vec![1u8; groups * 4 * MR_MAX];
        let b = vec![1u8; groups * 64];
        let mut tile = vec![0i32; MR_MAX * NR];
        let all = [
            QKernel::Avx2Madd16,
            QKernel::Avx2Maddubs,
            QKernel::Vnni256,
            QKernel::Vnni512,
        ];
        for kern in all.into_iter().filter(|k| k.runs_on(Features::detect())) {
            let macs_per_call = kern.mr() * NR * groups * kern.group();
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = std::time::Instant::now();
                for _ in 0..2000 {
                    run_kernel(kern, false, groups, &a, &b, &mut tile, true);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gmacs = (macs_per_call * 2000) as f64 / best / 1e9;
            println!("{kern:?}: {gmacs:.1} GMAC/s ({:.1} GOP/s)", 2.0 * gmacs);
        }
    }
}

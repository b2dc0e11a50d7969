//! The 8-lane f32 vectors and the stride-phase scratch planes shared by
//! the register-blocked depthwise convolution ([`super::conv`]) and pooling
//! ([`super::ops`]) kernels.
//!
//! Both kernels copy each input plane into a padded scratch plane whose
//! rows are split by the column stride ([`PhasePad`]), so that every tap of
//! 8 neighbouring outputs is one contiguous vector load without bounds
//! tests, and keep the 8 outputs' running result in a register.
//!
//! The kernels are written once, generic over [`Lanes`], and instantiated
//! twice: with [`P8`] (a plain array the compiler may vectorize) for any
//! CPU, and with [`A8`] (an AVX2 register) inside a
//! `#[target_feature(enable = "avx2,fma")]` entry point that is called only
//! after run-time detection. The depthwise plane kernel needs only the
//! operations of [`Row`] (which [`Lanes`] extends), and also runs on
//! [`A16`] (AVX-512's 16 lanes). Every method and helper here is
//! `#[inline(always)]` and a plain function (no closures): it must inline
//! into that entry point, intrinsics included, or the kernel loses most of
//! its speed.

use std::cell::RefCell;
use std::thread::LocalKey;

use super::geometry::Window2d;

/// Width of the vectors.
pub(super) const LANES: usize = 8;

/// Widest [`Row`] (AVX-512's 16 lanes): the scratch layout has room for
/// full rows of it.
pub(super) const MAX_ROW: usize = 16;

/// Layout of the scratch plane of a window with column stride `s`: `ph`
/// blocks of `s * l` floats, one per padded input row, each split into `s`
/// phases of `l` floats, phase `q` holding the padded columns `q`, `q + s`,
/// `q + 2s`, ... Input `(ih, iw)` sits at padded position `(ih + top, iw +
/// left)`; everything else holds the padding value (0 for a convolution or
/// an average, -inf for a max). Output column `ow`, kernel column `kj`
/// reads padded column `ow * s + kj * dw`, that is phase `(kj * dw) % s`,
/// index `ow + (kj * dw) / s`: consecutive outputs read consecutive floats
/// at every stride. The layout covers all that full chunks of 16 outputs
/// read (`ow` rounded up to [`MAX_ROW`]) and every row a window reaches (also past
/// the bottom padding in ceil mode), so the kernels need no bounds tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PhasePad {
    pub(super) ph: usize,
    pub(super) s: usize,
    pub(super) l: usize,
    /// Input rows copied (those inside the scratch).
    pub(super) nrows: usize,
    /// Input columns copied per row (those inside the scratch).
    pub(super) ncols: usize,
    pub(super) top: usize,
    pub(super) left: usize,
}

impl PhasePad {
    /// `None` when the scratch would be much larger than the input and the
    /// output together, or the window is degenerate.
    pub(super) fn new(win: &Window2d) -> Option<PhasePad> {
        if win.oh == 0 || win.ow == 0 || win.kh == 0 || win.kw == 0 || win.sw == 0 {
            return None;
        }
        let ow_full = win.ow.div_ceil(MAX_ROW) * MAX_ROW;
        let ph = (win.oh - 1)
            .checked_mul(win.sh)?
            .checked_add((win.kh - 1).checked_mul(win.dh)?)?
            .checked_add(1)?;
        let s = win.sw;
        let l = ow_full.checked_add((win.kw - 1).checked_mul(win.dw)? / s)?;
        let size = ph.checked_mul(s)?.checked_mul(l)?;
        // About the input plane for usual geometries; far more only with
        // strides or pads much larger than the kernel.
        let budget = win
            .in_plane()
            .checked_add(win.out_plane())?
            .checked_mul(2)?
            .checked_add(4096)?;
        if size > budget {
            return None;
        }
        Some(PhasePad {
            ph,
            s,
            l,
            nrows: ph.saturating_sub(win.pad_top).min(win.h),
            ncols: (s * l).saturating_sub(win.pad_left).min(win.w),
            top: win.pad_top,
            left: win.pad_left,
        })
    }

    /// Floats per padded row.
    pub(super) fn row(&self) -> usize {
        self.s * self.l
    }

    pub(super) fn size(&self) -> usize {
        self.ph * self.row()
    }

    /// Offset of tap `ki * kw + kj` of window `win` (the one this layout
    /// was made for) from an output's first read: `ki * dh * row + ((kj *
    /// dw) % s) * l + (kj * dw) / s`.
    pub(super) fn taps(&self, win: &Window2d) -> Vec<usize> {
        let mut taps = Vec::with_capacity(win.kh * win.kw);
        for ki in 0..win.kh {
            for kj in 0..win.kw {
                let off = kj * win.dw;
                taps.push(ki * win.dh * self.row() + (off % self.s) * self.l + off / self.s);
            }
        }
        taps
    }
}

/// A thread's kept scratch plane, with the layout and the padding value
/// (its bits) it holds.
pub(super) type Scratch = RefCell<(Vec<f32>, Option<(PhasePad, u32)>)>;

/// Scratch planes larger than this (floats) are not kept per thread.
const KEEP_MAX: usize = 1 << 22;

/// Runs `f` on a scratch plane of layout `pad` with padding `fill` (the
/// kernels rewrite only the input positions, so the padding stays while
/// the layout is kept): the thread's plane in `kept` when free and small
/// enough, else a fresh one.
pub(super) fn with_scratch(
    kept: &'static LocalKey<Scratch>,
    pad: PhasePad,
    fill: f32,
    f: impl FnOnce(&mut [f32]),
) {
    let size = pad.size();
    let key = Some((pad, fill.to_bits()));
    let mut f = Some(f);
    if size <= KEEP_MAX {
        kept.with(|cell| {
            // Busy only if a kernel re-entered on this thread; then the
            // fresh buffer below is used.
            let Ok(mut s) = cell.try_borrow_mut() else {
                return;
            };
            let (buf, layout) = &mut *s;
            if *layout != key || buf.len() != size {
                buf.clear();
                buf.resize(size, fill);
                *layout = key;
            }
            if let Some(f) = f.take() {
                f(buf);
            }
        });
    }
    if let Some(f) = f {
        f(&mut vec![fill; size]);
    }
}

/// The vector operations the depthwise and pooling kernels need, on 8 f32
/// lanes: [`Row`]'s and the 8-lane shuffles, reductions and stores.
///
/// # Safety
/// Every method is `unsafe`: pointers must be valid for the lanes they
/// read or write (as each method says), and [`A8`]'s methods may only run
/// on a CPU with AVX2 and FMA.
pub(super) trait Lanes: Row {
    /// (even lanes, odd lanes) of the 16 lanes `a, b`.
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self);
    /// Transposes the 8x8 matrix whose rows are `r` (lane j of `r[i]`
    /// becomes lane i of `r[j]`).
    unsafe fn transpose8(r: &mut [Self; LANES]);
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn div(a: Self, b: Self) -> Self;
    /// Per lane `if x > acc { x } else { acc }`: a NaN `x` is skipped.
    unsafe fn max(acc: Self, x: Self) -> Self;
    /// Bit `l` set when lane `l` is -inf.
    unsafe fn neg_inf_mask(self) -> u32;
    /// Stores lanes `0..n`, rewriting `p[n..8]` with what it holds (all of
    /// `p[0..8]` must be valid; cheaper than a masked store).
    unsafe fn blend_store(self, p: *mut f32, n: usize);
}

/// The vector operations of the register-blocked depthwise plane kernel,
/// at any width: the [`Lanes`] types (8 lanes) and, on x86-64, [`A16`]
/// (AVX-512, 16 lanes).
///
/// # Safety
/// As [`Lanes`]: pointers must be valid for the lanes a method reads or
/// writes, and a type's methods may only run on a CPU with its
/// instructions.
pub(super) trait Row: Copy {
    /// Lanes per vector (at most [`MAX_ROW`]).
    const WIDTH: usize;
    unsafe fn splat(v: f32) -> Self;
    /// `p[0..WIDTH]`.
    unsafe fn load(p: *const f32) -> Self;
    /// `p[0..n]`, zeros after (`n <= WIDTH`).
    unsafe fn load_n(p: *const f32, n: usize) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `a * b + c` (fused where the CPU has FMA).
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    /// As [`Lanes::clamp`].
    unsafe fn clamp(self, lo: Self, hi: Self) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// Stores lanes `0..n` (`n <= WIDTH`).
    unsafe fn store_n(self, p: *mut f32, n: usize);
}

/// A [`Row`] of `L` lanes that transposes `L` of itself: what the
/// channel-interleaved depthwise kernel needs (8 lanes portable or AVX2,
/// 16 on AVX-512).
pub(super) trait Square<const L: usize>: Row {
    /// Lane j of `r[i]` becomes lane i of `r[j]`.
    unsafe fn transpose(r: [Self; L]) -> [Self; L];
}

impl Square<LANES> for P8 {
    #[inline(always)]
    unsafe fn transpose(mut r: [Self; LANES]) -> [Self; LANES] {
        Lanes::transpose8(&mut r);
        r
    }
}

/// Stores the first `k` lanes of `v` at `dst[at..]`, which holds them.
///
/// # Safety
/// The CPU must support `V`'s instructions (the positions are checked:
/// `at + k` past `dst` panics).
#[inline(always)]
pub(super) unsafe fn put<V: Lanes>(dst: &mut [f32], at: usize, v: V, k: usize) {
    if at + LANES <= dst.len() {
        v.blend_store(dst.as_mut_ptr().add(at), k)
    } else {
        v.store_n(dst[at..at + k].as_mut_ptr(), k)
    }
}

/// Copies input row `src` into padded row `dst` split into `s >= 2` stride
/// phases of `l` floats (phase `q` holds the padded columns `q, q + s, ..`;
/// input column `iw` is padded column `iw + left`): a vector even/odd split
/// at stride 2, a scalar scatter otherwise.
///
/// # Safety
/// The CPU must support `V`'s instructions (the positions are checked: a
/// `dst` too short for them panics).
#[inline(always)]
pub(super) unsafe fn fill_phases<V: Lanes>(
    src: &[f32],
    dst: &mut [f32],
    s: usize,
    l: usize,
    left: usize,
) {
    let n = src.len();
    let sp = src.as_ptr();
    if s == 2 {
        // Input column iw goes to padded column iw + left; the even ones to
        // phase left % 2 from index left / 2, the odd ones to the other
        // phase from (left + 1) / 2.
        let ev = (left % 2) * l + left / 2;
        let od = ((left + 1) % 2) * l + left.div_ceil(2);
        let mut j = 0;
        while j + 2 * LANES <= n {
            let (e, o) = V::deinterleave(V::load(sp.add(j)), V::load(sp.add(j + LANES)));
            e.store(dst[ev + j / 2..ev + j / 2 + LANES].as_mut_ptr());
            o.store(dst[od + j / 2..od + j / 2 + LANES].as_mut_ptr());
            j += 2 * LANES;
        }
        if j < n {
            let r = n - j;
            let a = V::load_n(sp.add(j), r.min(LANES));
            let b = if r > LANES {
                V::load_n(sp.add(j + LANES), r - LANES)
            } else {
                V::splat(0.0)
            };
            let (e, o) = V::deinterleave(a, b);
            put::<V>(dst, ev + j / 2, e, r.div_ceil(2));
            if r > 1 {
                put::<V>(dst, od + j / 2, o, r / 2);
            }
        }
    } else {
        for q in 0..s {
            // Phase q gets input columns iw0, iw0 + s, .. from index d.
            let mut iw = (q + s - left % s) % s;
            let mut d = q * l + (iw + left) / s;
            while iw < n {
                dst[d] = src[iw];
                iw += s;
                d += 1;
            }
        }
    }
}

/// Portable lanes (plain arrays the compiler may vectorize).
#[derive(Clone, Copy)]
pub(super) struct P8([f32; LANES]);

impl Row for P8 {
    const WIDTH: usize = LANES;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        P8([v; LANES])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        P8(std::ptr::read_unaligned(p as *const [f32; LANES]))
    }
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> Self {
        P8(std::array::from_fn(|l| if l < n { *p.add(l) } else { 0.0 }))
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        P8(std::array::from_fn(|l| a.0[l] * b.0[l] + c.0[l]))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        P8(std::array::from_fn(|l| a.0[l] + b.0[l]))
    }
    #[inline(always)]
    unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
        P8(std::array::from_fn(|l| {
            let y = if self.0[l] < lo.0[l] {
                lo.0[l]
            } else {
                self.0[l]
            };
            if y > hi.0[l] {
                hi.0[l]
            } else {
                y
            }
        }))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; LANES], self.0)
    }
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, n: usize) {
        for l in 0..n.min(LANES) {
            *p.add(l) = self.0[l];
        }
    }
}

impl Lanes for P8 {
    #[inline(always)]
    unsafe fn transpose8(r: &mut [Self; LANES]) {
        let m: [[f32; LANES]; LANES] = std::array::from_fn(|i| r[i].0);
        *r = std::array::from_fn(|j| P8(std::array::from_fn(|i| m[i][j])));
    }
    #[inline(always)]
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self) {
        let at = |i: usize| if i < LANES { a.0[i] } else { b.0[i - LANES] };
        (
            P8(std::array::from_fn(|l| at(2 * l))),
            P8(std::array::from_fn(|l| at(2 * l + 1))),
        )
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        P8(std::array::from_fn(|l| a.0[l] * b.0[l]))
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        P8(std::array::from_fn(|l| a.0[l] / b.0[l]))
    }
    #[inline(always)]
    unsafe fn max(acc: Self, x: Self) -> Self {
        P8(std::array::from_fn(|l| {
            if x.0[l] > acc.0[l] {
                x.0[l]
            } else {
                acc.0[l]
            }
        }))
    }
    #[inline(always)]
    unsafe fn neg_inf_mask(self) -> u32 {
        let mut m = 0;
        for (l, &v) in self.0.iter().enumerate() {
            m |= ((v == f32::NEG_INFINITY) as u32) << l;
        }
        m
    }
    #[inline(always)]
    unsafe fn blend_store(self, p: *mut f32, n: usize) {
        self.store_n(p, n)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx::A8;
#[cfg(target_arch = "x86_64")]
pub(super) use avx512::{HalvedRow, Halves, A16};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX-512 rows, for the kernels' `#[target_feature(enable =
    //! "avx512f")]` entry points (after run-time detection), into which
    //! the methods and intrinsics inline. Lane for lane the same operations
    //! as [`super::A8`], so results do not depend on the width.
    use super::{Row, Square};
    use std::arch::x86_64::*;

    /// AVX-512 lanes: one `__m512` register.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::cpu) struct A16(__m512);

    /// Mask of the first `n` lanes.
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    impl Square<16> for A16 {
        /// Pairs interleaved, then quads, then 128-bit lanes twice: 64
        /// shuffles. (Plain loops: closures would not inline into the
        /// kernels' `target_feature` entry points.)
        #[inline(always)]
        unsafe fn transpose(r: [Self; 16]) -> [Self; 16] {
            let mut t = [_mm512_setzero_ps(); 16];
            // t[2p], t[2p+1]: rows 2p and 2p+1 interleaved (low and high
            // pairs of each 128-bit lane).
            for p in 0..8 {
                t[2 * p] = _mm512_unpacklo_ps(r[2 * p].0, r[2 * p + 1].0);
                t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p].0, r[2 * p + 1].0);
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
            // v[k] (k < 4): lanes 0, 2 of rows 0-3 and 4-7 (columns k,
            // 8 + k); v[4 + k]: lanes 1, 3 (columns 4 + k, 12 + k); v[8 +
            // ..]: rows 8-15.
            let mut v = [_mm512_setzero_ps(); 16];
            for h in 0..2 {
                for k in 0..4 {
                    let (a, b) = (u[8 * h + k], u[8 * h + 4 + k]);
                    v[8 * h + k] = _mm512_shuffle_f32x4::<0x88>(a, b);
                    v[8 * h + 4 + k] = _mm512_shuffle_f32x4::<0xDD>(a, b);
                }
            }
            // Column j = 8m + 4o + k: v[4o + k] and v[8 + 4o + k], their
            // even (m = 0) or odd (m = 1) lanes.
            let mut out = [A16(_mm512_setzero_ps()); 16];
            for ok in 0..8 {
                out[ok] = A16(_mm512_shuffle_f32x4::<0x88>(v[ok], v[8 + ok]));
                out[8 + ok] = A16(_mm512_shuffle_f32x4::<0xDD>(v[ok], v[8 + ok]));
            }
            out
        }
    }

    /// The three column taps of a 3x3 stride-2 window
    /// ([`Window2d::halved_3x3`](super::super::geometry::Window2d::halved_3x3))
    /// over input rows of `w` floats, for `NB` vectors of 16 outputs: lane
    /// `i` of `split(row).taps(b)[kj]` is input column `2 (16 b + i) + kj - left`
    /// (`left`: the leading pad, 0 or 1), or `fill` where that lies outside
    /// the row. The 32 columns under each vector are loaded once (masked to
    /// the row: the addresses may pass its end) and split into even and odd
    /// lanes (`vpermt2ps`); the tap that crosses into the neighbouring
    /// vector comes from `valignd`. Made once per plane: the masks are the
    /// same for every row.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::cpu) struct HalvedRow<const NB: usize> {
        even: __m512i,
        odd: __m512i,
        /// Columns `32 b .. 32 b + 16` and `32 b + 16 .. 32 b + 32` inside
        /// the row.
        inside: [(__mmask16, __mmask16); NB],
        /// Column `32 NB` inside the row (the last right tap without a left
        /// pad).
        beyond: __mmask16,
        left: bool,
        fill: __m512,
    }

    impl<const NB: usize> HalvedRow<NB> {
        /// # Safety
        /// AVX-512F.
        #[inline(always)]
        pub(in crate::kernels::cpu) unsafe fn new(w: usize, left: bool, fill: __m512) -> Self {
            let mut inside = [(0, 0); NB];
            for (b, m) in inside.iter_mut().enumerate() {
                *m = (first_inside(w, 32 * b), first_inside(w, 32 * b + 16));
            }
            HalvedRow {
                even: _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                odd: _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
                inside,
                beyond: first_inside(w, 32 * NB) & 1,
                left,
                fill,
            }
        }

        /// The row at `row`, split.
        ///
        /// # Safety
        /// AVX-512F; `row` is a row of the width this was made for.
        #[inline(always)]
        pub(in crate::kernels::cpu) unsafe fn split(&self, row: *const f32) -> Halves<NB> {
            let fill = self.fill;
            let mut h = self.padding();
            for b in 0..NB {
                let (m0, m1) = self.inside[b];
                let v0 = _mm512_mask_loadu_ps(fill, m0, row.wrapping_add(32 * b));
                let v1 = _mm512_mask_loadu_ps(fill, m1, row.wrapping_add(32 * b + 16));
                h.even[b] = _mm512_permutex2var_ps(v0, self.even, v1);
                h.odd[b] = _mm512_permutex2var_ps(v0, self.odd, v1);
            }
            if !self.left {
                h.edge = _mm512_mask_loadu_ps(fill, self.beyond, row.wrapping_add(32 * NB));
            }
            h
        }

        /// A padding row: `fill` everywhere.
        #[inline(always)]
        pub(in crate::kernels::cpu) fn padding(&self) -> Halves<NB> {
            Halves {
                even: [self.fill; NB],
                odd: [self.fill; NB],
                edge: self.fill,
                left: self.left,
            }
        }
    }

    /// One input row split by [`HalvedRow`]: lane `i` of `even[b]` /
    /// `odd[b]` is column `32 b + 2 i` / `+ 1`.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::cpu) struct Halves<const NB: usize> {
        even: [__m512; NB],
        odd: [__m512; NB],
        /// Without a left pad, lane 0 is column `32 NB` (the last vector's
        /// right tap); with one, the fill (column -1, the first vector's
        /// left tap).
        edge: __m512,
        left: bool,
    }

    impl<const NB: usize> Halves<NB> {
        /// The three taps (kernel columns 0, 1, 2) of the outputs of vector
        /// `b`. (Per vector, so that a kernel can use them as they come.)
        ///
        /// # Safety
        /// AVX-512F; `b < NB`.
        #[inline(always)]
        pub(in crate::kernels::cpu) unsafe fn taps(&self, b: usize) -> [__m512; 3] {
            let (ev, od) = (self.even[b], self.odd[b]);
            if self.left {
                // Columns 2o - 1, 2o, 2o + 1.
                let prev = if b > 0 { self.odd[b - 1] } else { self.edge };
                let l =
                    _mm512_alignr_epi32::<15>(_mm512_castps_si512(od), _mm512_castps_si512(prev));
                [_mm512_castsi512_ps(l), ev, od]
            } else {
                // Columns 2o, 2o + 1, 2o + 2.
                let next = if b + 1 < NB {
                    self.even[b + 1]
                } else {
                    self.edge
                };
                let r =
                    _mm512_alignr_epi32::<1>(_mm512_castps_si512(next), _mm512_castps_si512(ev));
                [ev, od, _mm512_castsi512_ps(r)]
            }
        }
    }

    /// Mask of the 16 columns from `c` that lie in a row of `w`.
    #[inline(always)]
    fn first_inside(w: usize, c: usize) -> __mmask16 {
        match w.saturating_sub(c) {
            0 => 0,
            n if n >= 16 => 0xffff,
            n => ((1u32 << n) - 1) as __mmask16,
        }
    }

    impl Row for A16 {
        const WIDTH: usize = 16;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            A16(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            A16(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> Self {
            A16(_mm512_maskz_loadu_ps(first(n), p))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            A16(_mm512_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            A16(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            // As A8: max_ps(a, b) / min_ps(a, b) return b when either is NaN.
            A16(_mm512_min_ps(hi.0, _mm512_max_ps(lo.0, self.0)))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn store_n(self, p: *mut f32, n: usize) {
            _mm512_mask_storeu_ps(p, first(n), self.0)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    //! AVX2/FMA lanes. The methods are `#[inline(always)]` and only called
    //! from the kernels' `#[target_feature(enable = "avx2,fma")]` entry
    //! points (after run-time detection), into which they and the
    //! intrinsics inline.
    use super::{Lanes, Row, Square, LANES};
    use std::arch::x86_64::*;

    /// AVX2 lanes: one `__m256` register.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::cpu) struct A8(__m256);

    /// Mask of the first `n` lanes.
    #[inline(always)]
    unsafe fn first(n: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(LANES) as i32), idx)
    }

    /// Puts the 64-bit pairs of `v` in the order 0, 2, 1, 3.
    #[inline(always)]
    unsafe fn fix(v: __m256) -> __m256 {
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)))
    }

    impl Row for A8 {
        const WIDTH: usize = LANES;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            A8(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            A8(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> Self {
            A8(_mm256_maskload_ps(p, first(n)))
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            A8(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            A8(_mm256_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            // max_ps(a, b) / min_ps(a, b) return b when either is NaN.
            A8(_mm256_min_ps(hi.0, _mm256_max_ps(lo.0, self.0)))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn store_n(self, p: *mut f32, n: usize) {
            _mm256_maskstore_ps(p, first(n), self.0)
        }
    }

    impl Square<LANES> for A8 {
        #[inline(always)]
        unsafe fn transpose(mut r: [Self; LANES]) -> [Self; LANES] {
            Lanes::transpose8(&mut r);
            r
        }
    }

    impl Lanes for A8 {
        #[inline(always)]
        unsafe fn transpose8(r: &mut [Self; LANES]) {
            // Pairs interleaved, then 64-bit pairs, then 128-bit halves.
            let u: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1 & 6].0, r[(i & 6) + 1].0);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            let s: [__m256; 8] = std::array::from_fn(|i| {
                // i = 4h + 2q + k: pair q of rows (4h..4h+4), k picks low/high.
                let (h, q, k) = (i / 4, (i / 2) % 2, i % 2);
                let (a, b) = (u[4 * h + q], u[4 * h + 2 + q]);
                if k == 0 {
                    _mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm256_shuffle_ps::<0xEE>(a, b)
                }
            });
            *r = std::array::from_fn(|j| {
                let (a, b) = (s[j % 4], s[4 + j % 4]);
                A8(if j < 4 {
                    _mm256_permute2f128_ps::<0x20>(a, b)
                } else {
                    _mm256_permute2f128_ps::<0x31>(a, b)
                })
            });
        }
        #[inline(always)]
        unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self) {
            // Per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6 (odd: a1 a3 ..);
            // then the 64-bit pairs reordered to a0 a2 a4 a6 b0 b2 b4 b6.
            let e = _mm256_shuffle_ps::<0x88>(a.0, b.0);
            let o = _mm256_shuffle_ps::<0xDD>(a.0, b.0);
            (A8(fix(e)), A8(fix(o)))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            A8(_mm256_mul_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn div(a: Self, b: Self) -> Self {
            A8(_mm256_div_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(acc: Self, x: Self) -> Self {
            // max_ps(x, acc) is `x > acc ? x : acc` (acc when x is NaN).
            A8(_mm256_max_ps(x.0, acc.0))
        }
        #[inline(always)]
        unsafe fn neg_inf_mask(self) -> u32 {
            let e = _mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, _mm256_set1_ps(f32::NEG_INFINITY));
            _mm256_movemask_ps(e) as u32
        }
        #[inline(always)]
        unsafe fn blend_store(self, p: *mut f32, n: usize) {
            let old = _mm256_loadu_ps(p);
            let m = _mm256_castsi256_ps(first(n));
            _mm256_storeu_ps(p, _mm256_blendv_ps(old, self.0, m))
        }
    }
}

//! Int8 convolution on AVX512-VNNI with the output channels in the vector
//! lanes, reading the input where it lies ("indirect" convolution, as
//! XNNPACK's and MLAS's): no im2col.
//!
//! The input is made once into padded quad planes (`Im2col`'s: four
//! channels interleaved a pixel, `za` around), where output pixel (oy, ox)
//! reads tap (ki, kj) of channel quad cq, at any stride and dilation, at
//! one 4-byte word: the pixel's base plus the group's offset. A tile is six
//! output pixels by 64 output channels: for each depth group (a channel
//! quad at one tap) it broadcasts the six pixels' words and multiplies
//! them by four vectors of weights (sixteen channels, four depths each),
//! 24 `vpdpbusd` for ten loads, the whole depth in registers, as the
//! weights-left wide tile ([`super::super::qgemm`]'s `wide.rs`) but with
//! nothing packed per run. The six pixels are any six (a tile crosses
//! output rows freely), so a small plane wastes no lanes, where the
//! pixels-in-lanes tile computes 64 columns for a 7x7 plane's 49.
//! ResNet-18's 3x3 layers (model-207 Xeon, 1 thread): 56x56 0.47 -> 0.44
//! ms, 14x14 0.45 -> 0.37, 7x7 0.55 -> 0.43, stride 2 0.25-0.28 ->
//! 0.20-0.23.
//!
//! The accumulators come out pixel by channel; 64 pixels' worth are
//! transposed sixteen by sixteen into channel rows, so that the
//! weights-left epilogue (per-row constants, NCHW rows of pixels, the
//! residual read in place) finishes them unchanged: the results are the
//! same bit for bit as every other path's.

#[cfg(target_arch = "x86_64")]
pub(super) use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::super::super::gemm::with_buf;
    use super::super::super::lanes::{Row, Square, A16};
    use super::super::super::qgemm::{aligned, Finish};
    use super::super::super::CpuCtx;

    thread_local! {
        /// A block's accumulators, pixel by channel, on this thread.
        static BLOCK: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    }

    /// Output pixels (and channels) of a block: the unit of work of a
    /// thread and of the transposition into the epilogue's rows.
    const BLOCK_SIDE: usize = 64;

    /// Output pixels a tile covers.
    const ROWS: usize = 6;
    /// Vectors of sixteen output channels a tile covers.
    const VECS: usize = 4;
    /// Channels of one weight panel (one vector).
    const LANES: usize = 16;

    /// Convolution weights with sixteen output channels in the lanes of a
    /// vector: panel `q` (channels `16q..16q + 16`, zero past M) holds, for
    /// each depth group `g` (channel quad `g / taps` at tap `g % taps`),
    /// 64 bytes: channel `c`'s four weights at `4c`. With each channel's
    /// weight sum (`za · Σ w` folds the zero point out).
    #[derive(Clone, Debug)]
    pub(crate) struct IndirectWeights {
        m: usize,
        groups: usize,
        /// Panels, from a 64-byte aligned start.
        data: Vec<u8>,
        off: usize,
        /// `Σ_k w[c, k]` per channel, zero past M up to whole panels.
        pub(in super::super) sums: Vec<i32>,
    }

    impl IndirectWeights {
        /// From `M` rows of `k` weights in channel-quad depth order (`k =
        /// ((c / 4 · taps + t) · 4 + c % 4`, a multiple of 4).
        pub(in super::super) fn new(wq: &[i8], m: usize, k: usize) -> IndirectWeights {
            assert!(
                k.is_multiple_of(4) && wq.len() >= m * k,
                "IndirectWeights: {m}x{k}"
            );
            let (groups, panels) = (k / 4, m.div_ceil(LANES));
            let mut data = Vec::new();
            let off = aligned(&mut data, panels * groups * 64);
            let mut sums = vec![0i32; panels * LANES];
            for (c, row) in wq.chunks_exact(k).take(m).enumerate() {
                let (q, l) = (c / LANES, c % LANES);
                for (g, quad) in row.chunks_exact(4).enumerate() {
                    let at = off + (q * groups + g) * 64 + 4 * l;
                    for (d, &v) in quad.iter().enumerate() {
                        data[at + d] = v as u8;
                    }
                }
                sums[c] = row.iter().map(|&v| v as i32).sum();
            }
            IndirectWeights {
                m,
                groups,
                data,
                off,
                sums,
            }
        }

        /// Bytes of one panel.
        fn panel_bytes(&self) -> usize {
            self.groups * 64
        }

        /// Panel `q` onwards.
        fn panels_from(&self, q: usize) -> &[u8] {
            &self.data[self.off + q * self.panel_bytes()..]
        }
    }

    /// `acc[r][v] = Σ_g word(bases[r] + offs[g]) · w[v][g]` for `R` pixels
    /// and `V` panels of weights, stored at `out[r · ld + 16v..]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and AVX512-VNNI; every `bases[r] +
    /// offs[g]` must be readable for 4 bytes, `w` hold `V` panels
    /// `panel_bytes` apart of `offs.len()` groups, `out` the tile.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn tile<const R: usize, const V: usize>(
        bases: &[*const u8; ROWS],
        offs: &[u32],
        w: &[u8],
        panel_bytes: usize,
        out: *mut i32,
        ld: usize,
    ) {
        debug_assert!(w.len() >= (V - 1) * panel_bytes + offs.len() * 64);
        let mut acc = [[_mm512_setzero_si512(); V]; R];
        let b: [*const u8; R] = {
            let mut b = [std::ptr::null(); R];
            b.copy_from_slice(&bases[..R]);
            b
        };
        let mut wp = w.as_ptr();
        for &o in offs {
            let o = o as usize;
            let mut wv = [_mm512_setzero_si512(); V];
            for (v, wq) in wv.iter_mut().enumerate() {
                *wq = _mm512_load_si512(wp.add(v * panel_bytes) as *const __m512i);
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((b[r].add(o) as *const i32).read_unaligned());
                for (a, &wq) in ar.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, x, wq);
                }
            }
            wp = wp.add(64);
        }
        for (r, ar) in acc.iter().enumerate() {
            for (v, &a) in ar.iter().enumerate() {
                _mm512_storeu_si512(out.add(r * ld + v * LANES) as *mut __m512i, a);
            }
        }
    }

    /// Where a product reads its input: padded quad planes (`C / 4` planes
    /// of `hp × wp` 4-byte pixels, output pixel (oy, ox) reading tap (ki,
    /// kj) at padded (oy · sh + ki · dh, ox · sw + kj · dw)) and the
    /// offset of each depth group from a pixel's first word.
    pub(in super::super) struct Source<'a> {
        pub(in super::super) planes: &'a [u8],
        pub(in super::super) wp: usize,
        pub(in super::super) ow: usize,
        /// Output pixels.
        pub(in super::super) p: usize,
        /// `(sh, sw)`.
        pub(in super::super) strides: [usize; 2],
        /// See [`offsets`].
        pub(in super::super) offs: &'a [u32],
    }

    /// The offset of group `cq · taps + ki · kw + kj` from a pixel's word:
    /// `4 · (cq · hp · wp + ki · dh · wp + kj · dw)`, for `quads` channel
    /// quads and a `kh × kw` kernel with dilations `[dh, dw]` over planes
    /// of `hp × wp` pixels.
    pub(in super::super) fn offsets(
        quads: usize,
        [kh, kw]: [usize; 2],
        [dh, dw]: [usize; 2],
        (hp, wp): (usize, usize),
    ) -> Vec<u32> {
        let mut offs = Vec::with_capacity(quads * kh * kw);
        for cq in 0..quads {
            for ki in 0..kh {
                for kj in 0..kw {
                    let at = 4 * (cq * hp * wp + ki * dh * wp + kj * dw);
                    // In range: `pack_conv_indirect` keeps the planes under
                    // 4 GiB.
                    offs.push(at as u32);
                }
            }
        }
        offs
    }

    /// The convolution of one batch item into `fin` (weights-left layout:
    /// row = output channel, column = output pixel), its blocks of 64
    /// channels by 64 pixels spread over `cx`'s threads.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and AVX512-VNNI; `src` must hold
    /// the planes and offsets its geometry says (every pixel's word at
    /// every offset readable), `w` weights of `src.offs.len()` groups, and
    /// `fin` an output of `w.m × src.p` with `w.sums` as its sums.
    pub(in super::super) unsafe fn conv(
        src: &Source,
        w: &IndirectWeights,
        fin: &Finish,
        cx: &CpuCtx,
    ) {
        debug_assert_eq!(src.offs.len(), w.groups);
        let (cbs, pbs) = (w.m.div_ceil(BLOCK_SIDE), src.p.div_ceil(BLOCK_SIDE));
        let block = |t: usize| {
            // SAFETY: as this function's; the block indices are in range.
            unsafe { conv_block(src, w, fin, t % cbs, t / cbs) }
        };
        if cx.threads > 1 && cbs * pbs > 1 {
            cx.for_each(cbs * pbs, block);
        } else {
            (0..cbs * pbs).for_each(block);
        }
    }

    /// Channel block `cb`, pixel block `pb`: its tiles, then the epilogue.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn conv_block(src: &Source, w: &IndirectWeights, fin: &Finish, cb: usize, pb: usize) {
        let (c0, p0) = (cb * BLOCK_SIDE, pb * BLOCK_SIDE);
        let (cn, pn) = (BLOCK_SIDE.min(w.m - c0), BLOCK_SIDE.min(src.p - p0));
        let v = cn.div_ceil(LANES);
        let wb = w.panels_from(cb * VECS);
        with_buf(&BLOCK, |acc| {
            if acc.len() < BLOCK_SIDE * BLOCK_SIDE {
                acc.resize(BLOCK_SIDE * BLOCK_SIDE, 0);
            }
            let out = acc.as_mut_ptr();
            for r0 in (0..pn).step_by(ROWS) {
                let mut bases = [src.planes.as_ptr(); ROWS];
                let rows = ROWS.min(pn - r0);
                for (r, b) in bases.iter_mut().enumerate().take(rows) {
                    let q = p0 + r0 + r;
                    let (oy, ox) = (q / src.ow, q % src.ow);
                    let at = 4 * (oy * src.strides[0] * src.wp + ox * src.strides[1]);
                    *b = src.planes.as_ptr().add(at);
                }
                let o = out.add(r0 * BLOCK_SIDE);
                tile_dispatch(rows, v, &bases, src.offs, wb, w.panel_bytes(), o);
            }
            // Pixel by channel into channel rows, sixteen by sixteen: the
            // epilogue's tile of 16 rows and four 16-pixel panels.
            let mut rows16 = [0i32; 4 * 16 * LANES];
            for c16 in (0..cn).step_by(LANES) {
                for q in 0..pn.div_ceil(LANES) {
                    let mut r = [A16::splat(0.0); 16];
                    for (i, ri) in r.iter_mut().enumerate() {
                        *ri = A16::load(out.add((q * LANES + i) * BLOCK_SIDE + c16) as *const f32);
                    }
                    let t = <A16 as Square<16>>::transpose(r);
                    for (j, tj) in t.iter().enumerate() {
                        tj.store(rows16.as_mut_ptr().add((q * 16 + j) * LANES) as *mut f32);
                    }
                }
                fin.wide_tile(&rows16, 16, c0 + c16, LANES.min(cn - c16), p0, pn);
            }
        })
    }

    /// [`tile`] for `rows` pixels and `v` weight vectors.
    ///
    /// # Safety
    /// As [`tile`]'s.
    #[inline(always)]
    unsafe fn tile_dispatch(
        rows: usize,
        v: usize,
        bases: &[*const u8; ROWS],
        offs: &[u32],
        w: &[u8],
        panel_bytes: usize,
        out: *mut i32,
    ) {
        macro_rules! by_v {
            ($r:literal) => {
                match v {
                    4 => tile::<$r, 4>(bases, offs, w, panel_bytes, out, BLOCK_SIDE),
                    3 => tile::<$r, 3>(bases, offs, w, panel_bytes, out, BLOCK_SIDE),
                    2 => tile::<$r, 2>(bases, offs, w, panel_bytes, out, BLOCK_SIDE),
                    _ => tile::<$r, 1>(bases, offs, w, panel_bytes, out, BLOCK_SIDE),
                }
            };
        }
        match rows {
            6 => by_v!(6),
            5 => by_v!(5),
            4 => by_v!(4),
            3 => by_v!(3),
            2 => by_v!(2),
            _ => by_v!(1),
        }
    }
}

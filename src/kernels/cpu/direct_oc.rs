//! Direct convolution vectorized over output channels (`conv=direct-oc`).
//!
//! The other convolution paths put output pixels in the vector lanes, so
//! they need the input's pixels contiguous: they pack an im2col matrix or a
//! stride-de-interleaved copy first, and small or odd-sized planes fill
//! their vectors badly. Here the lanes hold output channels, as in ONNX
//! Runtime's NCHWc kernels: a register tile is `R` output pixels x `B`
//! vectors of channels, and every step of the reduction (input channel,
//! kernel row, kernel column) loads `B` weight vectors and broadcasts one
//! input value per pixel, read straight from a zero-padded copy of the
//! input at any stride. The tiles run along the output pixels of all batch
//! items, so no plane size wastes a tile but the very last one (which runs
//! on a narrower instantiation).
//!
//! The reduction runs in passes of [`PASS_STEPS`] steps over a run of
//! [`RUN_PIXELS`] pixels, the sums kept between passes in a per-thread
//! buffer, so that a pass's weights stay in L1 while the run reads them;
//! the next pass's weights are prefetched a share per tile. The output
//! stays NCHW: a finished run is transposed 8x8 into the output planes,
//! with bias, residual and Relu/Clip applied on the way; other activations
//! run on the finished planes.

use std::cell::RefCell;

use super::geometry::Window2d;
use super::lanes::{Lanes, Row, LANES, P8};
#[cfg(target_arch = "x86_64")]
use super::lanes::{A16, A8};
use super::{ops, CpuCtx, Features};
use crate::ir::Activation;

/// Weights packed for [`run`]: per group, blocks of `width` output
/// channels (the last zero-padded), each `[cg][kh * kw][width]`.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Output channels per group.
    mg: usize,
    group: usize,
    /// Reduction depth: input channels per group x kernel taps.
    k: usize,
    /// Output channels per block (a multiple of the kernel's lanes).
    width: usize,
    /// The kernel the layout was made for.
    kernel: Kernel,
    data: super::Floats,
}

impl Weights {
    fn blocks(&self) -> usize {
        self.mg.div_ceil(self.width)
    }
}

/// Register tiles: the lanes type and the vectors of channels per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX-512: 16 lanes, `b` vectors (2 or 4).
    Avx512 { b: usize },
    /// AVX2 and FMA: 8 lanes, 2 vectors.
    Avx2,
    /// Portable 8-lane arrays, 2 vectors.
    Portable,
}

impl Kernel {
    fn for_cpu(features: Features, mg: usize) -> Kernel {
        if features.avx512f {
            // Four vectors (64 channels) a tile unless two waste fewer
            // padded channels (160 = 5 x 32 rather than 3 x 64).
            let padded = |w: usize| mg.div_ceil(w) * w;
            Kernel::Avx512 {
                b: if padded(32) < padded(64) { 2 } else { 4 },
            }
        } else if features.avx2_fma {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Output channels per block.
    fn width(self) -> usize {
        match self {
            Kernel::Avx512 { b } => 16 * b,
            Kernel::Avx2 | Kernel::Portable => 16,
        }
    }

    /// Pixels per register tile: `R x B` accumulators plus `B` weight
    /// vectors fill the register file (32 on AVX-512, 16 on AVX2). The
    /// instantiations in [`Job::block`] use the same numbers (here they
    /// only size the threads' shares).
    fn pixels(self) -> usize {
        match self {
            Kernel::Avx512 { b: 4 } => 6,
            Kernel::Avx512 { .. } => 8,
            Kernel::Avx2 => 6,
            Kernel::Portable => 4,
        }
    }
}

/// Packs the weights `w[M, cg, kh, kw]` of a convolution with `group`
/// groups for the CPU's kernel.
pub fn prepack(w: &[f32], m: usize, group: usize, k: usize, features: Features) -> Weights {
    let mg = m / group;
    let kernel = Kernel::for_cpu(features, mg);
    let width = kernel.width();
    let nb = mg.div_ceil(width);
    let mut data = super::Floats::zeros(group * nb * k * width);
    for gi in 0..group {
        for o in 0..mg {
            let (bi, lane) = (o / width, o % width);
            let block = &mut data[(gi * nb + bi) * k * width..][..k * width];
            let src = &w[(gi * mg + o) * k..][..k];
            for (kk, &v) in src.iter().enumerate() {
                block[kk * width + lane] = v;
            }
        }
    }
    Weights {
        mg,
        group,
        k,
        width,
        kernel,
        data,
    }
}

/// Whether `w` was packed for this convolution and this CPU.
pub fn fits(w: &Weights, m: usize, group: usize, k: usize, features: Features) -> bool {
    w.group == group
        && w.mg * group == m
        && w.k == k
        && w.kernel == Kernel::for_cpu(features, w.mg)
        && w.data.len() == group * w.blocks() * k * w.width
}

/// Reduction steps (input channel x kernel tap) per pass over a run of
/// tiles: a pass's weights (64 x 64 channels x 4 bytes = 16 KiB) stay in
/// L1 while the run's tiles read them (with 128 steps ResNet-18's
/// convolutions ran up to 1.06x slower in isolation on an AVX-512 Xeon,
/// its 7x7 ones 1.02x faster).
const PASS_STEPS: usize = 64;

/// A padded copy at least this large is made by all the threads.
const PAR_MIN_FLOATS: usize = 1 << 16;

/// Output pixels per run of tiles: the run's partial sums between passes
/// (240 x 64 channels x 4 bytes = 60 KiB) stay in L2.
const RUN_PIXELS: usize = 240;

thread_local! {
    /// The zero-padded input, reused so that steady-state runs do not
    /// allocate.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The partial sums of a run of tiles between passes.
    static PARTIAL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where the kernels read the input: `data[item * c * plane + channel *
/// plane + row * width + col]`, with the window's top-left corner of
/// output `(oh, ow)` at `(oh * sh, ow * sw)`.
struct Input<'a> {
    data: &'a [f32],
    plane: usize,
    width: usize,
}

/// The convolution of `x[n, c, h, w]` (`c = group * cg`) with packed
/// weights into `y[n, M, oh, ow]`, plus `bias`, plus `residual` (of y's
/// shape), then `act`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    win: &Window2d,
    n: usize,
    c: usize,
    w: &Weights,
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let padded = win.pad_top + win.pad_left + win.pad_bottom + win.pad_right > 0;
    if padded {
        PADDED.with(|buf| {
            let mut buf = buf.borrow_mut();
            let input = pad(win, n * c, x, &mut buf, cx);
            products(win, n, c, w, &input, bias, residual, act, y, cx);
        });
    } else {
        let input = Input {
            data: x,
            plane: win.h * win.w,
            width: win.w,
        };
        products(win, n, c, w, &input, bias, residual, act, y, cx);
    }
}

/// Copies the `planes` input planes of `x` into `buf` with the zero
/// padding every window reads (planes split across the threads).
fn pad<'a>(
    win: &Window2d,
    planes: usize,
    x: &[f32],
    buf: &'a mut Vec<f32>,
    cx: &CpuCtx,
) -> Input<'a> {
    let (ph, pw) = win.padded_extent();
    let plane = ph * pw;
    // Every float is written below (the buffer is reused across
    // convolutions of other shapes): no clearing first.
    if buf.len() < planes * plane {
        buf.resize(planes * plane, 0.0);
    }
    let buf = &mut buf[..planes * plane];
    let (h, w, left) = (win.h, win.w, win.pad_left);
    let fill = |i: usize, dst: &mut [f32]| {
        let src = &x[i * h * w..(i + 1) * h * w];
        for (r, prow) in dst.chunks_exact_mut(pw).enumerate() {
            match r.checked_sub(win.pad_top).filter(|&ih| ih < h) {
                Some(ih) => {
                    prow[..left].fill(0.0);
                    prow[left..left + w].copy_from_slice(&src[ih * w..(ih + 1) * w]);
                    prow[left + w..].fill(0.0);
                }
                None => prow.fill(0.0),
            }
        }
    };
    if cx.threads > 1 && planes * plane >= PAR_MIN_FLOATS {
        cx.for_each_chunk_mut(buf, plane, fill);
    } else {
        buf.chunks_exact_mut(plane)
            .enumerate()
            .for_each(|(i, d)| fill(i, d));
    }
    Input {
        data: buf,
        plane,
        width: pw,
    }
}

/// What every tile of one convolution shares.
struct Job<'a> {
    win: &'a Window2d,
    input: &'a Input<'a>,
    w: &'a Weights,
    /// Input channels (all groups) and per group.
    c: usize,
    cg: usize,
    /// Offsets of the kernel taps within an input plane.
    taps: Vec<usize>,
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
    y: YPtr,
}

/// The output, written by disjoint tiles from several threads.
#[derive(Clone, Copy)]
struct YPtr(*mut f32);
// SAFETY: tasks write disjoint (channel, pixel) sets of the output, whose
// length `run` checked; the pointer outlives the tasks (scoped).
unsafe impl Send for YPtr {}
unsafe impl Sync for YPtr {}

#[allow(clippy::too_many_arguments)]
fn products(
    win: &Window2d,
    n: usize,
    c: usize,
    w: &Weights,
    input: &Input,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let m = w.mg * w.group;
    let plane = win.out_plane();
    assert_eq!(y.len(), n * m * plane, "direct-oc output size");
    assert!(
        input.data.len() >= n * c * input.plane,
        "direct-oc input size"
    );
    let (clamp, late) = super::gemm::split_act(act);
    let taps = (0..win.kh)
        .flat_map(|i| (0..win.kw).map(move |j| i * win.dh * input.width + j * win.dw))
        .collect();
    let job = Job {
        win,
        input,
        w,
        c,
        cg: c / w.group,
        taps,
        bias,
        residual,
        clamp,
        y: YPtr(y.as_mut_ptr()),
    };
    let pixels = n * plane;
    let r = w.kernel.pixels();
    let tiles = pixels.div_ceil(r);
    let blocks = w.group * w.blocks();
    // Each task takes one block of channels over a run of tiles: whole
    // blocks while there are enough of them (every thread then reads only
    // its share of the weights), else the tiles are split too.
    let want = if cx.threads > 1 { 4 * cx.threads } else { 1 };
    let chunks = want.div_ceil(blocks).min(tiles).max(1);
    let per = tiles.div_ceil(chunks);
    let chunks = tiles.div_ceil(per);
    cx.for_each(blocks * chunks, |t| {
        let (block, chunk) = (t / chunks, t % chunks);
        let first = chunk * per * r;
        let last = ((chunk + 1) * per * r).min(pixels);
        job.block(block, first, last);
    });
    if let Some(act) = late {
        ops::activation(act, y, cx.features);
    }
}

impl Job<'_> {
    /// Output pixels `first..last` (over the batch) of channel block
    /// `block` (over the groups).
    fn block(&self, block: usize, first: usize, last: usize) {
        let len = RUN_PIXELS * self.w.width;
        PARTIAL.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            let part = &mut buf[..];
            match self.w.kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the Avx512 layout is only packed on CPUs with
                // AVX-512F (`fits` checks it against the running CPU).
                Kernel::Avx512 { b: 4 } => unsafe {
                    self.block_avx512::<4>(block, first, last, part)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Kernel::Avx512 { .. } => unsafe {
                    self.block_avx512::<2>(block, first, last, part)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the Avx2 layout is only packed on CPUs with AVX2
                // and FMA.
                Kernel::Avx2 => unsafe { self.block_avx2(block, first, last, part) },
                _ => self.tiles::<P8, P8, 2, 4>(block, first, last, part),
            }
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block_avx512<const B: usize>(
        &self,
        block: usize,
        first: usize,
        last: usize,
        part: &mut [f32],
    ) {
        if B == 4 {
            self.tiles::<A16, A8, B, 6>(block, first, last, part)
        } else {
            self.tiles::<A16, A8, B, 8>(block, first, last, part)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&self, block: usize, first: usize, last: usize, part: &mut [f32]) {
        self.tiles::<A8, A8, 2, 6>(block, first, last, part)
    }

    /// The tiles of `R` pixels from `first` to `last` (the last, partial
    /// one on a narrower tile), in runs of [`RUN_PIXELS`], each run in
    /// passes of about [`PASS_STEPS`] reduction steps, its sums in `buf`
    /// (`[pixel][width]`) until [`Job::finish`] moves them to the output.
    /// `V` holds the tiles' channels, `T` transposes them.
    #[inline(always)]
    fn tiles<V: Row, T: Lanes, const B: usize, const R: usize>(
        &self,
        block: usize,
        first: usize,
        last: usize,
        buf: &mut [f32],
    ) {
        let per_pass = (PASS_STEPS / self.taps.len()).clamp(1, self.cg);
        let run = RUN_PIXELS / R * R;
        let width = self.w.width;
        let mut xoff = [0usize; RUN_PIXELS];
        for r0 in (first..last).step_by(run) {
            let r1 = (r0 + run).min(last);
            self.offsets(block, r0, &mut xoff[..r1 - r0]);
            for c0 in (0..self.cg).step_by(per_pass) {
                let chans = c0..(c0 + per_pass).min(self.cg);
                // The weights after this pass's (the next pass's, or the
                // next block's first), fetched a share with each tile: the
                // first tile to read them would otherwise wait on memory.
                let pass = chans.len() * self.taps.len() * width;
                let next = self.w.data[block * self.w.k * width..]
                    .as_ptr()
                    .wrapping_add(chans.end * self.taps.len() * width);
                let lines = pass / 16;
                let per_tile = lines.div_ceil((r1 - r0).div_ceil(R));
                let mut i = 0;
                while i + R <= r1 - r0 {
                    let l0 = i / R * per_tile;
                    prefetch_lines(next, l0..(l0 + per_tile).min(lines));
                    self.tile::<V, B, R>(block, &xoff[i..], chans.clone(), &mut buf[i * width..]);
                    i += R;
                }
                let (xo, part) = (&xoff[i..], &mut buf[i * width..]);
                match r1 - r0 - i {
                    0 => {}
                    1 => self.tile::<V, B, 1>(block, xo, chans, part),
                    2 => self.tile::<V, B, 2>(block, xo, chans, part),
                    3 => self.tile::<V, B, 3>(block, xo, chans, part),
                    4 => self.tile::<V, B, 4>(block, xo, chans, part),
                    5 => self.tile::<V, B, 5>(block, xo, chans, part),
                    6 => self.tile::<V, B, 6>(block, xo, chans, part),
                    _ => self.tile::<V, B, 7>(block, xo, chans, part),
                }
            }
            // SAFETY: `T` runs on this CPU (see `block`).
            unsafe { self.finish::<T>(block, r0, r1, buf) };
        }
    }

    /// Where the windows of output pixels `p0..p0 + xoff.len()` (over the
    /// batch) start in the input of channel block `block`'s group.
    #[inline(always)]
    fn offsets(&self, block: usize, p0: usize, xoff: &mut [usize]) {
        let win = self.win;
        let (plane, gi) = (win.out_plane(), block / self.w.blocks());
        let (mut item, q) = (p0 / plane, p0 % plane);
        let (mut oh, mut ow) = (q / win.ow, q % win.ow);
        for xo in xoff {
            *xo = (item * self.c + gi * self.cg) * self.input.plane
                + oh * win.sh * self.input.width
                + ow * win.sw;
            ow += 1;
            if ow == win.ow {
                ow = 0;
                oh += 1;
                if oh == win.oh {
                    oh = 0;
                    item += 1;
                }
            }
        }
    }

    /// One register tile: the `N` pixels whose windows start at `xoff`,
    /// channel block `block`, the input channels `chans` of the
    /// reduction. Its sums so far are in `partial` (`[N][width]`) unless
    /// `chans` starts at 0, and go back there.
    #[inline(always)]
    fn tile<V: Row, const B: usize, const N: usize>(
        &self,
        block: usize,
        xoff: &[usize],
        chans: std::ops::Range<usize>,
        partial: &mut [f32],
    ) {
        let w = self.w;
        let at = chans.start * self.input.plane;
        let xoff: [usize; N] = std::array::from_fn(|i| xoff[i] + at);
        let steps = self.taps.len();
        let wblock = &w.data[block * w.k * w.width..][..w.k * w.width];
        let wpass = &wblock[chans.start * steps * w.width..chans.end * steps * w.width];
        debug_assert_eq!(V::WIDTH * B, w.width);
        let width = w.width;
        let partial = &mut partial[..N * width];
        // SAFETY: every read lies inside the input (the padded copy covers
        // every window: `pad`), the pass's weights and `partial` (checked
        // lengths); the kernel's lanes run on this CPU (see `block`).
        unsafe {
            let mut acc = [[V::splat(0.0); B]; N];
            if chans.start > 0 {
                for (i, a) in acc.iter_mut().enumerate() {
                    for (b, v) in a.iter_mut().enumerate() {
                        *v = V::load(partial[i * width + b * V::WIDTH..].as_ptr());
                    }
                }
            }
            let acc = kernel::<V, B, N>(
                acc,
                self.input.data.as_ptr(),
                &xoff,
                &self.taps,
                chans.len(),
                self.input.plane,
                wpass.as_ptr(),
            );
            for (i, a) in acc.iter().enumerate() {
                for (b, v) in a.iter().enumerate() {
                    v.store(partial[i * width + b * V::WIDTH..].as_mut_ptr());
                }
            }
        }
    }

    /// Moves the finished sums of pixels `r0..r1` (`buf[pixel - r0][channel
    /// in block]`) into the output planes of channel block `block`, 8x8
    /// at a time through a transposition, adding bias and residual and
    /// clamping on the way.
    ///
    /// # Safety
    /// The CPU must run `T`.
    #[inline(always)]
    unsafe fn finish<T: Lanes>(&self, block: usize, r0: usize, r1: usize, buf: &[f32]) {
        let w = self.w;
        let plane = self.win.out_plane();
        let (m, nb) = (w.mg * w.group, w.blocks());
        let (gi, bi) = (block / nb, block % nb);
        let oc0 = gi * w.mg + bi * w.width;
        let valid = w.width.min(w.mg - bi * w.width);
        let clamp = self.clamp.map(|(lo, hi)| (T::splat(lo), T::splat(hi)));
        let mut p = r0;
        while p < r1 {
            // The run's pixels in one batch item: consecutive in its planes.
            let (item, q) = (p / plane, p % plane);
            let seg = (r1 - p).min(plane - q);
            for j0 in (0..seg).step_by(LANES) {
                let np = (seg - j0).min(LANES);
                for o0 in (0..valid).step_by(LANES) {
                    let mut rows = [T::splat(0.0); LANES];
                    for (j, row) in rows.iter_mut().enumerate().take(np) {
                        let src = &buf[(p - r0 + j0 + j) * w.width + o0..][..LANES];
                        *row = T::load(src.as_ptr());
                    }
                    T::transpose8(&mut rows);
                    for (c, &row) in rows.iter().enumerate().take(valid - o0) {
                        let ch = oc0 + o0 + c;
                        let at = (item * m + ch) * plane + q + j0;
                        let mut v = row;
                        if let Some(b) = self.bias {
                            v = T::add(v, T::splat(b[ch]));
                        }
                        if let Some(r) = self.residual {
                            v = T::add(v, T::load_n(r[at..at + np].as_ptr(), np));
                        }
                        if let Some((lo, hi)) = clamp {
                            v = v.clamp(lo, hi);
                        }
                        // SAFETY: `at + np` <= the output's length (item < n,
                        // channel < M, pixels in the plane); this task alone
                        // writes these (channel, pixel) positions.
                        v.store_n(self.y.0.add(at), np);
                    }
                }
            }
            p += seg;
        }
    }
}

/// Hints the CPU to fetch the 64-byte lines `lines` of the floats at `p`
/// into L2. Only a hint: the addresses need not be valid.
#[inline(always)]
fn prefetch_lines(p: *const f32, lines: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for l in lines {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // SAFETY: a prefetch never faults and reads nothing architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(l * 16) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, lines);
}

/// `N` pixels x `B` vectors of channels, `acc` plus the reduction over
/// `cg` input channels: for each channel and tap, `B` weight vectors times
/// one broadcast input value per pixel.
///
/// # Safety
/// `x + xoff[i] + ch * cstride + tap` must be readable for every pixel
/// `i`, channel `ch < cg` and tap of `taps`; `w` must hold `cg *
/// taps.len()` steps of `B * V::WIDTH` floats; the CPU must run `V`.
#[inline(always)]
unsafe fn kernel<V: Row, const B: usize, const N: usize>(
    mut acc: [[V; B]; N],
    x: *const f32,
    xoff: &[usize; N],
    taps: &[usize],
    cg: usize,
    cstride: usize,
    w: *const f32,
) -> [[V; B]; N] {
    let mut wp = w;
    let mut px: [*const f32; N] = std::array::from_fn(|i| x.add(xoff[i]));
    for _ in 0..cg {
        for &t in taps {
            let wv: [V; B] = std::array::from_fn(|b| V::load(wp.add(b * V::WIDTH)));
            for i in 0..N {
                let xv = V::splat(*px[i].add(t));
                for b in 0..B {
                    acc[i][b] = V::mul_add(xv, wv[b], acc[i][b]);
                }
            }
            wp = wp.add(B * V::WIDTH);
        }
        for p in &mut px {
            *p = p.add(cstride);
        }
    }
    acc
}

//! Fast f32 convolution (`Conv` and `FusedConv`, 1-D and 2-D).
//!
//! The window geometry (output size, begin/end padding from explicit pads or
//! `auto_pad`) comes from the reference's [`window_axes`], so both paths
//! agree on every shape; a 1-D convolution is run as a 2-D one of height 1.
//! Three paths, tried in order:
//!
//! * **depthwise** (`group == C == M`): a direct loop per (batch, channel)
//!   plane and output row, accumulating one kernel tap at a time over the
//!   whole output row (`out[ow] += w * x[ow * stride + offset]`), with the
//!   valid column range of each tap precomputed so the inner loop has no
//!   padding tests and, at stride 1, is a plain slice FMA the compiler
//!   vectorizes;
//! * **pointwise** (1x1 kernel, stride 1, no padding): for every batch item
//!   and group, one GEMM straight on the input, `Y[M, H*W] = W[M, C] ·
//!   X[C, H*W]`;
//! * **general**: im2col into a scratch matrix `[C/G * kh * kw, OH * OW]`
//!   (zeros where a tap reads padding), then the same GEMM.
//!
//! Bias, the FusedConv residual and activation are fused: into the GEMM
//! epilogue, or applied per plane right after the depthwise loop. Anything
//! else (3-D convolution, inputs that do not fit the attributes, a residual
//! that broadcasts) returns `Ok(false)` and runs on the reference kernel,
//! which also produces the error messages for invalid nodes.

use rayon::prelude::*;

use super::gemm::{gemm, pack_a, ASrc, BSrc, Epilogue, PackB, PackedA};
use super::{ops, CpuCtx, Prepacked, View, ViewMut};
use crate::ir::{Activation, ConvAttrs, Op};
use crate::kernels::reference::conv::{window_axes, Axis};
use crate::Result;

/// Elements of output below which a kernel stays on one thread.
const PAR_MIN_WORK: usize = 1 << 14;

/// Runs Conv / FusedConv on the fast path; `Ok(false)` when not handled.
pub fn run(op: &Op, inputs: &[Option<View>], outputs: &mut [ViewMut], cx: &CpuCtx) -> Result<bool> {
    run_packed(op, inputs, outputs, None, cx)
}

/// Packs a constant weight of a convolution that runs through GEMM, one
/// packed A operand `[M/G, C/G * kh * kw]` per group (see
/// [`super::prepack`]); depthwise weights are used as they are.
pub fn prepack(op: &Op, inputs: &[Option<View>], cx: &CpuCtx) -> Option<Prepacked> {
    let attrs = match op {
        Op::Conv(a) | Op::FusedConv { conv: a, .. } => a,
        _ => return None,
    };
    let w = inputs.get(1).copied().flatten()?;
    let (m, group) = (*w.shape.first()?, attrs.group);
    if w.shape.len() < 3 || group == 0 || m % group != 0 || m == 0 {
        return None;
    }
    if w.data.len() != w.shape.iter().product::<usize>() {
        return None;
    }
    if w.shape[1] == 1 && group == m {
        return None;
    }
    let (mg, k) = (m / group, w.data.len() / m);
    let packs = (0..group)
        .map(|gi| {
            let wg = &w.data[gi * mg * k..(gi + 1) * mg * k];
            pack_a(mg, k, wg, k, false, cx.features)
        })
        .collect();
    Some(Prepacked::ConvWeights(packs))
}

/// [`run`] with the weights packed by [`prepack`] (ignored when they do
/// not fit).
pub fn run_packed(
    op: &Op,
    inputs: &[Option<View>],
    outputs: &mut [ViewMut],
    packed: Option<&Prepacked>,
    cx: &CpuCtx,
) -> Result<bool> {
    let (attrs, act, fused) = match op {
        Op::Conv(a) => (a, None, false),
        Op::FusedConv { conv, act } => (conv, act.as_ref(), true),
        _ => return Ok(false),
    };
    let [out] = outputs else { return Ok(false) };
    let (Some(Some(x)), Some(Some(w))) = (inputs.first(), inputs.get(1)) else {
        return Ok(false);
    };
    let bias = inputs.get(2).copied().flatten();
    let residual = if fused {
        inputs.get(3).copied().flatten()
    } else {
        None
    };
    if inputs.len() > if fused { 4 } else { 3 } {
        return Ok(false);
    }
    let Some(g) = ConvGeom::new(attrs, x, w, out.shape) else {
        return Ok(false);
    };
    if let Some(b) = bias {
        if b.shape != [g.m] || b.data.len() != g.m {
            return Ok(false);
        }
    }
    if let Some(r) = residual {
        // Only a residual of the output's own shape; a broadcasting one goes
        // to the reference.
        if r.shape != out.shape || r.data.len() != out.data.len() {
            return Ok(false);
        }
    }
    if out.data.len() != g.n * g.m * g.win.out_plane() {
        return Ok(false);
    }
    let fused = Fused {
        bias: bias.map(|b| b.data),
        residual: residual.map(|r| r.data),
        act,
    };
    if out.data.is_empty() {
        return Ok(true);
    }
    if g.cg == 0 {
        // No input channels: the output is the bias (and residual, activation).
        let plane = g.win.out_plane();
        for (i, p) in out.data.chunks_exact_mut(plane).enumerate() {
            let ch = i % g.m;
            p.fill(fused.bias.map_or(0.0, |b| b[ch]));
            finish_plane(&fused, i, plane, p, cx);
        }
        return Ok(true);
    }
    if g.group == g.c && g.m == g.c {
        depthwise(&g, x.data, w.data, &fused, out.data, cx);
    } else {
        let packed = match packed {
            Some(Prepacked::ConvWeights(p))
                if p.len() == g.group
                    && p.iter()
                        .all(|a| a.m() == g.mg && a.k() == g.cg * g.win.kh * g.win.kw) =>
            {
                Some(p.as_slice())
            }
            _ => None,
        };
        via_gemm(&g, x.data, w.data, packed, &fused, out.data, cx);
    }
    Ok(true)
}

/// Geometry of one 2-D sliding window over an `[H, W]` plane (a 1-D window
/// has `h == kh == oh == 1`). Shared with pooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Window2d {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub pad_bottom: usize,
    pub pad_right: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Window2d {
    /// From the per-axis geometry of one or two spatial axes.
    pub fn from_axes(axes: &[Axis]) -> Option<Window2d> {
        let unit = Axis {
            input: 1,
            kernel: 1,
            stride: 1,
            dilation: 1,
            pad_begin: 0,
            pad_end: 0,
            output: 1,
        };
        let (a, b) = match axes {
            [b] => (unit, *b),
            [a, b] => (*a, *b),
            _ => return None,
        };
        Some(Window2d {
            h: a.input,
            w: b.input,
            kh: a.kernel,
            kw: b.kernel,
            sh: a.stride,
            sw: b.stride,
            dh: a.dilation,
            dw: b.dilation,
            pad_top: a.pad_begin,
            pad_left: b.pad_begin,
            pad_bottom: a.pad_end,
            pad_right: b.pad_end,
            oh: a.output,
            ow: b.output,
        })
    }

    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// The input row that kernel row `ki` of output row `oh` reads, or
    /// `None` when it is padding.
    #[inline]
    pub fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        (oh * self.sh + ki * self.dh)
            .checked_sub(self.pad_top)
            .filter(|&r| r < self.h)
    }

    /// Output columns `lo..hi` whose kernel column `kj` reads inside the
    /// input; column `ow` reads input column `ow * sw + kj * dw - pad_left`,
    /// and the first of them (for `ow = lo`) is returned as well.
    #[inline]
    pub fn col_range(&self, kj: usize) -> (usize, usize, usize) {
        let off = kj * self.dw;
        // ow * sw + off >= pad_left
        let lo = if off >= self.pad_left {
            0
        } else {
            (self.pad_left - off).div_ceil(self.sw)
        };
        // ow * sw + off - pad_left <= w - 1
        let hi = if self.w + self.pad_left > off {
            ((self.w + self.pad_left - off - 1) / self.sw + 1).min(self.ow)
        } else {
            0
        };
        if lo >= hi {
            return (0, 0, 0);
        }
        (lo, hi, lo * self.sw + off - self.pad_left)
    }

    /// Kernel rows `ki` of output row `oh` that lie inside the padded input
    /// (`< h + pad_bottom`: what an average with padding counts), and of
    /// those, the ones inside the input.
    pub fn row_counts(&self, oh: usize) -> (usize, usize) {
        count_taps(
            oh,
            self.sh,
            self.dh,
            self.kh,
            self.pad_top,
            self.h,
            self.pad_bottom,
        )
    }

    /// Like [`Window2d::row_counts`] for output column `ow`.
    pub fn col_counts(&self, ow: usize) -> (usize, usize) {
        count_taps(
            ow,
            self.sw,
            self.dw,
            self.kw,
            self.pad_left,
            self.w,
            self.pad_right,
        )
    }
}

/// (taps inside the padded input, taps inside the input) of output `o` on
/// one axis.
fn count_taps(
    o: usize,
    s: usize,
    d: usize,
    k: usize,
    pb: usize,
    n: usize,
    pe: usize,
) -> (usize, usize) {
    let (mut padded, mut inside) = (0, 0);
    for ki in 0..k {
        let p = o * s + ki * d; // position in padded coordinates
        if p < n + pb + pe {
            padded += 1;
            if p >= pb && p - pb < n {
                inside += 1;
            }
        }
    }
    (padded, inside)
}

/// Checked shapes of one convolution.
#[derive(Debug)]
struct ConvGeom {
    n: usize,
    c: usize,
    m: usize,
    group: usize,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    mg: usize,
    win: Window2d,
}

impl ConvGeom {
    /// `None` when the shapes do not fit together or are not 1-D / 2-D.
    fn new(attrs: &ConvAttrs, x: &View, w: &View, out_shape: &[usize]) -> Option<ConvGeom> {
        let (xs, ws) = (x.shape, w.shape);
        if !(3..=4).contains(&xs.len()) || ws.len() != xs.len() {
            return None;
        }
        if x.data.len() != xs.iter().product::<usize>()
            || w.data.len() != ws.iter().product::<usize>()
        {
            return None;
        }
        let (n, c, m, group) = (xs[0], xs[1], ws[0], attrs.group);
        if group == 0 || c % group != 0 || m % group != 0 || ws[1] != c / group {
            return None;
        }
        if !attrs.kernel_shape.is_empty() && attrs.kernel_shape != ws[2..] {
            return None;
        }
        let axes = window_axes(
            "Conv",
            &xs[2..],
            &ws[2..],
            &attrs.strides,
            &attrs.dilations,
            &attrs.pads,
            attrs.auto_pad,
            false,
        )
        .ok()?;
        let win = Window2d::from_axes(&axes)?;
        let mut want = vec![n, m];
        want.extend(axes.iter().map(|a| a.output));
        if want != out_shape {
            return None;
        }
        Some(ConvGeom {
            n,
            c,
            m,
            group,
            cg: c / group,
            mg: m / group,
            win,
        })
    }
}

/// The epilogue of a convolution.
struct Fused<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    act: Option<&'a Activation>,
}

/// Residual and activation of output plane `i` (flat index batch * M +
/// channel), already holding the convolution plus bias.
fn finish_plane(f: &Fused, i: usize, plane: usize, p: &mut [f32], cx: &CpuCtx) {
    if let Some(r) = f.residual {
        for (y, &r) in p.iter_mut().zip(&r[i * plane..(i + 1) * plane]) {
            *y += r;
        }
    }
    if let Some(act) = f.act {
        ops::activation(act, p, cx.features.avx2_fma);
    }
}

/// Depthwise convolution: one (batch, channel) plane per task.
fn depthwise(g: &ConvGeom, x: &[f32], w: &[f32], f: &Fused, y: &mut [f32], cx: &CpuCtx) {
    let win = &g.win;
    let (in_plane, out_plane, k) = (win.in_plane(), win.out_plane(), win.kh * win.kw);
    let ranges: Vec<(usize, usize, usize)> = (0..win.kw).map(|kj| win.col_range(kj)).collect();
    let avx = cx.features.avx2_fma;
    let plane = |i: usize, p: &mut [f32]| {
        let ch = i % g.c;
        dw_plane(
            avx,
            win,
            &ranges,
            &x[i * in_plane..(i + 1) * in_plane],
            &w[ch * k..(ch + 1) * k],
            f.bias.map_or(0.0, |b| b[ch]),
            p,
        );
        finish_plane(f, i, out_plane, p, cx);
    };
    if cx.threads > 1 && y.len() >= PAR_MIN_WORK && g.n * g.c > 1 {
        cx.install(|| {
            y.par_chunks_mut(out_plane)
                .enumerate()
                .for_each(|(i, p)| plane(i, p))
        });
    } else {
        y.chunks_exact_mut(out_plane)
            .enumerate()
            .for_each(|(i, p)| plane(i, p));
    }
}

super::ops::multiversion!(
    /// One depthwise plane: `p[oh, ow] = bias + sum_{ki, kj} wk[ki, kj] *
    /// xp[in_row(oh, ki), ow * sw + kj * dw - pad_left]` over the taps
    /// inside the input.
    fn dw_plane(
        win: &Window2d,
        ranges: &[(usize, usize, usize)],
        xp: &[f32],
        wk: &[f32],
        bias: f32,
        p: &mut [f32],
    ) => dw_plane_impl
);

#[inline(always)]
fn dw_plane_impl(
    win: &Window2d,
    ranges: &[(usize, usize, usize)],
    xp: &[f32],
    wk: &[f32],
    bias: f32,
    p: &mut [f32],
) {
    for (oh, row) in p.chunks_exact_mut(win.ow).enumerate() {
        row.fill(bias);
        for ki in 0..win.kh {
            let Some(ih) = win.in_row(oh, ki) else {
                continue;
            };
            let xrow = &xp[ih * win.w..(ih + 1) * win.w];
            for (kj, &(lo, hi, start)) in ranges.iter().enumerate() {
                if lo == hi {
                    continue;
                }
                let wv = wk[ki * win.kw + kj];
                axpy_strided(wv, &xrow[start..], win.sw, &mut row[lo..hi]);
            }
        }
    }
}

/// `dst[i] += a * src[i * stride]`.
#[inline(always)]
fn axpy_strided(a: f32, src: &[f32], stride: usize, dst: &mut [f32]) {
    if stride == 1 {
        let n = dst.len();
        for (d, &s) in dst.iter_mut().zip(&src[..n]) {
            *d += a * s;
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
            *d += a * s;
        }
    }
}

/// Pointwise and general convolution through GEMM, per batch item and
/// group: `Y[M/G, OH*OW] = W[M/G, C/G*kh*kw] · cols`, where `cols` is the
/// input itself for a pointwise convolution and otherwise its im2col
/// matrix, which is never stored: the GEMM packs it block by block straight
/// from the input ([`Im2col`]).
fn via_gemm(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    packed: Option<&[PackedA]>,
    f: &Fused,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let win = &g.win;
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    let k = g.cg * win.kh * win.kw;
    let pointwise = win.kh == 1
        && win.kw == 1
        && win.sh == 1
        && win.sw == 1
        && win.pad_top == 0
        && win.pad_left == 0
        && win.oh == win.h
        && win.ow == win.w;
    let product = |ni: usize, gi: usize, y: &mut [f32], padded: &mut Vec<f32>| {
        let x0 = (ni * g.c + gi * g.cg) * in_plane;
        let xg = &x[x0..x0 + g.cg * in_plane];
        let cols;
        let b = if pointwise {
            BSrc::Raw {
                b: xg,
                ldb: out_plane,
                trans: false,
            }
        } else {
            cols = Im2col::new(win, g.cg, xg, padded, cx);
            BSrc::Gen(&cols)
        };
        let a = match packed {
            Some(p) => ASrc::Packed(&p[gi]),
            None => ASrc::Raw {
                a: &w[gi * g.mg * k..(gi + 1) * g.mg * k],
                lda: k,
                trans: false,
            },
        };
        let y0 = (ni * g.m + gi * g.mg) * out_plane;
        let ylen = g.mg * out_plane;
        let ep = Epilogue {
            bias_col: None,
            bias_row: f.bias.map(|bv| &bv[gi * g.mg..(gi + 1) * g.mg]),
            residual: f.residual.map(|r| &r[y0..y0 + ylen]),
            act: f.act,
        };
        let c = &mut y[y0..y0 + ylen];
        gemm(g.mg, out_plane, k, 1.0, a, b, c, out_plane, &ep, cx);
    };
    PADDED.with(|cell| {
        // A fresh buffer if this thread's is in use (never, in practice:
        // convolutions do not nest).
        let mut fresh = Vec::new();
        let mut guard = cell.try_borrow_mut();
        let padded = match guard.as_deref_mut() {
            Ok(v) => v,
            Err(_) => &mut fresh,
        };
        for ni in 0..g.n {
            for gi in 0..g.group {
                product(ni, gi, y, padded);
            }
        }
    });
}

thread_local! {
    /// The zero-padded input of the convolution being packed, reused so
    /// that steady-state runs do not allocate.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The im2col matrix of one (batch item, group) as a generated GEMM
/// operand: row `(c * kh + ki) * kw + kj`, column `oh * OW + ow` holds the
/// input value that tap (ki, kj) of output (oh, ow) reads in channel `c`, 0
/// on padding. It reads a zero-padded copy of the input, so that every tap
/// reads inside it and an im2col row is, along each output row, a plain
/// (strided) run of the padded input.
struct Im2col<'a> {
    win: &'a Window2d,
    /// The group's channels, `[C/G, hp, wp]`, zero-padded, with slack at
    /// the end for over-long vector copies.
    xp: &'a [f32],
    hp: usize,
    wp: usize,
}

/// Floats of slack after the padded input: a run copy may read one vector
/// past its end.
const PAD_SLACK: usize = 32;

impl<'a> Im2col<'a> {
    /// Copies `x` (`channels` planes of `h × w`) into `buf` with the zero
    /// borders the window reads.
    fn new(
        win: &'a Window2d,
        channels: usize,
        x: &[f32],
        buf: &'a mut Vec<f32>,
        cx: &CpuCtx,
    ) -> Im2col<'a> {
        // Padded extent along one axis: everything any output reads.
        let extent = |o: usize, s: usize, k: usize, d: usize, pad: usize, n: usize| {
            (pad + n).max((o - 1) * s + (k - 1) * d + 1)
        };
        let hp = extent(win.oh, win.sh, win.kh, win.dh, win.pad_top, win.h);
        let wp = extent(win.ow, win.sw, win.kw, win.dw, win.pad_left, win.w);
        let plane = hp * wp;
        let len = channels * plane + PAD_SLACK;
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        let dst = &mut buf[..len];
        let fill = |c: usize, p: &mut [f32]| {
            let xc = &x[c * win.in_plane()..(c + 1) * win.in_plane()];
            p[..win.pad_top * wp].fill(0.0);
            for (r, row) in p[win.pad_top * wp..].chunks_exact_mut(wp).enumerate() {
                if r < win.h {
                    row[..win.pad_left].fill(0.0);
                    row[win.pad_left..win.pad_left + win.w]
                        .copy_from_slice(&xc[r * win.w..(r + 1) * win.w]);
                    row[win.pad_left + win.w..].fill(0.0);
                } else {
                    row.fill(0.0);
                }
            }
        };
        let (planes, slack) = dst.split_at_mut(channels * plane);
        slack.fill(0.0);
        if cx.threads > 1 && planes.len() >= PAR_MIN_WORK && channels > 1 {
            cx.install(|| {
                planes
                    .par_chunks_mut(plane)
                    .enumerate()
                    .for_each(|(c, p)| fill(c, p))
            });
        } else {
            planes
                .chunks_exact_mut(plane)
                .enumerate()
                .for_each(|(c, p)| fill(c, p));
        }
        Im2col {
            win,
            xp: &buf[..len],
            hp,
            wp,
        }
    }

    /// Fills one panel row: `cnt` columns from output position (oh, ow) of
    /// the im2col row whose tap reads the padded input from `base`, zeros
    /// after them.
    #[inline(always)]
    fn panel_row(&self, base: usize, out: &mut [f32], cnt: usize, oh: usize, ow: usize) {
        let win = self.win;
        let (mut i, mut h, mut o) = (0, oh, ow);
        // One run per output row the panel touches.
        while i < cnt {
            let len = (win.ow - o).min(cnt - i);
            let s = base + h * win.sh * self.wp + o * win.sw;
            if win.sw == 1 {
                copy_run(&mut out[i..], &self.xp[s..], len);
            } else {
                for (d, v) in out[i..i + len]
                    .iter_mut()
                    .zip(self.xp[s..].iter().step_by(win.sw))
                {
                    *d = *v;
                }
            }
            i += len;
            (h, o) = (h + 1, 0);
        }
        if cnt < out.len() {
            out[cnt..].fill(0.0);
        }
    }
}

impl PackB for Im2col<'_> {
    fn pack(&self, dst: &mut [f32], nr: usize, p0: usize, kc: usize, j0: usize, nc: usize) {
        const CHUNK: usize = 256;
        let win = self.win;
        let taps = win.kh * win.kw;
        let panel_len = kc * nr;
        // Where each depth's tap starts reading in the padded input.
        let mut bases = [0usize; CHUNK];
        for d0 in (0..kc).step_by(CHUNK) {
            let depths = CHUNK.min(kc - d0);
            for (d, b) in bases[..depths].iter_mut().enumerate() {
                let p = p0 + d0 + d;
                let (c, tap) = (p / taps, p % taps);
                let (ki, kj) = (tap / win.kw, tap % win.kw);
                *b = c * self.hp * self.wp + ki * win.dh * self.wp + kj * win.dw;
            }
            // Panel by panel, so that the writes run through each panel in
            // order; (oh, ow) is the output position of its first column.
            let (mut oh, mut ow) = (j0 / win.ow, j0 % win.ow);
            for (q, jq) in (0..nc).step_by(nr).enumerate() {
                let cnt = nr.min(nc - jq);
                for (d, &base) in bases[..depths].iter().enumerate() {
                    let at = q * panel_len + (d0 + d) * nr;
                    self.panel_row(base, &mut dst[at..at + nr], cnt, oh, ow);
                }
                ow += cnt;
                oh += ow / win.ow;
                ow %= win.ow;
            }
        }
    }
}

/// Copies `len` values of `src` to `out` in 8-wide vector moves. The last
/// move may write past `len` while `out` has room (the caller writes those
/// positions afterwards) and read past it (`src` has [`PAD_SLACK`]).
#[inline(always)]
fn copy_run(out: &mut [f32], src: &[f32], len: usize) {
    const V: usize = 8;
    let mut t = 0;
    while t < len && t + V <= out.len() {
        let s: &[f32; V] = src[t..t + V].try_into().expect("a slice of length V");
        out[t..t + V].copy_from_slice(s);
        t += V;
    }
    while t < len {
        out[t] = src[t];
        t += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Features;
    use super::*;
    use crate::ir::{AutoPad, Tensor};
    use crate::kernels::reference::util::testing::random;

    /// What a test convolution looks like.
    #[derive(Clone, Debug)]
    struct Case {
        x: Vec<usize>,
        m: usize,
        k: Vec<usize>,
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<usize>,
        auto_pad: AutoPad,
        group: usize,
        bias: bool,
        residual: bool,
        act: Option<Activation>,
    }

    fn case(x: &[usize], m: usize, k: &[usize]) -> Case {
        let n = k.len();
        Case {
            x: x.to_vec(),
            m,
            k: k.to_vec(),
            strides: vec![1; n],
            dilations: vec![1; n],
            pads: vec![0; 2 * n],
            auto_pad: AutoPad::NotSet,
            group: 1,
            bias: false,
            residual: false,
            act: None,
        }
    }

    fn acts() -> Vec<Activation> {
        vec![
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 6.0 },
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            Activation::HardSwish,
            Activation::LeakyRelu { alpha: 0.1 },
            Activation::Gelu { tanh_approx: false },
            Activation::Gelu { tanh_approx: true },
        ]
    }

    /// Runs the case on the fast path with `cx` and on the reference, checks
    /// rtol 1e-4 / atol 1e-5, and returns the fast output.
    fn check_with(c: &Case, seed: u64, cx: &CpuCtx) -> Vec<f32> {
        let attrs = ConvAttrs {
            kernel_shape: c.k.clone(),
            strides: c.strides.clone(),
            dilations: c.dilations.clone(),
            pads: c.pads.clone(),
            auto_pad: c.auto_pad,
            group: c.group,
        };
        let x = random(&c.x, seed, 1.0);
        let mut ws = vec![c.m, c.x[1] / c.group];
        ws.extend(&c.k);
        let w = random(&ws, seed + 1, 1.0);
        let b = random(&[c.m], seed + 2, 1.0);
        let plain =
            crate::kernels::reference::eval(&Op::Conv(attrs.clone()), &[Some(&x), Some(&w)], 1)
                .unwrap()
                .remove(0);
        let r = random(plain.shape(), seed + 3, 1.0);
        let op = if c.residual || c.act.is_some() {
            Op::FusedConv {
                conv: attrs,
                act: c.act.clone(),
            }
        } else {
            Op::Conv(attrs)
        };
        let mut ins: Vec<Option<&Tensor>> = vec![Some(&x), Some(&w)];
        if c.bias || c.residual {
            ins.push(c.bias.then_some(&b));
        }
        if c.residual {
            ins.push(Some(&r));
        }
        let want = crate::kernels::reference::eval(&op, &ins, 1)
            .unwrap()
            .remove(0);
        let views: Vec<Option<View>> = ins
            .iter()
            .map(|t| {
                t.map(|t| View {
                    shape: t.shape(),
                    data: t.as_f32().unwrap(),
                })
            })
            .collect();
        let mut got = vec![f32::NAN; want.numel()];
        let mut outs = [ViewMut {
            shape: want.shape(),
            data: &mut got,
        }];
        assert!(
            run(&op, &views, &mut outs, cx).unwrap(),
            "{c:?}: not handled"
        );
        // With the weight treated as a constant and prepacked: the same bits.
        let consts = [None, views[1]];
        if let Some(packed) = prepack(&op, &consts, cx) {
            let mut again = vec![f32::NAN; want.numel()];
            let mut outs = [ViewMut {
                shape: want.shape(),
                data: &mut again,
            }];
            assert!(run_packed(&op, &views, &mut outs, Some(&packed), cx).unwrap());
            assert!(
                again
                    .iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{c:?}: prepacked weights changed the result"
            );
        }
        for (i, (g, w)) in got.iter().zip(want.as_f32().unwrap()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{c:?} at {i}: {g} vs {w}"
            );
        }
        got
    }

    /// Checks the case single-threaded (portable and detected features) and
    /// on two threads, which must give the single-threaded result exactly.
    fn check(c: &Case, seed: u64) {
        let one = check_with(c, seed, &CpuCtx::single(Features::detect()));
        check_with(c, seed, &CpuCtx::single(Features::portable()));
        let two = check_with(c, seed, &CpuCtx::new(2).unwrap());
        assert_eq!(one, two, "{c:?}: 1 vs 2 threads");
    }

    #[test]
    fn general_convolutions() {
        let mut c = case(&[2, 3, 7, 11], 5, &[3, 3]);
        check(&c, 1);
        c.pads = vec![1, 2, 0, 1];
        c.bias = true;
        check(&c, 2);
        c.strides = vec![2, 2];
        check(&c, 3);
        c.dilations = vec![2, 1];
        check(&c, 4);
        c.strides = vec![1, 3];
        c.dilations = vec![1, 2];
        check(&c, 5);
        // Kernel larger than the input along one axis, made valid by pads.
        let mut c = case(&[1, 2, 2, 5], 3, &[5, 2]);
        c.pads = vec![2, 0, 1, 1];
        check(&c, 6);
        // Size-1 everything.
        check(&case(&[1, 1, 1, 1], 1, &[1, 1]), 7);
        // A bigger one that takes the parallel paths.
        let mut c = case(&[1, 16, 23, 29], 13, &[3, 3]);
        c.pads = vec![1; 4];
        c.bias = true;
        check(&c, 8);
        // Deep enough for two depth blocks (K = 360), output rows that
        // straddle the packed panels, and a fused residual and activation.
        let mut c = case(&[1, 40, 19, 21], 7, &[3, 3]);
        c.pads = vec![1, 0, 1, 2];
        c.strides = vec![2, 1];
        c.residual = true;
        c.act = Some(Activation::Relu);
        check(&c, 9);
    }

    #[test]
    fn grouped_depthwise_and_pointwise() {
        // Groups.
        let mut c = case(&[2, 6, 9, 7], 4, &[3, 2]);
        c.group = 2;
        c.bias = true;
        c.pads = vec![1, 0, 1, 1];
        check(&c, 10);
        // Depthwise, every stride/dilation/pad flavour.
        for (i, (s, d, p)) in [
            (1, 1, [1, 1, 1, 1]),
            (2, 1, [1, 1, 1, 1]),
            (1, 2, [2, 2, 2, 2]),
            (2, 2, [0, 1, 2, 0]),
            (3, 1, [0, 0, 0, 0]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = case(&[2, 5, 13, 11], 5, &[3, 3]);
            c.group = 5;
            c.strides = vec![s, s];
            c.dilations = vec![d, d];
            c.pads = p.to_vec();
            c.bias = i % 2 == 0;
            check(&c, 20 + i as u64);
        }
        // Depthwise with a 5x5 kernel, big enough for the parallel path.
        let mut c = case(&[1, 8, 40, 37], 8, &[5, 5]);
        c.group = 8;
        c.pads = vec![2; 4];
        c.bias = true;
        check(&c, 30);
        // Depth multiplier 2 (group == C, M == 2C) goes through GEMM.
        let mut c = case(&[1, 3, 6, 6], 6, &[3, 3]);
        c.group = 3;
        check(&c, 31);
        // 1x1 pointwise, with batch and groups; 1x1 with stride or pads
        // (im2col).
        let mut c = case(&[3, 8, 5, 7], 12, &[1, 1]);
        c.bias = true;
        check(&c, 32);
        c.group = 4;
        check(&c, 33);
        c.group = 1;
        c.strides = vec![2, 2];
        check(&c, 34);
        c.strides = vec![1, 1];
        c.pads = vec![1, 0, 0, 1];
        check(&c, 35);
    }

    #[test]
    fn one_d_auto_pad_residual_and_activations() {
        let mut c = case(&[2, 4, 17], 3, &[3]);
        c.bias = true;
        check(&c, 40);
        c.strides = vec![2];
        c.pads = vec![2, 1];
        c.dilations = vec![2];
        check(&c, 41);
        let mut dw = case(&[1, 4, 19], 4, &[5]);
        dw.group = 4;
        dw.pads = vec![2, 2];
        check(&dw, 42);
        for (i, ap) in [AutoPad::SameUpper, AutoPad::SameLower, AutoPad::Valid]
            .into_iter()
            .enumerate()
        {
            let mut c = case(&[1, 3, 8, 9], 2, &[2, 3]);
            c.auto_pad = ap;
            c.strides = vec![2, 2];
            c.pads = vec![];
            check(&c, 43 + i as u64);
            let mut d = case(&[1, 3, 8, 9], 3, &[4, 3]);
            d.group = 3;
            d.auto_pad = ap;
            d.pads = vec![];
            check(&d, 46 + i as u64);
        }
        // Residual and every activation on the three paths.
        for (i, act) in acts().into_iter().map(Some).chain([None]).enumerate() {
            let seed = 50 + 3 * i as u64;
            let mut g = case(&[2, 4, 6, 5], 3, &[3, 3]);
            g.pads = vec![1; 4];
            g.bias = i % 2 == 0;
            g.residual = true;
            g.act = act.clone();
            check(&g, seed);
            let mut d = case(&[1, 6, 7, 5], 6, &[3, 3]);
            d.group = 6;
            d.pads = vec![1; 4];
            d.residual = i % 3 != 0;
            d.bias = true;
            d.act = act.clone();
            check(&d, seed + 1);
            let mut p = case(&[1, 5, 3, 4], 7, &[1, 1]);
            p.residual = true;
            p.bias = true;
            p.act = act;
            check(&p, seed + 2);
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let cx = CpuCtx::single(Features::portable());
        let attrs = ConvAttrs {
            kernel_shape: vec![1, 1, 1],
            strides: vec![],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let data = [1.0f32; 8];
        let v = |shape: &'static [usize]| {
            Some(View {
                shape,
                data: &data[..shape.iter().product::<usize>()],
            })
        };
        let mut buf = vec![0f32; 8];
        // 3-D.
        let mut outs = [ViewMut {
            shape: &[1, 1, 2, 2, 2],
            data: &mut buf,
        }];
        let op = Op::Conv(attrs.clone());
        assert!(!run(
            &op,
            &[v(&[1, 1, 2, 2, 2]), v(&[1, 1, 1, 1, 1])],
            &mut outs,
            &cx
        )
        .unwrap());
        // Wrong channel count in W, and a wrong output shape.
        let op = Op::Conv(ConvAttrs {
            kernel_shape: vec![],
            ..attrs
        });
        let mut outs = [ViewMut {
            shape: &[1, 1, 2, 2],
            data: &mut buf[..4],
        }];
        assert!(!run(&op, &[v(&[1, 2, 2, 2]), v(&[1, 1, 1, 1])], &mut outs, &cx).unwrap());
        let mut outs = [ViewMut {
            shape: &[1, 1, 1, 4],
            data: &mut buf[..4],
        }];
        assert!(!run(&op, &[v(&[1, 1, 2, 2]), v(&[1, 1, 1, 1])], &mut outs, &cx).unwrap());
        // A per-channel residual (broadcasting) goes to the reference.
        let fused = Op::FusedConv {
            conv: match op {
                Op::Conv(a) => a,
                _ => unreachable!(),
            },
            act: None,
        };
        let mut outs = [ViewMut {
            shape: &[1, 1, 2, 2],
            data: &mut buf[..4],
        }];
        assert!(!run(
            &fused,
            &[v(&[1, 1, 2, 2]), v(&[1, 1, 1, 1]), None, v(&[1, 1, 1, 1])],
            &mut outs,
            &cx
        )
        .unwrap());
        // Missing weight; not a conv.
        assert!(!run(&fused, &[v(&[1, 1, 2, 2])], &mut outs, &cx).unwrap());
        assert!(!run(&Op::MatMul, &[], &mut outs, &cx).unwrap());
    }

    #[test]
    fn col_range_covers_exactly_the_valid_columns() {
        for (w, k, s, d, pl, pr) in [
            (7, 3, 1, 1, 1, 1),
            (5, 3, 2, 2, 3, 0),
            (4, 5, 3, 1, 2, 2),
            (1, 1, 1, 1, 0, 0),
        ] {
            let ow = (w + pl + pr - (k - 1) * d - 1) / s + 1;
            let win = Window2d {
                h: 1,
                w,
                kh: 1,
                kw: k,
                sh: 1,
                sw: s,
                dh: 1,
                dw: d,
                pad_top: 0,
                pad_left: pl,
                pad_bottom: 0,
                pad_right: pr,
                oh: 1,
                ow,
            };
            for kj in 0..k {
                let (lo, hi, start) = win.col_range(kj);
                for o in 0..ow {
                    let p = (o * s + kj * d) as isize - pl as isize;
                    let valid = p >= 0 && p < w as isize;
                    assert_eq!(
                        valid,
                        (lo..hi).contains(&o),
                        "{w} {k} {s} {d} {pl} kj={kj} o={o}"
                    );
                    if o == lo && valid {
                        assert_eq!(p as usize, start);
                    }
                }
            }
        }
    }
}

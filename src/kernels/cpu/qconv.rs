//! Exact int8 2-D convolution (NCHW, any strides, pads, dilations and
//! groups) on u8 activations and i8 weights, with the epilogues of
//! [`super::qgemm`]: raw i32, dequantized f32 (scale, bias per output
//! channel, NCHW residual, activation) or requantized u8.
//!
//! Each (batch item, group) is one int8 GEMM with the weights on the left:
//! `Y[M/G, P] = W[M/G, K] · cols[K, P]` with `K = C/G · kh · kw`
//! ([`qgemm_wx`]): the constant weights are packed once ([`QPackedA`]),
//! the pixels are the micro-kernel's vector lanes (the im2col rows pack
//! into its panels by interleaving contiguous bytes), and the output
//! planes are stored row by row straight from the tiles. The im2col
//! columns (`[K, P]` u8) are padded with the activations' **zero point**,
//! so a padding tap contributes `(za − za) · w = 0` exactly; each row is a
//! shifted copy of an input plane (at stride 2, of one of its four phase
//! planes, split once), one contiguous copy when the output rows are as
//! wide as the plane's. A 1x1, stride-1, unpadded convolution reads the
//! input in place. With a multiple of 4 input channels a group, the depth
//! runs in channel quads (four channels of one tap side by side, the
//! weights reordered at packing), and at stride 1 the AVX512-VNNI
//! panels are copied from the input interleaved four channels a pixel
//! once, one 64-byte read per sixteen pixels and tap. On AVX512-VNNI a
//! convolution of one group with a multiple of 4 input channels and a
//! kernel wider than 1x1 runs instead with the output channels in the
//! vector lanes and the input read in place ([`pack_conv_indirect`],
//! `qconv/indirect.rs`: no im2col, no lanes wasted on small planes); the
//! tuner's `conv=gemm` keeps the GEMM. Convolutions
//! with one input channel per group (depthwise) run a direct kernel
//! instead: on AVX512-VNNI with channels in the vector lanes
//! (`qconv/dw_lanes.rs`: sixteen channels interleaved, one `vpdpbusd` per
//! kernel row and four taps), elsewhere plane by plane (`qconv/dw.rs`,
//! or exact f32 sums where AVX2 makes them faster): each input row is expanded once into
//! 4-tap words of u8 inputs (padding read as the zero point), and a kernel
//! row's contribution to 16 (AVX512-VNNI) or 8 (AVX-VNNI, AVX2
//! `vpmaddwd`) outputs is one multiply-add of such words by the four
//! weights, the zero point folded into the start value `−za · Σ w`; the
//! planes go to threads a few channels per task. Both are exact, so every
//! path and thread count gives the same accumulators, and the same epilogue
//! code order as the GEMM.

use std::cell::RefCell;
use std::ops::Range;

mod dw;
mod dw_lanes;
mod indirect;

use super::gemm::with_buf;
use super::qgemm::{
    aligned, qgemm_wx, qgemm_wx_filled, reads_panels, QEpilogue, QMatX, QOut, QPackedA,
};
#[cfg(target_arch = "x86_64")]
use super::qgemm::{checked_out, Finish};
use super::qsparse::{qspmm_wx, QCsr};
use super::{CpuCtx, Features};

thread_local! {
    /// The im2col columns of the product running on this thread.
    static COLS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Four im2col rows on their way into panels ([`Im2col::panels`]).
    static FOUR_ROWS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The phase planes of a stride-2 im2col running on this thread.
    static PHASES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The quad planes of an im2col running on this thread
    /// ([`Im2col::quad_planes`]).
    static QUAD_PLANES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Output elements below which planes are not spread over threads.
const PAR_MIN_WORK: usize = 1 << 14;

/// Geometry of a 2-D convolution window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QConvGeom {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// `[top, left, bottom, right]` (ONNX's begins, then ends).
    pub pads: [usize; 4],
    pub group: usize,
}

impl QConvGeom {
    /// The window of this geometry over an `h × w` input with an `oh × ow`
    /// output (from [`QConvGeom::out_hw`]).
    fn window(
        &self,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> super::geometry::Window2d {
        super::geometry::Window2d {
            h,
            w,
            kh: self.kernel[0],
            kw: self.kernel[1],
            sh: self.strides[0],
            sw: self.strides[1],
            dh: self.dilations[0],
            dw: self.dilations[1],
            pad_top: self.pads[0],
            pad_left: self.pads[1],
            pad_bottom: self.pads[2],
            pad_right: self.pads[3],
            oh,
            ow,
        }
    }

    /// Output height and width for an `h × w` input; None when the
    /// (dilated) kernel does not fit in the padded input or a stride or
    /// dilation is 0.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let axis = |len: usize, a: usize| {
            let (k, s, d) = (self.kernel[a], self.strides[a], self.dilations[a]);
            let padded = len + self.pads[a] + self.pads[a + 2];
            let span = k.checked_sub(1)? * d + 1;
            if s == 0 || d == 0 || padded < span {
                return None;
            }
            Some((padded - span) / s + 1)
        };
        Some((axis(h, 0)?, axis(w, 1)?))
    }
}

/// Convolution weights `[M, C/G, kh, kw]` packed once for [`qconv2d`].
#[derive(Clone, Debug)]
pub struct QPackedConv {
    m: usize,
    /// Input channels per group.
    cg: usize,
    kernel: [usize; 2],
    group: usize,
    /// The depth runs in channel quads ([`channel_quads`]): `k = ((c / 4 ·
    /// kh + ki) · kw + kj) · 4 + c % 4`, four channels of one tap side by
    /// side; else `k = (c · kh + ki) · kw + kj`.
    quads: bool,
    kind: Kind,
}

/// Whether a dense pack orders its depth in channel quads: `cg` a
/// multiple of 4 and a kernel wider than 1x1. Then one depth group of
/// the AVX512-VNNI kernel (four depths) is four channels at one tap, and
/// with the input interleaved four channels a pixel ([`Im2col`]'s quad
/// planes) a group of sixteen output pixels is one 64-byte read (two or
/// more across output rows), where the plain order needs four shifted
/// rows and a byte interleave.
fn channel_quads(cg: usize, kernel: [usize; 2]) -> bool {
    cg.is_multiple_of(4) && kernel[0] * kernel[1] > 1
}

#[derive(Clone, Debug)]
enum Kind {
    /// One input channel per group: the weights as they are, `[M, kh·kw]`,
    /// as f32 for the exact f32 path (`dw::planes_via_f32`), and as the
    /// lane kernel's vectors (`dw_lanes`).
    Direct(Vec<i8>, Vec<f32>, dw_lanes::LaneWeights),
    /// One packed left operand (`W`, `M/G × K`) per group.
    Gemm(Vec<QPackedA>),
    /// One sparse left operand per group ([`super::qsparse`]): pruned
    /// weights, on the same im2col columns.
    Sparse(Vec<QCsr>),
    /// Output channels in the vector lanes, the input read in place
    /// (`qconv/indirect.rs`): one group, AVX512-VNNI.
    #[cfg(target_arch = "x86_64")]
    Indirect(indirect::IndirectWeights),
}

impl QPackedConv {
    /// Output channels.
    pub fn m(&self) -> usize {
        self.m
    }
    /// Whether the direct (depthwise) loop runs this convolution.
    pub fn is_direct(&self) -> bool {
        matches!(self.kind, Kind::Direct(..))
    }
    /// Whether the sparse kernel runs this convolution.
    pub fn is_sparse(&self) -> bool {
        matches!(self.kind, Kind::Sparse(..))
    }
    /// Whether the output-channel-lanes kernel on the input in place runs
    /// this convolution ([`pack_conv_indirect`]).
    pub fn is_indirect(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.kind, Kind::Indirect(..)) {
            return true;
        }
        false
    }
    /// The packed weights of each group (empty for the direct loop, the
    /// sparse and the indirect kernels).
    pub fn packs(&self) -> &[QPackedA] {
        match &self.kind {
            Kind::Gemm(v) => v,
            _ => &[],
        }
    }
}

/// Packs i8 convolution weights of shape `w_shape = [M, C/G, kh, kw]`
/// (row-major, symmetric) for the kernels `features` select. None when the
/// shape is inconsistent (`M` not a multiple of `group`, `w` of the wrong
/// length, a zero dimension) or `C/G · kh · kw` exceeds
/// [`super::qgemm::MAX_K`] (keep f32 then).
pub fn pack_conv(
    w: &[i8],
    w_shape: [usize; 4],
    group: usize,
    features: Features,
) -> Option<QPackedConv> {
    let [m, cg, kh, kw] = w_shape;
    if group == 0 || m == 0 || cg == 0 || kh == 0 || kw == 0 || m % group != 0 {
        return None;
    }
    if w.len() != m * cg * kh * kw {
        return None;
    }
    let k = cg * kh * kw;
    if k > super::qgemm::MAX_K {
        return None;
    }
    let quads = cg > 1 && channel_quads(cg, [kh, kw]);
    let kind = if cg == 1 {
        Kind::Direct(
            w.to_vec(),
            w.iter().map(|&v| v as f32).collect(),
            dw_lanes::LaneWeights::new(w, m, [kh, kw]),
        )
    } else {
        let mg = m / group;
        let packs = (0..group)
            .map(|g| {
                let wg = &w[g * mg * k..(g + 1) * mg * k];
                if quads {
                    QPackedA::new(mg, k, &in_channel_quads(wg, k, kh * kw), features)
                } else {
                    QPackedA::new(mg, k, wg, features)
                }
            })
            .collect::<Option<Vec<_>>>()?;
        Kind::Gemm(packs)
    };
    Some(QPackedConv {
        m,
        cg,
        kernel: [kh, kw],
        group,
        quads,
        kind,
    })
}

/// Rows of `k = C · taps` weights (depth `c · taps + t`) in channel-quad
/// depth order: depth (c, t) goes to `(c / 4 · taps + t) · 4 + c % 4`.
fn in_channel_quads(w: &[i8], k: usize, taps: usize) -> Vec<i8> {
    let mut out = vec![0i8; w.len()];
    for (row, dst) in w.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        for (i, &v) in row.iter().enumerate() {
            let (c, t) = (i / taps, i % taps);
            dst[((c / 4) * taps + t) * 4 + c % 4] = v;
        }
    }
    out
}

/// The padded planes' `(hp, wp)` an `oh × ow` output of the indirect
/// kernel reads: `(oh − 1) · sh + (kh − 1) · dh + 1` rows, and columns
/// alike (at most the padded input's).
fn indirect_planes(geom: &QConvGeom, (oh, ow): (usize, usize)) -> (usize, usize) {
    let ([kh, kw], [sh, sw], [dh, dw]) = (geom.kernel, geom.strides, geom.dilations);
    (
        (oh - 1) * sh + (kh - 1) * dh + 1,
        (ow - 1) * sw + (kw - 1) * dw + 1,
    )
}

/// Whether the indirect kernel (`qconv/indirect.rs`: output channels in
/// the vector lanes, the input read in place through padded quad planes,
/// nothing packed per run) runs weights of `w_shape` on `h × w` inputs:
/// one group, a multiple of 4 input channels, a kernel wider than 1x1, on
/// AVX512-VNNI, and padded planes no larger than 4x the input or the
/// im2col the GEMM would make (huge pads keep the GEMM).
pub fn indirect_applies(
    w_shape: [usize; 4],
    geom: &QConvGeom,
    (h, wd): (usize, usize),
    features: Features,
) -> bool {
    let [m, cg, kh, kw] = w_shape;
    let fits = || {
        let (oh, ow) = geom.out_hw(h, wd).filter(|&(oh, ow)| oh > 0 && ow > 0)?;
        let (hp, wp) = indirect_planes(geom, (oh, ow));
        let planes = cg.checked_mul(hp)?.checked_mul(wp)?;
        let bound = 4 * (cg * h * wd).max(cg * kh * kw * oh * ow);
        Some(planes <= bound.min(u32::MAX as usize))
    };
    cfg!(target_arch = "x86_64")
        && features.avx512vnni
        && geom.group == 1
        && channel_quads(cg, [kh, kw])
        && geom.kernel == [kh, kw]
        && m > 0
        && cg * kh * kw <= super::qgemm::MAX_K
        && fits() == Some(true)
}

/// [`pack_conv`] for the indirect kernel; None where it does not apply
/// ([`indirect_applies`]) or the weights do not have `w_shape`.
pub fn pack_conv_indirect(
    w: &[i8],
    w_shape: [usize; 4],
    geom: &QConvGeom,
    hw: (usize, usize),
    features: Features,
) -> Option<QPackedConv> {
    let [m, cg, kh, kw] = w_shape;
    let k = cg * kh * kw;
    if !indirect_applies(w_shape, geom, hw, features) || w.len() != m * k {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let iw = indirect::IndirectWeights::new(&in_channel_quads(w, k, kh * kw), m, k);
        Some(QPackedConv {
            m,
            cg,
            kernel: [kh, kw],
            group: 1,
            quads: true,
            kind: Kind::Indirect(iw),
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// [`pack_conv`] for the sparse kernel ([`super::qsparse`]): pruned
/// weights of a convolution with more than one input channel per group.
/// None where [`pack_conv`] gives None, and for depthwise weights (the
/// direct loop runs them).
pub fn pack_conv_sparse(
    w: &[i8],
    w_shape: [usize; 4],
    group: usize,
    features: Features,
) -> Option<QPackedConv> {
    let dense = pack_conv(w, w_shape, group, features)?;
    if dense.is_direct() {
        return None;
    }
    let [m, cg, kh, kw] = w_shape;
    let (mg, k) = (m / group, cg * kh * kw);
    let packs = (0..group)
        .map(|g| super::qsparse::prepack(&w[g * mg * k..(g + 1) * mg * k], mg, k, features))
        .collect::<Option<Vec<_>>>()?;
    Some(QPackedConv {
        kind: Kind::Sparse(packs),
        quads: false,
        ..dense
    })
}

/// `Y = conv(X, W)` through `out`'s epilogue: `x` is u8 NCHW of shape
/// `x_shape` with zero point `x_zp`, `w` packed by [`pack_conv`], and the
/// output (and any residual) is NCHW `[N, M, OH, OW]` with `(OH, OW)` from
/// [`QConvGeom::out_hw`]. Per-channel scales and the bias have M elements.
///
/// # Panics
/// When the shapes do not agree (input channels, kernel size, group, the
/// geometry does not fit, slices too short, scales neither 1 nor M long)
/// or the pack was made for a kernel `cx.features` cannot run: caller bugs.
pub fn qconv2d(
    x: &[u8],
    x_shape: [usize; 4],
    x_zp: u8,
    geom: &QConvGeom,
    w: &QPackedConv,
    out: QOut,
    cx: &CpuCtx,
) {
    let [nb, c, h, wd] = x_shape;
    assert!(
        geom.kernel == w.kernel && geom.group == w.group && c == w.cg * w.group,
        "qconv2d: weights [{}, {}, {}, {}] / group {} do not fit input channels {c}, {geom:?}",
        w.m,
        w.cg,
        w.kernel[0],
        w.kernel[1],
        w.group
    );
    assert!(
        x.len() >= nb * c * h * wd,
        "qconv2d: input shorter than {x_shape:?}"
    );
    let (oh, ow) = geom
        .out_hw(h, wd)
        .unwrap_or_else(|| panic!("qconv2d: {geom:?} does not fit a {h}x{wd} input"));
    let (m, p) = (w.m, oh * ow);
    if nb == 0 || p == 0 {
        return;
    }
    match &out {
        QOut::F32(_, ep) | QOut::U8(_, ep, _) => ep.check(m, nb * m * p, "qconv2d"),
        QOut::I32(_) => {}
    }
    let plane_in = h * wd;
    match &w.kind {
        Kind::Direct(wt, wf, lw) => {
            // Tasks of `cpc` output channels of one batch item (a divisor
            // of M), each a run of planes.
            let threads = if nb * m * p * geom.kernel[0] * geom.kernel[1] >= PAR_MIN_WORK {
                cx.threads
            } else {
                1
            };
            let lanes = dw_lanes::Plan::new(cx.features, geom, (h, wd), (oh, ow), (m, c));
            let cpc = match lanes {
                Some(_) => dw_lanes::channels_per_task(m, nb, threads),
                None => dw::channels_per_task(m, p, nb, threads),
            };
            let tasks = split_out(out, nb * m * p, cpc, m, p);
            let (mg, taps) = (m / w.group, geom.kernel[0] * geom.kernel[1]);
            let via_f32 = dw::exact_in_f32(cx.features, m, c, geom, p);
            let run = |t: usize, o: QOut| {
                let (b, ch0) = (t * cpc / m, t * cpc % m);
                if let Some(plan) = &lanes {
                    let xs = &x[b * c * plane_in..(b + 1) * c * plane_in];
                    dw_lanes::planes(plan, cx.features, xs, x_zp, lw, ch0, cpc, o);
                    return;
                }
                if via_f32 {
                    let xs = &x[(b * c + ch0) * plane_in..(b * c + ch0 + cpc) * plane_in];
                    let ws = &wf[ch0 * taps..(ch0 + cpc) * taps];
                    dw::planes_via_f32(cx.features, xs, cpc, (h, wd), x_zp, geom, (oh, ow), ws, o);
                    return;
                }
                for (j, o) in split_out(o, cpc * p, 1, cpc, p).into_iter().enumerate() {
                    let ch = ch0 + j;
                    let ci = ch / mg;
                    let xs = &x[(b * c + ci) * plane_in..(b * c + ci + 1) * plane_in];
                    let wc = &wt[ch * taps..(ch + 1) * taps];
                    dw::plane(cx.features, xs, (h, wd), x_zp, geom, (oh, ow), wc, o);
                }
            };
            if threads > 1 && tasks.len() > 1 {
                cx.for_each_item(tasks, run);
            } else {
                tasks.into_iter().enumerate().for_each(|(t, o)| run(t, o));
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kind::Indirect(iw) => {
            assert!(
                geom.group == 1,
                "qconv2d: an indirect pack runs one group, not {geom:?}"
            );
            let (hp, wp) = indirect_planes(geom, (oh, ow));
            assert!(
                c * hp * wp <= u32::MAX as usize,
                "qconv2d: an indirect pack made for another input than {x_shape:?}"
            );
            let offs = indirect::offsets(c / 4, geom.kernel, geom.dilations, (hp, wp));
            let tasks = split_out(out, nb * m * p, m, m, p);
            let run = |b: usize, o: QOut, cx: &CpuCtx| {
                let xs = &x[b * c * plane_in..(b + 1) * c * plane_in];
                with_buf(&QUAD_PLANES, |buf| {
                    let len = c * hp * wp;
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    let planes = &mut buf[..len];
                    // The planes quad by quad, spread over the threads (a
                    // serial part of the product otherwise).
                    let quad = 4 * hp * wp;
                    let chunk = (c / 4).div_ceil(cx.threads) * quad;
                    let parts: Vec<&mut [u8]> = planes.chunks_mut(chunk).collect();
                    let make = |i: usize, dst: &mut [u8]| {
                        let (c0, cn) = (i * chunk / quad * 4, dst.len() / quad * 4);
                        let xq = &xs[c0 * plane_in..(c0 + cn) * plane_in];
                        // SAFETY: AVX512-VNNI packs are made only for CPUs
                        // with it (and AVX-512 F and BW); `dst` holds the
                        // planes of channels c0..c0 + cn.
                        unsafe { quad_planes_avx512(xq, cn, (h, wd), x_zp, geom, (hp, wp), dst) };
                    };
                    if parts.len() > 1 {
                        cx.for_each_item(parts, make);
                    } else {
                        parts.into_iter().for_each(|d| make(0, d));
                    }
                    let planes = &buf[..len];
                    let (dst, ep) = checked_out(o, m * p, m);
                    let fin = Finish::new(x_zp as i32, &iw.sums, true, dst, (p, 1), ep);
                    let src = indirect::Source {
                        planes,
                        wp,
                        ow,
                        p,
                        strides: geom.strides,
                        offs: &offs,
                    };
                    // SAFETY: as above; the planes and offsets are this
                    // geometry's, the weights its pack, `fin` its output.
                    unsafe { indirect::conv(&src, iw, &fin, cx) };
                })
            };
            // Items that share out evenly over the threads run side by
            // side, one thread each (as the GEMM's below).
            let one = CpuCtx::single(cx.features);
            if cx.threads > 1 && nb > 1 && (nb % cx.threads == 0 || nb >= 4 * cx.threads) {
                cx.for_each_item(tasks, |b, o| run(b, o, &one));
            } else {
                for (b, o) in tasks.into_iter().enumerate() {
                    run(b, o, cx);
                }
            }
        }
        Kind::Gemm(_) | Kind::Sparse(_) => {
            let (g_n, mg, cg) = (w.group, m / w.group, w.cg);
            let k = cg * geom.kernel[0] * geom.kernel[1];
            let tasks = split_out(out, nb * m * p, mg, m, p);
            let in_place = geom.kernel == [1, 1] && geom.strides == [1, 1] && geom.pads == [0; 4];
            let one = CpuCtx::single(cx.features);
            // Small groups run side by side, one thread each, and so do
            // the items of a batch that share out evenly over them: each
            // thread its own im2col and product, nothing split to join (on
            // a 2-core Xeon, ResNet-18 int8 at batch 8 went from 1.5x to
            // 1.9x its 1-thread speed, its deep layers most, whose
            // channel split had each core write the whole im2col); a large
            // product alone uses all threads itself.
            let small = p * mg * k < (1 << 20);
            let even = tasks.len().is_multiple_of(cx.threads) || tasks.len() >= 4 * cx.threads;
            let by_task = cx.threads > 1 && tasks.len() > 1 && (small || even);
            let run = |(t, o): (usize, QOut), cx: &CpuCtx| {
                let (b, g) = (t / g_n, t % g_n);
                let xs = &x[(b * c + g * cg) * plane_in..(b * c + (g + 1) * cg) * plane_in];
                // The product on im2col rows `a`.
                let product = |a: &[u8], o: QOut| {
                    let qx = QMatX {
                        data: a,
                        ld: p,
                        zero_point: x_zp,
                    };
                    match &w.kind {
                        Kind::Sparse(packs) => qspmm_wx(&packs[g], qx, p, o, (p, 1), cx),
                        Kind::Gemm(packs) => qgemm_wx(&packs[g], qx, p, o, p, cx),
                        _ => unreachable!("the direct and indirect loops are the arms above"),
                    }
                };
                if in_place {
                    return product(xs, o);
                }
                // The AVX512-VNNI kernel reads the columns as im2col writes
                // them, in its panels, each task its own columns.
                let panels = matches!(&w.kind, Kind::Gemm(packs) if reads_panels(&packs[g]));
                let order = (w.quads, panels, cx.features);
                with_im2col(xs, cg, (h, wd), x_zp, geom, (oh, ow), order, |ic| {
                    match &w.kind {
                        Kind::Gemm(packs) if panels => {
                            let fill = |cols: Range<usize>, dst: &mut [u8]| ic.panels(k, cols, dst);
                            qgemm_wx_filled(&packs[g], &fill, x_zp, p, o, p, cx)
                        }
                        // Every column is written by im2col (a reused
                        // buffer only grows).
                        _ => with_buf(&COLS, |cols| {
                            let at = aligned(cols, k * p);
                            let cols = &mut cols[at..at + k * p];
                            ic.rows(k, cols, cx);
                            product(cols, o)
                        }),
                    }
                })
            };
            if by_task {
                cx.for_each_item(tasks, |t, o| run((t, o), &one));
            } else {
                for to in tasks.into_iter().enumerate() {
                    run(to, cx);
                }
            }
        }
    }
}

/// Splits an NCHW output of `len` elements (`M` channels of `p` pixels)
/// into consecutive pieces of `cpc` channels each, each with its slice of
/// the epilogue (scales, bias, residual).
fn split_out<'a>(out: QOut<'a>, len: usize, cpc: usize, m: usize, p: usize) -> Vec<QOut<'a>> {
    let chunk = cpc * p;
    let sub = |ep: &QEpilogue<'a>, t: usize| sub_epilogue(ep, t, cpc, m, chunk);
    match out {
        QOut::I32(c) => {
            assert!(c.len() >= len, "qconv2d: output shorter than {len}");
            c[..len].chunks_mut(chunk).map(QOut::I32).collect()
        }
        QOut::F32(c, ep) => {
            assert!(c.len() >= len, "qconv2d: output shorter than {len}");
            let e = ep;
            c[..len]
                .chunks_mut(chunk)
                .enumerate()
                .map(|(t, c)| QOut::F32(c, sub(&e, t)))
                .collect()
        }
        QOut::U8(c, ep, rq) => {
            assert!(c.len() >= len, "qconv2d: output shorter than {len}");
            let e = ep;
            c[..len]
                .chunks_mut(chunk)
                .enumerate()
                .map(|(t, c)| QOut::U8(c, sub(&e, t), rq))
                .collect()
        }
    }
}

/// Piece `t` of an epilogue split by [`split_out`].
fn sub_epilogue<'a>(
    ep: &QEpilogue<'a>,
    t: usize,
    cpc: usize,
    m: usize,
    chunk: usize,
) -> QEpilogue<'a> {
    let c0 = (t * cpc) % m;
    let mut e = *ep;
    if e.b_scales.len() != 1 {
        e.b_scales = &ep.b_scales[c0..c0 + cpc];
    }
    e.bias = ep.bias.map(|b| &b[c0..c0 + cpc]);
    e.residual = ep.residual.map(|r| &r[t * chunk..(t + 1) * chunk]);
    e
}

/// The output positions `o` in `0..n_out` whose input index `o * s + off
/// - pad` lies in `0..len`, as a range.
fn valid_range(n_out: usize, s: usize, off: usize, pad: usize, len: usize) -> (usize, usize) {
    // o * s + off >= pad  and  o * s + off < pad + len.
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(s)
    };
    let hi = if pad + len > off {
        (pad + len - off).div_ceil(s)
    } else {
        0
    };
    (lo.min(n_out), hi.min(n_out).max(lo.min(n_out)))
}

/// The im2col of one group's `cg` input planes: `K = cg · kh · kw` rows
/// (row `(ci · kh + ki) · kw + kj`, or in channel quads, see
/// [`QPackedConv`]) of `oh · ow` columns, `za` wherever a tap reads
/// padding, ready to write whole rows ([`Im2col::rows`]) or the
/// AVX512-VNNI kernel's panels of any columns ([`Im2col::panels`]).
struct Im2col<'a> {
    /// Rows in channel quads.
    quads: bool,
    /// In channel quads at stride 1 without dilation (on AVX-512): the
    /// input padded as the windows read it (`za` around) and interleaved
    /// four channels a pixel: `cg / 4` planes of `hp × wp` 4-byte pixels,
    /// `hp = oh + kh − 1`, `wp = ow + kw − 1`; output pixel (oy, ox) reads
    /// tap (ki, kj) at padded (oy + ki, ox + kj).
    #[cfg(target_arch = "x86_64")]
    quad_planes: Option<QuadPlanes<'a>>,
    x: &'a [u8],
    h_w: (usize, usize),
    za: u8,
    geom: &'a QConvGeom,
    oh_ow: (usize, usize),
    /// At stride 2 (no dilation) each tap reads one of the four phase
    /// planes (even/odd rows × even/odd columns) at stride 1: they are
    /// split out once, so the rows are shifted stride-1 copies
    /// (contiguous when the output is as wide as a phase plane, as in a
    /// "same"-padded convolution). `cg · 4` planes of `⌈h/2⌉ × ⌈w/2⌉`.
    phases: Option<&'a [u8]>,
    features: Features,
}

/// See [`Im2col::quad_planes`].
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct QuadPlanes<'a> {
    data: &'a [u8],
    hp: usize,
    wp: usize,
}

/// Runs `body` on the im2col of `x` (`cg` planes of `h × w`), rows in
/// channel quads when `quads`, its phase planes or (for a product that
/// reads `panels`) quad planes, when it has them, made in this thread's
/// buffer.
#[allow(clippy::too_many_arguments)]
fn with_im2col<R>(
    x: &[u8],
    cg: usize,
    (h, w): (usize, usize),
    za: u8,
    geom: &QConvGeom,
    (oh, ow): (usize, usize),
    (quads, panels, features): (bool, bool, Features),
    body: impl FnOnce(&Im2col) -> R,
) -> R {
    let [kh, kw] = geom.kernel;
    let phased = geom.strides == [2, 2] && geom.dilations == [1, 1];
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let plain = Im2col {
        x,
        h_w: (h, w),
        za,
        geom,
        oh_ow: (oh, ow),
        quads,
        #[cfg(target_arch = "x86_64")]
        quad_planes: None,
        phases: None,
        features,
    };
    // Output rows of at least 12 pixels: a 16-pixel group then spans at
    // most two, and making the planes is no more than the panels' copies
    // cost (ResNet-18's 7x7 layers ran 3-5% slower on the planes, its
    // 56x56 to 14x14 ones 2-5% faster).
    // Quad planes feed the AVX-512 panels only.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = panels;
    #[cfg(target_arch = "x86_64")]
    if quads
        && panels
        && geom.strides == [1, 1]
        && geom.dilations == [1, 1]
        && ow >= 12
        && features.avx512f
    {
        let (hp, wp) = (oh + kh - 1, ow + kw - 1);
        return with_buf(&QUAD_PLANES, |buf| {
            let len = cg * hp * wp;
            if buf.len() < len + 64 {
                buf.resize(len + 64, 0);
            }
            // SAFETY: AVX-512 F and BW (`avx512f`); `buf` holds the planes.
            unsafe { quad_planes_avx512(x, cg, (h, w), za, geom, (hp, wp), &mut buf[..len]) };
            body(&Im2col {
                quad_planes: Some(QuadPlanes {
                    data: &buf[..len + 64],
                    hp,
                    wp,
                }),
                ..plain
            })
        });
    }
    if !phased {
        return body(&plain);
    }
    with_buf(&PHASES, |phases| {
        let [pt, pl, _, _] = geom.pads;
        // The row (column) parities the taps read: one for a 1x1 kernel.
        let parity = |k: usize, pad: usize, p: usize| (0..k).any(|t| (t + 2 - pad % 2) % 2 == p);
        // A reused buffer only grows: the slack of odd sizes is never read
        // as a value (the rows' valid ranges exclude it).
        if phases.len() < cg * 4 * h2 * w2 {
            phases.resize(cg * 4 * h2 * w2, za);
        }
        let used = &mut phases[..cg * 4 * h2 * w2];
        let columns = parity(kw, pl, 0) || parity(kw, pl, 1);
        for (ci, planes) in used.chunks_exact_mut(4 * h2 * w2).enumerate() {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            // Phase planes (py, 0) and (py, 1) from the rows of parity py,
            // split in one pass (a phase no tap reads is filled all the
            // same: it costs nothing more).
            for (py, pair) in planes.chunks_exact_mut(2 * h2 * w2).enumerate() {
                if !parity(kh, pt, py) || !columns {
                    continue;
                }
                let (even, odd) = pair.split_at_mut(h2 * w2);
                let rows = even.chunks_exact_mut(w2).zip(odd.chunks_exact_mut(w2));
                for (y, (e, o)) in rows.enumerate() {
                    let iy = 2 * y + py;
                    if iy < h {
                        split_even_odd(features, &plane[iy * w..(iy + 1) * w], e, o);
                    }
                }
            }
        }
        body(&Im2col {
            phases: Some(&phases[..cg * 4 * h2 * w2]),
            ..plain
        })
    })
}

/// The taps of one im2col row: `((sy, offy, pady), (sx, offx, padx))`.
type Taps = ((usize, usize, usize), (usize, usize, usize));

impl<'a> Im2col<'a> {
    /// The input channel and tap (`ki · kw + kj`) of im2col row `row`.
    fn channel_tap(&self, row: usize) -> (usize, usize) {
        let taps = self.geom.kernel[0] * self.geom.kernel[1];
        if self.quads {
            let (quad, at) = (row / 4, row % 4);
            (quad / taps * 4 + at, quad % taps)
        } else {
            (row / taps, row % taps)
        }
    }

    /// The plane and taps im2col row `row` copies.
    fn source(&self, row: usize) -> (Plane<'a>, Taps) {
        let (ci, t) = self.channel_tap(row);
        self.source_at(ci, t)
    }

    /// The plane and taps of input channel `ci`, tap `t`.
    fn source_at(&self, ci: usize, t: usize) -> (Plane<'a>, Taps) {
        let kw = self.geom.kernel[1];
        let [sh, sw] = self.geom.strides;
        let [dh, dw] = self.geom.dilations;
        let [pt, pl, _, _] = self.geom.pads;
        let (h, w) = self.h_w;
        let (ki, kj) = (t / kw, t % kw);
        if let Some(phases) = self.phases {
            // Input row 2·oy + ki − pt = 2·(oy + dy) + py.
            let phase = |k: usize, pad: usize| {
                let a = k as isize - pad as isize;
                let par = a.rem_euclid(2);
                let shift = (a - par) / 2;
                (
                    par as usize,
                    shift.max(0) as usize,
                    (-shift).max(0) as usize,
                )
            };
            let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
            let (py, oy_off, oy_pad) = phase(ki, pt);
            let (px, ox_off, ox_pad) = phase(kj, pl);
            let at = ((ci * 2 + py) * 2 + px) * h2 * w2;
            let plane = Plane {
                data: &phases[at..at + h2 * w2],
                pitch: w2,
                rows: (h - py).div_ceil(2),
                cols: (w - px).div_ceil(2),
            };
            (plane, ((1, oy_off, oy_pad), (1, ox_off, ox_pad)))
        } else {
            let plane = Plane {
                data: &self.x[ci * h * w..(ci + 1) * h * w],
                pitch: w,
                rows: h,
                cols: w,
            };
            (plane, ((sh, ki * dh, pt), (sw, kj * dw, pl)))
        }
    }

    /// Writes row `row` (`oh · ow` bytes) into `d`.
    fn row(&self, row: usize, d: &mut [u8]) {
        let (plane, taps) = self.source(row);
        shifted_copy(d, self.oh_ow, &plane, taps, self.za);
    }

    /// Writes all `k` rows into `dst` (`[k, oh · ow]`), in parallel on
    /// `cx`'s threads when there are many.
    fn rows(&self, k: usize, dst: &mut [u8], cx: &CpuCtx) {
        let p = self.oh_ow.0 * self.oh_ow.1;
        let d = &mut dst[..k * p];
        if cx.threads > 1 && k * p >= 1 << 16 {
            cx.for_each_chunk_mut(d, p, |r, d| self.row(r, d));
        } else {
            d.chunks_mut(p)
                .enumerate()
                .for_each(|(r, d)| self.row(r, d));
        }
    }

    /// Writes columns `cols` of all `k` rows into `dst` in the panels of
    /// [`super::qgemm::FillPanels`]: four rows at a time, by masked loads
    /// straight from the planes where the four are shifted planes, else
    /// through a per-thread buffer of four whole rows.
    fn panels(&self, k: usize, cols: Range<usize>, dst: &mut [u8]) {
        let p = self.oh_ow.0 * self.oh_ow.1;
        let groups = k.div_ceil(4);
        // Whole runs of 64 columns: the panels' slack columns get `za`.
        let width = cols.len().div_ceil(64) * 64;
        assert!(
            cols.start.is_multiple_of(16) && cols.end <= p && dst.len() >= groups * width * 4,
            "im2col panels: columns {cols:?} of {p}, {} bytes",
            dst.len()
        );
        let out = PanelsOut(dst.as_mut_ptr(), groups * 64, cols.start);
        #[cfg(target_arch = "x86_64")]
        if let Some(qp) = &self.quad_planes {
            // SAFETY: quad planes are made only on AVX-512 F and BW
            // (`with_im2col`); `out` holds the panels of `width` columns
            // from cols.start (asserted above).
            unsafe { quad_panels_avx512(qp, self, groups, (cols.start, width), &out) };
            return;
        }
        // The output column of each of the first run's columns.
        #[cfg(target_arch = "x86_64")]
        let lanes: [u8; 64] = std::array::from_fn(|l| ((cols.start + l) % self.oh_ow.1) as u8);
        // The shift of each tap of input channel 0; channel ci's is the same
        // `ci` planes further on.
        #[cfg(target_arch = "x86_64")]
        let (taps, plane_stride) = {
            let [kh, kw] = self.geom.kernel;
            let (h, w) = self.h_w;
            let stride = match self.phases {
                Some(_) => 4 * h.div_ceil(2) * w.div_ceil(2),
                None => h * w,
            };
            let taps: Vec<Option<Shift>> = (0..kh * kw)
                .map(|t| Shift::of(self.source_at(0, t), self.oh_ow))
                .collect();
            (taps, stride)
        };
        for g in 0..groups {
            #[cfg(target_arch = "x86_64")]
            if self.features.avx512f && 4 * g + 4 <= k {
                let shifts: [_; 4] = std::array::from_fn(|d| {
                    let (ci, t) = self.channel_tap(4 * g + d);
                    taps[t].map(|s| s.channel(ci, plane_stride))
                });
                if let [Some(a), Some(b), Some(c), Some(d)] = shifts {
                    // SAFETY: AVX-512 F and BW (`avx512f`); `out` holds
                    // the panels of `width` columns from cols.start
                    // (asserted above).
                    let run = (cols.start, width);
                    unsafe { put_shifted_avx512(&out, g, &[a, b, c, d], run, &lanes, self) };
                    continue;
                }
            }
            with_buf(&FOUR_ROWS, |four| {
                let ld = (cols.start + width).max(p);
                if four.len() < 4 * ld {
                    four.resize(4 * ld, 0);
                }
                for (r, row) in four[..4 * ld].chunks_exact_mut(ld).enumerate() {
                    if 4 * g + r < k {
                        self.row(4 * g + r, &mut row[..p]);
                        row[p.min(ld)..].fill(self.za);
                    } else {
                        row.fill(self.za);
                    }
                }
                // SAFETY: as above; the rows hold `ld` columns.
                let runs = cols.start..cols.start + width;
                unsafe { out.put_group(self.features, g, &four[..4 * ld], runs) };
            })
        }
    }
}

/// Makes the quad planes of [`Im2col::quad_planes`] in `dst` (`cg · hp ·
/// wp` bytes) from `x`, `cg` planes of `h × w`: each padded row four
/// channel rows interleaved 64 pixels at a time, `za` where the windows
/// read padding.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quad_planes_avx512(
    x: &[u8],
    cg: usize,
    (h, w): (usize, usize),
    za: u8,
    geom: &QConvGeom,
    (hp, wp): (usize, usize),
    dst: &mut [u8],
) {
    use super::qgemm::byte_mask;
    use std::arch::x86_64::*;
    assert!(
        x.len() >= cg * h * w && dst.len() >= cg * hp * wp && cg.is_multiple_of(4),
        "quad planes: {cg} planes of {h}x{w} into {hp}x{wp}"
    );
    let [pt, pl, _, _] = geom.pads;
    // Padded columns c0..c1 hold input columns 0.. (c = ix + pl).
    let (c0, c1) = (pl.min(wp), (pl + w).min(wp));
    for cq in 0..cg / 4 {
        for r in 0..hp {
            let at = (cq * hp + r) * wp * 4;
            let bytes = &mut dst[at..at + wp * 4];
            let iy = r.wrapping_sub(pt);
            if iy >= h || c1 <= c0 {
                bytes.fill(za);
                continue;
            }
            bytes[..c0 * 4].fill(za);
            bytes[c1 * 4..].fill(za);
            let row = bytes.as_mut_ptr();
            let src: [*const u8; 4] =
                std::array::from_fn(|d| x.as_ptr().add(((4 * cq + d) * h + iy) * w));
            for ix in (0..c1 - c0).step_by(64) {
                let live = (c1 - c0 - ix).min(64);
                let v =
                    src.map(|s| _mm512_maskz_loadu_epi8(byte_mask(live), s.add(ix) as *const i8));
                let at = row.add((c0 + ix) * 4);
                for (l, q) in super::qgemm::quads_of_64(v).into_iter().enumerate() {
                    let bytes = (4 * live).saturating_sub(64 * l);
                    if bytes > 0 {
                        _mm512_mask_storeu_epi8(at.add(64 * l) as *mut i8, byte_mask(bytes), q);
                    }
                }
            }
        }
    }
}

/// Writes the panels of columns `j0..j0 + width` (a multiple of 64), all
/// `groups` depth groups in channel quads, from the quad planes: group `(c
/// / 4, tap)` of sixteen output pixels is their 4-byte pixels at that tap
/// in quad plane `c / 4`, one masked load per output row the sixteen
/// span.
///
/// # Safety
/// The CPU must support AVX-512 F; `out` as [`PanelsOut::put_group`] for
/// those columns; `qp` made for `ic`'s geometry.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quad_panels_avx512(
    qp: &QuadPlanes,
    ic: &Im2col,
    groups: usize,
    (j0, width): (usize, usize),
    out: &PanelsOut,
) {
    use std::arch::x86_64::*;
    let (oh, ow) = ic.oh_ow;
    let p = oh * ow;
    let [kh, kw] = ic.geom.kernel;
    let taps = kh * kw;
    assert!(
        groups.is_multiple_of(taps) && qp.data.len() >= groups / taps * 4 * qp.hp * qp.wp,
        "quad panels: {groups} groups of {kh}x{kw} taps"
    );
    // Where each group's pixel (0, 0) lies in the planes.
    let at: Vec<isize> = (0..groups)
        .map(|g| {
            let (cq, t) = (g / taps, g % taps);
            (((cq * qp.hp + t / kw) * qp.wp + t % kw) * 4) as isize
        })
        .collect();
    let base = qp.data.as_ptr();
    for j in (j0..j0 + width).step_by(16) {
        // The panel's lanes by output row: each run's lanes and where its
        // lane 0 would lie, relative to a group's pixel (0, 0).
        let mut runs = [(0u16, 0isize); 16];
        let (mut n, mut l) = (0, 0);
        while l < 16 && j + l < p {
            let (oy, ox) = ((j + l) / ow, (j + l) % ow);
            let len = (ow - ox).min(16 - l).min(p - j - l);
            let lanes = (((1u32 << len) - 1) << l) as u16;
            runs[n] = (lanes, ((oy * qp.wp + ox) * 4) as isize - 4 * l as isize);
            n += 1;
            l += len;
        }
        for (g, &off) in at.iter().enumerate() {
            let mut v = _mm512_setzero_si512();
            for &(lanes, run) in &runs[..n] {
                // Lanes outside the run are not read (their addresses may
                // lie outside the planes: `wrapping_offset`); those in it
                // read padded (oy + ki, ox + kj), inside its plane.
                let src = base.wrapping_offset(off + run) as *const i32;
                v = _mm512_mask_loadu_epi32(v, lanes, src);
            }
            _mm512_storeu_si512(out.at(g, j) as *mut __m512i, v);
        }
    }
}

/// Splits `row` into its even-indexed bytes (`even`, `row.len().div_ceil(2)`
/// of them) and its odd-indexed ones (`odd`, `row.len() / 2`), with the
/// vector narrowing `f` allows.
fn split_even_odd(f: Features, row: &[u8], even: &mut [u8], odd: &mut [u8]) {
    assert!(
        even.len() >= row.len().div_ceil(2) && odd.len() >= row.len() / 2,
        "split_even_odd: halves shorter than the row"
    );
    #[cfg(target_arch = "x86_64")]
    if f.avx512f {
        // SAFETY: AVX-512 F and BW (`avx512f`); the lengths are asserted
        // above.
        return unsafe { split_even_odd_avx512(row, even, odd) };
    }
    let _ = f;
    for (i, &v) in row.iter().enumerate() {
        if i % 2 == 0 {
            even[i / 2] = v;
        } else {
            odd[i / 2] = v;
        }
    }
}

/// [`split_even_odd`] 64 bytes at a time (pairs narrowed to their low and
/// high bytes), the last piece through masked loads and stores.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `even` holds at least
/// `row.len().div_ceil(2)` bytes, `odd` `row.len() / 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_even_odd_avx512(row: &[u8], even: &mut [u8], odd: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = row.len();
    // Bits below `k` of a mask.
    let low = |k: usize| if k >= 64 { !0u64 } else { (1u64 << k) - 1 };
    for i in (0..n).step_by(64) {
        let left = n - i;
        let v = _mm512_maskz_loadu_epi8(low(left), row.as_ptr().add(i) as *const i8);
        let hi = _mm512_srli_epi16::<8>(v);
        let (e, o) = (even.as_mut_ptr().add(i / 2), odd.as_mut_ptr().add(i / 2));
        _mm512_mask_cvtepi16_storeu_epi8(e as *mut i8, low(left.div_ceil(2)) as u32, v);
        _mm512_mask_cvtepi16_storeu_epi8(o as *mut i8, low(left / 2) as u32, hi);
    }
}

/// An im2col row that is its plane shifted: `row[j] = data[j + off]` for
/// the columns j in `lo..hi` whose output column `j % ow` lies in
/// `x0..x1`, `za` elsewhere (stride 1 and output rows as wide as the
/// plane's pitch: [`shifted_copy`]'s contiguous case).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Shift<'a> {
    data: &'a [u8],
    off: isize,
    lo: usize,
    hi: usize,
    x0: u8,
    x1: u8,
}

#[cfg(target_arch = "x86_64")]
impl<'a> Shift<'a> {
    /// The shift of a row's plane and taps, None when the row is not one
    /// (or its output rows are too wide for byte lanes).
    fn of(
        (plane, ((sy, offy, pady), (sx, offx, padx))): (Plane<'a>, Taps),
        (oh, ow): (usize, usize),
    ) -> Option<Shift<'a>> {
        if sy != 1 || sx != 1 || ow != plane.pitch || ow > 128 {
            return None;
        }
        let (y0, y1) = valid_range(oh, 1, offy, pady, plane.rows);
        let (x0, x1) = valid_range(ow, 1, offx, padx, plane.cols);
        let off =
            (offy as isize - pady as isize) * plane.pitch as isize + offx as isize - padx as isize;
        Some(Shift {
            data: plane.data,
            off,
            lo: y0 * ow,
            hi: y1 * ow,
            x0: x0 as u8,
            x1: x1 as u8,
        })
    }

    /// The same tap of the plane `ci · stride` bytes further on (input
    /// channel ci's, for a shift of channel 0's plane at the start of
    /// `data`, which holds all of them).
    fn channel(self, ci: usize, stride: usize) -> Shift<'a> {
        Shift {
            off: self.off + (ci * stride) as isize,
            ..self
        }
    }
}

/// Writes depth group `g` of the panels of columns `j0..j0 + width` (a
/// multiple of 64) from four shifted rows, 64 columns at a time: masked
/// loads straight from the planes (`za` where a tap reads padding),
/// interleaved into the quads of four panels.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `out` as
/// [`PanelsOut::put_group`] for those columns; `ic`'s output rows at most
/// 128 wide ([`Shift::of`]); `lanes` the output columns of `j0..j0 + 64`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn put_shifted_avx512(
    out: &PanelsOut,
    g: usize,
    rows: &[Shift; 4],
    (j0, width): (usize, usize),
    lanes: &[u8; 64],
    ic: &Im2col,
) {
    use std::arch::x86_64::*;
    let ow = ic.oh_ow.1;
    let zav = _mm512_set1_epi8(ic.za as i8);
    // Lanes at or past `n` of a run: all below 0, none past 64.
    let below = |n: usize, j: usize| -> u64 {
        match n.saturating_sub(j) {
            0 => 0,
            d if d >= 64 => !0,
            d => (1u64 << d) - 1,
        }
    };
    // Each lane's output column, `(j + lane) % ow`, stepped by 64 a run
    // (`ow <= 128`, so a sum stays below 256 and one wrap suffices).
    let mut cols = _mm512_loadu_si512(lanes.as_ptr() as *const __m512i);
    let (step, vow) = (
        _mm512_set1_epi8((64 % ow) as i8),
        _mm512_set1_epi8(ow as i8),
    );
    for j in (j0..j0 + width).step_by(64) {
        let v: [__m512i; 4] = std::array::from_fn(|r| {
            let s = &rows[r];
            let in_x = _mm512_cmpge_epu8_mask(cols, _mm512_set1_epi8(s.x0 as i8))
                & _mm512_cmplt_epu8_mask(cols, _mm512_set1_epi8(s.x1 as i8));
            let mask = in_x & below(s.hi, j) & !below(s.lo, j);
            // Masked-off lanes are not read: the address may lie outside
            // the plane there (`wrapping_offset`), never where a lane is on
            // (lo..hi are the columns whose source lies in the plane).
            let p = s.data.as_ptr().wrapping_offset(j as isize + s.off);
            _mm512_mask_loadu_epi8(zav, mask, p as *const i8)
        });
        for (l, q) in super::qgemm::quads_of_64(v).into_iter().enumerate() {
            _mm512_storeu_si512(out.at(g, j + 16 * l) as *mut __m512i, q);
        }
        let next = _mm512_add_epi8(cols, step);
        cols = _mm512_mask_sub_epi8(next, _mm512_cmpge_epu8_mask(next, vow), next, vow);
    }
}

/// Panels being written ([`Im2col::panels`]): their start, the bytes of
/// one panel, and the column of panel 0.
struct PanelsOut(*mut u8, usize, usize);

impl PanelsOut {
    /// Where column j's four bytes of depth group g go.
    fn at(&self, g: usize, j: usize) -> *mut u8 {
        let j = j - self.2;
        self.0
            .wrapping_add((j / 16) * self.1 + g * 64 + 4 * (j % 16))
    }

    /// Writes depth group `g` of the panels of columns `runs` (a multiple
    /// of 64 long) from four rows of `ld` columns (`four`, row after row,
    /// `runs.end <= ld`): column j's four bytes go to its panel, group g,
    /// at `4 · (j % 16)`.
    ///
    /// # Safety
    /// The panels must hold columns `runs` at group g.
    unsafe fn put_group(&self, f: Features, g: usize, four: &[u8], runs: Range<usize>) {
        let ld = four.len() / 4;
        assert!(
            runs.len().is_multiple_of(64) && runs.end <= ld,
            "im2col panels: columns {runs:?} of {ld}"
        );
        let at = |j: usize| self.at(g, j);
        #[cfg(target_arch = "x86_64")]
        if f.avx512f {
            // SAFETY: AVX-512 F and BW are present (`avx512f`); the loads
            // lie in `four`, the stores in the panels (the caller's word).
            return put_group_avx512(four, ld, runs, at);
        }
        let _ = f;
        for j in runs {
            for r in 0..4 {
                *at(j).add(r) = four[r * ld + j];
            }
        }
    }
}

/// [`PanelsOut::put_group`] 64 columns at a time: four rows' 64 bytes
/// interleaved into the quads of four panels.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `at(j)` must be writable for
/// the 64 bytes of each panel's group, j in `runs`, a multiple of 16 from
/// its start; `four` holds four rows of `ld >= runs.end` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn put_group_avx512(
    four: &[u8],
    ld: usize,
    runs: Range<usize>,
    at: impl Fn(usize) -> *mut u8,
) {
    use std::arch::x86_64::*;
    let src = four.as_ptr();
    for j in runs.step_by(64) {
        let r: [__m512i; 4] =
            std::array::from_fn(|d| _mm512_loadu_si512(src.add(d * ld + j) as *const __m512i));
        for (l, v) in super::qgemm::quads_of_64(r).into_iter().enumerate() {
            _mm512_storeu_si512(at(j + 16 * l) as *mut __m512i, v);
        }
    }
}

/// A u8 plane: `rows × cols` valid values, rows `pitch` bytes apart.
struct Plane<'a> {
    data: &'a [u8],
    pitch: usize,
    rows: usize,
    cols: usize,
}

/// One im2col row: `d[oy · ow + ox] = plane[oy·sy + offy − pady][ox·sx +
/// offx − padx]`, or `za` where that falls outside the plane; `taps` is
/// `((sy, offy, pady), (sx, offx, padx))`.
fn shifted_copy(
    d: &mut [u8],
    (oh, ow): (usize, usize),
    plane: &Plane,
    ((sy, offy, pady), (sx, offx, padx)): Taps,
    za: u8,
) {
    let pitch = plane.pitch;
    let (y0, y1) = valid_range(oh, sy, offy, pady, plane.rows);
    let (x0, x1) = valid_range(ow, sx, offx, padx, plane.cols);
    d[..y0 * ow].fill(za);
    d[y1 * ow..oh * ow].fill(za);
    if sx == 1 && sy == 1 && ow == pitch && y1 > y0 && x1 > x0 {
        // Output rows as wide as the plane's pitch: the valid rows are one
        // contiguous shifted copy, then the few columns whose tap reads
        // padding (or the pitch's slack) get za.
        let (t0, t1) = (y0 * ow + x0, (y1 - 1) * ow + x1);
        let s0 = (y0 + offy - pady) * pitch + x0 + offx - padx;
        d[t0..t1].copy_from_slice(&plane.data[s0..s0 + (t1 - t0)]);
        // Usually one column on a side: stores, not memset calls.
        let edge = |cells: &mut [u8]| match cells {
            [] => {}
            [c] => *c = za,
            more => more.fill(za),
        };
        for row in d[y0 * ow..y1 * ow].chunks_exact_mut(ow) {
            edge(&mut row[..x0]);
            edge(&mut row[x1..]);
        }
        return;
    }
    for oy in y0..y1 {
        let iy = oy * sy + offy - pady;
        let src = &plane.data[iy * pitch..iy * pitch + plane.cols];
        let out = &mut d[oy * ow..(oy + 1) * ow];
        out[..x0].fill(za);
        out[x1..].fill(za);
        if x1 > x0 {
            let ix0 = x0 * sx + offx - padx;
            if sx == 1 {
                out[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
            } else {
                for (o, v) in out[x0..x1].iter_mut().zip(src[ix0..].iter().step_by(sx)) {
                    *o = *v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Activation;
    use crate::kernels::cpu::qgemm::tests::{features, rand_f32, rand_i8, rand_u8, two_threads};
    use crate::kernels::cpu::qgemm::QRequant;

    /// One convolution problem.
    struct Case {
        x: [usize; 4],
        m: usize,
        geom: QConvGeom,
    }

    fn case(x: [usize; 4], m: usize, k: [usize; 2], s: usize, pad: usize, group: usize) -> Case {
        Case {
            x,
            m,
            geom: QConvGeom {
                kernel: k,
                strides: [s, s],
                dilations: [1, 1],
                pads: [pad; 4],
                group,
            },
        }
    }

    /// ResNet / MobileNet shapes at small sizes, plus odd geometries.
    fn cases() -> Vec<(&'static str, Case)> {
        let mut v = vec![
            ("3x3 s1 p1", case([1, 16, 9, 9], 24, [3, 3], 1, 1, 1)),
            ("3x3 s2 p1", case([2, 8, 11, 10], 16, [3, 3], 2, 1, 1)),
            ("1x1", case([1, 32, 7, 7], 20, [1, 1], 1, 0, 1)),
            ("1x1 s2", case([2, 16, 7, 8], 9, [1, 1], 2, 0, 1)),
            ("7x7 s2 p3 stem", case([1, 3, 23, 23], 16, [7, 7], 2, 3, 1)),
            ("dw 3x3 s1", case([2, 12, 10, 9], 12, [3, 3], 1, 1, 12)),
            ("dw 3x3 s2", case([1, 17, 11, 12], 17, [3, 3], 2, 1, 17)),
            ("dw x2", case([1, 4, 6, 6], 8, [3, 3], 1, 1, 4)),
            ("grouped", case([1, 8, 7, 7], 12, [3, 3], 1, 1, 4)),
            ("big 3x3", case([1, 64, 20, 20], 64, [3, 3], 1, 1, 1)),
        ];
        let mut odd = case([1, 6, 9, 8], 10, [3, 2], 1, 0, 2);
        odd.geom.dilations = [2, 3];
        odd.geom.pads = [0, 1, 2, 1];
        odd.geom.strides = [2, 1];
        v.push(("dilated asym", odd));
        let mut dw = case([1, 5, 9, 8], 5, [3, 3], 1, 0, 5);
        dw.geom.dilations = [2, 2];
        dw.geom.pads = [2, 1, 0, 3];
        v.push(("dw dilated asym", dw));
        let mut dw = case([1, 3, 9, 10], 3, [3, 2], 1, 1, 3);
        dw.geom.strides = [2, 1];
        v.push(("dw s2x1", dw));
        // Output rows as wide as the input at stride 1 (the contiguous
        // im2col copy): dilated, padded on one side only, uneven kernels.
        let mut same = case([1, 6, 9, 10], 8, [3, 3], 1, 2, 1);
        same.geom.dilations = [2, 2];
        v.push(("same dilated", same));
        let mut same = case([2, 5, 8, 7], 6, [3, 3], 1, 0, 1);
        same.geom.pads = [0, 0, 2, 2];
        v.push(("same bottom-right", same));
        let mut same = case([1, 4, 6, 9], 5, [2, 3], 1, 0, 1);
        same.geom.pads = [1, 2, 0, 0];
        v.push(("same top-left 2x3", same));
        // Stride 2 through the phase planes: uneven pads, even and odd
        // sizes, a kernel wider than the pads.
        let mut s2 = case([1, 3, 12, 9], 7, [4, 5], 2, 0, 1);
        s2.geom.pads = [0, 3, 2, 1];
        v.push(("s2 asym 4x5", s2));
        // Many 64-column runs whose rows end inside a run (ResNet's 56-wide
        // planes), and rows too wide for the AVX-512 im2col's byte masks.
        v.push(("56 wide", case([1, 9, 7, 56], 13, [3, 3], 1, 1, 1)));
        v.push(("260 wide", case([1, 4, 3, 260], 6, [3, 3], 1, 1, 1)));
        // More output channels than pixels: two threads split the channels
        // (each writes the whole im2col), where the cases above split the
        // pixels.
        v.push(("deep 3x3", case([1, 64, 6, 6], 160, [3, 3], 1, 1, 1)));
        // Depth in channel quads read from the quad planes: uneven pads and
        // kernel, and two groups.
        let mut quads = case([1, 8, 7, 14], 10, [2, 3], 1, 0, 1);
        quads.geom.pads = [1, 2, 0, 1];
        v.push(("quads asym 2x3", quads));
        v.push(("quads grouped", case([1, 16, 6, 13], 8, [3, 3], 1, 1, 2)));
        // Depthwise with channels in the lanes: whole and partial groups of
        // 16 over tasks, rows ending inside a 16-pixel block, two 4-tap
        // groups a kernel row, stride 2 over a batch.
        v.push(("dw 48 5x5", case([1, 48, 12, 21], 48, [5, 5], 1, 2, 48)));
        v.push(("dw 40 s2", case([2, 40, 9, 37], 40, [3, 3], 2, 1, 40)));
        // The indirect kernel (channels in the lanes): 80 channels (a
        // 64-channel block and a 16-channel one) over a batch, pixels
        // ending inside a 6-pixel tile and a 64-pixel block; a 5x5 kernel
        // with asymmetric pads and 20 channels.
        v.push(("indirect 80", case([2, 12, 11, 13], 80, [3, 3], 1, 1, 1)));
        let mut five = case([1, 8, 9, 7], 20, [5, 5], 1, 2, 1);
        five.geom.pads = [2, 1, 0, 3];
        v.push(("indirect 5x5 asym", five));
        // ... and at strides 2 and 2x1, dilated, padded unevenly.
        let mut s2 = case([1, 12, 13, 11], 24, [3, 3], 2, 1, 1);
        s2.geom.strides = [2, 1];
        s2.geom.dilations = [2, 1];
        s2.geom.pads = [2, 0, 1, 3];
        v.push(("indirect s2x1 dilated", s2));
        v
    }

    /// The reference accumulators, NCHW: i64 sums over every tap, padding
    /// read as the zero point.
    fn reference(c: &Case, x: &[u8], za: u8, w: &[i8]) -> Vec<i32> {
        let [nb, ch, h, wd] = c.x;
        let g = &c.geom;
        let (oh, ow) = g.out_hw(h, wd).expect("case fits");
        let (cg, mg) = (ch / g.group, c.m / g.group);
        let [kh, kw] = g.kernel;
        let mut out = vec![0i32; nb * c.m * oh * ow];
        for b in 0..nb {
            for o in 0..c.m {
                let gi = o / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0i64;
                        for ci in 0..cg {
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let iy = (oy * g.strides[0] + ki * g.dilations[0]) as i64
                                        - g.pads[0] as i64;
                                    let ix = (ox * g.strides[1] + kj * g.dilations[1]) as i64
                                        - g.pads[1] as i64;
                                    let v = if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64
                                    {
                                        za
                                    } else {
                                        x[((b * ch + gi * cg + ci) * h + iy as usize) * wd
                                            + ix as usize]
                                    };
                                    let wv = w[((o * cg + ci) * kh + ki) * kw + kj];
                                    s += (v as i64 - za as i64) * wv as i64;
                                }
                            }
                        }
                        out[((b * c.m + o) * oh + oy) * ow + ox] =
                            i32::try_from(s).expect("fits i32");
                    }
                }
            }
        }
        out
    }

    #[test]
    fn sparse_convolutions_match_the_reference() {
        let mut seed = 91u64;
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for (what, c) in cases() {
                    seed += 1;
                    let za = [0u8, 128, 255, 17][seed as usize % 4];
                    let [nb, ch, h, wd] = c.x;
                    let [kh, kw] = c.geom.kernel;
                    let cg = ch / c.geom.group;
                    let x = rand_u8(nb * ch * h * wd, seed);
                    // Pruned: about 80% zeros.
                    let w: Vec<i8> = rand_i8(c.m * cg * kh * kw, -128, 127, seed + 1)
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            if (i * 7 + seed as usize).is_multiple_of(5) {
                                v
                            } else {
                                0
                            }
                        })
                        .collect();
                    let shape = [c.m, cg, kh, kw];
                    let Some(pk) = pack_conv_sparse(&w, shape, c.geom.group, f) else {
                        assert_eq!(cg, 1, "{what}: only depthwise weights stay direct");
                        continue;
                    };
                    assert!(pk.is_sparse());
                    let want = reference(&c, &x, za, &w);
                    let mut got = vec![0i32; want.len()];
                    qconv2d(&x, c.x, za, &c.geom, &pk, QOut::I32(&mut got), &cx);
                    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                        panic!("{name} {what} za{za} at {i}: {} vs {}", got[i], want[i]);
                    }
                    // The dequantizing epilogue equals the dense kernel's.
                    let dense = pack_conv(&w, shape, c.geom.group, f).expect("packs");
                    let scales = rand_f32(c.m, seed + 2, 0.01);
                    let bias = rand_f32(c.m, seed + 3, 2.0);
                    let ep = QEpilogue {
                        a_scale: 0.02,
                        b_scales: &scales,
                        bias: Some(&bias),
                        residual: None,
                        act: Some(&Activation::Relu),
                    };
                    let (mut ys, mut yd) = (vec![0.0f32; want.len()], vec![0.0f32; want.len()]);
                    qconv2d(&x, c.x, za, &c.geom, &pk, QOut::F32(&mut ys, ep), &cx);
                    qconv2d(&x, c.x, za, &c.geom, &dense, QOut::F32(&mut yd, ep), &cx);
                    assert_eq!(ys, yd, "{name} {what}");
                }
            }
        }
    }

    #[test]
    fn conv_accumulators_and_epilogues_match_reference() {
        let mut seed = 3u64;
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for (what, c) in cases() {
                    for wr in [(-128i8, 127i8), (-64, 63)] {
                        seed += 1;
                        let za = [0u8, 128, 255, 17][seed as usize % 4];
                        let [nb, ch, h, wd] = c.x;
                        let [kh, kw] = c.geom.kernel;
                        let x = rand_u8(nb * ch * h * wd, seed);
                        let w = rand_i8(c.m * (ch / c.geom.group) * kh * kw, wr.0, wr.1, seed + 1);
                        let shape = [c.m, ch / c.geom.group, kh, kw];
                        let pk = pack_conv(&w, shape, c.geom.group, f).expect("packs");
                        let want = reference(&c, &x, za, &w);
                        // Each pack that applies: the GEMM's and the
                        // indirect kernel's.
                        let indirect = pack_conv_indirect(&w, shape, &c.geom, (h, wd), f);
                        for pk in std::iter::once(pk).chain(indirect) {
                            let what = if pk.is_indirect() { "indirect" } else { what };
                            let mut got = vec![0i32; want.len()];
                            qconv2d(&x, c.x, za, &c.geom, &pk, QOut::I32(&mut got), &cx);
                            if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                                panic!(
                                    "{name} {what} za{za} {wr:?} at {i}: {} vs {}",
                                    got[i], want[i]
                                );
                            }
                            // Epilogues: per-channel scales, bias, NCHW residual.
                            let (oh, ow) = c.geom.out_hw(h, wd).expect("fits");
                            let p = oh * ow;
                            let scales: Vec<f32> = rand_f32(c.m, seed + 2, 0.01)
                                .iter()
                                .map(|v| v.abs() + 1e-4)
                                .collect();
                            let bias = rand_f32(c.m, seed + 3, 2.0);
                            let res = rand_f32(want.len(), seed + 4, 2.0);
                            for act in [
                                None,
                                Some(Activation::Relu),
                                Some(Activation::Clip { min: 0.0, max: 6.0 }),
                                // A low bound that requantizes above 0.
                                Some(Activation::Clip { min: 0.5, max: 4.0 }),
                            ] {
                                let ep = QEpilogue {
                                    a_scale: 0.03,
                                    b_scales: &scales,
                                    bias: Some(&bias),
                                    residual: seed.is_multiple_of(2).then_some(&res[..]),
                                    act: act.as_ref(),
                                };
                                let mut y = vec![f32::NAN; want.len()];
                                qconv2d(&x, c.x, za, &c.geom, &pk, QOut::F32(&mut y, ep), &cx);
                                let rq = QRequant {
                                    scale: 0.05,
                                    zero_point: 3,
                                };
                                let mut q = vec![0u8; want.len()];
                                qconv2d(&x, c.x, za, &c.geom, &pk, QOut::U8(&mut q, ep, rq), &cx);
                                for (i, (&acc, (&g, &gq))) in
                                    want.iter().zip(y.iter().zip(&q)).enumerate()
                                {
                                    let o = (i / p) % c.m;
                                    let mut v = acc as f32 * (0.03 * scales[o]);
                                    v += bias[o];
                                    if let Some(r) = ep.residual {
                                        v += r[i];
                                    }
                                    if let Some(a) = &act {
                                        let mut t = [v];
                                        crate::kernels::cpu::apply_activation_exact(a, &mut t);
                                        v = t[0];
                                    }
                                    assert_eq!(
                                        g.to_bits(),
                                        v.to_bits(),
                                        "{name} {what} {act:?} f32 at {i}"
                                    );
                                    let mut wq = [0u8];
                                    crate::kernels::cpu::qgemm::quantize_u8_with(
                                        Features::portable(),
                                        &[v],
                                        0.05,
                                        3,
                                        &mut wq,
                                    );
                                    assert_eq!(gq, wq[0], "{name} {what} {act:?} u8 at {i}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn adversarial_conv_is_exact() {
        // All-255 inputs against extreme weights, deep enough (C·9 = 2304)
        // for saturation to show, with padding read as the zero point.
        for (name, f) in features() {
            let cx = CpuCtx::single(f);
            let c = case([1, 256, 5, 5], 18, [3, 3], 1, 1, 1);
            let x = vec![255u8; 256 * 25];
            for (wname, wv) in [("-128", -128i8), ("+127", 127), ("-64", -64)] {
                let mut w = vec![wv; 18 * 256 * 9];
                for (i, v) in w.iter_mut().enumerate() {
                    if wname == "+127" && i % 2 == 1 {
                        *v = -128;
                    }
                }
                for za in [0u8, 255, 128] {
                    let pk = pack_conv(&w, [18, 256, 3, 3], 1, f).expect("packs");
                    let want = reference(&c, &x, za, &w);
                    let mut got = vec![0i32; want.len()];
                    qconv2d(&x, c.x, za, &c.geom, &pk, QOut::I32(&mut got), &cx);
                    assert_eq!(got, want, "{name} w {wname} za {za}");
                }
            }
        }
    }

    #[test]
    fn adversarial_depthwise_is_exact() {
        // Both depthwise paths (exact f32 sums where the CPU has AVX2, the
        // quad kernels elsewhere and past 512 taps): extreme weights and
        // activations, zero points 0 and 255, every stride/pad/dilation
        // edge (strides and dilations past the shuffle's reach take the
        // byte-by-byte quads), kernels wider than one 4-tap group, odd
        // widths with tails that fill no vector, 4-vector blocks, tiny
        // planes, and a 23x23 kernel (529 taps: the largest sums pass 2^24,
        // so it takes the quads).
        let mut geoms = Vec::new();
        for (hw, k, s, d, pads) in [
            ([1, 1], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            ([1, 1], [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),
            ([2, 3], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            ([2, 3], [2, 3], [1, 1], [1, 1], [0, 2, 1, 0]),
            ([5, 17], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            ([6, 33], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            ([4, 70], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            ([5, 131], [3, 3], [2, 2], [1, 1], [0, 1, 1, 0]),
            ([7, 71], [3, 3], [1, 1], [2, 2], [2, 2, 2, 2]),
            ([9, 41], [5, 5], [1, 1], [1, 1], [2, 2, 2, 2]),
            ([9, 40], [7, 7], [2, 2], [1, 1], [3, 3, 3, 3]),
            ([8, 29], [3, 6], [1, 3], [1, 1], [0, 3, 2, 0]),
            ([11, 38], [3, 3], [3, 4], [2, 2], [3, 0, 0, 3]),
            ([7, 23], [3, 2], [2, 1], [3, 5], [0, 5, 4, 1]),
            ([3, 9], [3, 3], [1, 1], [1, 1], [3, 3, 3, 3]),
            ([24, 25], [23, 23], [1, 1], [1, 1], [11, 11, 11, 11]),
        ] {
            let g = QConvGeom {
                kernel: k,
                strides: s,
                dilations: d,
                pads,
                group: 3,
            };
            if g.out_hw(hw[0], hw[1]).is_some() {
                geoms.push((hw, g));
            }
        }
        let mut seed = 77u64;
        for (name, f) in features() {
            for cx in [CpuCtx::single(f), two_threads(f)] {
                for &(hw, geom) in &geoms {
                    let c = Case {
                        x: [2, 3, hw[0], hw[1]],
                        m: 6,
                        geom,
                    };
                    let n = 2 * 3 * hw[0] * hw[1];
                    let taps = geom.kernel[0] * geom.kernel[1];
                    for (xname, x) in [
                        ("255", vec![255u8; n]),
                        ("0", vec![0u8; n]),
                        ("rand", rand_u8(n, seed)),
                    ] {
                        for (wname, w) in [
                            ("-128", vec![-128i8; 6 * taps]),
                            ("+127", vec![127i8; 6 * taps]),
                            (
                                "alt",
                                (0..6 * taps)
                                    .map(|i| if i % 3 == 0 { 127 } else { -128 })
                                    .collect(),
                            ),
                            ("rand", rand_i8(6 * taps, -128, 127, seed + 1)),
                        ] {
                            seed += 2;
                            for za in [0u8, 255, 128] {
                                let pk =
                                    pack_conv(&w, [6, 1, geom.kernel[0], geom.kernel[1]], 3, f)
                                        .expect("packs");
                                assert!(pk.is_direct());
                                let want = reference(&c, &x, za, &w);
                                let mut got = vec![0i32; want.len()];
                                qconv2d(&x, c.x, za, &geom, &pk, QOut::I32(&mut got), &cx);
                                assert_eq!(
                                    got, want,
                                    "{name} {hw:?} {geom:?} x {xname} w {wname} za {za}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_packs_are_refused() {
        let f = Features::portable();
        assert!(pack_conv(&[1; 8], [2, 1, 2, 2], 3, f).is_none());
        assert!(pack_conv(&[1; 7], [2, 1, 2, 2], 1, f).is_none());
        assert!(pack_conv(&[], [0, 1, 2, 2], 1, f).is_none());
        let big = vec![0i8; 7400 * 9];
        assert!(pack_conv(&big, [1, 7400, 3, 3], 1, f).is_none());
        assert!(pack_conv(&[1; 8], [2, 1, 2, 2], 2, f).is_some_and(|p| p.is_direct()));
        assert!(pack_conv(&[1; 8], [1, 2, 2, 2], 1, f).is_some_and(|p| !p.is_direct()));
        // The indirect kernel's padded planes stay near the input's size:
        // huge pads (a hostile model's) keep the GEMM.
        let mut geom = QConvGeom {
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1; 4],
            group: 1,
        };
        let w = [1i8; 2 * 4 * 9];
        let fits = pack_conv_indirect(&w, [2, 4, 3, 3], &geom, (8, 8), f);
        assert_eq!(fits.is_some(), f.avx512vnni);
        geom.pads = [1 << 20; 4];
        geom.strides = [1 << 19, 1 << 19];
        assert!(pack_conv_indirect(&w, [2, 4, 3, 3], &geom, (8, 8), f).is_none());
    }
}

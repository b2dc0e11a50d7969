//! Fast f32 convolution (`Conv` and `FusedConv`, 1-D and 2-D).
//!
//! The window geometry (output size, begin/end padding from explicit pads or
//! `auto_pad`) comes from the reference's `window_axes`, so both paths
//! agree on every shape; a 1-D convolution is run as a 2-D one of height 1.
//! Three paths, tried in order:
//!
//! * **depthwise** (`group == C == M`): per (batch, channel) plane, the
//!   input is copied into a zero-padded scratch plane whose rows are split
//!   into stride phases (so every tap of 8 consecutive outputs is one
//!   contiguous load at any stride), then each chunk of 8 outputs
//!   accumulates all taps in a register (AVX2/FMA, or portable lanes),
//!   with bias, residual and Relu/Clip applied before its single store;
//! * **pointwise** (1x1 kernel, stride 1, no padding): for every batch item
//!   and group, one GEMM straight on the input, `Y[M, H*W] = W[M, C] ·
//!   X[C, H*W]`;
//! * **general**: the same GEMM with B the im2col matrix `[C/G * kh * kw,
//!   OH * OW]` (zeros where a tap reads padding), which is never stored:
//!   the GEMM asks for it block by block ([`PackB`]) and it is packed
//!   straight from a zero-padded, stride-de-interleaved copy of the input,
//!   where every run of a panel row is one contiguous copy;
//! * **Winograd** F(2x2, 3x3) for 3x3 stride-1 convolutions over large
//!   planes (see `winograd`), weights transformed at prepack;
//! * **subsampled** (1x1 with strides or padding): the pixels read are
//!   gathered into output-sized planes for the pointwise GEMM;
//! * **transposed** (small output planes, more channels than pixels, as in
//!   the last stages of CNNs): `Yᵀ = colsᵀ · Wᵀ`, so the few pixels become
//!   register-tile rows (12 at a time) instead of filling a fraction of a
//!   32-wide tile.
//!
//! Weights are packed once per plan ([`prepack`]) into the layout the
//! chosen path consumes. Bias, the FusedConv residual and activation are
//! fused: into the GEMM
//! epilogue, or into the depthwise kernel (other activations than
//! Relu/Clip run on each finished plane while it is in cache). Anything
//! else (3-D convolution, inputs that do not fit the attributes, a residual
//! that broadcasts) returns `Ok(false)` and runs on the reference kernel,
//! which also produces the error messages for invalid nodes.

use super::choice::ConvAlgo;
use super::gemm::{
    direct_lanes, gemm, gemm_direct, pack_a, pack_b, split_act, with_buf, ASrc, BSrc, DirectPiece,
    DirectSeg, Epilogue, PackB, PackedA, PackedB, DIRECT_PIECES,
};
use super::geometry::Window2d;
use super::lanes::{self, Lanes, PhasePad, Row, Square, LANES, P8};
use super::{direct_oc, ops, sparse, stem, winograd, CpuCtx, Features, Prepacked, View, ViewMut};

/// Channels a vector holds in the AVX-512 channel-interleaved depthwise
/// kernel ([`dw_c16_avx512`]; 8 elsewhere).
const WIDE_LANES: usize = 16;
use crate::ir::ops::nn::conv::window_axes;
use crate::ir::{Activation, AutoPad, ConvAttrs, Op};
use crate::Result;

/// Elements of output below which a kernel stays on one thread.
const PAR_MIN_WORK: usize = 1 << 14;

/// Runs Conv / FusedConv on the fast path; `Ok(false)` when not handled.
pub fn run(op: &Op, inputs: &[Option<View>], outputs: &mut [ViewMut], cx: &CpuCtx) -> Result<bool> {
    run_packed(op, inputs, outputs, None, cx)
}

/// Packs a constant weight of a convolution that runs through GEMM, one
/// packed operand per group (see [`super::prepack`]): A `[M/G, C/G * kh *
/// kw]` as a rule, or B = Wᵀ for the transposed product when the output
/// planes are small (see `transposed_product`). Depthwise weights are used
/// as they are.
pub fn prepack(
    op: &Op,
    inputs: &[Option<View>],
    out_shape: &[usize],
    cx: &CpuCtx,
) -> Option<Prepacked> {
    prepack_with(op, inputs, out_shape, None, cx)
}

/// [`prepack`] for the algorithm `algo` (a [`ConvAlgo`] of
/// [`algorithms`]; None or one that cannot run this convolution: the
/// default). Depthwise weights are used as they are; their pack only
/// records the algorithm.
pub fn prepack_with(
    op: &Op,
    inputs: &[Option<View>],
    out_shape: &[usize],
    algo: Option<ConvAlgo>,
    cx: &CpuCtx,
) -> Option<Prepacked> {
    let w = inputs.get(1).copied().flatten()?;
    let s = ConvShape::new(op, w.shape, out_shape)?;
    if w.data.len() != w.shape.iter().product::<usize>() {
        return None;
    }
    let legal = s.algorithms(cx.features, super::weight_work_density(op, &w));
    let algo = algo
        .filter(|a| legal.contains(a))
        .or(legal.first().copied())?;
    let (mg, k) = (s.mg, w.data.len() / s.m);
    let packs_a = || {
        (0..s.group)
            .map(|gi| {
                let wg = &w.data[gi * mg * k..(gi + 1) * mg * k];
                pack_a(mg, k, wg, k, false, cx.features)
            })
            .collect()
    };
    Some(match algo {
        ConvAlgo::Winograd | ConvAlgo::Winograd4 => {
            let tile = if algo == ConvAlgo::Winograd {
                winograd::Tile::F2
            } else {
                winograd::Tile::F4
            };
            let c = w.shape[1];
            Prepacked::ConvWinograd(winograd::prepack(w.data, s.m, c, tile, cx.features))
        }
        ConvAlgo::Transposed => Prepacked::ConvWeightsT(
            (0..s.group)
                .map(|gi| {
                    let wg = &w.data[gi * mg * k..(gi + 1) * mg * k];
                    pack_b(k, mg, wg, k, true, cx.features)
                })
                .collect(),
        ),
        ConvAlgo::Direct => Prepacked::ConvWeights {
            packs: packs_a(),
            direct: true,
        },
        ConvAlgo::Gemm => Prepacked::ConvWeights {
            packs: packs_a(),
            direct: false,
        },
        ConvAlgo::DirectOc => {
            Prepacked::ConvDirectOc(direct_oc::prepack(w.data, s.m, s.group, k, cx.features))
        }
        ConvAlgo::DwPlane | ConvAlgo::DwInterleaved => Prepacked::Depthwise {
            interleaved: algo == ConvAlgo::DwInterleaved,
        },
        ConvAlgo::Sparse => Prepacked::ConvSparse(
            (0..s.group)
                .map(|gi| sparse::prepack(&w.data[gi * mg * k..(gi + 1) * mg * k], mg, k))
                .collect(),
        ),
    })
}

/// The algorithms that can run convolution `op` with weights of
/// `w_shape` (constant, with `w_density` of them nonzero; None when not
/// constant) into an output of `out_shape` on a CPU with `features`, the
/// default first (the choice [`prepack`] makes); empty when `op` is not a
/// convolution the fast path takes.
pub fn algorithms(
    op: &Op,
    w_shape: &[usize],
    w_density: Option<f64>,
    out_shape: &[usize],
    features: Features,
) -> Vec<ConvAlgo> {
    ConvShape::new(op, w_shape, out_shape).map_or(Vec::new(), |s| s.algorithms(features, w_density))
}

/// Weight density up to which the sparse kernel is a candidate at all:
/// denser (unpruned) weights never list it, so their tuning is unchanged.
pub const SPARSE_MAX_DENSITY: f64 = 0.5;

/// Weight (work) density up to which a 1x1 stride-1 convolution runs
/// sparse by default. `sparse_speed` on the Intel Xeon of 2026-12-06
/// (AVX-512, 1 thread), 256->256 at 28x28 against the dense GEMM: 0.8x at
/// density 0.3, 1.15-1.25x at 0.2, 2.2x at 0.1, 4x at 0.05; break-even
/// near 0.23.
pub const SPARSE_DEFAULT_DENSITY_1X1: f64 = 0.2;

/// Weight (work) density up to which a convolution through im2col
/// columns runs sparse by default when Winograd is its dense default:
/// 128->128 3x3 at 28x28 against Winograd F(4x4) ran 0.8-0.9x at density
/// 0.1 and 1.3x at 0.05 (the sparse kernel did about 25 useful GFLOP/s;
/// in blocks of 4 rows 1.0-1.05x at density 0.2, 1.5x at 0.1).
pub const SPARSE_DEFAULT_DENSITY_WINOGRAD: f64 = 0.08;

/// As [`SPARSE_DEFAULT_DENSITY_WINOGRAD`] for the other im2col
/// convolutions (strided, dilated, grouped, not 3x3), whose dense kernels
/// do about 4x fewer useful products a second than Winograd F(4x4) (about
/// the GEMM's 170 GFLOP/s against Winograd's 290 equivalent, and the
/// sparse kernel's 25 useful): an estimate, not measured.
pub const SPARSE_DEFAULT_DENSITY_IM2COL: f64 = 0.15;

/// What the choice of algorithm depends on: the weights' and the output's
/// shapes and the attributes (not the input's spatial size).
struct ConvShape {
    /// Batch items.
    n: usize,
    /// Output channels, groups, output channels per group.
    m: usize,
    group: usize,
    mg: usize,
    /// Input channels per group.
    cg: usize,
    kernel: Vec<usize>,
    /// Output width (last axis) and pixels of an output plane.
    ow: usize,
    out_plane: usize,
    unit_strides: bool,
    unit_dilations: bool,
    /// 2-D (the transposed product and Winograd need it).
    two_d: bool,
    /// 3x3, undilated, at stride 1 padded by 1 all round or at stride 2
    /// padded by at most 1 at the top and left, rows at most
    /// [`DW3X3_MAX_VECTORS`] vectors: [`dw3x3_row_vectors`]'s geometry.
    direct_3x3: bool,
}

impl ConvShape {
    fn new(op: &Op, w_shape: &[usize], out_shape: &[usize]) -> Option<ConvShape> {
        let attrs = match op {
            Op::Conv(a) | Op::FusedConv { conv: a, .. } => a,
            _ => return None,
        };
        let (m, group) = (*w_shape.first()?, attrs.group);
        if !(3..=4).contains(&w_shape.len()) || group == 0 || m % group != 0 || m == 0 {
            return None;
        }
        if out_shape.len() != w_shape.len() || out_shape[1] != m {
            return None;
        }
        let ones = |v: &[usize]| v.iter().all(|&s| s == 1);
        let ow = *out_shape.last()?;
        let padded_by_one = match attrs.auto_pad {
            AutoPad::NotSet => attrs.pads == [1, 1, 1, 1],
            AutoPad::SameUpper | AutoPad::SameLower => true,
            AutoPad::Valid => false,
        };
        // Stride 2 needs the leading pads at most 1 (the trailing ones only
        // decide the output size; what lies past the input reads 0).
        let leading_at_most_one = match attrs.auto_pad {
            AutoPad::NotSet => attrs.pads.len() == 4 && attrs.pads[..2].iter().all(|&p| p <= 1),
            AutoPad::SameUpper | AutoPad::SameLower => true,
            AutoPad::Valid => true,
        };
        let direct_3x3 = w_shape[2..] == [3, 3]
            && ones(&attrs.dilations)
            && ((ones(&attrs.strides) && padded_by_one)
                || (attrs.strides == [2, 2] && leading_at_most_one))
            && ow <= 16 * DW3X3_MAX_VECTORS;
        Some(ConvShape {
            n: out_shape[0],
            m,
            group,
            mg: m / group,
            cg: w_shape[1],
            kernel: w_shape[2..].to_vec(),
            ow,
            out_plane: out_shape[2..].iter().product(),
            unit_strides: ones(&attrs.strides),
            unit_dilations: ones(&attrs.dilations),
            two_d: w_shape.len() == 4,
            direct_3x3,
        })
    }

    fn depthwise(&self) -> bool {
        self.cg == 1 && self.group == self.m
    }

    /// Whether the channel-vectorized direct kernel is the default: on
    /// AVX-512, for strided windows and small planes with many channels
    /// (where pixel-vectorized kernels must pack or gather their input, or
    /// fill their vectors badly). On an Intel Xeon (AVX-512, 1 thread) it
    /// ran ResNet-18's stride-2 3x3 convolutions 1.2-1.3x faster than the
    /// direct or im2col kernels and its 7x7 planes 1.05x faster than the
    /// transposed product; stride-1 planes of 14x14 and up run faster
    /// through Winograd, shallow reductions direct. Not measured on AVX2-only machines: there it is a
    /// candidate for the tuner only.
    fn direct_oc_by_default(&self, features: Features) -> bool {
        let taps: usize = self.kernel.iter().product();
        features.avx512f
            && self.two_d
            && self.mg >= DIRECT_OC_MIN_MG
            && self.cg * taps >= DIRECT_OC_MIN_DEPTH
            && ((taps > 1 && !self.unit_strides) || transposed_product(self.mg, self.out_plane))
    }

    /// Whether a 3x3 convolution that Winograd would run as F(2x2) (planes
    /// too small for F(4x4)) runs direct-oc by default instead: on AVX-512,
    /// with as many output channels and as deep a reduction as direct-oc
    /// asks for. F(2x2) saves 2.25x the multiplies but not its transforms,
    /// and its 16 transformed weight matrices (4.2 MB for 256 channels)
    /// are read whole by every thread's tiles. On a Zen 5 (2 threads),
    /// `mlc tune` picked direct-oc for ResNet-18's 14x14 layers at 0.81-0.85
    /// of F(2x2)'s time on one thread and 0.74-0.77 on two (where F(2x2)
    /// ran 1.59x faster than on one thread, direct-oc 1.95x).
    fn direct_oc_over_winograd2(&self, features: Features) -> bool {
        let taps: usize = self.kernel.iter().product();
        features.avx512f
            && self.n * self.out_plane < WINOGRAD4_MIN_PIXELS
            && self.mg >= DIRECT_OC_MIN_MG
            && self.cg * taps >= DIRECT_OC_MIN_DEPTH
    }

    /// Whether weights of `density` run sparse by default, `dense` being
    /// the dense default.
    fn sparse_by_default(&self, density: f64, dense: Option<ConvAlgo>) -> bool {
        let pointwise = self.kernel.iter().all(|&k| k == 1) && self.unit_strides;
        density
            <= if pointwise {
                SPARSE_DEFAULT_DENSITY_1X1
            } else if matches!(dense, Some(ConvAlgo::Winograd | ConvAlgo::Winograd4)) {
                SPARSE_DEFAULT_DENSITY_WINOGRAD
            } else {
                SPARSE_DEFAULT_DENSITY_IM2COL
            }
    }

    /// The legal algorithms, the default first: a pruned weight's
    /// ([`ConvShape::sparse_by_default`]), else today's thresholds'.
    fn algorithms(&self, features: Features, density: Option<f64>) -> Vec<ConvAlgo> {
        let mut out = self.dense_algorithms(features);
        if self.depthwise() || self.cg == 0 {
            return out;
        }
        match density {
            Some(d) if self.sparse_by_default(d, out.first().copied()) => {
                out.insert(0, ConvAlgo::Sparse)
            }
            Some(d) if d <= SPARSE_MAX_DENSITY => out.push(ConvAlgo::Sparse),
            _ => {}
        }
        out
    }

    /// The legal dense algorithms, the default (today's thresholds) first.
    fn dense_algorithms(&self, features: Features) -> Vec<ConvAlgo> {
        if self.depthwise() {
            let nplanes = self.n * self.m;
            let small = dw_interleaved_by_default(
                self.out_plane,
                !self.unit_strides,
                self.direct_3x3,
                features,
            );
            return match (nplanes >= LANES, small) {
                (true, true) => vec![ConvAlgo::DwInterleaved, ConvAlgo::DwPlane],
                (true, false) => vec![ConvAlgo::DwPlane, ConvAlgo::DwInterleaved],
                (false, _) => vec![ConvAlgo::DwPlane],
            };
        }
        if self.cg == 0 {
            return vec![ConvAlgo::Gemm];
        }
        let taps: usize = self.kernel.iter().product();
        let winograd = self.two_d
            && self.kernel == [3, 3]
            && self.unit_strides
            && self.unit_dilations
            && self.group == 1;
        let transposed = self.two_d && self.out_plane <= TRANSPOSED_MAX_PLANE;
        let direct = direct_lanes(features).is_some() && taps > 1;
        let default = if winograd
            && winograd::applies(self.group, self.cg, self.m, self.out_plane)
            && !self.direct_oc_over_winograd2(features)
        {
            if self.n * self.out_plane >= WINOGRAD4_MIN_PIXELS {
                ConvAlgo::Winograd4
            } else {
                ConvAlgo::Winograd
            }
        } else if self.direct_oc_by_default(features) || self.direct_oc_over_winograd2(features) {
            ConvAlgo::DirectOc
        } else if self.two_d && transposed_product(self.mg, self.out_plane) {
            ConvAlgo::Transposed
        } else if direct && self.ow >= DIRECT_MIN_OW && self.mg >= DIRECT_MIN_MG {
            ConvAlgo::Direct
        } else {
            ConvAlgo::Gemm
        };
        let mut out = vec![default];
        for (legal, a) in [
            (direct, ConvAlgo::Direct),
            (true, ConvAlgo::Gemm),
            (winograd, ConvAlgo::Winograd),
            (winograd, ConvAlgo::Winograd4),
            (transposed, ConvAlgo::Transposed),
            (true, ConvAlgo::DirectOc),
        ] {
            if legal && a != default {
                out.push(a);
            }
        }
        out
    }
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
    let is_depthwise = g.group == g.c && g.m == g.c;
    if !is_depthwise && !g.win.padding_fits() {
        // Pads far beyond the input (the paths below but depthwise, which
        // has a loop without scratch, copy it padded): the reference kernel
        // skips them instead.
        return Ok(false);
    }
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
    if is_depthwise {
        let interleave = match packed {
            Some(Prepacked::Depthwise { interleaved }) => Some(*interleaved),
            _ => None,
        };
        depthwise(&g, x.data, w.data, &fused, interleave, out.data, cx);
    } else if let Some(Prepacked::ConvWinograd(u)) = packed.filter(|p| winograd_fits(&g, p)) {
        let (bias, res) = (fused.bias, fused.residual);
        winograd::run(&g.win, g.n, g.c, u, x.data, bias, res, act, out.data, cx);
    } else if let Some(Prepacked::ConvDirectOc(wo)) = packed.filter(|p| direct_oc_fits(&g, p, cx)) {
        let (bias, res) = (fused.bias, fused.residual);
        direct_oc::run(&g.win, g.n, g.c, wo, x.data, bias, res, act, out.data, cx);
    } else if let Some(Prepacked::ConvSparse(ws)) = packed.filter(|p| sparse_fits(&g, p)) {
        via_sparse(&g, x.data, ws, &fused, out.data, cx);
    } else if g.win.kh == 1 && g.win.kw == 1 && !g.win.pointwise() && !fused_transposed(packed) {
        via_subsampled(
            &g,
            x.data,
            w.data,
            conv_packs(packed, &g),
            &fused,
            out.data,
            cx,
        );
    } else {
        let k = g.cg * g.win.kh * g.win.kw;
        match packed {
            Some(Prepacked::ConvWeightsT(p))
                if p.len() == g.group && p.iter().all(|b| b.k() == k && b.n() == g.mg) =>
            {
                via_transposed_gemm(&g, x.data, p, &fused, out.data, cx)
            }
            Some(Prepacked::ConvWeights { packs: p, direct })
                if p.len() == g.group && p.iter().all(|a| a.m() == g.mg && a.k() == k) =>
            {
                if *direct && stem::applies(&g.win, g.cg, g.group, cx.features) {
                    let (bias, res) = (fused.bias, fused.residual);
                    stem::run(
                        &g.win, g.n, g.c, g.m, x.data, w.data, bias, res, act, out.data, cx,
                    );
                } else if !(*direct && via_direct(&g, x.data, p, &fused, out.data, cx)) {
                    via_gemm(&g, x.data, w.data, Some(p), &fused, out.data, cx)
                }
            }
            _ if direct(&g, cx) && stem::applies(&g.win, g.cg, g.group, cx.features) => {
                let (bias, res) = (fused.bias, fused.residual);
                stem::run(
                    &g.win, g.n, g.c, g.m, x.data, w.data, bias, res, act, out.data, cx,
                );
            }
            _ => {
                let done = direct(&g, cx) && {
                    // Weights not prepacked (not constant): packed here.
                    let packs: Vec<PackedA> = (0..g.group)
                        .map(|gi| {
                            let wg = &w.data[gi * g.mg * k..(gi + 1) * g.mg * k];
                            pack_a(g.mg, k, wg, k, false, cx.features)
                        })
                        .collect();
                    via_direct(&g, x.data, &packs, &fused, out.data, cx)
                };
                if !done {
                    via_gemm(&g, x.data, w.data, None, &fused, out.data, cx)
                }
            }
        }
    }
    Ok(true)
}

/// Checked shapes of one convolution.
#[derive(Clone, Debug)]
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
        ops::activation(act, p, cx.features);
    }
}

/// Depthwise convolution. The (batch, channel) planes are split across
/// threads in chunks of whole planes; each plane is copied into a padded,
/// phase-split scratch plane ([`PhasePad`]) and run through the
/// register-blocked kernel ([`dw_kernel`]), or, when that scratch would be
/// unreasonably large (huge pads or strides), through the plain per-tap
/// loop ([`dw_plane`]).
///
/// `interleave` forces the channel-interleaved kernel on or off (for 8
/// planes or more); None: small planes take it.
fn depthwise(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    f: &Fused,
    interleave: Option<bool>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let win = &g.win;
    let (in_plane, out_plane, k) = (win.in_plane(), win.out_plane(), win.kh * win.kw);
    let avx = cx.features.avx2_fma && ops::has_avx2_fma();
    let width = if avx && cx.features.avx512f && has_avx512f() {
        DwWidth::Avx512
    } else if avx {
        DwWidth::Avx2
    } else {
        DwWidth::Portable
    };
    // Relu and Clip are applied in registers; other activations on the
    // finished plane while it is still in cache.
    let (clamp, _) = split_act(f.act);
    let plan = DwPlan::new(win, clamp);
    let ranges: Vec<(usize, usize, usize)> = match plan {
        Some(_) => Vec::new(),
        None => (0..win.kw).map(|kj| win.col_range(kj)).collect(),
    };
    // One plane `i` (batch * C + channel) into `p`.
    let one = |i: usize, p: &mut [f32], scratch: &mut [f32]| {
        let ch = i % g.c;
        let xp = &x[i * in_plane..(i + 1) * in_plane];
        let wk = &w[ch * k..(ch + 1) * k];
        let bias = f.bias.map_or(0.0, |b| b[ch]);
        match &plan {
            Some(plan) => {
                let res = f.residual.map(|r| &r[i * out_plane..(i + 1) * out_plane]);
                dw_padded(width, plan, xp, scratch, wk, bias, res, p);
                if clamp.is_none() {
                    if let Some(act) = f.act {
                        ops::activation(act, p, cx.features);
                    }
                }
            }
            None => {
                dw_plane(avx, win, &ranges, xp, wk, bias, p);
                finish_plane(f, i, out_plane, p, cx);
            }
        }
    };
    // Small planes go 8 at a time through the channel-interleaved kernel.
    let nplanes = g.n * g.c;
    let small = dw_interleaved_by_default(
        out_plane,
        win.sh * win.sw > 1,
        dw3x3_row_vectors(win).is_some(),
        cx.features,
    );
    // 16 channels a vector on AVX-512 where there are 16 planes.
    let lanes = match width {
        DwWidth::Avx512 if nplanes >= WIDE_LANES => WIDE_LANES,
        _ => LANES,
    };
    let il = (interleave.unwrap_or(small) && nplanes >= lanes)
        .then(|| InterleavedPlan::new(win, g.c, w, f.bias, clamp, lanes))
        .flatten();
    // Planes `i0..` of the output chunk `ys`.
    let planes = |i0: usize, ys: &mut [f32]| {
        let mut done = 0;
        if let Some(il) = &il {
            let group = lanes * out_plane;
            let xs = &x[i0 * in_plane..];
            with_interleaved_scratch(il, |buf| {
                for (q, yg) in ys.chunks_exact_mut(group).enumerate() {
                    let first = i0 + q * lanes;
                    let xg = &xs[q * lanes * in_plane..(q + 1) * lanes * in_plane];
                    let res = f.residual.map(|r| &r[first * out_plane..][..group]);
                    dw_interleaved(avx, il, first, xg, res, buf, yg);
                    if clamp.is_none() {
                        if let Some(act) = f.act {
                            ops::activation(act, yg, cx.features);
                        }
                    }
                }
            });
            done = ys.len() / group * lanes;
        }
        let ys = &mut ys[done * out_plane..];
        let i0 = i0 + done;
        let mut each = |buf: &mut [f32]| {
            for (j, p) in ys.chunks_exact_mut(out_plane).enumerate() {
                one(i0 + j, p, buf);
            }
        };
        match &plan {
            Some(plan) => lanes::with_scratch(&DW_SCRATCH, plan.pad, 0.0, each),
            None => each(&mut []),
        }
    };
    let bands = cx.threads > 1
        && g.n < cx.threads
        && y.len() >= PAR_MIN_WORK
        && in_plane >= DW_BANDS_MIN_IN_PLANE
        && win.oh >= 2 * cx.threads;
    if let (true, None, Some(plan)) = (bands, &il, &plan) {
        // Each thread takes a band of rows of every plane.
        let parts = cx.threads;
        let yp = PlanesPtr(y.as_mut_ptr());
        cx.for_each(parts, |t| {
            let rows = t * win.oh / parts..(t + 1) * win.oh / parts;
            let yp = &yp;
            lanes::with_scratch(&DW_SCRATCH, plan.pad, 0.0, |buf| {
                for i in 0..nplanes {
                    let ch = i % g.c;
                    let xp = &x[i * in_plane..(i + 1) * in_plane];
                    let wk = &w[ch * k..(ch + 1) * k];
                    let bias = f.bias.map_or(0.0, |b| b[ch]);
                    let res = f.residual.map(|r| &r[i * out_plane..(i + 1) * out_plane]);
                    // SAFETY: plane i lies inside y (nplanes planes); this
                    // task alone writes its rows of every plane.
                    unsafe {
                        let p = yp.0.add(i * out_plane);
                        dw_padded_rows(width, plan, xp, buf, wk, bias, res, p, rows.clone());
                        if let (None, Some(act)) = (clamp, f.act) {
                            let band = p.add(rows.start * win.ow);
                            let n = rows.len() * win.ow;
                            ops::activation(
                                act,
                                std::slice::from_raw_parts_mut(band, n),
                                cx.features,
                            );
                        }
                    }
                }
            })
        });
    } else if cx.threads > 1 && y.len() >= PAR_MIN_WORK && nplanes > 1 {
        // Several small planes per task (7x7 planes are ~50 outputs), but
        // enough tasks to balance the threads; whole groups of 8 or 16 for
        // the interleaved kernel.
        let mut per_task = (DW_TASK_WORK / out_plane)
            .min(nplanes.div_ceil(4 * cx.threads))
            .max(1);
        if il.is_some() {
            per_task = per_task.div_ceil(lanes) * lanes;
        }
        cx.for_each_chunk_mut(y, per_task * out_plane, |t, ys| planes(t * per_task, ys));
    } else {
        planes(0, y);
    }
}

/// A depthwise convolution (one channel per group, multiplier 1) of `c`
/// planes of one batch item, no bias, residual or activation, on the
/// kernels above with `cx`'s threads: the int8 depthwise runs it on exact
/// integers (`qconv/dw.rs`).
pub(crate) fn depthwise_plain(
    win: &Window2d,
    c: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let g = ConvGeom {
        n: 1,
        c,
        m: c,
        group: c,
        cg: 1,
        mg: 1,
        win: win.clone(),
    };
    let none = Fused {
        bias: None,
        residual: None,
        act: None,
    };
    depthwise(&g, x, w, &none, None, y, cx);
}

/// The output planes, written in disjoint bands of rows by several
/// threads.
struct PlanesPtr(*mut f32);
// SAFETY: the tasks that share it write disjoint rows (see `depthwise`).
unsafe impl Sync for PlanesPtr {}

/// Input planes from which the threads split a depthwise convolution
/// with fewer batch items than threads into bands of rows rather than
/// into planes (its producer, a GEMM over the pixels, left each thread's
/// share of every plane in that thread's cache). On an Intel Xeon
/// (AVX-512, 2 threads, batch 1) MobileNetV2's 112x112-input layers ran
/// 1.1-1.2x faster in bands, its 56x56 ones level and the smaller ones
/// 1.2x slower (every thread pays each plane's set-up); at batch 8, where
/// the threads share out whole items, bands ran the model 1.05x slower.
const DW_BANDS_MIN_IN_PLANE: usize = 112 * 112;

/// Output elements a parallel depthwise task aims at.
const DW_TASK_WORK: usize = 4096;

/// Depthwise output planes up to this many pixels (4 times as many when
/// strided) run 8 channels at a time through [`dw_interleaved`]: a plane-by-plane
/// kernel spends more on each small plane's set-up, stride-phase split and
/// partial vectors than on its taps. (MobileNetV2 on Zen 2: 7x7 and 14x14
/// planes 1.4-2.6x faster, 28x28 at stride 2 1.25x, 28x28 at stride 1 and
/// larger planes the same or slower.)
const DW_C8_MAX_PLANE: usize = 256;

/// [`DW_C8_MAX_PLANE`] where the plane kernel runs on AVX-512's 16 lanes:
/// a 14x14 plane is then one vector a row. On an Intel Xeon (AVX-512, 1
/// and 2 threads) `mlc tune` picked the plane kernel for MobileNetV2's
/// 14x14 planes (1.1-1.4x) and 28x28 stride-2 ones (1.3x), and kept the
/// interleaved one for 7x7.
const DW_C8_MAX_PLANE_WIDE: usize = 64;

/// Whether a depthwise convolution with output planes of `out_plane`
/// pixels runs channel-interleaved ([`dw_interleaved`]) unless a choice says
/// otherwise: small planes, 4 times as large when `strided`; on AVX-512
/// never a `direct_3x3` one ([`dw3x3_row_vectors`]'s geometry), whose planes
/// [`dw3x3_avx512`] runs without a padded copy, except at stride 2 on
/// output planes of at most [`DW_C8_MAX_PLANE_WIDE`] pixels (one vector a
/// row, half of it empty). On Zen 5, 1 thread: MobileNetV2's 7x7 stride-1
/// layers 0.76-0.77x the interleaved kernel's time, run by run in `mlc
/// tune`, its 14x14 to 112x112 ones 2-4x faster than the interleaved one;
/// stride 2, per-node minima of 4 alternating rounds against the padded
/// and interleaved kernels it replaced: 112x112 -> 56x56 (96 channels)
/// 0.25 -> 0.19 ms, 56 -> 28 (144) 0.095 -> 0.057, 28 -> 14 (192,
/// interleaved before) 0.035 -> 0.017, and 14 -> 7 (576) 0.036 -> 0.042
/// (slower: left interleaved).
fn dw_interleaved_by_default(
    out_plane: usize,
    strided: bool,
    direct_3x3: bool,
    features: Features,
) -> bool {
    let wide = features.avx512f && features.avx2_fma;
    if wide && direct_3x3 && (!strided || out_plane > DW_C8_MAX_PLANE_WIDE) {
        return false;
    }
    let max = if wide {
        DW_C8_MAX_PLANE_WIDE
    } else {
        DW_C8_MAX_PLANE
    };
    out_plane <= max || (strided && out_plane <= 4 * max)
}

/// Everything the channel-interleaved depthwise kernel ([`dw_interleaved`])
/// needs besides the data: the channels a vector holds (`lanes`, 8 or
/// 16), the interleaved scratch layout (`hp × wp` padded positions of
/// `lanes` channels, the input at `(top, left)`), each tap's offset in it
/// from an output's first read, and the clamp.
struct InterleavedPlan<'a> {
    win: &'a Window2d,
    lanes: usize,
    c: usize,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    hp: usize,
    wp: usize,
    taps: Vec<usize>,
    clamp: Option<(f32, f32)>,
}

impl<'a> InterleavedPlan<'a> {
    /// `None` for a degenerate window.
    fn new(
        win: &'a Window2d,
        c: usize,
        w: &'a [f32],
        bias: Option<&'a [f32]>,
        clamp: Option<(f32, f32)>,
        lanes: usize,
    ) -> Option<InterleavedPlan<'a>> {
        if win.oh == 0 || win.ow == 0 || win.kh == 0 || win.kw == 0 {
            return None;
        }
        let (hp, wp) = win.padded_extent();
        let taps = (0..win.kh * win.kw)
            .map(|t| ((t / win.kw) * win.dh * wp + (t % win.kw) * win.dw) * lanes)
            .collect();
        Some(InterleavedPlan {
            win,
            lanes,
            c,
            w,
            bias,
            hp,
            wp,
            taps,
            clamp,
        })
    }

    /// Floats of scratch: the interleaved input, the interleaved output,
    /// the taps' weights and the biases of one group.
    fn scratch_len(&self) -> usize {
        (self.hp * self.wp + self.win.out_plane() + self.taps.len() + 1) * self.lanes
    }
}

/// The `(lanes, hp, wp, top, left)` a [`dw_interleaved`] scratch's zero
/// padding was laid out for.
type InterleavedKey = (usize, usize, usize, usize, usize);

thread_local! {
    /// [`dw_interleaved`]'s scratch and its layout.
    static INTERLEAVED_SCRATCH: std::cell::RefCell<(Vec<f32>, InterleavedKey)> =
        const { std::cell::RefCell::new((Vec::new(), (0, 0, 0, 0, 0))) };
}

/// Runs `f` on this thread's [`dw_interleaved`] scratch for `plan` (its
/// padding zero; a fresh one if the thread's is in use).
fn with_interleaved_scratch(plan: &InterleavedPlan, f: impl FnOnce(&mut [f32])) {
    let key = (
        plan.lanes,
        plan.hp,
        plan.wp,
        plan.win.pad_top,
        plan.win.pad_left,
    );
    let len = plan.scratch_len();
    INTERLEAVED_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let (buf, k) = &mut *s;
            if *k != key || buf.len() != len {
                buf.clear();
                buf.resize(len, 0.0);
                *k = key;
            }
            f(buf)
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Depthwise convolution of the `lanes` planes `first..first + lanes`
/// (flat batch * C + channel; `x` their input planes, `y` their output
/// planes, `res` their residual), `lanes` channels per vector (8, or 16 on
/// AVX-512: [`dw_c16_avx512`]): the planes are transposed into an interleaved
/// padded scratch (a position's channels side by side), each output's taps
/// accumulate in one register from the bias in the order of the plane
/// kernel, and the results are transposed back, with the residual and
/// clamp, into the planes. Every output sees the same arithmetic as in
/// [`dw_padded`].
#[allow(clippy::too_many_arguments)]
fn dw_interleaved(
    avx: bool,
    plan: &InterleavedPlan,
    first: usize,
    x: &[f32],
    res: Option<&[f32]>,
    buf: &mut [f32],
    y: &mut [f32],
) {
    let (win, lanes) = (plan.win, plan.lanes);
    let ok = x.len() == lanes * win.in_plane()
        && y.len() == lanes * win.out_plane()
        && res.is_none_or(|r| r.len() == y.len())
        && buf.len() == plan.scratch_len()
        && plan.w.len() == plan.c * plan.taps.len()
        && (lanes == LANES || (lanes == WIDE_LANES && has_avx512f()));
    if !ok {
        // Unreachable from `depthwise`, which sizes everything from the
        // same window and picks 16 lanes only on AVX-512; kept so the
        // unsafe kernels never see a bad call.
        debug_assert!(false, "dw_interleaved: inconsistent arguments");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if lanes == WIDE_LANES {
        // SAFETY: AVX-512F is present and the sizes match (checked above).
        unsafe { dw_c16_avx512(plan, first, x, res, buf, y) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx && ops::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the sizes were checked above.
        unsafe { dw_c8_avx(plan, first, x, res, buf, y) };
        return;
    }
    let _ = avx;
    // SAFETY: the sizes were checked above.
    unsafe { dw_interleaved_impl::<P8, LANES>(plan, first, x, res, buf, y) }
}

/// [`dw_interleaved_impl`] on AVX2/FMA registers, 8 lanes.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the sizes are [`dw_interleaved`]'s
/// for 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_c8_avx(
    plan: &InterleavedPlan,
    first: usize,
    x: &[f32],
    res: Option<&[f32]>,
    buf: &mut [f32],
    y: &mut [f32],
) {
    dw_interleaved_impl::<lanes::A8, LANES>(plan, first, x, res, buf, y)
}

/// [`dw_interleaved_impl`] on AVX-512 registers, 16 lanes.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA; the sizes are
/// [`dw_interleaved`]'s for 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dw_c16_avx512(
    plan: &InterleavedPlan,
    first: usize,
    x: &[f32],
    res: Option<&[f32]>,
    buf: &mut [f32],
    y: &mut [f32],
) {
    dw_interleaved_impl::<lanes::A16, WIDE_LANES>(plan, first, x, res, buf, y)
}

/// The body of [`dw_interleaved`], `L` channels a vector. (Arrays are
/// filled by plain loops: closures would not inline into the
/// `target_feature` entry points on every width.)
///
/// # Safety
/// The sizes are [`dw_interleaved`]'s for `L` lanes, and the CPU supports
/// `V`'s instructions.
#[inline(always)]
unsafe fn dw_interleaved_impl<V: Square<L>, const L: usize>(
    plan: &InterleavedPlan,
    first: usize,
    x: &[f32],
    res: Option<&[f32]>,
    buf: &mut [f32],
    y: &mut [f32],
) {
    let win = plan.win;
    let (in_plane, out_plane, ntaps) = (win.in_plane(), win.out_plane(), plan.taps.len());
    let (xi, rest) = buf.split_at_mut(plan.hp * plan.wp * L);
    let (ol, rest) = rest.split_at_mut(out_plane * L);
    let (wl, bl) = rest.split_at_mut(ntaps * L);
    weights_by_tap::<V, L>(plan, first, wl, bl);
    // Input rows, L columns at a time, transposed into the scratch.
    let xp = x.as_ptr();
    for ih in 0..win.h {
        let dst = xi
            .as_mut_ptr()
            .add(((ih + win.pad_top) * plan.wp + win.pad_left) * L);
        for iw in (0..win.w).step_by(L) {
            let n = (win.w - iw).min(L);
            let mut r = [V::splat(0.0); L];
            for (c, v) in r.iter_mut().enumerate() {
                let p = xp.add(c * in_plane + ih * win.w + iw);
                *v = if n == L { V::load(p) } else { V::load_n(p, n) };
            }
            let r = V::transpose(r);
            for (j, v) in r.iter().enumerate().take(n) {
                v.store(dst.add((iw + j) * L));
            }
        }
    }
    // Each output: bias, then the taps in order (as the plane kernel).
    let vb = V::load(bl.as_ptr());
    let (xs, ws, os) = (xi.as_ptr(), wl.as_ptr(), ol.as_mut_ptr());
    let step = win.sw * L;
    for oh in 0..win.oh {
        let row = xs.add(oh * win.sh * plan.wp * L);
        let out = os.add(oh * win.ow * L);
        let mut ow = 0;
        // Four outputs at once: four independent FMA chains.
        while ow + 4 <= win.ow {
            let x0 = row.add(ow * step);
            let mut acc = [vb; 4];
            for (t, &off) in plan.taps.iter().enumerate() {
                let wv = V::load(ws.add(t * L));
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = V::mul_add(wv, V::load(x0.add(u * step + off)), *a);
                }
            }
            for (u, a) in acc.iter().enumerate() {
                a.store(out.add((ow + u) * L));
            }
            ow += 4;
        }
        while ow < win.ow {
            let x0 = row.add(ow * step);
            let mut acc = vb;
            for (t, &off) in plan.taps.iter().enumerate() {
                acc = V::mul_add(V::load(ws.add(t * L)), V::load(x0.add(off)), acc);
            }
            acc.store(out.add(ow * L));
            ow += 1;
        }
    }
    // Back to the planes, L positions at a time: residual, clamp, store.
    let (lo, hi) = plan.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (vlo, vhi) = (V::splat(lo), V::splat(hi));
    let yp = y.as_mut_ptr();
    for p0 in (0..out_plane).step_by(L) {
        let n = (out_plane - p0).min(L);
        let mut r = [V::splat(0.0); L];
        for (j, v) in r.iter_mut().enumerate().take(n) {
            *v = V::load(os.add((p0 + j) * L));
        }
        let r = V::transpose(r);
        for (c, &v) in r.iter().enumerate() {
            let at = c * out_plane + p0;
            let mut v = v;
            if let Some(res) = res {
                let rp = res.as_ptr().add(at);
                v = V::add(
                    v,
                    if n == L {
                        V::load(rp)
                    } else {
                        V::load_n(rp, n)
                    },
                );
            }
            if plan.clamp.is_some() {
                v = v.clamp(vlo, vhi);
            }
            if n == L {
                v.store(yp.add(at));
            } else {
                v.store_n(yp.add(at), n);
            }
        }
    }
}

/// The weights of the `L` planes from `first`, by tap (`wl[t · L + l]`:
/// tap `t` of the channel of plane `first + l`), and their biases. `L`
/// consecutive channels have their taps transposed, `L` at a time; a group
/// that wraps into the next batch item's channels is gathered one by one.
///
/// # Safety
/// The CPU supports `V`'s instructions; `wl` holds `taps · L` floats, `bl`
/// `L`, and the plan's weights `c · taps`.
#[inline(always)]
unsafe fn weights_by_tap<V: Square<L>, const L: usize>(
    plan: &InterleavedPlan,
    first: usize,
    wl: &mut [f32],
    bl: &mut [f32],
) {
    let ntaps = plan.taps.len();
    let ch0 = first % plan.c;
    for (l, b) in bl.iter_mut().enumerate().take(L) {
        *b = plan.bias.map_or(0.0, |bv| bv[(ch0 + l) % plan.c]);
    }
    if ch0 + L > plan.c {
        for l in 0..L {
            let ch = (ch0 + l) % plan.c;
            for t in 0..ntaps {
                wl[t * L + l] = plan.w[ch * ntaps + t];
            }
        }
        return;
    }
    let wp = plan.w.as_ptr().add(ch0 * ntaps);
    for t0 in (0..ntaps).step_by(L) {
        let n = (ntaps - t0).min(L);
        let mut r = [V::splat(0.0); L];
        for (l, v) in r.iter_mut().enumerate() {
            *v = V::load_n(wp.add(l * ntaps + t0), n);
        }
        for (j, v) in V::transpose(r).iter().enumerate().take(n) {
            v.store(wl.as_mut_ptr().add((t0 + j) * L));
        }
    }
}

thread_local! {
    /// A thread's depthwise scratch plane.
    static DW_SCRATCH: lanes::Scratch = const { lanes::Scratch::new((Vec::new(), None)) };
}

/// Everything about a depthwise convolution the kernel needs besides one
/// plane's data.
struct DwPlan<'a> {
    win: &'a Window2d,
    pad: PhasePad,
    /// [`PhasePad::taps`].
    taps: Vec<usize>,
    clamp: Option<(f32, f32)>,
    /// [`dw3x3_row_vectors`] of the window, worked out once per
    /// convolution rather than per plane (read by the AVX-512 path only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    row_vectors: Option<usize>,
}

impl<'a> DwPlan<'a> {
    fn new(win: &'a Window2d, clamp: Option<(f32, f32)>) -> Option<DwPlan<'a>> {
        let pad = PhasePad::new(win)?;
        let taps = pad.taps(win);
        Some(DwPlan {
            win,
            pad,
            taps,
            clamp,
            row_vectors: dw3x3_row_vectors(win),
        })
    }
}

/// One depthwise plane: copies input plane `xp` into the scratch `buf`,
/// then `p[oh, ow] = act(bias + sum_{ki, kj} wk[ki, kj] * padded[oh * sh +
/// ki * dh, ow * sw + kj * dw] + res[oh, ow])`, where the activation is
/// the plan's clamp (or none; the caller applies the others).
#[allow(clippy::too_many_arguments)]
fn dw_padded(
    width: DwWidth,
    plan: &DwPlan,
    xp: &[f32],
    buf: &mut [f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: &mut [f32],
) {
    if p.len() != plan.win.out_plane() {
        debug_assert!(false, "dw_padded: inconsistent arguments");
        return;
    }
    // SAFETY: `p` is the whole output plane, borrowed mutably.
    unsafe {
        dw_padded_rows(
            width,
            plan,
            xp,
            buf,
            wk,
            bias,
            res,
            p.as_mut_ptr(),
            0..plan.win.oh,
        )
    }
}

/// [`dw_padded`] for the output rows `rows` alone (the input rows they
/// read are all that is copied), into the plane at `p`.
///
/// # Safety
/// `p` must be valid for writes of a whole output plane; no other thread
/// may access its rows `rows` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn dw_padded_rows(
    width: DwWidth,
    plan: &DwPlan,
    xp: &[f32],
    buf: &mut [f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: *mut f32,
    rows: std::ops::Range<usize>,
) {
    let win = plan.win;
    let ok = xp.len() == win.in_plane()
        && buf.len() == plan.pad.size()
        && wk.len() == plan.taps.len()
        && rows.start <= rows.end
        && rows.end <= win.oh
        && res.is_none_or(|r| r.len() == win.out_plane());
    if !ok {
        // Unreachable from `depthwise`, which sizes everything from the same
        // window; kept so the unsafe kernels below never see a bad call.
        debug_assert!(false, "dw_padded: inconsistent arguments");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match width {
        DwWidth::Avx512 if has_avx512f() && ops::has_avx2_fma() => {
            // SAFETY: AVX-512F, AVX2 and FMA are present; the sizes were
            // checked above, `p` and `rows` are the caller's contract.
            unsafe {
                match plan.row_vectors {
                    Some(nb) => dw3x3_avx512(nb, win, plan.clamp, xp, wk, bias, res, p, rows),
                    None => dw_avx512(plan, xp, buf, wk, bias, res, p, rows),
                }
            }
            return;
        }
        DwWidth::Avx512 | DwWidth::Avx2 if ops::has_avx2_fma() => {
            // SAFETY: AVX2 and FMA are present; as above.
            unsafe { dw_avx(plan, xp, buf, wk, bias, res, p, rows) };
            return;
        }
        _ => {}
    }
    let _ = width;
    // SAFETY: the sizes were checked above; `p` and `rows` as above.
    unsafe { dw_dispatch::<P8, P8>(plan, xp, buf, wk, bias, res, p, rows) }
}

/// The vectors a depthwise plane runs on: the widest the features allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DwWidth {
    Portable,
    /// 8 lanes (AVX2 and FMA).
    Avx2,
    /// 16 lanes (AVX-512F): half the vectors per row of 14 to 112 outputs
    /// (MobileNetV2's planes).
    Avx512,
}

/// True when this CPU runs AVX-512F instructions.
fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Fills the scratch on `F` (8-lane copies) and picks the kernel instance
/// on `V` (3x3 or any kernel).
///
/// # Safety
/// The slices have the sizes [`dw_padded_rows`] checks, `p` and `rows`
/// are its contract, and the CPU supports
/// `F`'s and `V`'s instructions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_dispatch<F: Lanes, V: Row>(
    plan: &DwPlan,
    xp: &[f32],
    buf: &mut [f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: *mut f32,
    rows: std::ops::Range<usize>,
) {
    let (win, pad) = (plan.win, &plan.pad);
    if rows.is_empty() {
        return;
    }
    // The input rows (unpadded, clipped to those inside the scratch) the
    // windows of output rows `..end` reach.
    let reach = |end: usize| {
        ((end - 1) * win.sh + (win.kh - 1) * win.dh + 1)
            .saturating_sub(pad.top)
            .min(pad.nrows)
    };
    let mut filled = (rows.start * win.sh).saturating_sub(pad.top).min(pad.nrows);
    // (A thread's band of rows of a plane, `depthwise` splitting planes
    // across threads, is copied whole: in bands it ran 1.15x slower on
    // two threads.)
    let whole_plane = rows.len() == win.oh;
    if !whole_plane || pad.size() * std::mem::size_of::<f32>() <= DW_BAND_SCRATCH_BYTES {
        dw_fill::<F>(win, pad, xp, buf, filled..reach(rows.end));
        return dw_rows::<V>(plan, buf, wk, bias, res, p, rows);
    }
    // A scratch larger than L1 is filled and computed in bands of output
    // rows, each after copying the input rows it newly reaches: the rows
    // the kernel reads are then still in L1, and the copy's loads (the
    // plane comes from L3 or memory) overlap the previous band's
    // arithmetic. (MobileNetV2's 112x112 stride-2 layer on an Intel Xeon:
    // 1.2x faster; on 56x56 planes and smaller, bands only added each
    // call's set-up: 1.1-1.3x slower.)
    for b0 in rows.clone().step_by(DW_BAND_ROWS) {
        let band = b0..(b0 + DW_BAND_ROWS).min(rows.end);
        let upto = reach(band.end).max(filled);
        dw_fill::<F>(win, pad, xp, buf, filled..upto);
        filled = upto;
        dw_rows::<V>(plan, buf, wk, bias, res, p, band);
    }
}

/// [`dw_kernel`] for output rows `rows`, its 3x3 instance where it fits.
///
/// # Safety
/// As [`dw_kernel`].
#[inline(always)]
unsafe fn dw_rows<V: Row>(
    plan: &DwPlan,
    buf: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: *mut f32,
    rows: std::ops::Range<usize>,
) {
    if plan.taps.len() == 9 && plan.win.kh == 3 {
        dw_kernel::<V, true>(plan, buf, wk, bias, res, p, rows)
    } else {
        dw_kernel::<V, false>(plan, buf, wk, bias, res, p, rows)
    }
}

/// Output rows of a depthwise plane computed per copy of the input rows
/// they read, for scratch planes over [`DW_BAND_SCRATCH_BYTES`] (see
/// [`dw_dispatch`]).
const DW_BAND_ROWS: usize = 4;

/// Scratch planes above this size (about L1) are filled in bands.
const DW_BAND_SCRATCH_BYTES: usize = 32 << 10;

/// Copies input rows `in_rows` of plane `xp` into the scratch positions of
/// [`PhasePad`] (the padding is already zero): a vector copy per row at
/// stride 1, else [`lanes::fill_phases`].
///
/// # Safety
/// As [`dw_dispatch`]; `in_rows` lie within the scratch's rows.
#[inline(always)]
unsafe fn dw_fill<V: Lanes>(
    win: &Window2d,
    pad: &PhasePad,
    xp: &[f32],
    buf: &mut [f32],
    in_rows: std::ops::Range<usize>,
) {
    let (s, l, n, left) = (pad.s, pad.l, pad.ncols, pad.left);
    for ih in in_rows {
        let src = &xp[ih * win.w..ih * win.w + n];
        let dst = &mut buf[(ih + pad.top) * pad.row()..(ih + pad.top + 1) * pad.row()];
        if s == 1 {
            let sp = src.as_ptr();
            let mut j = 0;
            while j + LANES <= n {
                V::load(sp.add(j)).store(dst[left + j..left + j + LANES].as_mut_ptr());
                j += LANES;
            }
            if j < n {
                lanes::put::<V>(dst, left + j, V::load_n(sp.add(j), n - j), n - j);
            }
        } else {
            lanes::fill_phases::<V>(src, dst, s, l, left);
        }
    }
}

/// The register-blocked depthwise kernel: for each output row, chunks of
/// `V::WIDTH` outputs accumulate every tap in a register (starting from the bias),
/// add the residual, clamp, and are stored once; the last partial chunk is
/// computed in full (the scratch has the room) and stored masked. `K3`: a
/// 3x3 kernel, its 9 weights and tap offsets kept in registers.
///
/// # Safety
/// As [`dw_dispatch`], with `buf` filled; `K3` implies 9 taps.
#[inline(always)]
unsafe fn dw_kernel<V: Row, const K3: bool>(
    plan: &DwPlan,
    buf: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    out: *mut f32,
    out_rows: std::ops::Range<usize>,
) {
    let win = plan.win;
    let (ow, rows) = (win.ow, win.sh * plan.pad.row());
    let xs = buf.as_ptr();
    let res = res.map(|r| r.as_ptr());
    let vb = V::splat(bias);
    // 3x3: the weights, and the taps as row step + 3 column offsets (few
    // registers, so nothing spills).
    let (w3, t3): ([V; 9], (usize, [usize; 3])) = if K3 {
        (
            std::array::from_fn(|t| V::splat(wk[t])),
            (
                win.dh * plan.pad.row(),
                [plan.taps[0], plan.taps[1], plan.taps[2]],
            ),
        )
    } else {
        ([vb; 9], (0, [0; 3]))
    };
    let (lo, hi) = plan.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (vlo, vhi) = (V::splat(lo), V::splat(hi));
    let clamp = plan.clamp.is_some();
    // Sum of the taps for the `V::WIDTH` outputs whose first reads start
    // at `x0`. (A function, not a closure, so that it inlines into the
    // `target_feature` caller and the intrinsics with it.)
    #[inline(always)]
    unsafe fn chunk<V: Row, const K3: bool>(
        x0: *const f32,
        vb: V,
        w3: &[V; 9],
        t3: (usize, [usize; 3]),
        wk: &[f32],
        taps: &[usize],
    ) -> V {
        let mut acc = vb;
        if K3 {
            let (step, c) = t3;
            for ki in 0..3 {
                let xk = x0.add(ki * step);
                for kj in 0..3 {
                    acc = V::mul_add(w3[ki * 3 + kj], V::load(xk.add(c[kj])), acc);
                }
            }
        } else {
            for (&wv, &off) in wk.iter().zip(taps) {
                acc = V::mul_add(V::splat(wv), V::load(x0.add(off)), acc);
            }
        }
        acc
    }
    let lanes = V::WIDTH;
    let full = ow / lanes * lanes;
    let end = out_rows.end;
    for oh in out_rows {
        let xr = xs.add(oh * rows);
        let yr = out.add(oh * ow);
        let rr = res.map(|r| r.add(oh * ow));
        let mut o = 0;
        while o < full {
            let mut acc = chunk::<V, K3>(xr.add(o), vb, &w3, t3, wk, &plan.taps);
            if let Some(rr) = rr {
                acc = V::add(acc, V::load(rr.add(o)));
            }
            if clamp {
                acc = acc.clamp(vlo, vhi);
            }
            acc.store(yr.add(o));
            o += lanes;
        }
        if o < ow {
            let n = ow - o;
            // Lanes past the row land in the next rows, rewritten later: a
            // full store while inside this call's rows, a masked one at
            // their end (the next rows may be another thread's).
            let whole = oh + 1 < end && o + lanes <= 2 * ow;
            let mut acc = chunk::<V, K3>(xr.add(o), vb, &w3, t3, wk, &plan.taps);
            if let Some(rr) = rr {
                let r = if whole {
                    V::load(rr.add(o))
                } else {
                    V::load_n(rr.add(o), n)
                };
                acc = V::add(acc, r);
            }
            if clamp {
                acc = acc.clamp(vlo, vhi);
            }
            if whole {
                acc.store(yr.add(o));
            } else {
                acc.store_n(yr.add(o), n);
            }
        }
    }
}

/// [`dw_dispatch`] on AVX2/FMA registers, into which the [`lanes::A8`]
/// methods and their intrinsics inline.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the arguments must satisfy
/// [`dw_dispatch`]'s contract.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx(
    plan: &DwPlan,
    xp: &[f32],
    buf: &mut [f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: *mut f32,
    rows: std::ops::Range<usize>,
) {
    dw_dispatch::<lanes::A8, lanes::A8>(plan, xp, buf, wk, bias, res, p, rows)
}

/// [`dw_dispatch`] on AVX-512 registers ([`lanes::A16`]; the scratch
/// filled on AVX2's).
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA, and the arguments must
/// satisfy [`dw_dispatch`]'s contract.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx512(
    plan: &DwPlan,
    xp: &[f32],
    buf: &mut [f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: *mut f32,
    rows: std::ops::Range<usize>,
) {
    dw_dispatch::<lanes::A8, lanes::A16>(plan, xp, buf, wk, bias, res, p, rows)
}

/// Rows up to this many vectors wide run [`dw3x3_avx512`].
const DW3X3_MAX_VECTORS: usize = 8;

/// The vectors of 16 a row of `win`'s output takes, when it is a 3x3
/// undilated window, a row is at most [`DW3X3_MAX_VECTORS`] vectors, and
/// either at stride 1 padded by 1 on every side (the output plane the
/// input's size: MobileNetV2's stride-1 depthwise layers) or at stride 2
/// padded by at most 1 at the top and left (its stride-2 ones, and
/// TensorFlow's SAME padding, which pads the end): the geometry
/// [`dw3x3_avx512`] computes.
fn dw3x3_row_vectors(win: &Window2d) -> Option<usize> {
    let k3 = (win.kh, win.kw, win.dh, win.dw) == (3, 3, 1, 1);
    let same = (win.sh, win.sw) == (1, 1)
        && (win.pad_top, win.pad_left, win.pad_bottom, win.pad_right) == (1, 1, 1, 1)
        && (win.oh, win.ow) == (win.h, win.w);
    let nb = win.ow.div_ceil(16);
    (k3 && (same || win.halved_3x3()) && win.ow > 0 && nb <= DW3X3_MAX_VECTORS).then_some(nb)
}

/// [`dw_padded_rows`] for [`dw3x3_row_vectors`]'s geometry on AVX-512,
/// straight from the input plane: no padded copy. Each output row keeps
/// its `nb` vectors in registers; each of the three input rows it reads is
/// loaded once (masked past the row's end, so the right padding reads 0)
/// and its left and right neighbours come from `valignd` with the vector
/// beside it (0 past the ends). The taps, residual and clamp go in the
/// padded kernel's order (the same results). On the small planes of
/// MobileNetV2 the padded copy and the per-plane set-up were most of the
/// kernel's time (perf on Zen 5: loop and spill code above the FMAs).
/// At stride 2 each 32 input columns are split into their even and odd
/// ones (`vpermt2ps`) where the padded kernel copies them into phases.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA; `nb` is
/// `dw3x3_row_vectors(win)`, `xp` holds the `h × w` input plane, `wk` 9
/// weights, `res` (if any) an output plane; `p` is valid for writes of
/// the output plane and no other thread accesses its rows `rows`
/// (`rows.end <= oh`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw3x3_avx512(
    nb: usize,
    win: &Window2d,
    clamp: Option<(f32, f32)>,
    xp: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    p: *mut f32,
    rows: std::ops::Range<usize>,
) {
    let args = Dw3x3 {
        win,
        clamp,
        xp,
        wk,
        bias,
        res,
        p,
    };
    macro_rules! by_width {
        ($rows:ident) => {
            match nb {
                1 => args.$rows::<1>(rows),
                2 => args.$rows::<2>(rows),
                3 => args.$rows::<3>(rows),
                4 => args.$rows::<4>(rows),
                5 => args.$rows::<5>(rows),
                6 => args.$rows::<6>(rows),
                7 => args.$rows::<7>(rows),
                _ => args.$rows::<8>(rows),
            }
        };
    }
    if win.sw == 2 {
        by_width!(rows_halved)
    } else {
        by_width!(rows)
    }
}

/// [`dw3x3_avx512`]'s arguments.
#[cfg(target_arch = "x86_64")]
struct Dw3x3<'a> {
    win: &'a Window2d,
    clamp: Option<(f32, f32)>,
    xp: &'a [f32],
    wk: &'a [f32],
    bias: f32,
    res: Option<&'a [f32]>,
    p: *mut f32,
}

#[cfg(target_arch = "x86_64")]
impl Dw3x3<'_> {
    /// Output rows `rows`, `NB` vectors a row.
    ///
    /// # Safety
    /// As [`dw3x3_avx512`], with `NB` its `nb`.
    #[inline(always)]
    unsafe fn rows<const NB: usize>(&self, rows: std::ops::Range<usize>) {
        use std::arch::x86_64::*;
        let (h, w) = (self.win.h, self.win.w);
        debug_assert!(
            self.xp.len() == h * w
                && self.wk.len() == 9
                && w.div_ceil(16) == NB
                && rows.end <= h
                && self.res.is_none_or(|r| r.len() == h * w)
        );
        let last = w - 16 * (NB - 1);
        let mask = |b: usize| -> u16 {
            if b + 1 < NB || last == 16 {
                0xffff
            } else {
                (1u16 << last) - 1
            }
        };
        let wv: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(self.wk[t]));
        let vb = _mm512_set1_ps(self.bias);
        let (lo, hi) = self.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let zero = _mm512_setzero_si512();
        for oy in rows {
            let mut acc = [vb; NB];
            for ky in 0..3 {
                // Input row oy + ky - 1; a padding row is zeros, its taps
                // multiplied in as the padded kernel does (the same sums).
                let mut v = [zero; NB];
                if let Some(iy) = (oy + ky).checked_sub(1).filter(|&iy| iy < h) {
                    let row = self.xp.as_ptr().add(iy * w);
                    for (b, vb) in v.iter_mut().enumerate() {
                        *vb = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask(b), row.add(16 * b)));
                    }
                }
                for b in 0..NB {
                    let prev = if b > 0 { v[b - 1] } else { zero };
                    let next = if b + 1 < NB { v[b + 1] } else { zero };
                    // Lane i of `left` is column 16b + i - 1, of `right`
                    // 16b + i + 1.
                    let left = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(v[b], prev));
                    let right = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(next, v[b]));
                    let mid = _mm512_castsi512_ps(v[b]);
                    acc[b] = _mm512_fmadd_ps(wv[3 * ky], left, acc[b]);
                    acc[b] = _mm512_fmadd_ps(wv[3 * ky + 1], mid, acc[b]);
                    acc[b] = _mm512_fmadd_ps(wv[3 * ky + 2], right, acc[b]);
                }
            }
            for (b, &a) in acc.iter().enumerate() {
                let at = oy * w + 16 * b;
                let mut y = a;
                if let Some(r) = self.res {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask(b), r.as_ptr().add(at)));
                }
                if self.clamp.is_some() {
                    // max_ps / min_ps return the second operand on NaN:
                    // NaN stays NaN, as the padded kernel's clamp.
                    y = _mm512_min_ps(vhi, _mm512_max_ps(vlo, y));
                }
                _mm512_mask_storeu_ps(self.p.add(at), mask(b), y);
            }
        }
    }

    /// Output rows `rows` of a stride-2 window
    /// ([`Window2d::halved_3x3`]), `NB` vectors a row, each input row's
    /// taps from [`lanes::HalvedRow`] (everything past the input 0).
    /// The taps, residual and clamp go in the padded kernel's order (the
    /// same results).
    ///
    /// # Safety
    /// As [`dw3x3_avx512`], with `NB` its `nb` and a stride-2 window.
    #[inline(always)]
    unsafe fn rows_halved<const NB: usize>(&self, rows: std::ops::Range<usize>) {
        use std::arch::x86_64::*;
        let win = self.win;
        let (h, w, ow) = (win.h, win.w, win.ow);
        debug_assert!(
            self.xp.len() == h * w
                && self.wk.len() == 9
                && ow.div_ceil(16) == NB
                && rows.end <= win.oh
                && win.halved_3x3()
                && self.res.is_none_or(|r| r.len() == win.oh * ow)
        );
        let last = ow - 16 * (NB - 1);
        let out_mask = |b: usize| -> u16 {
            if b + 1 < NB || last == 16 {
                0xffff
            } else {
                (1u16 << last) - 1
            }
        };
        let wv: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(self.wk[t]));
        let vb = _mm512_set1_ps(self.bias);
        let (lo, hi) = self.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let zero = _mm512_setzero_ps();
        let split = lanes::HalvedRow::<NB>::new(w, win.pad_left == 1, zero);
        for oy in rows {
            let mut acc = [vb; NB];
            for ky in 0..3 {
                // A padding row is zeros, its taps multiplied in as the
                // padded kernel does (the same sums).
                let row = match (2 * oy + ky).checked_sub(win.pad_top).filter(|&iy| iy < h) {
                    Some(iy) => split.split(self.xp.as_ptr().add(iy * w)),
                    None => split.padding(),
                };
                for (b, a) in acc.iter_mut().enumerate() {
                    for (kx, x) in row.taps(b).into_iter().enumerate() {
                        *a = _mm512_fmadd_ps(wv[3 * ky + kx], x, *a);
                    }
                }
            }
            for (b, &a) in acc.iter().enumerate() {
                let at = oy * ow + 16 * b;
                let mut y = a;
                if let Some(r) = self.res {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(out_mask(b), r.as_ptr().add(at)));
                }
                if self.clamp.is_some() {
                    y = _mm512_min_ps(vhi, _mm512_max_ps(vlo, y));
                }
                _mm512_mask_storeu_ps(self.p.add(at), out_mask(b), y);
            }
        }
    }
}

super::ops::multiversion!(
    /// One depthwise plane without scratch (the fallback for geometries
    /// whose scratch would be huge): `p[oh, ow] = bias + sum_{ki, kj}
    /// wk[ki, kj] * xp[in_row(oh, ki), ow * sw + kj * dw - pad_left]` over
    /// the taps inside the input.
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

/// Whether weights packed for Winograd fit this convolution and it runs
/// through it (they were packed from the weights' and the output's shapes
/// alone).
fn winograd_fits(g: &ConvGeom, packed: &Prepacked) -> bool {
    let w = &g.win;
    let fits = match packed {
        Prepacked::ConvWinograd(wt) => {
            wt.u.len() == wt.tile.elems() && wt.u.iter().all(|uk| uk.m() == g.m && uk.k() == g.c)
        }
        _ => false,
    };
    fits && (w.kh, w.kw, w.sh, w.sw, w.dh, w.dw) == (3, 3, 1, 1, 1, 1) && g.group == 1
}

/// Whether weights packed for the channel-vectorized direct kernel fit
/// this convolution on this CPU.
fn direct_oc_fits(g: &ConvGeom, packed: &Prepacked, cx: &CpuCtx) -> bool {
    let k = g.cg * g.win.kh * g.win.kw;
    matches!(packed, Prepacked::ConvDirectOc(w) if direct_oc::fits(w, g.m, g.group, k, cx.features))
}

/// Whether the weights were packed for the transposed product.
fn sparse_fits(g: &ConvGeom, packed: &Prepacked) -> bool {
    let k = g.cg * g.win.kh * g.win.kw;
    matches!(packed, Prepacked::ConvSparse(ws)
        if ws.len() == g.group && ws.iter().all(|w| w.m() == g.mg && w.k() == k))
}

/// Floats of im2col columns the sparse path keeps at a time (1 MiB): the
/// columns of a chunk of output pixels, so that a large plane's do not
/// need a plane-sized copy of the input per tap.
const SPARSE_COLS_FLOATS: usize = 1 << 18;

thread_local! {
    /// The sparse path's im2col columns, kept between runs.
    static SPARSE_COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The convolution through the sparse kernel, per batch item and group:
/// on the input planes themselves (1x1, stride 1, no padding), else on
/// im2col columns `[cg * kh * kw][pixels]` built a chunk of output pixels
/// at a time.
fn via_sparse(
    g: &ConvGeom,
    x: &[f32],
    ws: &[sparse::Csr],
    f: &Fused,
    out: &mut [f32],
    cx: &CpuCtx,
) {
    let win = &g.win;
    let (plane, in_plane) = (win.out_plane(), win.h * win.w);
    let k = g.cg * win.kh * win.kw;
    let pointwise = win.kh == 1 && win.kw == 1 && win.pointwise();
    let chunk = if pointwise {
        plane
    } else {
        (SPARSE_COLS_FLOATS / k.max(1) / 64 * 64).clamp(64, plane.max(64))
    };
    for item in 0..g.n {
        for (gi, w) in ws.iter().enumerate() {
            let at = (item * g.m + gi * g.mg) * plane;
            let y = &mut out[at..at + g.mg * plane];
            let bias = f.bias.map(|b| &b[gi * g.mg..(gi + 1) * g.mg]);
            let res = f.residual.map(|r| &r[at..at + g.mg * plane]);
            let xg = &x[(item * g.c + gi * g.cg) * in_plane..][..g.cg * in_plane];
            if pointwise {
                let ep = sparse::Epilogue {
                    bias,
                    residual: res,
                    act: f.act,
                };
                sparse::spmm(w, xg, in_plane, plane, y, plane, &ep, cx);
                continue;
            }
            SPARSE_COLS.with(|cols| {
                let mut cols = cols.borrow_mut();
                for q0 in (0..plane).step_by(chunk) {
                    let len = chunk.min(plane - q0);
                    if cols.len() < k * len {
                        cols.resize(k * len, 0.0);
                    }
                    let cols = &mut cols[..k * len];
                    let fill = |r: usize, dst: &mut [f32]| {
                        let (c, tap) = (r / (win.kh * win.kw), r % (win.kh * win.kw));
                        let src = &xg[c * in_plane..(c + 1) * in_plane];
                        im2col_row(win, src, tap / win.kw, tap % win.kw, q0, dst);
                    };
                    if cx.threads > 1 && k * len >= PAR_MIN_WORK {
                        cx.for_each_chunk_mut(cols, len, fill);
                    } else {
                        cols.chunks_exact_mut(len)
                            .enumerate()
                            .for_each(|(r, d)| fill(r, d));
                    }
                    let ep = sparse::Epilogue {
                        bias,
                        residual: res.map(|r| &r[q0..]),
                        act: f.act,
                    };
                    sparse::spmm(w, cols, len, len, &mut y[q0..], plane, &ep, cx);
                }
            });
        }
    }
}

/// Row `(ki, kj)` of one input channel's im2col columns for output pixels
/// `q0..q0 + dst.len()`: the input value each pixel's tap reads, 0 where
/// it reads padding.
fn im2col_row(win: &Window2d, src: &[f32], ki: usize, kj: usize, q0: usize, dst: &mut [f32]) {
    let (mut q, mut i) = (q0, 0);
    while i < dst.len() {
        let (oh, ow0) = (q / win.ow, q % win.ow);
        let seg = (win.ow - ow0).min(dst.len() - i);
        let out = &mut dst[i..i + seg];
        let ih = (oh * win.sh + ki * win.dh).checked_sub(win.pad_top);
        match ih.filter(|&ih| ih < win.h) {
            None => out.fill(0.0),
            Some(ih) => {
                let row = &src[ih * win.w..(ih + 1) * win.w];
                // Input column of output column ow: ow * sw + off.
                let off = (kj * win.dw) as isize - win.pad_left as isize;
                if win.sw == 1 {
                    // Valid for -off - ow0 <= j < w - off - ow0.
                    let lo = (-off - ow0 as isize).clamp(0, seg as isize) as usize;
                    let hi = (win.w as isize - off - ow0 as isize).clamp(lo as isize, seg as isize)
                        as usize;
                    out[..lo].fill(0.0);
                    let from = (ow0 + lo) as isize + off;
                    if hi > lo {
                        out[lo..hi].copy_from_slice(&row[from as usize..from as usize + hi - lo]);
                    }
                    out[hi..].fill(0.0);
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        let iw = ((ow0 + j) * win.sw) as isize + off;
                        *o = if iw >= 0 && (iw as usize) < win.w {
                            row[iw as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
        i += seg;
        q += seg;
    }
}

fn fused_transposed(packed: Option<&Prepacked>) -> bool {
    matches!(packed, Some(Prepacked::ConvWeightsT(_)))
}

/// The prepacked A operands when they fit this convolution.
fn conv_packs<'a>(packed: Option<&'a Prepacked>, g: &ConvGeom) -> Option<&'a [PackedA]> {
    let k = g.cg * g.win.kh * g.win.kw;
    match packed {
        Some(Prepacked::ConvWeights { packs: p, .. })
            if p.len() == g.group && p.iter().all(|a| a.m() == g.mg && a.k() == k) =>
        {
            Some(p)
        }
        _ => None,
    }
}

thread_local! {
    /// The subsampled input of [`via_subsampled`], reused.
    static SUBSAMPLED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A 1x1 convolution with strides (or padding): the pixels it reads are
/// gathered into planes of the output's size (zero where it reads
/// padding), which then go through the pointwise GEMM. The padded,
/// de-interleaved copy of the whole input that the general paths make
/// would move 4x the data at stride 2.
fn via_subsampled(
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
    let pw = Window2d {
        h: win.oh,
        w: win.ow,
        kh: 1,
        kw: 1,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pad_top: 0,
        pad_left: 0,
        pad_bottom: 0,
        pad_right: 0,
        oh: win.oh,
        ow: win.ow,
    };
    let g2 = ConvGeom { win: pw, ..*g };
    let single = CpuCtx::single(cx.features);
    let gather = |src: &[f32], dst: &mut [f32]| gather_plane(win, src, dst);
    with_buf(&SUBSAMPLED, |xs| {
        xs.resize(g.n * g.c * out_plane, 0.0);
        // Planes gathered in parallel, many per task (they are small).
        let per = (PAR_MIN_WORK / out_plane.max(1)).max(1);
        let par = if xs.len() >= PAR_MIN_WORK {
            cx
        } else {
            &single
        };
        par.for_each_chunk_mut(xs, per * out_plane, |t, dsts| {
            for (d, dst) in dsts.chunks_exact_mut(out_plane).enumerate() {
                let i = t * per + d;
                let src = &x[i * in_plane..(i + 1) * in_plane];
                gather(src, dst);
            }
        });
        via_gemm(&g2, xs, w, packed, f, y, cx);
    });
}

/// The pixels of a 1x1 strided or padded convolution's input plane `src`
/// that it reads, as a plane of the output's size (zero where it reads
/// padding).
fn gather_plane(win: &Window2d, src: &[f32], dst: &mut [f32]) {
    for (oh, row) in dst.chunks_exact_mut(win.ow).enumerate() {
        let Some(ih) = win.in_row(oh, 0) else {
            row.fill(0.0);
            continue;
        };
        let srow = &src[ih * win.w..(ih + 1) * win.w];
        for (ow, v) in row.iter_mut().enumerate() {
            *v = (ow * win.sw)
                .checked_sub(win.pad_left)
                .and_then(|iw| srow.get(iw))
                .copied()
                .unwrap_or(0.0);
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
    for_each_product(g, y, cx, |t, c, cx| {
        let (ni, gi) = (t / g.group, t % g.group);
        let x0 = (ni * g.c + gi * g.cg) * in_plane;
        let xg = &x[x0..x0 + g.cg * in_plane];
        let a = match packed {
            Some(p) => ASrc::Packed(&p[gi]),
            None => ASrc::Raw {
                a: &w[gi * g.mg * k..(gi + 1) * g.mg * k],
                lda: k,
                trans: false,
            },
        };
        let y0 = t * g.mg * out_plane;
        let ep = Epilogue {
            bias_col: None,
            bias_row: f.bias.map(|bv| &bv[gi * g.mg..(gi + 1) * g.mg]),
            residual: f.residual.map(|r| &r[y0..y0 + c.len()]),
            act: f.act,
        };
        if win.pointwise() {
            let b = BSrc::Raw {
                b: xg,
                ldb: out_plane,
                trans: false,
            };
            gemm(g.mg, out_plane, k, 1.0, a, b, c, out_plane, &ep, cx);
        } else {
            with_buf(&PADDED, |padded| {
                let cols = Im2col::new(win, g.cg, xg, padded, cx);
                let b = BSrc::Gen(&cols);
                gemm(g.mg, out_plane, k, 1.0, a, b, c, out_plane, &ep, cx);
            });
        }
    });
}

/// Runs `f(t, y_t, cx)` for each (batch item, group) product `t = item *
/// groups + group`, whose outputs `y_t` are the `M/G` planes it writes:
/// side by side, one single-threaded product per task, when the products
/// spread evenly over the threads (a batch, or many groups); otherwise one
/// after another, each split over all threads. Every element gets the
/// same arithmetic either way (the products' tiles do not depend on how
/// many threads share them).
fn for_each_product(
    g: &ConvGeom,
    y: &mut [f32],
    cx: &CpuCtx,
    f: impl Fn(usize, &mut [f32], &CpuCtx) + Sync,
) {
    let products = g.n * g.group;
    let len = g.mg * g.win.out_plane();
    let y = &mut y[..products * len];
    if len == 0 {
        return;
    }
    let t = cx.threads;
    if t > 1 && products > 1 && (products.is_multiple_of(t) || products >= 4 * t) {
        let single = CpuCtx::single(cx.features);
        cx.for_each_chunk_mut(y, len, |i, yi| f(i, yi, &single));
    } else {
        for (i, yi) in y.chunks_mut(len).enumerate() {
            f(i, yi, cx);
        }
    }
}

thread_local! {
    /// The zero-padded input of the convolution being packed, reused so
    /// that steady-state runs do not allocate.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The im2col matrix and the transposed output of
    /// [`via_transposed_gemm`], one after the other, reused likewise.
    static TRANSPOSED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Fewer output channels per group than this leave the channel-vectorized
/// direct kernel's 64-channel tiles mostly empty: not its default.
const DIRECT_OC_MIN_MG: usize = 48;

/// A shallower reduction (input channels x taps) spends too much of the
/// channel-vectorized kernel's time transposing its tiles into the
/// output: ResNet-18's stem (3 x 7x7 = 147) ran 1.1x slower than direct.
const DIRECT_OC_MIN_DEPTH: usize = 256;

/// Output planes below this many pixels may take the transposed product.
const SMALL_PLANE: usize = 64;

/// The largest output plane the transposed product may be asked for (it
/// builds the whole im2col matrix of a batch item).
const TRANSPOSED_MAX_PLANE: usize = 14 * 14;

/// Output pixels (over the batch) from which Winograd's default is F(4x4)
/// rather than F(2x2): its transformed weights are 2.25x as large and
/// every part of a convolution streams all of them, which fewer pixels do
/// not pay for. On an Intel Xeon (AVX-512, 1 thread, batch 1) F(4x4) ran
/// ResNet-18's 56x56 and 28x28 layers 1.2-1.4x faster than F(2x2) and its
/// 14x14 ones 1.25x slower (1.65x on 2 threads).
const WINOGRAD4_MIN_PIXELS: usize = 28 * 28;

/// Whether a convolution with `mg` output channels per group and output
/// planes of `out_plane` pixels runs as the transposed product `Yᵀ =
/// colsᵀ · Wᵀ`: when the plane is small and the channels many, the pixels
/// make better register-tile rows than columns (49 pixels fill 49 of 64
/// columns of two 32-wide tiles, but 49 of 49 rows of 12-row tiles).
fn transposed_product(mg: usize, out_plane: usize) -> bool {
    out_plane < SMALL_PLANE && mg > out_plane
}

/// Convolution through the transposed product, per batch item and group:
/// the im2col matrix `cols[K, P]` (P = OH*OW pixels) is built whole (it is
/// small: P < [`SMALL_PLANE`]), `Cᵀ[P, M/G] = colsᵀ · Wᵀ + bias` with Wᵀ
/// prepacked, then `Cᵀ` is transposed into the output planes, which get
/// the residual and activation. Every element sees the same arithmetic as
/// in [`via_gemm`].
fn via_transposed_gemm(
    g: &ConvGeom,
    x: &[f32],
    wt: &[PackedB],
    f: &Fused,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let win = &g.win;
    let (in_plane, p) = (win.in_plane(), win.out_plane());
    let k = g.cg * win.kh * win.kw;
    for_each_product(g, y, cx, |t, planes, cx| {
        let (ni, gi) = (t / g.group, t % g.group);
        with_buf(&PADDED, |padded| {
            with_buf(&TRANSPOSED, |buf| {
                // The im2col rows plus one copy's overrun, then Cᵀ.
                let cols_len = k * p + PAD_SLACK;
                if buf.len() < cols_len + p * g.mg {
                    buf.resize(cols_len + p * g.mg, 0.0);
                }
                let (cols, ct) = buf.split_at_mut(cols_len);
                let x0 = (ni * g.c + gi * g.cg) * in_plane;
                let xg = &x[x0..x0 + g.cg * in_plane];
                let cols: &[f32] = if win.pointwise() {
                    // The input is its own im2col matrix.
                    xg
                } else {
                    // One panel of P columns is the row-major matrix.
                    let m = &mut cols[..k * p];
                    Im2col::new(win, g.cg, xg, padded, cx).pack(m, p, 0, k, 0, p);
                    m
                };
                let a = ASrc::Raw {
                    a: cols,
                    lda: p,
                    trans: true,
                };
                // Without a residual the activation commutes with the
                // transposition: fuse it into the product.
                let ep = Epilogue {
                    bias_col: f.bias.map(|bv| &bv[gi * g.mg..(gi + 1) * g.mg]),
                    act: f.act.filter(|_| f.residual.is_none()),
                    ..Default::default()
                };
                let c = &mut ct[..p * g.mg];
                gemm(p, g.mg, k, 1.0, a, BSrc::Packed(&wt[gi]), c, g.mg, &ep, cx);
                // Cᵀ into the product's output planes, channels split
                // across the threads.
                let c: &[f32] = c;
                let first = t * g.mg;
                let channels = |ch0: usize, out: &mut [f32]| {
                    for (d, plane) in out.chunks_exact_mut(p).enumerate() {
                        let ch = ch0 + d;
                        for (j, v) in plane.iter_mut().enumerate() {
                            *v = c[j * g.mg + ch];
                        }
                        if f.residual.is_some() {
                            finish_plane(f, first + ch, p, plane, cx);
                        }
                    }
                };
                if cx.threads > 1 && planes.len() >= PAR_MIN_WORK {
                    let per = g.mg.div_ceil(4 * cx.threads);
                    cx.for_each_chunk_mut(planes, per * p, |t, out| channels(t * per, out));
                } else {
                    channels(0, planes);
                }
            })
        })
    });
}

/// Output rows narrower than this stay on the im2col path. A direct
/// segment of 32 lanes spans several stride-1 output rows (wasting their
/// padding columns); 14-pixel rows run ~3% faster direct than through
/// im2col panels, 56-pixel rows ~20%.
const DIRECT_MIN_OW: usize = 14;
/// Fewer output channels per group than this stay on the im2col path.
const DIRECT_MIN_MG: usize = 16;

/// Whether a convolution runs direct ([`via_direct`]): on a kernel that
/// has a direct product (AVX-512 or AVX2), with a real window (a 1x1
/// convolution reads its input, or its subsampled pixels, in place), output rows
/// wide enough to fill the vectors and enough output channels to share
/// each B row.
fn direct(g: &ConvGeom, cx: &CpuCtx) -> bool {
    direct_lanes(cx.features).is_some()
        && g.win.kh * g.win.kw > 1
        && g.win.ow >= DIRECT_MIN_OW
        && g.mg >= DIRECT_MIN_MG
}

/// Direct convolution, per batch item and group: `Y[M/G, OH*OW] = W ·
/// cols` on the AVX-512 kernel with no im2col panel ever packed. The input
/// is copied once into the padded, stride-de-interleaved layout of
/// [`Im2col`], where the taps of consecutive output pixels along a row read
/// consecutive floats: B's row for depth p over pixels (oh, ow0..) is the
/// run at `tap_base(p) + oh * sh * row + ow0` ([`gemm_direct`] with a
/// per-depth offset table and one segment per run of at most 32 pixels of
/// an output row). Bias, residual and activation go into the epilogue.
/// `false` (nothing written) when the GEMM does not take the direct path
/// (the weights were packed for another kernel).
fn via_direct(
    g: &ConvGeom,
    x: &[f32],
    packs: &[PackedA],
    f: &Fused,
    y: &mut [f32],
    cx: &CpuCtx,
) -> bool {
    let win = &g.win;
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    let (taps, k) = (win.kh * win.kw, g.cg * win.kh * win.kw);
    let Some(lanes) = direct_lanes(cx.features) else {
        return false;
    };
    let declined = std::sync::atomic::AtomicBool::new(false);
    for_each_product(g, y, cx, |t, c, cx| {
        let (ni, gi) = (t / g.group, t % g.group);
        with_buf(&PADDED, |padded| {
            let x0 = (ni * g.c + gi * g.cg) * in_plane;
            let xg = &x[x0..x0 + g.cg * in_plane];
            let cols = Im2col::new(win, g.cg, xg, padded, cx);
            // The same table and segments for every (batch, group): cheap
            // next to the product (k offsets, a few segments per row).
            let offs: Vec<usize> = (0..k)
                .map(|p| {
                    let (ch, tap) = (p / taps, p % taps);
                    cols.tap_base(ch, tap / win.kw, tap % win.kw)
                })
                .collect();
            let segs = direct_segments(win.oh, win.ow, win.sh * cols.row, lanes);
            let y0 = t * g.mg * out_plane;
            let ep = Epilogue {
                bias_col: None,
                bias_row: f.bias.map(|bv| &bv[gi * g.mg..(gi + 1) * g.mg]),
                residual: f.residual.map(|r| &r[y0..y0 + c.len()]),
                act: f.act,
            };
            if !gemm_direct(&packs[gi], cols.xp, &offs, &segs, c, out_plane, &ep, cx) {
                // Every product takes the same decision (it depends on the
                // kernel and how the weights were packed), before anything
                // is written.
                declined.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    });
    !declined.into_inner()
}

/// The segments of a direct convolution with `oh × ow` outputs, where
/// output (oh, ow) reads at `oh * step + ow` from where its taps start:
/// `lanes` consecutive floats at a time along the padded input, each output row
/// met a piece, so that with stride-1 rows a segment runs on into the next
/// output row (just the padding columns between them wasted) instead of
/// leaving the rest of its vectors empty.
fn direct_segments(oh: usize, ow: usize, step: usize, lanes: usize) -> Vec<DirectSeg> {
    let mut segs = Vec::new();
    let empty = DirectSeg {
        b_off: 0,
        width: 0,
        pieces: [DirectPiece::default(); DIRECT_PIECES],
        n: 0,
    };
    let mut cur = empty;
    for h in 0..oh {
        let (mut q, mut col, mut left) = (h * step, h * ow, ow);
        while left > 0 {
            if cur.n > 0 && (q - cur.b_off >= lanes || cur.n == DIRECT_PIECES) {
                segs.push(cur);
                cur = empty;
            }
            if cur.n == 0 {
                cur.b_off = q;
            }
            let lo = q - cur.b_off;
            let take = left.min(lanes - lo);
            cur.pieces[cur.n] = DirectPiece {
                lo,
                hi: lo + take,
                col,
            };
            cur.n += 1;
            cur.width = lo + take;
            (q, col, left) = (q + take, col + take, left - take);
        }
    }
    if cur.n > 0 {
        segs.push(cur);
    }
    segs
}

/// The im2col matrix of one (batch item, group) as a generated GEMM
/// operand: row `(c * kh + ki) * kw + kj`, column `oh * OW + ow` holds the
/// input value that tap (ki, kj) of output (oh, ow) reads in channel `c`, 0
/// on padding. It reads a zero-padded copy of the input in which every row
/// is stored de-interleaved by the column stride (columns `0, s, 2s, ..`,
/// then `1, s+1, ..`): every tap then reads inside the copy, and an im2col
/// row is, along each output row, one contiguous run of it at any stride.
struct Im2col<'a> {
    win: &'a Window2d,
    /// The group's channels, `[C/G, hp, row]`, with slack at the end for
    /// over-long vector copies.
    xp: &'a [f32],
    hp: usize,
    /// Floats per padded row: `sw` phases of `phase` columns.
    row: usize,
    phase: usize,
}

/// Floats of slack after the padded input: a run copy may read one vector
/// past its end.
const PAD_SLACK: usize = 32;

/// [`lanes::fill_phases`] into a zeroed `dst`, on AVX2 registers where
/// `features` allow them, else on the portable lanes.
fn split_phases(src: &[f32], dst: &mut [f32], s: usize, l: usize, left: usize, features: Features) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(src: &[f32], dst: &mut [f32], s: usize, l: usize, left: usize) {
            // SAFETY: the caller checked AVX2; fill_phases checks positions.
            unsafe { lanes::fill_phases::<lanes::A8>(src, dst, s, l, left) }
        }
        if features.avx2_fma && ops::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2(src, dst, s, l, left) };
        }
    }
    let _ = features;
    // SAFETY: the portable lanes need no CPU feature.
    unsafe { lanes::fill_phases::<P8>(src, dst, s, l, left) }
}

impl<'a> Im2col<'a> {
    /// Copies `x` (`channels` planes of `h × w`) into `buf` with the zero
    /// borders the window reads, each row de-interleaved by the stride.
    fn new(
        win: &'a Window2d,
        channels: usize,
        x: &[f32],
        buf: &'a mut Vec<f32>,
        cx: &CpuCtx,
    ) -> Im2col<'a> {
        let (hp, wp) = win.padded_extent();
        let phase = wp.div_ceil(win.sw);
        let row = phase * win.sw;
        let plane = hp * row;
        let len = channels * plane + PAD_SLACK;
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        let dst = &mut buf[..len];
        let features = cx.features;
        let fill = |c: usize, p: &mut [f32]| {
            let xc = &x[c * win.in_plane()..(c + 1) * win.in_plane()];
            for (r, prow) in p.chunks_exact_mut(row).enumerate() {
                let src = r
                    .checked_sub(win.pad_top)
                    .filter(|&ih| ih < win.h)
                    .map(|ih| &xc[ih * win.w..(ih + 1) * win.w]);
                match src {
                    None => prow.fill(0.0),
                    Some(src) if win.sw == 1 => {
                        prow[..win.pad_left].fill(0.0);
                        prow[win.pad_left..win.pad_left + win.w].copy_from_slice(src);
                        prow[win.pad_left + win.w..].fill(0.0);
                    }
                    Some(src) => {
                        prow.fill(0.0);
                        split_phases(src, prow, win.sw, phase, win.pad_left, features);
                    }
                }
            }
        };
        let (planes, slack) = dst.split_at_mut(channels * plane);
        slack.fill(0.0);
        if cx.threads > 1 && planes.len() >= PAR_MIN_WORK && channels > 1 {
            cx.for_each_chunk_mut(planes, plane, fill);
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
            row,
            phase,
        }
    }

    /// Where tap (c, ki, kj) of output (0, 0) reads; output (oh, ow) reads
    /// `oh * sh * row + ow` further.
    fn tap_base(&self, c: usize, ki: usize, kj: usize) -> usize {
        let win = self.win;
        let xcol = kj * win.dw;
        c * self.hp * self.row
            + ki * win.dh * self.row
            + (xcol % win.sw) * self.phase
            + xcol / win.sw
    }

    /// Fills one panel row: `cnt` columns from output position (oh, ow) of
    /// the im2col row whose tap reads from `base`, zeros after them.
    #[inline(always)]
    fn panel_row(&self, base: usize, out: &mut [f32], cnt: usize, oh: usize, ow: usize) {
        let win = self.win;
        let (mut i, mut h, mut o) = (0, oh, ow);
        // One run per output row the panel touches.
        while i < cnt {
            let len = (win.ow - o).min(cnt - i);
            let s = base + h * win.sh * self.row + o;
            copy_run(&mut out[i..], &self.xp[s..], len);
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
                *b = self.tap_base(c, tap / win.kw, tap % win.kw);
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
    use super::super::choice::{ProductKnobs, Split, KC_CHOICES};
    use super::super::Features;
    use super::*;
    use crate::ir::ops::util::testing::random;
    use crate::ir::{AutoPad, Tensor};

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
        /// Share of the weights set to zero (pruned).
        sparsity: f64,
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
            sparsity: 0.0,
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
        let w = prune(random(&ws, seed + 1, 1.0), c.sparsity, seed);
        let b = random(&[c.m], seed + 2, 1.0);
        let plain_op = Op::Conv(attrs.clone());
        let plain = crate::ir::ops::eval(&plain_op, &[Some(&x), Some(&w)], 1)
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
        let want = crate::ir::ops::eval(&op, &ins, 1).unwrap().remove(0);
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
        if let Some(packed) = prepack(&op, &consts, want.shape(), cx) {
            let mut again = vec![f32::NAN; want.numel()];
            let mut outs = [ViewMut {
                shape: want.shape(),
                data: &mut again,
            }];
            assert!(run_packed(&op, &views, &mut outs, Some(&packed), cx).unwrap());
            if matches!(
                packed,
                Prepacked::ConvWinograd(_) | Prepacked::ConvDirectOc(_) | Prepacked::ConvSparse(_)
            ) {
                // Another algorithm than the unpacked weights' (Winograd, or
                // another order of the sums): within f32 rounding of the
                // outputs' magnitude, Σ|x||w| + |b| (+ |residual|).
                let abs = |t: &Tensor| {
                    let v = t.as_f32().unwrap().iter().map(|v| v.abs()).collect();
                    Tensor::from_f32(t.shape().to_vec(), v).unwrap()
                };
                let (xa, wa) = (abs(&x), abs(&w));
                let bound = crate::ir::ops::eval(&plain_op, &[Some(&xa), Some(&wa)], 1)
                    .unwrap()
                    .remove(0);
                let slack = 1.0 + b.as_f32().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
                for ((a, w), bd) in again
                    .iter()
                    .zip(want.as_f32().unwrap())
                    .zip(bound.as_f32().unwrap())
                {
                    assert!(
                        (a - w).abs() <= 1e-5 * (bd + slack),
                        "{c:?} (prepacked for another algorithm): {a} vs {w}"
                    );
                }
            } else {
                assert!(
                    again
                        .iter()
                        .zip(&got)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{c:?}: prepacked weights changed the result"
                );
            }
        }
        for (i, (g, w)) in got.iter().zip(want.as_f32().unwrap()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{c:?} at {i}: {g} vs {w}"
            );
        }
        // Every algorithm a tuner may choose, each within the reference's
        // tolerance (Winograd's rounding is bounded above).
        let density = sparse::density(w.as_f32().unwrap());
        let algos = algorithms(&op, w.shape(), Some(density), want.shape(), cx.features);
        assert!(!algos.is_empty(), "{c:?}: no algorithm");
        assert_eq!(
            algos.contains(&ConvAlgo::Sparse),
            !(c.group == c.m && c.x[1] == c.group) && density <= SPARSE_MAX_DENSITY,
            "{c:?}: sparse listed for density {density}"
        );
        let two = CpuCtx {
            features: cx.features,
            ..CpuCtx::new(2).unwrap()
        };
        for algo in algos {
            let packed = prepack_with(&op, &consts, want.shape(), Some(algo), cx).unwrap();
            let taken = match &packed {
                Prepacked::ConvWinograd(w) if w.tile == winograd::Tile::F2 => ConvAlgo::Winograd,
                Prepacked::ConvWinograd(_) => ConvAlgo::Winograd4,
                Prepacked::ConvWeightsT(_) => ConvAlgo::Transposed,
                Prepacked::ConvDirectOc(_) => ConvAlgo::DirectOc,
                Prepacked::ConvWeights { direct: true, .. } => ConvAlgo::Direct,
                Prepacked::ConvWeights { direct: false, .. } => ConvAlgo::Gemm,
                Prepacked::Depthwise { interleaved: true } => ConvAlgo::DwInterleaved,
                Prepacked::Depthwise { interleaved: false } => ConvAlgo::DwPlane,
                Prepacked::ConvSparse(_) => ConvAlgo::Sparse,
                Prepacked::B(_) | Prepacked::SparseB(_) => {
                    unreachable!("a convolution packs no B")
                }
            };
            assert_eq!(taken, algo, "{c:?}");
            let tol = if matches!(algo, ConvAlgo::Winograd | ConvAlgo::Winograd4) {
                1e-3
            } else {
                1e-4
            };
            // The algorithm as packed, then with each product knob a tuner
            // may add (on two threads, so that the split applies).
            let knobs = [Split::Rows, Split::Cols]
                .map(|s| ProductKnobs {
                    split: Some(s),
                    kc: None,
                })
                .into_iter()
                .chain(KC_CHOICES.map(|kc| ProductKnobs {
                    split: None,
                    kc: Some(usize::from(kc)),
                }));
            let tuned = knobs.map(|k| CpuCtx {
                knobs: k,
                ..two.clone()
            });
            for run_cx in std::iter::once(cx.clone()).chain(tuned) {
                let mut y = vec![f32::NAN; want.numel()];
                let mut outs = [ViewMut {
                    shape: want.shape(),
                    data: &mut y,
                }];
                assert!(run_packed(&op, &views, &mut outs, Some(&packed), &run_cx).unwrap());
                for (i, (g, w)) in y.iter().zip(want.as_f32().unwrap()).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 + tol * w.abs(),
                        "{c:?} ({}, {:?}) at {i}: {g} vs {w}",
                        algo.name(),
                        run_cx.knobs
                    );
                }
            }
        }
        got
    }

    /// `w` with about `sparsity` of its values set to zero (the same ones
    /// for a seed).
    fn prune(w: Tensor, sparsity: f64, seed: u64) -> Tensor {
        if sparsity == 0.0 {
            return w;
        }
        let mut rng = crate::rng::SplitMix64::new(seed ^ 0x5eed);
        let v = w
            .as_f32()
            .unwrap()
            .iter()
            .map(|&v| if rng.next_f64() < sparsity { 0.0 } else { v })
            .collect();
        Tensor::from_f32(w.shape().to_vec(), v).unwrap()
    }

    /// `w` with about `sparsity` of its blocks of 4 elements `stride`
    /// apart (4 output channels at one position of a `[M, ...]` weight
    /// with `stride` elements a channel; 4 output features of a `[K, N]`
    /// MatMul weight with `stride` 1) set to zero, as `--prune-block 4x1`
    /// prunes.
    fn prune_blocks(w: Tensor, sparsity: f64, seed: u64, stride: usize) -> Tensor {
        let mut rng = crate::rng::SplitMix64::new(seed ^ 0xb10c);
        let mut v = w.as_f32().unwrap().to_vec();
        let span = 4 * stride;
        for base in (0..v.len()).step_by(span) {
            for j in 0..stride {
                if rng.next_f64() < sparsity {
                    for r in 0..4 {
                        if let Some(x) = v.get_mut(base + j + r * stride) {
                            *x = 0.0;
                        }
                    }
                }
            }
        }
        Tensor::from_f32(w.shape().to_vec(), v).unwrap()
    }

    #[test]
    fn sparse_convolutions() {
        let acts = acts();
        let mut i = 0;
        for sparsity in [0.6, 0.85, 1.0] {
            // 1x1 on the planes themselves; then im2col: 3x3 padded,
            // strided, dilated, grouped, 1-D, and enough pixels and depth
            // for several chunks of columns.
            let mut cases = vec![
                case(&[2, 8, 5, 7], 12, &[1, 1]),
                case(&[1, 5, 9, 9], 9, &[3, 3]),
                case(&[1, 6, 11, 10], 8, &[3, 3]),
                case(&[1, 4, 12, 12], 5, &[3, 3]),
                case(&[2, 6, 9, 7], 4, &[3, 2]),
                case(&[1, 6, 20], 7, &[3]),
                case(&[1, 16, 7, 7], 20, &[1, 1]),
                case(&[1, 40, 31, 30], 10, &[3, 3]),
            ];
            cases[1].pads = vec![1; 4];
            cases[2].strides = vec![2, 2];
            cases[2].pads = vec![1, 0, 2, 1];
            cases[3].dilations = vec![2, 2];
            cases[3].pads = vec![2; 4];
            cases[4].group = 2;
            cases[5].pads = vec![1, 1];
            cases[6].strides = vec![2, 2];
            cases[7].pads = vec![1; 4];
            for mut c in cases {
                i += 1;
                c.sparsity = sparsity;
                c.bias = i % 2 == 0;
                c.residual = i % 3 == 0;
                c.act = (i % 4 != 0).then(|| acts[i % acts.len()].clone());
                check(&c, 40 + i as u64);
            }
        }
        // The default for pruned weights, a candidate for half-pruned
        // ones, absent for dense ones.
        let op = Op::Conv(ConvAttrs {
            kernel_shape: vec![1, 1],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        });
        let f = Features::detect();
        let (ws, os) = ([64, 64, 1, 1], [1, 64, 14, 14]);
        assert_eq!(algorithms(&op, &ws, Some(0.1), &os, f)[0], ConvAlgo::Sparse);
        let half = algorithms(&op, &ws, Some(0.45), &os, f);
        assert!(half[0] != ConvAlgo::Sparse && half.contains(&ConvAlgo::Sparse));
        assert!(!algorithms(&op, &ws, Some(0.9), &os, f).contains(&ConvAlgo::Sparse));
        assert!(!algorithms(&op, &ws, None, &os, f).contains(&ConvAlgo::Sparse));
    }

    /// Checks the case single-threaded (portable and detected features) and
    /// on two threads, which must give the single-threaded result exactly.
    fn check(c: &Case, seed: u64) {
        let one = check_with(c, seed, &CpuCtx::single(Features::detect()));
        check_with(c, seed, &CpuCtx::single(Features::portable()));
        // The 8-lane kernels too where the CPU has wider ones.
        if Features::detect().avx512f {
            check_with(c, seed, &CpuCtx::single(Features::avx2_only()));
        }
        let two = check_with(c, seed, &CpuCtx::new(2).unwrap());
        assert_eq!(one, two, "{c:?}: 1 vs 2 threads");
    }

    #[test]
    fn stems_of_few_channels_at_stride_2() {
        // stem::run (AVX-512, 3x3 stride 2, 1-3 input channels, the direct
        // path's geometry: 16 or more output channels, rows of 14 or more)
        // against the reference: leading and trailing pads of 0-2, rows
        // of 1 to 8 vectors either side of their edges, odd output
        // channel counts, a batch, bias, residual, fused and late
        // activations, at 1 and 2 threads (and where the CPU lacks AVX-512,
        // the direct path it stands in for).
        let window = |c: &Case| {
            let (k, s, d) = (&c.k, &c.strides, &c.dilations);
            let axes = window_axes("Conv", &c.x[2..], k, s, d, &c.pads, c.auto_pad, false);
            Window2d::from_axes(&axes.unwrap()).unwrap()
        };
        let mut taken = 0;
        let mut seed = 700;
        for (x, m, pads, act, residual) in [
            (
                [1, 3, 224, 224],
                32,
                [1, 1, 1, 1],
                Some(Activation::Clip { min: 0.0, max: 6.0 }),
                false,
            ),
            ([2, 3, 29, 33], 17, [1, 1, 1, 1], None, true),
            (
                [1, 1, 28, 28],
                16,
                [0, 0, 1, 1],
                Some(Activation::Relu),
                false,
            ),
            (
                [1, 2, 31, 64],
                19,
                [1, 0, 2, 1],
                Some(Activation::Sigmoid),
                true,
            ),
            ([1, 3, 9, 255], 24, [0, 1, 0, 2], None, false),
            (
                [1, 3, 5, 96],
                16,
                [1, 1, 0, 0],
                Some(Activation::Relu),
                true,
            ),
        ] {
            let mut c = case(&x, m, &[3, 3]);
            c.strides = vec![2, 2];
            c.pads = pads.to_vec();
            c.bias = true;
            c.residual = residual;
            c.act = act;
            if stem::applies(&window(&c), x[1], 1, Features::detect()) {
                taken += 1;
            }
            check(&c, seed);
            seed += 4;
        }
        if !Features::detect().avx512f {
            eprintln!("skipped: stem::run (CPU lacks AVX-512); the direct path ran instead");
        } else {
            assert_eq!(taken, 6);
        }
        // Not its geometry: 4 channels, stride 1, rows past 8 vectors.
        let mut c = case(&[1, 4, 16, 16], 16, &[3, 3]);
        c.strides = vec![2, 2];
        c.pads = vec![1; 4];
        assert!(!stem::applies(&window(&c), 4, 1, Features::detect()));
        c.x = vec![1, 3, 16, 300];
        assert!(!stem::applies(&window(&c), 3, 1, Features::detect()));
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
        // Small planes and more channels than pixels: with prepacked
        // weights these take the transposed product.
        let mut c = case(&[2, 20, 5, 6], 33, &[3, 3]);
        c.pads = vec![1; 4];
        c.bias = true;
        c.residual = true;
        c.act = Some(Activation::Clip { min: 0.0, max: 6.0 });
        check(&c, 21);
        let mut c = case(&[1, 8, 4, 4], 40, &[1, 1]);
        c.group = 2;
        c.bias = true;
        c.act = Some(Activation::Sigmoid);
        check(&c, 22);
        let mut c = case(&[1, 300, 9, 9], 70, &[3, 3]);
        c.strides = vec![2, 2];
        c.act = Some(Activation::Relu);
        check(&c, 23);
        // Pointwise on a 7x7 plane, big enough to split the output planes
        // across threads, with a residual.
        let mut c = case(&[1, 32, 7, 7], 400, &[1, 1]);
        c.bias = true;
        c.residual = true;
        c.act = Some(Activation::Clip { min: 0.0, max: 6.0 });
        check(&c, 24);
    }

    /// Whether `c` takes the direct path with the detected features (so
    /// that [`check`] exercises it).
    fn takes_direct(c: &Case) -> bool {
        let attrs = ConvAttrs {
            kernel_shape: c.k.clone(),
            strides: c.strides.clone(),
            dilations: c.dilations.clone(),
            pads: c.pads.clone(),
            auto_pad: c.auto_pad,
            group: c.group,
        };
        let x = random(&c.x, 0, 1.0);
        let mut ws = vec![c.m, c.x[1] / c.group];
        ws.extend(&c.k);
        let w = random(&ws, 0, 1.0);
        let out = crate::ir::ops::eval(&Op::Conv(attrs.clone()), &[Some(&x), Some(&w)], 1)
            .unwrap()
            .remove(0);
        fn view(t: &Tensor) -> View<'_> {
            View {
                shape: t.shape(),
                data: t.as_f32().unwrap(),
            }
        }
        let g = ConvGeom::new(&attrs, &view(&x), &view(&w), out.shape()).unwrap();
        direct(&g, &CpuCtx::single(Features::detect()))
    }

    #[test]
    fn phase_splits_put_every_column_where_the_layout_says() {
        for features in [Features::portable(), Features::detect()] {
            for s in 2..=5 {
                for n in [0usize, 1, 7, 16, 31, 32, 33, 64, 70, 131] {
                    for left in 0..=s + 1 {
                        let l = (n + left).div_ceil(s) + 1;
                        let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
                        let mut want = vec![0.0f32; s * l];
                        for (iw, &v) in src.iter().enumerate() {
                            let q = iw + left;
                            want[(q % s) * l + q / s] = v;
                        }
                        let mut got = vec![0.0f32; s * l];
                        split_phases(&src, &mut got, s, l, left, features);
                        assert_eq!(got, want, "s{s} n{n} left{left}");
                    }
                }
            }
        }
    }

    #[test]
    fn direct_convolutions() {
        let has_direct = direct_lanes(Features::detect()).is_some();
        let mut cases = Vec::new();
        // Rows of 40 pixels (a 32-wide and an 8-wide segment), bias,
        // residual and a fused Relu, big enough for two threads.
        let mut c = case(&[1, 8, 12, 40], 20, &[3, 3]);
        c.pads = vec![1; 4];
        c.bias = true;
        c.residual = true;
        c.act = Some(Activation::Relu);
        cases.push(c);
        // Strides, dilations and uneven pads (de-interleaved rows).
        let mut c = case(&[1, 5, 30, 70], 17, &[3, 3]);
        c.pads = vec![1, 2, 0, 1];
        c.strides = vec![2, 2];
        c.dilations = vec![2, 1];
        c.bias = true;
        cases.push(c);
        let mut c = case(&[2, 3, 9, 90], 16, &[2, 3]);
        c.strides = vec![1, 3];
        c.dilations = vec![1, 2];
        cases.push(c);
        // Two depth blocks (K = 432), a residual and an activation applied
        // after the store.
        let mut c = case(&[1, 48, 6, 30], 33, &[3, 3]);
        c.pads = vec![1; 4];
        c.residual = true;
        c.act = Some(Activation::Sigmoid);
        cases.push(c);
        // Segments with two and three pieces (rows of 26 and 7).
        let mut c = case(&[1, 16, 5, 26], 16, &[3, 3]);
        c.pads = vec![0, 1, 0, 1];
        c.residual = true;
        c.act = Some(Activation::HardSwish);
        cases.push(c);
        // Groups, and two batch items.
        let mut c = case(&[2, 32, 6, 24], 32, &[3, 3]);
        c.group = 2;
        c.pads = vec![0, 1, 0, 1];
        c.bias = true;
        c.act = Some(Activation::Clip { min: 0.0, max: 6.0 });
        cases.push(c);
        // 1-D, and a 7x7 stride-2 stem.
        let mut c = case(&[2, 6, 50], 16, &[5]);
        c.pads = vec![2, 2];
        cases.push(c);
        let mut c = case(&[1, 3, 50, 50], 16, &[7, 7]);
        c.pads = vec![3; 4];
        c.strides = vec![2, 2];
        c.bias = true;
        c.act = Some(Activation::Relu);
        cases.push(c);
        // More segments (output rows) than one block of C holds.
        let mut c = case(&[1, 4, 130, 24], 16, &[3, 3]);
        c.pads = vec![1; 4];
        c.bias = true;
        cases.push(c);
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(takes_direct(c), has_direct, "{c:?}");
            check(c, 300 + i as u64);
        }
        // Too narrow or too few channels: the im2col path.
        assert!(!takes_direct(&case(&[1, 8, 13, 13], 32, &[3, 3])));
        assert!(!takes_direct(&case(&[1, 8, 30, 15], 32, &[3, 3])));
        assert!(takes_direct(&case(&[1, 8, 16, 16], 32, &[3, 3])) || !has_direct);
        assert!(!takes_direct(&case(&[1, 8, 30, 30], 8, &[3, 3])));
        assert!(!takes_direct(&case(&[1, 8, 30, 30], 32, &[1, 1])));
    }

    #[test]
    fn strided_and_padded_one_by_one_convolutions_subsample_first() {
        // ResNet's downsampling shortcut, odd sizes, stride 3, padding
        // (zero pixels), groups, two batch items, residual and activation;
        // small planes take the transposed product instead.
        let mut cases = Vec::new();
        let mut c = case(&[1, 24, 50, 50], 48, &[1, 1]);
        c.strides = vec![2, 2];
        c.residual = true;
        cases.push(c);
        let mut c = case(&[2, 6, 13, 17], 20, &[1, 1]);
        c.strides = vec![3, 2];
        c.pads = vec![1, 0, 2, 1];
        c.bias = true;
        c.act = Some(Activation::Sigmoid);
        cases.push(c);
        let mut c = case(&[1, 8, 9, 9], 6, &[1, 1]);
        c.pads = vec![1; 4];
        c.group = 2;
        c.residual = true;
        c.act = Some(Activation::Relu);
        cases.push(c);
        let mut c = case(&[1, 64, 14, 14], 128, &[1, 1]);
        c.strides = vec![2, 2];
        c.bias = true;
        cases.push(c);
        for (i, c) in cases.iter().enumerate() {
            assert!(!takes_direct(c), "{c:?}");
            check(c, 700 + i as u64);
        }
    }

    #[test]
    fn direct_segments_cover_each_output_once() {
        for (oh, ow, step, lanes) in [
            (56, 56, 58, 32),
            (28, 28, 116, 32),
            (5, 26, 28, 32),
            (3, 7, 9, 32),
            (1, 40, 42, 32),
            (56, 56, 58, 16),
            (5, 26, 28, 16),
            (3, 7, 9, 16),
            (4, 5, 6, 16),
        ] {
            let segs = direct_segments(oh, ow, step, lanes);
            let mut next = 0;
            for s in &segs {
                assert!(
                    s.width <= lanes && (1..=DIRECT_PIECES).contains(&s.n),
                    "{s:?}"
                );
                for pc in &s.pieces[..s.n] {
                    // Lane l reads at b_off + l: output (h, w) reads h*step + w.
                    assert_eq!(pc.col, next, "{s:?}");
                    let q = s.b_off + pc.lo;
                    assert_eq!(q, (pc.col / ow) * step + pc.col % ow, "{s:?}");
                    assert!(pc.hi <= s.width && pc.col % ow + (pc.hi - pc.lo) <= ow);
                    next += pc.hi - pc.lo;
                }
            }
            assert_eq!(next, oh * ow);
        }
        // Stride-1 rows share segments: 56 wide rows, 2 padding columns.
        for lanes in [16, 32] {
            let n = direct_segments(56, 56, 58, lanes).len();
            assert!(
                n <= (55 * 58 + 56usize).div_ceil(lanes) && n >= (56 * 56usize).div_ceil(lanes)
            );
        }
    }

    /// Every legal algorithm on ResNet-18's and MobileNetV2's shapes,
    /// alternating, best of each:
    /// `cargo test --release --lib conv_speed -- --ignored --nocapture`
    /// (`CONV_THREADS=2`, `CONV_FILTER=96x112` for shapes whose
    /// `CxH->MkKsSgG` contains it, `CONV_ROUNDS=100` for a profiler,
    /// `CONV_COLD=1` to flush the caches before every run).
    #[test]
    #[ignore]
    fn conv_speed() {
        let threads: usize = std::env::var("CONV_THREADS").map_or(1, |t| t.parse().unwrap());
        // More rounds for a profiler.
        let rounds: usize = std::env::var("CONV_ROUNDS").map_or(6, |t| t.parse().unwrap());
        // Caches flushed (64 MiB written) before each run.
        let cold = std::env::var("CONV_COLD").is_ok();
        thread_local! {
            static EVICT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let cx = CpuCtx::new(threads).unwrap();
        // (N, C, H, M, k, stride, pad, group): ResNet-18's and
        // MobileNetV2's shapes at batch 1.
        for (n, c, h, m, k, s, pad, group) in [
            (1, 3, 224, 64, 7, 2, 3, 1),
            (1, 3, 224, 32, 3, 2, 1, 1),
            (1, 64, 56, 64, 3, 1, 1, 1),
            (1, 64, 56, 128, 3, 2, 1, 1),
            (1, 64, 56, 128, 1, 2, 0, 1),
            (1, 128, 28, 128, 3, 1, 1, 1),
            (1, 128, 28, 256, 3, 2, 1, 1),
            (1, 256, 14, 256, 3, 1, 1, 1),
            (1, 256, 14, 512, 3, 2, 1, 1),
            (1, 512, 7, 512, 3, 1, 1, 1),
            (1, 32, 112, 32, 3, 1, 1, 32),
            (1, 96, 112, 96, 3, 2, 1, 96),
            (1, 144, 56, 144, 3, 1, 1, 144),
            (1, 144, 56, 144, 3, 2, 1, 144),
            (1, 384, 14, 384, 3, 1, 1, 384),
            (1, 576, 14, 576, 3, 2, 1, 576),
            (1, 960, 7, 960, 3, 1, 1, 960),
            (1, 64, 14, 384, 1, 1, 0, 1),
            (1, 384, 14, 64, 1, 1, 0, 1),
            (1, 96, 14, 576, 1, 1, 0, 1),
            (1, 576, 14, 96, 1, 1, 0, 1),
            (1, 160, 7, 960, 1, 1, 0, 1),
            (1, 960, 7, 160, 1, 1, 0, 1),
            (1, 960, 7, 320, 1, 1, 0, 1),
            (1, 320, 7, 1280, 1, 1, 0, 1),
        ] {
            let filter = std::env::var("CONV_FILTER").unwrap_or_default();
            if !format!("{c}x{h}->{m}k{k}s{s}g{group}").contains(&filter) {
                continue;
            }
            let mut cs = case(&[n, c, h, h], m, &[k, k]);
            cs.strides = vec![s, s];
            cs.pads = vec![pad; 4];
            let op = Op::Conv(ConvAttrs {
                kernel_shape: cs.k.clone(),
                strides: cs.strides.clone(),
                dilations: cs.dilations.clone(),
                pads: cs.pads.clone(),
                auto_pad: cs.auto_pad,
                group,
            });
            let x = random(&cs.x, 1, 1.0);
            let w = random(&[m, c / group, k, k], 2, 1.0);
            let o = (h + 2 * pad - k) / s + 1;
            let out_shape = [n, m, o, o];
            let views = [
                Some(View {
                    shape: x.shape(),
                    data: x.as_f32().unwrap(),
                }),
                Some(View {
                    shape: w.shape(),
                    data: w.as_f32().unwrap(),
                }),
            ];
            let consts = [None, views[1]];
            let algos = algorithms(&op, w.shape(), None, &out_shape, cx.features);
            let packs: Vec<Prepacked> = algos
                .iter()
                .map(|&a| prepack_with(&op, &consts, &out_shape, Some(a), &cx).unwrap())
                .collect();
            let mut y = vec![0.0; n * m * o * o];
            let flops = 2.0 * (n * m * (c / group) * k * k * o * o) as f64;
            let time = |p: &Prepacked, y: &mut [f32]| {
                let mut best = f64::INFINITY;
                for _ in 0..8 {
                    if cold {
                        // Evict the weights and the input, as a model's
                        // other layers do between runs.
                        EVICT.with(|e| {
                            let mut e = e.borrow_mut();
                            e.resize(1 << 24, 0.0);
                            e.iter_mut().for_each(|v| *v += 1.0);
                        });
                    }
                    let t0 = std::time::Instant::now();
                    let mut outs = [ViewMut {
                        shape: &out_shape,
                        data: y,
                    }];
                    assert!(run_packed(&op, &views, &mut outs, Some(p), &cx).unwrap());
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                best
            };
            // Alternating, best of each: the machine is shared and noisy.
            let mut best = vec![f64::INFINITY; algos.len()];
            for _ in 0..rounds {
                for (b, p) in best.iter_mut().zip(&packs) {
                    *b = b.min(time(p, &mut y));
                }
            }
            let line: Vec<String> = algos
                .iter()
                .zip(&best)
                .map(|(a, t)| format!("{} {:.3} ms ({:.0})", a.name(), t * 1e3, flops / t / 1e9))
                .collect();
            println!("{n}x{c}x{h}x{h} -> {m} k{k} s{s}: {}", line.join(", "));
        }
    }

    /// The sparse kernels against the default dense ones on pruned
    /// weights, for a 1x1 and a 3x3 convolution and a MatMul: `cargo test
    /// --release --lib sparse_speed -- --ignored --nocapture`
    /// (`SPARSE_THREADS`, default 1; `SPARSE_ROUNDS`, default 6). GFLOP/s
    /// counts the useful work, 2 · nonzeros · pixels (or rows).
    #[test]
    #[ignore]
    fn sparse_speed() {
        const SPARSITIES: [f64; 5] = [0.5, 0.7, 0.8, 0.9, 0.95];
        use super::super::linalg;
        let threads: usize = std::env::var("SPARSE_THREADS").map_or(1, |t| t.parse().unwrap());
        let rounds: usize = std::env::var("SPARSE_ROUNDS").map_or(6, |t| t.parse().unwrap());
        let cx = CpuCtx::new(threads).unwrap();
        // The dense and the sparse pack, each `rounds` times best of 4
        // runs of `run`, alternating: their best times in seconds.
        let alternate = |packs: &[Prepacked; 2], run: &mut dyn FnMut(&Prepacked)| {
            let mut t = [f64::INFINITY; 2];
            for _ in 0..rounds {
                for (t, p) in t.iter_mut().zip(packs) {
                    for _ in 0..4 {
                        let t0 = std::time::Instant::now();
                        run(p);
                        *t = t.min(t0.elapsed().as_secs_f64());
                    }
                }
            }
            t
        };
        println!("threads {threads}, {:?}", cx.features);
        // (C, H, M, k, pad): 1x1 and 3x3 at 28x28.
        for (c, h, m, k, pad) in [(256, 28, 256, 1, 0), (128, 28, 128, 3, 1)] {
            let op = Op::Conv(ConvAttrs {
                kernel_shape: vec![k, k],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![pad; 4],
                auto_pad: AutoPad::NotSet,
                group: 1,
            });
            let x = random(&[1, c, h, h], 1, 1.0);
            let out_shape = [1, m, h, h];
            for (sparsity, blocked) in SPARSITIES.iter().flat_map(|&s| [(s, false), (s, true)]) {
                let w = random(&[m, c, k, k], 2, 1.0);
                let w = if blocked {
                    prune_blocks(w, sparsity, 3, c * k * k)
                } else {
                    prune(w, sparsity, 3)
                };
                let views = [
                    Some(View {
                        shape: x.shape(),
                        data: x.as_f32().unwrap(),
                    }),
                    Some(View {
                        shape: w.shape(),
                        data: w.as_f32().unwrap(),
                    }),
                ];
                let consts = [None, views[1]];
                let dense = algorithms(&op, w.shape(), None, &out_shape, cx.features)[0];
                let packs = [dense, ConvAlgo::Sparse]
                    .map(|a| prepack_with(&op, &consts, &out_shape, Some(a), &cx).unwrap());
                let mut y = vec![0.0; m * h * h];
                let t = alternate(&packs, &mut |p| {
                    let mut outs = [ViewMut {
                        shape: &out_shape,
                        data: &mut y,
                    }];
                    assert!(run_packed(&op, &views, &mut outs, Some(p), &cx).unwrap());
                });
                if !matches!(packs[1], Prepacked::ConvSparse(_)) {
                    println!("conv {c}->{m} k{k}: density above {SPARSE_MAX_DENSITY}, no sparse");
                    continue;
                }
                let nnz = sparse::nnz(w.as_f32().unwrap());
                let useful = 2.0 * (nnz * h * h) as f64;
                println!(
                    "conv {c}->{m} k{k} {h}x{h} sparsity {:.0}% {}: {} {:.3} ms, sparse {:.3} ms \
                     ({:.1} GFLOP/s useful), {:.2}x",
                    sparsity * 100.0,
                    if blocked { "4x1" } else { "1x1" },
                    dense.name(),
                    t[0] * 1e3,
                    t[1] * 1e3,
                    useful / t[1] / 1e9,
                    t[0] / t[1]
                );
            }
        }
        // MatMul [rows, K] x [K, N].
        for (rows, kk, n) in [(128, 768, 768), (1, 768, 768)] {
            let a = random(&[rows, kk], 4, 1.0);
            for (sparsity, blocked) in SPARSITIES.iter().flat_map(|&s| [(s, false), (s, true)]) {
                let b = random(&[kk, n], 5, 1.0);
                let b = if blocked {
                    prune_blocks(b, sparsity, 6, 1)
                } else {
                    prune(b, sparsity, 6)
                };
                let views = [
                    Some(View {
                        shape: a.shape(),
                        data: a.as_f32().unwrap(),
                    }),
                    Some(View {
                        shape: b.shape(),
                        data: b.as_f32().unwrap(),
                    }),
                ];
                let consts = [None, views[1]];
                let out_shape = [rows, n];
                let packs = [false, true].map(|sp| {
                    linalg::prepack_with(&Op::MatMul, &consts, &out_shape, Some(sp), &cx).unwrap()
                });
                let mut y = vec![0.0; rows * n];
                let t = alternate(&packs, &mut |p| {
                    let mut outs = [ViewMut {
                        shape: &out_shape,
                        data: &mut y,
                    }];
                    assert!(linalg::run(&Op::MatMul, &views, &mut outs, Some(p), &cx).unwrap());
                });
                let nnz = sparse::nnz(b.as_f32().unwrap());
                let useful = 2.0 * (nnz * rows) as f64;
                println!(
                    "matmul {rows}x{kk}x{n} sparsity {:.0}% {}: dense {:.3} ms, sparse {:.3} ms \
                     ({:.1} GFLOP/s useful), {:.2}x",
                    sparsity * 100.0,
                    if blocked { "4x1" } else { "1x1" },
                    t[0] * 1e3,
                    t[1] * 1e3,
                    useful / t[1] / 1e9,
                    t[0] / t[1]
                );
            }
        }
    }

    #[test]
    fn pads_far_beyond_the_input_go_to_the_reference() {
        // A 3x3 output, but a padded plane of 4 * 10^10 floats: the fast
        // paths would copy the input into it.
        let p = 100_000;
        let op = Op::Conv(ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![p, p],
            dilations: vec![1, 1],
            pads: vec![p; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        });
        let cx = CpuCtx::single(Features::detect());
        let x = random(&[1, 64, 10, 10], 1, 1.0);
        let w = random(&[64, 64, 3, 3], 2, 1.0);
        let views = [
            Some(View {
                shape: x.shape(),
                data: x.as_f32().unwrap(),
            }),
            Some(View {
                shape: w.shape(),
                data: w.as_f32().unwrap(),
            }),
        ];
        let mut y = vec![0.0; 64 * 9];
        let mut outs = [ViewMut {
            shape: &[1, 64, 3, 3],
            data: &mut y,
        }];
        for algo in ConvAlgo::ALL {
            let packed = prepack_with(&op, &[None, views[1]], &[1, 64, 3, 3], Some(algo), &cx);
            assert!(
                !run_packed(&op, &views, &mut outs, packed.as_ref(), &cx).unwrap(),
                "{algo:?}"
            );
        }
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
        // Planes large enough for the threads to split them into bands of
        // rows: odd sizes, both strides, residual, a clamp and an
        // activation applied after (check compares 1 and 2 threads too).
        for (i, (s, act)) in [
            (1, Some(Activation::Clip { min: 0.0, max: 6.0 })),
            (2, Some(Activation::Sigmoid)),
            (1, None),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = case(&[1, 3, 113, 115], 3, &[3, 3]);
            c.group = 3;
            c.strides = vec![s, s];
            c.pads = vec![1, 1, 0, 1];
            c.bias = true;
            c.residual = i != 1;
            c.act = act;
            check(&c, 40 + i as u64);
        }
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

    /// Whether the reference accepts the case (the dilated kernel fits the
    /// padded input on every axis).
    fn valid(c: &Case) -> bool {
        let n = c.k.len();
        (0..n).all(|a| {
            let ek = (c.k[a] - 1) * c.dilations[a] + 1;
            let padded = c.x[2 + a] + c.pads.get(a).unwrap_or(&0) + c.pads.get(a + n).unwrap_or(&0);
            padded >= ek
        })
    }

    fn dw_case(x: &[usize], k: &[usize]) -> Case {
        let mut c = case(x, x[1], k);
        c.group = x[1];
        c
    }

    #[test]
    fn depthwise_widths_strides_dilations_and_kernels() {
        let mut seed = 100;
        for w in [1, 2, 7, 8, 9, 17] {
            for (k, s, d, pads) in [
                (1, 1, 1, [0, 0, 0, 0]),
                (1, 2, 1, [0, 1, 1, 0]),
                (3, 1, 1, [1, 1, 1, 1]),
                (3, 2, 1, [1, 1, 1, 1]),
                (3, 3, 1, [1, 0, 2, 1]),
                (3, 1, 2, [2, 2, 2, 2]),
                (3, 2, 2, [0, 2, 1, 0]),
                (3, 1, 1, [0, 0, 0, 0]),
                (5, 1, 1, [2, 2, 2, 2]),
                (5, 2, 1, [2, 1, 0, 2]),
                (5, 3, 1, [0, 3, 4, 1]),
            ] {
                let mut c = dw_case(&[1, 3, 5, w], &[k, k]);
                c.strides = vec![s, s];
                c.dilations = vec![d, d];
                c.pads = pads.to_vec();
                c.bias = seed % 2 == 0;
                if valid(&c) {
                    check(&c, seed);
                }
                seed += 1;
            }
        }
        // Different strides and dilations per axis.
        let mut c = dw_case(&[2, 4, 9, 19], &[3, 5]);
        c.strides = vec![2, 3];
        c.dilations = vec![1, 2];
        c.pads = vec![1, 3, 0, 2];
        c.bias = true;
        check(&c, 200);
    }

    #[test]
    fn depthwise_auto_pad_and_one_d() {
        let mut seed = 300;
        for ap in [AutoPad::SameUpper, AutoPad::SameLower, AutoPad::Valid] {
            for (w, k, s) in [(7, 3, 2), (8, 3, 2), (9, 5, 1), (17, 3, 3), (16, 5, 2)] {
                let mut c = dw_case(&[1, 2, w - 1, w], &[k, k]);
                c.auto_pad = ap;
                c.pads = vec![];
                c.strides = vec![s, s];
                c.bias = true;
                check(&c, seed);
                seed += 1;
            }
        }
        for w in [1, 2, 7, 8, 9, 17, 40] {
            for (k, s, d, pads) in [
                (1, 1, 1, [0, 0]),
                (3, 1, 1, [1, 1]),
                (3, 2, 1, [1, 1]),
                (3, 3, 2, [2, 0]),
                (5, 2, 1, [2, 2]),
            ] {
                let mut c = dw_case(&[2, 3, w], &[k]);
                c.strides = vec![s];
                c.dilations = vec![d];
                c.pads = pads.to_vec();
                c.bias = seed % 2 == 1;
                if valid(&c) {
                    check(&c, seed);
                }
                seed += 1;
            }
        }
    }

    #[test]
    fn depthwise_residual_and_activations() {
        let mut seed = 400;
        let acts = [
            Some(Activation::Relu),
            Some(Activation::Clip { min: 0.0, max: 6.0 }),
            Some(Activation::Clip {
                min: -0.25,
                max: 0.5,
            }),
            Some(Activation::Sigmoid),
            None,
        ];
        for act in acts {
            for (w, s, residual) in [(7, 1, true), (9, 2, true), (17, 1, false), (8, 2, false)] {
                let mut c = dw_case(&[2, 3, 6, w], &[3, 3]);
                c.strides = vec![s, s];
                c.pads = vec![1; 4];
                c.bias = seed % 2 == 0;
                c.residual = residual;
                c.act = act.clone();
                check(&c, seed);
                seed += 1;
            }
        }
    }

    #[test]
    fn depthwise_many_small_planes_and_big_ones_in_parallel() {
        // 7x7 planes, several per task; 14x14 at stride 2.
        let mut c = dw_case(&[1, 400, 7, 7], &[3, 3]);
        c.pads = vec![1; 4];
        c.bias = true;
        c.act = Some(Activation::Clip { min: 0.0, max: 6.0 });
        check(&c, 500);
        let mut c = dw_case(&[2, 96, 14, 14], &[3, 3]);
        c.strides = vec![2, 2];
        c.pads = vec![1; 4];
        c.residual = true;
        check(&c, 501);
        // A wide plane: many full vectors per row, at strides 1 and 2.
        for s in [1, 2] {
            let mut c = dw_case(&[1, 3, 20, 115], &[3, 3]);
            c.strides = vec![s, s];
            c.pads = vec![1; 4];
            c.bias = true;
            c.act = Some(Activation::Relu);
            check(&c, 502 + s as u64);
        }
    }

    #[test]
    fn interleaved_depthwise_groups_cross_batches_and_leave_a_rest() {
        // 2 x 19 planes: four groups of 8 (one spanning both batch items,
        // so lane channels wrap around C) and 6 planes on the plane kernel;
        // kernels, strides, dilations, uneven pads and widths that are not
        // multiples of 8, with residuals and activations.
        let mut seed = 600;
        for (hw, k, s, d, pads) in [
            ([7, 7], [3, 3], 1, 1, [1, 1, 1, 1]),
            ([14, 13], [3, 3], 2, 1, [1, 1, 1, 1]),
            ([9, 11], [5, 5], 1, 2, [4, 3, 2, 4]),
            ([12, 5], [1, 7], 3, 1, [0, 3, 0, 3]),
            ([30, 29], [3, 3], 2, 1, [0, 1, 1, 0]),
        ] {
            for (residual, act) in [
                (false, Some(Activation::Clip { min: 0.0, max: 6.0 })),
                (true, None),
                (true, Some(Activation::Sigmoid)),
            ] {
                let mut c = dw_case(&[2, 19, hw[0], hw[1]], &k);
                c.strides = vec![s; 2];
                c.dilations = vec![d; 2];
                c.pads = pads.to_vec();
                c.bias = true;
                c.residual = residual;
                c.act = act;
                check(&c, seed);
                seed += 1;
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn depthwise_3x3_rows_in_registers_match_the_padded_kernel() {
        // dw3x3_avx512 (no padded copy) against dw_avx512 (the padded
        // kernel) on the same plane, bit for bit: row widths either side of
        // each vector boundary up to the widest it takes, heights 1 to 5,
        // bands of rows (the threads' split), residual and clamp, and
        // NaN, infinities and -0 among the inputs.
        if !(has_avx512f() && ops::has_avx2_fma()) {
            eprintln!("skipped: 3x3 depthwise in registers (CPU lacks AVX-512F)");
            return;
        }
        let mut seed = 900;
        // Stride 1 padded by 1, and stride 2 with every leading and
        // trailing pad of 0 or 1 (each input width either side of the
        // vector boundaries of its outputs and of its own 32 columns).
        let mut windows = Vec::new();
        for w in [
            1, 2, 3, 5, 6, 7, 8, 15, 16, 17, 31, 32, 33, 56, 100, 112, 127, 128,
        ] {
            for h in [1, 2, 3, 5, 7] {
                windows.push(same_3x3(h, w));
            }
        }
        for w in [
            1, 2, 3, 7, 14, 31, 32, 33, 34, 56, 63, 64, 65, 112, 224, 255, 256, 257,
        ] {
            for h in [1, 2, 3, 6, 7] {
                for pads in [
                    (1, 1, 1, 1),
                    (0, 0, 1, 1),
                    (1, 0, 0, 1),
                    (0, 1, 1, 0),
                    (1, 1, 0, 0),
                ] {
                    let taken = |win: &Window2d| win.ow <= 16 * DW3X3_MAX_VECTORS;
                    if let Some(win) = Window2d::halved_3x3_over(h, w, pads).filter(taken) {
                        windows.push(win);
                    }
                }
            }
        }
        for win in windows {
            {
                let (h, w, oh, ow) = (win.h, win.w, win.oh, win.ow);
                let nb = dw3x3_row_vectors(&win).expect("the geometry it takes");
                let mut x = random(&[h * w], seed, 2.0).as_f32().unwrap().to_vec();
                for (i, special) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]
                    .into_iter()
                    .enumerate()
                {
                    let n = x.len();
                    if (seed as usize / 3 + i).is_multiple_of(2) && n > 4 * i {
                        x[n - 1 - 4 * i] = special;
                    }
                }
                let wk = random(&[9], seed + 1, 1.0).as_f32().unwrap().to_vec();
                let res = random(&[oh * ow], seed + 2, 1.0).as_f32().unwrap().to_vec();
                for (clamp, residual) in [
                    (None, false),
                    (Some((0.0, 6.0)), true),
                    (Some((-0.5, 0.25)), false),
                ] {
                    let plan = DwPlan::new(&win, clamp).expect("a padded plan");
                    let r = residual.then_some(&res[..]);
                    let mut buf = vec![0.0; plan.pad.size()];
                    let (mut want, mut got) = (vec![7.0f32; oh * ow], vec![7.0f32; oh * ow]);
                    // Whole planes, and two bands of rows.
                    let cut = oh / 2;
                    for rows in [0..oh, 0..cut, cut..oh] {
                        buf.fill(0.0);
                        // SAFETY: AVX-512F, AVX2 and FMA are present (checked
                        // above); the plane, scratch and rows fit the window.
                        unsafe {
                            dw_avx512(
                                &plan,
                                &x,
                                &mut buf,
                                &wk,
                                0.5,
                                r,
                                want.as_mut_ptr(),
                                rows.clone(),
                            );
                            dw3x3_avx512(nb, &win, clamp, &x, &wk, 0.5, r, got.as_mut_ptr(), rows);
                        }
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&want),
                        bits(&got),
                        "{h}x{w} stride {} pads {:?} clamp {clamp:?} residual {residual}",
                        win.sw,
                        (win.pad_top, win.pad_left, win.pad_bottom, win.pad_right)
                    );
                }
                seed += 3;
            }
        }
        // Past the widest row it takes, and other windows: not this kernel.
        let wide = same_3x3(4, 129);
        assert_eq!(dw3x3_row_vectors(&wide), None);
        assert_eq!(
            dw3x3_row_vectors(&Window2d {
                sw: 2,
                ow: 65,
                ..wide.clone()
            }),
            None
        );
        let halved = Window2d::halved_3x3_over(4, 258, (1, 1, 1, 1)).expect("a window");
        assert_eq!((halved.ow, dw3x3_row_vectors(&halved)), (129, None));
        let left2 = Window2d::halved_3x3_over(4, 64, (1, 2, 1, 1)).expect("a window");
        assert_eq!(dw3x3_row_vectors(&left2), None);
        assert_eq!(
            dw3x3_row_vectors(&Window2d {
                pad_left: 0,
                ow: 127,
                w: 128,
                ..wide.clone()
            }),
            None
        );
        // And through the whole convolution against the reference, with
        // planes large enough for the plane kernel, at 1 and 2 threads.
        for (x, act) in [
            ([1, 5, 5, 15], Some(Activation::Relu)),
            ([2, 3, 9, 33], Some(Activation::Clip { min: 0.0, max: 6.0 })),
            ([1, 2, 112, 112], None),
        ] {
            let mut c = dw_case(&x, &[3, 3]);
            c.pads = vec![1; 4];
            c.bias = true;
            c.residual = x[3] != 15;
            c.act = act;
            check(&c, seed);
            seed += 1;
        }
    }

    #[test]
    fn interleaved_depthwise_matches_the_plane_kernel_bit_for_bit() {
        // The same arithmetic per output: planes from dw_interleaved (8
        // lanes, and 16 on AVX-512) equal those of dw_padded run plane by
        // plane, to the bit. Shapes: 24 consecutive channels (16-lane
        // weights transposed), 2 x 12 planes (a group wrapping into the
        // next batch item), a 5x5 kernel (taps past one transpose).
        // (FMA, lanes): the portable kernels round products apart from
        // their sums, the AVX ones fuse them, so each is held to its kind.
        let mut kernels = vec![(false, 8), (true, 8)];
        if has_avx512f() && ops::has_avx2_fma() {
            kernels.push((true, WIDE_LANES));
        } else {
            eprintln!("skipped: 16-lane depthwise (CPU lacks AVX-512F)");
        }
        for (shape, k) in [
            ([1, 24, 11, 10], 3),
            ([2, 12, 11, 10], 3),
            ([1, 16, 9, 13], 5),
        ] {
            let c = shape[1];
            let mut case = dw_case(&shape, &[k, k]);
            case.pads = vec![1, 0, 2, 1];
            case.strides = vec![2, 1];
            let attrs = ConvAttrs {
                kernel_shape: case.k.clone(),
                strides: case.strides.clone(),
                dilations: case.dilations.clone(),
                pads: case.pads.clone(),
                auto_pad: case.auto_pad,
                group: case.group,
            };
            let x = random(&case.x, 1, 1.0);
            let w = random(&[c, 1, k, k], 2, 1.0);
            let b = random(&[c], 3, 1.0);
            fn view(t: &Tensor) -> View<'_> {
                View {
                    shape: t.shape(),
                    data: t.as_f32().unwrap(),
                }
            }
            let oshape = crate::ir::ops::eval(&Op::Conv(attrs.clone()), &[Some(&x), Some(&w)], 1)
                .unwrap()
                .remove(0)
                .shape()
                .to_vec();
            let r = random(&oshape, 4, 1.0);
            let g = ConvGeom::new(&attrs, &view(&x), &view(&w), &oshape).unwrap();
            let clamp = Some((-0.5, 0.5));
            let (xv, wv, bv, rv) = (
                x.as_f32().unwrap(),
                w.as_f32().unwrap(),
                b.as_f32().unwrap(),
                r.as_f32().unwrap(),
            );
            let (plane, in_plane, taps) = (g.win.out_plane(), g.win.in_plane(), k * k);
            let nplanes = shape[0] * c;
            for &(fma, lanes) in &kernels {
                let il = InterleavedPlan::new(&g.win, c, wv, Some(bv), clamp, lanes).unwrap();
                let mut got = vec![f32::NAN; nplanes * plane];
                for first in (0..nplanes - lanes + 1).step_by(lanes) {
                    with_interleaved_scratch(&il, |buf| {
                        dw_interleaved(
                            fma,
                            &il,
                            first,
                            &xv[first * in_plane..][..lanes * in_plane],
                            Some(&rv[first * plane..][..lanes * plane]),
                            buf,
                            &mut got[first * plane..][..lanes * plane],
                        )
                    });
                }
                let done = nplanes / lanes * lanes;
                // Every width of the plane kernel of the same kind gives
                // the interleaved one's bits.
                let widths = match fma {
                    true => [DwWidth::Avx2, DwWidth::Avx512],
                    false => [DwWidth::Portable; 2],
                };
                for width in widths {
                    let plan = DwPlan::new(&g.win, clamp).unwrap();
                    let mut buf = vec![0.0; plan.pad.size()];
                    for i in 0..done {
                        let ch = i % c;
                        let mut want = vec![f32::NAN; plane];
                        dw_padded(
                            width,
                            &plan,
                            &xv[i * in_plane..][..in_plane],
                            &mut buf,
                            &wv[ch * taps..][..taps],
                            bv[ch],
                            Some(&rv[i * plane..][..plane]),
                            &mut want,
                        );
                        let got = &got[i * plane..][..plane];
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{shape:?} {k}x{k}, {lanes} lanes vs {width:?}, plane {i}: \
                             {got:?} vs {want:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn depthwise_huge_strides_and_pads_take_the_plain_loop() {
        // The padded scratch would be far larger than the data.
        let mut c = dw_case(&[1, 3, 3, 3], &[1, 1]);
        c.strides = vec![3000, 3000];
        c.pads = vec![3000; 4];
        c.bias = true;
        let win = Window2d {
            h: 3,
            w: 3,
            kh: 1,
            kw: 1,
            sh: 3000,
            sw: 3000,
            dh: 1,
            dw: 1,
            pad_top: 3000,
            pad_left: 3000,
            pad_bottom: 3000,
            pad_right: 3000,
            oh: 3,
            ow: 3,
        };
        assert!(PhasePad::new(&win).is_none());
        check(&c, 600);
    }

    /// The 3x3 window at stride 1 padded by 1 ("same") over an h x w plane.
    fn same_3x3(h: usize, w: usize) -> Window2d {
        Window2d {
            h,
            w,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
            oh: h,
            ow: w,
        }
    }

    #[test]
    fn dw_pad_layout_is_small_and_covers_the_reads() {
        // MobileNet 7x7 stride 1 and 14x14 stride 2, pad 1.
        let mut win = same_3x3(7, 7);
        let p = PhasePad::new(&win).unwrap();
        // Rows of 7 outputs rounded up to one 16-lane vector, plus 2.
        assert_eq!((p.ph, p.s, p.l, p.nrows, p.ncols), (9, 1, 18, 7, 7));
        (win.h, win.w, win.sh, win.sw) = (14, 14, 2, 2);
        let p = PhasePad::new(&win).unwrap();
        assert_eq!((p.ph, p.s, p.l, p.nrows, p.ncols), (15, 2, 17, 14, 14));
        let plan = DwPlan::new(&win, None).unwrap();
        // Taps: row step 2 * 17 = 34 floats; kj = 0, 1, 2 read phase 0
        // index 0, phase 1 index 0, phase 0 index 1.
        assert_eq!(&plan.taps[..3], &[0, 17, 1]);
        assert_eq!(plan.taps[3], 34);
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

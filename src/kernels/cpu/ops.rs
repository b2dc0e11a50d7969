//! Fast f32 kernels for the memory-bound ops: elementwise math (Unary,
//! Binary arithmetic with the common broadcasts, Elementwise chains, Clip),
//! Softmax / LogSoftmax, LayerNormalization and pooling.
//!
//! Every kernel is a plain loop over slices (`zip`, `chunks_exact`, no index
//! arithmetic in the hot loop) that the compiler vectorizes. The loops are
//! compiled twice through `multiversion!`: once for the baseline target and
//! once with AVX2 + FMA enabled (three times through `multiversion_fma!`,
//! the third with AVX-512), picked at run time from [`Features`] (and a
//! CPU check, so a wrong flag cannot run unsupported instructions). Transcendentals use branch-free f32
//! approximations (`exp`, `tanh`, `erf`, built from Cephes / Eigen
//! polynomials, within a few f32 ulp; see the tests for the measured bounds
//! against the reference's f64 math); everything else does the reference's
//! f32 arithmetic. Large loops are split across the thread pool in chunks of
//! whole rows or planes, so every output element is computed by the same
//! instructions whatever the thread count and the results do not depend on
//! it.
//!
//! Shapes or inputs without a fast case (general broadcasting, softmax over
//! an inner axis, MaxPool's Indices output, 3-D pooling, ...) return
//! `Ok(false)`: the runtime then runs the reference kernel, which also
//! reports invalid nodes.

use super::geometry::Window2d;
use super::lanes::{self, Lanes, PhasePad, LANES, P8};
use super::{CpuCtx, Features, View, ViewMut};
use crate::ir::ops::nn::conv::window_axes;
use crate::ir::{Activation, BinaryOp, EwArg, EwStep, Op, PoolAttrs, UnaryOp};
use crate::Result;

/// Output elements below which a kernel stays on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// True when this CPU runs AVX2 and FMA instructions.
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 F and BW (what [`Features::avx512f`]
/// means), whatever a [`Features`] value claims.
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

/// Defines `fn name(avx: bool, args..)` calling the `#[inline(always)]`
/// function `imp(args..)`, compiled a second time with AVX2 and FMA enabled
/// for when `avx` is set and the CPU has them.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:path) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(avx: bool, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if avx && $crate::kernels::cpu::ops::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { fast($($arg),*) };
                }
            }
            let _ = avx;
            $imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Like [`multiversion!`] for an `imp::<const FMA: bool>`, taking the
/// features a call may use: the AVX2 build gets `FMA = true` (fused
/// multiply-adds in the transcendental polynomials, see [`fmadd`]), the
/// portable one `FMA = false`; with AVX-512 the same code is built a third
/// time with it enabled, and LLVM vectorizes its loops 16 lanes wide
/// (lane for lane the same operations, so the same results: on a Zen 5
/// core the BERT-style encoder's softmax ran 1.45x faster, its GELU
/// epilogues too). On aarch64, where every CPU has a fused multiply-add,
/// always `FMA = true`.
macro_rules! multiversion_fma {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(features: Features, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $imp::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast512($($arg: $ty),*) $(-> $ret)? {
                    $imp::<true>($($arg),*)
                }
                if features.avx512f && has_avx2_fma() && has_avx512() {
                    // SAFETY: the CPU supports AVX2, FMA, AVX-512 F and BW
                    // (checked just above).
                    return unsafe { fast512($($arg),*) };
                }
                if features.avx2_fma && has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { fast($($arg),*) };
                }
            }
            let _ = features;
            $imp::<{ cfg!(target_arch = "aarch64") }>($($arg),*)
        }
    };
}

/// `a * b + c`, fused (one rounding) when `FMA`: only for the polynomial
/// approximations, never for ops whose f32 arithmetic must match the
/// reference. Call it with `FMA = true` only where FMA is enabled (in a
/// [`multiversion_fma!`] fast body, or on aarch64); elsewhere `mul_add` is
/// a slow libm call.
#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Runs the op on the fast path; `Ok(false)` when not handled.
pub fn run(op: &Op, inputs: &[Option<View>], outputs: &mut [ViewMut], cx: &CpuCtx) -> Result<bool> {
    let [out] = outputs else { return Ok(false) };
    if out.data.len() != out.shape.iter().product::<usize>() {
        return Ok(false);
    }
    let handled = match op {
        Op::Unary(u) => unary(u, inputs, out, cx),
        Op::Binary(b) => binary(*b, inputs, out, cx),
        Op::Elementwise { steps } => chain(steps, inputs, out, cx),
        Op::Clip => clip(inputs, out, cx),
        Op::Softmax {
            axis,
            legacy,
            nan_to_zero,
        } => softmax(*axis, *legacy, false, *nan_to_zero, inputs, out, cx),
        Op::LogSoftmax { axis, legacy } => softmax(*axis, *legacy, true, false, inputs, out, cx),
        Op::LayerNormalization { axis, epsilon } => layer_norm(*axis, *epsilon, inputs, out, cx),
        Op::MaxPool(a) => pool(a, false, inputs, out, cx),
        Op::AveragePool(a) => pool(a, true, inputs, out, cx),
        Op::GlobalAveragePool => global_pool(true, inputs, out, cx),
        Op::GlobalMaxPool => global_pool(false, inputs, out, cx),
        Op::Transpose { perm } => transpose(perm, inputs, out, cx),
        _ => false,
    };
    Ok(handled)
}

// ---------------------------------------------------------------------------
// Work splitting

/// Calls `f(offset, chunk)` over `out` in chunks of whole `unit`s (rows,
/// planes, broadcast periods), on the pool when there are threads and
/// enough work; `offset` is the chunk's first element.
/// `cost` is the work per output element (input elements read), which
/// decides whether splitting pays.
fn split(
    cx: &CpuCtx,
    out: &mut [f32],
    unit: usize,
    cost: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let len = out.len();
    if len == 0 {
        return;
    }
    let unit = unit.max(1);
    let units = len / unit;
    let cost = cost.max(1);
    if cx.threads <= 1 || len.saturating_mul(cost) < PAR_MIN || units < 2 {
        f(0, out);
        return;
    }
    let per = units
        .div_ceil(cx.threads * 4)
        .max((PAR_MIN / 4).div_ceil(unit.saturating_mul(cost)));
    let chunk = per * unit;
    cx.for_each_chunk_mut(out, chunk, |i, c| f(i * chunk, c));
}

/// A view's data if it is present and its data fits its shape.
fn data<'a>(v: Option<&Option<View<'a>>>) -> Option<&'a [f32]> {
    let v = (*v?)?;
    (v.data.len() == v.shape.iter().product::<usize>()).then_some(v.data)
}

// ---------------------------------------------------------------------------
// Scalar math (inlined into the vectorized loops)

/// `e^x` in f32: `2^n * p(r)` with `n = round(x / ln 2)`, `r = x - n ln 2`
/// and the Cephes degree-6 polynomial (within 2 ulp). Overflows to +inf like
/// the reference; below -87 it returns `e^-87` instead of a subnormal
/// (an absolute error under 1e-37). NaN stays NaN.
#[inline(always)]
pub(crate) fn exp<const F: bool>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.722_83);
    let t = fmadd::<F>(xc, std::f32::consts::LOG2_E, MAGIC);
    let n = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let nf = t - MAGIC;
    let r = fmadd::<F>(nf, 2.121_944_4e-4, fmadd::<F>(nf, -0.693_359_4, xc));
    let mut p = fmadd::<F>(1.987_569_1e-4, r, 1.398_199_9e-3);
    p = fmadd::<F>(p, r, 8.333_452e-3);
    p = fmadd::<F>(p, r, 4.166_579_6e-2);
    p = fmadd::<F>(p, r, 1.666_666_5e-1);
    p = fmadd::<F>(p, r, 5e-1);
    let p = fmadd::<F>(p, r * r, r + 1.0);
    // 2^n as 2^(n-1) * 2 so that n = 128 (just below the overflow
    // threshold) still has a normal exponent.
    let pow2 = f32::from_bits((n.wrapping_add(126) as u32) << 23);
    let y = p * pow2 * 2.0;
    if x > 88.722_83 {
        f32::INFINITY
    } else {
        y
    }
}

/// `tanh(x)`: the Cephes odd polynomial below 0.625, else `1 - 2 / (e^2|x|
/// + 1)` with the sign of x.
#[inline(always)]
pub(crate) fn tanh<const F: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut q = fmadd::<F>(-5.704_988_7e-3, z, 2.063_909e-2);
    q = fmadd::<F>(q, z, -5.373_971_6e-2);
    q = fmadd::<F>(q, z, 1.333_144_2e-1);
    q = fmadd::<F>(q, z, -3.333_328e-1);
    let small = fmadd::<F>(q * z, x, x);
    // Beyond 9.01, tanh rounds to ±1 in f32: return exactly that (GELU's
    // `1 + tanh` must be 0 far left). The cap keeps `e` finite.
    let ac = if a > 9.01 { 9.01 } else { a };
    let e = exp::<F>(2.0 * ac);
    let big = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    if a > 9.01 {
        1f32.copysign(x)
    } else if a < 0.625 {
        small
    } else {
        big
    }
}

/// `1 / (1 + e^-x)`, as `e^x / (1 + e^x)` for negative x (no cancellation).
#[inline(always)]
pub(crate) fn sigmoid<const F: bool>(x: f32) -> f32 {
    let e = exp::<F>(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// `erf(x)`: Eigen's rational approximation on [-4, 4], within 5e-7 of the
/// exact value; exactly ±1 beyond 3.92, where erf rounds to ±1 in f32 (so
/// that GELU's `1 + erf` is exactly 0 far left).
#[inline(always)]
pub(crate) fn erf<const F: bool>(x: f32) -> f32 {
    let saturated = x.abs() > 3.92;
    let one = 1f32.copysign(x);
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = fmadd::<F>(-2.726_142_3e-10, x2, 2.770_681_4e-8);
    p = fmadd::<F>(p, x2, -2.101_024e-6);
    p = fmadd::<F>(p, x2, -5.692_506_4e-5);
    p = fmadd::<F>(p, x2, -7.349_906_3e-4);
    p = fmadd::<F>(p, x2, -2.954_600_1e-3);
    p = fmadd::<F>(p, x2, -1.609_603_3e-2);
    p *= x;
    let mut q = fmadd::<F>(-1.456_607_2e-5, x2, -2.133_740_6e-4);
    q = fmadd::<F>(q, x2, -1.682_827e-3);
    q = fmadd::<F>(q, x2, -7.373_329_2e-3);
    q = fmadd::<F>(q, x2, -1.426_473_9e-2);
    if saturated {
        one
    } else {
        p / q
    }
}

/// Applies `f` to every element of `src` into `dst`.
#[inline(always)]
fn map(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

/// Applies `f` to every element of `d` in place.
#[inline(always)]
fn map_in_place(d: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in d.iter_mut() {
        *v = f(*v);
    }
}

/// Binds `$f` to the f32 function of unary op `$u` and evaluates `$body`;
/// `Not` (bool only) evaluates `$none`.
macro_rules! with_unary {
    ($fma:ident, $u:expr, $f:ident => $body:expr, $none:expr) => {
        match $u {
            UnaryOp::Relu => {
                let $f = |x: f32| if x < 0.0 { 0.0 } else { x };
                $body
            }
            UnaryOp::Sigmoid => {
                let $f = sigmoid::<$fma>;
                $body
            }
            UnaryOp::Tanh => {
                let $f = tanh::<$fma>;
                $body
            }
            UnaryOp::Exp => {
                let $f = exp::<$fma>;
                $body
            }
            UnaryOp::Erf => {
                let $f = erf::<$fma>;
                $body
            }
            UnaryOp::Gelu { tanh_approx: false } => {
                let $f =
                    |x: f32| 0.5 * x * (1.0 + erf::<$fma>(x * std::f32::consts::FRAC_1_SQRT_2));
                $body
            }
            UnaryOp::Gelu { tanh_approx: true } => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                let $f = |x: f32| 0.5 * x * (1.0 + tanh::<$fma>(C * (x + 0.044_715 * x * x * x)));
                $body
            }
            UnaryOp::Sqrt => {
                let $f = |x: f32| x.sqrt();
                $body
            }
            UnaryOp::Reciprocal => {
                let $f = |x: f32| 1.0 / x;
                $body
            }
            UnaryOp::Neg => {
                let $f = |x: f32| -x;
                $body
            }
            UnaryOp::Abs => {
                let $f = |x: f32| x.abs();
                $body
            }
            UnaryOp::Log => {
                let $f = |x: f32| x.ln();
                $body
            }
            UnaryOp::Floor => {
                let $f = |x: f32| x.floor();
                $body
            }
            UnaryOp::Ceil => {
                let $f = |x: f32| x.ceil();
                $body
            }
            UnaryOp::Sign => {
                let $f = |x: f32| {
                    if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        x
                    }
                };
                $body
            }
            UnaryOp::LeakyRelu { alpha } => {
                let a = *alpha;
                let $f = move |x: f32| if x < 0.0 { a * x } else { x };
                $body
            }
            UnaryOp::Elu { alpha } => {
                let a = *alpha;
                let $f = move |x: f32| {
                    if x < 0.0 {
                        a * (exp::<$fma>(x) - 1.0)
                    } else {
                        x
                    }
                };
                $body
            }
            UnaryOp::HardSigmoid { alpha, beta } => {
                let (a, b) = (*alpha, *beta);
                let $f = move |x: f32| (a * x + b).clamp(0.0, 1.0);
                $body
            }
            UnaryOp::HardSwish => {
                let $f = |x: f32| x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0);
                $body
            }
            UnaryOp::Sin => {
                let $f = f32::sin;
                $body
            }
            UnaryOp::Cos => {
                let $f = f32::cos;
                $body
            }
            UnaryOp::Tan => {
                let $f = f32::tan;
                $body
            }
            UnaryOp::Asin => {
                let $f = f32::asin;
                $body
            }
            UnaryOp::Acos => {
                let $f = f32::acos;
                $body
            }
            UnaryOp::Atan => {
                let $f = f32::atan;
                $body
            }
            UnaryOp::Sinh => {
                let $f = f32::sinh;
                $body
            }
            UnaryOp::Cosh => {
                let $f = f32::cosh;
                $body
            }
            UnaryOp::Asinh => {
                let $f = f32::asinh;
                $body
            }
            UnaryOp::Acosh => {
                let $f = f32::acosh;
                $body
            }
            UnaryOp::Atanh => {
                let $f = f32::atanh;
                $body
            }
            UnaryOp::Round => {
                let $f = f32::round_ties_even;
                $body
            }
            UnaryOp::Softplus => {
                let $f = |x: f32| x.max(0.0) + exp::<$fma>(-x.abs()).ln_1p();
                $body
            }
            UnaryOp::Softsign => {
                let $f = |x: f32| x / (1.0 + x.abs());
                $body
            }
            UnaryOp::Not => $none,
        }
    };
}

#[inline(always)]
fn unary_impl<const F: bool>(u: &UnaryOp, src: &[f32], dst: &mut [f32]) {
    with_unary!(F, u, f => map(src, dst, f), ())
}

#[inline(always)]
fn unary_in_place_impl<const F: bool>(u: &UnaryOp, d: &mut [f32]) {
    with_unary!(F, u, f => map_in_place(d, f), ())
}

multiversion_fma!(fn unary_slice(u: &UnaryOp, src: &[f32], dst: &mut [f32]) => unary_impl);
multiversion_fma!(fn unary_in_place(u: &UnaryOp, d: &mut [f32]) => unary_in_place_impl);

#[inline(always)]
fn clip_impl(src: &[f32], dst: &mut [f32], lo: f32, hi: f32) {
    // Raise to lo, then lower to hi, like the reference; NaN stays NaN.
    map(src, dst, |x| {
        let y = if x < lo { lo } else { x };
        if y > hi {
            hi
        } else {
            y
        }
    })
}

multiversion!(fn clip_slice(src: &[f32], dst: &mut [f32], lo: f32, hi: f32) => clip_impl);

/// Gather of f32 data (shape `x_shape`) along `axis` by `indices`
/// (negative ones count from the end) into `out`: one contiguous copy per
/// (outer index, picked index), as an embedding lookup needs.
///
/// # Errors
/// An index out of range for the gathered dim, or an `out` that does not
/// hold the gathered shape.
pub fn gather_f32(
    x_shape: &[usize],
    x: &[f32],
    axis: usize,
    indices: &[i64],
    out: &mut [f32],
) -> Result<()> {
    let dim = x_shape.get(axis).copied().unwrap_or(0);
    let outer: usize = x_shape[..axis.min(x_shape.len())].iter().product();
    let inner: usize = x_shape.iter().skip(axis + 1).product();
    if x.len() != outer * dim * inner || out.len() != outer * indices.len() * inner {
        return Err(crate::Error::Internal(
            "Gather: data or output of another size than its shape".into(),
        ));
    }
    if inner == 0 || out.is_empty() {
        return Ok(());
    }
    for (o, block) in out.chunks_exact_mut(indices.len() * inner).enumerate() {
        let src = &x[o * dim * inner..(o + 1) * dim * inner];
        for (&i, dst) in indices.iter().zip(block.chunks_exact_mut(inner)) {
            let j = if i < 0 { i + dim as i64 } else { i };
            if !(0..dim as i64).contains(&j) {
                return Err(crate::Error::op(
                    "Gather",
                    format!("index {i} is out of range for a dim of {dim}"),
                ));
            }
            let j = j as usize;
            dst.copy_from_slice(&src[j * inner..(j + 1) * inner]);
        }
    }
    Ok(())
}

/// Applies a fused-epilogue activation in place with the fast math, on
/// the widest build `features` allow.
pub(crate) fn activation(act: &Activation, d: &mut [f32], features: Features) {
    let u = match act {
        Activation::Clip { min, max } => {
            let (lo, hi) = (*min, *max);
            // In place: copy-free through the raw loop.
            for v in d.iter_mut() {
                let y = if *v < lo { lo } else { *v };
                *v = if y > hi { hi } else { y };
            }
            return;
        }
        Activation::Relu => UnaryOp::Relu,
        Activation::Sigmoid => UnaryOp::Sigmoid,
        Activation::Tanh => UnaryOp::Tanh,
        Activation::HardSigmoid { alpha, beta } => UnaryOp::HardSigmoid {
            alpha: *alpha,
            beta: *beta,
        },
        Activation::HardSwish => UnaryOp::HardSwish,
        Activation::LeakyRelu { alpha } => UnaryOp::LeakyRelu { alpha: *alpha },
        Activation::Gelu { tanh_approx } => UnaryOp::Gelu {
            tanh_approx: *tanh_approx,
        },
    };
    unary_in_place(features, &u, d);
}

// ---------------------------------------------------------------------------
// Unary, Clip

fn unary(u: &UnaryOp, inputs: &[Option<View>], out: &mut ViewMut, cx: &CpuCtx) -> bool {
    if matches!(u, UnaryOp::Not) || inputs.len() != 1 {
        return false;
    }
    let Some(x) = data(inputs.first()) else {
        return false;
    };
    if inputs[0].map(|v| v.shape) != Some(out.shape) {
        return false;
    }
    split(cx, out.data, 1, 1, |off, d| {
        unary_slice(cx.features, u, &x[off..off + d.len()], d)
    });
    true
}

/// The value of an optional scalar bound: `Some(None)` when absent or
/// empty, `None` when it is not a single value.
fn bound(v: Option<&Option<View>>) -> Option<Option<f32>> {
    match v.copied().flatten() {
        None => Some(None),
        Some(v) if v.data.is_empty() => Some(None),
        Some(v) if v.data.len() == 1 => Some(Some(v.data[0])),
        Some(_) => None,
    }
}

fn clip(inputs: &[Option<View>], out: &mut ViewMut, cx: &CpuCtx) -> bool {
    let Some(x) = data(inputs.first()) else {
        return false;
    };
    if inputs[0].map(|v| v.shape) != Some(out.shape) || inputs.len() > 3 {
        return false;
    }
    let (Some(lo), Some(hi)) = (bound(inputs.get(1)), bound(inputs.get(2))) else {
        return false;
    };
    // An absent bound is an infinity, which never clamps (NaN stays NaN).
    let lo = lo.unwrap_or(f32::NEG_INFINITY);
    let hi = hi.unwrap_or(f32::INFINITY);
    let avx = cx.features.avx2_fma;
    split(cx, out.data, 1, 1, |off, d| {
        clip_slice(avx, &x[off..off + d.len()], d, lo, hi)
    });
    true
}

// ---------------------------------------------------------------------------
// Binary

/// How one input of a broadcasting op maps onto the output.
#[derive(Clone, Copy, Debug)]
enum Operand<'a> {
    /// Same element count as the output.
    Full(&'a [f32]),
    Scalar(f32),
    /// Output element `e` reads `data[(e / inner) % data.len()]`: the input's
    /// non-1 dims are one contiguous run of the output's dims (a row bias
    /// when `inner == 1`, a channel bias otherwise).
    Block {
        data: &'a [f32],
        inner: usize,
    },
}

/// Classifies a view against the output shape; `None` for any other
/// broadcast.
fn operand<'a>(v: &View<'a>, out: &[usize]) -> Option<Operand<'a>> {
    let s = v.shape;
    if s.len() > out.len() || v.data.len() != s.iter().product::<usize>() {
        return None;
    }
    let pad = out.len() - s.len();
    let dim = |d: usize| if d < pad { 1 } else { s[d - pad] };
    if (0..out.len()).any(|d| dim(d) != out[d] && dim(d) != 1) {
        return None;
    }
    let n = v.data.len();
    if n == 1 {
        return Some(Operand::Scalar(v.data[0]));
    }
    if n == out.iter().product::<usize>() {
        return Some(Operand::Full(v.data));
    }
    let first = (0..out.len()).find(|&d| dim(d) != 1)?;
    let last = (0..out.len()).rev().find(|&d| dim(d) != 1)?;
    if (first..=last).any(|d| dim(d) != out[d]) {
        return None;
    }
    Some(Operand::Block {
        data: v.data,
        inner: out[last + 1..].iter().product(),
    })
}

/// One operand over one segment of the output.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Slice(&'a [f32]),
    Const(f32),
}

impl<'a> Operand<'a> {
    /// The period (in output elements) over which the operand is a slice or
    /// a constant: segments start at multiples of it.
    fn period(&self) -> usize {
        match *self {
            Operand::Block { data, inner: 1 } => data.len(),
            Operand::Block { inner, .. } => inner,
            _ => 1,
        }
    }

    /// The operand over output elements `off..off + len`, which lie inside
    /// one period.
    fn seg(&self, off: usize, len: usize) -> Seg<'a> {
        match *self {
            Operand::Full(d) => Seg::Slice(&d[off..off + len]),
            Operand::Scalar(c) => Seg::Const(c),
            Operand::Block { data, inner: 1 } => Seg::Slice(&data[..len]),
            Operand::Block { data, inner } => Seg::Const(data[(off / inner) % data.len()]),
        }
    }
}

#[inline(always)]
fn zip_seg(a: Seg, b: Seg, d: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    match (a, b) {
        (Seg::Slice(x), Seg::Slice(y)) => {
            for ((o, &p), &q) in d.iter_mut().zip(x).zip(y) {
                *o = f(p, q);
            }
        }
        (Seg::Slice(x), Seg::Const(q)) => map(x, d, |p| f(p, q)),
        (Seg::Const(p), Seg::Slice(y)) => map(y, d, |q| f(p, q)),
        (Seg::Const(p), Seg::Const(q)) => d.fill(f(p, q)),
    }
}

/// Binds `$f` to the f32 function of arithmetic op `$b` (the reference's
/// arithmetic: f32 for + - * /, f64 for Pow) and evaluates `$body`.
macro_rules! with_binary {
    ($b:expr, $f:ident => $body:expr) => {
        match $b {
            BinaryOp::Add => {
                let $f = |x: f32, y: f32| x + y;
                $body
            }
            BinaryOp::Sub => {
                let $f = |x: f32, y: f32| x - y;
                $body
            }
            BinaryOp::Mul => {
                let $f = |x: f32, y: f32| x * y;
                $body
            }
            BinaryOp::Div => {
                let $f = |x: f32, y: f32| x / y;
                $body
            }
            _ => {
                // x * x is exactly f64 x^2 rounded to f32.
                let $f = |x: f32, y: f32| {
                    if y == 2.0 {
                        x * x
                    } else {
                        (x as f64).powf(y as f64) as f32
                    }
                };
                $body
            }
        }
    };
}

#[inline(always)]
fn binary_impl(b: BinaryOp, x: Seg, y: Seg, d: &mut [f32]) {
    with_binary!(b, f => zip_seg(x, y, d, f))
}

multiversion!(fn binary_seg(b: BinaryOp, x: Seg, y: Seg, d: &mut [f32]) => binary_impl);

fn binary(b: BinaryOp, inputs: &[Option<View>], out: &mut ViewMut, cx: &CpuCtx) -> bool {
    if !b.is_chain_arithmetic() || inputs.len() != 2 {
        return false;
    }
    let (Some(Some(x)), Some(Some(y))) = (inputs.first(), inputs.get(1)) else {
        return false;
    };
    let shape = out.shape;
    let (Some(a), Some(c)) = (operand(x, shape), operand(y, shape)) else {
        return false;
    };
    // The output must be the broadcast of the two (not larger).
    let bshape = crate::ir::ops::util::broadcast_shape(x.shape, y.shape);
    if bshape.as_deref() != Some(shape) {
        return false;
    }
    let period = match (a.period(), c.period()) {
        (1, p) | (p, 1) => p,
        _ => return false,
    };
    let avx = cx.features.avx2_fma;
    split(cx, out.data, period, 1, |off, d| {
        // Both operands are slices or constants over a whole period (over
        // the whole chunk when neither is a block).
        let seg_len = if period == 1 { d.len() } else { period };
        for (i, seg) in d.chunks_mut(seg_len).enumerate() {
            let o = off + i * seg_len;
            let len = seg.len();
            binary_seg(avx, b, a.seg(o, len), c.seg(o, len), seg);
        }
    });
    true
}

// ---------------------------------------------------------------------------
// Elementwise chains

/// Elements per block of a chain: every step's values for one block stay in
/// L1.
const CHAIN_BLOCK: usize = 256;

#[inline(always)]
fn chain_impl<const F: bool>(
    steps: &[EwStep],
    ins: &[Operand],
    off: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    for (b, dst) in out.chunks_mut(CHAIN_BLOCK).enumerate() {
        let start = off + b * CHAIN_BLOCK;
        let len = dst.len();
        for (k, step) in steps.iter().enumerate() {
            let (done, rest) = scratch.split_at_mut(k * CHAIN_BLOCK);
            let cur = &mut rest[..len];
            let arg = |a: &EwArg| -> Seg {
                match *a {
                    EwArg::Input(i) => ins[i].seg(start, len),
                    EwArg::Step(j) => Seg::Slice(&done[j * CHAIN_BLOCK..j * CHAIN_BLOCK + len]),
                    EwArg::Scalar(s) => Seg::Const(s),
                }
            };
            match step {
                EwStep::Unary(u, a) => match arg(a) {
                    Seg::Slice(s) => unary_impl::<F>(u, s, cur),
                    Seg::Const(c) => {
                        cur.fill(c);
                        unary_in_place_impl::<F>(u, cur);
                    }
                },
                EwStep::Binary(op, x, y) => binary_impl(*op, arg(x), arg(y), cur),
                EwStep::Clip(a, lo, hi) => match arg(a) {
                    Seg::Slice(s) => clip_impl(s, cur, *lo, *hi),
                    Seg::Const(c) => {
                        let y = if c < *lo { *lo } else { c };
                        cur.fill(if y > *hi { *hi } else { y });
                    }
                },
            }
        }
        let last = (steps.len() - 1) * CHAIN_BLOCK;
        dst.copy_from_slice(&scratch[last..last + len]);
    }
}

multiversion_fma!(fn chain_chunk(steps: &[EwStep], ins: &[Operand], off: usize, out: &mut [f32], scratch: &mut [f32]) => chain_impl);

fn chain(steps: &[EwStep], inputs: &[Option<View>], out: &mut ViewMut, cx: &CpuCtx) -> bool {
    if steps.is_empty() {
        return false;
    }
    let mut ins = Vec::with_capacity(inputs.len());
    for v in inputs {
        match v.as_ref().and_then(|v| operand(v, out.shape)) {
            Some(o @ (Operand::Full(_) | Operand::Scalar(_))) => ins.push(o),
            _ => return false,
        }
    }
    // The output must be the broadcast of the inputs (not larger).
    let mut bshape: Vec<usize> = Vec::new();
    for v in inputs.iter().flatten() {
        match crate::ir::ops::util::broadcast_shape(&bshape, v.shape) {
            Some(s) => bshape = s,
            None => return false,
        }
    }
    if bshape != out.shape {
        return false;
    }
    // Arguments must name existing inputs and earlier steps; only
    // arithmetic binaries; no Not.
    for (k, step) in steps.iter().enumerate() {
        let (args, ok): ([Option<&EwArg>; 2], bool) = match step {
            EwStep::Unary(u, a) => ([Some(a), None], !matches!(u, UnaryOp::Not)),
            EwStep::Binary(b, x, y) => ([Some(x), Some(y)], b.is_chain_arithmetic()),
            EwStep::Clip(a, _, _) => ([Some(a), None], true),
        };
        let args_ok = args.iter().flatten().all(|a| match **a {
            EwArg::Input(i) => i < ins.len(),
            EwArg::Step(j) => j < k,
            EwArg::Scalar(_) => true,
        });
        if !ok || !args_ok {
            return false;
        }
    }
    let ins = &ins;
    split(cx, out.data, CHAIN_BLOCK, steps.len(), |off, d| {
        let mut scratch = vec![0f32; steps.len() * CHAIN_BLOCK];
        chain_chunk(cx.features, steps, ins, off, d, &mut scratch)
    });
    true
}

// ---------------------------------------------------------------------------
// Softmax, LayerNormalization

/// Sum with eight independent lanes (vectorizes; also more accurate than
/// one running sum).
#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = 0f32;
    for &x in it.remainder() {
        s += x;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

/// `sum((v - mean)^2)` over `v`, added in the same lanes as [`sum`] (no
/// store of the squares).
#[inline(always)]
fn sum_sq_dev(v: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += (x - mean) * (x - mean);
        }
    }
    let mut s = 0f32;
    for &x in it.remainder() {
        s += (x - mean) * (x - mean);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

/// Largest value of a non-empty slice, NaN ignored (-inf when all are).
#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in it.remainder().iter().chain(&acc) {
        m = if x > m { x } else { m };
    }
    m
}

#[inline(always)]
fn softmax_impl<const F: bool>(x: &[f32], y: &mut [f32], len: usize, log: bool, nan_to_zero: bool) {
    for (xr, yr) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        // A NaN in the row is skipped by max but makes the sum NaN, so the
        // whole row is NaN as in the reference.
        let m = max(xr);
        // Two passes (the row is in L1): a plain map vectorizes fully,
        // where a fused exp-and-add loop does not.
        map(xr, yr, |v| exp::<F>(v - m));
        let s = sum(yr);
        if log {
            let ls = (s as f64).ln() as f32;
            map(xr, yr, |v| (v - m) - ls);
        } else if nan_to_zero && s.is_nan() {
            // A row is NaN exactly when its sum is (no finite input, or a
            // NaN or +inf one): zeros, as `Where(IsNaN(y), 0, y)` gives.
            yr.fill(0.0);
        } else {
            let r = 1.0 / s;
            map_in_place(yr, |v| v * r);
        }
    }
}

multiversion_fma!(fn softmax_rows(x: &[f32], y: &mut [f32], len: usize, log: bool, nan_to_zero: bool) => softmax_impl);

#[allow(clippy::too_many_arguments)]
fn softmax(
    axis: i64,
    legacy: bool,
    log: bool,
    nan_to_zero: bool,
    inputs: &[Option<View>],
    out: &mut ViewMut,
    cx: &CpuCtx,
) -> bool {
    let Some(xd) = data(inputs.first()) else {
        return false;
    };
    let shape = out.shape;
    if inputs.len() != 1 || inputs[0].map(|v| v.shape) != Some(shape) {
        return false;
    }
    let rank = shape.len() as i64;
    if axis < -rank || axis >= rank {
        return false;
    }
    let a = if axis < 0 { axis + rank } else { axis } as usize;
    // Legacy normalizes over the flattened block dims[a..]; the current form
    // over dims[a] alone, which is the same when the trailing dims are 1.
    if !legacy && shape[a + 1..].iter().any(|&d| d != 1) {
        return false;
    }
    let len: usize = shape[a..].iter().product();
    if len == 0 || xd.is_empty() {
        return true;
    }
    split(cx, out.data, len, 4, |off, d| {
        softmax_rows(
            cx.features,
            &xd[off..off + d.len()],
            d,
            len,
            log,
            nan_to_zero,
        )
    });
    true
}

#[inline(always)]
fn layer_norm_impl(x: &[f32], y: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f64) {
    let n = scale.len();
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let mean = (sum(xr) as f64 / n as f64) as f32;
        let var = sum_sq_dev(xr, mean) as f64 / n as f64;
        let inv = (1.0 / (var + eps).sqrt()) as f32;
        match bias {
            Some(b) => {
                for (((o, &v), &s), &b) in yr.iter_mut().zip(xr).zip(scale).zip(b) {
                    *o = (v - mean) * inv * s + b;
                }
            }
            None => {
                for ((o, &v), &s) in yr.iter_mut().zip(xr).zip(scale) {
                    *o = (v - mean) * inv * s;
                }
            }
        }
    }
}

multiversion!(fn layer_norm_rows(x: &[f32], y: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f64) => layer_norm_impl);

/// Whether a LayerNormalization parameter of shape `p` is one value per
/// element of the normalized block `block` (broadcast over the rows only).
fn per_block(p: &View, block: &[usize], rank: usize) -> bool {
    fn strip(s: &[usize]) -> impl Iterator<Item = usize> + '_ {
        s.iter().copied().skip_while(|&d| d == 1)
    }
    p.shape.len() <= rank
        && strip(p.shape).eq(strip(block))
        && p.data.len() == block.iter().product::<usize>()
}

fn layer_norm(
    axis: i64,
    eps: f32,
    inputs: &[Option<View>],
    out: &mut ViewMut,
    cx: &CpuCtx,
) -> bool {
    let (Some(xd), Some(Some(s))) = (data(inputs.first()), inputs.get(1)) else {
        return false;
    };
    let b = inputs.get(2).copied().flatten();
    let shape = out.shape;
    if inputs.len() > 3 || inputs[0].map(|v| v.shape) != Some(shape) {
        return false;
    }
    let rank = shape.len() as i64;
    if axis < -rank || axis >= rank {
        return false;
    }
    let a = if axis < 0 { axis + rank } else { axis } as usize;
    let block = &shape[a..];
    let cols: usize = block.iter().product();
    if cols == 0 || !per_block(s, block, shape.len()) {
        return false;
    }
    if let Some(b) = &b {
        if !per_block(b, block, shape.len()) {
            return false;
        }
    }
    let avx = cx.features.avx2_fma;
    let (scale, bias) = (s.data, b.map(|b| b.data));
    split(cx, out.data, cols, 4, |off, d| {
        layer_norm_rows(avx, &xd[off..off + d.len()], d, scale, bias, eps as f64)
    });
    true
}

// ---------------------------------------------------------------------------
// Pooling
//
// Each (batch, channel) plane is copied into a scratch plane ([`PhasePad`])
// that holds the padding (-inf for a max, 0 for an average) and splits each
// row by the column stride, so that a kernel tap reads 8 neighbouring
// outputs' inputs as one contiguous vector load without bounds tests. The
// kernel ([`pool_kernel`]) then keeps the running max / sum of all the taps
// of 8 outputs in a register and stores them once. Geometries whose scratch
// would be huge (pads or strides far beyond the kernel) take the plain
// per-tap loop ([`pool_plain`]).

thread_local! {
    /// A thread's pooling scratch plane.
    static POOL_SCRATCH: lanes::Scratch = const { lanes::Scratch::new((Vec::new(), None)) };
}

/// Everything the padded pooling kernel needs besides one plane's data.
struct PoolPlan<'a> {
    win: &'a Window2d,
    pad: PhasePad,
    /// [`PhasePad::taps`].
    taps: Vec<usize>,
    average: bool,
    /// AveragePool's divisor of output `(oh, ow)` is `rowc[oh] * colc[ow]`
    /// (taps counted per axis; `colc` is padded with ones to whole vectors).
    rowc: Vec<f32>,
    colc: Vec<f32>,
}

impl<'a> PoolPlan<'a> {
    fn new(win: &'a Window2d, average: bool, include_pad: bool) -> Option<PoolPlan<'a>> {
        let pad = PhasePad::new(win)?;
        let taps = pad.taps(win);
        let pick =
            |(padded, inside): (usize, usize)| (if include_pad { padded } else { inside }) as f32;
        let (rowc, colc) = if average {
            let mut colc: Vec<f32> = (0..win.ow).map(|o| pick(win.col_counts(o))).collect();
            colc.resize(win.ow.div_ceil(LANES) * LANES, 1.0);
            ((0..win.oh).map(|o| pick(win.row_counts(o))).collect(), colc)
        } else {
            (Vec::new(), Vec::new())
        };
        Some(PoolPlan {
            win,
            pad,
            taps,
            average,
            rowc,
            colc,
        })
    }

    /// The scratch padding value.
    fn fill(&self) -> f32 {
        if self.average {
            0.0
        } else {
            f32::NEG_INFINITY
        }
    }
}

/// One pooling plane: copies input plane `xp` into the scratch `buf` (of
/// the plan's layout, padding filled with [`PoolPlan::fill`]) and writes
/// `p[oh, ow]`, the max (NaN ignored, NaN when all the input taps are NaN,
/// -inf when none is inside the input) or the average of the window.
fn pool_padded(avx: bool, plan: &PoolPlan, xp: &[f32], buf: &mut [f32], p: &mut [f32]) {
    let win = plan.win;
    let ok = xp.len() == win.in_plane()
        && buf.len() == plan.pad.size()
        && p.len() == win.out_plane()
        && plan.taps.len() == win.kh * win.kw
        && (!plan.average || (plan.rowc.len() == win.oh && plan.colc.len() >= win.ow));
    if !ok {
        // Unreachable from `pool`, which sizes everything from the same
        // window; kept so the unsafe kernels below never see a bad call.
        debug_assert!(false, "pool_padded: inconsistent arguments");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx && has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the sizes were checked above.
        unsafe { pool_avx(plan, xp, buf, p) };
        return;
    }
    let _ = avx;
    // SAFETY: the sizes were checked above.
    unsafe { pool_dispatch::<P8>(plan, xp, buf, p) }
}

/// Fills the scratch and picks the kernel instance.
///
/// # Safety
/// The slices have the sizes [`pool_padded`] checks.
#[inline(always)]
unsafe fn pool_dispatch<V: Lanes>(plan: &PoolPlan, xp: &[f32], buf: &mut [f32], p: &mut [f32]) {
    let k3 = plan.win.kh == 3 && plan.win.kw == 3;
    match (plan.average, k3) {
        (false, true) => pool_kernel::<V, true, false>(plan, xp, buf, p),
        (false, false) => pool_kernel::<V, false, false>(plan, xp, buf, p),
        (true, true) => pool_kernel::<V, true, true>(plan, xp, buf, p),
        (true, false) => pool_kernel::<V, false, true>(plan, xp, buf, p),
    }
}

/// Copies rows `rows` of input plane `xp` into the scratch positions of
/// [`PhasePad`] (the padding is already in place): a plain copy per row at
/// stride 1, else [`lanes::fill_phases`].
///
/// # Safety
/// As [`pool_dispatch`], with `rows.end <= pad.nrows`.
#[inline(always)]
unsafe fn pool_fill<V: Lanes>(
    win: &Window2d,
    pad: &PhasePad,
    xp: &[f32],
    buf: &mut [f32],
    rows: std::ops::Range<usize>,
) {
    let (s, l, n, left) = (pad.s, pad.l, pad.ncols, pad.left);
    for ih in rows {
        let src = &xp[ih * win.w..ih * win.w + n];
        let dst = &mut buf[(ih + pad.top) * pad.row()..(ih + pad.top + 1) * pad.row()];
        if s == 1 {
            dst[left..left + n].copy_from_slice(src);
        } else {
            lanes::fill_phases::<V>(src, dst, s, l, left);
        }
    }
}

/// One tap into the running sum (`AVG`) or max. (A function, not a
/// closure: closures in the generic kernels do not inline into the
/// `target_feature` callers, and the intrinsics with them.)
#[inline(always)]
unsafe fn pool_tap<V: Lanes, const AVG: bool>(acc: V, v: V) -> V {
    if AVG {
        V::add(acc, v)
    } else {
        V::max(acc, v)
    }
}

/// The max (`AVG = false`) or sum of the taps of the 8 outputs whose first
/// reads start at `x0`. `K3`: a 3x3 kernel, its taps as the row step `t3.0`
/// and 3 column offsets `t3.1`.
#[inline(always)]
unsafe fn pool_chunk<V: Lanes, const K3: bool, const AVG: bool>(
    x0: *const f32,
    t3: (usize, [usize; 3]),
    taps: &[usize],
) -> V {
    let mut acc = V::splat(if AVG { 0.0 } else { f32::NEG_INFINITY });
    if K3 {
        let (step, c) = t3;
        for ki in 0..3 {
            let xk = x0.add(ki * step);
            for &cj in &c {
                acc = pool_tap::<V, AVG>(acc, V::load(xk.add(cj)));
            }
        }
    } else {
        for &off in taps {
            acc = pool_tap::<V, AVG>(acc, V::load(x0.add(off)));
        }
    }
    acc
}

/// The register-blocked pooling kernel: for each output row, the input
/// rows it is the first to read are copied into the scratch (so the rows
/// in use stay in L1 cache), then chunks of 8 outputs reduce every tap in a
/// register and are stored once; the last
/// partial chunk is computed in full (the scratch has the room) and stored
/// masked at the plane's end. A max of -inf (every input tap NaN or -inf,
/// or none inside the input: the padding is -inf and NaN taps are skipped)
/// is recomputed from `xp` by [`pool_max_at`] to tell these apart.
///
/// # Safety
/// As [`pool_dispatch`]; `K3` implies a 3x3 kernel.
#[inline(always)]
unsafe fn pool_kernel<V: Lanes, const K3: bool, const AVG: bool>(
    plan: &PoolPlan,
    xp: &[f32],
    buf: &mut [f32],
    p: &mut [f32],
) {
    let (win, pad) = (plan.win, &plan.pad);
    let (ow, rows) = (win.ow, win.sh * pad.row());
    let mut filled = 0;
    let len = p.len();
    let out = p.as_mut_ptr();
    let t3 = if K3 {
        (
            win.dh * plan.pad.row(),
            [plan.taps[0], plan.taps[1], plan.taps[2]],
        )
    } else {
        (0, [0; 3])
    };
    let colc = plan.colc.as_ptr();
    for oh in 0..win.oh {
        // Input rows up to the last one this output row reads.
        let need = (oh * win.sh + (win.kh - 1) * win.dh + 1)
            .saturating_sub(pad.top)
            .min(pad.nrows);
        if need > filled {
            pool_fill::<V>(win, pad, xp, buf, filled..need);
            filled = need;
        }
        let xr = buf.as_ptr().add(oh * rows);
        let yr = out.add(oh * ow);
        let rdiv = V::splat(if AVG { plan.rowc[oh] } else { 1.0 });
        let mut o = 0;
        while o < ow {
            let mut acc = pool_chunk::<V, K3, AVG>(xr.add(o), t3, &plan.taps);
            if AVG {
                acc = V::div(acc, V::mul(rdiv, V::load(colc.add(o))));
            }
            let n = (ow - o).min(LANES);
            // Lanes past the row land in the next rows, rewritten later: a
            // full store while inside the plane, a masked one at its end.
            if oh * ow + o + LANES <= len {
                acc.store(yr.add(o));
            } else {
                acc.store_n(yr.add(o), n);
            }
            if !AVG {
                let m = acc.neg_inf_mask() & ((1u32 << n) - 1);
                if m != 0 {
                    pool_max_fix(win, xp, oh, o, m, std::slice::from_raw_parts_mut(yr, ow));
                }
            }
            o += LANES;
        }
    }
}

/// Recomputes the outputs `o + lane` (lanes set in `mask`) of output row
/// `row` (row `oh`) with [`pool_max_at`].
#[cold]
#[inline(never)]
fn pool_max_fix(win: &Window2d, xp: &[f32], oh: usize, o: usize, mask: u32, row: &mut [f32]) {
    for lane in 0..LANES {
        if mask & (1 << lane) != 0 {
            row[o + lane] = pool_max_at(win, xp, oh, o + lane);
        }
    }
}

/// The max of window `(oh, ow)` over the taps inside plane `xp`, as the
/// reference: NaN ignored, NaN when every tap is NaN, -inf with no taps.
fn pool_max_at(win: &Window2d, xp: &[f32], oh: usize, ow: usize) -> f32 {
    let mut m = f32::NEG_INFINITY;
    let (mut any, mut all_nan) = (false, true);
    for ki in 0..win.kh {
        let Some(ih) = win.in_row(oh, ki) else {
            continue;
        };
        for kj in 0..win.kw {
            let c = ow * win.sw + kj * win.dw;
            let Some(iw) = c.checked_sub(win.pad_left).filter(|&iw| iw < win.w) else {
                continue;
            };
            let v = xp[ih * win.w + iw];
            any = true;
            all_nan &= v.is_nan();
            m = m.max(v);
        }
    }
    if any && all_nan {
        f32::NAN
    } else {
        m
    }
}

/// Output rows of at most this many vectors of 16 take
/// [`max3x3_halved_avx512`].
#[cfg(target_arch = "x86_64")]
const MAX_HALVED_VECTORS: usize = 8;

/// The vectors of 16 an output row takes when a pooling of `win` runs
/// [`max3x3_halved_avx512`]: a MaxPool over a stride-2 3x3 window
/// ([`Window2d::halved_3x3`]) on AVX-512, rows of at most
/// [`MAX_HALVED_VECTORS`] vectors.
#[cfg(target_arch = "x86_64")]
fn max_halved_vectors(win: &Window2d, average: bool, features: Features) -> Option<usize> {
    let nb = win.ow.div_ceil(16);
    (!average
        && features.avx512f
        && has_avx512()
        && win.halved_3x3()
        && (1..=MAX_HALVED_VECTORS).contains(&nb))
    .then_some(nb)
}

/// MaxPool over a stride-2 3x3 window ([`Window2d::halved_3x3`]) on
/// AVX-512, straight from the input plane `xp` into the output plane `p`
/// (no scratch copy): each output row's input rows give their taps through
/// [`lanes::HalvedRow`] (-inf past the input) and the maxima of 16
/// outputs are taken in the padded kernel's tap order, so the results are
/// the same to the bit (-0 and NaN included); a -inf maximum is recomputed
/// by [`pool_max_at`] as there. ResNet-18's MaxPool (64 x 112x112 ->
/// 56x56) copied and split every input row first.
///
/// # Safety
/// The CPU must support AVX-512F; `nb` is [`max_halved_vectors`] of
/// `win`, `xp` its input plane and `p` its output plane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max3x3_halved_avx512(nb: usize, win: &Window2d, xp: &[f32], p: &mut [f32]) {
    match nb {
        1 => max3x3_halved_rows::<1>(win, xp, p),
        2 => max3x3_halved_rows::<2>(win, xp, p),
        3 => max3x3_halved_rows::<3>(win, xp, p),
        4 => max3x3_halved_rows::<4>(win, xp, p),
        5 => max3x3_halved_rows::<5>(win, xp, p),
        6 => max3x3_halved_rows::<6>(win, xp, p),
        7 => max3x3_halved_rows::<7>(win, xp, p),
        _ => max3x3_halved_rows::<8>(win, xp, p),
    }
}

/// [`max3x3_halved_avx512`] with `NB` its `nb`.
///
/// # Safety
/// As [`max3x3_halved_avx512`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn max3x3_halved_rows<const NB: usize>(win: &Window2d, xp: &[f32], p: &mut [f32]) {
    use std::arch::x86_64::*;
    let (h, w, ow) = (win.h, win.w, win.ow);
    if xp.len() != h * w || p.len() != win.oh * ow || ow.div_ceil(16) != NB || !win.halved_3x3() {
        // Unreachable from `pool`, which sizes everything from the window.
        debug_assert!(false, "max3x3_halved: inconsistent arguments");
        return;
    }
    let last = ow - 16 * (NB - 1);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let split = lanes::HalvedRow::<NB>::new(w, win.pad_left == 1, ninf);
    for oy in 0..win.oh {
        let mut acc = [ninf; NB];
        for ky in 0..3 {
            // A padding row's taps are -inf: they change no maximum.
            let Some(iy) = (2 * oy + ky).checked_sub(win.pad_top).filter(|&iy| iy < h) else {
                continue;
            };
            let row = split.split(xp.as_ptr().add(iy * w));
            for (b, a) in acc.iter_mut().enumerate() {
                for x in row.taps(b) {
                    // `x > acc ? x : acc`, as the padded kernel's max.
                    *a = _mm512_max_ps(x, *a);
                }
            }
        }
        let row = &mut p[oy * ow..(oy + 1) * ow];
        for (b, &a) in acc.iter().enumerate() {
            let n = if b + 1 < NB { 16 } else { last };
            let m = ((1u32 << n) - 1) as __mmask16;
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(16 * b), m, a);
            let inf = u32::from(_mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(m, a, ninf));
            if inf != 0 {
                pool_max_fix(win, xp, oy, 16 * b, inf & 0xff, row);
                pool_max_fix(win, xp, oy, 16 * b + 8, inf >> 8, row);
            }
        }
    }
}

/// [`pool_dispatch`] on AVX2 registers, into which the [`lanes::A8`]
/// methods and their intrinsics inline.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the arguments must satisfy
/// [`pool_dispatch`]'s contract.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pool_avx(plan: &PoolPlan, xp: &[f32], buf: &mut [f32], p: &mut [f32]) {
    pool_dispatch::<lanes::A8>(plan, xp, buf, p)
}

/// The plain pooling loop (no scratch) for geometries whose scratch plane
/// would be huge: per output row, every kernel tap updates the output
/// columns whose input lies inside the plane.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pool_plain_impl(
    win: &Window2d,
    ranges: &[(usize, usize, usize)],
    cols: &[(usize, usize)],
    x: &[f32],
    y: &mut [f32],
    average: bool,
    include_pad: bool,
) {
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    for (xp, yp) in x.chunks_exact(in_plane).zip(y.chunks_exact_mut(out_plane)) {
        for (oh, row) in yp.chunks_exact_mut(win.ow).enumerate() {
            row.fill(if average { 0.0 } else { f32::NAN });
            for ki in 0..win.kh {
                let Some(ih) = win.in_row(oh, ki) else {
                    continue;
                };
                let xrow = &xp[ih * win.w..(ih + 1) * win.w];
                for &(lo, hi, start) in ranges {
                    if lo == hi {
                        continue;
                    }
                    let dst = &mut row[lo..hi];
                    let src = &xrow[start..];
                    match (average, win.sw) {
                        (true, 1) => dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s),
                        (false, 1) => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = d.max(s)),
                        (true, sw) => dst
                            .iter_mut()
                            .zip(src.iter().step_by(sw))
                            .for_each(|(d, &s)| *d += s),
                        (false, sw) => dst
                            .iter_mut()
                            .zip(src.iter().step_by(sw))
                            .for_each(|(d, &s)| *d = d.max(s)),
                    }
                }
            }
            let (rows_padded, rows_inside) = win.row_counts(oh);
            for (v, &(cp, ci)) in row.iter_mut().zip(cols) {
                let inside = rows_inside * ci;
                if average {
                    let div = if include_pad {
                        rows_padded * cp
                    } else {
                        inside
                    };
                    *v /= div as f32;
                } else if inside == 0 {
                    // A window entirely on padding.
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
}

multiversion!(fn pool_plain(
    win: &Window2d,
    ranges: &[(usize, usize, usize)],
    cols: &[(usize, usize)],
    x: &[f32],
    y: &mut [f32],
    average: bool,
    include_pad: bool,
) => pool_plain_impl);

fn pool(
    a: &PoolAttrs,
    average: bool,
    inputs: &[Option<View>],
    out: &mut ViewMut,
    cx: &CpuCtx,
) -> bool {
    let Some(xd) = data(inputs.first()) else {
        return false;
    };
    let xs = match inputs[0] {
        Some(v) => v.shape,
        None => return false,
    };
    if inputs.len() != 1 || !(3..=4).contains(&xs.len()) || a.kernel_shape.is_empty() {
        return false;
    }
    let Ok(axes) = window_axes(
        "Pool",
        &xs[2..],
        &a.kernel_shape,
        &a.strides,
        &a.dilations,
        &a.pads,
        a.auto_pad,
        a.ceil_mode,
    ) else {
        return false;
    };
    let Some(win) = Window2d::from_axes(&axes) else {
        return false;
    };
    let mut want = vec![xs[0], xs[1]];
    want.extend(axes.iter().map(|a| a.output));
    if want != out.shape || xd.len() != xs[0] * xs[1] * win.in_plane() {
        return false;
    }
    if out.data.is_empty() {
        return true;
    }
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    let avx = cx.features.avx2_fma;
    let include_pad = a.count_include_pad;
    // Work per output: its taps, or the input it reads when that is more
    // (the copy into the scratch).
    let cost = (win.kh * win.kw).max(in_plane / out_plane.max(1));
    #[cfg(target_arch = "x86_64")]
    if let Some(nb) = max_halved_vectors(&win, average, cx.features) {
        split(cx, out.data, out_plane, cost, |off, d| {
            let p0 = off / out_plane;
            for (j, p) in d.chunks_exact_mut(out_plane).enumerate() {
                let xp = &xd[(p0 + j) * in_plane..(p0 + j + 1) * in_plane];
                // SAFETY: `max_halved_vectors` checked AVX-512 and the
                // window; the planes are the window's.
                unsafe { max3x3_halved_avx512(nb, &win, xp, p) }
            }
        });
        return true;
    }
    if let Some(plan) = PoolPlan::new(&win, average, include_pad) {
        let fill = plan.fill();
        split(cx, out.data, out_plane, cost, |off, d| {
            let p0 = off / out_plane;
            lanes::with_scratch(&POOL_SCRATCH, plan.pad, fill, |buf| {
                for (j, p) in d.chunks_exact_mut(out_plane).enumerate() {
                    let i = p0 + j;
                    pool_padded(avx, &plan, &xd[i * in_plane..(i + 1) * in_plane], buf, p);
                }
            })
        });
        return true;
    }
    let ranges: Vec<(usize, usize, usize)> = (0..win.kw).map(|kj| win.col_range(kj)).collect();
    let cols: Vec<(usize, usize)> = (0..win.ow).map(|ow| win.col_counts(ow)).collect();
    split(cx, out.data, out_plane, cost, |off, d| {
        let p0 = off / out_plane;
        let np = d.len() / out_plane;
        let x = &xd[p0 * in_plane..(p0 + np) * in_plane];
        pool_plain(avx, &win, &ranges, &cols, x, d, average, include_pad)
    });
    true
}

#[inline(always)]
fn global_impl(x: &[f32], y: &mut [f32], plane: usize, average: bool) {
    for (xp, v) in x.chunks_exact(plane).zip(y.iter_mut()) {
        *v = if average {
            sum(xp) / plane as f32
        } else {
            // NaN ignored; NaN when every cell is NaN (as the reference).
            let mut acc = [f32::NAN; 8];
            let mut it = xp.chunks_exact(8);
            for c in &mut it {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a = a.max(x);
                }
            }
            it.remainder()
                .iter()
                .chain(&acc)
                .fold(f32::NAN, |m, &x| m.max(x))
        };
    }
}

multiversion!(fn global_planes(x: &[f32], y: &mut [f32], plane: usize, average: bool) => global_impl);

fn global_pool(average: bool, inputs: &[Option<View>], out: &mut ViewMut, cx: &CpuCtx) -> bool {
    let Some(xd) = data(inputs.first()) else {
        return false;
    };
    let xs = match inputs[0] {
        Some(v) => v.shape,
        None => return false,
    };
    if inputs.len() != 1 || xs.len() < 2 {
        return false;
    }
    let mut want = vec![xs[0], xs[1]];
    want.resize(xs.len(), 1);
    let plane: usize = xs[2..].iter().product();
    if want != out.shape || plane == 0 {
        return false;
    }
    let avx = cx.features.avx2_fma;
    // Split by output cells; each reads its whole plane.
    split(cx, out.data, 1, plane, |off, d| {
        global_planes(
            avx,
            &xd[off * plane..(off + d.len()) * plane],
            d,
            plane,
            average,
        )
    });
    true
}

// ---------------------------------------------------------------------------
// Transpose

/// Most axes a transpose keeps after dropping size-1 axes and merging runs;
/// larger ranks go to the reference kernel.
const TR_MAX_RANK: usize = 16;

/// A transpose reduced to its essential axes: output axis `k` has `dims[k]`
/// elements and steps the input by `strides[k]`.
#[derive(Clone, Copy, Debug)]
struct TrShape {
    rank: usize,
    dims: [usize; TR_MAX_RANK],
    strides: [usize; TR_MAX_RANK],
}

impl TrShape {
    /// Drops size-1 axes and merges output axes `k, k+1` whenever
    /// `stride[k] == dims[k+1] * stride[k+1]` (they walk the input as one
    /// axis). `None` when more than [`TR_MAX_RANK`] axes remain.
    fn reduce(xs: &[usize], perm: &[usize]) -> Option<TrShape> {
        if xs.len() > TR_MAX_RANK {
            return None;
        }
        let mut st = [0usize; TR_MAX_RANK];
        let mut s = 1usize;
        for i in (0..xs.len()).rev() {
            st[i] = s;
            s = s.saturating_mul(xs[i]);
        }
        let mut t = TrShape {
            rank: 0,
            dims: [0; TR_MAX_RANK],
            strides: [0; TR_MAX_RANK],
        };
        for &p in perm {
            let d = xs[p];
            if d == 1 {
                continue;
            }
            let n = t.rank;
            if n > 0 && t.strides[n - 1] == d * st[p] {
                t.dims[n - 1] *= d;
                t.strides[n - 1] = st[p];
            } else {
                t.dims[n] = d;
                t.strides[n] = st[p];
                t.rank += 1;
            }
        }
        Some(t)
    }
}

/// `dst[a * s_out + b] = src[b * s_in + a]` for `a < na`, `b < nb`, in
/// blocks that keep both sides in cache (plain loops).
#[inline(always)]
fn tile_portable(src: &[f32], s_in: usize, dst: &mut [f32], s_out: usize, na: usize, nb: usize) {
    const B: usize = 16;
    for a0 in (0..na).step_by(B) {
        let a1 = (a0 + B).min(na);
        for b0 in (0..nb).step_by(B) {
            let b1 = (b0 + B).min(nb);
            for a in a0..a1 {
                let row = &mut dst[a * s_out + b0..a * s_out + b1];
                for (j, d) in row.iter_mut().enumerate() {
                    *d = src[(b0 + j) * s_in + a];
                }
            }
        }
    }
}

/// [`tile_portable`] with AVX 8x8 register transposes for the full blocks.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(src: &[f32], s_in: usize, dst: &mut [f32], s_out: usize, na: usize, nb: usize) {
    use std::arch::x86_64::*;
    if na == 0 || nb == 0 {
        return;
    }
    // Every access below is at most these indices: the raw-pointer loads
    // and stores stay in bounds.
    assert!(src.len() > (nb - 1) * s_in + (na - 1) && dst.len() > (na - 1) * s_out + (nb - 1));
    let (na8, nb8) = (na / 8 * 8, nb / 8 * 8);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    // Two 8-column groups (one 64-byte input line) per pass over the rows.
    for a0 in (0..na8).step_by(16) {
        for b0 in (0..nb8).step_by(8) {
            for a in (a0..(a0 + 16).min(na8)).step_by(8) {
                // SAFETY: a + 7 < na and b0 + 7 < nb: in bounds (asserted).
                unsafe {
                    let s = sp.add(b0 * s_in + a);
                    let r0 = _mm256_loadu_ps(s);
                    let r1 = _mm256_loadu_ps(s.add(s_in));
                    let r2 = _mm256_loadu_ps(s.add(2 * s_in));
                    let r3 = _mm256_loadu_ps(s.add(3 * s_in));
                    let r4 = _mm256_loadu_ps(s.add(4 * s_in));
                    let r5 = _mm256_loadu_ps(s.add(5 * s_in));
                    let r6 = _mm256_loadu_ps(s.add(6 * s_in));
                    let r7 = _mm256_loadu_ps(s.add(7 * s_in));
                    let t0 = _mm256_unpacklo_ps(r0, r1);
                    let t1 = _mm256_unpackhi_ps(r0, r1);
                    let t2 = _mm256_unpacklo_ps(r2, r3);
                    let t3 = _mm256_unpackhi_ps(r2, r3);
                    let t4 = _mm256_unpacklo_ps(r4, r5);
                    let t5 = _mm256_unpackhi_ps(r4, r5);
                    let t6 = _mm256_unpacklo_ps(r6, r7);
                    let t7 = _mm256_unpackhi_ps(r6, r7);
                    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                    let d = dp.add(a * s_out + b0);
                    _mm256_storeu_ps(d, _mm256_permute2f128_ps::<0x20>(u0, u4));
                    _mm256_storeu_ps(d.add(s_out), _mm256_permute2f128_ps::<0x20>(u1, u5));
                    _mm256_storeu_ps(d.add(2 * s_out), _mm256_permute2f128_ps::<0x20>(u2, u6));
                    _mm256_storeu_ps(d.add(3 * s_out), _mm256_permute2f128_ps::<0x20>(u3, u7));
                    _mm256_storeu_ps(d.add(4 * s_out), _mm256_permute2f128_ps::<0x31>(u0, u4));
                    _mm256_storeu_ps(d.add(5 * s_out), _mm256_permute2f128_ps::<0x31>(u1, u5));
                    _mm256_storeu_ps(d.add(6 * s_out), _mm256_permute2f128_ps::<0x31>(u2, u6));
                    _mm256_storeu_ps(d.add(7 * s_out), _mm256_permute2f128_ps::<0x31>(u3, u7));
                }
            }
        }
        // The columns past the last full block of 8.
        for a in a0..(a0 + 16).min(na8) {
            for b in nb8..nb {
                dst[a * s_out + b] = src[b * s_in + a];
            }
        }
    }
    // The rows past the last full block of 8.
    for a in na8..na {
        for b in 0..nb {
            dst[a * s_out + b] = src[b * s_in + a];
        }
    }
}

/// One 2-D tile transpose on the best available path.
fn tile(avx: bool, src: &[f32], s_in: usize, dst: &mut [f32], s_out: usize, na: usize, nb: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx && has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { tile_avx2(src, s_in, dst, s_out, na, nb) };
    }
    let _ = avx;
    tile_portable(src, s_in, dst, s_out, na, nb)
}

/// Writes output axis-0 indices `lo..hi` of the reduced transpose `t` of
/// `x` into `y` (exactly that part of the output).
fn transpose_part(avx: bool, t: &TrShape, x: &[f32], y: &mut [f32], lo: usize, hi: usize) {
    let n = t.rank;
    if n == 1 {
        // Nothing moves (the one axis is contiguous on both sides).
        y.copy_from_slice(&x[lo..hi]);
        return;
    }
    let (dims, is) = (&t.dims[..n], &t.strides[..n]);
    let mut os = [0usize; TR_MAX_RANK];
    let mut s = 1;
    for k in (0..n).rev() {
        os[k] = s;
        s *= dims[k];
    }
    let last = n - 1;
    // The input's contiguous axis: the output's last one (row copies) or
    // an earlier one (tile transposes over it and the last).
    let q = (0..n).find(|&k| is[k] == 1).unwrap_or(last);
    // Loop ranges of the other axes (axis 0 limited to this part).
    let mut lo_k = [0usize; TR_MAX_RANK];
    let mut hi_k = [0usize; TR_MAX_RANK];
    hi_k[..last].copy_from_slice(&dims[..last]);
    lo_k[0] = lo;
    hi_k[0] = hi;
    let (qlo, qhi) = (lo_k[q], hi_k[q]);
    if q != last {
        // Axis q is run by the tile, not by the odometer.
        lo_k[q] = 0;
        hi_k[q] = 1;
    }
    let base = lo * os[0];
    let mut idx = lo_k;
    loop {
        let mut src = 0;
        let mut dst = 0;
        for k in 0..last {
            src += idx[k] * is[k];
            dst += idx[k] * os[k];
        }
        if q == last {
            let run = dims[last];
            let d = dst - base;
            y[d..d + run].copy_from_slice(&x[src..src + run]);
        } else {
            src += qlo;
            let d = dst + qlo * os[q] - base;
            tile(
                avx,
                &x[src..],
                is[last],
                &mut y[d..],
                os[q],
                qhi - qlo,
                dims[last],
            );
        }
        // Next index of axes 0..last (the innermost moves fastest).
        let mut k = last;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < hi_k[k] {
                break;
            }
            idx[k] = lo_k[k];
        }
    }
}

fn transpose(perm: &[usize], inputs: &[Option<View>], out: &mut ViewMut, cx: &CpuCtx) -> bool {
    let Some(x) = data(inputs.first()) else {
        return false;
    };
    let xs = match inputs[0] {
        Some(v) => v.shape,
        None => return false,
    };
    let r = xs.len();
    if inputs.len() != 1 || perm.len() != r || out.shape.len() != r {
        return false;
    }
    // A permutation whose output shape is the permuted input shape.
    let mut seen = [false; TR_MAX_RANK];
    for (k, &p) in perm.iter().enumerate() {
        if p >= r || r > TR_MAX_RANK || seen[p] || out.shape[k] != xs[p] {
            return false;
        }
        seen[p] = true;
    }
    if x.is_empty() {
        return true;
    }
    let Some(t) = TrShape::reduce(xs, perm) else {
        return false;
    };
    if t.rank == 0 {
        out.data.copy_from_slice(x);
        return true;
    }
    let unit = out.data.len() / t.dims[0];
    let avx = cx.features.avx2_fma;
    split(cx, out.data, unit, 1, |off, d| {
        transpose_part(avx, &t, x, d, off / unit, (off + d.len()) / unit)
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::math::reference::unary_float;

    /// The builds of the multiversioned kernels this CPU runs: portable,
    /// AVX2 and, where present, AVX-512.
    fn builds() -> Vec<Features> {
        let f = Features::detect();
        let avx2 = Features {
            avx512f: false,
            avx512vnni: false,
            amx_int8: false,
            ..f
        };
        let mut v = vec![Features::portable(), avx2];
        if f.avx512f {
            v.push(f);
        }
        v
    }
    use crate::ir::ops::util::testing::random;
    use crate::ir::{AutoPad, Tensor};

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = (g - w).abs() <= 1e-5 + 1e-4 * w.abs() || (g.is_nan() && w.is_nan()) || g == w;
            assert!(ok, "{what} at {i}: {g} vs {w}");
        }
    }

    /// Runs `op` on the fast path (which must take it) with `cx`.
    fn fast(op: &Op, ins: &[Option<&Tensor>], out_shape: &[usize], cx: &CpuCtx) -> Vec<f32> {
        let views: Vec<Option<View>> = ins
            .iter()
            .map(|t| {
                t.map(|t| View {
                    shape: t.shape(),
                    data: t.as_f32().unwrap(),
                })
            })
            .collect();
        let mut got = vec![f32::NAN; out_shape.iter().product()];
        let mut outs = [ViewMut {
            shape: out_shape,
            data: &mut got,
        }];
        assert!(
            run(op, &views, &mut outs, cx).unwrap(),
            "{op:?}: not handled"
        );
        got
    }

    /// Fast path vs the reference (portable and detected features, one and
    /// two threads; the thread counts must agree exactly).
    fn check(op: &Op, ins: &[Option<&Tensor>]) {
        let want = crate::ir::ops::eval(op, ins, 1).unwrap().remove(0);
        let w = want.as_f32().unwrap();
        let what = format!(
            "{op:?} on {:?}",
            ins.iter().map(|t| t.map(|t| t.shape())).collect::<Vec<_>>()
        );
        let one = fast(op, ins, want.shape(), &CpuCtx::single(Features::detect()));
        close(&one, w, &what);
        let portable = fast(op, ins, want.shape(), &CpuCtx::single(Features::portable()));
        close(&portable, w, &what);
        let two = fast(op, ins, want.shape(), &CpuCtx::new(2).unwrap());
        assert!(
            one.iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: 1 vs 2 threads"
        );
    }

    fn declines(op: &Op, ins: &[Option<&Tensor>], out_shape: &[usize]) {
        let views: Vec<Option<View>> = ins
            .iter()
            .map(|t| {
                t.map(|t| View {
                    shape: t.shape(),
                    data: t.as_f32().unwrap(),
                })
            })
            .collect();
        let mut buf = vec![0f32; out_shape.iter().product()];
        let mut outs = [ViewMut {
            shape: out_shape,
            data: &mut buf,
        }];
        let cx = CpuCtx::single(Features::portable());
        assert!(
            !run(op, &views, &mut outs, &cx).unwrap(),
            "{op:?} was taken"
        );
    }

    fn all_unary() -> Vec<UnaryOp> {
        vec![
            UnaryOp::Relu,
            UnaryOp::Sigmoid,
            UnaryOp::Tanh,
            UnaryOp::Gelu { tanh_approx: false },
            UnaryOp::Gelu { tanh_approx: true },
            UnaryOp::Exp,
            UnaryOp::Sqrt,
            UnaryOp::Neg,
            UnaryOp::Abs,
            UnaryOp::Erf,
            UnaryOp::HardSwish,
            UnaryOp::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            UnaryOp::LeakyRelu { alpha: 0.01 },
            UnaryOp::Reciprocal,
            UnaryOp::Log,
            UnaryOp::Floor,
            UnaryOp::Ceil,
            UnaryOp::Sign,
            UnaryOp::Elu { alpha: 1.5 },
        ]
    }

    #[test]
    fn fast_math_matches_the_reference_over_a_dense_range() {
        // Every 1/1024 over [-100, 100], plus huge values and specials.
        let mut xs: Vec<f32> = (-102_400..=102_400).map(|i| i as f32 / 1024.0).collect();
        xs.extend([
            1e-30,
            -1e-30,
            1e-7,
            -1e-7,
            88.5,
            88.72,
            88.73,
            89.0,
            -87.5,
            -104.0,
            1e10,
            -1e10,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
        ]);
        for u in all_unary() {
            let mut got = vec![0f32; xs.len()];
            for f in builds() {
                unary_slice(f, &u, &xs, &mut got);
                for (&x, &g) in xs.iter().zip(&got) {
                    let w = unary_float(&u, x as f64) as f32;
                    let ok = g == w
                        || (g - w).abs() <= 1e-5 + 1e-4 * w.abs()
                        || (g.is_nan() && w.is_nan());
                    assert!(ok, "{u:?}({x}) = {g}, want {w}");
                }
            }
        }
        // The relative error of exp, tanh, sigmoid and erf alone is far
        // below the tolerance: a few ulp where the value is normal.
        for (u, bound) in [
            (UnaryOp::Exp, 3e-7),
            (UnaryOp::Tanh, 3e-7),
            (UnaryOp::Sigmoid, 3e-7),
            (UnaryOp::Erf, 6e-7),
        ] {
            let mut got = vec![0f32; xs.len()];
            unary_slice(Features::detect(), &u, &xs, &mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let w = unary_float(&u, x as f64);
                if w.is_finite() && w.abs() > 1e-30 && x.abs() < 80.0 {
                    let rel = ((g as f64 - w) / w).abs();
                    assert!(rel <= bound, "{u:?}({x}): {g} vs {w}, rel {rel}");
                }
            }
        }
    }

    #[test]
    fn unary_and_clip_vs_reference() {
        for (i, shape) in [vec![1], vec![7], vec![3, 1, 5], vec![2, 131, 257]]
            .into_iter()
            .enumerate()
        {
            let x = random(&shape, 100 + i as u64, 6.0);
            for u in all_unary() {
                let xp;
                let x = if matches!(u, UnaryOp::Sqrt | UnaryOp::Log) {
                    xp = Tensor::from_f32(
                        shape.clone(),
                        x.to_f32_vec().iter().map(|v| v.abs()).collect(),
                    )
                    .unwrap();
                    &xp
                } else {
                    &x
                };
                check(&Op::Unary(u), &[Some(x)]);
            }
            let lo = Tensor::scalar_f32(-1.5);
            let hi = Tensor::from_f32(vec![1], vec![2.0]).unwrap();
            let empty = Tensor::from_f32(vec![0], vec![]).unwrap();
            check(&Op::Clip, &[Some(&x), Some(&lo), Some(&hi)]);
            check(&Op::Clip, &[Some(&x), None, Some(&hi)]);
            check(&Op::Clip, &[Some(&x), Some(&lo)]);
            check(&Op::Clip, &[Some(&x), Some(&empty), Some(&hi)]);
            check(&Op::Clip, &[Some(&x)]);
        }
        let x = random(&[4], 1, 1.0);
        declines(&Op::Clip, &[Some(&x), Some(&x)], &[4]);
    }

    #[test]
    fn activations_match_the_reference_epilogue() {
        let x = random(&[1000], 7, 8.0).to_f32_vec();
        for act in [
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
        ] {
            let mut want = x.clone();
            super::super::apply_activation_exact(&act, &mut want);
            for f in builds() {
                let mut got = x.clone();
                activation(&act, &mut got, f);
                close(&got, &want, &format!("{act:?}"));
            }
        }
    }

    #[test]
    fn binary_broadcasts_vs_reference() {
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Pow,
        ];
        let shapes: &[(&[usize], &[usize])] = &[
            (&[2, 3, 5], &[2, 3, 5]),
            (&[2, 3, 5], &[]),
            (&[1], &[4, 7]),
            (&[2, 3, 5], &[5]),
            (&[3, 1], &[2, 3, 1]),
            (&[2, 6, 4, 3], &[6, 1, 1]),
            (&[1, 6, 1, 1], &[2, 6, 4, 3]),
            (&[2, 6, 4, 3], &[1, 6, 4, 1]),
            (&[7], &[1, 1, 7]),
            (&[1], &[1]),
            (&[4, 131, 67], &[131, 67]),
            (&[4, 131, 67], &[4, 1, 1]),
            (&[0, 3], &[3]),
        ];
        for (i, (sa, sb)) in shapes.iter().enumerate() {
            let a = random(sa, 200 + i as u64, 3.0);
            let b = random(sb, 300 + i as u64, 3.0);
            for op in ops {
                let (a, b) = if op == BinaryOp::Pow {
                    // Positive bases (no NaN from fractional powers).
                    let pa = Tensor::from_f32(
                        sa.to_vec(),
                        a.to_f32_vec().iter().map(|v| v.abs() + 0.1).collect(),
                    )
                    .unwrap();
                    (pa, b.clone())
                } else {
                    (a.clone(), b.clone())
                };
                check(&Op::Binary(op), &[Some(&a), Some(&b)]);
            }
        }
        // Pow by exactly 2.
        let a = random(&[33], 9, 3.0);
        let two = Tensor::scalar_f32(2.0);
        check(&Op::Binary(BinaryOp::Pow), &[Some(&a), Some(&two)]);
        // Outer products and comparisons go to the reference.
        let c = random(&[3, 1], 1, 1.0);
        let r = random(&[1, 4], 2, 1.0);
        declines(&Op::Binary(BinaryOp::Add), &[Some(&c), Some(&r)], &[3, 4]);
        let r = random(&[3, 4], 2, 1.0);
        declines(
            &Op::Binary(BinaryOp::Greater),
            &[Some(&r), Some(&r)],
            &[3, 4],
        );
        // A mismatched output shape too.
        declines(
            &Op::Binary(BinaryOp::Add),
            &[Some(&r), Some(&r)],
            &[1, 3, 4],
        );
    }

    #[test]
    fn elementwise_chains_vs_reference() {
        use EwArg::{Input, Scalar, Step};
        let steps = vec![
            EwStep::Binary(BinaryOp::Mul, Input(0), Scalar(0.5)),
            EwStep::Unary(UnaryOp::Tanh, Step(0)),
            EwStep::Binary(BinaryOp::Add, Step(1), Input(1)),
            EwStep::Clip(Step(2), -0.75, 0.9),
            EwStep::Binary(BinaryOp::Sub, Input(2), Step(3)),
            EwStep::Unary(UnaryOp::Gelu { tanh_approx: false }, Step(4)),
            EwStep::Binary(BinaryOp::Div, Step(5), Scalar(3.0)),
            EwStep::Unary(UnaryOp::Sigmoid, Input(2)),
            EwStep::Binary(BinaryOp::Pow, Step(7), Step(6)),
            EwStep::Unary(UnaryOp::Exp, Scalar(0.5)),
            EwStep::Binary(BinaryOp::Mul, Step(8), Step(9)),
        ];
        let op = Op::Elementwise { steps };
        for (i, shape) in [vec![1], vec![5], vec![3, 257], vec![2, 65, 131]]
            .into_iter()
            .enumerate()
        {
            let a = random(&shape, 400 + i as u64, 4.0);
            let b = random(&shape, 500 + i as u64, 4.0);
            let s = random(&[1, 1], 600 + i as u64, 4.0);
            check(&op, &[Some(&a), Some(&b), Some(&s)]);
            check(&op, &[Some(&s), Some(&b), Some(&a)]);
        }
        // A row broadcast is not a chain fast case.
        let a = random(&[3, 4], 1, 1.0);
        let r = random(&[4], 2, 1.0);
        declines(&op, &[Some(&a), Some(&r), Some(&a)], &[3, 4]);
        // Nor a step reading a later step.
        let bad = Op::Elementwise {
            steps: vec![EwStep::Unary(UnaryOp::Relu, Step(0))],
        };
        declines(&bad, &[Some(&a)], &[3, 4]);
    }

    #[test]
    fn softmax_and_layer_norm_vs_reference() {
        for (i, shape) in [
            vec![1],
            vec![7],
            vec![3, 1],
            vec![2, 5, 11],
            vec![4, 3, 1025],
            vec![64, 384],
        ]
        .into_iter()
        .enumerate()
        {
            let x = random(&shape, 700 + i as u64, 10.0);
            let r = shape.len() as i64;
            for log in [false, true] {
                let mk = |axis: i64, legacy: bool| {
                    if log {
                        Op::LogSoftmax { axis, legacy }
                    } else {
                        Op::Softmax {
                            axis,
                            legacy,
                            nan_to_zero: false,
                        }
                    }
                };
                check(&mk(-1, false), &[Some(&x)]);
                check(&mk(r - 1, true), &[Some(&x)]);
                check(&mk(0, true), &[Some(&x)]);
            }
            for axis in [-1, 0] {
                let block = &shape[(if axis < 0 { shape.len() - 1 } else { 0 })..];
                let s = random(block, 800 + i as u64, 2.0);
                let b = random(block, 900 + i as u64, 2.0);
                let op = Op::LayerNormalization {
                    axis,
                    epsilon: 1e-5,
                };
                check(&op, &[Some(&x), Some(&s), Some(&b)]);
                check(&op, &[Some(&x), Some(&s)]);
                // Scale with leading ones.
                if block.len() < shape.len() {
                    let mut s1 = vec![1];
                    s1.extend(block);
                    let s1 = random(&s1, 1000 + i as u64, 2.0);
                    check(&op, &[Some(&x), Some(&s1), Some(&b)]);
                }
            }
        }
        // A row without a finite input (a fully masked attention row) is
        // NaN, and zeros with `nan_to_zero`; so is a row with a NaN.
        let x = Tensor::from_f32(
            vec![3, 3],
            vec![
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                1.0,
                f32::NAN,
                2.0,
                0.5,
                f32::NEG_INFINITY,
                -1.0,
            ],
        )
        .unwrap();
        check(
            &Op::Softmax {
                axis: 1,
                legacy: false,
                nan_to_zero: true,
            },
            &[Some(&x)],
        );
        // A row with a NaN is all NaN; a huge logit dominates.
        let x = Tensor::from_f32(vec![2, 3], vec![1.0, f32::NAN, 2.0, 1e30, 0.0, -1e30]).unwrap();
        check(
            &Op::Softmax {
                axis: 1,
                legacy: false,
                nan_to_zero: false,
            },
            &[Some(&x)],
        );
        check(
            &Op::LogSoftmax {
                axis: 1,
                legacy: false,
            },
            &[Some(&x)],
        );
        // Softmax over an inner axis and a layer norm with a row-varying
        // scale are not fast cases.
        let x = random(&[2, 3, 4], 1, 1.0);
        declines(
            &Op::Softmax {
                axis: 1,
                legacy: false,
                nan_to_zero: false,
            },
            &[Some(&x)],
            &[2, 3, 4],
        );
        let s = random(&[2, 1, 4], 1, 1.0);
        declines(
            &Op::LayerNormalization {
                axis: -1,
                epsilon: 1e-5,
            },
            &[Some(&x), Some(&s)],
            &[2, 3, 4],
        );
    }

    /// All permutations of `0..n` (Heap's algorithm).
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn go(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                go(k - 1, a, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                a.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        go(n, &mut (0..n).collect(), &mut out);
        out
    }

    /// Transpose must be exact: the fast path against the reference, bit
    /// for bit, portable and AVX2, one and two threads.
    fn check_transpose(shape: &[usize], perm: &[usize], seed: u64) {
        let x = random(shape, seed, 5.0);
        let op = Op::Transpose {
            perm: perm.to_vec(),
        };
        let want = crate::ir::ops::eval(&op, &[Some(&x)], 1).unwrap().remove(0);
        let w = want.as_f32().unwrap();
        for cx in [
            CpuCtx::single(Features::detect()),
            CpuCtx::single(Features::portable()),
            CpuCtx::new(2).unwrap(),
        ] {
            let got = fast(&op, &[Some(&x)], want.shape(), &cx);
            assert!(
                got.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "Transpose {perm:?} of {shape:?} ({:?}, {} threads)",
                cx.features,
                cx.threads
            );
        }
    }

    #[test]
    fn transpose_vs_reference() {
        let sizes = [1usize, 2, 3, 5, 7, 8, 9, 16, 17];
        let mut rng = crate::rng::SplitMix64::new(42);
        let mut pick = |n: usize| (rng.next_f64() * n as f64) as usize % n;
        for rank in 1..=6usize {
            let perms = permutations(rank);
            let cases = if rank <= 3 { perms.len() * 4 } else { 60 };
            for c in 0..cases {
                let perm = &perms[if rank <= 3 {
                    c % perms.len()
                } else {
                    pick(perms.len())
                }];
                // Keep the tensors small at high ranks.
                let cap = [0, 17, 17, 17, 9, 5, 3][rank];
                let shape: Vec<usize> = (0..rank)
                    .map(|_| loop {
                        let s = sizes[pick(sizes.len())];
                        if s <= cap {
                            break s;
                        }
                    })
                    .collect();
                check_transpose(&shape, perm, c as u64);
            }
        }
        // Larger planes (full 8x8 blocks plus ragged edges, the 16-column
        // passes), the BERT head permutations, and splitting across threads.
        check_transpose(&[128, 384], &[1, 0], 1);
        check_transpose(&[67, 131], &[1, 0], 2);
        check_transpose(&[1, 128, 12, 32], &[0, 2, 1, 3], 3);
        check_transpose(&[1, 128, 12, 32], &[0, 2, 3, 1], 4);
        check_transpose(&[1, 12, 128, 32], &[0, 2, 1, 3], 5);
        check_transpose(&[2, 12, 33, 40], &[0, 1, 3, 2], 6);
        check_transpose(&[3, 40, 1, 41, 2], &[4, 2, 3, 0, 1], 7);
        check_transpose(&[256, 3, 64], &[2, 1, 0], 8);
        // Empty tensors, scalars and all-ones shapes.
        check_transpose(&[0, 3], &[1, 0], 9);
        check_transpose(&[2, 0, 5], &[2, 0, 1], 10);
        check_transpose(&[], &[], 11);
        check_transpose(&[1, 1, 1], &[2, 0, 1], 12);
        // Not a permutation, or a wrong output shape: declined.
        let x = random(&[2, 3], 1, 1.0);
        declines(&Op::Transpose { perm: vec![0, 0] }, &[Some(&x)], &[2, 2]);
        declines(&Op::Transpose { perm: vec![1, 2] }, &[Some(&x)], &[3, 2]);
        declines(&Op::Transpose { perm: vec![1, 0] }, &[Some(&x)], &[2, 3]);
        declines(&Op::Transpose { perm: vec![0] }, &[Some(&x)], &[2, 3]);
    }

    fn pa(kernel: &[usize], strides: &[usize], pads: &[usize]) -> PoolAttrs {
        PoolAttrs {
            kernel_shape: kernel.to_vec(),
            strides: strides.to_vec(),
            dilations: vec![],
            pads: pads.to_vec(),
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            column_major: false,
        }
    }

    /// Whether a pooling geometry takes the padded-scratch kernels.
    fn padded_pool(shape: &[usize], a: &PoolAttrs) -> bool {
        let axes = window_axes(
            "Pool",
            &shape[2..],
            &a.kernel_shape,
            &a.strides,
            &a.dilations,
            &a.pads,
            a.auto_pad,
            a.ceil_mode,
        )
        .unwrap();
        let win = Window2d::from_axes(&axes).unwrap();
        PoolPlan::new(&win, false, false).is_some()
    }

    /// MaxPool and both AveragePools against the reference (portable and
    /// AVX2, one and two threads, see [`check`]).
    fn check_pools(a: &PoolAttrs, x: &Tensor) {
        check(&Op::MaxPool(a.clone()), &[Some(x)]);
        for include in [false, true] {
            let mut a = a.clone();
            a.count_include_pad = include;
            check(&Op::AveragePool(a), &[Some(x)]);
        }
    }

    #[test]
    fn pooling_padded_kernels_vs_reference() {
        let mut seed = 2000;
        let mut run = |shape: &[usize], a: &PoolAttrs| {
            seed += 1;
            assert!(padded_pool(shape, a), "{shape:?} {a:?}: not padded");
            let x = random(shape, seed, 5.0);
            check_pools(a, &x);
        };
        // Every width class (1, under a vector, one vector, one past, two
        // past) with 3x3 and other kernels, strides 1/2/3, symmetric and
        // asymmetric pads, ceil mode, dilation 2.
        for w in [1usize, 7, 8, 9, 17] {
            for (k, s, pads) in [
                ([3, 3], [1, 1], [1, 1, 1, 1]),
                ([3, 3], [2, 2], [1, 1, 1, 1]),
                ([3, 3], [2, 2], [0, 0, 0, 0]),
                ([3, 3], [3, 3], [1, 2, 2, 0]),
                ([2, 2], [2, 2], [0, 0, 0, 0]),
                ([2, 3], [1, 2], [0, 1, 1, 2]),
                ([1, 3], [3, 1], [0, 2, 0, 1]),
                ([5, 4], [2, 3], [2, 3, 2, 1]),
            ] {
                let shape = [1, 3, 6, w];
                let a = pa(&k, &s, &pads);
                // Windows wider than the padded input have no output.
                let fits = |i: usize| w + pads[1] + pads[3] >= k[1] && 6 + pads[i] >= k[0];
                if !fits(0) {
                    continue;
                }
                run(&shape, &a);
                let mut c = a.clone();
                c.ceil_mode = true;
                run(&shape, &c);
                if w + pads[1] + pads[3] > 2 * (k[1] - 1) && 6 + pads[0] + pads[2] > 2 * (k[0] - 1)
                {
                    let mut d = a.clone();
                    d.dilations = vec![2, 2];
                    run(&shape, &d);
                    d.ceil_mode = true;
                    run(&shape, &d);
                }
            }
        }
        // 1-D pooling.
        for w in [1usize, 7, 8, 9, 17, 40] {
            for (k, s, pads) in [
                (3, 1, [1, 1]),
                (3, 2, [1, 0]),
                (2, 3, [0, 1]),
                (4, 2, [2, 2]),
            ] {
                if w + pads[0] + pads[1] < k {
                    continue;
                }
                let mut a = pa(&[k], &[s], &pads);
                run(&[2, 3, w], &a);
                a.ceil_mode = true;
                run(&[2, 3, w], &a);
            }
        }
        // ResNet-18's MaxPool on a smaller plane, and enough planes that two
        // threads split them.
        run(&[1, 64, 28, 28], &pa(&[3, 3], &[2, 2], &[1, 1, 1, 1]));
        run(&[2, 40, 17, 9], &pa(&[3, 3], &[1, 1], &[1, 1, 1, 1]));
        run(&[1, 32, 33, 30], &pa(&[2, 2], &[2, 2], &[0, 0, 0, 0]));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn halved_max_pool_matches_the_padded_kernel_bit_for_bit() {
        // max3x3_halved_avx512 (no scratch) against the padded kernel on
        // the same plane: stride-2 3x3 windows with leading pads 0 or 1 and
        // trailing pads 0 to 2, widths either side of the vector edges of
        // the outputs and of the 32 input columns under them; inputs with
        // NaN, -inf, +0 and -0 (whose max depends on the tap order) and
        // all-NaN or all -inf windows.
        if !(has_avx512() && has_avx2_fma()) {
            eprintln!("skipped: stride-2 max pool in registers (CPU lacks AVX-512)");
            return;
        }
        let features = Features::detect();
        let halved = Window2d::halved_3x3_over;
        let mut seed = 40;
        let mut cases = 0;
        for w in [
            1, 2, 3, 7, 14, 31, 32, 33, 34, 56, 63, 64, 65, 112, 255, 256,
        ] {
            for h in [1, 2, 3, 7] {
                for (t, l, b, r) in [(1, 1, 1, 1), (0, 0, 1, 1), (1, 0, 0, 2), (0, 1, 2, 0)] {
                    let Some(win) = halved(h, w, (t, l, b, r)) else {
                        continue;
                    };
                    let (oh, ow) = (win.oh, win.ow);
                    let nb = max_halved_vectors(&win, false, features).expect("its geometry");
                    assert_eq!(max_halved_vectors(&win, true, features), None);
                    let mut x = random(&[h * w], seed, 3.0).as_f32().unwrap().to_vec();
                    for (i, v) in x.iter_mut().enumerate() {
                        *v = match (i * 7 + seed as usize) % 13 {
                            0 => f32::NAN,
                            1 => f32::NEG_INFINITY,
                            2 => 0.0,
                            3 => -0.0,
                            _ => *v,
                        };
                    }
                    let plan = PoolPlan::new(&win, false, false).expect("a padded plan");
                    for x in [x, vec![f32::NAN; h * w], vec![f32::NEG_INFINITY; h * w]] {
                        let mut buf = vec![f32::NEG_INFINITY; plan.pad.size()];
                        let (mut want, mut got) = (vec![7.0; oh * ow], vec![7.0; oh * ow]);
                        pool_padded(true, &plan, &x, &mut buf, &mut want);
                        // SAFETY: AVX-512 is present (checked above); `nb`
                        // and the planes are the window's.
                        unsafe { max3x3_halved_avx512(nb, &win, &x, &mut got) };
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&want), bits(&got), "{h}x{w} pads {:?}", (t, l, b, r));
                        cases += 1;
                    }
                    seed += 1;
                }
            }
        }
        assert!(cases > 500);
        // Rows past the widest it takes go to the padded kernel.
        let wide = halved(4, 258, (1, 1, 1, 1)).expect("a window");
        assert_eq!(
            (wide.ow, max_halved_vectors(&wide, false, features)),
            (129, None)
        );
    }

    #[test]
    fn max_pool_nan_and_infinities() {
        // NaN is skipped; a window whose input taps are all NaN gives NaN
        // (also next to padding), -inf stays -inf, and -inf beside NaN is
        // -inf.
        for (shape, a) in [
            (vec![1, 2, 7, 9], pa(&[3, 3], &[2, 2], &[1, 1, 1, 1])),
            (vec![1, 2, 7, 17], pa(&[3, 3], &[1, 1], &[1, 1, 1, 1])),
            (vec![1, 2, 8, 8], pa(&[2, 2], &[2, 2], &[0, 0, 0, 0])),
            (vec![2, 2, 17], pa(&[3], &[2], &[1, 1])),
        ] {
            assert!(padded_pool(&shape, &a));
            let n: usize = shape.iter().product();
            for (fill, rate) in [(f32::NAN, 3), (f32::NAN, 2), (f32::NEG_INFINITY, 3)] {
                let mut v = random(&shape, 7, 5.0).as_f32().unwrap().to_vec();
                for (i, x) in v.iter_mut().enumerate() {
                    if (i * 7 + i / 5) % rate == 0 {
                        *x = fill;
                    }
                }
                let x = Tensor::from_f32(shape.clone(), v).unwrap();
                check(&Op::MaxPool(a.clone()), &[Some(&x)]);
            }
            let mut v = vec![f32::NAN; n];
            for (i, x) in v.iter_mut().enumerate() {
                if i % 5 == 0 {
                    *x = f32::NEG_INFINITY;
                } else if i % 11 == 0 {
                    *x = 1.5;
                }
            }
            let x = Tensor::from_f32(shape.clone(), v).unwrap();
            check(&Op::MaxPool(a.clone()), &[Some(&x)]);
            let x = Tensor::from_f32(shape.clone(), vec![f32::NAN; n]).unwrap();
            check(&Op::MaxPool(a.clone()), &[Some(&x)]);
        }
        // Windows entirely on padding (ceil mode past the end, stride 3 over
        // a large pad) are -inf; their averages divide by the padded count
        // or give NaN.
        let mut a = pa(&[2, 2], &[3, 3], &[1, 1, 1, 1]);
        a.ceil_mode = true;
        let x = random(&[1, 2, 4, 4], 9, 1.0);
        assert!(padded_pool(&[1, 2, 4, 4], &a));
        check_pools(&a, &x);
    }

    #[test]
    fn pooling_huge_strides_take_the_plain_loop() {
        for (shape, k, s) in [
            (vec![1, 2, 1, 1], [1, 1], [1, 5000]),
            (vec![1, 2, 3, 3000], [1, 2], [2, 3000]),
        ] {
            let a = pa(&k, &s, &[0, 0, 0, 0]);
            assert!(!padded_pool(&shape, &a));
            let x = random(&shape, 3, 2.0);
            check_pools(&a, &x);
        }
    }

    #[test]
    fn pooling_vs_reference() {
        let mut cases = vec![
            (vec![1, 1, 5, 5], pa(&[2, 2], &[2, 2], &[0, 0, 0, 0])),
            (vec![2, 3, 7, 9], pa(&[3, 3], &[2, 2], &[1, 1, 1, 1])),
            (vec![2, 3, 7, 9], pa(&[3, 2], &[1, 3], &[0, 1, 2, 0])),
            (vec![1, 4, 11, 13], pa(&[5, 5], &[1, 1], &[2, 2, 2, 2])),
            (vec![1, 2, 1, 1], pa(&[1, 1], &[1, 1], &[0, 0, 0, 0])),
            (vec![2, 3, 17], pa(&[3], &[2], &[1, 1])),
            (vec![1, 64, 56, 56], pa(&[3, 3], &[2, 2], &[1, 1, 1, 1])),
        ];
        let mut ceil = pa(&[3, 3], &[2, 2], &[0, 0, 1, 1]);
        ceil.ceil_mode = true;
        cases.push((vec![1, 2, 8, 8], ceil.clone()));
        cases.push((vec![1, 2, 6, 7], ceil));
        let mut dil = pa(&[2, 3], &[1, 2], &[1, 1, 1, 1]);
        dil.dilations = vec![2, 2];
        cases.push((vec![2, 2, 9, 10], dil));
        for ap in [AutoPad::SameUpper, AutoPad::SameLower, AutoPad::Valid] {
            let mut a = pa(&[3, 2], &[2, 2], &[]);
            a.auto_pad = ap;
            cases.push((vec![1, 3, 8, 7], a));
        }
        for (i, (shape, attrs)) in cases.into_iter().enumerate() {
            let x = random(&shape, 1100 + i as u64, 5.0);
            check(&Op::MaxPool(attrs.clone()), &[Some(&x)]);
            for include in [false, true] {
                let mut a = attrs.clone();
                a.count_include_pad = include;
                check(&Op::AveragePool(a), &[Some(&x)]);
            }
            check(&Op::GlobalAveragePool, &[Some(&x)]);
            check(&Op::GlobalMaxPool, &[Some(&x)]);
        }
        // NaN is ignored by a max, and kept when a window is all NaN.
        let x =
            Tensor::from_f32(vec![1, 1, 2, 2], vec![f32::NAN, 1.0, f32::NAN, f32::NAN]).unwrap();
        check(
            &Op::MaxPool(pa(&[1, 2], &[1, 1], &[0, 0, 0, 0])),
            &[Some(&x)],
        );
        check(&Op::GlobalMaxPool, &[Some(&x)]);
        // MaxPool with Indices and 3-D pooling go to the reference.
        let x = random(&[1, 1, 4, 4], 1, 1.0);
        let views = [Some(View {
            shape: x.shape(),
            data: x.as_f32().unwrap(),
        })];
        let (mut y, mut idx) = (vec![0f32; 4], vec![0f32; 4]);
        let mut outs = [
            ViewMut {
                shape: &[1, 1, 2, 2],
                data: &mut y,
            },
            ViewMut {
                shape: &[1, 1, 2, 2],
                data: &mut idx,
            },
        ];
        let op = Op::MaxPool(pa(&[2, 2], &[2, 2], &[0, 0, 0, 0]));
        assert!(!run(
            &op,
            &views,
            &mut outs,
            &CpuCtx::single(Features::portable())
        )
        .unwrap());
        let x3 = random(&[1, 1, 2, 2, 2], 1, 1.0);
        declines(
            &Op::MaxPool(pa(&[1, 1, 1], &[1, 1, 1], &[0; 6])),
            &[Some(&x3)],
            &[1, 1, 2, 2, 2],
        );
    }
}

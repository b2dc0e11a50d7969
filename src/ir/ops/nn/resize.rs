//! Resize (nearest, linear and cubic), following
//! `onnx/reference/ops/op_resize.py`.
//!
//! Interpolation is separable: the tensor (held as f64) is resized one axis at
//! a time. For each output coordinate along an axis, the coordinate
//! transformation maps it to a fractional source coordinate `x`; a small
//! kernel of coefficients (nearest: a one-hot pair, linear: `[1 - r, r]`,
//! cubic: the cubic convolution kernel with coefficient `A` at distances
//! `r + 1, r, 1 - r, 2 - r`, antialiased linear and cubic: the triangle or
//! cubic filter stretched by `1 / scale` and normalized) is laid on
//! the neighbouring source elements, whose indices are clamped into range
//! (edge padding). `exclude_outside` drops out-of-range taps and renormalizes;
//! `tf_crop_and_resize` returns `extrapolation_value` for source coordinates
//! outside the input. The result is rounded back to the input dtype (integer
//! types round half to even and saturate, like the reference's
//! `saturate_cast`).

use half::f16;

use crate::ir::ops::util::{i64_values, input, normalize_axis, not_held, opt_input};
use crate::ir::{
    AspectPolicy, CoordTransform, DType, NearestMode, Op, ResizeAttrs, ResizeMode, Tensor,
    TensorData,
};
use crate::{Error, Result};

const OP: &str = "Resize";

/// Largest output element count Resize will materialize.
const MAX_ELEMENTS: usize = 1 << 31;

/// Evaluates Resize. Inputs: X, roi?, scales?, sizes? (empty tensors count as
/// absent).
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let Op::Resize(attrs) = op else {
        return Err(Error::Internal(not_held("nn", op)));
    };
    let present = |i: usize| opt_input(inputs, i).filter(|t| t.numel() > 0);
    let x = input(OP, inputs, 0)?;
    Ok(vec![resize(attrs, x, present(1), present(2), present(3))?])
}

/// `math.isclose` with its default relative tolerance.
fn isclose(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Float values of a `scales` / `roi` input.
fn float_values(what: &str, t: &Tensor) -> Result<Vec<f64>> {
    if !t.dtype().is_float() {
        return Err(Error::op(
            OP,
            format!("{what} must be floating point, got {}", t.dtype()),
        ));
    }
    Ok(t.to_f64_vec())
}

/// The per-axis plan: output size, scale, and roi `[start, end]`.
struct AxisPlan {
    axis: usize,
    out: usize,
    scale: f64,
    roi: Option<(f64, f64)>,
}

fn resize(
    attrs: &ResizeAttrs,
    x: &Tensor,
    roi: Option<&Tensor>,
    scales: Option<&Tensor>,
    sizes: Option<&Tensor>,
) -> Result<Tensor> {
    let dt = x.dtype();
    if dt == DType::Bool {
        return Err(Error::op(OP, "bool input is not supported"));
    }
    if attrs.antialias && attrs.mode == ResizeMode::Nearest {
        return Err(Error::op(
            OP,
            "antialias is not supported with mode=nearest",
        ));
    }
    let shape = x.shape().to_vec();
    let rank = shape.len();

    // Axes the scales / sizes / roi refer to.
    let axes: Vec<usize> = match &attrs.axes {
        None => (0..rank).collect(),
        Some(list) => {
            let mut seen = vec![false; rank];
            let mut out = Vec::with_capacity(list.len());
            for &a in list {
                let a = normalize_axis(OP, a, rank)?;
                if seen[a] {
                    return Err(Error::op(OP, format!("axis {a} appears twice in axes")));
                }
                seen[a] = true;
                out.push(a);
            }
            out
        }
    };
    let n = axes.len();

    let roi = match roi {
        Some(t) => {
            let v = float_values("roi", t)?;
            if v.len() != 2 * n {
                return Err(Error::op(
                    OP,
                    format!(
                        "roi must have {} values (2 per resized axis), got {}",
                        2 * n,
                        v.len()
                    ),
                ));
            }
            Some(v)
        }
        None => None,
    };
    if attrs.coord == CoordTransform::TfCropAndResize && roi.is_none() {
        return Err(Error::op(
            OP,
            "coordinate_transformation_mode tf_crop_and_resize needs the roi input",
        ));
    }

    // Per-axis output sizes and scales.
    let (mut outs, mut scale_v): (Vec<usize>, Vec<f64>) = match (scales, sizes) {
        (Some(_), Some(_)) => {
            return Err(Error::op(OP, "only one of scales and sizes may be given"));
        }
        (None, None) => return Err(Error::op(OP, "one of scales and sizes is required")),
        (Some(s), None) => {
            let s = float_values("scales", s)?;
            if s.len() != n {
                return Err(Error::op(
                    OP,
                    format!("scales must have {n} values, got {}", s.len()),
                ));
            }
            let mut outs = Vec::with_capacity(n);
            for (i, &a) in axes.iter().enumerate() {
                if !(s[i].is_finite() && s[i] > 0.0) {
                    return Err(Error::op(
                        OP,
                        format!("scales must be positive and finite, got {}", s[i]),
                    ));
                }
                let o = (s[i] * shape[a] as f64).floor();
                if o > MAX_ELEMENTS as f64 {
                    return Err(Error::op(OP, format!("output size {o} is too large")));
                }
                outs.push(o as usize);
            }
            (outs, s)
        }
        (None, Some(z)) => {
            let z = i64_values(OP, "sizes", z)?;
            if z.len() != n {
                return Err(Error::op(
                    OP,
                    format!("sizes must have {n} values, got {}", z.len()),
                ));
            }
            let mut outs = Vec::with_capacity(n);
            for &v in &z {
                if v < 0 || v as u64 > MAX_ELEMENTS as u64 {
                    return Err(Error::op(OP, format!("invalid output size {v}")));
                }
                outs.push(v as usize);
            }
            let mut sc: Vec<f64> = axes
                .iter()
                .zip(&outs)
                .map(|(&a, &o)| o as f64 / shape[a] as f64)
                .collect();
            if attrs.aspect != AspectPolicy::Stretch {
                let pick = if attrs.aspect == AspectPolicy::NotLarger {
                    f64::min
                } else {
                    f64::max
                };
                let Some(s) = sc.iter().copied().reduce(pick) else {
                    return Err(Error::op(
                        OP,
                        "keep_aspect_ratio_policy needs at least one axis",
                    ));
                };
                sc = vec![s; n];
                for (o, &a) in outs.iter_mut().zip(&axes) {
                    let v = (s * shape[a] as f64 + 0.5).floor();
                    if !(v >= 0.0 && v <= MAX_ELEMENTS as f64) {
                        return Err(Error::op(OP, format!("invalid output size {v}")));
                    }
                    *o = v as usize;
                }
            }
            (outs, sc)
        }
    };

    let mut out_shape = shape.clone();
    for (i, &a) in axes.iter().enumerate() {
        if shape[a] == 0 && outs[i] > 0 {
            return Err(Error::op(
                OP,
                format!("cannot resize axis {a} of size 0 to size {}", outs[i]),
            ));
        }
        out_shape[a] = outs[i];
    }
    // Computed in f64 (8 bytes an element), then narrowed.
    crate::limits::check_shape(
        || format!("{OP} output of shape {out_shape:?}"),
        &out_shape,
        8 + dt.size(),
    )?;

    let plans: Vec<AxisPlan> = axes
        .iter()
        .enumerate()
        .map(|(i, &a)| AxisPlan {
            axis: a,
            out: std::mem::take(&mut outs[i]),
            scale: std::mem::take(&mut scale_v[i]),
            roi: roi.as_ref().map(|r| (r[i], r[n + i])),
        })
        .collect();

    if x.numel() == 0 || out_shape.contains(&0) {
        let n = out_shape.iter().product();
        return Tensor::new(out_shape, TensorData::zeros(dt, n))
            .map_err(|e| Error::op(OP, format!("internal shape error: {e}")));
    }
    // From here on every dim is non-zero, so shape products are bounded.
    let mut data = x.to_f64_vec();
    let mut cur = shape;
    for p in &plans {
        let identity = isclose(p.scale, 1.0)
            && p.out == cur[p.axis]
            && p.roi
                .is_none_or(|(s, e)| isclose(s, 0.0) && isclose(e, 1.0));
        if identity {
            continue;
        }
        let next = cur.iter().product::<usize>() / cur[p.axis] * p.out;
        // The intermediate and the result it is made from, both f64.
        crate::limits::check_elements(
            || format!("{OP} intermediate result of {next} elements"),
            next.checked_add(data.len()),
            8,
        )?;
        let taps = axis_taps(attrs, cur[p.axis], p)?;
        data = apply_axis(&data, &cur, p.axis, &taps, attrs.extrapolation_value as f64);
        cur[p.axis] = p.out;
    }
    Tensor::new(cur, lower(dt, data))
        .map_err(|e| Error::op(OP, format!("internal shape error: {e}")))
}

/// For one output coordinate: the (clamped source index, weight) pairs, or
/// `None` when it lies outside the crop (tf_crop_and_resize extrapolation).
type Taps = Option<Vec<(usize, f64)>>;

/// The source coordinate of output index `y` (op_resize.py `_compute_x_ori`);
/// the bool says it is extrapolated.
fn source_coord(
    mode: CoordTransform,
    y: f64,
    scale: f64,
    w: usize,
    out: usize,
    roi: Option<(f64, f64)>,
) -> Result<(f64, bool)> {
    let wf = w as f64;
    let ow = scale * wf;
    Ok(match mode {
        CoordTransform::AlignCorners => {
            if ow == 1.0 {
                (0.0, false)
            } else {
                (y * (wf - 1.0) / (ow - 1.0), false)
            }
        }
        CoordTransform::Asymmetric => (y / scale, false),
        CoordTransform::TfCropAndResize => {
            let Some((r0, r1)) = roi else {
                return Err(Error::op(OP, "tf_crop_and_resize needs roi"));
            };
            let x = if ow == 1.0 {
                (r1 - r0) * (wf - 1.0) / 2.0
            } else {
                y * (r1 - r0) * (wf - 1.0) / (ow - 1.0)
            };
            let x = x + r0 * (wf - 1.0);
            (x, x < 0.0 || x > wf - 1.0)
        }
        CoordTransform::PytorchHalfPixel => {
            if ow == 1.0 {
                (-0.5, false)
            } else {
                ((y + 0.5) / scale - 0.5, false)
            }
        }
        CoordTransform::HalfPixel => ((y + 0.5) / scale - 0.5, false),
        CoordTransform::HalfPixelSymmetric => {
            let adjustment = out as f64 / ow;
            let center = wf / 2.0;
            let offset = center * (1.0 - adjustment);
            (offset + (y + 0.5) / scale - 0.5, false)
        }
    })
}

/// Interpolation coefficients for fractional offset `ratio` in (0, 1].
fn coeffs(attrs: &ResizeAttrs, ratio: f64, scale: f64) -> Vec<f64> {
    match attrs.mode {
        ResizeMode::Nearest => {
            if ratio == ratio.trunc() {
                return vec![0.0, 1.0];
            }
            let up = match attrs.nearest {
                NearestMode::RoundPreferFloor => ratio > 0.5,
                NearestMode::RoundPreferCeil => ratio >= 0.5,
                NearestMode::Floor => false,
                NearestMode::Ceil => true,
            };
            if up {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        ResizeMode::Linear if attrs.antialias => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> = (start..start + footprint)
                .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic if attrs.antialias => {
            let a = attrs.cubic_coeff_a as f64;
            let s = scale.min(1.0);
            let start = (-2.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start)
                .map(|i| cubic_kernel(a, s * (i as f64 - ratio)))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        ResizeMode::Cubic => {
            let a = attrs.cubic_coeff_a as f64;
            [ratio + 1.0, ratio, 1.0 - ratio, 2.0 - ratio]
                .into_iter()
                .map(|d| cubic_kernel(a, d))
                .collect()
        }
    }
}

/// The cubic convolution kernel with coefficient `a` at distance `x`.
fn cubic_kernel(a: f64, x: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// The taps of every output coordinate along one axis of input width `w`.
fn axis_taps(attrs: &ResizeAttrs, w: usize, p: &AxisPlan) -> Result<Vec<Taps>> {
    let mut all = Vec::with_capacity(p.out);
    for y in 0..p.out {
        let (x, extrapolated) = source_coord(attrs.coord, y as f64, p.scale, w, p.out, p.roi)?;
        if extrapolated {
            all.push(None);
            continue;
        }
        let xi = x.floor();
        // Prefer the source element left of x: ratio is 1 on integers.
        let ratio = if x == xi { 1.0 } else { x - xi };
        let mut c = coeffs(attrs, ratio, p.scale);
        let n = c.len() as i64;
        // The n source indices nearest x, ties to the smaller index.
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let pp = xp.floor();
        let frac = xp - pp;
        let offset = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        if !pp.is_finite() || pp.abs() > 1e15 {
            return Err(Error::op(
                OP,
                format!("source coordinate {x} is out of range"),
            ));
        }
        let start = pp as i64 + offset - pad;
        let idx: Vec<i64> = (0..n).map(|k| start + k).collect();
        if attrs.exclude_outside {
            for (ck, &i) in c.iter_mut().zip(&idx) {
                if i < 0 || i >= w as i64 {
                    *ck = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            c.iter_mut().for_each(|v| *v /= sum);
        }
        let last = w as i64 - 1;
        all.push(Some(
            idx.iter()
                .zip(&c)
                .map(|(&i, &ck)| (i.clamp(0, last) as usize, ck))
                .collect(),
        ));
    }
    Ok(all)
}

/// Resizes `axis` of `data` (shape `shape`) with the per-output taps.
fn apply_axis(
    data: &[f64],
    shape: &[usize],
    axis: usize,
    taps: &[Taps],
    extrapolation: f64,
) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let w = shape[axis];
    let wo = taps.len();
    let mut out = vec![0.0; outer * wo * inner];
    for o in 0..outer {
        for (y, t) in taps.iter().enumerate() {
            for i in 0..inner {
                out[(o * wo + y) * inner + i] = match t {
                    None => extrapolation,
                    Some(t) => t
                        .iter()
                        .map(|&(k, c)| data[(o * w + k) * inner + i] * c)
                        .sum(),
                };
            }
        }
    }
    out
}

/// f64 results back to `dt`: floats round, integers round half to even and
/// saturate.
fn lower(dt: DType, v: Vec<f64>) -> TensorData {
    fn int<T>(v: Vec<f64>, lo: f64, hi: f64, f: impl Fn(f64) -> T) -> Vec<T> {
        v.into_iter()
            .map(|x| f(x.round_ties_even().clamp(lo, hi)))
            .collect()
    }
    match dt {
        DType::F32 => TensorData::F32(v.into_iter().map(|x| x as f32).collect()),
        DType::F64 => TensorData::F64(v),
        DType::F16 => TensorData::F16(v.into_iter().map(f16::from_f64).collect()),
        DType::I8 => TensorData::I8(int(v, i8::MIN as f64, i8::MAX as f64, |x| x as i8)),
        DType::I16 => TensorData::I16(int(v, i16::MIN as f64, i16::MAX as f64, |x| x as i16)),
        DType::I32 => TensorData::I32(int(v, i32::MIN as f64, i32::MAX as f64, |x| x as i32)),
        DType::I64 => TensorData::I64(int(v, i64::MIN as f64, i64::MAX as f64, |x| x as i64)),
        DType::U8 => TensorData::U8(int(v, 0.0, u8::MAX as f64, |x| x as u8)),
        DType::U16 => TensorData::U16(int(v, 0.0, u16::MAX as f64, |x| x as u16)),
        DType::U32 => TensorData::U32(int(v, 0.0, u32::MAX as f64, |x| x as u32)),
        DType::U64 => TensorData::U64(int(v, 0.0, u64::MAX as f64, |x| x as u64)),
        DType::Bool => TensorData::Bool(v.into_iter().map(|x| x != 0.0).collect()),
        other => TensorData::from_f64(other, &v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(mode: ResizeMode, coord: CoordTransform) -> ResizeAttrs {
        ResizeAttrs {
            mode,
            coord,
            nearest: NearestMode::RoundPreferFloor,
            exclude_outside: false,
            extrapolation_value: 0.0,
            antialias: false,
            axes: None,
            aspect: AspectPolicy::Stretch,
            cubic_coeff_a: -0.75,
        }
    }

    fn run(
        a: &ResizeAttrs,
        x: &Tensor,
        roi: Option<&[f32]>,
        scales: Option<&[f32]>,
        sizes: Option<&[i64]>,
    ) -> Result<Tensor> {
        let roi = roi.map(|r| Tensor::from_f32(vec![r.len()], r.to_vec()).unwrap());
        let scales = scales.map(|r| Tensor::from_f32(vec![r.len()], r.to_vec()).unwrap());
        let sizes = sizes.map(|r| Tensor::vec_i64(r.to_vec()));
        eval(
            &Op::Resize(a.clone()),
            &[Some(x), roi.as_ref(), scales.as_ref(), sizes.as_ref()],
        )
        .map(|mut v| v.remove(0))
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    fn x1234() -> Tensor {
        Tensor::from_f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]).unwrap()
    }

    fn x4x4() -> Tensor {
        Tensor::from_f32(vec![1, 1, 4, 4], (1..=16).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn nearest_upsample_scales() {
        // test_resize_upsample_scales_nearest
        let a = attrs(ResizeMode::Nearest, CoordTransform::HalfPixel);
        let y = run(&a, &x1234(), None, Some(&[1., 1., 2., 3.]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 6]);
        close(
            y.as_f32().unwrap(),
            &[
                1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 3., 3., 3.,
                4., 4., 4.,
            ],
        );
    }

    #[test]
    fn linear_modes() {
        // test_resize_upsample_scales_linear (half_pixel)
        let a = attrs(ResizeMode::Linear, CoordTransform::HalfPixel);
        let y = run(&a, &x1234(), None, Some(&[1., 1., 2., 2.]), None).unwrap();
        close(
            y.as_f32().unwrap(),
            &[
                1., 1.25, 1.75, 2., 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3., 3.25, 3.75, 4.,
            ],
        );
        // test_resize_upsample_scales_linear_align_corners
        let a = attrs(ResizeMode::Linear, CoordTransform::AlignCorners);
        let y = run(&a, &x1234(), None, Some(&[1., 1., 2., 2.]), None).unwrap();
        close(
            y.as_f32().unwrap(),
            &[
                1., 1.3333333, 1.6666667, 2., 1.6666666, 2., 2.3333333, 2.6666667, 2.3333333,
                2.6666665, 3., 3.3333333, 3., 3.3333333, 3.6666667, 4.,
            ],
        );
        // test_resize_downsample_scales_linear_align_corners: [1,1,2,4] by 0.6
        let x = Tensor::from_f32(vec![1, 1, 2, 4], (1..=8).map(|v| v as f32).collect()).unwrap();
        let y = run(&a, &x, None, Some(&[1., 1., 0.6, 0.6]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 1, 2]);
        close(y.as_f32().unwrap(), &[1., 3.142857]);
        // test_resize_downsample_sizes_linear_pytorch_half_pixel
        let a = attrs(ResizeMode::Linear, CoordTransform::PytorchHalfPixel);
        let y = run(&a, &x4x4(), None, None, Some(&[1, 1, 3, 1])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 1]);
        close(y.as_f32().unwrap(), &[1.6666666, 7., 12.333333]);
    }

    #[test]
    fn tf_crop_and_resize() {
        // test_resize_tf_crop_and_resize_extrapolation_value
        let mut a = attrs(ResizeMode::Linear, CoordTransform::TfCropAndResize);
        a.extrapolation_value = 10.0;
        let roi = [0., 0., 0.4, 0.6, 1., 1., 1.2, 1.7];
        let y = run(&a, &x4x4(), Some(&roi), None, Some(&[1, 1, 3, 3])).unwrap();
        close(
            y.as_f32().unwrap(),
            &[7.6000004, 10., 10., 12.400001, 10., 10., 10., 10., 10.],
        );
        // Without roi: error.
        assert!(run(&a, &x4x4(), None, None, Some(&[1, 1, 3, 3])).is_err());
        // test_resize_tf_crop_and_resize_axes_3_2
        a.axes = Some(vec![3, 2]);
        a.extrapolation_value = 0.0;
        let y = run(
            &a,
            &x4x4(),
            Some(&[0.6, 0.4, 0.8, 0.6]),
            None,
            Some(&[3, 3]),
        )
        .unwrap();
        close(
            y.as_f32().unwrap(),
            &[7.6000004, 7.9, 8.2, 8.8, 9.1, 9.400001, 10., 10.3, 10.6],
        );
    }

    #[test]
    fn nearest_modes_and_aspect() {
        // test_resize_upsample_sizes_nearest_floor_align_corners (first row)
        let mut a = attrs(ResizeMode::Nearest, CoordTransform::AlignCorners);
        a.nearest = NearestMode::Floor;
        let y = run(&a, &x4x4(), None, None, Some(&[1, 1, 8, 8])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 8, 8]);
        close(&y.as_f32().unwrap()[..8], &[1., 1., 1., 2., 2., 3., 3., 4.]);
        // test_resize_upsample_sizes_nearest_ceil_half_pixel (first row)
        let mut a = attrs(ResizeMode::Nearest, CoordTransform::HalfPixel);
        a.nearest = NearestMode::Ceil;
        let y = run(&a, &x4x4(), None, None, Some(&[1, 1, 8, 8])).unwrap();
        close(&y.as_f32().unwrap()[..8], &[1., 2., 2., 3., 3., 4., 4., 4.]);
        // test_resize_upsample_sizes_nearest_not_larger: [7,8] on 2x2 -> 7x7
        let mut a = attrs(ResizeMode::Nearest, CoordTransform::HalfPixel);
        a.aspect = AspectPolicy::NotLarger;
        a.axes = Some(vec![2, 3]);
        let y = run(&a, &x1234(), None, None, Some(&[7, 8])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 7, 7]);
        a.aspect = AspectPolicy::NotSmaller;
        let y = run(&a, &x1234(), None, None, Some(&[7, 8])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 8, 8]);
        // test_resize_downsample_sizes_nearest_not_smaller: 2x4 -> [1,3] gives 2x3...
        let x = Tensor::from_f32(vec![1, 1, 2, 4], (1..=8).map(|v| v as f32).collect()).unwrap();
        let y = run(&a, &x, None, None, Some(&[1, 3])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 3]);
        close(y.as_f32().unwrap(), &[1., 2., 4., 5., 6., 8.]);
    }

    #[test]
    fn antialias_and_symmetric() {
        // test_resize_downsample_scales_linear_antialias
        let mut a = attrs(ResizeMode::Linear, CoordTransform::HalfPixel);
        a.antialias = true;
        let y = run(&a, &x4x4(), None, Some(&[1., 1., 0.6, 0.6]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        close(y.as_f32().unwrap(), &[2.875, 4.5, 9.375, 11.]);
        // test_resize_upsample_scales_linear_half_pixel_symmetric: 2x2 by [2.3, 2.94]
        let a = attrs(ResizeMode::Linear, CoordTransform::HalfPixelSymmetric);
        let y = run(&a, &x1234(), None, Some(&[1., 1., 2.3, 2.94]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 5]);
        close(
            &y.as_f32().unwrap()[..10],
            &[
                1., 1.159864, 1.5, 1.840136, 2., 1.5652174, 1.7250813, 2.0652175, 2.4053535,
                2.5652175,
            ],
        );
        // test_resize_downsample_scales_linear_half_pixel_symmetric
        let x = Tensor::from_f32(vec![1, 1, 1, 4], vec![1., 2., 3., 4.]).unwrap();
        let y = run(&a, &x, None, Some(&[1., 1., 1., 0.6]), None).unwrap();
        close(y.as_f32().unwrap(), &[1.6666667, 3.3333333]);
    }

    #[test]
    fn cubic() {
        // Values from onnx.reference's Resize (opset 19) on x4x4.
        // test_resize_upsample_scales_cubic (first two rows).
        let mut a = attrs(ResizeMode::Cubic, CoordTransform::HalfPixel);
        let y = run(&a, &x4x4(), None, Some(&[1., 1., 2., 2.]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 8, 8]);
        close(
            &y.as_f32().unwrap()[..16],
            &[
                0.47265625, 0.76953125, 1.2460938, 1.875, 2.28125, 2.9101563, 3.3867188, 3.6835938,
                1.6601563, 1.9570313, 2.4335938, 3.0625, 3.46875, 4.0976563, 4.5742188, 4.8710938,
            ],
        );
        // test_resize_downsample_scales_cubic_antialias
        a.antialias = true;
        let y = run(&a, &x4x4(), None, Some(&[1., 1., 0.6, 0.6]), None).unwrap();
        close(
            y.as_f32().unwrap(),
            &[2.5180695, 4.285886, 9.589335, 11.357152],
        );
        // A = -0.5 with exclude_outside, downsampling by 0.8.
        let mut a = attrs(ResizeMode::Cubic, CoordTransform::HalfPixel);
        a.cubic_coeff_a = -0.5;
        a.exclude_outside = true;
        let y = run(&a, &x4x4(), None, Some(&[1., 1., 0.8, 0.8]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        close(
            y.as_f32().unwrap(),
            &[
                1.3681267, 2.6695013, 4.0133367, 6.5736256, 7.875, 9.218835, 11.948966, 13.250341,
                14.594176,
            ],
        );
        // test_resize_upsample_scales_cubic_asymmetric (first two rows).
        let a = attrs(ResizeMode::Cubic, CoordTransform::Asymmetric);
        let y = run(&a, &x4x4(), None, Some(&[1., 1., 2., 2.]), None).unwrap();
        close(
            &y.as_f32().unwrap()[..8],
            &[1., 1.40625, 2., 2.5, 3., 3.59375, 4., 4.09375],
        );
        // 1-D antialias by sizes, with and without exclude_outside.
        let x = Tensor::from_f32(vec![1, 6], vec![1., 4., 2., 8., 5., 7.]).unwrap();
        let mut a = attrs(ResizeMode::Cubic, CoordTransform::HalfPixel);
        a.antialias = true;
        let y = run(&a, &x, None, None, Some(&[1, 4])).unwrap();
        close(
            y.as_f32().unwrap(),
            &[2.0486128, 3.3171284, 6.4884257, 6.208332],
        );
        a.cubic_coeff_a = -0.5;
        a.exclude_outside = true;
        let y = run(&a, &x, None, None, Some(&[1, 2])).unwrap();
        close(y.as_f32().unwrap(), &[3.0131578, 6.131579]);
    }

    #[test]
    fn int_types_and_errors() {
        let x = Tensor::new(vec![1, 2], TensorData::U8(vec![0, 255])).unwrap();
        let a = attrs(ResizeMode::Linear, CoordTransform::AlignCorners);
        let y = run(&a, &x, None, None, Some(&[1, 3])).unwrap();
        // 127.5 rounds half to even.
        assert!(y.data() == &TensorData::U8(vec![0, 128, 255]), "{y:?}");
        // Empty scales and sizes: error; both given: error.
        let empty = Tensor::from_f32(vec![0], vec![]).unwrap();
        assert!(eval(&Op::Resize(a.clone()), &[Some(&x), None, Some(&empty)]).is_err());
        assert!(run(&a, &x, None, Some(&[1., 2.]), Some(&[1, 4])).is_err());
        assert!(run(&a, &x, None, Some(&[1., -2.]), None).is_err());
        assert!(run(&a, &x, None, Some(&[1.]), None).is_err());
        assert!(run(&a, &x, None, None, Some(&[1, -4])).is_err());
        assert!(run(&a, &x, None, None, Some(&[1 << 40, 1 << 40])).is_err());
        // Intermediate blow-up and empty inputs.
        let wide = Tensor::from_f32(vec![1, 1 << 20], vec![0.0; 1 << 20]).unwrap();
        assert!(run(&a, &wide, None, None, Some(&[1 << 12, 1])).is_err());
        let e = Tensor::from_f32(vec![0, 1 << 30, 1 << 30], vec![]).unwrap();
        let y = run(&a, &e, None, Some(&[1., 2., 1.]), None).unwrap();
        assert_eq!(y.shape(), &[0, 1 << 31, 1 << 30]);
        // Zero output size gives an empty tensor.
        let y = run(&a, &x, None, None, Some(&[1, 0])).unwrap();
        assert_eq!(y.shape(), &[1, 0]);
        let mut n = attrs(ResizeMode::Nearest, CoordTransform::HalfPixel);
        n.antialias = true;
        assert!(run(&n, &x, None, Some(&[1., 2.]), None).is_err());
    }
}

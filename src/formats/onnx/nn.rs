//! Importers of convolution, pooling, normalization, dropout and resize.
//!
//! Conv, ConvTranspose and the pools get every default filled in (strides
//! and dilations of 1, zero pads). When a convolution omits `kernel_shape`,
//! it comes from the weight's spatial dims: at once when the weight is a
//! constant or a graph input, otherwise through a fixup that runs once
//! inference has typed the weight.

use super::attrs::Problem;
use super::ctx::{Ctx, Fixup, Imported, In};
use crate::ir::{
    AspectPolicy, AutoPad, ConvAttrs, ConvTransposeAttrs, CoordTransform, Dim, NearestMode, Op,
    PoolAttrs, ResizeAttrs, ResizeMode, Tensor, TensorType,
};

fn auto_pad(c: &Ctx) -> Result<AutoPad, Problem> {
    Ok(match c.attrs.string("auto_pad", "NOTSET")? {
        "NOTSET" | "" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        other => {
            return Err(format!(
            "attribute 'auto_pad' must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got \"{other}\""
        ))
        }
    })
}

/// Spatial attributes as written in the node, before the spatial rank is
/// known.
struct Spatial {
    kernel_shape: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
    dilations: Option<Vec<usize>>,
    pads: Option<Vec<usize>>,
}

impl Spatial {
    fn parse(c: &Ctx) -> Result<Spatial, Problem> {
        Ok(Spatial {
            kernel_shape: c.attrs.opt_usizes("kernel_shape")?,
            strides: c.attrs.opt_usizes("strides")?,
            dilations: c.attrs.opt_usizes("dilations")?,
            pads: c.attrs.opt_usizes("pads")?,
        })
    }

    /// (kernel, strides, dilations, pads) for `kernel`'s rank, defaults
    /// filled and lengths and values checked.
    #[allow(clippy::type_complexity)]
    fn finish(
        self,
        kernel: Vec<usize>,
    ) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>), Problem> {
        let n = kernel.len();
        if kernel.contains(&0) {
            return Err(format!("kernel_shape {kernel:?} has a zero size"));
        }
        let list = |v: Option<Vec<usize>>, name: &str, len: usize, default: usize| {
            let v = v.unwrap_or_else(|| vec![default; len]);
            if v.len() != len {
                return Err(format!(
                    "attribute '{name}' has {} values, but the kernel has {n} spatial axes (expected {len})",
                    v.len()
                ));
            }
            if default == 1 && v.contains(&0) {
                return Err(format!("attribute '{name}' must be positive, got {v:?}"));
            }
            Ok(v)
        };
        let strides = list(self.strides, "strides", n, 1)?;
        let dilations = list(self.dilations, "dilations", n, 1)?;
        let pads = list(self.pads, "pads", 2 * n, 0)?;
        Ok((kernel, strides, dilations, pads))
    }
}

/// The spatial dims of a convolution weight `[M, C/group, k1, k2, ..]`.
fn kernel_from_weight(ty: Option<&TensorType>) -> Result<Vec<usize>, Problem> {
    let ty = ty.ok_or("kernel_shape is not given and the weight's type is unknown")?;
    if ty.shape.rank() < 3 {
        return Err(format!(
            "kernel_shape is not given and the weight {} has no spatial axes",
            ty
        ));
    }
    ty.shape.dims()[2..]
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Ok(*k),
            Dim::Sym(_) => Err(format!(
                "kernel_shape is not given and the weight's shape {} is not static",
                ty.shape
            )),
        })
        .collect()
}

/// Builds a convolution op from its kernel shape, now or (when the kernel
/// comes from a weight typed only by inference) in a fixup.
fn with_kernel(
    c: &Ctx,
    given: Option<Vec<usize>>,
    build: impl FnOnce(Vec<usize>) -> Result<Op, Problem> + 'static,
    placeholder: Op,
) -> Result<Imported, Problem> {
    let known = given.or_else(|| kernel_from_weight(c.known_type(1)).ok());
    let (op, fixup): (Op, Option<Fixup>) = match known {
        Some(k) => (build(k)?, None),
        None => (
            placeholder,
            Some(Box::new(move |op: &mut Op, tys: &[Option<TensorType>]| {
                *op = build(kernel_from_weight(tys.get(1).and_then(Option::as_ref))?)?;
                Ok(())
            })),
        ),
    };
    Ok(Imported {
        op,
        inputs: c.given(),
        outputs: 1,
        fixup,
    })
}

fn empty_conv() -> ConvAttrs {
    ConvAttrs {
        kernel_shape: vec![],
        strides: vec![],
        dilations: vec![],
        pads: vec![],
        auto_pad: AutoPad::NotSet,
        group: 1,
    }
}

fn conv_attrs(c: &Ctx) -> Result<(Spatial, AutoPad, usize), Problem> {
    let sp = Spatial::parse(c)?;
    let auto_pad = auto_pad(c)?;
    let group = c.attrs.int("group", 1)?;
    let group = usize::try_from(group)
        .ok()
        .filter(|&g| g >= 1)
        .ok_or_else(|| format!("attribute 'group' must be at least 1, got {group}"))?;
    Ok((sp, auto_pad, group))
}

/// https://onnx.ai/onnx/operators/onnx__Conv.html
pub fn conv(c: &Ctx) -> Result<Imported, Problem> {
    let (mut sp, auto_pad, group) = conv_attrs(c)?;
    let given = sp.kernel_shape.take();
    with_kernel(
        c,
        given,
        move |k| {
            let (kernel_shape, strides, dilations, pads) = sp.finish(k)?;
            Ok(Op::Conv(ConvAttrs {
                kernel_shape,
                strides,
                dilations,
                pads,
                auto_pad,
                group,
            }))
        },
        Op::Conv(empty_conv()),
    )
}

/// https://onnx.ai/onnx/operators/onnx__ConvTranspose.html
/// (`output_shape` may give the spatial sizes or the full output shape).
pub fn conv_transpose(c: &Ctx) -> Result<Imported, Problem> {
    let (mut sp, auto_pad, group) = conv_attrs(c)?;
    let output_padding = c.attrs.opt_usizes("output_padding")?;
    let output_shape = c.attrs.opt_usizes("output_shape")?;
    let given = sp.kernel_shape.take();
    with_kernel(
        c,
        given,
        move |k| {
            let n = k.len();
            let (kernel_shape, strides, dilations, pads) = sp.finish(k)?;
            let output_padding = output_padding.unwrap_or_else(|| vec![0; n]);
            if output_padding.len() != n {
                return Err(format!(
                    "attribute 'output_padding' has {} values, expected {n}",
                    output_padding.len()
                ));
            }
            let output_shape = match output_shape {
                None => None,
                Some(s) if s.len() == n => Some(s),
                Some(s) if s.len() == n + 2 => Some(s[2..].to_vec()),
                Some(s) => {
                    return Err(format!(
                        "attribute 'output_shape' has {} values, expected {n}",
                        s.len()
                    ))
                }
            };
            Ok(Op::ConvTranspose(ConvTransposeAttrs {
                conv: ConvAttrs {
                    kernel_shape,
                    strides,
                    dilations,
                    pads,
                    auto_pad,
                    group,
                },
                output_padding,
                output_shape,
            }))
        },
        Op::ConvTranspose(ConvTransposeAttrs {
            conv: empty_conv(),
            output_padding: vec![],
            output_shape: None,
        }),
    )
}

fn pool_attrs(c: &Ctx, average: bool) -> Result<PoolAttrs, Problem> {
    let sp = Spatial::parse(c)?;
    let auto_pad = auto_pad(c)?;
    let kernel = sp
        .kernel_shape
        .clone()
        .ok_or("attribute 'kernel_shape' is required")?;
    let (kernel_shape, strides, dilations, pads) = sp.finish(kernel)?;
    let ceil_mode = c.attrs.bool("ceil_mode", false)?;
    let count_include_pad = if average {
        c.attrs.bool("count_include_pad", false)?
    } else {
        false
    };
    let column_major = if average {
        false
    } else {
        match c.attrs.int("storage_order", 0)? {
            0 => false,
            1 => true,
            other => {
                return Err(format!(
                    "attribute 'storage_order' must be 0 (row-major) or 1 (column-major), \
                     got {other}"
                ))
            }
        }
    };
    Ok(PoolAttrs {
        kernel_shape,
        strides,
        dilations,
        pads,
        auto_pad,
        ceil_mode,
        count_include_pad,
        column_major,
    })
}

/// https://onnx.ai/onnx/operators/onnx__MaxPool.html: Y and (opset 8+)
/// Indices. `storage_order` only affects Indices.
pub fn max_pool(c: &Ctx) -> Result<Imported, Problem> {
    let attrs = pool_attrs(c, false)?;
    Ok(Imported {
        outputs: c.n_outputs().max(1),
        ..c.simple(Op::MaxPool(attrs))?
    })
}

/// https://onnx.ai/onnx/operators/onnx__AveragePool.html
pub fn average_pool(c: &Ctx) -> Result<Imported, Problem> {
    let attrs = pool_attrs(c, true)?;
    c.simple(Op::AveragePool(attrs))
}

/// https://onnx.ai/onnx/operators/onnx__BatchNormalization.html: the
/// inference form, and from opset 14 training mode (`training_mode = 1`:
/// outputs Y, running_mean, running_var). The training outputs of the older
/// forms (which also had saved statistics) are an import error.
pub fn batch_norm(c: &Ctx) -> Result<Imported, Problem> {
    let epsilon = c.attrs.float("epsilon", 1e-5)?;
    if c.opset >= 14 && c.attrs.bool("training_mode", false)? {
        let momentum = c.attrs.float("momentum", 0.9)?;
        return Ok(Imported {
            outputs: c.n_outputs().max(1),
            ..c.simple(Op::BatchNormalization {
                epsilon,
                training_momentum: Some(momentum),
            })?
        });
    }
    c.attrs.ignore(&["momentum"]);
    if c.opset < 9 {
        let spatial = c.attrs.int("spatial", 1)?;
        if spatial != 1 {
            return Err(format!(
                "attribute 'spatial' = {spatial} (per-activation statistics) is not supported"
            ));
        }
    }
    if c.n_outputs() > 1 {
        return Err(format!(
            "training mode is not supported before opset 14: the node declares {} outputs, the inference form has one",
            c.n_outputs()
        ));
    }
    c.simple(Op::BatchNormalization {
        epsilon,
        training_momentum: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__LayerNormalization.html: Y, Mean
/// and InvStdDev. `stash_type` chooses the precision of intermediates and
/// the type of Mean and InvStdDev; mlc computes in f64 and gives f32
/// statistics (the default `stash_type = 1`), so another `stash_type` is an
/// import error when the statistics are outputs.
pub fn layer_norm(c: &Ctx) -> Result<Imported, Problem> {
    let axis = c.attrs.int("axis", -1)?;
    let epsilon = c.attrs.float("epsilon", 1e-5)?;
    let stash_type = c.attrs.int("stash_type", 1)?;
    if stash_type != 1 && c.n_outputs() > 1 {
        return Err(format!(
            "stash_type {stash_type} is not supported for the Mean and InvStdDev outputs (only 1, float32)"
        ));
    }
    Ok(Imported {
        outputs: c.n_outputs().max(1),
        ..c.simple(Op::LayerNormalization { axis, epsilon })?
    })
}

/// https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html
pub fn instance_norm(c: &Ctx) -> Result<Imported, Problem> {
    let epsilon = c.attrs.float("epsilon", 1e-5)?;
    c.simple(Op::InstanceNormalization { epsilon })
}

/// https://onnx.ai/onnx/operators/onnx__Dropout.html, inference: the output
/// is the input. Before opset 12 `ratio` is an attribute (irrelevant in
/// inference); before opset 10 the mask has the data's type, which mlc does
/// not model, so only Y is kept there. A constant true `training_mode` is an
/// import error.
pub fn dropout(c: &Ctx) -> Result<Imported, Problem> {
    c.attrs.ignore(&["ratio", "seed"]);
    if let Some(t) = c.const_input(2) {
        if t.as_bool().is_some_and(|v| v.iter().any(|&b| b)) {
            return Err("training mode (training_mode=true) is not supported".into());
        }
    }
    let inputs = if c.opset < 12 {
        vec![c.input(0)]
    } else {
        c.given()
    };
    Ok(Imported {
        op: Op::Dropout,
        inputs,
        outputs: if c.opset < 10 { 1 } else { 2 },
        fixup: None,
    })
}

fn resize_mode(c: &Ctx) -> Result<ResizeMode, Problem> {
    match c.attrs.string("mode", "nearest")? {
        "nearest" => Ok(ResizeMode::Nearest),
        "linear" | "bilinear" | "trilinear" => Ok(ResizeMode::Linear),
        "cubic" | "bicubic" => Ok(ResizeMode::Cubic),
        other => Err(format!("unknown mode \"{other}\"")),
    }
}

/// The Resize form of the opset 7-10 upsampling (Upsample, Resize-10):
/// asymmetric coordinates, nearest rounds down.
fn legacy_resize(mode: ResizeMode) -> ResizeAttrs {
    ResizeAttrs {
        mode,
        coord: CoordTransform::Asymmetric,
        nearest: NearestMode::Floor,
        exclude_outside: false,
        extrapolation_value: 0.0,
        antialias: false,
        axes: None,
        aspect: AspectPolicy::Stretch,
        cubic_coeff_a: -0.75,
    }
}

/// https://onnx.ai/onnx/operators/onnx__Resize.html, opset 10 form: inputs
/// X, scales become X, roi (absent), scales.
pub fn resize_v10(c: &Ctx) -> Result<Imported, Problem> {
    let mode = resize_mode(c)?;
    Ok(Imported {
        op: Op::Resize(legacy_resize(mode)),
        inputs: vec![c.input(0), In::Absent, c.input(1)],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Upsample.html: imported as Resize
/// with scales (an attribute before opset 9).
pub fn upsample(c: &Ctx) -> Result<Imported, Problem> {
    let mode = resize_mode(c)?;
    let scales = if c.opset < 9 {
        let s = c
            .attrs
            .opt_floats("scales")?
            .ok_or("attribute 'scales' is required")?;
        In::Const(
            "scales",
            Tensor::from_f32(vec![s.len()], s.to_vec()).map_err(|e| e.to_string())?,
        )
    } else {
        c.input(1)
    };
    Ok(Imported {
        op: Op::Resize(legacy_resize(mode)),
        inputs: vec![c.input(0), In::Absent, scales],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Resize.html, opset 11+ (antialias,
/// axes and keep_aspect_ratio_policy from 18). Constant empty `roi`/`scales`
/// inputs (how opset 11-12 models say "not given") become absent inputs.
pub fn resize(c: &Ctx) -> Result<Imported, Problem> {
    let mode = resize_mode(c)?;
    let coord = match c
        .attrs
        .string("coordinate_transformation_mode", "half_pixel")?
    {
        "half_pixel" => CoordTransform::HalfPixel,
        "half_pixel_symmetric" => CoordTransform::HalfPixelSymmetric,
        "pytorch_half_pixel" => CoordTransform::PytorchHalfPixel,
        "align_corners" => CoordTransform::AlignCorners,
        "asymmetric" => CoordTransform::Asymmetric,
        "tf_crop_and_resize" => CoordTransform::TfCropAndResize,
        other => {
            return Err(format!(
                "coordinate_transformation_mode \"{other}\" is not supported"
            ))
        }
    };
    let nearest = match c.attrs.string("nearest_mode", "round_prefer_floor")? {
        "round_prefer_floor" => NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
        "floor" => NearestMode::Floor,
        "ceil" => NearestMode::Ceil,
        other => return Err(format!("nearest_mode \"{other}\" is not supported")),
    };
    let aspect = match c.attrs.string("keep_aspect_ratio_policy", "stretch")? {
        "stretch" => AspectPolicy::Stretch,
        "not_larger" => AspectPolicy::NotLarger,
        "not_smaller" => AspectPolicy::NotSmaller,
        other => {
            return Err(format!(
                "keep_aspect_ratio_policy \"{other}\" is not supported"
            ))
        }
    };
    let attrs = ResizeAttrs {
        mode,
        coord,
        nearest,
        exclude_outside: c.attrs.bool("exclude_outside", false)?,
        extrapolation_value: c.attrs.float("extrapolation_value", 0.0)?,
        antialias: c.attrs.bool("antialias", false)?,
        axes: c.attrs.opt_ints("axes")?.map(<[i64]>::to_vec),
        aspect,
        cubic_coeff_a: c.attrs.float("cubic_coeff_a", -0.75)?,
    };
    let mut inputs = c.given();
    for i in [1, 2] {
        if c.const_input(i).is_some_and(|t| t.numel() == 0) {
            if let Some(slot) = inputs.get_mut(i) {
                *slot = In::Absent;
            }
        }
    }
    Ok(Imported {
        op: Op::Resize(attrs),
        inputs,
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__LRN.html (opset 1; 13 only widened
/// the types).
pub fn lrn(c: &Ctx) -> Result<Imported, Problem> {
    let size = c
        .attrs
        .opt_int("size")?
        .ok_or("attribute 'size' is required")?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s >= 1)
        .ok_or_else(|| format!("attribute 'size' must be at least 1, got {size}"))?;
    c.simple(Op::Lrn {
        alpha: c.attrs.float("alpha", 1e-4)?,
        beta: c.attrs.float("beta", 0.75)?,
        bias: c.attrs.float("bias", 1.0)?,
        size,
    })
}

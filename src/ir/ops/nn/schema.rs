//! Schemas of the neural-network ops with spatial attributes: Gemm, Conv,
//! ConvTranspose, the pools and Resize. Conv-like ops share
//! [`conv_attrs`], which the fused and quantized convolutions reuse.

use crate::ir::ops::util::not_held;
use crate::ir::schema::{mlc, renamed, std, word_attr, AttrDef, Msg, OpDef, Rule, Visitor};
use crate::ir::{
    AspectPolicy, AutoPad, ConvAttrs, ConvTransposeAttrs, CoordTransform, NearestMode, Op,
    PoolAttrs, ResizeAttrs, ResizeMode,
};

word_attr!(
    AutoPad,
    [
        ("notset", AutoPad::NotSet),
        ("same_upper", AutoPad::SameUpper),
        ("same_lower", AutoPad::SameLower),
        ("valid", AutoPad::Valid),
    ]
);

word_attr!(
    ResizeMode,
    [
        ("nearest", ResizeMode::Nearest),
        ("linear", ResizeMode::Linear),
        ("cubic", ResizeMode::Cubic),
    ]
);

word_attr!(
    CoordTransform,
    [
        ("half_pixel", CoordTransform::HalfPixel),
        ("half_pixel_symmetric", CoordTransform::HalfPixelSymmetric),
        ("pytorch_half_pixel", CoordTransform::PytorchHalfPixel),
        ("align_corners", CoordTransform::AlignCorners),
        ("asymmetric", CoordTransform::Asymmetric),
        ("tf_crop_and_resize", CoordTransform::TfCropAndResize),
    ]
);

word_attr!(
    NearestMode,
    [
        ("round_prefer_floor", NearestMode::RoundPreferFloor),
        ("round_prefer_ceil", NearestMode::RoundPreferCeil),
        ("floor", NearestMode::Floor),
        ("ceil", NearestMode::Ceil),
    ]
);

word_attr!(
    AspectPolicy,
    [
        ("stretch", AspectPolicy::Stretch),
        ("not_larger", AspectPolicy::NotLarger),
        ("not_smaller", AspectPolicy::NotSmaller),
    ]
);

/// Placeholder attributes (every field is set when an op is built).
pub(crate) fn conv_proto() -> ConvAttrs {
    ConvAttrs {
        kernel_shape: vec![1],
        strides: vec![1],
        dilations: vec![1],
        pads: vec![0, 0],
        auto_pad: AutoPad::NotSet,
        group: 1,
    }
}

fn pool_proto() -> PoolAttrs {
    PoolAttrs {
        kernel_shape: vec![1],
        strides: vec![1],
        dilations: vec![1],
        pads: vec![0, 0],
        auto_pad: AutoPad::NotSet,
        ceil_mode: false,
        count_include_pad: false,
        column_major: false,
    }
}

pub(crate) fn prototypes() -> Vec<Op> {
    vec![
        Op::MatMul,
        Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        },
        Op::Conv(conv_proto()),
        Op::ConvTranspose(ConvTransposeAttrs {
            conv: conv_proto(),
            output_padding: vec![0],
            output_shape: None,
        }),
        Op::MaxPool(pool_proto()),
        Op::AveragePool(pool_proto()),
        Op::GlobalAveragePool,
        Op::GlobalMaxPool,
        Op::Resize(ResizeAttrs {
            mode: ResizeMode::Nearest,
            coord: CoordTransform::HalfPixel,
            nearest: NearestMode::RoundPreferFloor,
            exclude_outside: false,
            extrapolation_value: 0.0,
            antialias: false,
            axes: None,
            aspect: AspectPolicy::Stretch,
            cubic_coeff_a: -0.75,
        }),
    ]
}

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::MatMul => OpDef::onnx("MatMul", 2..=2),
        Op::Gemm { .. } => OpDef::onnx("Gemm", 2..=3),
        Op::Conv(_) => OpDef::onnx("Conv", 2..=3),
        Op::ConvTranspose(_) => OpDef::onnx("ConvTranspose", 2..=3),
        Op::MaxPool(_) => OpDef::onnx("MaxPool", 1..=1),
        Op::AveragePool(_) => OpDef::onnx("AveragePool", 1..=1),
        Op::GlobalAveragePool => OpDef::onnx("GlobalAveragePool", 1..=1),
        Op::GlobalMaxPool => OpDef::onnx("GlobalMaxPool", 1..=1),
        Op::Resize(_) => OpDef::onnx("Resize", 1..=4),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::MatMul | Op::GlobalAveragePool | Op::GlobalMaxPool => Ok(()),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => gemm(alpha, beta, trans_a, trans_b, v),
        Op::Conv(c) => conv(c, v),
        Op::ConvTranspose(c) => conv_transpose(c, v),
        Op::MaxPool(p) => pool(p, false, v),
        Op::AveragePool(p) => pool(p, true, v),
        Op::Resize(r) => resize(r, v),
        _ => Err(not_held("nn", op)),
    }
}

fn gemm<V: Visitor>(
    alpha: &mut f32,
    beta: &mut f32,
    trans_a: &mut bool,
    trans_b: &mut bool,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("alpha"), alpha, Rule::Always(1.0))?;
    v.attr(std("beta"), beta, Rule::Always(1.0))?;
    v.attr(renamed("trans_a", "transA"), trans_a, Rule::Always(false))?;
    v.attr(renamed("trans_b", "transB"), trans_b, Rule::Always(false))
}

/// The spatial attributes Conv and the pools share. The kernel shape is
/// required in the text form (the importer takes it from the weight when
/// ONNX leaves it out); strides and dilations default to 1, pads to 0, one
/// per spatial axis.
fn spatial<V: Visitor>(
    kernel: &mut Vec<usize>,
    strides: &mut Vec<usize>,
    dilations: &mut Vec<usize>,
    pads: &mut Vec<usize>,
    auto_pad: &mut AutoPad,
    v: &mut V,
) -> Msg<()> {
    v.attr(renamed("kernel", "kernel_shape"), kernel, Rule::Required)?;
    let n = kernel.len();
    v.attr(std("strides"), strides, Rule::Always(vec![1; n]))?;
    v.attr(std("dilations"), dilations, Rule::Always(vec![1; n]))?;
    v.attr(std("pads"), pads, Rule::Always(vec![0; 2 * n]))?;
    v.attr(
        std("auto_pad"),
        auto_pad,
        Rule::UnlessDefault(AutoPad::NotSet),
    )
}

/// Conv's attributes (also those of ConvTranspose, FusedConv and QConv).
pub(crate) fn conv_attrs<V: Visitor>(c: &mut ConvAttrs, v: &mut V) -> Msg<()> {
    spatial(
        &mut c.kernel_shape,
        &mut c.strides,
        &mut c.dilations,
        &mut c.pads,
        &mut c.auto_pad,
        v,
    )?;
    v.attr(std("group"), &mut c.group, Rule::UnlessDefault(1))
}

fn conv<V: Visitor>(c: &mut ConvAttrs, v: &mut V) -> Msg<()> {
    conv_attrs(c, v)
}

fn conv_transpose<V: Visitor>(c: &mut ConvTransposeAttrs, v: &mut V) -> Msg<()> {
    conv_attrs(&mut c.conv, v)?;
    let n = c.conv.kernel_shape.len();
    v.attr(
        std("output_padding"),
        &mut c.output_padding,
        Rule::Always(vec![0; n]),
    )?;
    v.attr(
        std("output_shape"),
        &mut c.output_shape,
        Rule::UnlessDefault(None),
    )
}

/// MaxPool and AveragePool. `count_include_pad` is AveragePool's and
/// `storage_order` MaxPool's in ONNX.
fn pool<V: Visitor>(p: &mut PoolAttrs, average: bool, v: &mut V) -> Msg<()> {
    let only = |yes: bool, name: &'static str| -> AttrDef {
        if yes {
            std(name)
        } else {
            mlc(name)
        }
    };
    spatial(
        &mut p.kernel_shape,
        &mut p.strides,
        &mut p.dilations,
        &mut p.pads,
        &mut p.auto_pad,
        v,
    )?;
    v.attr(
        std("ceil_mode"),
        &mut p.ceil_mode,
        Rule::UnlessDefault(false),
    )?;
    v.attr(
        only(average, "count_include_pad"),
        &mut p.count_include_pad,
        Rule::UnlessDefault(false),
    )?;
    let mut order = p.column_major as i64;
    v.attr(
        only(!average, "storage_order"),
        &mut order,
        Rule::UnlessDefault(0),
    )?;
    p.column_major = match order {
        0 => false,
        1 => true,
        _ => return Err("attribute 'storage_order' must be 0 or 1".into()),
    };
    Ok(())
}

fn resize<V: Visitor>(r: &mut ResizeAttrs, v: &mut V) -> Msg<()> {
    v.attr(std("mode"), &mut r.mode, Rule::Always(ResizeMode::Nearest))?;
    v.attr(
        renamed("coord", "coordinate_transformation_mode"),
        &mut r.coord,
        Rule::Always(CoordTransform::HalfPixel),
    )?;
    v.attr(
        renamed("nearest", "nearest_mode"),
        &mut r.nearest,
        Rule::Always(NearestMode::RoundPreferFloor),
    )?;
    v.attr(
        std("exclude_outside"),
        &mut r.exclude_outside,
        Rule::UnlessDefault(false),
    )?;
    v.attr(
        std("antialias"),
        &mut r.antialias,
        Rule::UnlessDefault(false),
    )?;
    // Shown whenever it is used.
    let cubic = if r.mode == ResizeMode::Cubic {
        Rule::Always(-0.75)
    } else {
        Rule::UnlessDefault(-0.75)
    };
    v.attr(std("cubic_coeff_a"), &mut r.cubic_coeff_a, cubic)?;
    v.attr(
        std("extrapolation_value"),
        &mut r.extrapolation_value,
        Rule::UnlessDefault(0.0),
    )?;
    v.attr(
        renamed("aspect", "keep_aspect_ratio_policy"),
        &mut r.aspect,
        Rule::UnlessDefault(AspectPolicy::Stretch),
    )?;
    v.attr(std("axes"), &mut r.axes, Rule::UnlessDefault(None))
}

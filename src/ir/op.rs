//! The closed set of operators mlc understands, with typed attributes.
//!
//! Ops mirror the newest ONNX form of each operator: where an older opset
//! carried something as an attribute that a newer one takes as an input
//! (Squeeze/Unsqueeze axes, Slice starts/ends, Split sizes, Reduce axes, Clip
//! bounds, Pad pads), the importer turns the attribute into a constant input,
//! so every later stage sees one form. Optional inputs keep their ONNX
//! positions; an absent one is `None` in `Node::inputs`.

use super::{DType, E8M0Round, Tensor};

/// Elementwise ops of one input.
#[derive(Clone, Debug, PartialEq)]
pub enum UnaryOp {
    Sqrt,
    Reciprocal,
    Neg,
    Abs,
    Exp,
    Log,
    Erf,
    Tanh,
    Sigmoid,
    Relu,
    Not,
    Floor,
    Ceil,
    Sign,
    LeakyRelu {
        alpha: f32,
    },
    Elu {
        alpha: f32,
    },
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// `approximate = "tanh"` selects the tanh approximation.
    Gelu {
        tanh_approx: bool,
    },
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    /// Round half to even.
    Round,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
}

/// Elementwise ops of two inputs with multidirectional broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Greater,
    Less,
    GreaterOrEqual,
    LessOrEqual,
    And,
    Or,
    Xor,
    /// ONNX Mod with `fmod = 0`: the remainder takes the divisor's sign
    /// (Python's `%`).
    Mod,
    /// ONNX Mod with `fmod = 1`: the remainder takes the dividend's sign
    /// (C's `fmod`).
    FMod,
}

impl BinaryOp {
    /// The f32 arithmetic that an [`EwStep`] and the fast binary kernel
    /// compute (Mod is left to the reference kernel).
    pub fn is_chain_arithmetic(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Pow
        )
    }

    /// Comparisons and logic ops produce bool.
    pub fn returns_bool(self) -> bool {
        !matches!(
            self,
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Pow
                | BinaryOp::Mod
                | BinaryOp::FMod
        )
    }
}

/// How ScatterElements / ScatterND combine an update with the element it
/// lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ScatterReduction {
    /// The update replaces the element.
    #[default]
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl ScatterReduction {
    /// The ONNX attribute value.
    pub fn name(self) -> &'static str {
        match self {
            ScatterReduction::None => "none",
            ScatterReduction::Add => "add",
            ScatterReduction::Mul => "mul",
            ScatterReduction::Max => "max",
            ScatterReduction::Min => "min",
        }
    }

    /// Every reduction, for tables that map names to values.
    pub const ALL: [ScatterReduction; 5] = [
        ScatterReduction::None,
        ScatterReduction::Add,
        ScatterReduction::Mul,
        ScatterReduction::Max,
        ScatterReduction::Min,
    ];
}

/// Elementwise ops over any number of broadcast inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VariadicOp {
    Sum,
    Mean,
    Min,
    Max,
}

/// Reductions. Axes come from the optional second input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSumExp,
}

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AutoPad {
    #[default]
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// Attributes shared by Conv and ConvTranspose. Spatial lists have one entry
/// per spatial axis; `pads` is `[begin_0, begin_1, .., end_0, end_1, ..]`.
/// The importer fills defaults (strides and dilations of 1, zero pads) and
/// takes the kernel shape from the weight when the attribute is absent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvAttrs {
    pub kernel_shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub auto_pad: AutoPad,
    pub group: usize,
}

/// ConvTranspose adds output padding and an optional explicit output shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvTransposeAttrs {
    pub conv: ConvAttrs,
    pub output_padding: Vec<usize>,
    /// Spatial output size (without batch and channel), when given.
    pub output_shape: Option<Vec<usize>>,
}

/// MaxPool / AveragePool attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolAttrs {
    pub kernel_shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub auto_pad: AutoPad,
    pub ceil_mode: bool,
    /// AveragePool only: count padding cells in the divisor.
    pub count_include_pad: bool,
    /// MaxPool only: `storage_order = 1`, the Indices output numbers the
    /// cells of each (batch, channel) plane column-major.
    pub column_major: bool,
}

/// Pad modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    Nearest,
    Linear,
    /// Cubic convolution with coefficient `ResizeAttrs::cubic_coeff_a`.
    Cubic,
}

/// Resize `coordinate_transformation_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordTransform {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// Resize `nearest_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// Resize `keep_aspect_ratio_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Resize attributes (inputs: X, roi?, scales?, sizes?).
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeAttrs {
    pub mode: ResizeMode,
    pub coord: CoordTransform,
    pub nearest: NearestMode,
    pub exclude_outside: bool,
    pub extrapolation_value: f32,
    pub antialias: bool,
    /// Axes that `scales`/`sizes` refer to; `None` means all axes.
    pub axes: Option<Vec<i64>>,
    pub aspect: AspectPolicy,
    /// The `A` of the cubic convolution kernel (cubic mode only).
    pub cubic_coeff_a: f32,
}

/// An operator with its attributes. Input and output counts follow ONNX.
/// Each variant belongs to one family of [`ops`](super::ops) ([`Op::family`]),
/// whose folder holds its name and input count, its attribute schema, its
/// inference and its reference kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Variadic(VariadicOp),
    /// Inputs: x, min?, max?.
    Clip,
    /// Inputs: cond, x, y.
    Where,
    /// `saturate` (opset 19, default true) clamps out-of-range values
    /// converted to float8 to its largest finite value; `round_mode` (opset
    /// 24) rounds conversions to float8 e8m0. Both only affect those targets.
    Cast {
        to: DType,
        saturate: bool,
        round_mode: E8M0Round,
    },
    /// `legacy` is the opset < 13 form: the input is coerced to 2-D at `axis`
    /// and the softmax runs over the whole trailing block. With
    /// `nan_to_zero` (made by `fold-nan-guard`, not by import) an output
    /// that comes out NaN is 0: a row without a finite input, such as a
    /// fully masked attention row, gives zeros, as PyTorch's
    /// `scaled_dot_product_attention` export asks with `Where(IsNaN(s), 0,
    /// s)`.
    Softmax {
        axis: i64,
        legacy: bool,
        nan_to_zero: bool,
    },
    LogSoftmax {
        axis: i64,
        legacy: bool,
    },
    /// 1 where an element is the first maximum along `axis` (NaN counts
    /// as the maximum, as in ArgMax), 0 elsewhere; the input's shape and
    /// (floating-point) type. The opset-13 form (older opsets coerce to
    /// 2-D, which mlc does not import).
    Hardmax {
        axis: i64,
    },
    MatMul,
    /// Inputs: A, B, C?.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// Inputs: X, W, B?.
    Conv(ConvAttrs),
    /// Inputs: X, W, B?.
    ConvTranspose(ConvTransposeAttrs),
    /// Inputs: X, scale, B, mean, var. With `training_momentum` (opset 14+
    /// `training_mode = 1`) Y normalizes with the batch statistics and the
    /// outputs are Y, running_mean, running_var (the inputs blended with the
    /// batch statistics by `momentum`); otherwise the inference form: Y only.
    BatchNormalization {
        epsilon: f32,
        training_momentum: Option<f32>,
    },
    /// Inputs: X, scale, B?. Outputs: Y, Mean?, InvStdDev? (the statistics
    /// are f32: the default `stash_type`).
    LayerNormalization {
        axis: i64,
        epsilon: f32,
    },
    /// Inputs: X, scale, B.
    InstanceNormalization {
        epsilon: f32,
    },
    /// Outputs: Y, Indices? (i64).
    MaxPool(PoolAttrs),
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    GlobalMaxPool,
    Flatten {
        axis: i64,
    },
    /// Inputs: data, shape.
    Reshape {
        allowzero: bool,
    },
    /// Always explicit (the importer expands the default reversal).
    Transpose {
        perm: Vec<usize>,
    },
    /// Inputs: data, axes?.
    Squeeze,
    /// Inputs: data, axes.
    Unsqueeze,
    Concat {
        axis: i64,
    },
    /// Inputs: input, split?. `num_outputs` is the node's output count.
    Split {
        axis: i64,
        num_outputs: usize,
    },
    /// Inputs: data, starts, ends, axes?, steps?.
    Slice,
    Gather {
        axis: i64,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Size,
    /// Input: shape. `value` is a one-element tensor giving dtype and fill.
    ConstantOfShape {
        value: Tensor,
    },
    /// Inputs: input, shape.
    Expand,
    /// Inputs: input, repeats.
    Tile,
    Identity,
    /// Inference only: the output is the input; the optional mask output is
    /// all true. Inputs: data, ratio?, training_mode? (must be false).
    Dropout,
    /// Inputs: data, pads, constant_value?, axes?.
    Pad {
        mode: PadMode,
    },
    /// Inputs: start, limit, delta (scalars).
    Range,
    /// Inputs: data, axes?.
    Reduce {
        op: ReduceOp,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    ArgMax {
        axis: i64,
        keepdims: bool,
        select_last_index: bool,
    },
    ArgMin {
        axis: i64,
        keepdims: bool,
        select_last_index: bool,
    },
    /// Inputs: X, roi?, scales?, sizes?.
    Resize(ResizeAttrs),
    /// Bool output: which elements are NaN.
    IsNaN,
    /// Bool output: which elements are +inf (when `detect_positive`) or
    /// -inf (when `detect_negative`).
    IsInf {
        detect_negative: bool,
        detect_positive: bool,
    },
    /// `y = x + bias` where `x < -lambd`, `x - bias` where `x > lambd`, else
    /// 0 (any numeric type; integers go through f64 and back).
    Shrink {
        lambd: f32,
        bias: f32,
    },
    /// Inputs: x, axis (a scalar). Running sums along the axis; `exclusive`
    /// leaves out the element itself, `reverse` sums from the end.
    CumSum {
        exclusive: bool,
        reverse: bool,
    },
    /// Inputs: data, indices (same rank). `out[i][j][k] =
    /// data[i][indices[i][j][k]][k]` for `axis = 1`.
    GatherElements {
        axis: i64,
    },
    /// Inputs: data, indices, updates (indices and updates of one shape):
    /// the inverse of GatherElements, combining by `reduction`.
    ScatterElements {
        axis: i64,
        reduction: ScatterReduction,
    },
    /// Inputs: data, indices. The last axis of `indices` holds index tuples
    /// into `data` after its first `batch_dims` axes.
    GatherND {
        batch_dims: usize,
    },
    /// Inputs: data, indices, updates: the inverse of GatherND (no batch
    /// dims), combining by `reduction`.
    ScatterND {
        reduction: ScatterReduction,
    },
    /// Local response normalization across channels (inputs: X, NCHW..):
    /// `y = x / (bias + alpha / size * sum of x^2 over size channels)^beta`.
    Lrn {
        alpha: f32,
        beta: f32,
        bias: f32,
        size: usize,
    },
    /// Inputs: x, y_scale, y_zero_point?. `y = saturate(round(x / scale) +
    /// zero_point)`, per tensor (scalar scale), per axis (1-D scale along
    /// `axis`) or per block (`block_size` > 0: the scale has x's shape with
    /// `axis` divided into blocks). The output type is the zero point's,
    /// else `output_dtype`, else u8.
    QuantizeLinear {
        axis: i64,
        block_size: usize,
        saturate: bool,
        output_dtype: Option<DType>,
    },
    /// Inputs: x, x_scale, x_zero_point?. `y = (x - zero_point) * scale` in
    /// the scale's type, with QuantizeLinear's granularities.
    DequantizeLinear {
        axis: i64,
        block_size: usize,
    },
    /// Outputs: y (u8), y_scale (f32 scalar), y_zero_point (u8 scalar), the
    /// scale and zero point computed from the data's range.
    DynamicQuantizeLinear,

    // Ops made by mlc's passes; they have no single ONNX counterpart and are
    // expanded back into standard ops by the ONNX exporter.
    /// Conv with an epilogue: `act(conv(X, W) + B + R)`. Inputs: X, W, B?, R?
    /// (R, a residual of the output's shape, is added before the activation).
    FusedConv {
        conv: ConvAttrs,
        act: Option<Activation>,
    },
    /// Matrix product with an epilogue: `act(alpha * op(A) @ op(B) + bias)`,
    /// numpy matmul batching, `op` transposing the last two dims when the
    /// flag is set. Inputs: A, B, bias? (broadcast onto the product).
    FusedMatMul {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        act: Option<Activation>,
    },
    /// A chain of f32 elementwise ops evaluated in one pass over broadcast
    /// inputs; the result is the last step's value.
    Elementwise {
        steps: Vec<EwStep>,
    },
    /// Int8 convolution with a dequantizing epilogue (see [`ActQuant`] for
    /// the arithmetic): X (f32) is quantized to u8, convolved exactly in
    /// int32 with the symmetric int8 weights, and the result is
    /// `act(acc * (x_scale * w_scale[m]) + B + R)` in f32. Inputs: X,
    /// W (i8), w_scale (f32, `[M]` or `[1]`), B?, R?.
    QConv {
        conv: ConvAttrs,
        x_quant: ActQuant,
        act: Option<Activation>,
    },
    /// Int8 matrix product `act(acc * (a_scale * b_scale[n]) + bias)`: A
    /// (f32, `[.., M, K]`) quantized to u8, B a 2-D symmetric int8 weight
    /// `[K, N]`. Inputs: A, B (i8), b_scale (f32, `[N]` or `[1]`), bias?
    /// (f32 `[N]`).
    QMatMul {
        a_quant: ActQuant,
        act: Option<Activation>,
    },
}

/// How a quantized product turns its f32 activation into u8 (asymmetric).
///
/// The arithmetic every implementation follows, bit for bit:
/// - dynamic parameters (ONNX DynamicQuantizeLinear's), computed for each
///   item of the activation's first axis on its own (a sample of a batch,
///   a row of a matrix; the whole of a 1-D one), so that a sample's result
///   does not depend on what it is batched with: `lo = min(0, min x)`,
///   `hi = max(0, max x)` over the item's finite values; when `hi == lo`
///   the scale is 1 and the zero point 0, else `scale = (hi - lo) / 255`
///   and `zp = clamp(round_half_even(-lo / scale), 0, 255)`;
/// - `q = clamp(round_half_even(x / scale) + zp, 0, 255)` (a division, so
///   that vector and scalar code agree; NaN gives 0);
/// - `acc = Σ (q - zp) * w`, exact in int32;
/// - `y = acc as f32 * (x_scale * w_scale)`, then `+ bias`, then
///   `+ residual`, each rounded to f32, then the activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActQuant {
    /// Scale and zero point from each run's data, per item of the first
    /// axis.
    Dynamic,
    /// Scale and zero point fixed by calibration.
    Static { scale: f32, zero_point: u8 },
}

/// Activations that can close a fused op's epilogue.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    Relu,
    /// Clip to [min, max] (Relu6 is `Clip { min: 0, max: 6 }`).
    Clip {
        min: f32,
        max: f32,
    },
    Sigmoid,
    Tanh,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    LeakyRelu {
        alpha: f32,
    },
    Gelu {
        tanh_approx: bool,
    },
}

/// An operand of an elementwise step.
#[derive(Clone, Debug, PartialEq)]
pub enum EwArg {
    /// The node's input at this position.
    Input(usize),
    /// The result of an earlier step.
    Step(usize),
    Scalar(f32),
}

/// One step of an [`Op::Elementwise`] chain.
#[derive(Clone, Debug, PartialEq)]
pub enum EwStep {
    Unary(UnaryOp, EwArg),
    /// Arithmetic only ([`BinaryOp::is_chain_arithmetic`]).
    Binary(BinaryOp, EwArg, EwArg),
    Clip(EwArg, f32, f32),
}

//! Elementwise kernels: unary math, binary arithmetic / comparison / logic with
//! numpy broadcasting, the variadic Sum/Mean/Min/Max, Clip, Where, Cast and
//! Shrink.
//!
//! The kernels are generic over the element type through two small local
//! traits: [`Elem`] (every dtype, bool included: how to view a `TensorData` as
//! a typed slice and how to wrap a `Vec` back) and [`Num`] (the numeric dtypes:
//! wrapping integer arithmetic, checked division, conversion through f64). A
//! `dtype` match (`with_num_type!`) picks the concrete type once per call, and
//! the loops below are written once. Floating-point unary math is evaluated in
//! f64 and rounded to the tensor's type (f16 arithmetic goes through f32 like
//! numpy does), integer arithmetic wraps, and integer division by zero is an
//! error rather than a panic.

use half::{bf16, f16};

use crate::ir::lowp::{self, Minifloat};
use crate::ir::ops::util::{broadcast_shape, input, not_held, opt_input, storage_only};
use crate::ir::{BinaryOp, DType, E8M0Round, Op, Tensor, TensorData, UnaryOp, VariadicOp};
use crate::{Error, Result};

/// Evaluates Unary, Binary, Variadic, Clip, Where, Cast, IsNaN, IsInf and
/// Shrink.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let name = op.onnx_type();
    let out = match op {
        Op::Unary(u) => unary(name, u, input(name, inputs, 0)?)?,
        Op::Binary(b) => binary(name, *b, input(name, inputs, 0)?, input(name, inputs, 1)?)?,
        Op::Variadic(v) => variadic(name, *v, inputs)?,
        Op::Clip => clip(name, inputs)?,
        Op::Where => where_op(
            name,
            input(name, inputs, 0)?,
            input(name, inputs, 1)?,
            input(name, inputs, 2)?,
        )?,
        Op::Cast {
            to,
            saturate,
            round_mode,
        } => cast(input(name, inputs, 0)?, *to, *saturate, *round_mode)?,
        Op::IsNaN => classify(name, input(name, inputs, 0)?, f64::is_nan)?,
        &Op::IsInf {
            detect_negative,
            detect_positive,
        } => classify(name, input(name, inputs, 0)?, |x| {
            (detect_positive && x == f64::INFINITY) || (detect_negative && x == f64::NEG_INFINITY)
        })?,
        &Op::Shrink { lambd, bias } => shrink(name, input(name, inputs, 0)?, lambd, bias)?,
        other => return Err(Error::Internal(not_held("math", other))),
    };
    Ok(vec![out])
}

// ---------------------------------------------------------------------------
// Element traits

/// Any element type: typed access to `TensorData`.
pub(crate) trait Elem: Copy + PartialOrd + 'static {
    /// The typed slice if `d` holds this type.
    fn slice(d: &TensorData) -> Option<&[Self]>;
    /// Wraps a vector of this type.
    fn wrap(v: Vec<Self>) -> TensorData;
}

/// Numeric element types.
pub(crate) trait Num: Elem {
    const IS_FLOAT: bool;
    const SIGNED: bool;
    /// Addition; integers wrap.
    fn add(self, o: Self) -> Self;
    /// Subtraction; integers wrap.
    fn sub(self, o: Self) -> Self;
    /// Multiplication; integers wrap.
    fn mul(self, o: Self) -> Self;
    /// Division; `None` for integer division by zero. Integers truncate
    /// toward zero (C semantics, like the ONNX reference).
    fn div(self, o: Self) -> Option<Self>;
    /// Widening (or, for 64-bit integers, rounding) conversion to f64.
    fn to_f64(self) -> f64;
    /// Rust `as` conversion: rounds for floats, truncates toward zero and
    /// saturates for integers (NaN becomes 0).
    fn from_f64(v: f64) -> Self;
    /// Integer value (exact); `None` for floats.
    fn to_i128(self) -> Option<i128>;
    /// Two's complement truncation for integers, rounding for floats.
    fn from_i128(v: i128) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            fn slice(d: &TensorData) -> Option<&[Self]> {
                match d {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
        }
    };
}

impl_elem!(f32, F32);
impl_elem!(f64, F64);
impl_elem!(f16, F16);
impl_elem!(i8, I8);
impl_elem!(i16, I16);
impl_elem!(i32, I32);
impl_elem!(i64, I64);
impl_elem!(u8, U8);
impl_elem!(u16, U16);
impl_elem!(u32, U32);
impl_elem!(u64, U64);
impl_elem!(bool, Bool);
impl_elem!(bf16, BF16);

macro_rules! impl_num_int {
    ($t:ty, $signed:expr) => {
        impl Num for $t {
            const IS_FLOAT: bool = false;
            const SIGNED: bool = $signed;
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            fn div(self, o: Self) -> Option<Self> {
                if o == 0 {
                    None
                } else {
                    // MIN / -1 wraps to MIN instead of trapping.
                    Some(self.wrapping_div(o))
                }
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_i128(self) -> Option<i128> {
                Some(self as i128)
            }
            fn from_i128(v: i128) -> Self {
                v as $t
            }
            fn is_nan(self) -> bool {
                false
            }
        }
    };
}

impl_num_int!(i8, true);
impl_num_int!(i16, true);
impl_num_int!(i32, true);
impl_num_int!(i64, true);
impl_num_int!(u8, false);
impl_num_int!(u16, false);
impl_num_int!(u32, false);
impl_num_int!(u64, false);

macro_rules! impl_num_float {
    ($t:ty) => {
        impl Num for $t {
            const IS_FLOAT: bool = true;
            const SIGNED: bool = true;
            fn add(self, o: Self) -> Self {
                self + o
            }
            fn sub(self, o: Self) -> Self {
                self - o
            }
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn div(self, o: Self) -> Option<Self> {
                Some(self / o)
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_i128(self) -> Option<i128> {
                None
            }
            fn from_i128(v: i128) -> Self {
                v as $t
            }
            fn is_nan(self) -> bool {
                self.is_nan()
            }
        }
    };
}

impl_num_float!(f32);
impl_num_float!(f64);

/// f16 arithmetic widens to f32 and rounds back, exactly as numpy does.
impl Num for f16 {
    const IS_FLOAT: bool = true;
    const SIGNED: bool = true;
    fn add(self, o: Self) -> Self {
        f16::from_f32(self.to_f32() + o.to_f32())
    }
    fn sub(self, o: Self) -> Self {
        f16::from_f32(self.to_f32() - o.to_f32())
    }
    fn mul(self, o: Self) -> Self {
        f16::from_f32(self.to_f32() * o.to_f32())
    }
    fn div(self, o: Self) -> Option<Self> {
        Some(f16::from_f32(self.to_f32() / o.to_f32()))
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn to_i128(self) -> Option<i128> {
        None
    }
    fn from_i128(v: i128) -> Self {
        f16::from_f64(v as f64)
    }
    fn is_nan(self) -> bool {
        f16::is_nan(self)
    }
}

/// bf16 arithmetic widens to f32 and rounds back (round to nearest even).
impl Num for bf16 {
    const IS_FLOAT: bool = true;
    const SIGNED: bool = true;
    fn add(self, o: Self) -> Self {
        bf16::from_f32(self.to_f32() + o.to_f32())
    }
    fn sub(self, o: Self) -> Self {
        bf16::from_f32(self.to_f32() - o.to_f32())
    }
    fn mul(self, o: Self) -> Self {
        bf16::from_f32(self.to_f32() * o.to_f32())
    }
    fn div(self, o: Self) -> Option<Self> {
        Some(bf16::from_f32(self.to_f32() / o.to_f32()))
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn to_i128(self) -> Option<i128> {
        None
    }
    fn from_i128(v: i128) -> Self {
        bf16::from_f64(v as f64)
    }
    fn is_nan(self) -> bool {
        bf16::is_nan(self)
    }
}

/// Binds `$T` to the Rust type of a numeric `DType` and evaluates `$body`;
/// evaluates `$bool` for `DType::Bool`. Storage-only dtypes return the
/// [`storage_only`] error for op `$op` from the enclosing function.
macro_rules! with_num_type {
    ($op:expr, $dtype:expr, $T:ident => $body:expr, bool => $bool:expr) => {
        match $dtype {
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            d @ (DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0
            | DType::F4E2M1
            | DType::I4
            | DType::U4
            | DType::I2
            | DType::U2) => return Err(storage_only($op, d)),
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            DType::I8 => {
                type $T = i8;
                $body
            }
            DType::I16 => {
                type $T = i16;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::U16 => {
                type $T = u16;
                $body
            }
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::U64 => {
                type $T = u64;
                $body
            }
            DType::Bool => $bool,
        }
    };
}
pub(crate) use with_num_type;

/// The typed elements of `t`, or an error naming the expected dtype.
fn typed<'a, T: Elem>(op: &'static str, what: &str, t: &'a Tensor, want: DType) -> Result<&'a [T]> {
    T::slice(t.data()).ok_or_else(|| {
        Error::op(
            op,
            format!(
                "{what} must have dtype {want} (like the first input), got {}",
                t.dtype()
            ),
        )
    })
}

/// NaN-propagating maximum (numpy `maximum`).
pub(crate) fn nan_max<T: Num>(a: T, b: T) -> T {
    if a.is_nan() {
        a
    } else if b.is_nan() || b > a {
        b
    } else {
        a
    }
}

/// NaN-propagating minimum (numpy `minimum`).
pub(crate) fn nan_min<T: Num>(a: T, b: T) -> T {
    if a.is_nan() {
        a
    } else if b.is_nan() || b < a {
        b
    } else {
        a
    }
}

fn tensor(op: &'static str, shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    Tensor::new(shape, data).map_err(|e| Error::op(op, format!("internal shape error: {e}")))
}

/// Checks that a broadcast output shape fits the memory budget: its
/// elements (at most 8 bytes each) and the index maps the kernels build.
fn check_size(op: &'static str, shape: &[usize]) -> Result<()> {
    crate::limits::check_shape(
        || format!("{op} output of shape {shape:?}"),
        shape,
        8 + 2 * std::mem::size_of::<usize>(),
    )
    .map(|_| ())
}

/// The broadcast of all `shapes`, with a clear error when incompatible.
fn broadcast_all(op: &'static str, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for s in shapes {
        out = broadcast_shape(&out, s).ok_or_else(|| {
            Error::op(
                op,
                format!(
                    "input shapes {:?} cannot be broadcast together",
                    shapes.iter().map(|s| s.to_vec()).collect::<Vec<_>>()
                ),
            )
        })?;
    }
    check_size(op, &out)?;
    Ok(out)
}

/// For each element of `out_shape`, the flat index of the `in_shape` element
/// broadcast onto it. Empty outputs short-cut so that no stride products of
/// shapes like `[0, 2^40, 2^40]` are ever formed.
fn index_map(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    if out_shape.contains(&0) {
        Vec::new()
    } else {
        crate::ir::ops::util::broadcast_index_map(in_shape, out_shape)
    }
}

/// Applies `f` to every pair of broadcast elements of `a` and `b`.
fn zip2<A: Copy, B: Copy, R>(
    op: &'static str,
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    mut f: impl FnMut(A, B) -> Result<R>,
) -> Result<(Vec<usize>, Vec<R>)> {
    let shape = broadcast_all(op, &[ash, bsh])?;
    let ma = index_map(ash, &shape);
    let mb = index_map(bsh, &shape);
    let out = ma
        .iter()
        .zip(&mb)
        .map(|(&i, &j)| f(a[i], b[j]))
        .collect::<Result<Vec<R>>>()?;
    Ok((shape, out))
}

// ---------------------------------------------------------------------------
// Unary

/// Error function, accurate to a few ulp in f64. For |x| < 3 it sums the
/// all-positive series `erf(x) = 2/sqrt(pi) exp(-x^2) sum 2^n x^(2n+1) /
/// (1*3*..*(2n+1))` (no cancellation); beyond, it evaluates the continued
/// fraction of erfc backwards.
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 3.0 {
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
    } else if ax < 27.0 {
        // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + (2/2)/(x + (3/2)/(x + ..))))
        let mut t = ax;
        for n in (1..=80).rev() {
            t = ax + (n as f64 / 2.0) / t;
        }
        1.0 - (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * t)
    } else {
        1.0
    };
    r.copysign(x)
}

/// A floating-point unary op on one element, computed in f64 (the caller
/// rounds to the tensor's type). Shared with the Elementwise chain kernel so a
/// fused chain is bit-identical to the standalone op.
pub(crate) fn unary_float(u: &UnaryOp, x: f64) -> f64 {
    match u {
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Erf => erf(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => {
            // Stable for large |x|.
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        }
        UnaryOp::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x // 0, -0 and NaN stay
            }
        }
        UnaryOp::LeakyRelu { alpha } => {
            if x < 0.0 {
                *alpha as f64 * x
            } else {
                x
            }
        }
        UnaryOp::Elu { alpha } => {
            if x < 0.0 {
                *alpha as f64 * (x.exp() - 1.0)
            } else {
                x
            }
        }
        UnaryOp::HardSigmoid { alpha, beta } => (*alpha as f64 * x + *beta as f64).clamp(0.0, 1.0),
        UnaryOp::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        UnaryOp::Gelu { tanh_approx: false } => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        UnaryOp::Gelu { tanh_approx: true } => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tan => x.tan(),
        UnaryOp::Asin => x.asin(),
        UnaryOp::Acos => x.acos(),
        UnaryOp::Atan => x.atan(),
        UnaryOp::Sinh => x.sinh(),
        UnaryOp::Cosh => x.cosh(),
        UnaryOp::Asinh => x.asinh(),
        UnaryOp::Acosh => x.acosh(),
        UnaryOp::Atanh => x.atanh(),
        UnaryOp::Round => x.round_ties_even(),
        // Stable for large |x|: max(x, 0) + ln(1 + e^-|x|).
        UnaryOp::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        UnaryOp::Softsign => x / (1.0 + x.abs()),
        // Not is bool-only and rejected before getting here.
        UnaryOp::Not => f64::NAN,
    }
}

/// IsNaN / IsInf: a bool per element of a floating-point input.
fn classify(op: &'static str, x: &Tensor, test: impl Fn(f64) -> bool) -> Result<Tensor> {
    if !x.dtype().is_float() {
        return Err(Error::op(
            op,
            format!("input must be floating point, got {}", x.dtype()),
        ));
    }
    let v: Vec<bool> = x.to_f64_vec().into_iter().map(test).collect();
    tensor(op, x.shape().to_vec(), TensorData::Bool(v))
}

fn unary(op: &'static str, u: &UnaryOp, x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    let shape = x.shape().to_vec();
    if let UnaryOp::Not = u {
        let v = x
            .as_bool()
            .ok_or_else(|| Error::op(op, format!("input must be bool, got {dt}")))?;
        return tensor(op, shape, TensorData::Bool(v.iter().map(|b| !b).collect()));
    }
    let data = with_num_type!(op, dt, T => {
        let v = typed::<T>(op, "input", x, dt)?;
        if T::IS_FLOAT {
            T::wrap(v.iter().map(|&e| T::from_f64(unary_float(u, e.to_f64()))).collect())
        } else {
            unary_int::<T>(op, u, v, dt)?
        }
    }, bool => return Err(Error::op(op, "bool input is not supported")));
    tensor(op, shape, data)
}

/// Shrink, in f64 (exact for every f32 and small integer) rounded back to
/// the input's type, as ONNX's reference computes it.
fn shrink(op: &'static str, x: &Tensor, lambd: f32, bias: f32) -> Result<Tensor> {
    let dt = x.dtype();
    let (lambd, bias) = (lambd as f64, bias as f64);
    let data = with_num_type!(op, dt, T => {
        let v = typed::<T>(op, "input", x, dt)?;
        T::wrap(v.iter().map(|&e| {
            let x = e.to_f64();
            T::from_f64(if x < -lambd {
                x + bias
            } else if x > lambd {
                x - bias
            } else {
                0.0
            })
        }).collect())
    }, bool => return Err(Error::op(op, "bool input is not supported")));
    tensor(op, x.shape().to_vec(), data)
}

fn unary_int<T: Num>(op: &'static str, u: &UnaryOp, v: &[T], dt: DType) -> Result<TensorData> {
    let f: fn(i128) -> i128 = match u {
        UnaryOp::Neg if T::SIGNED => |i| -i,
        UnaryOp::Abs => |i| i.abs(),
        UnaryOp::Sign => |i| i.signum(),
        UnaryOp::Relu => |i| i.max(0),
        _ => {
            return Err(Error::op(
                op,
                format!("integer input ({dt}) is not supported, only floating point"),
            ))
        }
    };
    // Invariant: to_i128 is Some for every integer type (T::IS_FLOAT is false).
    Ok(T::wrap(
        v.iter()
            .map(|&e| T::from_i128(f(e.to_i128().unwrap_or(0))))
            .collect(),
    ))
}

// ---------------------------------------------------------------------------
// Binary

fn binary(op: &'static str, b: BinaryOp, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    match b {
        BinaryOp::Pow => return pow(op, x, y),
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
            let (xa, ya) = match (x.as_bool(), y.as_bool()) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(Error::op(
                        op,
                        format!("inputs must be bool, got {} and {}", dt, y.dtype()),
                    ))
                }
            };
            let (shape, out) = zip2(op, xa, x.shape(), ya, y.shape(), |p, q| {
                Ok(match b {
                    BinaryOp::And => p && q,
                    BinaryOp::Or => p || q,
                    _ => p != q,
                })
            })?;
            return tensor(op, shape, TensorData::Bool(out));
        }
        _ => {}
    }
    if dt != y.dtype() {
        return Err(Error::op(
            op,
            format!(
                "inputs must have the same dtype, got {} and {}",
                dt,
                y.dtype()
            ),
        ));
    }
    if b.returns_bool() {
        let (shape, out) = with_num_type!(op, dt, T => compare::<T>(op, b, x, y)?, bool => {
            if b != BinaryOp::Equal {
                return Err(Error::op(op, "bool inputs are only supported by Equal"));
            }
            compare::<bool>(op, b, x, y)?
        });
        return tensor(op, shape, TensorData::Bool(out));
    }
    let (shape, data) = with_num_type!(op, dt, T => arith::<T>(op, b, x, y)?,
        bool => return Err(Error::op(op, "bool inputs are not supported")));
    tensor(op, shape, data)
}

fn compare<T: Elem>(
    op: &'static str,
    b: BinaryOp,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Vec<usize>, Vec<bool>)> {
    let dt = x.dtype();
    let xa = typed::<T>(op, "A", x, dt)?;
    let ya = typed::<T>(op, "B", y, dt)?;
    zip2(op, xa, x.shape(), ya, y.shape(), |p, q| {
        Ok(match b {
            BinaryOp::Equal => p == q,
            BinaryOp::Greater => p > q,
            BinaryOp::Less => p < q,
            BinaryOp::GreaterOrEqual => p >= q,
            _ => p <= q,
        })
    })
}

fn arith<T: Num>(
    op: &'static str,
    b: BinaryOp,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Vec<usize>, TensorData)> {
    let dt = x.dtype();
    let xa = typed::<T>(op, "A", x, dt)?;
    let ya = typed::<T>(op, "B", y, dt)?;
    let (shape, out) = zip2(op, xa, x.shape(), ya, y.shape(), |p, q| match b {
        BinaryOp::Add => Ok(p.add(q)),
        BinaryOp::Sub => Ok(p.sub(q)),
        BinaryOp::Mul => Ok(p.mul(q)),
        BinaryOp::Mod | BinaryOp::FMod => remainder(p, q, b == BinaryOp::Mod)
            .ok_or_else(|| Error::op(op, "integer modulo by zero")),
        _ => p
            .div(q)
            .ok_or_else(|| Error::op(op, "integer division by zero")),
    })?;
    Ok((shape, T::wrap(out)))
}

/// `p mod q`: with the sign of `p` (C's fmod), or with the sign of `q` when
/// `floored` (Python's `%`, ONNX Mod's default). `None` for an integer
/// modulo by zero.
fn remainder<T: Num>(p: T, q: T, floored: bool) -> Option<T> {
    match (p.to_i128(), q.to_i128()) {
        (Some(a), Some(b)) => {
            let r = a.checked_rem(b)?;
            let r = if floored && r != 0 && (r < 0) != (b < 0) {
                r + b
            } else {
                r
            };
            Some(T::from_i128(r))
        }
        _ => {
            let (a, b) = (p.to_f64(), q.to_f64());
            let r = a % b;
            let r = if floored && r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            };
            Some(T::from_f64(r))
        }
    }
}

/// Exponent values of Pow: exact integers or floats.
enum Exponents {
    Int(Vec<i128>),
    Float(Vec<f64>),
}

/// `base^e` for integers with wrapping multiplication (exponentiation by
/// squaring). Negative exponents give the truncated value of `1 / base^-e`.
fn int_pow(base: i128, e: i128) -> i128 {
    if e < 0 {
        return match base {
            1 => 1,
            -1 => {
                if e % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    let (mut result, mut b, mut e) = (1i128, base, e);
    while e > 0 {
        if e & 1 == 1 {
            result = result.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    result
}

fn pow(op: &'static str, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let exps = match y.dtype() {
        DType::Bool => return Err(Error::op(op, "exponent must be numeric, got bool")),
        d if d.is_float() => Exponents::Float(y.to_f64_vec()),
        _ => Exponents::Int(with_num_type!(op, y.dtype(), T => {
            typed::<T>(op, "exponent", y, y.dtype())?.iter().map(|e| e.to_i128().unwrap_or(0)).collect()
        }, bool => Vec::new())),
    };
    let dt = x.dtype();
    let (shape, data) = with_num_type!(op, dt, T => {
        let base = typed::<T>(op, "base", x, dt)?;
        let (shape, out) = match &exps {
            Exponents::Float(e) => zip2(op, base, x.shape(), e, y.shape(), |b, e| {
                Ok(T::from_f64(b.to_f64().powf(e)))
            })?,
            Exponents::Int(e) => zip2(op, base, x.shape(), e, y.shape(), |b, e| {
                Ok(match b.to_i128() {
                    Some(bi) => T::from_i128(int_pow(bi, e)),
                    None => T::from_f64(b.to_f64().powf(e as f64)),
                })
            })?,
        };
        (shape, T::wrap(out))
    }, bool => return Err(Error::op(op, "base must be numeric, got bool")));
    tensor(op, shape, data)
}

// ---------------------------------------------------------------------------
// Variadic, Clip, Where

fn variadic(op: &'static str, v: VariadicOp, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let ts: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
    if ts.is_empty() || ts.len() != inputs.len() {
        return Err(Error::op(op, "needs one or more inputs, none omitted"));
    }
    let dt = ts[0].dtype();
    let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
    let shape = broadcast_all(op, &shapes)?;
    let data = with_num_type!(op, dt, T => {
        if v == VariadicOp::Mean && !T::IS_FLOAT {
            return Err(Error::op(op, format!("Mean needs floating point inputs, got {dt}")));
        }
        let mut acc: Vec<T> = Vec::new();
        for (k, t) in ts.iter().enumerate() {
            let vals = typed::<T>(op, &format!("input {k}"), t, dt)?;
            let map = index_map(t.shape(), &shape);
            if k == 0 {
                acc = map.iter().map(|&i| vals[i]).collect();
                continue;
            }
            for (a, &i) in acc.iter_mut().zip(&map) {
                let e = vals[i];
                *a = match v {
                    VariadicOp::Sum | VariadicOp::Mean => a.add(e),
                    VariadicOp::Min => nan_min(*a, e),
                    VariadicOp::Max => nan_max(*a, e),
                };
            }
        }
        if v == VariadicOp::Mean {
            let n = T::from_f64(ts.len() as f64);
            // Float division never fails.
            acc = acc.into_iter().map(|a| a.div(n).unwrap_or(a)).collect();
        }
        T::wrap(acc)
    }, bool => return Err(Error::op(op, "bool inputs are not supported")));
    tensor(op, shape, data)
}

/// The single value of an optional Clip bound (absent or empty: no bound).
fn clip_bound<T: Num>(
    op: &'static str,
    what: &str,
    t: Option<&Tensor>,
    dt: DType,
) -> Result<Option<T>> {
    let Some(t) = t else { return Ok(None) };
    if t.numel() == 0 {
        return Ok(None);
    }
    if t.numel() != 1 {
        return Err(Error::op(
            op,
            format!("{what} must be a scalar, got shape {:?}", t.shape()),
        ));
    }
    if t.dtype() == dt {
        return Ok(Some(typed::<T>(op, what, t, dt)?[0]));
    }
    // A bound of another numeric dtype (e.g. an f32 constant made from the
    // opset < 11 attributes for an f16 input) converts to the input's dtype.
    match t.dtype() {
        DType::Bool => Err(Error::op(op, format!("{what} must be numeric, got bool"))),
        _ => Ok(t.to_f64_vec().first().map(|&v| T::from_f64(v))),
    }
}

fn clip(op: &'static str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let x = input(op, inputs, 0)?;
    let dt = x.dtype();
    let data = with_num_type!(op, dt, T => {
        let v = typed::<T>(op, "input", x, dt)?;
        let lo = clip_bound::<T>(op, "min", opt_input(inputs, 1), dt)?;
        let hi = clip_bound::<T>(op, "max", opt_input(inputs, 2), dt)?;
        // numpy clip: minimum(maximum(x, lo), hi); NaN stays NaN.
        T::wrap(v.iter().map(|&e| {
            let mut y = e;
            if let Some(l) = lo {
                if y < l { y = l; }
            }
            if let Some(h) = hi {
                if y > h { y = h; }
            }
            y
        }).collect())
    }, bool => return Err(Error::op(op, "bool input is not supported")));
    tensor(op, x.shape().to_vec(), data)
}

fn where_op(op: &'static str, c: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let cond = c
        .as_bool()
        .ok_or_else(|| Error::op(op, format!("condition must be bool, got {}", c.dtype())))?;
    let dt = x.dtype();
    if y.dtype() != dt {
        return Err(Error::op(
            op,
            format!(
                "X and Y must have the same dtype, got {} and {}",
                dt,
                y.dtype()
            ),
        ));
    }
    let shape = broadcast_all(op, &[c.shape(), x.shape(), y.shape()])?;
    let mc = index_map(c.shape(), &shape);
    let mx = index_map(x.shape(), &shape);
    let my = index_map(y.shape(), &shape);
    fn pick<T: Elem>(
        cond: &[bool],
        a: &[T],
        b: &[T],
        mc: &[usize],
        mx: &[usize],
        my: &[usize],
    ) -> TensorData {
        T::wrap(
            (0..mc.len())
                .map(|k| if cond[mc[k]] { a[mx[k]] } else { b[my[k]] })
                .collect(),
        )
    }
    let data = with_num_type!(op, dt, T => pick::<T>(cond, typed(op, "X", x, dt)?, typed(op, "Y", y, dt)?, &mc, &mx, &my),
        bool => pick::<bool>(cond, typed(op, "X", x, dt)?, typed(op, "Y", y, dt)?, &mc, &mx, &my));
    tensor(op, shape, data)
}

// ---------------------------------------------------------------------------
// Cast

/// One source element, held exactly.
#[derive(Clone, Copy)]
enum Scalar {
    I(i128),
    F(f64),
    B(bool),
}

fn scalars(t: &Tensor) -> Vec<Scalar> {
    let floats = |t: &Tensor| t.to_f64_vec().into_iter().map(Scalar::F).collect();
    match t.data() {
        TensorData::Bool(v) => v.iter().map(|&b| Scalar::B(b)).collect(),
        TensorData::F32(v) => v.iter().map(|&x| Scalar::F(x as f64)).collect(),
        TensorData::F64(v) => v.iter().map(|&x| Scalar::F(x)).collect(),
        TensorData::F16(v) => v.iter().map(|x| Scalar::F(x.to_f64())).collect(),
        TensorData::I8(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::I16(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::I32(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::I64(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::U8(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::U16(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::U32(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::U64(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::I4(v) | TensorData::I2(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        TensorData::U4(v) | TensorData::U2(v) => v.iter().map(|&x| Scalar::I(x as i128)).collect(),
        // Decoded exactly (every value of these formats is an f32).
        TensorData::BF16(_)
        | TensorData::F8E4M3FN(_)
        | TensorData::F8E4M3FNUZ(_)
        | TensorData::F8E5M2(_)
        | TensorData::F8E5M2FNUZ(_)
        | TensorData::F8E8M0(_)
        | TensorData::F4E2M1(_) => floats(t),
    }
}

fn cast_to<T: Num>(s: &[Scalar]) -> TensorData {
    T::wrap(
        s.iter()
            .map(|&e| match e {
                Scalar::I(i) => T::from_i128(i),
                Scalar::F(f) => T::from_f64(f),
                Scalar::B(b) => T::from_i128(b as i128),
            })
            .collect(),
    )
}

/// Each element as f64 (bool as 0/1; integers past 2^53 rounded, which only
/// matters for targets far narrower anyway).
fn as_f64(e: Scalar) -> f64 {
    match e {
        Scalar::I(i) => i as f64,
        Scalar::F(f) => f,
        Scalar::B(b) => b as u8 as f64,
    }
}

/// Cast: integers wrap (two's complement), floats to integers truncate toward
/// zero and saturate (NaN -> 0), anything to bool is `!= 0`, bool is 0/1.
/// Floats round to nearest even. The low-precision targets follow the ONNX
/// reference: float8 clamps out-of-range values and infinities to its largest
/// finite value when `saturate` (else infinity or NaN, see
/// [`Minifloat::encode`]), float4 always clamps, float8 e8m0 rounds the f32
/// exponent by `round` ([`lowp::e8m0_encode`]), and the 4- and 2-bit integers
/// wrap, floats being truncated toward zero first (non-finite values give 0),
/// as `ml_dtypes` does.
fn cast(x: &Tensor, to: DType, saturate: bool, round: E8M0Round) -> Result<Tensor> {
    let s = scalars(x);
    let data = match to {
        // i128 -> f32 directly (one rounding) rather than through f64.
        DType::F32 => TensorData::F32(
            s.iter()
                .map(|&e| match e {
                    Scalar::I(i) => i as f32,
                    Scalar::F(f) => f as f32,
                    Scalar::B(b) => b as u8 as f32,
                })
                .collect(),
        ),
        DType::Bool => TensorData::Bool(
            s.iter()
                .map(|&e| match e {
                    Scalar::I(i) => i != 0,
                    Scalar::F(f) => f != 0.0,
                    Scalar::B(b) => b,
                })
                .collect(),
        ),
        DType::BF16 => {
            TensorData::BF16(s.iter().map(|&e| lowp::bf16_from_f64(as_f64(e))).collect())
        }
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F4E2M1 => {
            let f = Minifloat::of(to)
                .ok_or_else(|| Error::Internal(format!("{to} has no minifloat format")))?;
            let bits: Vec<u8> = s.iter().map(|&e| f.encode(as_f64(e), saturate)).collect();
            match to {
                DType::F8E4M3FN => TensorData::F8E4M3FN(bits),
                DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(bits),
                DType::F8E5M2 => TensorData::F8E5M2(bits),
                DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(bits),
                _ => TensorData::F4E2M1(bits),
            }
        }
        // The reference converts to f32 first.
        DType::F8E8M0 => TensorData::F8E8M0(
            s.iter()
                .map(|&e| {
                    let f = match e {
                        Scalar::I(i) => i as f32,
                        Scalar::F(f) => f as f32,
                        Scalar::B(b) => b as u8 as f32,
                    };
                    lowp::e8m0_encode(f, saturate, round)
                })
                .collect(),
        ),
        DType::I4 | DType::U4 | DType::I2 | DType::U2 => {
            let vals = s.iter().map(|&e| match e {
                Scalar::I(i) => lowp::wrap_small_int(to, i),
                Scalar::F(f) => lowp::small_int_from_f64(to, f),
                Scalar::B(b) => b as i128,
            });
            // wrap_small_int keeps the value in the type's range, so the
            // narrowing casts are exact.
            match to {
                DType::I4 => TensorData::I4(vals.map(|v| v as i8).collect()),
                DType::U4 => TensorData::U4(vals.map(|v| v as u8).collect()),
                DType::I2 => TensorData::I2(vals.map(|v| v as i8).collect()),
                _ => TensorData::U2(vals.map(|v| v as u8).collect()),
            }
        }
        other => {
            with_num_type!("Cast", other, T => cast_to::<T>(&s), bool => TensorData::Bool(Vec::new()))
        }
    };
    tensor("Cast", x.shape().to_vec(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! assert_data {
        ($t:expr, $d:expr) => {{
            let t: &Tensor = &$t;
            assert!(t.data() == &$d, "got {:?}", t);
        }};
    }

    fn cast_default(x: &Tensor, to: DType) -> Tensor {
        cast(x, to, true, E8M0Round::Up).unwrap()
    }

    fn t_f32(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }
    fn t(shape: &[usize], d: TensorData) -> Tensor {
        Tensor::new(shape.to_vec(), d).unwrap()
    }
    fn run(op: Op, ins: &[&Tensor]) -> Result<Tensor> {
        let v: Vec<Option<&Tensor>> = ins.iter().map(|t| Some(*t)).collect();
        eval(&op, &v).map(|mut o| o.remove(0))
    }
    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()) || (x.is_nan() && y.is_nan()),
                "{a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn erf_matches_python_math_erf() {
        // Values from python math.erf.
        let cases = [
            (0.0, 0.0),
            (1e-8, 1.1283791670955126e-08),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (-1.5, -0.9661051464753108),
            (2.0, 0.9953222650189527),
            (2.9, 0.9999589021219005),
            (3.0, 0.9999779095030014),
            (3.5, 0.9999992569016276),
            (5.0, 0.9999999999984626),
            (-7.0, -1.0),
        ];
        for (x, want) in cases {
            let got = erf(x);
            assert!(
                (got - want).abs() <= 1e-15 + 1e-13 * want.abs(),
                "erf({x}) = {got}, want {want}"
            );
        }
        assert!(erf(f64::NAN).is_nan());
    }

    #[test]
    fn unary_float_ops() {
        let x = t_f32(&[4], &[-2.0, -0.5, 0.0, 3.0]);
        let y = run(Op::Unary(UnaryOp::Relu), &[&x]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.0, 0.0, 0.0, 3.0]);
        let y = run(Op::Unary(UnaryOp::LeakyRelu { alpha: 0.1 }), &[&x]).unwrap();
        close(y.as_f32().unwrap(), &[-0.2, -0.05, 0.0, 3.0], 1e-6);
        let y = run(Op::Unary(UnaryOp::HardSwish), &[&x]).unwrap();
        close(
            y.as_f32().unwrap(),
            &[-0.33333334, -0.20833333, 0.0, 3.0],
            1e-6,
        );
        let y = run(Op::Unary(UnaryOp::Sign), &[&x]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[-1.0, -1.0, 0.0, 1.0]);
        let y = run(Op::Unary(UnaryOp::Gelu { tanh_approx: false }), &[&x]).unwrap();
        // torch.nn.functional.gelu
        close(
            y.as_f32().unwrap(),
            &[-0.04550028, -0.15426877, 0.0, 2.9959497],
            1e-6,
        );
        let y = run(Op::Unary(UnaryOp::Gelu { tanh_approx: true }), &[&x]).unwrap();
        close(
            y.as_f32().unwrap(),
            &[-0.04540229, -0.154286, 0.0, 2.9963627],
            1e-6,
        );
        let y = run(Op::Unary(UnaryOp::Elu { alpha: 2.0 }), &[&x]).unwrap();
        close(
            y.as_f32().unwrap(),
            &[-1.7293294, -0.7869387, 0.0, 3.0],
            1e-6,
        );
        let y = run(
            Op::Unary(UnaryOp::HardSigmoid {
                alpha: 0.5,
                beta: 0.6,
            }),
            &[&x],
        )
        .unwrap();
        close(y.as_f32().unwrap(), &[0.0, 0.35, 0.6, 1.0], 1e-6);
        let y = run(
            Op::Unary(UnaryOp::Sigmoid),
            &[&t_f32(&[2], &[-1000.0, 0.0])],
        )
        .unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.0, 0.5]);
    }

    #[test]
    fn unary_f16_f64_and_ints() {
        let x = t(
            &[2],
            TensorData::F16(vec![f16::from_f32(4.0), f16::from_f32(0.25)]),
        );
        let y = run(Op::Unary(UnaryOp::Sqrt), &[&x]).unwrap();
        assert_data!(
            y,
            TensorData::F16(vec![f16::from_f32(2.0), f16::from_f32(0.5)])
        );
        let x = t(&[1], TensorData::F64(vec![0.5]));
        let y = run(Op::Unary(UnaryOp::Erf), &[&x]).unwrap();
        match y.data() {
            TensorData::F64(v) => assert!((v[0] - 0.5204998778130465).abs() < 1e-15),
            _ => panic!("erf of f64 must be f64, got {y:?}"),
        }
        let x = t(&[3], TensorData::I8(vec![-128, -3, 5]));
        let y = run(Op::Unary(UnaryOp::Abs), &[&x]).unwrap();
        assert_data!(y, TensorData::I8(vec![-128, 3, 5]));
        let y = run(Op::Unary(UnaryOp::Neg), &[&x]).unwrap();
        assert_data!(y, TensorData::I8(vec![-128, 3, -5]));
        let y = run(Op::Unary(UnaryOp::Sign), &[&x]).unwrap();
        assert_data!(y, TensorData::I8(vec![-1, -1, 1]));
        let y = run(Op::Unary(UnaryOp::Relu), &[&x]).unwrap();
        assert_data!(y, TensorData::I8(vec![0, 0, 5]));
        let u = t(&[1], TensorData::U8(vec![7]));
        assert!(run(Op::Unary(UnaryOp::Neg), &[&u]).is_err());
        assert!(run(Op::Unary(UnaryOp::Exp), &[&x]).is_err());
        let b = t(&[2], TensorData::Bool(vec![true, false]));
        let y = run(Op::Unary(UnaryOp::Not), &[&b]).unwrap();
        assert_data!(y, TensorData::Bool(vec![false, true]));
        assert!(run(Op::Unary(UnaryOp::Not), &[&x]).is_err());
    }

    #[test]
    fn binary_broadcasting() {
        let a = t_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = t_f32(&[3], &[10., 20., 30.]);
        let y = run(Op::Binary(BinaryOp::Add), &[&a, &b]).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_f32().unwrap(), &[11., 22., 33., 14., 25., 36.]);
        let c = t_f32(&[2, 1], &[2., 4.]);
        let y = run(Op::Binary(BinaryOp::Div), &[&a, &c]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.5, 1., 1.5, 1., 1.25, 1.5]);
        let s = t_f32(&[], &[3.0]);
        let y = run(Op::Binary(BinaryOp::Greater), &[&a, &s]).unwrap();
        assert_data!(
            y,
            TensorData::Bool(vec![false, false, false, true, true, true])
        );
        // [2,1] x [1,3] -> [2,3]
        let r = t_f32(&[1, 3], &[1., 2., 3.]);
        let y = run(Op::Binary(BinaryOp::Sub), &[&c, &r]).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_f32().unwrap(), &[1., 0., -1., 3., 2., 1.]);
        // Empty broadcast.
        let e = t_f32(&[0, 3], &[]);
        let y = run(Op::Binary(BinaryOp::Mul), &[&e, &b]).unwrap();
        assert_eq!(y.shape(), &[0, 3]);
        // Incompatible shapes and dtypes.
        assert!(run(Op::Binary(BinaryOp::Add), &[&a, &t_f32(&[2], &[1., 2.])]).is_err());
        let i = t(&[1], TensorData::I32(vec![1]));
        assert!(run(Op::Binary(BinaryOp::Add), &[&a, &i]).is_err());
    }

    #[test]
    fn hostile_shapes() {
        let huge = t_f32(&[0, 1 << 40, 1 << 40], &[]);
        let s = t_f32(&[], &[1.0]);
        let y = run(Op::Binary(BinaryOp::Add), &[&huge, &s]).unwrap();
        assert_eq!(y.shape(), huge.shape());
        let c = t(&[1], TensorData::Bool(vec![true]));
        let y = run(Op::Where, &[&c, &huge, &s]).unwrap();
        assert_eq!(y.shape(), huge.shape());
        // A broadcast that would not fit in memory is an error.
        let a = t_f32(&[1 << 20, 1], &vec![0.0; 1 << 20]);
        let b = t_f32(&[1, 1 << 20], &vec![0.0; 1 << 20]);
        assert!(run(Op::Binary(BinaryOp::Mul), &[&a, &b]).is_err());
    }

    #[test]
    fn integer_arithmetic() {
        let a = t(&[4], TensorData::I32(vec![-3, 3, -3, 3]));
        let b = t(&[4], TensorData::I32(vec![2, 2, -2, -2]));
        let y = run(Op::Binary(BinaryOp::Div), &[&a, &b]).unwrap();
        assert_data!(y, TensorData::I32(vec![-1, 1, 1, -1]));
        let z = t(&[1], TensorData::I32(vec![0]));
        assert!(run(Op::Binary(BinaryOp::Div), &[&a, &z]).is_err());
        let u = t(&[2], TensorData::U8(vec![250, 7]));
        let v = t(&[2], TensorData::U8(vec![10, 2]));
        let y = run(Op::Binary(BinaryOp::Add), &[&u, &v]).unwrap();
        assert_data!(y, TensorData::U8(vec![4, 9]));
        let y = run(Op::Binary(BinaryOp::Div), &[&u, &v]).unwrap();
        assert_data!(y, TensorData::U8(vec![25, 3]));
        let y = run(Op::Binary(BinaryOp::Sub), &[&v, &u]).unwrap();
        assert_data!(y, TensorData::U8(vec![16, 251]));
        let m = t(&[1], TensorData::I8(vec![i8::MIN]));
        let n = t(&[1], TensorData::I8(vec![-1]));
        let y = run(Op::Binary(BinaryOp::Div), &[&m, &n]).unwrap();
        assert_data!(y, TensorData::I8(vec![i8::MIN]));
        let y = run(Op::Binary(BinaryOp::Less), &[&u, &v]).unwrap();
        assert_data!(y, TensorData::Bool(vec![false, false]));
    }

    #[test]
    fn pow_mixed_types() {
        // test_pow_types_int64_float32: [1,2,3]^[4,5,6] = [1,32,729] as int64.
        let x = t(&[3], TensorData::I64(vec![1, 2, 3]));
        let y = t_f32(&[3], &[4., 5., 6.]);
        let z = run(Op::Binary(BinaryOp::Pow), &[&x, &y]).unwrap();
        assert_data!(z, TensorData::I64(vec![1, 32, 729]));
        let x = t_f32(&[3], &[1., 2., 3.]);
        let y = t(&[3], TensorData::U32(vec![4, 5, 6]));
        let z = run(Op::Binary(BinaryOp::Pow), &[&x, &y]).unwrap();
        assert_eq!(z.as_f32().unwrap(), &[1., 32., 729.]);
        let x = t(&[3], TensorData::I32(vec![2, -1, 5]));
        let y = t(&[3], TensorData::I32(vec![31, -3, -1]));
        let z = run(Op::Binary(BinaryOp::Pow), &[&x, &y]).unwrap();
        assert_data!(z, TensorData::I32(vec![i32::MIN, -1, 0]));
        let x = t_f32(&[2], &[4., -8.]);
        let y = t_f32(&[], &[0.5]);
        let z = run(Op::Binary(BinaryOp::Pow), &[&x, &y]).unwrap();
        assert_eq!(z.as_f32().unwrap()[0], 2.0);
        assert!(z.as_f32().unwrap()[1].is_nan());
    }

    #[test]
    fn logic_and_equal() {
        let a = t(&[2, 2], TensorData::Bool(vec![true, true, false, false]));
        let b = t(&[2], TensorData::Bool(vec![true, false]));
        let y = run(Op::Binary(BinaryOp::Xor), &[&a, &b]).unwrap();
        assert_data!(y, TensorData::Bool(vec![false, true, true, false]));
        let y = run(Op::Binary(BinaryOp::And), &[&a, &b]).unwrap();
        assert_data!(y, TensorData::Bool(vec![true, false, false, false]));
        let y = run(Op::Binary(BinaryOp::Equal), &[&a, &b]).unwrap();
        assert_data!(y, TensorData::Bool(vec![true, false, false, true]));
        assert!(run(Op::Binary(BinaryOp::Greater), &[&a, &b]).is_err());
        let f = t_f32(&[2], &[f32::NAN, 1.0]);
        let y = run(Op::Binary(BinaryOp::Equal), &[&f, &f]).unwrap();
        assert_data!(y, TensorData::Bool(vec![false, true]));
        let y = run(
            Op::Binary(BinaryOp::GreaterOrEqual),
            &[&f, &t_f32(&[], &[1.0])],
        )
        .unwrap();
        assert_data!(y, TensorData::Bool(vec![false, true]));
        assert!(run(Op::Binary(BinaryOp::Or), &[&f, &f]).is_err());
    }

    #[test]
    fn variadic_ops() {
        let a = t_f32(&[3], &[3., 2., 1.]);
        let b = t_f32(&[1], &[2.]);
        let c = t_f32(&[2, 1], &[0., 10.]);
        let y = run(Op::Variadic(VariadicOp::Sum), &[&a, &b, &c]).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_f32().unwrap(), &[5., 4., 3., 15., 14., 13.]);
        let y = run(Op::Variadic(VariadicOp::Mean), &[&a, &b]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[2.5, 2., 1.5]);
        let y = run(Op::Variadic(VariadicOp::Max), &[&a]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[3., 2., 1.]);
        let y = run(Op::Variadic(VariadicOp::Min), &[&a, &b]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[2., 2., 1.]);
        let i = t(&[2], TensorData::I64(vec![5, -5]));
        let j = t(&[1], TensorData::I64(vec![0]));
        let y = run(Op::Variadic(VariadicOp::Max), &[&i, &j]).unwrap();
        assert_data!(y, TensorData::I64(vec![5, 0]));
        assert!(run(Op::Variadic(VariadicOp::Mean), &[&i, &j]).is_err());
        assert!(run(Op::Variadic(VariadicOp::Max), &[&i, &a]).is_err());
        let n = t_f32(&[2], &[f32::NAN, 1.0]);
        let y = run(
            Op::Variadic(VariadicOp::Max),
            &[&t_f32(&[2], &[0.0, 0.0]), &n],
        )
        .unwrap();
        assert!(y.as_f32().unwrap()[0].is_nan());
        assert!(eval(&Op::Variadic(VariadicOp::Sum), &[]).is_err());
    }

    #[test]
    fn clip_bounds() {
        let x = t_f32(&[4], &[-2., 0.5, 3., f32::NAN]);
        let lo = t_f32(&[], &[-1.]);
        let hi = t_f32(&[1], &[1.]);
        let y = eval(&Op::Clip, &[Some(&x), Some(&lo), Some(&hi)]).unwrap();
        let v = y[0].as_f32().unwrap();
        assert_eq!(&v[..3], &[-1., 0.5, 1.]);
        assert!(v[3].is_nan());
        let y = eval(&Op::Clip, &[Some(&x), None, Some(&hi)]).unwrap();
        assert_eq!(&y[0].as_f32().unwrap()[..3], &[-2., 0.5, 1.]);
        let y = eval(&Op::Clip, &[Some(&x)]).unwrap();
        assert_eq!(&y[0].as_f32().unwrap()[..3], &[-2., 0.5, 3.]);
        let xi = t(&[3], TensorData::I32(vec![-5, 2, 9]));
        let loi = t(&[], TensorData::I32(vec![0]));
        let hii = t(&[], TensorData::I32(vec![5]));
        let y = eval(&Op::Clip, &[Some(&xi), Some(&loi), Some(&hii)]).unwrap();
        assert_data!(y[0], TensorData::I32(vec![0, 2, 5]));
        // min > max gives max, like numpy.
        let y = eval(&Op::Clip, &[Some(&xi), Some(&hii), Some(&loi)]).unwrap();
        assert_data!(y[0], TensorData::I32(vec![0, 0, 0]));
        // Bounds of another dtype convert; bool bounds are rejected.
        let y = eval(&Op::Clip, &[Some(&xi), Some(&t_f32(&[], &[1.5]))]).unwrap();
        assert_data!(y[0], TensorData::I32(vec![1, 2, 9]));
        let bt = t(&[], TensorData::Bool(vec![true]));
        assert!(eval(&Op::Clip, &[Some(&xi), Some(&bt)]).is_err());
        assert!(eval(&Op::Clip, &[Some(&x), Some(&t_f32(&[2], &[0., 1.]))]).is_err());
    }

    #[test]
    fn where_broadcasts_three_ways() {
        let c = t(&[2, 1], TensorData::Bool(vec![true, false]));
        let x = t(&[3], TensorData::I64(vec![1, 2, 3]));
        let y = t(&[], TensorData::I64(vec![-1]));
        let z = run(Op::Where, &[&c, &x, &y]).unwrap();
        assert_eq!(z.shape(), &[2, 3]);
        assert_data!(z, TensorData::I64(vec![1, 2, 3, -1, -1, -1]));
        let f = t_f32(&[1], &[1.0]);
        assert!(run(Op::Where, &[&c, &x, &f]).is_err());
        assert!(run(Op::Where, &[&x, &x, &x]).is_err());
    }

    #[test]
    fn cast_between_types() {
        let x = t_f32(&[6], &[-1.7, 2.9, 300.0, f32::NAN, -1e10, 0.0]);
        let y = cast_default(&x, DType::I8);
        assert_data!(y, TensorData::I8(vec![-1, 2, 127, 0, -128, 0]));
        let y = cast_default(&x, DType::U8);
        assert_data!(y, TensorData::U8(vec![0, 2, 255, 0, 0, 0]));
        let y = cast_default(&x, DType::Bool);
        assert_data!(
            y,
            TensorData::Bool(vec![true, true, true, true, true, false])
        );
        let y = cast_default(&x, DType::F16);
        let h = match y.data() {
            TensorData::F16(v) => v.clone(),
            _ => panic!("not f16"),
        };
        assert_eq!(h[0], f16::from_f32(-1.7));
        assert_eq!(h[2], f16::from_f32(300.0));
        assert!(h[3].is_nan());
        assert!(h[4].is_infinite());
        let i = t(&[3], TensorData::I64(vec![300, -1, 1 << 40]));
        assert_data!(
            cast_default(&i, DType::U8),
            TensorData::U8(vec![44, 255, 0])
        );
        assert_data!(
            cast_default(&i, DType::F64),
            TensorData::F64(vec![300.0, -1.0, (1u64 << 40) as f64])
        );
        let b = t(&[2], TensorData::Bool(vec![true, false]));
        assert_eq!(cast_default(&b, DType::F32).as_f32().unwrap(), &[1.0, 0.0]);
        assert_data!(cast_default(&b, DType::I16), TensorData::I16(vec![1, 0]));
        let u = t(&[1], TensorData::U64(vec![u64::MAX]));
        assert_data!(cast_default(&u, DType::I64), TensorData::I64(vec![-1]));
        let h16 = t(&[1], TensorData::F16(vec![f16::from_f32(0.1)]));
        assert_eq!(
            cast_default(&h16, DType::F32).as_f32().unwrap(),
            &[f16::from_f32(0.1).to_f32()]
        );
        // Through eval, shape preserved.
        let y = run(
            Op::Cast {
                to: DType::I32,
                saturate: true,
                round_mode: E8M0Round::Up,
            },
            &[&t_f32(&[2, 1], &[1.5, -2.5])],
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 1]);
        assert_data!(y, TensorData::I32(vec![1, -2]));
    }

    #[test]
    fn cast_to_and_from_low_precision() {
        let x = t_f32(
            &[6],
            &[0.47892547, 1e6, f32::NEG_INFINITY, f32::NAN, -1e-7, 464.0],
        );
        // float8 e4m3fn, saturating (the default) and not.
        assert_data!(
            cast_default(&x, DType::F8E4M3FN),
            TensorData::F8E4M3FN(vec![0x2f, 0x7e, 0xfe, 0x7f, 0x80, 0x7e])
        );
        let y = cast(&x, DType::F8E4M3FN, false, E8M0Round::Up).unwrap();
        assert_data!(
            y,
            TensorData::F8E4M3FN(vec![0x2f, 0x7f, 0xff, 0x7f, 0x80, 0x7e])
        );
        // e5m2 without saturation overflows to infinity.
        let y = cast(&x, DType::F8E5M2, false, E8M0Round::Up).unwrap();
        let back = cast_default(&y, DType::F32);
        let v = back.as_f32().unwrap();
        assert_eq!(v[0], 0.5);
        assert_eq!((v[1], v[2]), (f32::INFINITY, f32::NEG_INFINITY));
        assert!(v[3].is_nan());
        // float8 -> f16 and -> int (through the value).
        let f8 = t(&[3], TensorData::F8E4M3FNUZ(vec![0x7f, 0x80, 0xc8]));
        let h = cast_default(&f8, DType::F16);
        let hv: Vec<f32> = match h.data() {
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            _ => panic!("{h:?}"),
        };
        assert_eq!(hv[0], 240.0);
        assert!(hv[1].is_nan());
        assert_eq!(hv[2], -2.0);
        assert_data!(
            cast_default(&f8, DType::I32),
            TensorData::I32(vec![240, 0, -2])
        );
        // bf16 rounds to nearest even; back to f32 exactly.
        let b = cast_default(
            &t_f32(&[2], &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]),
            DType::BF16,
        );
        assert_data!(
            b,
            TensorData::BF16(vec![bf16::from_bits(0x3f80), bf16::from_bits(0x3f82)])
        );
        assert_eq!(
            cast_default(&b, DType::F32).as_f32().unwrap(),
            &[1.0, 1.015625]
        );
        // 4- and 2-bit integers wrap; floats truncate first; NaN gives 0.
        let v = t_f32(&[6], &[-9.0, 7.6, 8.0, -2.5, f32::NAN, 15.0]);
        assert_data!(
            cast_default(&v, DType::I4),
            TensorData::I4(vec![7, 7, -8, -2, 0, -1])
        );
        assert_data!(
            cast_default(&v, DType::U4),
            TensorData::U4(vec![7, 7, 8, 14, 0, 15])
        );
        assert_data!(
            cast_default(&v, DType::I2),
            TensorData::I2(vec![-1, -1, 0, -2, 0, -1])
        );
        assert_data!(
            cast_default(&v, DType::U2),
            TensorData::U2(vec![3, 3, 0, 2, 0, 3])
        );
        let i4 = t(&[3], TensorData::I4(vec![-8, 7, -1]));
        assert_data!(
            cast_default(&i4, DType::I8),
            TensorData::I8(vec![-8, 7, -1])
        );
        assert_data!(cast_default(&i4, DType::U4), TensorData::U4(vec![8, 7, 15]));
        assert_data!(
            cast_default(&i4, DType::I2),
            TensorData::I2(vec![0, -1, -1])
        );
        let wide = t(&[2], TensorData::I64(vec![-9, 300]));
        assert_data!(cast_default(&wide, DType::I4), TensorData::I4(vec![7, -4]));
        // Integer sources round and saturate too.
        let wide = t(&[3], TensorData::I64(vec![-9, 300, 1000]));
        assert_data!(
            cast_default(&wide, DType::F8E4M3FN),
            TensorData::F8E4M3FN(vec![0xd1, 0x79, 0x7e])
        );
        // float4 saturates always; e8m0 rounds up, or as asked.
        let f4 = cast(
            &t_f32(&[3], &[9.0, 0.25, -3.5]),
            DType::F4E2M1,
            false,
            E8M0Round::Up,
        );
        assert_data!(f4.unwrap(), TensorData::F4E2M1(vec![0x7, 0x0, 0xe]));
        let e = t_f32(&[3], &[0.0, 1.1, 1.6]);
        assert_data!(
            cast_default(&e, DType::F8E8M0),
            TensorData::F8E8M0(vec![0, 128, 128])
        );
        let d = cast(&e, DType::F8E8M0, true, E8M0Round::Down).unwrap();
        assert_data!(d, TensorData::F8E8M0(vec![0, 127, 127]));
        let n = cast(&e, DType::F8E8M0, true, E8M0Round::Nearest).unwrap();
        assert_data!(n, TensorData::F8E8M0(vec![0, 127, 128]));
        assert_eq!(
            cast_default(&n, DType::F64).to_f64_vec(),
            [2f64.powi(-127), 1.0, 2.0]
        );
        // Bool in and out.
        let bo = t(&[2], TensorData::Bool(vec![true, false]));
        assert_data!(cast_default(&bo, DType::U2), TensorData::U2(vec![1, 0]));
        assert_data!(
            cast_default(&f8, DType::Bool),
            TensorData::Bool(vec![true, true, true])
        );
        // Every pair converts without error and keeps the shape.
        for from in DType::ALL {
            let src = Tensor::new(vec![2, 1], TensorData::from_f64(from, &[1.0, -2.0])).unwrap();
            for to in DType::ALL {
                let y = cast_default(&src, to);
                assert_eq!((y.dtype(), y.shape()), (to, &[2usize, 1][..]));
            }
        }
    }

    #[test]
    fn storage_only_inputs_are_refused() {
        let x = t(&[2], TensorData::F8E5M2(vec![0x3c, 0x40]));
        for op in [
            Op::Unary(UnaryOp::Neg),
            Op::Binary(BinaryOp::Add),
            Op::Variadic(VariadicOp::Sum),
            Op::Clip,
        ] {
            let ins: Vec<&Tensor> = match op {
                Op::Binary(_) => vec![&x, &x],
                _ => vec![&x],
            };
            let e = run(op, &ins).unwrap_err().to_string();
            assert!(e.contains("f8e5m2 inputs are not supported"), "{e}");
        }
        let c = t(&[2], TensorData::Bool(vec![true, false]));
        let e = run(Op::Where, &[&c, &x, &x]).unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn bf16_arithmetic_rounds_through_f32() {
        let a = t(
            &[2],
            TensorData::BF16(vec![bf16::from_f32(1.0), bf16::from_f32(3.0)]),
        );
        let b = t(&[1], TensorData::BF16(vec![bf16::from_f32(0.00390625)]));
        // 1 + 2^-8 ties to 1; 3 + 2^-8 rounds to 3 as well.
        let y = run(Op::Binary(BinaryOp::Add), &[&a, &b]).unwrap();
        assert_data!(
            y,
            TensorData::BF16(vec![bf16::from_f32(1.0), bf16::from_f32(3.0)])
        );
        let y = run(Op::Unary(UnaryOp::Sqrt), &[&a]).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        assert_eq!(y.to_f32_vec(), [1.0, bf16::from_f64(3f64.sqrt()).to_f32()]);
        let y = run(Op::Binary(BinaryOp::Less), &[&a, &b]).unwrap();
        assert_data!(y, TensorData::Bool(vec![false, false]));
    }
}

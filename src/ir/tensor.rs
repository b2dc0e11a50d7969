//! Dense host tensors: the constant store of the IR and the values the
//! reference interpreter computes on.
//!
//! Every element type has its own variant. The low-precision types are held
//! one element per byte: float8 and float4 as their bit patterns (float4 in
//! the low nibble), the 4- and 2-bit integers as `i8`/`u8` values that stay in
//! their type's range (`-8..=7`, `0..=15`, `-2..=1`, `0..=3`), so generic data
//! movement (`with_data!`, `map_data!`, [`TensorData::gather`]) works for
//! them unchanged. Packing into half or quarter bytes only happens when data
//! is (de)serialized ([`crate::ir::lowp::pack`]).

use half::{bf16, f16};
use std::fmt;

use super::lowp::{self, Minifloat};
use super::DType;
pub use crate::limits::checked_numel;

/// Typed element storage, row-major.
#[derive(Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    BF16(Vec<bf16>),
    /// Bit patterns.
    F8E4M3FN(Vec<u8>),
    /// Bit patterns.
    F8E4M3FNUZ(Vec<u8>),
    /// Bit patterns.
    F8E5M2(Vec<u8>),
    /// Bit patterns.
    F8E5M2FNUZ(Vec<u8>),
    /// Bit patterns (biased exponents).
    F8E8M0(Vec<u8>),
    /// Bit patterns in the low nibble.
    F4E2M1(Vec<u8>),
    /// Values in `-8..=7`.
    I4(Vec<i8>),
    /// Values in `0..=15`.
    U4(Vec<u8>),
    /// Values in `-2..=1`.
    I2(Vec<i8>),
    /// Values in `0..=3`.
    U2(Vec<u8>),
}

/// Runs `$body` with `$v` bound to the typed `Vec` inside a [`TensorData`],
/// for code that is the same for every element type.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::ir::TensorData::F32($v) => $body,
            $crate::ir::TensorData::F64($v) => $body,
            $crate::ir::TensorData::F16($v) => $body,
            $crate::ir::TensorData::I8($v) => $body,
            $crate::ir::TensorData::I16($v) => $body,
            $crate::ir::TensorData::I32($v) => $body,
            $crate::ir::TensorData::I64($v) => $body,
            $crate::ir::TensorData::U8($v) => $body,
            $crate::ir::TensorData::U16($v) => $body,
            $crate::ir::TensorData::U32($v) => $body,
            $crate::ir::TensorData::U64($v) => $body,
            $crate::ir::TensorData::Bool($v) => $body,
            $crate::ir::TensorData::BF16($v) => $body,
            $crate::ir::TensorData::F8E4M3FN($v) => $body,
            $crate::ir::TensorData::F8E4M3FNUZ($v) => $body,
            $crate::ir::TensorData::F8E5M2($v) => $body,
            $crate::ir::TensorData::F8E5M2FNUZ($v) => $body,
            $crate::ir::TensorData::F8E8M0($v) => $body,
            $crate::ir::TensorData::F4E2M1($v) => $body,
            $crate::ir::TensorData::I4($v) => $body,
            $crate::ir::TensorData::U4($v) => $body,
            $crate::ir::TensorData::I2($v) => $body,
            $crate::ir::TensorData::U2($v) => $body,
        }
    };
}

/// Like `with_data!`, but the body also builds a `TensorData` of the same
/// variant from its result (`$wrap` names the constructor inside `$body`).
#[macro_export]
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::ir::TensorData::F32($v) => $crate::ir::TensorData::F32($body),
            $crate::ir::TensorData::F64($v) => $crate::ir::TensorData::F64($body),
            $crate::ir::TensorData::F16($v) => $crate::ir::TensorData::F16($body),
            $crate::ir::TensorData::I8($v) => $crate::ir::TensorData::I8($body),
            $crate::ir::TensorData::I16($v) => $crate::ir::TensorData::I16($body),
            $crate::ir::TensorData::I32($v) => $crate::ir::TensorData::I32($body),
            $crate::ir::TensorData::I64($v) => $crate::ir::TensorData::I64($body),
            $crate::ir::TensorData::U8($v) => $crate::ir::TensorData::U8($body),
            $crate::ir::TensorData::U16($v) => $crate::ir::TensorData::U16($body),
            $crate::ir::TensorData::U32($v) => $crate::ir::TensorData::U32($body),
            $crate::ir::TensorData::U64($v) => $crate::ir::TensorData::U64($body),
            $crate::ir::TensorData::Bool($v) => $crate::ir::TensorData::Bool($body),
            $crate::ir::TensorData::BF16($v) => $crate::ir::TensorData::BF16($body),
            $crate::ir::TensorData::F8E4M3FN($v) => $crate::ir::TensorData::F8E4M3FN($body),
            $crate::ir::TensorData::F8E4M3FNUZ($v) => $crate::ir::TensorData::F8E4M3FNUZ($body),
            $crate::ir::TensorData::F8E5M2($v) => $crate::ir::TensorData::F8E5M2($body),
            $crate::ir::TensorData::F8E5M2FNUZ($v) => $crate::ir::TensorData::F8E5M2FNUZ($body),
            $crate::ir::TensorData::F8E8M0($v) => $crate::ir::TensorData::F8E8M0($body),
            $crate::ir::TensorData::F4E2M1($v) => $crate::ir::TensorData::F4E2M1($body),
            $crate::ir::TensorData::I4($v) => $crate::ir::TensorData::I4($body),
            $crate::ir::TensorData::U4($v) => $crate::ir::TensorData::U4($body),
            $crate::ir::TensorData::I2($v) => $crate::ir::TensorData::I2($body),
            $crate::ir::TensorData::U2($v) => $crate::ir::TensorData::U2($body),
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::F16(_) => DType::F16,
            TensorData::I8(_) => DType::I8,
            TensorData::I16(_) => DType::I16,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::U8(_) => DType::U8,
            TensorData::U16(_) => DType::U16,
            TensorData::U32(_) => DType::U32,
            TensorData::U64(_) => DType::U64,
            TensorData::Bool(_) => DType::Bool,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F8E4M3FN(_) => DType::F8E4M3FN,
            TensorData::F8E4M3FNUZ(_) => DType::F8E4M3FNUZ,
            TensorData::F8E5M2(_) => DType::F8E5M2,
            TensorData::F8E5M2FNUZ(_) => DType::F8E5M2FNUZ,
            TensorData::F8E8M0(_) => DType::F8E8M0,
            TensorData::F4E2M1(_) => DType::F4E2M1,
            TensorData::I4(_) => DType::I4,
            TensorData::U4(_) => DType::U4,
            TensorData::I2(_) => DType::I2,
            TensorData::U2(_) => DType::U2,
        }
    }

    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zero (false) elements of `dtype` (for float8 e8m0, which has no
    /// zero, its smallest value `2^-127`).
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::I16 => TensorData::I16(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::U16 => TensorData::U16(vec![0; n]),
            DType::U32 => TensorData::U32(vec![0; n]),
            DType::U64 => TensorData::U64(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::F8E4M3FN => TensorData::F8E4M3FN(vec![0; n]),
            DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(vec![0; n]),
            DType::F8E5M2 => TensorData::F8E5M2(vec![0; n]),
            DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(vec![0; n]),
            DType::F8E8M0 => TensorData::F8E8M0(vec![0; n]),
            DType::F4E2M1 => TensorData::F4E2M1(vec![0; n]),
            DType::I4 => TensorData::I4(vec![0; n]),
            DType::U4 => TensorData::U4(vec![0; n]),
            DType::I2 => TensorData::I2(vec![0; n]),
            DType::U2 => TensorData::U2(vec![0; n]),
        }
    }

    /// `v` converted to `dtype` the way Cast from f64 does with its default
    /// attributes: floats round to nearest even (float8 and float4 saturate,
    /// float8 e8m0 rounds up from f32), integers truncate toward zero and
    /// saturate (NaN gives 0) except the 4- and 2-bit ones, which wrap, and
    /// bool is `!= 0`.
    pub fn from_f64(dtype: DType, v: &[f64]) -> TensorData {
        fn ints<T>(v: &[f64], f: impl Fn(f64) -> T) -> Vec<T> {
            v.iter().map(|&x| f(x)).collect()
        }
        let small = |x: f64| lowp::small_int_from_f64(dtype, x);
        let mini = |f: Minifloat| ints(v, |x| f.encode(x, true));
        match dtype {
            DType::F32 => TensorData::F32(ints(v, |x| x as f32)),
            DType::F64 => TensorData::F64(v.to_vec()),
            DType::F16 => TensorData::F16(ints(v, f16::from_f64)),
            DType::BF16 => TensorData::BF16(ints(v, lowp::bf16_from_f64)),
            DType::I8 => TensorData::I8(ints(v, |x| x as i8)),
            DType::I16 => TensorData::I16(ints(v, |x| x as i16)),
            DType::I32 => TensorData::I32(ints(v, |x| x as i32)),
            DType::I64 => TensorData::I64(ints(v, |x| x as i64)),
            DType::U8 => TensorData::U8(ints(v, |x| x as u8)),
            DType::U16 => TensorData::U16(ints(v, |x| x as u16)),
            DType::U32 => TensorData::U32(ints(v, |x| x as u32)),
            DType::U64 => TensorData::U64(ints(v, |x| x as u64)),
            DType::Bool => TensorData::Bool(ints(v, |x| x != 0.0)),
            DType::F8E4M3FN => TensorData::F8E4M3FN(mini(lowp::F8E4M3FN)),
            DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(mini(lowp::F8E4M3FNUZ)),
            DType::F8E5M2 => TensorData::F8E5M2(mini(lowp::F8E5M2)),
            DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(mini(lowp::F8E5M2FNUZ)),
            DType::F4E2M1 => TensorData::F4E2M1(mini(lowp::F4E2M1)),
            DType::F8E8M0 => TensorData::F8E8M0(ints(v, |x| {
                lowp::e8m0_encode(x as f32, true, lowp::E8M0Round::Up)
            })),
            // wrap_small_int keeps values in range: the narrowing is exact.
            DType::I4 => TensorData::I4(ints(v, |x| small(x) as i8)),
            DType::U4 => TensorData::U4(ints(v, |x| small(x) as u8)),
            DType::I2 => TensorData::I2(ints(v, |x| small(x) as i8)),
            DType::U2 => TensorData::U2(ints(v, |x| small(x) as u8)),
        }
    }

    /// Appends the elements of `other`, which must have the same dtype;
    /// returns `false` (and changes nothing) when it does not.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! same_variant {
            ($($v:ident),*) => {
                match (self, other) {
                    $((TensorData::$v(a), TensorData::$v(b)) => {
                        a.extend_from_slice(b);
                        true
                    })*
                    _ => false,
                }
            };
        }
        same_variant!(
            F32, F64, F16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, BF16, F8E4M3FN, F8E4M3FNUZ,
            F8E5M2, F8E5M2FNUZ, F8E8M0, F4E2M1, I4, U4, I2, U2
        )
    }

    /// The elements in `r` (in bounds), same dtype.
    pub fn range(&self, r: std::ops::Range<usize>) -> TensorData {
        map_data!(self, v => v[r].to_vec())
    }

    /// Elements picked by `indices`, in that order, same dtype. Every index
    /// must be in bounds.
    pub fn gather(&self, indices: &[usize]) -> TensorData {
        map_data!(self, v => indices.iter().map(|&i| v[i]).collect())
    }
}

/// Error building a tensor whose data does not fit its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub shape: Vec<usize>,
    pub expected: usize,
    pub actual: usize,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shape {:?} needs {} elements but the data holds {}",
            self.shape, self.expected, self.actual
        )
    }
}

/// A dense tensor with a concrete shape.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Checked constructor: the element count must match the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, ShapeMismatch> {
        let expected = checked_numel(&shape).unwrap_or(usize::MAX);
        if expected != data.len() {
            return Err(ShapeMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: TensorData::zeros(dtype, n),
        }
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, ShapeMismatch> {
        Tensor::new(shape, TensorData::F32(data))
    }

    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Tensor, ShapeMismatch> {
        Tensor::new(shape, TensorData::I64(data))
    }

    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor {
            shape: vec![],
            data: TensorData::F32(vec![v]),
        }
    }

    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor {
            shape: vec![],
            data: TensorData::I64(vec![v]),
        }
    }

    /// A rank-1 i64 tensor, the form ONNX uses for shapes, axes and pads.
    pub fn vec_i64(v: Vec<i64>) -> Tensor {
        Tensor {
            shape: vec![v.len()],
            data: TensorData::I64(v),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// Bytes the data takes serialized: in memory for whole-byte types, packed
    /// for the 4- and 2-bit types.
    pub fn size_bytes(&self) -> usize {
        self.dtype()
            .packed_bytes(self.numel())
            .unwrap_or(usize::MAX)
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, ShapeMismatch> {
        Tensor::new(shape, self.data)
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Elements equal to zero (either sign of a float zero; pruned weights).
    pub fn zero_count(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.iter().filter(|&&x| x == 0.0).count(),
            TensorData::I8(v) => v.iter().filter(|&&x| x == 0).count(),
            _ => self.to_f64_vec().iter().filter(|&&x| x == 0.0).count(),
        }
    }

    /// Every element widened or converted to f64 (bool as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U16(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
            TensorData::I4(v) | TensorData::I2(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U4(v) | TensorData::U2(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            // float8 and float4 are exact in f32.
            TensorData::F8E4M3FN(_)
            | TensorData::F8E4M3FNUZ(_)
            | TensorData::F8E5M2(_)
            | TensorData::F8E5M2FNUZ(_)
            | TensorData::F8E8M0(_)
            | TensorData::F4E2M1(_) => self.to_f32_vec().into_iter().map(|x| x as f64).collect(),
        }
    }

    /// Every element as f32 (f16, bf16, float8 and float4 widened exactly;
    /// wider types rounded).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mini =
            |f: Minifloat, v: &[u8]| -> Vec<f32> { v.iter().map(|&b| f.decode(b)).collect() };
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::F8E4M3FN(v) => mini(lowp::F8E4M3FN, v),
            TensorData::F8E4M3FNUZ(v) => mini(lowp::F8E4M3FNUZ, v),
            TensorData::F8E5M2(v) => mini(lowp::F8E5M2, v),
            TensorData::F8E5M2FNUZ(v) => mini(lowp::F8E5M2FNUZ, v),
            TensorData::F4E2M1(v) => mini(lowp::F4E2M1, v),
            TensorData::F8E8M0(v) => v.iter().map(|&b| lowp::e8m0_decode(b)).collect(),
            // Integers, bool and f64 (rounded).
            _ => self.to_f64_vec().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Integer elements as i64, for shape, axes and index inputs. `None` for
    /// floating point and bool tensors and for u64 values past `i64::MAX`.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match &self.data {
            TensorData::I8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::I16(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::I64(v) => Some(v.clone()),
            TensorData::U8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::U16(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::U32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect(),
            TensorData::I4(v) | TensorData::I2(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::U4(v) | TensorData::U2(v) => Some(v.iter().map(|&x| x as i64).collect()),
            _ => None,
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}{:?}>", self.dtype(), self.shape)?;
        const SHOWN: usize = 8;
        let head: Vec<String> = match &self.data {
            TensorData::Bool(v) => v.iter().take(SHOWN).map(|x| x.to_string()).collect(),
            TensorData::F32(v) => v.iter().take(SHOWN).map(|x| x.to_string()).collect(),
            _ => self
                .to_f64_vec()
                .iter()
                .take(SHOWN)
                .map(|x| x.to_string())
                .collect(),
        };
        let more = if self.numel() > SHOWN { ", .." } else { "" };
        write!(f, "[{}{}]", head.join(", "), more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_precision_values_and_sizes() {
        let t = |d: TensorData| Tensor::new(vec![d.len()], d).unwrap();
        let i4 = t(TensorData::I4(vec![-8, 7, -1]));
        assert_eq!(i4.to_i64_vec().unwrap(), [-8, 7, -1]);
        assert_eq!(i4.to_f64_vec(), [-8.0, 7.0, -1.0]);
        assert_eq!(i4.size_bytes(), 2);
        assert_eq!(t(TensorData::U2(vec![3; 5])).size_bytes(), 2);
        assert_eq!(t(TensorData::BF16(vec![bf16::ONE; 3])).size_bytes(), 6);
        let f8 = t(TensorData::F8E5M2(vec![0x3c, 0xc0, 0x7c]));
        assert_eq!(f8.to_f64_vec(), [1.0, -2.0, f64::INFINITY]);
        assert_eq!(f8.to_i64_vec(), None);
        assert_eq!(f8.dtype(), DType::F8E5M2);
        let e = t(TensorData::F8E8M0(vec![127, 130]));
        assert_eq!(e.to_f32_vec(), [1.0, 8.0]);
        assert_eq!(format!("{f8:?}"), "Tensor<f8e5m2[3]>[1, -2, inf]");
        // Zeros of every dtype read back as 0 (e8m0's smallest is 2^-127).
        for d in DType::ALL {
            let z = TensorData::zeros(d, 2);
            assert_eq!(z.dtype(), d);
            let v = Tensor::new(vec![2], z).unwrap().to_f64_vec();
            assert!(v.iter().all(|&x| x.abs() < 1e-30), "{d}: {v:?}");
        }
    }

    #[test]
    fn from_f64_follows_cast_defaults() {
        let v = [1.5, -2.7, 1e6, f64::NAN];
        let f = |d| TensorData::from_f64(d, &v);
        assert!(f(DType::I8) == TensorData::I8(vec![1, -2, 127, 0]));
        assert!(f(DType::I4) == TensorData::I4(vec![1, -2, 0, 0]));
        assert!(f(DType::U2) == TensorData::U2(vec![1, 2, 0, 0]));
        assert!(f(DType::F8E4M3FN) == TensorData::F8E4M3FN(vec![0x3c, 0xc3, 0x7e, 0x7f]));
        assert!(f(DType::F4E2M1) == TensorData::F4E2M1(vec![0x3, 0xd, 0x7, 0x8]));
        let b = Tensor::new(vec![4], f(DType::BF16)).unwrap().to_f64_vec();
        assert_eq!(b[..3], [1.5, -2.703125, 999424.0]);
        assert!(b[3].is_nan());
        for d in DType::ALL {
            assert_eq!(TensorData::from_f64(d, &v).dtype(), d);
        }
    }

    #[test]
    fn extend_and_gather_every_dtype() {
        for d in DType::ALL {
            let mut a = TensorData::from_f64(d, &[1.0, 2.0]);
            let b = TensorData::from_f64(d, &[3.0]);
            assert!(a.extend_from(&b), "{d}");
            assert_eq!(a.len(), 3);
            assert!(
                a.gather(&[2, 0]) == TensorData::from_f64(d, &[3.0, 1.0]),
                "{d}"
            );
        }
        let mut a = TensorData::I4(vec![1]);
        assert!(!a.extend_from(&TensorData::I8(vec![1])));
        assert!(!a.extend_from(&TensorData::U4(vec![1])));
        assert_eq!(a.len(), 1);
    }
}

//! Element types. The set mirrors the ONNX tensor element types mlc can hold
//! in memory; compute in the reference interpreter is f32 for floating point
//! (f16 and bf16 are widened), with integer and bool types where ops need them
//! (shapes, indices, masks).
//!
//! The low-precision ONNX types (float8 in its five flavours, float4 e2m1, and
//! the 4- and 2-bit integers) are *storage* types: mlc holds them one element
//! per byte (see [`crate::ir::lowp`] for the bit formats), Cast converts to
//! and from them, and data-movement ops (Reshape, Transpose, Gather, ...) move
//! them, but no arithmetic kernel takes them ([`DType::is_storage_only`]).
//! Serialized, the 4-bit types pack two elements per byte and the 2-bit types
//! four ([`DType::packed_bytes`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a tensor value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    F16,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// bfloat16: f32's exponent range with an 8-bit significand.
    BF16,
    /// float8 e4m3, finite: no infinities, NaN is `S.1111.111`.
    F8E4M3FN,
    /// float8 e4m3, finite, unsigned zero: NaN is `0x80`, bias 8.
    F8E4M3FNUZ,
    /// float8 e5m2 with IEEE infinities and NaNs.
    F8E5M2,
    /// float8 e5m2, finite, unsigned zero: NaN is `0x80`, bias 16.
    F8E5M2FNUZ,
    /// float8 e8m0: an unsigned power of two `2^(e-127)`, NaN is `0xFF`
    /// (the MX scale format).
    F8E8M0,
    /// float4 e2m1: finite, values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives.
    F4E2M1,
    /// Signed 4-bit integer, -8..=7.
    I4,
    /// Unsigned 4-bit integer, 0..=15.
    U4,
    /// Signed 2-bit integer, -2..=1.
    I2,
    /// Unsigned 2-bit integer, 0..=3.
    U2,
}

impl DType {
    pub const ALL: [DType; 23] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
    ];

    /// Bytes per element in memory (the 4- and 2-bit types take a byte each
    /// in memory; see [`DType::packed_bytes`] for their serialized size).
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8
            | DType::U8
            | DType::Bool
            | DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0
            | DType::F4E2M1
            | DType::I4
            | DType::U4
            | DType::I2
            | DType::U2 => 1,
        }
    }

    /// Bits per element when serialized (ONNX `raw_data`, external data).
    pub fn bits(self) -> usize {
        match self {
            DType::F4E2M1 | DType::I4 | DType::U4 => 4,
            DType::I2 | DType::U2 => 2,
            d => d.size() * 8,
        }
    }

    /// Bytes that `n` elements take serialized: `n * size` for whole-byte
    /// types, `ceil(n / 2)` for the 4-bit types and `ceil(n / 4)` for the
    /// 2-bit types. `None` on overflow.
    pub fn packed_bytes(self, n: usize) -> Option<usize> {
        match self.bits() {
            b if b >= 8 => n.checked_mul(b / 8),
            b => Some(n.div_ceil(8 / b)),
        }
    }

    /// Short name used in the IR text form and reports (`f32`, `i64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
            DType::BF16 => "bf16",
            DType::F8E4M3FN => "f8e4m3fn",
            DType::F8E4M3FNUZ => "f8e4m3fnuz",
            DType::F8E5M2 => "f8e5m2",
            DType::F8E5M2FNUZ => "f8e5m2fnuz",
            DType::F8E8M0 => "f8e8m0",
            DType::F4E2M1 => "f4e2m1",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I2 => "i2",
            DType::U2 => "u2",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Every floating-point format, the storage-only float8/float4 ones
    /// included.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32
                | DType::F64
                | DType::F16
                | DType::BF16
                | DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
        )
    }

    /// Every integer type, the 4- and 2-bit ones included.
    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::I16
                | DType::I32
                | DType::I64
                | DType::U8
                | DType::U16
                | DType::U32
                | DType::U64
                | DType::I4
                | DType::U4
                | DType::I2
                | DType::U2
        )
    }

    pub fn is_signed(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::I16
                | DType::I32
                | DType::I64
                | DType::I4
                | DType::I2
                | DType::F16
                | DType::BF16
                | DType::F32
                | DType::F64
                | DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F4E2M1
        )
    }

    /// Types only Cast and the data-movement ops handle: float8, float4 and
    /// the 4- and 2-bit integers. Arithmetic kernels refuse them.
    pub fn is_storage_only(self) -> bool {
        matches!(
            self,
            DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
                | DType::I4
                | DType::U4
                | DType::I2
                | DType::U2
        )
    }

    /// ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::BF16 => 16,
            DType::F8E4M3FN => 17,
            DType::F8E4M3FNUZ => 18,
            DType::F8E5M2 => 19,
            DType::F8E5M2FNUZ => 20,
            DType::U4 => 21,
            DType::I4 => 22,
            DType::F4E2M1 => 23,
            DType::F8E8M0 => 24,
            DType::U2 => 25,
            DType::I2 => 26,
        }
    }

    /// Inverse of [`DType::onnx_code`]; `None` for types mlc cannot hold
    /// (strings, complex, float6).
    pub fn from_onnx_code(code: i32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.onnx_code() == code)
    }

    /// ONNX spelling of a data type code, for error messages.
    pub fn onnx_code_name(code: i32) -> &'static str {
        match code {
            0 => "UNDEFINED",
            1 => "FLOAT",
            2 => "UINT8",
            3 => "INT8",
            4 => "UINT16",
            5 => "INT16",
            6 => "INT32",
            7 => "INT64",
            8 => "STRING",
            9 => "BOOL",
            10 => "FLOAT16",
            11 => "DOUBLE",
            12 => "UINT32",
            13 => "UINT64",
            14 => "COMPLEX64",
            15 => "COMPLEX128",
            16 => "BFLOAT16",
            17 => "FLOAT8E4M3FN",
            18 => "FLOAT8E4M3FNUZ",
            19 => "FLOAT8E5M2",
            20 => "FLOAT8E5M2FNUZ",
            21 => "UINT4",
            22 => "INT4",
            23 => "FLOAT4E2M1",
            24 => "FLOAT8E8M0",
            25 => "UINT2",
            26 => "INT2",
            27 => "FLOAT6E2M3",
            28 => "FLOAT6E3M2",
            _ => "unknown",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert_eq!(DType::from_onnx_code(d.onnx_code()), Some(d));
            assert_ne!(DType::onnx_code_name(d.onnx_code()), "unknown");
            // serde spelling is the short name.
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                format!("\"{}\"", d.name())
            );
        }
        assert_eq!(DType::from_onnx_code(8), None);
        assert_eq!(DType::from_onnx_code(27), None);
        assert_eq!(DType::onnx_code_name(27), "FLOAT6E2M3");
    }

    #[test]
    fn packed_sizes() {
        assert_eq!(DType::F32.packed_bytes(3), Some(12));
        assert_eq!(DType::BF16.packed_bytes(3), Some(6));
        assert_eq!(DType::F8E5M2.packed_bytes(3), Some(3));
        assert_eq!(DType::I4.packed_bytes(0), Some(0));
        assert_eq!(DType::I4.packed_bytes(5), Some(3));
        assert_eq!(DType::F4E2M1.packed_bytes(4), Some(2));
        assert_eq!(DType::U2.packed_bytes(5), Some(2));
        assert_eq!(DType::I2.packed_bytes(8), Some(2));
        assert_eq!(DType::I64.packed_bytes(usize::MAX), None);
        assert_eq!(DType::U4.size(), 1);
    }

    #[test]
    fn classes() {
        assert!(DType::BF16.is_float() && !DType::BF16.is_storage_only());
        assert!(DType::F8E4M3FN.is_float() && DType::F8E4M3FN.is_storage_only());
        assert!(DType::I4.is_int() && DType::I4.is_signed() && DType::I4.is_storage_only());
        assert!(!DType::U2.is_signed() && !DType::F8E8M0.is_signed());
        assert!(!DType::F32.is_storage_only() && !DType::Bool.is_int());
    }
}

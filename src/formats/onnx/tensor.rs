//! Decoding ONNX `TensorProto`s into [`Tensor`]s.
//!
//! A tensor's data can live in `raw_data` (little-endian bytes), in one of the
//! typed repeated fields (`float_data`, `int32_data` which also carries the
//! 8- and 16-bit types, bool, the bits of float16, bfloat16 and float8, and
//! the packed bytes of the 4- and 2-bit types, `int64_data`, `double_data`,
//! `uint64_data` which also carries uint32), or in an external file next to
//! the model. The 4-bit types (int4, uint4, float4) pack two elements per
//! byte and the 2-bit types four, first element in the low bits, in every
//! form. Every path checks that the amount of data matches
//! the shape and dtype exactly before allocating, guards against hostile dims
//! (negative, overflowing products) and confines external files to the
//! model's directory (no absolute paths, no `..`, no symlinks that lead out).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use half::{bf16, f16};
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{SparseTensorProto, TensorProto};

use crate::ir::{checked_numel, lowp, DType, Tensor, TensorData};

/// Formats dims the way messages show shapes: `[2,3]`.
pub(crate) fn fmt_dims(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// The element type of an ONNX data type code, or a message naming it.
pub(crate) fn dtype_of(code: i32) -> Result<DType, String> {
    DType::from_onnx_code(code).ok_or_else(|| {
        format!(
            "data type {} (code {code}) is not supported",
            DType::onnx_code_name(code)
        )
    })
}

/// Decodes a tensor. `base_dir` is the model's directory, against which
/// external data is resolved; `None` refuses external data. The error is a
/// message without the tensor's name (callers add it).
pub(crate) fn decode(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, String> {
    let dtype = dtype_of(t.data_type)?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(
            usize::try_from(d).map_err(|_| format!("has a negative dimension in {:?}", t.dims))?,
        );
    }
    let numel =
        checked_numel(&shape).ok_or_else(|| format!("shape {:?} has too many elements", t.dims))?;
    let nbytes = dtype
        .packed_bytes(numel)
        .ok_or_else(|| format!("shape {:?} has too many elements", t.dims))?;
    if t.segment.is_some() {
        return Err("is segmented, which is not supported".into());
    }
    // Refused before anything is read or allocated.
    let in_memory = (numel as u64).saturating_mul(dtype.size() as u64);
    if in_memory > crate::limits::max_memory() {
        return Err(format!(
            "of shape {shape:?} ({dtype}) needs {}",
            crate::limits::over_budget(in_memory, crate::limits::max_memory())
        ));
    }
    let data = match t.data_location.enum_value() {
        Ok(DataLocation::EXTERNAL) => {
            let bytes = read_external(t, base_dir, nbytes, &shape, dtype)?;
            from_le_bytes(dtype, &bytes, numel)
        }
        Ok(DataLocation::DEFAULT) => {
            if !t.raw_data.is_empty() || (numel == 0 && typed_len(t, dtype) == 0) {
                if t.raw_data.len() != nbytes {
                    return Err(format!(
                        "has {} bytes of data but its shape {} of {dtype} needs {nbytes}",
                        t.raw_data.len(),
                        fmt_dims(&shape)
                    ));
                }
                from_le_bytes(dtype, &t.raw_data, numel)
            } else {
                let n = typed_len(t, dtype);
                // Sub-byte types carry one packed byte per value.
                let want = if dtype.bits() < 8 { nbytes } else { numel };
                if n != want {
                    return Err(format!(
                        "has {n} values but its shape {} of {dtype} needs {want}",
                        fmt_dims(&shape)
                    ));
                }
                from_typed(t, dtype, numel)?
            }
        }
        Err(code) => return Err(format!("has an unknown data location {code}")),
    };
    Tensor::new(shape, data).map_err(|e| format!("data does not fit: {e}"))
}

/// Number of values in the typed field that carries `dtype`.
/// The dense tensor a sparse initializer stands for: its `values` (`[NNZ]`)
/// at its `indices` (`[NNZ]` linear, or `[NNZ, rank]` coordinates, int64),
/// zero elsewhere, of shape `dims`. Indices out of range, repeated or of
/// the wrong count are errors; the dense tensor is held to the memory
/// budget before it is allocated.
pub(crate) fn decode_sparse(
    s: &SparseTensorProto,
    base_dir: Option<&Path>,
) -> Result<Tensor, String> {
    let values = decode(s.values.as_ref().ok_or("has no values")?, base_dir)
        .map_err(|e| format!("values {e}"))?;
    let mut shape = Vec::with_capacity(s.dims.len());
    for &d in &s.dims {
        shape.push(
            usize::try_from(d).map_err(|_| format!("has a negative dimension in {:?}", s.dims))?,
        );
    }
    let numel =
        checked_numel(&shape).ok_or_else(|| format!("shape {:?} has too many elements", s.dims))?;
    let dtype = values.dtype();
    let in_memory = (numel as u64).saturating_mul(dtype.size() as u64);
    if in_memory > crate::limits::max_memory() {
        return Err(format!(
            "of shape {shape:?} ({dtype}) needs {}",
            crate::limits::over_budget(in_memory, crate::limits::max_memory())
        ));
    }
    let nnz = values.numel();
    if values.rank() != 1 {
        return Err(format!(
            "values must be 1-D, not of shape {:?}",
            values.shape()
        ));
    }
    let linear: Vec<usize> = if nnz == 0 {
        Vec::new()
    } else {
        let idx = decode(s.indices.as_ref().ok_or("has no indices")?, base_dir)
            .map_err(|e| format!("indices {e}"))?;
        let TensorData::I64(iv) = idx.data() else {
            return Err(format!("indices must be int64, not {}", idx.dtype()));
        };
        let bad = |i: i64| format!("index {i} is out of range for shape {}", fmt_dims(&shape));
        match idx.shape() {
            [n] if *n == nnz => iv
                .iter()
                .map(|&i| {
                    usize::try_from(i)
                        .ok()
                        .filter(|&u| u < numel)
                        .ok_or_else(|| bad(i))
                })
                .collect::<Result<_, _>>()?,
            [n, r] if *n == nnz && *r == shape.len() => iv
                .chunks_exact(shape.len().max(1))
                .map(|c| {
                    c.iter().zip(&shape).try_fold(0usize, |acc, (&i, &d)| {
                        usize::try_from(i)
                            .ok()
                            .filter(|&u| u < d)
                            .map(|u| acc * d + u)
                            .ok_or_else(|| bad(i))
                    })
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(format!(
                    "indices of shape {other:?} do not fit {nnz} values of a rank-{} tensor",
                    shape.len()
                ))
            }
        }
    };
    let mut seen = vec![false; if linear.is_empty() { 0 } else { numel }];
    for &i in &linear {
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("index {i} appears twice"));
        }
    }
    fn scatter<T: Copy + Default>(v: &[T], at: &[usize], numel: usize) -> Vec<T> {
        let mut out = vec![T::default(); numel];
        for (&i, &x) in at.iter().zip(v) {
            out[i] = x;
        }
        out
    }
    let data = match values.data() {
        TensorData::F32(v) => TensorData::F32(scatter(v, &linear, numel)),
        TensorData::F64(v) => TensorData::F64(scatter(v, &linear, numel)),
        TensorData::F16(v) => TensorData::F16(scatter(v, &linear, numel)),
        TensorData::BF16(v) => TensorData::BF16(scatter(v, &linear, numel)),
        TensorData::I8(v) => TensorData::I8(scatter(v, &linear, numel)),
        TensorData::U8(v) => TensorData::U8(scatter(v, &linear, numel)),
        TensorData::I16(v) => TensorData::I16(scatter(v, &linear, numel)),
        TensorData::U16(v) => TensorData::U16(scatter(v, &linear, numel)),
        TensorData::I32(v) => TensorData::I32(scatter(v, &linear, numel)),
        TensorData::U32(v) => TensorData::U32(scatter(v, &linear, numel)),
        TensorData::I64(v) => TensorData::I64(scatter(v, &linear, numel)),
        TensorData::U64(v) => TensorData::U64(scatter(v, &linear, numel)),
        TensorData::Bool(v) => TensorData::Bool(scatter(v, &linear, numel)),
        _ => return Err(format!("sparse values of type {dtype} are not supported")),
    };
    Tensor::new(shape, data).map_err(|e| format!("data does not fit: {e}"))
}

fn typed_len(t: &TensorProto, dtype: DType) -> usize {
    match dtype {
        DType::F32 => t.float_data.len(),
        DType::F64 => t.double_data.len(),
        DType::I64 => t.int64_data.len(),
        DType::U32 | DType::U64 => t.uint64_data.len(),
        DType::F16
        | DType::BF16
        | DType::I8
        | DType::I16
        | DType::I32
        | DType::U8
        | DType::U16
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
        | DType::U2 => t.int32_data.len(),
    }
}

/// Values from the typed fields; the caller checked the count (`numel`
/// elements, packed for the sub-byte types).
fn from_typed(t: &TensorProto, dtype: DType, numel: usize) -> Result<TensorData, String> {
    fn narrow<T: TryFrom<i64>>(v: &[i32], what: DType) -> Result<Vec<T>, String> {
        v.iter()
            .map(|&x| T::try_from(x as i64).map_err(|_| format!("value {x} does not fit {what}")))
            .collect()
    }
    Ok(match dtype {
        DType::F32 => TensorData::F32(t.float_data.clone()),
        DType::F64 => TensorData::F64(t.double_data.clone()),
        DType::I64 => TensorData::I64(t.int64_data.clone()),
        DType::I32 => TensorData::I32(t.int32_data.clone()),
        DType::I16 => TensorData::I16(narrow(&t.int32_data, dtype)?),
        DType::I8 => TensorData::I8(narrow(&t.int32_data, dtype)?),
        DType::U16 => TensorData::U16(narrow(&t.int32_data, dtype)?),
        DType::U8 => TensorData::U8(narrow(&t.int32_data, dtype)?),
        DType::Bool => TensorData::Bool(t.int32_data.iter().map(|&x| x != 0).collect()),
        // float16 travels as its bit pattern in the low 16 bits.
        DType::F16 => TensorData::F16(
            t.int32_data
                .iter()
                .map(|&x| f16::from_bits((x as u32 & 0xffff) as u16))
                .collect(),
        ),
        DType::BF16 => TensorData::BF16(
            t.int32_data
                .iter()
                .map(|&x| bf16::from_bits((x as u32 & 0xffff) as u16))
                .collect(),
        ),
        DType::U64 => TensorData::U64(t.uint64_data.clone()),
        DType::U32 => TensorData::U32(narrow_u64(&t.uint64_data)?),
        // float8 bit patterns and the packed bytes of the sub-byte types,
        // one per value.
        DType::F8E4M3FN
        | DType::F8E4M3FNUZ
        | DType::F8E5M2
        | DType::F8E5M2FNUZ
        | DType::F8E8M0
        | DType::F4E2M1
        | DType::I4
        | DType::U4
        | DType::I2
        | DType::U2 => {
            let bytes: Vec<u8> = t
                .int32_data
                .iter()
                .map(|&x| {
                    u8::try_from(x)
                        .map_err(|_| format!("value {x} does not fit a byte of {dtype} data"))
                })
                .collect::<Result<_, _>>()?;
            from_le_bytes(dtype, &bytes, numel)
        }
    })
}

fn narrow_u64(v: &[u64]) -> Result<Vec<u32>, String> {
    v.iter()
        .map(|&x| u32::try_from(x).map_err(|_| format!("value {x} does not fit u32")))
        .collect()
}

/// Little-endian bytes into `numel` elements of typed data. `bytes.len()` is
/// `dtype.packed_bytes(numel)` (checked by the callers against the shape).
fn from_le_bytes(dtype: DType, bytes: &[u8], numel: usize) -> TensorData {
    let codes = |bits: usize| lowp::unpack(bits, bytes, numel);
    macro_rules! le {
        ($t:ty, $n:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    <$t>::from_le_bytes(a)
                })
                .collect()
        };
    }
    match dtype {
        DType::F32 => TensorData::F32(le!(f32, 4)),
        DType::F64 => TensorData::F64(le!(f64, 8)),
        DType::F16 => TensorData::F16(le!(f16, 2)),
        DType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
        DType::I16 => TensorData::I16(le!(i16, 2)),
        DType::I32 => TensorData::I32(le!(i32, 4)),
        DType::I64 => TensorData::I64(le!(i64, 8)),
        DType::U8 => TensorData::U8(bytes.to_vec()),
        DType::U16 => TensorData::U16(le!(u16, 2)),
        DType::U32 => TensorData::U32(le!(u32, 4)),
        DType::U64 => TensorData::U64(le!(u64, 8)),
        DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DType::BF16 => TensorData::BF16(le!(bf16, 2)),
        DType::F8E4M3FN => TensorData::F8E4M3FN(bytes.to_vec()),
        DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(bytes.to_vec()),
        DType::F8E5M2 => TensorData::F8E5M2(bytes.to_vec()),
        DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(bytes.to_vec()),
        DType::F8E8M0 => TensorData::F8E8M0(bytes.to_vec()),
        DType::F4E2M1 => TensorData::F4E2M1(codes(4)),
        DType::U4 => TensorData::U4(codes(4)),
        DType::U2 => TensorData::U2(codes(2)),
        DType::I4 => TensorData::I4(
            codes(4)
                .into_iter()
                .map(|c| lowp::sign_extend(c, 4))
                .collect(),
        ),
        DType::I2 => TensorData::I2(
            codes(2)
                .into_iter()
                .map(|c| lowp::sign_extend(c, 2))
                .collect(),
        ),
    }
}

/// Reads the bytes of an externally stored tensor, confined to `base_dir`.
fn read_external(
    t: &TensorProto,
    base_dir: Option<&Path>,
    nbytes: usize,
    shape: &[usize],
    dtype: DType,
) -> Result<Vec<u8>, String> {
    let mut location = None;
    let mut offset: u64 = 0;
    let mut length: Option<u64> = None;
    for kv in &t.external_data {
        let parse = |what: &str| {
            kv.value.trim().parse::<u64>().map_err(|_| {
                format!(
                    "has an invalid external data {what} '{}' (not a non-negative integer)",
                    kv.value
                )
            })
        };
        match kv.key.as_str() {
            "location" => location = Some(kv.value.as_str()),
            "offset" => offset = parse("offset")?,
            "length" => length = Some(parse("length")?),
            _ => {} // checksum and future keys do not change the data
        }
    }
    let location = location
        .filter(|l| !l.is_empty())
        .ok_or("is stored externally but names no location")?;
    let Some(base_dir) = base_dir else {
        return Err(format!(
            "is stored in external file '{location}', which is refused for a model loaded from memory (there is no model directory)"
        ));
    };
    let rel = Path::new(location);
    let escapes = rel.is_absolute()
        || rel.has_root()
        || rel.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::Prefix(_) | Component::RootDir
            )
        });
    if escapes {
        return Err(format!(
            "external data path '{location}' is refused: it must be a relative path inside the model's directory"
        ));
    }
    let base = base_dir.canonicalize().map_err(|e| {
        format!(
            "cannot resolve the model directory '{}': {e}",
            base_dir.display()
        )
    })?;
    let full = base_dir
        .join(rel)
        .canonicalize()
        .map_err(|e| format!("cannot open external data file '{location}': {e}"))?;
    if !full.starts_with(&base) {
        return Err(format!(
            "external data path '{location}' is refused: it resolves to '{}', outside the model's directory",
            full.display()
        ));
    }
    // Check the kind before opening: opening a FIFO would block.
    let meta = std::fs::metadata(&full)
        .map_err(|e| format!("cannot read external data file '{location}': {e}"))?;
    if !meta.is_file() {
        return Err(format!("external data path '{location}' is not a file"));
    }
    let mut f = File::open(&full)
        .map_err(|e| format!("cannot open external data file '{location}': {e}"))?;
    let file_len = meta.len();
    if offset > file_len {
        return Err(format!(
            "external data offset {offset} is past the end of '{location}' ({file_len} bytes)"
        ));
    }
    let length = length.unwrap_or(file_len - offset);
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(format!(
            "external data range (offset {offset}, length {length}) runs past the end of '{location}' ({file_len} bytes)"
        ));
    }
    if length != nbytes as u64 {
        return Err(format!(
            "has {length} bytes of external data in '{location}' but its shape {} of {dtype} needs {nbytes}",
            fmt_dims(shape)
        ));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("cannot read external data file '{location}': {e}"))?;
    let mut buf = vec![0u8; nbytes];
    f.read_exact(&mut buf)
        .map_err(|e| format!("cannot read external data file '{location}': {e}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::StringStringEntryProto;
    use protobuf::EnumOrUnknown;

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: "w".into(),
            data_type: dtype.onnx_code(),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_data_little_endian() {
        let mut t = proto(DType::F32, &[2]);
        t.raw_data = [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat();
        let x = decode(&t, None).unwrap();
        assert_eq!(x.shape(), &[2]);
        assert_eq!(x.as_f32().unwrap(), &[1.5, -2.0]);

        let mut t = proto(DType::I64, &[]);
        t.raw_data = (-7i64).to_le_bytes().to_vec();
        assert_eq!(decode(&t, None).unwrap().as_i64().unwrap(), &[-7]);

        let mut t = proto(DType::Bool, &[3]);
        t.raw_data = vec![0, 1, 2];
        let x = decode(&t, None).unwrap();
        assert_eq!(x.as_bool().unwrap(), &[false, true, true]);
    }

    #[test]
    fn raw_data_length_mismatch_is_reported() {
        let mut t = proto(DType::F32, &[2, 3]);
        t.raw_data = vec![0; 10];
        let e = decode(&t, None).unwrap_err();
        assert_eq!(
            e,
            "has 10 bytes of data but its shape [2,3] of f32 needs 24"
        );
    }

    #[test]
    fn typed_fields() {
        let mut t = proto(DType::F32, &[2]);
        t.float_data = vec![1.0, 2.0];
        assert_eq!(decode(&t, None).unwrap().as_f32().unwrap(), &[1.0, 2.0]);

        let mut t = proto(DType::U8, &[2]);
        t.int32_data = vec![255, 3];
        assert!(decode(&t, None).unwrap().data() == &TensorData::U8(vec![255, 3]));

        let mut t = proto(DType::I8, &[1]);
        t.int32_data = vec![300];
        assert!(decode(&t, None).unwrap_err().contains("does not fit i8"));

        let mut t = proto(DType::F16, &[1]);
        t.int32_data = vec![f16::from_f32(1.5).to_bits() as i32];
        assert!(decode(&t, None).unwrap().data() == &TensorData::F16(vec![f16::from_f32(1.5)]));

        let mut t = proto(DType::U32, &[1]);
        t.uint64_data = vec![7];
        assert!(decode(&t, None).unwrap().data() == &TensorData::U32(vec![7]));

        let mut t = proto(DType::F64, &[2, 2]);
        t.double_data = vec![1.0; 3];
        assert_eq!(
            decode(&t, None).unwrap_err(),
            "has 3 values but its shape [2,2] of f64 needs 4"
        );
    }

    #[test]
    fn low_precision_raw_data() {
        let mut t = proto(DType::BF16, &[2]);
        t.raw_data = vec![0x80, 0x3f, 0x00, 0xc0];
        assert_eq!(decode(&t, None).unwrap().to_f32_vec(), [1.0, -2.0]);

        let mut t = proto(DType::F8E4M3FN, &[3]);
        t.raw_data = vec![0x7e, 0x38, 0xff];
        let x = decode(&t, None).unwrap();
        assert!(x.data() == &TensorData::F8E4M3FN(vec![0x7e, 0x38, 0xff]));
        let v = x.to_f32_vec();
        assert_eq!(v[..2], [448.0, 1.0]);
        assert!(v[2].is_nan());

        // 4-bit: two per byte, low nibble first, odd counts padded.
        let mut t = proto(DType::I4, &[3]);
        t.raw_data = vec![0x8f, 0x07];
        assert!(decode(&t, None).unwrap().data() == &TensorData::I4(vec![-1, -8, 7]));
        t.data_type = DType::U4.onnx_code();
        assert!(decode(&t, None).unwrap().data() == &TensorData::U4(vec![15, 8, 7]));
        t.data_type = DType::F4E2M1.onnx_code();
        assert_eq!(decode(&t, None).unwrap().to_f32_vec(), [-6.0, -0.0, 6.0]);
        t.raw_data = vec![0x8f, 0x07, 0x00];
        assert_eq!(
            decode(&t, None).unwrap_err(),
            "has 3 bytes of data but its shape [3] of f4e2m1 needs 2"
        );

        // 2-bit: four per byte.
        let mut t = proto(DType::I2, &[5]);
        t.raw_data = vec![0b00_11_10_01, 0b10];
        assert!(decode(&t, None).unwrap().data() == &TensorData::I2(vec![1, -2, -1, 0, -2]));
        t.data_type = DType::U2.onnx_code();
        assert!(decode(&t, None).unwrap().data() == &TensorData::U2(vec![1, 2, 3, 0, 2]));

        // Empty.
        let t = proto(DType::I4, &[0]);
        assert_eq!(decode(&t, None).unwrap().numel(), 0);
    }

    #[test]
    fn low_precision_int32_data() {
        let mut t = proto(DType::BF16, &[1]);
        t.int32_data = vec![0x3f80];
        assert_eq!(decode(&t, None).unwrap().to_f32_vec(), [1.0]);

        let mut t = proto(DType::F8E5M2, &[2]);
        t.int32_data = vec![0x3c, 0xfc];
        assert_eq!(
            decode(&t, None).unwrap().to_f32_vec(),
            [1.0, f32::NEG_INFINITY]
        );
        t.int32_data = vec![0x3c, 256];
        assert!(decode(&t, None)
            .unwrap_err()
            .contains("does not fit a byte"));

        let mut t = proto(DType::F8E8M0, &[1]);
        t.int32_data = vec![128];
        assert_eq!(decode(&t, None).unwrap().to_f32_vec(), [2.0]);

        // Sub-byte types: one packed byte per int32 value.
        let mut t = proto(DType::I4, &[3]);
        t.int32_data = vec![0x8f, 0x07];
        assert!(decode(&t, None).unwrap().data() == &TensorData::I4(vec![-1, -8, 7]));
        t.int32_data = vec![0x8f, 0x07, 0x01];
        assert_eq!(
            decode(&t, None).unwrap_err(),
            "has 3 values but its shape [3] of i4 needs 2"
        );
        let mut t = proto(DType::U2, &[6]);
        t.int32_data = vec![0b11_10_01_00, 0b0111];
        assert!(decode(&t, None).unwrap().data() == &TensorData::U2(vec![0, 1, 2, 3, 3, 1]));
    }

    #[test]
    fn empty_tensors_and_hostile_dims() {
        let t = proto(DType::F32, &[0, 3]);
        assert_eq!(decode(&t, None).unwrap().shape(), &[0, 3]);
        let t = proto(DType::F32, &[-1]);
        assert!(decode(&t, None).unwrap_err().contains("negative"));
        let t = proto(DType::F32, &[i64::MAX, i64::MAX]);
        assert!(decode(&t, None).unwrap_err().contains("too many"));
        let t = proto(DType::F32, &[1 << 62]);
        assert!(decode(&t, None).unwrap_err().contains("too many"));
    }

    #[test]
    fn unsupported_dtypes_are_named() {
        let mut t = proto(DType::F32, &[1]);
        t.data_type = 27;
        assert!(decode(&t, None).unwrap_err().contains("FLOAT6E2M3"));
        t.data_type = 8;
        assert!(decode(&t, None).unwrap_err().contains("STRING"));
    }

    fn external(location: &str, offset: Option<&str>, length: Option<&str>) -> TensorProto {
        let mut t = proto(DType::F32, &[2]);
        t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
        let mut kv = |k: &str, v: &str| {
            t.external_data.push(StringStringEntryProto {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
        };
        kv("location", location);
        if let Some(o) = offset {
            kv("offset", o);
        }
        if let Some(l) = length {
            kv("length", l);
        }
        t
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mlc-onnx-tensor-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn external_data_reads_offset_and_length() {
        let dir = temp_dir("ext");
        let mut bytes = vec![9u8; 4];
        bytes.extend(3.0f32.to_le_bytes());
        bytes.extend(4.0f32.to_le_bytes());
        std::fs::write(dir.join("w.bin"), &bytes).unwrap();
        let t = external("w.bin", Some("4"), Some("8"));
        assert_eq!(
            decode(&t, Some(&dir)).unwrap().as_f32().unwrap(),
            &[3.0, 4.0]
        );
        // Without a length the rest of the file is the data.
        let t = external("w.bin", Some("4"), None);
        assert_eq!(
            decode(&t, Some(&dir)).unwrap().as_f32().unwrap(),
            &[3.0, 4.0]
        );
        // Reading past the end of the file.
        let t = external("w.bin", Some("8"), Some("8"));
        assert!(decode(&t, Some(&dir)).unwrap_err().contains("past the end"));
        let t = external("w.bin", Some("100"), None);
        assert!(decode(&t, Some(&dir)).unwrap_err().contains("past the end"));
        let t = external("w.bin", Some("1"), Some(&u64::MAX.to_string()));
        assert!(decode(&t, Some(&dir)).unwrap_err().contains("past the end"));
        // Wrong length for the shape.
        let t = external("w.bin", Some("0"), Some("4"));
        assert!(decode(&t, Some(&dir)).unwrap_err().contains("needs 8"));
        // Bad offset text, missing file, no model directory.
        let t = external("w.bin", Some("-1"), None);
        assert!(decode(&t, Some(&dir)).unwrap_err().contains("offset"));
        let t = external("nope.bin", None, None);
        assert!(decode(&t, Some(&dir)).unwrap_err().contains("nope.bin"));
        let t = external("w.bin", Some("4"), None);
        assert!(decode(&t, None).unwrap_err().contains("from memory"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn external_data_cannot_escape_the_model_directory() {
        let dir = temp_dir("escape");
        let model_dir = dir.join("model");
        std::fs::create_dir_all(model_dir.join("sub")).unwrap();
        std::fs::write(dir.join("x.bin"), [0u8; 8]).unwrap();
        std::fs::write(model_dir.join("sub/ok.bin"), [0u8; 8]).unwrap();
        assert!(decode(&external("sub/ok.bin", None, None), Some(&model_dir)).is_ok());
        let e = decode(&external("sub", None, None), Some(&model_dir)).unwrap_err();
        assert!(e.contains("not a file"), "{e}");
        for bad in ["../x.bin", "sub/../../x.bin"] {
            let e = decode(&external(bad, None, None), Some(&model_dir)).unwrap_err();
            assert!(e.contains("refused") && e.contains(bad), "{e}");
        }
        let abs = dir.join("x.bin");
        let e = decode(
            &external(abs.to_str().unwrap(), None, None),
            Some(&model_dir),
        )
        .unwrap_err();
        assert!(e.contains("refused"), "{e}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("x.bin"), model_dir.join("link.bin")).unwrap();
            let e = decode(&external("link.bin", None, None), Some(&model_dir)).unwrap_err();
            assert!(e.contains("refused") && e.contains("outside"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

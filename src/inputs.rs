//! Seeded random inputs for smoke runs and benchmarks.
//!
//! Values are valid for what each input feeds: an integer input used as
//! Gather indices (token ids) stays within the gathered axis, other integer
//! inputs are 0/1 (masks), floats are uniform in [-1, 1).

use std::collections::BTreeMap;

use crate::ir::{DType, Dim, Graph, Op, Tensor, TensorData, ValueId};
pub use crate::rng::SplitMix64;
use crate::{Error, Result};

/// Concrete shape of input `id`: known dims as they are, symbolic dims from
/// `dims` (default 1).
pub fn concrete_shape(g: &Graph, id: ValueId, dims: &BTreeMap<String, usize>) -> Vec<usize> {
    g.ty(id)
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            Dim::Sym(s) => dims.get(s).copied().unwrap_or(1),
        })
        .collect()
}

/// Exclusive upper bound for an integer input that feeds Gather indices.
fn index_bound(g: &Graph, id: ValueId) -> Option<u64> {
    g.nodes().find_map(|(_, n)| match n.op {
        Op::Gather { axis } if n.input(1) == Some(id) => {
            let data = g.ty(n.input(0)?);
            let rank = data.shape.rank() as i64;
            let ax = if axis < 0 { axis + rank } else { axis };
            data.shape
                .dims()
                .get(usize::try_from(ax).ok()?)?
                .known()
                .map(|d| d as u64)
        }
        _ => None,
    })
}

/// Seeded random values for every graph input.
pub fn random_inputs(g: &Graph, seed: u64, dims: &BTreeMap<String, usize>) -> Result<Vec<Tensor>> {
    let mut rng = SplitMix64::new(seed);
    g.inputs
        .iter()
        .map(|&id| {
            let v = g.value(id);
            let shape = concrete_shape(g, id, dims);
            // Integer data is drawn as i64 first.
            let n = crate::limits::check_shape(
                || format!("random data of shape {shape:?} for input '{}'", v.name),
                &shape,
                8 + v.ty.dtype.size(),
            )?;
            let bound = index_bound(g, id).unwrap_or(2);
            let mut ints = || {
                (0..n)
                    .map(|_| rng.below(bound) as i64)
                    .collect::<Vec<i64>>()
            };
            let data = match v.ty.dtype {
                DType::F32 => TensorData::F32(
                    (0..n)
                        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                        .collect(),
                ),
                DType::F64 => TensorData::F64((0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect()),
                DType::F16 => TensorData::F16(
                    (0..n)
                        .map(|_| half::f16::from_f64(rng.next_f64() * 2.0 - 1.0))
                        .collect(),
                ),
                DType::Bool => TensorData::Bool((0..n).map(|_| rng.below(2) == 1).collect()),
                DType::I64 => TensorData::I64(ints()),
                DType::I32 => TensorData::I32(ints().into_iter().map(|x| x as i32).collect()),
                DType::I16 => TensorData::I16(ints().into_iter().map(|x| x as i16).collect()),
                DType::I8 => TensorData::I8(ints().into_iter().map(|x| x as i8).collect()),
                DType::U8 => TensorData::U8(ints().into_iter().map(|x| x as u8).collect()),
                DType::U16 => TensorData::U16(ints().into_iter().map(|x| x as u16).collect()),
                DType::U32 => TensorData::U32(ints().into_iter().map(|x| x as u32).collect()),
                DType::U64 => TensorData::U64(ints().into_iter().map(|x| x as u64).collect()),
                // Low-precision floats: uniform in [-1, 1), rounded.
                d @ (DType::BF16
                | DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1) => {
                    let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
                    TensorData::from_f64(d, &v)
                }
                // 4- and 2-bit integers: the bounded values, wrapped.
                d @ (DType::I4 | DType::U4 | DType::I2 | DType::U2) => {
                    let v: Vec<f64> = ints().into_iter().map(|x| x as f64).collect();
                    TensorData::from_f64(d, &v)
                }
            };
            Tensor::new(shape, data).map_err(|e| Error::Internal(e.to_string()))
        })
        .collect()
}

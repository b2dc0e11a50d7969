//! Binding named tensors to a model's inputs ([`bind`]), and seeded random
//! inputs for smoke runs and benchmarks ([`random_inputs`]).
//!
//! Random values are valid for what each input feeds: an integer input used as
//! Gather indices (token ids) stays within the gathered axis, other integer
//! inputs are 0/1 (masks), floats are uniform in [-1, 1).

use std::collections::BTreeMap;

use crate::ir::bind::{
    check_dim_names, check_input, expected_inputs, missing_input, unknown_input,
};
use crate::ir::{DType, Dim, Graph, Op, SymbolBindings, Tensor, TensorData, ValueId};
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

/// How [`bind`] completes what was given.
#[derive(Clone, Debug, Default)]
pub struct Binding {
    /// Sizes of symbolic dims, by name (every name must be a dim of some
    /// input).
    pub dims: BTreeMap<String, usize>,
    /// The size of the first symbolic dim of every input that has one.
    pub batch: Option<usize>,
    /// Inputs not given are seeded random data (dims not bound are 1);
    /// without a seed a missing input is an error.
    pub random_seed: Option<u64>,
}

/// Binds named tensors to the inputs of `g` and completes them as
/// `binding` says; returns the inputs in the order of `g.inputs`. Every
/// mistake gets one error that lists what the model expects: a name that
/// is not an input, a dim name no input has, a dtype or shape that does
/// not fit, a dim given two sizes, an input neither given nor drawn.
pub fn bind(g: &Graph, given: Vec<(String, Tensor)>, binding: &Binding) -> Result<Vec<Tensor>> {
    check_dim_names(g, binding.dims.keys())?;
    let mut by_input: Vec<Option<Tensor>> = vec![None; g.inputs.len()];
    for (name, t) in given {
        let Some(i) = g.inputs.iter().position(|&id| g.value(id).name == name) else {
            return Err(unknown_input(g, &name));
        };
        if by_input[i].is_some() {
            return Err(Error::Input {
                name,
                message: "given twice".into(),
            });
        }
        by_input[i] = Some(t);
    }

    // Sizes: the given tensors', then --dim, then the batch size.
    let mut bindings = SymbolBindings::default();
    for (&id, t) in g.inputs.iter().zip(&by_input) {
        if let Some(t) = t {
            check_input(g, id, t.dtype(), t.shape(), &mut bindings)?;
        }
    }
    let mut dims = bindings.0;
    let mut fix = |name: &str, size: usize, what: String| -> Result<()> {
        match dims.get(name) {
            Some(&d) if d != size => Err(Error::Dim {
                name: name.to_string(),
                message: format!("{what} gives dim '{name}' size {size}, but it is {d} elsewhere"),
            }),
            _ => {
                dims.insert(name.to_string(), size);
                Ok(())
            }
        }
    };
    for (name, &size) in &binding.dims {
        fix(name, size, "the dims given".into())?;
    }
    if let Some(b) = binding.batch {
        let firsts: Vec<String> = g
            .inputs
            .iter()
            .filter_map(|&id| {
                g.ty(id).shape.dims().iter().find_map(|d| match d {
                    Dim::Sym(s) => Some(s.clone()),
                    Dim::Known(_) => None,
                })
            })
            .collect();
        if firsts.is_empty() {
            return Err(Error::Input {
                name: "*".into(),
                message: format!(
                    "a batch size was given but no input has a symbolic dim to take it (inputs: {})",
                    expected_inputs(g)
                ),
            });
        }
        for s in &firsts {
            fix(s, b, format!("the batch size {b}"))?;
        }
    }

    let random = match binding.random_seed {
        Some(seed) if by_input.iter().any(Option::is_none) => Some(random_inputs(g, seed, &dims)?),
        _ => None,
    };
    let mut feed = Vec::with_capacity(g.inputs.len());
    let mut bindings = SymbolBindings::default();
    for (i, (&id, t)) in g.inputs.iter().zip(by_input).enumerate() {
        let t = match (t, &random) {
            (Some(t), _) => t,
            (None, Some(r)) => r[i].clone(),
            (None, None) => return Err(missing_input(g, id)),
        };
        check_input(g, id, t.dtype(), t.shape(), &mut bindings)?;
        feed.push(t);
    }
    Ok(feed)
}

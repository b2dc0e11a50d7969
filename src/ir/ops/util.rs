//! Helpers shared by the families' reference kernels: broadcasting,
//! strides, axis normalization and input access with clear errors; and the
//! error of a family given an op it does not hold.

use crate::ir::{DType, Op, Tensor};
use crate::{Error, Result};

/// The multidirectional (numpy) broadcast of two shapes, `None` if they are
/// incompatible.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For each element of `out_shape` (row-major), the flat index of the element
/// of a tensor of shape `in_shape` that broadcasts onto it.
pub fn broadcast_index_map(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let rank = out_shape.len();
    let offset = rank - in_shape.len();
    let in_strides = strides(in_shape);
    // Stride 0 on broadcast axes.
    let eff: Vec<usize> = (0..rank)
        .map(|i| {
            if i < offset || in_shape[i - offset] == 1 {
                0
            } else {
                in_strides[i - offset]
            }
        })
        .collect();
    let mut idx = vec![0usize; rank];
    let mut map = Vec::with_capacity(n);
    let mut flat = 0usize;
    for _ in 0..n {
        map.push(flat);
        // Increment the multi-index, adjusting the flat input offset.
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            flat += eff[ax];
            if idx[ax] < out_shape[ax] {
                break;
            }
            flat -= eff[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
    map
}

/// Normalizes a possibly negative axis against `rank`.
pub fn normalize_axis(op: &'static str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(Error::op(
            op,
            format!("axis {axis} is out of range for rank {rank}"),
        ));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

/// The error for a storage-only dtype (float8, float4, 4- and 2-bit
/// integers) reaching an op that computes on elements.
pub fn storage_only(op: &'static str, dt: DType) -> Error {
    Error::op(
        op,
        format!(
            "{dt} inputs are not supported (float8, float4, 4-bit and 2-bit types only go through Cast and data-movement ops)"
        ),
    )
}

/// The required input at `i`.
pub fn input<'a>(op: &'static str, inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| Error::op(op, format!("missing required input {i}")))
}

/// The optional input at `i`.
pub fn opt_input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// An integer input (shape, axes, pads, ...) as i64 values.
pub fn i64_values(op: &'static str, what: &str, t: &Tensor) -> Result<Vec<i64>> {
    t.to_i64_vec().ok_or_else(|| {
        Error::op(
            op,
            format!("{what} must be an integer tensor, got {}", t.dtype()),
        )
    })
}

/// The message of a family's `visit`, `infer` or `eval` given an op the
/// family does not hold: an internal error, [`Op::family`] routed it
/// wrongly.
pub fn not_held(family: &str, op: &Op) -> String {
    format!("internal error: {op:?} is routed to the {family} family, which does not hold it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_shapes() {
        assert_eq!(broadcast_shape(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shape(&[2], &[3]), None);
        assert_eq!(broadcast_shape(&[0, 1], &[1, 4]), Some(vec![0, 4]));
    }

    #[test]
    fn index_map_broadcasts_rows_and_columns() {
        // [2,1] onto [2,3]: each row repeats its element.
        assert_eq!(
            broadcast_index_map(&[2, 1], &[2, 3]),
            vec![0, 0, 0, 1, 1, 1]
        );
        // [3] onto [2,3]: rows repeat.
        assert_eq!(broadcast_index_map(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index_map(&[], &[2]), vec![0, 0]);
    }
}

/// Tensor builders and comparisons shared by the kernels' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::ir::Tensor;

    /// An f32 tensor of the given shape.
    pub fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v).expect("test tensor data fits its shape")
    }

    /// An f32 tensor holding 0, 1, 2, ... in row-major order.
    pub fn seq(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        t(shape, (0..n).map(|i| i as f32).collect())
    }

    /// Seeded pseudo-random f32 values, uniform in [-half_range, half_range).
    pub fn random(shape: &[usize], seed: u64, half_range: f32) -> Tensor {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * half_range)
            .collect();
        t(shape, v)
    }

    /// Checks shape and values with a relative-plus-absolute tolerance `tol`.
    pub fn assert_close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
        assert_eq!(got.shape(), shape);
        let g = got.to_f32_vec();
        assert_eq!(g.len(), want.len());
        for (i, (a, b)) in g.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "at {i}: {a} vs {b}");
        }
    }
}

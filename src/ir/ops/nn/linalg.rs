//! Reference MatMul and Gemm.
//!
//! Both are plain `i-j-k` loops. Floating point operands (f16, f32, f64) are
//! widened to f64, accumulated in f64 and rounded once to the input type, so
//! the result is at least as accurate as any real f32 kernel. Integer
//! operands are widened to i64 (u64 by reinterpreting its bits) and use
//! wrapping arithmetic; truncating back to the input type gives exactly the
//! wrapping result of the narrow type, since wrapping arithmetic commutes
//! with truncation. MatMul follows numpy `matmul`: a 1-D left operand gets a
//! leading 1 (removed from the result), a 1-D right operand a trailing 1
//! (removed too), and the batch dims broadcast.

use half::f16;

use crate::ir::ops::util::{broadcast_index_map, broadcast_shape, input, not_held, opt_input};
use crate::ir::{DType, Op, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates MatMul or Gemm.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    match op {
        Op::MatMul => matmul(inputs).map(|t| vec![t]),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => gemm(*alpha, *beta, *trans_a, *trans_b, inputs).map(|t| vec![t]),
        other => Err(Error::Internal(not_held("nn", other))),
    }
}

/// Operand values in their compute domain.
enum Vals {
    F(Vec<f64>),
    I(Vec<i64>),
}

/// Widens a tensor to its compute domain; bool is rejected.
fn vals(op: &'static str, what: &str, t: &Tensor) -> Result<Vals> {
    Ok(match t.data() {
        TensorData::F32(_) | TensorData::F64(_) | TensorData::F16(_) | TensorData::BF16(_) => {
            Vals::F(t.to_f64_vec())
        }
        TensorData::I8(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        TensorData::I16(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        TensorData::I32(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        TensorData::I64(v) => Vals::I(v.clone()),
        TensorData::U8(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        TensorData::U16(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        TensorData::U32(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        // Bit reinterpretation: wrapping arithmetic is the same modulo 2^64.
        TensorData::U64(v) => Vals::I(v.iter().map(|&x| x as i64).collect()),
        TensorData::Bool(_) => {
            return Err(Error::op(
                op,
                format!("{what} must be a numeric tensor, got bool"),
            ))
        }
        _ => return Err(crate::ir::ops::util::storage_only(op, t.dtype())),
    })
}

/// Narrows computed values back to `dtype`.
fn to_data(dtype: DType, v: Vals) -> TensorData {
    match v {
        Vals::F(v) => match dtype {
            DType::F64 => TensorData::F64(v),
            DType::F16 => TensorData::F16(v.into_iter().map(f16::from_f64).collect()),
            DType::BF16 => TensorData::from_f64(DType::BF16, &v),
            _ => TensorData::F32(v.into_iter().map(|x| x as f32).collect()),
        },
        Vals::I(v) => match dtype {
            DType::I8 => TensorData::I8(v.into_iter().map(|x| x as i8).collect()),
            DType::I16 => TensorData::I16(v.into_iter().map(|x| x as i16).collect()),
            DType::I32 => TensorData::I32(v.into_iter().map(|x| x as i32).collect()),
            DType::U8 => TensorData::U8(v.into_iter().map(|x| x as u8).collect()),
            DType::U16 => TensorData::U16(v.into_iter().map(|x| x as u16).collect()),
            DType::U32 => TensorData::U32(v.into_iter().map(|x| x as u32).collect()),
            DType::U64 => TensorData::U64(v.into_iter().map(|x| x as u64).collect()),
            _ => TensorData::I64(v),
        },
    }
}

/// Both operands must share one numeric dtype.
fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::op(
            op,
            format!("A has dtype {} but B has {}", a.dtype(), b.dtype()),
        ));
    }
    Ok(())
}

fn output_len(op: &'static str, shape: &[usize]) -> Result<usize> {
    // Computed in f64, then narrowed: 8 bytes and the output's own.
    crate::limits::check_shape(|| format!("{op} output of shape {shape:?}"), shape, 12)
}

/// A scalar type the matrix product accumulates in.
trait Acc: Copy {
    const ZERO: Self;
    fn mac(self, a: Self, b: Self) -> Self;
}

impl Acc for f64 {
    const ZERO: f64 = 0.0;
    fn mac(self, a: f64, b: f64) -> f64 {
        self + a * b
    }
}

impl Acc for i64 {
    const ZERO: i64 = 0;
    fn mac(self, a: i64, b: i64) -> i64 {
        self.wrapping_add(a.wrapping_mul(b))
    }
}

/// Batched product: `out[bi] = a[a_off[bi]] (m x k) @ b[b_off[bi]] (k x n)`,
/// where `a_at(off, i, p)` / `b_at(off, p, j)` give the flat element index
/// (so transposed views need no copy).
#[allow(clippy::too_many_arguments)]
fn product<T: Acc>(
    a: &[T],
    b: &[T],
    batches: &[(usize, usize)],
    (m, k, n): (usize, usize, usize),
    a_at: impl Fn(usize, usize, usize) -> usize,
    b_at: impl Fn(usize, usize, usize) -> usize,
    out: &mut Vec<T>,
) {
    for &(ao, bo) in batches {
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::ZERO;
                for p in 0..k {
                    acc = acc.mac(a[a_at(ao, i, p)], b[b_at(bo, p, j)]);
                }
                out.push(acc);
            }
        }
    }
}

fn matmul(inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    const OP: &str = "MatMul";
    let a = input(OP, inputs, 0)?;
    let b = input(OP, inputs, 1)?;
    same_dtype(OP, a, b)?;
    if a.rank() == 0 || b.rank() == 0 {
        return Err(Error::op(
            OP,
            format!(
                "operands must have rank >= 1, got shapes {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    // Promote 1-D operands to matrices.
    let mut ash = a.shape().to_vec();
    let mut bsh = b.shape().to_vec();
    let a_vec = ash.len() == 1;
    let b_vec = bsh.len() == 1;
    if a_vec {
        ash.insert(0, 1);
    }
    if b_vec {
        bsh.push(1);
    }
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        return Err(Error::op(
            OP,
            format!(
                "inner dimensions differ: A {:?} has {k} columns but B {:?} has {k2} rows",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let a_batch = &ash[..ash.len() - 2];
    let b_batch = &bsh[..bsh.len() - 2];
    let batch = broadcast_shape(a_batch, b_batch).ok_or_else(|| {
        Error::op(
            OP,
            format!(
                "batch dimensions of {:?} and {:?} do not broadcast",
                a.shape(),
                b.shape()
            ),
        )
    })?;
    let mut out_shape = batch.clone();
    if !a_vec {
        out_shape.push(m);
    }
    if !b_vec {
        out_shape.push(n);
    }
    let len = output_len(OP, &out_shape)?;
    let a_map = broadcast_index_map(a_batch, &batch);
    let b_map = broadcast_index_map(b_batch, &batch);
    let batches: Vec<(usize, usize)> = a_map
        .iter()
        .zip(&b_map)
        .map(|(&ai, &bi)| (ai * m * k, bi * k * n))
        .collect();
    let a_at = |off: usize, i: usize, p: usize| off + i * k + p;
    let b_at = |off: usize, p: usize, j: usize| off + p * n + j;
    let dims = (m, k, n);
    let result = match (vals(OP, "A", a)?, vals(OP, "B", b)?) {
        (Vals::F(av), Vals::F(bv)) => {
            let mut out = Vec::with_capacity(len);
            product(&av, &bv, &batches, dims, a_at, b_at, &mut out);
            Vals::F(out)
        }
        (Vals::I(av), Vals::I(bv)) => {
            let mut out = Vec::with_capacity(len);
            product(&av, &bv, &batches, dims, a_at, b_at, &mut out);
            Vals::I(out)
        }
        _ => return Err(Error::op(OP, "internal: operand domains differ")),
    };
    Tensor::new(out_shape, to_data(a.dtype(), result))
        .map_err(|e| Error::op(OP, format!("internal: output does not fit its shape: {e}")))
}

/// An f32 attribute as an exact i64, if it is one.
fn exact_int(x: f32) -> Option<i64> {
    let x = x as f64;
    (x.fract() == 0.0 && x.abs() < 9.0e18).then_some(x as i64)
}

fn gemm(
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "Gemm";
    let a = input(OP, inputs, 0)?;
    let b = input(OP, inputs, 1)?;
    same_dtype(OP, a, b)?;
    if a.rank() != 2 || b.rank() != 2 {
        return Err(Error::op(
            OP,
            format!(
                "A and B must be 2-D, got shapes {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let (ar, ac) = (a.shape()[0], a.shape()[1]);
    let (br, bc) = (b.shape()[0], b.shape()[1]);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(Error::op(
            OP,
            format!(
                "inner dimensions differ: op(A) is {m}x{k} but op(B) is {k2}x{n} (A {:?}, B {:?}, transA {trans_a}, transB {trans_b})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let out_shape = vec![m, n];
    let len = output_len(OP, &out_shape)?;
    // C, unidirectionally broadcast to [M, N].
    let c = match opt_input(inputs, 2) {
        None => None,
        Some(c) => {
            if c.dtype() != a.dtype() {
                return Err(Error::op(
                    OP,
                    format!("C has dtype {} but A has {}", c.dtype(), a.dtype()),
                ));
            }
            if broadcast_shape(c.shape(), &out_shape).as_deref() != Some(&out_shape[..]) {
                return Err(Error::op(
                    OP,
                    format!(
                        "C of shape {:?} does not broadcast to the output [{m}, {n}]",
                        c.shape()
                    ),
                ));
            }
            Some((
                vals(OP, "C", c)?,
                broadcast_index_map(c.shape(), &out_shape),
            ))
        }
    };
    let a_at = move |_: usize, i: usize, p: usize| {
        if trans_a {
            p * ac + i
        } else {
            i * ac + p
        }
    };
    let b_at = move |_: usize, p: usize, j: usize| {
        if trans_b {
            j * bc + p
        } else {
            p * bc + j
        }
    };
    let dims = (m, k, n);
    let batches = [(0usize, 0usize)];
    let result = match (vals(OP, "A", a)?, vals(OP, "B", b)?) {
        (Vals::F(av), Vals::F(bv)) => {
            let mut ab = Vec::with_capacity(len);
            product(&av, &bv, &batches, dims, a_at, b_at, &mut ab);
            let (alpha, beta) = (alpha as f64, beta as f64);
            let mut out: Vec<f64> = ab.into_iter().map(|v| alpha * v).collect();
            if let (Some((Vals::F(cv), map)), true) = (&c, beta != 0.0) {
                for (o, &ci) in out.iter_mut().zip(map) {
                    *o += beta * cv[ci];
                }
            }
            Vals::F(out)
        }
        (Vals::I(av), Vals::I(bv)) => {
            let mut ab = Vec::with_capacity(len);
            product(&av, &bv, &batches, dims, a_at, b_at, &mut ab);
            let cterm = |idx: usize| -> Option<i64> {
                match (&c, beta != 0.0) {
                    (Some((Vals::I(cv), map)), true) => Some(cv[map[idx]]),
                    _ => None,
                }
            };
            let out: Vec<i64> = match (exact_int(alpha), exact_int(beta)) {
                // Integral scalars: exact wrapping integer arithmetic.
                (Some(al), Some(be)) => ab
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let base = v.wrapping_mul(al);
                        cterm(i).map_or(base, |cv| base.wrapping_add(cv.wrapping_mul(be)))
                    })
                    .collect(),
                // Fractional scalars: like numpy, compute in f64 and truncate.
                _ => ab
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let base = alpha as f64 * v as f64;
                        let r = cterm(i).map_or(base, |cv| base + beta as f64 * cv as f64);
                        r as i64
                    })
                    .collect(),
            };
            Vals::I(out)
        }
        _ => return Err(Error::op(OP, "internal: operand domains differ")),
    };
    Tensor::new(out_shape, to_data(a.dtype(), result))
        .map_err(|e| Error::op(OP, format!("internal: output does not fit its shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::{self, seq, t};

    fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        eval(&Op::MatMul, &[Some(a), Some(b)]).map(|mut v| v.remove(0))
    }

    fn gemm_op(alpha: f32, beta: f32, ta: bool, tb: bool) -> Op {
        Op::Gemm {
            alpha,
            beta,
            trans_a: ta,
            trans_b: tb,
        }
    }

    fn assert_close(got: &Tensor, shape: &[usize], want: &[f32]) {
        testing::assert_close(got, shape, want, 1e-5);
    }

    #[test]
    fn matmul_2d_and_vectors() {
        let a = seq(&[2, 3]);
        let b = seq(&[3, 2]);
        assert_close(&mm(&a, &b).unwrap(), &[2, 2], &[10., 13., 28., 40.]);
        // 1-D x 2-D, 2-D x 1-D, 1-D x 1-D.
        let v = t(&[3], vec![1., 2., 3.]);
        assert_close(&mm(&v, &b).unwrap(), &[2], &[16., 22.]);
        assert_close(&mm(&a, &v).unwrap(), &[2], &[8., 26.]);
        let y = mm(&v, &v).unwrap();
        assert_close(&y, &[], &[14.]);
    }

    #[test]
    fn matmul_batched_broadcast() {
        // np.matmul(arange(12).reshape(2,1,2,3), arange(18).reshape(3,3,2))
        let a = seq(&[2, 1, 2, 3]);
        let b = seq(&[3, 3, 2]);
        let y = mm(&a, &b).unwrap();
        assert_close(
            &y,
            &[2, 3, 2, 2],
            &[
                10., 13., 28., 40., 28., 31., 100., 112., 46., 49., 172., 184., 46., 67., 64., 94.,
                172., 193., 244., 274., 298., 319., 424., 454.,
            ],
        );
        // 1-D x 3-D: np.matmul(arange(3), arange(12).reshape(2,3,2)).
        let v = seq(&[3]);
        let y = mm(&v, &seq(&[2, 3, 2])).unwrap();
        assert_close(&y, &[2, 2], &[10., 13., 28., 31.]);
        // 3-D x 1-D: np.matmul(arange(12).reshape(2,2,3), arange(3)).
        let y = mm(&seq(&[2, 2, 3]), &v).unwrap();
        assert_close(&y, &[2, 2], &[5., 14., 23., 32.]);
        // Empty batch and K = 0.
        let y = mm(&seq(&[0, 2, 3]), &seq(&[3, 4])).unwrap();
        assert_eq!(y.shape(), &[0, 2, 4]);
        let y = mm(&seq(&[2, 0]), &seq(&[0, 3])).unwrap();
        assert_close(&y, &[2, 3], &[0.; 6]);
    }

    #[test]
    fn matmul_dtypes() {
        let a = Tensor::new(vec![2], TensorData::I32(vec![i32::MAX, 2])).unwrap();
        let b = Tensor::new(vec![2], TensorData::I32(vec![2, 3])).unwrap();
        let y = mm(&a, &b).unwrap();
        assert_eq!(y.dtype(), DType::I32);
        // Wraps like numpy int32: MAX*2 + 6 = 4.
        assert_eq!(y.to_f64_vec(), vec![4.0]);
        let a = Tensor::new(vec![1, 2], TensorData::U64(vec![u64::MAX, 1])).unwrap();
        let b = Tensor::new(vec![2, 1], TensorData::U64(vec![2, 5])).unwrap();
        let y = mm(&a, &b).unwrap();
        match y.data() {
            TensorData::U64(v) => assert_eq!(v, &vec![3]),
            _ => panic!("wrong dtype"),
        }
        let a = Tensor::new(
            vec![2],
            TensorData::F16(vec![f16::from_f32(0.5), f16::from_f32(1.5)]),
        )
        .unwrap();
        let y = mm(&a, &a).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        assert_eq!(y.to_f32_vec(), vec![2.5]);
        let a = Tensor::new(vec![1, 1], TensorData::F64(vec![0.1])).unwrap();
        let y = mm(&a, &a).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        assert_eq!(y.to_f64_vec(), vec![0.1 * 0.1]);
    }

    #[test]
    fn matmul_errors() {
        assert!(mm(&seq(&[2, 3]), &seq(&[2, 3])).is_err());
        assert!(mm(&seq(&[2, 2, 3]), &seq(&[3, 3, 2])).is_err());
        assert!(mm(&Tensor::scalar_f32(1.0), &seq(&[1])).is_err());
        let i = Tensor::from_i64(vec![3], vec![1, 2, 3]).unwrap();
        assert!(mm(&seq(&[3]), &i).is_err());
        let bo = Tensor::new(vec![1], TensorData::Bool(vec![true])).unwrap();
        assert!(mm(&bo, &bo).is_err());
        assert!(eval(&Op::MatMul, &[Some(&seq(&[2]))]).is_err());
    }

    #[test]
    fn gemm_variants() {
        // A = arange(6).reshape(3,2) used transposed (2x3), B = arange(6)
        // .reshape(2,3) used transposed (3x2): alpha 0.5, beta 2, C [1, 2].
        let a = seq(&[3, 2]);
        let b = seq(&[2, 3]);
        let c = t(&[2], vec![1., 2.]);
        let y = eval(
            &gemm_op(0.5, 2.0, true, true),
            &[Some(&a), Some(&b), Some(&c)],
        )
        .unwrap()
        .remove(0);
        // 0.5 * A.T @ B.T + 2 * C = 0.5*[[10,28],[13,40]] + [2,4].
        assert_close(&y, &[2, 2], &[7., 18., 8.5, 24.]);
        // No C; plain.
        let a2 = seq(&[2, 3]);
        let y = eval(
            &gemm_op(1.0, 1.0, false, true),
            &[Some(&a2), Some(&b), None],
        )
        .unwrap()
        .remove(0);
        assert_close(&y, &[2, 2], &[5., 14., 14., 50.]);
        // C as [M, 1] column and as a scalar.
        let ccol = t(&[2, 1], vec![100., 200.]);
        let y = eval(
            &gemm_op(1.0, 1.0, false, true),
            &[Some(&a2), Some(&b), Some(&ccol)],
        )
        .unwrap()
        .remove(0);
        assert_close(&y, &[2, 2], &[105., 114., 214., 250.]);
        let cs = Tensor::scalar_f32(1.0);
        let y = eval(
            &gemm_op(1.0, 0.0, false, true),
            &[Some(&a2), Some(&b), Some(&cs)],
        )
        .unwrap()
        .remove(0);
        assert_close(&y, &[2, 2], &[5., 14., 14., 50.]);
        // C that does not broadcast.
        let bad = t(&[3], vec![0.; 3]);
        assert!(eval(
            &gemm_op(1.0, 1.0, false, true),
            &[Some(&a2), Some(&b), Some(&bad)]
        )
        .is_err());
        assert!(eval(&gemm_op(1.0, 1.0, false, false), &[Some(&a2), Some(&b)]).is_err());
        assert!(eval(
            &gemm_op(1.0, 1.0, false, false),
            &[Some(&seq(&[3])), Some(&b)]
        )
        .is_err());
    }

    #[test]
    fn gemm_ints() {
        let a = Tensor::from_i64(vec![1, 2], vec![1, 2]).unwrap();
        let b = Tensor::from_i64(vec![2, 1], vec![3, 4]).unwrap();
        let c = Tensor::from_i64(vec![1], vec![5]).unwrap();
        let y = eval(
            &gemm_op(2.0, 3.0, false, false),
            &[Some(&a), Some(&b), Some(&c)],
        )
        .unwrap()
        .remove(0);
        assert_eq!(y.as_i64().unwrap(), &[2 * 11 + 15]);
        // Fractional alpha truncates like numpy's astype.
        let y = eval(
            &gemm_op(0.25, 1.0, false, false),
            &[Some(&a), Some(&b), Some(&c)],
        )
        .unwrap()
        .remove(0);
        assert_eq!(y.as_i64().unwrap(), &[7]);
    }
}

//! Reference kernels for the ops mlc's passes create: FusedConv and
//! FusedMatMul (Elementwise chains are in `ew_chain.rs`).
//!
//! Both are written as the composition of the standard kernels they stand
//! for, so the fused op is by construction the unfused graph: FusedConv runs
//! the Conv kernel (with its bias), adds the residual with the Add kernel and
//! applies the activation; FusedMatMul transposes its operands with the
//! Transpose kernel when flagged, multiplies with the MatMul kernel, scales
//! with Mul, adds the bias with Add and applies the activation. Each
//! activation is evaluated by the standalone op's kernel (Relu, Clip,
//! Sigmoid, ...), so there is exactly one definition of each. The only
//! extra checks are that the residual and bias broadcast onto the product
//! without changing its shape.

use crate::ir::ops::nn::{conv, linalg};
use crate::ir::ops::util::{input, not_held, opt_input};
use crate::ir::ops::{array, math};
use crate::ir::{Activation, BinaryOp, Op, Tensor, TensorData, UnaryOp};
use crate::{Error, Result};

/// Evaluates FusedConv, FusedMatMul or an Elementwise chain.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    match op {
        Op::Elementwise { .. } => super::ew_chain::eval(op, inputs),
        Op::FusedConv { conv, act } => fused_conv(conv, act.as_ref(), inputs).map(|t| vec![t]),
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha,
            act,
        } => fused_matmul(*trans_a, *trans_b, *alpha, act.as_ref(), inputs).map(|t| vec![t]),
        other => Err(Error::Internal(not_held("fused", other))),
    }
}

/// The standalone op an activation stands for, with the Clip bounds when it
/// is a Clip (as f32 scalars; Clip converts them to the input's dtype).
pub(crate) fn activation_op(act: &Activation) -> (Op, Option<(f32, f32)>) {
    let u = |u: UnaryOp| (Op::Unary(u), None);
    match act {
        Activation::Relu => u(UnaryOp::Relu),
        Activation::Clip { min, max } => (Op::Clip, Some((*min, *max))),
        Activation::Sigmoid => u(UnaryOp::Sigmoid),
        Activation::Tanh => u(UnaryOp::Tanh),
        Activation::HardSigmoid { alpha, beta } => u(UnaryOp::HardSigmoid {
            alpha: *alpha,
            beta: *beta,
        }),
        Activation::HardSwish => u(UnaryOp::HardSwish),
        Activation::LeakyRelu { alpha } => u(UnaryOp::LeakyRelu { alpha: *alpha }),
        Activation::Gelu { tanh_approx } => u(UnaryOp::Gelu {
            tanh_approx: *tanh_approx,
        }),
    }
}

/// Applies an activation through the standalone op's kernel.
pub(crate) fn apply_activation(act: Option<&Activation>, x: Tensor) -> Result<Tensor> {
    let Some(act) = act else { return Ok(x) };
    let (op, bounds) = activation_op(act);
    let out = match bounds {
        None => math::reference::eval(&op, &[Some(&x)])?,
        Some((lo, hi)) => {
            let (lo, hi) = (Tensor::scalar_f32(lo), Tensor::scalar_f32(hi));
            math::reference::eval(&op, &[Some(&x), Some(&lo), Some(&hi)])?
        }
    };
    single(op.onnx_type(), out)
}

/// The one output of a single-output kernel.
fn single(op: &'static str, mut out: Vec<Tensor>) -> Result<Tensor> {
    if out.len() != 1 {
        return Err(Error::op(
            op,
            format!("internal: kernel gave {} outputs", out.len()),
        ));
    }
    Ok(out.remove(0))
}

/// `y + e` with numpy broadcasting, where `e` must not change `y`'s shape.
pub(crate) fn add_onto(op: &'static str, what: &str, y: Tensor, e: &Tensor) -> Result<Tensor> {
    if e.dtype() != y.dtype() {
        return Err(Error::op(
            op,
            format!(
                "{what} has dtype {} but the product has {}",
                e.dtype(),
                y.dtype()
            ),
        ));
    }
    let fits = e.rank() <= y.rank()
        && e.shape()
            .iter()
            .rev()
            .zip(y.shape().iter().rev())
            .all(|(&d, &o)| d == o || d == 1);
    if !fits {
        return Err(Error::op(
            op,
            format!(
                "{what} of shape {:?} does not broadcast onto the output shape {:?}",
                e.shape(),
                y.shape()
            ),
        ));
    }
    single(
        op,
        math::reference::eval(&Op::Binary(BinaryOp::Add), &[Some(&y), Some(e)])?,
    )
}

/// `act(conv(X, W) + B + R)`.
fn fused_conv(
    attrs: &crate::ir::ConvAttrs,
    act: Option<&Activation>,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "FusedConv";
    let x = input(OP, inputs, 0)?;
    let w = input(OP, inputs, 1)?;
    let b = opt_input(inputs, 2);
    let y = single(
        OP,
        conv::eval(&Op::Conv(attrs.clone()), &[Some(x), Some(w), b])?,
    )?;
    let y = match opt_input(inputs, 3) {
        Some(r) => add_onto(OP, "the residual R", y, r)?,
        None => y,
    };
    apply_activation(act, y)
}

/// `t` with its last two dims swapped.
fn transpose_last2(op: &'static str, what: &str, t: &Tensor) -> Result<Tensor> {
    let r = t.rank();
    if r < 2 {
        return Err(Error::op(
            op,
            format!(
                "{what} is transposed but has shape {:?}; it needs rank >= 2",
                t.shape()
            ),
        ));
    }
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    single(
        op,
        array::reference::eval(&Op::Transpose { perm }, &[Some(t)], 1)?,
    )
}

/// `act(alpha * op(A) @ op(B) + bias)`.
fn fused_matmul(
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    act: Option<&Activation>,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "FusedMatMul";
    let a = input(OP, inputs, 0)?;
    let b = input(OP, inputs, 1)?;
    let ta;
    let a = if trans_a {
        ta = transpose_last2(OP, "A", a)?;
        &ta
    } else {
        a
    };
    let tb;
    let b = if trans_b {
        tb = transpose_last2(OP, "B", b)?;
        &tb
    } else {
        b
    };
    let mut y = single(OP, linalg::eval(&Op::MatMul, &[Some(a), Some(b)])?)?;
    if alpha != 1.0 {
        if !y.dtype().is_float() {
            return Err(Error::op(
                OP,
                format!(
                    "alpha {alpha} needs floating point operands, got {}",
                    y.dtype()
                ),
            ));
        }
        let s = Tensor::new(vec![], TensorData::from_f64(y.dtype(), &[alpha as f64]))
            .map_err(|e| Error::op(OP, format!("internal: {e}")))?;
        y = single(
            OP,
            math::reference::eval(&Op::Binary(BinaryOp::Mul), &[Some(&y), Some(&s)])?,
        )?;
    }
    if let Some(bias) = opt_input(inputs, 2) {
        y = add_onto(OP, "the bias", y, bias)?;
    }
    apply_activation(act, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::{assert_close, t};
    use crate::ir::{AutoPad, ConvAttrs, DType};

    /// Deterministic pseudo-random values in [-2, 2).
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::ir::ops::util::testing::random(shape, seed, 2.0)
    }

    fn run1(op: &Op, ins: &[Option<&Tensor>]) -> Tensor {
        crate::ir::ops::eval(op, ins, 1).unwrap().remove(0)
    }

    fn all_acts() -> Vec<Activation> {
        vec![
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 6.0 },
            Activation::Clip {
                min: -0.5,
                max: 0.25,
            },
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            Activation::HardSwish,
            Activation::LeakyRelu { alpha: 0.1 },
            Activation::Gelu { tanh_approx: false },
            Activation::Gelu { tanh_approx: true },
        ]
    }

    /// The activation through the standalone op as a graph would run it.
    fn unfused_act(act: &Activation, x: &Tensor) -> Tensor {
        match act {
            Activation::Clip { min, max } => {
                let (lo, hi) = (Tensor::scalar_f32(*min), Tensor::scalar_f32(*max));
                run1(&Op::Clip, &[Some(x), Some(&lo), Some(&hi)])
            }
            _ => run1(&activation_op(act).0, &[Some(x)]),
        }
    }

    fn conv_attrs(group: usize, pads: usize, stride: usize) -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![stride, stride],
            dilations: vec![1, 1],
            pads: vec![pads; 4],
            auto_pad: AutoPad::NotSet,
            group,
        }
    }

    #[test]
    fn activation_values_match_hand_computed() {
        let x = t(&[5], vec![-8.0, -1.0, 0.0, 2.0, 7.0]);
        let relu6 =
            apply_activation(Some(&Activation::Clip { min: 0.0, max: 6.0 }), x.clone()).unwrap();
        assert_close(&relu6, &[5], &[0.0, 0.0, 0.0, 2.0, 6.0], 0.0);
        let lrelu =
            apply_activation(Some(&Activation::LeakyRelu { alpha: 0.5 }), x.clone()).unwrap();
        assert_close(&lrelu, &[5], &[-4.0, -0.5, 0.0, 2.0, 7.0], 0.0);
        let hs = apply_activation(Some(&Activation::HardSwish), x.clone()).unwrap();
        // x * clamp(x/6 + 0.5, 0, 1)
        assert_close(
            &hs,
            &[5],
            &[0.0, -1.0 / 3.0, 0.0, 2.0 * 5.0 / 6.0, 7.0],
            1e-6,
        );
        let none = apply_activation(None, x.clone()).unwrap();
        assert!(none == x);
    }

    #[test]
    fn fused_conv_equals_conv_add_activation() {
        let x = rand(&[2, 4, 5, 5], 1);
        let w = rand(&[6, 2, 3, 3], 2);
        let b = rand(&[6], 3);
        let attrs = conv_attrs(2, 1, 1);
        let conv = run1(&Op::Conv(attrs.clone()), &[Some(&x), Some(&w), Some(&b)]);
        let r = rand(conv.shape(), 4);
        let summed = run1(&Op::Binary(BinaryOp::Add), &[Some(&conv), Some(&r)]);
        for act in all_acts() {
            let want = unfused_act(&act, &summed);
            let op = Op::FusedConv {
                conv: attrs.clone(),
                act: Some(act.clone()),
            };
            let got = run1(&op, &[Some(&x), Some(&w), Some(&b), Some(&r)]);
            assert_close(&got, want.shape(), &want.to_f32_vec(), 0.0);
        }
        // No bias, no residual, no activation: plain Conv.
        let op = Op::FusedConv {
            conv: attrs.clone(),
            act: None,
        };
        let plain = run1(&Op::Conv(attrs), &[Some(&x), Some(&w)]);
        let got = run1(&op, &[Some(&x), Some(&w)]);
        assert!(got == plain);
        // Residual without bias (input 2 absent).
        let got = run1(&op, &[Some(&x), Some(&w), None, Some(&r)]);
        let want = run1(&Op::Binary(BinaryOp::Add), &[Some(&plain), Some(&r)]);
        assert!(got == want);
    }

    #[test]
    fn fused_conv_rejects_bad_residual_and_bias() {
        let x = rand(&[1, 2, 4, 4], 5);
        let w = rand(&[3, 2, 3, 3], 6);
        let op = Op::FusedConv {
            conv: conv_attrs(1, 0, 1),
            act: Some(Activation::Relu),
        };
        // Output is [1,3,2,2]; a [1,3,3,3] residual does not fit.
        let r = rand(&[1, 3, 3, 3], 7);
        let e = crate::ir::ops::eval(&op, &[Some(&x), Some(&w), None, Some(&r)], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not broadcast onto the output"), "{e}");
        // A residual that would grow the output is refused too.
        let r = rand(&[2, 3, 2, 2], 7);
        assert!(crate::ir::ops::eval(&op, &[Some(&x), Some(&w), None, Some(&r)], 1).is_err());
        // Bias of the wrong length.
        let b = rand(&[2], 8);
        assert!(crate::ir::ops::eval(&op, &[Some(&x), Some(&w), Some(&b)], 1).is_err());
        // Residual of another dtype.
        let r = Tensor::zeros(DType::F64, vec![1, 3, 2, 2]);
        let e = crate::ir::ops::eval(&op, &[Some(&x), Some(&w), None, Some(&r)], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype"), "{e}");
        // Missing weight.
        assert!(crate::ir::ops::eval(&op, &[Some(&x)], 1).is_err());
    }

    #[test]
    fn fused_conv_residual_may_broadcast_per_channel() {
        let x = rand(&[1, 1, 3, 3], 9);
        let w = rand(&[2, 1, 1, 1], 10);
        let r = t(&[1, 2, 1, 1], vec![10.0, -10.0]);
        let attrs = ConvAttrs {
            kernel_shape: vec![1, 1],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let op = Op::FusedConv {
            conv: attrs.clone(),
            act: None,
        };
        let got = run1(&op, &[Some(&x), Some(&w), None, Some(&r)]);
        let conv = run1(&Op::Conv(attrs), &[Some(&x), Some(&w)]);
        let want: Vec<f32> = conv
            .to_f32_vec()
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i < 9 { 10.0 } else { -10.0 })
            .collect();
        assert_close(&got, &[1, 2, 3, 3], &want, 0.0);
    }

    /// Composes Transpose, MatMul, Mul, Add and the activation.
    fn unfused_matmul(
        a: &Tensor,
        b: &Tensor,
        ta: bool,
        tb: bool,
        alpha: f32,
        bias: Option<&Tensor>,
        act: Option<&Activation>,
    ) -> Tensor {
        let tr = |x: &Tensor| {
            let r = x.rank();
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 2, r - 1);
            run1(&Op::Transpose { perm }, &[Some(x)])
        };
        let a = if ta { tr(a) } else { a.clone() };
        let b = if tb { tr(b) } else { b.clone() };
        let mut y = run1(&Op::MatMul, &[Some(&a), Some(&b)]);
        if alpha != 1.0 {
            let s = Tensor::scalar_f32(alpha);
            y = run1(&Op::Binary(BinaryOp::Mul), &[Some(&y), Some(&s)]);
        }
        if let Some(bias) = bias {
            y = run1(&Op::Binary(BinaryOp::Add), &[Some(&y), Some(bias)]);
        }
        match act {
            Some(act) => unfused_act(act, &y),
            None => y,
        }
    }

    #[test]
    fn fused_matmul_equals_composition() {
        // Batched A [2,3,4] (or its transpose [2,4,3]) times B [4,5] (or [5,4]).
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rand(if ta { &[2, 4, 3] } else { &[2, 3, 4] }, 11);
            let b = rand(if tb { &[5, 4] } else { &[4, 5] }, 12);
            let bias = rand(&[5], 13);
            for act in all_acts().iter().map(Some).chain([None]) {
                for alpha in [1.0, 0.5] {
                    let op = Op::FusedMatMul {
                        trans_a: ta,
                        trans_b: tb,
                        alpha,
                        act: act.cloned(),
                    };
                    let got = run1(&op, &[Some(&a), Some(&b), Some(&bias)]);
                    let want = unfused_matmul(&a, &b, ta, tb, alpha, Some(&bias), act);
                    assert_eq!(got.shape(), &[2, 3, 5]);
                    assert_close(&got, want.shape(), &want.to_f32_vec(), 0.0);
                }
            }
        }
    }

    #[test]
    fn fused_matmul_hand_computed_and_broadcast_bias() {
        // [[1,2],[3,4]]^T @ [[1,0],[0,1]] * 2 + [[10],[20]] -> relu
        let a = t(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2, 2], vec![1.0, 0.0, 0.0, -1.0]);
        let bias = t(&[2, 1], vec![10.0, -20.0]);
        let op = Op::FusedMatMul {
            trans_a: true,
            trans_b: false,
            alpha: 2.0,
            act: Some(Activation::Relu),
        };
        let got = run1(&op, &[Some(&a), Some(&b), Some(&bias)]);
        // A^T = [[1,3],[2,4]]; A^T @ B = [[1,-3],[2,-4]]; *2 = [[2,-6],[4,-8]];
        // + [[10],[-20]] = [[12,4],[-16,-28]]; relu.
        assert_close(&got, &[2, 2], &[12.0, 4.0, 0.0, 0.0], 0.0);
        // Vector B (1-D) is numpy matmul: [2,2] @ [2] -> [2].
        let v = t(&[2], vec![1.0, 1.0]);
        let op = Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act: None,
        };
        let got = run1(&op, &[Some(&a), Some(&v)]);
        assert_close(&got, &[2], &[3.0, 7.0], 0.0);
        // Size-1 and empty dims.
        let a = rand(&[0, 1, 3], 14);
        let b = rand(&[3, 2], 15);
        let got = run1(&op, &[Some(&a), Some(&b), Some(&t(&[2], vec![1.0, 2.0]))]);
        assert_eq!(got.shape(), &[0, 1, 2]);
    }

    #[test]
    fn fused_matmul_errors() {
        let a = rand(&[2, 3], 16);
        let b = rand(&[3, 4], 17);
        let op = |ta: bool, tb: bool| Op::FusedMatMul {
            trans_a: ta,
            trans_b: tb,
            alpha: 1.0,
            act: None,
        };
        // Inner dims clash once B is transposed.
        assert!(crate::ir::ops::eval(&op(false, true), &[Some(&a), Some(&b)], 1).is_err());
        // A transposed 1-D operand.
        let v = rand(&[3], 18);
        let e = crate::ir::ops::eval(&op(false, true), &[Some(&a), Some(&v)], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank >= 2"), "{e}");
        // A bias that grows the output.
        let bias = rand(&[3, 2, 4], 19);
        let e = crate::ir::ops::eval(&op(false, false), &[Some(&a), Some(&b), Some(&bias)], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not broadcast"), "{e}");
        // A bias that does not broadcast at all.
        let bias = rand(&[3], 19);
        assert!(
            crate::ir::ops::eval(&op(false, false), &[Some(&a), Some(&b), Some(&bias)], 1).is_err()
        );
        // Integer operands work without alpha, not with a fractional one.
        let ai = Tensor::new(vec![1, 2], TensorData::I32(vec![1, -2])).unwrap();
        let bi = Tensor::new(vec![2, 1], TensorData::I32(vec![3, 4])).unwrap();
        let got = run1(&op(false, false), &[Some(&ai), Some(&bi)]);
        assert_eq!(got.to_i64_vec().unwrap(), vec![-5]);
        let half = Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 0.5,
            act: None,
        };
        assert!(crate::ir::ops::eval(&half, &[Some(&ai), Some(&bi)], 1).is_err());
        // Relu on integers goes through the integer Relu.
        let relu = Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act: Some(Activation::Relu),
        };
        let got = run1(&relu, &[Some(&ai), Some(&bi)]);
        assert_eq!(got.to_i64_vec().unwrap(), vec![0]);
    }

    #[test]
    fn other_float_types_go_through_the_same_kernels() {
        let to = |x: &Tensor, dt: DType| {
            Tensor::new(
                x.shape().to_vec(),
                TensorData::from_f64(dt, &x.to_f64_vec()),
            )
            .unwrap()
        };
        for dt in [DType::F64, DType::F16] {
            let a = to(&rand(&[3, 4], 20), dt);
            let b = to(&rand(&[4, 2], 21), dt);
            let bias = to(&rand(&[2], 22), dt);
            let op = Op::FusedMatMul {
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                act: Some(Activation::Sigmoid),
            };
            let got = run1(&op, &[Some(&a), Some(&b), Some(&bias)]);
            assert_eq!(got.dtype(), dt);
            let y = run1(&Op::MatMul, &[Some(&a), Some(&b)]);
            let y = run1(&Op::Binary(BinaryOp::Add), &[Some(&y), Some(&bias)]);
            let want = run1(&Op::Unary(UnaryOp::Sigmoid), &[Some(&y)]);
            assert!(got == want, "{dt}");
        }
    }
}

//! Reference kernel for Elementwise chains (`Op::Elementwise`).
//!
//! All inputs are f32 and broadcast together (numpy rules) to the output
//! shape. For every output element the steps run in order, each on the
//! element's input values, earlier step results and scalar constants; the
//! last step is the result. Each step does exactly the arithmetic of the
//! standalone kernel for the same op on f32 tensors: Add/Sub/Mul/Div in f32,
//! unary math and Pow in f64 rounded to f32 after every step, Clip by f32
//! comparisons. A fused chain is therefore bit-identical to the unfused ops.

use crate::ir::ops::math::reference::unary_float;
use crate::ir::ops::util::{broadcast_index_map, broadcast_shape, not_held};
use crate::ir::{BinaryOp, EwArg, EwStep, Op, Tensor, UnaryOp};
use crate::{Error, Result};

const NAME: &str = "Elementwise";

/// Evaluates an Elementwise chain.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let Op::Elementwise { steps } = op else {
        return Err(Error::Internal(not_held("fused", op)));
    };
    check_steps(steps, inputs.len())?;
    let mut vals: Vec<&[f32]> = Vec::with_capacity(inputs.len());
    let mut shape: Vec<usize> = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        let t = t.ok_or_else(|| Error::op(NAME, format!("input {i} is missing")))?;
        let v = t
            .as_f32()
            .ok_or_else(|| Error::op(NAME, format!("input {i} must be f32, got {}", t.dtype())))?;
        vals.push(v);
        shape = broadcast_shape(&shape, t.shape()).ok_or_else(|| {
            Error::op(
                NAME,
                format!(
                    "input shapes {:?} cannot be broadcast together",
                    inputs
                        .iter()
                        .flatten()
                        .map(|t| t.shape())
                        .collect::<Vec<_>>()
                ),
            )
        })?;
    }
    // The f32 output and an index map per input.
    let n = crate::limits::check_shape(
        || format!("{NAME} output of shape {shape:?}"),
        &shape,
        4 + inputs.len() * std::mem::size_of::<usize>(),
    )?;
    // Index maps only for non-empty outputs (no stride products of shapes
    // like [0, 2^40, 2^40]).
    let maps: Vec<Vec<usize>> = if n == 0 {
        vec![Vec::new(); inputs.len()]
    } else {
        inputs
            .iter()
            .flatten()
            .map(|t| broadcast_index_map(t.shape(), &shape))
            .collect()
    };
    let mut out = Vec::with_capacity(n);
    let mut scratch = vec![0f32; steps.len()];
    for e in 0..n {
        for (k, step) in steps.iter().enumerate() {
            let arg = |a: &EwArg| -> f32 {
                match *a {
                    EwArg::Input(i) => vals[i][maps[i][e]],
                    EwArg::Step(j) => scratch[j],
                    EwArg::Scalar(s) => s,
                }
            };
            scratch[k] = match step {
                EwStep::Unary(u, a) => unary_float(u, arg(a) as f64) as f32,
                EwStep::Binary(b, x, y) => binary(*b, arg(x), arg(y)),
                EwStep::Clip(a, lo, hi) => clip(arg(a), *lo, *hi),
            };
        }
        // check_steps guarantees at least one step.
        out.push(scratch[steps.len() - 1]);
    }
    let t = Tensor::from_f32(shape, out)
        .map_err(|e| Error::op(NAME, format!("internal shape error: {e}")))?;
    Ok(vec![t])
}

/// Checks that the chain is non-empty, references only existing inputs and
/// earlier steps, and uses only f32 arithmetic ops.
fn check_steps(steps: &[EwStep], n_inputs: usize) -> Result<()> {
    if steps.is_empty() {
        return Err(Error::op(NAME, "the chain has no steps"));
    }
    for (k, step) in steps.iter().enumerate() {
        let args: Vec<&EwArg> = match step {
            EwStep::Unary(u, a) => {
                if matches!(u, UnaryOp::Not) {
                    return Err(Error::op(
                        NAME,
                        format!("step {k}: Not is bool-only and cannot be a step"),
                    ));
                }
                vec![a]
            }
            EwStep::Binary(b, x, y) => {
                if !b.is_chain_arithmetic() {
                    return Err(Error::op(
                        NAME,
                        format!("step {k}: {b:?} is not an arithmetic op"),
                    ));
                }
                vec![x, y]
            }
            EwStep::Clip(a, _, _) => vec![a],
        };
        for a in args {
            match *a {
                EwArg::Input(i) if i >= n_inputs => {
                    return Err(Error::op(
                        NAME,
                        format!("step {k} reads input {i}, but the node has {n_inputs} inputs"),
                    ))
                }
                EwArg::Step(j) if j >= k => {
                    return Err(Error::op(
                        NAME,
                        format!("step {k} reads step {j}, which does not come before it"),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// One binary step with the standalone f32 kernel's arithmetic.
fn binary(b: BinaryOp, x: f32, y: f32) -> f32 {
    match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        // Pow on f32 evaluates in f64 and rounds (like the Pow kernel).
        BinaryOp::Pow => (x as f64).powf(y as f64) as f32,
        // Comparisons and logic are rejected by check_steps.
        _ => f32::NAN,
    }
}

/// Clip like the standalone kernel: raise to `lo`, then lower to `hi`; NaN
/// stays NaN. An absent bound is an infinity, which never clamps.
fn clip(x: f32, lo: f32, hi: f32) -> f32 {
    let mut y = x;
    if y < lo {
        y = lo;
    }
    if y > hi {
        y = hi;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::eval as dispatch;
    use crate::ir::ops::util::testing::t;
    use crate::ir::{DType, TensorData};

    fn run(steps: Vec<EwStep>, ins: &[&Tensor]) -> Result<Tensor> {
        let refs: Vec<Option<&Tensor>> = ins.iter().map(|t| Some(*t)).collect();
        eval(&Op::Elementwise { steps }, &refs).map(|mut v| v.remove(0))
    }

    fn one(op: Op, ins: &[&Tensor]) -> Tensor {
        let refs: Vec<Option<&Tensor>> = ins.iter().map(|t| Some(*t)).collect();
        dispatch(&op, &refs, 1).unwrap().remove(0)
    }

    /// Deterministic pseudo-random f32s in [-3, 3).
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::ir::ops::util::testing::random(shape, seed, 3.0)
    }

    fn bits(x: &Tensor) -> Vec<u32> {
        x.as_f32().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn broadcasts_and_chains_steps() {
        // (x + y) * 2 - 1 with x: [2,1], y: [3]
        let x = t(&[2, 1], vec![1.0, 10.0]);
        let y = t(&[3], vec![0.0, 1.0, 2.0]);
        let got = run(
            vec![
                EwStep::Binary(BinaryOp::Add, EwArg::Input(0), EwArg::Input(1)),
                EwStep::Binary(BinaryOp::Mul, EwArg::Step(0), EwArg::Scalar(2.0)),
                EwStep::Binary(BinaryOp::Sub, EwArg::Step(1), EwArg::Scalar(1.0)),
            ],
            &[&x, &y],
        )
        .unwrap();
        assert_eq!(got.shape(), &[2, 3]);
        assert_eq!(
            got.as_f32().unwrap(),
            &[1.0, 3.0, 5.0, 19.0, 21.0, 23.0][..]
        );
    }

    #[test]
    fn clip_unary_and_pow_steps() {
        let x = t(&[4], vec![-2.0, 0.25, 4.0, f32::NAN]);
        let got = run(
            vec![
                EwStep::Clip(EwArg::Input(0), 0.0, 3.0),
                EwStep::Unary(UnaryOp::Sqrt, EwArg::Step(0)),
                EwStep::Binary(BinaryOp::Pow, EwArg::Scalar(2.0), EwArg::Step(1)),
            ],
            &[&x],
        )
        .unwrap();
        let v = got.as_f32().unwrap();
        assert_eq!(v[0], 1.0); // 2^sqrt(0)
        assert_eq!(v[1], 2f32.powf(0.5));
        assert_eq!(v[2], (2f64.powf(3f64.sqrt() as f32 as f64)) as f32);
        assert!(v[3].is_nan());
        // An infinite bound never clamps.
        let got = run(
            vec![EwStep::Clip(EwArg::Input(0), f32::NEG_INFINITY, 0.5)],
            &[&x],
        )
        .unwrap();
        assert_eq!(&got.as_f32().unwrap()[..3], &[-2.0, 0.25, 0.5]);
    }

    #[test]
    fn bit_identical_to_the_unfused_ops() {
        let x = rand(&[3, 1, 5], 1);
        let y = rand(&[4, 5], 2);
        // relu(gelu(x*y) / (y + 0.5)) ^ 1.5, leaky(exp(-x)), hard-swish, erf
        let steps = vec![
            EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Input(1)),
            EwStep::Unary(UnaryOp::Gelu { tanh_approx: false }, EwArg::Step(0)),
            EwStep::Binary(BinaryOp::Add, EwArg::Input(1), EwArg::Scalar(0.5)),
            EwStep::Binary(BinaryOp::Div, EwArg::Step(1), EwArg::Step(2)),
            EwStep::Unary(UnaryOp::Relu, EwArg::Step(3)),
            EwStep::Binary(BinaryOp::Pow, EwArg::Step(4), EwArg::Scalar(1.5)),
            EwStep::Unary(UnaryOp::Erf, EwArg::Step(5)),
            EwStep::Unary(UnaryOp::HardSwish, EwArg::Step(6)),
            EwStep::Unary(UnaryOp::LeakyRelu { alpha: 0.1 }, EwArg::Step(7)),
            EwStep::Clip(EwArg::Step(8), -0.5, 0.75),
        ];
        let got = run(steps, &[&x, &y]).unwrap();
        let s = |v: f32| Tensor::scalar_f32(v);
        let m = one(Op::Binary(BinaryOp::Mul), &[&x, &y]);
        let g = one(Op::Unary(UnaryOp::Gelu { tanh_approx: false }), &[&m]);
        let a = one(Op::Binary(BinaryOp::Add), &[&y, &s(0.5)]);
        let d = one(Op::Binary(BinaryOp::Div), &[&g, &a]);
        let r = one(Op::Unary(UnaryOp::Relu), &[&d]);
        let p = one(Op::Binary(BinaryOp::Pow), &[&r, &s(1.5)]);
        let e = one(Op::Unary(UnaryOp::Erf), &[&p]);
        let h = one(Op::Unary(UnaryOp::HardSwish), &[&e]);
        let l = one(Op::Unary(UnaryOp::LeakyRelu { alpha: 0.1 }), &[&h]);
        let c = one(Op::Clip, &[&l, &s(-0.5), &s(0.75)]);
        assert_eq!(got.shape(), c.shape());
        assert_eq!(got.shape(), &[3, 4, 5]);
        assert_eq!(bits(&got), bits(&c));
    }

    #[test]
    fn empty_and_size_one_shapes() {
        let x = t(&[0, 3], vec![]);
        let y = t(&[1, 3], vec![1.0, 2.0, 3.0]);
        let steps = vec![EwStep::Binary(
            BinaryOp::Add,
            EwArg::Input(0),
            EwArg::Input(1),
        )];
        let got = run(steps.clone(), &[&x, &y]).unwrap();
        assert_eq!(got.shape(), &[0, 3]);
        let s = Tensor::scalar_f32(2.0);
        let got = run(steps, &[&s, &y]).unwrap();
        assert_eq!(got.shape(), &[1, 3]);
        assert_eq!(got.as_f32().unwrap(), &[3.0, 4.0, 5.0][..]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = t(&[2], vec![1.0, 2.0]);
        let add = |a, b| EwStep::Binary(BinaryOp::Add, a, b);
        // Wrong dtype.
        let i = Tensor::new(vec![2], TensorData::I64(vec![1, 2])).unwrap();
        assert_eq!(i.dtype(), DType::I64);
        let e = run(vec![add(EwArg::Input(0), EwArg::Scalar(1.0))], &[&i]);
        assert!(e.unwrap_err().to_string().contains("must be f32"));
        // Out-of-range references.
        assert!(run(vec![add(EwArg::Input(1), EwArg::Scalar(1.0))], &[&x]).is_err());
        assert!(run(vec![add(EwArg::Step(0), EwArg::Scalar(1.0))], &[&x]).is_err());
        // No steps, non-arithmetic ops, Not.
        assert!(run(vec![], &[&x]).is_err());
        let cmp = EwStep::Binary(BinaryOp::Less, EwArg::Input(0), EwArg::Scalar(1.0));
        assert!(run(vec![cmp], &[&x]).is_err());
        assert!(run(vec![EwStep::Unary(UnaryOp::Not, EwArg::Input(0))], &[&x]).is_err());
        // Incompatible shapes, missing input.
        let y = t(&[3], vec![1.0, 2.0, 3.0]);
        assert!(run(vec![add(EwArg::Input(0), EwArg::Input(1))], &[&x, &y]).is_err());
        let op = Op::Elementwise {
            steps: vec![add(EwArg::Input(0), EwArg::Scalar(1.0))],
        };
        assert!(eval(&op, &[None]).is_err());
    }
}

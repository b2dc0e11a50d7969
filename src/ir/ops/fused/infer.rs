//! Type and shape inference of the fused family's ops.

use crate::ir::infer::ctx::{broadcast, in_ty, opt_ty, tt, Ctx};
use crate::ir::ops::nn::infer::{conv, matmul_type};
use crate::ir::ops::util::not_held;
use crate::ir::{DType, Dim, EwArg, EwStep, Node, Op, Shape, TensorType, UnaryOp};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    match op {
        Op::FusedConv { .. } | Op::FusedMatMul { .. } => fused_linear(cx, node),
        Op::Elementwise { .. } => elementwise_chain(cx, node),
        _ => Err(Error::Internal(not_held("fused", op))),
    }
}

/// Inference for FusedConv and FusedMatMul: the output is the underlying
/// Conv / MatMul output (the latter on the operands with their last two dims
/// swapped where flagged); the bias (FusedMatMul) and the residual
/// (FusedConv) must have the output's dtype and broadcast onto it without
/// changing its shape. FusedConv's B is checked by the Conv rule.
pub(crate) fn fused_linear(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    match &node.op {
        Op::FusedConv { conv: attrs, .. } => {
            let out = conv(cx, node, attrs)?;
            if let Some(r) = opt_ty(cx, node, 3) {
                fused_epilogue_operand(name, "the residual R", r, &out)?;
            }
            Ok(vec![out])
        }
        Op::FusedMatMul {
            trans_a, trans_b, ..
        } => {
            let a = fused_operand(name, "A", in_ty(cx, node, 0)?, *trans_a)?;
            let b = fused_operand(name, "B", in_ty(cx, node, 1)?, *trans_b)?;
            let out = matmul_type(name, &a, &b)?;
            if let Some(bias) = opt_ty(cx, node, 2) {
                fused_epilogue_operand(name, "the bias", bias, &out)?;
            }
            Ok(vec![out])
        }
        _ => Err(Error::op(name, "internal: routed to fused inference")),
    }
}

/// A FusedMatMul operand's type, its last two dims swapped when `trans`.
fn fused_operand(op: &'static str, what: &str, t: &TensorType, trans: bool) -> Result<TensorType> {
    let mut t = t.clone();
    if trans {
        let r = t.shape.rank();
        if r < 2 {
            return Err(Error::op(
                op,
                format!(
                    "{what} is transposed but has shape {}; it needs rank >= 2",
                    t.shape
                ),
            ));
        }
        t.shape.0.swap(r - 2, r - 1);
    }
    Ok(t)
}

/// Checks that `e` (bias or residual) has `out`'s dtype and broadcasts onto
/// `out` unidirectionally: no more dims, each dim 1 or equal to the output's.
pub(crate) fn fused_epilogue_operand(
    op: &'static str,
    what: &str,
    e: &TensorType,
    out: &TensorType,
) -> Result<()> {
    if e.dtype != out.dtype {
        return Err(Error::op(
            op,
            format!(
                "{what} has dtype {} but the output has {}",
                e.dtype, out.dtype
            ),
        ));
    }
    let bad = || {
        Error::op(
            op,
            format!(
                "{what} of shape {} does not broadcast onto the output {}",
                e.shape, out.shape
            ),
        )
    };
    if e.shape.rank() > out.shape.rank() {
        return Err(bad());
    }
    for (d, o) in e
        .shape
        .dims()
        .iter()
        .rev()
        .zip(out.shape.dims().iter().rev())
    {
        if d.is_one() || d == o {
            continue;
        }
        // Sizes that cannot be compared statically are accepted; the kernel
        // checks them at run time.
        if let (Dim::Known(_), Dim::Known(_)) = (d, o) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Inference for Elementwise chains: every input is f32 and the output is
/// the f32 broadcast of all inputs. The steps must be non-empty, arithmetic
/// (no comparisons, no Not) and read only existing inputs and earlier steps.
fn elementwise_chain(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let name = node.op.onnx_type();
    let Op::Elementwise { steps } = &node.op else {
        return Err(Error::op(name, "is not an Elementwise chain"));
    };
    let tys: Vec<&TensorType> = (0..node.inputs.len())
        .map(|i| in_ty(cx, node, i))
        .collect::<Result<_>>()?;
    if let Some((i, t)) = tys.iter().enumerate().find(|(_, t)| t.dtype != DType::F32) {
        return Err(Error::op(
            name,
            format!("input {i} must be f32, got {}", t.dtype),
        ));
    }
    ew_check_steps(name, steps, tys.len())?;
    let shapes: Vec<&Shape> = tys.iter().map(|t| &t.shape).collect();
    Ok(vec![tt(DType::F32, broadcast(name, &shapes)?)])
}

/// Validates the step list of an Elementwise chain with `n_inputs` inputs.
fn ew_check_steps(name: &'static str, steps: &[EwStep], n_inputs: usize) -> Result<()> {
    if steps.is_empty() {
        return Err(Error::op(name, "the chain has no steps"));
    }
    for (k, step) in steps.iter().enumerate() {
        let args: Vec<&EwArg> = match step {
            EwStep::Unary(UnaryOp::Not, _) => {
                return Err(Error::op(
                    name,
                    format!("step {k}: Not is bool-only and cannot be a step"),
                ))
            }
            EwStep::Unary(_, a) | EwStep::Clip(a, _, _) => vec![a],
            EwStep::Binary(b, _, _) if !b.is_chain_arithmetic() => {
                return Err(Error::op(
                    name,
                    format!("step {k}: {b:?} is not an arithmetic op"),
                ))
            }
            EwStep::Binary(_, x, y) => vec![x, y],
        };
        for a in args {
            match *a {
                EwArg::Input(i) if i >= n_inputs => {
                    return Err(Error::op(
                        name,
                        format!("step {k} reads input {i}, but the node has {n_inputs} inputs"),
                    ))
                }
                EwArg::Step(j) if j >= k => {
                    return Err(Error::op(
                        name,
                        format!("step {k} reads step {j}, which does not come before it"),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod fused_linear_tests {
    use super::*;
    use crate::ir::infer::infer_node;
    use crate::ir::{Activation, AutoPad};
    use crate::ir::{ConvAttrs, Graph, ValueId};

    fn ty(dims: &[&str]) -> TensorType {
        let d = dims
            .iter()
            .map(|d| match d.parse::<usize>() {
                Ok(n) => Dim::Known(n),
                Err(_) => Dim::Sym(d.to_string()),
            })
            .collect();
        TensorType::new(DType::F32, Shape(d))
    }

    /// Infers one node over inputs of the given types (`None`: absent).
    fn infer(op: Op, ins: &[Option<TensorType>]) -> Result<String> {
        let mut g = Graph::new("t", 17);
        let inputs: Vec<Option<ValueId>> = ins
            .iter()
            .enumerate()
            .map(|(i, t)| t.clone().map(|t| g.add_input(format!("i{i}"), t)))
            .collect();
        let out = g.add_value("y", ty(&[]));
        let node = Node {
            name: "n".into(),
            op,
            inputs,
            outputs: vec![out],
        };
        infer_node(&g, &node).map(|t| t[0].to_string())
    }

    fn fmm(trans_a: bool, trans_b: bool) -> Op {
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha: 0.5,
            act: Some(Activation::Relu),
        }
    }

    fn fconv() -> Op {
        Op::FusedConv {
            conv: ConvAttrs {
                kernel_shape: vec![3, 3],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![1, 1, 1, 1],
                auto_pad: AutoPad::NotSet,
                group: 1,
            },
            act: Some(Activation::Relu),
        }
    }

    #[test]
    fn fused_matmul_types() {
        let (a, b) = (Some(ty(&["batch", "3", "4"])), Some(ty(&["4", "5"])));
        assert_eq!(
            infer(fmm(false, false), &[a.clone(), b.clone()]).unwrap(),
            "f32[batch,3,5]"
        );
        let at = Some(ty(&["batch", "4", "3"]));
        let bt = Some(ty(&["5", "4"]));
        assert_eq!(
            infer(fmm(true, true), &[at.clone(), bt.clone()]).unwrap(),
            "f32[batch,3,5]"
        );
        // Bias of [5], [1,5], [3,1] and [batch,1,5] broadcast; [4] and [2,3,5] do not.
        for bias in [
            &["5"][..],
            &["1", "5"],
            &["3", "1"],
            &["batch", "1", "5"],
            &[],
        ] {
            let got = infer(fmm(true, false), &[at.clone(), b.clone(), Some(ty(bias))]);
            assert_eq!(got.unwrap(), "f32[batch,3,5]", "{bias:?}");
        }
        for bias in [&["4"][..], &["2", "5"], &["1", "1", "1", "5"]] {
            let e = infer(fmm(false, false), &[a.clone(), b.clone(), Some(ty(bias))]).unwrap_err();
            assert!(
                e.to_string().contains("does not broadcast onto the output"),
                "{e}"
            );
        }
        // Inner dims clash only once the flag is applied.
        assert!(infer(fmm(false, true), &[a.clone(), b.clone()]).is_err());
        // Transposing a 1-D operand is an error; plain 1-D operands are numpy matmul.
        assert!(infer(fmm(false, true), &[a.clone(), Some(ty(&["4"]))]).is_err());
        assert_eq!(
            infer(fmm(false, false), &[a.clone(), Some(ty(&["4"]))]).unwrap(),
            "f32[batch,3]"
        );
        // Dtype mismatch of the bias.
        let ib = Some(TensorType::new(DType::I64, Shape::known(&[5])));
        assert!(infer(fmm(false, false), &[a, b, ib]).is_err());
    }

    #[test]
    fn fused_conv_types() {
        let x = Some(ty(&["n", "2", "8", "8"]));
        let w = Some(ty(&["4", "2", "3", "3"]));
        let b = Some(ty(&["4"]));
        let r = Some(ty(&["n", "4", "8", "8"]));
        assert_eq!(
            infer(fconv(), &[x.clone(), w.clone(), b.clone(), r.clone()]).unwrap(),
            "f32[n,4,8,8]"
        );
        assert_eq!(
            infer(fconv(), &[x.clone(), w.clone(), None, r.clone()]).unwrap(),
            "f32[n,4,8,8]"
        );
        // Bias of the wrong length (Conv's rule) and a residual of another shape.
        assert!(infer(fconv(), &[x.clone(), w.clone(), Some(ty(&["3"]))]).is_err());
        let e = infer(
            fconv(),
            &[
                x.clone(),
                w.clone(),
                b.clone(),
                Some(ty(&["n", "4", "7", "8"])),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");
        assert!(infer(
            fconv(),
            &[
                x.clone(),
                w.clone(),
                b,
                Some(ty(&["2", "n", "4", "8", "8"]))
            ]
        )
        .is_err());
        // Channel mismatch between X and W.
        assert!(infer(fconv(), &[Some(ty(&["1", "3", "8", "8"])), w]).is_err());
    }
}

#[cfg(test)]
mod elementwise_chain_tests {
    use super::*;
    use crate::ir::infer::infer_graph;
    use crate::ir::{BinaryOp, Graph, ValueId};
    use crate::ir::{EwArg, EwStep};

    fn chain(g: &mut Graph, steps: Vec<EwStep>, ins: &[ValueId]) -> Result<()> {
        let out = g.add_value("y", TensorType::new(DType::F32, Shape::scalar()));
        g.add_node(Node {
            name: "ew".into(),
            op: Op::Elementwise { steps },
            inputs: ins.iter().map(|&v| Some(v)).collect(),
            outputs: vec![out],
        });
        g.outputs = vec![out];
        infer_graph(g)
    }

    fn ty(dt: DType, dims: Vec<Dim>) -> TensorType {
        TensorType::new(dt, Shape(dims))
    }

    #[test]
    fn broadcasts_inputs_and_checks_steps() {
        let add = |a, b| EwStep::Binary(BinaryOp::Add, a, b);
        let mut g = Graph::new("t", 17);
        let x = g.add_input(
            "x",
            ty(DType::F32, vec![Dim::Sym("b".into()), Dim::Known(1)]),
        );
        let y = g.add_input("y", ty(DType::F32, vec![Dim::Known(4)]));
        let steps = vec![
            add(EwArg::Input(0), EwArg::Input(1)),
            EwStep::Unary(UnaryOp::Tanh, EwArg::Step(0)),
        ];
        chain(&mut g, steps, &[x, y]).unwrap();
        assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[b,4]");

        // Bad references, ops and dtypes.
        for steps in [
            vec![add(EwArg::Input(2), EwArg::Scalar(1.0))],
            vec![add(EwArg::Step(0), EwArg::Scalar(1.0))],
            vec![],
            vec![EwStep::Binary(
                BinaryOp::Equal,
                EwArg::Input(0),
                EwArg::Input(1),
            )],
            vec![EwStep::Unary(UnaryOp::Not, EwArg::Input(0))],
        ] {
            let mut g = Graph::new("t", 17);
            let x = g.add_input("x", ty(DType::F32, vec![Dim::Known(4)]));
            let y = g.add_input("y", ty(DType::F32, vec![Dim::Known(4)]));
            assert!(chain(&mut g, steps, &[x, y]).is_err());
        }
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", ty(DType::F16, vec![Dim::Known(4)]));
        let e = chain(
            &mut g,
            vec![EwStep::Unary(UnaryOp::Relu, EwArg::Input(0))],
            &[x],
        );
        assert!(e.unwrap_err().to_string().contains("must be f32"));
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", ty(DType::F32, vec![Dim::Known(3)]));
        let y = g.add_input("y", ty(DType::F32, vec![Dim::Known(4)]));
        assert!(chain(&mut g, vec![add(EwArg::Input(0), EwArg::Input(1))], &[x, y]).is_err());
    }
}

//! `fold-batchnorm`: folds an inference-form BatchNormalization into the
//! weights and bias of the linear op that produces its input.
//!
//! BatchNormalization is per channel `y = s * x + t` with `s = scale /
//! sqrt(var + epsilon)` and `t = B - mean * s`. When `x` is the output of a
//! linear op with constant weights and is read only by the BN, scaling the
//! weights' output channels by `s` and setting the bias to `bias * s + t`
//! gives the same result:
//!
//! - Conv / FusedConv (no activation or residual yet): `W[c, ..] *= s[c]`,
//!   `B = B * s + t`; the op stays what it was.
//! - MatMul / FusedMatMul (no activation) with a 2-D output (so the BN
//!   channel axis is the product's columns) and a constant 2-D B: column `c`
//!   of `op(B)` is scaled (a row of B under `trans_b`); the result is a
//!   FusedMatMul with bias `bias * s + t`.
//! - Gemm: likewise into B respecting `trans_b`; `C` becomes `beta * C * s +
//!   t` (or `t` when C is absent or `beta == 0`) and `beta` becomes 1.
//!
//! Every parameter must be a constant (the BN's four, the weights, and an
//! existing bias or C). The arithmetic is done in f64 and rounded once to
//! the weights' type. A BN after anything else is left alone.

use super::merge_bias::{
    absorb, f_tensor, float_const, sole_producer, zip_broadcast, FConst, Rewrite,
};
use super::{Changed, Pass, PassCx, PassInfo};
use crate::ir::{Dim, Graph, NodeId, Op, ValueId};
use crate::Result;

/// The pass's registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fold-batchnorm",
    summary:
        "fold inference BatchNormalization into the preceding Conv/Gemm/MatMul weights and bias",
    params: &[],
    make: |_| Box::new(FoldBatchNorm),
};

/// See the module docs.
pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            if let Some((rw, x, kind)) = plan(g, id) {
                absorb(g, id, x, rw);
                cx.count(kind);
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

/// Per-channel `(s, t)` of an inference BatchNormalization with `c`
/// channels and constant parameters.
fn affine(g: &Graph, bn: NodeId, c: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let node = g.node(bn)?;
    let Op::BatchNormalization {
        epsilon,
        training_momentum: None,
    } = node.op
    else {
        return None;
    };
    let mut p = Vec::with_capacity(4);
    for i in 1..5 {
        let k = float_const(g, node.input(i)?)?;
        if k.shape != [c] {
            return None;
        }
        p.push(k.vals);
    }
    let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let eps = epsilon as f64;
    let s: Vec<f64> = (0..c).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
    let t: Vec<f64> = (0..c).map(|i| bias[i] - mean[i] * s[i]).collect();
    Some((s, t))
}

/// A per-channel vector as a broadcastable constant.
fn chan(v: &[f64]) -> FConst {
    FConst {
        vals: v.to_vec(),
        shape: vec![v.len()],
        dtype: crate::ir::DType::F64,
    }
}

/// `bias * s + t` with numpy broadcasting of the bias against `[c]`.
fn scaled_bias(bias: &FConst, s: &[f64], t: &[f64]) -> Option<(Vec<f64>, Vec<usize>)> {
    let (v, shape) = zip_broadcast(bias, &chan(s), |b, s| b * s)?;
    let scaled = FConst {
        vals: v,
        shape,
        dtype: bias.dtype,
    };
    zip_broadcast(&scaled, &chan(t), |b, t| b + t)
}

/// A 2-D weight whose output channels (columns of `op(W)`) are scaled by
/// `s`: rows of `W` when `trans`, else columns.
fn scale_matrix(w: &FConst, s: &[f64], trans: bool) -> Option<Vec<f64>> {
    let [r, c] = w.shape[..] else { return None };
    let ch = if trans { r } else { c };
    if ch != s.len() {
        return None;
    }
    Some(
        w.vals
            .iter()
            .enumerate()
            .map(|(i, &x)| x * s[if trans { i / c } else { i % c }])
            .collect(),
    )
}

/// The rewrite of the producer of the BN's input, the input, and the kind.
fn plan(g: &Graph, bn: NodeId) -> Option<(Rewrite, ValueId, &'static str)> {
    let node = g.node(bn)?;
    if !matches!(node.op, Op::BatchNormalization { .. }) || node.outputs.len() != 1 {
        return None;
    }
    let x = node.input(0)?;
    let p = sole_producer(g, x, bn)?;
    let pn = g.node(p)?;
    let xt = g.ty(x);
    let c = xt.shape.dims().get(1).and_then(Dim::known)?;
    let dt = xt.dtype;
    match &pn.op {
        Op::Conv(_) | Op::FusedConv { act: None, .. } => {
            if pn.input(3).is_some() {
                return None;
            }
            let w = float_const(g, pn.input(1)?)?;
            if w.shape.first() != Some(&c) || w.dtype != dt {
                return None;
            }
            let (s, t) = affine(g, bn, c)?;
            let per = w.vals.len() / c.max(1);
            let wv: Vec<f64> = w
                .vals
                .iter()
                .enumerate()
                .map(|(i, &v)| v * s[i / per.max(1)])
                .collect();
            let b: Vec<f64> = match pn.input(2) {
                None => t,
                Some(b) => {
                    let b = float_const(g, b)?;
                    if b.shape != [c] {
                        return None;
                    }
                    (0..c).map(|i| b.vals[i] * s[i] + t[i]).collect()
                }
            };
            let rw = Rewrite {
                node: p,
                op: pn.op.clone(),
                inputs: vec![pn.input(0), None, None],
                consts: vec![
                    (
                        1,
                        format!("{}.w_bn", pn.name),
                        f_tensor(dt, w.shape.clone(), &wv)?,
                    ),
                    (2, format!("{}.b_bn", pn.name), f_tensor(dt, vec![c], &b)?),
                ],
            };
            Some((rw, x, "conv"))
        }
        Op::MatMul | Op::FusedMatMul { act: None, .. } => {
            if xt.shape.rank() != 2 {
                return None;
            }
            let (trans_a, trans_b, alpha) = match pn.op {
                Op::FusedMatMul {
                    trans_a,
                    trans_b,
                    alpha,
                    ..
                } => (trans_a, trans_b, alpha),
                _ => (false, false, 1.0),
            };
            let w = float_const(g, pn.input(1)?)?;
            if w.dtype != dt {
                return None;
            }
            let (s, t) = affine(g, bn, c)?;
            let wv = scale_matrix(&w, &s, trans_b)?;
            let (bv, bshape) = match pn.input(2) {
                None => (t, vec![c]),
                Some(b) => scaled_bias(&float_const(g, b)?, &s, &t)?,
            };
            let rw = Rewrite {
                node: p,
                op: Op::FusedMatMul {
                    trans_a,
                    trans_b,
                    alpha,
                    act: None,
                },
                inputs: vec![pn.input(0), None, None],
                consts: vec![
                    (
                        1,
                        format!("{}.w_bn", pn.name),
                        f_tensor(dt, w.shape.clone(), &wv)?,
                    ),
                    (
                        2,
                        format!("{}.bias_bn", pn.name),
                        f_tensor(dt, bshape, &bv)?,
                    ),
                ],
            };
            Some((rw, x, "matmul"))
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let w = float_const(g, pn.input(1)?)?;
            if w.dtype != dt {
                return None;
            }
            let (s, t) = affine(g, bn, c)?;
            let wv = scale_matrix(&w, &s, *trans_b)?;
            let (cv, cshape) = match pn.input(2) {
                Some(cin) if *beta != 0.0 => {
                    let cc = float_const(g, cin)?;
                    let beta = *beta as f64;
                    let bc = FConst {
                        vals: cc.vals.iter().map(|v| beta * v).collect(),
                        ..cc
                    };
                    scaled_bias(&bc, &s, &t)?
                }
                _ => (t, vec![c]),
            };
            let rw = Rewrite {
                node: p,
                op: Op::Gemm {
                    alpha: *alpha,
                    beta: 1.0,
                    trans_a: *trans_a,
                    trans_b: *trans_b,
                },
                inputs: vec![pn.input(0), None, None],
                consts: vec![
                    (
                        1,
                        format!("{}.w_bn", pn.name),
                        f_tensor(dt, w.shape.clone(), &wv)?,
                    ),
                    (2, format!("{}.c_bn", pn.name), f_tensor(dt, cshape, &cv)?),
                ],
            };
            Some((rw, x, "gemm"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::merge_bias::testkit::*;
    use crate::ir::{Activation, AutoPad, ConvAttrs, Op, ValueId};

    fn conv_attrs(group: usize) -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            auto_pad: AutoPad::NotSet,
            group,
        }
    }

    fn bn() -> Op {
        Op::BatchNormalization {
            epsilon: 1e-3,
            training_momentum: None,
        }
    }

    /// BN over `x` with `c` channels of random parameters.
    fn add_bn(b: &mut Builder, x: ValueId, c: usize) -> ValueId {
        let scale = b.rand("scale", &[c]);
        let bias = b.rand("bnb", &[c]);
        let mean = b.rand("mean", &[c]);
        let var = b.rand_pos("var", &[c]);
        b.op("bn", bn(), &[x, scale, bias, mean, var])
    }

    #[test]
    fn conv_and_fused_conv() {
        for (group, with_b, fused) in [(1, true, false), (2, false, false), (1, false, true)] {
            let mut b = Builder::new();
            let x = b.input("x", &["n", "4", "6", "6"]);
            let w = b.rand("w", &[6, 4 / group, 3, 3]);
            let bias = b.rand("b", &[6]);
            let op = if fused {
                Op::FusedConv {
                    conv: conv_attrs(group),
                    act: None,
                }
            } else {
                Op::Conv(conv_attrs(group))
            };
            let y = if with_b {
                b.op("conv", op, &[x, w, bias])
            } else {
                b.op("conv", op, &[x, w])
            };
            let z = add_bn(&mut b, y, 6);
            let r = b.op("relu", Op::Unary(crate::ir::UnaryOp::Relu), &[z]);
            let g = b.finish(&[r]);
            let (after, counts) = run_checked(&g, "fold-batchnorm", &[]);
            assert_eq!(count_ops(&after, "BatchNormalization"), 0);
            assert_eq!(counts.get("conv"), Some(&1));
            // New W and B replace the old ones and the BN's four.
            let used = after.consts.keys().filter(|&&v| after.use_count(v) > 0);
            assert_eq!(used.count(), 2);
            assert_eq!(after.consts.len(), if with_b { 2 } else { 3 });
        }
    }

    #[test]
    fn bn_after_something_else_stays() {
        // After an activation-carrying FusedConv, a Relu, or a conv whose
        // output has another use, or with a non-constant weight.
        let mut b = Builder::new();
        let x = b.input("x", &["1", "4", "6", "6"]);
        let w = b.rand("w", &[6, 4, 3, 3]);
        let y = b.op(
            "conv",
            Op::FusedConv {
                conv: conv_attrs(1),
                act: Some(Activation::Relu),
            },
            &[x, w],
        );
        let z = add_bn(&mut b, y, 6);
        let y2 = b.op("conv2", Op::Conv(conv_attrs(1)), &[x, w]);
        let z2 = add_bn(&mut b, y2, 6);
        let wi = b.input("wi", &["6", "4", "3", "3"]);
        let y3 = b.op("conv3", Op::Conv(conv_attrs(1)), &[x, wi]);
        let z3 = add_bn(&mut b, y3, 6);
        let r = b.op("relu", Op::Unary(crate::ir::UnaryOp::Relu), &[x]);
        let z4 = add_bn(&mut b, r, 4);
        let g = b.finish(&[z, z2, y2, z3, z4]);
        let (after, counts) = run_checked(&g, "fold-batchnorm", &[]);
        assert_eq!(count_ops(&after, "BatchNormalization"), 4);
        assert!(counts.is_empty());
    }

    #[test]
    fn matmul_and_fused_matmul() {
        for (fused, trans_b, with_bias) in [
            (false, false, false),
            (true, true, true),
            (true, false, true),
        ] {
            let mut b = Builder::new();
            let a = b.input("a", &["batch", "4"]);
            let w = b.rand("w", if trans_b { &[5, 4] } else { &[4, 5] });
            let bias = b.rand("bias", &[1, 5]);
            let op = if fused {
                Op::FusedMatMul {
                    trans_a: false,
                    trans_b,
                    alpha: 0.5,
                    act: None,
                }
            } else {
                Op::MatMul
            };
            let y = if with_bias {
                b.op("mm", op, &[a, w, bias])
            } else {
                b.op("mm", op, &[a, w])
            };
            let z = add_bn(&mut b, y, 5);
            let g = b.finish(&[z]);
            let (after, counts) = run_checked(&g, "fold-batchnorm", &[]);
            assert_eq!(count_ops(&after, "BatchNormalization"), 0);
            assert_eq!(count_ops(&after, "FusedMatMul"), 1);
            assert_eq!(counts.get("matmul"), Some(&1));
        }
        // A 3-D product's channel axis is its rows: not folded.
        let mut b = Builder::new();
        let a = b.input("a", &["2", "3", "4"]);
        let w = b.rand("w", &[4, 5]);
        let y = b.op("mm", Op::MatMul, &[a, w]);
        let z = add_bn(&mut b, y, 3);
        let g = b.finish(&[z]);
        let (after, _) = run_checked(&g, "fold-batchnorm", &[]);
        assert_eq!(count_ops(&after, "BatchNormalization"), 1);
    }

    #[test]
    fn gemm() {
        for (trans_a, trans_b, beta, with_c) in [
            (false, false, 1.0, false),
            (true, true, 0.5, true),
            (false, true, 0.0, true),
        ] {
            let mut b = Builder::new();
            let a = b.input("a", if trans_a { &["4", "3"] } else { &["3", "4"] });
            let w = b.rand("w", if trans_b { &[5, 4] } else { &[4, 5] });
            let c = b.rand("c", &[3, 1]);
            let op = Op::Gemm {
                alpha: 1.25,
                beta,
                trans_a,
                trans_b,
            };
            let y = if with_c {
                b.op("gemm", op, &[a, w, c])
            } else {
                b.op("gemm", op, &[a, w])
            };
            let z = add_bn(&mut b, y, 5);
            let g = b.finish(&[z]);
            let (after, counts) = run_checked(&g, "fold-batchnorm", &[]);
            assert_eq!(count_ops(&after, "BatchNormalization"), 0);
            assert_eq!(count_ops(&after, "Gemm"), 1);
            assert_eq!(counts.get("gemm"), Some(&1));
        }
    }

    #[test]
    fn training_mode_bn_stays() {
        let mut b = Builder::new();
        let x = b.input("x", &["2", "4", "6", "6"]);
        let w = b.rand("w", &[6, 4, 3, 3]);
        let y = b.op("conv", Op::Conv(conv_attrs(1)), &[x, w]);
        let scale = b.rand("scale", &[6]);
        let bias = b.rand("bnb", &[6]);
        let mean = b.rand("mean", &[6]);
        let var = b.rand_pos("var", &[6]);
        let z = b.op(
            "bn",
            Op::BatchNormalization {
                epsilon: 1e-5,
                training_momentum: Some(0.9),
            },
            &[y, scale, bias, mean, var],
        );
        let g = b.finish(&[z]);
        let (after, _) = run_checked(&g, "fold-batchnorm", &[]);
        assert_eq!(count_ops(&after, "BatchNormalization"), 1);
    }
}

#[cfg(test)]
mod golden {
    use crate::transform::testing::check_pass;

    #[test]
    fn conv_bn() {
        // s = scale / sqrt(var) = [2, 0.5], t = B - mean * s = [0, -0.5]:
        // W rows scale by s, bias = b * s + t.
        check_pass(
            "fold-batchnorm",
            r#"
            graph "t" opset 21
              input  %0 x: f32[1,2,3,3]
              const  %1 w: f32[2,2,1,1] = [1, 2, 3, 4]
              const  %2 b: f32[2] = [0.5, -1]
              const  %3 scale: f32[2] = [2, 1]
              const  %4 shift: f32[2] = [1, 0]
              const  %5 mean: f32[2] = [0.5, 1]
              const  %6 var: f32[2] = [1, 4]
              %7 y: f32[1,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1, %2)  # conv
              %8 z: f32[1,2,3,3] = BatchNormalization[epsilon=0](%7, %3, %4, %5, %6)  # bn
              output %8 z
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[1,2,3,3]
              const  %1 conv.w_bn: f32[2,2,1,1] = [2, 4, 1.5, 2]
              const  %2 conv.b_bn: f32[2] = [1, -1]
              %3 z: f32[1,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1, %2)  # conv
              output %3 z
            "#,
        );
    }

    #[test]
    fn gemm_bn() {
        // s = [1, 2, 4], t = [0, 1, -4]; B is [N, K] (trans_b): rows scale;
        // C = beta * C * s + t = [1, 5, 8] and beta becomes 1.
        check_pass(
            "fold-batchnorm",
            r#"
            graph "t" opset 21
              input  %0 x: f32[batch,2]
              const  %1 w: f32[3,2] = [1, 2, 3, 4, 5, 6]
              const  %2 c: f32[3] = [2, 4, 6]
              const  %3 scale: f32[3] = [1, 2, 4]
              const  %4 shift: f32[3] = [0, 1, 0]
              const  %5 mean: f32[3] = [0, 0, 1]
              const  %6 var: f32[3] = [1, 1, 1]
              %7 y: f32[batch,3] = Gemm[alpha=2, beta=0.5, trans_a=false, trans_b=true](%0, %1, %2)  # fc
              %8 z: f32[batch,3] = BatchNormalization[epsilon=0](%7, %3, %4, %5, %6)  # bn
              output %8 z
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[batch,2]
              const  %1 fc.w_bn: f32[3,2] = [1, 2, 6, 8, 20, 24]
              const  %2 fc.c_bn: f32[3] = [1, 5, 8]
              %3 z: f32[batch,3] = Gemm[alpha=2, beta=1, trans_a=false, trans_b=true](%0, %1, %2)  # fc
              output %3 z
            "#,
        );
    }

    #[test]
    fn matmul_bn_and_unfoldable() {
        // MatMul becomes FusedMatMul with bias t; the BN after the Relu stays.
        check_pass(
            "fold-batchnorm",
            r#"
            graph "t" opset 21
              input  %0 x: f32[4,2]
              const  %1 w: f32[2,2] = [1, 2, 3, 4]
              const  %3 scale: f32[2] = [3, 1]
              const  %4 shift: f32[2] = [1, 1]
              const  %5 mean: f32[2] = [1, 2]
              const  %6 var: f32[2] = [1, 1]
              %7 y: f32[4,2] = MatMul(%0, %1)  # mm
              %8 z: f32[4,2] = BatchNormalization[epsilon=0](%7, %3, %4, %5, %6)  # bn
              %9 r: f32[4,2] = Relu(%0)  # relu
              %10 q: f32[4,2] = BatchNormalization[epsilon=0](%9, %3, %4, %5, %6)  # bn2
              output %8 z
              output %10 q
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[4,2]
              const  %1 scale: f32[2] = [3, 1]
              const  %2 shift: f32[2] = [1, 1]
              const  %3 mean: f32[2] = [1, 2]
              const  %4 var: f32[2] = [1, 1]
              const  %5 mm.w_bn: f32[2,2] = [3, 2, 9, 4]
              const  %6 mm.bias_bn: f32[2] = [-2, -1]
              %7 z: f32[4,2] = FusedMatMul[trans_a=false, trans_b=false, alpha=1](%0, %5, %6)  # mm
              %8 r: f32[4,2] = Relu(%0)  # relu
              %9 q: f32[4,2] = BatchNormalization[epsilon=0](%8, %1, %2, %3, %4)  # bn2
              output %7 z
              output %9 q
            "#,
        );
    }
}

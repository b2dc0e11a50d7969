//! `fuse-epilogue`: moves a residual Add and a closing activation into the
//! linear op that feeds them.
//!
//! - Residual: `Add(conv, X)` where `conv` is a Conv or FusedConv without an
//!   activation or residual, read only by the Add, and `X` has exactly the
//!   output's static type, becomes FusedConv's `R` input (added before the
//!   activation).
//! - Activation: Relu, Clip with constant scalar bounds (Relu6 and friends),
//!   Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu or Gelu whose input is
//!   the sole use of a Conv, FusedConv, MatMul, FusedMatMul or Gemm output
//!   without an activation becomes that op's `act`. Conv turns into
//!   FusedConv, MatMul into FusedMatMul, and Gemm into FusedMatMul with the
//!   same flags and alpha and bias `beta * C` (C itself when `beta == 1`,
//!   none when C is absent or `beta == 0`, a new constant when C is constant;
//!   other Gemms stay).
//!
//! Nodes are visited in topological order, so `Conv -> Add -> Relu` residual
//! blocks become a single FusedConv. The `activations` parameter restricts
//! which activations fuse (`all`, `none`, or a comma list of lower-case op
//! names such as `relu,clip`, underscores ignored); `residual` turns the residual rewrite off.

use super::merge_bias::{absorb, f_tensor, float_const, sole_producer, Rewrite};
use super::{Changed, ParamSpec, ParamValue, Params, Pass, PassCx, PassInfo};
use crate::ir::{Activation, BinaryOp, DType, Graph, NodeId, Op, UnaryOp, ValueId};
use crate::{Error, Result};

/// Names the `activations` parameter accepts.
const ACTIVATION_NAMES: &[&str] = &[
    "relu",
    "clip",
    "sigmoid",
    "tanh",
    "hardsigmoid",
    "hardswish",
    "leakyrelu",
    "gelu",
];

/// The pass's registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fuse-epilogue",
    summary: "fuse residual Adds and activations into Conv/MatMul/Gemm (FusedConv/FusedMatMul)",
    params: &[
        ParamSpec {
            name: "activations",
            default: || ParamValue::Str("all".into()),
            help: "activations to fuse: all, none, or a comma list of relu, clip, sigmoid, tanh, hardsigmoid, hardswish, leakyrelu, gelu",
        },
        ParamSpec {
            name: "residual",
            default: || ParamValue::Bool(true),
            help: "fuse Add(conv, X) with X of the output's shape as FusedConv's residual input",
        },
    ],
    make: |p| Box::new(FuseEpilogue::new(p)),
};

/// See the module docs.
pub struct FuseEpilogue {
    /// The `activations` parameter as given.
    activations: String,
    residual: bool,
}

impl FuseEpilogue {
    pub fn new(p: &Params) -> FuseEpilogue {
        FuseEpilogue {
            activations: p.str("activations").to_string(),
            residual: p.bool("residual"),
        }
    }

    /// The enabled activation names; an unknown name is an error.
    fn enabled(&self) -> Result<Vec<&'static str>> {
        let spec = self.activations.trim().to_ascii_lowercase();
        match spec.as_str() {
            "all" => return Ok(ACTIVATION_NAMES.to_vec()),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        spec.split(',')
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                // `leaky_relu` (the text form's spelling) names `leakyrelu`.
                let bare = s.replace('_', "");
                ACTIVATION_NAMES
                    .iter()
                    .find(|&&n| n == bare)
                    .copied()
                    .ok_or_else(|| {
                        Error::Recipe(format!(
                            "fuse-epilogue: unknown activation '{s}' in activations = {:?} (known: all, none, {})",
                            self.activations,
                            ACTIVATION_NAMES.join(", ")
                        ))
                    })
            })
            .collect()
    }
}

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let enabled = self.enabled()?;
        let mut changed = false;
        for id in g.topo_order()? {
            let Some(node) = g.node(id) else { continue };
            if node.outputs.len() != 1 {
                continue;
            }
            if self.residual && node.op == Op::Binary(BinaryOp::Add) {
                let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
                    continue;
                };
                for (lin, r) in [(a, b), (b, a)] {
                    if let Some(rw) = plan_residual(g, id, lin, r) {
                        absorb(g, id, lin, rw);
                        cx.count("conv+residual");
                        changed = true;
                        break;
                    }
                }
                continue;
            }
            let Some((act, name)) = activation_of(g, id) else {
                continue;
            };
            if !enabled.contains(&name) {
                continue;
            }
            let Some(x) = node.input(0) else { continue };
            if let Some((rw, kind)) = plan_activation(g, id, x, act) {
                absorb(g, id, x, rw);
                cx.count(&format!("{kind}+{name}"));
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

/// The activation a node computes, with its parameter name.
fn activation_of(g: &Graph, id: NodeId) -> Option<(Activation, &'static str)> {
    let node = g.node(id)?;
    Some(match &node.op {
        Op::Unary(u) => match u {
            UnaryOp::Relu => (Activation::Relu, "relu"),
            UnaryOp::Sigmoid => (Activation::Sigmoid, "sigmoid"),
            UnaryOp::Tanh => (Activation::Tanh, "tanh"),
            UnaryOp::HardSigmoid { alpha, beta } => (
                Activation::HardSigmoid {
                    alpha: *alpha,
                    beta: *beta,
                },
                "hardsigmoid",
            ),
            UnaryOp::HardSwish => (Activation::HardSwish, "hardswish"),
            UnaryOp::LeakyRelu { alpha } => (Activation::LeakyRelu { alpha: *alpha }, "leakyrelu"),
            UnaryOp::Gelu { tanh_approx } => (
                Activation::Gelu {
                    tanh_approx: *tanh_approx,
                },
                "gelu",
            ),
            _ => return None,
        },
        Op::Clip => {
            let min = clip_bound(g, node.input(1), f32::NEG_INFINITY)?;
            let max = clip_bound(g, node.input(2), f32::INFINITY)?;
            (Activation::Clip { min, max }, "clip")
        }
        _ => return None,
    })
}

/// A Clip bound: absent or empty means `none`; otherwise a constant scalar
/// that an f32 holds exactly (the activation stores f32 bounds).
fn clip_bound(g: &Graph, v: Option<ValueId>, none: f32) -> Option<f32> {
    let Some(v) = v else { return Some(none) };
    let t = g.const_value(v)?;
    if t.dtype() == DType::Bool || t.dtype().is_storage_only() {
        return None;
    }
    match t.numel() {
        0 => Some(none),
        1 => {
            let x = *t.to_f64_vec().first()?;
            let f = x as f32;
            (f as f64 == x || x.is_nan()).then_some(f)
        }
        _ => None,
    }
}

/// FusedConv taking `r` as its residual, replacing `Add(lin, r)`.
fn plan_residual(g: &Graph, add: NodeId, lin: ValueId, r: ValueId) -> Option<Rewrite> {
    if lin == r || g.ty(lin) != g.ty(r) {
        return None;
    }
    let p = sole_producer(g, lin, add)?;
    let pn = g.node(p)?;
    let conv = match &pn.op {
        Op::Conv(c) => c.clone(),
        Op::FusedConv { conv, act: None } if pn.input(3).is_none() => conv.clone(),
        _ => return None,
    };
    Some(Rewrite {
        node: p,
        op: Op::FusedConv { conv, act: None },
        inputs: vec![pn.input(0), pn.input(1), pn.input(2), Some(r)],
        consts: Vec::new(),
    })
}

/// The producer of `x` carrying `act`, replacing the activation node.
fn plan_activation(
    g: &Graph,
    act_node: NodeId,
    x: ValueId,
    act: Activation,
) -> Option<(Rewrite, &'static str)> {
    let p = sole_producer(g, x, act_node)?;
    let pn = g.node(p)?;
    let act = Some(act);
    let same_inputs = |op: Op| Rewrite {
        node: p,
        op,
        inputs: pn.inputs.clone(),
        consts: Vec::new(),
    };
    match &pn.op {
        Op::Conv(conv) => Some((
            same_inputs(Op::FusedConv {
                conv: conv.clone(),
                act,
            }),
            "conv",
        )),
        Op::FusedConv { conv, act: None } => Some((
            same_inputs(Op::FusedConv {
                conv: conv.clone(),
                act,
            }),
            "conv",
        )),
        Op::MatMul => Some((
            same_inputs(Op::FusedMatMul {
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                act,
            }),
            "matmul",
        )),
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha,
            act: None,
        } => Some((
            same_inputs(Op::FusedMatMul {
                trans_a: *trans_a,
                trans_b: *trans_b,
                alpha: *alpha,
                act,
            }),
            "matmul",
        )),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let mut rw = Rewrite {
                node: p,
                op: Op::FusedMatMul {
                    trans_a: *trans_a,
                    trans_b: *trans_b,
                    alpha: *alpha,
                    act,
                },
                inputs: vec![pn.input(0), pn.input(1), None],
                consts: Vec::new(),
            };
            match pn.input(2) {
                None => {}
                Some(_) if *beta == 0.0 => {}
                Some(c) if *beta == 1.0 => rw.inputs[2] = Some(c),
                Some(c) => {
                    let cc = float_const(g, c)?;
                    let beta = *beta as f64;
                    let v: Vec<f64> = cc.vals.iter().map(|x| beta * x).collect();
                    let t = f_tensor(cc.dtype, cc.shape, &v)?;
                    rw.consts.push((2, format!("{}.bias", pn.name), t));
                }
            }
            Some((rw, "gemm"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::merge_bias::testkit::*;
    use super::*;
    use crate::ir::{AutoPad, ConvAttrs, Tensor};

    fn attrs() -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            auto_pad: AutoPad::NotSet,
            group: 1,
        }
    }

    fn act_ops() -> Vec<(Op, &'static str)> {
        vec![
            (Op::Unary(UnaryOp::Relu), "relu"),
            (Op::Clip, "clip"),
            (Op::Unary(UnaryOp::Sigmoid), "sigmoid"),
            (Op::Unary(UnaryOp::Tanh), "tanh"),
            (
                Op::Unary(UnaryOp::HardSigmoid {
                    alpha: 0.3,
                    beta: 0.4,
                }),
                "hardsigmoid",
            ),
            (Op::Unary(UnaryOp::HardSwish), "hardswish"),
            (Op::Unary(UnaryOp::LeakyRelu { alpha: 0.2 }), "leakyrelu"),
            (Op::Unary(UnaryOp::Gelu { tanh_approx: false }), "gelu"),
            (Op::Unary(UnaryOp::Gelu { tanh_approx: true }), "gelu"),
        ]
    }

    /// `op(y)`, Clip getting bounds [0, 0.5].
    fn apply(b: &mut Builder, op: Op, y: ValueId) -> ValueId {
        if op == Op::Clip {
            let lo = b.konst("lo", Tensor::scalar_f32(0.0));
            let hi = b.konst("hi", Tensor::scalar_f32(0.5));
            b.op("act", op, &[y, lo, hi])
        } else {
            b.op("act", op, &[y])
        }
    }

    #[test]
    fn every_activation_into_conv_matmul_and_gemm() {
        for (op, name) in act_ops() {
            let mut b = Builder::new();
            let x = b.input("x", &["n", "2", "4", "4"]);
            let w = b.rand("w", &[3, 2, 3, 3]);
            let y = b.op("conv", Op::Conv(attrs()), &[x, w]);
            let z1 = apply(&mut b, op.clone(), y);
            let a = b.input("a", &["2", "3", "4"]);
            let w2 = b.rand("w2", &[4, 5]);
            let m = b.op("mm", Op::MatMul, &[a, w2]);
            let z2 = apply(&mut b, op.clone(), m);
            let a3 = b.input("a3", &["4", "3"]);
            let w3 = b.rand("w3", &[5, 4]);
            let c3 = b.rand("c3", &[5]);
            let gemm = Op::Gemm {
                alpha: 0.5,
                beta: 2.0,
                trans_a: true,
                trans_b: true,
            };
            let m3 = b.op("gemm", gemm, &[a3, w3, c3]);
            let z3 = apply(&mut b, op.clone(), m3);
            let g = b.finish(&[z1, z2, z3]);
            let (after, counts) = run_checked(&g, "fuse-epilogue", &[]);
            assert_eq!(after.node_count(), 3, "{name}: {counts:?}");
            assert_eq!(count_ops(&after, "FusedConv"), 1);
            assert_eq!(count_ops(&after, "FusedMatMul"), 2);
            assert_eq!(counts.get(&format!("conv+{name}")).copied(), Some(1));
            assert_eq!(counts.get(&format!("gemm+{name}")).copied(), Some(1));
            // Output names survive.
            assert_eq!(after.value(after.outputs[0]).name, "act");
        }
    }

    #[test]
    fn residual_block_becomes_one_fused_conv() {
        let mut b = Builder::new();
        let x = b.input("x", &["n", "3", "5", "5"]);
        let w = b.rand("w", &[3, 3, 3, 3]);
        let bias = b.rand("b", &[3]);
        let y = b.op("conv", Op::Conv(attrs()), &[x, w, bias]);
        let s = b.op("add", Op::Binary(BinaryOp::Add), &[x, y]);
        let z = b.op("relu", Op::Unary(UnaryOp::Relu), &[s]);
        // No bias, residual on the right.
        let y2 = b.op("conv2", Op::Conv(attrs()), &[z, w]);
        let s2 = b.op("add2", Op::Binary(BinaryOp::Add), &[y2, z]);
        let g = b.finish(&[s2]);
        let (after, counts) = run_checked(&g, "fuse-epilogue", &[]);
        assert_eq!(after.node_count(), 2);
        assert_eq!(count_ops(&after, "FusedConv"), 2);
        assert_eq!(counts.get("conv+residual"), Some(&2));
        assert_eq!(counts.get("conv+relu"), Some(&1));
        let (_, n) = after.nodes().next().unwrap();
        assert_eq!(n.inputs.len(), 4);
        assert_eq!(n.input(3), Some(x));
        // With residual off only the activation fuses (onto nothing: the
        // Relu reads the Add).
        let (after, _) = run_checked(
            &g,
            "fuse-epilogue",
            &[("residual", ParamValue::Bool(false))],
        );
        assert_eq!(count_ops(&after, "Add"), 2);
    }

    #[test]
    fn residual_needs_the_exact_shape() {
        let mut b = Builder::new();
        let x = b.input("x", &["1", "3", "5", "5"]);
        let w = b.rand("w", &[3, 3, 3, 3]);
        let r = b.input("r", &["1", "3", "1", "5"]);
        let y = b.op("conv", Op::Conv(attrs()), &[x, w]);
        let s = b.op("add", Op::Binary(BinaryOp::Add), &[y, r]);
        let g = b.finish(&[s]);
        let (after, counts) = run_checked(&g, "fuse-epilogue", &[]);
        assert_eq!(count_ops(&after, "Add"), 1);
        assert!(counts.is_empty());
    }

    #[test]
    fn activation_param_restricts_and_rejects_unknown_names() {
        let mut b = Builder::new();
        let a = b.input("a", &["3", "4"]);
        let w = b.rand("w", &[4, 5]);
        let m = b.op("mm", Op::MatMul, &[a, w]);
        let z = b.op("act", Op::Unary(UnaryOp::Sigmoid), &[m]);
        let m2 = b.op("mm2", Op::MatMul, &[a, w]);
        let z2 = b.op("act2", Op::Unary(UnaryOp::Relu), &[m2]);
        let g = b.finish(&[z, z2]);
        let only = |s: &str| [("activations", ParamValue::Str(s.into()))];
        let (after, _) = run_checked(&g, "fuse-epilogue", &only("relu, Clip, leaky_relu"));
        assert_eq!(count_ops(&after, "Sigmoid"), 1);
        assert_eq!(count_ops(&after, "Relu"), 0);
        let (after, _) = run_checked(&g, "fuse-epilogue", &only("none"));
        assert_eq!(after.node_count(), 4);
        let mut p = FuseEpilogue {
            activations: "relu,swish".into(),
            residual: true,
        };
        let e = p
            .run(&mut g.clone(), &mut PassCx::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown activation 'swish'"), "{e}");
    }

    #[test]
    fn what_does_not_fuse() {
        let mut b = Builder::new();
        let a = b.input("a", &["3", "4"]);
        let w = b.rand("w", &[4, 5]);
        // Product used twice.
        let m = b.op("mm", Op::MatMul, &[a, w]);
        let z = b.op("relu", Op::Unary(UnaryOp::Relu), &[m]);
        // Clip with a non-constant bound.
        let m2 = b.op("mm2", Op::MatMul, &[a, w]);
        let lo = b.input("lo", &[]);
        let z2 = b.op("clip", Op::Clip, &[m2, lo]);
        // Activation already present: the second Relu stays.
        let m3 = b.op("mm3", Op::MatMul, &[a, w]);
        let z3 = b.op("relu3", Op::Unary(UnaryOp::Relu), &[m3]);
        let z3b = b.op("tanh3", Op::Unary(UnaryOp::Tanh), &[z3]);
        // Gemm with non-constant C and beta 0.5.
        let c = b.input("c", &["3", "5"]);
        let gm = Op::Gemm {
            alpha: 1.0,
            beta: 0.5,
            trans_a: false,
            trans_b: false,
        };
        let m4 = b.op("gemm", gm, &[a, w, c]);
        let z4 = b.op("relu4", Op::Unary(UnaryOp::Relu), &[m4]);
        // An activation on a graph input.
        let z5 = b.op("relu5", Op::Unary(UnaryOp::Relu), &[a]);
        let g = b.finish(&[z, m, z2, z3b, z4, z5]);
        let (after, counts) = run_checked(&g, "fuse-epilogue", &[]);
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert_eq!(counts.get("matmul+relu"), Some(&1));
        assert_eq!(count_ops(&after, "Tanh"), 1);
        assert_eq!(count_ops(&after, "Gemm"), 1);
        assert_eq!(count_ops(&after, "Clip"), 1);
    }

    #[test]
    fn gemm_bias_variants() {
        for (beta, with_c, c_input) in [
            (1.0, true, true),
            (0.0, true, true),
            (1.0, false, false),
            (3.0, true, false),
        ] {
            let mut b = Builder::new();
            let a = b.input("a", &["3", "4"]);
            let w = b.rand("w", &[4, 5]);
            let c = if c_input {
                b.input("c", &["3", "5"])
            } else {
                b.rand("c", &[3, 1])
            };
            let gm = Op::Gemm {
                alpha: 2.0,
                beta,
                trans_a: false,
                trans_b: false,
            };
            let m = if with_c {
                b.op("gemm", gm, &[a, w, c])
            } else {
                b.op("gemm", gm, &[a, w])
            };
            let z = b.op("relu", Op::Unary(UnaryOp::LeakyRelu { alpha: 0.1 }), &[m]);
            let g = b.finish(&[z]);
            let (after, _) = run_checked(&g, "fuse-epilogue", &[]);
            assert_eq!(after.node_count(), 1, "beta {beta}");
            assert_eq!(count_ops(&after, "FusedMatMul"), 1);
        }
    }

    /// The CNN fixture (Conv+BN+Relu, a residual block, Gemm head): the
    /// three fusion passes leave no BatchNormalization, one node per conv,
    /// and the outputs still match ONNX Runtime's.
    #[test]
    fn cnn_fixture_fuses_and_matches_onnx_runtime() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cnn");
        let g = crate::formats::load(&dir.join("model.onnx")).expect("fixture loads");
        let mut after = g.clone();
        let mut log = std::collections::BTreeMap::new();
        for pass in ["fold-batchnorm", "merge-bias-add", "fuse-epilogue"] {
            let info = crate::transform::lookup(pass).unwrap();
            let params = info.params(&Default::default()).unwrap();
            let mut cx = PassCx::default();
            (info.make)(&params).run(&mut after, &mut cx).unwrap();
            crate::ir::verify::verify(&after).unwrap();
            log.insert(pass, cx.rewrites);
        }
        assert_eq!(count_ops(&after, "BatchNormalization"), 0);
        assert_eq!(count_ops(&after, "Conv"), 0);
        assert_eq!(count_ops(&after, "FusedConv"), 3);
        assert_eq!(count_ops(&after, "Relu"), 0);
        assert_eq!(count_ops(&after, "Add"), 0);
        assert_eq!(log["fold-batchnorm"].get("conv"), Some(&3), "{log:?}");
        assert_eq!(log["fuse-epilogue"].get("conv+residual"), Some(&1));
        assert_eq!(log["fuse-epilogue"].get("conv+relu"), Some(&3));
        assert_eq!(after.value(after.outputs[0]).name, "logits");
        for variant in [".", "batch2"] {
            let vdir = dir.join(variant);
            let x = crate::formats::npy::read_npy(&vdir.join("input_x.npy")).unwrap();
            let want = crate::formats::npy::read_npy(&vdir.join("expected_logits.npy")).unwrap();
            let got = crate::interp::run(&after, vec![x]).unwrap().remove(0);
            assert_eq!(got.shape(), want.shape());
            for (a, b) in got.to_f64_vec().iter().zip(want.to_f64_vec()) {
                assert!(
                    (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                    "{variant}: {a} vs {b}"
                );
            }
        }
    }
}

#[cfg(test)]
mod golden {
    use crate::transform::testing::check_pass;

    #[test]
    fn residual_block() {
        // Conv + Add(x) + Relu becomes one FusedConv with R = x.
        check_pass(
            "fuse-epilogue",
            r#"
            graph "t" opset 21
              input  %0 x: f32[n,2,3,3]
              const  %1 w: f32[2,2,1,1] = [1, 2, 3, 4]
              const  %2 b: f32[2] = [0.5, -1]
              %3 y: f32[n,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1, %2)  # conv
              %4 s: f32[n,2,3,3] = Add(%0, %3)  # add
              %5 z: f32[n,2,3,3] = Relu(%4)  # relu
              output %5 z
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[n,2,3,3]
              const  %1 w: f32[2,2,1,1] = [1, 2, 3, 4]
              const  %2 b: f32[2] = [0.5, -1]
              %3 z: f32[n,2,3,3] = FusedConv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0], act=relu](%0, %1, %2, %0)  # conv
              output %3 z
            "#,
        );
    }

    #[test]
    fn relu6_gemm_and_gelu_matmul() {
        // Clip(0, 6) on Gemm(beta=2, C) -> FusedMatMul with bias 2 * C;
        // Gelu on MatMul -> FusedMatMul; Tanh on a graph input stays.
        check_pass(
            "fuse-epilogue",
            r#"
            graph "t" opset 21
              input  %0 x: f32[batch,2]
              const  %1 w: f32[3,2] = [1, 2, 3, 4, 5, 6]
              const  %2 c: f32[3] = [1, 2, 3]
              const  %3 lo: f32[] = [0]
              const  %4 hi: f32[] = [6]
              const  %5 w2: f32[2,2] = [1, 0, 0, 1]
              %6 y: f32[batch,3] = Gemm[alpha=1, beta=2, trans_a=false, trans_b=true](%0, %1, %2)  # fc
              %7 z: f32[batch,3] = Clip(%6, %3, %4)  # relu6
              %8 m: f32[batch,2] = MatMul(%0, %5)  # mm
              %9 q: f32[batch,2] = Gelu[approximate=tanh](%8)  # gelu
              %10 t: f32[batch,2] = Tanh(%0)  # tanh
              output %7 z
              output %9 q
              output %10 t
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[batch,2]
              const  %1 w: f32[3,2] = [1, 2, 3, 4, 5, 6]
              const  %2 w2: f32[2,2] = [1, 0, 0, 1]
              const  %3 fc.bias: f32[3] = [2, 4, 6]
              %4 z: f32[batch,3] = FusedMatMul[trans_a=false, trans_b=true, alpha=1, act=clip(0, 6)](%0, %1, %3)  # fc
              %5 q: f32[batch,2] = FusedMatMul[trans_a=false, trans_b=false, alpha=1, act=gelu_tanh](%0, %2)  # mm
              %6 t: f32[batch,2] = Tanh(%0)  # tanh
              output %4 z
              output %5 q
              output %6 t
            "#,
        );
    }
}

//! `fuse-gelu`: collapses the decomposed GELU that exporters emit into one
//! `Gelu` op.
//!
//! Two forms are recognized, each with the operand orders and associations
//! torch's exporter (and hand-written models) produce:
//!
//! ```text
//! erf:   x * 0.5 * (1 + erf(x / sqrt(2)))          x / 1.4142135 or x * 0.70710678
//! tanh:  0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
//!                                                  x^3 = Pow(x, 3), x * (x * x) or (x * x) * x
//! ```
//!
//! The match is anchored at the Erf or Tanh node: the argument is traced back
//! to `x`, then the result forward through `1 + t` and the product of `x`,
//! `1 + t` and `0.5` in any grouping (`(x * a) * 0.5`, `(0.5 * a) * x`,
//! `(x * 0.5) * a`, ...). Commutative operands may come in either order and
//! constants match within 1e-6 relative. Every intermediate value must be
//! used by the pattern alone; `x` itself may have any number of users. The
//! output keeps its value (and so its name and graph-output role).

use super::fuse_layernorm::{
    binary, const_near, derived_name, drop_dead_consts, other_operand, producer, remove_nodes,
    sole_user, unary,
};
use super::{Changed, ParamSpec, Params, Pass, PassCx, PassInfo};
use crate::ir::{BinaryOp, Graph, Node, NodeId, Op, UnaryOp, ValueId};
use crate::Result;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fuse-gelu",
    summary: "collapse decomposed erf and tanh GELU into Gelu",
    params: &[] as &[ParamSpec],
    make: |_: &Params| Box::new(FuseGelu),
};

/// The pass (no parameters).
pub struct FuseGelu;

impl Pass for FuseGelu {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            // An earlier rewrite may have removed this node.
            let Some(node) = g.node(id) else { continue };
            let m = match node.op {
                Op::Unary(UnaryOp::Erf) => match_erf(g, id),
                Op::Unary(UnaryOp::Tanh) => match_tanh(g, id),
                _ => None,
            };
            if let Some(m) = m {
                cx.count(if m.tanh_approx {
                    "gelu-tanh"
                } else {
                    "gelu-erf"
                });
                rewrite(g, m);
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

/// A matched GELU.
struct Match {
    x: ValueId,
    tanh_approx: bool,
    /// The pattern's nodes, all removed by the rewrite.
    nodes: Vec<NodeId>,
    /// The value the pattern computes; the fused node defines it.
    out: ValueId,
}

const SQRT_2: f64 = std::f64::consts::SQRT_2;
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// `sqrt(2 / pi)`, the tanh form's scale.
fn sqrt_2_over_pi() -> f64 {
    (2.0 / std::f64::consts::PI).sqrt()
}

/// Matches `x * 0.5 * (1 + erf(x / sqrt 2))` around the Erf node `erf_id`.
fn match_erf(g: &Graph, erf_id: NodeId) -> Option<Match> {
    let erf = g.node(erf_id)?;
    let u = unary(erf, UnaryOp::Erf)?;
    // u = x / sqrt(2), or x * (1 / sqrt(2)) in either order.
    let (scale_id, scale) = producer(g, u)?;
    let x = if let Some((x, c)) = binary(scale, BinaryOp::Div) {
        const_near(g, c, SQRT_2).then_some(x)?
    } else {
        let (a, b) = binary(scale, BinaryOp::Mul)?;
        if const_near(g, b, FRAC_1_SQRT_2) {
            a
        } else if const_near(g, a, FRAC_1_SQRT_2) {
            b
        } else {
            return None;
        }
    };
    sole_user(g, u)?;
    tail(g, x, vec![scale_id, erf_id], erf.outputs[0], false)
}

/// Matches `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))` around
/// the Tanh node `tanh_id`.
fn match_tanh(g: &Graph, tanh_id: NodeId) -> Option<Match> {
    let tanh = g.node(tanh_id)?;
    let u = unary(tanh, UnaryOp::Tanh)?;
    sole_user(g, u)?;
    // u = sqrt(2/pi) * w
    let (scale_id, scale) = producer(g, u)?;
    let (a, b) = binary(scale, BinaryOp::Mul)?;
    let w = if const_near(g, a, sqrt_2_over_pi()) {
        b
    } else if const_near(g, b, sqrt_2_over_pi()) {
        a
    } else {
        return None;
    };
    sole_user(g, w)?;
    // w = x + 0.044715 * x^3, either order.
    let (sum_id, sum) = producer(g, w)?;
    let (a, b) = binary(sum, BinaryOp::Add)?;
    let (x, mut inner) = [(a, b), (b, a)]
        .into_iter()
        .find_map(|(x, p)| cubic_term(g, x, p).map(|n| (x, n)))?;
    let mut nodes = vec![sum_id, scale_id, tanh_id];
    nodes.append(&mut inner);
    tail(g, x, nodes, tanh.outputs[0], true)
}

/// When `p = 0.044715 * x^3` (either order) with single-use intermediates:
/// the nodes computing it.
fn cubic_term(g: &Graph, x: ValueId, p: ValueId) -> Option<Vec<NodeId>> {
    sole_user(g, p)?;
    let (pid, pn) = producer(g, p)?;
    let (a, b) = binary(pn, BinaryOp::Mul)?;
    let cube = if const_near(g, a, 0.044715) {
        b
    } else if const_near(g, b, 0.044715) {
        a
    } else {
        return None;
    };
    sole_user(g, cube)?;
    let (cid, cn) = producer(g, cube)?;
    let mut nodes = vec![pid, cid];
    if let Some((base, e)) = binary(cn, BinaryOp::Pow) {
        (base == x && const_near(g, e, 3.0)).then_some(())?;
    } else {
        // x * (x * x) or (x * x) * x
        let sq = other_operand(cn, BinaryOp::Mul, x)?;
        sole_user(g, sq)?;
        let (sid, sn) = producer(g, sq)?;
        (binary(sn, BinaryOp::Mul)? == (x, x)).then_some(())?;
        nodes.push(sid);
    }
    Some(nodes)
}

/// Matches the common tail from the Erf/Tanh result `t`: `a = 1 + t`, then
/// the product of `x`, `a` and 0.5 in any grouping.
fn tail(
    g: &Graph,
    x: ValueId,
    mut nodes: Vec<NodeId>,
    t: ValueId,
    tanh_approx: bool,
) -> Option<Match> {
    let (add_id, add) = sole_user(g, t)?;
    if !const_near(g, other_operand(add, BinaryOp::Add, t)?, 1.0) {
        return None;
    }
    nodes.push(add_id);
    let a = add.outputs[0];
    let (m1_id, m1) = sole_user(g, a)?;
    let y = other_operand(m1, BinaryOp::Mul, a)?;
    nodes.push(m1_id);
    let m1_out = m1.outputs[0];
    let is_half_of_x = |n: &Node| {
        binary(n, BinaryOp::Mul).is_some_and(|(p, q)| {
            (p == x && const_near(g, q, 0.5)) || (q == x && const_near(g, p, 0.5))
        })
    };
    let out = if y == x || const_near(g, y, 0.5) {
        // (x * a) * 0.5 or (0.5 * a) * x
        let (m2_id, m2) = sole_user(g, m1_out)?;
        let z = other_operand(m2, BinaryOp::Mul, m1_out)?;
        let ok = if y == x {
            const_near(g, z, 0.5)
        } else {
            z == x
        };
        if !ok {
            return None;
        }
        nodes.push(m2_id);
        m2.outputs[0]
    } else {
        // (x * 0.5) * a
        let (h_id, h) = producer(g, y)?;
        if !is_half_of_x(h) {
            return None;
        }
        sole_user(g, y)?;
        nodes.push(h_id);
        m1_out
    };
    // Scalar constants of a higher rank than x would broadcast x.
    if g.ty(out) != g.ty(x) || !g.ty(x).dtype.is_float() {
        return None;
    }
    Some(Match {
        x,
        tanh_approx,
        nodes,
        out,
    })
}

/// Replaces the matched nodes by one Gelu defining `m.out`.
fn rewrite(g: &mut Graph, m: Match) {
    let name = m
        .nodes
        .last()
        .and_then(|&n| g.node(n))
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let read = remove_nodes(g, &m.nodes);
    g.add_node(Node {
        name: derived_name(&name, "gelu"),
        op: Op::Unary(UnaryOp::Gelu {
            tanh_approx: m.tanh_approx,
        }),
        inputs: vec![Some(m.x)],
        outputs: vec![m.out],
    });
    drop_dead_consts(g, &read);
}

#[cfg(test)]
mod tests {
    use super::super::testing::check_pass;
    use super::*;
    use crate::interp;
    use crate::ir::{verify, DType, Shape, Tensor, TensorType};

    fn f32t(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, Shape::known(dims))
    }

    /// Small graph builder: a new value per op, types inferred at the end.
    struct B {
        g: Graph,
    }

    impl B {
        fn new(dims: &[usize]) -> (B, ValueId) {
            let mut g = Graph::new("t", 14);
            let x = g.add_input("x", f32t(dims));
            (B { g }, x)
        }
        fn op(&mut self, op: Op, ins: &[ValueId]) -> ValueId {
            let out = self
                .g
                .add_value(format!("v{}", self.g.values.len()), f32t(&[]));
            self.g.add_node(Node {
                name: format!("n{}", self.g.node_capacity()),
                op,
                inputs: ins.iter().map(|&v| Some(v)).collect(),
                outputs: vec![out],
            });
            out
        }
        fn c(&mut self, v: f32) -> ValueId {
            self.g.add_const("c", Tensor::scalar_f32(v))
        }
        fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
            self.op(Op::Binary(BinaryOp::Mul), &[a, b])
        }
        fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
            self.op(Op::Binary(BinaryOp::Add), &[a, b])
        }
        fn finish(mut self, outs: &[ValueId]) -> Graph {
            self.g.outputs = outs.to_vec();
            crate::ir::infer::infer_graph(&mut self.g).unwrap();
            self.g
        }
    }

    fn rand(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 12.5)
            .collect();
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    }

    /// Runs the pass; returns the rewrite counts and checks the outputs
    /// against the unfused graph within 1e-5.
    fn fuse(g: &mut Graph) -> std::collections::BTreeMap<String, usize> {
        let inputs: Vec<Tensor> = g
            .inputs
            .iter()
            .map(|&i| rand(&g.ty(i).shape.concrete().unwrap()))
            .collect();
        let before = interp::run(g, inputs.clone()).unwrap();
        let mut cx = PassCx::default();
        (INFO.make)(&Params::default()).run(g, &mut cx).unwrap();
        crate::ir::infer::infer_graph(g).unwrap();
        verify::verify(g).unwrap();
        let after = interp::run(g, inputs).unwrap();
        for (a, b) in after.iter().zip(&before) {
            assert_eq!(a.shape(), b.shape());
            for (p, q) in a.to_f32_vec().iter().zip(b.to_f32_vec()) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
            }
        }
        cx.rewrites
    }

    fn ops(g: &Graph) -> Vec<&'static str> {
        g.topo_order()
            .unwrap()
            .iter()
            .map(|&n| g.node(n).unwrap().op.onnx_type())
            .collect()
    }

    /// The erf form with every grouping of the final product, both ways of
    /// scaling by 1/sqrt(2) and both operand orders.
    #[test]
    fn erf_forms() {
        for grouping in 0..4 {
            for div in [true, false] {
                for swap in [false, true] {
                    let (mut b, x) = B::new(&[2, 3]);
                    let u = if div {
                        let c = b.c(1.4142135);
                        b.op(Op::Binary(BinaryOp::Div), &[x, c])
                    } else {
                        let c = b.c(0.70710678);
                        if swap {
                            b.mul(c, x)
                        } else {
                            b.mul(x, c)
                        }
                    };
                    let e = b.op(Op::Unary(UnaryOp::Erf), &[u]);
                    let one = b.c(1.0);
                    let a = if swap { b.add(one, e) } else { b.add(e, one) };
                    let half = b.c(0.5);
                    let y = match grouping {
                        // (x * a) * 0.5, torch's order
                        0 => {
                            let m = b.mul(x, a);
                            b.mul(m, half)
                        }
                        // (x * 0.5) * a
                        1 => {
                            let h = if swap { b.mul(half, x) } else { b.mul(x, half) };
                            b.mul(h, a)
                        }
                        // x * (a * 0.5)
                        2 => {
                            let m = b.mul(a, half);
                            b.mul(x, m)
                        }
                        // 0.5 * (a * x)
                        _ => {
                            let m = b.mul(a, x);
                            b.mul(half, m)
                        }
                    };
                    let mut g = b.finish(&[y]);
                    let r = fuse(&mut g);
                    assert_eq!(r.get("gelu-erf"), Some(&1), "{grouping} {div} {swap}");
                    assert_eq!(ops(&g), ["Gelu"]);
                }
            }
        }
    }

    /// The tanh form with Pow and with torch's x * (x * x) cube.
    #[test]
    fn tanh_forms() {
        for pow in [false, true] {
            let (mut b, x0) = B::new(&[4]);
            // x is computed, used by other nodes too.
            let x = b.op(Op::Unary(UnaryOp::Neg), &[x0]);
            let cube = if pow {
                let three = b.c(3.0);
                b.op(Op::Binary(BinaryOp::Pow), &[x, three])
            } else {
                let sq = b.mul(x, x);
                b.mul(x, sq)
            };
            let k = b.c(0.044715);
            let p = b.mul(k, cube);
            let w = b.add(x, p);
            let s = b.c(0.7978846);
            let u = b.mul(s, w);
            let t = b.op(Op::Unary(UnaryOp::Tanh), &[u]);
            let one = b.c(1.0);
            let a = b.add(one, t);
            let m = b.mul(x, a);
            let half = b.c(0.5);
            let y = b.mul(half, m);
            let other = b.op(Op::Unary(UnaryOp::Exp), &[x]);
            let mut g = b.finish(&[y, other]);
            let r = fuse(&mut g);
            assert_eq!(r.get("gelu-tanh"), Some(&1));
            let mut o = ops(&g);
            o.sort();
            assert_eq!(o, ["Exp", "Gelu", "Neg"]);
            let gelu = g
                .nodes()
                .find(|(_, n)| matches!(n.op, Op::Unary(UnaryOp::Gelu { .. })))
                .unwrap()
                .1;
            assert_eq!(gelu.op, Op::Unary(UnaryOp::Gelu { tanh_approx: true }));
        }
    }

    /// torch's export of `nn.GELU()`: x is also read by another node.
    #[test]
    fn golden_torch_erf() {
        check_pass(
            "fuse-gelu",
            r#"
graph "g" opset 14
  input  %0 x: f32[batch,8]
  const  %1 s2: f32[] = [1.4142135]
  const  %2 one: f32[] = [1]
  const  %3 half: f32[] = [0.5]
  %4 u: f32[batch,8] = Div(%0, %1)
  %5 e: f32[batch,8] = Erf(%4)
  %6 a: f32[batch,8] = Add(%5, %2)
  %7 m: f32[batch,8] = Mul(%0, %6)
  %8 y: f32[batch,8] = Mul(%7, %3)  # gelu_out
  %9 z: f32[batch,8] = Neg(%0)
  output %8 y
  output %9 z
"#,
            r#"
graph "g" opset 14
  input  %0 x: f32[batch,8]
  %1 z: f32[batch,8] = Neg(%0)
  %2 y: f32[batch,8] = Gelu(%0)  # gelu_out.gelu
  output %2 y
  output %1 z
"#,
        );
    }

    /// torch's export of `nn.GELU(approximate="tanh")`.
    #[test]
    fn golden_torch_tanh() {
        check_pass(
            "fuse-gelu",
            r#"
graph "g" opset 14
  input  %0 x: f32[4]
  const  %1 k: f32[] = [0.044715]
  const  %2 s: f32[] = [0.7978846]
  const  %3 one: f32[] = [1]
  const  %4 half: f32[] = [0.5]
  %5 sq: f32[4] = Mul(%0, %0)
  %6 cube: f32[4] = Mul(%0, %5)
  %7 p: f32[4] = Mul(%1, %6)
  %8 w: f32[4] = Add(%0, %7)
  %9 u: f32[4] = Mul(%2, %8)
  %10 t: f32[4] = Tanh(%9)
  %11 a: f32[4] = Add(%3, %10)
  %12 m: f32[4] = Mul(%0, %11)
  %13 y: f32[4] = Mul(%4, %12)
  output %13 y
"#,
            r#"
graph "g" opset 14
  input  %0 x: f32[4]
  %1 y: f32[4] = Gelu[approximate=tanh](%0)  # gelu
  output %1 y
"#,
        );
    }

    #[test]
    fn near_misses_stay() {
        // Wrong constant (0.6 instead of 0.5).
        let (mut b, x) = B::new(&[3]);
        let c = b.c(1.4142135);
        let u = b.op(Op::Binary(BinaryOp::Div), &[x, c]);
        let e = b.op(Op::Unary(UnaryOp::Erf), &[u]);
        let one = b.c(1.0);
        let a = b.add(e, one);
        let m = b.mul(x, a);
        let half = b.c(0.6);
        let y = b.mul(m, half);
        let mut g = b.finish(&[y]);
        assert!(fuse(&mut g).is_empty());
        assert_eq!(g.node_count(), 5);

        // The erf result escapes as a graph output.
        let (mut b, x) = B::new(&[3]);
        let c = b.c(1.4142135);
        let u = b.op(Op::Binary(BinaryOp::Div), &[x, c]);
        let e = b.op(Op::Unary(UnaryOp::Erf), &[u]);
        let one = b.c(1.0);
        let a = b.add(e, one);
        let m = b.mul(x, a);
        let half = b.c(0.5);
        let y = b.mul(m, half);
        let mut g = b.finish(&[y, e]);
        assert!(fuse(&mut g).is_empty());

        // The product uses another value than the erf's argument.
        let (mut b, x) = B::new(&[3]);
        let z = b.op(Op::Unary(UnaryOp::Neg), &[x]);
        let c = b.c(1.4142135);
        let u = b.op(Op::Binary(BinaryOp::Div), &[x, c]);
        let e = b.op(Op::Unary(UnaryOp::Erf), &[u]);
        let one = b.c(1.0);
        let a = b.add(e, one);
        let m = b.mul(z, a);
        let half = b.c(0.5);
        let y = b.mul(m, half);
        let mut g = b.finish(&[y]);
        assert!(fuse(&mut g).is_empty());

        // The 0.5 constant has a higher rank than x: fusing would change
        // the output shape.
        let (mut b, x) = B::new(&[3]);
        let c = b.c(1.4142135);
        let u = b.op(Op::Binary(BinaryOp::Div), &[x, c]);
        let e = b.op(Op::Unary(UnaryOp::Erf), &[u]);
        let one = b.c(1.0);
        let a = b.add(e, one);
        let m = b.mul(x, a);
        let half =
            b.g.add_const("h", Tensor::from_f32(vec![1, 1], vec![0.5]).unwrap());
        let y = b.mul(m, half);
        let mut g = b.finish(&[y]);
        assert!(fuse(&mut g).is_empty());
    }
}

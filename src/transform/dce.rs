//! `dce`: dead code elimination.
//!
//! A value is live when it is a graph output or an input of a live node; a
//! node is live when any of its outputs is. One walk over the nodes in
//! reverse topological order sees every user of a node before the node
//! itself, so liveness is exact after that single walk, however long the
//! dead chains are. Dead nodes are removed (tombstones) and constants that no
//! live node reads are dropped from the constant store; a constant that is
//! itself a graph output is live. Graph inputs are the model's interface and
//! are never removed, used or not.

use std::collections::HashSet;

use super::{Changed, Params, Pass, PassCx, PassInfo};
use crate::ir::{Graph, ValueDef, ValueId};
use crate::Result;

fn make(_: &Params) -> Box<dyn Pass> {
    Box::new(Dce)
}

/// Registry entry of `dce`.
pub const INFO: PassInfo = PassInfo {
    name: "dce",
    summary: "remove nodes whose outputs are never used and constants nothing reads",
    params: &[],
    make,
};

/// The `dce` pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        // Match: liveness, without touching the graph.
        let order = g.topo_order()?;
        let mut live: HashSet<ValueId> = g.outputs.iter().copied().collect();
        let mut dead_nodes = Vec::new();
        for &id in order.iter().rev() {
            let Some(node) = g.node(id) else { continue };
            if node.outputs.iter().any(|o| live.contains(o)) {
                live.extend(node.inputs.iter().flatten());
            } else {
                dead_nodes.push(id);
            }
        }
        let dead_consts: Vec<ValueId> = g
            .consts
            .keys()
            .filter(|c| !live.contains(c))
            .copied()
            .collect();
        if dead_nodes.is_empty() && dead_consts.is_empty() {
            return Ok(Changed::No);
        }
        // Patch.
        dead_nodes.reverse();
        for id in dead_nodes {
            if let Some(n) = g.remove_node(id) {
                cx.count(&format!("remove {}", n.op.onnx_type()));
            }
        }
        for c in dead_consts {
            g.consts.remove(&c);
            g.value_mut(c).def = ValueDef::Undefined;
            cx.count("remove const");
        }
        Ok(Changed::Yes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, DType, Dim, Op, Shape, Tensor, TensorType, UnaryOp};
    use crate::transform::fold_constants::testutil::{assert_text, counts, node, node1, run};

    #[test]
    fn removes_dead_chains_and_unread_constants() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", TensorType::new(DType::F32, Shape(vec![Dim::sym("n")])));
        let unused_in = g.add_input("u", TensorType::new(DType::F32, Shape::known(&[1])));
        let w = g.add_const("w", Tensor::scalar_f32(2.0));
        let dead_w = g.add_const("dead_w", Tensor::scalar_f32(5.0));
        let out_c = g.add_const("out_c", Tensor::scalar_f32(7.0));
        let y = node1(&mut g, Op::Binary(BinaryOp::Mul), &[x, w]);
        // A dead chain of two nodes reading a constant only it uses.
        let d1 = node1(&mut g, Op::Binary(BinaryOp::Add), &[x, dead_w]);
        let _d2 = node1(&mut g, Op::Unary(UnaryOp::Exp), &[d1]);
        g.outputs.extend([y, out_c]);
        let (changed, r) = run("dce", &mut g);
        assert_eq!(changed, Changed::Yes);
        assert_eq!(
            counts(&r),
            [("remove Add", 1), ("remove Exp", 1), ("remove const", 1)]
        );
        assert_eq!(g.inputs, [x, unused_in]);
        assert_text(
            &g,
            r#"graph "t" opset 17
              input  %0 x: f32[n]
              input  %1 u: f32[1]
              const  %2 w: f32[] = [2]
              const  %4 out_c: f32[] = [7]
              %5 v0: f32[n] = Mul(%0, %2)  # n0
              output %5 v0
              output %4 out_c"#,
        );
        assert_eq!(run("dce", &mut g).0, Changed::No);
    }

    #[test]
    fn multi_output_node_lives_while_any_output_is_used() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::known(&[4])));
        let parts = node(
            &mut g,
            Op::Split {
                axis: 0,
                num_outputs: 2,
            },
            &[Some(x)],
            2,
        );
        let y = node1(&mut g, Op::Unary(UnaryOp::Neg), &[parts[1]]);
        g.outputs.push(y);
        assert_eq!(run("dce", &mut g).0, Changed::No);
        assert_eq!(g.node_count(), 2);

        // With no outputs at all everything but the inputs goes.
        g.outputs.clear();
        let (_, r) = run("dce", &mut g);
        assert_eq!(counts(&r), [("remove Neg", 1), ("remove Split", 1)]);
        assert_eq!(g.node_count(), 0);
        assert_eq!(g.inputs, [x]);
    }
}

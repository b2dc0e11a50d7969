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

/// Removes dead nodes and constants outside a pipeline (after a rewrite
/// that left weights unused).
pub fn remove_dead(g: &mut Graph) -> Result<()> {
    Dce.run(g, &mut PassCx::default()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Op, Shape, TensorType, UnaryOp};
    use crate::transform::fold_constants::testutil::{counts, golden, node, node1, run};

    #[test]
    fn removes_dead_chains_and_unread_constants() {
        let before = r#"graph "t" opset 17
              input  %0 x: f32[n]
              input  %1 unused: f32[1]
              const  %2 w: f32[] = [2]
              const  %3 dead_w: f32[] = [5]
              const  %4 out_c: f32[] = [7]
              %5 y: f32[n] = Mul(%0, %2)  # n0
              %6 d1: f32[n] = Add(%0, %3)  # n1
              %7 d2: f32[n] = Exp(%6)  # n2
              output %5 y
              output %4 out_c"#;
        let after = r#"graph "t" opset 17
              input  %0 x: f32[n]
              input  %1 unused: f32[1]
              const  %2 w: f32[] = [2]
              const  %3 out_c: f32[] = [7]
              %4 y: f32[n] = Mul(%0, %2)  # n0
              output %4 y
              output %3 out_c"#;
        let r = golden("dce", before, after);
        assert_eq!(
            counts(&r),
            [("remove Add", 1), ("remove Exp", 1), ("remove const", 1)]
        );
        assert!(golden("dce", after, after).is_empty());
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

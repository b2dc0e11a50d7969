//! `fold-transpose-matmul`: folds a Transpose that swaps the last two dims
//! into the MatMul or FusedMatMul operand it feeds.
//!
//! `MatMul(Transpose(X, perm=[0, .., r-3, r-1, r-2]), B)` is
//! `FusedMatMul[trans_a](X, B)`, and likewise for B with `trans_b`. The
//! Transpose output must be read only by that operand. On a FusedMatMul the
//! flag is toggled (so a transpose of an already transposed operand cancels).
//! Other permutations, and Gemm (whose flags already cover 2-D transposes
//! and stay as they are), are left alone.

use super::merge_bias::{drop_dead_consts, plain_fused_matmul, sole_producer};
use super::{Changed, Pass, PassCx, PassInfo};
use crate::ir::{Graph, NodeId, Op, ValueId};
use crate::Result;

/// The pass's registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fold-transpose-matmul",
    summary: "fold a last-two-dims Transpose feeding MatMul/FusedMatMul into trans_a/trans_b",
    params: &[],
    make: |_| Box::new(FoldTransposeMatMul),
};

/// See the module docs.
pub struct FoldTransposeMatMul;

impl Pass for FoldTransposeMatMul {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            for pos in 0..2 {
                let Some((tp, src)) = plan(g, id, pos) else {
                    continue;
                };
                let Some(node) = g.node_mut(id) else { continue };
                node.op = toggled(&node.op, pos);
                node.inputs[pos] = Some(src);
                if let Some(t) = g.remove_node(tp) {
                    drop_dead_consts(g, t.inputs);
                }
                cx.count(if pos == 0 { "trans-a" } else { "trans-b" });
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

/// Whether `perm` swaps the last two axes and keeps the others.
fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
        && perm[r - 2] == r - 1
        && perm[r - 1] == r - 2
}

/// The Transpose feeding input `pos` of matrix product `id`, and its input.
fn plan(g: &Graph, id: NodeId, pos: usize) -> Option<(NodeId, ValueId)> {
    let node = g.node(id)?;
    if !matches!(node.op, Op::MatMul | Op::FusedMatMul { .. }) {
        return None;
    }
    let v = node.input(pos)?;
    let tp = sole_producer(g, v, id)?;
    let tn = g.node(tp)?;
    match &tn.op {
        Op::Transpose { perm } if swaps_last_two(perm) => Some((tp, tn.input(0)?)),
        _ => None,
    }
}

/// `op` (MatMul or FusedMatMul) with the transpose flag of operand `pos`
/// toggled.
fn toggled(op: &Op, pos: usize) -> Op {
    let mut op = match op {
        Op::MatMul => plain_fused_matmul(),
        other => other.clone(),
    };
    if let Op::FusedMatMul {
        trans_a, trans_b, ..
    } = &mut op
    {
        if pos == 0 {
            *trans_a = !*trans_a;
        } else {
            *trans_b = !*trans_b;
        }
    }
    op
}

#[cfg(test)]
mod tests {
    use super::super::merge_bias::testkit::*;
    use super::*;
    use crate::ir::Activation;

    fn tr(perm: &[usize]) -> Op {
        Op::Transpose {
            perm: perm.to_vec(),
        }
    }

    #[test]
    fn perms() {
        assert!(swaps_last_two(&[1, 0]));
        assert!(swaps_last_two(&[0, 1, 3, 2]));
        assert!(!swaps_last_two(&[1, 0, 2]));
        assert!(!swaps_last_two(&[0, 2, 1, 3]));
        assert!(!swaps_last_two(&[0]));
    }

    #[test]
    fn both_operands_fold() {
        let mut b = Builder::new();
        let x = b.input("x", &["batch", "4", "3"]);
        let w = b.rand("w", &[5, 4]);
        let xt = b.op("xt", tr(&[0, 2, 1]), &[x]);
        let wt = b.op("wt", tr(&[1, 0]), &[w]);
        let y = b.op("mm", Op::MatMul, &[xt, wt]);
        let g = b.finish(&[y]);
        let (after, counts) = run_checked(&g, "fold-transpose-matmul", &[]);
        assert_eq!(after.node_count(), 1);
        assert_eq!(counts.get("trans-a"), Some(&1));
        assert_eq!(counts.get("trans-b"), Some(&1));
        let (_, n) = after.nodes().next().unwrap();
        assert!(matches!(
            n.op,
            Op::FusedMatMul {
                trans_a: true,
                trans_b: true,
                ..
            }
        ));
        assert_eq!(n.inputs, vec![Some(x), Some(w)]);
    }

    #[test]
    fn fused_matmul_flag_toggles_and_keeps_epilogue() {
        let mut b = Builder::new();
        let a = b.input("a", &["2", "3", "4"]);
        let w = b.input("w", &["2", "4", "5"]);
        let bias = b.rand("bias", &[5]);
        let wt = b.op("wt", tr(&[0, 2, 1]), &[w]);
        let y = b.op(
            "mm",
            Op::FusedMatMul {
                trans_a: false,
                trans_b: true,
                alpha: 0.25,
                act: Some(Activation::Tanh),
            },
            &[a, wt, bias],
        );
        let g = b.finish(&[y]);
        let (after, _) = run_checked(&g, "fold-transpose-matmul", &[]);
        let (_, n) = after.nodes().next().unwrap();
        assert_eq!(after.node_count(), 1);
        assert_eq!(
            n.op,
            Op::FusedMatMul {
                trans_a: false,
                trans_b: false,
                alpha: 0.25,
                act: Some(Activation::Tanh),
            }
        );
    }

    #[test]
    fn what_stays() {
        let mut b = Builder::new();
        let x = b.input("x", &["2", "3", "4"]);
        let w = b.rand("w", &[4, 5]);
        // Not a last-two swap.
        let xt = b.op("xt", tr(&[1, 0, 2]), &[x]);
        let y = b.op("mm", Op::MatMul, &[xt, w]);
        // Transpose with another use.
        let x2 = b.input("x2", &["4", "3"]);
        let x2t = b.op("x2t", tr(&[1, 0]), &[x2]);
        let y2 = b.op("mm2", Op::MatMul, &[x2t, w]);
        // Gemm keeps its flags and its Transpose.
        let w3 = b.rand("w3", &[5, 4]);
        let x3t = b.op("x3t", tr(&[1, 0]), &[x2]);
        let gm = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        };
        let y3 = b.op("gemm", gm, &[x3t, w3]);
        let g = b.finish(&[y, y2, x2t, y3]);
        let (after, counts) = run_checked(&g, "fold-transpose-matmul", &[]);
        assert!(counts.is_empty());
        assert_eq!(count_ops(&after, "Transpose"), 3);
    }
}

#[cfg(test)]
mod golden {
    use crate::transform::testing::check_pass;

    #[test]
    fn transposes_fold_into_flags() {
        check_pass(
            "fold-transpose-matmul",
            r#"
            graph "t" opset 21
              input  %0 x: f32[b,4,3]
              input  %1 w: f32[5,4]
              %2 xt: f32[b,3,4] = Transpose[perm=[0, 2, 1]](%0)  # tx
              %3 wt: f32[4,5] = Transpose[perm=[1, 0]](%1)  # tw
              %4 y: f32[b,3,5] = MatMul(%2, %3)  # mm
              %5 x2: f32[4,b,3] = Transpose[perm=[1, 0, 2]](%0)  # other
              output %4 y
              output %5 x2
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[b,4,3]
              input  %1 w: f32[5,4]
              %2 y: f32[b,3,5] = FusedMatMul[trans_a=true, trans_b=true, alpha=1](%0, %1)  # mm
              %3 x2: f32[4,b,3] = Transpose[perm=[1, 0, 2]](%0)  # other
              output %2 y
              output %3 x2
            "#,
        );
    }
}

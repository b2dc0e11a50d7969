//! `fold-scale-matmul`: folds a scalar Mul on a matrix product's operand
//! into the product's `alpha`.
//!
//! The PyTorch exporters write `scaled_dot_product_attention` as
//! `MatMul(Q * s, K^T * s)` with `s = 1 / sqrt(sqrt(d))` on both operands:
//! two passes over Q and K in every layer where eager attention has none
//! (or one division of the scores). `MatMul(X * c, Y)` is `c * (X @ Y)`,
//! so the Mul goes and `alpha` takes `c` (on a FusedMatMul the bias and
//! activation come after `alpha`, so they are unaffected). The Mul must be by
//! a one-element f32 constant that leaves X's shape as it is, and its output
//! must be read only by that operand. The product is rounded once where the
//! unfolded graph rounds the scaled operands: the results agree within f32
//! rounding, exactly when `c` is a power of two.

use super::fuse_elementwise::scalar_f32;
use super::merge_bias::{drop_dead_consts, plain_fused_matmul, sole_producer};
use super::{Changed, Pass, PassCx, PassInfo};
use crate::ir::{BinaryOp, DType, Graph, NodeId, Op, ValueId};
use crate::Result;

/// The pass's registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fold-scale-matmul",
    summary: "fold a scalar Mul on a MatMul/FusedMatMul operand into the product's alpha",
    params: &[],
    make: |_| Box::new(FoldScaleMatMul),
};

/// See the module docs.
pub struct FoldScaleMatMul;

impl Pass for FoldScaleMatMul {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            for pos in 0..2 {
                let Some((mul, x, c)) = plan(g, id, pos) else {
                    continue;
                };
                let Some(node) = g.node_mut(id) else { continue };
                if node.op == Op::MatMul {
                    node.op = plain_fused_matmul();
                }
                if let Op::FusedMatMul { alpha, .. } = &mut node.op {
                    *alpha *= c;
                }
                node.inputs[pos] = Some(x);
                if let Some(m) = g.remove_node(mul) {
                    drop_dead_consts(g, m.inputs);
                }
                cx.count("scale-into-alpha");
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

/// For operand `pos` of a matrix product `id` made by `Mul(x, c)` (either
/// order) read by nothing else: the Mul, `x` and `c`.
fn plan(g: &Graph, id: NodeId, pos: usize) -> Option<(NodeId, ValueId, f32)> {
    let node = g.node(id)?;
    if !matches!(node.op, Op::MatMul | Op::FusedMatMul { .. }) {
        return None;
    }
    let v = node.input(pos)?;
    let mul = sole_producer(g, v, id)?;
    let m = g.node(mul)?;
    if m.op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let (a, b) = (m.input(0)?, m.input(1)?);
    let (x, c) = match (scalar_f32(g, a), scalar_f32(g, b)) {
        (None, Some(c)) => (a, c),
        (Some(c), None) => (b, c),
        _ => return None,
    };
    // The Mul only scales: x already has its output's type (the product's
    // operands are f32 of rank >= 2, as FusedMatMul takes them).
    let ty = g.ty(x);
    let keeps_shape = ty == g.ty(v) && ty.dtype == DType::F32 && ty.shape.rank() >= 2;
    let other_rank_ok = node
        .input(1 - pos)
        .is_some_and(|o| g.ty(o).shape.rank() >= 2);
    (keeps_shape && other_rank_ok && c.is_finite()).then_some((mul, x, c))
}

#[cfg(test)]
mod tests {
    use super::super::testing::check_pass;

    #[test]
    fn both_scaled_operands_fold_into_alpha() {
        check_pass(
            "fold-scale-matmul",
            r#"graph "g" opset 17
  input  %0 q: f32[2,3,4]
  input  %1 k: f32[2,4,5]
  const  %2 s: f32[] = [0.5]
  %3 qs: f32[2,3,4] = Mul(%0, %2)
  %4 ks: f32[2,4,5] = Mul(%2, %1)
  %5 y: f32[2,3,5] = MatMul(%3, %4)
  output %5 y
"#,
            r#"graph "g" opset 17
  input  %0 q: f32[2,3,4]
  input  %1 k: f32[2,4,5]
  %2 y: f32[2,3,5] = FusedMatMul[trans_a=false, trans_b=false, alpha=0.25](%0, %1)
  output %2 y
"#,
        );
    }

    #[test]
    fn a_shared_or_broadcasting_scale_stays() {
        // The scaled value is also a graph output.
        let shared = r#"graph "g" opset 17
  input  %0 q: f32[3,4]
  input  %1 k: f32[4,5]
  const  %2 s: f32[] = [0.5]
  %3 qs: f32[3,4] = Mul(%0, %2)
  %4 y: f32[3,5] = MatMul(%3, %1)
  output %4 y
  output %3 qs
"#;
        check_pass("fold-scale-matmul", shared, shared);
        // A per-column scale is not a scalar.
        let vector = r#"graph "g" opset 17
  input  %0 q: f32[3,4]
  input  %1 k: f32[4,5]
  const  %2 s: f32[4] = [0.5, 1, 2, 4]
  %3 qs: f32[3,4] = Mul(%0, %2)
  %4 y: f32[3,5] = MatMul(%3, %1)
  output %4 y
"#;
        check_pass("fold-scale-matmul", vector, vector);
    }
}

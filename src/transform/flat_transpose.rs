//! `fold-flattened-transpose`: a Transpose written as reshape, transpose,
//! reshape back becomes one Transpose.
//!
//! The dynamo exporter writes `k.transpose(-2, -1)` inside
//! `scaled_dot_product_attention` by flattening the batch dims:
//! `Reshape(K[b,h,s,d] -> [-1,s,d])`, `Transpose[0,2,1]`, `Reshape(-> [b,h,d,s])`
//! (plus the Shape/Slice/Concat chain that computes both shapes). That is
//! `Transpose(K, [0,1,3,2])`, which `fold-transpose-matmul` then folds into
//! the product, as it does for eager attention.
//!
//! In general: X has shape `P ++ T`; the first Reshape's output is `M ++ T`
//! (only the leading dims change, so each leading index of the output holds
//! one leading block of X, in order); the Transpose keeps `M`'s axes and
//! permutes `T`'s; the second Reshape's output is `P ++ permuted T`. Then the
//! three are `Transpose(X)` with the same permutation of the trailing axes.
//! Shapes are compared as the inferred (possibly symbolic) types, so the
//! rewrite holds for every binding of the symbols. Intermediate values read
//! elsewhere are left in place (dce drops what is left unused).

use super::{Changed, Pass, PassCx, PassInfo};
use crate::ir::{Dim, Graph, NodeId, Op, ValueDef, ValueId};
use crate::Result;

/// The pass's registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fold-flattened-transpose",
    summary: "Reshape -> Transpose -> Reshape that only flattens and restores leading dims becomes one Transpose",
    params: &[],
    make: |_| Box::new(FoldFlattenedTranspose),
};

/// See the module docs.
pub struct FoldFlattenedTranspose;

impl Pass for FoldFlattenedTranspose {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            let Some((x, perm)) = plan(g, id) else {
                continue;
            };
            let Some(node) = g.node_mut(id) else { continue };
            node.op = Op::Transpose { perm };
            node.inputs = vec![Some(x)];
            cx.count("reshape-transpose-reshape");
            changed = true;
        }
        Ok(Changed::from_bool(changed))
    }
}

/// The node producing `v` (first output) with its op.
fn producer(g: &Graph, v: ValueId) -> Option<(NodeId, &Op)> {
    match g.value(v).def {
        ValueDef::Node(p, 0) => g.node(p).map(|n| (p, &n.op)),
        _ => None,
    }
}

/// For a Reshape node `id` closing the pattern: the source X and the
/// permutation of X that replaces the three nodes.
fn plan(g: &Graph, id: NodeId) -> Option<(ValueId, Vec<usize>)> {
    let outer = g.node(id)?;
    if !matches!(outer.op, Op::Reshape { .. }) {
        return None;
    }
    let (tp_id, tp_op) = producer(g, outer.input(0)?)?;
    let Op::Transpose { perm: inner_perm } = tp_op else {
        return None;
    };
    let (r1_id, r1_op) = producer(g, g.node(tp_id)?.input(0)?)?;
    if !matches!(r1_op, Op::Reshape { .. }) {
        return None;
    }
    let x = g.node(r1_id)?.input(0)?;
    let x_dims = g.ty(x).shape.dims();
    let flat_dims = g.ty(g.node(r1_id)?.outputs[0]).shape.dims();
    let out_dims = g.ty(outer.outputs[0]).shape.dims();

    // The longest common suffix T of X and the flattened value whose axes
    // the Transpose keeps the flattened leading axes M in place.
    let common = x_dims
        .iter()
        .rev()
        .zip(flat_dims.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let lead = flat_dims.len() - common;
    if inner_perm.len() != flat_dims.len() || (0..lead).any(|i| inner_perm[i] != i) {
        return None;
    }
    let keep = x_dims.len() - common;
    let trailing: Vec<usize> = inner_perm[lead..].iter().map(|&p| p - lead).collect();
    if trailing.iter().enumerate().all(|(i, &p)| i == p) {
        return None; // nothing is transposed: a plain reshape pair, not this pattern
    }
    // The result must be X's leading dims followed by T permuted.
    let expected: Vec<&Dim> = x_dims[..keep]
        .iter()
        .chain(trailing.iter().map(|&p| &x_dims[keep + p]))
        .collect();
    if out_dims.len() != expected.len() || out_dims.iter().zip(&expected).any(|(a, b)| a != *b) {
        return None;
    }
    let perm = (0..keep)
        .chain(trailing.iter().map(|&p| keep + p))
        .collect();
    Some((x, perm))
}

#[cfg(test)]
mod tests {
    use super::super::merge_bias::testkit::*;
    use super::*;
    use crate::ir::Tensor;

    fn tr(perm: &[usize]) -> Op {
        Op::Transpose {
            perm: perm.to_vec(),
        }
    }

    fn ints(b: &mut Builder, name: &str, v: &[i64]) -> ValueId {
        b.konst(
            name,
            Tensor::from_i64(vec![v.len()], v.to_vec()).expect("fits"),
        )
    }

    fn reshape() -> Op {
        Op::Reshape { allowzero: false }
    }

    /// The dynamo exporter's form: shapes from Shape/Slice/Concat of K.
    #[test]
    fn sdpa_key_transpose_becomes_one_transpose() {
        let mut b = Builder::new();
        let k = b.input("k", &["batch", "4", "seq", "8"]);
        let shape = b.op(
            "shape",
            Op::Shape {
                start: 0,
                end: None,
            },
            &[k],
        );
        let (minus1, minus2, zero, big) = (
            ints(&mut b, "m1", &[-1]),
            ints(&mut b, "m2", &[-2]),
            ints(&mut b, "z", &[0]),
            ints(&mut b, "big", &[i64::MAX]),
        );
        let last = b.op("last", Op::Slice, &[shape, minus1, big]);
        let second_last = b.op("second_last", Op::Slice, &[shape, minus2, minus1]);
        let lead = b.op("lead", Op::Slice, &[shape, zero, minus2]);
        let flat_shape = b.op(
            "flat_shape",
            Op::Concat { axis: 0 },
            &[minus1, second_last, last],
        );
        let flat = b.op("flat", reshape(), &[k, flat_shape]);
        let flat_t = b.op("flat_t", tr(&[0, 2, 1]), &[flat]);
        let back_shape = b.op(
            "back_shape",
            Op::Concat { axis: 0 },
            &[lead, last, second_last],
        );
        let kt = b.op("kt", reshape(), &[flat_t, back_shape]);
        let g = b.finish(&[kt]);
        let (after, counts) = run_checked(&g, "fold-flattened-transpose", &[]);
        assert_eq!(counts.get("reshape-transpose-reshape"), Some(&1));
        let tps: Vec<_> = after
            .nodes()
            .filter(|(_, n)| n.outputs[0] == kt)
            .map(|(_, n)| (n.op.clone(), n.inputs.clone()))
            .collect();
        assert_eq!(tps, vec![(tr(&[0, 1, 3, 2]), vec![Some(k)])]);
    }

    #[test]
    fn known_dims_and_a_rotation_of_three_trailing_axes() {
        let mut b = Builder::new();
        let x = b.input("x", &["2", "3", "4", "5", "6"]);
        let s1 = ints(&mut b, "s1", &[6, 4, 5, 6]);
        let s2 = ints(&mut b, "s2", &[2, 3, 6, 4, 5]);
        let flat = b.op("flat", reshape(), &[x, s1]);
        let t = b.op("t", tr(&[0, 3, 1, 2]), &[flat]);
        let y = b.op("y", reshape(), &[t, s2]);
        let g = b.finish(&[y]);
        let (after, counts) = run_checked(&g, "fold-flattened-transpose", &[]);
        assert_eq!(counts.get("reshape-transpose-reshape"), Some(&1));
        let (_, n) = after
            .nodes()
            .find(|(_, n)| n.outputs[0] == y)
            .expect("y has a producer");
        assert_eq!(n.op, tr(&[0, 1, 4, 2, 3]));
    }

    #[test]
    fn leaves_reshapes_that_regroup_or_move_leading_axes() {
        // Restores the leading dims in another grouping ([3, 2] for [2, 3]).
        let mut b = Builder::new();
        let x = b.input("x", &["2", "3", "4", "5"]);
        let s1 = ints(&mut b, "s1", &[6, 4, 5]);
        let s2 = ints(&mut b, "s2", &[3, 2, 5, 4]);
        let flat = b.op("flat", reshape(), &[x, s1]);
        let t = b.op("t", tr(&[0, 2, 1]), &[flat]);
        let y = b.op("y", reshape(), &[t, s2]);
        let g = b.finish(&[y]);
        let (_, counts) = run_checked(&g, "fold-flattened-transpose", &[]);
        assert!(counts.is_empty());

        // The Transpose moves the flattened axis.
        let mut b = Builder::new();
        let x = b.input("x", &["2", "3", "4", "5"]);
        let s1 = ints(&mut b, "s1", &[6, 4, 5]);
        let s2 = ints(&mut b, "s2", &[4, 6, 5]);
        let flat = b.op("flat", reshape(), &[x, s1]);
        let t = b.op("t", tr(&[1, 0, 2]), &[flat]);
        let y = b.op("y", reshape(), &[t, s2]);
        let g = b.finish(&[y]);
        let (_, counts) = run_checked(&g, "fold-flattened-transpose", &[]);
        assert!(counts.is_empty());

        // The first Reshape also splits a trailing axis (no common suffix
        // beyond the last one, which the Transpose moves).
        let mut b = Builder::new();
        let x = b.input("x", &["2", "12"]);
        let s1 = ints(&mut b, "s1", &[2, 3, 4]);
        let s2 = ints(&mut b, "s2", &[2, 12]);
        let flat = b.op("flat", reshape(), &[x, s1]);
        let t = b.op("t", tr(&[0, 2, 1]), &[flat]);
        let y = b.op("y", reshape(), &[t, s2]);
        let g = b.finish(&[y]);
        let (_, counts) = run_checked(&g, "fold-flattened-transpose", &[]);
        assert!(counts.is_empty());
    }
}

//! `cse`: common subexpression elimination.
//!
//! Two nodes with the same op (attributes included, compared with `==`) and
//! the same inputs compute the same outputs, so the later one can read the
//! earlier one's results instead. Small constants with the same dtype, shape
//! and bit pattern are merged the same way (bit patterns, so `0.0` and
//! `-0.0` stay apart and a NaN matches itself). The pass walks the nodes in
//! topological order and compares inputs after mapping already-merged values
//! to their survivors, so a duplicated chain collapses in one run; the
//! earliest node (in that order) or the lowest-numbered constant survives.
//!
//! Graph outputs must stay distinct values: a merge that would make two
//! graph outputs the same value is skipped (the duplicate stays), and when
//! only the duplicate is a graph output, the survivor takes over its name.

use std::collections::{HashMap, HashSet};

use super::{Changed, ParamSpec, ParamValue, Params, Pass, PassCx, PassInfo};
use crate::ir::{DType, Graph, NodeId, Tensor, TensorData, ValueDef, ValueId};
use crate::Result;

fn default_max_const_elements() -> ParamValue {
    ParamValue::Int(4096)
}

fn make(p: &Params) -> Box<dyn Pass> {
    Box::new(Cse {
        max_const_elements: usize::try_from(p.int("max_const_elements")).unwrap_or(0),
    })
}

/// Registry entry of `cse`.
pub const INFO: PassInfo = PassInfo {
    name: "cse",
    summary: "merge nodes with the same op and inputs, and identical small constants",
    params: &[ParamSpec {
        name: "max_const_elements",
        default: default_max_const_elements,
        help: "largest constant (in elements) compared for merging",
    }],
    make,
};

/// The `cse` pass.
#[derive(Debug, Clone)]
pub struct Cse {
    /// Constants with more elements than this are never compared.
    pub max_const_elements: usize,
}

/// Identity of a constant: dtype, shape and element bit patterns.
type ConstKey = (DType, Vec<usize>, Vec<u64>);

/// Every element's bit pattern, widened to u64, so equal keys mean equal
/// bytes (floats compare by bits, not by value).
fn bit_pattern(t: &Tensor) -> Vec<u64> {
    fn widen<T: Copy>(v: &[T], f: impl Fn(T) -> u64) -> Vec<u64> {
        v.iter().map(|&x| f(x)).collect()
    }
    match t.data() {
        TensorData::F32(v) => widen(v, |x| u64::from(x.to_bits())),
        TensorData::F64(v) => widen(v, f64::to_bits),
        TensorData::F16(v) => widen(v, |x| u64::from(x.to_bits())),
        TensorData::BF16(v) => widen(v, |x| u64::from(x.to_bits())),
        TensorData::I8(v) | TensorData::I4(v) | TensorData::I2(v) => widen(v, |x| x as u8 as u64),
        TensorData::I16(v) => widen(v, |x| x as u16 as u64),
        TensorData::I32(v) => widen(v, |x| x as u32 as u64),
        TensorData::I64(v) => widen(v, |x| x as u64),
        TensorData::U8(v)
        | TensorData::U4(v)
        | TensorData::U2(v)
        | TensorData::F8E4M3FN(v)
        | TensorData::F8E4M3FNUZ(v)
        | TensorData::F8E5M2(v)
        | TensorData::F8E5M2FNUZ(v)
        | TensorData::F8E8M0(v)
        | TensorData::F4E2M1(v) => widen(v, u64::from),
        TensorData::U16(v) => widen(v, u64::from),
        TensorData::U32(v) => widen(v, u64::from),
        TensorData::U64(v) => widen(v, |x| x),
        TensorData::Bool(v) => widen(v, u64::from),
    }
}

/// What the match phase decided.
#[derive(Default)]
struct Plan {
    /// Duplicate constant -> survivor.
    consts: Vec<(ValueId, ValueId)>,
    nodes: Vec<NodeMerge>,
}

/// A duplicate node, its op name, and (duplicate output, survivor output)
/// pairs.
struct NodeMerge {
    node: NodeId,
    op: &'static str,
    outputs: Vec<(ValueId, ValueId)>,
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let plan = self.plan(g)?;
        if plan.consts.is_empty() && plan.nodes.is_empty() {
            return Ok(Changed::No);
        }
        for (dup, keep) in plan.consts {
            g.replace_uses(dup, keep);
            g.consts.remove(&dup);
            g.value_mut(dup).def = ValueDef::Undefined;
            cx.count("merge const");
        }
        for m in plan.nodes {
            g.remove_node(m.node);
            for (dup, keep) in m.outputs {
                g.replace_uses(dup, keep);
            }
            cx.count(&format!("merge {}", m.op));
        }
        crate::ir::infer::infer_graph(g)?;
        Ok(Changed::Yes)
    }
}

impl Cse {
    fn plan(&self, g: &Graph) -> Result<Plan> {
        let mut plan = Plan::default();
        // Values merged into another (for matching, even when the merge
        // itself is skipped to keep graph outputs distinct).
        let mut canon: HashMap<ValueId, ValueId> = HashMap::new();
        // Values that are graph outputs or will become ones through a merge.
        let mut outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
        // Whether `dup` may be merged into `keep`; records the output move.
        let may_merge = |dup: ValueId, keep: ValueId, outputs: &mut HashSet<ValueId>| {
            if !g.is_output(dup) {
                true
            } else if outputs.contains(&keep) {
                false
            } else {
                outputs.insert(keep);
                true
            }
        };

        let mut seen_consts: HashMap<ConstKey, ValueId> = HashMap::new();
        for (&c, t) in &g.consts {
            if t.numel() > self.max_const_elements {
                continue;
            }
            let key = (t.dtype(), t.shape().to_vec(), bit_pattern(t));
            match seen_consts.get(&key) {
                None => {
                    seen_consts.insert(key, c);
                }
                Some(&keep) => {
                    canon.insert(c, keep);
                    if may_merge(c, keep, &mut outputs) {
                        plan.consts.push((c, keep));
                    }
                }
            }
        }

        // Candidates by op name, canonical inputs and output count; the op
        // itself is compared with `==` (it holds floats, so it is not Hash).
        type NodeKey = (&'static str, Vec<Option<ValueId>>, usize);
        let mut seen_nodes: HashMap<NodeKey, Vec<NodeId>> = HashMap::new();
        for id in g.topo_order()? {
            let Some(node) = g.node(id) else { continue };
            let inputs: Vec<Option<ValueId>> = node
                .inputs
                .iter()
                .map(|i| i.map(|v| canon.get(&v).copied().unwrap_or(v)))
                .collect();
            let key = (node.op.onnx_type(), inputs, node.outputs.len());
            let bucket = seen_nodes.entry(key).or_default();
            let twin = bucket
                .iter()
                .copied()
                .find(|&k| g.node(k).is_some_and(|k| k.op == node.op));
            let Some(keep) = twin else {
                bucket.push(id);
                continue;
            };
            // `keep` is live: it came from this same walk.
            let Some(keep_node) = g.node(keep) else {
                continue;
            };
            let pairs: Vec<(ValueId, ValueId)> = node
                .outputs
                .iter()
                .copied()
                .zip(keep_node.outputs.iter().copied())
                .collect();
            for &(dup, k) in &pairs {
                canon.insert(dup, k);
            }
            // Every output must be mergeable; check without recording first.
            let blocked = pairs
                .iter()
                .any(|&(dup, k)| g.is_output(dup) && outputs.contains(&k));
            if blocked {
                continue;
            }
            for &(dup, k) in &pairs {
                may_merge(dup, k, &mut outputs);
            }
            plan.nodes.push(NodeMerge {
                node: id,
                op: node.op.onnx_type(),
                outputs: pairs,
            });
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, Dim, Op, Shape, TensorType, UnaryOp};
    use crate::transform::fold_constants::testutil::{counts, golden, node1, run};

    fn input(g: &mut Graph, name: &str) -> ValueId {
        g.add_input(
            name,
            TensorType::new(DType::F32, Shape(vec![Dim::sym("n")])),
        )
    }

    #[test]
    fn duplicated_chain_collapses_in_one_run() {
        // Two copies of exp(x * 2), each with its own constant.
        let r = golden(
            "cse",
            r#"graph "t" opset 17
              input  %0 x: f32[n]
              const  %1 c1: f32[] = [2]
              const  %2 c2: f32[] = [2]
              %3 m1: f32[n] = Mul(%0, %1)  # n0
              %4 e1: f32[n] = Exp(%3)  # n1
              %5 m2: f32[n] = Mul(%0, %2)  # n2
              %6 e2: f32[n] = Exp(%5)  # n3
              %7 y: f32[n] = Add(%4, %6)  # n4
              output %7 y"#,
            r#"graph "t" opset 17
              input  %0 x: f32[n]
              const  %1 c1: f32[] = [2]
              %2 m1: f32[n] = Mul(%0, %1)  # n0
              %3 e1: f32[n] = Exp(%2)  # n1
              %4 y: f32[n] = Add(%3, %3)  # n4
              output %4 y"#,
        );
        assert_eq!(
            counts(&r),
            [("merge Exp", 1), ("merge Mul", 1), ("merge const", 1)]
        );
    }

    #[test]
    fn different_attributes_or_bits_do_not_merge() {
        let mut g = Graph::new("t", 17);
        let x = input(&mut g, "x");
        let z = g.add_const("z", Tensor::scalar_f32(0.0));
        let nz = g.add_const("nz", Tensor::scalar_f32(-0.0));
        let big1 = g.add_const("b1", Tensor::from_f32(vec![3], vec![1.0; 3]).unwrap());
        let big2 = g.add_const("b2", Tensor::from_f32(vec![3], vec![1.0; 3]).unwrap());
        let i = g.add_const("i", Tensor::vec_i64(vec![1, 1, 1]));
        let a = node1(&mut g, Op::Binary(BinaryOp::Add), &[x, z]);
        let b = node1(&mut g, Op::Binary(BinaryOp::Add), &[x, nz]);
        let l1 = node1(&mut g, Op::Unary(UnaryOp::LeakyRelu { alpha: 0.1 }), &[x]);
        let l2 = node1(&mut g, Op::Unary(UnaryOp::LeakyRelu { alpha: 0.2 }), &[x]);
        let s1 = node1(&mut g, Op::Binary(BinaryOp::Sub), &[x, a]);
        let s2 = node1(&mut g, Op::Binary(BinaryOp::Sub), &[a, x]);
        g.outputs.extend([a, b, l1, l2, s1, s2, big1, big2, i]);
        // b1 and b2 are equal but both graph outputs: they stay apart.
        assert_eq!(run("cse", &mut g).0, Changed::No);
        assert_eq!(g.node_count(), 6);
        assert_eq!(g.consts.len(), 5);
    }

    #[test]
    fn graph_outputs_stay_distinct() {
        // b and c are outputs, a is not: b merges into a, which takes b's
        // name; c cannot (it would alias b's survivor) and stays; eb merges
        // into ea through b's merge, and ea takes eb's name.
        let r = golden(
            "cse",
            r#"graph "t" opset 17
              input  %0 x: f32[n]
              %1 a: f32[n] = Neg(%0)  # n0
              %2 b: f32[n] = Neg(%0)  # n1
              %3 c: f32[n] = Neg(%0)  # n2
              %4 ea: f32[n] = Exp(%1)  # n3
              %5 eb: f32[n] = Exp(%2)  # n4
              output %2 b
              output %3 c
              output %5 eb"#,
            r#"graph "t" opset 17
              input  %0 x: f32[n]
              %1 b: f32[n] = Neg(%0)  # n0
              %2 eb: f32[n] = Exp(%1)  # n3
              %3 c: f32[n] = Neg(%0)  # n2
              output %1 b
              output %3 c
              output %2 eb"#,
        );
        assert_eq!(counts(&r), [("merge Exp", 1), ("merge Neg", 1)]);
    }

    #[test]
    fn constant_limit_and_output_constants() {
        let mut g = Graph::new("t", 17);
        let x = input(&mut g, "x");
        let c1 = g.add_const("c1", Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap());
        let c2 = g.add_const("c2", Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap());
        let y1 = node1(&mut g, Op::Binary(BinaryOp::Mul), &[x, c1]);
        let y2 = node1(&mut g, Op::Binary(BinaryOp::Div), &[x, c2]);
        g.outputs.extend([y1, y2, c2]);
        let mut pass = Cse {
            max_const_elements: 1,
        };
        let mut cx = PassCx::default();
        assert_eq!(pass.run(&mut g, &mut cx).unwrap(), Changed::No);
        // With the default limit c2 merges into c1, which takes its output
        // name.
        let (_, r) = run("cse", &mut g);
        assert_eq!(counts(&r), [("merge const", 1)]);
        assert_eq!(g.outputs[2], c1);
        assert_eq!(g.value(c1).name, "c2");
        assert!(!g.is_const(c2));
        let div = g.producer(y2).unwrap();
        assert_eq!(g.node(div).unwrap().input(1), Some(c1));
    }
}

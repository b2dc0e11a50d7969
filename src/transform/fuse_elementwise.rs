//! `fuse-elementwise`: merges chains of f32 elementwise ops into one
//! `Elementwise` node.
//!
//! Fusible nodes are f32 Unary ops (all but Not, parametrized ones and an
//! already fused Gelu included), the arithmetic Binary ops (Add, Sub, Mul,
//! Div, Pow), Clip with constant bounds and existing Elementwise nodes. A
//! fusible node is absorbed into the node that reads its output when that
//! reader is fusible too and is its only reader (it may read the value more
//! than once, as in `Mul(d, d)`) and the value is no graph output. This makes
//! every group a tree: its root's output is the only value that escapes, so
//! replacing the group by one node keeps the graph acyclic and keeps the
//! root's value (name, type, graph-output role).
//!
//! Inside the group, operands coming from outside become node inputs
//! (deduplicated) except one-element f32 constants, which become
//! `EwArg::Scalar` when their rank does not exceed that of some real input
//! (so dropping them cannot change the broadcast output shape). The steps are
//! emitted in post-order; an absorbed Elementwise node contributes its own
//! steps, renumbered. The chain kernel rounds to f32 after every step exactly
//! like the standalone kernels, so fused and unfused graphs agree bit for bit.
//! Groups of fewer than `min_ops` ops (default 2; an Elementwise counts its
//! steps) stay as they are, and a lone Elementwise node is never rewritten.

use std::collections::{HashMap, HashSet};

use super::fuse_layernorm::{drop_dead_consts, remove_nodes};
use super::{Changed, ParamSpec, ParamValue, Params, Pass, PassCx, PassInfo};
use crate::ir::{DType, EwArg, EwStep, Graph, Node, NodeId, Op, UnaryOp, ValueId};
use crate::Result;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fuse-elementwise",
    summary: "merge single-use chains of f32 elementwise ops into one Elementwise node",
    params: &[ParamSpec {
        name: "min_ops",
        default: || ParamValue::Int(2),
        help: "smallest number of ops worth fusing (an Elementwise node counts its steps)",
    }],
    make: |p: &Params| {
        Box::new(FuseElementwise {
            min_ops: p.int("min_ops").max(1) as usize,
        })
    },
};

/// The pass.
pub struct FuseElementwise {
    /// Smallest group (in ops) that is fused.
    pub min_ops: usize,
}

impl Pass for FuseElementwise {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let order = g.topo_order()?;
        let fusible: HashSet<NodeId> = order
            .iter()
            .copied()
            .filter(|&id| g.node(id).is_some_and(|n| is_fusible(g, n)))
            .collect();
        // Distinct readers of every value.
        let mut readers: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
        for &id in &order {
            if let Some(n) = g.node(id) {
                for v in n.inputs.iter().flatten() {
                    let r = readers.entry(*v).or_default();
                    if r.last() != Some(&id) {
                        r.push(id);
                    }
                }
            }
        }
        // A fusible node is absorbed into its only reader when that reader
        // is fusible and reads it as data (Clip bounds are constants).
        let absorbed: HashSet<NodeId> = fusible
            .iter()
            .copied()
            .filter(|&id| {
                let Some(out) = g.node(id).map(|n| n.outputs[0]) else {
                    return false;
                };
                match readers.get(&out).map(Vec::as_slice) {
                    Some(&[r]) => {
                        !g.is_output(out)
                            && fusible.contains(&r)
                            && g.node(r).is_some_and(|n| data_inputs(n).contains(&out))
                    }
                    _ => false,
                }
            })
            .collect();
        let mut groups = Vec::new();
        for &root in &order {
            if fusible.contains(&root) && !absorbed.contains(&root) {
                if let Some(fused) = plan(g, root, &absorbed, self.min_ops) {
                    groups.push(fused);
                }
            }
        }
        for f in &groups {
            let read = remove_nodes(g, &f.members);
            g.add_node(f.node.clone());
            drop_dead_consts(g, &read);
            cx.count("elementwise-chain");
        }
        Ok(Changed::from_bool(!groups.is_empty()))
    }
}

/// A planned rewrite: the group's nodes and the node replacing them.
struct Fused {
    members: Vec<NodeId>,
    node: Node,
}

/// Whether `node` can be a step (or steps) of an f32 Elementwise chain.
fn is_fusible(g: &Graph, node: &Node) -> bool {
    let f32_at = |i: usize| node.input(i).is_some_and(|v| g.ty(v).dtype == DType::F32);
    if node.outputs.len() != 1 || g.ty(node.outputs[0]).dtype != DType::F32 {
        return false;
    }
    match &node.op {
        Op::Unary(u) => !matches!(u, UnaryOp::Not) && node.inputs.len() == 1 && f32_at(0),
        Op::Binary(b) => {
            b.is_chain_arithmetic() && node.inputs.len() == 2 && f32_at(0) && f32_at(1)
        }
        Op::Clip => node.inputs.len() <= 3 && f32_at(0) && clip_bounds(g, node).is_some(),
        Op::Elementwise { .. } => (0..node.inputs.len()).all(f32_at),
        _ => false,
    }
}

/// The inputs of a fusible node that carry element data (all but Clip's
/// bounds).
fn data_inputs(node: &Node) -> Vec<ValueId> {
    match node.op {
        Op::Clip => node.input(0).into_iter().collect(),
        _ => node.inputs.iter().flatten().copied().collect(),
    }
}

/// Clip's bounds when they are absent, empty or one-element constants; an
/// absent bound is an infinity (which never clamps, like no bound).
fn clip_bounds(g: &Graph, node: &Node) -> Option<(f32, f32)> {
    let bound = |i: usize, none: f32| -> Option<f32> {
        let Some(v) = node.input(i) else {
            return Some(none);
        };
        let t = g.const_value(v)?;
        if t.numel() == 0 {
            return Some(none);
        }
        if t.numel() != 1 || t.dtype() == DType::Bool || t.dtype().is_storage_only() {
            return None;
        }
        // The Clip kernel converts a bound of another dtype the same way.
        t.to_f64_vec().first().map(|&b| b as f32)
    };
    Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?))
}

/// One-element f32 constant values.
pub(super) fn scalar_f32(g: &Graph, v: ValueId) -> Option<f32> {
    let t = g.const_value(v)?;
    if t.numel() != 1 {
        return None;
    }
    t.as_f32().and_then(|s| s.first().copied())
}

/// Plans the group rooted at `root`; `None` when it is too small or cannot
/// be expressed.
fn plan(g: &Graph, root: NodeId, absorbed: &HashSet<NodeId>, min_ops: usize) -> Option<Fused> {
    // Members in post-order (operands first), without recursion.
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root, false)];
    while let Some((id, expanded)) = stack.pop() {
        if expanded {
            members.push(id);
            continue;
        }
        stack.push((id, true));
        for v in data_inputs(g.node(id)?).into_iter().rev() {
            if let Some(p) = g.producer(v) {
                if absorbed.contains(&p) && seen.insert(p) {
                    stack.push((p, false));
                }
            }
        }
    }
    let ops: usize = members
        .iter()
        .filter_map(|&m| g.node(m))
        .map(|n| match &n.op {
            Op::Elementwise { steps } => steps.len(),
            _ => 1,
        })
        .sum();
    let lone_chain = members.len() == 1 && matches!(g.node(root)?.op, Op::Elementwise { .. });
    if ops < min_ops || lone_chain {
        return None;
    }

    // Operands from outside the group: scalars or node inputs.
    let member_set: HashSet<NodeId> = members.iter().copied().collect();
    let inside = |v: ValueId| g.producer(v).is_some_and(|p| member_set.contains(&p));
    let mut external = Vec::new();
    for &m in &members {
        for v in data_inputs(g.node(m)?) {
            if !inside(v) && !external.contains(&v) {
                external.push(v);
            }
        }
    }
    let max_rank = external
        .iter()
        .filter(|&&v| scalar_f32(g, v).is_none())
        .map(|&v| g.ty(v).shape.rank())
        .max();
    // A chain of constants only is constant folding's business.
    let max_rank = max_rank?;
    let mut scalars: HashMap<ValueId, f32> = HashMap::new();
    let mut inputs: Vec<ValueId> = Vec::new();
    for &v in &external {
        match scalar_f32(g, v) {
            Some(s) if g.ty(v).shape.rank() <= max_rank => {
                scalars.insert(v, s);
            }
            _ => inputs.push(v),
        }
    }

    let mut steps: Vec<EwStep> = Vec::new();
    let mut step_of: HashMap<ValueId, usize> = HashMap::new();
    let arg = |v: ValueId, step_of: &HashMap<ValueId, usize>| -> Option<EwArg> {
        if let Some(&s) = step_of.get(&v) {
            Some(EwArg::Step(s))
        } else if let Some(&s) = scalars.get(&v) {
            Some(EwArg::Scalar(s))
        } else {
            inputs.iter().position(|&i| i == v).map(EwArg::Input)
        }
    };
    for &m in &members {
        let n = g.node(m)?;
        let a = |i: usize| arg(n.input(i)?, &step_of);
        match &n.op {
            Op::Unary(u) => steps.push(EwStep::Unary(u.clone(), a(0)?)),
            Op::Binary(b) => steps.push(EwStep::Binary(*b, a(0)?, a(1)?)),
            Op::Clip => {
                let (lo, hi) = clip_bounds(g, n)?;
                steps.push(EwStep::Clip(a(0)?, lo, hi));
            }
            Op::Elementwise { steps: inner } => {
                let args: Vec<EwArg> = (0..n.inputs.len()).map(a).collect::<Option<_>>()?;
                let base = steps.len();
                let remap = |x: &EwArg| -> Option<EwArg> {
                    Some(match *x {
                        EwArg::Input(i) => args.get(i)?.clone(),
                        EwArg::Step(j) => EwArg::Step(base + j),
                        EwArg::Scalar(s) => EwArg::Scalar(s),
                    })
                };
                for s in inner {
                    steps.push(match s {
                        EwStep::Unary(u, x) => EwStep::Unary(u.clone(), remap(x)?),
                        EwStep::Binary(b, x, y) => EwStep::Binary(*b, remap(x)?, remap(y)?),
                        EwStep::Clip(x, lo, hi) => EwStep::Clip(remap(x)?, *lo, *hi),
                    });
                }
            }
            _ => return None,
        }
        if steps.is_empty() {
            return None;
        }
        step_of.insert(n.outputs[0], steps.len() - 1);
    }
    let root_node = g.node(root)?;
    Some(Fused {
        members,
        node: Node {
            name: root_node.name.clone(),
            op: Op::Elementwise { steps },
            inputs: inputs.into_iter().map(Some).collect(),
            outputs: root_node.outputs.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::check_pass;
    use super::*;
    use crate::interp;
    use crate::ir::{verify, BinaryOp, Shape, Tensor, TensorType};

    fn f32t(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, Shape::known(dims))
    }

    struct B {
        g: Graph,
    }

    impl B {
        fn new() -> B {
            B {
                g: Graph::new("t", 17),
            }
        }
        fn input(&mut self, name: &str, dims: &[usize]) -> ValueId {
            self.g.add_input(name, f32t(dims))
        }
        fn op(&mut self, op: Op, ins: &[Option<ValueId>]) -> ValueId {
            let out = self
                .g
                .add_value(format!("v{}", self.g.values.len()), f32t(&[]));
            self.g.add_node(Node {
                name: format!("n{}", self.g.node_capacity()),
                op,
                inputs: ins.to_vec(),
                outputs: vec![out],
            });
            out
        }
        fn un(&mut self, u: UnaryOp, x: ValueId) -> ValueId {
            self.op(Op::Unary(u), &[Some(x)])
        }
        fn bin(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> ValueId {
            self.op(Op::Binary(b), &[Some(x), Some(y)])
        }
        fn c(&mut self, v: f32) -> ValueId {
            self.g.add_const("c", Tensor::scalar_f32(v))
        }
        fn finish(mut self, outs: &[ValueId]) -> Graph {
            self.g.outputs = outs.to_vec();
            crate::ir::infer::infer_graph(&mut self.g).unwrap();
            self.g
        }
    }

    /// Pseudo-random values in [-3, 3) with a few special ones mixed in.
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_add(0x9e3779b97f4a7c15);
        let v = (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match i % 17 {
                    5 => 0.0,
                    11 => -0.0,
                    _ => ((s >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0,
                }
            })
            .collect();
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    }

    fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
        ts.iter()
            .map(|t| t.as_f32().unwrap().iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    /// Runs the pass with `min_ops`, checks the graph and that the outputs
    /// are bit-identical to the unfused graph's on random inputs.
    fn fuse(g: &mut Graph, min_ops: i64) -> usize {
        let inputs: Vec<Tensor> = g
            .inputs
            .iter()
            .enumerate()
            .map(|(k, &i)| rand(&g.ty(i).shape.concrete().unwrap(), k as u64))
            .collect();
        let before = interp::run(g, inputs.clone()).unwrap();
        let names: Vec<String> = g.outputs.iter().map(|&o| g.value(o).name.clone()).collect();
        let given = [("min_ops".to_string(), ParamValue::Int(min_ops))].into();
        let params = INFO.params(&given).unwrap();
        let mut cx = PassCx::default();
        (INFO.make)(&params).run(g, &mut cx).unwrap();
        crate::ir::infer::infer_graph(g).unwrap();
        verify::verify(g).unwrap();
        let after = interp::run(g, inputs).unwrap();
        assert_eq!(bits(&after), bits(&before));
        let names_after: Vec<String> = g.outputs.iter().map(|&o| g.value(o).name.clone()).collect();
        assert_eq!(names, names_after);
        cx.rewrites.get("elementwise-chain").copied().unwrap_or(0)
    }

    fn chains(g: &Graph) -> Vec<(Vec<EwStep>, usize)> {
        g.nodes()
            .filter_map(|(_, n)| match &n.op {
                Op::Elementwise { steps } => Some((steps.clone(), n.inputs.len())),
                _ => None,
            })
            .collect()
    }

    /// A bias-add + scale + clip + tanh chain; the shared `y` becomes one
    /// input, scalars fold into the steps and the dead constants go away.
    #[test]
    fn golden_chain() {
        check_pass(
            "fuse-elementwise",
            r#"
graph "ew" opset 17
  input  %0 x: f32[batch,4]
  input  %1 y: f32[4]
  const  %2 two: f32[] = [2]
  const  %3 lo: f32[] = [0]
  const  %4 hi: f32[] = [6]
  %5 a: f32[batch,4] = Add(%0, %1)
  %6 m: f32[batch,4] = Mul(%5, %2)
  %7 c: f32[batch,4] = Clip(%6, %3, %4)
  %8 d: f32[batch,4] = Div(%7, %1)
  %9 t: f32[batch,4] = Tanh(%8)  # out
  %10 s: f32[batch,4] = Sigmoid(%5)
  output %9 t
"#,
            r#"
graph "ew" opset 17
  input  %0 x: f32[batch,4]
  input  %1 y: f32[4]
  %2 a: f32[batch,4] = Add(%0, %1)
  %3 s: f32[batch,4] = Sigmoid(%2)
  %4 t: f32[batch,4] = Elementwise[steps=[mul(in0, 2), clip(s0, 0, 6), div(s1, in1), tanh(s2)]](%2, %1)  # out
  output %4 t
"#,
        );
    }

    /// The chain stops at a value with two readers and at a graph output;
    /// Gelu and Elementwise nodes join as steps; a lone op stays.
    #[test]
    fn golden_groups() {
        check_pass(
            "fuse-elementwise",
            r#"
graph "ew" opset 17
  input  %0 x: f32[3]
  %1 g: f32[3] = Gelu(%0)
  %2 e: f32[3] = Elementwise[steps=[mul(in0, 0.5), exp(s0)]](%1)
  %3 n: f32[3] = Neg(%2)
  %4 a: f32[3] = Abs(%3)
  %5 b: f32[3] = Sqrt(%3)
  %6 c: f32[3] = Floor(%5)
  output %4 a
  output %6 c
"#,
            r#"
graph "ew" opset 17
  input  %0 x: f32[3]
  %1 n: f32[3] = Elementwise[steps=[gelu(in0), mul(s0, 0.5), exp(s1), neg(s2)]](%0)
  %2 a: f32[3] = Abs(%1)
  %3 c: f32[3] = Elementwise[steps=[sqrt(in0), floor(s0)]](%1)
  output %2 a
  output %3 c
"#,
        );
    }

    /// The transformer fixture (a torch export): its two erf GELUs become
    /// Gelu ops, then the elementwise chains left fuse, and the outputs on
    /// the fixture's inputs stay within 1e-5 of the unfused graph's.
    #[test]
    fn transformer_fixture_pipeline() -> crate::Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transformer");
        let mut g = crate::formats::load(&dir.join("model.onnx"))?;
        let inputs = vec![
            crate::formats::npy::read_npy(&dir.join("input_input_ids.npy"))?,
            crate::formats::npy::read_npy(&dir.join("input_attention_mask.npy"))?,
        ];
        let before = interp::run(&g, inputs.clone())?;
        let mut counts = Vec::new();
        for name in ["fuse-layernorm", "fuse-gelu", "fuse-elementwise"] {
            let info = super::super::lookup(name)?;
            let mut cx = PassCx::default();
            (info.make)(&info.params(&Default::default())?).run(&mut g, &mut cx)?;
            crate::ir::infer::infer_graph(&mut g)?;
            verify::verify(&g)?;
            counts.push(cx.rewrites);
        }
        // LayerNorm is native at opset 17: nothing to collapse.
        assert!(counts[0].is_empty());
        assert_eq!(counts[1].get("gelu-erf"), Some(&2));
        // Bias adds before the Gelus, attention scaling + mask, ...
        assert!(counts[2].get("elementwise-chain").is_some_and(|&n| n >= 2));
        assert!(g
            .nodes()
            .all(|(_, n)| !matches!(n.op, Op::Unary(UnaryOp::Erf))));
        let after = interp::run(&g, inputs)?;
        for (a, b) in after.iter().zip(&before) {
            assert_eq!(a.shape(), b.shape());
            for (p, q) in a.to_f32_vec().iter().zip(b.to_f32_vec()) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
            }
        }
        Ok(())
    }

    #[test]
    fn fuses_a_broadcasting_chain_bit_for_bit() {
        let mut b = B::new();
        let x = b.input("x", &[3, 1, 5]);
        let y = b.input("y", &[4, 5]);
        let m = b.bin(BinaryOp::Mul, x, y);
        let half = b.c(0.5);
        let a = b.bin(BinaryOp::Add, m, half);
        let d = b.bin(BinaryOp::Div, a, y); // y is read twice: one input
        let sq = b.bin(BinaryOp::Mul, d, d); // d read twice by one node
        let s = b.un(UnaryOp::Sqrt, sq);
        let p = b.bin(BinaryOp::Pow, s, half);
        let e = b.un(UnaryOp::Erf, p);
        let l = b.un(UnaryOp::LeakyRelu { alpha: 0.2 }, e);
        let lo = b.c(-0.25);
        let cl = b.op(Op::Clip, &[Some(l), Some(lo), None]);
        let gl = b.un(UnaryOp::Gelu { tanh_approx: true }, cl);
        let mut g = b.finish(&[gl]);
        assert_eq!(fuse(&mut g, 2), 1);
        assert_eq!(g.node_count(), 1);
        let c = chains(&g);
        assert_eq!(c[0].1, 2);
        assert_eq!(c[0].0.len(), 10);
        assert_eq!(
            c[0].0[0],
            EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Input(1))
        );
        assert_eq!(
            c[0].0[1],
            EwStep::Binary(BinaryOp::Add, EwArg::Step(0), EwArg::Scalar(0.5))
        );
        assert_eq!(
            c[0].0[3],
            EwStep::Binary(BinaryOp::Mul, EwArg::Step(2), EwArg::Step(2))
        );
        assert_eq!(
            c[0].0[8],
            EwStep::Clip(EwArg::Step(7), -0.25, f32::INFINITY)
        );
        assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[3,4,5]");
    }

    #[test]
    fn shared_values_and_outputs_split_groups() {
        let mut b = B::new();
        let x = b.input("x", &[6]);
        let e = b.un(UnaryOp::Exp, x);
        let n = b.un(UnaryOp::Neg, e);
        // n has two readers: it ends a group.
        let t = b.un(UnaryOp::Tanh, n);
        let s = b.un(UnaryOp::Sigmoid, n);
        let r = b.bin(BinaryOp::Sub, t, s);
        // r is a graph output and is read by the next chain.
        let a = b.un(UnaryOp::Abs, r);
        let f = b.un(UnaryOp::Floor, a);
        // A lone op stays.
        let cst = b.un(UnaryOp::Ceil, x);
        let mut g = b.finish(&[r, f, cst]);
        assert_eq!(fuse(&mut g, 2), 3);
        let mut sizes: Vec<usize> = chains(&g).iter().map(|c| c.0.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [2, 2, 3]);
        assert_eq!(g.node_count(), 4);
        // With a higher minimum only the 3-op group fuses.
        let mut b = B::new();
        let x = b.input("x", &[6]);
        let e = b.un(UnaryOp::Exp, x);
        let n = b.un(UnaryOp::Neg, e);
        let t = b.un(UnaryOp::Tanh, n);
        let s = b.un(UnaryOp::Relu, x);
        let r = b.un(UnaryOp::Abs, s);
        let mut g = b.finish(&[t, r]);
        assert_eq!(fuse(&mut g, 3), 1);
        assert_eq!(g.node_count(), 3);
    }

    #[test]
    fn absorbs_existing_chains_and_checks_scalar_ranks() {
        let mut b = B::new();
        let x = b.input("x", &[4]);
        let y = b.input("y", &[4]);
        let inner = b.op(
            Op::Elementwise {
                steps: vec![
                    EwStep::Binary(BinaryOp::Sub, EwArg::Input(1), EwArg::Input(0)),
                    EwStep::Unary(UnaryOp::Exp, EwArg::Step(0)),
                ],
            },
            &[Some(x), Some(y)],
        );
        // A [1, 1] "scalar" would raise the rank from 1 to 2: it must stay
        // an input.
        let k =
            b.g.add_const("k", Tensor::from_f32(vec![1, 1], vec![2.0]).unwrap());
        let m = b.bin(BinaryOp::Mul, inner, k);
        let z = b.bin(BinaryOp::Add, m, x);
        let mut g = b.finish(&[z]);
        assert_eq!(fuse(&mut g, 2), 1);
        let c = chains(&g);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].1, 3); // x, y, k
        assert_eq!(
            c[0].0,
            vec![
                EwStep::Binary(BinaryOp::Sub, EwArg::Input(1), EwArg::Input(0)),
                EwStep::Unary(UnaryOp::Exp, EwArg::Step(0)),
                EwStep::Binary(BinaryOp::Mul, EwArg::Step(1), EwArg::Input(2)),
                EwStep::Binary(BinaryOp::Add, EwArg::Step(2), EwArg::Input(0)),
            ]
        );
        assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[1,4]");
    }

    #[test]
    fn leaves_other_dtypes_ops_and_lone_chains_alone() {
        let mut b = B::new();
        let x = b.input("x", &[4]);
        let hi = b.input("hi", &[]);
        let ew = b.op(
            Op::Elementwise {
                steps: vec![EwStep::Unary(UnaryOp::Relu, EwArg::Input(0))],
            },
            &[Some(x)],
        );
        // Softmax is not elementwise; the Clip's max is not a constant.
        let sm = b.op(
            Op::Softmax {
                axis: 0,
                legacy: false,
                nan_to_zero: false,
            },
            &[Some(ew)],
        );
        let cl = b.op(Op::Clip, &[Some(sm), None, Some(hi)]);
        let mut g = b.finish(&[cl]);
        assert_eq!(fuse(&mut g, 1), 0);
        assert_eq!(g.node_count(), 3);

        // f64 arithmetic is not fused.
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", TensorType::new(DType::F64, Shape::known(&[2])));
        let mut prev = x;
        for _ in 0..2 {
            let out = g.add_value("v", TensorType::new(DType::F64, Shape::known(&[2])));
            g.add_node(Node {
                name: "n".into(),
                op: Op::Unary(UnaryOp::Neg),
                inputs: vec![Some(prev)],
                outputs: vec![out],
            });
            prev = out;
        }
        g.outputs = vec![prev];
        let mut cx = PassCx::default();
        let r = (INFO.make)(&Params::default())
            .run(&mut g, &mut cx)
            .unwrap();
        assert_eq!(r, Changed::No);

        // min_ops 1 turns a lone op into a one-step chain.
        let mut b = B::new();
        let x = b.input("x", &[4]);
        let r = b.un(UnaryOp::Relu, x);
        let mut g = b.finish(&[r]);
        assert_eq!(fuse(&mut g, 1), 1);
        assert_eq!(chains(&g)[0].0.len(), 1);
    }
}

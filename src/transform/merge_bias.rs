//! `merge-bias-add`: folds `Add(linear(..), constant)` into the linear op's
//! bias, where the constant really is a bias.
//!
//! The linear ops are Conv, FusedConv, MatMul, FusedMatMul and Gemm, without
//! an activation (the bias is added before it). For the convolutions the
//! constant must broadcast onto the output as one value per output channel:
//! after numpy's right alignment every dim is 1 except, possibly, the channel
//! axis (so `[1,C,1,1]` and `[C,1,1]` for a 2-D conv, or a scalar; a plain
//! `[C]` aligns with the last spatial axis and is not a channel bias); it is
//! summed into the 1-D `B` input, the op staying what it was (Conv already
//! takes a bias). For the matrix products any constant that broadcasts onto
//! the output without changing its shape works, since FusedMatMul's bias is
//! broadcast the same way: MatMul becomes FusedMatMul with that bias,
//! FusedMatMul sums it into its bias, and Gemm becomes FusedMatMul with bias
//! `beta * C + constant` (C absent, `beta == 0`, or C constant). The
//! constant-valued arithmetic is done in f64 and rounded once to the
//! element type.
//!
//! This file also holds the small graph helpers the fusion passes share
//! (`Rewrite`, `sole_producer`, `absorb`, ...).

use super::{Changed, Pass, PassCx, PassInfo};
use crate::ir::ops::util::{broadcast_index_map, broadcast_shape};
use crate::ir::{
    BinaryOp, DType, Dim, Graph, NodeId, Op, Shape, Tensor, TensorData, ValueDef, ValueId,
};
use crate::Result;

/// The pass's registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "merge-bias-add",
    summary: "fold Add(Conv/MatMul/Gemm/Fused*, constant bias) into the op's bias",
    params: &[],
    make: |_| Box::new(MergeBiasAdd),
};

/// See the module docs.
pub struct MergeBiasAdd;

impl Pass for MergeBiasAdd {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            let Some(node) = g.node(id) else { continue };
            if node.op != Op::Binary(BinaryOp::Add) || node.outputs.len() != 1 {
                continue;
            }
            let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
                continue;
            };
            for (lin, k) in [(a, b), (b, a)] {
                if let Some((rw, kind)) = plan(g, id, lin, k) {
                    absorb(g, id, lin, rw);
                    cx.count(kind);
                    changed = true;
                    break;
                }
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

/// The rewrite of `lin`'s producer that absorbs `Add(lin, k)`.
fn plan(g: &Graph, add: NodeId, lin: ValueId, k: ValueId) -> Option<(Rewrite, &'static str)> {
    let kc = float_const(g, k)?;
    let p = sole_producer(g, lin, add)?;
    let pn = g.node(p)?;
    let out = g.ty(lin);
    if kc.dtype != out.dtype {
        return None;
    }
    match &pn.op {
        Op::Conv(_) | Op::FusedConv { act: None, .. } => {
            let m = out.shape.dims().get(1).and_then(Dim::known)?;
            let kb = channel_bias(&kc, out.shape.rank(), m)?;
            let bias = match pn.input(2) {
                None => kb,
                Some(b) => {
                    let bc = float_const(g, b)?;
                    if bc.vals.len() != m || bc.shape.len() != 1 {
                        return None;
                    }
                    bc.vals.iter().zip(&kb).map(|(x, y)| x + y).collect()
                }
            };
            let mut inputs = pn.inputs.clone();
            inputs.resize(inputs.len().max(3), None);
            Some((
                Rewrite {
                    node: p,
                    op: pn.op.clone(),
                    inputs,
                    consts: vec![(
                        2,
                        format!("{}.bias", pn.name),
                        f_tensor(out.dtype, vec![m], &bias)?,
                    )],
                },
                "conv",
            ))
        }
        Op::MatMul | Op::FusedMatMul { act: None, .. } => {
            if !fits_onto(&kc.shape, &out.shape) {
                return None;
            }
            let (vals, shape) = match pn.input(2) {
                None => (kc.vals, kc.shape),
                Some(b) => {
                    let bc = float_const(g, b)?;
                    zip_broadcast(&bc, &kc, |x, y| x + y)?
                }
            };
            if !fits_onto(&shape, &out.shape) {
                return None;
            }
            let op = match &pn.op {
                Op::MatMul => plain_fused_matmul(),
                other => other.clone(),
            };
            Some((
                Rewrite {
                    node: p,
                    op,
                    inputs: vec![pn.input(0), pn.input(1), None],
                    consts: vec![(
                        2,
                        format!("{}.bias", pn.name),
                        f_tensor(out.dtype, shape, &vals)?,
                    )],
                },
                "matmul",
            ))
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            if !fits_onto(&kc.shape, &out.shape) {
                return None;
            }
            let (vals, shape) = match pn.input(2) {
                Some(c) if *beta != 0.0 => {
                    let cc = float_const(g, c)?;
                    let beta = *beta as f64;
                    zip_broadcast(&cc, &kc, |x, y| beta * x + y)?
                }
                _ => (kc.vals, kc.shape),
            };
            if !fits_onto(&shape, &out.shape) {
                return None;
            }
            Some((
                Rewrite {
                    node: p,
                    op: Op::FusedMatMul {
                        trans_a: *trans_a,
                        trans_b: *trans_b,
                        alpha: *alpha,
                        act: None,
                    },
                    inputs: vec![pn.input(0), pn.input(1), None],
                    consts: vec![(
                        2,
                        format!("{}.bias", pn.name),
                        f_tensor(out.dtype, shape, &vals)?,
                    )],
                },
                "gemm",
            ))
        }
        _ => None,
    }
}

/// A conv output's per-channel bias from a constant added to it: `m` values
/// when the constant varies at most along the channel axis (axis 1 of an
/// output of rank `out_rank`).
fn channel_bias(k: &FConst, out_rank: usize, m: usize) -> Option<Vec<f64>> {
    if k.shape.len() > out_rank {
        return None;
    }
    let off = out_rank - k.shape.len();
    let mut per_channel = false;
    for (i, &d) in k.shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        if off + i == 1 && d == m {
            per_channel = true;
        } else {
            return None;
        }
    }
    if per_channel {
        Some(k.vals.clone())
    } else {
        // Every dim is 1: one value for all channels.
        Some(vec![*k.vals.first()?; m])
    }
}

/// MatMul as a FusedMatMul with no flags, scale or activation.
pub(super) fn plain_fused_matmul() -> Op {
    Op::FusedMatMul {
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        act: None,
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the fusion passes.

/// A floating-point constant's values (widened to f64), shape and dtype.
pub(super) struct FConst {
    pub vals: Vec<f64>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// The value of `v` when it is a constant of a computing float type.
pub(super) fn float_const(g: &Graph, v: ValueId) -> Option<FConst> {
    let t = g.const_value(v)?;
    let dt = t.dtype();
    if !dt.is_float() || dt.is_storage_only() {
        return None;
    }
    Some(FConst {
        vals: t.to_f64_vec(),
        shape: t.shape().to_vec(),
        dtype: dt,
    })
}

/// A tensor of `dtype` holding `vals` rounded to it.
pub(super) fn f_tensor(dtype: DType, shape: Vec<usize>, vals: &[f64]) -> Option<Tensor> {
    Tensor::new(shape, TensorData::from_f64(dtype, vals)).ok()
}

/// `f(a, b)` elementwise with numpy broadcasting; `None` if the shapes clash.
pub(super) fn zip_broadcast(
    a: &FConst,
    b: &FConst,
    f: impl Fn(f64, f64) -> f64,
) -> Option<(Vec<f64>, Vec<usize>)> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let am = broadcast_index_map(&a.shape, &shape);
    let bm = broadcast_index_map(&b.shape, &shape);
    let vals = am
        .iter()
        .zip(&bm)
        .map(|(&i, &j)| f(a.vals[i], b.vals[j]))
        .collect();
    Some((vals, shape))
}

/// Whether a tensor of shape `k` broadcasts onto `out` without changing it:
/// no more dims, and each dim (right-aligned) 1 or equal to the output's.
pub(super) fn fits_onto(k: &[usize], out: &Shape) -> bool {
    k.len() <= out.rank()
        && k.iter()
            .rev()
            .zip(out.dims().iter().rev())
            .all(|(&d, o)| d == 1 || *o == Dim::Known(d))
}

/// The node defining `v` (as its first output) when `v`'s only use is one
/// input of `user` (it is not a graph output either).
pub(super) fn sole_producer(g: &Graph, v: ValueId, user: NodeId) -> Option<NodeId> {
    if g.use_count(v) != 1 || g.users(v).first().map(|u| u.0) != Some(user) {
        return None;
    }
    match g.value(v).def {
        ValueDef::Node(p, 0) => Some(p),
        _ => None,
    }
}

/// `base`, or `base_<n>` if a value already has that name.
pub(super) fn fresh_name(g: &Graph, base: &str) -> String {
    let taken = |n: &str| g.values.iter().any(|v| v.name == n);
    if !taken(base) {
        return base.to_string();
    }
    let mut i = 1usize;
    loop {
        let n = format!("{base}_{i}");
        if !taken(&n) {
            return n;
        }
        i += 1;
    }
}

/// A planned change of one node: its new op and inputs, plus constants to
/// create and place at given input positions.
pub(super) struct Rewrite {
    pub node: NodeId,
    pub op: Op,
    pub inputs: Vec<Option<ValueId>>,
    /// `(input position, name, value)`.
    pub consts: Vec<(usize, String, Tensor)>,
}

impl Rewrite {
    /// Applies the change; returns the node's old inputs.
    pub fn apply(self, g: &mut Graph) -> Vec<Option<ValueId>> {
        let mut inputs = self.inputs;
        for (pos, name, t) in self.consts {
            let name = fresh_name(g, &name);
            let v = g.add_const(name, t);
            if inputs.len() <= pos {
                inputs.resize(pos + 1, None);
            }
            inputs[pos] = Some(v);
        }
        while inputs.last() == Some(&None) {
            inputs.pop();
        }
        match g.node_mut(self.node) {
            Some(node) => {
                node.op = self.op;
                std::mem::replace(&mut node.inputs, inputs)
            }
            // The planner read this node from the same graph; it is live.
            None => Vec::new(),
        }
    }
}

/// Applies `rw`, then removes the single-output node `absorbed` and sends
/// its readers (and graph output slot) to `keep`; constants left without
/// uses are dropped.
pub(super) fn absorb(g: &mut Graph, absorbed: NodeId, keep: ValueId, rw: Rewrite) {
    let old = rw.apply(g);
    let Some(node) = g.remove_node(absorbed) else {
        return;
    };
    for &o in &node.outputs {
        g.replace_uses(o, keep);
    }
    drop_dead_consts(g, old.into_iter().chain(node.inputs));
}

/// Removes those of `vals` that are constants nothing reads any more.
pub(super) fn drop_dead_consts(g: &mut Graph, vals: impl IntoIterator<Item = Option<ValueId>>) {
    for v in vals.into_iter().flatten() {
        if g.is_const(v) && g.use_count(v) == 0 {
            g.consts.remove(&v);
            g.value_mut(v).def = ValueDef::Undefined;
        }
    }
}

/// Graph builders and the before/after numeric check the passes' tests share.
#[cfg(test)]
pub(super) mod testkit {
    use std::collections::BTreeMap;

    use crate::interp;
    use crate::ir::{
        infer, verify, DType, Dim, Graph, Node, Op, Shape, Tensor, TensorType, ValueId,
    };
    use crate::transform::{lookup, ParamValue, PassCx};

    /// Deterministic pseudo-random f32 values in [-1, 1).
    pub fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::ir::ops::util::testing::random(shape, seed, 1.0)
    }

    /// Positive values in [0.5, 1.5) (BatchNormalization variances, scales).
    pub fn rand_pos(shape: &[usize], seed: u64) -> Tensor {
        let t = rand(shape, seed);
        Tensor::from_f32(
            shape.to_vec(),
            t.to_f32_vec().iter().map(|x| 1.0 + 0.5 * x).collect(),
        )
        .expect("data fits the shape")
    }

    /// Builds small graphs; types are inferred by [`Builder::finish`].
    pub struct Builder {
        pub g: Graph,
        seed: u64,
    }

    impl Builder {
        pub fn new() -> Builder {
            Builder {
                g: Graph::new("t", 21),
                seed: 1,
            }
        }

        /// An f32 input; dims that do not parse as numbers are symbols.
        pub fn input(&mut self, name: &str, dims: &[&str]) -> ValueId {
            let d = dims
                .iter()
                .map(|d| match d.parse::<usize>() {
                    Ok(n) => Dim::Known(n),
                    Err(_) => Dim::Sym(d.to_string()),
                })
                .collect();
            self.g
                .add_input(name, TensorType::new(DType::F32, Shape(d)))
        }

        pub fn konst(&mut self, name: &str, t: Tensor) -> ValueId {
            self.g.add_const(name, t)
        }

        /// A random f32 constant.
        pub fn rand(&mut self, name: &str, shape: &[usize]) -> ValueId {
            self.seed += 1;
            let t = rand(shape, self.seed);
            self.g.add_const(name, t)
        }

        /// A random positive f32 constant.
        pub fn rand_pos(&mut self, name: &str, shape: &[usize]) -> ValueId {
            self.seed += 1;
            let t = rand_pos(shape, self.seed);
            self.g.add_const(name, t)
        }

        pub fn node(&mut self, name: &str, op: Op, inputs: &[Option<ValueId>]) -> ValueId {
            let out = self
                .g
                .add_value(name, TensorType::new(DType::F32, Shape::scalar()));
            self.g.add_node(Node {
                name: name.to_string(),
                op,
                inputs: inputs.to_vec(),
                outputs: vec![out],
            });
            out
        }

        /// A node whose inputs are all present.
        pub fn op(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
            let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
            self.node(name, op, &ins)
        }

        pub fn finish(mut self, outputs: &[ValueId]) -> Graph {
            self.g.outputs = outputs.to_vec();
            infer::infer_graph(&mut self.g).expect("test graph infers");
            verify::verify(&self.g).expect("test graph verifies");
            self.g
        }
    }

    /// Random inputs for the graph (symbolic dims are 2).
    pub fn inputs_for(g: &Graph, seed: u64) -> Vec<Tensor> {
        g.inputs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let dims: Vec<usize> = g
                    .ty(v)
                    .shape
                    .dims()
                    .iter()
                    .map(|d| d.known().unwrap_or(2))
                    .collect();
                rand(&dims, seed + i as u64 * 7919)
            })
            .collect()
    }

    /// Runs the pass (registry entry, `params` over the defaults) on `g`,
    /// verifies the result and checks that the interpreter's outputs agree
    /// with the original's within 1e-5 (relative plus absolute). Returns the
    /// rewritten graph and the rewrite counts.
    pub fn run_checked(
        g: &Graph,
        pass: &str,
        params: &[(&str, ParamValue)],
    ) -> (Graph, BTreeMap<String, usize>) {
        let info = lookup(pass).expect("pass is registered");
        let given: BTreeMap<String, ParamValue> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let params = info.params(&given).expect("valid params");
        let mut p = (info.make)(&params);
        let mut after = g.clone();
        let mut cx = PassCx::default();
        p.run(&mut after, &mut cx).expect("pass runs");
        verify::verify(&after).expect("pass leaves a valid graph");
        for seed in [3, 11] {
            let ins = inputs_for(g, seed);
            let want = interp::run(g, ins.clone()).expect("original runs");
            let got = interp::run(&after, ins).expect("rewritten graph runs");
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert_eq!(a.shape(), b.shape());
                assert_eq!(a.dtype(), b.dtype());
                for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{pass}: {x} vs {y}"
                    );
                }
            }
        }
        for (o, n) in after.outputs.iter().zip(&g.outputs) {
            assert_eq!(after.value(*o).name, g.value(*n).name, "output names kept");
        }
        (after, cx.rewrites)
    }

    /// How many live nodes have ONNX type `ty`.
    pub fn count_ops(g: &Graph, ty: &str) -> usize {
        g.nodes().filter(|(_, n)| n.op.onnx_type() == ty).count()
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::ir::{Activation, AutoPad, ConvAttrs};

    fn conv3() -> Op {
        Op::Conv(ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            auto_pad: AutoPad::NotSet,
            group: 1,
        })
    }

    fn add() -> Op {
        Op::Binary(BinaryOp::Add)
    }

    #[test]
    fn conv_channel_biases_merge() {
        for (kshape, with_b, swap) in [
            (&[1, 4, 1, 1][..], true, false),
            (&[4, 1, 1], false, true),
            (&[1], true, true),
            (&[], false, false),
        ] {
            let mut b = Builder::new();
            let x = b.input("x", &["n", "3", "5", "5"]);
            let w = b.rand("w", &[4, 3, 3, 3]);
            let bias = b.rand("b", &[4]);
            let k = b.rand("k", kshape);
            let y = if with_b {
                b.op("conv", conv3(), &[x, w, bias])
            } else {
                b.op("conv", conv3(), &[x, w])
            };
            let z = if swap {
                b.op("add", add(), &[k, y])
            } else {
                b.op("add", add(), &[y, k])
            };
            let g = b.finish(&[z]);
            let (after, counts) = run_checked(&g, "merge-bias-add", &[]);
            assert_eq!(count_ops(&after, "Add"), 0, "{kshape:?}");
            assert_eq!(count_ops(&after, "Conv"), 1);
            assert_eq!(counts.get("conv"), Some(&1));
            // The old bias and k are gone from the constant store.
            assert!(!after.is_const(k));
            assert_eq!(after.is_const(bias), !with_b);
        }
    }

    #[test]
    fn non_channel_constants_stay() {
        // [4] aligns with W, [4,4] with the spatial axes, [2,4,1,1] grows
        // the output: none is a channel bias.
        for kshape in [&[4][..], &[4, 4], &[2, 4, 1, 1], &[1, 1, 1, 1, 1]] {
            let mut b = Builder::new();
            let x = b.input("x", &["2", "3", "4", "4"]);
            let w = b.rand("w", &[4, 3, 3, 3]);
            let k = b.rand("k", kshape);
            let y = b.op("conv", conv3(), &[x, w]);
            let z = b.op("add", add(), &[y, k]);
            let g = b.finish(&[z]);
            let (after, counts) = run_checked(&g, "merge-bias-add", &[]);
            assert_eq!(count_ops(&after, "Add"), 1, "{kshape:?}");
            assert!(counts.is_empty());
        }
    }

    #[test]
    fn conv_output_used_twice_or_with_activation_stays() {
        let mut b = Builder::new();
        let x = b.input("x", &["1", "3", "4", "4"]);
        let w = b.rand("w", &[4, 3, 3, 3]);
        let k = b.rand("k", &[1, 4, 1, 1]);
        let y = b.op("conv", conv3(), &[x, w]);
        let z = b.op("add", add(), &[y, k]);
        let g = b.finish(&[z, y]);
        let (after, _) = run_checked(&g, "merge-bias-add", &[]);
        assert_eq!(count_ops(&after, "Add"), 1);

        let mut b = Builder::new();
        let x = b.input("x", &["1", "3", "4", "4"]);
        let w = b.rand("w", &[4, 3, 3, 3]);
        let k = b.rand("k", &[1, 4, 1, 1]);
        let attrs = match conv3() {
            Op::Conv(a) => a,
            _ => unreachable!(),
        };
        let y = b.op(
            "conv",
            Op::FusedConv {
                conv: attrs,
                act: Some(Activation::Relu),
            },
            &[x, w],
        );
        let z = b.op("add", add(), &[y, k]);
        let g = b.finish(&[z]);
        let (after, _) = run_checked(&g, "merge-bias-add", &[]);
        assert_eq!(count_ops(&after, "Add"), 1);
    }

    #[test]
    fn matmul_and_fused_matmul_biases() {
        for (kshape, fused) in [
            (&[5][..], false),
            (&[1, 1, 5], true),
            (&[3, 1], false),
            (&[1], true),
        ] {
            let mut b = Builder::new();
            let a = b.input("a", &["batch", "3", "4"]);
            let w = b.rand("w", &[4, 5]);
            let k = b.rand("k", kshape);
            let y = if fused {
                let bias = b.rand("bias", &[5]);
                b.op(
                    "mm",
                    Op::FusedMatMul {
                        trans_a: false,
                        trans_b: false,
                        alpha: 0.5,
                        act: None,
                    },
                    &[a, w, bias],
                )
            } else {
                b.op("mm", Op::MatMul, &[a, w])
            };
            let z = b.op("add", add(), &[y, k]);
            let g = b.finish(&[z]);
            let (after, counts) = run_checked(&g, "merge-bias-add", &[]);
            assert_eq!(count_ops(&after, "Add"), 0, "{kshape:?}");
            assert_eq!(count_ops(&after, "FusedMatMul"), 1);
            assert_eq!(counts.get("matmul"), Some(&1));
        }
        // A constant that would grow the output stays an Add.
        let mut b = Builder::new();
        let a = b.input("a", &["3", "4"]);
        let w = b.rand("w", &[4, 5]);
        let k = b.rand("k", &[2, 3, 5]);
        let y = b.op("mm", Op::MatMul, &[a, w]);
        let z = b.op("add", add(), &[y, k]);
        let g = b.finish(&[z]);
        let (after, _) = run_checked(&g, "merge-bias-add", &[]);
        assert_eq!(count_ops(&after, "MatMul"), 1);
    }

    #[test]
    fn gemm_becomes_fused_matmul() {
        for (with_c, beta, trans_b) in [(false, 1.0, false), (true, 0.0, true), (true, 0.7, true)] {
            let mut b = Builder::new();
            let a = b.input("a", &["3", "4"]);
            let w = b.rand("w", if trans_b { &[5, 4] } else { &[4, 5] });
            let c = b.rand("c", &[1, 5]);
            let k = b.rand("k", &[5]);
            let op = Op::Gemm {
                alpha: 1.5,
                beta,
                trans_a: false,
                trans_b,
            };
            let y = if with_c {
                b.op("gemm", op, &[a, w, c])
            } else {
                b.op("gemm", op, &[a, w])
            };
            let z = b.op("add", add(), &[k, y]);
            let g = b.finish(&[z]);
            let (after, counts) = run_checked(&g, "merge-bias-add", &[]);
            assert_eq!(count_ops(&after, "Gemm"), 0);
            assert_eq!(count_ops(&after, "Add"), 0);
            assert_eq!(counts.get("gemm"), Some(&1));
        }
        // C from a graph input with beta != 0 cannot be merged.
        let mut b = Builder::new();
        let a = b.input("a", &["3", "4"]);
        let c = b.input("c", &["3", "5"]);
        let w = b.rand("w", &[4, 5]);
        let k = b.rand("k", &[5]);
        let op = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        };
        let y = b.op("gemm", op, &[a, w, c]);
        let z = b.op("add", add(), &[y, k]);
        let g = b.finish(&[z]);
        let (after, _) = run_checked(&g, "merge-bias-add", &[]);
        assert_eq!(count_ops(&after, "Gemm"), 1);
    }

    #[test]
    fn graph_output_name_moves_to_the_producer() {
        let mut b = Builder::new();
        let x = b.input("x", &["1", "3", "4", "4"]);
        let w = b.rand("w", &[4, 3, 3, 3]);
        let k = b.rand("k", &[4, 1, 1]);
        let y = b.op("conv", conv3(), &[x, w]);
        let z = b.op("logits", add(), &[y, k]);
        let g = b.finish(&[z]);
        let (after, _) = run_checked(&g, "merge-bias-add", &[]);
        assert_eq!(after.value(after.outputs[0]).name, "logits");
        assert_eq!(after.outputs[0], y);
    }

    #[test]
    fn helpers() {
        let k = FConst {
            vals: vec![1.0, 2.0],
            shape: vec![2, 1, 1],
            dtype: DType::F32,
        };
        assert_eq!(channel_bias(&k, 4, 2), Some(vec![1.0, 2.0]));
        assert_eq!(channel_bias(&k, 3, 2), None);
        assert_eq!(channel_bias(&k, 4, 3), None);
        assert!(fits_onto(
            &[1, 5],
            &Shape(vec![Dim::sym("b"), Dim::Known(5)])
        ));
        assert!(!fits_onto(
            &[2, 5],
            &Shape(vec![Dim::sym("b"), Dim::Known(5)])
        ));
        assert!(!fits_onto(&[1, 1, 5], &Shape::known(&[3, 5])));
    }
}

#[cfg(test)]
mod golden {
    use crate::transform::testing::check_pass;

    #[test]
    fn conv_channel_bias() {
        // [1,2,1,1] is per channel: summed into B. The [3] constant aligns
        // with the last spatial axis and stays an Add.
        check_pass(
            "merge-bias-add",
            r#"
            graph "t" opset 21
              input  %0 x: f32[n,1,3,3]
              const  %1 w: f32[2,1,1,1] = [1, 2]
              const  %2 b: f32[2] = [0.5, -1]
              const  %3 k: f32[1,2,1,1] = [10, 20]
              const  %4 k3: f32[3] = [1, 2, 3]
              %5 y: f32[n,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1, %2)  # conv
              %6 z: f32[n,2,3,3] = Add(%3, %5)  # add
              %7 y2: f32[n,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1)  # conv2
              %8 z2: f32[n,2,3,3] = Add(%7, %4)  # add2
              output %6 z
              output %8 z2
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[n,1,3,3]
              const  %1 w: f32[2,1,1,1] = [1, 2]
              const  %2 k3: f32[3] = [1, 2, 3]
              const  %3 conv.bias: f32[2] = [10.5, 19]
              %4 z: f32[n,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1, %3)  # conv
              %5 y2: f32[n,2,3,3] = Conv[kernel=[1, 1], strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0]](%0, %1)  # conv2
              %6 z2: f32[n,2,3,3] = Add(%5, %2)  # add2
              output %4 z
              output %6 z2
            "#,
        );
    }

    #[test]
    fn matmul_and_gemm_bias() {
        // MatMul + [1,3] -> FusedMatMul with that bias; Gemm(beta=2, C) + k
        // -> FusedMatMul with bias 2 * C + k.
        check_pass(
            "merge-bias-add",
            r#"
            graph "t" opset 21
              input  %0 x: f32[batch,2]
              const  %1 w: f32[2,3] = [1, 2, 3, 4, 5, 6]
              const  %2 k: f32[1,3] = [1, 2, 3]
              const  %3 c: f32[3] = [1, 1, 2]
              %4 y: f32[batch,3] = MatMul(%0, %1)  # mm
              %5 z: f32[batch,3] = Add(%4, %2)  # add
              %6 g: f32[batch,3] = Gemm[alpha=0.5, beta=2, trans_a=false, trans_b=false](%0, %1, %3)  # fc
              %7 h: f32[batch,3] = Add(%6, %2)  # add2
              output %5 z
              output %7 h
            "#,
            r#"
            graph "t" opset 21
              input  %0 x: f32[batch,2]
              const  %1 w: f32[2,3] = [1, 2, 3, 4, 5, 6]
              const  %2 mm.bias: f32[1,3] = [1, 2, 3]
              const  %3 fc.bias: f32[1,3] = [3, 4, 7]
              %4 z: f32[batch,3] = FusedMatMul[trans_a=false, trans_b=false, alpha=1](%0, %1, %2)  # mm
              %5 h: f32[batch,3] = FusedMatMul[trans_a=false, trans_b=false, alpha=0.5](%0, %1, %3)  # fc
              output %4 z
              output %5 h
            "#,
        );
    }
}

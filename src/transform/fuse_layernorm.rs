//! `fuse-layernorm`: collapses the decomposed LayerNorm that exporters emit
//! for opsets without LayerNormalization back into one op.
//!
//! The pattern (PyTorch's TorchScript exporter, tf2onnx's simple form) is
//!
//! ```text
//! mean = ReduceMean(x, axes)          axes = the last k axes, keepdims
//! d    = Sub(x, mean)
//! sq   = Pow(d, 2)  |  Mul(d, d)
//! var  = ReduceMean(sq, axes)
//! std  = Sqrt(Add(var, eps))          eps a scalar constant
//! n    = Div(d, std)  |  Mul(d, Reciprocal(std))
//! y    = Add(Mul(n, scale), bias)     both optional, constants
//! ```
//!
//! and becomes `LayerNormalization { axis: -k, epsilon }` with inputs
//! `x, scale, bias?`: a missing scale becomes a ones constant of the
//! normalized dims, a missing bias is left out (the op's B is optional). The
//! match starts at each ReduceMean, reads the graph without touching it and
//! only then rewrites; every intermediate value must be used by the pattern
//! alone (no other users, not a graph output), so nothing outside it sees
//! the removed values. The normalized dims must be known sizes.
//!
//! The module also holds the small matching helpers the other pattern passes
//! share.

use std::sync::Arc;

use super::{Changed, ParamSpec, Params, Pass, PassCx, PassInfo};
use crate::ir::{
    BinaryOp, DType, Dim, Graph, Node, NodeId, Op, ReduceOp, Tensor, TensorData, UnaryOp, ValueId,
};
use crate::Result;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "fuse-layernorm",
    summary: "collapse decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) into LayerNormalization",
    params: &[] as &[ParamSpec],
    make: |_: &Params| Box::new(FuseLayerNorm),
};

/// The pass (no parameters).
pub struct FuseLayerNorm;

impl Pass for FuseLayerNorm {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut changed = false;
        for id in g.topo_order()? {
            // An earlier rewrite may have removed this node.
            let Some(node) = g.node(id) else { continue };
            if !matches!(
                node.op,
                Op::Reduce {
                    op: ReduceOp::Mean,
                    ..
                }
            ) {
                continue;
            }
            if let Some(m) = match_at(g, id) {
                rewrite(g, m);
                cx.count("layernorm");
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

// ---------------------------------------------------------------------------
// Matching helpers (shared with fuse-gelu and fuse-elementwise).

/// The value of a one-element numeric constant, as f64.
pub(super) fn scalar_const(g: &Graph, v: ValueId) -> Option<f64> {
    let t = g.const_value(v)?;
    if t.numel() != 1 || t.dtype() == DType::Bool || t.dtype().is_storage_only() {
        return None;
    }
    t.to_f64_vec().first().copied()
}

/// Whether `v` is within 1e-6 relative of `want`.
pub(super) fn near(v: f64, want: f64) -> bool {
    (v - want).abs() <= 1e-6 * want.abs()
}

/// Whether `v` is a one-element constant within 1e-6 relative of `want`.
pub(super) fn const_near(g: &Graph, v: ValueId, want: f64) -> bool {
    scalar_const(g, v).is_some_and(|c| near(c, want))
}

/// The single node reading `v` (possibly at several input positions), when
/// `v` is not a graph output and no other node reads it.
pub(super) fn sole_user(g: &Graph, v: ValueId) -> Option<(NodeId, &Node)> {
    if g.is_output(v) {
        return None;
    }
    let users = g.users(v);
    let first = users.first()?.0;
    if users.iter().any(|(n, _)| *n != first) {
        return None;
    }
    Some((first, g.node(first)?))
}

/// The live node defining `v`, when `v` is the output of a one-output node.
pub(super) fn producer(g: &Graph, v: ValueId) -> Option<(NodeId, &Node)> {
    let id = g.producer(v)?;
    let n = g.node(id)?;
    (n.outputs.len() == 1).then_some((id, n))
}

/// The operands of `node` when it is the binary op `op` with one output.
pub(super) fn binary(node: &Node, op: BinaryOp) -> Option<(ValueId, ValueId)> {
    if node.op != Op::Binary(op) || node.outputs.len() != 1 || node.inputs.len() != 2 {
        return None;
    }
    Some((node.input(0)?, node.input(1)?))
}

/// For a commutative binary `op`: the operand of `node` that is not `v`.
pub(super) fn other_operand(node: &Node, op: BinaryOp, v: ValueId) -> Option<ValueId> {
    let (a, b) = binary(node, op)?;
    if a == v {
        Some(b)
    } else if b == v {
        Some(a)
    } else {
        None
    }
}

/// The input of `node` when it is the unary op `u` with one output.
pub(super) fn unary(node: &Node, u: UnaryOp) -> Option<ValueId> {
    if node.op != Op::Unary(u) || node.outputs.len() != 1 {
        return None;
    }
    node.input(0)
}

/// The name of a node (or constant) made from the node named `base`:
/// `base.what`, or just `what` when `base` is empty.
pub(super) fn derived_name(base: &str, what: &str) -> String {
    if base.is_empty() {
        what.to_string()
    } else {
        format!("{base}.{what}")
    }
}

/// Removes the nodes `nodes`; returns the constants they read.
pub(super) fn remove_nodes(g: &mut Graph, nodes: &[NodeId]) -> Vec<ValueId> {
    let mut read: Vec<ValueId> = Vec::new();
    for &n in nodes {
        if let Some(node) = g.remove_node(n) {
            read.extend(node.inputs.iter().flatten().filter(|v| g.is_const(**v)));
        }
    }
    read.sort_unstable();
    read.dedup();
    read
}

/// Drops the constants among `consts` that nothing reads any more (and that
/// are no graph output), so a fused pattern leaves no dead weights behind.
/// Call it after the replacement node is in place.
pub(super) fn drop_dead_consts(g: &mut Graph, consts: &[ValueId]) {
    for &v in consts {
        if g.is_const(v) && g.use_count(v) == 0 {
            g.consts.remove(&v);
            g.value_mut(v).def = crate::ir::ValueDef::Undefined;
        }
    }
}

// ---------------------------------------------------------------------------
// The LayerNorm pattern.

/// A matched decomposed LayerNorm.
struct Match {
    x: ValueId,
    /// Number of normalized (trailing) axes.
    k: usize,
    epsilon: f32,
    /// Scale and bias constants, already shaped like the normalized dims.
    scale: Option<Param>,
    bias: Option<Param>,
    /// The pattern's nodes, all removed by the rewrite.
    nodes: Vec<NodeId>,
    /// The value the pattern computes; the fused node defines it.
    out: ValueId,
}

/// A scale or bias: an existing constant of the right shape, or a new one.
enum Param {
    Value(ValueId),
    New(Tensor),
}

/// The input and sorted normalized axes of a keepdims ReduceMean node.
fn reduce_mean(g: &Graph, node: &Node) -> Option<(ValueId, Vec<usize>)> {
    let Op::Reduce {
        op: ReduceOp::Mean,
        keepdims: true,
        noop_with_empty_axes,
    } = node.op
    else {
        return None;
    };
    if node.outputs.len() != 1 {
        return None;
    }
    let x = node.input(0)?;
    let rank = g.ty(x).shape.rank() as i64;
    let axes: Vec<i64> = match node.input(1) {
        None => (0..rank).collect(),
        Some(a) => {
            let v = g.const_value(a)?.to_i64_vec()?;
            if v.is_empty() {
                if noop_with_empty_axes {
                    return None;
                }
                (0..rank).collect()
            } else {
                v
            }
        }
    };
    let mut out = Vec::with_capacity(axes.len());
    for a in axes {
        if a < -rank || a >= rank {
            return None;
        }
        let a = if a < 0 { a + rank } else { a } as usize;
        if out.contains(&a) {
            return None;
        }
        out.push(a);
    }
    out.sort_unstable();
    Some((x, out))
}

/// Whether `node` squares `d`: `Pow(d, 2)` or `Mul(d, d)`.
fn squares(g: &Graph, node: &Node, d: ValueId) -> bool {
    match binary(node, BinaryOp::Pow) {
        Some((b, e)) => b == d && const_near(g, e, 2.0),
        None => binary(node, BinaryOp::Mul) == Some((d, d)),
    }
}

/// A scale/bias constant that broadcasts onto the normalized dims `dims`
/// without changing the output shape, reshaped to exactly `dims`.
fn param(g: &Graph, c: ValueId, dtype: DType, dims: &[usize]) -> Option<Param> {
    let t = g.const_value(c)?;
    if t.dtype() != dtype || t.rank() > dims.len() {
        return None;
    }
    let off = dims.len() - t.rank();
    if t.shape()
        .iter()
        .enumerate()
        .any(|(i, &s)| s != 1 && s != dims[off + i])
    {
        return None;
    }
    if t.shape() == dims {
        return Some(Param::Value(c));
    }
    // Materialize the broadcast (exact: every float type round-trips f64).
    let map = crate::ir::ops::util::broadcast_index_map(t.shape(), dims);
    let v = t.to_f64_vec();
    let data: Vec<f64> = map.iter().map(|&i| v[i]).collect();
    Tensor::new(dims.to_vec(), TensorData::from_f64(dtype, &data))
        .ok()
        .map(Param::New)
}

/// Matches the pattern whose first ReduceMean is `mean_id`.
fn match_at(g: &Graph, mean_id: NodeId) -> Option<Match> {
    let mean_node = g.node(mean_id)?;
    let (x, axes) = reduce_mean(g, mean_node)?;
    let xt = g.ty(x);
    let rank = xt.shape.rank();
    let k = axes.len();
    if k == 0 || axes != (rank - k..rank).collect::<Vec<_>>() {
        return None;
    }
    if !matches!(xt.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        return None;
    }
    let dims: Vec<usize> = xt.shape.dims()[rank - k..]
        .iter()
        .map(Dim::known)
        .collect::<Option<_>>()?;
    let mut nodes = vec![mean_id];

    // d = x - mean
    let mean = mean_node.outputs[0];
    let (sub_id, sub) = sole_user(g, mean)?;
    if binary(sub, BinaryOp::Sub)? != (x, mean) {
        return None;
    }
    nodes.push(sub_id);
    let d = sub.outputs[0];
    if g.is_output(d) {
        return None;
    }
    // d feeds exactly two nodes: the square and the normalizing division.
    let mut users: Vec<NodeId> = g.users(d).into_iter().map(|(n, _)| n).collect();
    users.dedup();
    let [u0, u1] = users[..] else { return None };
    let (sq_id, div_id) = if squares(g, g.node(u0)?, d) {
        (u0, u1)
    } else {
        (u1, u0)
    };
    let sq = g.node(sq_id)?;
    if !squares(g, sq, d) {
        return None;
    }
    nodes.push(sq_id);

    // var = ReduceMean(sq) over the same axes; std = Sqrt(var + eps)
    let (var_id, var_node) = sole_user(g, sq.outputs[0])?;
    if reduce_mean(g, var_node)? != (sq.outputs[0], axes) {
        return None;
    }
    nodes.push(var_id);
    let var = var_node.outputs[0];
    let (add_id, add) = sole_user(g, var)?;
    let epsilon = scalar_const(g, other_operand(add, BinaryOp::Add, var)?)? as f32;
    nodes.push(add_id);
    let (sqrt_id, sqrt) = sole_user(g, add.outputs[0])?;
    if unary(sqrt, UnaryOp::Sqrt)? != add.outputs[0] {
        return None;
    }
    nodes.push(sqrt_id);
    let std = sqrt.outputs[0];

    // n = d / std, or d * (1 / std)
    let (u_id, u) = sole_user(g, std)?;
    if u_id == div_id {
        if binary(u, BinaryOp::Div)? != (d, std) {
            return None;
        }
    } else {
        unary(u, UnaryOp::Reciprocal)?;
        let r = u.outputs[0];
        let (m_id, m) = sole_user(g, r)?;
        if m_id != div_id || other_operand(m, BinaryOp::Mul, r)? != d {
            return None;
        }
        nodes.push(u_id);
    }
    nodes.push(div_id);
    let mut out = g.node(div_id)?.outputs[0];

    // Optional Mul(scale), then optional Add(bias).
    let mut scale = None;
    let mut bias = None;
    if let Some((m_id, m)) = sole_user(g, out) {
        if let Some(p) = other_operand(m, BinaryOp::Mul, out)
            .filter(|&c| c != out)
            .and_then(|c| param(g, c, xt.dtype, &dims))
        {
            scale = Some(p);
            nodes.push(m_id);
            out = m.outputs[0];
        }
    }
    if let Some((a_id, a)) = sole_user(g, out) {
        if let Some(p) = other_operand(a, BinaryOp::Add, out)
            .filter(|&c| c != out)
            .and_then(|c| param(g, c, xt.dtype, &dims))
        {
            bias = Some(p);
            nodes.push(a_id);
            out = a.outputs[0];
        }
    }
    if g.ty(out) != xt {
        return None;
    }
    Some(Match {
        x,
        k,
        epsilon,
        scale,
        bias,
        nodes,
        out,
    })
}

/// Replaces the matched nodes by one LayerNormalization defining `m.out`.
fn rewrite(g: &mut Graph, m: Match) {
    // The pattern's last node names the fused one.
    let name = m
        .nodes
        .last()
        .and_then(|&n| g.node(n))
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let dtype = g.ty(m.x).dtype;
    let dims: Vec<usize> = {
        let s = g.ty(m.x).shape.dims();
        s[s.len() - m.k..]
            .iter()
            // match_at only accepts known normalized dims.
            .map(|d| d.known().unwrap_or(0))
            .collect()
    };
    let materialize = |g: &mut Graph, p: Param, what: &str| match p {
        Param::Value(v) => v,
        Param::New(t) => g.add_const(derived_name(&name, what), Arc::new(t)),
    };
    let scale = match m.scale {
        Some(p) => materialize(g, p, "scale"),
        None => {
            let n: usize = dims.iter().product();
            let ones = TensorData::from_f64(dtype, &vec![1.0; n]);
            match Tensor::new(dims.clone(), ones) {
                Ok(t) => materialize(g, Param::New(t), "scale"),
                // Unreachable: the data has exactly the dims' element count.
                Err(_) => return,
            }
        }
    };
    let bias = m.bias.map(|p| materialize(g, p, "bias"));
    let read = remove_nodes(g, &m.nodes);
    let mut inputs = vec![Some(m.x), Some(scale)];
    if let Some(b) = bias {
        inputs.push(Some(b));
    }
    g.add_node(Node {
        name: derived_name(&name, "layernorm"),
        op: Op::LayerNormalization {
            axis: -(m.k as i64),
            epsilon: m.epsilon,
        },
        inputs,
        outputs: vec![m.out],
    });
    drop_dead_consts(g, &read);
}

#[cfg(test)]
mod tests {
    use super::super::fuse_gelu;
    use super::super::testing::check_pass;
    use super::*;
    use crate::ir::{verify, Shape, TensorType};
    use crate::{interp, Error};

    fn f32t(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, Shape::known(dims))
    }

    /// Adds a one-output node whose output type is inferred.
    fn add(g: &mut Graph, op: Op, ins: &[ValueId]) -> ValueId {
        let out = g.add_value(format!("v{}", g.values.len()), f32t(&[]));
        g.add_node(Node {
            name: format!("n{}", g.node_capacity()),
            op,
            inputs: ins.iter().map(|&v| Some(v)).collect(),
            outputs: vec![out],
        });
        out
    }

    fn bin(g: &mut Graph, b: BinaryOp, x: ValueId, y: ValueId) -> ValueId {
        add(g, Op::Binary(b), &[x, y])
    }

    fn scalar(g: &mut Graph, v: f32) -> ValueId {
        g.add_const("c", Tensor::scalar_f32(v))
    }

    fn mean(g: &mut Graph, x: ValueId, axes: &[i64]) -> ValueId {
        let a = g.add_const("axes", Tensor::vec_i64(axes.to_vec()));
        add(
            g,
            Op::Reduce {
                op: ReduceOp::Mean,
                keepdims: true,
                noop_with_empty_axes: false,
            },
            &[x, a],
        )
    }

    /// Pseudo-random values in [-2, 2).
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::ir::ops::util::testing::random(shape, seed, 2.0)
    }

    fn run_pass(g: &mut Graph, info: &PassInfo) -> PassCx {
        let params = info.params(&Default::default()).unwrap();
        let mut cx = PassCx::default();
        (info.make)(&params).run(g, &mut cx).unwrap();
        crate::ir::infer::infer_graph(g).unwrap();
        verify::verify(g).unwrap();
        cx
    }

    fn ops(g: &Graph) -> Vec<&'static str> {
        let order = g.topo_order().unwrap();
        order
            .iter()
            .map(|&n| g.node(n).unwrap().op.onnx_type())
            .collect()
    }

    fn assert_close(a: &[Tensor], b: &[Tensor], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.shape(), y.shape());
            for (p, q) in x.to_f32_vec().iter().zip(y.to_f32_vec()) {
                assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{p} vs {q}");
            }
        }
    }

    /// The decomposed LayerNorm over the last `k` axes of an input shaped
    /// `dims`; `variant` picks Pow/Mul squaring and Div/Reciprocal.
    fn decomposed(dims: &[usize], k: usize, variant: u8, affine: bool) -> Graph {
        let mut g = Graph::new("ln", 14);
        let x = g.add_input("x", f32t(dims));
        let r = dims.len() as i64;
        let axes: Vec<i64> = (r - k as i64..r).map(|a| a - r).collect();
        let m = mean(&mut g, x, &axes);
        let d = bin(&mut g, BinaryOp::Sub, x, m);
        let sq = if variant & 1 == 0 {
            let two = scalar(&mut g, 2.0);
            bin(&mut g, BinaryOp::Pow, d, two)
        } else {
            bin(&mut g, BinaryOp::Mul, d, d)
        };
        let var = mean(&mut g, sq, &axes);
        let eps = scalar(&mut g, 1e-5);
        let ve = bin(&mut g, BinaryOp::Add, eps, var);
        let sd = add(&mut g, Op::Unary(UnaryOp::Sqrt), &[ve]);
        let mut y = if variant & 2 == 0 {
            bin(&mut g, BinaryOp::Div, d, sd)
        } else {
            let rc = add(&mut g, Op::Unary(UnaryOp::Reciprocal), &[sd]);
            bin(&mut g, BinaryOp::Mul, rc, d)
        };
        if affine {
            let last = dims[dims.len() - 1];
            let w: Vec<f32> = (0..last).map(|i| 0.5 + i as f32 * 0.25).collect();
            let w = g.add_const("w", Tensor::from_f32(vec![last], w).unwrap());
            y = bin(&mut g, BinaryOp::Mul, w, y);
            let b = g.add_const("b", Tensor::from_f32(vec![1], vec![0.125]).unwrap());
            y = bin(&mut g, BinaryOp::Add, y, b);
        }
        g.outputs = vec![y];
        g.value_mut(y).name = "y".into();
        crate::ir::infer::infer_graph(&mut g).unwrap();
        g
    }

    #[test]
    fn collapses_every_variant() -> std::result::Result<(), Error> {
        for variant in 0..4 {
            for (dims, k) in [(&[2usize, 3, 8][..], 1), (&[2, 3, 4][..], 2), (&[5][..], 1)] {
                for affine in [false, true] {
                    let mut g = decomposed(dims, k, variant, affine);
                    let x = rand(dims, variant as u64);
                    let before = interp::run(&g, vec![x.clone()])?;
                    let cx = run_pass(&mut g, &INFO);
                    assert_eq!(cx.rewrites.get("layernorm"), Some(&1));
                    assert_eq!(ops(&g), ["LayerNormalization"], "{variant} {dims:?}");
                    let (_, n) = g.nodes().next().unwrap();
                    assert_eq!(
                        n.op,
                        Op::LayerNormalization {
                            axis: -(k as i64),
                            epsilon: 1e-5
                        }
                    );
                    let scale = g.const_value(n.input(1).unwrap()).unwrap();
                    assert_eq!(scale.shape(), &dims[dims.len() - k..]);
                    assert_eq!(n.inputs.len(), if affine { 3 } else { 2 });
                    assert_eq!(g.value(g.outputs[0]).name, "y");
                    let after = interp::run(&g, vec![x])?;
                    assert_close(&after, &before, 1e-5);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn leaves_near_misses_alone() {
        // An intermediate with another user (the mean is a graph output).
        let mut g = decomposed(&[2, 4], 1, 0, true);
        let m = g.nodes().next().unwrap().1.outputs[0];
        g.outputs.push(m);
        let n = g.node_count();
        let cx = run_pass(&mut g, &INFO);
        assert!(cx.rewrites.is_empty());
        assert_eq!(g.node_count(), n);

        // Reducing a leading axis.
        let mut g = Graph::new("t", 14);
        let x = g.add_input("x", f32t(&[2, 4]));
        let m = mean(&mut g, x, &[0]);
        let d = bin(&mut g, BinaryOp::Sub, x, m);
        let sq = bin(&mut g, BinaryOp::Mul, d, d);
        let var = mean(&mut g, sq, &[0]);
        let eps = scalar(&mut g, 1e-5);
        let ve = bin(&mut g, BinaryOp::Add, var, eps);
        let sd = add(&mut g, Op::Unary(UnaryOp::Sqrt), &[ve]);
        let y = bin(&mut g, BinaryOp::Div, d, sd);
        g.outputs = vec![y];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        assert!(run_pass(&mut g, &INFO).rewrites.is_empty());

        // The scale is a graph input, not a constant: the fused op stops
        // before the Mul, which stays.
        let mut g = decomposed(&[2, 4], 1, 0, false);
        let w = g.add_input("w", f32t(&[4]));
        let y = g.outputs[0];
        let z = bin(&mut g, BinaryOp::Mul, y, w);
        g.outputs = vec![z];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        run_pass(&mut g, &INFO);
        assert_eq!(ops(&g), ["LayerNormalization", "Mul"]);

        // A scale that would broadcast x to a bigger shape is not absorbed.
        let mut g = decomposed(&[4], 1, 0, false);
        let w = g.add_const("w", Tensor::from_f32(vec![2, 4], vec![1.0; 8]).unwrap());
        let y = g.outputs[0];
        let z = bin(&mut g, BinaryOp::Mul, y, w);
        g.outputs = vec![z];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        run_pass(&mut g, &INFO);
        assert_eq!(ops(&g), ["LayerNormalization", "Mul"]);
    }

    /// torch's opset-14 export of `nn.LayerNorm(8)`.
    #[test]
    fn golden_torch_layernorm() {
        check_pass(
            "fuse-layernorm",
            r#"
graph "ln" opset 14
  input  %0 x: f32[batch,3,8]
  const  %1 axes: i64[1] = [-1]
  const  %2 two: f32[] = [2]
  const  %3 eps: f32[] = [0.00001]
  const  %4 w: f32[8] = [1, 2, 3, 4, 5, 6, 7, 8]
  const  %5 b: f32[8] = [0, 0, 0, 0, 1, 1, 1, 1]
  %6 mean: f32[batch,3,1] = ReduceMean(%0, %1)
  %7 d: f32[batch,3,8] = Sub(%0, %6)
  %8 sq: f32[batch,3,8] = Pow(%7, %2)
  %9 var: f32[batch,3,1] = ReduceMean(%8, %1)
  %10 ve: f32[batch,3,1] = Add(%9, %3)
  %11 sd: f32[batch,3,1] = Sqrt(%10)
  %12 n: f32[batch,3,8] = Div(%7, %11)
  %13 m: f32[batch,3,8] = Mul(%12, %4)
  %14 y: f32[batch,3,8] = Add(%13, %5)  # last
  output %14 y
"#,
            r#"
graph "ln" opset 14
  input  %0 x: f32[batch,3,8]
  const  %1 w: f32[8] = [1, 2, 3, 4, 5, 6, 7, 8]
  const  %2 b: f32[8] = [0, 0, 0, 0, 1, 1, 1, 1]
  %3 y: f32[batch,3,8] = LayerNormalization[axis=-1, epsilon=1e-5](%0, %1, %2)  # last.layernorm
  output %3 y
"#,
        );
    }

    /// No affine part, two normalized axes, `Mul(d, d)` and the reciprocal
    /// form; `x` feeds another node too.
    #[test]
    fn golden_plain_two_axes() {
        check_pass(
            "fuse-layernorm",
            r#"
graph "ln" opset 14
  input  %0 x: f32[2,3,4]
  const  %1 axes: i64[2] = [-2, -1]
  const  %3 eps: f32[] = [0.001]
  %6 mean: f32[2,1,1] = ReduceMean(%0, %1)
  %7 d: f32[2,3,4] = Sub(%0, %6)
  %8 sq: f32[2,3,4] = Mul(%7, %7)
  %9 var: f32[2,1,1] = ReduceMean(%8, %1)
  %10 ve: f32[2,1,1] = Add(%3, %9)
  %11 sd: f32[2,1,1] = Sqrt(%10)
  %12 r: f32[2,1,1] = Reciprocal(%11)
  %13 y: f32[2,3,4] = Mul(%12, %7)
  %14 z: f32[2,3,4] = Relu(%0)
  output %13 y
  output %14 z
"#,
            r#"
graph "ln" opset 14
  input  %0 x: f32[2,3,4]
  const  %1 scale: f32[3,4] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
  %2 z: f32[2,3,4] = Relu(%0)
  %3 y: f32[2,3,4] = LayerNormalization[axis=-2, epsilon=0.001](%0, %1)  # layernorm
  output %3 y
  output %2 z
"#,
        );
    }

    /// The model torch exports at opset 14 for LayerNorm(8) -> GELU ->
    /// GELU(tanh) -> LayerNorm([3, 8], no affine), see
    /// tests/data/patterns/make_ln_gelu.py.
    #[test]
    fn torch_export_collapses() -> std::result::Result<(), Error> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/patterns/ln_gelu.onnx");
        let mut g = crate::formats::load(&path)?;
        assert_eq!(g.node_count(), 30);
        let x = rand(&[4, 3, 8], 7);
        let before = interp::run(&g, vec![x.clone()])?;
        let cx = run_pass(&mut g, &INFO);
        assert_eq!(cx.rewrites.get("layernorm"), Some(&2));
        let cx = run_pass(&mut g, &fuse_gelu::INFO);
        assert_eq!(cx.rewrites.get("gelu-erf"), Some(&1));
        assert_eq!(cx.rewrites.get("gelu-tanh"), Some(&1));
        assert_eq!(
            ops(&g),
            ["LayerNormalization", "Gelu", "Gelu", "LayerNormalization"]
        );
        assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[batch,3,8]");
        let after = interp::run(&g, vec![x])?;
        assert_close(&after, &before, 1e-5);
        Ok(())
    }
}

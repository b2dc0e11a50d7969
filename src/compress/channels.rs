//! Structured pruning: whole output channels of convolutions and output
//! features of matrix products removed, with the matching input channels
//! of every consumer, so the graph itself gets smaller and runs on the
//! dense kernels.
//!
//! Channels that must go together form a *channel space*: the output of a
//! convolution or product with a constant weight opens one; ops that keep
//! channel `j` in channel `j` carry it on (activations, pooling, a
//! depthwise convolution, `Flatten` of 1x1 planes); a residual sum joins
//! the spaces of its operands (both must lose the same channels). A
//! convolution or product that reads the space reduces over it: its
//! weight loses the matching input columns. Anything else reading a value
//! of the space (a reshape, a concatenation, a norm, a graph output, a
//! weight shared with another node) freezes the space: it keeps every
//! channel.
//!
//! Attention heads are channels too: a reshape that splits a space's
//! channels into `[heads, width]` makes the head the unit that goes
//! (a transpose moves the heads axis, the attention products of two such
//! values tie their spaces, masks and softmax over another axis pass it
//! on, and the reshape back joins the output projection's input); the
//! reshapes' targets become constants first (`canonical_reshapes`) so the
//! head count can change.
//!
//! A channel's importance is what removing it would take from the
//! consumers' outputs: the norm of the channel over the data times the
//! norm of the consumer's weights that read it, summed over consumers
//! (Wanda's score per input channel). Each space loses the same share of
//! its channels, the least important ones.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ir::{infer, BinaryOp, Graph, Op, Shape, Tensor, TensorType, UnaryOp, ValueId};
use crate::{Error, Result};

/// One space: which values carry it, which weights are sliced when a
/// channel goes, which consumers read it.
#[derive(Clone, Debug, Default)]
struct Space {
    channels: usize,
    /// Nodes whose weights produce it (convolutions, products).
    producers: Vec<String>,
    /// Constants sliced along an axis when channels go: (constant, axis,
    /// elements a channel takes along it).
    slices: Vec<(ValueId, usize, usize)>,
    /// Consumers: (node name, activation input value, weight, its axis
    /// that reads the channel, elements a channel takes along it).
    consumers: Vec<(String, ValueId, ValueId, usize, usize)>,
    /// Depthwise convolutions whose group count is the channel count.
    depthwise: Vec<crate::ir::NodeId>,
    /// Channels that go together (an attention head's width), else 1.
    unit: usize,
    /// Reshape targets `[0, .., H, D]` that split the channels into heads:
    /// (the constant, the index of H in it).
    head_shapes: Vec<(ValueId, usize)>,
    /// Why the space keeps every channel.
    frozen: Option<String>,
}

/// What structured pruning did to one space.
#[derive(Clone, Debug, Serialize)]
pub struct SpaceReport {
    /// The convolutions and products that produce its channels.
    pub producers: Vec<String>,
    pub channels_before: usize,
    pub channels_after: usize,
    /// Channels of one attention head, when the space is split into heads
    /// (they go whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_width: Option<usize>,
    /// Why it kept every channel (frozen spaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<String>,
}

/// The model with channels removed.
pub struct Pruned {
    pub graph: Graph,
    pub spaces: Vec<SpaceReport>,
}

/// Union-find over values.
struct Sets {
    parent: HashMap<ValueId, ValueId>,
}

impl Sets {
    fn find(&mut self, v: ValueId) -> Option<ValueId> {
        let mut r = *self.parent.get(&v)?;
        while let Some(&p) = self.parent.get(&r).filter(|&&p| p != r) {
            r = p;
        }
        self.parent.insert(v, r);
        Some(r)
    }

    /// The root of `v`'s set, without shortening paths.
    fn root(&self, v: ValueId) -> Option<ValueId> {
        let mut r = *self.parent.get(&v)?;
        while let Some(&p) = self.parent.get(&r).filter(|&&p| p != r) {
            r = p;
        }
        Some(r)
    }

    fn add(&mut self, v: ValueId) {
        self.parent.entry(v).or_insert(v);
    }

    /// Joins the sets of `a` and `b`; the root kept.
    fn union(&mut self, a: ValueId, b: ValueId) -> Option<(ValueId, ValueId)> {
        let (ra, rb) = (self.find(a)?, self.find(b)?);
        if ra != rb {
            self.parent.insert(rb, ra);
        }
        Some((ra, rb))
    }
}

/// The channel spaces of `g` (an O2-compiled graph), by root value.
fn spaces(g: &Graph) -> Result<BTreeMap<ValueId, Space>> {
    let mut sets = Sets {
        parent: HashMap::new(),
    };
    let mut spaces: HashMap<ValueId, Space> = HashMap::new();
    // Elements a channel takes along a member's channel axis (`Flatten` of
    // planes: a plane's pixels); 1 when absent.
    let mut block: HashMap<ValueId, usize> = HashMap::new();
    // The heads axis of values that hold a space's channels split into
    // attention heads (`[.., H, D]` after a reshape, then transposed).
    let mut head_axis: HashMap<ValueId, usize> = HashMap::new();
    // Members whose channels are axis 1 (images, from convolutions); the
    // others' are the last axis (rows of products).
    let mut image: std::collections::HashSet<ValueId> = std::collections::HashSet::new();
    let rank = |v: ValueId| g.ty(v).shape.dims().len();
    // A constant vector of `n` values (a bias).
    let const_1d = |v: Option<ValueId>, n: usize| {
        v.and_then(|v| g.const_value(v))
            .is_some_and(|t| t.shape() == [n])
    };
    let freeze =
        |sets: &mut Sets, spaces: &mut HashMap<ValueId, Space>, v: ValueId, why: String| {
            if let Some(r) = sets.find(v) {
                if let Some(s) = spaces.get_mut(&r) {
                    s.frozen.get_or_insert(why);
                }
            }
        };
    let join = |sets: &mut Sets, spaces: &mut HashMap<ValueId, Space>, a: ValueId, b: ValueId| {
        let Some((ra, rb)) = sets.union(a, b) else {
            return;
        };
        if ra != rb {
            // A value new to the spaces (`b` just added) brings nothing.
            if let Some(sb) = spaces.remove(&rb) {
                let sa = spaces.entry(ra).or_default();
                if sa.channels != sb.channels {
                    sa.frozen
                        .get_or_insert("joins spaces of different widths".into());
                }
                sa.producers.extend(sb.producers);
                sa.slices.extend(sb.slices);
                sa.consumers.extend(sb.consumers);
                sa.depthwise.extend(sb.depthwise);
                sa.head_shapes.extend(sb.head_shapes);
                match (sa.unit.max(1), sb.unit.max(1)) {
                    (a, b) if a == b => {}
                    (1, b) => sa.unit = b,
                    (_, 1) => {}
                    _ => {
                        sa.frozen
                            .get_or_insert("joins heads of different widths".into());
                    }
                }
                if sa.frozen.is_none() {
                    sa.frozen = sb.frozen;
                }
            }
        }
    };
    for id in g.topo_order()? {
        let Some(node) = g.node(id) else { continue };
        let x = node.input(0);
        let out = node.outputs.first().copied();
        let in_space = |sets: &mut Sets, v: Option<ValueId>| v.and_then(|v| sets.find(v)).is_some();
        // A member that holds channels (not split into heads).
        let channels_in = |sets: &mut Sets, v: Option<ValueId>| {
            v.is_some_and(|v| !head_axis.contains_key(&v)) && in_space(sets, v)
        };
        let weight = node.input(1).filter(|&w| g.is_const(w));
        let w_shape = weight
            .and_then(|w| g.const_value(w))
            .map(|t| t.shape().to_vec());
        let shared = weight.is_some_and(|w| g.use_count(w) > 1 || g.is_output(w));
        let mut handled_inputs = vec![false; node.inputs.len()];
        match (&node.op, &w_shape) {
            (Op::Conv(a) | Op::FusedConv { conv: a, .. }, Some(ws)) if ws.len() >= 3 => {
                let (m, cg) = (ws[0], ws[1]);
                let c = x.and_then(|x| g.ty(x).shape.dims().get(1)?.known());
                let depthwise = a.group > 1 && cg == 1 && Some(a.group) == c && m == a.group;
                if depthwise {
                    // Channel j stays channel j: the output joins the input.
                    if let (Some(x), Some(o), Some(w)) = (x, out, weight) {
                        if channels_in(&mut sets, Some(x)) && image.contains(&x) && !shared {
                            sets.add(o);
                            image.insert(o);
                            join(&mut sets, &mut spaces, x, o);
                            let r = sets.find(o).expect("just joined");
                            let s = spaces.entry(r).or_default();
                            s.slices.push((w, 0, 1));
                            if let Some(b) = node.input(2).filter(|&b| const_1d(Some(b), m)) {
                                s.slices.push((b, 0, 1));
                            }
                            s.depthwise.push(id);
                            handled_inputs[0] = true;
                        }
                    }
                } else if a.group == 1 {
                    if let (Some(x), Some(w)) = (x, weight) {
                        if channels_in(&mut sets, Some(x)) && image.contains(&x) && !shared {
                            let r = sets.find(x).expect("in a space");
                            if let Some(s) = spaces.get_mut(&r) {
                                s.consumers.push((node.name.clone(), x, w, 1, 1));
                                s.slices.push((w, 1, 1));
                            }
                            handled_inputs[0] = true;
                        }
                    }
                    // Its output opens a space.
                    if let (Some(o), Some(w)) = (out, weight) {
                        sets.add(o);
                        image.insert(o);
                        let s = spaces.entry(o).or_default();
                        s.channels = m;
                        s.producers.push(node.name.clone());
                        s.slices.push((w, 0, 1));
                        if shared {
                            s.frozen = Some(format!("'{}' shares its weight", node.name));
                        }
                        match node.input(2) {
                            Some(b) if const_1d(Some(b), m) => s.slices.push((b, 0, 1)),
                            Some(_) => s.frozen = Some("a bias that is not a constant".into()),
                            None => {}
                        }
                    }
                }
                handled_inputs[1] = true;
                if let Some(h) = handled_inputs.get_mut(2) {
                    *h = true;
                }
                // The residual of a FusedConv: the same channels as the output.
                if let (Op::FusedConv { .. }, Some(r), Some(o)) = (&node.op, node.input(3), out) {
                    if sets.find(o).is_some() && in_space(&mut sets, Some(r)) && image.contains(&r)
                    {
                        join(&mut sets, &mut spaces, o, r);
                    } else if let Some(o) = sets.find(o) {
                        if let Some(s) = spaces.get_mut(&o) {
                            s.frozen
                                .get_or_insert("a residual from outside any space".into());
                        }
                    }
                    if let Some(h) = handled_inputs.get_mut(3) {
                        *h = true;
                    }
                }
            }
            (
                Op::MatMul
                | Op::FusedMatMul { trans_a: false, .. }
                | Op::Gemm { trans_a: false, .. },
                Some(ws),
            ) if ws.len() == 2 => {
                let trans_b = matches!(
                    node.op,
                    Op::FusedMatMul { trans_b: true, .. } | Op::Gemm { trans_b: true, .. }
                );
                let (k_axis, n_axis) = if trans_b { (1, 0) } else { (0, 1) };
                let n = ws[n_axis];
                if let (Some(x), Some(w)) = (x, weight) {
                    // It reduces over the last axis: the channels' only for
                    // rows of products, or images flattened to [N, C].
                    let last = !image.contains(&x) || rank(x) == 2;
                    if channels_in(&mut sets, Some(x)) && last && !shared {
                        let r = sets.find(x).expect("in a space");
                        let b = block.get(&x).copied().unwrap_or(1);
                        if let Some(s) = spaces.get_mut(&r) {
                            s.consumers.push((node.name.clone(), x, w, k_axis, b));
                            s.slices.push((w, k_axis, b));
                        }
                        handled_inputs[0] = true;
                    }
                }
                if let (Some(o), Some(w)) = (out, weight) {
                    sets.add(o);
                    let s = spaces.entry(o).or_default();
                    s.channels = n;
                    s.producers.push(node.name.clone());
                    s.slices.push((w, n_axis, 1));
                    if shared {
                        s.frozen = Some(format!("'{}' shares its weight", node.name));
                    }
                    match node.input(2) {
                        Some(b) if const_1d(Some(b), n) => s.slices.push((b, 0, 1)),
                        Some(b) if g.const_value(b).is_some_and(|t| t.numel() == 1) => {}
                        Some(_) => s.frozen = Some("a bias that is not a vector".into()),
                        None => {}
                    }
                }
                handled_inputs[1] = true;
                if let Some(h) = handled_inputs.get_mut(2) {
                    *h = true;
                }
            }
            (
                Op::Unary(
                    UnaryOp::Relu
                    | UnaryOp::Sigmoid
                    | UnaryOp::Tanh
                    | UnaryOp::LeakyRelu { .. }
                    | UnaryOp::HardSigmoid { .. }
                    | UnaryOp::HardSwish
                    | UnaryOp::Gelu { .. },
                )
                | Op::Clip
                | Op::MaxPool(_)
                | Op::AveragePool(_)
                | Op::GlobalAveragePool
                | Op::GlobalMaxPool,
                _,
            ) => {
                // Channel j in, channel j out (Clip's bounds are scalars).
                let scalars_only = node
                    .inputs
                    .iter()
                    .skip(1)
                    .flatten()
                    .all(|&v| g.const_value(v).is_some_and(|t| t.numel() == 1));
                let pooling = !matches!(node.op, Op::Unary(_) | Op::Clip);
                if let (Some(x), Some(o), true) = (x, out, scalars_only) {
                    let heads = head_axis.get(&x).copied();
                    // Pooling keeps channels on axis 1 only: images.
                    let fits = !pooling || (heads.is_none() && image.contains(&x));
                    if in_space(&mut sets, Some(x)) && fits {
                        sets.add(o);
                        join(&mut sets, &mut spaces, x, o);
                        if let Some(h) = heads {
                            head_axis.insert(o, h);
                        }
                        if image.contains(&x) {
                            image.insert(o);
                        }
                        handled_inputs.iter_mut().for_each(|h| *h = true);
                    }
                }
            }
            (Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul), _) => {
                // A residual sum (both operands in spaces, same shape) joins
                // them; a scalar constant operand leaves channels alone.
                let (a, b) = (x, node.input(1));
                let scalar = |v: Option<ValueId>| {
                    v.and_then(|v| g.const_value(v))
                        .is_some_and(|t| t.numel() == 1)
                };
                let same_shape = |a: ValueId, b: ValueId| g.ty(a).shape == g.ty(b).shape;
                // Channels on the same axis of both (and heads, blocks).
                let alike = |a: ValueId, b: ValueId| {
                    same_shape(a, b)
                        && block.get(&a) == block.get(&b)
                        && head_axis.get(&a) == head_axis.get(&b)
                        && image.contains(&a) == image.contains(&b)
                };
                let kept = match (a, b, out) {
                    (Some(a), Some(b), Some(o))
                        if in_space(&mut sets, Some(a))
                            && in_space(&mut sets, Some(b))
                            && alike(a, b) =>
                    {
                        join(&mut sets, &mut spaces, a, b);
                        Some((a, o))
                    }
                    (Some(a), b, Some(o)) if in_space(&mut sets, Some(a)) && scalar(b) => {
                        Some((a, o))
                    }
                    (a, Some(b), Some(o)) if in_space(&mut sets, Some(b)) && scalar(a) => {
                        Some((b, o))
                    }
                    _ => None,
                };
                // The output carries the operand's channels.
                if let Some((v, o)) = kept {
                    sets.add(o);
                    join(&mut sets, &mut spaces, v, o);
                    if let Some(&h) = head_axis.get(&v) {
                        head_axis.insert(o, h);
                    }
                    if image.contains(&v) {
                        image.insert(o);
                    }
                    handled_inputs.iter_mut().for_each(|h| *h = true);
                }
            }
            (Op::Reshape { allowzero: false }, _) => {
                // Into heads: [.., C] -> [.., H, D] by a constant target
                // [0, .., H, D] (see `canonical_reshapes`); out of them:
                // [.., H, D] -> [.., H·D] by [0, .., -1].
                let target = node
                    .input(1)
                    .and_then(|t| g.const_value(t))
                    .and_then(|t| t.as_i64().map(<[i64]>::to_vec));
                let rank = x.map_or(0, |x| g.ty(x).shape.dims().len());
                if let (Some(x), Some(o), Some(t)) = (x, out, target) {
                    let zeros = |n: usize| t.len() >= n && t[..n].iter().all(|&d| d == 0);
                    let root = sets.find(x);
                    let channels = root.and_then(|r| spaces.get(&r)).map_or(0, |s| s.channels);
                    let split = t.len() == rank + 1
                        && rank >= 1
                        && zeros(rank - 1)
                        && !block.contains_key(&x)
                        && !head_axis.contains_key(&x)
                        && !image.contains(&x)
                        && t[rank - 1] > 0
                        && t[rank] > 0
                        && (t[rank - 1] * t[rank]) as usize == channels;
                    let merge = t.len() + 1 == rank
                        && rank >= 2
                        && zeros(rank - 2)
                        && t[rank - 2] == -1
                        && head_axis.get(&x) == Some(&(rank - 2));
                    if root.is_some() && split {
                        sets.add(o);
                        join(&mut sets, &mut spaces, x, o);
                        head_axis.insert(o, rank - 1);
                        let r = sets.find(o).expect("just joined");
                        let sp = spaces.entry(r).or_default();
                        let d = t[rank] as usize;
                        if sp.unit > 1 && sp.unit != d {
                            sp.frozen.get_or_insert("heads of different widths".into());
                        }
                        sp.unit = d;
                        if let Some(c) = node.input(1) {
                            sp.head_shapes.push((c, rank - 1));
                        }
                        handled_inputs.iter_mut().for_each(|h| *h = true);
                    } else if root.is_some() && merge {
                        sets.add(o);
                        join(&mut sets, &mut spaces, x, o);
                        handled_inputs.iter_mut().for_each(|h| *h = true);
                    }
                }
            }
            (Op::Transpose { perm }, _) => {
                // Heads move with the permutation.
                if let (Some(x), Some(o)) = (x, out) {
                    if let Some(&h) = head_axis.get(&x) {
                        if let Some(to) = perm.iter().position(|&p| p == h) {
                            sets.add(o);
                            join(&mut sets, &mut spaces, x, o);
                            head_axis.insert(o, to);
                            handled_inputs[0] = true;
                        }
                    }
                }
            }
            (Op::MatMul, None) => {
                // Attention: head h of one operand meets head h of the
                // other (the heads a batch axis of both).
                let (a, b) = (x, node.input(1));
                if let (Some(a), Some(b), Some(o)) = (a, b, out) {
                    let (ha, hb) = (head_axis.get(&a).copied(), head_axis.get(&b).copied());
                    let ranks = (g.ty(a).shape.dims().len(), g.ty(b).shape.dims().len());
                    if let (Some(ha), Some(hb)) = (ha, hb) {
                        if ha == hb && ranks.0 == ranks.1 && ha + 2 < ranks.0 {
                            join(&mut sets, &mut spaces, a, b);
                            sets.add(o);
                            join(&mut sets, &mut spaces, a, o);
                            head_axis.insert(o, ha);
                            handled_inputs.iter_mut().for_each(|h| *h = true);
                        }
                    }
                }
            }
            (Op::Elementwise { .. } | Op::Softmax { .. }, _) => {
                // One operand split into heads, the others the same for
                // every head (size 1 on that axis, or scalars); Softmax
                // over another axis.
                let heads: Vec<(usize, ValueId, usize)> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| Some((i, (*v)?, *head_axis.get(&(*v)?)?)))
                    .collect();
                let softmax_ok = match &node.op {
                    Op::Softmax { axis, .. } => heads.first().is_some_and(|&(_, v, h)| {
                        let rank = g.ty(v).shape.dims().len() as i64;
                        (if *axis < 0 { axis + rank } else { *axis }) != h as i64
                    }),
                    _ => true,
                };
                if let ([(i, v, h)], Some(o), true) = (heads.as_slice(), out, softmax_ok) {
                    let rank = g.ty(*v).shape.dims().len();
                    let broadcast_one = |w: ValueId| {
                        let d = g.ty(w).shape.dims();
                        // Aligned to the right: the head axis's counterpart.
                        let lead = rank as isize - d.len() as isize;
                        let at = *h as isize - lead;
                        at < 0 || d[at as usize].known() == Some(1)
                    };
                    let others_ok = node
                        .inputs
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| j != i)
                        .all(|(_, w)| w.is_none_or(|w| sets.root(w).is_none() && broadcast_one(w)));
                    if others_ok && g.ty(o).shape.dims().len() == rank {
                        sets.add(o);
                        join(&mut sets, &mut spaces, *v, o);
                        head_axis.insert(o, *h);
                        handled_inputs.iter_mut().for_each(|h| *h = true);
                    }
                }
            }
            (Op::Flatten { axis: 1 }, _) => {
                // [N, C, H, W] -> [N, C·H·W]: channel j is the run of
                // columns j·H·W .. (j + 1)·H·W (a consumer reading a value
                // already in blocks cannot be flattened further).
                let plane = x.and_then(|x| {
                    let dims = g.ty(x).shape.dims().get(2..)?;
                    dims.iter().map(|d| d.known()).product::<Option<usize>>()
                });
                // Channels on axis 1: an image, or rows already [N, C].
                let flat = x.is_some_and(|x| {
                    !block.contains_key(&x)
                        && !head_axis.contains_key(&x)
                        && (image.contains(&x) || rank(x) == 2)
                });
                if let (Some(x), Some(o), Some(plane), true) = (x, out, plane, flat) {
                    if in_space(&mut sets, Some(x)) {
                        sets.add(o);
                        join(&mut sets, &mut spaces, x, o);
                        if plane > 1 {
                            block.insert(o, plane);
                        }
                        handled_inputs[0] = true;
                    }
                }
            }
            _ => {}
        }
        for (i, v) in node.inputs.iter().enumerate() {
            if let (Some(v), false) = (v, handled_inputs[i]) {
                freeze(
                    &mut sets,
                    &mut spaces,
                    *v,
                    format!("read by '{}' ({})", node.name, node.op.onnx_type()),
                );
            }
        }
    }
    for &o in &g.outputs {
        freeze(&mut sets, &mut spaces, o, "a graph output".into());
    }
    Ok(spaces.into_iter().collect())
}

/// Gives every Reshape that splits a last axis into two (`[.., C] ->
/// [.., H, D]`) or merges the last two (`[.., H, D] -> [.., H·D]`) a
/// constant target (`[0, .., H, D]`, `[0, .., -1]`: ONNX's 0 copies the
/// input's size) in place of the computed one, and drops what computed
/// it: the same shapes, but the head count is now a constant that channel
/// pruning can change, and no `Shape` of the activation is left to freeze
/// its space.
fn canonical_reshapes(g: &mut Graph) -> Result<()> {
    let mut targets: Vec<(crate::ir::NodeId, Vec<i64>)> = Vec::new();
    for (id, node) in g.nodes() {
        if !matches!(node.op, Op::Reshape { allowzero: false }) {
            continue;
        }
        let (Some(x), Some(&o)) = (node.input(0), node.outputs.first()) else {
            continue;
        };
        let (i, o) = (g.ty(x).shape.dims(), g.ty(o).shape.dims());
        let known = |d: &crate::ir::Dim| d.known().map(|v| v as i64);
        let target = if o.len() == i.len() + 1
            && !i.is_empty()
            && i[..i.len() - 1] == o[..i.len() - 1]
        {
            let (c, h, d) = (
                known(&i[i.len() - 1]),
                known(&o[i.len() - 1]),
                known(&o[i.len()]),
            );
            match (c, h, d) {
                (Some(c), Some(h), Some(d)) if h * d == c && h > 0 => {
                    let mut t = vec![0i64; i.len() - 1];
                    t.extend([h, d]);
                    Some(t)
                }
                _ => None,
            }
        } else if i.len() == o.len() + 1 && !o.is_empty() && i[..o.len() - 1] == o[..o.len() - 1] {
            let (h, d, c) = (
                known(&i[o.len() - 1]),
                known(&i[o.len()]),
                known(&o[o.len() - 1]),
            );
            match (h, d, c) {
                (Some(h), Some(d), Some(c)) if h * d == c => {
                    let mut t = vec![0i64; o.len() - 1];
                    t.push(-1);
                    Some(t)
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(t) = target {
            targets.push((id, t));
        }
    }
    if targets.is_empty() {
        return Ok(());
    }
    for (id, t) in targets {
        let name = match g.node(id) {
            Some(n) => format!("{}.target", n.name),
            None => continue,
        };
        let n = t.len();
        let c = Tensor::new(vec![n], crate::ir::TensorData::I64(t))
            .map_err(|e| Error::Internal(format!("reshape target: {e}")))?;
        let c = g.add_const(name, c);
        if let Some(node) = g.node_mut(id) {
            node.inputs[1] = Some(c);
        }
    }
    crate::transform::dce::remove_dead(g)?;
    infer::infer_graph(g)
}

/// `t` keeping only the channels `keep` (sorted) of `axis`, each `block`
/// consecutive indices of it.
fn slice(t: &Tensor, axis: usize, block: usize, keep: &[usize]) -> Result<Tensor> {
    let shape = t.shape();
    let data = t
        .as_f32()
        .ok_or_else(|| Error::Internal("channel pruning of a weight that is not f32".into()))?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * block;
    let n = shape[axis] / block.max(1);
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let at = (o * n + k) * inner;
            out.extend_from_slice(&data[at..at + inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[axis] = keep.len() * block;
    Tensor::from_f32(new_shape, out).map_err(|e| Error::Internal(format!("sliced weight: {e}")))
}

/// Each channel's importance in `s`: over its consumers, the channel's
/// norm over the data (`norms`, by activation value; 1 without) times the
/// norm of the consumer's weights that read it.
fn importance(g: &Graph, s: &Space, norms: &HashMap<ValueId, Vec<f32>>) -> Vec<f64> {
    let mut score = vec![0.0f64; s.channels];
    for (_, x, w, axis, block) in &s.consumers {
        let Some(t) = g.const_value(*w) else { continue };
        let Some(data) = t.as_f32() else { continue };
        let shape = t.shape();
        // Index `i` of the weight's axis is column `i` of the activation.
        let n = shape[*axis];
        if n != s.channels * block {
            continue;
        }
        let inner: usize = shape[axis + 1..].iter().product();
        let mut sq = vec![0.0f64; n];
        for (i, &v) in data.iter().enumerate() {
            sq[(i / inner) % n] += (v as f64) * (v as f64);
        }
        let xn = norms.get(x);
        for (i, q) in sq.iter().enumerate() {
            let a = xn.and_then(|v| v.get(i)).map_or(1.0, |&a| a as f64);
            score[i / block] += a * q.sqrt();
        }
    }
    score
}

/// `g` with `fraction` of the channels of every space that is not frozen
/// removed (at least one kept; whole heads from a space split into heads,
/// `heads` of them when given), least important first by `norms` (each
/// consumer's input channel norms over the data, by value).
pub fn prune_channels(
    g: &Graph,
    fraction: f64,
    heads: Option<usize>,
    norms: &HashMap<ValueId, Vec<f32>>,
) -> Result<Pruned> {
    let mut g = g.clone();
    canonical_reshapes(&mut g)?;
    let g = &g;
    let spaces = spaces(g)?;
    let mut out = g.clone();
    let mut reports = Vec::new();
    for s in spaces.values() {
        if s.producers.is_empty() {
            continue;
        }
        // Whole units (heads) go.
        let unit = s.unit.max(1);
        let units = s.channels / unit;
        let remove_units = match &s.frozen {
            None if s.consumers.is_empty() || units * unit != s.channels => 0,
            None => match heads.filter(|_| unit > 1) {
                Some(h) => h,
                None => (fraction * units as f64).round() as usize,
            }
            .min(units.saturating_sub(1)),
            Some(_) => 0,
        };
        let remove = remove_units * unit;
        let kept_because = match (&s.frozen, s.consumers.is_empty()) {
            (Some(why), _) => Some(why.clone()),
            (None, true) => Some("no convolution or product reads it".into()),
            _ => None,
        };
        reports.push(SpaceReport {
            producers: s.producers.clone(),
            channels_before: s.channels,
            channels_after: s.channels - remove,
            head_width: (unit > 1).then_some(unit),
            kept_because,
        });
        if remove == 0 {
            continue;
        }
        let score = importance(g, s, norms);
        let unit_score: Vec<f64> = score.chunks(unit).map(|c| c.iter().sum()).collect();
        let mut order: Vec<usize> = (0..units).collect();
        order.sort_by(|&a, &b| unit_score[a].total_cmp(&unit_score[b]).then(a.cmp(&b)));
        let mut kept_units: Vec<usize> = order[remove_units..].to_vec();
        kept_units.sort_unstable();
        let keep: Vec<usize> = kept_units
            .iter()
            .flat_map(|&u| u * unit..(u + 1) * unit)
            .collect();
        for &(c, at) in &s.head_shapes {
            let t = out
                .const_value(c)
                .and_then(|t| t.as_i64())
                .map(<[i64]>::to_vec)
                .ok_or_else(|| Error::Internal("a head reshape target is not constant".into()))?;
            let mut t = t;
            t[at] = kept_units.len() as i64;
            let n = t.len();
            let new = Tensor::new(vec![n], crate::ir::TensorData::I64(t))
                .map_err(|e| Error::Internal(format!("reshape target: {e}")))?;
            out.consts.insert(c, new.into());
        }
        let mut seen = std::collections::HashSet::new();
        for &(v, axis, block) in &s.slices {
            if !seen.insert((v, axis)) {
                continue;
            }
            let t = out
                .const_value(v)
                .ok_or_else(|| Error::Internal("a sliced weight is not constant".into()))?;
            let sliced = slice(t, axis, block, &keep)?;
            out.value_mut(v).ty = TensorType::new(sliced.dtype(), Shape::known(sliced.shape()));
            out.consts.insert(v, sliced.into());
        }
        for &id in &s.depthwise {
            if let Some(Op::Conv(a) | Op::FusedConv { conv: a, .. }) =
                out.node_mut(id).map(|n| &mut n.op)
            {
                a.group = keep.len();
            }
        }
    }
    infer::infer_graph(&mut out)?;
    Ok(Pruned {
        graph: out,
        spaces: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x [batch, 4, 5, 5] -> 1x1 conv to 8 -> depthwise 3x3 -> 1x1 conv
    /// to 4 (the output): an inverted residual block without the sum.
    fn block() -> Graph {
        use crate::ir::{ConvAttrs, DType, Dim, Node};
        let mut g = Graph::new("block", 17);
        let image = |c: usize| {
            TensorType::new(
                DType::F32,
                Shape(vec![
                    Dim::sym("batch"),
                    Dim::Known(c),
                    Dim::Known(5),
                    Dim::Known(5),
                ]),
            )
        };
        let x = g.add_input("x", image(4));
        let conv =
            |g: &mut Graph, name: &str, input, m: usize, c: usize, k: usize, group: usize| {
                let n = m * c * k * k;
                let w = Tensor::from_f32(
                    vec![m, c, k, k],
                    (0..n).map(|i| (i % 7) as f32 - 3.0).collect(),
                );
                let w = g.add_const(format!("{name}.w"), w.unwrap());
                let b = g.add_const(
                    format!("{name}.b"),
                    Tensor::from_f32(vec![m], vec![0.5; m]).unwrap(),
                );
                let o = g.add_value(format!("{name}.out"), image(m));
                let attrs = ConvAttrs {
                    kernel_shape: vec![k, k],
                    strides: vec![1, 1],
                    dilations: vec![1, 1],
                    pads: vec![k / 2; 4],
                    auto_pad: crate::ir::AutoPad::NotSet,
                    group,
                };
                g.add_node(Node {
                    name: name.into(),
                    op: Op::Conv(attrs),
                    inputs: vec![Some(input), Some(w), Some(b)],
                    outputs: vec![o],
                });
                o
            };
        let a = conv(&mut g, "expand", x, 8, 4, 1, 1);
        let d = conv(&mut g, "dw", a, 8, 1, 3, 8);
        let y = conv(&mut g, "project", d, 4, 8, 1, 1);
        g.outputs.push(y);
        infer::infer_graph(&mut g).unwrap();
        g
    }

    #[test]
    fn depthwise_convolutions_carry_their_channels() {
        let g = block();
        let p = prune_channels(&g, 0.25, None, &HashMap::new()).unwrap();
        let shape = |name: &str| {
            let (v, _) = p
                .graph
                .consts
                .iter()
                .find(|(v, _)| p.graph.value(**v).name == name)
                .unwrap();
            p.graph.const_value(*v).unwrap().shape().to_vec()
        };
        // 8 -> 6 channels through the depthwise convolution; the output's
        // 4 are the graph's and stay.
        assert_eq!(shape("expand.w"), [6, 4, 1, 1]);
        assert_eq!(shape("expand.b"), [6]);
        assert_eq!(shape("dw.w"), [6, 1, 3, 3]);
        assert_eq!(shape("project.w"), [4, 6, 1, 1]);
        let dw = p.graph.nodes().find(|(_, n)| n.name == "dw").unwrap().1;
        assert!(matches!(&dw.op, Op::Conv(a) if a.group == 6));
        let spaces: Vec<(usize, usize)> = p
            .spaces
            .iter()
            .map(|s| (s.channels_before, s.channels_after))
            .collect();
        assert_eq!(spaces, [(8, 6), (4, 4)]);
        // The pruned block still runs in the reference interpreter.
        let x = Tensor::from_f32(vec![1, 4, 5, 5], vec![0.1; 100]).unwrap();
        crate::interp::run(&p.graph, vec![x]).unwrap();
    }

    #[test]
    fn slicing_keeps_the_chosen_indices_of_an_axis() {
        let t = Tensor::from_f32(vec![2, 3, 2], (0..12).map(|i| i as f32).collect()).unwrap();
        let s = slice(&t, 1, 1, &[0, 2]).unwrap();
        assert_eq!(s.shape(), [2, 2, 2]);
        assert_eq!(
            s.as_f32().unwrap(),
            [0.0, 1.0, 4.0, 5.0, 6.0, 7.0, 10.0, 11.0]
        );
        let s = slice(&t, 0, 1, &[1]).unwrap();
        assert_eq!(s.as_f32().unwrap(), [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        // Channels of 2 consecutive indices (a flattened 2-pixel plane).
        let t = Tensor::from_f32(vec![6, 1], (0..6).map(|i| i as f32).collect()).unwrap();
        let s = slice(&t, 0, 2, &[0, 2]).unwrap();
        assert_eq!(s.as_f32().unwrap(), [0.0, 1.0, 4.0, 5.0]);
    }
}

//! Running a batch item by item.
//!
//! Most vision models compute each item of a batch on its own: every op
//! works along the leading axis independently. Such a batch runs faster as
//! one-item runs than as one run over the whole batch: an item's
//! activations stay in the caches from one layer to the next (ResNet-18's
//! 56x56 layers at batch 8 take 1.2-1.5x longer per image than at batch 1
//! on a Zen 5), and with several threads each thread can run whole items
//! alone, with no barrier between layers and no layer too small to share.
//! Not every step gains: a layer whose weights outweigh one item's
//! activations (ResNet-18's last stages, a transformer's products) reads
//! them again for every item, so only the first steps run item by item,
//! up to where the bytes saved are largest ([`Caches::gain`]), and the
//! rest on the whole batch. ResNet-18 int8 at batch 8 on a Zen 5 (its
//! first 17 of 24 steps by items): 0.79-0.89x the whole batch's time at
//! 1 thread, 0.80-0.95x at 2.
//!
//! [`BatchSplit::of`] decides how far from the start a specialized graph
//! keeps its items apart, rule by rule per op (the leading axis must never
//! be mixed: no reduction, softmax, concatenation or transposition over
//! it, no weight with one entry per item; mlc's dynamic int8 scales are one
//! per item already), picks the cut, and makes the graph of one item for
//! the steps before it (its shapes re-inferred and checked against the
//! batch's) and the graph of the rest. [`Items`] runs them: on one thread
//! the items in turn, on more each thread its own one-item plan, items
//! handed out as threads free up, and a last few items that cannot fill
//! every thread on a plan that shares each of them over all threads; then
//! the rest on the whole batch. Each item's result is the one-item plan's,
//! so a batch gives what its items give one at a time.

use crate::ir::ops::Family;
use crate::ir::{Dim, Graph, NodeId, Op, Tensor, ValueDef, ValueId};

/// Whether a value carries the batch on its leading axis, or does not
/// depend on the items at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carry {
    Items,
    Shared,
}

/// How a batch splits: the graph of one item for the first `cut` steps
/// (in topological order), the rest on the whole batch.
pub(crate) struct BatchSplit {
    pub(crate) batch: usize,
    /// The first steps for one item; its outputs are the values the rest
    /// reads (or the graph's outputs it makes), all carrying the items.
    pub(crate) prefix: Graph,
    /// The rest, on the whole batch, and where each of its inputs comes
    /// from; None when the prefix is the whole graph.
    pub(crate) suffix: Option<(Graph, Vec<Source>)>,
    /// Where each of the graph's outputs comes from.
    pub(crate) outputs: Vec<Source>,
}

/// Where a value of a split run comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The caller's input at this position.
    Caller(usize),
    /// The prefix's output at this position (joined over the items).
    Prefix(usize),
    /// The suffix's output at this position.
    Suffix(usize),
}

/// The items' independence along the graph, in topological order: which
/// values carry the items, and how many steps from the start keep them
/// apart.
struct Separable {
    batch: usize,
    order: Vec<NodeId>,
    carry: Vec<Option<Carry>>,
    /// Steps `order[..separable]` compute each item on its own.
    separable: usize,
    /// Shape constants whose leading entry counts the items, as (node,
    /// input position): rewritten for one item.
    item_shapes: Vec<(NodeId, usize)>,
}

impl Separable {
    /// None when the graph has fewer than two items, or an input without
    /// them on its leading axis.
    fn of(g: &Graph) -> Option<Separable> {
        let shape = |v: ValueId| g.ty(v).shape.concrete();
        let batch = *shape(*g.inputs.first()?)?.first()?;
        if batch < 2 {
            return None;
        }
        let mut carry: Vec<Option<Carry>> = vec![None; g.values.len()];
        for &i in &g.inputs {
            if shape(i)?.first() != Some(&batch) {
                return None;
            }
            carry[i.0 as usize] = Some(Carry::Items);
        }
        for &c in g.consts.keys() {
            carry[c.0 as usize] = Some(Carry::Shared);
        }
        let order = g.topo_order().ok()?;
        let mut item_shapes = Vec::new();
        let mut separable = order.len();
        for (t, &nid) in order.iter().enumerate() {
            let out = g.node(nid).and_then(|node| {
                let ins: Vec<Option<Carry>> = node
                    .inputs
                    .iter()
                    .map(|v| v.and_then(|v| carry[v.0 as usize]))
                    .collect();
                if node
                    .inputs
                    .iter()
                    .zip(&ins)
                    .any(|(v, c)| v.is_some() && c.is_none())
                {
                    return None;
                }
                if ins.iter().all(|c| *c != Some(Carry::Items)) {
                    return Some(Carry::Shared);
                }
                let rule = NodeRule {
                    g,
                    id: nid,
                    node,
                    ins: &ins,
                    batch,
                };
                rule.carries(&mut item_shapes)?;
                let leading = |o: &ValueId| shape(*o).and_then(|s| s.first().copied());
                node.outputs
                    .iter()
                    .all(|o| leading(o) == Some(batch))
                    .then_some(Carry::Items)
            });
            let (Some(out), Some(node)) = (out, g.node(nid)) else {
                separable = t;
                break;
            };
            for &o in &node.outputs {
                carry[o.0 as usize] = Some(out);
            }
        }
        Some(Separable {
            batch,
            order,
            carry,
            separable,
            item_shapes,
        })
    }

    fn carries_items(&self, v: ValueId) -> bool {
        self.carry[v.0 as usize] == Some(Carry::Items)
    }

    /// The values the steps from `cut` on (and the graph's outputs) read
    /// from the first `cut` steps, in first-use order; None when one of
    /// them does not carry the items.
    fn crossing(&self, g: &Graph, cut: usize) -> Option<Vec<ValueId>> {
        let made: std::collections::HashSet<ValueId> = self.order[..cut]
            .iter()
            .filter_map(|&n| g.node(n))
            .flat_map(|n| n.outputs.iter().copied())
            .collect();
        let mut out: Vec<ValueId> = Vec::new();
        let reads = self.order[cut..]
            .iter()
            .filter_map(|&n| g.node(n))
            .flat_map(|n| n.inputs.iter().flatten().copied())
            .chain(g.outputs.iter().copied());
        for v in reads {
            if made.contains(&v) && !out.contains(&v) {
                if !self.carries_items(v) {
                    return None;
                }
                out.push(v);
            }
        }
        Some(out)
    }

    /// Where running the first `cut` steps item by item pays most, by the
    /// bytes each step moves ([`Caches::gain`]); None when nowhere.
    fn best_cut(&self, g: &Graph, caches: &Caches) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        let (mut total, mut weights, mut all_acts) = (0.0, 0usize, 0usize);
        for (t, &nid) in self.order.iter().enumerate() {
            let moved = Moved::of(g, g.node(nid)?, &self.carry);
            all_acts += moved.acts;
            if t >= self.separable {
                continue;
            }
            weights += moved.weights;
            total += caches.gain(&moved, self.batch, weights);
            let cut = t + 1;
            if total > best.map_or(0.0, |b| b.1) && self.crossing(g, cut).is_some() {
                best = Some((cut, total));
            }
        }
        // The byte costs are rough: a gain small against all the
        // activation bytes the graph moves (a transformer's, whose products
        // reuse their blocks from the caches anyway) is not trusted.
        best.filter(|b| b.1 >= MIN_GAIN_SHARE * all_acts as f64)
            .map(|b| b.0)
    }
}

/// The least gain (in byte costs) a split must promise, as a share of
/// the activation bytes of the whole graph: ResNet-18 and MobileNetV2 at
/// batch 8 promise 1.0-1.5, a BERT-style encoder 0.06 (it measured 3%
/// slower split, on a Zen 5).
const MIN_GAIN_SHARE: f64 = 0.25;

/// The bytes a step reads and writes: its activations (the values carrying
/// the items, over the whole batch) and its weights (the rest; a Gather
/// reads only the rows it picks).
struct Moved {
    acts: usize,
    weights: usize,
}

impl Moved {
    fn of(g: &Graph, node: &crate::ir::Node, carry: &[Option<Carry>]) -> Moved {
        let bytes = |v: ValueId| {
            let t = g.ty(v);
            t.shape.numel().unwrap_or(0) * t.dtype.size()
        };
        let (mut acts, mut weights) = (0usize, 0usize);
        for &v in node.inputs.iter().flatten().chain(&node.outputs) {
            match carry[v.0 as usize] {
                Some(Carry::Items) => acts += bytes(v),
                _ => weights += bytes(v),
            }
        }
        if matches!(node.op, Op::Gather { .. }) {
            weights = weights.min(node.outputs.first().map_or(0, |&o| bytes(o)));
        }
        Moved { acts, weights }
    }
}

/// The caches the cost of a split is judged by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caches {
    /// Private level-2 cache of a core.
    pub l2: usize,
    /// The part of the last-level cache a run can count on.
    pub l3: usize,
    pub threads: usize,
}

impl Caches {
    /// What reading a byte costs from where `bytes` of data settle when
    /// `cores` caches share them: nothing from level 2, 1 from the last
    /// level, 3 from memory (about their bandwidths' ratio).
    fn cost(&self, bytes: usize, cores: usize) -> f64 {
        if bytes <= self.l2 * cores {
            0.0
        } else if bytes <= self.l3 {
            1.0
        } else {
            3.0
        }
    }

    /// What running a step item by item saves (in byte costs) over running
    /// it on the whole `batch`: its activations come from where one item's
    /// settle (on one core) instead of where the batch's do (on all), and
    /// its weights are read once per item instead of once, from where the
    /// weights of every step so far (`weights_so_far`) settle.
    fn gain(&self, m: &Moved, batch: usize, weights_so_far: usize) -> f64 {
        let item = m.acts / batch;
        let acts = m.acts as f64 * (self.cost(m.acts, self.threads) - self.cost(item, 1));
        let weight_cost = ((batch - 1) * m.weights) as f64 * self.cost(weights_so_far, 1);
        acts - weight_cost
    }
}

impl BatchSplit {
    /// How `g` (specialized: every shape concrete) runs item by item, when
    /// it has more than one item and that pays for some first steps by
    /// [`Caches::gain`] (see the module docs).
    pub(crate) fn of(g: &Graph, caches: &Caches) -> Option<BatchSplit> {
        let sep = Separable::of(g)?;
        let cut = sep.best_cut(g, caches)?;
        BatchSplit::at(g, &sep, cut)
    }

    /// The split after step `cut` of `sep.order`.
    fn at(g: &Graph, sep: &Separable, cut: usize) -> Option<BatchSplit> {
        let crossing = sep.crossing(g, cut)?;
        let prefix = one_item_prefix(g, sep, cut, &crossing)?;
        let caller = |v: ValueId| g.inputs.iter().position(|&i| i == v).map(Source::Caller);
        let from_prefix = |v: ValueId| crossing.iter().position(|&c| c == v).map(Source::Prefix);
        let suffix = match cut < sep.order.len() {
            false => None,
            true => {
                let mut rest = g.clone();
                for &n in &sep.order[..cut] {
                    rest.remove_node(n);
                }
                let mut reads: Vec<ValueId> = Vec::new();
                for &n in &sep.order[cut..] {
                    for &v in rest.node(n)?.inputs.iter().flatten() {
                        let outside = caller(v).is_some() || from_prefix(v).is_some();
                        if outside && !reads.contains(&v) {
                            reads.push(v);
                        }
                    }
                }
                for &v in &reads {
                    rest.value_mut(v).def = ValueDef::Input;
                }
                rest.inputs = reads.clone();
                rest.outputs
                    .retain(|v| caller(*v).is_none() && from_prefix(*v).is_none());
                let sources = reads
                    .iter()
                    .map(|&v| caller(v).or_else(|| from_prefix(v)))
                    .collect::<Option<Vec<_>>>()?;
                Some((rest, sources))
            }
        };
        let suffix_outs: Vec<ValueId> = suffix.as_ref().map_or(Vec::new(), |s| s.0.outputs.clone());
        let outputs = g
            .outputs
            .iter()
            .map(|&o| {
                caller(o)
                    .or_else(|| from_prefix(o))
                    .or_else(|| suffix_outs.iter().position(|&s| s == o).map(Source::Suffix))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(BatchSplit {
            batch: sep.batch,
            prefix,
            suffix,
            outputs,
        })
    }
}

/// The graph of one item for the first `cut` steps, its outputs
/// `crossing`, shapes re-inferred and checked: every value as in `g`, with
/// one item where it carries them.
fn one_item_prefix(g: &Graph, sep: &Separable, cut: usize, crossing: &[ValueId]) -> Option<Graph> {
    let mut one = g.clone();
    for &n in &sep.order[cut..] {
        one.remove_node(n);
    }
    one.outputs = crossing.to_vec();
    let in_prefix: std::collections::HashSet<NodeId> = sep.order[..cut].iter().copied().collect();
    for (pos, (nid, input)) in sep.item_shapes.iter().enumerate() {
        if !in_prefix.contains(nid) {
            continue;
        }
        let v = g.node(*nid)?.input(*input)?;
        let mut dims = g.const_value(v)?.as_i64()?.to_vec();
        dims[0] = 1;
        let name = format!("{}.one_item{pos}", g.value(v).name);
        let c = one.add_const(name, Tensor::vec_i64(dims));
        one.node_mut(*nid)?.inputs[*input] = Some(c);
    }
    for &i in &g.inputs {
        one.value_mut(i).ty.shape.0[0] = Dim::Known(1);
    }
    crate::ir::infer::infer_graph(&mut one).ok()?;
    let live = sep.order[..cut]
        .iter()
        .filter_map(|&n| g.node(n))
        .flat_map(|n| n.outputs.iter().copied())
        .chain(g.inputs.iter().copied());
    for id in live {
        let mut want = g.ty(id).shape.concrete()?;
        if sep.carries_items(id) {
            want[0] = 1;
        }
        if one.ty(id).shape.concrete()? != want {
            return None;
        }
    }
    Some(one)
}

/// One node with at least one input carrying the items.
struct NodeRule<'a> {
    g: &'a Graph,
    id: NodeId,
    node: &'a crate::ir::Node,
    ins: &'a [Option<Carry>],
    batch: usize,
}

impl NodeRule<'_> {
    /// Some(()) when the node keeps the items on the leading axis of every
    /// output and never mixes them; shape constants to rewrite go to
    /// `item_shapes` as (node, input position).
    fn carries(&self, item_shapes: &mut Vec<(NodeId, usize)>) -> Option<()> {
        let rank = self.out_rank()?;
        let ok = match &self.node.op {
            // Elementwise, with broadcasting.
            op if op.family() == Family::Math => self.broadcasts(),
            Op::Identity | Op::Dropout | Op::Elementwise { .. } => self.broadcasts(),
            Op::QuantizeLinear {
                axis, block_size, ..
            }
            | Op::DequantizeLinear { axis, block_size } => {
                *block_size == 0
                    && self.broadcasts()
                    && (self.axis(*axis)? != 0 || self.side_inputs_scalar())
            }
            Op::Conv(_)
            | Op::ConvTranspose(_)
            | Op::FusedConv { .. }
            | Op::InstanceNormalization { .. }
            | Op::Lrn { .. }
            | Op::GlobalAveragePool
            | Op::GlobalMaxPool
            | Op::AveragePool(_) => self.per_item_input(),
            Op::MaxPool(_) => self.node.outputs.len() == 1 && self.per_item_input(),
            Op::BatchNormalization {
                training_momentum, ..
            } => training_momentum.is_none() && self.per_item_input(),
            // A dynamic activation scale is one per item (the leading axis,
            // `quant_items`), so an item is quantized alike alone.
            Op::QConv { .. } => self.per_item_input(),
            Op::LayerNormalization { axis, .. } => self.axis(*axis)? != 0 && self.per_item_input(),
            Op::Softmax { axis, .. } | Op::LogSoftmax { axis, .. } | Op::Hardmax { axis } => {
                self.axis(*axis)? != 0
            }
            Op::ArgMax { axis, .. } | Op::ArgMin { axis, .. } => self.axis(*axis)? != 0,
            Op::Flatten { axis } => self.axis(*axis)? != 0,
            Op::Concat { axis } => self.axis(*axis)? != 0 && self.all_carry(),
            Op::Split { axis, .. } => self.axis(*axis)? != 0 && self.only_first_carries(),
            Op::Transpose { perm } => perm.first() == Some(&0),
            Op::MatMul | Op::FusedMatMul { .. } => self.matmul(),
            Op::Gemm { trans_a, .. } => !trans_a && self.only_first_carries(),
            Op::QMatMul { .. } => self.per_item_input() && rank >= 2 && self.in_rank(0)? >= 2,
            Op::Gather { axis } => match (self.ins[0], self.ins[1]) {
                (Some(Carry::Items), Some(Carry::Shared)) => self.axis(*axis)? != 0,
                (Some(Carry::Shared), Some(Carry::Items)) => self.axis(*axis)? == 0,
                _ => false,
            },
            Op::Squeeze | Op::Unsqueeze => self.axes_input_avoid_first(1, rank)?,
            Op::Reduce {
                noop_with_empty_axes,
                ..
            } => match self.node.input(1) {
                Some(_) => self.axes_input_avoid_first(1, self.in_rank(0)?)?,
                None => *noop_with_empty_axes,
            },
            Op::Pad { .. } => {
                let pads = self.const_i64(1)?;
                let r = self.in_rank(0)?;
                self.only_first_carries() && pads.len() == 2 * r && pads[0] == 0 && pads[r] == 0
            }
            Op::Resize(_) => {
                self.only_first_carries()
                    && self.node.input(3).is_none()
                    && self.const_f32(2).is_some_and(|s| s.first() == Some(&1.0))
            }
            Op::Tile => self.only_first_carries() && self.const_i64(1)?.first() == Some(&1),
            Op::Reshape { .. } | Op::Expand => {
                let dims = self.const_i64(1)?;
                let first_in = self.in_shape(0)?.first().copied();
                let item_dim = match dims.first() {
                    Some(&d) if d == self.batch as i64 => {
                        item_shapes.push((self.id, 1));
                        true
                    }
                    // Reshape: copy the input's dim, or infer it (the
                    // output's leading dim is checked to be the batch).
                    Some(&d) => {
                        matches!(self.node.op, Op::Reshape { allowzero: false })
                            && (d == 0 || d == -1)
                    }
                    None => false,
                };
                item_dim
                    && self.only_first_carries()
                    && first_in == Some(self.batch)
                    && (!matches!(self.node.op, Op::Expand) || dims.len() == self.in_rank(0)?)
            }
            _ => false,
        };
        ok.then_some(())
    }

    fn in_shape(&self, pos: usize) -> Option<Vec<usize>> {
        self.g.ty(self.node.input(pos)?).shape.concrete()
    }

    fn in_rank(&self, pos: usize) -> Option<usize> {
        self.in_shape(pos).map(|s| s.len())
    }

    fn out_rank(&self) -> Option<usize> {
        Some(self.g.ty(*self.node.outputs.first()?).shape.0.len())
    }

    /// An axis attribute normalized against input 0's rank.
    fn axis(&self, axis: i64) -> Option<usize> {
        let rank = self.in_rank(0)? as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        (0..rank.max(1)).contains(&a).then_some(a as usize)
    }

    fn const_i64(&self, pos: usize) -> Option<Vec<i64>> {
        self.g.const_value(self.node.input(pos)?)?.to_i64_vec()
    }

    fn const_f32(&self, pos: usize) -> Option<Vec<f32>> {
        Some(self.g.const_value(self.node.input(pos)?)?.to_f32_vec())
    }

    /// Only input 0 carries the items.
    fn only_first_carries(&self) -> bool {
        self.ins[0] == Some(Carry::Items) && self.ins[1..].iter().all(|c| *c != Some(Carry::Items))
    }

    /// Every present input carries the items.
    fn all_carry(&self) -> bool {
        self.ins.iter().all(|c| c.is_none_or(|c| c == Carry::Items))
    }

    /// Input 0 carries the items; other inputs are weights, or (residuals)
    /// carry the items in exactly the output's shape.
    fn per_item_input(&self) -> bool {
        let out = self.g.ty(self.node.outputs[0]).shape.concrete();
        self.ins[0] == Some(Carry::Items)
            && self.ins[1..].iter().enumerate().all(|(i, c)| {
                *c != Some(Carry::Items) || self.in_shape(i + 1).is_some_and(|s| Some(s) == out)
            })
    }

    /// Broadcasting over the output's rank keeps the items apart: every
    /// input carrying them has the output's rank, and every other input
    /// of that rank has one entry on the leading axis.
    fn broadcasts(&self) -> bool {
        let Some(rank) = self.out_rank() else {
            return false;
        };
        self.node.inputs.iter().zip(self.ins).all(|(v, c)| {
            let Some(s) = v.and_then(|v| self.g.ty(v).shape.concrete()) else {
                return v.is_none();
            };
            match c {
                Some(Carry::Items) => s.len() == rank,
                _ => s.len() < rank || s.first() == Some(&1),
            }
        })
    }

    /// The scale and zero point of a quantization are single values.
    fn side_inputs_scalar(&self) -> bool {
        (1..self.node.inputs.len()).all(|p| {
            self.node
                .input(p)
                .is_none_or(|v| self.g.ty(v).shape.numel() == Some(1))
        })
    }

    /// A product whose leading axis is a batch axis of its operands (rank
    /// 3 or more), or the rows of its left operand against a weight.
    fn matmul(&self) -> bool {
        let (ra, rb) = match (self.in_rank(0), self.in_rank(1)) {
            (Some(a), Some(b)) => (a, b),
            _ => return false,
        };
        let trans_a = matches!(self.node.op, Op::FusedMatMul { trans_a: true, .. });
        let leading_one = |pos: usize| self.in_shape(pos).is_some_and(|s| s.first() == Some(&1));
        match (self.ins[0], self.ins[1]) {
            (Some(Carry::Items), Some(Carry::Items)) => ra == rb && ra >= 3,
            (Some(Carry::Items), _) => {
                (ra >= 3 || (ra == 2 && !trans_a)) && (rb < ra || (rb == ra && leading_one(1)))
            }
            (_, Some(Carry::Items)) => rb >= 3 && (ra < rb || leading_one(0)),
            _ => false,
        }
    }

    /// The axes in input `pos` (a constant) leave the leading axis alone.
    fn axes_input_avoid_first(&self, pos: usize, rank: usize) -> Option<bool> {
        let axes = self.const_i64(pos)?;
        Some(
            !axes.is_empty()
                && axes.iter().all(|&a| {
                    let a = if a < 0 { a + rank as i64 } else { a };
                    a != 0
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{
        ActQuant, ConvAttrs, DType, Node, PoolAttrs, Shape, TensorData, TensorType, UnaryOp,
    };
    use crate::kernels::cpu::CpuCtx;
    use crate::rng::SplitMix64 as Rng;
    use crate::runtime::plan::{Choices, Items, Plan};
    use crate::runtime::PackCache;

    const BATCH: usize = 5;

    fn f32_ty(shape: &[usize]) -> TensorType {
        TensorType::new(DType::F32, Shape::known(shape))
    }

    fn add(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        let o = g.add_value(name, f32_ty(&[]));
        g.add_node(Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|&i| Some(i)).collect(),
            outputs: vec![o],
        });
        o
    }

    fn conv3x3() -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            auto_pad: Default::default(),
            group: 1,
        }
    }

    fn random(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(
            shape.to_vec(),
            (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect(),
        )
        .unwrap()
    }

    /// Int8 convolutions (one with a residual), pooling, an f32
    /// convolution, a Reshape whose constant counts the items and a Gemm,
    /// specialized to `BATCH` items; `softmax_over_items` ends it with a
    /// Softmax over the items instead, which mixes them.
    fn model(softmax_over_items: bool) -> Graph {
        let mut rng = Rng::new(7);
        let mut g = Graph::new("items", 17);
        let x = g.add_input("x", f32_ty(&[BATCH, 4, 12, 12]));
        let mut qconv = |g: &mut Graph, name: &str, ins: &[ValueId], c: usize, m: usize| {
            let w: Vec<i8> = (0..m * c * 9)
                .map(|i| ((i * 37 + 11) % 255) as i8)
                .collect();
            let w = g.add_const(
                format!("{name}.w"),
                Tensor::new(vec![m, c, 3, 3], TensorData::I8(w)).unwrap(),
            );
            let scale = g.add_const(
                format!("{name}.s"),
                Tensor::from_f32(vec![m], vec![1e-3; m]).unwrap(),
            );
            let bias = g.add_const(format!("{name}.b"), random(&mut rng, &[m]));
            let mut inputs = vec![ins[0], w, scale, bias];
            inputs.extend(&ins[1..]);
            let op = Op::QConv {
                conv: conv3x3(),
                x_quant: ActQuant::Static {
                    scale: 0.02,
                    zero_point: 128,
                },
                act: Some(crate::ir::Activation::Relu),
            };
            add(g, name, op, &inputs)
        };
        let a = qconv(&mut g, "qconv1", &[x], 4, 8);
        let pool = PoolAttrs {
            kernel_shape: vec![2, 2],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: Default::default(),
            ceil_mode: false,
            count_include_pad: false,
            column_major: false,
        };
        let p = add(&mut g, "pool", Op::MaxPool(pool), &[a]);
        let b = qconv(&mut g, "qconv2", &[p, p], 8, 8);
        let w = g.add_const("conv.w", random(&mut rng, &[8, 8, 1, 1]));
        let one = ConvAttrs {
            kernel_shape: vec![1, 1],
            pads: vec![0; 4],
            ..conv3x3()
        };
        let c = add(&mut g, "conv", Op::Conv(one), &[b, w]);
        let r = add(&mut g, "relu", Op::Unary(UnaryOp::Relu), &[c]);
        let gap = add(&mut g, "gap", Op::GlobalAveragePool, &[r]);
        let shape = g.add_const("shape", Tensor::vec_i64(vec![BATCH as i64, 8]));
        let flat = add(
            &mut g,
            "flat",
            Op::Reshape { allowzero: false },
            &[gap, shape],
        );
        let fc = g.add_const("fc.w", random(&mut rng, &[8, 3]));
        let gemm = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        };
        let y = add(&mut g, "fc", gemm, &[flat, fc]);
        let y = match softmax_over_items {
            false => y,
            true => {
                let op = Op::Softmax {
                    axis: 0,
                    legacy: false,
                    nan_to_zero: false,
                };
                add(&mut g, "softmax", op, &[y])
            }
        };
        g.outputs = vec![y, b];
        crate::ir::infer::infer_graph(&mut g).unwrap();
        g
    }

    fn ctx(threads: usize) -> CpuCtx {
        CpuCtx::new(threads).unwrap()
    }

    #[test]
    fn every_cut_gives_the_whole_batchs_results() {
        let g = model(false);
        let sep = Separable::of(&g).unwrap();
        assert_eq!(
            sep.separable,
            sep.order.len(),
            "every step keeps the items apart"
        );
        let x = random(&mut Rng::new(3), &[BATCH, 4, 12, 12]);
        let packs = PackCache::default();
        let choices = Choices::new();
        let mut whole = Plan::with_choices(g.clone(), ctx(1), &packs, &choices).unwrap();
        let want = whole.run(std::slice::from_ref(&x)).unwrap();
        for threads in [1, 2] {
            for cut in 1..=sep.order.len() {
                let split = BatchSplit::at(&g, &sep, cut).unwrap();
                assert_eq!(split.suffix.is_none(), cut == sep.order.len());
                let mut items = Items::new(split, &ctx(threads), &packs, &choices).unwrap();
                assert_eq!(items.shape(), (BATCH, cut));
                let got = items.run(std::slice::from_ref(&x)).unwrap();
                assert_eq!(got.len(), 2);
                // The int8 convolution's output: bit for bit.
                assert_eq!(got[1], want[1], "cut {cut}, {threads} threads");
                assert_eq!(got[0].shape(), &[BATCH, 3]);
                let (a, b) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                        "cut {cut}: {u} vs {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_split_is_chosen_by_the_caches() {
        let g = model(false);
        let tiny = Caches {
            l2: 1 << 10,
            l3: 16 << 10,
            threads: 1,
        };
        let split = BatchSplit::of(&g, &tiny).unwrap();
        assert_eq!(split.batch, BATCH);
        // Where everything fits level 2, the whole batch runs together.
        let roomy = Caches {
            l2: 1 << 30,
            ..tiny
        };
        assert!(BatchSplit::of(&g, &roomy).is_none());
    }

    #[test]
    fn a_step_that_mixes_the_items_ends_the_separable_steps() {
        let g = model(true);
        let sep = Separable::of(&g).unwrap();
        assert_eq!(sep.separable, sep.order.len() - 1);
        // The softmax's input crosses: the whole graph cannot run by items.
        assert!(BatchSplit::at(&g, &sep, sep.order.len()).is_none());
        // One item: nothing to split.
        let mut one = g.clone();
        one.value_mut(one.inputs[0]).ty.shape = Shape::known(&[1, 4, 12, 12]);
        assert!(Separable::of(&one).is_none());
    }

    #[test]
    fn dynamic_quantization_is_per_item_so_it_splits() {
        let mut g = model(false);
        for n in g.topo_order().unwrap() {
            if let Some(Op::QConv { x_quant, .. }) = g.node_mut(n).map(|n| &mut n.op) {
                *x_quant = ActQuant::Dynamic;
            }
        }
        let sep = Separable::of(&g).unwrap();
        assert_eq!(sep.separable, sep.order.len());
        let x = random(&mut Rng::new(4), &[BATCH, 4, 12, 12]);
        let (packs, choices) = (PackCache::default(), Choices::new());
        let mut whole = Plan::with_choices(g.clone(), ctx(1), &packs, &choices).unwrap();
        let want = whole.run(std::slice::from_ref(&x)).unwrap();
        let split = BatchSplit::at(&g, &sep, 3).unwrap();
        let mut items = Items::new(split, &ctx(2), &packs, &choices).unwrap();
        let got = items.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(got[1], want[1], "each item's own scale, bit for bit");
    }

    #[test]
    fn the_cost_model_splits_large_activations_not_large_weights() {
        let caches = Caches {
            l2: 1 << 20,
            l3: 16 << 20,
            threads: 1,
        };
        // 8 items of 4 MiB activations (32 MiB: memory) with small weights.
        let big = Moved {
            acts: 32 << 20,
            weights: 64 << 10,
        };
        assert!(caches.gain(&big, 8, 1 << 20) > 0.0);
        // 8 items of 100 KiB against 2 MiB of weights read once per item.
        let small = Moved {
            acts: 800 << 10,
            weights: 2 << 20,
        };
        assert!(caches.gain(&small, 8, 20 << 20) < 0.0);
    }
}

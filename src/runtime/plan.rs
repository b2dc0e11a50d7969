//! Building an execution plan: the graph specialized to concrete input
//! shapes, a schedule, where every value lives, and how each node runs.
//!
//! [`Plan::new`] takes a graph specialized to concrete input shapes
//! ([`crate::transform::specialize`]: every value has a concrete shape; a
//! shape that still depends on input *data* is an error here). The schedule is the
//! topological order. Each f32 value a node produces gets a range of one
//! arena, planned by liveness ([`super::arena`]) so buffers whose lifetimes
//! do not overlap share memory; graph inputs are read from the caller's
//! tensors and constants from the graph, never copied. Values of other types
//! (i64 shapes, bool masks) are held as tensors and only the reference
//! kernels touch them.
//!
//! Each node is classified once: `Fast` (all f32: offered to the fast
//! kernels, falling back to the reference kernel when they decline),
//! `Reference` (other types), `Copy`/`Alias` for reshape-like ops (a memcpy,
//! or nothing at all when the output can share the dying input's buffer) and
//! `InPlace` for cheap elementwise ops (arithmetic, piecewise-linear
//! activations, Clip) whose input dies at the node: the output takes over
//! the input's buffer and [`super::inplace`] computes over it. (Chains with
//! transcendental steps stay out of place on the vectorized kernels.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::arena::{self, Interval};
use super::inplace::{self, ChainKernel};
use super::items::{BatchSplit, Caches, Source};
use super::packs::{PackCache, PackKey};
use super::profile::{self, Profile, Profiler};
use super::quant::QuantStep;
use crate::ir::{DType, Graph, Op, Tensor, ValueId};
use crate::kernels::cpu::choice::{Choice, ConvAlgo, Isa, Split, KC_CHOICES};
use crate::kernels::cpu::qgemm::QRequant;
use crate::kernels::cpu::{conv, linalg, CpuCtx, Features, Prepacked, View};
use crate::{Error, Result};

/// Kernel choices by node name (see [`Plan::with_choices`]).
pub type Choices = BTreeMap<String, Choice>;

/// Whether `op` is a product or convolution: the ops whose kernels an
/// `isa=` choice narrows.
fn is_matmul(op: &Op) -> bool {
    matches!(op, Op::MatMul | Op::FusedMatMul { .. } | Op::Gemm { .. })
}

fn is_product(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul | Op::FusedMatMul { .. } | Op::Gemm { .. } | Op::Conv(_) | Op::FusedConv { .. }
    )
}

/// The depth (k) of the products a step with weights of shape `w` runs
/// by algorithm `algo` (None: not a convolution), and the depth of the
/// blocks its kernel takes by default.
fn product_depth(op: &Op, w: &[usize], algo: Option<ConvAlgo>) -> (usize, usize) {
    let depth = match (op, algo) {
        (_, Some(ConvAlgo::Winograd | ConvAlgo::Winograd4)) => w.get(1).copied().unwrap_or(0),
        (Op::Conv(_) | Op::FusedConv { .. }, _) => w.iter().skip(1).product(),
        (Op::Gemm { trans_b: true, .. }, _) => w.get(1).copied().unwrap_or(0),
        _ => w
            .len()
            .checked_sub(2)
            .and_then(|i| w.get(i))
            .copied()
            .unwrap_or(0),
    };
    let own = if algo == Some(ConvAlgo::Direct) {
        crate::kernels::cpu::gemm::DIRECT_KC
    } else {
        crate::kernels::cpu::gemm::KC
    };
    (depth, own)
}

/// `cx` with its features narrowed to `isa` (an int8 or f32 product's):
/// `cx` itself when `isa` is None, None when the CPU lacks it.
fn narrowed(cx: &CpuCtx, isa: Option<Isa>, int8: bool) -> Option<CpuCtx> {
    match isa {
        None => Some(cx.clone()),
        Some(i) if cx.features.narrower(int8).contains(&i) => Some(CpuCtx {
            features: cx.features.limited_to(i)?,
            ..cx.clone()
        }),
        Some(_) => None,
    }
}

/// Where a value's data lives while a plan runs.
#[derive(Clone, Debug)]
pub(crate) enum Loc {
    /// Graph input `i`: read from the caller's tensors.
    Input(usize),
    /// A constant of the specialized graph.
    Const(Arc<Tensor>),
    /// f32 data at `offset..offset + len` of the arena.
    Arena { offset: usize, len: usize },
    /// A value of another type, held as a tensor in this slot.
    Boxed(usize),
}

/// A value's concrete type and location.
#[derive(Clone, Debug)]
pub(crate) struct ValueInfo {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub loc: Loc,
}

/// How a step runs.
#[derive(Clone, Debug)]
pub(crate) enum Exec {
    /// All inputs and outputs f32: the fast kernels, else the reference.
    Fast,
    /// The reference kernel on tensors.
    Reference,
    /// A reshape-like op copying its f32 data input.
    Copy,
    /// A reshape-like op whose output shares its input's buffer: no work.
    Alias,
    /// An elementwise chain overwriting its dying input `kernel.inplace`.
    InPlace(ChainKernel),
    /// QConv / QMatMul on the int8 kernels; `io` says whether its input
    /// arrives and its output leaves as u8 (see [`QuantIo`]).
    Quant { step: Arc<QuantStep>, io: QuantIo },
    /// Gather of f32 data by integer indices along `axis` (normalized), as
    /// row copies: its indices are not f32, which would send it to the
    /// reference kernel.
    Gather { axis: usize },
}

/// Whether an int8 step's activation edges carry u8 instead of f32. An
/// edge between two int8 steps is u8 when every reader of the value is an
/// int8 step taking it as its activation with one and the same static
/// quantization, and it is not a graph output: the producer then
/// requantizes in its epilogue, with the very operations the readers would
/// have quantized its f32 output with (so the results are the same bit
/// for bit), and the value's arena slot is `numel` bytes (`⌈numel / 4⌉`
/// floats). The model's activations then stay 8-bit between layers, as ONNX
/// Runtime's QLinearConv chains do, instead of a round trip through f32.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QuantIo {
    /// The activation (input 0) holds u8 bytes.
    pub in_u8: bool,
    /// The output is requantized to u8 with these parameters.
    pub out_u8: Option<QRequant>,
}

/// How a step runs, as [`Plan::steps`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecKind {
    Fast,
    Reference,
    Copy,
    Alias,
    InPlace,
    Int8,
}

/// One node of the schedule.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub name: String,
    pub op: Op,
    pub op_type: &'static str,
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
    pub exec: Exec,
    /// Floating-point work of one run (products and convolutions).
    pub flops: Option<u64>,
    /// Tensor slots whose last reader is this step, emptied after it.
    pub frees: Vec<usize>,
    /// Constant operands packed for the fast kernel (weights of products
    /// and convolutions), made once by [`Plan::prepack`].
    pub packed: Option<Arc<Prepacked>>,
    /// The kernel choice it was planned with (default when none was
    /// asked, or the one asked did not apply).
    pub choice: Choice,
    /// The features its kernels may use, when its choice narrows the
    /// CPU's (`isa=`); None: all of them.
    pub features: Option<Features>,
}

/// A step as reported by [`Plan::steps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepInfo {
    pub node: String,
    pub op: &'static str,
    pub exec: ExecKind,
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
    /// The input whose buffer the output takes over (in place or aliased).
    pub reuses: Option<ValueId>,
    /// The kernel choice it runs with.
    pub choice: Choice,
    /// The kernel choices it could run with, the default first; fewer
    /// than two: nothing to choose.
    pub choices: Vec<Choice>,
    /// Floating-point work of one run (products and convolutions).
    pub flops: Option<u64>,
    /// Its weights run on the sparse kernel (pruned weights).
    pub sparse: bool,
}

/// Memory statistics of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanStats {
    pub nodes: usize,
    /// f32 values held in the arena.
    pub arena_values: usize,
    /// Size of the arena.
    pub arena_bytes: usize,
    /// What the arena values would take with one buffer each.
    pub unshared_bytes: usize,
    /// `unshared_bytes / arena_bytes` (1 when nothing is shared or the arena
    /// is empty).
    pub reuse_ratio: f64,
    /// Lower bound for any layout: the most bytes live at one step.
    pub live_peak_bytes: usize,
    pub fast_nodes: usize,
    pub reference_nodes: usize,
    pub copy_nodes: usize,
    pub aliased_nodes: usize,
    pub in_place_nodes: usize,
}

/// An executable plan for one set of input shapes (see the module docs).
pub struct Plan {
    pub(crate) graph: Graph,
    pub(crate) values: Vec<Option<ValueInfo>>,
    pub(crate) steps: Vec<Step>,
    /// Graph inputs: value, concrete shape, dtype.
    pub(crate) inputs: Vec<(ValueId, Vec<usize>, DType)>,
    pub(crate) outputs: Vec<ValueId>,
    /// The arena; planned offsets start at `arena_base` (64-byte aligned).
    pub(crate) arena: crate::kernels::cpu::Floats,
    pub(crate) arena_base: usize,
    pub(crate) arena_len: usize,
    pub(crate) boxed: Vec<Option<Tensor>>,
    pub(crate) scratch: Vec<f32>,
    pub(crate) cx: CpuCtx,
    pub(crate) stats: PlanStats,
    pub(crate) profiler: Option<Profiler>,
    /// The one-item plans that run a batch item by item, when this plan
    /// does so ([`Plan::by_items`]); the plan itself then has no steps.
    pub(crate) items: Option<Box<Items>>,
}

/// Work the runtime did to build plans, counted over the process: the
/// measurement core reports it (how many plans a command built, how many
/// weights it packed) to show what reusing plans and packed weights saves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BuildCounters {
    pub plans_built: u64,
    pub weights_packed: u64,
}

static PLANS_BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WEIGHTS_PACKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The counters so far (differences of two readings give one job's work).
pub fn build_counters() -> BuildCounters {
    use std::sync::atomic::Ordering::Relaxed;
    BuildCounters {
        plans_built: PLANS_BUILT.load(Relaxed),
        weights_packed: WEIGHTS_PACKED.load(Relaxed),
    }
}

impl std::ops::Sub for BuildCounters {
    type Output = BuildCounters;
    fn sub(self, earlier: BuildCounters) -> BuildCounters {
        BuildCounters {
            plans_built: self.plans_built.saturating_sub(earlier.plans_built),
            weights_packed: self.weights_packed.saturating_sub(earlier.weights_packed),
        }
    }
}

/// The constant tensors among `inputs` (None for the others).
fn const_inputs(g: &Graph, inputs: &[Option<ValueId>]) -> Vec<Option<Arc<Tensor>>> {
    inputs
        .iter()
        .map(|v| v.and_then(|v| g.consts.get(&v).cloned()))
        .collect()
}

/// Ops that only reinterpret their first input's shape.
fn reshape_like(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze | Op::Unsqueeze | Op::Identity
    )
}

impl Plan {
    /// Plans `g`, a graph specialized to concrete input shapes
    /// ([`crate::transform::specialize`]), running kernels with `cx`. The
    /// arena is allocated here, once.
    pub fn new(g: Graph, cx: CpuCtx) -> Result<Plan> {
        Plan::with_packs(g, cx, &PackCache::default())
    }

    /// [`Plan::new`], taking packed weights from `packs` where it holds
    /// them (the same weight tensor, for the same op and shapes) and adding
    /// those it packs: plans of graphs that share most weights (candidates
    /// differing in a layer) pack each weight once.
    pub fn with_packs(g: Graph, cx: CpuCtx, packs: &PackCache) -> Result<Plan> {
        Plan::with_choices(g, cx, packs, &Choices::new())
    }

    /// [`Plan::with_choices`], running a batch item by item when the graph
    /// computes its items independently (`src/runtime/items.rs`): the first
    /// steps, up to where this machine's caches make it pay, then run one
    /// item at a time, each thread its own items, and the rest on the whole
    /// batch; every item is computed exactly as a one-item plan computes
    /// it. A plan of one item, or where a split does not pay, is
    /// [`Plan::with_choices`]'s.
    pub(crate) fn by_items(
        g: Graph,
        cx: CpuCtx,
        packs: &PackCache,
        choices: &Choices,
        caches: &Caches,
    ) -> Result<Plan> {
        let split = BatchSplit::of(&g, caches);
        let Some(split) = split else {
            return Plan::with_choices(g, cx, packs, choices);
        };
        // The one-item plans are checked as the whole batch's is; should
        // one still fail to build, the whole batch runs as one.
        let items = match Items::new(split, &cx, packs, choices) {
            Ok(items) => items,
            Err(_) => return Plan::with_choices(g, cx, packs, choices),
        };
        let inputs = g
            .inputs
            .iter()
            .map(|&id| {
                let shape = g.ty(id).shape.concrete().unwrap_or_default();
                (id, shape, g.ty(id).dtype)
            })
            .collect();
        Ok(Plan {
            values: Vec::new(),
            steps: Vec::new(),
            inputs,
            outputs: g.outputs.clone(),
            graph: g,
            arena: crate::kernels::cpu::Floats::zeros(0),
            arena_base: 0,
            arena_len: 0,
            boxed: Vec::new(),
            scratch: Vec::new(),
            stats: items.stats(),
            cx,
            profiler: None,
            items: Some(Box::new(items)),
        })
    }

    /// [`Plan::with_packs`] with kernel choices by node name (a node not
    /// named, or whose choice does not apply to its shapes, runs the
    /// default).
    pub fn with_choices(
        g: Graph,
        cx: CpuCtx,
        packs: &PackCache,
        choices: &Choices,
    ) -> Result<Plan> {
        let order = g.topo_order()?;
        let n_steps = order.len();

        // Concrete shapes and storage classes.
        let mut values: Vec<Option<ValueInfo>> = vec![None; g.values.len()];
        let concrete = |id: ValueId, what: &str| -> Result<Vec<usize>> {
            let v = g.value(id);
            v.ty.shape.concrete().ok_or_else(|| {
                Error::Input {
                    name: v.name.clone(),
                    message: format!(
                        "{what} has shape {} even with the input shapes bound; the runtime needs static shapes (this size depends on input data)",
                        v.ty.shape
                    ),
                }
            })
        };
        let mut inputs = Vec::with_capacity(g.inputs.len());
        for (i, &id) in g.inputs.iter().enumerate() {
            let shape = concrete(id, "input")?;
            inputs.push((id, shape.clone(), g.ty(id).dtype));
            values[id.0 as usize] = Some(ValueInfo {
                shape,
                dtype: g.ty(id).dtype,
                loc: Loc::Input(i),
            });
        }
        for (&id, t) in &g.consts {
            values[id.0 as usize] = Some(ValueInfo {
                shape: t.shape().to_vec(),
                dtype: t.dtype(),
                loc: Loc::Const(t.clone()),
            });
        }
        let mut n_boxed = 0usize;
        for &nid in &order {
            let Some(node) = g.node(nid) else { continue };
            for &o in &node.outputs {
                let shape = concrete(o, &format!("output of node '{}'", node.name))?;
                let dtype = g.ty(o).dtype;
                let loc = if dtype == DType::F32 {
                    // The offset is filled in by the memory plan below.
                    Loc::Arena { offset: 0, len: 0 }
                } else {
                    n_boxed += 1;
                    Loc::Boxed(n_boxed - 1)
                };
                values[o.0 as usize] = Some(ValueInfo { shape, dtype, loc });
            }
        }
        for &o in &g.outputs {
            if values[o.0 as usize].is_none() {
                return Err(Error::Internal(format!(
                    "graph output '{}' has no definition",
                    g.value(o).name
                )));
            }
        }

        // Liveness: the step defining each node output and the last step
        // reading each value (graph outputs live past the last step).
        let mut def = vec![usize::MAX; g.values.len()];
        let mut last = vec![None::<usize>; g.values.len()];
        for (t, &nid) in order.iter().enumerate() {
            let Some(node) = g.node(nid) else { continue };
            for v in node.inputs.iter().flatten() {
                last[v.0 as usize] = Some(t);
            }
            for &o in &node.outputs {
                def[o.0 as usize] = t;
            }
        }
        let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
        for &o in &outputs {
            last[o.0 as usize] = Some(n_steps);
        }

        let info = |v: ValueId| values[v.0 as usize].as_ref();
        let is_f32 = |v: ValueId| info(v).is_some_and(|i| i.dtype == DType::F32);
        let in_arena = |v: ValueId| info(v).is_some_and(|i| matches!(i.loc, Loc::Arena { .. }));

        // Classify the steps.
        let mut steps: Vec<Step> = Vec::with_capacity(n_steps);
        for (t, &nid) in order.iter().enumerate() {
            let node = g
                .node(nid)
                .ok_or_else(|| Error::Internal("the schedule names a removed node".into()))?;
            let op_type = node.op.onnx_type();
            let at = |e: Error| e.at_node(&node.name, op_type);
            let shape_of = |v: ValueId| -> &[usize] { info(v).map_or(&[], |i| &i.shape) };
            // An input whose buffer the single output may take over: an
            // arena value read only here, for the last time, not an output.
            let reusable = |pos: usize| -> Option<ValueId> {
                let v = node.input(pos)?;
                let single_read = node.inputs.iter().filter(|i| **i == Some(v)).count() == 1;
                (node.outputs.len() == 1
                    && in_arena(v)
                    && in_arena(node.outputs[0])
                    && single_read
                    && last[v.0 as usize] == Some(t)
                    && !outputs.contains(&v))
                .then_some(v)
            };
            let all_f32 = node.inputs.iter().flatten().all(|&v| is_f32(v))
                && node.outputs.iter().all(|&o| is_f32(o));
            let numel = |v: ValueId| shape_of(v).iter().product::<usize>();

            let mut exec = if all_f32 { Exec::Fast } else { Exec::Reference };
            // A quantized step's choice is settled below; a fast step's
            // when its weights are packed.
            let asked = choices.get(&node.name).copied().unwrap_or_default();
            let mut quant_choice = Choice::default();
            if reshape_like(&node.op)
                && node.outputs.len() == 1
                && node
                    .input(0)
                    .is_some_and(|v| is_f32(v) && numel(v) == numel(node.outputs[0]))
                && is_f32(node.outputs[0])
            {
                exec = if reusable(0).is_some() {
                    Exec::Alias
                } else {
                    Exec::Copy
                };
            } else if all_f32 && node.outputs.len() == 1 {
                let bounds = clip_bounds(&g, node);
                if let Some(steps_) =
                    inplace::chain_of(&node.op, bounds).filter(|c| inplace::is_cheap(c))
                {
                    // Clip's chain reads only x; the others read every input.
                    let n_in = if matches!(node.op, Op::Clip) {
                        1
                    } else {
                        node.inputs.len()
                    };
                    let out_shape = shape_of(node.outputs[0]);
                    let ins_present = node.inputs[..n_in.min(node.inputs.len())]
                        .iter()
                        .all(Option::is_some);
                    let pick =
                        (0..n_in).find(|&p| reusable(p).is_some_and(|v| shape_of(v) == out_shape));
                    if let (true, Some(p)) = (ins_present, pick) {
                        let shapes: Vec<&[usize]> = node.inputs[..n_in]
                            .iter()
                            .map(|v| v.map_or(&[][..], shape_of))
                            .collect();
                        let k = ChainKernel::new(steps_, &shapes, out_shape, p).map_err(at)?;
                        exec = Exec::InPlace(k);
                    }
                }
            }
            if matches!(node.op, Op::QConv { .. } | Op::QMatMul { .. })
                && node.input(0).is_some_and(is_f32)
                && node.outputs.len() == 1
                && in_arena(node.outputs[0])
            {
                let x = node.input(0).map_or(&[][..], shape_of);
                let out = shape_of(node.outputs[0]);
                let mut step = None;
                for choice in [asked, Choice::default()] {
                    let Some(step_cx) = narrowed(&cx, choice.isa, true) else {
                        continue;
                    };
                    let key = PackKey::new(&node.op, &[x, out], const_inputs(&g, &node.inputs))
                        .for_choice(choice);
                    let (made, packed_now) = packs
                        .get_or_pack(key, || QuantStep::new(&g, node, x, out, choice, &step_cx));
                    if packed_now {
                        WEIGHTS_PACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if made.is_some() {
                        step = made.map(|s| (s, choice));
                        break;
                    }
                }
                if let Some((q, choice)) = step {
                    quant_choice = choice;
                    let residual_ok = q.residual.is_none_or(|p| node.input(p).is_some_and(is_f32));
                    if residual_ok {
                        exec = Exec::Quant {
                            step: q,
                            io: QuantIo::default(),
                        };
                    }
                }
            }
            if let (Op::Gather { axis }, Some(x), Some(_)) =
                (&node.op, node.input(0), node.input(1))
            {
                let rank = shape_of(x).len() as i64;
                if is_f32(x)
                    && node.outputs.len() == 1
                    && is_f32(node.outputs[0])
                    && in_arena(node.outputs[0])
                    && (-rank..rank).contains(axis)
                {
                    exec = Exec::Gather {
                        axis: axis.rem_euclid(rank) as usize,
                    };
                }
            }
            let in_shapes: Vec<Option<&[usize]>> =
                node.inputs.iter().map(|v| v.map(shape_of)).collect();
            let out_shapes: Vec<&[usize]> = node.outputs.iter().map(|&o| shape_of(o)).collect();
            steps.push(Step {
                name: node.name.clone(),
                op: node.op.clone(),
                op_type,
                inputs: node.inputs.clone(),
                outputs: node.outputs.clone(),
                flops: profile::flops(&node.op, &in_shapes, &out_shapes),
                frees: Vec::new(),
                packed: None,
                choice: match exec {
                    Exec::Quant { .. } => quant_choice,
                    _ => asked,
                },
                features: match exec {
                    Exec::Quant { .. } => narrowed(&cx, quant_choice.isa, true)
                        .filter(|_| quant_choice.isa.is_some())
                        .map(|c| c.features),
                    _ => None,
                },
                exec,
            });
        }

        u8_edges(&mut steps, &outputs);
        // A u8 edge's slot holds its bytes: a quarter of the floats (the
        // arena of MobileNetV2 int8 at batch 1 was 4x its bytes' size on
        // those edges, and the wider spread cost cache).
        let u8_values: HashSet<ValueId> = steps
            .iter()
            .filter(|s| matches!(&s.exec, Exec::Quant { io, .. } if io.out_u8.is_some()))
            .map(|s| s.outputs[0])
            .collect();
        let slot_len = |v: ValueId, numel: usize| match u8_values.contains(&v) {
            true => numel.div_ceil(4),
            false => numel,
        };

        // Buffers: one per arena value, except that an in-place or aliased
        // output joins its input's buffer (the union lives from the input's
        // definition to the output's last use).
        let mut group_of: BTreeMap<ValueId, usize> = BTreeMap::new();
        let mut groups: Vec<Interval> = Vec::new();
        let mut unshared = 0usize;
        let mut arena_values = 0usize;
        let size_of = |v: ValueId| -> Result<usize> {
            let i = info(v).ok_or_else(|| Error::Internal(format!("value {v} has no type")))?;
            i.shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .map(|n| slot_len(v, n))
                .and_then(arena::round_up)
                .ok_or_else(|| Error::Input {
                    name: g.value(v).name.clone(),
                    message: format!("shape {:?} is too large for the runtime's arena", i.shape),
                })
                .and_then(|n| {
                    crate::limits::check_elements(
                        || {
                            let by = match g.producer(v).and_then(|p| g.node(p)) {
                                Some(n) => {
                                    format!(" (output of node '{}', {})", n.name, n.op.onnx_type())
                                }
                                None => String::new(),
                            };
                            format!("value '{}' of shape {:?}{by}", g.value(v).name, i.shape)
                        },
                        Some(n),
                        4,
                    )
                })
        };
        for (t, step) in steps.iter().enumerate() {
            let reused = match &step.exec {
                Exec::Alias => step.inputs[0],
                Exec::InPlace(k) => step.inputs[k.inplace],
                _ => None,
            };
            for &o in &step.outputs {
                if !in_arena(o) {
                    continue;
                }
                let size = size_of(o)?;
                unshared += size;
                arena_values += 1;
                let end = last[o.0 as usize].unwrap_or(t);
                match reused.and_then(|r| group_of.get(&r).copied()) {
                    Some(gi) => {
                        let b = &mut groups[gi];
                        b.size = b.size.max(size);
                        b.last = b.last.max(end);
                        group_of.insert(o, gi);
                    }
                    None => {
                        group_of.insert(o, groups.len());
                        groups.push(Interval {
                            size,
                            first: t,
                            last: end,
                        });
                    }
                }
            }
        }
        let layout = arena::plan(&groups);
        if cfg!(debug_assertions) {
            arena::check(&groups, &layout).map_err(Error::Internal)?;
        }
        crate::limits::check_elements(|| "the plan's activations".into(), Some(layout.total), 4)?;
        for (&v, &gi) in &group_of {
            if let Some(i) = values[v.0 as usize].as_mut() {
                i.loc = Loc::Arena {
                    offset: layout.offsets[gi],
                    len: slot_len(v, i.shape.iter().product()),
                };
            }
        }

        // Tensor slots are emptied after their last reader.
        for (t, step) in steps.iter_mut().enumerate() {
            for v in step.inputs.iter().flatten().chain(&step.outputs) {
                if let Some(ValueInfo {
                    loc: Loc::Boxed(s), ..
                }) = values[v.0 as usize]
                {
                    let end = last[v.0 as usize].unwrap_or(def[v.0 as usize]);
                    if end == t && !step.frees.contains(&s) {
                        step.frees.push(s);
                    }
                }
            }
        }

        let scratch_len = steps
            .iter()
            .map(|s| match &s.exec {
                Exec::InPlace(k) => k.scratch_len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let count = |f: fn(&Exec) -> bool| steps.iter().filter(|s| f(&s.exec)).count();
        let arena_bytes = layout.total * 4;
        let stats = PlanStats {
            nodes: steps.len(),
            arena_values,
            arena_bytes,
            unshared_bytes: unshared * 4,
            reuse_ratio: if arena_bytes == 0 {
                1.0
            } else {
                (unshared * 4) as f64 / arena_bytes as f64
            },
            live_peak_bytes: arena::lower_bound(&groups) * 4,
            fast_nodes: count(|e| matches!(e, Exec::Fast | Exec::Gather { .. })),
            reference_nodes: count(|e| matches!(e, Exec::Reference)),
            copy_nodes: count(|e| matches!(e, Exec::Copy)),
            aliased_nodes: count(|e| matches!(e, Exec::Alias)),
            in_place_nodes: count(|e| matches!(e, Exec::InPlace(_))),
        };

        // One allocation for the whole run, with room to start on a
        // 64-byte boundary.
        let arena = crate::kernels::cpu::Floats::zeros(layout.total + arena::ALIGN);
        let misalign = (arena.as_ptr() as usize) % 64;
        let arena_base = if misalign == 0 {
            0
        } else {
            (64 - misalign) / 4
        };
        let outputs_list = g.outputs.clone();
        let mut plan = Plan {
            graph: g,
            values,
            steps,
            inputs,
            outputs: outputs_list,
            arena,
            arena_base,
            arena_len: layout.total,
            boxed: vec![None; n_boxed],
            scratch: vec![0f32; scratch_len],
            cx,
            stats,
            profiler: None,
            items: None,
        };
        plan.check_views()?;
        plan.prepack(packs);
        PLANS_BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(plan)
    }

    /// Packs the constant weights of fast-path products and convolutions
    /// once, in the layout their kernels consume, so that no run repacks
    /// them. The packed copies live beside the constants (which the
    /// reference fallback still reads).
    fn prepack(&mut self, packs: &PackCache) {
        for i in 0..self.steps.len() {
            let step = &self.steps[i];
            if matches!(step.exec, Exec::Quant { .. }) {
                continue;
            }
            // Settled below for a fast step with constant operands; every
            // other step runs its default.
            let asked = std::mem::take(&mut self.steps[i].choice);
            let step = &self.steps[i];
            if !matches!(step.exec, Exec::Fast) {
                continue;
            }
            let views: Vec<Option<View>> = step
                .inputs
                .iter()
                .map(|v| {
                    let info = self.values.get(v.as_ref()?.0 as usize)?.as_ref()?;
                    match &info.loc {
                        Loc::Const(t) => Some(View {
                            shape: &info.shape,
                            data: t.as_f32()?,
                        }),
                        _ => None,
                    }
                })
                .collect();
            let out_shape = step
                .outputs
                .first()
                .and_then(|o| self.values.get(o.0 as usize)?.as_ref())
                .map_or(&[][..], |info| info.shape.as_slice());
            if views.iter().all(Option::is_none) {
                continue;
            }
            let shapes: Vec<&[usize]> = step
                .inputs
                .iter()
                .chain(step.outputs.first().map(|o| Some(*o)).iter())
                .map(|v| {
                    v.and_then(|v| self.values.get(v.0 as usize)?.as_ref())
                        .map_or(&[][..], |info| info.shape.as_slice())
                })
                .collect();
            // A fast step chooses a convolution's algorithm and a
            // product's instruction set.
            let w_shape = shapes.get(1).copied().unwrap_or(&[]);
            let density = views
                .get(1)
                .copied()
                .flatten()
                .and_then(|w| crate::kernels::cpu::weight_work_density(&step.op, &w));
            let legal = conv::algorithms(&step.op, w_shape, density, out_shape, self.cx.features);
            // A MatMul/Gemm's sparse B, when asked for and not the default.
            let sparse = asked.sparse.filter(|&sp| {
                let d = density.filter(|_| is_matmul(&step.op));
                d.is_some_and(|d| {
                    d <= linalg::SPARSE_MAX_DENSITY
                        && sp != linalg::sparse_by_default(d, linalg::product_rows(out_shape))
                })
            });
            let isa = asked
                .isa
                .filter(|i| is_product(&step.op) && self.cx.features.narrower(false).contains(i));
            let conv = asked
                .conv
                .filter(|a| legal.first() != Some(a) && legal.contains(a));
            let product = is_product(&step.op);
            let choice = Choice {
                run: None,
                conv,
                isa,
                single_thread: asked.single_thread && self.cx.threads > 1,
                split: asked.split.filter(|_| product && self.cx.threads > 1),
                kc: asked.kc.filter(|_| product),
                sparse,
            };
            let cx = narrowed(&self.cx, isa, false).unwrap_or_else(|| self.cx.clone());
            let key = PackKey::new(&step.op, &shapes, const_inputs(&self.graph, &step.inputs))
                .for_choice(choice);
            let (packed, packed_now) = packs.get_or_pack(key, || {
                crate::kernels::cpu::prepack_with(&step.op, &views, out_shape, choice, &cx)
            });
            if packed_now {
                WEIGHTS_PACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.steps[i].packed = packed;
            self.steps[i].choice = choice;
            self.steps[i].features = isa.map(|_| cx.features);
        }
    }

    /// Checks the invariant the executor's unchecked views rely on: for every
    /// step, each arena output range is disjoint from every other output and
    /// from every arena input it reads through a view (an aliased or
    /// in-place input shares the output's buffer by design and is read
    /// through the output instead), and every range lies inside the arena.
    pub(crate) fn check_views(&self) -> Result<()> {
        // Allocation-free: it also runs (as a debug assertion) on every run.
        let range = |v: ValueId| -> Option<Range<usize>> {
            match self.values.get(v.0 as usize)?.as_ref()?.loc {
                Loc::Arena { offset, len } if len > 0 => Some(offset..offset + len),
                _ => None,
            }
        };
        let overlap = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
        for s in &self.steps {
            let bad = |msg: String| {
                Err(Error::Internal(format!(
                    "memory plan for node '{}' ({}): {msg}",
                    s.name, s.op_type
                )))
            };
            let shared = match &s.exec {
                Exec::Alias => s.inputs[0],
                Exec::InPlace(k) => s.inputs[k.inplace],
                _ => None,
            };
            if let Some(v) = shared {
                if range(v) != range(s.outputs[0]) {
                    return bad("the reused input and the output differ".into());
                }
            }
            for (i, &o) in s.outputs.iter().enumerate() {
                let Some(a) = range(o) else { continue };
                if a.end > self.arena_len {
                    return bad(format!("output range {a:?} ends past the arena"));
                }
                for &o2 in &s.outputs[i + 1..] {
                    if let Some(b) = range(o2).filter(|b| overlap(&a, b)) {
                        return bad(format!("outputs {a:?} and {b:?} overlap"));
                    }
                }
                for &v in s.inputs.iter().flatten() {
                    if Some(v) == shared {
                        continue;
                    }
                    if let Some(r) = range(v) {
                        if r.end > self.arena_len {
                            return bad(format!("input range {r:?} ends past the arena"));
                        }
                        if overlap(&a, &r) {
                            return bad(format!("input {r:?} overlaps output {a:?}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The specialized graph the plan runs (value ids as in [`Plan::steps`]).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Memory statistics.
    pub fn stats(&self) -> &PlanStats {
        &self.stats
    }

    /// For a plan that runs a batch item by item (`src/runtime/items.rs`): the
    /// items, and the steps (in schedule order from the first) that run
    /// on one item at a time; the rest run on the whole batch.
    pub fn items(&self) -> Option<(usize, usize)> {
        self.items.as_ref().map(|i| i.shape())
    }

    /// Threads the kernels use.
    pub fn threads(&self) -> usize {
        self.cx.threads
    }

    /// The concrete input shapes the plan was built for.
    pub fn input_shapes(&self) -> Vec<Vec<usize>> {
        self.inputs.iter().map(|(_, s, _)| s.clone()).collect()
    }

    /// The schedule: every node with how it runs (for a batch run item by
    /// item, as the one-item plan runs it).
    pub fn steps(&self) -> Vec<StepInfo> {
        if let Some(items) = &self.items {
            return items.steps();
        }
        self.steps
            .iter()
            .map(|s| StepInfo {
                node: s.name.clone(),
                op: s.op_type,
                exec: match s.exec {
                    Exec::Fast | Exec::Gather { .. } => ExecKind::Fast,
                    Exec::Reference => ExecKind::Reference,
                    Exec::Copy => ExecKind::Copy,
                    Exec::Alias => ExecKind::Alias,
                    Exec::InPlace(_) => ExecKind::InPlace,
                    Exec::Quant { .. } => ExecKind::Int8,
                },
                inputs: s.inputs.clone(),
                outputs: s.outputs.clone(),
                reuses: match &s.exec {
                    Exec::Alias => s.inputs[0],
                    Exec::InPlace(k) => s.inputs[k.inplace],
                    _ => None,
                },
                choice: s.choice,
                choices: self.choices_of(s),
                flops: s.flops,
                sparse: s.packed.as_ref().is_some_and(|p| p.is_sparse())
                    || matches!(&s.exec, Exec::Quant { step, .. } if step.is_sparse()),
            })
            .collect()
    }

    /// The work density ([`crate::kernels::cpu::weight_work_density`])
    /// of `op`'s weight `v` when it is a constant f32 tensor.
    fn const_density(&self, op: &Op, v: Option<ValueId>) -> Option<f64> {
        match &self.values.get(v?.0 as usize)?.as_ref()?.loc {
            Loc::Const(t) => crate::kernels::cpu::weight_work_density(
                op,
                &View {
                    shape: t.shape(),
                    data: t.as_f32()?,
                },
            ),
            _ => None,
        }
    }

    /// The kernel choices step `s` could run with, the default first.
    fn choices_of(&self, s: &Step) -> Vec<Choice> {
        let shape = |v: Option<&ValueId>| -> &[usize] {
            v.and_then(|v| self.values.get(v.0 as usize)?.as_ref())
                .map_or(&[], |i| i.shape.as_slice())
        };
        let single = (self.cx.threads > 1).then_some(Choice {
            single_thread: true,
            ..Choice::default()
        });
        let isas = |int8: bool| {
            self.cx.features.narrower(int8).into_iter().map(|i| Choice {
                isa: Some(i),
                ..Choice::default()
            })
        };
        match &s.exec {
            Exec::Quant { step, .. } => {
                let mut out = step.choices(&s.op, &self.cx);
                out.splice(1..1, isas(true));
                out.extend(single);
                out
            }
            Exec::Fast if is_product(&s.op) && s.packed.is_some() => {
                let (w, out) = (
                    shape(s.inputs.get(1).and_then(Option::as_ref)),
                    shape(s.outputs.first()),
                );
                let density = self.const_density(&s.op, s.inputs.get(1).copied().flatten());
                let rows = linalg::product_rows(out);
                let algos = conv::algorithms(&s.op, w, density, out, self.cx.features);
                let mut out: Vec<Choice> = algos
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| Choice {
                        conv: (i > 0).then_some(a),
                        ..Choice::default()
                    })
                    .collect();
                if out.is_empty() {
                    out.push(Choice::default());
                }
                // A MatMul/Gemm with a pruned constant B: the other of
                // sparse and dense.
                let mut sparse_default = false;
                if let Some(d) = density.filter(|_| is_matmul(&s.op)) {
                    sparse_default = linalg::sparse_by_default(d, rows);
                    if d <= linalg::SPARSE_MAX_DENSITY {
                        out.push(Choice {
                            sparse: Some(!sparse_default),
                            ..Choice::default()
                        });
                    }
                }
                out.extend(isas(false));
                out.extend(single);
                // The product knobs, for the default algorithm's GEMM: not
                // for a depthwise convolution or a sparse product (no GEMM)
                // nor, for the split, Winograd (each part is one thread's).
                let default = algos.first().copied();
                let gemm = !sparse_default
                    && !matches!(
                        default,
                        Some(ConvAlgo::DwPlane | ConvAlgo::DwInterleaved | ConvAlgo::Sparse)
                    );
                let splits = gemm
                    && self.cx.threads > 1
                    && !matches!(default, Some(ConvAlgo::Winograd | ConvAlgo::Winograd4));
                if splits {
                    out.extend(Split::ALL.map(|sp| Choice {
                        split: Some(sp),
                        ..Choice::default()
                    }));
                }
                if gemm {
                    // Only the depths that change the blocking of this
                    // product's depth.
                    let (depth, own) = product_depth(&s.op, w, default);
                    out.extend(
                        KC_CHOICES
                            .iter()
                            .filter(|&&kc| usize::from(kc).min(depth) != own.min(depth))
                            .map(|&kc| Choice {
                                kc: Some(kc),
                                ..Choice::default()
                            }),
                    );
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// The arena range (in f32 elements) of an f32 value a node produces.
    pub fn buffer(&self, v: ValueId) -> Option<Range<usize>> {
        match self.values.get(v.0 as usize)?.as_ref()?.loc {
            Loc::Arena { offset, len } => Some(offset..offset + len),
            _ => None,
        }
    }

    /// Turns per-node timing on (resetting what was collected) or off.
    /// For a batch run item by item, the one-item plans time their steps
    /// and a node's time is summed over the items (and so, with items on
    /// several threads at once, over the threads: CPU time).
    pub fn set_profiling(&mut self, on: bool) {
        let threads = self.cx.pool.as_ref().map_or(1, |p| p.threads());
        self.profiler = on.then(|| Profiler::new(self.steps.len(), threads));
        if let Some(pool) = &self.cx.pool {
            pool.set_timing(on);
        }
        if let Some(items) = self.items.as_mut() {
            items.plans().for_each(|p| p.set_profiling(on));
        }
    }

    /// Timings collected since profiling was turned on.
    pub fn profile(&self) -> Option<profile::Profile> {
        let p = self.profiler.as_ref()?;
        if let Some(items) = &self.items {
            return items.profile(p.runs);
        }
        let names: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        let ops: Vec<&'static str> = self.steps.iter().map(|s| s.op_type).collect();
        let flops: Vec<Option<u64>> = self.steps.iter().map(|s| s.flops).collect();
        Some(profile::Profile::build(p, &names, &ops, &flops))
    }

    /// Each step's node name and the time profiling has summed for it so
    /// far (None while profiling is off): the difference of two readings
    /// around one run is that run's time per node.
    pub fn step_times(&self) -> Option<Vec<(String, std::time::Duration)>> {
        let p = self.profiler.as_ref()?;
        if let Some(items) = &self.items {
            return items.step_times();
        }
        Some(
            self.steps
                .iter()
                .zip(&p.time)
                .map(|(s, &t)| (s.name.clone(), t))
                .collect(),
        )
    }
}

/// Clip's bounds when both are constant f32 scalars or absent (absent =
/// infinite); `None` otherwise.
fn clip_bounds(g: &Graph, node: &crate::ir::Node) -> Option<(f32, f32)> {
    if !matches!(node.op, Op::Clip) {
        return None;
    }
    let bound = |pos: usize, absent: f32| -> Option<f32> {
        match node.input(pos) {
            None => Some(absent),
            Some(v) => {
                let t = g.const_value(v)?;
                match t.as_f32()? {
                    [x] => Some(*x),
                    _ => None,
                }
            }
        }
    };
    Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?))
}

/// Marks the u8 edges between int8 steps (see [`QuantIo`]).
fn u8_edges(steps: &mut [Step], graph_outputs: &HashSet<ValueId>) {
    let mut readers: HashMap<ValueId, Vec<(usize, usize)>> = HashMap::new();
    for (t, step) in steps.iter().enumerate() {
        for (pos, v) in step.inputs.iter().enumerate() {
            if let Some(v) = v {
                readers.entry(*v).or_default().push((t, pos));
            }
        }
    }
    for p in 0..steps.len() {
        let Exec::Quant { .. } = steps[p].exec else {
            continue;
        };
        let v = steps[p].outputs[0];
        let Some(rs) = readers.get(&v) else { continue };
        if graph_outputs.contains(&v) {
            continue;
        }
        // Every reader an int8 step with v as its activation only, all with
        // the same static input quantization.
        let mut quant = None;
        let ok = rs.iter().all(|&(t, pos)| match &steps[t].exec {
            Exec::Quant { step, .. } if pos == 0 => match step.static_input_quant() {
                Some(q) if quant.is_none_or(|seen| seen == q) => {
                    quant = Some(q);
                    true
                }
                _ => false,
            },
            _ => false,
        });
        let Some((scale, zero_point)) = quant.filter(|_| ok) else {
            continue;
        };
        if let Exec::Quant { io, .. } = &mut steps[p].exec {
            io.out_u8 = Some(QRequant { scale, zero_point });
        }
        for &(t, _) in rs {
            if let Exec::Quant { io, .. } = &mut steps[t].exec {
                io.in_u8 = true;
            }
        }
    }
}

/// A batch run as one-item runs, then the rest on the whole batch (see
/// the module docs).
pub(crate) struct Items {
    pub(crate) batch: usize,
    /// One-item plans of the prefix, one per thread, each running on its
    /// own thread (one plan on the pool's threads when there is only one
    /// thread).
    pub(crate) lanes: Vec<Mutex<Plan>>,
    /// The one-item plan on all threads, for the items past the last
    /// multiple of the thread count.
    pub(crate) tail: Option<Plan>,
    /// The rest of the graph on the whole batch, and its inputs' sources.
    pub(crate) suffix: Option<(Plan, Vec<Source>)>,
    pub(crate) outputs: Vec<Source>,
    pub(crate) cx: CpuCtx,
}

impl Items {
    /// Plans `split` for `cx`'s threads.
    pub(crate) fn new(
        split: BatchSplit,
        cx: &CpuCtx,
        packs: &PackCache,
        choices: &Choices,
    ) -> Result<Items> {
        let BatchSplit {
            batch,
            prefix,
            suffix,
            outputs,
        } = split;
        let threads = cx.threads.min(batch);
        let lane_cx = match threads {
            1 => cx.clone(),
            _ => CpuCtx {
                threads: 1,
                pool: None,
                ..cx.clone()
            },
        };
        let mut lanes = Vec::with_capacity(threads);
        for _ in 0..threads {
            let plan = Plan::with_choices(prefix.clone(), lane_cx.clone(), packs, choices)?;
            lanes.push(Mutex::new(plan));
        }
        let tail = match batch % threads {
            0 => None,
            _ => Some(Plan::with_choices(prefix, cx.clone(), packs, choices)?),
        };
        let suffix = match suffix {
            Some((g, sources)) => {
                Some((Plan::with_choices(g, cx.clone(), packs, choices)?, sources))
            }
            None => None,
        };
        Ok(Items {
            batch,
            lanes,
            tail,
            suffix,
            outputs,
            cx: cx.clone(),
        })
    }

    /// The first one-item plan (every one has the same steps).
    fn first(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.lanes[0].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plans' memory statistics: the arenas of all of them, the steps
    /// of the one-item plan and the rest.
    pub(crate) fn stats(&self) -> PlanStats {
        let mut stats = self.first().stats().clone();
        let plans = self.lanes.len() + usize::from(self.tail.is_some());
        stats.arena_bytes *= plans;
        stats.unshared_bytes *= plans;
        if let Some((rest, _)) = &self.suffix {
            let r = rest.stats();
            stats.nodes += r.nodes;
            stats.arena_values += r.arena_values;
            stats.arena_bytes += r.arena_bytes;
            stats.unshared_bytes += r.unshared_bytes;
            stats.live_peak_bytes = stats.live_peak_bytes.max(r.live_peak_bytes);
            stats.fast_nodes += r.fast_nodes;
            stats.reference_nodes += r.reference_nodes;
            stats.copy_nodes += r.copy_nodes;
            stats.aliased_nodes += r.aliased_nodes;
            stats.in_place_nodes += r.in_place_nodes;
        }
        stats.reuse_ratio = match stats.arena_bytes {
            0 => 1.0,
            a => stats.unshared_bytes as f64 / a as f64,
        };
        stats
    }

    /// Items of the batch, and steps run item by item: what
    /// [`Plan::items`] reports.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.batch, self.first().steps.len())
    }

    pub(crate) fn steps(&self) -> Vec<StepInfo> {
        let mut steps = self.first().steps();
        if let Some((rest, _)) = &self.suffix {
            steps.extend(rest.steps());
        }
        steps
    }

    /// Profiling merged: each one-item step's time summed over the
    /// plans, then the rest's steps; per run of the batch (`runs`). The
    /// items run side by side, a thread each: no step's idle threads are
    /// told apart.
    fn merged(&self, runs: u64) -> Option<Profiler> {
        let mut sum: Option<Profiler> = None;
        let mut add = |p: &Plan| {
            let Some(q) = p.profiler.as_ref() else { return };
            let s = sum.get_or_insert_with(|| Profiler::new(q.time.len(), 1));
            for (a, b) in s.time.iter_mut().zip(&q.time) {
                *a += *b;
            }
            for (a, b) in s.reference_runs.iter_mut().zip(&q.reference_runs) {
                *a += *b;
            }
        };
        for lane in &self.lanes {
            add(&lane.lock().unwrap_or_else(|p| p.into_inner()));
        }
        if let Some(t) = &self.tail {
            add(t);
        }
        let mut sum = sum?;
        if let Some(q) = self.suffix.as_ref().and_then(|(r, _)| r.profiler.as_ref()) {
            sum.time.extend(&q.time);
            sum.reference_runs.extend(&q.reference_runs);
            sum.pool.extend(&q.pool);
        }
        sum.runs = runs;
        Some(sum)
    }

    /// Names, op types and flops (over the batch) of [`Items::steps`].
    fn step_table(&self) -> Vec<(String, &'static str, Option<u64>)> {
        let first = self.first();
        let items = first.steps.iter().map(|s| {
            let flops = s.flops.map(|f| f * self.batch as u64);
            (s.name.clone(), s.op_type, flops)
        });
        let rest = self
            .suffix
            .iter()
            .flat_map(|(r, _)| r.steps.iter().map(|s| (s.name.clone(), s.op_type, s.flops)));
        items.chain(rest).collect()
    }

    /// Timings per batch run, summed over the items.
    pub(crate) fn profile(&self, runs: u64) -> Option<Profile> {
        let p = self.merged(runs)?;
        let table = self.step_table();
        let names: Vec<&str> = table.iter().map(|s| s.0.as_str()).collect();
        let ops: Vec<&'static str> = table.iter().map(|s| s.1).collect();
        let flops: Vec<Option<u64>> = table.iter().map(|s| s.2).collect();
        Some(Profile::build(&p, &names, &ops, &flops))
    }

    /// Each step's name and time so far, summed over the items.
    pub(crate) fn step_times(&self) -> Option<Vec<(String, Duration)>> {
        let p = self.merged(0)?;
        Some(
            self.step_table()
                .into_iter()
                .map(|s| s.0)
                .zip(p.time)
                .collect(),
        )
    }

    /// Every plan.
    pub(crate) fn plans(&mut self) -> impl Iterator<Item = &mut Plan> {
        self.lanes
            .iter_mut()
            .map(|m| m.get_mut().unwrap_or_else(|p| p.into_inner()))
            .chain(self.tail.as_mut())
            .chain(self.suffix.as_mut().map(|s| &mut s.0))
    }
}

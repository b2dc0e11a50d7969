//! Running a plan: each step in schedule order on the fast kernels, the
//! in-place chain kernel, a copy, or the reference kernels.
//!
//! Fast steps see their data as [`View`]s and [`ViewMut`]s straight over the
//! arena, the caller's input tensors and the graph's constants; nothing is
//! allocated per step on that path (views of up to [`INLINE`] inputs and
//! outputs live on the stack). A step the fast kernels decline, or whose
//! values are not all f32, runs through [`reference::eval`] on tensors: f32
//! arena inputs are copied into tensors and the results copied back, so the
//! whole model always runs. The outputs are copied out of the arena at the
//! end.

use std::sync::Mutex;
use std::time::Instant;

use super::items::Source;
use super::plan::{Exec, Items, Loc, Plan, Step, ValueInfo};
use super::quant::{QDst, QIn};
use crate::ir::ops as reference;
use crate::ir::{DType, Tensor, ValueId};
use crate::kernels::cpu::choice::ProductKnobs;
use crate::kernels::cpu::{self, CpuCtx, View, ViewMut};
use crate::{Error, Result};

/// Inputs and outputs held on the stack for one fast step; more spill to a
/// vector (ops with that many operands are rare: Concat, long chains).
const INLINE: usize = 8;

/// Raw access to the arena for the duration of one run.
///
/// Views are made from a raw pointer because one step reads some arena
/// ranges while writing others, which a `&mut [f32]` of the whole arena
/// cannot express without splitting it per step.
#[derive(Clone, Copy)]
struct ArenaPtr {
    base: *mut f32,
    len: usize,
}

impl ArenaPtr {
    /// A shared view of `offset..offset + len`.
    ///
    /// SAFETY (callers): the range lies in the arena (checked here) and no
    /// `&mut` view of an overlapping range is alive while the result is.
    /// [`Plan::check_views`] proves the latter for every step at plan time:
    /// a step's output ranges overlap neither each other nor any input range
    /// it reads through a view, and views never outlive their step.
    unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a [f32] {
        assert!(offset + len <= self.len, "arena view out of bounds");
        // SAFETY: in bounds of the live arena allocation (asserted), f32 is
        // valid for any bits, and aliasing is the caller's contract above.
        unsafe { std::slice::from_raw_parts(self.base.add(offset), len) }
    }

    /// An exclusive view of `offset..offset + len`.
    ///
    /// SAFETY (callers): as for [`ArenaPtr::slice`], and no other view of an
    /// overlapping range is alive while the result is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        assert!(offset + len <= self.len, "arena view out of bounds");
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), len) }
    }
}

/// The f32 data of a value that is an input, a constant or in the arena.
///
/// SAFETY (callers): as for [`ArenaPtr::slice`].
unsafe fn f32_data<'a>(
    info: &'a ValueInfo,
    inputs: &'a [Tensor],
    arena: ArenaPtr,
) -> Result<&'a [f32]> {
    let missing = || Error::Internal("an f32 value is not held as f32 data".into());
    match &info.loc {
        Loc::Input(i) => inputs.get(*i).and_then(Tensor::as_f32).ok_or_else(missing),
        Loc::Const(t) => t.as_f32().ok_or_else(missing),
        // SAFETY: forwarded to the caller.
        Loc::Arena { offset, len } => Ok(unsafe { arena.slice(*offset, *len) }),
        Loc::Boxed(_) => Err(missing()),
    }
}

/// A value held as a tensor (a graph input, a constant or a boxed value);
/// an arena value is an error.
fn held_tensor<'a>(env: &'a Env, v: ValueId) -> Result<&'a Tensor> {
    match &value(env.values, v)?.loc {
        Loc::Input(i) => env
            .inputs
            .get(*i)
            .ok_or_else(|| Error::Internal("missing graph input".into())),
        Loc::Const(t) => Ok(t.as_ref()),
        Loc::Boxed(s) => env
            .boxed
            .get(*s)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Internal(format!("value {v} is read after it was freed"))),
        Loc::Arena { .. } => Err(Error::Internal(format!(
            "value {v} is in the arena, not held as a tensor"
        ))),
    }
}

fn value(values: &[Option<ValueInfo>], v: ValueId) -> Result<&ValueInfo> {
    values
        .get(v.0 as usize)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::Internal(format!("value {v} is not planned")))
}

/// What the steps share while running.
struct Env<'a> {
    values: &'a [Option<ValueInfo>],
    inputs: &'a [Tensor],
    arena: ArenaPtr,
    scratch: &'a mut [f32],
    boxed: &'a mut [Option<Tensor>],
    cx: &'a CpuCtx,
}

impl Plan {
    /// Runs the plan on `inputs` (in the order of the graph's inputs, with
    /// exactly the planned dtypes and shapes) and returns the outputs.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.check_inputs(inputs)?;
        if let Some(items) = self.items.as_mut() {
            if let Some(p) = self.profiler.as_mut() {
                p.runs += 1;
            }
            return items.run(inputs);
        }
        debug_assert!(self.check_views().is_ok(), "memory plan invariant");
        self.run_steps(inputs)?;
        self.collect_outputs(inputs)
    }

    /// The plan's graph is specialized: its inputs have the planned shapes.
    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        crate::ir::bind::check_inputs(&self.graph, inputs.iter().map(|t| (t.dtype(), t.shape())))
            .map(|_| ())
    }

    fn run_steps(&mut self, inputs: &[Tensor]) -> Result<()> {
        let Plan {
            values,
            steps,
            arena,
            arena_base,
            arena_len,
            boxed,
            scratch,
            cx,
            profiler,
            ..
        } = self;
        let tail = arena.get_mut(*arena_base..).unwrap_or_default();
        if tail.len() < *arena_len {
            return Err(Error::Internal("the arena is smaller than planned".into()));
        }
        let ptr = ArenaPtr {
            base: tail.as_mut_ptr(),
            len: *arena_len,
        };
        let mut env = Env {
            values,
            inputs,
            arena: ptr,
            scratch,
            boxed,
            cx,
        };
        if let Some(p) = profiler.as_mut() {
            p.runs += 1;
        }
        // The pool's jobs are timed while profiling (`set_profiling`).
        let pool = profiler.as_ref().and(cx.pool.as_deref());
        for (i, step) in steps.iter().enumerate() {
            let start = profiler.is_some().then(Instant::now);
            let jobs = pool.map(|p| p.timing());
            let used_reference =
                run_step(step, &mut env).map_err(|e| e.at_node(&step.name, step.op_type))?;
            if let (Some(p), Some(t0)) = (profiler.as_mut(), start) {
                p.time[i] += t0.elapsed();
                if let (Some(pool), Some(before)) = (pool, jobs) {
                    p.pool[i] += pool.timing() - before;
                }
                if used_reference {
                    p.reference_runs[i] += 1;
                }
            }
            for &s in &step.frees {
                env.boxed[s] = None;
            }
        }
        Ok(())
    }

    fn collect_outputs(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let tail = self.arena.get(self.arena_base..).unwrap_or_default();
        self.outputs
            .iter()
            .map(|&o| {
                let info = value(&self.values, o)?;
                let lost = || {
                    Error::Internal(format!(
                        "output '{}' was not computed",
                        self.graph.value(o).name
                    ))
                };
                match &info.loc {
                    Loc::Input(i) => inputs.get(*i).cloned().ok_or_else(lost),
                    Loc::Const(t) => Ok(t.as_ref().clone()),
                    Loc::Arena { offset, len } => {
                        let data = tail.get(*offset..offset + len).ok_or_else(lost)?;
                        Tensor::from_f32(info.shape.clone(), data.to_vec())
                            .map_err(|e| Error::Internal(e.to_string()))
                    }
                    Loc::Boxed(s) => self.boxed.get(*s).cloned().flatten().ok_or_else(lost),
                }
            })
            .collect()
    }
}

/// Runs one step; says whether it went to the reference kernels.
fn run_step(step: &Step, env: &mut Env) -> Result<bool> {
    match &step.exec {
        Exec::Alias => Ok(false),
        Exec::Copy => {
            let (src, dst) = (
                value(env.values, input(step, 0)?)?,
                output_range(step, env, 0)?,
            );
            // SAFETY: the output range is disjoint from the input's
            // (Plan::check_views), and both views end with this block.
            unsafe {
                let s = f32_data(src, env.inputs, env.arena)?;
                let d = env.arena.slice_mut(dst.0, dst.1);
                if s.len() != d.len() {
                    return Err(Error::Internal("reshape copy of a different size".into()));
                }
                d.copy_from_slice(s);
            }
            Ok(false)
        }
        Exec::InPlace(k) => {
            let (off, len) = output_range(step, env, 0)?;
            let mut buf: [Option<&[f32]>; INLINE] = [None; INLINE];
            let mut spill: Vec<Option<&[f32]>> = Vec::new();
            let n = step.inputs.len();
            // SAFETY: the in-place input is not viewed (it is read through
            // the output); every other input range is disjoint from the
            // output (Plan::check_views); the views end with this step.
            unsafe {
                let ins: &mut [Option<&[f32]>] = if n <= INLINE {
                    &mut buf[..n]
                } else {
                    spill.resize(n, None);
                    &mut spill
                };
                for (p, slot) in ins.iter_mut().enumerate() {
                    if p == k.inplace {
                        continue;
                    }
                    if let Some(v) = step.inputs[p] {
                        *slot = Some(f32_data(value(env.values, v)?, env.inputs, env.arena)?);
                    }
                }
                let out = env.arena.slice_mut(off, len);
                k.run(ins, out, env.scratch, env.cx)?;
            }
            Ok(false)
        }
        Exec::Fast => {
            if run_fast(step, env)? {
                Ok(false)
            } else {
                run_reference(step, env)?;
                Ok(true)
            }
        }
        Exec::Reference => {
            run_reference(step, env)?;
            Ok(true)
        }
        Exec::Gather { axis } => {
            let (off, len) = output_range(step, env, 0)?;
            let x_info = value(env.values, input(step, 0)?)?;
            let ind = held_tensor(env, input(step, 1)?)?;
            let widened;
            let indices = match (ind.dtype(), ind.as_i64()) {
                (_, Some(i)) => i,
                (DType::I32, None) => {
                    widened = reference::util::i64_values("Gather", "indices", ind)?;
                    &widened
                }
                (other, None) => {
                    return Err(Error::op(
                        "Gather",
                        format!("indices must be i32 or i64, got {other}"),
                    ))
                }
            };
            // SAFETY: the output range is disjoint from the data's
            // (Plan::check_views); the views end with this block.
            unsafe {
                let x = f32_data(x_info, env.inputs, env.arena)?;
                let out = env.arena.slice_mut(off, len);
                crate::kernels::cpu::ops::gather_f32(&x_info.shape, x, *axis, indices, out)?;
            }
            Ok(false)
        }
        Exec::Quant { step: q, io } => {
            let (off, len) = output_range(step, env, 0)?;
            // SAFETY: the output range is disjoint from every input range of
            // this step (Plan::check_views); the views end with this block.
            // A u8 edge's `numel` bytes fill its slot (`⌈numel / 4⌉`
            // floats), written by its producer (`QuantIo`).
            unsafe {
                let x_info = value(env.values, input(step, 0)?)?;
                let x = f32_data(x_info, env.inputs, env.arena)?;
                let x = if io.in_u8 {
                    let n = u8_bytes(x_info, x.len())?;
                    QIn::U8(std::slice::from_raw_parts(x.as_ptr() as *const u8, n))
                } else {
                    QIn::F32(x)
                };
                let residual = match q.residual {
                    Some(p) => Some(f32_data(
                        value(env.values, input(step, p)?)?,
                        env.inputs,
                        env.arena,
                    )?),
                    None => None,
                };
                let out = env.arena.slice_mut(off, len);
                let out = match io.out_u8 {
                    Some(rq) => {
                        let n = u8_bytes(value(env.values, step.outputs[0])?, len)?;
                        QDst::U8(
                            std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n),
                            rq,
                        )
                    }
                    None => QDst::F32(out),
                };
                match step_cx(step, env.cx) {
                    Some(cx) => q.run(x, residual, out, &cx)?,
                    None => q.run(x, residual, out, env.cx)?,
                }
            }
            Ok(false)
        }
    }
}

/// The bytes of u8 edge `info`, whose slot is `floats` long.
fn u8_bytes(info: &ValueInfo, floats: usize) -> Result<usize> {
    let n: usize = info.shape.iter().product();
    if n.div_ceil(4) > floats {
        return Err(Error::Internal(format!(
            "a u8 edge of {n} bytes in a slot of {floats} floats"
        )));
    }
    Ok(n)
}

fn input(step: &Step, pos: usize) -> Result<ValueId> {
    step.inputs
        .get(pos)
        .copied()
        .flatten()
        .ok_or_else(|| Error::Internal(format!("input {pos} is missing")))
}

/// The arena `(offset, len)` of output `pos`.
fn output_range(step: &Step, env: &Env, pos: usize) -> Result<(usize, usize)> {
    let o = *step
        .outputs
        .get(pos)
        .ok_or_else(|| Error::Internal(format!("output {pos} is missing")))?;
    match value(env.values, o)?.loc {
        Loc::Arena { offset, len } => Ok((offset, len)),
        _ => Err(Error::Internal("an f32 output is not in the arena".into())),
    }
}

/// Offers the step to the fast kernels with views over its data.
fn run_fast(step: &Step, env: &mut Env) -> Result<bool> {
    let n_in = step.inputs.len();
    let n_out = step.outputs.len();
    let mut in_buf: [Option<View>; INLINE] = [None; INLINE];
    let mut in_spill: Vec<Option<View>> = Vec::new();
    let mut out_buf: [ViewMut; INLINE] = std::array::from_fn(|_| ViewMut {
        shape: &[],
        data: &mut [],
    });
    let mut out_spill: Vec<ViewMut> = Vec::new();
    // SAFETY: every output range is disjoint from the other outputs and
    // from every input range of this step (Plan::check_views, run at plan
    // time); the views live until the end of this function only.
    unsafe {
        let ins: &mut [Option<View>] = if n_in <= INLINE {
            &mut in_buf[..n_in]
        } else {
            in_spill.resize(n_in, None);
            &mut in_spill
        };
        for (slot, v) in ins.iter_mut().zip(&step.inputs) {
            if let Some(v) = v {
                let info = value(env.values, *v)?;
                *slot = Some(View {
                    shape: &info.shape,
                    data: f32_data(info, env.inputs, env.arena)?,
                });
            }
        }
        let make_out = |pos: usize| -> Result<ViewMut> {
            let info = value(env.values, step.outputs[pos])?;
            let (off, len) = output_range(step, env, pos)?;
            Ok(ViewMut {
                shape: &info.shape,
                data: env.arena.slice_mut(off, len),
            })
        };
        let outs: &mut [ViewMut] = if n_out <= INLINE {
            for (pos, slot) in out_buf[..n_out].iter_mut().enumerate() {
                *slot = make_out(pos)?;
            }
            &mut out_buf[..n_out]
        } else {
            for pos in 0..n_out {
                out_spill.push(make_out(pos)?);
            }
            &mut out_spill
        };
        match step_cx(step, env.cx) {
            Some(cx) => cpu::run_node_packed(&step.op, ins, outs, step.packed.as_deref(), &cx),
            None => cpu::run_node_packed(&step.op, ins, outs, step.packed.as_deref(), env.cx),
        }
    }
}

/// The context a step's kernel choice asks for (narrowed features, one
/// thread, product knobs), when it differs from the plan's.
fn step_cx(step: &Step, cx: &CpuCtx) -> Option<CpuCtx> {
    let knobs = step.choice.product_knobs();
    if step.features.is_none() && !step.choice.single_thread && knobs == ProductKnobs::default() {
        return None;
    }
    let mut cx = CpuCtx {
        features: step.features.unwrap_or(cx.features),
        knobs,
        ..cx.clone()
    };
    if step.choice.single_thread {
        cx.threads = 1;
        cx.pool = None;
    }
    Some(cx)
}

/// Runs the step with the reference kernel on tensors.
fn run_reference(step: &Step, env: &mut Env) -> Result<()> {
    // Arena inputs are copied into tensors; everything else is borrowed.
    let mut owned: Vec<Option<Tensor>> = Vec::with_capacity(step.inputs.len());
    for v in &step.inputs {
        let t = match v {
            Some(v) => {
                let info = value(env.values, *v)?;
                match info.loc {
                    Loc::Arena { offset, len } => {
                        // SAFETY: a shared view copied at once; no exclusive
                        // view exists while it lives.
                        let data = unsafe { env.arena.slice(offset, len) }.to_vec();
                        Some(
                            Tensor::from_f32(info.shape.clone(), data)
                                .map_err(|e| Error::Internal(e.to_string()))?,
                        )
                    }
                    _ => None,
                }
            }
            None => None,
        };
        owned.push(t);
    }
    let outs = {
        let mut refs: Vec<Option<&Tensor>> = Vec::with_capacity(step.inputs.len());
        for (v, own) in step.inputs.iter().zip(&owned) {
            let r = match (v, own) {
                (None, _) => None,
                (Some(_), Some(t)) => Some(t),
                (Some(v), None) => Some(held_tensor(env, *v)?),
            };
            refs.push(r);
        }
        reference::eval(&step.op, &refs, step.outputs.len())?
    };
    drop(owned);
    if outs.len() < step.outputs.len() {
        return Err(Error::Internal(format!(
            "the reference kernel produced {} outputs, {} declared",
            outs.len(),
            step.outputs.len()
        )));
    }
    for (&o, t) in step.outputs.iter().zip(outs) {
        let info = value(env.values, o)?;
        if t.dtype() != info.dtype || t.shape() != info.shape.as_slice() {
            return Err(Error::Internal(format!(
                "output {o} is {}{:?} but was planned as {}{:?}",
                t.dtype(),
                t.shape(),
                info.dtype,
                info.shape
            )));
        }
        match info.loc {
            Loc::Arena { offset, len } => {
                let src = t
                    .as_f32()
                    .ok_or_else(|| Error::Internal("f32 output without f32 data".into()))?;
                // SAFETY: no other view is alive here; the range is in the
                // arena and sized for this output.
                unsafe { env.arena.slice_mut(offset, len) }.copy_from_slice(src);
            }
            Loc::Boxed(s) => {
                if let Some(slot) = env.boxed.get_mut(s) {
                    *slot = Some(t);
                }
            }
            _ => {
                return Err(Error::Internal(
                    "a node output is an input or a constant".into(),
                ))
            }
        }
    }
    Ok(())
}

impl Items {
    /// Runs the batch `inputs`: the prefix item by item, its outputs
    /// joined along the leading axis, then the rest.
    pub(crate) fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let prefix = self.run_prefix(inputs)?;
        let rest = match self.suffix.as_mut() {
            None => Vec::new(),
            Some((plan, sources)) => {
                let feed: Vec<Tensor> = sources
                    .iter()
                    .map(|s| pick(*s, inputs, &prefix, &[]))
                    .collect::<Result<_>>()?;
                plan.run(&feed)?
            }
        };
        self.outputs
            .iter()
            .map(|s| pick(*s, inputs, &prefix, &rest))
            .collect()
    }

    /// The prefix's outputs over the batch.
    fn run_prefix(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let per_lanes = self.batch - self.batch % self.lanes.len();
        let results: Vec<Mutex<Option<Result<Vec<Tensor>>>>> =
            (0..self.batch).map(|_| Mutex::new(None)).collect();
        let run_item = |plan: &mut Plan, i: usize| -> Result<Vec<Tensor>> {
            let item: Vec<Tensor> = inputs
                .iter()
                .map(|t| item_of(t, i, self.batch))
                .collect::<Result<_>>()?;
            plan.run(&item)
        };
        let store = |i: usize, r: Result<Vec<Tensor>>| {
            *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        };
        if self.lanes.len() == 1 {
            let plan = self.lanes[0].get_mut().unwrap_or_else(|p| p.into_inner());
            for i in 0..per_lanes {
                store(i, run_item(plan, i));
            }
        } else {
            let lanes = &self.lanes;
            self.cx.for_each(per_lanes, |i| {
                // At most as many items run at once as there are threads,
                // and as many lanes: one is always free.
                let lane = lanes.iter().find_map(|l| l.try_lock().ok());
                let r = match lane {
                    Some(mut plan) => run_item(&mut plan, i),
                    None => Err(Error::Internal("no free one-item plan".into())),
                };
                store(i, r);
            });
        }
        if let Some(tail) = self.tail.as_mut() {
            for i in per_lanes..self.batch {
                store(i, run_item(tail, i));
            }
        }
        let mut joined: Option<Vec<Tensor>> = None;
        for slot in results {
            let outs = slot
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .ok_or_else(|| Error::Internal("an item was not run".into()))??;
            joined = Some(match joined {
                None => outs,
                Some(acc) => acc
                    .into_iter()
                    .zip(outs)
                    .map(|(a, b)| append_item(a, &b))
                    .collect::<Result<_>>()?,
            });
        }
        joined.ok_or_else(|| Error::Internal("an empty batch".into()))
    }
}

/// The value `s` names among the caller's inputs and the two parts'
/// outputs.
fn pick(s: Source, inputs: &[Tensor], prefix: &[Tensor], rest: &[Tensor]) -> Result<Tensor> {
    let t = match s {
        Source::Caller(i) => inputs.get(i),
        Source::Prefix(i) => prefix.get(i),
        Source::Suffix(i) => rest.get(i),
    };
    t.cloned()
        .ok_or_else(|| Error::Internal(format!("a split batch run lacks {s:?}")))
}

/// Item `i` of the `batch` items along `t`'s leading axis.
fn item_of(t: &Tensor, i: usize, batch: usize) -> Result<Tensor> {
    let per = t.numel() / batch;
    let mut shape = t.shape().to_vec();
    shape[0] = 1;
    Tensor::new(shape, t.data().range(i * per..(i + 1) * per))
        .map_err(|e| Error::Internal(format!("one item of a batch: {e}")))
}

/// `acc` with `item` appended along the leading axis.
fn append_item(acc: Tensor, item: &Tensor) -> Result<Tensor> {
    let mut shape = acc.shape().to_vec();
    shape[0] += item.shape()[0];
    let mut data = acc.into_data();
    if !data.extend_from(item.data()) {
        return Err(Error::Internal("items' outputs of different types".into()));
    }
    Tensor::new(shape, data).map_err(|e| Error::Internal(format!("joining items: {e}")))
}

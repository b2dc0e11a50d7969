//! In-place elementwise execution: a node whose input dies at the node
//! writes its result over that input's buffer.
//!
//! The fast kernels take inputs and outputs as separate slices (`&[f32]` and
//! `&mut [f32]` may not alias in Rust), so a node planned in place runs
//! here instead. Every in-place op is first expressed as an
//! [`Op::Elementwise`] chain (a Unary, Binary or Clip is a one-step chain),
//! which this module evaluates over the output buffer with the reference
//! chain kernel's exact arithmetic (Add/Sub/Mul/Div in f32, unary math and
//! Pow in f64 rounded after every step), so in-place and out-of-place results
//! agree bit for bit. The aliased input is read from the output buffer at the
//! element being written, the other inputs broadcast onto the output shape.
//!
//! Evaluation is row by row over the output with its dims coalesced (adjacent
//! dims that every input either spans or broadcasts together merge), so a
//! bias add over `[batch, seq, hidden]` is one long row per bias repeat; each
//! row is processed in chunks of [`CHUNK`] elements, one tight loop per step
//! over a per-step scratch slice, which the compiler vectorizes for the
//! arithmetic steps. Nothing is allocated while running: the scratch comes
//! from the plan.

use crate::ir::ops::math::reference::unary_float;
use crate::ir::{BinaryOp, EwArg, EwStep, Op, UnaryOp};
use crate::kernels::cpu::{CpuCtx, Features};
use crate::{Error, Result};

/// Elements per chunk of a row (a few KiB of scratch per step, in L1).
pub const CHUNK: usize = 256;

/// Elements below which a chain runs on the calling thread alone.
const PARALLEL_MIN: usize = 1 << 15;

thread_local! {
    /// A worker thread's scratch for its rows of a chain (the plan's
    /// scratch is the calling thread's).
    static THREAD_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An elementwise chain over broadcast f32 inputs, planned to overwrite input
/// `inplace` (which has the output's shape) with the result.
#[derive(Clone, Debug)]
pub struct ChainKernel {
    steps: Vec<EwStep>,
    /// The node input whose buffer is the output buffer.
    pub inplace: usize,
    /// Coalesced output dims (never empty; the last one is the row).
    dims: Vec<usize>,
    /// Per input: its stride along each coalesced dim (0 where broadcast).
    strides: Vec<Vec<usize>>,
    numel: usize,
}

/// The chain an op computes, when it is an f32 elementwise op this module
/// runs: Unary (not Not), arithmetic Binary, Clip with constant (or absent)
/// bounds, Elementwise. `clip_bounds` gives Clip's bounds when they are
/// known constants (`None` = not constant: no chain).
pub fn chain_of(op: &Op, clip_bounds: Option<(f32, f32)>) -> Option<Vec<EwStep>> {
    match op {
        Op::Unary(UnaryOp::Not) => None,
        Op::Unary(u) => Some(vec![EwStep::Unary(u.clone(), EwArg::Input(0))]),
        Op::Binary(b) if b.is_chain_arithmetic() => {
            Some(vec![EwStep::Binary(*b, EwArg::Input(0), EwArg::Input(1))])
        }
        Op::Clip => clip_bounds.map(|(lo, hi)| vec![EwStep::Clip(EwArg::Input(0), lo, hi)]),
        Op::Elementwise { steps } => Some(steps.clone()),
        _ => None,
    }
}

/// Whether every step of a chain is cheap scalar arithmetic (no
/// transcendental function). Only such chains are planned in place: this
/// module evaluates transcendental steps with the reference's scalar f64
/// math, while the fast kernels vectorize them, so an `exp`, `erf`, `tanh`,
/// `sigmoid`, `gelu`, `elu`, `log` or `pow` step runs faster out of place.
pub fn is_cheap(steps: &[EwStep]) -> bool {
    steps.iter().all(|s| match s {
        EwStep::Unary(u, _) => matches!(
            u,
            UnaryOp::Relu
                | UnaryOp::LeakyRelu { .. }
                | UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Sqrt
                | UnaryOp::Reciprocal
                | UnaryOp::Floor
                | UnaryOp::Ceil
                | UnaryOp::Sign
                | UnaryOp::Round
                | UnaryOp::Softsign
                | UnaryOp::HardSigmoid { .. }
                | UnaryOp::HardSwish
        ),
        EwStep::Binary(b, _, _) => {
            matches!(
                b,
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
            )
        }
        EwStep::Clip(..) => true,
    })
}

impl ChainKernel {
    /// Plans `steps` over inputs of `in_shapes` (numpy broadcasting) giving
    /// `out_shape`, overwriting input `inplace`. Fails when the chain is
    /// malformed, an input does not broadcast to the output or the aliased
    /// input does not have the output's shape.
    pub fn new(
        steps: Vec<EwStep>,
        in_shapes: &[&[usize]],
        out_shape: &[usize],
        inplace: usize,
    ) -> Result<ChainKernel> {
        const NAME: &str = "Elementwise";
        if steps.is_empty() {
            return Err(Error::op(NAME, "the chain has no steps"));
        }
        for (k, s) in steps.iter().enumerate() {
            let args: &[&EwArg] = match s {
                EwStep::Unary(UnaryOp::Not, _) => {
                    return Err(Error::op(NAME, format!("step {k}: Not is bool-only")))
                }
                EwStep::Unary(_, a) | EwStep::Clip(a, _, _) => &[a],
                EwStep::Binary(b, _, _) if !b.is_chain_arithmetic() => {
                    return Err(Error::op(
                        NAME,
                        format!("step {k}: {b:?} is not arithmetic"),
                    ))
                }
                EwStep::Binary(_, x, y) => &[x, y],
            };
            for a in args {
                match a {
                    EwArg::Input(i) if *i >= in_shapes.len() => {
                        return Err(Error::op(NAME, format!("step {k} reads missing input {i}")))
                    }
                    EwArg::Step(j) if *j >= k => {
                        return Err(Error::op(NAME, format!("step {k} reads later step {j}")))
                    }
                    _ => {}
                }
            }
        }
        if in_shapes.get(inplace).copied() != Some(out_shape) {
            return Err(Error::op(
                NAME,
                "the in-place input must have the output's shape",
            ));
        }
        let rank = out_shape.len();
        // Inputs padded to the output's rank, checked to broadcast.
        let mut padded: Vec<Vec<usize>> = Vec::with_capacity(in_shapes.len());
        for (i, s) in in_shapes.iter().enumerate() {
            if s.len() > rank {
                return Err(Error::op(
                    NAME,
                    format!("input {i} {s:?} has a higher rank than the output {out_shape:?}"),
                ));
            }
            let mut p = vec![1usize; rank - s.len()];
            p.extend_from_slice(s);
            for (d, (&a, &o)) in p.iter().zip(out_shape).enumerate() {
                if a != o && a != 1 {
                    return Err(Error::op(
                        NAME,
                        format!("input {i} {s:?} does not broadcast to {out_shape:?} (dim {d})"),
                    ));
                }
            }
            padded.push(p);
        }
        let numel: usize = out_shape.iter().product();
        // Coalesce: drop size-1 output dims, merge neighbours that every
        // input treats alike (all spanned or all broadcast).
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: Vec<Vec<usize>> = vec![Vec::new(); in_shapes.len()];
        let mut pattern: Vec<bool> = Vec::new(); // per input: spans the last kept dim
        for d in 0..rank {
            if out_shape[d] == 1 {
                continue;
            }
            let spans: Vec<bool> = padded.iter().map(|p| p[d] != 1).collect();
            // Stride of input i along dim d (its row-major stride).
            let stride = |i: usize| -> usize { padded[i][d + 1..].iter().product() };
            if !dims.is_empty() && spans == pattern {
                if let Some(last) = dims.last_mut() {
                    *last *= out_shape[d];
                }
                for (i, st) in strides.iter_mut().enumerate() {
                    if let Some(l) = st.last_mut() {
                        *l = if spans[i] { stride(i) } else { 0 };
                    }
                }
            } else {
                dims.push(out_shape[d]);
                for (i, st) in strides.iter_mut().enumerate() {
                    st.push(if spans[i] { stride(i) } else { 0 });
                }
                pattern = spans;
            }
        }
        if dims.is_empty() {
            dims.push(1);
            for st in strides.iter_mut() {
                st.push(0);
            }
        }
        Ok(ChainKernel {
            steps,
            inplace,
            dims,
            strides,
            numel,
        })
    }

    /// Scratch this kernel needs, in f32 elements.
    pub fn scratch_len(&self) -> usize {
        self.steps.len() * CHUNK
    }

    /// Runs the chain: `inputs[i]` is input `i`'s data (ignored for the
    /// in-place input, which is `out`), `out` the output buffer holding the
    /// in-place input's values on entry, `scratch` at least
    /// [`scratch_len`](Self::scratch_len) elements.
    pub fn run(
        &self,
        inputs: &[Option<&[f32]>],
        out: &mut [f32],
        scratch: &mut [f32],
        cx: &CpuCtx,
    ) -> Result<()> {
        const NAME: &str = "Elementwise";
        if out.len() != self.numel || scratch.len() < self.scratch_len() {
            return Err(Error::Internal(format!(
                "in-place chain: output of {} elements for {}, scratch {} for {}",
                out.len(),
                self.numel,
                scratch.len(),
                self.scratch_len()
            )));
        }
        if self.numel == 0 {
            return Ok(());
        }
        let rank = self.dims.len();
        let row = self.dims[rank - 1];
        let rows = self.numel / row;
        // Every non-aliased input must be present and long enough for its
        // strides (checked once, so the loops below index in bounds).
        for (i, st) in self.strides.iter().enumerate() {
            if i == self.inplace {
                continue;
            }
            let data = inputs
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| Error::op(NAME, format!("input {i} is missing")))?;
            let span: usize = self
                .dims
                .iter()
                .zip(st)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
                + 1;
            if data.len() < span {
                return Err(Error::Internal(format!(
                    "in-place chain: input {i} has {} elements, needs {span}",
                    data.len()
                )));
            }
        }
        // Rows shared out over the threads, each with its own scratch (an
        // attention score chain is 1536 rows of 128 a sequence).
        let parts = cx.threads.min(rows);
        if parts > 1 && self.numel >= PARALLEL_MIN {
            let per = rows.div_ceil(parts);
            let tasks: Vec<&mut [f32]> = out.chunks_mut(per * row).collect();
            let len = self.scratch_len();
            cx.for_each_item(tasks, |t, part| {
                THREAD_SCRATCH.with(|cell| {
                    let mut own = cell.borrow_mut();
                    if own.len() < len {
                        own.resize(len, 0.0);
                    }
                    self.rows_on(cx.features, inputs, part, t * per, &mut own);
                })
            });
        } else {
            self.rows_on(cx.features, inputs, out, 0, scratch);
        }
        Ok(())
    }

    /// [`ChainKernel::rows`] built for the widest instruction set
    /// `features` allow: the same f32 (and f64) operations lane for lane,
    /// vectorized 8 or 16 wide instead of 4.
    fn rows_on(
        &self,
        features: Features,
        inputs: &[Option<&[f32]>],
        out: &mut [f32],
        first: usize,
        scratch: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            // `rows` compiled once per instruction set.
            macro_rules! build {
                ($name:ident, $features:literal) => {
                    #[target_feature(enable = $features)]
                    unsafe fn $name(
                        k: &ChainKernel,
                        inputs: &[Option<&[f32]>],
                        out: &mut [f32],
                        first: usize,
                        scratch: &mut [f32],
                    ) {
                        k.rows(inputs, out, first, scratch)
                    }
                };
            }
            build!(avx512, "avx2,fma,avx512f,avx512bw");
            build!(avx2, "avx2,fma");
            let has_avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let has_avx512 =
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            if features.avx512f && has_avx2 && has_avx512 {
                // SAFETY: the CPU has AVX2, FMA, AVX-512 F and BW (checked).
                return unsafe { avx512(self, inputs, out, first, scratch) };
            }
            if features.avx2_fma && has_avx2 {
                // SAFETY: the CPU has AVX2 and FMA (checked).
                return unsafe { avx2(self, inputs, out, first, scratch) };
            }
        }
        let _ = features;
        self.rows(inputs, out, first, scratch)
    }

    /// Rows `first ..` of the output, `out` holding them (whole rows).
    /// Its helpers (`unary`, `binary`, the maps) are `inline(always)`, so
    /// that each build vectorizes them with its own instruction set.
    #[inline(always)]
    fn rows(&self, inputs: &[Option<&[f32]>], out: &mut [f32], first: usize, scratch: &mut [f32]) {
        let rank = self.dims.len();
        let row = self.dims[rank - 1];
        let last = self.steps.len() - 1;
        for (n, r) in (first..first + out.len() / row).enumerate() {
            let out_base = n * row;
            let mut c0 = 0;
            while c0 < row {
                let len = CHUNK.min(row - c0);
                {
                    let cur: &[f32] = &out[out_base + c0..out_base + c0 + len];
                    for (k, step) in self.steps.iter().enumerate() {
                        let (prev, rest) = scratch.split_at_mut(k * CHUNK);
                        let dst = &mut rest[..len];
                        let arg = |a: &EwArg| -> Arg {
                            match *a {
                                EwArg::Input(i) if i == self.inplace => Arg::S(cur),
                                EwArg::Input(i) => {
                                    // Presence checked in `run`.
                                    let data = inputs[i].unwrap_or(&[]);
                                    let st = &self.strides[i];
                                    let base = self.row_offset(r, st) + c0 * st[rank - 1];
                                    if st[rank - 1] == 0 {
                                        Arg::V(data[base])
                                    } else {
                                        Arg::S(&data[base..base + len])
                                    }
                                }
                                EwArg::Step(j) => Arg::S(&prev[j * CHUNK..j * CHUNK + len]),
                                EwArg::Scalar(s) => Arg::V(s),
                            }
                        };
                        match step {
                            EwStep::Unary(u, a) => unary(u, arg(a), dst),
                            EwStep::Binary(b, x, y) => binary(*b, arg(x), arg(y), dst),
                            EwStep::Clip(a, lo, hi) => {
                                let (lo, hi) = (*lo, *hi);
                                map1(arg(a), dst, |x| clip(x, lo, hi))
                            }
                        }
                    }
                }
                out[out_base + c0..out_base + c0 + len]
                    .copy_from_slice(&scratch[last * CHUNK..last * CHUNK + len]);
                c0 += len;
            }
        }
    }

    /// Offset of row `r`'s first element in an input with strides `st`.
    fn row_offset(&self, r: usize, st: &[usize]) -> usize {
        let rank = self.dims.len();
        let mut rem = r;
        let mut off = 0;
        for d in (0..rank - 1).rev() {
            let n = self.dims[d];
            off += (rem % n) * st[d];
            rem /= n;
        }
        off
    }
}

/// A step operand over one chunk: a slice, or one value for every element.
#[derive(Clone, Copy)]
enum Arg<'a> {
    S(&'a [f32]),
    V(f32),
}

#[inline(always)]
fn map1(a: Arg, dst: &mut [f32], f: impl Fn(f32) -> f32) {
    match a {
        Arg::S(s) => dst.iter_mut().zip(s).for_each(|(d, &x)| *d = f(x)),
        Arg::V(v) => dst.fill(f(v)),
    }
}

#[inline(always)]
fn map2(x: Arg, y: Arg, dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    match (x, y) {
        (Arg::S(a), Arg::S(b)) => dst
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(d, (&p, &q))| *d = f(p, q)),
        (Arg::S(a), Arg::V(q)) => dst.iter_mut().zip(a).for_each(|(d, &p)| *d = f(p, q)),
        (Arg::V(p), Arg::S(b)) => dst.iter_mut().zip(b).for_each(|(d, &q)| *d = f(p, q)),
        (Arg::V(p), Arg::V(q)) => dst.fill(f(p, q)),
    }
}

/// Unary math as the reference kernel does it (f64, rounded), with the exact
/// f32 shortcuts for Relu, Neg and Abs.
#[inline(always)]
fn unary(u: &UnaryOp, a: Arg, dst: &mut [f32]) {
    match u {
        UnaryOp::Relu => map1(a, dst, |x| if x < 0.0 { 0.0 } else { x }),
        UnaryOp::Neg => map1(a, dst, |x| -x),
        UnaryOp::Abs => map1(a, dst, f32::abs),
        other => map1(a, dst, |x| unary_float(other, x as f64) as f32),
    }
}

/// Arithmetic as the reference kernel does it: f32, Pow through f64.
#[inline(always)]
fn binary(b: BinaryOp, x: Arg, y: Arg, dst: &mut [f32]) {
    match b {
        BinaryOp::Add => map2(x, y, dst, |p, q| p + q),
        BinaryOp::Sub => map2(x, y, dst, |p, q| p - q),
        BinaryOp::Mul => map2(x, y, dst, |p, q| p * q),
        BinaryOp::Div => map2(x, y, dst, |p, q| p / q),
        BinaryOp::Pow => map2(x, y, dst, |p, q| (p as f64).powf(q as f64) as f32),
        // Rejected when the kernel is built.
        _ => dst.fill(f32::NAN),
    }
}

/// Clip like the reference: raise to `lo`, then lower to `hi`; NaN stays.
#[inline(always)]
fn clip(x: f32, lo: f32, hi: f32) -> f32 {
    let mut y = x;
    if y < lo {
        y = lo;
    }
    if y > hi {
        y = hi;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops as reference;
    use crate::ir::Tensor;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::ir::ops::util::testing::random(shape, seed, 3.0)
    }

    /// Runs `op` in place over input `inplace` and compares with the
    /// reference kernel bit for bit.
    fn check(op: &Op, ins: &[Tensor], inplace: usize, bounds: Option<(f32, f32)>) {
        let refs: Vec<Option<&Tensor>> = ins.iter().map(Some).collect();
        let want = reference::eval(op, &refs, 1).unwrap().remove(0);
        let steps = chain_of(op, bounds).expect("chain");
        let shapes: Vec<&[usize]> = ins.iter().map(|t| t.shape()).collect();
        let k = ChainKernel::new(steps, &shapes, want.shape(), inplace).unwrap();
        let mut out = ins[inplace].as_f32().unwrap().to_vec();
        let mut scratch = vec![0f32; k.scratch_len()];
        let views: Vec<Option<&[f32]>> = ins
            .iter()
            .enumerate()
            .map(|(i, t)| (i != inplace).then(|| t.as_f32().unwrap()))
            .collect();
        k.run(
            &views,
            &mut out,
            &mut scratch,
            &CpuCtx::single(Features::detect()),
        )
        .unwrap();
        let w = want.as_f32().unwrap();
        assert_eq!(out.len(), w.len());
        for (j, (a, b)) in out.iter().zip(w).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{op:?} element {j}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn unary_ops_match_the_reference() {
        for u in [
            UnaryOp::Relu,
            UnaryOp::Neg,
            UnaryOp::Abs,
            UnaryOp::Tanh,
            UnaryOp::Sigmoid,
            UnaryOp::Exp,
            UnaryOp::Erf,
            UnaryOp::Gelu { tanh_approx: false },
            UnaryOp::Gelu { tanh_approx: true },
            UnaryOp::LeakyRelu { alpha: 0.1 },
            UnaryOp::HardSwish,
        ] {
            for shape in [vec![], vec![1], vec![7], vec![3, 300], vec![0, 4]] {
                check(&Op::Unary(u.clone()), &[rand(&shape, 1)], 0, None);
            }
        }
    }

    #[test]
    fn binary_broadcasts_either_side() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[4]),
            (&[2, 3, 4], &[3, 1]),
            (&[2, 3, 4], &[]),
            (&[2, 3, 4], &[2, 1, 4]),
            (&[5, 1, 600], &[1, 1, 600]),
            (&[2, 1, 3], &[1, 1, 1]),
            (&[4, 257], &[4, 1]),
        ];
        for b in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Pow,
        ] {
            for (i, (a, c)) in cases.iter().enumerate() {
                let x = rand(a, 2 * i as u64);
                let y = rand(c, 2 * i as u64 + 1);
                check(&Op::Binary(b), &[x.clone(), y.clone()], 0, None);
                // The full-shape operand on the right.
                check(&Op::Binary(b), &[y, x], 1, None);
            }
        }
    }

    #[test]
    fn clip_and_chains() {
        let x = rand(&[3, 5, 7], 9);
        let lo = Tensor::scalar_f32(-0.5);
        let hi = Tensor::scalar_f32(1.0);
        check(&Op::Clip, &[x.clone(), lo, hi], 0, Some((-0.5, 1.0)));
        let bias = rand(&[7], 10);
        let steps = vec![
            EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Scalar(0.5)),
            EwStep::Binary(BinaryOp::Add, EwArg::Step(0), EwArg::Input(1)),
            EwStep::Unary(UnaryOp::Erf, EwArg::Step(1)),
            EwStep::Binary(BinaryOp::Sub, EwArg::Input(0), EwArg::Step(2)),
            EwStep::Clip(EwArg::Step(3), -1.0, 1.0),
        ];
        check(&Op::Elementwise { steps }, &[x, bias], 0, None);
    }

    #[test]
    fn only_cheap_chains_count_as_cheap() {
        let cheap = |op: Op| is_cheap(&chain_of(&op, Some((0.0, 1.0))).unwrap());
        assert!(cheap(Op::Unary(UnaryOp::Relu)));
        assert!(cheap(Op::Binary(BinaryOp::Add)));
        assert!(cheap(Op::Clip));
        assert!(!cheap(Op::Unary(UnaryOp::Tanh)));
        assert!(!cheap(Op::Unary(UnaryOp::Gelu { tanh_approx: true })));
        assert!(!cheap(Op::Binary(BinaryOp::Pow)));
        assert!(!cheap(Op::Elementwise {
            steps: vec![
                EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Scalar(0.5)),
                EwStep::Unary(UnaryOp::Erf, EwArg::Step(0)),
            ]
        }));
    }

    #[test]
    fn coalesces_dims() {
        let k = ChainKernel::new(
            chain_of(&Op::Binary(BinaryOp::Add), None).unwrap(),
            &[&[2, 3, 4, 5], &[4, 5]],
            &[2, 3, 4, 5],
            0,
        )
        .unwrap();
        assert_eq!(k.dims, vec![6, 20]);
        assert_eq!(k.strides, vec![vec![20, 1], vec![0, 1]]);
    }

    #[test]
    fn rejects_bad_plans() {
        let add = chain_of(&Op::Binary(BinaryOp::Add), None).unwrap();
        // The aliased input must have the output's shape.
        assert!(ChainKernel::new(add.clone(), &[&[4], &[3, 4]], &[3, 4], 0).is_err());
        assert!(ChainKernel::new(add.clone(), &[&[3, 4], &[5]], &[3, 4], 0).is_err());
        assert!(ChainKernel::new(add, &[&[3, 4]], &[3, 4], 0).is_err());
        assert!(chain_of(&Op::Binary(BinaryOp::Less), None).is_none());
        assert!(chain_of(&Op::Clip, None).is_none());
        assert!(chain_of(&Op::MatMul, None).is_none());
        let k = ChainKernel::new(
            chain_of(&Op::Unary(UnaryOp::Relu), None).unwrap(),
            &[&[4]],
            &[4],
            0,
        )
        .unwrap();
        let mut out = vec![0f32; 3];
        assert!(k
            .run(
                &[None],
                &mut out,
                &mut vec![0f32; CHUNK],
                &CpuCtx::single(Features::detect())
            )
            .is_err());
    }
}

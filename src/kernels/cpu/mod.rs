//! Fast CPU kernels for f32 inference: packed, cache-blocked GEMM with an
//! AVX-512, AVX2/FMA or (aarch64) NEON micro-kernel chosen at run time
//! (portable fallback everywhere),
//! convolution through im2col + GEMM with direct depthwise and 1x1 paths, and
//! vectorizable elementwise, pooling and normalization loops.
//!
//! Kernels read and write flat row-major f32 slices ([`View`], [`ViewMut`]):
//! the runtime owns the memory (one arena per plan) and hands each kernel its
//! inputs and preallocated outputs. [`run_node`] is the single entry point: it
//! runs a node on the fast path or says it has none, in which case the runtime
//! falls back to the reference kernel.

pub mod choice;
pub mod conv;
mod direct_oc;
pub mod gemm;
mod geometry;
mod lanes;
pub mod linalg;
pub mod ops;
pub mod pool;
pub mod qconv;
pub mod qgemm;
pub mod qsparse;
pub mod sparse;
mod stem;
pub mod winograd;

use crate::ir::Op;
use crate::Result;

/// A read-only f32 tensor view.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// A writable f32 tensor view (an output buffer of the right size).
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub shape: &'a [usize],
    pub data: &'a mut [f32],
}

/// CPU features the fast kernels can use, detected once at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub avx2_fma: bool,
    /// AVX-512 F and BW (every AVX-512 CPU but the Xeon Phi has both; the
    /// byte shuffles of the int8 packing need BW). Implies `avx2_fma` when
    /// set by [`Features::detect`].
    pub avx512f: bool,
    /// AVX512-VNNI `vpdpbusd` on 512-bit registers (implies `avx512f`).
    pub avx512vnni: bool,
    /// AVX-VNNI: the VEX-encoded 256-bit `vpdpbusd` (implies `avx2_fma`).
    pub avxvnni: bool,
    /// AMX-INT8 tile multiplies (`tdpbusd`), with the OS's permission to
    /// use the tile state granted to this process (implies `avx512vnni`).
    pub amx_int8: bool,
    /// aarch64 Advanced SIMD (NEON): part of every aarch64 CPU.
    pub neon: bool,
    /// aarch64 `SDOT`/`UDOT` (the dotprod extension, Armv8.2; implies
    /// `neon`).
    pub dotprod: bool,
}

/// The environment variable that turns detected features off, for
/// comparing kernel paths on one machine (as oneDNN's `ONEDNN_MAX_CPU_ISA`):
/// a comma-separated list of `amx`, `avx512vnni`, `avxvnni`, `avx512`,
/// `avx2`, `dotprod`. Turning a feature off turns off the ones that
/// imply it (`avx512` takes AVX512-VNNI and AMX with it).
pub const DISABLE_ENV: &str = "MLC_CPU_DISABLE";

impl Features {
    /// What this CPU has, less what [`DISABLE_ENV`] turns off (read once
    /// per process: kernels ask often).
    pub fn detect() -> Features {
        static DETECTED: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(Features::detect_enabled)
    }

    fn detect_enabled() -> Features {
        let off = std::env::var(DISABLE_ENV).unwrap_or_default();
        let off: Vec<&str> = off.split(',').map(str::trim).collect();
        let mut f = Features::detect_all();
        let on = |name: &str| !off.contains(&name);
        f.avx2_fma &= on("avx2");
        f.avx512f &= f.avx2_fma && on("avx512");
        f.avx512vnni &= f.avx512f && on("avx512vnni");
        f.avxvnni &= f.avx2_fma && on("avxvnni");
        f.amx_int8 &= f.avx512vnni && on("amx");
        f.dotprod &= on("dotprod");
        f
    }

    /// Everything this CPU has.
    fn detect_all() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512f = avx2_fma
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw");
            let avx512vnni = avx512f && is_x86_feature_detected!("avx512vnni");
            Features {
                avx2_fma,
                avx512f,
                avx512vnni,
                avxvnni: avx2_fma && is_x86_feature_detected!("avxvnni"),
                amx_int8: avx512vnni && qgemm::amx::available(),
                neon: false,
                dotprod: false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let neon = std::arch::is_aarch64_feature_detected!("neon");
            Features {
                neon,
                dotprod: neon && std::arch::is_aarch64_feature_detected!("dotprod"),
                ..Features::portable()
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Features::portable()
        }
    }

    /// No SIMD: the portable kernels only (used to test them on any machine).
    pub fn portable() -> Features {
        Features {
            avx2_fma: false,
            avx512f: false,
            avx512vnni: false,
            avxvnni: false,
            amx_int8: false,
            neon: false,
            dotprod: false,
        }
    }

    /// AVX2 and FMA but no AVX-512 and no VNNI, when the CPU has them (to
    /// test the AVX2 kernels on a newer machine); portable otherwise.
    pub fn avx2_only() -> Features {
        Features {
            avx512f: false,
            avx512vnni: false,
            avxvnni: false,
            amx_int8: false,
            neon: false,
            dotprod: false,
            ..Features::detect()
        }
    }

    /// NEON without dotprod, when the CPU has NEON (to test the plain NEON
    /// int8 kernel on a CPU with `SDOT`); None otherwise.
    pub fn neon_only() -> Option<Features> {
        let f = Features::detect();
        f.neon.then_some(Features {
            dotprod: false,
            ..f
        })
    }

    /// AVX2 with AVX-VNNI but no AVX-512, when the CPU has AVX-VNNI (to test
    /// the 256-bit VNNI kernels on an AVX-512 machine); None otherwise.
    pub fn avxvnni_only() -> Option<Features> {
        let f = Features::detect();
        f.avxvnni.then_some(Features {
            avx512f: false,
            avx512vnni: false,
            amx_int8: false,
            ..f
        })
    }

    /// These features less everything wider than `isa` (see
    /// [`choice::Isa`]); None when they lack `isa` itself.
    pub fn limited_to(self, isa: choice::Isa) -> Option<Features> {
        use choice::Isa;
        let has = match isa {
            Isa::Avx512Vnni => self.avx512vnni,
            Isa::AvxVnni => self.avxvnni,
            Isa::Avx2 => self.avx2_fma,
        };
        has.then_some(Features {
            amx_int8: false,
            avx512f: self.avx512f && isa == Isa::Avx512Vnni,
            avx512vnni: self.avx512vnni && isa == Isa::Avx512Vnni,
            avxvnni: self.avxvnni && isa != Isa::Avx2,
            ..self
        })
    }

    /// The narrower instruction sets a node's kernels could be held to on
    /// these features: for int8 products (`int8`) each int8 kernel family
    /// below the widest, for f32 ones AVX2 below AVX-512.
    pub fn narrower(self, int8: bool) -> Vec<choice::Isa> {
        use choice::Isa;
        if int8 {
            let mut out = Vec::new();
            if self.amx_int8 && self.avx512vnni {
                out.push(Isa::Avx512Vnni);
            }
            if self.avxvnni && (self.avx512vnni || self.amx_int8) {
                out.push(Isa::AvxVnni);
            }
            if self.avx2_fma && (self.avx512vnni || self.avxvnni || self.amx_int8) {
                out.push(Isa::Avx2);
            }
            out
        } else if self.avx512f && self.avx2_fma {
            vec![Isa::Avx2]
        } else {
            Vec::new()
        }
    }

    /// Everything the CPU has but AMX, when it has AMX (to test the
    /// AVX512-VNNI kernels on a machine whose int8 products take AMX);
    /// None otherwise.
    pub fn without_amx() -> Option<Features> {
        let f = Features::detect();
        f.amx_int8.then_some(Features {
            amx_int8: false,
            ..f
        })
    }
}

/// Buffers from this size are 2 MiB aligned, rounded up to whole 2 MiB
/// pages (at most 2x the memory, for a 1 MiB buffer) and ask for them.
const HUGE_PAGE_MIN_BYTES: usize = 1 << 20;

/// A zeroed f32 buffer for large, long-lived data (packed weights, the
/// runtime's arena): 64-byte aligned, and from 1 MiB on whole 2 MiB pages,
/// transparent huge pages asked for before anything touches them. The
/// kernels stream megabytes of weights and activations, and through 4 KiB
/// pages every 4 KiB costs a TLB miss; a `Vec` cannot carry the alignment
/// that lets the OS back all of it with 2 MiB pages. Where the OS has no
/// huge pages this is a plain aligned buffer.
pub struct Floats {
    ptr: std::ptr::NonNull<f32>,
    len: usize,
}

// SAFETY: `Floats` owns its memory like a `Vec<f32>`.
unsafe impl Send for Floats {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for Floats {}

impl Floats {
    const HUGE_PAGE: usize = 2 << 20;

    fn layout(len: usize) -> std::alloc::Layout {
        let bytes = len
            .checked_mul(std::mem::size_of::<f32>())
            .expect("capacity overflow")
            .max(1);
        let (bytes, align) = if bytes >= HUGE_PAGE_MIN_BYTES {
            (bytes.next_multiple_of(Self::HUGE_PAGE), Self::HUGE_PAGE)
        } else {
            (bytes, 64)
        };
        std::alloc::Layout::from_size_align(bytes, align).expect("capacity overflow")
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> Floats {
        let layout = Self::layout(len);
        // SAFETY: the layout's size is not zero.
        let p = unsafe { std::alloc::alloc(layout) }.cast::<f32>();
        let Some(ptr) = std::ptr::NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if layout.align() == Self::HUGE_PAGE {
            // SAFETY: the range is the allocation just made, untouched;
            // MADV_HUGEPAGE only changes how the kernel backs it.
            unsafe { libc::madvise(p.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        // SAFETY: the allocation holds `len` floats.
        unsafe { std::ptr::write_bytes(p, 0, len) };
        Floats { ptr, len }
    }
}

impl Drop for Floats {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeros` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), Self::layout(self.len)) }
    }
}

impl std::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `len` initialized floats, owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for Floats {
    fn clone(&self) -> Floats {
        let mut c = Floats::zeros(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl std::fmt::Debug for Floats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Floats({} floats)", self.len)
    }
}

/// Tasks per thread above which [`CpuCtx::for_each`] runs consecutive
/// indices together (enough to balance uneven tasks).
pub const TASKS_PER_THREAD: usize = 8;

/// What every fast kernel gets besides its data: the thread pool to split
/// work on and the CPU features to use.
#[derive(Clone)]
pub struct CpuCtx {
    /// Threads to use (1 = run on the calling thread).
    pub threads: usize,
    pub pool: Option<std::sync::Arc<pool::Pool>>,
    pub features: Features,
    /// A tuned node's product knobs (default: the kernels' own thresholds).
    pub knobs: choice::ProductKnobs,
}

impl CpuCtx {
    /// A context with `threads` threads (0 = the machine's cores).
    pub fn new(threads: usize) -> Result<CpuCtx> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = if threads > 1 {
            let p = pool::Pool::new(threads).map_err(|e| {
                crate::Error::Internal(format!("cannot start {threads} threads: {e}"))
            })?;
            Some(std::sync::Arc::new(p))
        } else {
            None
        };
        Ok(CpuCtx {
            threads,
            pool,
            features: Features::detect(),
            knobs: choice::ProductKnobs::default(),
        })
    }

    /// Single-threaded, with the given features.
    pub fn single(features: Features) -> CpuCtx {
        CpuCtx {
            threads: 1,
            pool: None,
            features,
            knobs: choice::ProductKnobs::default(),
        }
    }

    /// Runs `f(i)` for every `i` in `0..n` on the pool's threads (the
    /// caller's included), or in order on the caller's when
    /// single-threaded; returns when all have finished.
    ///
    /// More than [`TASKS_PER_THREAD`] tasks a thread run in that many runs
    /// of consecutive indices: every claim of a task is an atomic on a
    /// cache line both cores write, and an im2col with one task per row
    /// (thousands of 49-byte rows in ResNet-18's last layers) spent more
    /// time claiming than copying, slower on two threads than on one.
    pub fn for_each(&self, n: usize, f: impl Fn(usize) + Sync) {
        match &self.pool {
            Some(p) if n > TASKS_PER_THREAD * self.threads => {
                let per = n.div_ceil(TASKS_PER_THREAD * self.threads);
                p.for_each(n.div_ceil(per), &|run| {
                    (run * per..n.min((run + 1) * per)).for_each(&f);
                });
            }
            Some(p) => p.for_each(n, &f),
            None => (0..n).for_each(f),
        }
    }

    /// Runs `f(i, item)` for each of `items` (moved into its task), as
    /// [`CpuCtx::for_each`] does.
    pub fn for_each_item<T: Send>(&self, items: Vec<T>, f: impl Fn(usize, T) + Sync) {
        let slots: Vec<std::sync::Mutex<Option<T>>> = items
            .into_iter()
            .map(|t| std::sync::Mutex::new(Some(t)))
            .collect();
        self.for_each(slots.len(), |i| {
            // Task i alone takes slot i: the lock is never contended.
            let item = slots[i].lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = item {
                f(i, t);
            }
        });
    }

    /// Runs `f(i, chunk)` for each `chunk`-long piece of `data` (the last
    /// may be shorter), as [`CpuCtx::for_each`] does.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunks = pool::Chunks::new(data, chunk);
        // SAFETY: task i alone takes chunk i, and `data` stays borrowed
        // until every task has ended.
        self.for_each(chunks.count(), |i| f(i, unsafe { chunks.get(i) }));
    }
}

/// An output buffer shared by the tasks of one kernel call (Winograd's
/// parts, the stem's bands), each writing its own disjoint outputs.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint outputs of a buffer that outlives them
// (the call that made the pointer holds the buffer until they end).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address `offset` floats in (the caller keeps it inside the
    /// buffer).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Runs `op` on the fast path: inputs are f32 views (`None` for an absent
/// optional input), outputs are preallocated views with the inferred shapes.
/// Returns `Ok(false)`, having written nothing, when there is no fast kernel
/// for this op, these shapes or these inputs (non-f32 inputs never reach
/// here: the runtime sends such nodes to the reference kernels).
pub fn run_node(
    op: &Op,
    inputs: &[Option<View>],
    outputs: &mut [ViewMut],
    cx: &CpuCtx,
) -> Result<bool> {
    run_node_packed(op, inputs, outputs, None, cx)
}

/// [`run_node`] with the node's constant operands packed by [`prepack`]
/// (from the same inputs and features; a kernel ignores packs that do not
/// fit its inputs).
pub fn run_node_packed(
    op: &Op,
    inputs: &[Option<View>],
    outputs: &mut [ViewMut],
    packed: Option<&Prepacked>,
    cx: &CpuCtx,
) -> Result<bool> {
    if linalg::run(op, inputs, outputs, packed, cx)? {
        return Ok(true);
    }
    if conv::run_packed(op, inputs, outputs, packed, cx)? {
        return Ok(true);
    }
    ops::run(op, inputs, outputs, cx)
}

/// A node's constant operands in the layout its kernel consumes, made once
/// per plan so that weights are not repacked on every run.
#[derive(Clone, Debug)]
pub enum Prepacked {
    /// The B operand of a MatMul, FusedMatMul or Gemm.
    B(gemm::PackedB),
    /// A convolution's weights, one packed A operand per group, for the
    /// direct convolution or the im2col GEMM.
    ConvWeights {
        packs: Vec<gemm::PackedA>,
        direct: bool,
    },
    /// A convolution's weights transposed, one packed B operand per group,
    /// for convolutions with small output planes (computed transposed).
    ConvWeightsT(Vec<gemm::PackedB>),
    /// A 3x3 convolution's weights transformed for Winograd F(2x2, 3x3)
    /// or F(4x4, 3x3).
    ConvWinograd(winograd::Weights),
    /// A convolution's weights in blocks of output channels for the
    /// channel-vectorized direct kernel.
    ConvDirectOc(direct_oc::Weights),
    /// A depthwise convolution (weights used as they are): which kernel.
    Depthwise { interleaved: bool },
    /// A pruned convolution's weights, one sparse matrix per group.
    ConvSparse(Vec<sparse::Csr>),
    /// The B operand of a MatMul or Gemm, transposed into a sparse matrix
    /// `[N][K]` (pruned weights).
    SparseB(sparse::Csr),
}

/// The density of a product's or convolution's constant weight `w` as
/// the sparse kernel's default thresholds weigh it
/// ([`sparse::work_density`]: rows packed in blocks count less); None
/// for other ops.
pub fn weight_work_density(op: &Op, w: &View) -> Option<f64> {
    let rows = *w.shape.first()?;
    match op {
        Op::Conv(_) | Op::FusedConv { .. } => Some(sparse::work_density(
            w.data,
            rows,
            w.data.len() / rows.max(1),
            false,
        )),
        Op::MatMul | Op::FusedMatMul { .. } | Op::Gemm { .. } => {
            let trans_b = matches!(
                op,
                Op::FusedMatMul { trans_b: true, .. } | Op::Gemm { trans_b: true, .. }
            );
            let &[r, c] = w.shape else { return None };
            Some(if trans_b {
                sparse::work_density(w.data, r, c, false)
            } else {
                sparse::work_density(w.data, c, r, true)
            })
        }
        _ => None,
    }
}

impl Prepacked {
    /// Whether the weights run on the sparse kernel.
    pub fn is_sparse(&self) -> bool {
        matches!(self, Prepacked::ConvSparse(_) | Prepacked::SparseB(_))
    }
}

/// Packs the constant operands of `op` for the kernels `cx` selects.
/// `inputs` holds the node's constant inputs (`None` for the others),
/// `out_shape` is the shape of its first output. None when the node has
/// nothing worth packing.
pub fn prepack(
    op: &Op,
    inputs: &[Option<View>],
    out_shape: &[usize],
    cx: &CpuCtx,
) -> Option<Prepacked> {
    match op {
        Op::MatMul | Op::FusedMatMul { .. } | Op::Gemm { .. } => {
            linalg::prepack_with(op, inputs, out_shape, None, cx)
        }
        Op::Conv(_) | Op::FusedConv { .. } => conv::prepack(op, inputs, out_shape, cx),
        _ => None,
    }
}

/// [`prepack`] for the kernels `choice` names (a convolution's
/// algorithm, a product's sparse or dense B; a choice that does not apply
/// to `op` is ignored).
pub fn prepack_with(
    op: &Op,
    inputs: &[Option<View>],
    out_shape: &[usize],
    choice: choice::Choice,
    cx: &CpuCtx,
) -> Option<Prepacked> {
    match op {
        Op::Conv(_) | Op::FusedConv { .. } => {
            conv::prepack_with(op, inputs, out_shape, choice.conv, cx)
        }
        Op::MatMul | Op::FusedMatMul { .. } | Op::Gemm { .. } => {
            linalg::prepack_with(op, inputs, out_shape, choice.sparse, cx)
        }
        _ => prepack(op, inputs, out_shape, cx),
    }
}

/// Applies a fused epilogue activation in place with the vectorized
/// kernels of [`ops`] (within the runtime's tolerance of the reference).
pub fn apply_activation(act: &crate::ir::Activation, data: &mut [f32]) {
    ops::activation(act, data, Features::detect());
}

/// Applies an activation with the reference interpreter's scalar definition
/// (f64 math, exact to f32 rounding): the oracle the fast path is tested
/// against.
pub fn apply_activation_exact(act: &crate::ir::Activation, data: &mut [f32]) {
    use crate::ir::ops::math::reference::unary_float;
    use crate::ir::{Activation as A, UnaryOp};
    match act {
        A::Relu => data.iter_mut().for_each(|x| *x = x.max(0.0)),
        A::Clip { min, max } => data.iter_mut().for_each(|x| *x = x.max(*min).min(*max)),
        other => {
            let u = match other {
                A::Sigmoid => UnaryOp::Sigmoid,
                A::Tanh => UnaryOp::Tanh,
                A::HardSigmoid { alpha, beta } => UnaryOp::HardSigmoid {
                    alpha: *alpha,
                    beta: *beta,
                },
                A::HardSwish => UnaryOp::HardSwish,
                A::LeakyRelu { alpha } => UnaryOp::LeakyRelu { alpha: *alpha },
                A::Gelu { tanh_approx } => UnaryOp::Gelu {
                    tanh_approx: *tanh_approx,
                },
                A::Relu | A::Clip { .. } => unreachable!("handled above"),
            };
            data.iter_mut()
                .for_each(|x| *x = unary_float(&u, *x as f64) as f32);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    /// Writes `target/tmp/<file>` for the suite's summary (`tests/run_all.sh`
    /// prints it): the `kind` kernel paths the tests `ran` on this CPU, and
    /// those of `paths` (name, CPU feature) it lacks, said to be skipped
    /// rather than passed silently.
    pub(crate) fn report_kernel_paths(
        kind: &str,
        ran: &[&str],
        paths: &[(&str, &str)],
        file: &str,
    ) {
        let lacks: Vec<&str> = paths
            .iter()
            .filter(|(name, _)| !ran.contains(name))
            .map(|(_, flag)| *flag)
            .collect();
        let what = if cfg!(target_arch = "aarch64") {
            format!("aarch64 {kind} kernels tested")
        } else {
            format!("{kind} kernels tested natively")
        };
        let line = format!(
            "{what}: {}; {}\n",
            ran.join(", "),
            if lacks.is_empty() {
                "none skipped".to_string()
            } else {
                format!("skipped: CPU lacks {}", lacks.join(", "))
            }
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
        std::fs::create_dir_all(&dir).expect("target/tmp");
        std::fs::write(dir.join(file), line).expect("the summary file");
    }
}

//! Machine probe: how fast this CPU can go, measured, so benchmarks can quote
//! their results as shares of what the hardware allows.
//!
//! Two ceilings bound every f32 kernel. The compute ceiling is the f32 FMA
//! peak: a loop that keeps a dozen independent accumulators in registers and
//! does nothing but fused multiply-adds on them (AVX2+FMA intrinsics when the
//! CPU has them, detected at run time; plain f32 lanes the compiler may
//! vectorize otherwise), so both FMA pipes stay busy and no load or store gets
//! in the way. The memory ceiling is read bandwidth: summing a buffer far
//! larger than the last-level cache. Both are measured on one thread and on
//! every thread of a scoped thread set (started together at a barrier; the
//! time is the wall time until the last one finishes), and the best of several
//! repetitions is kept, since interference only ever makes a run slower.
//!
//! The numbers are measurements, not datasheet figures: on a busy or
//! frequency-scaled machine they are what a kernel can actually reach.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kernels::cpu::Features;

/// Independent accumulators in the FMA loop. FMA latency (4 cycles) times
/// pipes (2) gives 8 in flight; 12 leaves headroom.
const FMA_ACCS: usize = 12;
/// f32 lanes per accumulator (one 256-bit register).
const LANES: usize = 8;
/// Loop iterations per timed chunk: 12 x 8 x 2 flops each, so ~200 MFLOP.
const FMA_ITERS: u64 = 1 << 20;
/// Default buffer for the bandwidth probe: far larger than any L3.
pub const DEFAULT_MEM_BYTES: usize = 256 << 20;

/// What `mlc probe` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// CPU model name (from /proc/cpuinfo), when known.
    pub cpu_model: Option<String>,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// Physical cores, when /proc/cpuinfo says.
    pub physical_cores: Option<usize>,
    /// SIMD features detected at run time, then the ones the int8 kernels
    /// select on (`avx512vnni`, `avxvnni`, `amx-int8`, `dotprod`: as the
    /// runtime sees them, so `MLC_CPU_DISABLE` shows here), then the
    /// BF16/FP16 ones no kernel uses yet ([`informational_features`]).
    pub features: Vec<&'static str>,
    /// The features of [`known_features`] this CPU lacks (or that
    /// `MLC_CPU_DISABLE` turned off): the kernels that need them do not run.
    pub lacks: Vec<&'static str>,
    /// The caches of CPU 0 (Linux sysfs), e.g. `L1d 48 KiB`, `L2 2 MiB`;
    /// empty when unknown.
    pub caches: Vec<String>,
    /// Which FMA loop ran: "avx2+fma" or "portable".
    pub fma_kernel: &'static str,
    /// Threads used for the all-threads figures.
    pub threads: usize,
    /// f32 FMA peak on one thread, GFLOP/s (an FMA counts as 2 flops).
    pub fma_gflops_1t: f64,
    /// f32 FMA peak with all threads, GFLOP/s.
    pub fma_gflops_all: f64,
    /// The same with 512-bit AVX-512F FMAs, when the CPU has them (the
    /// runtime's kernels use 256-bit AVX2; other engines may use AVX-512, and
    /// on cores with full-width AVX-512 units this is twice the AVX2 peak).
    pub fma512_gflops_1t: Option<f64>,
    pub fma512_gflops_all: Option<f64>,
    /// Memory read bandwidth on one thread, GB/s (10^9 bytes).
    pub mem_read_gbps_1t: f64,
    /// Memory read bandwidth with all threads, GB/s.
    pub mem_read_gbps_all: f64,
    /// Size of the buffer the bandwidth probe read.
    pub mem_buffer_bytes: usize,
    /// Wall time the probe took, seconds.
    pub elapsed_s: f64,
    /// Built without optimizations: the loops run far below the machine's
    /// speed and the figures mean little.
    pub debug_build: bool,
}

/// Threads to use for "all threads": what the OS lets this process run.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `0` means all threads.
fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        available_threads()
    } else {
        threads
    }
}

/// Runs the whole probe in roughly `seconds` (at least one repetition of each
/// measurement runs whatever the budget).
pub fn run(seconds: f64) -> ProbeReport {
    let start = Instant::now();
    let seconds = if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        2.0
    };
    let share = |f: f64| Duration::from_secs_f64(seconds * f);
    let features = Features::detect();
    let threads = available_threads();
    let fma_gflops_1t = measure_fma(1, features, share(0.15));
    let fma_gflops_all = measure_fma(threads, features, share(0.15));
    let (fma512_gflops_1t, fma512_gflops_all) = if has_avx512f() {
        (
            Some(measure_fma_with(1, FmaLoop::Avx512, share(0.1))),
            Some(measure_fma_with(threads, FmaLoop::Avx512, share(0.1))),
        )
    } else {
        (None, None)
    };
    let buf = filled_buffer(DEFAULT_MEM_BYTES);
    let mem_read_gbps_1t = measure_mem_read(&buf, 1, features, share(0.25));
    let mem_read_gbps_all = measure_mem_read(&buf, threads, features, share(0.25));
    let (cpu_model, physical_cores) = cpuinfo();
    let have = detected_features();
    ProbeReport {
        cpu_model,
        logical_cpus: threads,
        physical_cores,
        lacks: known_features()
            .iter()
            .copied()
            .filter(|f| !have.contains(f))
            .collect(),
        features: have,
        caches: caches(),
        fma_kernel: if features.avx2_fma {
            "avx2+fma"
        } else {
            "portable"
        },
        threads,
        fma_gflops_1t,
        fma_gflops_all,
        fma512_gflops_1t,
        fma512_gflops_all,
        mem_read_gbps_1t,
        mem_read_gbps_all,
        mem_buffer_bytes: buf.len() * 4,
        elapsed_s: start.elapsed().as_secs_f64(),
        debug_build: cfg!(debug_assertions),
    }
}

/// Renders a report for people.
pub fn render(r: &ProbeReport) -> String {
    let cores = match r.physical_cores {
        Some(p) => format!("{} logical CPUs, {p} cores", r.logical_cpus),
        None => format!("{} logical CPUs", r.logical_cpus),
    };
    let features = if r.features.is_empty() {
        "none detected".to_string()
    } else {
        r.features.join(" ")
    };
    let lacks = if r.lacks.is_empty() {
        String::new()
    } else {
        format!("lacks:        {}\n", r.lacks.join(" "))
    };
    let caches = if r.caches.is_empty() {
        "unknown".to_string()
    } else {
        r.caches.join(", ")
    };
    let warning = if r.debug_build {
        "warning: this is a debug build; its loops are unoptimized and the figures \
         are far below the machine's (use a release build)\n"
    } else {
        ""
    };
    let avx512 = match (r.fma512_gflops_1t, r.fma512_gflops_all) {
        (Some(one), Some(all)) => format!(
            "              {one:.1} GFLOP/s on 1 thread, {all:.1} GFLOP/s on {} threads with AVX-512\n",
            r.threads
        ),
        _ => String::new(),
    };
    format!(
        "{warning}cpu:          {} ({cores})\n\
         features:     {features}\n\
         {lacks}caches:       {caches}\n\
         f32 FMA peak: {:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on {} threads ({} loop)\n\
         {avx512}memory read:  {:.1} GB/s on 1 thread, {:.1} GB/s on {} threads ({} MiB buffer)\n\
         probe took {:.2} s\n",
        r.cpu_model.as_deref().unwrap_or("unknown"),
        r.fma_gflops_1t,
        r.fma_gflops_all,
        r.threads,
        r.fma_kernel,
        r.mem_read_gbps_1t,
        r.mem_read_gbps_all,
        r.threads,
        r.mem_buffer_bytes >> 20,
        r.elapsed_s,
    )
}

/// Every feature [`detected_features`] can name on this architecture: the
/// ones mlc's kernels select on, then the informational ones.
pub fn known_features() -> &'static [&'static str] {
    #[cfg(target_arch = "x86_64")]
    return &[
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avxvnni",
        "amx-int8",
        "avx512bf16",
        "avx512fp16",
        "amx-bf16",
    ];
    #[cfg(target_arch = "aarch64")]
    return &["dotprod", "neon", "i8mm", "bf16", "fp16"];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return &[];
}

/// SIMD features this CPU has (as the runtime detects them), then the
/// ones no kernel selects on yet ([`informational_features`]).
pub fn detected_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($f:tt),*) => {
                $(if is_x86_feature_detected!($f) {
                    out.push($f);
                })*
            };
        }
        check!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl");
    }
    let f = Features::detect();
    for (has, name) in [
        (f.avx512vnni, "avx512vnni"),
        (f.avxvnni, "avxvnni"),
        (f.amx_int8, "amx-int8"),
        (f.dotprod, "dotprod"),
    ] {
        if has {
            out.push(name);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            out.push("neon");
        }
    }
    out.extend(informational_features());
    out
}

/// The BF16/FP16 (and aarch64 int8 matrix) features this CPU has, which no
/// kernel selects on yet: `avx512bf16`, `avx512fp16` and `amx-bf16` (with
/// the OS's permission to use the tile state) on x86_64; `i8mm`, `bf16`
/// and `fp16` on aarch64. Detected in hardware: `MLC_CPU_DISABLE` does not
/// name them.
pub fn informational_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (has, name) in [
            (is_x86_feature_detected!("avx512bf16"), "avx512bf16"),
            (is_x86_feature_detected!("avx512fp16"), "avx512fp16"),
            (
                crate::kernels::cpu::qgemm::amx::bf16_available(),
                "amx-bf16",
            ),
        ] {
            if has {
                out.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        for (has, name) in [
            (has!("i8mm"), "i8mm"),
            (has!("bf16"), "bf16"),
            (has!("fp16"), "fp16"),
        ] {
            if has {
                out.push(name);
            }
        }
    }
    out
}

/// What a cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    Data,
    Instruction,
    Unified,
}

/// One cache of CPU 0, as Linux sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheInfo {
    /// 1 for L1, 2 for L2, ...
    pub level: u32,
    pub kind: CacheKind,
    /// Size in bytes.
    pub bytes: u64,
    /// Logical CPUs that share it (sysfs `shared_cpu_list`), when known.
    pub shared_cpus: Option<usize>,
}

impl CacheInfo {
    /// `L1d 48 KiB`, `L1i 64 KiB`, `L2 2 MiB` (no letter for a unified
    /// cache).
    pub fn label(&self) -> String {
        let letter = match self.kind {
            CacheKind::Data => "d",
            CacheKind::Instruction => "i",
            CacheKind::Unified => "",
        };
        format!("L{}{letter} {}", self.level, size_label(self.bytes))
    }
}

/// A cache size for people: `48 KiB`, `2 MiB`, `38.5 MiB`, `512 B`: sizes
/// from 1 MiB that are a whole number of thousandths of a MiB are written
/// in MiB, other sizes in KiB (rounded down).
pub fn size_label(bytes: u64) -> String {
    const MIB: u128 = 1 << 20;
    let thousandths = u128::from(bytes) * 1000;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if u128::from(bytes) >= MIB && thousandths.is_multiple_of(MIB) {
        let (whole, frac) = (thousandths / MIB / 1000, thousandths / MIB % 1000);
        if frac == 0 {
            format!("{whole} MiB")
        } else {
            let frac = format!("{frac:03}");
            format!("{whole}.{} MiB", frac.trim_end_matches('0'))
        }
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// The caches of CPU 0 from Linux sysfs (`/sys/devices/system/cpu/cpu0/cache`),
/// one `L<level><d|i> <size>` each (no letter for unified caches); empty
/// elsewhere.
pub fn caches() -> Vec<String> {
    cache_info().iter().map(CacheInfo::label).collect()
}

/// The caches of CPU 0 from Linux sysfs, in the order sysfs lists them
/// (L1d, L1i, L2, L3 on the usual CPUs); empty elsewhere.
pub fn cache_info() -> Vec<CacheInfo> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut out = Vec::new();
    for i in 0..16 {
        let read = |f: &str| std::fs::read_to_string(dir.join(format!("index{i}/{f}")));
        let (Ok(level), Ok(kind), Ok(size)) = (read("level"), read("type"), read("size")) else {
            break;
        };
        let shared = read("shared_cpu_list").ok();
        if let Some(c) = parse_cache(&level, &kind, &size, shared.as_deref()) {
            out.push(c);
        }
    }
    out
}

/// One cache from its sysfs `level`, `type`, `size` (`"48K"`) and
/// `shared_cpu_list` (`"0-1,4"`).
fn parse_cache(level: &str, kind: &str, size: &str, shared: Option<&str>) -> Option<CacheInfo> {
    let kind = match kind.trim() {
        "Data" => CacheKind::Data,
        "Instruction" => CacheKind::Instruction,
        _ => CacheKind::Unified,
    };
    let size = size.trim();
    let bytes = match (size.strip_suffix('K'), size.strip_suffix('M')) {
        (Some(k), _) => k.parse::<u64>().ok()?.checked_mul(1 << 10)?,
        (_, Some(m)) => m.parse::<u64>().ok()?.checked_mul(1 << 20)?,
        _ => size.parse().ok()?,
    };
    Some(CacheInfo {
        level: level.trim().parse().ok()?,
        kind,
        bytes,
        shared_cpus: shared.and_then(cpu_list_len),
    })
}

/// How many CPUs a Linux CPU list (`"0-3,8,10-11"`) names.
fn cpu_list_len(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// CPU model name and physical core count from /proc/cpuinfo (Linux; `None`
/// elsewhere or when the fields are missing).
pub fn cpuinfo() -> (Option<String>, Option<usize>) {
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => parse_cpuinfo(&text),
        Err(_) => (None, None),
    }
}

/// Parses the text of /proc/cpuinfo: the first "model name" (x86) or
/// "Model"/"Hardware" line (ARM), and physical cores as the number of distinct
/// (physical id, core id) pairs.
fn parse_cpuinfo(text: &str) -> (Option<String>, Option<usize>) {
    let mut model = None;
    let mut fallback = None;
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "model name" if model.is_none() && !value.is_empty() => model = Some(value.to_string()),
            "Model" | "Hardware" if fallback.is_none() && !value.is_empty() => {
                fallback = Some(value.to_string())
            }
            "physical id" => physical = value.to_string(),
            "core id" => {
                cores.insert((physical.clone(), value.to_string()));
            }
            _ => {}
        }
    }
    let cores = if cores.is_empty() {
        None
    } else {
        Some(cores.len())
    };
    (model.or(fallback), cores)
}

/// f32 FMA peak in GFLOP/s: `threads` threads (0 = all) each running the
/// register-only FMA loop; repeated for about `budget`, best kept. Uses the
/// AVX2+FMA loop when `features` allow it, the portable one otherwise.
pub fn measure_fma(threads: usize, features: Features, budget: Duration) -> f64 {
    let which = if features.avx2_fma {
        FmaLoop::Avx2
    } else {
        FmaLoop::Portable
    };
    measure_fma_with(threads, which, budget)
}

/// Which FMA loop to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FmaLoop {
    Portable,
    /// Needs avx2 and fma (checked by the caller).
    Avx2,
    /// Needs avx512f (checked by the caller).
    Avx512,
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn measure_fma_with(threads: usize, which: FmaLoop, budget: Duration) -> f64 {
    let threads = resolve_threads(threads);
    let lanes = if which == FmaLoop::Avx512 { 16 } else { LANES };
    let flops = (FMA_ITERS * (FMA_ACCS * lanes * 2) as u64 * threads as u64) as f64;
    best_rate(budget, || {
        timed_on_threads(threads, || {
            black_box(fma_loop(which, black_box(FMA_ITERS)));
        })
    }) * flops
        / 1e9
}

/// Memory read bandwidth in GB/s: `threads` threads (0 = all) each summing a
/// contiguous share of `buf`; repeated for about `budget`, best kept.
pub fn measure_mem_read(buf: &[f32], threads: usize, features: Features, budget: Duration) -> f64 {
    let threads = resolve_threads(threads).min(buf.len().max(1));
    let bytes = std::mem::size_of_val(buf) as f64;
    let chunk = buf.len().div_ceil(threads).max(1);
    let parts: Vec<&[f32]> = buf.chunks(chunk).collect();
    best_rate(budget, || {
        timed_on_threads_each(&parts, |part| {
            black_box(sum(features, black_box(part)));
        })
    }) * bytes
        / 1e9
}

/// A buffer of `bytes` bytes (rounded down to whole f32s, at least one), every
/// page written so that reading it measures memory, not page faults.
pub fn filled_buffer(bytes: usize) -> Vec<f32> {
    vec![1.0f32; (bytes / 4).max(1)]
}

/// Runs `once` (returning seconds) until `budget` is spent (at least 3 times)
/// and returns the best rate, 1/seconds.
fn best_rate(budget: Duration, mut once: impl FnMut() -> f64) -> f64 {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < 3 || start.elapsed() < budget {
        best = best.min(once());
        reps += 1;
        if reps >= 1000 {
            break;
        }
    }
    // Guard against a clock too coarse to see the work at all.
    1.0 / best.max(1e-9)
}

/// Wall seconds for `threads` threads each running `work` once, started
/// together.
fn timed_on_threads(threads: usize, work: impl Fn() + Sync) -> f64 {
    let unit = vec![(); threads];
    timed_on_threads_each(&unit, |_| work())
}

/// Wall seconds for one thread per item of `items`, each running `work` on
/// its item, released together by a barrier (thread start-up is not timed).
/// Each worker stamps its own start and end; the wall time is from the
/// earliest start to the latest end, so a descheduled coordinating thread
/// cannot shorten it. A single item runs on the calling thread.
fn timed_on_threads_each<T: Sync>(items: &[T], work: impl Fn(&T) + Sync) -> f64 {
    if items.len() <= 1 {
        let start = Instant::now();
        if let Some(item) = items.first() {
            work(item);
        }
        return start.elapsed().as_secs_f64();
    }
    let barrier = Barrier::new(items.len());
    let spans: Vec<Option<(Instant, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    work(item);
                    (start, Instant::now())
                })
            })
            .collect();
        // A panicking worker would be a bug in the loops below; its span is
        // simply dropped from the measurement.
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let spans: Vec<(Instant, Instant)> = spans.into_iter().flatten().collect();
    match (
        spans.iter().map(|s| s.0).min(),
        spans.iter().map(|s| s.1).max(),
    ) {
        (Some(start), Some(end)) => end.duration_since(start).as_secs_f64(),
        _ => f64::INFINITY,
    }
}

/// The FMA loop: `iters` iterations of FMA_ACCS independent
/// `acc = acc * m + c` updates of LANES lanes each. With m just below 1 the
/// accumulators converge to c / (1 - m): no overflow, no denormals.
fn fma_loop(which: FmaLoop, iters: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        match which {
            // SAFETY: the callers pick Avx2 only when Features::detect found
            // avx2 and fma, and Avx512 only when has_avx512f().
            FmaLoop::Avx2 => return unsafe { fma_loop_avx2(iters) },
            FmaLoop::Avx512 => return unsafe { fma_loop_avx512(iters) },
            FmaLoop::Portable => {}
        }
    }
    let _ = which;
    fma_loop_portable(iters)
}

/// Portable loop: a separate multiply and add per lane (2 flops, as an FMA
/// counts), in lanes the compiler can vectorize with baseline SIMD.
fn fma_loop_portable(iters: u64) -> f32 {
    let m = black_box(0.999_99f32);
    let c = black_box(1e-3f32);
    let mut acc = [[0.0f32; LANES]; FMA_ACCS];
    for (i, a) in acc.iter_mut().enumerate() {
        a.fill(i as f32 * 0.01);
    }
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for x in a.iter_mut() {
                // Not mul_add: without hardware FMA that is a libm call.
                *x = *x * m + c;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(black_box(0.999_99));
    let c = _mm256_set1_ps(black_box(1e-3));
    let mut a0 = _mm256_set1_ps(0.00);
    let mut a1 = _mm256_set1_ps(0.01);
    let mut a2 = _mm256_set1_ps(0.02);
    let mut a3 = _mm256_set1_ps(0.03);
    let mut a4 = _mm256_set1_ps(0.04);
    let mut a5 = _mm256_set1_ps(0.05);
    let mut a6 = _mm256_set1_ps(0.06);
    let mut a7 = _mm256_set1_ps(0.07);
    let mut a8 = _mm256_set1_ps(0.08);
    let mut a9 = _mm256_set1_ps(0.09);
    let mut a10 = _mm256_set1_ps(0.10);
    let mut a11 = _mm256_set1_ps(0.11);
    for _ in 0..iters {
        a0 = _mm256_fmadd_ps(a0, m, c);
        a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c);
        a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c);
        a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c);
        a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c);
        a9 = _mm256_fmadd_ps(a9, m, c);
        a10 = _mm256_fmadd_ps(a10, m, c);
        a11 = _mm256_fmadd_ps(a11, m, c);
    }
    let s = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
        _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
    );
    let s = _mm256_add_ps(
        s,
        _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)),
    );
    let mut lanes = [0.0f32; LANES];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(black_box(0.999_99));
    let c = _mm512_set1_ps(black_box(1e-3));
    let mut acc = [_mm512_setzero_ps(); FMA_ACCS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm512_set1_ps(i as f32 * 0.01);
    }
    for _ in 0..iters {
        // A fixed-size array indexed by constants: LLVM keeps it in 12 zmm
        // registers.
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

/// Sum of `x` with independent partial sums, so the loop is bound by loads.
fn sum(features: Features, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if features.avx2_fma {
            // SAFETY: avx2 was detected at run time (Features::detect).
            return unsafe { sum_avx2(x) };
        }
    }
    let _ = features;
    sum_portable(x)
}

fn sum_portable(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    let mut chunks = x.chunks_exact(32);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut chunks = x.chunks_exact(32);
    for c in &mut chunks {
        let p = c.as_ptr();
        // SAFETY: c holds exactly 32 f32s, so p..p+32 is in bounds.
        acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(p));
        acc[1] = _mm256_add_ps(acc[1], _mm256_loadu_ps(p.add(8)));
        acc[2] = _mm256_add_ps(acc[2], _mm256_loadu_ps(p.add(16)));
        acc[3] = _mm256_add_ps(acc[3], _mm256_loadu_ps(p.add(24)));
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; LANES];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_detected_feature_is_known_and_the_rest_are_lacking() {
        let have = detected_features();
        for f in &have {
            assert!(
                known_features().contains(f),
                "{f} is detected but not in known_features"
            );
        }
        let r = run(0.01);
        assert_eq!(r.features.len() + r.lacks.len(), known_features().len());
        if !r.lacks.is_empty() {
            assert!(render(&r).contains(&format!("lacks:        {}", r.lacks.join(" "))));
        }
    }
    use super::*;

    fn positive_finite(x: f64) -> bool {
        x.is_finite() && x > 0.0
    }

    #[test]
    fn fma_peak_is_positive_and_finite() {
        let short = Duration::from_millis(1);
        for features in [Features::detect(), Features::portable()] {
            assert!(positive_finite(measure_fma(1, features, short)));
            assert!(positive_finite(measure_fma(2, features, short)));
        }
        if has_avx512f() {
            assert!(positive_finite(measure_fma_with(2, FmaLoop::Avx512, short)));
        }
    }

    #[test]
    fn mem_read_is_positive_and_finite() {
        let buf = filled_buffer(1 << 20);
        let short = Duration::from_millis(1);
        for features in [Features::detect(), Features::portable()] {
            assert!(positive_finite(measure_mem_read(&buf, 1, features, short)));
            assert!(positive_finite(measure_mem_read(&buf, 3, features, short)));
        }
        // More threads than elements, and a one-element buffer.
        let tiny = filled_buffer(0);
        assert_eq!(tiny.len(), 1);
        assert!(positive_finite(measure_mem_read(
            &tiny,
            4,
            Features::detect(),
            short
        )));
    }

    #[test]
    fn loops_compute_what_they_claim() {
        // Both sum paths agree with a plain sum, remainder included.
        let x: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let want: f32 = x.iter().sum();
        assert_eq!(sum(Features::portable(), &x), want);
        assert_eq!(sum(Features::detect(), &x), want);
        // The FMA loop converges to c / (1 - m) = 100 per lane, with no
        // overflow; both paths agree.
        let p = fma_loop(FmaLoop::Portable, 10);
        assert!(p.is_finite() && p > 0.0, "{p}");
        if Features::detect().avx2_fma {
            let d = fma_loop(FmaLoop::Avx2, 10);
            assert!((p - d).abs() <= 1e-3 * p, "{p} vs {d}");
        }
        if has_avx512f() {
            // Twice the lanes, the same per-lane values.
            let d = fma_loop(FmaLoop::Avx512, 10);
            assert!((2.0 * p - d).abs() <= 1e-3 * p, "{p} vs {d}");
        }
        let long = fma_loop_portable(1_000_000) / (FMA_ACCS * LANES) as f32;
        assert!((long - 100.0).abs() < 1.0, "{long}");
    }

    #[test]
    fn cache_lines() {
        let label = |level, kind, size| parse_cache(level, kind, size, None).map(|c| c.label());
        assert_eq!(
            label("1\n", "Data\n", "48K\n").as_deref(),
            Some("L1d 48 KiB")
        );
        assert_eq!(
            label("1", "Instruction", "64K").as_deref(),
            Some("L1i 64 KiB")
        );
        assert_eq!(label("2", "Unified", "2048K").as_deref(), Some("L2 2 MiB"));
        assert_eq!(
            label("3", "Unified", "491520K").as_deref(),
            Some("L3 480 MiB")
        );
        assert_eq!(
            label("3", "Unified", "1048576").as_deref(),
            Some("L3 1 MiB")
        );
        assert_eq!(label("3", "Unified", "32M").as_deref(), Some("L3 32 MiB"));
        assert_eq!(
            label("2", "Unified", "1280K").as_deref(),
            Some("L2 1.25 MiB")
        );
        assert_eq!(
            label("3", "Unified", "39424K").as_deref(),
            Some("L3 38.5 MiB")
        );
        assert_eq!(
            label("2", "Unified", "1025K").as_deref(),
            Some("L2 1025 KiB")
        );
        assert_eq!(label("1", "Data", "1000").as_deref(), Some("L1d 1000 B"));
        assert_eq!(label("2", "Unified", "big"), None);
        assert_eq!(label("x", "Unified", "1K"), None);
        assert_eq!(
            parse_cache("3", "Unified\n", "491520K\n", Some("0-1\n")),
            Some(CacheInfo {
                level: 3,
                kind: CacheKind::Unified,
                bytes: 480 << 20,
                shared_cpus: Some(2),
            })
        );
    }

    #[test]
    fn features_end_with_the_informational_ones() {
        let all = detected_features();
        let extra = informational_features();
        assert!(all.ends_with(&extra), "{all:?} / {extra:?}");
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                extra.contains(&"avx512bf16"),
                is_x86_feature_detected!("avx512bf16")
            );
            assert_eq!(
                extra.contains(&"avx512fp16"),
                is_x86_feature_detected!("avx512fp16")
            );
            // Every CPU with AMX-INT8 so far has AMX-BF16 (Sapphire Rapids
            // and later).
            if crate::kernels::cpu::qgemm::amx::available() {
                assert!(extra.contains(&"amx-bf16"), "{extra:?}");
            }
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-1\n"), Some(2));
        assert_eq!(cpu_list_len("0-3,8,10-11"), Some(7));
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len("a"), None);
    }

    #[test]
    fn cpuinfo_parsing() {
        let text =
            "processor\t: 0\nmodel name\t: AMD EPYC 9654\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 1\nmodel name\t: AMD EPYC 9654\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 2\nmodel name\t: AMD EPYC 9654\nphysical id\t: 0\ncore id\t: 1\n";
        assert_eq!(
            parse_cpuinfo(text),
            (Some("AMD EPYC 9654".to_string()), Some(2))
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nModel\t: Raspberry Pi 4\n";
        assert_eq!(
            parse_cpuinfo(arm),
            (Some("Raspberry Pi 4".to_string()), None)
        );
        assert_eq!(parse_cpuinfo(""), (None, None));
    }

    #[test]
    fn report_renders() {
        let r = ProbeReport {
            cpu_model: Some("Test CPU".into()),
            logical_cpus: 4,
            physical_cores: Some(2),
            features: vec!["avx2", "fma"],
            lacks: vec!["amx-int8"],
            caches: vec!["L1d 48 KiB".into(), "L2 2 MiB".into()],
            fma_kernel: "avx2+fma",
            threads: 4,
            fma_gflops_1t: 100.0,
            fma_gflops_all: 400.0,
            fma512_gflops_1t: None,
            fma512_gflops_all: None,
            mem_read_gbps_1t: 20.0,
            mem_read_gbps_all: 40.0,
            mem_buffer_bytes: 256 << 20,
            elapsed_s: 1.5,
            debug_build: false,
        };
        let s = render(&r);
        assert!(s.contains("Test CPU (4 logical CPUs, 2 cores)"), "{s}");
        assert!(
            s.contains("100.0 GFLOP/s on 1 thread, 400.0 GFLOP/s on 4 threads"),
            "{s}"
        );
        assert!(s.contains("256 MiB buffer"), "{s}");
        assert!(s.contains("caches:       L1d 48 KiB, L2 2 MiB\n"), "{s}");
        assert!(!s.contains("debug build") && !s.contains("AVX-512"), "{s}");
        let wide = render(&ProbeReport {
            fma512_gflops_1t: Some(200.0),
            fma512_gflops_all: Some(800.0),
            ..r.clone()
        });
        assert!(
            wide.contains("200.0 GFLOP/s on 1 thread, 800.0 GFLOP/s on 4 threads with AVX-512"),
            "{wide}"
        );
        let debug = render(&ProbeReport {
            debug_build: true,
            ..r.clone()
        });
        assert!(
            debug.starts_with("warning: this is a debug build"),
            "{debug}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["fma_gflops_all"], 400.0);
    }
}

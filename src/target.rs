//! Target descriptions: what a CPU is, as static data, so that a tuner and a
//! cost model can reason about a machine other than the one mlc runs on.
//!
//! A target names its architecture and ISA level, the SIMD features the
//! kernels select on, the vector width, the f32 FMA units of a core, the
//! caches, the core count, the clocks and the memory bandwidth. The
//! built-in targets are the TOML files of `targets/` (built into the
//! binary, documented in `targets/README.md`), each figure with its
//! published source; `host` is this machine, probed (features as the
//! runtime detects them, caches from Linux sysfs; clock and bandwidth
//! unknown). A file is checked when it loads: unknown keys, features of
//! another architecture, features without what they build on, sizes that
//! are not positive are all refused. Measurements never go here; they go
//! to the tuning database, keyed by [`Target::fingerprint`].
//!
//! ```
//! use mlc::target::{Arch, Feature, Target};
//!
//! # fn main() -> mlc::Result<()> {
//! let spr = Target::by_name("xeon-sapphire-rapids")?;
//! assert_eq!(spr.arch, Arch::X86_64);
//! assert!(spr.features.contains(&Feature::AmxInt8));
//! assert!(spr.kernel_features().amx_int8);
//!
//! // An unknown name gets one error that lists the known ones.
//! let err = Target::by_name("pentium").unwrap_err();
//! assert!(err.to_string().starts_with("unknown target 'pentium' (known: host, x86-64-v3"));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::kernels::cpu::Features;
use crate::probe;
use crate::{Error, Result};

/// The target files in `targets/`, built into the binary so that a target
/// name works wherever mlc is installed.
pub const BUILTIN: &[(&str, &str)] = &[
    ("x86-64-v3", include_str!("../targets/x86-64-v3.toml")),
    ("x86-64-v4", include_str!("../targets/x86-64-v4.toml")),
    (
        "xeon-sapphire-rapids",
        include_str!("../targets/xeon-sapphire-rapids.toml"),
    ),
    ("neoverse-n1", include_str!("../targets/neoverse-n1.toml")),
    ("cortex-a76", include_str!("../targets/cortex-a76.toml")),
    ("cortex-a55", include_str!("../targets/cortex-a55.toml")),
];

/// The name of the probed target; no file may take it.
pub const HOST: &str = "host";

/// An instruction set architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
    /// Any other: only the host can be one (mlc's portable kernels run
    /// there); a target file cannot.
    #[serde(rename = "other")]
    Other,
}

impl Arch {
    /// The architecture mlc was built for.
    pub fn this() -> Arch {
        if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::Other
        }
    }

    /// `x86_64`, `aarch64`, `other`: the name in target files.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Other => "other",
        }
    }
}

/// A CPU feature kernels select on (or, for the BF16/FP16 ones and `i8mm`,
/// will): the closed set a target file may list. Ordered as listed here,
/// which is how targets print them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Feature {
    #[serde(rename = "avx2")]
    Avx2,
    #[serde(rename = "fma")]
    Fma,
    #[serde(rename = "avx512f")]
    Avx512f,
    #[serde(rename = "avx512bw")]
    Avx512bw,
    #[serde(rename = "avx512vl")]
    Avx512vl,
    #[serde(rename = "avx512vnni")]
    Avx512vnni,
    #[serde(rename = "avxvnni")]
    Avxvnni,
    #[serde(rename = "amx-int8")]
    AmxInt8,
    #[serde(rename = "amx-bf16")]
    AmxBf16,
    #[serde(rename = "avx512bf16")]
    Avx512bf16,
    #[serde(rename = "avx512fp16")]
    Avx512fp16,
    #[serde(rename = "neon")]
    Neon,
    #[serde(rename = "dotprod")]
    Dotprod,
    #[serde(rename = "i8mm")]
    I8mm,
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "fp16")]
    Fp16,
}

impl Feature {
    /// Every feature, in order.
    pub const ALL: [Feature; 16] = [
        Feature::Avx2,
        Feature::Fma,
        Feature::Avx512f,
        Feature::Avx512bw,
        Feature::Avx512vl,
        Feature::Avx512vnni,
        Feature::Avxvnni,
        Feature::AmxInt8,
        Feature::AmxBf16,
        Feature::Avx512bf16,
        Feature::Avx512fp16,
        Feature::Neon,
        Feature::Dotprod,
        Feature::I8mm,
        Feature::Bf16,
        Feature::Fp16,
    ];

    /// The name in target files and in `mlc probe` (Rust's
    /// `is_*_feature_detected!` names, with `amx-int8`/`amx-bf16` as
    /// `mlc probe` writes them).
    pub fn name(self) -> &'static str {
        match self {
            Feature::Avx2 => "avx2",
            Feature::Fma => "fma",
            Feature::Avx512f => "avx512f",
            Feature::Avx512bw => "avx512bw",
            Feature::Avx512vl => "avx512vl",
            Feature::Avx512vnni => "avx512vnni",
            Feature::Avxvnni => "avxvnni",
            Feature::AmxInt8 => "amx-int8",
            Feature::AmxBf16 => "amx-bf16",
            Feature::Avx512bf16 => "avx512bf16",
            Feature::Avx512fp16 => "avx512fp16",
            Feature::Neon => "neon",
            Feature::Dotprod => "dotprod",
            Feature::I8mm => "i8mm",
            Feature::Bf16 => "bf16",
            Feature::Fp16 => "fp16",
        }
    }

    /// The feature of this name, if it is one.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The architecture the feature belongs to.
    pub fn arch(self) -> Arch {
        match self {
            Feature::Neon | Feature::Dotprod | Feature::I8mm | Feature::Bf16 | Feature::Fp16 => {
                Arch::Aarch64
            }
            _ => Arch::X86_64,
        }
    }

    /// The features this one builds on: every CPU with it has them, and a
    /// target listing it must list them.
    pub fn requires(self) -> &'static [Feature] {
        match self {
            Feature::Avx512f | Feature::Avxvnni => &[Feature::Avx2, Feature::Fma],
            Feature::Avx512bw
            | Feature::Avx512vl
            | Feature::Avx512vnni
            | Feature::Avx512bf16
            | Feature::Avx512fp16 => &[Feature::Avx512f],
            Feature::Dotprod | Feature::I8mm | Feature::Bf16 | Feature::Fp16 => &[Feature::Neon],
            Feature::Avx2 | Feature::Fma | Feature::AmxInt8 | Feature::AmxBf16 | Feature::Neon => {
                &[]
            }
        }
    }
}

/// The f32 fused multiply-add units of one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FmaUnits {
    /// Units that can each start one vector FMA per cycle.
    pub units: u32,
    /// Width of one unit's datapath in bits (256 on Zen 2; 512 on Xeons
    /// with two AVX-512 FMA units; 128 on Neoverse N1; 64 on Cortex-A55,
    /// whose 128-bit FMLA takes both units).
    pub bits: u32,
}

/// Cache sizes in bytes. L1d and L2 are per core; an L3 is one instance,
/// shared by `l3_shared_by` cores (all of them when not given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caches {
    /// Level-1 data cache of one core (required in a file).
    pub l1d: Option<u64>,
    /// Private level-2 cache of one core; none on parts built without one.
    pub l2: Option<u64>,
    /// One last-level cache instance (an L3, or Arm's system level cache).
    pub l3: Option<u64>,
    /// Cores that share one L3 instance (4 on Zen 2's core complexes).
    pub l3_shared_by: Option<u32>,
}

/// A target: the static facts about a CPU that kernel selection, tuning
/// and cost models read. Figures that a source does not give are `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `x86-64-v3`, `cortex-a76`, `host`: lowercase letters, digits, `-`,
    /// `_` and `.`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The CPU (or board) whose figures these are, e.g. `AMD EPYC 7742`;
    /// for the host, the model name /proc/cpuinfo gives.
    pub model: Option<String>,
    pub arch: Arch,
    /// The Rust target triple to build for it (`aarch64-unknown-linux-gnu`).
    pub triple: String,
    /// The LLVM CPU name to compile for (`-C target-cpu`): `x86-64-v3`,
    /// `sapphirerapids`, `cortex-a55`; `native` for the host.
    pub llvm_cpu: String,
    /// ISA level: `x86-64-v3`, `x86-64-v4`, `armv8.2-a`, ...
    pub isa: String,
    /// The features kernels for this target may use.
    pub features: BTreeSet<Feature>,
    /// Width of the widest SIMD registers the features give (512 with
    /// AVX-512 even where the datapath is narrower; 128 with NEON).
    pub vector_bits: u32,
    /// f32 FMA units of one core.
    pub fma: Option<FmaUnits>,
    /// Physical cores.
    pub cores: u32,
    /// Hardware threads (cores times SMT ways).
    pub threads: u32,
    #[serde(default)]
    pub caches: Caches,
    /// Base (guaranteed all-core) clock, GHz.
    pub base_ghz: Option<f64>,
    /// Highest (single-core boost) clock, GHz.
    pub boost_ghz: Option<f64>,
    /// Peak memory bandwidth of one socket, GB/s (10^9 bytes): channels
    /// times transfer rate times bus bytes.
    pub mem_bandwidth_gbps: Option<f64>,
}

impl Target {
    /// The built-in targets (`targets/*.toml`), in the order of [`BUILTIN`].
    pub fn builtin() -> Vec<Target> {
        BUILTIN
            .iter()
            .map(|(name, text)| {
                // The files are part of the binary and a unit test
                // (`every_builtin_target_loads`) loads each one: a failure
                // here is a build that skipped its tests.
                Target::parse(text, name).expect("built-in target files are checked by the tests")
            })
            .collect()
    }

    /// `host` and the names of the built-in targets.
    pub fn known_names() -> Vec<String> {
        std::iter::once(HOST)
            .chain(BUILTIN.iter().map(|(n, _)| *n))
            .map(String::from)
            .collect()
    }

    /// A target by name: `host` (probed), a built-in one, or else the path
    /// of a target file. An unknown name is [`Error::UnknownTarget`],
    /// which lists the known ones.
    pub fn by_name(spec: &str) -> Result<Target> {
        if spec == HOST {
            return Ok(Target::host());
        }
        if let Some((name, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            return Target::parse(text, name);
        }
        let path = Path::new(spec);
        if path.exists() || spec.ends_with(".toml") || spec.contains(['/', '\\']) {
            return Target::load(path);
        }
        Err(Error::UnknownTarget {
            name: spec.to_string(),
            known: Target::known_names(),
        })
    }

    /// Loads and checks a target file; errors name the file.
    pub fn load(path: &Path) -> Result<Target> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Target::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a target description; `origin` (a file or a
    /// name) is what errors call it.
    pub fn parse(text: &str, origin: &str) -> Result<Target> {
        let error = |message: String| Error::Target {
            target: origin.to_string(),
            message,
        };
        let target: Target = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| {
                let line = text.get(..s.start).map_or(0, |t| t.matches('\n').count()) + 1;
                format!("line {line}: ")
            });
            error(format!("{}{}", at.unwrap_or_default(), e.message().trim()))
        })?;
        if target.name == HOST {
            return Err(error(format!(
                "the name '{HOST}' is the probed machine's; give the file another"
            )));
        }
        if target.arch == Arch::Other {
            return Err(error("arch must be \"x86_64\" or \"aarch64\"".into()));
        }
        if target.caches.l1d.is_none() {
            return Err(error("caches.l1d is required".into()));
        }
        target.check().map_err(error)?;
        Ok(target)
    }

    /// Checks that the description is coherent: names, features of its
    /// architecture with what they build on, the vector width the
    /// features give, positive sizes and clocks.
    pub fn check(&self) -> std::result::Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                })
        };
        if !name_ok(&self.name) {
            return Err(format!(
                "name '{}' must be lowercase letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.arch != Arch::Other && !self.triple.starts_with(&format!("{}-", self.arch.name())) {
            return Err(format!(
                "triple '{}' is not an {} triple",
                self.triple,
                self.arch.name()
            ));
        }
        if self.llvm_cpu.trim().is_empty() {
            return Err("llvm_cpu must not be empty".into());
        }
        for f in &self.features {
            if f.arch() != self.arch {
                return Err(format!(
                    "feature '{}' is {}, not {}",
                    f.name(),
                    f.arch().name(),
                    self.arch.name()
                ));
            }
            if let Some(r) = f.requires().iter().find(|r| !self.features.contains(r)) {
                return Err(format!(
                    "feature '{}' needs '{}', which is not listed",
                    f.name(),
                    r.name()
                ));
            }
        }
        self.check_isa()?;
        self.check_vector_bits()?;
        if let Some(fma) = self.fma {
            if fma.units == 0 {
                return Err("fma.units must be positive".into());
            }
            if fma.bits == 0 || !fma.bits.is_multiple_of(32) || fma.bits > self.vector_bits {
                return Err(format!(
                    "fma.bits ({}) must be a positive multiple of 32 and at most vector_bits ({})",
                    fma.bits, self.vector_bits
                ));
            }
        }
        if self.cores == 0 {
            return Err("cores must be positive".into());
        }
        if self.threads < self.cores {
            return Err(format!(
                "threads ({}) must be at least cores ({})",
                self.threads, self.cores
            ));
        }
        let c = &self.caches;
        for (key, size) in [("l1d", c.l1d), ("l2", c.l2), ("l3", c.l3)] {
            if size == Some(0) {
                return Err(format!("caches.{key} must be positive"));
            }
        }
        if let Some(n) = c.l3_shared_by {
            if c.l3.is_none() {
                return Err("caches.l3_shared_by needs caches.l3".into());
            }
            if n == 0 || n > self.cores {
                return Err(format!(
                    "caches.l3_shared_by ({n}) must be from 1 to cores ({})",
                    self.cores
                ));
            }
        }
        for (key, v) in [
            ("base_ghz", self.base_ghz),
            ("boost_ghz", self.boost_ghz),
            ("mem_bandwidth_gbps", self.mem_bandwidth_gbps),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("{key} ({v}) must be positive"));
                }
            }
        }
        if let (Some(base), Some(boost)) = (self.base_ghz, self.boost_ghz) {
            if boost < base {
                return Err(format!("boost_ghz ({boost}) is below base_ghz ({base})"));
            }
        }
        Ok(())
    }

    /// The ISA level is a known one for the architecture, and the x86
    /// levels come with the listed features they guarantee.
    fn check_isa(&self) -> std::result::Result<(), String> {
        let guaranteed: &[Feature] = match (self.arch, self.isa.as_str()) {
            (Arch::X86_64, "x86-64" | "x86-64-v2") => &[],
            (Arch::X86_64, "x86-64-v3") => &[Feature::Avx2, Feature::Fma],
            (Arch::X86_64, "x86-64-v4") => &[
                Feature::Avx2,
                Feature::Fma,
                Feature::Avx512f,
                Feature::Avx512bw,
                Feature::Avx512vl,
            ],
            (Arch::X86_64, other) => {
                return Err(format!(
                    "isa '{other}' is not an x86-64 level (x86-64, x86-64-v2, x86-64-v3, x86-64-v4)"
                ))
            }
            (Arch::Aarch64, isa) => {
                let known = isa
                    .strip_prefix("armv")
                    .and_then(|v| v.strip_suffix("-a"))
                    .is_some_and(|v| {
                        let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
                        matches!(major, "8" | "9") && minor.parse::<u8>().is_ok()
                    });
                if !known {
                    return Err(format!(
                        "isa '{isa}' is not an Arm A-profile version (armv8-a, armv8.2-a, armv9-a, ...)"
                    ));
                }
                &[]
            }
            (Arch::Other, _) => &[],
        };
        match guaranteed.iter().find(|f| !self.features.contains(f)) {
            Some(f) => Err(format!(
                "isa '{}' guarantees '{}', which is not listed",
                self.isa,
                f.name()
            )),
            None => Ok(()),
        }
    }

    /// x86 register widths are fixed by the features; aarch64 ones are
    /// 128 bits with NEON and, with SVE, a multiple of 128 up to 2048.
    fn check_vector_bits(&self) -> std::result::Result<(), String> {
        let ok = match self.arch {
            Arch::X86_64 => self.vector_bits == widest_vector(&self.features),
            Arch::Aarch64 => {
                self.vector_bits.is_multiple_of(128) && (128..=2048).contains(&self.vector_bits)
            }
            Arch::Other => self.vector_bits > 0,
        };
        if ok {
            return Ok(());
        }
        Err(match self.arch {
            Arch::X86_64 => format!(
                "vector_bits is {}, but the features give {}-bit registers",
                self.vector_bits,
                widest_vector(&self.features)
            ),
            _ => format!(
                "vector_bits ({}) must be a multiple of 128 from 128 to 2048",
                self.vector_bits
            ),
        })
    }

    /// This machine: the features the runtime's kernels select on as
    /// [`Features::detect`] sees them (so after `MLC_CPU_DISABLE`), plus
    /// AVX-512 BW/VL and the BF16/FP16 features the hardware has
    /// ([`probe::informational_features`]) where what they build on is
    /// left (AMX-BF16 with AMX-INT8); caches from Linux sysfs; cores from
    /// /proc/cpuinfo (at most the threads this process may use). Clock
    /// and memory bandwidth are not probed (`mlc probe` measures what is
    /// reachable instead).
    pub fn host() -> Target {
        let features = host_features();
        let threads = u32::try_from(probe::available_threads()).unwrap_or(u32::MAX);
        let (model, physical) = probe::cpuinfo();
        let cores = physical
            .and_then(|p| u32::try_from(p).ok())
            .map_or(threads, |p| p.clamp(1, threads));
        let arch = Arch::this();
        Target {
            name: HOST.to_string(),
            description: "this machine, probed".to_string(),
            model,
            arch,
            triple: host_triple(),
            llvm_cpu: "native".to_string(),
            isa: host_isa(arch, &features),
            vector_bits: match arch {
                Arch::X86_64 => widest_vector(&features),
                _ => 128,
            },
            features,
            fma: None,
            cores,
            threads,
            caches: host_caches(&probe::cache_info(), cores, threads),
            base_ghz: None,
            boost_ghz: None,
            mem_bandwidth_gbps: None,
        }
    }

    /// What the runtime's kernels may use on this target, with the
    /// runtime's own implications (AVX-512 needs AVX2+FMA, AVX512-VNNI
    /// needs AVX-512, AMX-INT8 needs AVX512-VNNI, dotprod needs NEON).
    pub fn kernel_features(&self) -> Features {
        let has = |f| self.features.contains(&f);
        let avx2_fma = has(Feature::Avx2) && has(Feature::Fma);
        let avx512f = avx2_fma && has(Feature::Avx512f);
        let avx512vnni = avx512f && has(Feature::Avx512vnni);
        let neon = has(Feature::Neon);
        Features {
            avx2_fma,
            avx512f,
            avx512vnni,
            avxvnni: avx2_fma && has(Feature::Avxvnni),
            amx_int8: avx512vnni && has(Feature::AmxInt8),
            neon,
            dotprod: neon && has(Feature::Dotprod),
        }
    }

    /// The features this target lists that `machine` lacks (all of them
    /// when the architectures differ).
    pub fn missing_on(&self, machine: &Target) -> Vec<Feature> {
        self.features
            .iter()
            .copied()
            .filter(|f| self.arch != machine.arch || !machine.features.contains(f))
            .collect()
    }

    /// Whether code for this target runs on `machine`: the same
    /// architecture and every feature there.
    pub fn runs_on(&self, machine: &Target) -> bool {
        self.arch == machine.arch && self.missing_on(machine).is_empty()
    }

    /// Whether code for this target runs on this machine
    /// ([`Target::runs_on`] the [`host`](Target::host)).
    pub fn is_host_compatible(&self) -> bool {
        self.runs_on(&Target::host())
    }

    /// f32 flops one core can start per cycle (an FMA counts 2), when the
    /// FMA units are known.
    pub fn f32_flops_per_cycle(&self) -> Option<u32> {
        self.fma.map(|f| f.units * (f.bits / 32) * 2)
    }

    /// Cores that share one L3 instance, when there is an L3.
    pub fn l3_shared_by(&self) -> Option<u32> {
        self.caches
            .l3
            .map(|_| self.caches.l3_shared_by.unwrap_or(self.cores))
    }

    /// A short key for a tuning database: the CPU model (the architecture
    /// when unknown), the features sorted by name, and the core count,
    /// e.g. `AMD EPYC 7742/avx2+fma/64c`. Two machines with the same key
    /// are expected to rank kernels alike.
    pub fn fingerprint(&self) -> String {
        let mut names: Vec<&str> = self.features.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        let model = self
            .model
            .as_deref()
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| format!("unknown {}", self.arch.name()));
        format!("{model}/{}/{}c", names.join("+"), self.cores)
    }

    /// The caches for people: `L1d 32 KiB, L2 512 KiB, L3 16 MiB/4 cores`
    /// (the sharing shown when an L3 serves fewer than all cores).
    pub fn caches_label(&self) -> String {
        let c = &self.caches;
        let mut parts = Vec::new();
        if let Some(b) = c.l1d {
            parts.push(format!("L1d {}", probe::size_label(b)));
        }
        if let Some(b) = c.l2 {
            parts.push(format!("L2 {}", probe::size_label(b)));
        }
        if let Some(b) = c.l3 {
            let mut s = format!("L3 {}", probe::size_label(b));
            if let Some(n) = self.l3_shared_by().filter(|&n| n < self.cores) {
                let _ = write!(s, "/{n} cores");
            }
            parts.push(s);
        }
        if parts.is_empty() {
            "caches unknown".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Targets for people, one line each: name, architecture, vector width,
/// cores, caches, features.
pub fn render(targets: &[Target]) -> String {
    let mut s = String::new();
    for t in targets {
        let features: Vec<&str> = t.features.iter().map(|f| f.name()).collect();
        let features = if features.is_empty() {
            "no SIMD features".to_string()
        } else {
            features.join(" ")
        };
        let _ = writeln!(
            s,
            "{:<21} {:<7} {:>4}-bit {:>4} cores  {:<42} {features}",
            t.name,
            t.arch.name(),
            t.vector_bits,
            t.cores,
            t.caches_label(),
        );
    }
    s
}

/// The widest x86 vector registers the features give.
fn widest_vector(features: &BTreeSet<Feature>) -> u32 {
    if features.contains(&Feature::Avx512f) {
        512
    } else if features.contains(&Feature::Avx2) {
        256
    } else {
        128
    }
}

/// The host's features (see [`Target::host`]).
fn host_features() -> BTreeSet<Feature> {
    let f = Features::detect();
    let mut out = BTreeSet::new();
    for (on, feature) in [
        (f.avx2_fma, Feature::Avx2),
        (f.avx2_fma, Feature::Fma),
        (f.avx512f, Feature::Avx512f),
        (f.avx512vnni, Feature::Avx512vnni),
        (f.avxvnni, Feature::Avxvnni),
        (f.amx_int8, Feature::AmxInt8),
        (f.neon, Feature::Neon),
        (f.dotprod, Feature::Dotprod),
    ] {
        if on {
            out.insert(feature);
        }
    }
    #[allow(unused_mut)]
    let mut hardware: Vec<Feature> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512bw") {
            hardware.push(Feature::Avx512bw);
        }
        if is_x86_feature_detected!("avx512vl") {
            hardware.push(Feature::Avx512vl);
        }
    }
    hardware.extend(
        probe::informational_features()
            .into_iter()
            .filter_map(Feature::from_name),
    );
    for feature in hardware {
        // AMX-BF16 uses the tile state that `MLC_CPU_DISABLE=amx` keeps
        // the runtime from using: it goes with AMX-INT8.
        let amx = feature != Feature::AmxBf16 || out.contains(&Feature::AmxInt8);
        if amx && feature.requires().iter().all(|r| out.contains(r)) {
            out.insert(feature);
        }
    }
    out
}

/// The host's ISA level: on x86_64 the highest x86-64 level whose
/// features the CPU has (those kernels select on counted as the runtime
/// sees them); `armv8-a`, the baseline, on aarch64.
fn host_isa(arch: Arch, features: &BTreeSet<Feature>) -> String {
    let _ = features;
    match arch {
        #[cfg(target_arch = "x86_64")]
        Arch::X86_64 => {
            macro_rules! all {
                ($($f:tt),*) => { true $(&& is_x86_feature_detected!($f))* };
            }
            let has = |f| features.contains(&f);
            let v2 = all!("cmpxchg16b", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3");
            let v3 = v2
                && has(Feature::Avx2)
                && has(Feature::Fma)
                && all!("avx", "bmi1", "bmi2", "f16c", "lzcnt", "movbe", "xsave");
            let v4 = v3
                && has(Feature::Avx512f)
                && has(Feature::Avx512bw)
                && has(Feature::Avx512vl)
                && all!("avx512cd", "avx512dq");
            match (v2, v3, v4) {
                (_, _, true) => "x86-64-v4",
                (_, true, _) => "x86-64-v3",
                (true, _, _) => "x86-64-v2",
                _ => "x86-64",
            }
            .to_string()
        }
        Arch::Aarch64 => "armv8-a".to_string(),
        _ => std::env::consts::ARCH.to_string(),
    }
}

/// The Rust target triple mlc was built for, rebuilt from its parts (the
/// usual vendors: `unknown` on Linux, `apple`, `pc` on Windows).
fn host_triple() -> String {
    let arch = std::env::consts::ARCH;
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "msvc") {
        "msvc"
    } else {
        "gnu"
    };
    match std::env::consts::OS {
        "linux" => format!("{arch}-unknown-linux-{env}"),
        "macos" => format!("{arch}-apple-darwin"),
        "windows" => format!("{arch}-pc-windows-{env}"),
        os => format!("{arch}-unknown-{os}"),
    }
}

/// The host's caches from CPU 0's sysfs entries: the L1 data cache, the
/// L2 and the L3, with the L3's sharing turned from logical CPUs into
/// cores.
fn host_caches(info: &[probe::CacheInfo], cores: u32, threads: u32) -> Caches {
    let find = |level: u32| {
        info.iter()
            .find(|c| c.level == level && c.kind != probe::CacheKind::Instruction && c.bytes > 0)
    };
    let l3 = find(3);
    let smt = (threads / cores.max(1)).max(1);
    Caches {
        l1d: find(1).map(|c| c.bytes),
        l2: find(2).map(|c| c.bytes),
        l3: l3.map(|c| c.bytes),
        l3_shared_by: l3.and_then(|c| c.shared_cpus).map(|n| {
            let n = u32::try_from(n).unwrap_or(u32::MAX) / smt;
            n.clamp(1, cores.max(1))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin_text(name: &str) -> &'static str {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap()
    }

    /// The error message of parsing `text`.
    fn refusal(text: &str) -> String {
        match Target::parse(text, "t.toml") {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A built-in file with one line replaced.
    fn edited(name: &str, from: &str, to: &str) -> String {
        let text = builtin_text(name);
        assert!(text.contains(from), "{name} has no '{from}'");
        text.replacen(from, to, 1)
    }

    #[test]
    fn every_builtin_target_loads() {
        let all = Target::builtin();
        assert_eq!(all.len(), BUILTIN.len());
        let mut names = BTreeSet::new();
        for (t, (file_name, _)) in all.iter().zip(BUILTIN) {
            assert_eq!(&t.name, file_name, "a file's name is its file name");
            assert!(names.insert(t.name.clone()), "{} twice", t.name);
            t.check().unwrap();
            // Every built-in names its part, its FMA units, its top clock
            // and an L2 or L3 (the A55 part has no L2; its bandwidth and
            // two base clocks are unpublished, see the files).
            assert!(t.model.is_some(), "{}", t.name);
            assert!(t.fma.is_some(), "{}", t.name);
            assert!(t.boost_ghz.is_some(), "{}", t.name);
            assert!(t.caches.l3.is_some(), "{}", t.name);
            assert!(!t.description.is_empty(), "{}", t.name);
            assert_eq!(Target::by_name(&t.name).unwrap(), *t);
        }
        // The files on disk are the ones built in.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension()? == "toml").then(|| p.file_stem().unwrap().to_string_lossy().into())
            })
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
        for (name, text) in BUILTIN {
            let loaded = Target::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(loaded, Target::parse(text, name).unwrap());
        }
    }

    #[test]
    fn builtin_figures_hold_together() {
        let spr = Target::by_name("xeon-sapphire-rapids").unwrap();
        assert_eq!(spr.f32_flops_per_cycle(), Some(64));
        assert_eq!(spr.l3_shared_by(), Some(56));
        assert_eq!(spr.caches.l2, Some(2 << 20));
        let v3 = Target::by_name("x86-64-v3").unwrap();
        assert_eq!(v3.f32_flops_per_cycle(), Some(32));
        assert_eq!(v3.l3_shared_by(), Some(4));
        assert_eq!(
            v3.caches_label(),
            "L1d 32 KiB, L2 512 KiB, L3 16 MiB/4 cores"
        );
        let a55 = Target::by_name("cortex-a55").unwrap();
        assert_eq!(a55.f32_flops_per_cycle(), Some(8));
        assert_eq!(a55.caches.l2, None);
        assert_eq!(a55.caches_label(), "L1d 32 KiB, L3 512 KiB");
        // All three Arm cores have dotprod (Armv8.2 with the v8.4 dot
        // product), none has i8mm or bf16.
        for name in ["neoverse-n1", "cortex-a76", "cortex-a55"] {
            let t = Target::by_name(name).unwrap();
            assert_eq!(t.arch, Arch::Aarch64);
            assert!(t.features.contains(&Feature::Dotprod), "{name}");
            assert!(!t.features.contains(&Feature::I8mm), "{name}");
            assert_eq!(t.vector_bits, 128);
        }
    }

    #[test]
    fn kernel_features_follow_the_runtime_rules() {
        let k = |name| Target::by_name(name).unwrap().kernel_features();
        let spr = k("xeon-sapphire-rapids");
        assert!(spr.avx2_fma && spr.avx512f && spr.avx512vnni && spr.avxvnni && spr.amx_int8);
        assert!(!spr.neon && !spr.dotprod);
        let v4 = k("x86-64-v4");
        assert!(v4.avx2_fma && v4.avx512f && !v4.avx512vnni && !v4.amx_int8);
        assert_eq!(
            k("x86-64-v3"),
            Features {
                avx2_fma: true,
                ..Features::portable()
            }
        );
        assert_eq!(
            k("cortex-a55"),
            Features {
                neon: true,
                dotprod: true,
                ..Features::portable()
            }
        );
        // AMX without AVX512-VNNI is not used (the runtime's AMX kernel
        // packs and finishes with AVX-512).
        let mut t = Target::by_name("xeon-sapphire-rapids").unwrap();
        t.features.remove(&Feature::Avx512vnni);
        assert!(!t.kernel_features().amx_int8);
    }

    #[test]
    fn host_is_probed_and_coherent() {
        let host = Target::host();
        assert_eq!(host.name, "host");
        assert_eq!(host.arch, Arch::this());
        host.check().unwrap();
        // The runtime's view, exactly.
        assert_eq!(host.kernel_features(), Features::detect());
        assert!(host.is_host_compatible());
        assert!(host.cores >= 1 && host.threads >= host.cores);
        assert_eq!(
            host.threads as usize,
            probe::available_threads().min(u32::MAX as usize)
        );
        assert_eq!((host.base_ghz, host.mem_bandwidth_gbps), (None, None));
        assert_eq!(Target::by_name("host").unwrap().name, "host");
        // Every informational feature the probe reports is there when what
        // it builds on is.
        for name in probe::informational_features() {
            let f = Feature::from_name(name).unwrap();
            if f.requires().iter().all(|r| host.features.contains(r)) {
                assert!(host.features.contains(&f), "{name}");
            }
        }
        if cfg!(target_os = "linux") && !probe::cache_info().is_empty() {
            assert!(host.caches.l1d.is_some(), "{:?}", host.caches);
        }
    }

    #[test]
    fn compatibility() {
        let host = Target::host();
        for t in Target::builtin() {
            let runs = t.runs_on(&host);
            assert_eq!(runs, t.is_host_compatible(), "{}", t.name);
            assert_eq!(runs, t.missing_on(&host).is_empty() && t.arch == host.arch);
            if t.arch != host.arch {
                assert!(!runs);
                assert_eq!(t.missing_on(&host).len(), t.features.len());
            }
        }
        let spr = Target::by_name("xeon-sapphire-rapids").unwrap();
        let v3 = Target::by_name("x86-64-v3").unwrap();
        assert!(v3.runs_on(&spr));
        assert!(!spr.runs_on(&v3));
        assert_eq!(
            spr.missing_on(&v3).first().map(|f| f.name()),
            Some("avx512f")
        );
        // This machine (an AVX-512 Xeon) runs x86-64-v3 code when the
        // runtime has AVX2.
        if Features::detect().avx2_fma {
            assert!(v3.is_host_compatible());
        }
    }

    #[test]
    fn fingerprints() {
        let v3 = Target::by_name("x86-64-v3").unwrap();
        assert_eq!(v3.fingerprint(), "AMD EPYC 7742/avx2+fma/64c");
        let spr = Target::by_name("xeon-sapphire-rapids").unwrap();
        assert_eq!(
            spr.fingerprint(),
            "Intel Xeon Platinum 8480+/amx-bf16+amx-int8+avx2+avx512bf16+avx512bw+avx512f+\
             avx512fp16+avx512vl+avx512vnni+avxvnni+fma/56c"
        );
        let mut fewer = spr.clone();
        fewer.features.remove(&Feature::AmxInt8);
        assert_ne!(fewer.fingerprint(), spr.fingerprint());
        let mut anonymous = v3.clone();
        anonymous.model = Some("  AMD   EPYC 7742 ".into());
        assert_eq!(anonymous.fingerprint(), v3.fingerprint());
        anonymous.model = None;
        assert_eq!(anonymous.fingerprint(), "unknown x86_64/avx2+fma/64c");
        let host = Target::host();
        assert_eq!(host.fingerprint(), Target::host().fingerprint());
        assert!(host.fingerprint().ends_with(&format!("/{}c", host.cores)));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = Target::by_name("pentium").unwrap_err();
        match &err {
            Error::UnknownTarget { name, known } => {
                assert_eq!(name, "pentium");
                assert_eq!(known, &Target::known_names());
                assert_eq!(known[0], "host");
                assert_eq!(known.len(), BUILTIN.len() + 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            "unknown target 'pentium' (known: host, x86-64-v3, x86-64-v4, \
             xeon-sapphire-rapids, neoverse-n1, cortex-a76, cortex-a55; or the path of a \
             target .toml file)"
        );
        // A path that does not exist is an I/O error naming it.
        let err = Target::by_name("no/such/target.toml").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("no/such/target.toml: "),
            "{err}"
        );
    }

    #[test]
    fn files_are_checked() {
        // The line of the key added after `vector_bits`.
        let text = builtin_text("cortex-a76");
        let line = text[..text.find("vector_bits = 128").unwrap()]
            .matches('\n')
            .count()
            + 2;
        let unknown_key =
            format!("target t.toml: line {line}: unknown field `vector_width`, expected one of");
        let bad = [
            (
                edited(
                    "cortex-a76",
                    "vector_bits = 128",
                    "vector_bits = 128\nvector_width = 128",
                ),
                unknown_key.as_str(),
            ),
            (
                edited("cortex-a76", "l2 = 524_288", "l2 = 524_288\nl4 = 1"),
                "unknown field `l4`",
            ),
            (
                edited("cortex-a76", r#""neon", "dotprod""#, r#""neon", "sdot""#),
                "unknown variant `sdot`, expected one of `avx2`, `fma`",
            ),
            (
                edited("cortex-a76", r#""neon", "dotprod""#, r#""neon", "avx2""#),
                "feature 'avx2' is x86_64, not aarch64",
            ),
            (
                edited(
                    "cortex-a76",
                    r#"["neon", "dotprod", "fp16"]"#,
                    r#"["dotprod"]"#,
                ),
                "feature 'dotprod' needs 'neon', which is not listed",
            ),
            (
                edited(
                    "x86-64-v4",
                    r#""avx512vl"]"#,
                    r#""avx512vl", "avx512vnni"]"#,
                )
                .replace(r#""avx512f", "#, ""),
                "feature 'avx512bw' needs 'avx512f', which is not listed",
            ),
            (
                edited("x86-64-v4", r#", "avx512vl"]"#, "]"),
                "isa 'x86-64-v4' guarantees 'avx512vl', which is not listed",
            ),
            (
                edited("x86-64-v3", "vector_bits = 256", "vector_bits = 512"),
                "vector_bits is 512, but the features give 256-bit registers",
            ),
            (
                edited("cortex-a55", "vector_bits = 128", "vector_bits = 96"),
                "vector_bits (96) must be a multiple of 128 from 128 to 2048",
            ),
            (
                edited("cortex-a55", "l1d = 32_768", "l1d = 0"),
                "caches.l1d must be positive",
            ),
            (
                edited("cortex-a55", "l1d = 32_768", "l1d = -1"),
                "invalid value: integer `-1`",
            ),
            (
                edited("cortex-a55", "l1d = 32_768", "l2 = 65_536"),
                "caches.l1d is required",
            ),
            (
                edited("cortex-a55", "cores = 4", "cores = 0"),
                "cores must be positive",
            ),
            (
                edited("cortex-a55", "threads = 4", "threads = 2"),
                "threads (2) must be at least cores (4)",
            ),
            (
                edited("x86-64-v3", "l3_shared_by = 4", "l3_shared_by = 65"),
                "caches.l3_shared_by (65) must be from 1 to cores (64)",
            ),
            (
                edited("x86-64-v3", "base_ghz = 2.25", "base_ghz = 3.5"),
                "boost_ghz (3.4) is below base_ghz (3.5)",
            ),
            (
                edited("x86-64-v3", "boost_ghz = 3.4", "boost_ghz = -3.4"),
                "boost_ghz (-3.4) must be positive",
            ),
            (
                edited(
                    "x86-64-v3",
                    "mem_bandwidth_gbps = 204.8",
                    "mem_bandwidth_gbps = nan",
                ),
                "mem_bandwidth_gbps (NaN) must be positive",
            ),
            (
                edited("x86-64-v3", "units = 2", "units = 0"),
                "fma.units must be positive",
            ),
            (
                edited("cortex-a55", "bits = 64", "bits = 256"),
                "fma.bits (256) must be a positive multiple of 32 and at most vector_bits (128)",
            ),
            (
                edited("x86-64-v3", r#"arch = "x86_64""#, r#"arch = "riscv64""#),
                "unknown variant `riscv64`",
            ),
            (
                edited("x86-64-v3", r#"arch = "x86_64""#, r#"arch = "other""#),
                "arch must be \"x86_64\" or \"aarch64\"",
            ),
            (
                edited("x86-64-v3", r#"arch = "x86_64""#, r#"arch = "aarch64""#),
                "triple 'x86_64-unknown-linux-gnu' is not an aarch64 triple",
            ),
            (
                edited("x86-64-v3", r#"isa = "x86-64-v3""#, r#"isa = "haswell""#),
                "isa 'haswell' is not an x86-64 level",
            ),
            (
                edited("cortex-a55", r#"isa = "armv8.2-a""#, r#"isa = "armv8.x-a""#),
                "isa 'armv8.x-a' is not an Arm A-profile version",
            ),
            (
                edited("cortex-a55", r#"name = "cortex-a55""#, r#"name = "host""#),
                "the name 'host' is the probed machine's",
            ),
            (
                edited(
                    "cortex-a55",
                    r#"name = "cortex-a55""#,
                    r#"name = "Cortex A55""#,
                ),
                "name 'Cortex A55' must be lowercase letters",
            ),
            (
                edited(
                    "cortex-a55",
                    r#"llvm_cpu = "cortex-a55""#,
                    r#"llvm_cpu = " ""#,
                ),
                "llvm_cpu must not be empty",
            ),
            (
                edited("cortex-a55", "cores = 4", "cores = \"four\""),
                "invalid type: string \"four\", expected u32",
            ),
            ("name = \"x\"\n".to_string(), "missing field `arch`"),
        ];
        for (text, want) in bad {
            let got = refusal(&text);
            assert!(got.starts_with("target t.toml: "), "{got}");
            assert!(got.contains(want), "wanted '{want}' in: {got}");
            assert!(!got.contains('\n'), "one line: {got}");
        }
        // Optional figures may be left out; an SVE-width aarch64 part is
        // fine.
        let sparse = edited("cortex-a55", "vector_bits = 128", "vector_bits = 256")
            .replace("boost_ghz = 2.0", "")
            .replace("l3 = 524_288", "");
        let t = Target::parse(&sparse, "t.toml").unwrap();
        assert_eq!(
            (t.boost_ghz, t.caches.l3, t.l3_shared_by()),
            (None, None, None)
        );
    }

    #[test]
    fn serde_round_trips() {
        for t in Target::builtin().into_iter().chain([Target::host()]) {
            let json = serde_json::to_string(&t).unwrap();
            let back: Target = serde_json::from_str(&json).unwrap();
            assert_eq!(back, t);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert!(v["features"].is_array(), "{json}");
        }
        let json = serde_json::to_value(Target::by_name("cortex-a76").unwrap()).unwrap();
        assert_eq!(json["arch"], "aarch64");
        assert_eq!(
            json["features"],
            serde_json::json!(["neon", "dotprod", "fp16"])
        );
        assert_eq!(json["caches"]["l2"], 524_288);
        assert_eq!(json["base_ghz"], serde_json::Value::Null);
        // Feature names agree between serde and `name`.
        for f in Feature::ALL {
            assert_eq!(serde_json::to_value(f).unwrap(), f.name());
            assert_eq!(Feature::from_name(f.name()), Some(f));
        }
        assert_eq!(Feature::from_name("sse4.2"), None);
    }

    #[test]
    fn host_caches_from_sysfs_entries() {
        use probe::{CacheInfo, CacheKind};
        let cache = |level, kind, bytes, shared_cpus| CacheInfo {
            level,
            kind,
            bytes,
            shared_cpus,
        };
        let info = [
            cache(1, CacheKind::Data, 48 << 10, Some(2)),
            cache(1, CacheKind::Instruction, 64 << 10, Some(2)),
            cache(2, CacheKind::Unified, 2 << 20, Some(2)),
            cache(3, CacheKind::Unified, 105 << 20, Some(112)),
        ];
        // 56 cores with 2 threads each: the L3's 112 CPUs are 56 cores.
        assert_eq!(
            host_caches(&info, 56, 112),
            Caches {
                l1d: Some(48 << 10),
                l2: Some(2 << 20),
                l3: Some(105 << 20),
                l3_shared_by: Some(56),
            }
        );
        // A process allowed fewer CPUs than the L3 serves.
        assert_eq!(host_caches(&info, 2, 2).l3_shared_by, Some(2));
        assert_eq!(host_caches(&[], 2, 2), Caches::default());
        let line = render(&[Target::by_name("x86-64-v3").unwrap()]);
        assert_eq!(
            line,
            format!(
                "{:<21} {:<7} {:>4}-bit {:>4} cores  {:<42} avx2 fma\n",
                "x86-64-v3", "x86_64", 256, 64, "L1d 32 KiB, L2 512 KiB, L3 16 MiB/4 cores"
            )
        );
    }
}

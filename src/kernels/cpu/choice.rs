//! The kernel choices a node can be given: the knobs `mlc tune` measures.
//!
//! A node the runtime can run more than one way lists its legal choices
//! (for a convolution, [`super::conv::algorithms`]); the first is the
//! default, the one the hand-set thresholds pick when nothing else is
//! asked ("untuned"). A [`Choice`] names one of them by its knobs; each
//! knob left `None` takes its default. Choices only change speed: every
//! one computes the node's result within the runtime's tolerance of the
//! reference (and a tuner checks that before timing it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How an f32 convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvAlgo {
    /// The GEMM reading its B rows in place from the padded input through
    /// a tap offset table (no im2col panel).
    Direct,
    /// The GEMM on im2col columns packed block by block (1x1: on the input
    /// itself, or on its subsampled pixels).
    Gemm,
    /// Winograd F(2x2, 3x3) (3x3, stride 1, undilated, one group).
    Winograd,
    /// Winograd F(4x4, 3x3): 2.25x fewer products than F(2x2) for larger
    /// transforms and weights.
    Winograd4,
    /// The transposed product `Yᵀ = colsᵀ · Wᵀ` (small output planes).
    Transposed,
    /// Direct, output channels in the vector lanes and input pixels
    /// broadcast (no packing of the input at any stride).
    DirectOc,
    /// Depthwise, one plane at a time.
    DwPlane,
    /// Depthwise, 8 channels (16 on AVX-512) interleaved in a vector.
    DwInterleaved,
    /// Pruned weights as a sparse matrix (nonzeros only) times the input
    /// (1x1) or its im2col columns (see [`super::sparse`]).
    Sparse,
}

impl ConvAlgo {
    pub const ALL: [ConvAlgo; 9] = [
        ConvAlgo::Direct,
        ConvAlgo::Gemm,
        ConvAlgo::Winograd,
        ConvAlgo::Winograd4,
        ConvAlgo::Transposed,
        ConvAlgo::DirectOc,
        ConvAlgo::DwPlane,
        ConvAlgo::DwInterleaved,
        ConvAlgo::Sparse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Direct => "direct",
            ConvAlgo::Gemm => "gemm",
            ConvAlgo::Winograd => "winograd",
            ConvAlgo::Winograd4 => "winograd4",
            ConvAlgo::Transposed => "transposed",
            ConvAlgo::DirectOc => "direct-oc",
            ConvAlgo::DwPlane => "dw-plane",
            ConvAlgo::DwInterleaved => "dw-interleaved",
            ConvAlgo::Sparse => "sparse",
        }
    }
}

/// Which kernels run a quantized layer (QConv, QMatMul): its int8 weights
/// stay int8 in storage either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantRun {
    /// The exact int8 kernels.
    Int8,
    /// The f32 kernels on weights dequantized once at load and the
    /// activation fake-quantized (quantized, then dequantized): the
    /// layer's arithmetic up to f32 rounding of the sums.
    F32,
}

impl QuantRun {
    pub const ALL: [QuantRun; 2] = [QuantRun::Int8, QuantRun::F32];

    pub fn name(self) -> &'static str {
        match self {
            QuantRun::Int8 => "int8",
            QuantRun::F32 => "f32",
        }
    }
}

/// The widest instruction set a node's kernels may use (default: all the
/// CPU has): on a CPU where the narrower kernels are faster for a shape,
/// or leave the wide units to the other core, the tuner picks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isa {
    /// Everything but AMX (int8 products on AVX512-VNNI).
    Avx512Vnni,
    /// AVX2 with AVX-VNNI, no AVX-512 (int8 on 256-bit `vpdpbusd`).
    AvxVnni,
    /// AVX2 and FMA only.
    Avx2,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512vnni",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx2 => "avx2",
        }
    }
}

/// How an f32 product's (or convolution's GEMM's) work is divided over
/// the threads: by rows of C (output channels of a convolution, rows of a
/// MatMul) or by its columns (pixels, output features). The default picks
/// by a cost estimate of each task's share of the work, packing and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Rows,
    Cols,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Rows, Split::Cols];

    pub fn name(self) -> &'static str {
        match self {
            Split::Rows => "rows",
            Split::Cols => "cols",
        }
    }
}

/// Depths of a product's blocks a tuner may pick ([`Choice::kc`]) besides
/// the kernels' own (256 packed, 384 for the direct convolution).
pub const KC_CHOICES: [u16; 2] = [128, 512];

/// The knobs of an f32 product's kernels that a choice sets at run time
/// (they change neither the packed weights nor the result beyond f32
/// rounding of differently blocked sums): carried by the step's
/// [`super::CpuCtx`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProductKnobs {
    /// How the threads split the product (None: by cost estimate).
    pub split: Option<Split>,
    /// Depth of a block of the product (None: the kernel's own).
    pub kc: Option<usize>,
}

/// One way to run a node: each knob `None` takes its default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Choice {
    /// A quantized layer's kernels.
    pub run: Option<QuantRun>,
    /// A convolution's algorithm. For a quantized layer on the f32 kernels
    /// (`run=f32`), of its f32 run; on the int8 kernels, `gemm` for the
    /// im2col GEMM where the indirect kernel (`direct-oc`, output channels
    /// in the lanes) is the default.
    pub conv: Option<ConvAlgo>,
    /// The widest instruction set its kernels may use.
    pub isa: Option<Isa>,
    /// Run on the calling thread alone (`threads=1`): for a small node the
    /// fork-join and the second core's cache misses can cost more than
    /// the split saves.
    pub single_thread: bool,
    /// How an f32 product's threads split it (`split=rows|cols`).
    pub split: Option<Split>,
    /// Depth of an f32 product's blocks (`kc=128`): the GEMM's packed
    /// blocks or the direct convolution's passes over C.
    pub kc: Option<u16>,
    /// A MatMul/Gemm with a constant B through the sparse kernel
    /// (`sparse=1`) or the dense GEMM (`sparse=0`); None: by B's density
    /// and the rows (see [`super::linalg::sparse_by_default`]). For a
    /// QConv/QMatMul on the int8 kernels, the int8 sparse kernel or the
    /// dense one (see [`super::qsparse::sparse_by_default`]).
    pub sparse: Option<bool>,
}

impl Choice {
    /// Every knob at its default.
    pub fn is_default(&self) -> bool {
        *self == Choice::default()
    }

    /// The knobs that change how weights are packed (the algorithm, the
    /// instruction set, int8 or f32): choices that agree on them share one
    /// packed copy.
    pub fn packing(&self) -> Choice {
        Choice {
            run: self.run,
            conv: self.conv,
            isa: self.isa,
            sparse: self.sparse,
            ..Choice::default()
        }
    }

    /// The product knobs this choice sets.
    pub fn product_knobs(&self) -> ProductKnobs {
        ProductKnobs {
            split: self.split,
            kc: self.kc.map(usize::from),
        }
    }
}

/// `default`, or the knobs set, as `run=f32,conv=winograd` (the form of
/// the tuning database and reports; [`FromStr`] reads it back).
impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.run {
            parts.push(format!("run={}", r.name()));
        }
        if let Some(c) = self.conv {
            parts.push(format!("conv={}", c.name()));
        }
        if let Some(i) = self.isa {
            parts.push(format!("isa={}", i.name()));
        }
        if self.single_thread {
            parts.push("threads=1".to_string());
        }
        if let Some(sp) = self.split {
            parts.push(format!("split={}", sp.name()));
        }
        if let Some(kc) = self.kc {
            parts.push(format!("kc={kc}"));
        }
        if let Some(sp) = self.sparse {
            parts.push(format!("sparse={}", u8::from(sp)));
        }
        if parts.is_empty() {
            f.write_str("default")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Choice, String> {
        let mut c = Choice::default();
        if s == "default" {
            return Ok(c);
        }
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("kernel choice '{s}': '{part}' is not KNOB=VALUE"))?;
            // The value among `names`' (each knob's values by name).
            let pick = |names: &[&'static str]| {
                names.iter().position(|n| *n == value).ok_or_else(|| {
                    format!("kernel choice '{s}': {key} is one of {}", names.join(", "))
                })
            };
            match key {
                "run" => c.run = Some(QuantRun::ALL[pick(&QuantRun::ALL.map(QuantRun::name))?]),
                "conv" => c.conv = Some(ConvAlgo::ALL[pick(&ConvAlgo::ALL.map(ConvAlgo::name))?]),
                "isa" => c.isa = Some(Isa::ALL[pick(&Isa::ALL.map(Isa::name))?]),
                "threads" if value == "1" => c.single_thread = true,
                "split" => c.split = Some(Split::ALL[pick(&Split::ALL.map(Split::name))?]),
                "kc" => {
                    let names = KC_CHOICES.map(|k| k.to_string());
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let i = names.iter().position(|n| *n == value).ok_or_else(|| {
                        format!("kernel choice '{s}': kc is one of {}", names.join(", "))
                    })?;
                    c.kc = Some(KC_CHOICES[i]);
                }
                "sparse" => c.sparse = Some(pick(&["0", "1"])? == 1),
                "threads" => return Err(format!("kernel choice '{s}': threads is 1 (or absent)")),
                _ => return Err(format!("kernel choice '{s}': unknown knob '{key}'")),
            }
        }
        Ok(c)
    }
}

impl Serialize for Choice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Choice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Choice, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_print_and_parse_back() {
        let all = [
            Choice::default(),
            Choice {
                run: Some(QuantRun::F32),
                conv: Some(ConvAlgo::Winograd),
                isa: Some(Isa::Avx2),
                single_thread: true,
                split: Some(Split::Rows),
                kc: Some(512),
                sparse: Some(true),
            },
            Choice {
                conv: Some(ConvAlgo::Sparse),
                ..Choice::default()
            },
            Choice {
                sparse: Some(false),
                ..Choice::default()
            },
            Choice {
                conv: Some(ConvAlgo::Winograd4),
                split: Some(Split::Cols),
                ..Choice::default()
            },
            Choice {
                kc: Some(128),
                ..Choice::default()
            },
            Choice {
                run: Some(QuantRun::Int8),
                ..Choice::default()
            },
            Choice {
                conv: Some(ConvAlgo::DwInterleaved),
                ..Choice::default()
            },
            Choice {
                isa: Some(Isa::AvxVnni),
                ..Choice::default()
            },
            Choice {
                single_thread: true,
                conv: Some(ConvAlgo::Gemm),
                ..Choice::default()
            },
        ];
        for c in all {
            let s = c.to_string();
            assert_eq!(s.parse::<Choice>(), Ok(c), "{s}");
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Choice>(&j).unwrap(), c);
        }
        assert_eq!(Choice::default().to_string(), "default");
        for bad in [
            "",
            "conv",
            "conv=fast",
            "run=int4",
            "tile=8",
            "isa=sse",
            "threads=2",
            "split=diagonal",
            "kc=100",
            "sparse=2",
            "sparse=yes",
        ] {
            assert!(bad.parse::<Choice>().is_err(), "{bad}");
        }
    }
}

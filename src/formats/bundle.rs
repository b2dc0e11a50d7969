//! The `.mlc` bundle: mlc's self-contained compiled artifact (see
//! `docs/bundle.md`).
//!
//! One file holds the compiled graph in the IR text form, its weights as a
//! safetensors blob and a JSON record of how it was made:
//!
//! ```text
//! "MLCB"  u32 format version (5; 1 to 4 are read) little-endian throughout
//! section*: u8 name length, name (ASCII), u64 payload length, payload
//!   graph    UTF-8 IR text of the canonical graph, every constant printed
//!            without values (`%N` is the constant's value number); raw
//!            deflate from version 3 on
//!   weights  safetensors: one tensor per constant, named by its value number
//!     or weights.deflate (version 4 on): u64 length of that safetensors
//!            blob, then the blob raw-deflated; written when at least half
//!            the blob is integer codes (quantized weights) and deflate
//!            saves at least 1/32 of it
//!   meta     JSON [`Metadata`]
//! 32 bytes: SHA-256 of every byte before it
//! ```
//!
//! The three sections appear exactly once each, in that order when written;
//! the reader accepts any order but refuses unknown or repeated sections. The
//! trailing checksum makes any corruption (a flipped bit in a weight) a clear
//! error instead of silently different numbers.
//!
//! Writing is deterministic: the graph is canonicalized
//! ([`crate::ir::text::canonicalize`]) before printing, weights are laid out
//! in value-number order with a header written by hand in that order, and the
//! metadata holds no time stamps and no hash-map iteration. The safetensors
//! blob follows the public format (a `u64` header length, a JSON header padded
//! with spaces to a multiple of 8, then the data) so other tools can read the
//! weights; the low-precision types safetensors has no dtype for are stored as
//! `U8` with the real dtype recorded in `__metadata__` under
//! `mlc.dtype.<name>`: float8 one byte per element, the 4- and 2-bit types
//! (float4 e2m1, int4/uint4, int2/uint2) packed two or four to a byte as ONNX
//! packs them (first element in the low bits), as a 1-D `U8` tensor of
//! `ceil(numel * bits / 8)` bytes whose real shape is in `mlc.shape.<name>`.
//! Format version 1 stored those one byte per element; it is still read.
//! An f32 tensor whose every element is exactly an f16 value (the scales
//! `mlc compress` rounds to f16) is stored as `F16` with `mlc.dtype.<name>`
//! `f32`, and widened back bit for bit on read. From version 5 a tensor
//! that is mostly exact zeros (a pruned weight) is stored sparse: its
//! nonzero values, and a bitmask or a run of gaps saying where they go
//! ([`safetensors::SparseForm`] has the layout).
//!
//! Reading trusts nothing: every length, offset, shape, dtype and element
//! value is checked, and any problem is one [`Error::Malformed`] naming the
//! file and what is wrong, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ir::text::{self, PrintOptions};
use crate::ir::{checked_numel, lowp, verify, DType, Graph, Tensor, TensorData};
use crate::kernels::cpu::choice::Choice;
use crate::transform::runner::PassLogEntry;
use crate::{Error, Result};

/// First four bytes of every bundle.
pub const MAGIC: &[u8; 4] = b"MLCB";
/// The bundle format this build writes. Version 5 stores mostly-zero
/// (pruned) tensors sparse; version 4 may deflate the weights section and
/// store f16-exact f32 tensors in half the bytes; version 3 deflates the
/// graph section; version 2 packs the 4- and 2-bit types densely; versions
/// 1 (one byte per element) to 4 are still read.
pub const FORMAT_VERSION: u32 = 5;
/// Largest graph text a bundle may inflate to (a guard against deflate
/// bombs; real graphs are a few MiB at most).
const MAX_GRAPH_TEXT: u64 = 1 << 28;
/// Deflate cannot expand data more than 1032:1 (a 258-byte match per
/// 2-bit code, at best); a weights section claiming more is a lie.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Quantized weights are stored deflated when that saves at least this
/// fraction of them (1/32); below it, inflating on every load is not worth
/// the bytes.
const MIN_DEFLATE_SAVING: usize = 32;
/// Name of the deflated weights section (format version 4 on).
const WEIGHTS_DEFLATE: &str = "weights.deflate";
/// The oldest bundle format this build reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// File extension of bundles.
pub const EXTENSION: &str = "mlc";

const CHECKSUM_LEN: usize = 32;
const HEADER_LEN: usize = 8;
const SECTIONS: [&str; 3] = ["graph", "weights", "meta"];

/// How a bundle was made, stored as its `meta` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Always [`FORMAT_VERSION`] when written; when read, the version of the
    /// file (it must match the container header).
    pub format_version: u32,
    /// Version of the mlc that wrote the bundle.
    pub mlc_version: String,
    pub source: SourceInfo,
    pub pipeline: PipelineInfo,
    /// What the bundle is compiled for; `"host"` (the reference interpreter).
    pub target: String,
    /// Node counts of the imported and of the compiled graph.
    pub nodes: NodeCounts,
    /// Every pass run, in order.
    pub pass_log: Vec<PassLogEntry>,
    /// Kernel choices by node name, made by `mlc tune` (absent: every node
    /// runs its default); the runtime plans the bundle with them wherever
    /// it is loaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kernel_choices: BTreeMap<String, Choice>,
    /// How the kernel choices were made (absent: untuned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningInfo>,
}

/// How a bundle's kernel choices were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningInfo {
    /// The target tuned for (`host`, or a target description's name).
    pub target: String,
    /// Its fingerprint (CPU model, features, cores).
    pub fingerprint: String,
    /// Threads the choices were measured (or estimated) with.
    pub threads: usize,
    /// Chosen by the cost model, not by measurement.
    pub estimated: bool,
}

/// The model the bundle was compiled from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// File name only (no directories, so bundles do not leak paths).
    pub file_name: String,
    /// SHA-256 of the source file, lowercase hex.
    pub sha256: String,
}

/// The pipeline (recipe) that compiled the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineInfo {
    pub name: String,
    /// Human-readable description of its steps.
    pub summary: String,
}

/// Node counts before and after the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    pub before: usize,
    pub after: usize,
}

impl Metadata {
    /// Metadata for this build of mlc, targeting the host.
    pub fn new(
        source: SourceInfo,
        pipeline: PipelineInfo,
        pass_log: Vec<PassLogEntry>,
        nodes: NodeCounts,
    ) -> Metadata {
        Metadata {
            format_version: FORMAT_VERSION,
            mlc_version: env!("CARGO_PKG_VERSION").to_string(),
            source,
            pipeline,
            target: "host".to_string(),
            nodes,
            pass_log,
            kernel_choices: BTreeMap::new(),
            tuning: None,
        }
    }
}

impl SourceInfo {
    /// Names and hashes bytes read from `file_name`.
    pub fn from_bytes(file_name: impl Into<String>, bytes: &[u8]) -> SourceInfo {
        SourceInfo {
            file_name: file_name.into(),
            sha256: sha256_hex(bytes),
        }
    }

    /// Reads and hashes the source model file.
    pub fn from_file(path: &Path) -> Result<SourceInfo> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(SourceInfo::from_bytes(name, &bytes))
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `bytes` start like a bundle.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Whether the file at `path` starts with the bundle magic (`false` when it
/// cannot be read).
pub fn is_bundle(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && has_magic(&head)
}

/// Whether `path` should be read as a bundle: it starts with the magic, or
/// its extension is `.mlc` (so a damaged bundle gets the bundle reader's
/// message rather than the ONNX importer's).
pub fn looks_like_bundle(path: &Path) -> bool {
    is_bundle(path)
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case(EXTENSION))
}

/// Serializes a graph and its metadata into bundle bytes. The graph must
/// pass the verifier (a bundle that could not be read back is never made).
pub fn to_bytes(g: &Graph, meta: &Metadata) -> Result<Vec<u8>> {
    verify::verify(g)?;
    let canon = text::canonicalize(g);
    let graph_text = text::print_with(
        &canon,
        &PrintOptions {
            inline_const_limit: 0,
        },
    );
    // The text form writes a zero-element constant inline (`= []`): it has
    // no data for the weights section.
    let tensors: Vec<(String, &Tensor)> = canon
        .consts
        .iter()
        .filter(|(_, t)| t.numel() > 0)
        .map(|(id, t)| (id.0.to_string(), t.as_ref()))
        .collect();
    let weights = safetensors::encode(&tensors);
    // Integer codes entropy-code well (7-bit weights in 8-bit bytes, peaked
    // distributions); float weights save only on their exponent bits (under
    // a tenth) and are left raw, so f32 bundles load without inflating.
    let code_bytes: usize = tensors
        .iter()
        .filter(|(_, t)| t.dtype().is_int())
        .map(|(_, t)| safetensors::stored_len(t))
        .sum();
    let meta = Metadata {
        format_version: FORMAT_VERSION,
        ..meta.clone()
    };
    let meta_json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| Error::Internal(format!("encoding the bundle metadata: {e}")))?;
    let graph = deflate(graph_text.as_bytes(), "graph")?;
    let packed = if 2 * code_bytes >= weights.len() {
        Some(deflate(&weights, "weights")?)
    } else {
        None
    };
    let weights_section = if let Some(packed) =
        packed.filter(|p| p.len() + 8 + weights.len() / MIN_DEFLATE_SAVING <= weights.len())
    {
        let mut section = Vec::with_capacity(8 + packed.len());
        section.extend_from_slice(&(weights.len() as u64).to_le_bytes());
        section.extend_from_slice(&packed);
        (WEIGHTS_DEFLATE, section)
    } else {
        ("weights", weights)
    };
    Ok(container::encode(&[
        ("graph", &graph),
        (weights_section.0, &weights_section.1),
        ("meta", &meta_json),
    ]))
}

/// Raw deflate of `bytes` (deterministic for a given input); `section`
/// names them in errors.
fn deflate(bytes: &[u8], section: &str) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::default(),
    );
    enc.write_all(bytes)
        .and_then(|()| enc.finish())
        .map_err(|e| Error::Internal(format!("compressing the {section} section: {e}")))
}

/// Inflates a deflated section, refusing more than `limit` bytes.
fn inflate(bytes: &[u8], section: &str, limit: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the {section} section is not valid deflate data: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "the {section} section inflates to more than {limit} bytes"
        ));
    }
    Ok(out)
}

/// The safetensors blob of a `weights.deflate` section: its declared length,
/// then the deflate stream, which must inflate to exactly that length.
fn inflate_weights(section: &[u8], what: &Path) -> Result<Vec<u8>> {
    let malformed = |message: String| Error::Malformed {
        path: what.to_path_buf(),
        message,
    };
    let (len, stream) = section.split_first_chunk::<8>().ok_or_else(|| {
        malformed("the weights.deflate section is too short to hold its length".into())
    })?;
    let len = u64::from_le_bytes(*len);
    if len > (stream.len() as u64).saturating_mul(MAX_DEFLATE_RATIO) {
        return Err(malformed(format!(
            "the weights.deflate section claims {len} bytes from a {}-byte stream, more than deflate can hold",
            stream.len()
        )));
    }
    // The declared size, before inflating toward it.
    crate::limits::check(
        || format!("{}: the weights section", what.display()),
        Some(len),
    )?;
    let out = inflate(stream, WEIGHTS_DEFLATE, len).map_err(malformed)?;
    if out.len() as u64 != len {
        return Err(malformed(format!(
            "the weights.deflate section inflates to {} bytes, not the {len} it declares",
            out.len()
        )));
    }
    Ok(out)
}

/// Writes a bundle atomically: a temporary file beside `path`, renamed over
/// it only when complete. Callers writing a compiled model should first call
/// [`ensure_not_input`] so the source model is never overwritten.
pub fn write(path: &Path, g: &Graph, meta: &Metadata) -> Result<()> {
    let bytes = to_bytes(g, meta)?;
    crate::fsutil::write_bytes_atomic(path, &bytes)
}

pub use crate::fsutil::ensure_not_input;

/// Reads a bundle file.
pub fn read(path: &Path) -> Result<(Graph, Metadata)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// Decodes bundle bytes; `what` names them in errors.
pub fn from_bytes(bytes: &[u8], what: &Path) -> Result<(Graph, Metadata)> {
    let malformed = |message: String| Error::Malformed {
        path: what.to_path_buf(),
        message,
    };
    let sections = container::decode(bytes).map_err(&malformed)?;
    let meta: Metadata = serde_json::from_slice(sections.meta)
        .map_err(|e| malformed(format!("bad metadata (meta section): {e}")))?;
    if meta.format_version != sections.version {
        return Err(malformed(format!(
            "the metadata says format version {} but the file header says {}",
            meta.format_version, sections.version
        )));
    }
    let inflated;
    let graph_bytes = if sections.version >= 3 {
        inflated = inflate(sections.graph, "graph", MAX_GRAPH_TEXT).map_err(&malformed)?;
        &inflated[..]
    } else {
        sections.graph
    };
    let weights_inflated;
    let weights_blob = if sections.weights_deflated {
        // The declared size, before inflating toward it.
        weights_inflated = inflate_weights(sections.weights, what)?;
        &weights_inflated[..]
    } else {
        sections.weights
    };
    let graph_text = std::str::from_utf8(graph_bytes)
        .map_err(|e| malformed(format!("the graph section is not UTF-8: {e}")))?;
    let layout = match sections.version {
        1 => safetensors::Layout::Bytewise,
        2..=4 => safetensors::Layout::Packed,
        _ => safetensors::Layout::Sparse,
    };
    let mut weights = safetensors::decode_with(weights_blob, layout)
        .map_err(|m| malformed(format!("bad weights section: {m}")))?;

    // The first missing weight, reported as such rather than as whatever the
    // parser makes of the callback's error.
    let mut missing: Option<String> = None;
    let parsed = text::parse_with(graph_text, &mut |n: usize, name: &str| match weights
        .remove(&n.to_string())
    {
        Some(t) => Ok(t),
        None => {
            let m = format!("the weights section has no tensor for constant %{n} '{name}'");
            missing.get_or_insert(m.clone());
            Err(Error::Malformed {
                path: what.to_path_buf(),
                message: m,
            })
        }
    });
    let g = match (parsed, missing) {
        (Ok(g), None) => g,
        (_, Some(m)) => return Err(malformed(m)),
        (Err(e), None) => return Err(malformed(format!("bad graph section: {e}"))),
    };
    if g.outputs.is_empty() {
        return Err(malformed("the graph has no outputs".into()));
    }
    let opsets = crate::formats::onnx::MIN_OPSET..=crate::formats::onnx::MAX_OPSET;
    if !opsets.contains(&g.opset) {
        return Err(malformed(format!(
            "the graph's opset {} is not one mlc supports ({}..{})",
            g.opset,
            opsets.start(),
            opsets.end()
        )));
    }
    if !weights.is_empty() {
        let extra: Vec<&str> = weights.keys().take(5).map(String::as_str).collect();
        return Err(malformed(format!(
            "the weights section holds {} tensor(s) the graph does not use ({})",
            weights.len(),
            extra.join(", ")
        )));
    }
    verify::verify(&g).map_err(|e| malformed(format!("the graph is not valid: {e}")))?;
    if let Some(name) = meta
        .kernel_choices
        .keys()
        .find(|name| !g.nodes().any(|(_, n)| &n.name == *name))
    {
        return Err(malformed(format!(
            "the metadata holds a kernel choice for node '{name}', which the graph does not have"
        )));
    }
    Ok((g, meta))
}

/// The container: magic, version, named sections, checksum.
mod container {
    use super::*;

    /// The format version and the payloads of a bundle's sections.
    pub struct Sections<'a> {
        pub version: u32,
        pub graph: &'a [u8],
        /// The `weights` or `weights.deflate` payload, as stored.
        pub weights: &'a [u8],
        /// Whether the weights came as `weights.deflate`.
        pub weights_deflated: bool,
        pub meta: &'a [u8],
    }

    pub fn encode(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let total: usize = sections.iter().map(|(n, p)| 9 + n.len() + p.len()).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + total + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for (name, payload) in sections {
            // Section names are the fixed short ASCII names above.
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(payload);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Sections<'_>, String> {
        if bytes.len() < MAGIC.len() || !has_magic(bytes) {
            return Err("not an mlc bundle (the file does not start with \"MLCB\")".into());
        }
        let Some(version) = bytes.get(4..8) else {
            return Err("truncated bundle: the header is cut short".into());
        };
        // get(4..8) returned exactly four bytes.
        let version = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "bundle format version {version} is not supported (this mlc reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}); rebuild the bundle with this mlc"
            ));
        }
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err("truncated bundle: too short to hold its checksum".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Sha256::digest(body).as_slice() != sum {
            return Err("checksum mismatch: the bundle is truncated or corrupted".into());
        }
        let mut found: [Option<&[u8]>; 3] = [None; 3];
        let mut weights_deflated = false;
        let mut pos = HEADER_LEN;
        while pos < body.len() {
            let name_len = body[pos] as usize;
            let name = body
                .get(pos + 1..pos + 1 + name_len)
                .ok_or_else(|| format!("section header at byte {pos} runs past the end"))?;
            let name = std::str::from_utf8(name)
                .map_err(|_| format!("section name at byte {pos} is not text"))?;
            let len_at = pos + 1 + name_len;
            let len = body
                .get(len_at..len_at + 8)
                .ok_or_else(|| format!("section '{name}' header runs past the end"))?;
            let mut len8 = [0u8; 8];
            len8.copy_from_slice(len);
            let start = len_at + 8;
            let end = usize::try_from(u64::from_le_bytes(len8))
                .ok()
                .and_then(|l| start.checked_add(l))
                .filter(|&e| e <= body.len())
                .ok_or_else(|| {
                    format!(
                        "section '{name}' claims {} bytes, past the end of the file",
                        u64::from_le_bytes(len8)
                    )
                })?;
            let deflated = name == WEIGHTS_DEFLATE && version >= 4;
            let slot = SECTIONS
                .iter()
                .position(|&s| s == name || (deflated && s == "weights"))
                .ok_or_else(|| format!("unknown section '{name}'"))?;
            if found[slot].is_some() {
                return Err(if deflated {
                    format!("section '{name}' repeats the weights section")
                } else {
                    format!("section '{name}' appears twice")
                });
            }
            found[slot] = Some(&body[start..end]);
            weights_deflated |= deflated;
            pos = end;
        }
        let get =
            |i: usize| found[i].ok_or_else(|| format!("the '{}' section is missing", SECTIONS[i]));
        Ok(Sections {
            version,
            graph: get(0)?,
            weights: get(1)?,
            weights_deflated,
            meta: get(2)?,
        })
    }
}

/// A minimal safetensors reader and writer (the format: `u64` header length,
/// a JSON header, the data). Written here rather than taken from the
/// `safetensors` crate to fix the header's key order and to check hostile
/// input with our own messages.
pub mod safetensors {
    use super::*;
    use serde_json::Value;

    const META_KEY: &str = "__metadata__";
    const DTYPE_PREFIX: &str = "mlc.dtype.";
    const SHAPE_PREFIX: &str = "mlc.shape.";
    const SPARSE_PREFIX: &str = "mlc.sparse.";

    /// The safetensors dtype an mlc dtype is stored as; `U8` for the
    /// low-precision types safetensors lacks.
    pub fn st_dtype(d: DType) -> &'static str {
        match d {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::Bool => "BOOL",
            _ => "U8",
        }
    }

    fn from_st_dtype(s: &str) -> Option<DType> {
        [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
            DType::Bool,
        ]
        .into_iter()
        .find(|&d| st_dtype(d) == s)
    }

    /// Little-endian bytes of a tensor's elements, one byte per element for
    /// bool and the low-precision types.
    pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
        fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(|&x| f(x)).collect()
        }
        match t.data() {
            TensorData::F32(v) => le(v, f32::to_le_bytes),
            TensorData::F64(v) => le(v, f64::to_le_bytes),
            TensorData::F16(v) => le(v, |x: f16| x.to_bits().to_le_bytes()),
            TensorData::BF16(v) => le(v, |x: bf16| x.to_bits().to_le_bytes()),
            TensorData::I8(v) | TensorData::I4(v) | TensorData::I2(v) => {
                v.iter().map(|&x| x as u8).collect()
            }
            TensorData::I16(v) => le(v, i16::to_le_bytes),
            TensorData::I32(v) => le(v, i32::to_le_bytes),
            TensorData::I64(v) => le(v, i64::to_le_bytes),
            TensorData::U16(v) => le(v, u16::to_le_bytes),
            TensorData::U32(v) => le(v, u32::to_le_bytes),
            TensorData::U64(v) => le(v, u64::to_le_bytes),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v)
            | TensorData::F8E4M3FN(v)
            | TensorData::F8E4M3FNUZ(v)
            | TensorData::F8E5M2(v)
            | TensorData::F8E5M2FNUZ(v)
            | TensorData::F8E8M0(v)
            | TensorData::F4E2M1(v)
            | TensorData::U4(v)
            | TensorData::U2(v) => v.clone(),
        }
    }

    /// Rebuilds the elements of `dtype` from their bytes (whose length is a
    /// multiple of the element size), checking that the values are ones
    /// mlc can hold.
    pub fn data_from_bytes(dtype: DType, b: &[u8]) -> std::result::Result<TensorData, String> {
        fn chunks<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let in_range = |lo: i16, hi: i16, signed: bool| -> std::result::Result<(), String> {
            match b.iter().position(|&x| {
                let v = if signed { x as i8 as i16 } else { x as i16 };
                v < lo || v > hi
            }) {
                Some(i) => Err(format!(
                    "element {i} of a {dtype} tensor is out of range ({lo}..={hi})"
                )),
                None => Ok(()),
            }
        };
        let signed = |b: &[u8]| b.iter().map(|&x| x as i8).collect::<Vec<i8>>();
        Ok(match dtype {
            DType::F32 => TensorData::F32(chunks(b, f32::from_le_bytes)),
            DType::F64 => TensorData::F64(chunks(b, f64::from_le_bytes)),
            DType::F16 => TensorData::F16(chunks(b, |a| f16::from_bits(u16::from_le_bytes(a)))),
            DType::BF16 => TensorData::BF16(chunks(b, |a| bf16::from_bits(u16::from_le_bytes(a)))),
            DType::I8 => TensorData::I8(signed(b)),
            DType::I16 => TensorData::I16(chunks(b, i16::from_le_bytes)),
            DType::I32 => TensorData::I32(chunks(b, i32::from_le_bytes)),
            DType::I64 => TensorData::I64(chunks(b, i64::from_le_bytes)),
            DType::U8 => TensorData::U8(b.to_vec()),
            DType::U16 => TensorData::U16(chunks(b, u16::from_le_bytes)),
            DType::U32 => TensorData::U32(chunks(b, u32::from_le_bytes)),
            DType::U64 => TensorData::U64(chunks(b, u64::from_le_bytes)),
            DType::Bool => {
                in_range(0, 1, false)?;
                TensorData::Bool(b.iter().map(|&x| x != 0).collect())
            }
            DType::F8E4M3FN => TensorData::F8E4M3FN(b.to_vec()),
            DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(b.to_vec()),
            DType::F8E5M2 => TensorData::F8E5M2(b.to_vec()),
            DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(b.to_vec()),
            DType::F8E8M0 => TensorData::F8E8M0(b.to_vec()),
            DType::F4E2M1 => {
                in_range(0, 15, false)?;
                TensorData::F4E2M1(b.to_vec())
            }
            DType::I4 => {
                in_range(-8, 7, true)?;
                TensorData::I4(signed(b))
            }
            DType::U4 => {
                in_range(0, 15, false)?;
                TensorData::U4(b.to_vec())
            }
            DType::I2 => {
                in_range(-2, 1, true)?;
                TensorData::I2(signed(b))
            }
            DType::U2 => {
                in_range(0, 3, false)?;
                TensorData::U2(b.to_vec())
            }
        })
    }

    /// How tensors are laid out in the blob, by bundle format version.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Layout {
        /// Format version 5: as [`Layout::Packed`], and a tensor that is
        /// mostly exact zeros is stored sparse (see [`SparseForm`]).
        Sparse,
        /// Format versions 2 to 4: the 4- and 2-bit types (float4 e2m1,
        /// int4/uint4, int2/uint2) packed as ONNX packs them, first element
        /// in the least significant bits, unused high bits of the last byte
        /// zero, stored as `U8[ceil(numel * bits / 8)]` with the real shape
        /// in `__metadata__` under `mlc.shape.<name>`; f16-exact f32 tensors
        /// stored as `F16` (version 4 on).
        Packed,
        /// Format version 1: the 4- and 2-bit types one byte per element as
        /// mlc holds them in memory, stored as `U8` with the tensor's own
        /// shape; no narrowing.
        Bytewise,
    }

    /// How a sparse tensor (format version 5) records where its nonzero
    /// values go. An element is zero when all its stored bits are zero
    /// (`-0.0` and NaN are values); the values are the nonzero elements in
    /// order, in the tensor's stored dtype, as the entry `<name>` of shape
    /// `[nnz]`, and the index is the `U8` entry `<name>.mask` or
    /// `<name>.gaps`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SparseForm {
        /// `ceil(numel / 8)` bytes, bit `i % 8` of byte `i / 8` set when
        /// element `i` is nonzero, the unused high bits of the last byte
        /// zero.
        Bitmask,
        /// `nnz + 1` unsigned LEB128 varints (7 bits a byte, low groups
        /// first, high bit set on every byte but the last, shortest form):
        /// the number of zeros before each nonzero value since the previous
        /// one, then the number after the last. They add up to `numel -
        /// nnz`.
        Gaps,
    }

    impl SparseForm {
        /// Its name in `mlc.sparse.<name>`.
        pub fn name(self) -> &'static str {
            match self {
                SparseForm::Bitmask => "bitmask",
                SparseForm::Gaps => "gaps",
            }
        }

        fn from_name(s: &str) -> Option<SparseForm> {
            [SparseForm::Bitmask, SparseForm::Gaps]
                .into_iter()
                .find(|f| f.name() == s)
        }

        /// What the index entry's name adds to the tensor's.
        fn suffix(self) -> &'static str {
            match self {
                SparseForm::Bitmask => ".mask",
                SparseForm::Gaps => ".gaps",
            }
        }
    }

    /// Header bytes a sparse tensor adds, about: its index entry and its
    /// `mlc.shape` and `mlc.sparse` records. A tensor is stored sparse only
    /// when that saves more data bytes than this, so small tensors (a zero
    /// bias of four elements) stay dense.
    pub const SPARSE_HEADER_COST: usize = 128;

    /// The bits per element of `dtype` when `layout` packs it, `None` when
    /// it is stored whole bytes per element.
    fn packed_bits(dtype: DType, layout: Layout) -> Option<usize> {
        match layout {
            Layout::Packed | Layout::Sparse if dtype.bits() < 8 => Some(dtype.bits()),
            _ => None,
        }
    }

    /// The 4- or 2-bit codes of a sub-byte tensor packed densely (`None` for
    /// the other types).
    fn packed_data(t: &Tensor) -> Option<Vec<u8>> {
        let signed = |v: &[i8]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
        Some(match t.data() {
            TensorData::F4E2M1(v) | TensorData::U4(v) => lowp::pack(4, v),
            TensorData::U2(v) => lowp::pack(2, v),
            TensorData::I4(v) => lowp::pack(4, &signed(v)),
            TensorData::I2(v) => lowp::pack(2, &signed(v)),
            _ => return None,
        })
    }

    /// Rebuilds a sub-byte tensor's elements from its unpacked codes.
    fn data_from_codes(dtype: DType, codes: Vec<u8>) -> std::result::Result<TensorData, String> {
        let signed = |bits: usize| codes.iter().map(|&c| lowp::sign_extend(c, bits)).collect();
        Ok(match dtype {
            DType::F4E2M1 => TensorData::F4E2M1(codes),
            DType::U4 => TensorData::U4(codes),
            DType::U2 => TensorData::U2(codes),
            DType::I4 => TensorData::I4(signed(4)),
            DType::I2 => TensorData::I2(signed(2)),
            d => return Err(format!("{d} is not a packed type")),
        })
    }

    /// Appends `v` as an unsigned LEB128 varint.
    pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Bytes `v` takes as a varint.
    pub(super) fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// Reads the varint at `*at` in `b`, moving `*at` past it; refuses one
    /// cut short, longer than its shortest form or past 64 bits.
    pub(super) fn get_varint(b: &[u8], at: &mut usize) -> std::result::Result<u64, &'static str> {
        let mut v = 0u64;
        for k in 0..10 {
            let Some(&byte) = b.get(*at) else {
                return Err("ends inside a varint");
            };
            *at += 1;
            if k == 9 && byte > 1 {
                return Err("holds a varint past 64 bits");
            }
            v |= u64::from(byte & 0x7f) << (7 * k);
            if byte & 0x80 == 0 {
                if byte == 0 && k > 0 {
                    return Err("holds a varint longer than its shortest form");
                }
                return Ok(v);
            }
        }
        Err("holds a varint past 64 bits")
    }

    /// Whether one stored element (its bytes) is zero.
    fn is_zero(e: &[u8]) -> bool {
        e.iter().all(|&b| b == 0)
    }

    /// Whether the writer stores tensors sparse where that is smaller, or
    /// (tests) every tensor it may in one form.
    #[derive(Clone, Copy)]
    enum Policy {
        Auto,
        #[cfg(test)]
        Force(SparseForm),
    }

    /// Which sparse form `bytes` (elements of `size` bytes each) is stored
    /// in under `policy`, if any: the smaller of the two (the bitmask on a
    /// tie) when it saves more than [`SPARSE_HEADER_COST`] bytes. Counts
    /// before building anything.
    fn sparse_choice(bytes: &[u8], size: usize, policy: Policy) -> Option<SparseForm> {
        match policy {
            Policy::Auto if bytes.len() <= SPARSE_HEADER_COST => return None,
            Policy::Auto => {}
            #[cfg(test)]
            Policy::Force(form) => return Some(form),
        }
        let (mut nnz, mut gaps, mut run) = (0usize, 0usize, 0u64);
        for e in bytes.chunks_exact(size) {
            if is_zero(e) {
                run += 1;
            } else {
                nnz += 1;
                gaps += varint_len(run);
                run = 0;
            }
        }
        gaps += varint_len(run);
        let mask = (bytes.len() / size).div_ceil(8);
        let (form, index) = if gaps < mask {
            (SparseForm::Gaps, gaps)
        } else {
            (SparseForm::Bitmask, mask)
        };
        (index + nnz * size + SPARSE_HEADER_COST < bytes.len()).then_some(form)
    }

    /// The index of `bytes` (elements of `size` bytes each) in `form`, and
    /// its nonzero elements' bytes.
    fn sparsify(bytes: &[u8], size: usize, form: SparseForm) -> (Vec<u8>, Vec<u8>) {
        let numel = bytes.len() / size;
        let mut index = match form {
            SparseForm::Bitmask => vec![0u8; numel.div_ceil(8)],
            SparseForm::Gaps => Vec::new(),
        };
        let mut values = Vec::new();
        let mut run = 0u64;
        for (i, e) in bytes.chunks_exact(size).enumerate() {
            if is_zero(e) {
                run += 1;
                continue;
            }
            match form {
                SparseForm::Bitmask => index[i / 8] |= 1 << (i % 8),
                SparseForm::Gaps => put_varint(&mut index, run),
            }
            run = 0;
            values.extend_from_slice(e);
        }
        if form == SparseForm::Gaps {
            put_varint(&mut index, run);
        }
        (index, values)
    }

    /// How one tensor is laid out in the blob.
    struct Stored {
        /// The safetensors dtype of its entry.
        st: &'static str,
        /// The shape of its entry: its own, `[bytes]` packed, `[nnz]` sparse.
        shape: Vec<usize>,
        /// The data of its entry.
        bytes: Vec<u8>,
        /// It needs an `mlc.dtype` record (a type safetensors lacks, or an
        /// f32 tensor stored as `F16`).
        real_dtype: bool,
        /// It needs an `mlc.shape` record (packed or sparse).
        real_shape: bool,
        /// Stored sparse: the form and the index entry's data.
        sparse: Option<(SparseForm, Vec<u8>)>,
    }

    impl Stored {
        fn of(t: &Tensor, layout: Layout, policy: Policy) -> Stored {
            if let Some(b) = packed_bits(t.dtype(), layout).and_then(|_| packed_data(t)) {
                return Stored {
                    st: "U8",
                    shape: vec![b.len()],
                    bytes: b,
                    real_dtype: true,
                    real_shape: true,
                    sparse: None,
                };
            }
            let (st, bytes, size, narrowed) = match (t.data(), layout) {
                (TensorData::F32(v), Layout::Packed | Layout::Sparse) if f16_exact(v) => (
                    "F16",
                    v.iter()
                        .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
                        .collect(),
                    2,
                    true,
                ),
                _ => (
                    st_dtype(t.dtype()),
                    tensor_bytes(t),
                    t.dtype().size(),
                    false,
                ),
            };
            let mut s = Stored {
                st,
                shape: t.shape().to_vec(),
                bytes,
                real_dtype: narrowed || t.dtype().is_storage_only(),
                real_shape: false,
                sparse: None,
            };
            if layout == Layout::Sparse {
                if let Some(form) = sparse_choice(&s.bytes, size, policy) {
                    let (index, values) = sparsify(&s.bytes, size, form);
                    s.shape = vec![values.len() / size];
                    s.bytes = values;
                    s.real_shape = true;
                    s.sparse = Some((form, index));
                }
            }
            s
        }

        /// Data bytes: the entry's, and the index's when sparse.
        fn len(&self) -> usize {
            self.bytes.len() + self.sparse.as_ref().map_or(0, |(_, i)| i.len())
        }
    }

    /// Whether every element of `v` comes back bit for bit from f16, so the
    /// tensor can be stored in half the bytes.
    pub fn f16_exact(v: &[f32]) -> bool {
        v.iter()
            .all(|&x| f16::from_f32(x).to_f32().to_bits() == x.to_bits())
    }

    /// Data bytes a tensor takes in a current blob: sub-byte types packed,
    /// f16-exact f32 tensors two bytes an element, and a tensor the writer
    /// stores sparse its values and index.
    pub fn stored_len(t: &Tensor) -> usize {
        Stored::of(t, Layout::Sparse, Policy::Auto).len()
    }

    /// Encodes named tensors, in the order given, as a safetensors blob in
    /// the current format (sub-byte types packed, f16-exact f32 tensors
    /// narrowed, mostly-zero tensors sparse).
    pub fn encode(tensors: &[(String, &Tensor)]) -> Vec<u8> {
        encode_with(tensors, Layout::Sparse)
    }

    /// Encodes named tensors in the given layout; [`Layout::Packed`]
    /// writes format version 4's weights and [`Layout::Bytewise`] version
    /// 1's (kept so that reading old bundles can be tested).
    pub fn encode_with(tensors: &[(String, &Tensor)], layout: Layout) -> Vec<u8> {
        encode_policy(tensors, layout, Policy::Auto)
    }

    /// Encodes every tensor that is not packed sparse in `form`, whatever
    /// its size (tests of the reader).
    #[cfg(test)]
    pub(super) fn encode_forced(tensors: &[(String, &Tensor)], form: SparseForm) -> Vec<u8> {
        encode_policy(tensors, Layout::Sparse, Policy::Force(form))
    }

    fn encode_policy(tensors: &[(String, &Tensor)], layout: Layout, policy: Policy) -> Vec<u8> {
        let js = |s: &str| Value::String(s.to_string()).to_string();
        let dims = |shape: &[usize]| {
            let v: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("[{}]", v.join(","))
        };
        let forms: Vec<Stored> = tensors
            .iter()
            .map(|(_, t)| Stored::of(t, layout, policy))
            .collect();
        let mut entries: Vec<String> = Vec::new();
        let mut records: Vec<String> = Vec::new();
        let mut record = |prefix: &str, n: &str, v: &str| {
            records.push(format!("{}:{}", js(&format!("{prefix}{n}")), js(v)));
        };
        for ((n, t), s) in tensors.iter().zip(&forms) {
            if s.real_dtype {
                record(DTYPE_PREFIX, n, t.dtype().name());
            }
            if s.real_shape {
                record(SHAPE_PREFIX, n, &dims(t.shape()));
            }
            if let Some((form, _)) = &s.sparse {
                record(SPARSE_PREFIX, n, form.name());
            }
        }
        if !records.is_empty() {
            entries.push(format!("{}:{{{}}}", js(META_KEY), records.join(",")));
        }
        let mut data = Vec::new();
        let mut entry = |name: &str, st: &str, shape: &[usize], bytes: &[u8]| {
            let begin = data.len();
            data.extend_from_slice(bytes);
            entries.push(format!(
                "{}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":[{},{}]}}",
                js(name),
                js(st),
                dims(shape),
                begin,
                data.len()
            ));
        };
        for ((name, _), s) in tensors.iter().zip(&forms) {
            entry(name, s.st, &s.shape, &s.bytes);
            if let Some((form, index)) = &s.sparse {
                let iname = format!("{name}{}", form.suffix());
                entry(&iname, "U8", &[index.len()], index);
            }
        }
        let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
        // Pad so the data starts 8-byte aligned, as the reference writer does.
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + data.len());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: [usize; 2],
    }

    /// Decodes a safetensors blob in the current format into named tensors.
    pub fn decode(blob: &[u8]) -> std::result::Result<BTreeMap<String, Tensor>, String> {
        decode_with(blob, Layout::Sparse)
    }

    /// Parses a JSON object whose keys must be unique: serde_json keeps the
    /// last of a repeated key without a word, and a header naming a tensor
    /// twice is damaged.
    fn unique_object(text: &str) -> std::result::Result<serde_json::Map<String, Value>, String> {
        use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
        struct Unique(serde_json::Map<String, Value>);
        struct UniqueVisitor;
        impl<'de> Visitor<'de> for UniqueVisitor {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Unique, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(A::Error::custom(format!("key '{k}' appears twice")));
                    }
                    out.insert(k, v);
                }
                Ok(Unique(out))
            }
        }
        impl<'de> Deserialize<'de> for Unique {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Unique, D::Error> {
                d.deserialize_map(UniqueVisitor)
            }
        }
        serde_json::from_str::<Unique>(text)
            .map(|u| u.0)
            .map_err(|e| e.to_string())
    }

    /// The tensor an index entry belongs to and its form, when `name` ends
    /// like one.
    fn index_owner(name: &str) -> Option<(&str, SparseForm)> {
        [SparseForm::Bitmask, SparseForm::Gaps]
            .into_iter()
            .find_map(|f| name.strip_suffix(f.suffix()).map(|owner| (owner, f)))
    }

    /// Where the `nnz` values of a sparse tensor of `numel` elements go,
    /// from its index in `form`, every claim of the index checked.
    fn positions(
        form: SparseForm,
        index: &[u8],
        numel: usize,
        nnz: usize,
    ) -> std::result::Result<Vec<usize>, String> {
        match form {
            SparseForm::Bitmask => {
                let want = numel.div_ceil(8);
                if index.len() != want {
                    return Err(format!(
                        "its mask is {} bytes, but {numel} elements take {want}",
                        index.len()
                    ));
                }
                let used = numel % 8;
                if let (true, Some(&last)) = (used != 0, index.last()) {
                    if last >> used != 0 {
                        return Err(format!(
                            "the unused high bits of its mask's last byte ({last:#04x}) are not zero"
                        ));
                    }
                }
                let set: usize = index.iter().map(|b| b.count_ones() as usize).sum();
                if set != nnz {
                    return Err(format!(
                        "its mask marks {set} nonzero elements but it holds {nnz} values"
                    ));
                }
                let mut out = Vec::with_capacity(nnz);
                for (i, &b) in index.iter().enumerate() {
                    for bit in 0..8 {
                        if b >> bit & 1 != 0 {
                            out.push(i * 8 + bit);
                        }
                    }
                }
                Ok(out)
            }
            SparseForm::Gaps => {
                let mut out = Vec::with_capacity(nnz);
                let (mut at, mut pos) = (0usize, 0usize);
                for k in 0..=nnz {
                    if at == index.len() {
                        return Err(format!(
                            "its gaps stop after {k} of {} (one before each of its {nnz} values, one after the last)",
                            nnz + 1
                        ));
                    }
                    let gap = get_varint(index, &mut at).map_err(|m| format!("its gaps {m}"))?;
                    let end = usize::try_from(gap)
                        .ok()
                        .and_then(|g| pos.checked_add(g))
                        .filter(|&e| e < numel || (k == nnz && e == numel))
                        .ok_or_else(|| format!("gap {k} ({gap}) runs past its {numel} elements"))?;
                    if k == nnz {
                        if end != numel {
                            return Err(format!("its gaps cover {end} of its {numel} elements"));
                        }
                    } else {
                        out.push(end);
                        pos = end + 1;
                    }
                }
                if at != index.len() {
                    return Err(format!(
                        "its gaps have {} bytes after the last gap",
                        index.len() - at
                    ));
                }
                Ok(out)
            }
        }
    }

    /// Decodes a safetensors blob whose tensors are laid out as `layout`
    /// says. The tensors must cover the data exactly, without gaps or
    /// overlaps, every `mlc.` metadata entry must name a tensor it applies
    /// to, and every index entry a sparse tensor. The dense size of the
    /// sparse tensors together is held to the memory budget
    /// ([`crate::limits`]) before any is expanded.
    pub fn decode_with(
        blob: &[u8],
        layout: Layout,
    ) -> std::result::Result<BTreeMap<String, Tensor>, String> {
        let Some(len) = blob.get(..8) else {
            return Err("too short to hold the header length".into());
        };
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(len);
        let hlen = u64::from_le_bytes(len8);
        let data_start = usize::try_from(hlen)
            .ok()
            .and_then(|h| h.checked_add(8))
            .filter(|&e| e <= blob.len())
            .ok_or_else(|| format!("the header claims {hlen} bytes, past the end"))?;
        let header = std::str::from_utf8(&blob[8..data_start])
            .map_err(|e| format!("the header is not UTF-8: {e}"))?;
        let header = unique_object(header).map_err(|e| format!("bad JSON header: {e}"))?;
        let data = &blob[data_start..];

        let mut real_dtypes: BTreeMap<String, DType> = BTreeMap::new();
        let mut real_shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut sparse_forms: BTreeMap<String, SparseForm> = BTreeMap::new();
        if let Some(meta) = header.get(META_KEY) {
            let meta = meta
                .as_object()
                .ok_or_else(|| format!("{META_KEY} is not an object"))?;
            for (k, v) in meta {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("{META_KEY} entry '{k}' is not a string"))?;
                if let Some(name) = k.strip_prefix(DTYPE_PREFIX) {
                    let d = DType::from_name(v)
                        .filter(|&d| d.is_storage_only() || d == DType::F32)
                        .ok_or_else(|| format!("tensor '{name}' has unknown dtype '{v}'"))?;
                    real_dtypes.insert(name.to_string(), d);
                } else if let Some(name) = k.strip_prefix(SHAPE_PREFIX) {
                    if layout == Layout::Bytewise {
                        return Err(format!(
                            "{META_KEY} entry '{k}': format version 1 records no shapes"
                        ));
                    }
                    let shape: Vec<usize> = serde_json::from_str(v).map_err(|e| {
                        format!("tensor '{name}' has a bad shape '{v}' in {META_KEY}: {e}")
                    })?;
                    real_shapes.insert(name.to_string(), shape);
                } else if let Some(name) = k.strip_prefix(SPARSE_PREFIX) {
                    if layout != Layout::Sparse {
                        return Err(format!(
                            "{META_KEY} entry '{k}': sparse tensors need format version 5"
                        ));
                    }
                    let form = SparseForm::from_name(v).ok_or_else(|| {
                        format!("tensor '{name}' has unknown sparse form '{v}' (bitmask or gaps)")
                    })?;
                    sparse_forms.insert(name.to_string(), form);
                } else if k.starts_with("mlc.") {
                    return Err(format!("unknown {META_KEY} entry '{k}'"));
                }
            }
        }

        let entry = |name: &str, v: &Value| -> std::result::Result<(Entry, usize, usize), String> {
            let e: Entry = serde_json::from_value(v.clone())
                .map_err(|err| format!("tensor '{name}': {err}"))?;
            let [begin, end] = e.data_offsets;
            if begin > end || end > data.len() {
                return Err(format!(
                    "tensor '{name}' data offsets [{begin}, {end}] are outside the {} data bytes",
                    data.len()
                ));
            }
            Ok((e, begin, end))
        };
        let mut spans: Vec<(usize, usize, String)> = Vec::new();

        // The index entries, by the sparse tensor each belongs to.
        let mut indexes: BTreeMap<String, &[u8]> = BTreeMap::new();
        for (name, v) in &header {
            let Some((owner, form)) = index_owner(name) else {
                continue;
            };
            if sparse_forms.get(owner) != Some(&form) {
                return Err(format!(
                    "tensor '{name}' is a sparse index, but {META_KEY} has no '{SPARSE_PREFIX}{owner}': \"{}\" record",
                    form.name()
                ));
            }
            let (e, begin, end) = entry(name, v)?;
            if e.dtype != "U8" || e.shape != [end - begin] {
                return Err(format!(
                    "tensor '{name}' is stored as {}{:?} in {} bytes; a sparse index is U8[bytes]",
                    e.dtype,
                    e.shape,
                    end - begin
                ));
            }
            spans.push((begin, end, name.clone()));
            indexes.insert(owner.to_string(), &data[begin..end]);
        }

        // Dense bytes of the sparse tensors expanded so far.
        let mut expanded = 0u64;
        let mut out = BTreeMap::new();
        for (name, v) in &header {
            if name == META_KEY || index_owner(name).is_some() {
                continue;
            }
            let (e, begin, end) = entry(name, v)?;
            let st = from_st_dtype(&e.dtype)
                .ok_or_else(|| format!("tensor '{name}' has unsupported dtype '{}'", e.dtype))?;
            // `widen`: an f32 tensor stored as its exact f16 values.
            let (dtype, widen) = match real_dtypes.remove(name) {
                Some(DType::F32) if st == DType::F16 => (DType::F16, true),
                Some(DType::F32) => {
                    return Err(format!(
                        "tensor '{name}' is marked f32 but stored as {}, not F16",
                        e.dtype
                    ))
                }
                Some(d) if st == DType::U8 => (d, false),
                Some(d) => {
                    return Err(format!(
                        "tensor '{name}' is marked {d} but stored as {}, not U8",
                        e.dtype
                    ))
                }
                None => (st, false),
            };
            // Elements of `dtype` from their bytes, widened when narrowed.
            let elements = |b: &[u8]| -> std::result::Result<TensorData, String> {
                Ok(
                    match data_from_bytes(dtype, b).map_err(|m| format!("tensor '{name}': {m}"))? {
                        TensorData::F16(h) if widen => {
                            TensorData::F32(h.iter().map(|x| x.to_f32()).collect())
                        }
                        td => td,
                    },
                )
            };
            let bytes = &data[begin..end];
            let sparse = sparse_forms.remove(name);
            let (shape, td) = match (packed_bits(dtype, layout), real_shapes.remove(name), sparse)
            {
                (Some(_), _, Some(_)) => {
                    return Err(format!(
                        "tensor '{name}' is {dtype}, a packed 4- or 2-bit type, which is never stored sparse"
                    ))
                }
                (Some(bits), Some(shape), None) => {
                    let numel = checked_numel(&shape)
                        .ok_or_else(|| format!("tensor '{name}' shape {shape:?} is too large"))?;
                    let per_byte = 8 / bits;
                    let nbytes = numel.div_ceil(per_byte);
                    if e.shape != [nbytes] {
                        return Err(format!(
                            "tensor '{name}' is {dtype}{shape:?}, {nbytes} bytes packed, but is stored as {}{:?}",
                            e.dtype, e.shape
                        ));
                    }
                    if bytes.len() != nbytes {
                        return Err(format!(
                            "tensor '{name}' is {dtype}{shape:?} ({nbytes} bytes packed) but holds {} bytes",
                            bytes.len()
                        ));
                    }
                    let used = numel % per_byte;
                    if let (true, Some(&last)) = (used != 0, bytes.last()) {
                        if last >> (used * bits) != 0 {
                            return Err(format!(
                                "tensor '{name}': the unused high bits of its last byte ({last:#04x}) are not zero"
                            ));
                        }
                    }
                    let codes = lowp::unpack(bits, bytes, numel);
                    let td = data_from_codes(dtype, codes)
                        .map_err(|m| format!("tensor '{name}': {m}"))?;
                    (shape, td)
                }
                (Some(_), None, None) => {
                    return Err(format!(
                        "tensor '{name}' is {dtype}, packed, but {META_KEY} has no '{SHAPE_PREFIX}{name}' giving its shape"
                    ))
                }
                (None, Some(shape), Some(form)) => {
                    let index = indexes.remove(name).ok_or_else(|| {
                        format!(
                            "tensor '{name}' is sparse ({}) but has no '{name}{}' entry",
                            form.name(),
                            form.suffix()
                        )
                    })?;
                    let size = dtype.size();
                    let nnz = match e.shape[..] {
                        [n] if n.checked_mul(size) == Some(bytes.len()) => n,
                        _ => {
                            return Err(format!(
                                "tensor '{name}' is sparse, so its entry holds {dtype} values as [count], but it is {}{:?} in {} bytes",
                                e.dtype,
                                e.shape,
                                bytes.len()
                            ))
                        }
                    };
                    if let Some(i) = bytes.chunks_exact(size).position(is_zero) {
                        return Err(format!(
                            "tensor '{name}': value {i} of the sparse tensor is zero (only nonzero values are stored)"
                        ));
                    }
                    let numel = checked_numel(&shape)
                        .ok_or_else(|| format!("tensor '{name}' shape {shape:?} is too large"))?;
                    let at = positions(form, index, numel, nnz)
                        .map_err(|m| format!("sparse tensor '{name}' {dtype}{shape:?}: {m}"))?;
                    // The dense tensor, and every sparse one before it,
                    // within the budget before allocating it.
                    let dense = numel.checked_mul(size);
                    let total = dense
                        .and_then(|d| u64::try_from(d).ok())
                        .map(|d| {
                            expanded.saturating_add(if widen { d.saturating_mul(2) } else { d })
                        });
                    expanded = crate::limits::check(
                        || format!("sparse tensor '{name}' {dtype}{shape:?} expanded"),
                        total,
                    )
                    .map_err(|e| e.to_string())?;
                    let mut dense = vec![0u8; numel * size];
                    for (k, &i) in at.iter().enumerate() {
                        dense[i * size..(i + 1) * size]
                            .copy_from_slice(&bytes[k * size..(k + 1) * size]);
                    }
                    (shape, elements(&dense)?)
                }
                (None, None, Some(_)) => {
                    return Err(format!(
                        "tensor '{name}' is sparse, but {META_KEY} has no '{SHAPE_PREFIX}{name}' giving its shape"
                    ))
                }
                (None, Some(_), None) => {
                    return Err(format!(
                        "{META_KEY} gives a shape for tensor '{name}', which is {dtype}, not a packed 4- or 2-bit type nor sparse"
                    ))
                }
                (None, None, None) => {
                    let numel = checked_numel(&e.shape).ok_or_else(|| {
                        format!("tensor '{name}' shape {:?} is too large", e.shape)
                    })?;
                    let want = numel.checked_mul(dtype.size());
                    if want != Some(bytes.len()) {
                        return Err(format!(
                            "tensor '{name}' is {dtype}{:?} but holds {} bytes",
                            e.shape,
                            bytes.len()
                        ));
                    }
                    (e.shape, elements(bytes)?)
                }
            };
            let t = Tensor::new(shape, td).map_err(|m| format!("tensor '{name}': {m}"))?;
            spans.push((begin, end, name.clone()));
            out.insert(name.clone(), t);
        }
        if let Some(name) = real_dtypes.keys().next() {
            return Err(format!(
                "{META_KEY} names a dtype for tensor '{name}', which does not exist"
            ));
        }
        if let Some(name) = real_shapes.keys().next() {
            return Err(format!(
                "{META_KEY} gives a shape for tensor '{name}', which does not exist"
            ));
        }
        if let Some(name) = sparse_forms.keys().next() {
            return Err(format!(
                "{META_KEY} marks tensor '{name}' sparse, which does not exist"
            ));
        }
        spans.sort();
        let mut at = 0;
        for (begin, end, name) in &spans {
            if *begin != at {
                return Err(format!(
                    "tensor '{name}' starts at byte {begin}, expected {at} (gap or overlap)"
                ));
            }
            at = *end;
        }
        if at != data.len() {
            return Err(format!(
                "{} data bytes after the last tensor",
                data.len() - at
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, d: TensorData) -> Tensor {
        Tensor::new(shape, d).unwrap()
    }

    fn every_dtype() -> Vec<(String, Tensor)> {
        DType::ALL
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let v: Vec<f64> = (0..6).map(|k| k as f64 * 0.5 - 1.0).collect();
                (i.to_string(), t(vec![2, 3], TensorData::from_f64(d, &v)))
            })
            .collect()
    }

    #[test]
    fn safetensors_round_trips_every_dtype() {
        let ts = every_dtype();
        let refs: Vec<(String, &Tensor)> = ts.iter().map(|(n, t)| (n.clone(), t)).collect();
        let blob = safetensors::encode(&refs);
        // Header length is a multiple of 8 and the data follows it.
        let hlen = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
        assert_eq!(hlen % 8, 0);
        let back = safetensors::decode(&blob).unwrap();
        assert_eq!(back.len(), ts.len());
        for (n, t) in &ts {
            assert!(back[n] == *t, "{n}: {:?} vs {t:?}", back[n]);
            assert_eq!(back[n].dtype(), t.dtype());
        }
        // Scalars and empty tensors too.
        let s = Tensor::scalar_f32(-0.0);
        let e = t(vec![0, 4], TensorData::I64(vec![]));
        let blob = safetensors::encode(&[("a".into(), &s), ("b".into(), &e)]);
        let back = safetensors::decode(&blob).unwrap();
        assert_eq!(
            back["a"].as_f32().unwrap()[0].to_bits(),
            (-0.0f32).to_bits()
        );
        assert_eq!(back["b"].shape(), [0, 4]);
    }

    #[test]
    fn safetensors_header_is_the_documented_format() {
        let a = t(vec![2], TensorData::F32(vec![1.0, 0.1]));
        let b = t(vec![3], TensorData::I4(vec![-8, 7, 0]));
        let c = t(vec![2], TensorData::F32(vec![1.0, -0.25]));
        let blob = safetensors::encode(&[("3".into(), &a), ("10".into(), &b), ("11".into(), &c)]);
        let hlen = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&blob[8..8 + hlen]).unwrap().trim_end();
        assert_eq!(
            header,
            r#"{"__metadata__":{"mlc.dtype.10":"i4","mlc.shape.10":"[3]","mlc.dtype.11":"f32"},"3":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"10":{"dtype":"U8","shape":[2],"data_offsets":[8,10]},"11":{"dtype":"F16","shape":[2],"data_offsets":[10,14]}}"#
        );
        let data = &blob[8 + hlen..];
        assert_eq!(&data[..4], &1.0f32.to_le_bytes());
        // -8 = 0x8 in the low nibble, 7 in the high one; then 0 and padding.
        assert_eq!(&data[8..10], &[0x78, 0x00]);
        // An f32 tensor of exact f16 values is stored as those f16 values.
        assert_eq!(&data[10..], &[0x00, 0x3c, 0x00, 0xb4]);
        let back = safetensors::decode(&blob).unwrap();
        assert_eq!(back["11"].as_f32().unwrap(), [1.0, -0.25]);
        assert_eq!(back["3"].as_f32().unwrap(), [1.0, 0.1]);
        // Format version 1 stored one byte per element with the real shape.
        let old = safetensors::encode_with(&[("10".into(), &b)], safetensors::Layout::Bytewise);
        let hlen = u64::from_le_bytes(old[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&old[8..8 + hlen]).unwrap().trim_end();
        assert_eq!(
            header,
            r#"{"__metadata__":{"mlc.dtype.10":"i4"},"10":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#
        );
        assert_eq!(&old[8 + hlen..], &[0xf8, 7, 0]);
    }

    /// Tensors of every 4- and 2-bit type with element counts that leave the
    /// last byte partly used, and every code value.
    fn sub_byte_tensors() -> Vec<(DType, Tensor)> {
        let mut out = Vec::new();
        for d in [DType::F4E2M1, DType::I4, DType::U4, DType::I2, DType::U2] {
            let levels = 1usize << d.bits();
            for n in [1usize, 3, 33] {
                let codes: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) % levels) as u8).collect();
                let data = match d {
                    DType::F4E2M1 => TensorData::F4E2M1(codes),
                    DType::U4 => TensorData::U4(codes),
                    DType::U2 => TensorData::U2(codes),
                    _ => TensorData::from_f64(
                        d,
                        &codes
                            .iter()
                            .map(|&c| lowp::sign_extend(c, d.bits()) as f64)
                            .collect::<Vec<_>>(),
                    ),
                };
                let shape = if n == 33 { vec![3, 11] } else { vec![n] };
                out.push((d, t(shape, data)));
            }
        }
        out.push((DType::I4, t(vec![], TensorData::I4(vec![-8]))));
        out.push((DType::U2, t(vec![2, 0], TensorData::U2(vec![]))));
        out
    }

    #[test]
    fn sub_byte_types_round_trip_packed() {
        for (d, x) in sub_byte_tensors() {
            let numel = x.numel();
            let blob = safetensors::encode(&[("w".into(), &x)]);
            let hlen = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
            let data = &blob[8 + hlen..];
            // Two (4-bit) or four (2-bit) elements a byte.
            let per_byte = 8 / d.bits();
            assert_eq!(data.len(), numel.div_ceil(per_byte), "{d}{:?}", x.shape());
            let header = std::str::from_utf8(&blob[8..8 + hlen]).unwrap();
            assert!(
                header.contains(&format!("\"shape\":[{}]", data.len())),
                "{header}"
            );
            // ONNX order: element i in bits (i % per_byte) * bits of byte i / per_byte.
            let mem = safetensors::tensor_bytes(&x);
            let mask = (1u8 << d.bits()) - 1;
            for (i, &m) in mem.iter().enumerate() {
                let code = (data[i / per_byte] >> ((i % per_byte) * d.bits())) & mask;
                assert_eq!(code, m & mask, "{d} element {i}");
            }
            let back = safetensors::decode(&blob).unwrap();
            assert!(back["w"] == x, "{d}: {:?} vs {x:?}", back["w"]);
            assert_eq!(back["w"].dtype(), d);
            assert_eq!(back["w"].shape(), x.shape());
            // The old layout still reads, into the same tensor.
            let old = safetensors::encode_with(&[("w".into(), &x)], safetensors::Layout::Bytewise);
            let back = safetensors::decode_with(&old, safetensors::Layout::Bytewise).unwrap();
            assert!(back["w"] == x, "{d} (version 1)");
        }
        // float8 is unaffected: one byte per element, no shape entry.
        let f8 = t(vec![3], TensorData::F8E4M3FN(vec![1, 2, 3]));
        let blob = safetensors::encode(&[("f".into(), &f8)]);
        assert!(!std::str::from_utf8(&blob)
            .unwrap_or("")
            .contains("mlc.shape"));
        assert!(safetensors::decode(&blob).unwrap()["f"] == f8);
    }

    #[test]
    fn packed_sub_byte_tensors_refuse_hostile_variants() {
        let i4 = |extra: &str, stored: &str| {
            format!(
                r#"{{"__metadata__":{{"mlc.dtype.a":"i4"{extra}}},"a":{{"dtype":"U8","shape":{stored},"data_offsets":[0,2]}}}}"#
            )
        };
        let cases: Vec<(String, &[u8], &str)> = vec![
            // Padding nibble of the last byte set (3 elements in 2 bytes).
            (i4(r#","mlc.shape.a":"[3]""#, "[2]"), &[0x21, 0x10], "not zero"),
            // Shape that does not match the byte count.
            (i4(r#","mlc.shape.a":"[5]""#, "[2]"), &[0; 2], "3 bytes packed"),
            (i4(r#","mlc.shape.a":"[2]""#, "[2]"), &[0; 2], "1 bytes packed"),
            // Stored shape other than [bytes].
            (i4(r#","mlc.shape.a":"[4]""#, "[1,2]"), &[0; 2], "stored as U8[1, 2]"),
            (i4(r#","mlc.shape.a":"[4]""#, "[3]"), &[0; 2], "stored as U8[3]"),
            // Shape missing, malformed, too large or for the wrong tensor.
            (i4("", "[2]"), &[0; 2], "no 'mlc.shape.a'"),
            (i4(r#","mlc.shape.a":"[-4]""#, "[2]"), &[0; 2], "bad shape"),
            (i4(r#","mlc.shape.a":"4""#, "[2]"), &[0; 2], "bad shape"),
            (i4(r#","mlc.shape.a":[4]"#, "[2]"), &[0; 2], "not a string"),
            (
                i4(
                    r#","mlc.shape.a":"[4294967296,4294967296,4294967296]""#,
                    "[2]",
                ),
                &[0; 2],
                "too large",
            ),
            (
                i4(r#","mlc.shape.a":"[4]","mlc.shape.b":"[1]""#, "[2]"),
                &[0; 2],
                "'b', which does not exist",
            ),
            (i4(r#","mlc.shape.a":"[4]","mlc.bits.a":"4""#, "[2]"), &[0; 2], "unknown"),
            // A shape on a type that is not packed.
            (
                r#"{"__metadata__":{"mlc.dtype.a":"f8e4m3fn","mlc.shape.a":"[2]"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#.into(),
                &[0; 2],
                "not a packed",
            ),
            (
                r#"{"__metadata__":{"mlc.shape.a":"[2]"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#.into(),
                &[0; 2],
                "not a packed",
            ),
        ];
        for (header, data, want) in &cases {
            let err = safetensors::decode(&st_blob(header, data)).unwrap_err();
            assert!(err.contains(want), "{header}: {err}");
        }
        // 2-bit padding: 3 elements use 6 bits of the byte.
        let u2 = r#"{"__metadata__":{"mlc.dtype.a":"u2","mlc.shape.a":"[3]"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(safetensors::decode(&st_blob(u2, &[0x3f])).is_ok());
        let err = safetensors::decode(&st_blob(u2, &[0x40])).unwrap_err();
        assert!(err.contains("not zero"), "{err}");
        // Version 1 has no shape entries, and a value out of range there is
        // still refused.
        let v1 = r#"{"__metadata__":{"mlc.dtype.a":"u2","mlc.shape.a":"[1]"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let err = safetensors::decode_with(&st_blob(v1, &[0]), safetensors::Layout::Bytewise)
            .unwrap_err();
        assert!(err.contains("version 1"), "{err}");
        let v1 = r#"{"__metadata__":{"mlc.dtype.a":"u2"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let err = safetensors::decode_with(&st_blob(v1, &[4]), safetensors::Layout::Bytewise)
            .unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }

    fn st_blob(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn safetensors_rejects_hostile_blobs() {
        let cases: &[(&str, &[u8], &str)] = &[
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                &[0; 4],
                "holds 4 bytes",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#,
                &[0; 4],
                "outside",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
                &[0; 4],
                "outside",
            ),
            (
                r#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#,
                &[0; 8],
                "unsupported dtype",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,1]}}"#,
                &[0],
                "too large",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                &[0, 0],
                "after the last",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                &[0],
                "gap or overlap",
            ),
            (
                r#"{"a":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}"#,
                &[2],
                "out of range",
            ),
            (
                r#"{"__metadata__":{"mlc.dtype.a":"i4"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                &[8],
                "no 'mlc.shape.a'",
            ),
            (
                r#"{"__metadata__":{"mlc.dtype.a":"i4"},"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
                &[1],
                "not U8",
            ),
            (
                r#"{"__metadata__":{"mlc.dtype.a":"f32"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                &[1],
                "marked f32 but stored as U8, not F16",
            ),
            (
                r#"{"__metadata__":{"mlc.dtype.a":"i64"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                &[1],
                "unknown dtype",
            ),
            (
                r#"{"__metadata__":{"mlc.dtype.a":"f32"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,2]}}"#,
                &[0, 0],
                "is f16[2] but holds 2 bytes",
            ),
            (
                r#"{"__metadata__":{"mlc.dtype.b":"i4"}}"#,
                &[],
                "does not exist",
            ),
            (r#"{"__metadata__":[1]}"#, &[], "not an object"),
            (r#"{"a":{"dtype":"U8","shape":[1]}}"#, &[0], "data_offsets"),
            (
                r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                &[0],
                "tensor 'a'",
            ),
            (r#"[1,2]"#, &[], "bad JSON"),
            ("{\"a\":", &[], "bad JSON"),
        ];
        for (header, data, want) in cases {
            let err = safetensors::decode(&st_blob(header, data)).unwrap_err();
            assert!(err.contains(want), "{header}: {err}");
        }
        // A header length past the end, and a blob too short for it.
        let mut b = st_blob("{}", &[]);
        b[0] = 200;
        assert!(safetensors::decode(&b)
            .unwrap_err()
            .contains("past the end"));
        let mut b = st_blob("{}", &[]);
        b[7] = 0xff;
        assert!(safetensors::decode(&b)
            .unwrap_err()
            .contains("past the end"));
        assert!(safetensors::decode(&[1, 2])
            .unwrap_err()
            .contains("too short"));
        assert!(safetensors::decode(&st_blob("{}", &[])).unwrap().is_empty());
        let mut bad = st_blob("{}", &[]);
        bad[8] = 0xff;
        assert!(safetensors::decode(&bad).unwrap_err().contains("UTF-8"));
    }

    /// Bit-level identity of two tensors (NaN payloads and -0 included).
    fn same_bits(a: &Tensor, b: &Tensor) -> bool {
        a.dtype() == b.dtype()
            && a.shape() == b.shape()
            && safetensors::tensor_bytes(a) == safetensors::tensor_bytes(b)
    }

    /// A tensor of `dtype` and `shape` with about `sparsity` percent exact
    /// zeros, its nonzero elements cycling through awkward values (-0.0,
    /// NaN payloads, extremes); `narrow` keeps f32 values f16-exact.
    fn pruned(dtype: DType, shape: &[usize], sparsity: usize, narrow: bool) -> Tensor {
        let n: usize = shape.iter().product();
        let keep: Vec<bool> = (0..n).map(|i| (i * 37 + 11) % 100 >= sparsity).collect();
        fn fill<T: Copy>(keep: &[bool], zero: T, vals: &[T]) -> Vec<T> {
            let mut k = 0;
            keep.iter()
                .map(|&on| {
                    if !on {
                        return zero;
                    }
                    k += 1;
                    vals[(k - 1) % vals.len()]
                })
                .collect()
        }
        let b8 = |vals: &[u8]| fill(&keep, 0u8, vals);
        let data = match dtype {
            DType::F32 if narrow => TensorData::F32(fill(
                &keep,
                0.0,
                &[
                    -0.0,
                    1.5,
                    f32::from_bits(0x7fc0_0000),
                    -65504.0,
                    2f32.powi(-24),
                ],
            )),
            DType::F32 => TensorData::F32(fill(
                &keep,
                0.0,
                &[-0.0, 0.1, f32::from_bits(0x7fc0_1234), f32::INFINITY, -3.0],
            )),
            DType::F64 => TensorData::F64(fill(
                &keep,
                0.0,
                &[-0.0, f64::from_bits(0x7ff8_0000_dead_beef), 1e300, -2.5],
            )),
            DType::F16 => TensorData::F16(fill(
                &keep,
                f16::ZERO,
                &[0x8000, 0x7e01, 0x3c00, 0xfbff].map(f16::from_bits),
            )),
            DType::BF16 => TensorData::BF16(fill(
                &keep,
                bf16::ZERO,
                &[0x8000, 0x7fc1, 0x3f80].map(bf16::from_bits),
            )),
            DType::I8 => TensorData::I8(fill(&keep, 0, &[-128, 127, 1, -1])),
            DType::I16 => TensorData::I16(fill(&keep, 0, &[i16::MIN, 300, -1])),
            DType::I32 => TensorData::I32(fill(&keep, 0, &[i32::MIN, 1 << 20, -1])),
            DType::I64 => TensorData::I64(fill(&keep, 0, &[i64::MIN, 1 << 40, -1])),
            DType::U8 => TensorData::U8(b8(&[255, 1, 128])),
            DType::U16 => TensorData::U16(fill(&keep, 0, &[u16::MAX, 256])),
            DType::U32 => TensorData::U32(fill(&keep, 0, &[u32::MAX, 1 << 16])),
            DType::U64 => TensorData::U64(fill(&keep, 0, &[u64::MAX, 1 << 32])),
            DType::Bool => TensorData::Bool(keep.clone()),
            DType::F8E4M3FN => TensorData::F8E4M3FN(b8(&[0x80, 0x7f, 0x38])),
            DType::F8E5M2 => TensorData::F8E5M2(b8(&[0x80, 0x7f, 0x3c])),
            d => panic!("{d} is not stored whole bytes"),
        };
        t(shape.to_vec(), data)
    }

    /// The dtypes stored whole bytes per element (the ones that go sparse).
    const SPARSE_DTYPES: [DType; 15] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::F8E4M3FN,
        DType::F8E5M2,
    ];

    /// The data bytes of a blob.
    fn data_of(blob: &[u8]) -> &[u8] {
        let hlen = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
        &blob[8 + hlen..]
    }

    fn header_of(blob: &[u8]) -> &str {
        let hlen = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
        std::str::from_utf8(&blob[8..8 + hlen]).unwrap()
    }

    #[test]
    fn sparse_tensors_round_trip_bit_for_bit() {
        let shapes: [&[usize]; 6] = [&[], &[1], &[7], &[9], &[3, 5, 7], &[64, 33]];
        let mut sparse_written = 0;
        for d in SPARSE_DTYPES {
            for narrow in [false, true] {
                if narrow && d != DType::F32 {
                    continue;
                }
                for shape in shapes {
                    for sparsity in [0, 50, 90, 99, 100] {
                        let x = pruned(d, shape, sparsity, narrow);
                        let what = format!("{d}{shape:?} {sparsity}% narrow={narrow}");
                        let refs = [("w".to_string(), &x)];
                        // As the writer chooses, and forced into each form.
                        let blobs = [
                            safetensors::encode(&refs),
                            safetensors::encode_forced(&refs, safetensors::SparseForm::Bitmask),
                            safetensors::encode_forced(&refs, safetensors::SparseForm::Gaps),
                        ];
                        for (k, blob) in blobs.iter().enumerate() {
                            let back = safetensors::decode(blob)
                                .unwrap_or_else(|e| panic!("{what} ({k}): {e}"));
                            assert_eq!(back.len(), 1, "{what} ({k})");
                            assert!(same_bits(&back["w"], &x), "{what} ({k}): {:?}", back["w"]);
                            // A blob any safetensors reader opens: the
                            // entries cover the data (checked by decode),
                            // the header 8-byte aligned.
                            assert_eq!(header_of(blob).len() % 8, 0);
                        }
                        let auto = &blobs[0];
                        assert_eq!(data_of(auto).len(), safetensors::stored_len(&x), "{what}");
                        let sparse = header_of(auto).contains("mlc.sparse.w");
                        sparse_written += sparse as usize;
                        if sparsity == 0 || x.numel() < 64 {
                            assert!(!sparse, "{what}");
                        }
                        // Never larger than dense (plus the header cost).
                        let dense = safetensors::encode_with(&refs, safetensors::Layout::Packed);
                        assert!(data_of(auto).len() <= data_of(&dense).len(), "{what}");
                        if !sparse {
                            assert!(auto == &dense, "{what}");
                        }
                    }
                }
            }
        }
        assert!(sparse_written > 40, "{sparse_written}");
    }

    #[test]
    fn sparse_writer_picks_the_smaller_form() {
        let form = |blob: &[u8]| {
            let h = header_of(blob);
            ["bitmask", "gaps"]
                .into_iter()
                .find(|f| h.contains(&format!("\"mlc.sparse.w\":\"{f}\"")))
        };
        for d in [DType::F32, DType::I8, DType::F16] {
            for sparsity in [50, 80, 87, 88, 90, 95, 99, 100] {
                let x = pruned(d, &[64, 48], sparsity, false);
                let refs = [("w".to_string(), &x)];
                let auto = safetensors::encode(&refs);
                let len = |f| data_of(&safetensors::encode_forced(&refs, f)).len();
                let (mask, gaps) = (
                    len(safetensors::SparseForm::Bitmask),
                    len(safetensors::SparseForm::Gaps),
                );
                let dense = x.numel() * d.size();
                let best = mask.min(gaps);
                let what = format!("{d} {sparsity}%: mask {mask}, gaps {gaps}, dense {dense}");
                if best + safetensors::SPARSE_HEADER_COST < dense {
                    let want = if gaps < mask { "gaps" } else { "bitmask" };
                    assert_eq!(form(&auto), Some(want), "{what}");
                    assert_eq!(data_of(&auto).len(), best, "{what}");
                } else {
                    assert_eq!(form(&auto), None, "{what}");
                }
                // Deterministic.
                assert!(safetensors::encode(&refs) == auto);
            }
        }
        // Half zeros: the mask (1/8 byte an element) beats one gap byte a
        // value; 95% zeros the other way round.
        let half = pruned(DType::F32, &[64, 48], 50, false);
        assert_eq!(
            form(&safetensors::encode(&[("w".into(), &half)])),
            Some("bitmask")
        );
        let most = pruned(DType::F32, &[64, 48], 95, false);
        assert_eq!(
            form(&safetensors::encode(&[("w".into(), &most)])),
            Some("gaps")
        );
    }

    /// The sizes the docs quote: a 90%-sparse [512, 512] layer, f32 and
    /// int8, dense and sparse.
    #[test]
    fn sparse_sizes_of_a_pruned_layer() {
        for (d, dense) in [(DType::F32, 1 << 20), (DType::I8, 1 << 18)] {
            let x = pruned(d, &[512, 512], 90, false);
            let refs = [("w".to_string(), &x)];
            let len = |f| data_of(&safetensors::encode_forced(&refs, f)).len();
            let (mask, gaps) = (
                len(safetensors::SparseForm::Bitmask),
                len(safetensors::SparseForm::Gaps),
            );
            let auto = safetensors::stored_len(&x);
            println!(
                "{d}[512,512] 90% zeros: dense {dense}, bitmask {mask}, gaps {gaps}, stored {auto}"
            );
            assert_eq!(auto, mask.min(gaps));
            assert!(auto * 10 < dense * 4, "{auto} vs {dense}");
        }
    }

    #[test]
    fn sparse_layout_is_the_documented_format() {
        // 20 elements, 4 nonzero (at 0, 3, 9 and 19): -0.0 is a value.
        let mut v = vec![0f32; 200];
        for (i, x) in [(0, 1.0), (3, -0.0), (9, 0.1), (199, 2.0)] {
            v[i] = x;
        }
        let x = t(vec![10, 20], TensorData::F32(v));
        let refs = [("7".to_string(), &x)];
        let blob = safetensors::encode(&refs);
        assert_eq!(
            header_of(&blob).trim_end(),
            r#"{"__metadata__":{"mlc.shape.7":"[10,20]","mlc.sparse.7":"gaps"},"7":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"7.gaps":{"dtype":"U8","shape":[6],"data_offsets":[16,22]}}"#
        );
        let data = data_of(&blob);
        assert_eq!(&data[4..8], &(-0.0f32).to_le_bytes());
        // Gaps 0, 2, 5, 189 (two varint bytes: 189 = 0x3d | 0x80, 1), 0.
        assert_eq!(&data[16..], &[0, 2, 5, 0xbd, 0x01, 0]);
        let mask = safetensors::encode_forced(&refs, safetensors::SparseForm::Bitmask);
        assert!(header_of(&mask).contains(r#""7.mask":{"dtype":"U8","shape":[25]"#));
        let m = &data_of(&mask)[16..];
        assert_eq!(m.len(), 25);
        assert_eq!((m[0], m[1], m[24]), (0b0000_1001, 0b0000_0010, 0b1000_0000));
        // An f16-exact f32 tensor keeps its values as F16.
        let mut h = vec![0f32; 300];
        h[5] = 0.5;
        let hx = t(vec![300], TensorData::F32(h));
        let blob = safetensors::encode(&[("1".into(), &hx)]);
        assert!(
            header_of(&blob).starts_with(r#"{"__metadata__":{"mlc.dtype.1":"f32","mlc.shape.1":"[300]","mlc.sparse.1":"gaps"},"1":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}"#),
            "{}",
            header_of(&blob)
        );
        assert_eq!(&data_of(&blob)[..2], &[0x00, 0x38]);
        assert!(same_bits(&safetensors::decode(&blob).unwrap()["1"], &hx));
        // Sub-byte types stay packed, however many zeros.
        let i4 = t(vec![400], TensorData::I4(vec![0; 400]));
        let blob = safetensors::encode(&[("2".into(), &i4)]);
        assert!(!header_of(&blob).contains("sparse"));
        assert_eq!(data_of(&blob).len(), 200);
        // Varints: shortest form, low groups first.
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            safetensors::put_varint(&mut b, v);
            assert_eq!(b.len(), safetensors::varint_len(v), "{v}");
            let mut at = 0;
            assert_eq!(safetensors::get_varint(&b, &mut at), Ok(v));
            assert_eq!(at, b.len());
        }
    }

    #[test]
    fn sparse_tensors_refuse_hostile_variants() {
        // Values first, then the index; `shape` is the real shape.
        let sp = |form: &str, shape: &str, vals: &str, nv: usize, ilen: usize| {
            let suffix = if form == "gaps" { "gaps" } else { "mask" };
            format!(
                r#"{{"__metadata__":{{"mlc.shape.a":"{shape}","mlc.sparse.a":"{form}"}},"a":{{"dtype":"U8","shape":{vals},"data_offsets":[0,{nv}]}},"a.{suffix}":{{"dtype":"U8","shape":[{ilen}],"data_offsets":[{nv},{}]}}}}"#,
                nv + ilen
            )
        };
        // One gap of 2^42 zeros: a 4 TiB tensor in 7 bytes.
        let mut big = Vec::new();
        safetensors::put_varint(&mut big, 1 << 42);
        let cases: Vec<(String, Vec<u8>, &str)> = vec![
            // The mask shorter or longer than the shape needs.
            (sp("bitmask", "[9]", "[2]", 2, 1), vec![1, 2, 3], "mask is 1 bytes, but 9 elements take 2"),
            (sp("bitmask", "[3]", "[2]", 2, 2), vec![1, 2, 3, 0], "mask is 2 bytes, but 3 elements take 1"),
            // Padding bits of the mask set.
            (sp("bitmask", "[3]", "[3]", 3, 1), vec![1, 2, 3, 0x0b], "not zero"),
            // Popcount other than the number of values.
            (sp("bitmask", "[8]", "[2]", 2, 1), vec![1, 2, 0x07], "marks 3 nonzero elements but it holds 2"),
            (sp("bitmask", "[8]", "[2]", 2, 1), vec![1, 2, 0x01], "marks 1 nonzero"),
            // Gaps past the end, short of it, too few and too many.
            (sp("gaps", "[4]", "[1]", 1, 2), vec![1, 5, 0], "gap 0 (5) runs past its 4 elements"),
            (sp("gaps", "[4]", "[1]", 1, 2), vec![1, 0, 4], "gap 1 (4) runs past"),
            (sp("gaps", "[4]", "[1]", 1, 2), vec![1, 0, 1], "cover 2 of its 4"),
            (sp("gaps", "[4]", "[1]", 1, 1), vec![1, 0], "stop after 1 of 2"),
            (sp("gaps", "[4]", "[1]", 1, 0), vec![1], "stop after 0 of 2"),
            (sp("gaps", "[4]", "[1]", 1, 3), vec![1, 0, 3, 0], "1 bytes after the last gap"),
            (sp("gaps", "[2]", "[3]", 3, 4), vec![1, 2, 3, 0, 0, 0, 0], "runs past its 2"),
            // Varints cut short, overlong, past 64 bits, past usize.
            (sp("gaps", "[4]", "[1]", 1, 2), vec![1, 0, 0x80], "ends inside a varint"),
            (sp("gaps", "[4]", "[1]", 1, 3), vec![1, 0x80, 0x00, 3], "shortest form"),
            (
                sp("gaps", "[4]", "[1]", 1, 11),
                [&[1u8][..], &[0xff; 9], &[0x02, 3]].concat(),
                "past 64 bits",
            ),
            (
                sp("gaps", "[4]", "[1]", 1, 11),
                [&[1u8][..], &[0xff; 9], &[0x01, 3]].concat(),
                "runs past its 4",
            ),
            // Shapes whose element count overflows, or that need more
            // memory than the budget to expand (no values, one gap).
            (
                sp("gaps", "[4294967296,4294967296,4294967296]", "[0]", 0, 1),
                vec![0],
                "too large",
            ),
            (
                sp("gaps", "[1099511627776,4]", "[0]", 0, big.len()),
                big.clone(),
                "sparse tensor 'a' u8[1099511627776, 4] expanded",
            ),
            // The values: a zero, more than one dimension, a byte count
            // that does not fit, a type other than the marked one, a value
            // its type cannot hold.
            (sp("gaps", "[4]", "[1]", 1, 2), vec![0, 0, 3], "value 0 of the sparse tensor is zero"),
            (sp("gaps", "[4]", "[1,1]", 1, 2), vec![1, 0, 3], "as [count]"),
            (sp("gaps", "[4]", "[2]", 1, 2), vec![1, 0, 3], "as [count]"),
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""mlc.shape.a""#, r#""mlc.dtype.a":"f32","mlc.shape.a""#),
                vec![1, 0, 3],
                "marked f32 but stored as U8, not F16",
            ),
            (
                sp("gaps", "[4]", "[2]", 2, 3).replace(r#""dtype":"U8","shape":[2]"#, r#""dtype":"BOOL","shape":[2]"#),
                vec![1, 2, 0, 0, 2],
                "out of range",
            ),
            // An index that is not U8[bytes].
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""dtype":"U8","shape":[2]"#, r#""dtype":"I8","shape":[2]"#),
                vec![1, 0, 3],
                "a sparse index is U8[bytes]",
            ),
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""shape":[2]"#, r#""shape":[3]"#),
                vec![1, 0, 3],
                "a sparse index is U8[bytes]",
            ),
            // Records and entries that do not match.
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""mlc.sparse.a":"gaps""#, r#""mlc.sparse.a":"bitmask""#),
                vec![1, 0, 3],
                "no 'mlc.sparse.a': \"gaps\" record",
            ),
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#","mlc.sparse.a":"gaps""#, ""),
                vec![1, 0, 3],
                "no 'mlc.sparse.a'",
            ),
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""mlc.sparse.a":"gaps""#, r#""mlc.sparse.a":"rle""#),
                vec![1, 0, 3],
                "unknown sparse form 'rle'",
            ),
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""mlc.shape.a":"[4]","#, ""),
                vec![1, 0, 3],
                "is sparse, but __metadata__ has no 'mlc.shape.a'",
            ),
            (
                r#"{"__metadata__":{"mlc.shape.a":"[4]","mlc.sparse.a":"gaps"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#.into(),
                vec![1],
                "has no 'a.gaps' entry",
            ),
            (
                r#"{"__metadata__":{"mlc.sparse.b":"gaps"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#.into(),
                vec![1],
                "marks tensor 'b' sparse, which does not exist",
            ),
            (
                r#"{"__metadata__":{"mlc.sparse.b":"gaps"},"b.gaps":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#.into(),
                vec![0],
                "marks tensor 'b' sparse, which does not exist",
            ),
            // A packed sub-byte tensor is never sparse.
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace(r#""mlc.shape.a""#, r#""mlc.dtype.a":"i4","mlc.shape.a""#),
                vec![1, 0, 3],
                "never stored sparse",
            ),
            // The index overlapping the values.
            (
                sp("gaps", "[4]", "[1]", 1, 2).replace("[1,3]", "[0,2]"),
                vec![1, 2],
                "gap or overlap",
            ),
        ];
        let mut refused = 0;
        for (header, data, want) in &cases {
            let err = safetensors::decode(&st_blob(header, data)).unwrap_err();
            assert!(err.contains(want), "{header}: {err}");
            refused += 1;
        }
        assert_eq!(refused, cases.len());
        // The control: the same blob well formed reads.
        let ok =
            safetensors::decode(&st_blob(&sp("gaps", "[4]", "[1]", 1, 2), &[9, 1, 2])).unwrap();
        assert!(ok["a"] == t(vec![4], TensorData::U8(vec![0, 9, 0, 0])));
        let ok =
            safetensors::decode(&st_blob(&sp("bitmask", "[3]", "[2]", 2, 1), &[9, 8, 5])).unwrap();
        assert!(ok["a"] == t(vec![3], TensorData::U8(vec![9, 0, 8])));
        // Format versions 2 to 4 have no sparse tensors.
        let err = safetensors::decode_with(
            &st_blob(&sp("gaps", "[4]", "[1]", 1, 2), &[9, 1, 2]),
            safetensors::Layout::Packed,
        )
        .unwrap_err();
        assert!(err.contains("need format version 5"), "{err}");
        // Sparse tensors together within the budget: each fits, the two
        // do not (this thread holds all but 1000 bytes of it).
        let two = |n: usize| {
            format!(
                r#"{{"__metadata__":{{"mlc.shape.a":"[{n}]","mlc.sparse.a":"gaps","mlc.shape.b":"[{n}]","mlc.sparse.b":"gaps"}},"a":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}},"a.gaps":{{"dtype":"U8","shape":[2],"data_offsets":[0,2]}},"b":{{"dtype":"U8","shape":[0],"data_offsets":[2,2]}},"b.gaps":{{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}}}"#
            )
        };
        let gap = |n: u64| {
            let mut b = Vec::new();
            safetensors::put_varint(&mut b, n);
            b
        };
        let _held = crate::limits::Reserved::new(crate::limits::max_memory() - 1000);
        let fits = [gap(400), gap(400)].concat();
        assert!(safetensors::decode(&st_blob(&two(400), &fits)).is_ok());
        let over = [gap(600), gap(600)].concat();
        let err = safetensors::decode(&st_blob(&two(600), &over)).unwrap_err();
        assert!(err.contains("sparse tensor 'b'"), "{err}");
    }

    #[test]
    fn container_round_trips_and_checks() {
        let bytes = container::encode(&[("graph", b"g"), ("weights", b"ww"), ("meta", b"{}")]);
        assert_eq!(&bytes[..4], b"MLCB");
        assert_eq!(&bytes[4..8], &FORMAT_VERSION.to_le_bytes());
        let s = container::decode(&bytes).unwrap();
        assert_eq!(
            (s.graph, s.weights, s.meta),
            (&b"g"[..], &b"ww"[..], &b"{}"[..])
        );

        let err = |b: &[u8]| container::decode(b).err().unwrap();
        assert!(err(b"ONNX....").contains("not an mlc bundle"));
        assert!(err(b"ML").contains("not an mlc bundle"));
        assert!(err(b"MLCB\x01").contains("header"));
        assert!(err(b"MLCB\x06\0\0\0").contains("version 6"));
        assert!(err(b"MLCB\0\0\0\0").contains("version 0"));
        let mut b = bytes.clone();
        b[12] ^= 1;
        assert!(err(&b).contains("checksum"));
        assert!(err(&bytes[..bytes.len() - 1]).contains("checksum"));
        // Structural problems behind a valid checksum.
        let seal = |body: &[u8]| {
            let mut v = body.to_vec();
            v.extend_from_slice(&Sha256::digest(body));
            v
        };
        let body = &bytes[..bytes.len() - CHECKSUM_LEN];
        assert!(err(&seal(&body[..body.len() - 1])).contains("past the end"));
        assert!(err(&seal(&body[..HEADER_LEN + 3])).contains("past the end"));
        let missing = container::encode(&[("graph", b"g"), ("meta", b"{}")]);
        assert!(err(&missing).contains("'weights' section is missing"));
        let twice = container::encode(&[("graph", b"g"), ("graph", b"g")]);
        assert!(err(&twice).contains("twice"));
        let unknown = container::encode(&[("extra", b"g")]);
        assert!(err(&unknown).contains("unknown section 'extra'"));
        let mut huge = body.to_vec();
        huge[HEADER_LEN + 6..HEADER_LEN + 14].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&seal(&huge)).contains("past the end"));
    }

    #[test]
    fn metadata_json_is_stable() {
        let mut rewrites = BTreeMap::new();
        rewrites.insert("b".to_string(), 2);
        rewrites.insert("a".to_string(), 1);
        let m = Metadata::new(
            SourceInfo::from_bytes("m.onnx", b"abc"),
            PipelineInfo {
                name: "O1".into(),
                summary: "fold".into(),
            },
            vec![PassLogEntry {
                pass: "fold".into(),
                iteration: Some(1),
                nodes_before: 3,
                nodes_after: 2,
                changed: true,
                rewrites,
            }],
            NodeCounts {
                before: 3,
                after: 2,
            },
        );
        assert_eq!(
            m.source.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = serde_json::to_string(&m).unwrap();
        let back: Metadata = serde_json::from_str(&a).unwrap();
        assert_eq!(back, m);
        assert_eq!(serde_json::to_string(&back).unwrap(), a);
        assert!(a.contains(r#""rewrites":{"a":1,"b":2}"#), "{a}");
        assert!(
            a.starts_with(r#"{"format_version":5,"mlc_version":""#),
            "{a}"
        );
    }
}

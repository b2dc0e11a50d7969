//! Model summaries for `mlc inspect`.
//!
//! The summary is built from the ONNX file itself (op histogram, weights,
//! declared inputs and outputs) so that a model mlc cannot import can still be
//! inspected; the import is attempted alongside, and every problem it finds is
//! listed. When the import succeeds, input and output shapes come from mlc's
//! own inference instead of the file's declarations.
//!
//! An `.mlc` bundle is summarized from the graph it holds (op histogram by
//! mlc op, constants by element type) plus the metadata it was written with.

use std::collections::BTreeMap;
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, TensorProto};
use serde::Serialize;

use crate::error::ImportProblem;
use crate::ir::{DType, Graph};
use crate::{Error, Result};

/// A model input or output.
#[derive(Debug, Clone, Serialize)]
pub struct IoInfo {
    pub name: String,
    pub dtype: String,
    /// Dims as text: numbers for known sizes, names for symbolic ones.
    pub shape: Vec<String>,
}

/// One problem that keeps mlc from importing the model.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub node: String,
    pub op_type: String,
    pub opset: i64,
    pub message: String,
}

impl From<&ImportProblem> for Problem {
    fn from(p: &ImportProblem) -> Problem {
        Problem {
            node: p.node.clone(),
            op_type: p.op_type.clone(),
            opset: p.opset,
            message: p.message.clone(),
        }
    }
}

/// Everything `mlc inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub path: String,
    /// `"onnx"` or `"mlc"` (a bundle).
    pub format: &'static str,
    /// ONNX `ir_version`; 0 for bundles.
    pub ir_version: i64,
    pub producer: String,
    /// Opset of the default ONNX domain.
    pub opset: i64,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    pub node_count: usize,
    /// Node count per op type, as in the file.
    pub op_histogram: BTreeMap<String, usize>,
    /// Elements in initializers and Constant nodes.
    pub parameters: u64,
    /// Weight bytes per element type.
    pub weight_bytes: BTreeMap<String, u64>,
    /// Whether mlc imports the model.
    pub supported: bool,
    /// Every problem found by the import (empty when supported).
    pub problems: Vec<Problem>,
    /// How a bundle was made (bundles only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<crate::formats::bundle::Metadata>,
    /// Constants with at least [`SPARSE_MIN_SHARE`] of their elements zero
    /// (pruned weights), largest first (bundles only).
    pub sparse_weights: Vec<SparseWeight>,
}

/// Share of zeros from which `mlc inspect` lists a constant as sparse.
pub const SPARSE_MIN_SHARE: f64 = 0.25;

/// Constants smaller than this are not listed as sparse (biases, masks).
const SPARSE_MIN_ELEMENTS: usize = 256;

/// A constant with many zeros.
#[derive(Debug, Clone, Serialize)]
pub struct SparseWeight {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Share of its elements that are zero.
    pub sparsity: f64,
    /// Bytes as the bundle stores it, and dense.
    pub stored_bytes: u64,
    pub dense_bytes: u64,
}

/// Summarizes an ONNX model file. Fails only when the file cannot be read or
/// parsed at all; import problems are part of the summary.
pub fn inspect_onnx(path: &Path) -> Result<Summary> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let base_dir = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    let imported = crate::formats::onnx::load_bytes(&bytes, base_dir);
    let problems = match &imported {
        Ok(_) => Vec::new(),
        Err(Error::Import { problems }) => problems.iter().map(Problem::from).collect(),
        Err(Error::Malformed { message, .. }) => {
            return Err(Error::Malformed {
                path: path.into(),
                message: message.clone(),
            })
        }
        Err(other) => vec![Problem {
            node: String::new(),
            op_type: "graph".into(),
            opset: 0,
            message: other.to_string(),
        }],
    };
    // The importer parsed these bytes already; a failure here is unexpected
    // but still reported as a malformed file rather than a panic.
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| Error::Malformed {
        path: path.into(),
        message: format!("not an ONNX model: {e}"),
    })?;
    let graph = model.graph.get_or_default();

    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);

    let mut op_histogram = BTreeMap::new();
    let mut tensors: Vec<&TensorProto> = graph.initializer.iter().collect();
    for n in &graph.node {
        let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        *op_histogram.entry(key).or_insert(0) += 1;
        if n.op_type == "Constant" {
            tensors.extend(n.attribute.iter().filter_map(|a| a.t.as_ref()));
        }
    }
    let mut parameters = 0u64;
    let mut weight_bytes = BTreeMap::new();
    for t in tensors {
        let numel = t.dims.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        let Some(numel) = numel else { continue };
        parameters = parameters.saturating_add(numel);
        let (name, bytes) = match DType::from_onnx_code(t.data_type) {
            // Sub-byte types (int4, ...) are counted packed, as stored.
            Some(d) => (
                d.name().to_string(),
                usize::try_from(numel)
                    .ok()
                    .and_then(|n| d.packed_bytes(n))
                    .map_or(u64::MAX, |b| b as u64),
            ),
            None => (DType::onnx_code_name(t.data_type).to_lowercase(), 0),
        };
        let total = weight_bytes.entry(name).or_insert(0u64);
        *total = total.saturating_add(bytes);
    }

    let (inputs, outputs) = match &imported {
        Ok(g) => (io_from_graph(g, &g.inputs), io_from_graph(g, &g.outputs)),
        Err(_) => {
            let init: std::collections::HashSet<&str> =
                graph.initializer.iter().map(|t| t.name.as_str()).collect();
            (
                graph
                    .input
                    .iter()
                    .filter(|v| !init.contains(v.name.as_str()))
                    .map(io_from_proto)
                    .collect(),
                graph.output.iter().map(io_from_proto).collect(),
            )
        }
    };

    Ok(Summary {
        path: path.display().to_string(),
        format: "onnx",
        ir_version: model.ir_version,
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        opset,
        inputs,
        outputs,
        node_count: graph.node.len(),
        op_histogram,
        parameters,
        weight_bytes,
        supported: imported.is_ok(),
        problems,
        bundle: None,
        sparse_weights: Vec::new(),
    })
}

/// Summarizes an `.mlc` bundle. Fails when the bundle cannot be read.
pub fn inspect_bundle(path: &Path) -> Result<Summary> {
    let (g, meta) = crate::formats::bundle::read(path)?;
    let mut op_histogram = BTreeMap::new();
    for (_, n) in g.nodes() {
        *op_histogram
            .entry(n.op.onnx_type().to_string())
            .or_insert(0) += 1;
    }
    let mut parameters = 0u64;
    let mut weight_bytes = BTreeMap::new();
    let mut sparse_weights = Vec::new();
    for (v, t) in &g.consts {
        if t.numel() >= SPARSE_MIN_ELEMENTS {
            let sparsity = t.zero_count() as f64 / t.numel() as f64;
            if sparsity >= SPARSE_MIN_SHARE {
                sparse_weights.push(SparseWeight {
                    name: g.value(*v).name.clone(),
                    dtype: t.dtype().name().to_string(),
                    shape: t.shape().to_vec(),
                    sparsity,
                    stored_bytes: crate::formats::bundle::safetensors::stored_len(t) as u64,
                    dense_bytes: t.size_bytes() as u64,
                });
            }
        }
        parameters = parameters.saturating_add(t.numel() as u64);
        let total = weight_bytes
            .entry(t.dtype().name().to_string())
            .or_insert(0u64);
        *total = total.saturating_add(t.size_bytes() as u64);
    }
    Ok(Summary {
        path: path.display().to_string(),
        format: "mlc",
        ir_version: 0,
        producer: format!("mlc {}", meta.mlc_version),
        opset: g.opset,
        inputs: io_from_graph(&g, &g.inputs),
        outputs: io_from_graph(&g, &g.outputs),
        node_count: g.node_count(),
        op_histogram,
        parameters,
        weight_bytes,
        supported: true,
        problems: Vec::new(),
        bundle: Some(meta),
        sparse_weights: {
            sparse_weights
                .sort_by(|a, b| b.dense_bytes.cmp(&a.dense_bytes).then(a.name.cmp(&b.name)));
            sparse_weights
        },
    })
}

fn io_from_graph(g: &Graph, ids: &[crate::ir::ValueId]) -> Vec<IoInfo> {
    ids.iter()
        .map(|&id| {
            let v = g.value(id);
            IoInfo {
                name: v.name.clone(),
                dtype: v.ty.dtype.to_string(),
                shape: v.ty.shape.dims().iter().map(|d| d.to_string()).collect(),
            }
        })
        .collect()
}

fn io_from_proto(v: &onnx_protobuf::ValueInfoProto) -> IoInfo {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
    use onnx_protobuf::type_proto::Value as TypeValue;
    let (dtype, shape) = match v.type_.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => {
            let dtype = DType::from_onnx_code(t.elem_type).map_or_else(
                || DType::onnx_code_name(t.elem_type).to_lowercase(),
                |d| d.name().to_string(),
            );
            let shape = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(n)) => n.to_string(),
                            Some(DimValue::DimParam(p)) => p.clone(),
                            _ => "?".to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (dtype, shape)
        }
        _ => ("not a tensor".to_string(), Vec::new()),
    };
    IoInfo {
        name: v.name.clone(),
        dtype,
        shape,
    }
}

/// Human-readable rendering of a summary.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "model     {}", s.path);
    if let Some(m) = &s.bundle {
        let _ = writeln!(
            out,
            "format    mlc bundle (format {}, opset {}), written by mlc {}",
            m.format_version, s.opset, m.mlc_version
        );
        let _ = writeln!(
            out,
            "source    {} (sha256 {})",
            m.source.file_name, m.source.sha256
        );
        let _ = writeln!(out, "pipeline  {}", m.pipeline.name);
        for line in m.pipeline.summary.lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "target    {}", m.target);
        let _ = writeln!(
            out,
            "compiled  {} nodes -> {} nodes, {} pass run(s)",
            m.nodes.before,
            m.nodes.after,
            m.pass_log.len()
        );
        for line in crate::transform::runner::render_log(&m.pass_log).lines() {
            let _ = writeln!(out, "  {}", line.trim_end());
        }
    } else {
        let _ = writeln!(
            out,
            "format    ONNX (ir_version {}, opset {}), producer {}",
            s.ir_version,
            s.opset,
            if s.producer.is_empty() {
                "unknown"
            } else {
                &s.producer
            }
        );
    }
    let io = |v: &IoInfo| format!("{}: {}[{}]", v.name, v.dtype, v.shape.join(","));
    let _ = writeln!(out, "inputs");
    for v in &s.inputs {
        let _ = writeln!(out, "  {}", io(v));
    }
    let _ = writeln!(out, "outputs");
    for v in &s.outputs {
        let _ = writeln!(out, "  {}", io(v));
    }
    let _ = writeln!(
        out,
        "parameters {} ({})",
        s.parameters,
        crate::limits::human_bytes(s.weight_bytes.values().sum())
    );
    for (d, b) in &s.weight_bytes {
        let _ = writeln!(out, "  {d:<6} {}", crate::limits::human_bytes(*b));
    }
    if !s.sparse_weights.is_empty() {
        let (zeros, total) = s.sparse_weights.iter().fold((0.0, 0.0), |(z, t), w| {
            let n = w.shape.iter().product::<usize>() as f64;
            (z + w.sparsity * n, t + n)
        });
        let _ = writeln!(
            out,
            "sparse    {} weight(s) with {:.0}% or more zeros, {:.1}% zeros together",
            s.sparse_weights.len(),
            100.0 * SPARSE_MIN_SHARE,
            100.0 * zeros / total.max(1.0)
        );
        for w in &s.sparse_weights {
            let _ = writeln!(
                out,
                "  {:<32} {}[{}] {:.1}% zeros, stored {} (dense {})",
                w.name,
                w.dtype,
                w.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                100.0 * w.sparsity,
                crate::limits::human_bytes(w.stored_bytes),
                crate::limits::human_bytes(w.dense_bytes)
            );
        }
    }
    let _ = writeln!(out, "nodes     {}", s.node_count);
    let mut hist: Vec<(&String, &usize)> = s.op_histogram.iter().collect();
    hist.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in hist {
        let _ = writeln!(out, "  {op:<24} {n}");
    }
    if s.supported {
        let _ = writeln!(out, "supported yes");
    } else {
        let _ = writeln!(out, "supported no: {} problem(s)", s.problems.len());
        for p in &s.problems {
            let _ = writeln!(
                out,
                "  {} '{}' (opset {}): {}",
                p.op_type, p.node, p.opset, p.message
            );
        }
    }
    out
}

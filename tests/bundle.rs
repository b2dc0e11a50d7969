//! The `.mlc` bundle end to end: every fixture survives import -> bundle ->
//! read with bit-identical outputs and identical IR text, writing is
//! deterministic, hostile bundles (truncated, flipped, structurally wrong
//! behind a valid checksum) are clear `Malformed` errors and never panics,
//! failed writes leave nothing behind, and the CLI runs and inspects bundles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mlc::formats::bundle::{self, safetensors, Metadata, NodeCounts, PipelineInfo, SourceInfo};
use mlc::ir::{text, DType, Graph, Shape, TensorData, TensorType};
use mlc::transform::runner::PassLogEntry;
use mlc::{Error, Tensor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh empty folder for one test.
fn scratch(case: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bundle-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn meta_for(source: &Path, nodes: usize) -> Metadata {
    let mut rewrites = BTreeMap::new();
    rewrites.insert("fold-const".to_string(), 2);
    Metadata::new(
        SourceInfo::from_file(source).unwrap(),
        PipelineInfo {
            name: "test".into(),
            summary: "no passes\nreally".into(),
        },
        vec![PassLogEntry {
            pass: "fold".into(),
            iteration: Some(1),
            nodes_before: nodes,
            nodes_after: nodes,
            changed: false,
            rewrites,
        }],
        NodeCounts {
            before: nodes,
            after: nodes,
        },
    )
}

/// Bit-level identity of two tensors (NaN payloads and -0 included).
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype()
        && a.shape() == b.shape()
        && safetensors::tensor_bytes(a) == safetensors::tensor_bytes(b)
}

#[derive(Deserialize)]
struct IoFile {
    name: String,
    file: String,
}

#[derive(Deserialize)]
struct IoSpec {
    model: String,
    inputs: Vec<IoFile>,
}

fn fixture_inputs(dir: &Path, g: &Graph) -> Vec<Tensor> {
    let spec: IoSpec =
        serde_json::from_str(&std::fs::read_to_string(dir.join("io.json")).unwrap()).unwrap();
    g.inputs
        .iter()
        .map(|&id| {
            let name = &g.value(id).name;
            let f = spec.inputs.iter().find(|i| &i.name == name).unwrap();
            mlc::formats::npy::read_npy(&dir.join(&f.file)).unwrap()
        })
        .collect()
}

#[test]
fn every_fixture_round_trips_bit_for_bit() {
    let out_dir = scratch("fixtures");
    let mut seen = 0;
    for name in ["mlp", "cnn", "transformer"] {
        let dir = repo().join("fixtures").join(name);
        let spec: IoSpec =
            serde_json::from_str(&std::fs::read_to_string(dir.join("io.json")).unwrap()).unwrap();
        let model = dir.join(&spec.model);
        let g = mlc::formats::load(&model).unwrap();
        let inputs = fixture_inputs(&dir, &g);
        let want = mlc::interp::run(&g, inputs.clone()).unwrap();

        let meta = meta_for(&model, g.node_count());
        let path = out_dir.join(format!("{name}.mlc"));
        bundle::ensure_not_input(&path, &model).unwrap();
        bundle::write(&path, &g, &meta).unwrap();
        let (back, back_meta) = bundle::read(&path).unwrap();
        assert_eq!(back_meta, meta, "{name}");
        assert_eq!(text::print(&back), text::print(&g), "{name}");
        assert_eq!(back.param_count(), g.param_count());
        let got = mlc::interp::run(&back, inputs.clone()).unwrap();
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!(same_bits(a, b), "{name}: {a:?} vs {b:?}");
        }
        // The generic loader recognizes the bundle, even under another name.
        let renamed = out_dir.join(format!("{name}.bin"));
        std::fs::copy(&path, &renamed).unwrap();
        let via_load = mlc::formats::load(&renamed).unwrap();
        assert_eq!(text::print(&via_load), text::print(&g));
        // Writing what was read gives the same bytes again.
        assert_eq!(
            bundle::to_bytes(&back, &back_meta).unwrap(),
            std::fs::read(&path).unwrap(),
            "{name}"
        );
        seen += 1;
    }
    assert_eq!(seen, 3);
    assert_eq!(
        listing(&out_dir),
        [
            "cnn.bin",
            "cnn.mlc",
            "mlp.bin",
            "mlp.mlc",
            "transformer.bin",
            "transformer.mlc"
        ]
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn output_is_byte_identical() {
    let model = repo().join("fixtures/transformer/model.onnx");
    let g = mlc::formats::load(&model).unwrap();
    let meta = meta_for(&model, g.node_count());
    let a = bundle::to_bytes(&g, &meta).unwrap();
    let b = bundle::to_bytes(&g, &meta).unwrap();
    assert!(a == b);
    // A second import of the same model too.
    let g2 = mlc::formats::load(&model).unwrap();
    assert!(bundle::to_bytes(&g2, &meta).unwrap() == a);
    let dir = scratch("twice");
    bundle::write(&dir.join("a.mlc"), &g, &meta).unwrap();
    bundle::write(&dir.join("b.mlc"), &g, &meta).unwrap();
    assert!(std::fs::read(dir.join("a.mlc")).unwrap() == std::fs::read(dir.join("b.mlc")).unwrap());
    assert!(std::fs::read(dir.join("a.mlc")).unwrap() == a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Constants of every element type, low-precision ones included, read back
/// with their exact values and types.
#[test]
fn every_dtype_round_trips() {
    let mut g = Graph::new("dtypes", 21);
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::known(&[2])));
    let mut outs = vec![x];
    for d in DType::ALL {
        let v: Vec<f64> = (0..6).map(|k| k as f64 * 0.75 - 2.0).collect();
        let t = Tensor::new(vec![3, 2], TensorData::from_f64(d, &v)).unwrap();
        outs.push(g.add_const(format!("c_{}", d.name()), Arc::new(t)));
        // Zero-element constants (an empty Resize roi, an empty initializer)
        // read back too.
        let empty = Tensor::new(vec![0, 2], TensorData::from_f64(d, &[])).unwrap();
        outs.push(g.add_const(format!("e_{}", d.name()), Arc::new(empty)));
    }
    g.outputs = outs;
    let meta = Metadata::new(
        SourceInfo::from_bytes("x.onnx", b""),
        PipelineInfo {
            name: "none".into(),
            summary: String::new(),
        },
        Vec::new(),
        NodeCounts {
            before: 0,
            after: 0,
        },
    );
    let bytes = bundle::to_bytes(&g, &meta).unwrap();
    let (back, _) = bundle::from_bytes(&bytes, Path::new("mem.mlc")).unwrap();
    assert_eq!(back.consts.len(), 2 * DType::ALL.len());
    for (&id, t) in &g.consts {
        let b = back.const_value(id).unwrap();
        assert!(same_bits(b, t), "{}: {b:?} vs {t:?}", t.dtype());
    }
    assert_eq!(text::print(&back), text::print(&g));
}

/// A small graph: input, a few constants of different types, three nodes.
const SMALL: &str = r#"graph "small" opset 17
  input  %0 x: f32[2,3]
  const  %1 w: f32[3,2] = [1, 2, 3, 4, 5, 6]
  const  %2 b: f32[2] = [0.5, -1]
  const  %3 shape: i64[1] = [4]
  %4 y: f32[2,2] = MatMul(%0, %1)
  %5 z: f32[2,2] = Add(%4, %2)
  %6 r: f32[4] = Reshape(%5, %3)
  output %6 r
"#;

fn small_bundle() -> Vec<u8> {
    let g = text::parse(SMALL).unwrap();
    let meta = Metadata::new(
        SourceInfo::from_bytes("small.onnx", SMALL.as_bytes()),
        PipelineInfo {
            name: "p".into(),
            summary: "s".into(),
        },
        Vec::new(),
        NodeCounts {
            before: 3,
            after: 3,
        },
    );
    bundle::to_bytes(&g, &meta).unwrap()
}

fn expect_malformed(bytes: &[u8], what: &str) -> String {
    let path = Path::new("hostile.mlc");
    match bundle::from_bytes(bytes, path) {
        Err(Error::Malformed { path: p, message }) => {
            assert_eq!(p, path, "{what}");
            message
        }
        Err(e) => panic!("{what}: expected Malformed, got {e:?}"),
        Ok(_) => panic!("{what}: a hostile bundle was accepted"),
    }
}

#[test]
fn truncated_and_flipped_bundles_are_malformed() {
    let bytes = small_bundle();
    assert!(bundle::from_bytes(&bytes, Path::new("ok.mlc")).is_ok());
    for len in 0..bytes.len() {
        expect_malformed(&bytes[..len], &format!("truncated to {len}"));
    }
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            expect_malformed(&b, &format!("byte {i} ^ {bit:#x}"));
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    expect_malformed(&longer, "trailing byte");
    assert!(expect_malformed(b"PK\x03\x04", "zip").contains("not an mlc bundle"));
    let mut next = bytes.clone();
    next[4] = bundle::FORMAT_VERSION as u8 + 1;
    let want = format!("version {} is not supported", bundle::FORMAT_VERSION + 1);
    assert!(expect_malformed(&next, "next version").contains(&want));
}

/// Builds a bundle from raw section payloads with a valid checksum, to reach
/// the checks behind it.
fn seal(sections: &[(&str, &[u8])]) -> Vec<u8> {
    seal_version(bundle::FORMAT_VERSION, sections)
}

/// Seals sections as a bundle of `version`; from version 3 the graph
/// section is deflated here, so tests write and read it as plain text.
fn seal_version(version: u32, sections: &[(&str, &[u8])]) -> Vec<u8> {
    let payloads: Vec<(&str, Vec<u8>)> = sections
        .iter()
        .map(|&(name, payload)| {
            if name == "graph" && version >= 3 {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut e, payload).unwrap();
                (name, e.finish().unwrap())
            } else {
                (name, payload.to_vec())
            }
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = payloads.iter().map(|(n, p)| (*n, p.as_slice())).collect();
    seal_exactly(version, &refs)
}

/// Seals sections of the current version as they are (no deflate).
fn seal_raw(sections: &[(&str, &[u8])]) -> Vec<u8> {
    seal_exactly(bundle::FORMAT_VERSION, sections)
}

/// The container around `sections`, byte for byte, with a valid checksum.
fn seal_exactly(version: u32, sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"MLCB".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    for (name, payload) in sections {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(payload);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

#[test]
fn graph_sections_that_do_not_inflate_are_malformed() {
    let bytes = small_bundle();
    let secs = unseal(&bytes);
    let plain = seal_raw(&[
        ("graph", &secs[0].1),
        ("weights", &secs[1].1),
        ("meta", &secs[2].1),
    ]);
    assert!(expect_malformed(&plain, "plain text").contains("not valid deflate data"));
    // A deflate bomb: 300 MiB of zeros in a few hundred KiB.
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b'\n'; 1 << 20];
    for _ in 0..300 {
        std::io::Write::write_all(&mut e, &zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    let b = seal_raw(&[
        ("graph", &bomb),
        ("weights", &secs[1].1),
        ("meta", &secs[2].1),
    ]);
    assert!(expect_malformed(&b, "bomb").contains("inflates to more than"));
}

/// The sections of a bundle (written graph, weights, meta in that order),
/// the graph inflated from version 3 on and a `weights.deflate` section
/// inflated and named `weights` (which a bundle may also hold).
fn unseal(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    raw_sections(bytes)
        .into_iter()
        .map(|(name, payload)| match name.as_str() {
            "graph" if version >= 3 => (name, inflate(&payload)),
            "weights.deflate" => {
                let plain = inflate(&payload[8..]);
                let declared = u64::from_le_bytes(payload[..8].try_into().unwrap());
                assert_eq!(plain.len() as u64, declared);
                ("weights".to_string(), plain)
            }
            _ => (name, payload),
        })
        .collect()
}

/// The sections of a bundle as stored.
fn raw_sections(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let body = &bytes[8..bytes.len() - 32];
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < body.len() {
        let n = body[pos] as usize;
        let name = String::from_utf8(body[pos + 1..pos + 1 + n].to_vec()).unwrap();
        let len = u64::from_le_bytes(body[pos + 1 + n..pos + 9 + n].try_into().unwrap()) as usize;
        out.push((name, body[pos + 9 + n..pos + 9 + n + len].to_vec()));
        pos += 9 + n + len;
    }
    out
}

fn inflate(stream: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(stream), &mut plain).unwrap();
    plain
}

fn with_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let secs = unseal(bytes);
    let secs: Vec<(&str, &[u8])> = secs
        .iter()
        .map(|(n, p)| (n.as_str(), if n == name { payload } else { p.as_slice() }))
        .collect();
    seal(&secs)
}

fn weights_blob(tensors: &[(&str, Tensor)]) -> Vec<u8> {
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.to_string(), t)).collect();
    safetensors::encode(&refs)
}

#[test]
fn structural_problems_behind_a_valid_checksum() {
    let bytes = small_bundle();
    let secs = unseal(&bytes);
    assert_eq!(
        secs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["graph", "weights", "meta"]
    );
    // Re-sealing unchanged sections gives the same file.
    assert!(with_section(&bytes, "meta", &secs[2].1) == bytes);

    let w = Tensor::from_f32(vec![3, 2], vec![1.0; 6]).unwrap();
    let b = Tensor::from_f32(vec![2], vec![0.0; 2]).unwrap();
    let s = Tensor::vec_i64(vec![4]);
    let ok = weights_blob(&[("1", w.clone()), ("2", b.clone()), ("3", s.clone())]);
    assert!(bundle::from_bytes(&with_section(&bytes, "weights", &ok), Path::new("x")).is_ok());

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with_section(
                &bytes,
                "weights",
                &weights_blob(&[("1", w.clone()), ("3", s.clone())]),
            ),
            "no tensor for constant %2 'b'",
        ),
        (
            with_section(
                &bytes,
                "weights",
                &weights_blob(&[
                    ("1", w.clone()),
                    ("2", b.clone()),
                    ("3", s.clone()),
                    ("9", s.clone()),
                ]),
            ),
            "does not use (9)",
        ),
        (
            with_section(
                &bytes,
                "weights",
                &weights_blob(&[
                    ("1", w.clone().reshape(vec![2, 3]).unwrap()),
                    ("2", b.clone()),
                    ("3", s.clone()),
                ]),
            ),
            "'w' is declared f32[3,2] but its data is f32[2,3]",
        ),
        (
            with_section(
                &bytes,
                "weights",
                &weights_blob(&[
                    ("1", w.clone()),
                    ("2", Tensor::vec_i64(vec![1, 2])),
                    ("3", s.clone()),
                ]),
            ),
            "'b' is declared f32[2] but its data is i64[2]",
        ),
        (
            with_section(&bytes, "weights", b"garbage!"),
            "bad weights section",
        ),
        (
            with_section(&bytes, "meta", b"{\"format_version\": 4"),
            "bad metadata",
        ),
        (with_section(&bytes, "meta", b"[]"), "bad metadata"),
        (
            with_section(
                &bytes,
                "meta",
                String::from_utf8(secs[2].1.clone())
                    .unwrap()
                    .replacen(&current_version(), "\"format_version\": 7", 1)
                    .as_bytes(),
            ),
            "format version 7",
        ),
        (
            with_section(&bytes, "graph", b"graph \"g\" opset 17\n  bogus\n"),
            "bad graph section",
        ),
        (with_section(&bytes, "graph", b"\xff\xfe"), "not UTF-8"),
        (
            with_section(
                &bytes,
                "graph",
                SMALL
                    .replace("MatMul(%0, %1)", "MatMul(%0, %1, %2)")
                    .as_bytes(),
            ),
            "has 3 inputs; it takes 2 to 2",
        ),
        (
            with_section(
                &bytes,
                "graph",
                SMALL.replace("  output %6 r\n", "").as_bytes(),
            ),
            "no outputs",
        ),
        (
            with_section(
                &bytes,
                "graph",
                SMALL.replace("opset 17", "opset 0").as_bytes(),
            ),
            "opset 0 is not one mlc supports",
        ),
        (
            with_section(&bytes, "weights", &{
                let h = r#"{"1":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},"1":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]}}"#;
                let mut blob = (h.len() as u64).to_le_bytes().to_vec();
                blob.extend_from_slice(h.as_bytes());
                blob.extend_from_slice(&[0u8; 24]);
                blob
            }),
            "key '1' appears twice",
        ),
        (with_section(&bytes, "graph", b""), "bad graph section"),
        (
            seal(&[("graph", &secs[0].1), ("meta", &secs[2].1)]),
            "'weights' section is missing",
        ),
        (
            seal(&[
                ("graph", &secs[0].1),
                ("weights", &secs[1].1),
                ("meta", &secs[2].1),
                ("meta", &secs[2].1),
            ]),
            "twice",
        ),
        (
            seal(&[
                ("graph", &secs[0].1),
                ("weights", &secs[1].1),
                ("meta", &secs[2].1),
                ("notes", b""),
            ]),
            "unknown section 'notes'",
        ),
    ];
    for (b, want) in &cases {
        let m = expect_malformed(b, want);
        assert!(m.contains(want), "expected '{want}' in: {m}");
    }

    // Any single byte changed in any section (checksum re-sealed) is either
    // a different valid bundle or a Malformed error, never a panic.
    for (k, (name, payload)) in secs.iter().enumerate() {
        for i in 0..payload.len() {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut p = payload.clone();
                p[i] ^= bit;
                let b = with_section(&bytes, name, &p);
                match bundle::from_bytes(&b, Path::new("x")) {
                    Ok(_) | Err(Error::Malformed { .. }) => {}
                    Err(e) => panic!("section {k} byte {i} ^ {bit:#x}: {e:?}"),
                }
            }
        }
    }
}

/// A graph whose only weights are an int4 matrix, the shape of a
/// quantized layer, with an odd element count.
fn int4_graph(rows: usize, cols: usize) -> Graph {
    let mut g = Graph::new("int4", 21);
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::known(&[2])));
    let v: Vec<f64> = (0..rows * cols).map(|k| (k % 16) as f64 - 8.0).collect();
    let t = Tensor::new(vec![rows, cols], TensorData::from_f64(DType::I4, &v)).unwrap();
    let w = g.add_const("w", Arc::new(t));
    let u = Tensor::new(
        vec![cols],
        TensorData::from_f64(DType::U2, &vec![1.0; cols]),
    )
    .unwrap();
    let u = g.add_const("u", Arc::new(u));
    g.outputs = vec![x, w, u];
    g
}

fn empty_meta() -> Metadata {
    Metadata::new(
        SourceInfo::from_bytes("x.onnx", b""),
        PipelineInfo {
            name: "none".into(),
            summary: String::new(),
        },
        Vec::new(),
        NodeCounts {
            before: 0,
            after: 0,
        },
    )
}

/// 4-bit weights take half a byte each and 2-bit a quarter in the bundle
/// (an int4 model must come out near 1/8 of its f32 size).
#[test]
fn sub_byte_weights_are_stored_densely() {
    let (rows, cols) = (63, 65);
    let g = int4_graph(rows, cols);
    let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
    let secs = unseal(&bytes);
    let weights = &secs.iter().find(|(n, _)| n == "weights").unwrap().1;
    let hlen = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let data = weights.len() - 8 - hlen;
    assert_eq!(data, (rows * cols).div_ceil(2) + cols.div_ceil(4));
    let f32_bytes = rows * cols * 4;
    assert!(
        (data as f64) <= 0.16 * f32_bytes as f64,
        "{data} vs {f32_bytes}"
    );
    let (back, meta) = bundle::from_bytes(&bytes, Path::new("mem.mlc")).unwrap();
    assert_eq!(meta.format_version, bundle::FORMAT_VERSION);
    for (&id, t) in &g.consts {
        assert!(same_bits(back.const_value(id).unwrap(), t));
    }
    // Reading and writing again reproduces the file.
    assert!(bundle::to_bytes(&back, &meta).unwrap() == bytes);
}

/// Weights that are mostly integer codes are stored deflated
/// (`weights.deflate`: inflated length, then the stream) and read back bit
/// for bit; float weights stay plain. Every claim of a deflated section is
/// checked.
#[test]
fn quantized_weights_are_deflated_and_checked() {
    let g = int4_graph(63, 65);
    let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
    let secs = raw_sections(&bytes);
    let names: Vec<&str> = secs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["graph", "weights.deflate", "meta"]);
    let plain = unseal(&bytes)[1].1.clone();
    assert!(
        secs[1].1.len() < plain.len() / 2,
        "{} vs {}",
        secs[1].1.len(),
        plain.len()
    );
    let (back, meta) = bundle::from_bytes(&bytes, Path::new("q.mlc")).unwrap();
    for (&id, t) in &g.consts {
        assert!(same_bits(back.const_value(id).unwrap(), t));
    }
    assert!(bundle::to_bytes(&back, &meta).unwrap() == bytes);
    // f32 weights are not deflated.
    let f = raw_sections(&small_bundle());
    assert_eq!(f[1].0, "weights");

    let (graph, deflated, meta) = (unseal(&bytes)[0].1.clone(), &secs[1].1, &secs[2].1);
    let declared = u64::from_le_bytes(deflated[..8].try_into().unwrap());
    let with_len = |len: u64| {
        let mut p = len.to_le_bytes().to_vec();
        p.extend_from_slice(&deflated[8..]);
        p
    };
    let sealed = |w: &[u8]| seal(&[("graph", &graph), ("weights.deflate", w), ("meta", meta)]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (sealed(&with_len(declared + 1)), "not the"),
        (sealed(&with_len(declared - 1)), "inflates to more than"),
        (sealed(&with_len(u64::MAX)), "more than deflate can hold"),
        (sealed(&deflated[..5]), "too short to hold its length"),
        (
            sealed(
                &with_len(16)
                    .into_iter()
                    .take(8)
                    .chain([0xff; 8])
                    .collect::<Vec<u8>>(),
            ),
            "not valid deflate data",
        ),
        (
            seal(&[
                ("graph", &graph),
                ("weights.deflate", deflated),
                ("weights", &plain),
                ("meta", meta),
            ]),
            "appears twice",
        ),
        (
            seal(&[
                ("graph", &graph),
                ("weights", &plain),
                ("weights.deflate", deflated),
                ("meta", meta),
            ]),
            "repeats the weights section",
        ),
        (
            seal_version(
                3,
                &[
                    ("graph", &graph),
                    ("weights.deflate", deflated),
                    ("meta", meta),
                ],
            ),
            "unknown section 'weights.deflate'",
        ),
    ];
    for (b, want) in cases {
        let m = expect_malformed(&b, want);
        assert!(m.contains(want), "{want}: {m}");
    }
    // The same weights plain are also read.
    assert!(bundle::from_bytes(&sealed_plain(&graph, &plain, meta), Path::new("p.mlc")).is_ok());
}

/// How the metadata of a current bundle names its version.
fn current_version() -> String {
    format!("\"format_version\": {}", bundle::FORMAT_VERSION)
}

fn sealed_plain(graph: &[u8], weights: &[u8], meta: &[u8]) -> Vec<u8> {
    seal(&[("graph", graph), ("weights", weights), ("meta", meta)])
}

/// f32 constants whose every value is an f16 value are stored in two bytes
/// an element and read back bit for bit (-0, infinities and NaN included).
#[test]
fn f16_exact_f32_weights_are_stored_narrow() {
    let mut g = Graph::new("narrow", 21);
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::known(&[2])));
    let exact = vec![
        1.0,
        -0.0,
        0.5,
        f32::INFINITY,
        -65504.0,
        2f32.powi(-24),
        f32::NAN,
    ];
    let n = exact.len();
    let a = g.add_const(
        "a",
        Arc::new(Tensor::from_f32(vec![n], exact.clone()).unwrap()),
    );
    let b = g.add_const(
        "b",
        Arc::new(Tensor::from_f32(vec![2], vec![1.0, 0.1]).unwrap()),
    );
    g.outputs = vec![x, a, b];
    let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
    let weights = unseal(&bytes)[1].1.clone();
    let back = safetensors::decode(&weights).unwrap();
    let stored = String::from_utf8_lossy(&weights);
    assert!(stored.contains(r#""mlc.dtype.1":"f32""#), "{stored}");
    assert_eq!(
        weights.len() - 8 - u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize,
        2 * n + 8
    );
    let (g2, _) = bundle::from_bytes(&bytes, Path::new("n.mlc")).unwrap();
    assert!(same_bits(g2.const_value(a).unwrap(), &g.consts[&a]));
    assert!(same_bits(g2.const_value(b).unwrap(), &g.consts[&b]));
    assert_eq!(back.len(), 2);
}

/// A version 1 bundle (sub-byte weights one byte per element) still reads,
/// into the same graph; its sub-byte layout is refused under version 2 and
/// the packed layout under version 1.
#[test]
fn version_1_bundles_still_read() {
    let g = int4_graph(3, 5);
    let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
    let secs = unseal(&bytes);
    let canon = text::canonicalize(&g);
    let tensors: Vec<(String, &Tensor)> = canon
        .consts
        .iter()
        .map(|(id, t)| (id.0.to_string(), t.as_ref()))
        .collect();
    let old_weights = safetensors::encode_with(&tensors, safetensors::Layout::Bytewise);
    let old_meta = String::from_utf8(secs[2].1.clone()).unwrap().replacen(
        &current_version(),
        "\"format_version\": 1",
        1,
    );
    let v1 = seal_version(
        1,
        &[
            ("graph", &secs[0].1),
            ("weights", &old_weights),
            ("meta", old_meta.as_bytes()),
        ],
    );
    let (back, meta) = bundle::from_bytes(&v1, Path::new("old.mlc")).unwrap();
    assert_eq!(meta.format_version, 1);
    // Version 2: packed weights, the graph section plain text.
    let v2_meta = String::from_utf8(secs[2].1.clone()).unwrap().replacen(
        &current_version(),
        "\"format_version\": 2",
        1,
    );
    let v2 = seal_version(
        2,
        &[
            ("graph", &secs[0].1),
            ("weights", &secs[1].1),
            ("meta", v2_meta.as_bytes()),
        ],
    );
    let (back2, meta2) = bundle::from_bytes(&v2, Path::new("v2.mlc")).unwrap();
    assert_eq!(meta2.format_version, 2);
    assert_eq!(back2.consts.len(), g.consts.len());
    for (&id, t) in &g.consts {
        assert!(same_bits(back.const_value(id).unwrap(), t));
    }
    // Written again, it becomes a current bundle.
    assert!(bundle::to_bytes(&back, &meta).unwrap() == bytes);

    // Mixed layouts are refused.
    let v1_packed = seal_version(
        1,
        &[
            ("graph", &secs[0].1),
            ("weights", &secs[1].1),
            ("meta", old_meta.as_bytes()),
        ],
    );
    assert!(expect_malformed(&v1_packed, "v1 packed").contains("version 1 records no shapes"));
    let v2_bytewise = with_section(&bytes, "weights", &old_weights);
    assert!(expect_malformed(&v2_bytewise, "v2 bytewise").contains("mlc.shape"));
    // Header and metadata versions must agree.
    let mismatch = seal_version(
        1,
        &[
            ("graph", &secs[0].1),
            ("weights", &old_weights),
            ("meta", &secs[2].1),
        ],
    );
    assert!(expect_malformed(&mismatch, "mismatch").contains("file header says 1"));
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = scratch("atomic");
    let g = text::parse(SMALL).unwrap();
    let meta = Metadata::new(
        SourceInfo::from_bytes("s.onnx", b""),
        PipelineInfo {
            name: "p".into(),
            summary: String::new(),
        },
        Vec::new(),
        NodeCounts {
            before: 3,
            after: 3,
        },
    );
    // The target is a folder: the temporary is written, the rename fails,
    // and the temporary is removed.
    std::fs::create_dir(dir.join("taken.mlc")).unwrap();
    let err = bundle::write(&dir.join("taken.mlc"), &g, &meta).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(listing(&dir), ["taken.mlc"]);
    assert!(listing(&dir.join("taken.mlc")).is_empty());
    // A folder that does not exist.
    assert!(bundle::write(&dir.join("missing/x.mlc"), &g, &meta).is_err());
    assert_eq!(listing(&dir), ["taken.mlc"]);
    // A graph that fails verification is refused before any file is made.
    let mut broken = g.clone();
    let dangling = broken.add_value("dangling", TensorType::new(DType::F32, Shape::known(&[1])));
    broken.outputs.push(dangling);
    assert!(bundle::write(&dir.join("broken.mlc"), &broken, &meta).is_err());
    assert_eq!(listing(&dir), ["taken.mlc"]);
    // An existing bundle is replaced whole.
    std::fs::write(dir.join("old.mlc"), b"old contents").unwrap();
    bundle::write(&dir.join("old.mlc"), &g, &meta).unwrap();
    assert!(bundle::read(&dir.join("old.mlc")).is_ok());
    assert_eq!(listing(&dir), ["old.mlc", "taken.mlc"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_to_overwrite_the_input_model() {
    let dir = scratch("not-input");
    let model = dir.join("model.onnx");
    std::fs::copy(repo().join("fixtures/mlp/model.onnx"), &model).unwrap();
    let err = bundle::ensure_not_input(&model, &model).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    // The same file through another spelling, a symlink and a hard link.
    let dotted = dir.join(".").join("model.onnx");
    assert!(bundle::ensure_not_input(&dotted, &model).is_err());
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&model, dir.join("link.mlc")).unwrap();
        assert!(bundle::ensure_not_input(&dir.join("link.mlc"), &model).is_err());
        std::fs::hard_link(&model, dir.join("hard.mlc")).unwrap();
        assert!(bundle::ensure_not_input(&dir.join("hard.mlc"), &model).is_err());
    }
    bundle::ensure_not_input(&dir.join("new.mlc"), &model).unwrap();
    std::fs::copy(&model, dir.join("copy.onnx")).unwrap();
    bundle::ensure_not_input(&dir.join("copy.onnx"), &model).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn mlc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_runs_and_inspects_bundles() {
    let dir = scratch("cli");
    let model = repo().join("fixtures/mlp/model.onnx");
    let g = mlc::formats::load(&model).unwrap();
    let path = dir.join("mlp.mlc");
    bundle::write(&path, &g, &meta_for(&model, g.node_count())).unwrap();
    let p = path.to_str().unwrap();
    let m = model.to_str().unwrap();

    let run = |model: &str| {
        let out = mlc(&["run", model, "--random", "3", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .replace(model, "MODEL")
    };
    assert_eq!(run(p), run(m));

    let out = mlc(&["inspect", p, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "mlc");
    assert_eq!(v["supported"], true);
    assert_eq!(v["bundle"]["pipeline"]["name"], "test");
    assert_eq!(v["bundle"]["source"]["file_name"], "model.onnx");
    assert_eq!(v["bundle"]["pass_log"][0]["rewrites"]["fold-const"], 2);
    assert_eq!(v["node_count"], g.node_count());
    assert_eq!(v["parameters"], g.param_count());
    let onnx: serde_json::Value =
        serde_json::from_slice(&mlc(&["inspect", m, "--json"]).stdout).unwrap();
    assert_eq!(v["inputs"], onnx["inputs"]);
    assert_eq!(v["outputs"], onnx["outputs"]);
    assert!(onnx.get("bundle").is_none());

    let out = mlc(&["inspect", p]);
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!("mlc bundle (format {}", bundle::FORMAT_VERSION);
    assert!(text.contains(&want), "{text}");
    assert!(text.contains("pipeline  test"), "{text}");

    let out = mlc(&["inspect", p, "--ir"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text::print(&g));

    // A damaged bundle: exit code 2 and the bundle reader's message.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(dir.join("bad.mlc"), &bytes).unwrap();
    let bad = dir.join("bad.mlc");
    let bad = bad.to_str().unwrap();
    for args in [&["run", bad, "--random", "0"][..], &["inspect", bad][..]] {
        let out = mlc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("checksum mismatch"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Quantization scales that are zero, negative, NaN or infinite make a
/// bundle malformed, whether they are the weights' (a constant) or the
/// activations' (an attribute).
#[test]
fn bad_quantization_scales_are_refused() {
    let graph = |act: &str| {
        format!(
            "graph \"q\" opset 21\n  input  %0 x: f32[2,3]\n  const  %1 w: i8[3,2] = [1, 2, 3, 4, 5, 6]\n  const  %2 s: f32[2] = [0.5, 0.25]\n  %3 y: f32[2,2] = QMatMul[a_quant={act}](%0, %1, %2)\n  output %3 y\n"
        )
    };
    let good = text::parse(&graph("static(0.1, 3)")).unwrap();
    let bytes = bundle::to_bytes(&good, &empty_meta()).unwrap();
    bundle::from_bytes(&bytes, Path::new("q.mlc")).unwrap();
    for act in [
        "static(0, 3)",
        "static(-0.1, 3)",
        "static(nan, 3)",
        "static(inf, 3)",
    ] {
        let b = with_section(&bytes, "graph", graph(act).as_bytes());
        let m = expect_malformed(&b, "activation scale");
        assert!(m.contains("not a positive finite number"), "{act}: {m}");
    }
    let w = Tensor::new(vec![3, 2], TensorData::I8(vec![1, 2, 3, 4, 5, 6])).unwrap();
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let s = Tensor::from_f32(vec![2], vec![0.5, bad]).unwrap();
        let b = with_section(
            &bytes,
            "weights",
            &weights_blob(&[("1", w.clone()), ("2", s)]),
        );
        let m = expect_malformed(&b, "weight scale");
        assert!(m.contains("not a positive finite number"), "{bad}: {m}");
    }
}

/// `numel` elements of `dtype` of which about `sparsity` percent are exact
/// zeros, the rest nonzero (-0.0 among them for floats).
fn pruned_tensor(dtype: DType, shape: &[usize], sparsity: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| {
            if (i * 37 + 11) % 100 < sparsity {
                0.0
            } else if i % 97 == 0 && dtype.is_float() {
                -0.0
            } else {
                let x = ((i * 7919) % 253) as f64 - 126.0;
                let x = if x == 0.0 { 1.0 } else { x };
                if dtype == DType::I8 {
                    x
                } else {
                    x * 0.0137
                }
            }
        })
        .collect();
    Tensor::new(shape.to_vec(), TensorData::from_f64(dtype, &v)).unwrap()
}

/// A graph whose outputs are its input and the given constants.
fn consts_graph(consts: Vec<(&str, Tensor)>) -> Graph {
    let mut g = Graph::new("pruned", 21);
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::known(&[2])));
    let mut outs = vec![x];
    for (name, t) in consts {
        outs.push(g.add_const(name, Arc::new(t)));
    }
    g.outputs = outs;
    g
}

/// The weights a layer-pruned model has: a 90%-sparse conv kernel, an
/// 80%-sparse int8 matrix, a 95%-sparse f16-exact vector, a dense bias.
fn pruned_graph() -> Graph {
    let mut narrow = pruned_tensor(DType::F32, &[256], 95);
    if let TensorData::F32(v) = narrow.data() {
        let v: Vec<f32> = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        narrow = Tensor::from_f32(vec![256], v).unwrap();
    }
    consts_graph(vec![
        (
            "conv.weight",
            pruned_tensor(DType::F32, &[64, 16, 3, 3], 90),
        ),
        ("fc.weight", pruned_tensor(DType::I8, &[128, 96], 80)),
        ("norm.scale", narrow),
        ("fc.bias", pruned_tensor(DType::F32, &[96], 0)),
    ])
}

/// The canonical constants of `g` as the writer names them.
fn named_consts(g: &Graph) -> Vec<(String, Arc<Tensor>)> {
    text::canonicalize(g)
        .consts
        .iter()
        .filter(|(_, t)| t.numel() > 0)
        .map(|(id, t)| (id.0.to_string(), t.clone()))
        .collect()
}

/// Pruned weights are stored sparse (values and a bitmask or gaps), read
/// back bit for bit, take the bytes `stored_len` says, and are written
/// deterministically.
#[test]
fn pruned_weights_are_stored_sparse() {
    let g = pruned_graph();
    let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
    assert!(bundle::to_bytes(&g, &empty_meta()).unwrap() == bytes);
    let (back, meta) = bundle::from_bytes(&bytes, Path::new("pruned.mlc")).unwrap();
    assert_eq!(meta.format_version, 5);
    for (&id, t) in &g.consts {
        assert!(same_bits(back.const_value(id).unwrap(), t), "{id:?}");
    }
    assert!(bundle::to_bytes(&back, &meta).unwrap() == bytes);

    let weights = unseal(&bytes)[1].1.clone();
    let hlen = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&weights[8..8 + hlen]).unwrap();
    let consts = named_consts(&g);
    let stored: usize = consts.iter().map(|(_, t)| safetensors::stored_len(t)).sum();
    assert_eq!(weights.len() - 8 - hlen, stored);
    let mut forms = Vec::new();
    for (n, t) in &consts {
        let form = ["bitmask", "gaps"]
            .into_iter()
            .find(|f| header.contains(&format!("\"mlc.sparse.{n}\":\"{f}\"")));
        forms.push((t.numel(), form));
    }
    forms.sort();
    assert_eq!(
        forms,
        [
            (96, None),
            (256, Some("gaps")),
            (9216, Some("gaps")),
            (12288, Some("bitmask"))
        ],
        "{header}"
    );
    // Dense, the same weights take three times the bytes and more.
    let refs: Vec<(String, &Tensor)> = consts.iter().map(|(n, t)| (n.clone(), &**t)).collect();
    let dense = safetensors::encode_with(&refs, safetensors::Layout::Packed);
    assert!(
        3 * weights.len() < dense.len(),
        "{} vs {}",
        weights.len(),
        dense.len()
    );
}

/// A model with no zeros to speak of gets the same weights section as
/// format version 4 wrote: only the version numbers differ.
#[test]
fn unpruned_weights_are_unchanged() {
    for name in ["mlp", "cnn", "transformer"] {
        let model = repo().join("fixtures").join(name).join("model.onnx");
        let g = mlc::formats::load(&model).unwrap();
        let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
        let secs = raw_sections(&bytes);
        let consts = named_consts(&g);
        let refs: Vec<(String, &Tensor)> = consts.iter().map(|(n, t)| (n.clone(), &**t)).collect();
        let v4 = safetensors::encode_with(&refs, safetensors::Layout::Packed);
        assert_eq!(secs[1].0, "weights", "{name}");
        assert!(secs[1].1 == v4, "{name}: the weights changed");
    }
    let secs = unseal(&small_bundle());
    assert!(!String::from_utf8_lossy(&secs[1].1).contains("mlc.sparse"));
}

/// A version 4 bundle of pruned weights (stored dense) still reads, into
/// the same tensors, and is written again as version 5; sparse records
/// under version 4 are refused.
#[test]
fn version_4_bundles_still_read() {
    let g = pruned_graph();
    let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
    let secs = unseal(&bytes);
    let consts = named_consts(&g);
    let refs: Vec<(String, &Tensor)> = consts.iter().map(|(n, t)| (n.clone(), &**t)).collect();
    let v4_weights = safetensors::encode_with(&refs, safetensors::Layout::Packed);
    assert!(!String::from_utf8_lossy(&v4_weights).contains("mlc.sparse"));
    let v4_meta = String::from_utf8(secs[2].1.clone()).unwrap().replacen(
        &current_version(),
        "\"format_version\": 4",
        1,
    );
    let v4 = seal_version(
        4,
        &[
            ("graph", &secs[0].1),
            ("weights", &v4_weights),
            ("meta", v4_meta.as_bytes()),
        ],
    );
    let (back, meta) = bundle::from_bytes(&v4, Path::new("v4.mlc")).unwrap();
    assert_eq!(meta.format_version, 4);
    for (&id, t) in &g.consts {
        assert!(same_bits(back.const_value(id).unwrap(), t));
    }
    assert!(bundle::to_bytes(&back, &meta).unwrap() == bytes);
    let sparse_as_v4 = seal_version(
        4,
        &[
            ("graph", &secs[0].1),
            ("weights", &secs[1].1),
            ("meta", v4_meta.as_bytes()),
        ],
    );
    let m = expect_malformed(&sparse_as_v4, "sparse under version 4");
    assert!(m.contains("need format version 5"), "{m}");
}

/// The `weights.deflate` decision on top of sparse storage: deflated only
/// when at least half the blob is integer codes and deflate saves 1/32.
#[test]
fn deflate_still_only_when_it_saves() {
    let cases: Vec<(&str, Graph, bool)> = vec![
        (
            "int8 80% zeros",
            consts_graph(vec![("w", pruned_tensor(DType::I8, &[128, 96], 80))]),
            true,
        ),
        (
            "int8 dense",
            consts_graph(vec![("w", pruned_tensor(DType::I8, &[128, 96], 0))]),
            true,
        ),
        (
            "int8 99% zeros",
            consts_graph(vec![("w", pruned_tensor(DType::I8, &[128, 96], 99))]),
            true,
        ),
        ("f32 and int8", pruned_graph(), false),
    ];
    for (what, g, deflates) in cases {
        let bytes = bundle::to_bytes(&g, &empty_meta()).unwrap();
        let plain = unseal(&bytes)[1].1.clone();
        let section = &raw_sections(&bytes)[1];
        let codes: usize = named_consts(&g)
            .iter()
            .filter(|(_, t)| t.dtype().is_int())
            .map(|(_, t)| safetensors::stored_len(t))
            .sum();
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, &plain).unwrap();
        let packed = e.finish().unwrap().len();
        let saves = 2 * codes >= plain.len() && packed + 8 + plain.len() / 32 <= plain.len();
        assert_eq!(section.0 == "weights.deflate", saves, "{what}");
        assert_eq!(saves, deflates, "{what}: {packed} of {} bytes", plain.len());
        if saves {
            assert_eq!(section.1.len(), packed + 8, "{what}");
        }
        let (back, _) = bundle::from_bytes(&bytes, Path::new("d.mlc")).unwrap();
        for (&id, t) in &g.consts {
            assert!(same_bits(back.const_value(id).unwrap(), t), "{what}");
        }
    }
}

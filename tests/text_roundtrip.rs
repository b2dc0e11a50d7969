//! The IR text form round-trips every ONNX node conformance model that
//! imports: `print(parse(print(g))) == print(g)`, the parsed graph equals the
//! canonicalized original, and it computes the same outputs bit for bit.
//! Skipped quietly when `tests/onnx-node-cases/node` is absent.

use std::path::PathBuf;

use mlc::ir::text::{self, PrintOptions};
use mlc::ir::{Graph, ValueId};
use mlc::Tensor;

fn same_graph(a: &Graph, b: &Graph) -> Result<(), String> {
    let ok = a.name == b.name
        && a.opset == b.opset
        && a.inputs == b.inputs
        && a.outputs == b.outputs
        && a.values.len() == b.values.len()
        && a.values
            .iter()
            .zip(&b.values)
            .all(|(x, y)| x.name == y.name && x.ty == y.ty && x.def == y.def)
        && a.node_capacity() == b.node_capacity()
        && a.nodes().zip(b.nodes()).all(|((i, x), (j, y))| {
            i == j
                && x.name == y.name
                && x.op == y.op
                && x.inputs == y.inputs
                && x.outputs == y.outputs
        })
        && a.consts.len() == b.consts.len()
        && a.consts
            .iter()
            .zip(&b.consts)
            .all(|((i, x), (j, y))| i == j && same_tensor(x, y));
    if ok {
        Ok(())
    } else {
        Err("the parsed graph differs from the canonicalized original".into())
    }
}

fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype()
        && a.shape() == b.shape()
        && (a == b
            || a.to_f64_vec()
                .iter()
                .zip(b.to_f64_vec())
                .all(|(x, y)| x.to_bits() == y.to_bits()))
}

/// 0: not imported, 1: round-tripped, 2: also ran identically.
fn check(dir: &std::path::Path) -> Result<u8, String> {
    let Ok(g) = mlc::formats::onnx::load(&dir.join("model.onnx")) else {
        return Ok(0); // not imported: not a text-form concern
    };
    let canon = text::canonicalize(&g);
    let mut load = |n: usize, _: &str| {
        canon
            .const_value(ValueId(n as u32))
            .cloned()
            .ok_or_else(|| mlc::Error::InvalidGraph(format!("no constant %{n}")))
    };
    for limit in [0, 16] {
        let opts = PrintOptions {
            inline_const_limit: limit,
        };
        let t = text::print_with(&g, &opts);
        let p = text::parse_with(&t, &mut load).map_err(|e| format!("{e}\n{t}"))?;
        let t2 = text::print_with(&p, &opts);
        if t2 != t {
            return Err(format!("reprinted text differs:\n{t}\n---\n{t2}"));
        }
        same_graph(&p, &canon)?;
    }
    // Same outputs, bit for bit, on the case's inputs.
    let data = dir.join("test_data_set_0");
    let mut inputs = Vec::new();
    for i in 0..g.inputs.len() {
        let path = data.join(format!("input_{i}.pb"));
        match mlc::formats::onnx::read_tensor_pb(&path) {
            Ok((_, t)) => inputs.push(t),
            Err(_) => return Ok(1),
        }
    }
    let t = text::print_with(&g, &PrintOptions::default());
    let p = text::parse_with(&t, &mut load).map_err(|e| e.to_string())?;
    let (Ok(want), got) = (
        mlc::interp::run(&g, inputs.clone()),
        mlc::interp::run(&p, inputs),
    ) else {
        return Ok(1);
    };
    let got = got.map_err(|e| format!("the parsed graph fails to run: {e}"))?;
    if want.len() != got.len() || !want.iter().zip(&got).all(|(a, b)| same_tensor(a, b)) {
        return Err("outputs differ".into());
    }
    Ok(2)
}

#[test]
fn conformance_models_round_trip() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/onnx-node-cases/node");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut n = 0;
    let mut counts = [0usize; 3];
    for dir in dirs {
        if !dir.join("model.onnx").is_file() {
            continue;
        }
        n += 1;
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let r = std::panic::catch_unwind(|| check(&dir))
            .unwrap_or_else(|_| Err("panicked".to_string()));
        match r {
            Ok(k) => counts[k as usize] += 1,
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    eprintln!(
        "{n} cases: {} not imported, {} round-tripped, {} also ran identically",
        counts[0], counts[1], counts[2]
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases fail to round-trip:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

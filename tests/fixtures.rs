//! Runs the model fixtures under `fixtures/` (see fixtures/README.md): each
//! `model.onnx` is imported with mlc, run by the reference interpreter on
//! every variant listed in its `io.json` (different batch sizes and sequence
//! lengths on one loaded graph) and compared with the ONNX Runtime outputs.

mod common;

use std::path::{Path, PathBuf};

use mlc::formats::npy::read_npy;
use mlc::Tensor;
use serde::Deserialize;

#[derive(Deserialize)]
struct IoFile {
    name: String,
    file: String,
}

#[derive(Deserialize)]
struct IoSpec {
    model: String,
    inputs: Vec<IoFile>,
    outputs: Vec<IoFile>,
    variants: Vec<String>,
    rtol: f64,
    atol: f64,
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/ folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("io.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs one fixture on all its variants; returns one line per problem.
fn check_fixture(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let spec: IoSpec = match std::fs::read_to_string(dir.join("io.json"))
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return vec![format!("{name}: io.json: {e}")],
    };
    let graph = match mlc::formats::onnx::load(&dir.join(&spec.model)) {
        Ok(g) => g,
        Err(e) => return vec![format!("{name}: import: {e}")],
    };
    // Order the inputs as the graph declares them, by name.
    let graph_inputs: Vec<String> = graph
        .inputs
        .iter()
        .map(|&id| graph.value(id).name.clone())
        .collect();
    let mut spec_names: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut sorted_graph: Vec<&str> = graph_inputs.iter().map(|s| s.as_str()).collect();
    spec_names.sort();
    sorted_graph.sort();
    if spec_names != sorted_graph {
        return vec![format!(
            "{name}: the graph inputs {graph_inputs:?} do not match io.json {spec_names:?}"
        )];
    }

    let mut problems = Vec::new();
    for variant in &spec.variants {
        let vdir = dir.join(variant);
        let what = format!("{name}/{variant}");
        let mut inputs: Vec<Tensor> = Vec::new();
        let mut ok = true;
        for gname in &graph_inputs {
            let Some(f) = spec.inputs.iter().find(|i| &i.name == gname) else {
                unreachable!("checked above that the names match")
            };
            match read_npy(&vdir.join(&f.file)) {
                Ok(t) => inputs.push(t),
                Err(e) => {
                    problems.push(format!("{what}: {e}"));
                    ok = false;
                }
            }
        }
        if !ok {
            continue;
        }
        let got = match mlc::interp::run(&graph, inputs) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{what}: run: {e}"));
                continue;
            }
        };
        if got.len() != spec.outputs.len() {
            problems.push(format!(
                "{what}: {} outputs, io.json lists {}",
                got.len(),
                spec.outputs.len()
            ));
            continue;
        }
        for (i, (g, o)) in got.iter().zip(&spec.outputs).enumerate() {
            let out_name = graph
                .outputs
                .get(i)
                .map(|&id| graph.value(id).name.clone())
                .unwrap_or_default();
            if out_name != o.name {
                problems.push(format!(
                    "{what}: graph output {i} is '{out_name}', io.json says '{}'",
                    o.name
                ));
                continue;
            }
            match read_npy(&vdir.join(&o.file)) {
                Ok(want) => {
                    if let Err(m) = common::compare(g, &want, spec.rtol, spec.atol) {
                        problems.push(format!("{what}: output '{}': {m}", o.name));
                    } else {
                        println!("{what}: output '{}' {} ok", o.name, common::describe(g));
                    }
                }
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
    }
    problems
}

fn run_one(name: &str) {
    let problems = check_fixture(&fixtures_dir().join(name));
    assert!(
        problems.is_empty(),
        "fixture {name}:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn fixture_mlp() {
    run_one("mlp");
}

#[test]
fn fixture_cnn() {
    run_one("cnn");
}

#[test]
fn fixture_transformer() {
    run_one("transformer");
}

/// The trained digits models against their ONNX Runtime outputs.
#[test]
fn fixture_digits() {
    run_one("digits/ref_cnn");
    run_one("digits/ref_mlp");
}

/// Every fixture folder is covered by a test above, and its files are
/// readable by mlc's npy reader (independent of the importer).
#[test]
fn fixture_files_are_complete() {
    let names = fixture_names();
    assert_eq!(
        names,
        ["cnn", "mlp", "transformer"],
        "add a test for new fixtures"
    );
    for name in names {
        let dir = fixtures_dir().join(&name);
        let spec: IoSpec =
            serde_json::from_str(&std::fs::read_to_string(dir.join("io.json")).unwrap()).unwrap();
        assert!(dir.join(&spec.model).is_file(), "{name}: model missing");
        assert!(
            spec.variants.len() >= 2,
            "{name}: needs a second batch size"
        );
        for v in &spec.variants {
            let mut batch = None;
            for f in spec.inputs.iter().chain(&spec.outputs) {
                let t = read_npy(&dir.join(v).join(&f.file))
                    .unwrap_or_else(|e| panic!("{name}/{v}: {e}"));
                // All inputs and outputs of one variant share the batch dim.
                let b = t.shape()[0];
                assert_eq!(*batch.get_or_insert(b), b, "{name}/{v}/{}", f.file);
            }
        }
    }
}

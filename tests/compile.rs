//! `mlc compile` end to end on the fixtures: the O2 bundle runs with outputs
//! matching ONNX Runtime's expectations, BatchNorm is gone from the CNN, the
//! same input gives the same bytes, and the output never replaces the input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty directory for one test case, removed when it ends.
fn scratch(case: &str) -> common::Scratch {
    common::scratch("mlc-compile", case)
}

fn mlc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    common::stdout_of_success(&out)
}

/// Input and output (name, file) pairs and variant folders of a fixture.
struct Fixture {
    dir: PathBuf,
    inputs: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
    variants: Vec<String>,
}

fn fixture(name: &str) -> Fixture {
    let dir = repo().join("fixtures").join(name);
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("io.json")).unwrap()).unwrap();
    let pairs = |k: &str| -> Vec<(String, String)> {
        io[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["file"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let variants = io["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    Fixture {
        inputs: pairs("inputs"),
        outputs: pairs("outputs"),
        variants,
        dir,
    }
}

/// Compiles `model` with O2 and --verify; returns the parsed JSON report.
fn compile(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--pipeline",
        "O2",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(mlc(&args))).unwrap()
}

#[test]
fn o2_bundles_match_the_original_models() {
    let dir = scratch("o2");
    for name in ["mlp", "cnn", "transformer"] {
        let fx = fixture(name);
        let bundle = dir.join(format!("{name}.mlc"));
        let report = compile(&fx.dir.join("model.onnx"), &bundle, &["--verify"]);
        println!(
            "{name}: nodes {} -> {} with O2 ({} bytes)",
            report["nodes_before"], report["nodes_after"], report["bytes"]
        );
        assert!(report["nodes_after"].as_u64() <= report["nodes_before"].as_u64());
        for variant in &fx.variants {
            let vdir = fx.dir.join(variant);
            let out_file = dir.join(format!("{name}-{}.npz", variant.replace('.', "base")));
            let mut args: Vec<String> = vec![
                "run".into(),
                bundle.display().to_string(),
                "-o".into(),
                out_file.display().to_string(),
            ];
            for (input, file) in &fx.inputs {
                args.push("--input".into());
                args.push(format!("{input}={}", vdir.join(file).display()));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(mlc(&args));
            let got = mlc::formats::npy::read_npz(&out_file).unwrap();
            for (output, file) in &fx.outputs {
                let want = mlc::formats::npy::read_npy(&vdir.join(file)).unwrap();
                let t = &got
                    .iter()
                    .find(|(n, _)| n == output)
                    .unwrap_or_else(|| panic!("{name}: no output {output}"))
                    .1;
                common::compare(t, &want, 1e-4, 1e-5)
                    .unwrap_or_else(|e| panic!("{name}/{variant}/{output}: {e}"));
            }
        }
    }
}

#[test]
fn o2_removes_batchnorm_from_the_cnn() {
    let dir = scratch("cnn-bn");
    let fx = fixture("cnn");
    let before = mlc::formats::load(&fx.dir.join("model.onnx")).unwrap();
    let bn = |g: &mlc::Graph| {
        g.nodes()
            .filter(|(_, n)| n.op.onnx_type() == "BatchNormalization")
            .count()
    };
    assert!(bn(&before) > 0);
    let bundle = dir.join("cnn.mlc");
    compile(&fx.dir.join("model.onnx"), &bundle, &[]);
    let after = mlc::formats::load(&bundle).unwrap();
    assert_eq!(
        bn(&after),
        0,
        "BatchNormalization left after O2:\n{}",
        mlc::ir::text::print(&after)
    );
}

#[test]
fn compiling_twice_gives_identical_bytes() {
    let dir = scratch("determinism");
    for name in ["cnn", "transformer"] {
        let model = fixture(name).dir.join("model.onnx");
        let (a, b) = (
            dir.join(format!("{name}-a.mlc")),
            dir.join(format!("{name}-b.mlc")),
        );
        compile(&model, &a, &[]);
        compile(&model, &b, &[]);
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name}: bundles differ"
        );
        let (x, y) = (
            dir.join(format!("{name}-a.onnx")),
            dir.join(format!("{name}-b.onnx")),
        );
        compile(&model, &x, &["--emit", "onnx"]);
        compile(&model, &y, &["--emit", "onnx"]);
        assert_eq!(
            std::fs::read(&x).unwrap(),
            std::fs::read(&y).unwrap(),
            "{name}: ONNX exports differ"
        );
    }
}

#[test]
fn output_may_not_replace_the_input() {
    let dir = scratch("overwrite");
    let model = dir.join("model.onnx");
    std::fs::copy(fixture("mlp").dir.join("model.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let out = mlc(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
        "--emit",
        "onnx",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

#[test]
fn bundle_metadata_records_pipeline_and_pass_log() {
    let dir = scratch("meta");
    let bundle = dir.join("mlp.mlc");
    compile(&fixture("mlp").dir.join("model.onnx"), &bundle, &[]);
    let (_, meta) = mlc::formats::bundle::read(&bundle).unwrap();
    let meta = serde_json::to_value(&meta).unwrap();
    let text = meta.to_string();
    assert!(text.contains("O2"), "{text}");
    assert!(text.contains("fold-constants"), "{text}");
}

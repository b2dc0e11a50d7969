//! The `mlc` binary end to end: `run` with .npy inputs writes outputs that
//! match ONNX Runtime's, `--random` runs a dynamic model at the requested
//! sizes, and `inspect --json` is machine-readable.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mlc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .output()
        .unwrap()
}

/// A fresh, empty directory for one test case, removed when it ends.
fn scratch(case: &str) -> common::Scratch {
    common::scratch("mlc-cli-run", case)
}

fn ok(out: &Output) -> String {
    common::stdout_of_success(out)
}

#[test]
fn run_writes_outputs_matching_onnx_runtime() {
    let dir = scratch("transformer");
    let fx = repo().join("fixtures/transformer");
    for variant in [".", "batch3", "seq16"] {
        let v = fx.join(variant);
        let out_file = dir.join(format!("{}.npz", variant.replace('.', "base")));
        let ids = format!("input_ids={}", v.join("input_input_ids.npy").display());
        let mask = format!(
            "attention_mask={}",
            v.join("input_attention_mask.npy").display()
        );
        let model = fx.join("model.onnx");
        ok(&mlc(&[
            "run",
            model.to_str().unwrap(),
            "--input",
            &ids,
            "--input",
            &mask,
            "-o",
            out_file.to_str().unwrap(),
        ]));
        let got = mlc::formats::npy::read_npz(&out_file).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["hidden", "logits"]);
        for (name, t) in &got {
            let want =
                mlc::formats::npy::read_npy(&v.join(format!("expected_{name}.npy"))).unwrap();
            common::compare(t, &want, 1e-4, 1e-5)
                .unwrap_or_else(|e| panic!("{variant}/{name}: {e}"));
        }
    }
}

#[test]
fn random_inputs_follow_requested_dims() {
    let model = repo().join("fixtures/transformer/model.onnx");
    let out = ok(&mlc(&[
        "run",
        model.to_str().unwrap(),
        "--random",
        "7",
        "--dim",
        "batch=8",
        "--dim",
        "seq=12",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outputs"][0]["name"], "hidden");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([8, 12, 64]));
    assert_eq!(v["outputs"][1]["shape"], serde_json::json!([8, 3]));
    // Same seed, same numbers.
    let again = ok(&mlc(&[
        "run",
        model.to_str().unwrap(),
        "--random",
        "7",
        "--dim",
        "batch=8",
        "--dim",
        "seq=12",
        "--json",
    ]));
    assert_eq!(out, again);
}

#[test]
fn inspect_json_reports_the_model() {
    let model = repo().join("fixtures/cnn/model.onnx");
    let out = ok(&mlc(&["inspect", model.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["supported"], true);
    assert!(v["op_histogram"]["BatchNormalization"].as_u64().unwrap() >= 1);
    assert!(v["parameters"].as_u64().unwrap() > 0);
    assert_eq!(v["inputs"][0]["shape"][0], "batch");
    assert!(v["problems"].as_array().unwrap().is_empty());
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let dir = scratch("wrong-shape");
    let bad = dir.join("x.npy");
    let t = mlc::Tensor::from_f32(vec![2, 5], vec![0.0; 10]).unwrap();
    mlc::formats::npy::write_npy(&bad, &t).unwrap();
    let model = repo().join("fixtures/cnn/model.onnx");
    let out = mlc(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        &format!("x={}", bad.display()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: input 'x'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!Path::new(&dir.join("out.npz")).exists());
}

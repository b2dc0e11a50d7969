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

/// `mlc` with stdin fed from `input`.
fn mlc_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A command that refuses its arguments exits without reading stdin:
    // the pipe may close before all of `input` is written.
    if let Err(e) = stdin.write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn dash_reads_stdin_and_writes_stdout() {
    let dir = scratch("stdio");
    let model = repo().join("fixtures/cnn/model.onnx");
    let onnx = std::fs::read(&model).unwrap();
    // compile - -o -: a bundle on stdout, nothing else there.
    let out = mlc_stdin(&["compile", "-", "-o", "-"], &onnx);
    let bundle = common::stdout_bytes_of_success(&out);
    assert!(mlc::api::is_bundle(&bundle), "stdout is not a bundle");
    // run on the bundle from stdin, outputs as .npz on stdout: the same
    // values as run on the file, written to a file.
    let x = repo().join("fixtures/cnn/input_x.npy");
    let x = format!("x={}", x.display());
    let npz = common::stdout_bytes_of_success(&mlc_stdin(
        &["run", "-", "--input", &x, "-o", "-"],
        &bundle,
    ));
    let piped = dir.join("piped.npz");
    std::fs::write(&piped, &npz).unwrap();
    let file = dir.join("file.npz");
    ok(&mlc(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        &x,
        "-o",
        file.to_str().unwrap(),
    ]));
    let (a, b) = (
        mlc::formats::npy::read_npz(&piped).unwrap(),
        mlc::formats::npy::read_npz(&file).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        common::compare(ta, tb, 1e-5, 1e-6).unwrap();
    }
    // Two files from stdin, and compress -o - (reports go beside the
    // output): one clear error each, exit 2.
    for (args, msg) in [
        (
            vec!["run", "-", "--inputs", "-"],
            "only one file can be read from stdin",
        ),
        (
            vec!["compress", "-", "--int8", "-o", "-"],
            "give a file name instead of -",
        ),
    ] {
        let out = mlc_stdin(&args, &onnx);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn quiet_prints_only_what_was_asked_and_verbose_more() {
    let dir = scratch("quiet");
    let model = repo().join("fixtures/cnn/model.onnx");
    let model = model.to_str().unwrap();
    let bundle = dir.join("m.mlc");
    let bundle = bundle.to_str().unwrap();
    // -q: a command that writes a file prints nothing.
    assert_eq!(ok(&mlc(&["-q", "compile", model, "-o", bundle])), "");
    assert_eq!(ok(&mlc(&["compile", model, "-o", bundle, "-q"])), "");
    let npz = dir.join("o.npz");
    assert_eq!(
        ok(&mlc(&[
            "run",
            bundle,
            "--random",
            "1",
            "-o",
            npz.to_str().unwrap(),
            "-q"
        ])),
        ""
    );
    // ... but what the command is for still comes out.
    let shown = ok(&mlc(&["-q", "run", bundle, "--random", "1"]));
    assert!(shown.contains("logits"), "{shown}");
    let json = ok(&mlc(&["-q", "inspect", bundle, "--json"]));
    assert!(json.trim_start().starts_with('{'), "{json}");
    // -v: every pass's changes; the default: a short summary.
    let verbose = ok(&mlc(&["-v", "compile", model, "-o", bundle]));
    let plain = ok(&mlc(&["compile", model, "-o", bundle]));
    assert!(verbose.contains("fold-constants"), "{verbose}");
    assert!(verbose.lines().count() > plain.lines().count());
    // Both at once: a usage error.
    assert_eq!(mlc(&["-q", "-v", "passes"]).status.code(), Some(2));
}

#[test]
fn a_batch_gives_the_same_outputs_whole_or_item_by_item() {
    let dir = scratch("items");
    let model = repo().join("fixtures/cnn/model.onnx");
    let run = |extra: &[&str], out: &str| {
        let path = dir.join(out);
        let mut args = vec![
            "run",
            model.to_str().unwrap(),
            "--random",
            "5",
            "--batch",
            "3",
            "--threads",
            "2",
            "-o",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&mlc(&args));
        mlc::formats::npy::read_npy(&path).unwrap()
    };
    let whole = run(&["--whole-batch"], "whole.npy");
    let items = run(&[], "items.npy");
    assert_eq!(whole.shape()[0], 3);
    common::compare(&items, &whole, 1e-5, 1e-6).unwrap();
    let out = ok(&mlc(&[
        "bench",
        model.to_str().unwrap(),
        "--batch",
        "3",
        "--runs",
        "1",
        "--whole-batch",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["item_steps"], 0, "{v}");
}

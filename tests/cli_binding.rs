//! One binder, one wording: the same mistake made through `run`, `bench`,
//! `compile` and `compress` gets the same error line (exit 2), and the line
//! lists what the model expects. A table of mistakes over the commands that
//! can make them.

use std::path::{Path, PathBuf};
use std::process::Command;

use mlc::formats::npy;
use mlc::{DType, Tensor};

const MODEL: &str = "fixtures/mlp/model.onnx"; // x: f32[batch,64] -> y: f32[batch,10]
const INPUTS: &str = "x: f32[batch,64]";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlc-cli-binding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn f32s(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), vec![0.25; n]).unwrap()
}

/// The error line of a failing command (exit 2, one line).
fn error_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    lines[0].trim_start_matches("error: ").to_string()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_same_mistake_reads_the_same_through_every_command() {
    let d = scratch();
    let write_npy = |name: &str, t: Tensor| {
        let path = d.join(name);
        npy::write_npy(&path, &t).unwrap();
        path
    };
    let write_npz = |name: &str, arrays: Vec<(&str, Tensor)>| {
        let path = d.join(name);
        let arrays: Vec<(String, Tensor)> = arrays
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        npy::write_npz(&path, &arrays).unwrap();
        path
    };
    let good = write_npy("good.npy", f32s(&[2, 64]));
    let ints = write_npy(
        "ints.npy",
        Tensor::from_i64(vec![2, 64], vec![1; 128]).unwrap(),
    );
    let wide = write_npy("wide.npy", f32s(&[2, 65]));
    // Calibration sets: samples along a first axis.
    let calib_unknown = write_npz(
        "unknown.npz",
        vec![("x", f32s(&[4, 2, 64])), ("nope", f32s(&[4, 2, 64]))],
    );
    let calib_missing = write_npz(
        "missing.npz",
        vec![("labels", Tensor::from_i64(vec![4], vec![0; 4]).unwrap())],
    );
    let calib_ints = write_npz(
        "ints.npz",
        vec![("x", Tensor::zeros(DType::I64, vec![4, 2, 64]))],
    );
    let calib_wide = write_npz("wide.npz", vec![("x", f32s(&[4, 2, 65]))]);
    let out = d.join("out.mlc");
    let o = p(&out);
    let compress = |calib: &Path| {
        vec![
            "compress",
            MODEL,
            "--int8",
            "-o",
            o,
            "--no-cache",
            "--calib",
            p(calib),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let input = |f: &Path| format!("x={}", p(f));

    let table: Vec<(&str, String, Vec<Vec<String>>)> = vec![
        (
            "unknown input",
            format!("input 'nope': the model has no input of this name (inputs: {INPUTS})"),
            vec![
                owned(&["run", MODEL, "--input", &format!("nope={}", p(&good))]),
                owned(&["bench", MODEL, "--runs", "1", "--input", &format!("nope={}", p(&good))]),
                compress(&calib_unknown),
            ],
        ),
        (
            "unknown dim",
            format!("dim 'sek': no input of the model has a dim of this name (dims: batch; inputs: {INPUTS})"),
            vec![
                owned(&["run", MODEL, "--random", "0", "--dim", "sek=8"]),
                owned(&["bench", MODEL, "--runs", "1", "--dim", "sek=8"]),
                owned(&["compile", MODEL, "-o", o, "--dim", "sek=8"]),
                owned(&["compile", MODEL, "-o", o, "--verify", "--dim", "sek=8"]),
                owned(&["compress", MODEL, "--int8", "-o", o, "--dim", "sek=8"]),
            ],
        ),
        (
            "missing input",
            format!("input 'x': no value given for this input (expects f32[batch,64]; the model's inputs: {INPUTS})"),
            vec![owned(&["run", MODEL]), compress(&calib_missing)],
        ),
        (
            "wrong dtype",
            "input 'x': expects f32[batch,64], got i64[2, 64]".to_string(),
            vec![
                owned(&["run", MODEL, "--input", &input(&ints)]),
                owned(&["run", MODEL, "--reference", "--input", &input(&ints)]),
                owned(&["bench", MODEL, "--runs", "1", "--input", &input(&ints)]),
                compress(&calib_ints),
            ],
        ),
        (
            "wrong shape",
            "input 'x': expects f32[batch,64], got f32[2, 65]".to_string(),
            vec![
                owned(&["run", MODEL, "--input", &input(&wide)]),
                owned(&["run", MODEL, "--reference", "--input", &input(&wide)]),
                owned(&["bench", MODEL, "--runs", "1", "--input", &input(&wide)]),
                compress(&calib_wide),
            ],
        ),
    ];
    for (mistake, want, commands) in &table {
        for args in commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(&error_of(&args), want, "{mistake} through {args:?}");
        }
        assert!(!out.exists(), "{mistake}: no output may be written");
    }
    std::fs::remove_dir_all(&d).ok();
}

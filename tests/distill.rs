#![cfg(feature = "distill")]
//! `mlc distill`: the candle lowering against the reference interpreter on
//! the digits models (dense, pruned, low-rank), a pruned student regaining
//! accuracy with its zeros kept, determinism, and the errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use mlc::api::Model;
use mlc::compress::data::Dataset;
use mlc::distill::lower::Lowered;

const BIN: &str = env!("CARGO_BIN_EXE_mlc");

fn digits(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/digits")
        .join(name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mlc-distill-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("a temp folder");
    d
}

fn mlc(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("mlc runs")
}

/// A compressed student of `model` made with `mlc compress` (`what`: its
/// flags).
fn student(dir: &Path, model: &str, what: &[&str], out: &str) -> PathBuf {
    let path = dir.join(out);
    let m = digits(model);
    let mut args = vec!["compress", m.to_str().unwrap()];
    args.extend_from_slice(what);
    args.extend_from_slice(&["--max-accuracy-drop", "100", "-o", path.to_str().unwrap()]);
    let o = mlc(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    path
}

/// The lowering's forward on 64 held-out samples equals the reference
/// interpreter's (1e-4 relative to the output's largest magnitude).
fn lowering_matches(model: &Path, eval: &str) {
    let mut m = Model::load(model).unwrap();
    if model.extension().is_some_and(|e| e == "onnx") {
        m.compile("O2").unwrap();
    }
    let g = m.graph();
    let mut data = Dataset::load(&digits(eval), g).unwrap();
    data.truncate(64);
    let x = data.arrays[0].clone();
    let want = mlc::interp::run(g, vec![x.clone()]).unwrap();
    let net = Lowered::new(g).unwrap();
    assert!(!net.params.is_empty());
    let xc = candle_core::Tensor::from_vec(
        x.as_f32().unwrap().to_vec(),
        x.shape().to_vec(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let got = net.forward(&[xc]).unwrap();
    let got: Vec<f32> = got[0].flatten_all().unwrap().to_vec1().unwrap();
    let want = want[0].as_f32().unwrap();
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(got.len(), want.len());
    assert!(
        worst <= 1e-4 * scale,
        "{}: max |candle - reference| = {worst} (scale {scale})",
        model.display()
    );
}

/// The digits CNN with 90% of every layer's weights pruned by magnitude
/// (no re-fit), written into `dir`.
fn pruned_cnn(dir: &Path) -> PathBuf {
    let args = [
        "--prune",
        "0.9",
        "--prune-allocation",
        "uniform",
        "--prune-update",
        "none",
    ];
    student(dir, "cnn.onnx", &args, "cnn90.mlc")
}

#[test]
fn lowering_matches_reference_on_digits() {
    let dir = temp_dir("lower");
    lowering_matches(&digits("cnn.onnx"), "eval_cnn.npz");
    lowering_matches(&digits("mlp.onnx"), "eval_mlp.npz");
    let pruned = pruned_cnn(&dir);
    lowering_matches(&pruned, "eval_cnn.npz");
    let lr = student(&dir, "cnn.onnx", &["--low-rank", "0.3"], "cnnlr.mlc");
    lowering_matches(&lr, "eval_cnn.npz");
    let lr = student(&dir, "mlp.onnx", &["--low-rank", "0.3"], "mlplr.mlc");
    lowering_matches(&lr, "eval_mlp.npz");
    std::fs::remove_dir_all(&dir).ok();
}

fn zero_positions(path: &Path) -> Vec<(String, Vec<usize>, usize)> {
    let m = Model::load(path).unwrap();
    let g = m.graph();
    g.consts
        .iter()
        .filter_map(|(&v, t)| {
            let d = t.as_f32()?;
            let zeros: Vec<usize> = (0..d.len()).filter(|&i| d[i] == 0.0).collect();
            Some((g.value(v).name.clone(), zeros, d.len()))
        })
        .collect()
}

#[test]
fn pruned_cnn_regains_accuracy_keeps_zeros_and_is_deterministic() {
    let dir = temp_dir("pruned");
    let pruned = pruned_cnn(&dir);
    let teacher = digits("cnn.onnx");
    let (calib, eval) = (digits("calib_cnn.npz"), digits("eval_cnn.npz"));
    let run = |out: &Path| {
        let o = mlc(&[
            "distill",
            pruned.to_str().unwrap(),
            "--teacher",
            teacher.to_str().unwrap(),
            "--data",
            calib.to_str().unwrap(),
            "--eval",
            eval.to_str().unwrap(),
            "--epochs",
            "12",
            "--seed",
            "7",
            "--json",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let (a, b) = (dir.join("a.mlc"), dir.join("b.mlc"));
    let report = run(&a);
    let before = report["before"]["accuracy"].as_f64().unwrap();
    let after = report["after"]["accuracy"].as_f64().unwrap();
    println!(
        "pruned-90% digits CNN, held-out top-1: {:.2}% -> {:.2}% ({} epochs, {:.1} s)",
        100.0 * before,
        100.0 * after,
        report["epochs_run"],
        report["seconds"].as_f64().unwrap()
    );
    assert!(after > before + 0.2, "{before} -> {after}");
    assert_eq!(report["masked_zeros"], report["zeros_after"]);
    // Every weight that was zero is zero, and no other.
    assert_eq!(zero_positions(&pruned), zero_positions(&a));
    // Same seed, same bytes.
    run(&b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mlp_distills_from_itself_without_loss() {
    let m = Model::load(digits("mlp.onnx")).unwrap();
    let opts = mlc::api::DistillOptions {
        epochs: 2,
        ..Default::default()
    };
    let out = m
        .distill(
            &m,
            &digits("calib_mlp.npz"),
            Some(&digits("eval_mlp.npz")),
            &opts,
            false,
        )
        .unwrap();
    assert!(out.report.after.top1_agreement >= out.report.before.top1_agreement);
    assert!(out.report.after.accuracy.unwrap() > 0.9);
}

fn assert_usage_error(args: &[&str], out: &Path, needle: &str) {
    let o = mlc(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(!out.exists());
}

#[test]
fn bad_input_exits_2_without_output() {
    let dir = temp_dir("bad");
    let out = dir.join("out.mlc");
    let o = out.to_str().unwrap();
    let (cnn, mlp) = (digits("cnn.onnx"), digits("mlp.onnx"));
    let (cnn, mlp) = (cnn.to_str().unwrap(), mlp.to_str().unwrap());
    let calib = digits("calib_cnn.npz");
    let calib = calib.to_str().unwrap();
    assert_usage_error(
        &["distill", cnn, "--teacher", mlp, "--data", calib, "-o", o],
        &out,
        "differ from the teacher's",
    );
    assert_usage_error(
        &[
            "distill",
            cnn,
            "--teacher",
            cnn,
            "--data",
            "/nonexistent/d.npz",
            "-o",
            o,
        ],
        &out,
        "/nonexistent/d.npz",
    );
    assert_usage_error(
        &[
            "distill",
            cnn,
            "--teacher",
            cnn,
            "--data",
            calib,
            "--labels",
            "-o",
            o,
        ],
        &out,
        "no 'labels'",
    );
    assert_usage_error(
        &[
            "distill",
            cnn,
            "--teacher",
            cnn,
            "--data",
            calib,
            "--lr",
            "0",
            "-o",
            o,
        ],
        &out,
        "--lr",
    );
    std::fs::remove_dir_all(&dir).ok();
}

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

// Quantization-aware training (`--qat`) of int8 students.

/// The digits `model` (cnn or mlp) made int8 by `mlc compress --int8` with
/// static scales calibrated on its calibration set (`extra`: more flags).
fn int8_student(dir: &Path, model: &str, extra: &[&str], out: &str) -> PathBuf {
    let calib = digits(&format!("calib_{model}.npz"));
    let mut args = vec![
        "--int8",
        "--calib",
        calib.to_str().unwrap(),
        "--no-speed-check",
        "--latency-runs",
        "0",
    ];
    args.extend_from_slice(extra);
    student(dir, &format!("{model}.onnx"), &args, out)
}

/// Index of the first largest value of each row of `[rows, c]`.
fn argmax_rows(v: &[f32], c: usize) -> Vec<usize> {
    v.chunks(c)
        .map(|r| (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b }))
        .collect()
}

/// The QAT lowering's fake-quantized forward pass of the int8 student at
/// `path`, on all 540 held-out digits, against mlc's runtime (its int8
/// kernels): float emulation of the integer arithmetic, so at least 99% of
/// the outputs must be within 1e-5 of the output's largest magnitude, and
/// the top-1 classes agree on at least 99% of the samples. Returns (share
/// of outputs within 1e-5, worst difference relative to that magnitude,
/// top-1 agreement).
fn qat_lowering_matches_runtime(path: &Path, eval: &str) -> (f64, f32, f64) {
    let m = Model::load(path).unwrap();
    let g = m.graph();
    let int8 = g
        .nodes()
        .filter(|(_, n)| mlc::distill::qat::is_int8_layer(&n.op))
        .count();
    assert!(int8 > 0, "{} has no int8 layer", path.display());
    let data = Dataset::load(&digits(eval), g).unwrap();
    let x = data.arrays[0].clone();
    let mut session = m
        .session(&mlc::api::SessionOptions {
            threads: 2,
            untuned: true,
        })
        .unwrap();
    let want = session.run_positional(std::slice::from_ref(&x)).unwrap();
    let want = want[0].as_f32().unwrap();
    let net = Lowered::with_qat(g, true).unwrap();
    assert_eq!(net.int8_layers(), int8);
    // Untrained, the weights write back as they were: the same int8 values
    // and the same scales, bit for bit.
    let mut scales = 0;
    for p in &net.params {
        let (t, s) = net.stored(p, p.var.as_tensor()).unwrap();
        let mut stored = vec![(p.value, t)];
        scales += s.is_some() as usize;
        stored.extend(s);
        for (v, t) in stored {
            let was = &g.consts[&v];
            assert_eq!(t.dtype(), was.dtype(), "{}", g.value(v).name);
            assert_eq!(t.to_f64_vec(), was.to_f64_vec(), "{}", g.value(v).name);
        }
    }
    assert_eq!(scales, int8);
    let xc = candle_core::Tensor::from_vec(
        x.as_f32().unwrap().to_vec(),
        x.shape().to_vec(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let got = net.forward(&[xc]).unwrap();
    let got: Vec<f32> = got[0].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    let close = got
        .iter()
        .zip(want)
        .filter(|(a, b)| (*a - *b).abs() <= 1e-5 * scale)
        .count() as f64
        / want.len() as f64;
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0f32, f32::max);
    let (ga, wa) = (argmax_rows(&got, 10), argmax_rows(want, 10));
    let agree = ga.iter().zip(&wa).filter(|(a, b)| a == b).count() as f64 / wa.len() as f64;
    println!(
        "{}: {int8} int8 layers; {:.3}% of outputs within 1e-5 of the runtime's, worst {worst:.2e}, top-1 agreement {:.2}%",
        path.display(),
        100.0 * close,
        100.0 * agree
    );
    assert!(close >= 0.99 && agree >= 0.99, "{close} {worst} {agree}");
    // On the digits models the emulation is exact: the deepest reduction
    // is 512 (the CNN's classifier), and 512 * 255 * 127 < 2^24, so every
    // f32 sum of the integer products is the int32 accumulator.
    assert_eq!(worst, 0.0, "{}", path.display());
    (close, worst, agree)
}

#[test]
fn qat_lowering_matches_the_int8_runtime_on_digits() {
    let dir = temp_dir("qat-lower");
    for model in ["cnn", "mlp"] {
        let eval = format!("eval_{model}.npz");
        let s = int8_student(&dir, model, &[], &format!("{model}8.mlc"));
        qat_lowering_matches_runtime(&s, &eval);
        // Full-range weights ([-127, 127]), one scale per tensor.
        let s = int8_student(
            &dir,
            model,
            &["--full-range", "--per-tensor"],
            &format!("{model}8t.mlc"),
        );
        qat_lowering_matches_runtime(&s, &eval);
        // Dynamic activation scales (per sample).
        let s = student(
            &dir,
            &format!("{model}.onnx"),
            &[
                "--int8",
                "--dynamic",
                "--no-speed-check",
                "--latency-runs",
                "0",
            ],
            &format!("{model}8d.mlc"),
        );
        qat_lowering_matches_runtime(&s, &eval);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The int8 layers of the bundle at `path`: (count, whether every weight
/// is stored i8).
fn int8_layers(path: &Path) -> (usize, bool) {
    let m = Model::load(path).unwrap();
    let g = m.graph();
    let layers: Vec<_> = g
        .nodes()
        .filter(|(_, n)| mlc::distill::qat::is_int8_layer(&n.op))
        .map(|(_, n)| g.consts[&n.input(1).unwrap()].dtype() == mlc::DType::I8)
        .collect();
    (layers.len(), layers.iter().all(|&b| b))
}

/// QAT of the digits CNN pruned to 90% (uniform, no re-fit) and made int8:
/// PTQ leaves it near chance, QAT brings it back; the result is an int8
/// bundle of the same layers and about the same size, its held-out
/// agreement measured on the int8 runtime is the one the fake-quantized
/// forward pass scored, and the same seed gives the same bytes.
#[test]
fn qat_recovers_a_pruned_int8_cnn_and_stays_int8() {
    let dir = temp_dir("qat-train");
    let s = int8_student(
        &dir,
        "cnn",
        &[
            "--prune",
            "0.9",
            "--prune-allocation",
            "uniform",
            "--prune-update",
            "none",
        ],
        "cnn90i8.mlc",
    );
    let teacher = digits("cnn.onnx");
    let (data, eval) = (digits("calib_cnn.npz"), digits("eval_cnn.npz"));
    let run = |out: &Path| {
        let o = mlc(&[
            "distill",
            s.to_str().unwrap(),
            "--teacher",
            teacher.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--eval",
            eval.to_str().unwrap(),
            "--qat",
            "--epochs",
            "12",
            "--lr",
            "1e-2",
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
    let r = run(&a);
    let f = |k: &str, v: &str| r[k][v].as_f64().unwrap();
    let (before, after) = (f("before", "accuracy"), f("after", "accuracy"));
    println!(
        "pruned-90% int8 digits CNN, QAT: held-out top-1 {:.2}% -> {:.2}%, agreement {:.2}% -> {:.2}% ({} epochs, {:.1} s)",
        100.0 * before,
        100.0 * after,
        100.0 * f("before", "top1_agreement"),
        100.0 * f("after", "top1_agreement"),
        r["epochs_run"],
        r["seconds"].as_f64().unwrap()
    );
    assert_eq!(r["qat"], true);
    assert_eq!(r["int8_layers"], 4);
    assert!(f("after", "top1_agreement") >= f("before", "top1_agreement"));
    assert!(after > before + 0.4, "{before} -> {after}");
    // The runtime's agreement with the teacher is the one the emulation
    // scored for the epoch kept.
    let best = r["best_epoch"].as_u64().unwrap() as usize;
    assert!(best > 0);
    let scored = r["eval_agreement"][best - 1].as_f64().unwrap();
    assert_eq!(scored, f("after", "top1_agreement"));
    // Still int8: the same layers, all stored i8, about the same size.
    assert_eq!(int8_layers(&a), int8_layers(&s));
    assert_eq!(int8_layers(&a), (4, true));
    let (sa, ss) = (
        std::fs::metadata(&a).unwrap().len() as f64,
        std::fs::metadata(&s).unwrap().len() as f64,
    );
    assert!((sa / ss - 1.0).abs() < 0.25, "{ss} -> {sa} bytes");
    let pipeline = Model::load(&a).unwrap().metadata().pipeline;
    assert!(
        pipeline.name.ends_with("+ distill --qat"),
        "{}",
        pipeline.name
    );
    // Pruned zeros stay zero.
    assert!(r["zeros_after"].as_u64() >= r["masked_zeros"].as_u64());
    // Same seed, same bytes.
    run(&b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn qat_errors_are_clear() {
    let dir = temp_dir("qat-bad");
    let out = dir.join("out.mlc");
    let o = out.to_str().unwrap();
    let cnn = digits("cnn.onnx");
    let cnn = cnn.to_str().unwrap();
    let calib = digits("calib_cnn.npz");
    let calib = calib.to_str().unwrap();
    // An int8 student without --qat: refused, pointing at --qat.
    let s = int8_student(&dir, "cnn", &[], "cnn8.mlc");
    let s = s.to_str().unwrap();
    assert_usage_error(
        &["distill", s, "--teacher", cnn, "--data", calib, "-o", o],
        &out,
        "QConv (node '/conv1/Conv') is not supported by the training lowering (an int8 layer: fine-tune an int8 student with --qat",
    );
    // --qat on an f32 student: refused (not a silent no-op).
    assert_usage_error(
        &[
            "distill",
            cnn,
            "--teacher",
            cnn,
            "--data",
            calib,
            "--qat",
            "-o",
            o,
        ],
        &out,
        "--qat fine-tunes int8 layers",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#![cfg(feature = "distill")]
//! `mlc distill`: the candle lowering against the reference interpreter on
//! the digits models (dense, pruned, low-rank) and on transformers (token
//! ids and a padding mask through the frozen path), gradients reaching the
//! trained weights, a pruned student regaining accuracy with its zeros kept,
//! an embedding student scored by cosine, determinism, and the errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor as CTensor;
use mlc::api::Model;
use mlc::compress::data::Dataset;
use mlc::distill::lower::{input_to_candle, Lowered};
use mlc::ir::{
    BinaryOp, DType, Dim, Graph, Node, Op, ReduceOp, Shape, TensorType, UnaryOp, ValueId,
};
use mlc::Tensor;

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
            ..Default::default()
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

/// Every output of `g` from the lowering equals the reference
/// interpreter's within 1e-4 of the output's largest magnitude.
fn forward_matches(g: &Graph, inputs: &[Tensor]) {
    let want = mlc::interp::run(g, inputs.to_vec()).unwrap();
    let net = Lowered::new(g).unwrap();
    let xs: Vec<CTensor> = inputs.iter().map(|t| input_to_candle(t).unwrap()).collect();
    let got = net.forward(&xs).unwrap();
    assert_eq!(got.len(), want.len());
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a.dims(), b.shape(), "output {k}");
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b = b.as_f32().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "output {k}: max |candle - reference| = {worst} (scale {scale})"
        );
    }
}

fn transformer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/transformer")
        .join(name)
}

/// The transformer fixture (PyTorch export: token and position embeddings,
/// Shape/Gather/Concat head reshapes, additive padding mask, 2 post-LN
/// layers), compiled with O2: i64 token ids and a padding mask go through
/// the frozen path, the rest through candle, and both outputs are the
/// reference's, on batches with padded rows.
#[test]
fn transformer_lowering_matches_reference() {
    let mut m = Model::load(transformer("model.onnx")).unwrap();
    m.compile("O2").unwrap();
    let g = m.graph();
    let net = Lowered::new(g).unwrap();
    let nodes = g.nodes().count();
    let live = net.differentiable_nodes();
    // Both parts are there: the embeddings and mask on the frozen side.
    assert!(
        live > 0 && live < nodes,
        "{live} of {nodes} nodes differentiable"
    );
    // Padded rows in the first two; another sequence length in the last.
    for (dir, padded) in [(".", true), ("batch3", true), ("seq5", false)] {
        let ids = mlc::api::npy::read_npy(&transformer(dir).join("input_input_ids.npy")).unwrap();
        let mask =
            mlc::api::npy::read_npy(&transformer(dir).join("input_attention_mask.npy")).unwrap();
        assert_eq!(ids.dtype(), DType::I64);
        assert_eq!(mask.as_i64().unwrap().contains(&0), padded, "{dir}");
        forward_matches(g, &[ids, mask]);
    }
}

fn seeded(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Builds graphs node by node (types inferred at the end).
struct Builder {
    g: Graph,
    n: usize,
}

impl Builder {
    fn f32(&mut self, name: &str, shape: Vec<usize>, scale: f32) -> ValueId {
        let n = shape.iter().product();
        let t = Tensor::from_f32(shape, seeded(n, self.g.values.len() as u64 + 1, scale));
        self.g.add_const(name, t.unwrap())
    }
    fn i64s(&mut self, name: &str, v: &[i64]) -> ValueId {
        self.g.add_const(name, Tensor::vec_i64(v.to_vec()))
    }
    fn node(&mut self, op: Op, inputs: &[Option<ValueId>]) -> ValueId {
        self.n += 1;
        let name = format!("{}_{}", op.onnx_type(), self.n);
        let y = self.g.add_value(
            format!("{name}_out"),
            TensorType::new(DType::F32, Shape(vec![])),
        );
        self.g.add_node(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs: vec![y],
        });
        y
    }
    fn op(&mut self, op: Op, inputs: &[ValueId]) -> ValueId {
        let inputs: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        self.node(op, &inputs)
    }
}

/// A small encoder with a sentence-embedding head, built with the IR:
/// token ids i64 and a padding mask i64 `[batch, 6]`; an embedding lookup
/// and the mask arithmetic (frozen); LayerNorm, projections, attention
/// scores between two activations, Where on the mask, softmax on two axes,
/// Slice with a step, Gather of activations, Concat, Squeeze/Unsqueeze,
/// ReduceMean, then masked mean pooling (Mul, ReduceSum, Clip, Div) and
/// L2 normalization (ReduceL2, Clip, Shape, Expand, Div), as MiniLM's ONNX
/// export does. Returns the graph and LayerNorm's scale and shift and the
/// projection weight.
fn embedding_graph() -> (Graph, [ValueId; 3]) {
    let mut b = Builder {
        g: Graph::new("encoder", 17),
        n: 0,
    };
    let ty = |dt| TensorType::new(dt, Shape(vec![Dim::sym("batch"), Dim::Known(6)]));
    let ids = b.g.add_input("input_ids", ty(DType::I64));
    let mask = b.g.add_input("attention_mask", ty(DType::I64));
    let table = b.f32("table", vec![10, 8], 1.0);
    let gamma = b.f32("gamma", vec![8], 1.0);
    let beta = b.f32("beta", vec![8], 0.5);
    let w = b.f32("w", vec![8, 8], 0.5);
    let bias = b.f32("bias", vec![8], 0.1);
    let (ax0, ax1, ax2) = (
        b.i64s("ax0", &[0]),
        b.i64s("ax1", &[1]),
        b.i64s("ax2", &[2]),
    );
    let neg = b.g.add_const("neg", Tensor::scalar_f32(-1e9));
    let tiny = b.g.add_const("tiny", Tensor::scalar_f32(1e-9));
    let lo = b.g.add_const("lo", Tensor::scalar_f32(1e-12));
    let hi = b.g.add_const("hi", Tensor::scalar_f32(0.9));

    let e = b.op(Op::Gather { axis: 0 }, &[table, ids]);
    let h = b.op(
        Op::LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
        },
        &[e, gamma, beta],
    );
    let q = b.op(
        Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act: Some(mlc::ir::Activation::Gelu { tanh_approx: false }),
        },
        &[h, w, bias],
    );
    let kt = b.op(
        Op::Transpose {
            perm: vec![0, 2, 1],
        },
        &[q],
    );
    let scores = b.op(Op::MatMul, &[q, kt]);
    // Frozen: mask -> bool [batch, 1, 6] (Cast, Unsqueeze), -> f32 [batch, 6, 1].
    let mb = b.op(
        Op::Cast {
            to: DType::Bool,
            saturate: true,
            round_mode: Default::default(),
        },
        &[mask],
    );
    let mb = b.op(Op::Unsqueeze, &[mb, ax1]);
    let masked = b.op(Op::Where, &[mb, scores, neg]);
    let p = b.op(
        Op::Softmax {
            axis: -1,
            legacy: false,
            nan_to_zero: false,
        },
        &[masked],
    );
    let ctx = b.op(Op::MatMul, &[p, h]);
    let ctx = b.op(Op::Binary(BinaryOp::Add), &[ctx, h]);
    let mf = b.op(Op::Unsqueeze, &[mask, ax2]);
    let mf = b.op(
        Op::Cast {
            to: DType::F32,
            saturate: true,
            round_mode: Default::default(),
        },
        &[mf],
    );
    let weighted = b.op(Op::Binary(BinaryOp::Mul), &[ctx, mf]);
    let summed = b.op(
        Op::Reduce {
            op: ReduceOp::Sum,
            keepdims: false,
            noop_with_empty_axes: false,
        },
        &[weighted, ax1],
    );
    let count = b.op(
        Op::Reduce {
            op: ReduceOp::Sum,
            keepdims: false,
            noop_with_empty_axes: false,
        },
        &[mf, ax1],
    );
    let count = b.node(Op::Clip, &[Some(count), Some(tiny), None]);
    let pooled = b.op(Op::Binary(BinaryOp::Div), &[summed, count]);
    let norm = b.op(
        Op::Reduce {
            op: ReduceOp::L2,
            keepdims: true,
            noop_with_empty_axes: false,
        },
        &[pooled, ax1],
    );
    let norm = b.node(Op::Clip, &[Some(norm), Some(lo), None]);
    let shape = b.op(
        Op::Shape {
            start: 0,
            end: None,
        },
        &[pooled],
    );
    let norm = b.op(Op::Expand, &[norm, shape]);
    let embedding = b.op(Op::Binary(BinaryOp::Div), &[pooled, norm]);

    // A second output through the other data-movement ops.
    let (starts, ends, steps) = (b.i64s("s", &[1]), b.i64s("e", &[6]), b.i64s("st", &[2]));
    let sl = b.op(Op::Slice, &[ctx, starts, ends, ax1, steps]); // [batch, 3, 8]
    let pick = b.i64s("pick", &[0, -1]);
    let ga = b.op(Op::Gather { axis: 1 }, &[ctx, pick]); // [batch, 2, 8]
    let cat = b.op(Op::Concat { axis: 1 }, &[sl, ga]); // [batch, 5, 8]
    let sm = b.op(
        Op::Softmax {
            axis: 1,
            legacy: false,
            nan_to_zero: true,
        },
        &[cat],
    );
    let un = b.op(Op::Unsqueeze, &[sm, ax0]); // [1, batch, 5, 8]
    let sq = b.op(Op::Squeeze, &[un, ax0]);
    let mean = b.op(
        Op::Reduce {
            op: ReduceOp::Mean,
            keepdims: false,
            noop_with_empty_axes: false,
        },
        &[sq, ax2],
    );
    let aux = b.node(Op::Clip, &[Some(mean), None, Some(hi)]);
    let aux = b.op(Op::Unary(UnaryOp::Tanh), &[aux]);
    b.g.outputs = vec![embedding, aux];
    mlc::ir::infer::infer_graph(&mut b.g).unwrap();
    (b.g, [gamma, beta, w])
}

fn token_batch() -> [Tensor; 2] {
    let ids = vec![1, 4, 9, 2, 0, 0, 3, 3, 7, 5, 8, 6, 2, 9, 0, 0, 0, 0];
    let mask = vec![1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0];
    [
        Tensor::from_i64(vec![3, 6], ids).unwrap(),
        Tensor::from_i64(vec![3, 6], mask).unwrap(),
    ]
}

/// The embedding head's forward is the reference interpreter's, the mask
/// path frozen and the padded tokens left out of the pooling.
#[test]
fn embedding_head_matches_reference() {
    let (g, _) = embedding_graph();
    let net = Lowered::new(&g).unwrap();
    // gamma, beta, w, bias.
    assert_eq!(net.params.len(), 4);
    forward_matches(&g, &token_batch());
}

/// A gradient of a loss on the embedding reaches LayerNorm's scale and
/// shift and the projection weight (nonzero, finite), through attention,
/// pooling and normalization.
#[test]
fn gradient_reaches_layernorm_and_matmul_weights() {
    let (g, watched) = embedding_graph();
    let net = Lowered::new(&g).unwrap();
    let xs: Vec<CTensor> = token_batch()
        .iter()
        .map(|t| input_to_candle(t).unwrap())
        .collect();
    let out = net.forward(&xs).unwrap();
    // A fixed random direction: the squared norm of a normalized embedding
    // would have no gradient at all.
    let dir = CTensor::from_vec(seeded(24, 99, 1.0), (3, 8), &candle_core::Device::Cpu).unwrap();
    let loss = out[0].mul(&dir).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for v in watched {
        let p = net.params.iter().find(|p| p.value == v).unwrap();
        let gr = grads
            .get(p.var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for '{}'", g.value(v).name));
        let gv: Vec<f32> = gr.flatten_all().unwrap().to_vec1().unwrap();
        let norm: f32 = gv.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            norm.is_finite() && norm > 1e-6,
            "'{}': gradient norm {norm}",
            g.value(v).name
        );
    }
}

/// An op the lowering does not cover, on the differentiable path, is one
/// clear error naming the op and the node, from the library and from the
/// command line (exit 2, one line, nothing written).
#[test]
fn uncovered_op_is_one_clear_error() {
    let (mut g, _) = embedding_graph();
    let emb = g.outputs[0];
    let y = g.add_value("y", TensorType::new(DType::F32, Shape(vec![])));
    g.add_node(Node {
        name: "the_hardmax".into(),
        op: Op::Hardmax { axis: -1 },
        inputs: vec![Some(emb)],
        outputs: vec![y],
    });
    g.outputs = vec![y];
    mlc::ir::infer::infer_graph(&mut g).unwrap();
    let want = "distill: op Hardmax (node 'the_hardmax') is not supported by the training lowering";
    assert_eq!(Lowered::new(&g).err().unwrap().to_string(), want);

    let dir = temp_dir("uncovered");
    let (model, data, out) = (dir.join("m.mlc"), dir.join("d.npz"), dir.join("o.mlc"));
    Model::from_graph(g)
        .write(&model, mlc::api::Format::Bundle)
        .unwrap();
    let [ids, mask] = token_batch();
    mlc::api::write_tensors(
        &data,
        &[("input_ids".into(), ids), ("attention_mask".into(), mask)],
    )
    .unwrap();
    let (m, d, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    assert_usage_error(
        &["distill", m, "--teacher", m, "--data", d, "-o", o],
        &out,
        "op Hardmax (node 'the_hardmax') is not supported",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `n` token-id samples `[n, 6]` (ids below 10) with padding masks of 2 to
/// 6 tokens, written to `path`.
fn token_data(path: &Path, n: usize, seed: u64) {
    let r = seeded(2 * n * 6, seed, 1.0);
    let mut ids = Vec::with_capacity(n * 6);
    let mut mask = Vec::with_capacity(n * 6);
    for i in 0..n {
        let len = 2 + ((r[i].abs() * 5.0) as i64).min(4);
        for j in 0..6 {
            ids.push(((r[n * 6 + i * 6 + j].abs() * 10.0) as i64).min(9));
            mask.push(i64::from((j as i64) < len));
        }
    }
    mlc::api::write_tensors(
        path,
        &[
            (
                "input_ids".into(),
                Tensor::from_i64(vec![n, 6], ids).unwrap(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_i64(vec![n, 6], mask).unwrap(),
            ),
        ],
    )
    .unwrap();
}

/// A student of the embedding encoder with a perturbed projection is
/// trained on 1 - cosine (its output is L2-normalized), picked by mean
/// cosine, and comes closer to the teacher on held-out token batches, mean
/// and worst sample.
#[test]
fn embedding_student_is_trained_on_cosine() {
    let dir = temp_dir("embedding");
    let (mut g, [_, _, w]) = embedding_graph();
    g.outputs.truncate(1);
    let teacher = Model::from_graph(g.clone());
    let t = g.consts[&w].as_f32().unwrap().to_vec();
    let noise = seeded(t.len(), 5, 2.0);
    let noisy: Vec<f32> = t.iter().zip(&noise).map(|(a, b)| a + b).collect();
    g.consts.insert(
        w,
        std::sync::Arc::new(Tensor::from_f32(vec![8, 8], noisy).unwrap()),
    );
    let student = Model::from_graph(g);
    let (train, eval) = (dir.join("train.npz"), dir.join("eval.npz"));
    token_data(&train, 128, 11);
    token_data(&eval, 64, 12);
    let opts = mlc::api::DistillOptions {
        epochs: 6,
        lr: 1e-2,
        batch: 16,
        ..Default::default()
    };
    let r = student
        .distill(&teacher, &train, Some(&eval), &opts, false)
        .unwrap()
        .report;
    assert_eq!(r.losses, [mlc::distill::Loss::Cosine]);
    assert_eq!(r.selected_by, "mean cosine");
    assert_eq!(r.eval_cosine.len(), r.epochs_run);
    let (b, a) = (&r.before, &r.after);
    println!(
        "embedding student: cosine mean {:.4} -> {:.4}, min {:.4} -> {:.4}",
        b.cosine_similarity, a.cosine_similarity, b.min_cosine_similarity, a.min_cosine_similarity
    );
    assert!(b.cosine_similarity < 0.99, "{b:?}");
    assert!(
        a.cosine_similarity > b.cosine_similarity + 0.005,
        "{b:?} -> {a:?}"
    );
    assert!(
        a.min_cosine_similarity > b.min_cosine_similarity,
        "{b:?} -> {a:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

//! Kernel choices and `mlc tune`: every choice the runtime offers for a
//! node agrees with the reference interpreter (f32 convolutions by every
//! algorithm, int8 layers on the int8 and on the f32 kernels); tuned
//! bundles carry their choices and are byte-identical given the same
//! tuning database.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use mlc::compress::quantize::{find_layers, quantize_layer, Granularity, WeightFormat};
use mlc::inputs::random_inputs;
use mlc::ir::{ActQuant, Graph};
use mlc::kernels::cpu::choice::{Choice, ConvAlgo, QuantRun};
use mlc::kernels::cpu::{CpuCtx, Features};
use mlc::runtime::{Choices, PackCache, Plan};
use mlc::transform::recipe::Recipe;
use mlc::transform::runner::{self, RunOptions};
use mlc::transform::specialize::specialize;
use mlc::tune::check_choice;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn o2(path: &str) -> Graph {
    let mut g = mlc::formats::load(&repo().join(path)).unwrap();
    runner::run(
        &mut g,
        &Recipe::resolve("O2").unwrap(),
        &RunOptions::default(),
    )
    .unwrap();
    g
}

/// `g` with every product quantized to int8: activations with `act`.
fn quantized(g: &Graph, act: ActQuant) -> Graph {
    let mut q = g.clone();
    let format = WeightFormat {
        granularity: Granularity::PerChannel,
        reduce_range: false,
    };
    for layer in find_layers(g) {
        quantize_layer(&mut q, &layer, act, format).unwrap();
    }
    q
}

/// Checks every choice of every node of `g` (specialized to batch
/// `batch`) against the reference; returns how many were checked.
fn check_all(what: &str, g: &Graph, batch: usize, cx: &CpuCtx) -> usize {
    let dims: BTreeMap<String, usize> = [("batch".to_string(), batch)].into();
    let feed = random_inputs(g, 1, &dims).unwrap();
    let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
    let spec = specialize(g, &shapes).unwrap();
    let plan = Plan::with_packs(spec.clone(), cx.clone(), &PackCache::default()).unwrap();
    let mut checked = 0;
    for step in plan.steps() {
        let node = spec
            .nodes()
            .map(|(_, n)| n)
            .find(|n| n.name == step.node)
            .unwrap();
        for &c in step.choices.iter().skip(1) {
            if let Err(why) = check_choice(&spec, node, c, cx, 7) {
                panic!("{what}: node '{}' with {c}: {why}", node.name);
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_choice_of_every_node_matches_the_reference() {
    let cnn = o2("fixtures/digits/cnn.onnx");
    let mlp = o2("fixtures/digits/mlp.onnx");
    let statically = ActQuant::Static {
        scale: 0.02,
        zero_point: 128,
    };
    let contexts = [
        CpuCtx::single(Features::detect()),
        CpuCtx::single(Features::avx2_only()),
        CpuCtx::single(Features::portable()),
        // Two threads: the threads=1 choice too.
        CpuCtx::new(2).unwrap(),
    ];
    for cx in contexts {
        for batch in [1, 3] {
            let n = check_all("cnn", &cnn, batch, &cx);
            assert!(n >= 3, "cnn: only {n} choices");
            for (label, act) in [("dynamic", ActQuant::Dynamic), ("static", statically)] {
                let q = quantized(&cnn, act);
                let n = check_all(&format!("int8 cnn ({label})"), &q, batch, &cx);
                assert!(n >= 3, "int8 cnn: only {n} choices");
                let q = quantized(&mlp, act);
                let n = check_all(&format!("int8 mlp ({label})"), &q, batch, &cx);
                assert!(n >= 1, "int8 mlp: only {n} choices");
            }
        }
    }
}

/// `g` with about 90% of every constant weight of 64 values or more set
/// to zero (as a pruning pass leaves them).
fn pruned(g: &Graph) -> Graph {
    let mut p = g.clone();
    let ids: Vec<_> = g
        .nodes()
        .flat_map(|(_, n)| n.inputs.iter().flatten().copied().collect::<Vec<_>>())
        .filter(|&v| g.const_value(v).is_some_and(|t| t.numel() >= 64))
        .collect();
    for v in ids {
        let t = g.const_value(v).unwrap();
        let Some(data) = t.as_f32() else { continue };
        let data = data
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 10 == 0 { x } else { 0.0 })
            .collect();
        let t = mlc::ir::Tensor::from_f32(t.shape().to_vec(), data).unwrap();
        let name = format!("{}_pruned", g.value(v).name);
        let new = p.add_const(name, t);
        p.replace_uses(v, new);
    }
    p
}

#[test]
fn pruned_weights_offer_the_sparse_kernels_and_they_match_the_reference() {
    let cnn = pruned(&o2("fixtures/digits/cnn.onnx"));
    let mlp = pruned(&o2("fixtures/digits/mlp.onnx"));
    let statically = ActQuant::Static {
        scale: 0.02,
        zero_point: 128,
    };
    // Pruned, then int8: the int8 sparse kernel.
    let cnn8 = quantized(&cnn, statically);
    let mlp8 = quantized(&mlp, ActQuant::Dynamic);
    for cx in [
        CpuCtx::single(Features::detect()),
        CpuCtx::single(Features::avx2_only()),
        CpuCtx::single(Features::portable()),
        CpuCtx::new(2).unwrap(),
    ] {
        for (what, g) in [
            ("pruned cnn", &cnn),
            ("pruned mlp", &mlp),
            ("pruned int8 cnn", &cnn8),
            ("pruned int8 mlp", &mlp8),
        ] {
            let dims: BTreeMap<String, usize> = [("batch".to_string(), 3)].into();
            let feed = random_inputs(g, 1, &dims).unwrap();
            let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
            let spec = specialize(g, &shapes).unwrap();
            let plan = Plan::with_packs(spec.clone(), cx.clone(), &PackCache::default()).unwrap();
            // The defaults (sparse for these densities) too.
            for step in plan.steps() {
                let node = spec.nodes().map(|(_, n)| n).find(|n| n.name == step.node);
                if let Err(why) = check_choice(&spec, node.unwrap(), Choice::default(), &cx, 7) {
                    panic!("{what}: node '{}' by default: {why}", step.node);
                }
            }
            // Density 0.1: the sparse kernels are the default or a
            // candidate of every product with a constant weight.
            let sparse = plan
                .steps()
                .iter()
                .flat_map(|s| s.choices.clone())
                .filter(|c| c.to_string().contains("sparse"))
                .count();
            let n = check_all(what, g, 3, &cx);
            assert!(n >= 1, "{what}: only {n} choices");
            assert!(sparse >= 1, "{what}: no sparse choice");
            if what.contains("int8") {
                // The int8 layers (but the CNN's first, one input channel:
                // the direct loop) offer the int8 sparse kernel or, where
                // it is their default, the dense one; check_all ran both.
                let offered = plan
                    .steps()
                    .iter()
                    .filter(|s| s.exec == mlc::runtime::ExecKind::Int8)
                    .filter(|s| {
                        s.choices
                            .iter()
                            .any(|c| c.sparse.is_some() && c.run.is_none())
                    })
                    .count();
                assert!(offered >= 2, "{what}: {offered} int8 steps offer sparse=");
            }
        }
    }
}

/// The digits CNN quantized to int8 with static activations (so that
/// consecutive layers hand each other u8), specialized to `batch`, and
/// seeded inputs for it.
fn static_int8_digits(batch: usize, seed: u64) -> (Graph, Vec<mlc::ir::Tensor>) {
    let cnn = o2("fixtures/digits/cnn.onnx");
    let q = quantized(
        &cnn,
        ActQuant::Static {
            scale: 0.05,
            zero_point: 100,
        },
    );
    let dims: BTreeMap<String, usize> = [("batch".to_string(), batch)].into();
    let feed = random_inputs(&q, seed, &dims).unwrap();
    let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
    (specialize(&q, &shapes).unwrap(), feed)
}

#[test]
fn int8_layers_on_the_f32_kernels_keep_their_u8_edges_and_outputs() {
    // Every layer on the f32 kernels, with static activations so that
    // consecutive layers hand each other u8: within rounding of the int8
    // plan (a requantized value may land one step apart).
    let (spec, feed) = static_int8_digits(4, 3);
    let cx = CpuCtx::single(Features::detect());
    let packs = PackCache::default();
    let mut int8 = Plan::with_packs(spec.clone(), cx.clone(), &packs).unwrap();
    let f32_run = Choice {
        run: Some(QuantRun::F32),
        ..Choice::default()
    };
    let choices: Choices = int8
        .steps()
        .iter()
        .filter(|s| s.choices.contains(&f32_run))
        .map(|s| (s.node.clone(), f32_run))
        .collect();
    assert!(choices.len() >= 3, "{choices:?}");
    let mut f32 = Plan::with_choices(spec, cx, &packs, &choices).unwrap();
    for s in f32.steps() {
        if choices.contains_key(&s.node) {
            assert_eq!(s.choice, f32_run, "{}", s.node);
        }
    }
    let (a, b) = (int8.run(&feed).unwrap(), f32.run(&feed).unwrap());
    let (a, b) = (a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 0.05 * scale,
            "{x} vs {y} (max |y| {scale})"
        );
    }
}

#[test]
fn int8_convolutions_offer_the_gemm_beside_the_indirect_kernel() {
    // On AVX512-VNNI a 3x3 int8 convolution runs the indirect kernel
    // (output channels in the lanes) by default and lists the im2col GEMM
    // (`conv=gemm`) as its alternative: both give the same bits.
    if !Features::detect().avx512vnni {
        eprintln!("skipped: CPU lacks AVX512-VNNI");
        return;
    }
    let (spec, feed) = static_int8_digits(3, 5);
    let gemm = Choice {
        conv: Some(ConvAlgo::Gemm),
        ..Choice::default()
    };
    for cx in [CpuCtx::single(Features::detect()), CpuCtx::new(2).unwrap()] {
        let packs = PackCache::default();
        let mut indirect = Plan::with_packs(spec.clone(), cx.clone(), &packs).unwrap();
        let choices: Choices = indirect
            .steps()
            .iter()
            .filter(|s| s.choices.contains(&gemm))
            .map(|s| (s.node.clone(), gemm))
            .collect();
        assert!(!choices.is_empty(), "no int8 convolution offers conv=gemm");
        let mut im2col = Plan::with_choices(spec.clone(), cx, &packs, &choices).unwrap();
        let (a, b) = (indirect.run(&feed).unwrap(), im2col.run(&feed).unwrap());
        assert_eq!(a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
    }
}

fn mlc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .env_remove("MLC_TUNING_DB")
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("mlc-tune-test-no-cache"),
        )
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    common::stdout_of_success(out)
}

#[test]
fn tune_writes_a_bundle_with_its_choices_and_the_same_records_give_the_same_bytes() {
    let dir = common::scratch("mlc-tune", "bundle");
    let model = repo().join("fixtures/digits/cnn.onnx");
    let db = dir.join("db.jsonl");
    let (a, b) = (dir.join("a.mlc"), dir.join("b.mlc"));
    let tune = |out: &PathBuf| {
        let out = mlc(&[
            "tune",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--threads",
            "1",
            "--budget",
            "3s",
            "--db",
            db.to_str().unwrap(),
            "--json",
        ]);
        serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap()
    };
    let first = tune(&a);
    let nodes = first["nodes"].as_array().unwrap();
    assert!(nodes.len() >= 3, "{first}");
    for n in nodes {
        assert_eq!(n["source"], "measured", "{n}");
        assert!(n["candidates"].as_array().unwrap().len() >= 2, "{n}");
    }
    for f in ["a.mlc.tune.json", "a.mlc.tune.md", "a.mlc.tune.html"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let records = std::fs::read_to_string(&db).unwrap();
    assert_eq!(records.lines().count(), nodes.len(), "{records}");

    // The second run measures nothing: every node from the database.
    let second = tune(&b);
    for n in second["nodes"].as_array().unwrap() {
        assert_eq!(n["source"], "database", "{n}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // The bundle runs with its choices (bench says how many), and gives
    // the untuned outputs.
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", a.to_str().unwrap(), "--runs", "2", "--json"];
        args.extend(extra);
        serde_json::from_str::<serde_json::Value>(&ok(&mlc(&args))).unwrap()
    };
    let kept = first["kept"].as_bool().unwrap();
    let tuned_nodes = bench(&[])["tuned_nodes"].as_u64().unwrap();
    let chosen = first["choices"].as_object().unwrap().len() as u64;
    assert_eq!(tuned_nodes, chosen, "kept {kept}");
    assert_eq!(bench(&["--untuned"])["tuned_nodes"], 0);
    let verify = bench(&["--verify"]);
    assert_eq!(verify["verify"]["ok"], true, "{verify}");

    // Another target needs the cost model: a clear error.
    let out = mlc(&[
        "tune",
        model.to_str().unwrap(),
        "-o",
        dir.join("c.mlc").to_str().unwrap(),
        "--target",
        "cortex-a76",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cost model"));
    assert!(!dir.join("c.mlc").exists());
}

#[test]
fn another_target_is_tuned_by_the_cost_model_and_marked_estimated() {
    use mlc::measure::Timing;
    use mlc::tune::cost::Features;
    use mlc::tune::db::{Db, Measured, Record, KERNELS};
    let dir = common::scratch("mlc-tune", "estimated");
    let db_path = dir.join("db.jsonl");
    // Measurements of this machine (made up, as if tuned here): the
    // transposed product is the cheaper convolution per flop.
    let t = |ms: f64| Timing {
        median_ms: ms,
        p10_ms: ms,
        p90_ms: ms,
        runs: 10,
    };
    let mut db = Db::open(&db_path).unwrap();
    let records = (1..=30)
        .map(|i| {
            let flops = 1e6 * i as f64;
            Record {
                workload: format!("FusedConv {{ made up {i} }}(f32[1,8,8,8])"),
                target: mlc::tune::host_fingerprint(),
                threads: 1,
                kernels: KERNELS.into(),
                candidates: vec![
                    Measured::new(Choice::default(), &t(2e-6 * flops)),
                    Measured::new("conv=transposed".parse().unwrap(), &t(1e-6 * flops)),
                    Measured::new("conv=gemm".parse().unwrap(), &t(3e-6 * flops)),
                ],
                choice: "conv=transposed".parse().unwrap(),
                features: Some(Features { flops, bytes: 1e4 }),
            }
        })
        .collect();
    db.append(records).unwrap();
    let model = repo().join("fixtures/digits/cnn.onnx");
    let out = dir.join("a76.mlc");
    let run = mlc(&[
        "tune",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--threads",
        "1",
        "--target",
        "cortex-a76",
        "--db",
        db_path.to_str().unwrap(),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&ok(&run)).unwrap();
    assert_eq!(r["estimated"], true);
    assert_eq!(r["target"], "cortex-a76");
    let acc = &r["cost_model"];
    assert!(acc["rank_correlation"].as_f64().unwrap() > 0.9, "{acc}");
    for n in r["nodes"].as_array().unwrap() {
        assert_eq!(n["source"], "estimated", "{n}");
    }
    // The transposed product wherever the target's kernels offer it.
    let choices = r["choices"].as_object().unwrap();
    assert!(!choices.is_empty(), "{r}");
    assert!(
        choices.values().all(|c| c == "conv=transposed"),
        "{choices:?}"
    );
    let md = std::fs::read_to_string(dir.join("a76.mlc.tune.md")).unwrap();
    assert!(md.contains("**Estimated.**"), "{md}");
    // The bundle says so, and runs with its choices.
    let info = mlc(&["inspect", out.to_str().unwrap(), "--json"]);
    ok(&info);
    let bench = mlc(&[
        "bench",
        out.to_str().unwrap(),
        "--runs",
        "1",
        "--verify",
        "--json",
    ]);
    let b: serde_json::Value = serde_json::from_str(&ok(&bench)).unwrap();
    assert_eq!(b["verify"]["ok"], true, "{b}");
    // No records for the thread count asked: a clear error.
    let none = mlc(&[
        "tune",
        model.to_str().unwrap(),
        "-o",
        dir.join("b.mlc").to_str().unwrap(),
        "--threads",
        "2",
        "--target",
        "cortex-a76",
        "--db",
        db_path.to_str().unwrap(),
    ]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("cost model"));
}

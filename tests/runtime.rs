//! The CPU runtime against the reference interpreter: every fixture (as
//! imported and after O2) and seeded random graphs give the interpreter's
//! outputs at several batch sizes; the memory plan reuses buffers, plans
//! in-place work only where the input dies; thread counts agree; and
//! `mlc bench --json` reports what it promises.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use mlc::inputs::{random_inputs, SplitMix64};
use mlc::ir::{
    BinaryOp, DType, Dim, EwArg, EwStep, Graph, Node, Op, Shape, Tensor, TensorType, UnaryOp,
    ValueId,
};
use mlc::kernels::cpu::{CpuCtx, Features};
use mlc::runtime::{ExecKind, Plan};
use mlc::transform::recipe::Recipe;
use mlc::transform::runner::{self, RunOptions};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

fn fixture(name: &str) -> Graph {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .join("model.onnx");
    mlc::formats::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn o2(g: &Graph) -> Graph {
    let mut g = g.clone();
    runner::run(
        &mut g,
        &Recipe::resolve("O2").unwrap(),
        &RunOptions::default(),
    )
    .unwrap();
    g
}

fn single() -> CpuCtx {
    CpuCtx::single(Features::detect())
}

/// Plans `g` for `inputs`, runs it twice (the second run reuses the arena
/// holding the first run's values) and compares both with the interpreter.
fn check_against_interp(what: &str, g: &Graph, inputs: &[Tensor], cx: CpuCtx) -> Plan {
    let want = mlc::interp::run(g, inputs.to_vec()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let mut plan = plan_for(g, &shapes, cx).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
    for round in 0..2 {
        let got = plan
            .run(inputs)
            .unwrap_or_else(|e| panic!("{what}: run: {e}"));
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            if let Err(m) = common::compare(a, b, RTOL, ATOL) {
                panic!("{what}: output {i} (run {round}): {m}");
            }
        }
    }
    plan
}

fn dims(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Every step that reuses an input's buffer is that input's last reader and
/// the input is not a graph output; and every step the plan marks fast or
/// reference writes buffers no input of it occupies.
fn check_reuse_is_legal(plan: &Plan) {
    let steps = plan.steps();
    let g = plan.graph();
    for (t, s) in steps.iter().enumerate() {
        if let Some(v) = s.reuses {
            assert!(
                matches!(s.exec, ExecKind::InPlace | ExecKind::Alias),
                "{}",
                s.node
            );
            assert!(!g.outputs.contains(&v), "{} reuses a graph output", s.node);
            assert_eq!(
                s.inputs.iter().filter(|i| **i == Some(v)).count(),
                1,
                "{} reads its reused input twice",
                s.node
            );
            for later in &steps[t + 1..] {
                assert!(
                    !later.inputs.contains(&Some(v)),
                    "{} reuses {v}, which {} still reads",
                    s.node,
                    later.node
                );
            }
            assert_eq!(plan.buffer(v), plan.buffer(s.outputs[0]));
        }
        // Outputs never overlap a live input's buffer otherwise.
        for &o in &s.outputs {
            let Some(ro) = plan.buffer(o) else { continue };
            for &i in s.inputs.iter().flatten() {
                if Some(i) == s.reuses {
                    continue;
                }
                if let Some(ri) = plan.buffer(i) {
                    let overlap = ro.start < ri.end && ri.start < ro.end;
                    assert!(
                        !overlap || ro.is_empty() || ri.is_empty(),
                        "{}: output {o} overlaps input {i}",
                        s.node
                    );
                }
            }
        }
    }
}

#[test]
fn mlp_matches_interpreter_at_several_batches() {
    let g = fixture("mlp");
    for (label, graph) in [("mlp", g.clone()), ("mlp O2", o2(&g))] {
        for batch in [1, 2, 3, 8] {
            let ins = random_inputs(&graph, batch as u64, &dims(&[("batch", batch)])).unwrap();
            let plan =
                check_against_interp(&format!("{label} batch {batch}"), &graph, &ins, single());
            check_reuse_is_legal(&plan);
        }
    }
}

#[test]
fn cnn_matches_interpreter_at_several_batches() {
    let g = fixture("cnn");
    for (label, graph) in [("cnn", g.clone()), ("cnn O2", o2(&g))] {
        for batch in [1, 2, 3] {
            let ins = random_inputs(&graph, 10 + batch as u64, &dims(&[("batch", batch)])).unwrap();
            let plan =
                check_against_interp(&format!("{label} batch {batch}"), &graph, &ins, single());
            check_reuse_is_legal(&plan);
        }
    }
}

#[test]
fn transformer_matches_interpreter_at_several_shapes() {
    let g = fixture("transformer");
    for (label, graph) in [("transformer", g.clone()), ("transformer O2", o2(&g))] {
        for (batch, seq) in [(1, 5), (2, 16), (3, 7)] {
            let ins = random_inputs(
                &graph,
                20 + batch as u64,
                &dims(&[("batch", batch), ("seq", seq)]),
            )
            .unwrap();
            let plan = check_against_interp(
                &format!("{label} batch {batch} seq {seq}"),
                &graph,
                &ins,
                single(),
            );
            check_reuse_is_legal(&plan);
        }
    }
}

#[test]
fn fixture_inputs_give_the_recorded_outputs() {
    // The recorded ONNX Runtime outputs, through the plan.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cnn");
    let g = fixture("cnn");
    let x = mlc::formats::npy::read_npy(&dir.join("input_x.npy")).unwrap();
    let want = mlc::formats::npy::read_npy(&dir.join("expected_logits.npy")).unwrap();
    let mut plan = plan_for(&o2(&g), &[x.shape().to_vec()], single()).unwrap();
    let got = plan.run(&[x]).unwrap();
    common::compare(&got[0], &want, RTOL, ATOL).unwrap();
}

#[test]
fn transformer_arena_reuses_memory_and_plans_in_place_work() {
    let g = o2(&fixture("transformer"));
    let plan = plan_for(&g, &[vec![2, 16], vec![2, 16]], single()).unwrap();
    let s = plan.stats();
    assert!(
        s.arena_bytes < s.unshared_bytes,
        "no reuse: arena {} vs unshared {}",
        s.arena_bytes,
        s.unshared_bytes
    );
    assert!(s.reuse_ratio > 1.5, "{s:?}");
    assert!(s.arena_bytes >= s.live_peak_bytes);
    assert!(s.in_place_nodes + s.aliased_nodes > 0, "{s:?}");
    assert_eq!(s.arena_bytes % 64, 0);
    check_reuse_is_legal(&plan);
}

#[test]
fn thread_counts_agree() {
    for name in ["cnn", "transformer"] {
        let g = o2(&fixture(name));
        let d = dims(&[("batch", 2), ("seq", 8)]);
        let ins = random_inputs(&g, 5, &d).unwrap();
        let shapes: Vec<Vec<usize>> = ins.iter().map(|t| t.shape().to_vec()).collect();
        let mut one = plan_for(&g, &shapes, CpuCtx::new(1).unwrap()).unwrap();
        let mut two = plan_for(&g, &shapes, CpuCtx::new(2).unwrap()).unwrap();
        assert_eq!(two.threads(), 2);
        let a = one.run(&ins).unwrap();
        let b = two.run(&ins).unwrap();
        for (x, y) in a.iter().zip(&b) {
            common::compare(x, y, 1e-5, 1e-6).unwrap_or_else(|m| panic!("{name}: {m}"));
        }
    }
}

#[test]
fn portable_kernels_match_too() {
    let g = o2(&fixture("cnn"));
    let ins = random_inputs(&g, 3, &dims(&[("batch", 2)])).unwrap();
    check_against_interp(
        "cnn portable",
        &g,
        &ins,
        CpuCtx::single(Features::portable()),
    );
}

// ---------------------------------------------------------------------------
// Hand-built graphs

fn f32_ty(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, Shape::known(shape))
}

fn node(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId], out_shape: &[usize]) -> ValueId {
    let o = g.add_value(name, f32_ty(out_shape));
    g.add_node(Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|&i| Some(i)).collect(),
        outputs: vec![o],
    });
    o
}

fn step(plan: &Plan, name: &str) -> mlc::runtime::StepInfo {
    plan.steps()
        .into_iter()
        .find(|s| s.node == name)
        .unwrap_or_else(|| panic!("no step '{name}'"))
}

#[test]
fn in_place_only_where_the_input_dies() {
    // x -> a = Relu(x) -> b = Neg(a) -> c = Add(b, a) -> d = Abs(c) -> e = Tanh(d)
    // b may not overwrite a (c still reads a); c may overwrite b or a (both
    // die at c, a is read once there); d overwrites c. x is a graph input and
    // is never overwritten. Tanh is left to the vectorized kernels.
    let mut g = Graph::new("inplace", 17);
    let x = g.add_input("x", f32_ty(&[4, 33]));
    let a = node(&mut g, "a", Op::Unary(UnaryOp::Relu), &[x], &[4, 33]);
    let b = node(&mut g, "b", Op::Unary(UnaryOp::Neg), &[a], &[4, 33]);
    let c = node(&mut g, "c", Op::Binary(BinaryOp::Add), &[b, a], &[4, 33]);
    let d = node(&mut g, "d", Op::Unary(UnaryOp::Abs), &[c], &[4, 33]);
    let e = node(&mut g, "e", Op::Unary(UnaryOp::Tanh), &[d], &[4, 33]);
    g.outputs.push(e);
    let x_t = random_inputs(&g, 1, &BTreeMap::new()).unwrap();
    let plan = check_against_interp("inplace", &g, &x_t, single());
    check_reuse_is_legal(&plan);
    assert_ne!(
        step(&plan, "a").exec,
        ExecKind::InPlace,
        "x is a graph input"
    );
    assert_ne!(step(&plan, "b").exec, ExecKind::InPlace, "a is read later");
    assert_eq!(step(&plan, "c").exec, ExecKind::InPlace);
    assert_eq!(step(&plan, "c").reuses, Some(b));
    assert_eq!(step(&plan, "d").exec, ExecKind::InPlace);
    assert_eq!(plan.buffer(d), plan.buffer(b));
    assert_ne!(plan.buffer(a), plan.buffer(b));
    assert_eq!(step(&plan, "e").exec, ExecKind::Fast);
}

#[test]
fn in_place_over_the_broadcast_side_and_not_over_outputs() {
    // c = Mul(bias, h) overwrites h (the full-shape right operand); an output
    // that is also read later (o1) is never overwritten; Mul(h2, h2) reads its
    // input twice and runs out of place.
    let mut g = Graph::new("bcast", 17);
    let x = g.add_input("x", f32_ty(&[3, 5, 8]));
    let bias = g.add_const(
        "bias",
        Tensor::from_f32(vec![8], (0..8).map(|i| i as f32 * 0.25).collect()).unwrap(),
    );
    let h = node(&mut g, "h", Op::Unary(UnaryOp::Exp), &[x], &[3, 5, 8]);
    // (h is computed out of place: x is a graph input.)
    let c = node(
        &mut g,
        "c",
        Op::Binary(BinaryOp::Mul),
        &[bias, h],
        &[3, 5, 8],
    );
    let o1 = node(&mut g, "o1", Op::Unary(UnaryOp::Neg), &[c], &[3, 5, 8]);
    let o2 = node(&mut g, "o2", Op::Unary(UnaryOp::Abs), &[o1], &[3, 5, 8]);
    let sq = node(
        &mut g,
        "sq",
        Op::Binary(BinaryOp::Mul),
        &[o2, o2],
        &[3, 5, 8],
    );
    g.outputs.extend([o1, sq]);
    let ins = random_inputs(&g, 2, &BTreeMap::new()).unwrap();
    let plan = check_against_interp("bcast", &g, &ins, single());
    check_reuse_is_legal(&plan);
    assert_eq!(step(&plan, "c").reuses, Some(h));
    assert_eq!(step(&plan, "o1").reuses, Some(c));
    assert_eq!(step(&plan, "o2").reuses, None, "o1 is a graph output");
    assert_eq!(step(&plan, "sq").reuses, None, "o2 is read twice");
}

#[test]
fn reshape_of_a_dying_value_shares_its_buffer() {
    let mut g = Graph::new("alias", 17);
    let x = g.add_input(
        "x",
        TensorType::new(DType::F32, Shape(vec![Dim::sym("batch"), Dim::Known(6)])),
    );
    let shape = g.add_const("shape", Tensor::vec_i64(vec![0, 2, 3]));
    let h = g.add_value(
        "h",
        TensorType::new(DType::F32, Shape(vec![Dim::sym("batch"), Dim::Known(6)])),
    );
    g.add_node(Node {
        name: "h".into(),
        op: Op::Unary(UnaryOp::Relu),
        inputs: vec![Some(x)],
        outputs: vec![h],
    });
    let r = g.add_value(
        "r",
        TensorType::new(
            DType::F32,
            Shape(vec![Dim::sym("batch"), Dim::Known(2), Dim::Known(3)]),
        ),
    );
    g.add_node(Node {
        name: "r".into(),
        op: Op::Reshape { allowzero: false },
        inputs: vec![Some(h), Some(shape)],
        outputs: vec![r],
    });
    // A second reshape of x (a graph input) has to copy.
    let r2 = g.add_value(
        "r2",
        TensorType::new(
            DType::F32,
            Shape(vec![Dim::sym("batch"), Dim::Known(2), Dim::Known(3)]),
        ),
    );
    g.add_node(Node {
        name: "r2".into(),
        op: Op::Reshape { allowzero: false },
        inputs: vec![Some(x), Some(shape)],
        outputs: vec![r2],
    });
    g.outputs.extend([r, r2]);
    for batch in [1, 4] {
        let ins = random_inputs(&g, 3, &dims(&[("batch", batch)])).unwrap();
        let plan = check_against_interp("alias", &g, &ins, single());
        assert_eq!(step(&plan, "r").exec, ExecKind::Alias);
        assert_eq!(plan.buffer(r), plan.buffer(h));
        assert_eq!(step(&plan, "r2").exec, ExecKind::Copy);
    }
}

#[test]
fn non_f32_values_and_graph_inputs_as_outputs() {
    // i64 and bool values go through the reference kernels; an output that
    // is a graph input or a constant is returned as is.
    let mut g = Graph::new("mixed", 17);
    let x = g.add_input("x", f32_ty(&[2, 3]));
    let zero = g.add_const("zero", Tensor::scalar_f32(0.0));
    let mask = g.add_value("mask", TensorType::new(DType::Bool, Shape::known(&[2, 3])));
    g.add_node(Node {
        name: "mask".into(),
        op: Op::Binary(BinaryOp::Greater),
        inputs: vec![Some(x), Some(zero)],
        outputs: vec![mask],
    });
    let y = g.add_value("y", f32_ty(&[2, 3]));
    g.add_node(Node {
        name: "y".into(),
        op: Op::Where,
        inputs: vec![Some(mask), Some(x), Some(zero)],
        outputs: vec![y],
    });
    let shp = g.add_value("shp", TensorType::new(DType::I64, Shape::known(&[2])));
    g.add_node(Node {
        name: "shp".into(),
        op: Op::Shape {
            start: 0,
            end: None,
        },
        inputs: vec![Some(y)],
        outputs: vec![shp],
    });
    g.outputs.extend([y, mask, x, zero]);
    let ins = random_inputs(&g, 4, &BTreeMap::new()).unwrap();
    let plan = check_against_interp("mixed", &g, &ins, single());
    assert_eq!(step(&plan, "y").exec, ExecKind::Reference);
}

#[test]
fn gather_of_f32_data_copies_rows_for_i64_and_i32_indices() {
    // Embedding-style lookups: i64 indices from a graph input (negative
    // ones too) along axis 1, i32 constant indices along the last axis.
    let mut g = Graph::new("gather", 17);
    let x = g.add_input("x", f32_ty(&[4, 5, 3]));
    let idx = g.add_input("idx", TensorType::new(DType::I64, Shape::known(&[2, 3])));
    let i32_idx = g.add_const(
        "cols",
        Tensor::new(vec![2], mlc::ir::TensorData::I32(vec![2, -3])).unwrap(),
    );
    let rows = node(
        &mut g,
        "rows",
        Op::Gather { axis: 1 },
        &[x, idx],
        &[4, 2, 3, 3],
    );
    let cols = node(
        &mut g,
        "cols",
        Op::Gather { axis: -1 },
        &[x, i32_idx],
        &[4, 5, 2],
    );
    g.outputs.extend([rows, cols]);
    let mut ins = random_inputs(&g, 5, &BTreeMap::new()).unwrap();
    ins[1] = Tensor::from_i64(vec![2, 3], vec![0, 4, -1, 2, -5, 3]).unwrap();
    let plan = check_against_interp("gather", &g, &ins, single());
    assert_eq!(step(&plan, "rows").exec, ExecKind::Fast);
    assert_eq!(step(&plan, "cols").exec, ExecKind::Fast);
    // An index out of range is an error naming the node, not a panic.
    let mut plan = plan_for(&g, &[vec![4, 5, 3], vec![2, 3]], single()).unwrap();
    ins[1] = Tensor::from_i64(vec![2, 3], vec![0, 1, 2, 3, 4, 5]).unwrap();
    let e = plan.run(&ins).unwrap_err().to_string();
    assert!(
        e.contains("rows") && e.contains("index 5 is out of range"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let g = fixture("mlp");
    let mut plan = plan_for(&g, &[vec![2, 64]], single()).unwrap();
    let wrong_shape = Tensor::zeros(DType::F32, vec![3, 64]);
    let e = plan.run(&[wrong_shape]).unwrap_err().to_string();
    assert!(e.contains("expects f32[2,64], got f32[3, 64]"), "{e}");
    let wrong_type = Tensor::zeros(DType::F64, vec![2, 64]);
    assert!(plan.run(&[wrong_type]).is_err());
    assert!(plan.run(&[]).is_err());
    // Shapes the model does not admit fail at plan time.
    let e = plan_for(&g, &[vec![2, 65]], single())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("input 'x'"), "{e}");
    assert!(plan_for(&g, &[vec![2, 64, 1]], single()).is_err());
    assert!(plan_for(&g, &[], single()).is_err());
}

// ---------------------------------------------------------------------------
// Random graphs

/// A random graph over f32 values of a few shapes: elementwise ops with
/// broadcasting, fused chains, matrix products, reshapes and softmax, with
/// values read by several later nodes so lifetimes interleave.
fn random_graph(seed: u64) -> Graph {
    let mut rng = SplitMix64::new(seed);
    let mut g = Graph::new(format!("random{seed}"), 17);
    let (rows, cols) = (2 + rng.below(5) as usize, 1 + rng.below(40) as usize);
    let x = g.add_input(
        "x",
        TensorType::new(
            DType::F32,
            Shape(vec![Dim::sym("batch"), Dim::Known(rows), Dim::Known(cols)]),
        ),
    );
    // Values of shape [batch, rows, cols].
    let mut pool: Vec<ValueId> = vec![x];
    let ty = |g: &Graph| g.ty(x).clone();
    let n = 4 + rng.below(12) as usize;
    for i in 0..n {
        let pick =
            |rng: &mut SplitMix64, pool: &[ValueId]| pool[rng.below(pool.len() as u64) as usize];
        let a = pick(&mut rng, &pool);
        let name = format!("n{i}");
        let (op, inputs): (Op, Vec<ValueId>) = match rng.below(7) {
            0 => {
                let u = [UnaryOp::Relu, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Neg]
                    [rng.below(4) as usize]
                    .clone();
                (Op::Unary(u), vec![a])
            }
            1 => {
                let b = pick(&mut rng, &pool);
                let op = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul][rng.below(3) as usize];
                (Op::Binary(op), vec![a, b])
            }
            2 => {
                let bias = g.add_const(
                    format!("bias{i}"),
                    Tensor::from_f32(
                        vec![cols],
                        (0..cols).map(|j| j as f32 * 0.1 - 1.0).collect(),
                    )
                    .unwrap(),
                );
                if rng.below(2) == 0 {
                    (Op::Binary(BinaryOp::Add), vec![a, bias])
                } else {
                    (Op::Binary(BinaryOp::Mul), vec![bias, a])
                }
            }
            3 => {
                let w = g.add_const(
                    format!("w{i}"),
                    Tensor::from_f32(
                        vec![cols, cols],
                        (0..cols * cols)
                            .map(|j| ((j * 7 % 13) as f32 - 6.0) / 13.0)
                            .collect(),
                    )
                    .unwrap(),
                );
                (Op::MatMul, vec![a, w])
            }
            4 => (
                Op::Elementwise {
                    steps: vec![
                        EwStep::Binary(BinaryOp::Mul, EwArg::Input(0), EwArg::Scalar(0.5)),
                        EwStep::Unary(UnaryOp::Erf, EwArg::Step(0)),
                        EwStep::Binary(BinaryOp::Add, EwArg::Step(1), EwArg::Input(1)),
                        EwStep::Clip(EwArg::Step(2), -2.0, 2.0),
                    ],
                },
                vec![a, pick(&mut rng, &pool)],
            ),
            5 => (
                Op::Softmax {
                    axis: -1,
                    legacy: false,
                    nan_to_zero: false,
                },
                vec![a],
            ),
            _ => {
                // Flatten and reshape back: exercises alias and copy.
                let flat = g.add_value(
                    format!("flat{i}"),
                    TensorType::new(
                        DType::F32,
                        Shape(vec![Dim::sym("batch"), Dim::Known(rows * cols)]),
                    ),
                );
                g.add_node(Node {
                    name: format!("flat{i}"),
                    op: Op::Flatten { axis: 1 },
                    inputs: vec![Some(a)],
                    outputs: vec![flat],
                });
                let shape = g.add_const(
                    format!("shape{i}"),
                    Tensor::vec_i64(vec![0, rows as i64, cols as i64]),
                );
                (Op::Reshape { allowzero: false }, vec![flat, shape])
            }
        };
        let o = g.add_value(&name, ty(&g));
        g.add_node(Node {
            name,
            op,
            inputs: inputs.into_iter().map(Some).collect(),
            outputs: vec![o],
        });
        pool.push(o);
    }
    // The last value and, sometimes, an earlier one are outputs.
    g.outputs.push(*pool.last().unwrap_or(&x));
    if pool.len() > 2 && rng.below(2) == 0 {
        g.outputs
            .push(pool[1 + rng.below(pool.len() as u64 - 1) as usize]);
    }
    mlc::ir::infer::infer_graph(&mut g).unwrap();
    g
}

#[test]
fn random_graphs_match_interpreter() {
    let mut in_place = 0;
    for seed in 0..40 {
        let g = random_graph(seed);
        mlc::ir::verify::verify(&g).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for batch in [1, 3] {
            let ins =
                random_inputs(&g, seed * 10 + batch as u64, &dims(&[("batch", batch)])).unwrap();
            let plan = check_against_interp(
                &format!("random seed {seed} batch {batch}"),
                &g,
                &ins,
                single(),
            );
            check_reuse_is_legal(&plan);
            in_place += plan.stats().in_place_nodes + plan.stats().aliased_nodes;
        }
    }
    assert!(in_place > 0, "no random graph planned in-place work");
}

#[test]
fn profile_counts_every_node() {
    let g = o2(&fixture("cnn"));
    let mut plan = plan_for(&g, &[vec![1, 3, 32, 32]], single()).unwrap();
    assert!(plan.profile().is_none());
    plan.set_profiling(true);
    let ins = random_inputs(&g, 1, &BTreeMap::new()).unwrap();
    for _ in 0..3 {
        plan.run(&ins).unwrap();
    }
    let p = plan.profile().unwrap();
    assert_eq!(p.runs, 3);
    assert_eq!(
        p.ops.iter().map(|l| l.nodes).sum::<usize>(),
        plan.steps().len()
    );
    let share: f64 = p.ops.iter().map(|l| l.share).sum();
    assert!((share - 1.0).abs() < 1e-6 || p.total_ms_per_run == 0.0);
    let conv = p
        .ops
        .iter()
        .find(|l| l.op.contains("Conv"))
        .expect("a conv line");
    assert!(conv.flops_per_run.unwrap() > 0);
}

// ---------------------------------------------------------------------------
// mlc bench

#[test]
fn bench_json_has_the_promised_keys() {
    let exe = env!("CARGO_BIN_EXE_mlc");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cnn/model.onnx");
    let out = std::process::Command::new(exe)
        .args(["bench"])
        .arg(&model)
        .args([
            "--runs",
            "5",
            "--warmup",
            "1",
            "--json",
            "--profile",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "min_ms",
        "max_ms",
        "throughput_per_s",
        "threads",
        "batch",
        "runs",
        "warmup",
        "arena_bytes",
    ] {
        assert!(v[key].is_number(), "{key} missing in {v}");
    }
    // Peak RSS is a number where the platform reports it, else null.
    assert!(v.get("peak_rss_bytes").is_some(), "{v}");
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(v["runs"], 5);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["batch"], 1);
    let (p50, p90, p99) = (
        v["p50_ms"].as_f64().unwrap(),
        v["p90_ms"].as_f64().unwrap(),
        v["p99_ms"].as_f64().unwrap(),
    );
    assert!(v["min_ms"].as_f64().unwrap() <= p50 && p50 <= p90 && p90 <= p99);
    assert!(p99 <= v["max_ms"].as_f64().unwrap());
    assert!(v["profile"]["ops"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
}

#[test]
fn bench_verify_checks_every_fixture_against_the_reference() {
    let exe = env!("CARGO_BIN_EXE_mlc");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (model, extra) in [
        ("mlp", &["--batch", "3"][..]),
        ("cnn", &[][..]),
        ("transformer", &["--batch", "2", "--dim", "seq=7"][..]),
    ] {
        let out = std::process::Command::new(exe)
            .arg("bench")
            .arg(root.join("fixtures").join(model).join("model.onnx"))
            .args(["--runs", "1", "--warmup", "0", "--verify", "--json"])
            .args(["--threads", "2"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let verify = &v["verify"];
        assert_eq!(verify["ok"], true, "{model}: {verify}");
        let outputs = verify["outputs"].as_array().unwrap();
        assert!(!outputs.is_empty());
        for o in outputs {
            assert!(o["elements"].as_u64().unwrap() > 0, "{o}");
            assert!(o["worst_tolerance_share"].as_f64().unwrap() <= 1.0, "{o}");
        }
    }
}

/// The side-by-side script (benches/compare.py) runs both engines on a
/// fixture, verifies mlc against the reference and prints the ratio table
/// (its timings are not judged here).
#[test]
fn compare_script_runs_side_by_side_and_verifies() {
    let Some(py) = common::venv_python("the side-by-side script") else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("benches/compare.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg("--self-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg("--models")
        .arg(root.join("fixtures/cnn/model.onnx"))
        .args([
            "--threads",
            "1,2",
            "--batches",
            "1",
            "--rounds",
            "2",
            "--runs",
            "2",
        ])
        .args([
            "--warmup",
            "1",
            "--verify",
            "--mlc",
            env!("CARGO_BIN_EXE_mlc"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verify model: ok"), "{text}");
    assert!(
        text.contains("geo-mean mlc/ORT, batch 1, 1 thread"),
        "{text}"
    );
    assert!(
        text.contains("geo-mean mlc/ORT, batch 1, 2 threads"),
        "{text}"
    );
}

#[test]
fn bench_text_and_batch_and_errors() {
    let exe = env!("CARGO_BIN_EXE_mlc");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(exe)
        .arg("bench")
        .arg(root.join("fixtures/transformer/model.onnx"))
        .args([
            "--runs",
            "2",
            "--warmup",
            "0",
            "--batch",
            "2",
            "--dim",
            "seq=8",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "p50",
        "p99",
        "throughput",
        "peak RSS",
        "threads 2",
        "batch 2",
        "arena",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    // A given input file sets the shapes.
    let out = std::process::Command::new(exe)
        .arg("bench")
        .arg(root.join("fixtures/cnn/model.onnx"))
        .arg("--input")
        .arg(format!(
            "x={}",
            root.join("fixtures/cnn/batch2/input_x.npy").display()
        ))
        .args(["--runs", "1", "--warmup", "0", "--json", "--pipeline", "O0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["batch"], 2);
    // Errors: a missing model, a bad --dim.
    let out = std::process::Command::new(exe)
        .args(["bench", "no/such/model.onnx"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(exe)
        .arg("bench")
        .arg(root.join("fixtures/mlp/model.onnx"))
        .args(["--dim", "batch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shapes_that_depend_on_input_data_are_errors() {
    // Reshape to a shape read from an input: no static shape exists.
    let mut g = Graph::new("dynamic", 17);
    let x = g.add_input("x", f32_ty(&[6]));
    let shape = g.add_input("shape", TensorType::new(DType::I64, Shape::known(&[2])));
    let r = g.add_value(
        "r",
        TensorType::new(DType::F32, Shape(vec![Dim::sym("a"), Dim::sym("b")])),
    );
    g.add_node(Node {
        name: "reshape".into(),
        op: Op::Reshape { allowzero: false },
        inputs: vec![Some(x), Some(shape)],
        outputs: vec![r],
    });
    g.outputs.push(r);
    mlc::ir::infer::infer_graph(&mut g).unwrap();
    let e = plan_for(&g, &[vec![6], vec![2]], single())
        .err()
        .expect("a data-dependent shape must not plan")
        .to_string();
    assert!(e.contains("reshape") && e.contains("static shapes"), "{e}");
}

#[test]
fn empty_batches_run() {
    let g = fixture("mlp");
    let ins = random_inputs(&g, 1, &dims(&[("batch", 0)])).unwrap();
    let plan = check_against_interp("mlp batch 0", &g, &ins, single());
    assert_eq!(plan.stats().arena_bytes, 0);
}

// ---------------------------------------------------------------------------
// Steady state: no allocation per step

mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCS: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts allocations made by the current thread.
    pub struct Counting;

    // SAFETY: forwards to the system allocator; the counter is a
    // const-initialized thread-local without a destructor, so touching it
    // never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(p, l, n) }
        }
    }

    pub fn count() -> usize {
        ALLOCS.with(Cell::get)
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

#[test]
fn steady_state_allocates_only_the_outputs() {
    // A long graph of in-place, aliased and copied steps: the allocations of
    // a run are the returned tensors', whatever the number of nodes.
    let mut g = Graph::new("steady", 17);
    let x = g.add_input("x", f32_ty(&[4, 300]));
    let bias = g.add_const("bias", Tensor::from_f32(vec![300], vec![0.5; 300]).unwrap());
    let flat_shape = g.add_const("flat", Tensor::vec_i64(vec![1200]));
    let back = g.add_const("back", Tensor::vec_i64(vec![4, 300]));
    let mut h = node(&mut g, "first", Op::Unary(UnaryOp::Neg), &[x], &[4, 300]);
    for i in 0..20 {
        h = node(
            &mut g,
            &format!("add{i}"),
            Op::Binary(BinaryOp::Add),
            &[h, bias],
            &[4, 300],
        );
        h = node(
            &mut g,
            &format!("relu{i}"),
            Op::Unary(UnaryOp::Relu),
            &[h],
            &[4, 300],
        );
        let f = node(
            &mut g,
            &format!("flat{i}"),
            Op::Reshape { allowzero: false },
            &[h, flat_shape],
            &[1200],
        );
        h = node(
            &mut g,
            &format!("back{i}"),
            Op::Reshape { allowzero: false },
            &[f, back],
            &[4, 300],
        );
    }
    let copy = node(
        &mut g,
        "copy",
        Op::Reshape { allowzero: false },
        &[x, flat_shape],
        &[1200],
    );
    g.outputs.extend([h, copy]);
    let ins = random_inputs(&g, 9, &BTreeMap::new()).unwrap();
    let mut plan = check_against_interp("steady", &g, &ins, single());
    let s = plan.stats();
    // Only `first` runs out of place (x is a graph input).
    assert_eq!(s.fast_nodes + s.reference_nodes, 1, "{s:?}");
    assert_eq!(
        (s.in_place_nodes, s.aliased_nodes, s.copy_nodes),
        (40, 40, 1)
    );
    let before = counting::count();
    let out = plan.run(&ins).unwrap();
    let allocs = counting::count() - before;
    drop(out);
    // The reference fallback for `first` copies its input and builds its
    // result (a handful of allocations); the outputs are 2 tensors of 2
    // allocations each plus their vector. None of it grows with the 81
    // in-place, aliased and copied steps.
    assert!(allocs <= 16, "{allocs} allocations in one run");
}

/// Shapes as exporters write them: a dim that is a sum of symbols (`2*s`
/// from a Concat, `s+1` from Shape arithmetic, which inference leaves as
/// fresh symbols), a symbolic dim that is 1 at run time, and Squeeze and
/// Unsqueeze on symbolic dims. The interpreter and the compiled plan agree
/// at every binding, 1 included.
#[test]
fn symbolic_dims_as_exporters_write_them() {
    let g = mlc::ir::text::parse(
        r#"graph "sym" opset 17
  input  %0 x: f32[b,s]
  const  %1 one: i64[1] = [1]
  const  %2 zero: i64[1] = [0]
  %3 c: f32[b,unk_0] = Concat[axis=1](%0, %0)
  %4 sh: i64[2] = Shape[start=0](%0)
  %5 s1: i64[1] = Gather[axis=0](%4, %1)
  %6 end: i64[1] = Add(%5, %1)
  %7 sl: f32[b,unk_1] = Slice(%3, %2, %6, %1)
  %8 r: f32[b,1] = ReduceSum[keepdims=true](%7, %1)
  %9 q: f32[b] = Squeeze(%8, %1)
  %10 u: f32[b,1] = Unsqueeze(%9, %1)
  %11 y: f32[b,s] = Add(%0, %8)
  output %10 u
  output %11 y
"#,
    )
    .unwrap();
    let compiled = o2(&g);
    for (b, s) in [(1, 1), (1, 5), (3, 1), (2, 4)] {
        let inputs = random_inputs(&g, 7, &dims(&[("b", b), ("s", s)])).unwrap();
        let want = mlc::interp::run(&g, inputs.clone()).unwrap();
        // Slice to s+1 of the doubled row: the first s+1 elements.
        let x = inputs[0].as_f32().unwrap();
        let row0: f32 = (0..=s).map(|j| x[j % s]).sum();
        assert!((want[0].as_f32().unwrap()[0] - row0).abs() <= 1e-5 * (1.0 + row0.abs()));
        assert_eq!(want[0].shape(), [b, 1]);
        check_against_interp(&format!("b={b} s={s}"), &compiled, &inputs, single());
    }
}

/// A plan of `g` for inputs of `shapes`: specialized, then planned.
fn plan_for(g: &Graph, shapes: &[Vec<usize>], cx: CpuCtx) -> mlc::Result<Plan> {
    Plan::new(mlc::transform::specialize::specialize(g, shapes)?, cx)
}

#[test]
fn dynamic_int8_gives_a_sample_the_same_result_whatever_it_is_batched_with() {
    use mlc::compress::quantize::{find_layers, quantize_layer, Granularity, WeightFormat};
    let format = WeightFormat {
        granularity: Granularity::PerChannel,
        reduce_range: false,
    };
    for name in ["cnn", "mlp"] {
        let g = o2(&fixture(name));
        let mut q = g.clone();
        for layer in find_layers(&g) {
            quantize_layer(&mut q, &layer, mlc::ir::ActQuant::Dynamic, format).unwrap();
        }
        // Sample 0 of a batch of 3 whose other samples are much larger
        // (a shared scale would quantize sample 0 coarsely).
        let one = random_inputs(&q, 5, &dims(&[("batch", 1)])).unwrap();
        let three = random_inputs(&q, 6, &dims(&[("batch", 3)])).unwrap();
        let x1 = one[0].as_f32().unwrap();
        let mut x3 = three[0].as_f32().unwrap().to_vec();
        x3[..x1.len()].copy_from_slice(x1);
        for v in &mut x3[x1.len()..] {
            *v *= 50.0;
        }
        let batched = vec![Tensor::from_f32(three[0].shape().to_vec(), x3).unwrap()];
        let want_one = mlc::interp::run(&q, one.clone()).unwrap();
        let want_batched = mlc::interp::run(&q, batched.clone()).unwrap();
        let n = want_one[0].numel();
        assert_eq!(
            want_one[0].as_f32().unwrap(),
            &want_batched[0].as_f32().unwrap()[..n],
            "{name}: the reference"
        );
        // The runtime agrees on every kernel path (its f32 ops round their
        // own way; a scale shared over the batch would be 50x coarser).
        for cx in [
            single(),
            CpuCtx::single(Features::avx2_only()),
            CpuCtx::new(2).unwrap(),
        ] {
            let shapes: Vec<Vec<usize>> = batched.iter().map(|t| t.shape().to_vec()).collect();
            let mut plan = plan_for(&q, &shapes, cx).unwrap();
            let got = plan.run(&batched).unwrap();
            if let Err(m) = common::compare(&got[0], &want_batched[0], RTOL, ATOL) {
                panic!("{name}: {m}");
            }
        }
    }
}

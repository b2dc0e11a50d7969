//! Bad input gets one clear error line and exit code 2: never a panic, a
//! backtrace or an output file. Each case builds its hostile model in a fresh
//! temporary directory and runs the real `mlc` binary on it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_protobuf::{
    tensor_proto::DataLocation, tensor_shape_proto, type_proto, GraphProto, Message, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// A fresh, empty directory for one test case, removed when it ends.
fn scratch(case: &str) -> common::Scratch {
    common::scratch("mlc-cli-errors", case)
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let tensor = type_proto::Tensor {
        elem_type: 1,
        shape: Some(shape).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>, output: &str) -> ModelProto {
    let graph = GraphProto {
        name: "g".into(),
        node: nodes,
        initializer: initializers,
        input: vec![value_info("x", &[2, 3])],
        output: vec![value_info(output, &[2, 3])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
            ..Default::default()
        }],
        graph: Some(graph).into(),
        ..Default::default()
    }
}

fn write_model(dir: &Path, m: &ModelProto) -> PathBuf {
    let path = dir.join("model.onnx");
    std::fs::write(&path, m.write_to_bytes().unwrap()).unwrap();
    path
}

/// Runs `mlc run MODEL --random 0 -o OUT.npz` and checks the failure is a
/// clean one: exit code 2, a single `error:` line mentioning every expected
/// fragment, no panic, no output file. Returns stderr.
fn expect_clean_failure(dir: &Path, model: &Path, fragments: &[&str]) -> String {
    let out_file = dir.join("out.npz");
    let out = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .arg("run")
        .arg(model)
        .args(["--random", "0", "-o"])
        .arg(&out_file)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {}: stderr = {stderr}",
        model.display()
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "panic: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for f in fragments {
        assert!(stderr.contains(f), "error should mention '{f}': {stderr}");
    }
    assert!(
        !out_file.exists(),
        "no output file may be written on failure"
    );
    stderr
}

fn f32_tensor(name: &str, dims: &[i64], raw_len: usize) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: vec![0u8; raw_len],
        ..Default::default()
    }
}

#[test]
fn two_unsupported_ops_are_both_named() {
    let dir = scratch("unsupported");
    let m = model(
        vec![
            node("FancyOp", "first_bad", &["x"], &["a"]),
            node("Relu", "ok", &["a"], &["b"]),
            node("OtherOp", "second_bad", &["b"], &["y"]),
        ],
        vec![],
        "y",
    );
    let path = write_model(&dir, &m);
    expect_clean_failure(
        &dir,
        &path,
        &["FancyOp", "first_bad", "OtherOp", "second_bad"],
    );
}

#[test]
fn empty_file() {
    let dir = scratch("empty");
    let path = dir.join("model.onnx");
    std::fs::write(&path, b"").unwrap();
    expect_clean_failure(&dir, &path, &["empty"]);
}

#[test]
fn truncated_file() {
    let dir = scratch("truncated");
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"])],
        vec![f32_tensor("w", &[64], 256)],
        "y",
    );
    let bytes = m.write_to_bytes().unwrap();
    let path = dir.join("model.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_clean_failure(&dir, &path, &["model.onnx"]);
    // Cut at every length: never a partial model, whatever field boundary
    // the cut falls on (the decoder alone accepts a graph cut between two
    // of its fields).
    for len in 1..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mlc"))
            .arg("inspect")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "cut at {len} of {}",
            bytes.len()
        );
    }
}

#[test]
fn not_protobuf() {
    let dir = scratch("garbage");
    let path = dir.join("model.onnx");
    std::fs::write(
        &path,
        b"\xff\xff\xff\xff this is not a protobuf message at all \x00\x01",
    )
    .unwrap();
    expect_clean_failure(&dir, &path, &["model.onnx"]);
}

#[test]
fn initializer_length_mismatch() {
    let dir = scratch("init-mismatch");
    // [2,3] f32 needs 24 bytes; give 10.
    let m = model(
        vec![node("Add", "add", &["x", "w"], &["y"])],
        vec![f32_tensor("w", &[2, 3], 10)],
        "y",
    );
    let path = write_model(&dir, &m);
    expect_clean_failure(&dir, &path, &["'w'"]);
}

#[test]
fn external_data_escaping_the_model_folder() {
    let dir = scratch("external-escape");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(dir.join("secret.bin"), [0u8; 24]).unwrap();
    let cases: Vec<String> = vec![
        "../secret.bin".into(),
        dir.join("secret.bin").display().to_string(),
    ];
    for location in cases {
        let mut w = f32_tensor("w", &[2, 3], 0);
        w.data_location = DataLocation::EXTERNAL.into();
        w.external_data = vec![StringStringEntryProto {
            key: "location".into(),
            value: location,
            ..Default::default()
        }];
        let m = model(vec![node("Add", "add", &["x", "w"], &["y"])], vec![w], "y");
        let path = write_model(&model_dir, &m);
        expect_clean_failure(&model_dir, &path, &["'w'"]);
    }
}

#[cfg(unix)]
#[test]
fn external_data_symlink_out_of_the_model_folder() {
    let dir = scratch("external-symlink");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(dir.join("secret.bin"), [0u8; 24]).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.bin"), model_dir.join("weights.bin")).unwrap();
    let mut w = f32_tensor("w", &[2, 3], 0);
    w.data_location = DataLocation::EXTERNAL.into();
    w.external_data = vec![StringStringEntryProto {
        key: "location".into(),
        value: "weights.bin".into(),
        ..Default::default()
    }];
    let m = model(vec![node("Add", "add", &["x", "w"], &["y"])], vec![w], "y");
    let path = write_model(&model_dir, &m);
    expect_clean_failure(&model_dir, &path, &["'w'"]);
}

#[test]
fn graph_with_a_cycle() {
    let dir = scratch("cycle");
    // a = Add(x, c); c = Relu(a): a cycle through two nodes.
    let m = model(
        vec![
            node("Add", "add", &["x", "c"], &["a"]),
            node("Relu", "relu", &["a"], &["c"]),
            node("Relu", "out", &["a"], &["y"]),
        ],
        vec![],
        "y",
    );
    let path = write_model(&dir, &m);
    expect_clean_failure(&dir, &path, &["cycle"]);
}

#[test]
fn missing_model_file() {
    let dir = scratch("missing");
    expect_clean_failure(&dir, &dir.join("nope.onnx"), &["nope.onnx"]);
}

/// Runs the mlc binary; returns (exit code, stderr).
fn mlc_status(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// No file a command writes may be one it reads: `compress`'s reports
/// against the model and data, `run -o` against its own inputs. The inputs
/// come out byte for byte as they went in.
#[test]
fn outputs_never_overwrite_inputs() {
    let dir = scratch("clobber");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A model named like the report of the output it is compressed to.
    let victim = dir.join("victim.mlc.report.json");
    std::fs::copy(repo.join("fixtures/mlp/model.onnx"), &victim).unwrap();
    let before = std::fs::read(&victim).unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);
    let (code, err) = mlc_status(&[
        &os("compress"),
        victim.as_os_str(),
        &os("--int8"),
        &os("-o"),
        dir.join("victim.mlc").as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), before);
    assert!(!dir.join("victim.mlc").exists());

    // run -o onto its own .npy input.
    let x = dir.join("x.npy");
    std::fs::copy(repo.join("fixtures/mlp/input_x.npy"), &x).unwrap();
    let x_before = std::fs::read(&x).unwrap();
    let model = repo.join("fixtures/mlp/model.onnx");
    let input = std::ffi::OsString::from(format!("x={}", x.display()));
    let (code, err) = mlc_status(&[
        &os("run"),
        model.as_os_str(),
        &os("--input"),
        &input,
        &os("-o"),
        x.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&x).unwrap(), x_before);
}

/// A temporary left by a killed write (its process gone) is removed by the
/// next write beside it; one of a live process is left alone.
#[test]
fn stale_temporaries_are_cleaned_up() {
    let dir = scratch("stale-tmp");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Pid 2^31 - 1 does not run; our own pid does.
    let stale = dir.join(".out.npz.2147483647.0.tmp");
    let live = dir.join(format!(".out.npz.{}.7.tmp", std::process::id()));
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::write(&live, b"in progress").unwrap();
    let out = dir.join("out.npz");
    let (code, err) = mlc_status(&[
        std::ffi::OsStr::new("run"),
        repo.join("fixtures/mlp/model.onnx").as_os_str(),
        std::ffi::OsStr::new("--random"),
        std::ffi::OsStr::new("0"),
        std::ffi::OsStr::new("-o"),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.exists());
    assert!(!stale.exists(), "the stale temporary is removed");
    assert!(live.exists(), "a live process's temporary stays");
}

/// An error quoting a hostile attribute (a million ints) stays one short
/// line.
#[test]
fn error_lines_quote_only_an_excerpt() {
    let dir = scratch("long-error");
    let mut n = node("Transpose", "t", &["x"], &["y"]);
    n.attribute.push(onnx_protobuf::AttributeProto {
        name: "perm".into(),
        type_: onnx_protobuf::attribute_proto::AttributeType::INTS.into(),
        ints: (0..1_000_000).collect(),
        ..Default::default()
    });
    let m = model(vec![n], vec![], "y");
    let path = write_model(&dir, &m);
    let err = expect_clean_failure(&dir, &path, &["Transpose"]);
    assert!(err.len() < 1200, "error line of {} bytes", err.len());
}

/// Ops asked for more memory than the budget, alone (an Expand to 16 GiB)
/// or by adding up (a Concat doubling chain), stop with a clean budget error
/// before allocating it.
#[test]
fn memory_is_bounded_by_the_budget() {
    let dir = scratch("budget");
    let shape = TensorProto {
        name: "shape".into(),
        dims: vec![3],
        data_type: 7,
        int64_data: vec![1 << 31, 2, 3],
        ..Default::default()
    };
    let m = model(
        vec![node("Expand", "e", &["x", "shape"], &["y"])],
        vec![shape],
        "y",
    );
    let path = write_model(&dir, &m);
    expect_clean_failure(&dir, &path, &["Expand", "over the memory budget"]);

    let mut nodes = Vec::new();
    let mut prev = "x".to_string();
    for i in 0..24 {
        let out = format!("c{i}");
        let mut n = node("Concat", &out, &[&prev, &prev], &[&out]);
        n.attribute.push(onnx_protobuf::AttributeProto {
            name: "axis".into(),
            type_: onnx_protobuf::attribute_proto::AttributeType::INT.into(),
            i: 0,
            ..Default::default()
        });
        nodes.push(n);
        prev = out;
    }
    let m = model(nodes, vec![], &prev);
    let path = write_model(&dir, &m);
    let out = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(["run", "--random", "0", "--max-memory", "64MB"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("over the memory budget of 61.0 MiB"), "{err}");
}

/// Protobuf groups nested a million deep (found by fuzzing: the decoder
/// skips unknown groups by recursing once per level) are refused before
/// the decoder sees them, inside a nested message too.
#[test]
fn deeply_nested_groups_are_refused_without_recursion() {
    let dir = scratch("groups");
    let path = dir.join("model.onnx");
    // Field 6 (unknown) as START_GROUP, a million times.
    std::fs::write(&path, vec![(6 << 3) | 3; 1_000_000]).unwrap();
    expect_clean_failure(&dir, &path, &["wire type 3"]);
    // The same inside the graph (field 7 of ModelProto, length-delimited).
    let mut bytes = vec![(7 << 3) | 2];
    let inner = vec![(6u8 << 3) | 3; 100_000];
    let mut len = inner.len();
    while len >= 0x80 {
        bytes.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes.extend(inner);
    std::fs::write(&path, bytes).unwrap();
    expect_clean_failure(&dir, &path, &["wire type 3"]);
}

/// Command names from other tools get the mlc command that does the job;
/// built-in pipeline names are case-insensitive.
#[test]
fn misses_suggest_the_right_command() {
    let os = |s: &str| std::ffi::OsString::from(s);
    for (miss, want) in [
        ("prune", "mlc compress MODEL --prune"),
        ("quantize", "mlc compress MODEL --int8"),
        ("Benchmark", "mlc bench MODEL"),
        ("gate", "mlc check MODEL"),
    ] {
        let (code, err) = mlc_status(&[&os(miss), &os("model.onnx")]);
        assert_eq!(code, Some(2), "{miss}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{miss}: {err}"
        );
    }
    // An unknown name without a tip is clap's own error (exit 2).
    let (code, err) = mlc_status(&[&os("frobnicate")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unrecognized subcommand"), "{err}");

    let dir = std::env::temp_dir().join(format!("mlc-pipeline-case-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("o.mlc");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp/model.onnx");
    let (code, err) = mlc_status(&[
        &os("compile"),
        model.as_os_str(),
        &os("--pipeline"),
        &os("o2"),
        &os("-o"),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

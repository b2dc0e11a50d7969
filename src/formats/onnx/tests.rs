//! Tests of the ONNX importer on models built here with the protobuf
//! structs. They check what import builds (ops, constants, inputs) and which
//! problems it reports; they do not depend on inferred shapes.

use super::*;
use crate::ir::{BinaryOp, Op, ReduceOp, TensorData, UnaryOp, ValueDef};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::{type_proto, AttributeProto, OperatorSetIdProto, TensorShapeProto, TypeProto};
use protobuf::{EnumOrUnknown, MessageField};

pub(super) fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(ty),
        ..Default::default()
    }
}

pub(super) fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::INT)
    }
}

pub(super) fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::INTS)
    }
}

pub(super) fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: v,
        ..attr(name, AttributeType::FLOAT)
    }
}

pub(super) fn a_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::STRING)
    }
}

pub(super) fn a_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        t: MessageField::some(t),
        ..attr(name, AttributeType::TENSOR)
    }
}

/// A tensor value info; a negative dim becomes the symbol `N`, `i64::MIN`
/// an unnamed dim.
pub(super) fn vi(name: &str, dtype: DType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: match d {
                i64::MIN => None,
                d if d < 0 => Some(DimValue::DimParam("N".into())),
                d => Some(DimValue::DimValue(d)),
            },
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: MessageField::some(TypeProto {
            value: Some(TypeValue::TensorType(type_proto::Tensor {
                elem_type: dtype.onnx_code(),
                shape: MessageField::some(TensorShapeProto {
                    dim,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

pub(super) fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: DType::F32.onnx_code(),
        dims: dims.to_vec(),
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(super) fn i64_init(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: DType::I64.onnx_code(),
        dims: vec![v.len() as i64],
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

pub(super) struct M {
    pub opset: i64,
    pub nodes: Vec<NodeProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<&'static str>,
    pub inits: Vec<TensorProto>,
}

impl M {
    pub fn new(opset: i64) -> M {
        M {
            opset,
            nodes: vec![],
            inputs: vec![],
            outputs: vec![],
            inits: vec![],
        }
    }

    pub fn proto(&self) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
                ..Default::default()
            }],
            graph: MessageField::some(GraphProto {
                name: "g".into(),
                node: self.nodes.clone(),
                input: self.inputs.clone(),
                output: self.outputs.iter().map(|o| out(o)).collect(),
                initializer: self.inits.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        // Serializing a message built in memory cannot fail.
        self.proto().write_to_bytes().unwrap()
    }

    pub fn load(&self) -> Result<Graph> {
        load_bytes(&self.bytes(), None)
    }
}

fn problems(r: Result<Graph>) -> Vec<ImportProblem> {
    match r {
        Err(Error::Import { problems }) => problems,
        Err(e) => panic!("expected an import error, got {e}"),
        Ok(_) => panic!("expected an import error, got a graph"),
    }
}

fn only_node(g: &Graph) -> &Node {
    let nodes: Vec<&Node> = g.nodes().map(|(_, n)| n).collect();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    nodes[0]
}

/// The constant at input `i` of `n`.
fn const_in<'g>(g: &'g Graph, n: &Node, i: usize) -> &'g Tensor {
    let id = n.input(i).expect("input present");
    g.const_value(id).expect("input is a constant")
}

#[test]
fn simple_model_imports() {
    let mut m = M::new(13);
    m.inputs = vec![
        vi("x", DType::F32, &[-1, 3]),
        vi("y", DType::F32, &[i64::MIN, 3]),
    ];
    m.nodes = vec![
        node("Add", &["x", "y"], &["s"], vec![]),
        node("Relu", &["s"], &["r"], vec![]),
    ];
    m.outputs = vec!["r"];
    let g = m.load().unwrap();
    assert_eq!(g.opset, 13);
    assert_eq!(g.inputs.len(), 2);
    let x = g.value(g.inputs[0]);
    assert_eq!(x.ty.shape, Shape(vec![Dim::sym("N"), Dim::Known(3)]));
    let y = g.value(g.inputs[1]);
    assert_eq!(y.ty.shape.0[0], Dim::sym("unk_y_0"));
    let ops: Vec<(String, Op)> = g
        .nodes()
        .map(|(_, n)| (n.name.clone(), n.op.clone()))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("Add_0".to_string(), Op::Binary(BinaryOp::Add)),
            ("Relu_1".to_string(), Op::Unary(UnaryOp::Relu)),
        ]
    );
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(g.value(g.outputs[0]).name, "r");
}

#[test]
fn two_unsupported_ops_are_reported_together() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.nodes = vec![
        node("FancyOp", &["x"], &["a"], vec![]),
        node("Relu", &["a"], &["b"], vec![]),
        node("OtherOp", &["b"], &["c"], vec![]),
    ];
    m.outputs = vec!["c"];
    let p = problems(m.load());
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].op_type, "FancyOp");
    assert_eq!(p[0].node, "FancyOp_0");
    assert_eq!(p[0].opset, 13);
    assert!(p[0].message.contains("not supported"));
    assert_eq!(p[1].op_type, "OtherOp");
}

#[test]
fn malformed_bytes() {
    let mal = |r: Result<Graph>| match r {
        Err(Error::Malformed { message, .. }) => message,
        other => panic!("expected Malformed, got {other:?}"),
    };
    assert_eq!(mal(load_bytes(&[], None)), "empty file");
    assert!(mal(load_bytes(b"\xff\xff\xff\xff garbage", None)).starts_with("not an ONNX model"));
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.nodes = vec![node("Relu", &["x"], &["y"], vec![])];
    m.outputs = vec!["y"];
    let bytes = m.bytes();
    let cut = mal(load_bytes(&bytes[..bytes.len() / 2], None));
    assert!(cut.starts_with("not an ONNX model"), "{cut}");
    // A valid protobuf message without a graph.
    let no_graph = ModelProto {
        ir_version: 8,
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    assert!(mal(load_bytes(&no_graph, None)).contains("no graph"));
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = temp_dir("load");
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.nodes = vec![node("Relu", &["x"], &["y"], vec![])];
    m.outputs = vec!["y"];
    let p = dir.join("m.onnx");
    std::fs::write(&p, m.bytes()).unwrap();
    assert!(load(&p).is_ok());
    assert!(matches!(
        load(&dir.join("missing.onnx")),
        Err(Error::Io { .. })
    ));
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(load(&p), Err(Error::Malformed { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn raw_data_length_mismatch_is_a_problem() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2, 3])];
    let mut w = f32_init("w", &[2, 3], &[0.0; 6]);
    w.raw_data.truncate(10);
    m.inits = vec![w];
    m.nodes = vec![node("Add", &["x", "w"], &["y"], vec![])];
    m.outputs = vec!["y"];
    let p = problems(m.load());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].op_type, "initializer");
    assert_eq!(p[0].node, "w");
    assert_eq!(
        p[0].message,
        "initializer 'w' has 10 bytes of data but its shape [2,3] of f32 needs 24"
    );
}

#[test]
fn unsupported_initializer_dtype_is_named() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[1])];
    m.inits = vec![TensorProto {
        name: "b".into(),
        data_type: 14,
        dims: vec![1],
        raw_data: vec![0; 8],
        ..Default::default()
    }];
    m.nodes = vec![node("Add", &["x", "b"], &["y"], vec![])];
    m.outputs = vec!["y"];
    let p = problems(m.load());
    assert!(p[0].message.contains("COMPLEX64"), "{p:?}");
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mlc-onnx-import-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn external_init(location: &str) -> TensorProto {
    use onnx_protobuf::tensor_proto::DataLocation;
    use onnx_protobuf::StringStringEntryProto;
    TensorProto {
        name: "w".into(),
        data_type: DType::F32.onnx_code(),
        dims: vec![2],
        data_location: EnumOrUnknown::new(DataLocation::EXTERNAL),
        external_data: vec![StringStringEntryProto {
            key: "location".into(),
            value: location.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn external_data_loads_and_escapes_are_refused() {
    let dir = temp_dir("ext");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(model_dir.join("w.bin"), &data).unwrap();
    std::fs::write(dir.join("x.bin"), &data).unwrap();
    let model = |loc: &str| {
        let mut m = M::new(13);
        m.inputs = vec![vi("x", DType::F32, &[2])];
        m.inits = vec![external_init(loc)];
        m.nodes = vec![node("Add", &["x", "w"], &["y"], vec![])];
        m.outputs = vec!["y"];
        m
    };
    let path = model_dir.join("m.onnx");
    std::fs::write(&path, model("w.bin").bytes()).unwrap();
    let g = load(&path).unwrap();
    let w = g.consts.values().next().unwrap();
    assert_eq!(w.as_f32().unwrap(), &[1.0, 2.0]);

    let abs = dir.join("x.bin").to_string_lossy().into_owned();
    let mut bad = vec!["../x.bin".to_string(), abs];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("x.bin"), model_dir.join("link.bin")).unwrap();
        bad.push("link.bin".into());
    }
    for loc in bad {
        std::fs::write(&path, model(&loc).bytes()).unwrap();
        let p = problems(load(&path));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].node, "w");
        assert!(p[0].message.contains("refused"), "{}", p[0].message);
        assert!(p[0].message.contains(&loc), "{}", p[0].message);
    }
    // From memory, external data is refused.
    let p = problems(load_bytes(&model("w.bin").bytes(), None));
    assert!(p[0].message.contains("from memory"), "{p:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn opsets_out_of_range_are_refused() {
    for opset in [6, 29] {
        let mut m = M::new(opset);
        m.inputs = vec![vi("x", DType::F32, &[2])];
        m.nodes = vec![node("Relu", &["x"], &["y"], vec![])];
        m.outputs = vec!["y"];
        let p = problems(m.load());
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].message,
            format!("opset {opset} is not supported (mlc supports 7..28)")
        );
    }
    let mut m = M::new(13).proto();
    m.opset_import.clear();
    let p = problems(load_bytes(&m.write_to_bytes().unwrap(), None));
    assert!(p[0].message.contains("default ONNX domain"));
}

#[test]
fn other_domains_are_refused() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    let mut n = node("Relu", &["x"], &["y"], vec![]);
    n.domain = "com.microsoft".into();
    m.nodes = vec![n];
    m.outputs = vec!["y"];
    let p = problems(m.load());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].message.contains("unsupported domain 'com.microsoft'"));
}

#[test]
fn legacy_squeeze_unsqueeze_slice_reduce_attributes_become_constant_inputs() {
    let mut m = M::new(11);
    m.inputs = vec![vi("x", DType::F32, &[1, 4, 1])];
    m.nodes = vec![node(
        "Squeeze",
        &["x"],
        &["y"],
        vec![a_ints("axes", &[0, 2])],
    )];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(n.op, Op::Squeeze);
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[0, 2]);

    m.nodes = vec![node(
        "Unsqueeze",
        &["x"],
        &["y"],
        vec![a_ints("axes", &[-1])],
    )];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(n.op, Op::Unsqueeze);
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[-1]);
    m.nodes = vec![node("Unsqueeze", &["x"], &["y"], vec![])];
    assert!(problems(m.load())[0].message.contains("'axes' is required"));

    // Squeeze without axes keeps one input.
    m.nodes = vec![node("Squeeze", &["x"], &["y"], vec![])];
    let g = m.load().unwrap();
    assert_eq!(only_node(&g).inputs, vec![g.inputs.first().copied(), None]);

    m.opset = 9;
    m.nodes = vec![node(
        "Slice",
        &["x"],
        &["y"],
        vec![
            a_ints("starts", &[1]),
            a_ints("ends", &[3]),
            a_ints("axes", &[1]),
        ],
    )];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(n.op, Op::Slice);
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[1]);
    assert_eq!(const_in(&g, n, 2).as_i64().unwrap(), &[3]);
    assert_eq!(const_in(&g, n, 3).as_i64().unwrap(), &[1]);
    assert_eq!(n.inputs.len(), 4);

    m.opset = 13;
    m.nodes = vec![node(
        "ReduceMean",
        &["x"],
        &["y"],
        vec![a_ints("axes", &[1]), a_int("keepdims", 0)],
    )];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(
        n.op,
        Op::Reduce {
            op: ReduceOp::Mean,
            keepdims: false,
            noop_with_empty_axes: false
        }
    );
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[1]);

    // ReduceSum takes axes as an input from 13: the attribute is unsupported.
    m.nodes = vec![node(
        "ReduceSum",
        &["x"],
        &["y"],
        vec![a_ints("axes", &[1])],
    )];
    let p = problems(m.load());
    assert!(
        p[0].message.contains("unsupported attribute 'axes'"),
        "{p:?}"
    );
    m.opset = 12;
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[1]);
}

#[test]
fn legacy_split_clip_pad_forms() {
    let mut m = M::new(11);
    m.inputs = vec![vi("x", DType::F32, &[6])];
    m.nodes = vec![node(
        "Split",
        &["x"],
        &["a", "b"],
        vec![a_ints("split", &[2, 4])],
    )];
    m.outputs = vec!["a", "b"];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(
        n.op,
        Op::Split {
            axis: 0,
            num_outputs: 2
        }
    );
    assert_eq!(n.outputs.len(), 2);
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[2, 4]);

    m.opset = 18;
    m.nodes = vec![node(
        "Split",
        &["x"],
        &["a", "b"],
        vec![a_int("num_outputs", 3)],
    )];
    assert!(problems(m.load())[0].message.contains("num_outputs"));
    m.nodes = vec![node(
        "Split",
        &["x"],
        &["a", "b"],
        vec![a_int("num_outputs", 2)],
    )];
    assert!(m.load().is_ok());

    m.opset = 10;
    m.outputs = vec!["y"];
    m.nodes = vec![node("Clip", &["x"], &["y"], vec![a_float("max", 6.0)])];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(n.op, Op::Clip);
    assert_eq!(n.inputs[1], None);
    assert_eq!(const_in(&g, n, 2).as_f32().unwrap(), &[6.0]);
    assert_eq!(const_in(&g, n, 2).shape(), &[] as &[usize]);

    m.nodes = vec![node(
        "Pad",
        &["x"],
        &["y"],
        vec![a_ints("pads", &[1, 2]), a_str("mode", "reflect")],
    )];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(
        n.op,
        Op::Pad {
            mode: crate::ir::PadMode::Reflect
        }
    );
    assert_eq!(const_in(&g, n, 1).as_i64().unwrap(), &[1, 2]);
    assert_eq!(n.inputs[2], None);
}

#[test]
fn cast_reads_saturate_and_round_mode() {
    let mut m = M::new(24);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.outputs = vec!["y"];
    m.nodes = vec![node("Cast", &["x"], &["y"], vec![a_int("to", 17)])];
    let cast = |to, saturate, round_mode| Op::Cast {
        to,
        saturate,
        round_mode,
    };
    let g = m.load().unwrap();
    assert_eq!(
        only_node(&g).op,
        cast(DType::F8E4M3FN, true, crate::ir::E8M0Round::Up)
    );
    assert_eq!(g.ty(g.outputs[0]).dtype, DType::F8E4M3FN);
    m.nodes = vec![node(
        "Cast",
        &["x"],
        &["y"],
        vec![
            a_int("to", 24),
            a_int("saturate", 0),
            a_str("round_mode", "nearest"),
        ],
    )];
    assert_eq!(
        only_node(&m.load().unwrap()).op,
        cast(DType::F8E8M0, false, crate::ir::E8M0Round::Nearest)
    );
    // Graph inputs of the new types import too.
    m.inputs = vec![vi("x", DType::I4, &[2])];
    m.nodes = vec![node("Cast", &["x"], &["y"], vec![a_int("to", 16)])];
    let g = m.load().unwrap();
    assert_eq!(g.ty(g.inputs[0]).dtype, DType::I4);
    assert_eq!(g.ty(g.outputs[0]).dtype, DType::BF16);
}

#[test]
fn softmax_defaults_depend_on_opset() {
    let mut m = M::new(12);
    m.inputs = vec![vi("x", DType::F32, &[2, 3])];
    m.nodes = vec![node("Softmax", &["x"], &["y"], vec![])];
    m.outputs = vec!["y"];
    assert_eq!(
        only_node(&m.load().unwrap()).op,
        Op::Softmax {
            axis: 1,
            legacy: true,
            nan_to_zero: false,
        }
    );
    m.opset = 13;
    m.nodes = vec![node("LogSoftmax", &["x"], &["y"], vec![])];
    assert_eq!(
        only_node(&m.load().unwrap()).op,
        Op::LogSoftmax {
            axis: -1,
            legacy: false
        }
    );
}

#[test]
fn constant_nodes_become_constants() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.nodes = vec![
        node(
            "Constant",
            &[],
            &["c"],
            vec![a_tensor("value", f32_init("", &[2], &[1.0, 2.0]))],
        ),
        node("Constant", &[], &["k"], vec![a_int("value_int", 3)]),
        node("Add", &["x", "c"], &["y"], vec![]),
    ];
    m.outputs = vec!["y", "k"];
    let g = m.load().unwrap();
    assert_eq!(g.node_count(), 1);
    let n = only_node(&g);
    assert_eq!(const_in(&g, n, 1).as_f32().unwrap(), &[1.0, 2.0]);
    assert_eq!(g.value(n.input(1).unwrap()).name, "c");
    let k = g.outputs[1];
    assert_eq!(g.value(k).def, ValueDef::Const);
    assert_eq!(g.const_value(k).unwrap().as_i64().unwrap(), &[3]);

    m.nodes = vec![node(
        "Constant",
        &[],
        &["y"],
        vec![a_str("value_string", "hi")],
    )];
    m.outputs = vec!["y"];
    assert!(problems(m.load())[0].message.contains("value_string"));
    m.nodes = vec![node("Constant", &[], &["y"], vec![])];
    assert!(problems(m.load())[0].message.contains("no value"));
}

#[test]
fn undefined_and_duplicate_names_are_problems() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.nodes = vec![
        node("Relu", &["nope"], &["y"], vec![]),
        node("Relu", &["x"], &["y"], vec![]),
    ];
    m.outputs = vec!["y", "missing"];
    let p = problems(m.load());
    let msgs: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("'y' is defined more than once")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("'missing' is not defined")),
        "{msgs:?}"
    );
}

#[test]
fn node_names_are_unique_and_deterministic() {
    let mut nodes = vec![
        node("Relu", &[], &[], vec![]),
        node("Relu", &[], &[], vec![]),
        node("Abs", &[], &[], vec![]),
        node("Abs", &[], &[], vec![]),
    ];
    nodes[2].name = "n".into();
    nodes[3].name = "n".into();
    assert_eq!(node_names(&nodes), vec!["Relu_0", "Relu_1", "n", "n_3"]);
}

#[test]
fn cycles_end_in_a_clear_error() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2])];
    m.nodes = vec![
        node("Add", &["x", "b"], &["a"], vec![]),
        node("Relu", &["a"], &["b"], vec![]),
    ];
    m.outputs = vec!["b"];
    match m.load() {
        Err(Error::InvalidGraph(msg)) => assert!(msg.contains("cycle"), "{msg}"),
        other => panic!("expected a cycle error, got {other:?}"),
    }
    // A node reading its own output.
    m.nodes = vec![node("Add", &["x", "a"], &["a"], vec![])];
    m.outputs = vec!["a"];
    assert!(matches!(m.load(), Err(Error::InvalidGraph(_))));
}

#[test]
fn unsupported_outputs_and_attribute_values() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[1, 1, 4, 4])];
    // MaxPool Indices: typed i64 like Y; storage_order must be 0 or 1.
    m.nodes = vec![node(
        "MaxPool",
        &["x"],
        &["y", "idx"],
        vec![a_ints("kernel_shape", &[2, 2]), a_int("storage_order", 1)],
    )];
    m.outputs = vec!["y", "idx"];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert!(matches!(&n.op, Op::MaxPool(p) if p.column_major));
    assert_eq!(n.outputs.len(), 2);
    assert_eq!(g.ty(n.outputs[1]).dtype, DType::I64);
    assert_eq!(g.ty(n.outputs[1]).shape, g.ty(n.outputs[0]).shape);
    m.nodes = vec![node(
        "MaxPool",
        &["x"],
        &["y", "idx"],
        vec![a_ints("kernel_shape", &[2, 2]), a_int("storage_order", 2)],
    )];
    let p = problems(m.load());
    assert_eq!(p[0].op_type, "MaxPool");
    assert!(p[0].message.contains("storage_order"), "{p:?}");

    m.outputs = vec!["y"];
    m.nodes = vec![node(
        "Resize",
        &["x", "", "s"],
        &["y"],
        vec![a_str("mode", "quintic")],
    )];
    m.inits = vec![f32_init("s", &[4], &[1.0, 1.0, 2.0, 2.0])];
    assert!(problems(m.load())[0].message.contains("quintic"));
    m.nodes = vec![node(
        "Conv",
        &["x", "w"],
        &["y"],
        vec![a_str("auto_pad", "SOMETIMES")],
    )];
    m.inits = vec![f32_init("w", &[1, 1, 3, 3], &[0.0; 9])];
    assert!(problems(m.load())[0].message.contains("auto_pad"));
    m.nodes = vec![node("Relu", &["x"], &["y"], vec![a_int("bogus", 1)])];
    let p = problems(m.load());
    assert!(
        p[0].message.contains("unsupported attribute 'bogus'"),
        "{p:?}"
    );
    m.nodes = vec![node(
        "BatchNormalization",
        &["x", "w", "w", "w", "w"],
        &["y"],
        vec![a_int("training_mode", 1)],
    )];
    assert!(problems(m.load())[0].message.contains("training"));
    m.nodes = vec![node("Cast", &["x"], &["y"], vec![a_int("to", 27)])];
    assert!(problems(m.load())[0].message.contains("FLOAT6E2M3"));
    m.nodes = vec![node(
        "Cast",
        &["x"],
        &["y"],
        vec![a_int("to", 24), a_str("round_mode", "sideways")],
    )];
    assert!(problems(m.load())[0].message.contains("round_mode"));
    m.nodes = vec![node("Relu", &["x", "x"], &["y"], vec![])];
    assert!(problems(m.load())[0].message.contains("has 2 inputs"));
}

#[test]
fn statistics_and_training_outputs() {
    // LayerNormalization Mean and InvStdDev: f32, X's leading dims then ones.
    let mut m = M::new(17);
    m.inputs = vec![
        vi("x", DType::F32, &[2, 3, 4]),
        vi("s", DType::F32, &[3, 4]),
    ];
    m.nodes = vec![node(
        "LayerNormalization",
        &["x", "s"],
        &["y", "mean", "inv"],
        vec![a_int("axis", 1)],
    )];
    m.outputs = vec!["y", "mean", "inv"];
    let g = m.load().unwrap();
    let n = only_node(&g);
    let shapes: Vec<String> = n.outputs.iter().map(|&o| g.ty(o).to_string()).collect();
    assert_eq!(shapes, ["f32[2,3,4]", "f32[2,1,1]", "f32[2,1,1]"]);
    // Only InvStdDev (Mean unnamed) works too.
    m.nodes[0].output = vec!["y".into(), "".into(), "inv".into()];
    m.outputs = vec!["inv"];
    let g = m.load().unwrap();
    assert_eq!(only_node(&g).outputs.len(), 3);
    // Another stash_type is fine for Y alone, a problem for the statistics.
    m.nodes[0].attribute.push(a_int("stash_type", 16));
    assert!(problems(m.load())[0].message.contains("stash_type"));
    m.nodes[0].output = vec!["y".into()];
    m.outputs = vec!["y"];
    assert!(m.load().is_ok());

    // BatchNormalization training mode (opset 14+).
    let mut m = M::new(15);
    m.inputs = vec![vi("x", DType::F32, &[2, 3, 4]), vi("p", DType::F32, &[3])];
    m.nodes = vec![node(
        "BatchNormalization",
        &["x", "p", "p", "p", "p"],
        &["y", "rm", "rv"],
        vec![a_int("training_mode", 1), a_float("momentum", 0.5)],
    )];
    m.outputs = vec!["y", "rm", "rv"];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(
        n.op,
        Op::BatchNormalization {
            epsilon: 1e-5,
            training_momentum: Some(0.5)
        }
    );
    let shapes: Vec<String> = n.outputs.iter().map(|&o| g.ty(o).to_string()).collect();
    assert_eq!(shapes, ["f32[2,3,4]", "f32[3]", "f32[3]"]);
    // Inference form: one output, no momentum.
    m.nodes[0].attribute = vec![a_int("training_mode", 0), a_float("momentum", 0.5)];
    m.nodes[0].output = vec!["y".into()];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    assert!(matches!(
        only_node(&g).op,
        Op::BatchNormalization {
            training_momentum: None,
            ..
        }
    ));
    // The training outputs of the opset 9-13 form are not supported.
    let mut m9 = M::new(9);
    m9.inputs = m.inputs.clone();
    m9.nodes = vec![node(
        "BatchNormalization",
        &["x", "p", "p", "p", "p"],
        &["y", "rm", "rv"],
        vec![],
    )];
    m9.outputs = vec!["y", "rm", "rv"];
    assert!(problems(m9.load())[0].message.contains("training"));

    // Resize cubic keeps cubic_coeff_a.
    let mut m = M::new(19);
    m.inputs = vec![vi("x", DType::F32, &[1, 1, 4, 4])];
    m.inits = vec![f32_init("s", &[4], &[1.0, 1.0, 2.0, 2.0])];
    m.nodes = vec![node(
        "Resize",
        &["x", "", "s"],
        &["y"],
        vec![a_str("mode", "cubic"), a_float("cubic_coeff_a", -0.5)],
    )];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    match &only_node(&g).op {
        Op::Resize(a) => {
            assert_eq!(a.mode, crate::ir::ResizeMode::Cubic);
            assert_eq!(a.cubic_coeff_a, -0.5);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn conv_defaults_and_kernel_from_weight() {
    let mut m = M::new(11);
    m.inputs = vec![vi("x", DType::F32, &[1, 2, 5, 5])];
    m.inits = vec![f32_init("w", &[4, 2, 3, 1], &[0.0; 24])];
    m.nodes = vec![node(
        "Conv",
        &["x", "w"],
        &["y"],
        vec![a_ints("strides", &[2, 1])],
    )];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    match &only_node(&g).op {
        Op::Conv(a) => {
            assert_eq!(a.kernel_shape, vec![3, 1]);
            assert_eq!(a.strides, vec![2, 1]);
            assert_eq!(a.dilations, vec![1, 1]);
            assert_eq!(a.pads, vec![0, 0, 0, 0]);
            assert_eq!(a.group, 1);
        }
        other => panic!("{other:?}"),
    }
    m.nodes = vec![node(
        "Conv",
        &["x", "w"],
        &["y"],
        vec![a_ints("pads", &[1, 1])],
    )];
    assert!(problems(m.load())[0]
        .message
        .contains("'pads' has 2 values"));
    // Pools need kernel_shape.
    m.nodes = vec![node("AveragePool", &["x"], &["y"], vec![])];
    assert!(problems(m.load())[0].message.contains("kernel_shape"));
}

#[test]
fn transpose_default_perm_from_declared_rank() {
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2, 3, 4])];
    m.nodes = vec![node("Transpose", &["x"], &["y"], vec![])];
    m.outputs = vec!["y"];
    assert_eq!(
        only_node(&m.load().unwrap()).op,
        Op::Transpose {
            perm: vec![2, 1, 0]
        }
    );
}

#[test]
fn transpose_after_a_node_gets_its_perm_from_a_fixup() {
    // Build by hand what the importer builds and run the fixup walk on it;
    // the input rank comes from the (declared) type of the producing node's
    // output, as inference would set it.
    let mut m = M::new(13);
    m.inputs = vec![vi("x", DType::F32, &[2, 3])];
    m.nodes = vec![
        node("Relu", &["x"], &["r"], vec![]),
        node("Transpose", &["r"], &["y"], vec![]),
    ];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    let t = g
        .nodes()
        .map(|(_, n)| n)
        .find(|n| n.name == "Transpose_1")
        .unwrap();
    // The perm has the rank inference gave the Relu output.
    let rank = g.ty(t.input(0).unwrap()).shape.rank();
    assert_eq!(
        t.op,
        Op::Transpose {
            perm: (0..rank).rev().collect()
        }
    );
}

#[test]
fn upsample_and_resize10_become_resize() {
    let mut m = M::new(8);
    m.inputs = vec![vi("x", DType::F32, &[1, 1, 2, 2])];
    m.nodes = vec![node(
        "Upsample",
        &["x"],
        &["y"],
        vec![AttributeProto {
            floats: vec![1.0, 1.0, 2.0, 2.0],
            ..attr("scales", AttributeType::FLOATS)
        }],
    )];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert!(matches!(&n.op, Op::Resize(a) if a.coord == crate::ir::CoordTransform::Asymmetric));
    assert_eq!(n.inputs[1], None);
    assert_eq!(const_in(&g, n, 2).as_f32().unwrap(), &[1.0, 1.0, 2.0, 2.0]);

    m.opset = 10;
    m.inits = vec![f32_init("s", &[4], &[1.0, 1.0, 2.0, 2.0])];
    m.nodes = vec![node(
        "Resize",
        &["x", "s"],
        &["y"],
        vec![a_str("mode", "linear")],
    )];
    let g = m.load().unwrap();
    let n = only_node(&g);
    assert_eq!(n.inputs.len(), 3);
    assert_eq!(n.inputs[1], None);
}

#[test]
fn initializers_listed_as_inputs_are_constants() {
    let mut m = M::new(8);
    m.inputs = vec![vi("x", DType::F32, &[2]), vi("w", DType::F32, &[2])];
    m.inits = vec![f32_init("w", &[2], &[1.0, 2.0])];
    m.nodes = vec![node("Add", &["x", "w"], &["y"], vec![])];
    m.outputs = vec!["y"];
    let g = m.load().unwrap();
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(g.value(g.inputs[0]).name, "x");
    assert_eq!(g.consts.len(), 1);
}

#[test]
fn inputs_without_tensor_type_are_problems() {
    let mut m = M::new(13);
    m.inputs = vec![out("x")];
    m.nodes = vec![node("Relu", &["x"], &["y"], vec![])];
    m.outputs = vec!["y"];
    let p = problems(m.load());
    assert_eq!(p[0].op_type, "input");
    assert!(p[0].message.contains("no type"), "{p:?}");
}

#[test]
fn read_tensor_pb_reads_backend_test_tensors() {
    let dir = temp_dir("pb");
    let mut t = i64_init("input_0", &[4, 5]);
    t.dims = vec![2];
    let p = dir.join("input_0.pb");
    std::fs::write(&p, t.write_to_bytes().unwrap()).unwrap();
    let (name, x) = read_tensor_pb(&p).unwrap();
    assert_eq!(name, "input_0");
    assert!(x.data() == &TensorData::I64(vec![4, 5]));
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(read_tensor_pb(&p), Err(Error::Malformed { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deterministic xorshift for the fuzz loop.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn hostile_bytes_never_panic() {
    let mut m = M::new(11);
    m.inputs = vec![vi("x", DType::F32, &[1, 2, 4, 4])];
    m.inits = vec![
        f32_init("w", &[2, 2, 1, 1], &[1.0; 4]),
        i64_init("shape", &[1, -1]),
    ];
    m.nodes = vec![
        node(
            "Conv",
            &["x", "w"],
            &["c"],
            vec![a_ints("kernel_shape", &[1, 1])],
        ),
        // The default perm reverses: [1,2,4,4] -> [4,4,2,1].
        node("Transpose", &["c"], &["t"], vec![]),
        node("Squeeze", &["t"], &["s"], vec![a_ints("axes", &[3])]),
        node("Reshape", &["s", "shape"], &["r"], vec![]),
        node("Constant", &[], &["k"], vec![a_float("value_float", 2.0)]),
        node("Mul", &["r", "k"], &["y"], vec![]),
    ];
    m.outputs = vec!["y"];
    let bytes = m.bytes();
    if let Err(e) = load_bytes(&bytes, None) {
        panic!("{e}");
    }
    for len in 0..bytes.len() {
        let _ = load_bytes(&bytes[..len], None);
    }
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        let flips = 1 + next(&mut state) % 4;
        for _ in 0..flips {
            let i = (next(&mut state) % b.len() as u64) as usize;
            b[i] ^= 1 << (next(&mut state) % 8);
        }
        let _ = load_bytes(&b, None);
    }
}

/// Imports every ONNX backend node test model found under
/// `$MLC_ONNX_NODE_TESTS/<case>/model.onnx` and prints one line per case
/// (`name<TAB>ok|error`). A survey tool, not a check: run with
/// `cargo test --lib survey_node_tests -- --ignored --nocapture`.
#[test]
#[ignore]
fn survey_node_tests() {
    let Ok(root) = std::env::var("MLC_ONNX_NODE_TESTS") else {
        return;
    };
    let mut cases: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    cases.sort();
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let r = load(&dir.join("model.onnx"));
        let line = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string().replace('\n', " "),
        };
        println!("SURVEY\t{name}\t{line}");
    }
}

/// Longer fuzzing of real files: every `<dir>/*/model.onnx` under
/// `$MLC_FUZZ_DIR`, truncated at many lengths and with random bit flips
/// (`$MLC_FUZZ_ITERS` per file). Every result must be Ok or Err.
#[test]
#[ignore]
fn fuzz_model_files() {
    let Ok(root) = std::env::var("MLC_FUZZ_DIR") else {
        return;
    };
    let iters: usize = std::env::var("MLC_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut state = 0x2545f4914f6cdd1du64;
    let mut files = 0;
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("model.onnx")) else {
            continue;
        };
        files += 1;
        let step = (bytes.len() / 64).max(1);
        for len in (0..bytes.len()).step_by(step) {
            let _ = load_bytes(&bytes[..len], None);
        }
        for _ in 0..iters {
            let mut b = bytes.clone();
            for _ in 0..1 + next(&mut state) % 3 {
                let i = (next(&mut state) % b.len() as u64) as usize;
                b[i] = next(&mut state) as u8;
            }
            let _ = load_bytes(&b, None);
        }
    }
    println!("fuzzed {files} files");
}

/// Shrink goes through the generic importer: its attributes by its schema
/// (defaults included), the same schema printing the text form and writing
/// the export; a wrong attribute type is a problem that names it.
#[test]
fn schema_driven_import_text_and_export() {
    let mut m = M::new(21);
    m.inputs = vec![vi("x", DType::F32, &[3])];
    m.outputs = vec!["y"];
    m.nodes = vec![node("Shrink", &["x"], &["y"], vec![a_float("lambd", 1.5)])];
    let g = m.load().unwrap();
    assert_eq!(
        only_node(&g).op,
        Op::Shrink {
            lambd: 1.5,
            bias: 0.0
        }
    );
    let text = crate::ir::text::print(&g);
    assert!(text.contains("= Shrink[lambd=1.5, bias=0](%0)"), "{text}");
    assert_eq!(
        crate::ir::text::print(&crate::ir::text::parse(&text).unwrap()),
        text
    );
    let back = export::to_model(&g).unwrap();
    let n = &back.graph.node[0];
    let attrs: Vec<(&str, f32)> = n.attribute.iter().map(|a| (a.name.as_str(), a.f)).collect();
    assert_eq!(
        (n.op_type.as_str(), attrs),
        ("Shrink", vec![("lambd", 1.5), ("bias", 0.0)])
    );
    m.nodes = vec![node("Shrink", &["x"], &["y"], vec![a_int("bias", 1)])];
    let p = problems(m.load());
    assert!(
        p[0].to_string().contains("attribute 'bias' must be FLOAT"),
        "{p:?}"
    );
}

/// Every op kind of the IR that ONNX has (all but the ops mlc's passes
/// make) has a row in the import table at the export opset, so a new op's
/// missing row fails here.
#[test]
fn every_standard_op_of_the_schema_imports() {
    for p in crate::ir::ops::prototypes() {
        let t = p.onnx_type();
        if crate::ir::ops::def(&p).standard {
            assert!(
                ops::find(t, export::BASE_OPSET).is_ok(),
                "{t} has no importer"
            );
        }
    }
}

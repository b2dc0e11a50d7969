//! `fold-constants`: evaluate what is known before the model runs.
//!
//! A node whose inputs are all constants computes the same tensor on every
//! run, so the pass evaluates it once with the reference kernels and reads
//! the result as a constant instead. `Shape` and `Size` only look at their
//! input's static type, so they fold as soon as the dims they report are
//! known, even when the input's data is not (a `Shape` slice folds when the
//! dims in its range are known while others stay symbolic). Evaluation walks
//! the graph in topological order with a local table of known tensors, so a
//! whole chain such as torch's `Shape -> Gather -> Unsqueeze -> Concat` folds
//! in one run; only the chain's results that something else still reads (or
//! that are graph outputs) become constants, named after the values they
//! replace. The graph is left untouched until every fold is decided, then the
//! folded nodes are removed and their surviving outputs rewired.
//!
//! Outputs larger than `max_elements` are not materialized (the node stays).
//! An evaluation error on constant inputs means the model can never run, so
//! it is returned rather than skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Changed, ParamSpec, ParamValue, Params, Pass, PassCx, PassInfo};
use crate::ir::ops;
use crate::ir::{checked_numel, infer, Graph, Node, NodeId, Op, Tensor, ValueId};
use crate::{Error, Result};

/// The default `max_elements`.
pub const DEFAULT_MAX_ELEMENTS: usize = 1 << 22;

fn default_max_elements() -> ParamValue {
    ParamValue::Int(DEFAULT_MAX_ELEMENTS as i64)
}

fn make(p: &Params) -> Box<dyn Pass> {
    Box::new(FoldConstants {
        max_elements: usize::try_from(p.int("max_elements")).unwrap_or(0),
        decode_weights_at_any_size: false,
    })
}

/// Registry entry of `fold-constants`.
pub const INFO: PassInfo = PassInfo {
    name: "fold-constants",
    summary: "evaluate nodes whose inputs are constants, and Shape/Size of values with known dims",
    params: &[ParamSpec {
        name: "max_elements",
        default: default_max_elements,
        help: "largest output (in elements) to materialize as a constant",
    }],
    make,
};

/// The `fold-constants` pass.
#[derive(Debug, Clone)]
pub struct FoldConstants {
    /// Outputs with more elements than this are left to run time.
    pub max_elements: usize,
    /// Fold DequantizeLinear and Cast of constants (weights stored as
    /// int8/int4/f16) whatever their size: the runtime's plan wants them
    /// decoded once, while a compiled artifact must keep them compressed.
    pub decode_weights_at_any_size: bool,
}

/// One decided fold: the node and the tensors of all its outputs.
struct Fold {
    node: NodeId,
    op: &'static str,
    outputs: Vec<(ValueId, Arc<Tensor>)>,
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let folds = self.plan(g)?;
        if folds.is_empty() {
            return Ok(Changed::No);
        }
        for f in &folds {
            g.remove_node(f.node);
            cx.count(&format!("fold {}", f.op));
        }
        // Outputs still read by a live node or the graph become constants;
        // the rest only fed other folded nodes.
        let mut read: HashSet<ValueId> = g.outputs.iter().copied().collect();
        for (_, n) in g.nodes() {
            read.extend(n.inputs.iter().flatten());
        }
        for f in folds {
            for (v, t) in f.outputs {
                if read.contains(&v) {
                    let name = g.value(v).name.clone();
                    let c = g.add_const(name, t);
                    g.replace_uses(v, c);
                }
            }
        }
        infer::infer_graph(g)?;
        Ok(Changed::Yes)
    }
}

impl FoldConstants {
    /// Decides every fold, in topological order, without changing `g`.
    fn plan(&self, g: &Graph) -> Result<Vec<Fold>> {
        let mut known: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
        let mut folds = Vec::new();
        for id in g.topo_order()? {
            let Some(node) = g.node(id) else { continue };
            let at = |e: Error| e.at_node(&node.name, node.op.onnx_type());
            let Some(outs) = self.fold_node(g, node, &known).map_err(at)? else {
                continue;
            };
            let mut outputs = Vec::with_capacity(node.outputs.len());
            for (&v, t) in node.outputs.iter().zip(outs) {
                let ty = g.ty(v);
                if t.dtype() != ty.dtype || !ty.shape.admits(t.shape()) {
                    return Err(at(Error::Internal(format!(
                        "output '{}' folds to {}{:?} but was inferred as {ty}",
                        g.value(v).name,
                        t.dtype(),
                        t.shape()
                    ))));
                }
                let t = Arc::new(t);
                known.insert(v, t.clone());
                outputs.push((v, t));
            }
            folds.push(Fold {
                node: id,
                op: node.op.onnx_type(),
                outputs,
            });
        }
        Ok(folds)
    }

    /// The node's output tensors when it folds, `None` when it does not.
    fn fold_node(
        &self,
        g: &Graph,
        node: &Node,
        known: &HashMap<ValueId, Arc<Tensor>>,
    ) -> Result<Option<Vec<Tensor>>> {
        if let Some(t) = shape_fold(g, node) {
            return Ok((t.numel() <= self.max_elements).then(|| vec![t]));
        }
        let max_elements = if self.decode_weights_at_any_size
            && matches!(node.op, Op::DequantizeLinear { .. } | Op::Cast { .. })
        {
            usize::MAX
        } else {
            self.max_elements
        };
        let lookup = |v: ValueId| known.get(&v).or_else(|| g.consts.get(&v));
        if node.inputs.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut args = Vec::with_capacity(node.inputs.len());
        for i in &node.inputs {
            match i {
                None => args.push(None),
                Some(v) => match lookup(*v) {
                    Some(t) => args.push(Some(t.as_ref())),
                    None => return Ok(None),
                },
            }
        }
        // Skip before evaluating when the declared size is already too large.
        let too_big = node.outputs.iter().any(|&o| {
            g.ty(o)
                .shape
                .concrete()
                .is_some_and(|d| checked_numel(&d).is_none_or(|n| n > max_elements))
        });
        if too_big {
            return Ok(None);
        }
        let mut outs = ops::eval(&node.op, &args, node.outputs.len())?;
        if outs.len() < node.outputs.len() {
            return Err(Error::Internal(format!(
                "the kernel gave {} outputs, the node has {}",
                outs.len(),
                node.outputs.len()
            )));
        }
        outs.truncate(node.outputs.len());
        if outs.iter().any(|t| t.numel() > max_elements) {
            return Ok(None);
        }
        Ok(Some(outs))
    }
}

/// `Shape` (over its requested range) or `Size` of a value whose relevant
/// dims are statically known, whatever its data.
fn shape_fold(g: &Graph, node: &Node) -> Option<Tensor> {
    if node.outputs.len() != 1 {
        return None;
    }
    let x = node.input(0)?;
    let shape = &g.ty(x).shape;
    match node.op {
        Op::Shape { start, end } => {
            let (s, e) = infer::shape_range(shape.rank(), start, end);
            let dims: Option<Vec<i64>> = shape.dims()[s..e]
                .iter()
                .map(|d| d.known().and_then(|n| i64::try_from(n).ok()))
                .collect();
            Some(Tensor::vec_i64(dims?))
        }
        Op::Size => {
            let n = checked_numel(&shape.concrete()?)?;
            Some(Tensor::scalar_i64(i64::try_from(n).ok()?))
        }
        _ => None,
    }
}

/// Graph building and pass running for the tests of the cleanup passes.
#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::BTreeMap;

    use crate::ir::{
        infer, text, verify, DType, Graph, Node, Op, Shape, Tensor, TensorType, ValueId,
    };
    use crate::transform::{lookup, Changed, PassCx};

    /// Adds a node with `n_out` outputs typed by inference; returns them.
    pub fn node(g: &mut Graph, op: Op, inputs: &[Option<ValueId>], n_out: usize) -> Vec<ValueId> {
        let k = g.node_capacity();
        let outs: Vec<ValueId> = (0..n_out)
            .map(|i| {
                let name = if n_out == 1 {
                    format!("v{k}")
                } else {
                    format!("v{k}_{i}")
                };
                g.add_value(name, TensorType::new(DType::F32, Shape::scalar()))
            })
            .collect();
        let n = Node {
            name: format!("n{k}"),
            op,
            inputs: inputs.to_vec(),
            outputs: outs.clone(),
        };
        let tys = infer::infer_node(g, &n).expect("test graphs are well typed");
        for (&o, t) in outs.iter().zip(tys) {
            g.value_mut(o).ty = t;
        }
        g.add_node(n);
        outs
    }

    /// A one-output node on present inputs.
    pub fn node1(g: &mut Graph, op: Op, inputs: &[ValueId]) -> ValueId {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        node(g, op, &ins, 1)[0]
    }

    /// Runs the registered pass with default parameters, then the verifier.
    pub fn run(name: &str, g: &mut Graph) -> (Changed, BTreeMap<String, usize>) {
        let info = lookup(name).expect("registered");
        let params = info.params(&BTreeMap::new()).expect("defaults");
        let mut pass = (info.make)(&params);
        let mut cx = PassCx::default();
        let changed = pass.run(g, &mut cx).expect("the pass runs");
        verify::verify(g).expect("the pass leaves a valid graph");
        (changed, cx.rewrites)
    }

    /// The golden check ([`crate::transform::testing::check_pass`]) of
    /// `name` on `before`, plus the rewrites the pass counted.
    pub fn golden(name: &str, before: &str, after: &str) -> BTreeMap<String, usize> {
        crate::transform::testing::check_pass(name, before, after);
        let mut g = text::parse(before).expect("BEFORE parses");
        run(name, &mut g).1
    }

    /// Loads `fixtures/<name>/model.onnx` with its sample inputs and the
    /// ONNX Runtime outputs (files `input_<name>.npy`, `expected_<name>.npy`).
    pub fn fixture(name: &str) -> (Graph, Vec<Tensor>, Vec<Tensor>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        let g = crate::formats::onnx::load(&dir.join("model.onnx")).expect("fixture loads");
        let read = |prefix: &str, v: ValueId| {
            let f = dir.join(format!("{prefix}_{}.npy", g.value(v).name));
            crate::formats::npy::read_npy(&f).expect("fixture data")
        };
        let inputs = g.inputs.iter().map(|&v| read("input", v)).collect();
        let expected = g.outputs.iter().map(|&v| read("expected", v)).collect();
        (g, inputs, expected)
    }

    /// Gives every graph input the concrete shape of `inputs` and re-infers.
    pub fn specialize(g: &mut Graph, inputs: &[Tensor]) {
        for (&v, t) in g.inputs.clone().iter().zip(inputs) {
            g.value_mut(v).ty.shape = Shape::known(t.shape());
        }
        infer::infer_graph(g).expect("specialized graph infers");
    }

    /// Runs `g` with the interpreter and compares with `expected` within
    /// rtol 1e-4 / atol 1e-5.
    pub fn assert_runs_like(g: &Graph, inputs: &[Tensor], expected: &[Tensor]) {
        let got = crate::interp::run(g, inputs.to_vec()).expect("the graph runs");
        assert_eq!(got.len(), expected.len());
        for (i, (a, b)) in got.iter().zip(expected).enumerate() {
            assert_eq!(a.shape(), b.shape(), "output {i}");
            for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
                assert!(
                    (x - y).abs() <= 1e-5 + 1e-4 * y.abs(),
                    "output {i}: {x} vs {y}"
                );
            }
        }
    }

    /// Live nodes whose op is `onnx_type`.
    pub fn count_ops(g: &Graph, onnx_type: &str) -> usize {
        g.nodes()
            .filter(|(_, n)| n.op.onnx_type() == onnx_type)
            .count()
    }

    /// The rewrites map as `[("name", count)]` for compact assertions.
    pub fn counts(r: &BTreeMap<String, usize>) -> Vec<(&str, usize)> {
        r.iter().map(|(k, &v)| (k.as_str(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{counts, golden, node, node1, run};
    use super::*;
    use crate::ir::{BinaryOp, DType, Dim, Shape, TensorType};
    use crate::transform::Changed;

    fn f32_in(g: &mut Graph, name: &str, dims: Vec<Dim>) -> ValueId {
        g.add_input(name, TensorType::new(DType::F32, Shape(dims)))
    }

    #[test]
    fn folds_a_constant_chain_and_keeps_only_what_is_read() {
        let r = golden(
            "fold-constants",
            r#"graph "t" opset 17
              input  %0 x: f32[2]
              const  %1 a: f32[2] = [1, 2]
              const  %2 b: f32[] = [3]
              %3 ab: f32[2] = Mul(%1, %2)  # n0
              %4 neg: f32[2] = Neg(%3)  # n1
              %5 y: f32[2] = Add(%0, %4)  # n2
              output %5 y"#,
            // `ab` only fed the folded Neg: no constant for it; the old
            // constants are left to dce.
            r#"graph "t" opset 17
              input  %0 x: f32[2]
              const  %1 a: f32[2] = [1, 2]
              const  %2 b: f32[] = [3]
              const  %3 neg: f32[2] = [-3, -6]
              %4 y: f32[2] = Add(%0, %3)  # n2
              output %4 y"#,
        );
        assert_eq!(counts(&r), [("fold Mul", 1), ("fold Neg", 1)]);
    }

    #[test]
    fn shape_slices_fold_when_their_dims_are_known() {
        let r = golden(
            "fold-constants",
            r#"graph "t" opset 17
              input  %0 x: f32[batch,3,4]
              %1 full: i64[3] = Shape[start=0](%0)  # n0
              %2 tail: i64[2] = Shape[start=-2](%0)  # n1
              %3 head: i64[1] = Shape[start=0, end=1](%0)  # n2
              %4 size: i64[] = Size(%0)  # n3
              output %1 full
              output %2 tail
              output %3 head
              output %4 size"#,
            r#"graph "t" opset 17
              input  %0 x: f32[batch,3,4]
              const  %1 tail: i64[2] = [3, 4]
              %2 full: i64[3] = Shape[start=0](%0)  # n0
              %3 head: i64[1] = Shape[start=0, end=1](%0)  # n2
              %4 size: i64[] = Size(%0)  # n3
              output %2 full
              output %1 tail
              output %3 head
              output %4 size"#,
        );
        assert_eq!(counts(&r), [("fold Shape", 1)]);
        golden(
            "fold-constants",
            r#"graph "t" opset 17
              input  %0 x: f32[2,3,4]
              %1 full: i64[3] = Shape[start=0](%0)  # n0
              %2 size: i64[] = Size(%0)  # n1
              output %1 full
              output %2 size"#,
            r#"graph "t" opset 17
              input  %0 x: f32[2,3,4]
              const  %1 full: i64[3] = [2, 3, 4]
              const  %2 size: i64[] = [24]
              output %1 full
              output %2 size"#,
        );
    }

    #[test]
    fn torch_shape_chain_folds_with_known_dims() {
        // Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])).
        let chain = |dims: &str| {
            format!(
                r#"graph "t" opset 17
                  input  %0 x: f32[{dims}]
                  const  %1 i0: i64[] = [0]
                  const  %2 ax: i64[1] = [0]
                  const  %3 m1: i64[1] = [-1]
                  %4 s: i64[3] = Shape[start=0](%0)  # n0
                  %5 d0: i64[] = Gather[axis=0](%4, %1)  # n1
                  %6 u: i64[1] = Unsqueeze(%5, %2)  # n2
                  %7 shp: i64[2] = Concat[axis=0](%6, %3)  # n3
                  %8 y: f32[{first},12] = Reshape(%0, %7)  # n4
                  output %8 y"#,
                first = dims.split(',').next().unwrap_or_default()
            )
        };
        let symbolic = chain("b,3,4");
        let r = golden("fold-constants", &symbolic, &symbolic);
        assert!(r.is_empty());
        let r = golden(
            "fold-constants",
            &chain("2,3,4"),
            r#"graph "t" opset 17
              input  %0 x: f32[2,3,4]
              const  %1 i0: i64[] = [0]
              const  %2 ax: i64[1] = [0]
              const  %3 m1: i64[1] = [-1]
              const  %4 shp: i64[2] = [2, -1]
              %5 y: f32[2,12] = Reshape(%0, %4)  # n4
              output %5 y"#,
        );
        assert_eq!(
            counts(&r),
            [
                ("fold Concat", 1),
                ("fold Gather", 1),
                ("fold Shape", 1),
                ("fold Unsqueeze", 1)
            ]
        );
    }

    #[test]
    fn max_elements_limits_what_is_materialized() {
        let mut g = Graph::new("t", 17);
        let v = g.add_const("v", Tensor::scalar_f32(1.5));
        let shp = g.add_const("shp", Tensor::vec_i64(vec![4, 4]));
        let big = node1(&mut g, Op::Expand, &[v, shp]);
        g.outputs.push(big);
        let info = crate::transform::lookup("fold-constants").unwrap();
        let mut given = std::collections::BTreeMap::new();
        given.insert("max_elements".to_string(), ParamValue::Int(15));
        let mut pass = (info.make)(&info.params(&given).unwrap());
        let mut cx = PassCx::default();
        assert_eq!(pass.run(&mut g, &mut cx).unwrap(), Changed::No);
        assert_eq!(g.node_count(), 1);

        given.insert("max_elements".to_string(), ParamValue::Int(16));
        let mut pass = (info.make)(&info.params(&given).unwrap());
        assert_eq!(pass.run(&mut g, &mut cx).unwrap(), Changed::Yes);
        assert_eq!(g.node_count(), 0);
        let t = g.const_value(g.outputs[0]).unwrap();
        assert_eq!(t.shape(), &[4, 4]);
        assert_eq!(t.as_f32().unwrap(), [1.5; 16]);
    }

    #[test]
    fn multi_output_nodes_fold_every_output() {
        let mut g = Graph::new("t", 17);
        let x = f32_in(&mut g, "x", vec![Dim::Known(2)]);
        let c = g.add_const(
            "c",
            Tensor::from_f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
        );
        let parts = node(
            &mut g,
            Op::Split {
                axis: 0,
                num_outputs: 2,
            },
            &[Some(c)],
            2,
        );
        let y = node1(&mut g, Op::Binary(BinaryOp::Sub), &[parts[1], x]);
        g.outputs.extend([parts[0], y]);
        let (_, r) = run("fold-constants", &mut g);
        assert_eq!(counts(&r), [("fold Split", 1)]);
        let first = g.const_value(g.outputs[0]).unwrap();
        assert_eq!(first.as_f32().unwrap(), [1.0, 2.0]);
        let sub = g.producer(g.outputs[1]).unwrap();
        let second = g.node(sub).unwrap().input(0).unwrap();
        assert_eq!(g.const_value(second).unwrap().as_f32().unwrap(), [3.0, 4.0]);
        assert_eq!(g.value(g.outputs[0]).name, "v0_0");
    }

    #[test]
    fn evaluation_errors_on_constants_are_returned() {
        let mut g = Graph::new("t", 17);
        let x = f32_in(&mut g, "x", vec![Dim::Known(1)]);
        let c = g.add_const("c", Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap());
        let idx = g.add_const("idx", Tensor::scalar_i64(0));
        let gth = node1(&mut g, Op::Gather { axis: 0 }, &[c, idx]);
        let y = node1(&mut g, Op::Binary(BinaryOp::Add), &[x, gth]);
        g.outputs.push(y);
        // Corrupt the index after inference: out of range at run time.
        g.consts.insert(idx, Arc::new(Tensor::scalar_i64(7)));
        let mut pass = FoldConstants {
            max_elements: 100,
            decode_weights_at_any_size: false,
        };
        let e = pass.run(&mut g, &mut PassCx::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("n0") && msg.contains("Gather"), "{msg}");
        // Nothing was changed.
        assert_eq!(g.node_count(), 2);
    }

    #[test]
    fn transformer_fixture_still_matches_after_folding() {
        use super::testutil::{assert_runs_like, count_ops, fixture, specialize};
        // Dynamic dims: weight transposes and constant shape pieces fold,
        // the Shape chains of symbolic dims stay.
        let (mut g, inputs, expected) = fixture("transformer");
        let before = g.node_count();
        let shapes = count_ops(&g, "Shape");
        assert!(shapes > 0);
        let (_, r) = run("fold-constants", &mut g);
        assert!(r.get("fold Transpose").is_some_and(|&n| n > 0), "{r:?}");
        run("dce", &mut g);
        assert!(g.node_count() < before);
        assert_runs_like(&g, &inputs, &expected);

        // Known dims: every Shape -> Gather -> Unsqueeze -> Concat chain
        // (and the position Range) becomes a constant.
        let (mut g, inputs, expected) = fixture("transformer");
        specialize(&mut g, &inputs);
        let concats = count_ops(&g, "Concat");
        assert!(concats > 0);
        let (_, r) = run("fold-constants", &mut g);
        assert_eq!(r.get("fold Shape"), Some(&shapes), "{r:?}");
        assert_eq!(r.get("fold Concat"), Some(&concats), "{r:?}");
        run("dce", &mut g);
        // (The Unsqueezes of the attention mask are data, and stay.)
        for op in ["Shape", "Concat", "Range"] {
            assert_eq!(
                count_ops(&g, op),
                0,
                "{op} left:\n{}",
                crate::ir::text::print(&g)
            );
        }
        assert_runs_like(&g, &inputs, &expected);
    }
}

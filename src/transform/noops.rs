//! `remove-noops`: drop nodes whose output is one of their inputs.
//!
//! Exporters leave many nodes that copy their input unchanged: Identity,
//! inference Dropout, a Reshape/Expand/Tile/Squeeze/Unsqueeze/Flatten to the
//! shape the input already has, a Transpose with the identity permutation, a
//! Cast to the input's dtype, a full Slice, a one-input Concat, a Pad by
//! zeros, and arithmetic with a neutral constant (`x + 0`, `0 + x`, `x - 0`,
//! `x * 1`, `1 * x`, `x / 1`) where broadcasting leaves `x`'s shape and dtype
//! unchanged. Shape checks compare static types, so equal symbols count as
//! equal sizes. Readers of such a node's output read its input instead.
//!
//! Graph outputs keep their names and stay distinct values: when the no-op's
//! output is a graph output, its input takes over the name, unless that input
//! is a graph input or (already, or through an earlier removal) another graph
//! output; then the node stays. The pass decides every removal in
//! topological order first (mapping removed outputs to their sources, so
//! chains of no-ops go in one run), then patches.

use std::collections::{HashMap, HashSet};

use super::{Changed, Params, Pass, PassCx, PassInfo};
use crate::ir::{infer, BinaryOp, Graph, Node, NodeId, Op, Tensor, ValueId};
use crate::Result;

fn make(_: &Params) -> Box<dyn Pass> {
    Box::new(RemoveNoops)
}

/// Registry entry of `remove-noops`.
pub const INFO: PassInfo = PassInfo {
    name: "remove-noops",
    summary:
        "remove nodes that return their input unchanged (Identity, x*1, same-shape Reshape, ...)",
    params: &[],
    make,
};

/// The `remove-noops` pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveNoops;

/// One decided removal: the node, its output, the value that replaces it.
struct Removal {
    node: NodeId,
    out: ValueId,
    src: ValueId,
    kind: &'static str,
}

impl Pass for RemoveNoops {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let removals = plan(g)?;
        if removals.is_empty() {
            return Ok(Changed::No);
        }
        for r in removals {
            g.remove_node(r.node);
            g.replace_uses(r.out, r.src);
            cx.count(r.kind);
        }
        infer::infer_graph(g)?;
        Ok(Changed::Yes)
    }
}

fn plan(g: &Graph) -> Result<Vec<Removal>> {
    let mut canon: HashMap<ValueId, ValueId> = HashMap::new();
    let mut outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    let mut removals = Vec::new();
    for id in g.topo_order()? {
        let Some(node) = g.node(id) else { continue };
        let m = Matcher { g, canon: &canon };
        let Some((pos, kind)) = m.noop_input(node) else {
            continue;
        };
        let (Some(&out), Some(src)) = (node.outputs.first(), node.input(pos)) else {
            continue;
        };
        let src = m.canon(src);
        if g.is_output(out) {
            // The source would become this graph output: it must not be a
            // graph input or another graph output.
            if g.inputs.contains(&src) || outputs.contains(&src) {
                continue;
            }
            outputs.insert(src);
        }
        canon.insert(out, src);
        removals.push(Removal {
            node: id,
            out,
            src,
            kind,
        });
    }
    Ok(removals)
}

/// Reads the graph as it will be after the removals decided so far.
struct Matcher<'a> {
    g: &'a Graph,
    canon: &'a HashMap<ValueId, ValueId>,
}

impl Matcher<'_> {
    fn canon(&self, v: ValueId) -> ValueId {
        self.canon.get(&v).copied().unwrap_or(v)
    }

    /// The constant at input `i`, seen through removed no-ops.
    fn konst(&self, node: &Node, i: usize) -> Option<&Tensor> {
        self.g.const_value(self.canon(node.input(i)?))
    }

    fn ints(&self, node: &Node, i: usize) -> Option<Vec<i64>> {
        self.konst(node, i)?.to_i64_vec()
    }

    /// Whether input `i` and output 0 have the same static type.
    fn same_type(&self, node: &Node, i: usize) -> bool {
        match (node.input(i), node.outputs.first()) {
            (Some(x), Some(&y)) => self.g.ty(x) == self.g.ty(y),
            _ => false,
        }
    }

    /// Whether input `i` is a constant whose every element equals `v`.
    fn all_equal(&self, node: &Node, i: usize, v: f64) -> bool {
        self.konst(node, i)
            .is_some_and(|t| !t.dtype().is_storage_only() && t.to_f64_vec().iter().all(|&x| x == v))
    }

    /// Which input the node's single output copies, and the rewrite name.
    fn noop_input(&self, node: &Node) -> Option<(usize, &'static str)> {
        let single = node.outputs.len() == 1;
        match &node.op {
            Op::Identity if single => Some((0, "remove Identity")),
            Op::Dropout => {
                let mask_unused = node
                    .outputs
                    .get(1)
                    .is_none_or(|&m| self.g.use_count(m) == 0);
                let inference = match node.input(2) {
                    None => true,
                    Some(_) => {
                        self.all_equal(node, 2, 0.0)
                            || self
                                .konst(node, 1)
                                .is_some_and(|r| r.to_f64_vec().first() == Some(&0.0))
                    }
                };
                (mask_unused && inference).then_some((0, "remove Dropout"))
            }
            Op::Reshape { .. } if single && self.same_type(node, 0) => Some((0, "remove Reshape")),
            Op::Expand if single && self.same_type(node, 0) => Some((0, "remove Expand")),
            Op::Flatten { .. } if single && self.same_type(node, 0) => Some((0, "remove Flatten")),
            Op::Tile if single => {
                let ones = self
                    .ints(node, 1)
                    .is_some_and(|r| r.iter().all(|&k| k == 1));
                (ones || self.same_type(node, 0)).then_some((0, "remove Tile"))
            }
            Op::Squeeze if single => {
                let noop = match node.input(1) {
                    // Each axis drops a dim: an unchanged type means none.
                    Some(_) => {
                        self.ints(node, 1).is_some_and(|a| a.is_empty()) || self.same_type(node, 0)
                    }
                    // Without axes every size-1 dim goes: all must be known.
                    None => {
                        self.same_type(node, 0)
                            && node
                                .input(0)
                                .is_some_and(|x| self.g.ty(x).shape.concrete().is_some())
                    }
                };
                noop.then_some((0, "remove Squeeze"))
            }
            Op::Unsqueeze if single => {
                let no_axes = self.ints(node, 1).is_some_and(|a| a.is_empty());
                (no_axes || self.same_type(node, 0)).then_some((0, "remove Unsqueeze"))
            }
            Op::Transpose { perm } if single => perm
                .iter()
                .enumerate()
                .all(|(i, &p)| i == p)
                .then_some((0, "remove Transpose")),
            Op::Cast { to, .. } if single => {
                let x = node.input(0)?;
                (self.g.ty(x).dtype == *to).then_some((0, "remove Cast"))
            }
            Op::Slice if single && self.full_slice(node) => Some((0, "remove Slice")),
            Op::Concat { .. } if single && node.inputs.len() == 1 => Some((0, "remove Concat")),
            Op::Pad { .. } if single => self
                .ints(node, 1)
                .is_some_and(|p| p.iter().all(|&k| k == 0))
                .then_some((0, "remove Pad")),
            Op::Binary(op) if single => self.neutral_binary(node, *op),
            _ => None,
        }
    }

    /// A Slice with step 1 everywhere that keeps every element: either its
    /// constant starts/ends cover each sliced axis or inference already
    /// found the output type equal to the input's.
    fn full_slice(&self, node: &Node) -> bool {
        let steps_one = match node.input(4) {
            None => true,
            Some(_) => self
                .ints(node, 4)
                .is_some_and(|s| s.iter().all(|&k| k == 1)),
        };
        if !steps_one {
            return false;
        }
        if self.same_type(node, 0) {
            return true;
        }
        let (Some(x), Some(starts), Some(ends)) =
            (node.input(0), self.ints(node, 1), self.ints(node, 2))
        else {
            return false;
        };
        let shape = &self.g.ty(x).shape;
        let rank = shape.rank() as i64;
        let axes = match node.input(3) {
            None => (0..starts.len() as i64).collect(),
            Some(_) => match self.ints(node, 3) {
                Some(a) => a,
                None => return false,
            },
        };
        if axes.len() != starts.len() || ends.len() != starts.len() {
            return false;
        }
        axes.iter()
            .zip(starts.iter().zip(&ends))
            .all(|(&a, (&s, &e))| {
                let a = if a < 0 { a + rank } else { a };
                let Some(dim) = usize::try_from(a).ok().and_then(|a| shape.dims().get(a)) else {
                    return false;
                };
                match dim.known() {
                    Some(d) => infer::slice_axis(d, s, e, 1) == (0, d),
                    // Open end: the same rule inference uses for symbolic dims.
                    None => s == 0 && e >= i32::MAX as i64,
                }
            })
    }

    /// `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1` with `x`'s type
    /// unchanged by broadcasting.
    fn neutral_binary(&self, node: &Node, op: BinaryOp) -> Option<(usize, &'static str)> {
        let (neutral, kind, commutes) = match op {
            BinaryOp::Add => (0.0, "remove Add zero", true),
            BinaryOp::Sub => (0.0, "remove Sub zero", false),
            BinaryOp::Mul => (1.0, "remove Mul one", true),
            BinaryOp::Div => (1.0, "remove Div one", false),
            _ => return None,
        };
        if self.all_equal(node, 1, neutral) && self.same_type(node, 0) {
            return Some((0, kind));
        }
        if commutes && self.all_equal(node, 0, neutral) && self.same_type(node, 1) {
            return Some((1, kind));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim, Shape, TensorType};
    use crate::transform::fold_constants::testutil::{counts, golden, node, node1, run};
    use crate::transform::Changed;

    fn input(g: &mut Graph, name: &str, dims: Vec<Dim>) -> ValueId {
        g.add_input(name, TensorType::new(DType::F32, Shape(dims)))
    }

    fn bn() -> Vec<Dim> {
        vec![Dim::sym("b"), Dim::Known(3)]
    }

    #[test]
    fn removes_each_kind_of_noop() {
        let mut g = Graph::new("t", 17);
        let x = input(&mut g, "x", bn());
        let shp = g.add_const("shp", Tensor::vec_i64(vec![0, 3]));
        let none = g.add_const("none", Tensor::vec_i64(vec![]));
        let zero = g.add_const("zero", Tensor::from_f32(vec![3], vec![0.0; 3]).unwrap());
        let one = g.add_const("one", Tensor::scalar_f32(1.0));
        let pads = g.add_const("pads", Tensor::vec_i64(vec![0; 4]));
        let reps = g.add_const("reps", Tensor::vec_i64(vec![1, 1]));
        let st = g.add_const("st", Tensor::vec_i64(vec![0, -5]));
        let en = g.add_const("en", Tensor::vec_i64(vec![i64::MAX, 3]));
        let mut v = node1(&mut g, Op::Identity, &[x]);
        v = node(&mut g, Op::Dropout, &[Some(v)], 2)[0];
        v = node1(&mut g, Op::Reshape { allowzero: false }, &[v, shp]);
        v = node1(&mut g, Op::Transpose { perm: vec![0, 1] }, &[v]);
        v = node1(
            &mut g,
            Op::Cast {
                to: DType::F32,
                saturate: true,
                round_mode: crate::ir::E8M0Round::Up,
            },
            &[v],
        );
        v = node1(&mut g, Op::Tile, &[v, reps]);
        v = node1(&mut g, Op::Squeeze, &[v, none]);
        v = node1(&mut g, Op::Unsqueeze, &[v, none]);
        v = node1(&mut g, Op::Slice, &[v, st, en]);
        v = node1(&mut g, Op::Concat { axis: 1 }, &[v]);
        v = node1(
            &mut g,
            Op::Pad {
                mode: crate::ir::PadMode::Constant,
            },
            &[v, pads],
        );
        v = node1(&mut g, Op::Binary(BinaryOp::Add), &[zero, v]);
        v = node1(&mut g, Op::Binary(BinaryOp::Sub), &[v, zero]);
        v = node1(&mut g, Op::Binary(BinaryOp::Mul), &[v, one]);
        v = node1(&mut g, Op::Binary(BinaryOp::Div), &[v, one]);
        let y = node1(&mut g, Op::Unary(crate::ir::UnaryOp::Exp), &[v]);
        g.outputs.push(y);
        let (changed, r) = run("remove-noops", &mut g);
        assert_eq!(changed, Changed::Yes);
        let all: Vec<(&str, usize)> = [
            "remove Add zero",
            "remove Cast",
            "remove Concat",
            "remove Div one",
            "remove Dropout",
            "remove Identity",
            "remove Mul one",
            "remove Pad",
            "remove Reshape",
            "remove Slice",
            "remove Squeeze",
            "remove Sub zero",
            "remove Tile",
            "remove Transpose",
            "remove Unsqueeze",
        ]
        .iter()
        .map(|&k| (k, 1))
        .collect();
        assert_eq!(counts(&r), all);
        assert_eq!(g.node_count(), 1);
        let exp = g.producer(g.outputs[0]).unwrap();
        assert_eq!(g.node(exp).unwrap().input(0), Some(x));
        assert_eq!(run("remove-noops", &mut g).0, Changed::No);
    }

    #[test]
    fn keeps_what_changes_data_or_shape() {
        let mut g = Graph::new("t", 17);
        let x = input(&mut g, "x", vec![Dim::Known(3), Dim::Known(3)]);
        let row = input(&mut g, "row", vec![Dim::Known(3)]);
        let zero_big = g.add_const(
            "zb",
            Tensor::from_f32(vec![2, 3, 3], vec![0.0; 18]).unwrap(),
        );
        let ones = g.add_const("ones", Tensor::from_f32(vec![2, 3], vec![1.0; 6]).unwrap());
        let half = g.add_const("half", Tensor::scalar_f32(0.5));
        let st = g.add_const("st", Tensor::vec_i64(vec![1]));
        let en = g.add_const("en", Tensor::vec_i64(vec![3]));
        let rev_st = g.add_const("rs", Tensor::vec_i64(vec![-1]));
        let rev_en = g.add_const("re", Tensor::vec_i64(vec![i64::MIN]));
        let rev_step = g.add_const("rp", Tensor::vec_i64(vec![-1]));
        let pads = g.add_const("pads", Tensor::vec_i64(vec![1, 0, -1, 0]));
        let outs = vec![
            // Square transpose: same shape, different data.
            node1(&mut g, Op::Transpose { perm: vec![1, 0] }, &[x]),
            // Broadcasting grows the shape.
            node1(&mut g, Op::Binary(BinaryOp::Add), &[x, zero_big]),
            // Broadcasting grows the row.
            node1(&mut g, Op::Binary(BinaryOp::Mul), &[row, ones]),
            // 0 - x is a negation; 1 / x a reciprocal.
            node1(&mut g, Op::Binary(BinaryOp::Sub), &[zero_big, x]),
            node1(&mut g, Op::Binary(BinaryOp::Div), &[ones, row]),
            // Not neutral.
            node1(&mut g, Op::Binary(BinaryOp::Mul), &[x, half]),
            // Partial and reversing slices.
            node1(&mut g, Op::Slice, &[x, st, en]),
            node(
                &mut g,
                Op::Slice,
                &[Some(x), Some(rev_st), Some(rev_en), None, Some(rev_step)],
                1,
            )[0],
            // Same shape, shifted data.
            node1(
                &mut g,
                Op::Pad {
                    mode: crate::ir::PadMode::Constant,
                },
                &[x, pads],
            ),
            // Cast changes the dtype.
            node1(
                &mut g,
                Op::Cast {
                    to: DType::F16,
                    saturate: true,
                    round_mode: crate::ir::E8M0Round::Up,
                },
                &[x],
            ),
            // Concat of two.
            node1(&mut g, Op::Concat { axis: 0 }, &[x, x]),
        ];
        g.outputs.extend(outs);
        // A Dropout whose mask is read stays.
        let d = node(&mut g, Op::Dropout, &[Some(x)], 2);
        g.outputs.push(d[1]);
        assert_eq!(run("remove-noops", &mut g).0, Changed::No);
    }

    #[test]
    fn graph_output_names_and_distinctness() {
        // y0 = Identity(x) with x a graph input stays (renaming the input
        // would change the model's interface). y1 = Identity(e): e takes
        // y1's name. y2 = Identity(e): e is now an output, so y2 stays.
        // y3 = Identity(e2) with e2 already a graph output stays. The chain
        // i1 -> y4 collapses onto e3, which takes y4's name.
        let r = golden(
            "remove-noops",
            r#"graph "t" opset 17
              input  %0 x: f32[b,3]
              %1 y0: f32[b,3] = Identity(%0)  # n0
              %2 e: f32[b,3] = Exp(%0)  # n1
              %3 y1: f32[b,3] = Identity(%2)  # n2
              %4 y2: f32[b,3] = Identity(%2)  # n3
              %5 e2: f32[b,3] = Neg(%0)  # n4
              %6 y3: f32[b,3] = Identity(%5)  # n5
              %7 e3: f32[b,3] = Abs(%0)  # n6
              %8 i1: f32[b,3] = Identity(%7)  # n7
              %9 y4: f32[b,3] = Identity(%8)  # n8
              output %1 y0
              output %3 y1
              output %4 y2
              output %5 e2
              output %6 y3
              output %9 y4"#,
            r#"graph "t" opset 17
              input  %0 x: f32[b,3]
              %1 y0: f32[b,3] = Identity(%0)  # n0
              %2 y1: f32[b,3] = Exp(%0)  # n1
              %3 y2: f32[b,3] = Identity(%2)  # n3
              %4 e2: f32[b,3] = Neg(%0)  # n4
              %5 y3: f32[b,3] = Identity(%4)  # n5
              %6 y4: f32[b,3] = Abs(%0)  # n6
              output %1 y0
              output %2 y1
              output %3 y2
              output %4 e2
              output %5 y3
              output %6 y4"#,
        );
        assert_eq!(counts(&r), [("remove Identity", 3)]);
    }

    #[test]
    fn neutral_arithmetic_and_shape_noops_golden() {
        let r = golden(
            "remove-noops",
            r#"graph "t" opset 17
              input  %0 x: f32[b,3]
              const  %1 zero: f32[3] = [0, 0, 0]
              const  %2 one: f32[] = [1]
              const  %3 two: f32[] = [2]
              const  %4 shp: i64[2] = [0, 3]
              %5 a: f32[b,3] = Add(%1, %0)  # add0
              %6 m: f32[b,3] = Mul(%5, %2)  # mul1
              %7 d: f32[b,3] = Div(%2, %6)  # recip
              %8 r: f32[b,3] = Reshape(%7, %4)  # reshape
              %9 t: f32[b,3] = Transpose[perm=[0, 1]](%8)  # tr
              %10 y: f32[b,3] = Mul(%9, %3)  # mul2
              output %10 y"#,
            r#"graph "t" opset 17
              input  %0 x: f32[b,3]
              const  %1 zero: f32[3] = [0, 0, 0]
              const  %2 one: f32[] = [1]
              const  %3 two: f32[] = [2]
              const  %4 shp: i64[2] = [0, 3]
              %5 d: f32[b,3] = Div(%2, %0)  # recip
              %6 y: f32[b,3] = Mul(%5, %3)  # mul2
              output %6 y"#,
        );
        assert_eq!(
            counts(&r),
            [
                ("remove Add zero", 1),
                ("remove Mul one", 1),
                ("remove Reshape", 1),
                ("remove Transpose", 1)
            ]
        );
    }

    #[test]
    fn reshape_to_the_same_symbolic_shape() {
        let mut g = Graph::new("t", 17);
        let x = input(&mut g, "x", bn());
        // Reshape(x, Shape(x)): inference propagates the symbolic shape.
        let s = node1(
            &mut g,
            Op::Shape {
                start: 0,
                end: None,
            },
            &[x],
        );
        let r = node1(&mut g, Op::Reshape { allowzero: false }, &[x, s]);
        let y = node1(&mut g, Op::Unary(crate::ir::UnaryOp::Relu), &[r]);
        g.outputs.push(y);
        crate::ir::infer::infer_graph(&mut g).unwrap();
        assert_eq!(g.ty(r), g.ty(x));
        let (_, rw) = run("remove-noops", &mut g);
        assert_eq!(counts(&rw), [("remove Reshape", 1)]);
        let relu = g.producer(g.outputs[0]).unwrap();
        assert_eq!(g.node(relu).unwrap().input(0), Some(x));
    }

    #[test]
    fn cleanup_pipeline_keeps_every_fixture_numerically_equal() {
        use crate::transform::fold_constants::testutil::{assert_runs_like, fixture, specialize};
        for name in ["mlp", "cnn", "transformer"] {
            for known_dims in [false, true] {
                let (mut g, inputs, expected) = fixture(name);
                if known_dims {
                    specialize(&mut g, &inputs);
                }
                let before = g.node_count();
                for pass in ["fold-constants", "remove-noops", "cse", "dce"] {
                    run(pass, &mut g);
                }
                assert!(g.node_count() <= before, "{name}");
                // A second round finds nothing left to do.
                for pass in ["fold-constants", "remove-noops", "cse", "dce"] {
                    assert_eq!(run(pass, &mut g).0, Changed::No, "{name}: {pass}");
                }
                if std::env::var("MLC_DUMP").is_ok() {
                    eprintln!("{}", crate::ir::text::print(&g));
                }
                assert_runs_like(&g, &inputs, &expected);
            }
        }
    }
}

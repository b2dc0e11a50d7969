//! Shape and type inference.
//!
//! Every op's output types follow from its input types, its attributes and,
//! for ops whose output shape depends on data (Reshape, Expand, Slice, ...),
//! the *values* of small integer inputs. Ranks are always known; a dim is a
//! known size or a symbol. A size that cannot be worked out statically gets a
//! fresh symbol (`unk_<n>` in [`infer_graph`], `unk_<value>_<n>` in
//! [`infer_node`]), which admits any run-time size.
//!
//! [`infer_graph`] also propagates the values of small integer tensors
//! symbolically (`Shape` of a value yields its dims, constants their
//! elements, and Gather/Concat/Slice/Unsqueeze/Cast/arithmetic/Equal/Where
//! carry them along), so the `Shape -> Gather -> Unsqueeze -> Concat ->
//! Reshape` chains of a PyTorch export with dynamic batch and sequence still
//! give exact shapes such as `[batch,seq,12,32]`. A propagated element is a
//! known integer, a symbolic product of dims (a canonical monomial such as
//! `batch*seq` or `384*seq`, which is also how such dims are named), or
//! unknown. [`infer_node`] sees only the graph's current types and constants.

use std::collections::{HashMap, HashSet};

pub(crate) mod ctx;

pub use ctx::{
    eval_dim, range_len_f64, range_len_i64, shape_range, slice_axis, split_sizes, SymInt, SymVec,
    MAX_RANGE,
};

use ctx::{dim_to_int, product, Ctx, Minter, Mono, MAX_PROP};

use crate::ir::{
    BinaryOp, DType, Dim, Graph, Node, Op, ReduceOp, TensorType, UnaryOp, ValueId, VariadicOp,
};
use crate::{Error, Result};

/// Infers the output types of one node from the current types of its inputs
/// (and the values of constant inputs). Unknown sizes get symbols named after
/// the node's first output value (`unk_<id>_<n>`).
pub fn infer_node(g: &Graph, node: &Node) -> Result<Vec<TensorType>> {
    let vals = HashMap::new();
    let first = node.outputs.first().map_or(0, |v| v.0);
    let mut mint = Minter::new(format!("unk_{first}_"), HashSet::new());
    let mut cx = Ctx {
        g,
        vals: &vals,
        mint: &mut mint,
    };
    crate::ir::ops::infer(&mut cx, node)
}

/// Infers every node output in topological order, propagating the values of
/// small integer tensors, and stores the types in `g.values`.
pub fn infer_graph(g: &mut Graph) -> Result<()> {
    let order = g.topo_order()?;
    // Symbols already used by the inputs are never minted.
    let taken: HashSet<String> = g
        .inputs
        .iter()
        .flat_map(|&i| g.ty(i).shape.0.iter())
        .filter_map(|d| match d {
            Dim::Sym(s) => Some(s.clone()),
            Dim::Known(_) => None,
        })
        .collect();
    let mut mint = Minter::new("unk_".to_string(), taken);
    let mut vals: HashMap<ValueId, SymVec> = HashMap::new();
    for id in order {
        let (outputs, types, props) = {
            let Some(node) = g.node(id) else { continue };
            let at = |e: Error| e.at_node(&node.name, node.op.onnx_type());
            let mut cx = Ctx {
                g,
                vals: &vals,
                mint: &mut mint,
            };
            let types = crate::ir::ops::infer(&mut cx, node).map_err(at)?;
            if types.len() != node.outputs.len() {
                return Err(at(Error::op(
                    node.op.onnx_type(),
                    format!(
                        "the node has {} outputs but the op gives {}",
                        node.outputs.len(),
                        types.len()
                    ),
                )));
            }
            let props = propagate(&cx, node, &types);
            (node.outputs.clone(), types, props)
        };
        for ((o, ty), p) in outputs.into_iter().zip(types).zip(props) {
            g.value_mut(o).ty = ty;
            if let Some(p) = p {
                vals.insert(o, p);
            }
        }
    }
    Ok(())
}

/// The propagated values of a node's outputs (small integer/bool tensors of
/// rank <= 1 only).
fn propagate(cx: &Ctx, node: &Node, types: &[TensorType]) -> Vec<Option<SymVec>> {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let len = match t.shape.dims() {
                [] => 1,
                [Dim::Known(n)] => *n,
                _ => return None,
            };
            if i > 0 || len > MAX_PROP || !(t.dtype.is_int() || t.dtype == DType::Bool) {
                return None;
            }
            let v = propagate_one(cx, node, t, len)?;
            (v.len() == len).then_some(v)
        })
        .collect()
}

/// Length of a propagated input as its type says (rank <= 1).
fn prop_len(cx: &Ctx, v: Option<ValueId>) -> Option<usize> {
    let v = v?;
    match cx.g.ty(v).shape.dims() {
        [] => Some(1),
        [Dim::Known(n)] => Some(*n),
        _ => None,
    }
}

/// Elementwise combination of propagated values with rank <= 1 broadcasting.
fn zip_vals(
    cx: &Ctx,
    node: &Node,
    len: usize,
    f: impl Fn(&[Option<SymInt>]) -> Option<SymInt>,
) -> Option<SymVec> {
    let ins: Vec<SymVec> = (0..node.inputs.len())
        .map(|i| {
            let v = node.input(i)?;
            cx.val(Some(v)).or_else(|| {
                prop_len(cx, Some(v))
                    .filter(|&n| n <= len)
                    .map(|n| vec![None; n])
            })
        })
        .collect::<Option<_>>()?;
    if ins.iter().any(|v| v.len() != 1 && v.len() != len) {
        return None;
    }
    Some(
        (0..len)
            .map(|k| {
                let args: Vec<Option<SymInt>> = ins
                    .iter()
                    .map(|v| {
                        if v.len() == 1 {
                            v[0].clone()
                        } else {
                            v[k].clone()
                        }
                    })
                    .collect();
                f(&args)
            })
            .collect(),
    )
}

fn known(k: i64) -> Option<SymInt> {
    Some(SymInt::Known(k))
}

fn arith(op: BinaryOp, a: &Option<SymInt>, b: &Option<SymInt>) -> Option<SymInt> {
    use SymInt::Known as K;
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    match (op, a, b) {
        (BinaryOp::Add, K(x), K(y)) => x.checked_add(*y).map(K),
        (BinaryOp::Sub, K(x), K(y)) => x.checked_sub(*y).map(K),
        (BinaryOp::Mul, K(x), K(y)) => x.checked_mul(*y).map(K),
        (BinaryOp::Div, K(x), K(y)) => x.checked_div(*y).map(K),
        (BinaryOp::Mod, K(x), K(y)) if *y != 0 => x.checked_rem(*y).map(|r| {
            // The remainder takes the divisor's sign.
            K(if r != 0 && (r < 0) != (*y < 0) {
                r + y
            } else {
                r
            })
        }),
        (BinaryOp::FMod, K(x), K(y)) => x.checked_rem(*y).map(K),
        (BinaryOp::Add | BinaryOp::Sub, s, K(0)) => Some(s.clone()),
        (BinaryOp::Add, K(0), s) => Some(s.clone()),
        (BinaryOp::Sub, x, y) if x == y => known(0),
        (BinaryOp::Mul, _, _) => Mono::of_int(a)?.mul(&Mono::of_int(b)?)?.to_int(),
        (BinaryOp::Div, _, _) => Mono::of_int(a)?.div(&Mono::of_int(b)?)?.to_int(),
        (BinaryOp::Equal, K(x), K(y)) => known((x == y) as i64),
        // Symbols are products of dims, never negative.
        (BinaryOp::Equal, SymInt::Sym(_), K(y)) | (BinaryOp::Equal, K(y), SymInt::Sym(_))
            if *y < 0 =>
        {
            known(0)
        }
        (BinaryOp::Equal, x, y) if x == y => known(1),
        (BinaryOp::Greater, K(x), K(y)) => known((x > y) as i64),
        (BinaryOp::Less, K(x), K(y)) => known((x < y) as i64),
        (BinaryOp::GreaterOrEqual, K(x), K(y)) => known((x >= y) as i64),
        (BinaryOp::LessOrEqual, K(x), K(y)) => known((x <= y) as i64),
        (BinaryOp::And, K(x), K(y)) => known((*x != 0 && *y != 0) as i64),
        (BinaryOp::Or, K(x), K(y)) => known((*x != 0 || *y != 0) as i64),
        _ => None,
    }
}

fn propagate_one(cx: &Ctx, node: &Node, out: &TensorType, len: usize) -> Option<SymVec> {
    let x = node.input(0);
    match &node.op {
        Op::Shape { start, end } => {
            let d = cx.g.ty(x?).shape.dims();
            let (s, e) = shape_range(d.len(), *start, *end);
            Some(d[s..e].iter().map(dim_to_int).collect())
        }
        Op::Size => Some(vec![product(cx.g.ty(x?).shape.dims())?.to_int()]),
        Op::Identity
        | Op::Reshape { .. }
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Flatten { .. }
        | Op::Dropout => cx.val(x),
        Op::Cast { to, .. } => {
            let v = cx.val(x)?;
            if to.is_storage_only() {
                // Values wrap or round in these types; not worth tracking.
                None
            } else if *to == DType::Bool {
                Some(
                    v.into_iter()
                        .map(|e| match e {
                            Some(SymInt::Known(k)) => known((k != 0) as i64),
                            _ => None,
                        })
                        .collect(),
                )
            } else {
                Some(v)
            }
        }
        Op::Gather { .. } => {
            let data = cx.val(x)?;
            if cx.g.ty(x?).shape.rank() != 1 {
                return None;
            }
            let idx = cx.known_ints(node.input(1))?;
            let n = data.len() as i64;
            Some(
                idx.into_iter()
                    .map(|i| {
                        let j = if i < 0 { i + n } else { i };
                        if (0..n).contains(&j) {
                            data[j as usize].clone()
                        } else {
                            None
                        }
                    })
                    .collect(),
            )
        }
        Op::Concat { .. } => {
            let mut v = Vec::with_capacity(len);
            for i in node.inputs.iter() {
                let i = (*i)?;
                match cx.val(Some(i)) {
                    Some(p) => v.extend(p),
                    None => {
                        let n = prop_len(cx, Some(i)).filter(|&n| n <= len)?;
                        v.extend(std::iter::repeat_n(None, n));
                    }
                }
            }
            Some(v)
        }
        Op::Slice => {
            let data = cx.val(x)?;
            if cx.g.ty(x?).shape.rank() != 1 {
                return None;
            }
            let starts = cx.known_ints(node.input(1))?;
            let ends = cx.known_ints(node.input(2))?;
            let step = match node.input(4) {
                Some(s) => *cx.known_ints(Some(s))?.first()?,
                None => 1,
            };
            if starts.len() != 1 || ends.len() != 1 || step == 0 {
                return None;
            }
            let (s, n) = slice_axis(data.len(), starts[0], ends[0], step);
            Some(
                (0..n as i64)
                    .map(|i| data[(s + i * step) as usize].clone())
                    .collect(),
            )
        }
        Op::Unary(UnaryOp::Neg) => Some(
            cx.val(x)?
                .into_iter()
                .map(|e| match e {
                    Some(SymInt::Known(k)) => k.checked_neg().map(SymInt::Known),
                    _ => None,
                })
                .collect(),
        ),
        Op::Unary(UnaryOp::Not) => Some(
            cx.val(x)?
                .into_iter()
                .map(|e| match e {
                    Some(SymInt::Known(k)) => known((k == 0) as i64),
                    _ => None,
                })
                .collect(),
        ),
        Op::Binary(b) => zip_vals(cx, node, len, |a| arith(*b, &a[0], &a[1])),
        Op::Where => zip_vals(cx, node, len, |a| match &a[0] {
            Some(SymInt::Known(0)) => a[2].clone(),
            Some(SymInt::Known(_)) => a[1].clone(),
            _ if a[1] == a[2] => a[1].clone(),
            _ => None,
        }),
        Op::Variadic(v @ (VariadicOp::Min | VariadicOp::Max)) => zip_vals(cx, node, len, |a| {
            let ks: Option<Vec<i64>> = a
                .iter()
                .map(|e| match e {
                    Some(SymInt::Known(k)) => Some(*k),
                    _ => None,
                })
                .collect();
            match ks {
                Some(ks) if *v == VariadicOp::Min => ks.into_iter().min().map(SymInt::Known),
                Some(ks) => ks.into_iter().max().map(SymInt::Known),
                None if a.iter().all(|e| e == &a[0]) => a[0].clone(),
                None => None,
            }
        }),
        Op::Variadic(VariadicOp::Sum) => zip_vals(cx, node, len, |a| {
            a.iter().try_fold(Some(SymInt::Known(0)), |acc, e| {
                Some(arith(BinaryOp::Add, &acc, e))
            })?
        }),
        Op::ConstantOfShape { value } => {
            let k = value.to_i64_vec().or_else(|| {
                (value.dtype() == DType::Bool).then(|| {
                    value
                        .to_f64_vec()
                        .iter()
                        .map(|&v| v as i64)
                        .collect::<Vec<_>>()
                })
            })?;
            Some(vec![known(*k.first()?); len])
        }
        Op::Range => {
            let get = |i| {
                cx.known_ints(node.input(i))
                    .and_then(|v| v.first().copied())
            };
            let (a, d) = (get(0)?, get(2)?);
            Some((0..len as i64).map(|i| known(a + i * d)).collect())
        }
        Op::Reduce {
            op: op @ (ReduceOp::Prod | ReduceOp::Sum),
            noop_with_empty_axes: false,
            ..
        } if cx.g.ty(x?).shape.rank() == 1 && len == 1 => {
            let v = cx.val(x)?;
            let e = if *op == ReduceOp::Prod {
                v.iter()
                    .try_fold(Mono::known(1), |acc, e| {
                        acc.mul(&Mono::of_int(e.as_ref()?)?)
                    })?
                    .to_int()
            } else {
                v.iter().try_fold(Some(SymInt::Known(0)), |acc, e| {
                    Some(arith(BinaryOp::Add, &acc, e))
                })?
            };
            Some(vec![e])
        }
        Op::Expand | Op::Tile => {
            // Only the common "broadcast one element" case.
            let v = cx.val(x)?;
            (v.len() == 1 && out.shape.rank() <= 1).then(|| vec![v[0].clone(); len])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Shape;
    use crate::ir::{
        AspectPolicy, AutoPad, ConvAttrs, ConvTransposeAttrs, E8M0Round, PadMode, PoolAttrs,
        SymbolBindings, Tensor,
    };

    fn s(dims: &[&str]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| match d.parse::<usize>() {
                    Ok(n) => Dim::Known(n),
                    Err(_) => Dim::Sym(d.to_string()),
                })
                .collect(),
        )
    }
    fn f32t(dims: &[&str]) -> TensorType {
        TensorType::new(DType::F32, s(dims))
    }
    fn placeholder() -> TensorType {
        TensorType::new(DType::F32, Shape::scalar())
    }

    /// Adds a node with `n_out` fresh outputs and returns them.
    fn node(g: &mut Graph, op: Op, inputs: &[Option<ValueId>], n_out: usize) -> Vec<ValueId> {
        let k = g.node_capacity();
        let outs: Vec<ValueId> = (0..n_out)
            .map(|i| g.add_value(format!("n{k}_{i}"), placeholder()))
            .collect();
        g.add_node(Node {
            name: format!("n{k}"),
            op,
            inputs: inputs.to_vec(),
            outputs: outs.clone(),
        });
        outs
    }
    fn node1(g: &mut Graph, op: Op, inputs: &[ValueId]) -> ValueId {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        node(g, op, &ins, 1)[0]
    }
    fn ci(g: &mut Graph, v: &[i64]) -> ValueId {
        g.add_const("c", Tensor::vec_i64(v.to_vec()))
    }
    fn ty(g: &Graph, v: ValueId) -> String {
        g.ty(v).to_string()
    }

    #[test]
    fn torch_dynamic_reshape_chain() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["batch", "seq", "384"]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 0,
                end: None,
            },
            &[x],
        );
        let i0 = g.add_const("i0", Tensor::scalar_i64(0));
        let i1 = g.add_const("i1", Tensor::scalar_i64(1));
        let b = node1(&mut g, Op::Gather { axis: 0 }, &[sh, i0]);
        let sq = node1(&mut g, Op::Gather { axis: 0 }, &[sh, i1]);
        let ax = ci(&mut g, &[0]);
        let bu = node1(&mut g, Op::Unsqueeze, &[b, ax]);
        let su = node1(&mut g, Op::Unsqueeze, &[sq, ax]);
        let tail = ci(&mut g, &[12, -1]);
        let shape = node1(&mut g, Op::Concat { axis: 0 }, &[bu, su, tail]);
        let y = node1(&mut g, Op::Reshape { allowzero: false }, &[x, shape]);
        let t = node1(
            &mut g,
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[y],
        );
        // Flatten back with a product of dims: [batch*seq, 384].
        let bs = node1(&mut g, Op::Binary(BinaryOp::Mul), &[b, sq]);
        let bsu = node1(&mut g, Op::Unsqueeze, &[bs, ax]);
        let m1 = ci(&mut g, &[-1]);
        let shape2 = node1(&mut g, Op::Concat { axis: 0 }, &[bsu, m1]);
        let z = node1(&mut g, Op::Reshape { allowzero: false }, &[x, shape2]);
        // And forward again with -1 in the batch position.
        let tail2 = ci(&mut g, &[12, 32]);
        let shape3 = node1(&mut g, Op::Concat { axis: 0 }, &[m1, su, tail2]);
        let w = node1(&mut g, Op::Reshape { allowzero: false }, &[z, shape3]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sh), "i64[3]");
        assert_eq!(ty(&g, b), "i64[]");
        assert_eq!(ty(&g, shape), "i64[4]");
        assert_eq!(ty(&g, y), "f32[batch,seq,12,32]");
        assert_eq!(ty(&g, t), "f32[batch,12,seq,32]");
        assert_eq!(ty(&g, z), "f32[batch*seq,384]");
        assert_eq!(ty(&g, w), "f32[batch,seq,12,32]");
        // Without propagation the rank is still right.
        let n = g
            .nodes()
            .find(|(_, n)| n.outputs[0] == y)
            .unwrap()
            .1
            .clone();
        let t = infer_node(&g, &n).unwrap();
        assert_eq!(t[0].shape.rank(), 4);
        assert!(t[0].shape.dims().iter().all(|d| d.known().is_none()));
    }

    #[test]
    fn torch_expand_pattern() {
        // torch exports expand(x, [batch, -1, -1]) through ConstantOfShape,
        // Mul, Equal and Where.
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["batch", "7"]));
        let p = g.add_input("p", f32t(&["1", "7", "16"]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 0,
                end: Some(1),
            },
            &[x],
        );
        let tail = ci(&mut g, &[-1, -1]);
        let target = node1(&mut g, Op::Concat { axis: 0 }, &[sh, tail]);
        let three = ci(&mut g, &[3]);
        let ones = node1(
            &mut g,
            Op::ConstantOfShape {
                value: Tensor::vec_i64(vec![1]),
            },
            &[three],
        );
        let neg = g.add_const("neg", Tensor::scalar_i64(-1));
        let negs = node1(&mut g, Op::Binary(BinaryOp::Mul), &[ones, neg]);
        let eq = node1(&mut g, Op::Binary(BinaryOp::Equal), &[target, negs]);
        let fixed = node1(&mut g, Op::Where, &[eq, ones, target]);
        let y = node1(&mut g, Op::Expand, &[p, fixed]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, eq), "bool[3]");
        assert_eq!(ty(&g, y), "f32[batch,7,16]");
    }

    #[test]
    fn broadcasting_and_dtypes() {
        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["b", "1", "4"]));
        let c = g.add_input("c", f32t(&["3", "1"]));
        let d = g.add_input("d", f32t(&["s", "3", "4"]));
        let sum = node1(&mut g, Op::Binary(BinaryOp::Add), &[a, c]);
        let cmp = node1(&mut g, Op::Binary(BinaryOp::Less), &[a, d]);
        let am = node1(
            &mut g,
            Op::ArgMax {
                axis: -1,
                keepdims: false,
                select_last_index: false,
            },
            &[a],
        );
        let cast = node1(
            &mut g,
            Op::Cast {
                to: DType::F16,
                saturate: true,
                round_mode: E8M0Round::Up,
            },
            &[c],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sum), "f32[b,3,4]");
        assert_eq!(ty(&g, cmp), "bool[b,3,4]");
        assert_eq!(ty(&g, am), "i64[b,1]");
        assert_eq!(ty(&g, cast), "f16[3,1]");

        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["2", "3"]));
        let c = g.add_input("c", f32t(&["4"]));
        node1(&mut g, Op::Binary(BinaryOp::Add), &[a, c]);
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("cannot broadcast"), "{e}");
        assert!(e.contains("Add"), "{e}");
    }

    #[test]
    fn matmul_gemm_and_errors() {
        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["b", "s", "8"]));
        let w = g.add_input("w", f32t(&["8", "16"]));
        let v = g.add_input("v", f32t(&["8"]));
        let m = node1(&mut g, Op::MatMul, &[a, w]);
        let mv = node1(&mut g, Op::MatMul, &[a, v]);
        let x = g.add_input("x", f32t(&["4", "8"]));
        let gm = node1(
            &mut g,
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &[x, x],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, m), "f32[b,s,16]");
        assert_eq!(ty(&g, mv), "f32[b,s]");
        assert_eq!(ty(&g, gm), "f32[4,4]");

        let mut g = Graph::new("t", 17);
        let a = g.add_input("a", f32t(&["2", "3"]));
        node1(&mut g, Op::MatMul, &[a, a]);
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("inner dims 3 and 2"), "{e}");
    }

    fn conv_attrs(k: usize, s: usize, p: usize) -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![k, k],
            strides: vec![s, s],
            dilations: vec![1, 1],
            pads: vec![p; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        }
    }

    #[test]
    fn conv_and_pool_sizes() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["n", "3", "32", "h"]));
        let w = g.add_input("w", f32t(&["8", "3", "3", "3"]));
        let c1 = node1(&mut g, Op::Conv(conv_attrs(3, 1, 1)), &[x, w]);
        let c2 = node1(&mut g, Op::Conv(conv_attrs(3, 2, 1)), &[x, w]);
        let mut same = conv_attrs(3, 2, 0);
        same.auto_pad = AutoPad::SameUpper;
        let c3 = node1(&mut g, Op::Conv(same), &[x, w]);
        let pool = |ceil| PoolAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            ceil_mode: ceil,
            count_include_pad: false,
            column_major: false,
        };
        let y = g.add_input("y", f32t(&["1", "1", "6", "5"]));
        let p1 = node1(&mut g, Op::MaxPool(pool(false)), &[y]);
        let p2 = node1(&mut g, Op::MaxPool(pool(true)), &[y]);
        let mut lw = pool(true);
        lw.kernel_shape = vec![2, 2];
        lw.pads = vec![1, 1, 1, 1];
        // 5 + 2 pads, k 2, s 2: ceil gives 4 windows; the 4th would start at
        // 6 >= 5 + 1, so it is dropped.
        let p3 = node1(&mut g, Op::AveragePool(lw), &[y]);
        let ct = g.add_input("ctw", f32t(&["1", "2", "3", "3"]));
        let t = node1(
            &mut g,
            Op::ConvTranspose(ConvTransposeAttrs {
                conv: conv_attrs(3, 2, 1),
                output_padding: vec![1, 1],
                output_shape: None,
            }),
            &[y, ct],
        );
        let gp = node1(&mut g, Op::GlobalAveragePool, &[x]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, c1), "f32[n,8,32,h]");
        let c2t = g.ty(c2).clone();
        assert_eq!(c2t.shape.0[2], Dim::Known(16));
        assert!(matches!(&c2t.shape.0[3], Dim::Sym(s) if s.starts_with("unk_")));
        assert_eq!(g.ty(c3).shape.0[2], Dim::Known(16));
        assert_eq!(ty(&g, p1), "f32[1,1,2,2]");
        assert_eq!(ty(&g, p2), "f32[1,1,3,2]");
        assert_eq!(ty(&g, p3), "f32[1,1,4,3]");
        // (6-1)*2 + 1 + 3 - 2 = 12, (5-1)*2 + 1 + 3 - 2 = 10
        assert_eq!(ty(&g, t), "f32[1,2,12,10]");
        assert_eq!(ty(&g, gp), "f32[n,3,1,1]");

        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["1", "4", "8", "8"]));
        let w = g.add_input("w", f32t(&["8", "3", "3", "3"]));
        node1(&mut g, Op::Conv(conv_attrs(3, 1, 1)), &[x, w]);
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("4 channels"), "{e}");
    }

    #[test]
    fn array_ops() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["b", "1", "6"]));
        let sq = node1(&mut g, Op::Squeeze, &[x]);
        let a1 = ci(&mut g, &[1]);
        let sq1 = node1(&mut g, Op::Squeeze, &[x, a1]);
        let am = ci(&mut g, &[-1, 0]);
        let un = node1(&mut g, Op::Unsqueeze, &[x, am]);
        let fl = node1(&mut g, Op::Flatten { axis: 1 }, &[x]);
        let cat = node1(&mut g, Op::Concat { axis: -1 }, &[x, x]);
        let parts = node(
            &mut g,
            Op::Split {
                axis: 2,
                num_outputs: 4,
            },
            &[Some(x)],
            4,
        );
        let st = ci(&mut g, &[1, 0]);
        let en = ci(&mut g, &[i64::MAX, -1]);
        let axs = ci(&mut g, &[2, 0]);
        let sl = node1(&mut g, Op::Slice, &[x, st, en, axs]);
        let idx = g.add_const("idx", Tensor::from_i64(vec![2, 3], vec![0; 6]).unwrap());
        let ga = node1(&mut g, Op::Gather { axis: 2 }, &[x, idx]);
        let reps = ci(&mut g, &[2, 3, 1]);
        let ti = node1(&mut g, Op::Tile, &[x, reps]);
        let pads = ci(&mut g, &[0, 0, 1, 0, 0, 2]);
        let pd = node1(
            &mut g,
            Op::Pad {
                mode: PadMode::Constant,
            },
            &[x, pads],
        );
        let rs = ci(&mut g, &[0, -1]);
        let re = node1(&mut g, Op::Reshape { allowzero: false }, &[x, rs]);
        let rd = node1(
            &mut g,
            Op::Reduce {
                op: ReduceOp::Sum,
                keepdims: false,
                noop_with_empty_axes: false,
            },
            &[x, a1],
        );
        let sh = node1(
            &mut g,
            Op::Shape {
                start: -2,
                end: None,
            },
            &[x],
        );
        let co = node1(
            &mut g,
            Op::ConstantOfShape {
                value: Tensor::vec_i64(vec![0]),
            },
            &[sh],
        );
        let sz = node1(&mut g, Op::Size, &[x]);
        let dr = node(&mut g, Op::Dropout, &[Some(x)], 2);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sq), "f32[b,6]");
        assert_eq!(ty(&g, sq1), "f32[b,6]");
        assert_eq!(ty(&g, un), "f32[1,b,1,6,1]");
        assert_eq!(ty(&g, fl), "f32[b,6]");
        assert_eq!(ty(&g, cat), "f32[b,1,12]");
        let sizes: Vec<String> = parts.iter().map(|&p| ty(&g, p)).collect();
        assert_eq!(
            sizes,
            ["f32[b,1,2]", "f32[b,1,2]", "f32[b,1,2]", "f32[b,1,0]"]
        );
        assert!(ty(&g, sl).ends_with(",1,5]"), "{}", ty(&g, sl));
        assert_eq!(ty(&g, ga), "f32[b,1,2,3]");
        assert_eq!(ty(&g, ti), "f32[2*b,3,6]");
        assert_eq!(ty(&g, pd), "f32[b,1,9]");
        assert_eq!(ty(&g, re), "f32[b,6]");
        assert_eq!(ty(&g, rd), "f32[b,6]");
        assert_eq!(ty(&g, co), "i64[1,6]");
        assert_eq!(ty(&g, sz), "i64[]");
        assert_eq!(ty(&g, dr[1]), "bool[b,1,6]");

        // Errors that would crash kernels later.
        let y2 = g.add_input("y2", f32t(&["b", "2"]));
        let y3 = g.add_input("y3", f32t(&["3", "2"]));
        let a2 = ci(&mut g, &[2]);
        let r7 = ci(&mut g, &[7, -1]);
        let bad = |op: Op, ins: &[ValueId]| {
            let mut g2 = g.clone();
            node1(&mut g2, op, ins);
            infer_graph(&mut g2).unwrap_err().to_string()
        };
        let e = bad(
            Op::Transpose {
                perm: vec![0, 1, 1],
            },
            &[x],
        );
        assert!(e.contains("not a permutation"), "{e}");
        let e = bad(Op::Gather { axis: 3 }, &[x, idx]);
        assert!(e.contains("out of range"), "{e}");
        let e = bad(Op::Concat { axis: 0 }, &[x, y2]);
        assert!(e.contains("ranks differ"), "{e}");
        let e = bad(Op::Squeeze, &[x, a2]);
        assert!(e.contains("size 6"), "{e}");
        let e = bad(Op::Reshape { allowzero: false }, &[y3, r7]);
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn range_and_resize() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["b", "s"]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 1,
                end: None,
            },
            &[x],
        );
        let zero = ci(&mut g, &[0]);
        let lim = node1(&mut g, Op::Squeeze, &[sh, zero]);
        let s0 = g.add_const("s0", Tensor::scalar_i64(0));
        let d1 = g.add_const("d1", Tensor::scalar_i64(1));
        let r = node1(&mut g, Op::Range, &[s0, lim, d1]);
        let f0 = g.add_const("f0", Tensor::scalar_f32(0.0));
        let f5 = g.add_const("f5", Tensor::scalar_f32(2.5));
        let fh = g.add_const("fh", Tensor::scalar_f32(0.5));
        let rf = node1(&mut g, Op::Range, &[f0, f5, fh]);
        let img = g.add_input("img", f32t(&["1", "3", "10", "w"]));
        let sc = g.add_const(
            "sc",
            Tensor::from_f32(vec![4], vec![1., 1., 1.5, 2.]).unwrap(),
        );
        let attrs = crate::ir::ResizeAttrs {
            mode: crate::ir::ResizeMode::Nearest,
            coord: crate::ir::CoordTransform::HalfPixel,
            nearest: crate::ir::NearestMode::RoundPreferFloor,
            exclude_outside: false,
            extrapolation_value: 0.0,
            antialias: false,
            axes: None,
            aspect: AspectPolicy::Stretch,
            cubic_coeff_a: -0.75,
        };
        let rz = node(
            &mut g,
            Op::Resize(attrs.clone()),
            &[Some(img), None, Some(sc)],
            1,
        )[0];
        let sizes = ci(&mut g, &[7, 9]);
        let mut a2 = attrs;
        a2.axes = Some(vec![2, 3]);
        let rz2 = node(
            &mut g,
            Op::Resize(a2),
            &[Some(img), None, None, Some(sizes)],
            1,
        )[0];
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, r), "i64[s]");
        assert_eq!(ty(&g, rf), "f32[5]");
        let t = g.ty(rz).clone();
        assert_eq!(t.shape.0[2], Dim::Known(15));
        assert!(matches!(&t.shape.0[3], Dim::Sym(s) if s.starts_with("unk_")));
        assert_eq!(ty(&g, rz2), "f32[1,3,7,9]");
    }

    /// Inference and the reference kernels agree on concrete shapes (the
    /// interpreter checks every kernel output against its inferred type).
    #[test]
    fn inference_matches_kernels() {
        let mut g = Graph::new("t", 18);
        let x = g.add_input("x", f32t(&["3", "5", "4"]));
        let mut outs = Vec::new();
        let (st, en, ax, sp) = (
            ci(&mut g, &[-1, 4]),
            ci(&mut g, &[i64::MIN, 0]),
            ci(&mut g, &[2, -2]),
            ci(&mut g, &[-2, -3]),
        );
        outs.push(node1(&mut g, Op::Slice, &[x, st, en, ax, sp]));
        let pads = ci(&mut g, &[1, -1, 0, 2, 0, 3]);
        for mode in [
            PadMode::Constant,
            PadMode::Reflect,
            PadMode::Edge,
            PadMode::Wrap,
        ] {
            outs.push(node1(&mut g, Op::Pad { mode }, &[x, pads]));
        }
        let reps = ci(&mut g, &[1, 2, 3]);
        outs.push(node1(&mut g, Op::Tile, &[x, reps]));
        outs.extend(node(
            &mut g,
            Op::Split {
                axis: 1,
                num_outputs: 2,
            },
            &[Some(x)],
            2,
        ));
        let idx = g.add_const(
            "idx",
            Tensor::from_i64(vec![2, 2], vec![0, -1, 2, 1]).unwrap(),
        );
        outs.push(node1(&mut g, Op::Gather { axis: 1 }, &[x, idx]));
        let es = ci(&mut g, &[2, 1, 1, 4]);
        outs.push(node1(&mut g, Op::Expand, &[x, es]));
        let sh = node1(
            &mut g,
            Op::Shape {
                start: 1,
                end: None,
            },
            &[x],
        );
        // Only array ops here (the other kernels live elsewhere).
        let (s1, s2) = (ci(&mut g, &[1]), ci(&mut g, &[2]));
        let prod = node1(&mut g, Op::Slice, &[sh, s1, s2]);
        let m1 = ci(&mut g, &[-1]);
        let cat = node1(&mut g, Op::Concat { axis: 0 }, &[m1, prod]);
        outs.push(node1(&mut g, Op::Reshape { allowzero: false }, &[x, cat]));
        outs.push(node1(
            &mut g,
            Op::ConstantOfShape {
                value: Tensor::scalar_f32(1.0),
            },
            &[sh],
        ));
        let (a, b, c) = (
            g.add_const("a", Tensor::scalar_i64(10)),
            g.add_const("b", Tensor::scalar_i64(-3)),
            g.add_const("c", Tensor::scalar_i64(-4)),
        );
        outs.push(node1(&mut g, Op::Range, &[a, b, c]));
        let un = ci(&mut g, &[0, 4]);
        outs.push(node1(&mut g, Op::Unsqueeze, &[x, un]));
        outs.push(node1(&mut g, Op::Flatten { axis: -2 }, &[x]));
        outs.push(node1(
            &mut g,
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[x],
        ));
        g.outputs = outs.clone();
        infer_graph(&mut g).unwrap();
        crate::ir::verify::verify(&g).unwrap();
        let input = Tensor::from_f32(vec![3, 5, 4], (0..60).map(|v| v as f32).collect()).unwrap();
        let res = crate::interp::run(&g, vec![input]).unwrap();
        for (o, t) in outs.iter().zip(&res) {
            assert_eq!(
                g.ty(*o).shape,
                Shape::known(t.shape()),
                "{}",
                g.value(*o).name
            );
        }
        assert_eq!(ty(&g, outs[0]), "f32[3,2,2]");
        assert_eq!(ty(&g, outs[12]), "i64[4]");
        assert_eq!(ty(&g, outs[10]), "f32[15,4]");
    }

    #[test]
    fn cycle_is_an_error() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["2"]));
        let a = g.add_value("a", placeholder());
        let b = g.add_value("b", placeholder());
        g.add_node(Node {
            name: "first".into(),
            op: Op::Binary(BinaryOp::Add),
            inputs: vec![Some(x), Some(b)],
            outputs: vec![a],
        });
        g.add_node(Node {
            name: "second".into(),
            op: Op::Identity,
            inputs: vec![Some(a)],
            outputs: vec![b],
        });
        let e = infer_graph(&mut g).unwrap_err();
        assert!(matches!(e, Error::InvalidGraph(_)));
        let msg = e.to_string();
        assert!(msg.contains("the graph has a cycle through nodes"), "{msg}");
        assert!(msg.contains("'first'") && msg.contains("'second'"), "{msg}");
    }

    #[test]
    fn fresh_symbols_are_deterministic_and_avoid_inputs() {
        let build = || {
            let mut g = Graph::new("t", 17);
            let x = g.add_input("x", f32t(&["unk_0", "8"]));
            let shp = g.add_input("shp", TensorType::new(DType::I64, s(&["2"])));
            let y = node1(&mut g, Op::Reshape { allowzero: false }, &[x, shp]);
            (g, y)
        };
        let (mut g, y) = build();
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, y), "f32[unk_1,unk_2]");
        let (mut g2, _) = build();
        infer_graph(&mut g2).unwrap();
        assert_eq!(crate::ir::text::print(&g), crate::ir::text::print(&g2));
    }

    #[test]
    fn product_symbols_evaluate() {
        let mut b = SymbolBindings::default();
        b.0.insert("batch".into(), 2);
        b.0.insert("seq".into(), 5);
        assert_eq!(eval_dim(&Dim::sym("384*batch*seq"), &b), Some(3840));
        assert_eq!(eval_dim(&Dim::sym("seq"), &b), Some(5));
        assert_eq!(eval_dim(&Dim::sym("other"), &b), None);
        let m = Mono::parse("seq*batch").mul(&Mono::known(3)).unwrap();
        assert_eq!(m.to_dim(), Dim::sym("3*batch*seq"));
        assert_eq!(
            m.div(&Mono::parse("seq")).unwrap().to_dim(),
            Dim::sym("3*batch")
        );
        assert!(m.div(&Mono::known(2)).is_none());
    }

    #[test]
    fn statistics_and_indices_outputs() {
        let mut g = Graph::new("t", 17);
        let x = g.add_input("x", f32t(&["b", "s", "8"]));
        let w = g.add_input("w", f32t(&["8"]));
        let ln = |axis| Op::LayerNormalization {
            axis,
            epsilon: 1e-5,
        };
        let l3 = node(&mut g, ln(-1), &[Some(x), Some(w)], 3);
        let l2 = node(&mut g, ln(1), &[Some(x), Some(w)], 2);
        let l1 = node(&mut g, ln(0), &[Some(x), Some(w)], 1);
        let bn = |m| Op::BatchNormalization {
            epsilon: 1e-5,
            training_momentum: m,
        };
        let p = g.add_input("p", TensorType::new(DType::F64, s(&["s"])));
        let bins = [Some(x), Some(w), Some(w), Some(p), Some(p)];
        let bt = node(&mut g, bn(Some(0.9)), &bins, 3);
        let bi = node(&mut g, bn(None), &bins, 1);
        let xi = g.add_input("xi", f32t(&["b", "3", "7", "7"]));
        let pool = PoolAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            column_major: true,
        };
        let mp = node(&mut g, Op::MaxPool(pool), &[Some(xi)], 2);
        infer_graph(&mut g).unwrap();
        let tys = |v: &[ValueId]| v.iter().map(|&o| ty(&g, o)).collect::<Vec<_>>();
        assert_eq!(tys(&l3), ["f32[b,s,8]", "f32[b,s,1]", "f32[b,s,1]"]);
        assert_eq!(tys(&l2), ["f32[b,s,8]", "f32[b,1,1]"]);
        assert_eq!(tys(&l1), ["f32[b,s,8]"]);
        assert_eq!(tys(&bt), ["f32[b,s,8]", "f64[s]", "f64[s]"]);
        assert_eq!(tys(&bi), ["f32[b,s,8]"]);
        assert_eq!(tys(&mp), ["f32[b,3,3,3]", "i64[b,3,3,3]"]);

        // Too many outputs, and the inference form's statistics outputs.
        for (op, n) in [
            (ln(-1), 4),
            (bn(None), 3),
            (bn(Some(0.9)), 4),
            (
                Op::MaxPool(PoolAttrs {
                    kernel_shape: vec![1, 1],
                    strides: vec![1, 1],
                    dilations: vec![1, 1],
                    pads: vec![0; 4],
                    auto_pad: AutoPad::NotSet,
                    ceil_mode: false,
                    count_include_pad: false,
                    column_major: false,
                }),
                3,
            ),
        ] {
            let mut g = Graph::new("t", 17);
            let x = g.add_input("x", f32t(&["2", "8", "3", "3"]));
            let w = g.add_input("w", f32t(&["8"]));
            let ins: Vec<Option<ValueId>> = match op {
                Op::MaxPool(_) => vec![Some(x)],
                Op::LayerNormalization { .. } => vec![Some(x), Some(w)],
                _ => vec![Some(x), Some(w), Some(w), Some(w), Some(w)],
            };
            node(&mut g, op, &ins, n);
            assert!(infer_graph(&mut g).is_err());
        }
    }
}

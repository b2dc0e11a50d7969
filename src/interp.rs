//! The reference interpreter: runs a graph node by node with the reference
//! kernels. It is the numerical oracle for every pass and optimized kernel, so
//! it favours plain, checkable behaviour over speed: inputs are checked
//! against the graph's declared types and symbolic dims, and every kernel
//! output is checked against the inferred type of its value. What the live
//! values take is kept within the memory budget ([`crate::limits`]): a node
//! whose outputs' inferred sizes would pass it is refused before it runs.

use std::sync::Arc;

use crate::ir::infer::eval_dim;
use crate::ir::ops;
use crate::ir::{Graph, Tensor, ValueDef};
use crate::{Error, Result};

/// Runs `g` on positional inputs (in the order of `g.inputs`) and returns the
/// graph outputs in order.
pub fn run(g: &Graph, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
    let bindings = crate::ir::bind::check_inputs(g, inputs.iter().map(|t| (t.dtype(), t.shape())))?;

    let order = g.topo_order()?;

    // Remaining uses of each value, so intermediates are dropped as soon as
    // their last consumer ran (keeps peak memory near the live set).
    let mut uses = vec![0usize; g.values.len()];
    for (_, node) in g.nodes() {
        for v in node.inputs.iter().flatten() {
            uses[v.0 as usize] += 1;
        }
    }
    for o in &g.outputs {
        uses[o.0 as usize] += 1;
    }

    let mut env: Vec<Option<Arc<Tensor>>> = vec![None; g.values.len()];
    // Bytes held by the inputs and the intermediate values alive now (the
    // constants are the model's own and not counted).
    let mut live: u64 = 0;
    for (&id, t) in g.inputs.iter().zip(inputs) {
        live += t.size_bytes() as u64;
        env[id.0 as usize] = Some(Arc::new(t));
    }
    for (&id, t) in &g.consts {
        env[id.0 as usize] = Some(t.clone());
    }

    for id in order {
        let Some(node) = g.node(id) else { continue };
        let op_name = node.op.onnx_type();
        let args: Vec<Option<Arc<Tensor>>> = node
            .inputs
            .iter()
            .map(|i| match i {
                None => Ok(None),
                Some(v) => env[v.0 as usize].clone().map(Some).ok_or_else(|| {
                    Error::Internal(format!(
                        "value '{}' is not computed before node '{}'",
                        g.value(*v).name,
                        node.name
                    ))
                }),
            })
            .collect::<Result<_>>()?;
        let refs: Vec<Option<&Tensor>> = args.iter().map(|a| a.as_deref()).collect();
        // Outputs whose size inference knows in the inputs' dims are counted
        // before the kernel allocates them (the kernels check the others).
        // (A size past u64 counts as u64::MAX, which no budget admits.)
        let predicted = node.outputs.iter().fold(0u64, |sum, &o| {
            let ty = g.ty(o);
            let n = ty.shape.dims().iter().try_fold(1u64, |acc, d| {
                eval_dim(d, &bindings).map(|v| acc.saturating_mul(v as u64))
            });
            let bytes = n.map_or(0, |n| n.saturating_mul(ty.dtype.size() as u64));
            sum.saturating_add(bytes)
        });
        let what = || {
            format!(
                "node '{}' ({op_name}) with the values alive before it",
                node.name
            )
        };
        crate::limits::check(what, Some(live.saturating_add(predicted)))?;
        // The kernel's own checks count what is alive.
        let held = crate::limits::Reserved::new(live);
        let outs = ops::eval(&node.op, &refs, node.outputs.len())
            .map_err(|e| e.at_node(&node.name, op_name))?;
        drop(held);
        drop(args);
        if outs.len() < node.outputs.len() {
            return Err(Error::Internal(format!(
                "node '{}' ({op_name}) produced {} outputs, {} declared",
                node.name,
                outs.len(),
                node.outputs.len()
            )));
        }
        for (&o, t) in node.outputs.iter().zip(outs) {
            let ty = g.ty(o);
            if t.dtype() != ty.dtype || !ty.shape.admits(t.shape()) {
                return Err(Error::Internal(format!(
                    "node '{}' ({op_name}): output '{}' is {}{:?} but was inferred as {}",
                    node.name,
                    g.value(o).name,
                    t.dtype(),
                    t.shape(),
                    ty
                )));
            }
            live += t.size_bytes() as u64;
            env[o.0 as usize] = Some(Arc::new(t));
        }
        crate::limits::check(what, Some(live))?;
        for v in node.inputs.iter().flatten() {
            let u = &mut uses[v.0 as usize];
            *u -= 1;
            if *u == 0 && !matches!(g.value(*v).def, ValueDef::Const) {
                if let Some(t) = env[v.0 as usize].take() {
                    live = live.saturating_sub(t.size_bytes() as u64);
                }
            }
        }
    }

    g.outputs
        .iter()
        .map(|o| {
            env[o.0 as usize]
                .as_ref()
                .map(|t| t.as_ref().clone())
                .ok_or_else(|| {
                    Error::Internal(format!("output '{}' was not computed", g.value(*o).name))
                })
        })
        .collect()
}

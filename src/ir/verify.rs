//! The IR verifier: the invariants every stage may rely on.
//!
//! - every node has an input count its op takes;
//! - every node input and graph output is defined, by a graph input, a
//!   constant or a live node, and each value has exactly one definition;
//! - the graph is acyclic;
//! - constants match their declared type;
//! - each node's output types agree with inference (dtype and rank; symbolic
//!   dim names may differ).

use std::collections::HashSet;

use super::{infer, Graph, Shape, ValueDef, ValueId};
use crate::{Error, Result};

/// Checks the graph's invariants; the first violation is reported.
pub fn verify(g: &Graph) -> Result<()> {
    let check_defined = |v: ValueId, user: &str| -> Result<()> {
        if v.0 as usize >= g.values.len() {
            return Err(Error::InvalidGraph(format!(
                "{user} refers to value {v}, which does not exist"
            )));
        }
        let val = g.value(v);
        let ok = match val.def {
            ValueDef::Input => g.inputs.contains(&v),
            ValueDef::Const => g.is_const(v),
            ValueDef::Node(n, i) => g
                .node(n)
                .is_some_and(|node| node.outputs.get(i) == Some(&v)),
            ValueDef::Undefined => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidGraph(format!(
                "{user} uses '{}' ({v}), which nothing defines",
                val.name
            )))
        }
    };

    for &i in &g.inputs {
        check_defined(i, "the graph input list")?;
    }
    let mut defined = HashSet::new();
    for (id, node) in g.nodes() {
        let who = format!("node '{}' ({})", node.name, node.op.onnx_type());
        let takes = node.op.input_count();
        if !takes.contains(&node.inputs.len()) {
            return Err(Error::InvalidGraph(format!(
                "{who} has {} inputs; it takes {} to {}",
                node.inputs.len(),
                takes.start(),
                takes.end()
            )));
        }
        for v in node.inputs.iter().flatten() {
            check_defined(*v, &who)?;
        }
        for &o in &node.outputs {
            if !defined.insert(o) {
                return Err(Error::InvalidGraph(format!(
                    "{who} redefines '{}'",
                    g.value(o).name
                )));
            }
            if g.value(o).def
                != ValueDef::Node(id, node.outputs.iter().position(|&x| x == o).unwrap_or(0))
            {
                return Err(Error::InvalidGraph(format!(
                    "{who}: output '{}' is not recorded as defined by it",
                    g.value(o).name
                )));
            }
        }
    }
    for &o in &g.outputs {
        check_defined(o, "the graph output list")?;
    }
    for (&v, t) in &g.consts {
        let ty = g.ty(v);
        if ty.dtype != t.dtype() || ty.shape != Shape::known(t.shape()) {
            return Err(Error::InvalidGraph(format!(
                "constant '{}' is declared {} but holds {}{:?}",
                g.value(v).name,
                ty,
                t.dtype(),
                t.shape()
            )));
        }
    }

    let order = g.topo_order()?;

    for id in order {
        let Some(node) = g.node(id) else { continue };
        let inferred =
            infer::infer_node(g, node).map_err(|e| e.at_node(&node.name, node.op.onnx_type()))?;
        if inferred.len() != node.outputs.len() {
            return Err(Error::InvalidGraph(format!(
                "node '{}' ({}) has {} outputs, inference gives {}",
                node.name,
                node.op.onnx_type(),
                node.outputs.len(),
                inferred.len()
            )));
        }
        for (&o, ty) in node.outputs.iter().zip(&inferred) {
            let have = g.ty(o);
            if have.dtype != ty.dtype || have.shape.rank() != ty.shape.rank() {
                return Err(Error::InvalidGraph(format!(
                    "node '{}' ({}): output '{}' is typed {} but inference gives {}",
                    node.name,
                    node.op.onnx_type(),
                    g.value(o).name,
                    have,
                    ty
                )));
            }
        }
    }
    Ok(())
}

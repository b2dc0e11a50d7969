//! `fold-nan-guard`: folds the NaN guard the PyTorch exporters put after the
//! Softmax of `scaled_dot_product_attention` into the Softmax.
//!
//! A fully masked attention row is all `-inf`, and its softmax all NaN, so
//! the exported `sdpa` path ends in `Where(IsNaN(s), 0, s)` with `s =
//! Softmax(x)`: two more passes over the largest tensor of the layer and a
//! bool tensor of its size, in every layer. When the Softmax's output is read
//! only by that guard (the IsNaN and the Where), the pass sets the Softmax's
//! `nan_to_zero` and lets the Where's readers read the Softmax, whose kernel
//! then writes zeros for the rows that come out NaN: the same values, and the
//! attention of an `sdpa` export as lean as an eager one. The IsNaN is left
//! to dead code elimination.

use super::{Changed, Params, Pass, PassCx, PassInfo};
use crate::ir::{infer, Graph, NodeId, Op, ValueId};
use crate::Result;

fn make(_: &Params) -> Box<dyn Pass> {
    Box::new(FoldNanGuard)
}

/// Registry entry of `fold-nan-guard`.
pub const INFO: PassInfo = PassInfo {
    name: "fold-nan-guard",
    summary:
        "fold Where(IsNaN(s), 0, s) after a Softmax into the Softmax (the sdpa export's guard)",
    params: &[],
    make,
};

/// The `fold-nan-guard` pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct FoldNanGuard;

impl Pass for FoldNanGuard {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed> {
        let mut folds = Vec::new();
        for id in g.topo_order()? {
            if let Some(f) = guarded_softmax(g, id) {
                folds.push(f);
            }
        }
        if folds.is_empty() {
            return Ok(Changed::No);
        }
        for (softmax, guard, guarded, s) in folds {
            if let Some(Op::Softmax { nan_to_zero, .. }) = g.node_mut(softmax).map(|n| &mut n.op) {
                *nan_to_zero = true;
            }
            g.remove_node(guard);
            g.replace_uses(guarded, s);
            cx.count("softmax+nan-guard");
        }
        infer::infer_graph(g)?;
        Ok(Changed::Yes)
    }
}

/// For a Where node `Where(IsNaN(s), 0, s)` whose `s` comes from a Softmax
/// read by nothing else: (the Softmax, the Where, the Where's output, `s`).
fn guarded_softmax(g: &Graph, id: NodeId) -> Option<(NodeId, NodeId, ValueId, ValueId)> {
    let node = g.node(id)?;
    if node.op != Op::Where || node.outputs.len() != 1 {
        return None;
    }
    let (cond, zero, s) = (node.input(0)?, node.input(1)?, node.input(2)?);
    let out = node.outputs[0];
    // The guard keeps the Softmax's type (the zero broadcasts away).
    if g.ty(out) != g.ty(s) {
        return None;
    }
    let is_nan = g.node(g.producer(cond)?)?;
    if is_nan.op != Op::IsNaN || is_nan.input(0) != Some(s) {
        return None;
    }
    let z = g.const_value(zero)?;
    let zero_ok = z.numel() == 1
        && z.dtype() == g.ty(s).dtype
        && z.to_f64_vec().first().is_some_and(|v| v.to_bits() == 0);
    if !zero_ok {
        return None;
    }
    let softmax = g.producer(s)?;
    if !matches!(
        g.node(softmax)?.op,
        Op::Softmax {
            nan_to_zero: false,
            ..
        }
    ) {
        return None;
    }
    // Nothing else may see the NaNs the Softmax now zeroes: its readers are
    // the IsNaN and this Where, and it is no graph output.
    let readers = g.users(s);
    let only_guard = readers
        .iter()
        .all(|&(n, _)| n == id || g.producer(cond) == Some(n));
    if g.is_output(s) || !only_guard || g.use_count(cond) != 1 {
        return None;
    }
    Some((softmax, id, out, s))
}

#[cfg(test)]
mod tests {
    use super::super::testing::check_pass;

    #[test]
    fn the_sdpa_guard_folds_into_the_softmax() {
        check_pass(
            "fold-nan-guard",
            r#"graph "g" opset 17
  input  %0 x: f32[2,4]
  const  %1 zero: f32[] = [0]
  %2 s: f32[2,4] = Softmax[axis=-1](%0)
  %3 n: bool[2,4] = IsNaN(%2)
  %4 y: f32[2,4] = Where(%3, %1, %2)
  output %4 y
"#,
            r#"graph "g" opset 17
  input  %0 x: f32[2,4]
  const  %1 zero: f32[] = [0]
  %2 y: f32[2,4] = Softmax[axis=-1, nan_to_zero=true](%0)
  %3 n: bool[2,4] = IsNaN(%2)
  output %2 y
"#,
        );
    }

    #[test]
    fn a_softmax_read_elsewhere_or_another_fill_stays() {
        // The Softmax is also a graph output: its NaNs are seen.
        let seen = r#"graph "g" opset 17
  input  %0 x: f32[2,4]
  const  %1 zero: f32[] = [0]
  %2 s: f32[2,4] = Softmax[axis=-1](%0)
  %3 n: bool[2,4] = IsNaN(%2)
  %4 y: f32[2,4] = Where(%3, %1, %2)
  output %4 y
  output %2 s
"#;
        check_pass("fold-nan-guard", seen, seen);
        // NaN becomes 1, not 0.
        let one = r#"graph "g" opset 17
  input  %0 x: f32[2,4]
  const  %1 one: f32[] = [1]
  %2 s: f32[2,4] = Softmax[axis=-1](%0)
  %3 n: bool[2,4] = IsNaN(%2)
  %4 y: f32[2,4] = Where(%3, %1, %2)
  output %4 y
"#;
        check_pass("fold-nan-guard", one, one);
    }
}

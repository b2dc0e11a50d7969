//! Specialization: the step between a compiled graph and an execution plan.
//!
//! [`specialize`] copies a graph with its inputs bound to concrete shapes,
//! re-infers every type and folds the shape arithmetic with the `O1`
//! recipe, so that Reshape targets and the like become constants and every
//! value has a concrete shape (a shape that still depends on input *data*
//! is an error when the plan is built). Weights stored compressed (int8
//! tables, int4, f16) are decoded here once, however large, so no run
//! repeats it. [`crate::runtime::Plan::new`] takes the result.

use super::fold_constants::{FoldConstants, DEFAULT_MAX_ELEMENTS};
use super::recipe::Recipe;
use super::runner::{self, RunOptions};
use super::{Pass, PassCx};
use crate::ir::{bind, infer, Graph, Shape};
use crate::Result;

/// Copies `g` with its inputs bound to `input_shapes` (in the order of
/// `g.inputs`; dtypes are the declared ones), re-inferred, with shape
/// arithmetic folded and compressed weights decoded.
pub fn specialize(g: &Graph, input_shapes: &[Vec<usize>]) -> Result<Graph> {
    if input_shapes.len() != g.inputs.len() {
        return Err(bind::wrong_count(g, input_shapes.len()));
    }
    bind::check_inputs(
        g,
        g.inputs
            .iter()
            .zip(input_shapes)
            .map(|(&id, s)| (g.ty(id).dtype, s.as_slice())),
    )?;
    let mut s = g.clone();
    for (&id, shape) in g.inputs.iter().zip(input_shapes) {
        s.value_mut(id).ty.shape = Shape::known(shape);
    }
    infer::infer_graph(&mut s)?;
    runner::run(&mut s, &Recipe::resolve("O1")?, &RunOptions::default())?;
    let mut decode = FoldConstants {
        max_elements: DEFAULT_MAX_ELEMENTS,
        decode_weights_at_any_size: true,
    };
    decode.run(&mut s, &mut PassCx::default())?;
    super::dce::remove_dead(&mut s)?;
    infer::infer_graph(&mut s)?;
    Ok(s)
}

//! (being written)

use super::{CpuCtx, View, ViewMut};
use crate::ir::Op;
use crate::Result;

/// Fast path for this family; `Ok(false)` when not handled.
pub fn run(
    _op: &Op,
    _inputs: &[Option<View>],
    _outputs: &mut [ViewMut],
    _cx: &CpuCtx,
) -> Result<bool> {
    Ok(false)
}

//! Type and shape inference of the norm family's ops.

use crate::ir::infer::ctx::{in_ty, norm_axis, tt, Ctx};
use crate::ir::ops::util::not_held;
use crate::ir::{DType, Dim, Node, Op, TensorType};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
        Op::BatchNormalization {
            training_momentum, ..
        } => {
            let x = in_ty(cx, node, 0)?;
            if x.shape.rank() < 2 {
                return Err(Error::op(
                    name,
                    format!("input must have rank >= 2, got {}", x.shape),
                ));
            }
            match (training_momentum, node.outputs.len()) {
                (_, 0 | 1) => single(x.clone()),
                // running_mean and running_var have the shape of the mean
                // and var inputs: one value per channel.
                (Some(_), 2 | 3) => {
                    // Typed like the mean input.
                    let mean = in_ty(cx, node, 3)?;
                    let c = tt(mean.dtype, vec![x.shape.dims()[1].clone()]);
                    let mut out = vec![x.clone(), c];
                    out.resize(node.outputs.len(), out[1].clone());
                    Ok(out)
                }
                (Some(_), n) => Err(Error::op(
                    name,
                    format!("training mode has at most 3 outputs, the node has {n}"),
                )),
                (None, _) => Err(Error::op(
                    name,
                    "only the Y output is supported outside training mode",
                )),
            }
        }
        Op::InstanceNormalization { .. } => {
            let x = in_ty(cx, node, 0)?;
            if x.shape.rank() < 2 {
                return Err(Error::op(
                    name,
                    format!("input must have rank >= 2, got {}", x.shape),
                ));
            }
            single(x.clone())
        }
        Op::LayerNormalization { axis, .. } => {
            let x = in_ty(cx, node, 0)?;
            let a = norm_axis(name, *axis, x.shape.rank())?;
            // Mean and InvStdDev: X's leading dims, ones from `axis` on.
            let mut stat = x.shape.dims()[..a].to_vec();
            stat.resize(x.shape.rank(), Dim::Known(1));
            let stat = tt(DType::F32, stat);
            match node.outputs.len() {
                0 | 1 => single(x.clone()),
                2 => Ok(vec![x.clone(), stat]),
                3 => Ok(vec![x.clone(), stat.clone(), stat]),
                n => Err(Error::op(
                    name,
                    format!("has at most 3 outputs, the node has {n}"),
                )),
            }
        }
        Op::Lrn { .. } => {
            let x = in_ty(cx, node, 0)?;
            if !x.dtype.is_float() || x.shape.rank() < 3 {
                return Err(Error::op(
                    name,
                    format!("input must be a floating-point [N, C, D1, ..] tensor, got {x}"),
                ));
            }
            single(x.clone())
        }
        _ => Err(Error::Internal(not_held("norm", op))),
    }
}

//! Type and shape inference of the index family's ops.

use crate::ir::infer::ctx::{in_ty, norm_axis, tt, unify, Ctx};
use crate::ir::ops::util::not_held;
use crate::ir::{DType, Dim, Node, Op, TensorType};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
        Op::CumSum { .. } => {
            let x = in_ty(cx, node, 0)?;
            let axis = in_ty(cx, node, 1)?;
            if !matches!(axis.dtype, DType::I32 | DType::I64) || axis.shape.rank() > 1 {
                return Err(Error::op(
                    name,
                    format!("axis must be an i32 or i64 scalar, got {axis}"),
                ));
            }
            if let Some(&[a]) = cx.known_ints(node.input(1)).as_deref() {
                norm_axis(name, a, x.shape.rank())?;
            }
            single(x.clone())
        }
        Op::GatherElements { axis } => {
            let x = in_ty(cx, node, 0)?;
            let i = index_input(cx, node, 1)?;
            if i.shape.rank() != x.shape.rank() {
                return Err(Error::op(
                    name,
                    format!("indices {i} must have the rank of data {x}"),
                ));
            }
            norm_axis(name, *axis, x.shape.rank())?;
            single(tt(x.dtype, i.shape.0.clone()))
        }
        Op::ScatterElements { axis, .. } => {
            let x = in_ty(cx, node, 0)?;
            let i = index_input(cx, node, 1)?;
            let u = in_ty(cx, node, 2)?;
            if i.shape.rank() != x.shape.rank() || u.shape.rank() != x.shape.rank() {
                return Err(Error::op(
                    name,
                    format!("indices {i} and updates {u} must have the rank of data {x}"),
                ));
            }
            if u.dtype != x.dtype {
                return Err(Error::op(
                    name,
                    format!("updates {u} must have the dtype of data {x}"),
                ));
            }
            norm_axis(name, *axis, x.shape.rank())?;
            single(x.clone())
        }
        Op::GatherND { batch_dims } => gather_nd(cx, node, *batch_dims).map(|t| vec![t]),
        Op::ScatterND { .. } => {
            let x = in_ty(cx, node, 0)?;
            let i = index_input(cx, node, 1)?;
            let u = in_ty(cx, node, 2)?;
            if u.dtype != x.dtype {
                return Err(Error::op(
                    name,
                    format!("updates {u} must have the dtype of data {x}"),
                ));
            }
            if let Some(Dim::Known(k)) = i.shape.dims().last() {
                let want = i.shape.rank() - 1 + x.shape.rank().saturating_sub(*k);
                if *k > x.shape.rank() || u.shape.rank() != want {
                    return Err(Error::op(
                        name,
                        format!("indices {i} (tuples of {k}) do not fit data {x} with updates {u}"),
                    ));
                }
            }
            single(x.clone())
        }
        _ => Err(Error::Internal(not_held("index", op))),
    }
}

/// The type of an index input (i32 or i64, with at least one axis).
fn index_input<'a>(cx: &Ctx<'a>, node: &Node, i: usize) -> Result<&'a TensorType> {
    let t = in_ty(cx, node, i)?;
    if !matches!(t.dtype, DType::I32 | DType::I64) || t.shape.rank() == 0 {
        return Err(Error::op(
            node.op.onnx_type(),
            format!("indices must be an i32 or i64 tensor of rank >= 1, got {t}"),
        ));
    }
    Ok(t)
}

/// GatherND: `indices.shape[..-1] ++ data.shape[batch_dims + k..]`, where `k`
/// (the length of an index tuple, the last dim of indices) must be known.
fn gather_nd(cx: &mut Ctx, node: &Node, batch_dims: usize) -> Result<TensorType> {
    const NAME: &str = "GatherND";
    let x = in_ty(cx, node, 0)?;
    let i = index_input(cx, node, 1)?;
    let (xr, ir) = (x.shape.rank(), i.shape.rank());
    let k = match i.shape.dims().last() {
        Some(Dim::Known(k)) => *k,
        _ => {
            return Err(Error::op(
                NAME,
                format!("the last dim of indices {i} (the index length) must be known"),
            ))
        }
    };
    if batch_dims >= ir || batch_dims >= xr || batch_dims + k > xr {
        return Err(Error::op(
            NAME,
            format!("indices {i} with batch_dims {batch_dims} do not fit data {x}"),
        ));
    }
    let mut out: Vec<Dim> = Vec::with_capacity(ir - 1 + xr - batch_dims - k);
    for (a, (di, dx)) in i.shape.dims()[..batch_dims]
        .iter()
        .zip(x.shape.dims())
        .enumerate()
    {
        out.push(unify(NAME, &format!("batch dim {a}"), di, dx)?);
    }
    out.extend(i.shape.dims()[batch_dims..ir - 1].iter().cloned());
    out.extend(x.shape.dims()[batch_dims + k..].iter().cloned());
    Ok(tt(x.dtype, out))
}

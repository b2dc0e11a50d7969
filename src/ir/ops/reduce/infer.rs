//! Type and shape inference of the reduce family's ops.

use crate::ir::infer::ctx::{in_ty, norm_axis, tt, unique_axes, vec_len, Ctx};
use crate::ir::ops::util::not_held;
use crate::ir::{DType, Dim, Node, Op, TensorType};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Softmax { axis, .. } | Op::LogSoftmax { axis, .. } => {
            let x = in_ty(cx, node, 0)?;
            norm_axis(name, *axis, x.shape.rank())?;
            single(x.clone())
        }
        Op::Hardmax { axis } => {
            let x = in_ty(cx, node, 0)?;
            if !x.dtype.is_float() {
                return Err(Error::op(
                    name,
                    format!("input must be floating point, got {}", x.dtype),
                ));
            }
            norm_axis(name, *axis, x.shape.rank())?;
            single(x.clone())
        }
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => reduce(cx, node, *keepdims, *noop_with_empty_axes).map(|t| vec![t]),
        Op::ArgMax { axis, keepdims, .. } | Op::ArgMin { axis, keepdims, .. } => {
            let x = in_ty(cx, node, 0)?;
            let ax = norm_axis(name, *axis, x.shape.rank())?;
            let mut out = x.shape.0.clone();
            if *keepdims {
                out[ax] = Dim::Known(1);
            } else {
                out.remove(ax);
            }
            single(tt(DType::I64, out))
        }
        _ => Err(Error::Internal(not_held("reduce", op))),
    }
}

fn reduce(cx: &mut Ctx, node: &Node, keepdims: bool, noop: bool) -> Result<TensorType> {
    let name = node.op.onnx_type();
    let x = in_ty(cx, node, 0)?;
    let r = x.shape.rank();
    let axes: Option<Vec<usize>> = match node.input(1) {
        None => Some(if noop { vec![] } else { (0..r).collect() }),
        Some(a) => match cx.known_ints(Some(a)) {
            Some(v) if v.is_empty() => Some(if noop { vec![] } else { (0..r).collect() }),
            Some(v) => Some(unique_axes(name, &v, r)?),
            None => None,
        },
    };
    let Some(axes) = axes else {
        if keepdims {
            return Ok(tt(x.dtype, cx.fresh_n(r)));
        }
        let k = vec_len(name, "axes", in_ty(cx, node, 1)?)?;
        if k == 0 || k > r {
            return Err(Error::op(
                name,
                "the axes input must be a known constant to infer the output rank",
            ));
        }
        return Ok(tt(x.dtype, cx.fresh_n(r - k)));
    };
    let mut out = Vec::with_capacity(r);
    for (i, d) in x.shape.dims().iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(Dim::Known(1));
            }
        } else {
            out.push(d.clone());
        }
    }
    Ok(tt(x.dtype, out))
}

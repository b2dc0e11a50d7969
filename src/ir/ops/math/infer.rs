//! Type and shape inference of the math family's ops.

use crate::ir::infer::ctx::{broadcast, in_ty, tt, Ctx};
use crate::ir::ops::util::not_held;
use crate::ir::{BinaryOp, DType, Node, Op, Shape, TensorType, UnaryOp};
use crate::{Error, Result};

/// The output types of one of the family's ops.
pub(crate) fn infer(cx: &mut Ctx, node: &Node) -> Result<Vec<TensorType>> {
    let op = &node.op;
    let name = op.onnx_type();
    let single = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Unary(u) => {
            let x = in_ty(cx, node, 0)?;
            if matches!(u, UnaryOp::Not) && x.dtype != DType::Bool {
                return Err(Error::op(
                    name,
                    format!("input must be bool, got {}", x.dtype),
                ));
            }
            single(x.clone())
        }
        Op::Binary(b) => {
            let a = in_ty(cx, node, 0)?;
            let c = in_ty(cx, node, 1)?;
            if *b != BinaryOp::Pow && a.dtype != c.dtype {
                return Err(Error::op(
                    name,
                    format!("inputs mix {} and {}", a.dtype, c.dtype),
                ));
            }
            let dims = broadcast(name, &[&a.shape, &c.shape])?;
            let dt = if b.returns_bool() {
                DType::Bool
            } else {
                a.dtype
            };
            single(tt(dt, dims))
        }
        Op::Variadic(_) => {
            let tys: Vec<&TensorType> = (0..node.inputs.len())
                .map(|i| in_ty(cx, node, i))
                .collect::<Result<_>>()?;
            let first = tys
                .first()
                .ok_or_else(|| Error::op(name, "needs at least one input"))?;
            if let Some(t) = tys.iter().find(|t| t.dtype != first.dtype) {
                return Err(Error::op(
                    name,
                    format!("inputs mix {} and {}", first.dtype, t.dtype),
                ));
            }
            let shapes: Vec<&Shape> = tys.iter().map(|t| &t.shape).collect();
            single(tt(first.dtype, broadcast(name, &shapes)?))
        }
        Op::Clip => single(in_ty(cx, node, 0)?.clone()),
        Op::Where => {
            let c = in_ty(cx, node, 0)?;
            let x = in_ty(cx, node, 1)?;
            let y = in_ty(cx, node, 2)?;
            if c.dtype != DType::Bool {
                return Err(Error::op(
                    name,
                    format!("condition must be bool, got {}", c.dtype),
                ));
            }
            if x.dtype != y.dtype {
                return Err(Error::op(
                    name,
                    format!("inputs mix {} and {}", x.dtype, y.dtype),
                ));
            }
            single(tt(
                x.dtype,
                broadcast(name, &[&c.shape, &x.shape, &y.shape])?,
            ))
        }
        Op::Cast { to, .. } => single(tt(*to, in_ty(cx, node, 0)?.shape.0.clone())),
        Op::IsNaN | Op::IsInf { .. } => {
            let x = in_ty(cx, node, 0)?;
            if !x.dtype.is_float() {
                return Err(Error::op(
                    name,
                    format!("input must be floating point, got {}", x.dtype),
                ));
            }
            single(tt(DType::Bool, x.shape.0.clone()))
        }
        Op::Shrink { .. } => {
            let x = in_ty(cx, node, 0)?;
            if x.dtype == DType::Bool {
                return Err(Error::op(name, "input must be numeric, got bool"));
            }
            single(x.clone())
        }
        _ => Err(Error::Internal(not_held("math", op))),
    }
}

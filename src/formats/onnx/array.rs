//! Importers of shape and data movement ops.

use super::attrs::Problem;
use super::ctx::{scalar_of, Ctx, Imported, In};
use super::tensor;
use crate::ir::{Op, PadMode, ScatterReduction, Tensor, TensorType};

/// https://onnx.ai/onnx/operators/onnx__Flatten.html
pub fn flatten(c: &Ctx) -> Result<Imported, Problem> {
    let axis = c.attrs.int("axis", 1)?;
    c.simple(Op::Flatten { axis })
}

/// https://onnx.ai/onnx/operators/onnx__Reshape.html (`allowzero` from 14).
pub fn reshape(c: &Ctx) -> Result<Imported, Problem> {
    let allowzero = c.attrs.bool("allowzero", false)?;
    c.simple(Op::Reshape { allowzero })
}

/// https://onnx.ai/onnx/operators/onnx__Transpose.html. Without `perm` the
/// axes are reversed, which needs the input's rank: known at import for
/// graph inputs and constants, otherwise filled in by a fixup once
/// inference has typed the input.
pub fn transpose(c: &Ctx) -> Result<Imported, Problem> {
    if let Some(p) = c.attrs.opt_usizes("perm")? {
        return c.simple(Op::Transpose { perm: p });
    }
    let reversed = |rank: usize| (0..rank).rev().collect::<Vec<usize>>();
    if let Some(ty) = c.known_type(0) {
        return c.simple(Op::Transpose {
            perm: reversed(ty.shape.rank()),
        });
    }
    let mut imp = c.simple(Op::Transpose { perm: vec![] })?;
    imp.fixup = Some(Box::new(move |op: &mut Op, tys: &[Option<TensorType>]| {
        let ty = tys
            .first()
            .and_then(Option::as_ref)
            .ok_or("the input's rank is unknown, so the default perm cannot be built")?;
        *op = Op::Transpose {
            perm: reversed(ty.shape.rank()),
        };
        Ok(())
    }));
    Ok(imp)
}

/// An ints attribute as a constant i64 input, absent when not given.
fn ints_input(c: &Ctx, name: &'static str, required: bool) -> Result<In, Problem> {
    match c.attrs.opt_ints(name)? {
        Some(v) => Ok(In::Const(name, Tensor::vec_i64(v.to_vec()))),
        None if required => Err(format!("attribute '{name}' is required")),
        None => Ok(In::Absent),
    }
}

/// https://onnx.ai/onnx/operators/onnx__Squeeze.html before opset 13: the
/// `axes` attribute becomes the optional axes input.
pub fn squeeze_v1(c: &Ctx) -> Result<Imported, Problem> {
    let axes = ints_input(c, "axes", false)?;
    Ok(Imported {
        op: Op::Squeeze,
        inputs: vec![c.input(0), axes],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Unsqueeze.html before opset 13: the
/// required `axes` attribute becomes the axes input.
pub fn unsqueeze_v1(c: &Ctx) -> Result<Imported, Problem> {
    let axes = ints_input(c, "axes", true)?;
    Ok(Imported {
        op: Op::Unsqueeze,
        inputs: vec![c.input(0), axes],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Concat.html (`axis` required).
pub fn concat(c: &Ctx) -> Result<Imported, Problem> {
    let axis = c
        .attrs
        .opt_int("axis")?
        .ok_or("attribute 'axis' is required")?;
    c.simple(Op::Concat { axis })
}

/// https://onnx.ai/onnx/operators/onnx__Split.html: before opset 13 `split`
/// is an attribute (made a constant input); from 18 `num_outputs` may be
/// given, and must then match the node's outputs. The op's `num_outputs` is
/// the node's output count.
pub fn split(c: &Ctx) -> Result<Imported, Problem> {
    let axis = c.attrs.int("axis", 0)?;
    let n = c.node.output.len();
    let inputs = if c.opset < 13 {
        vec![c.input(0), ints_input(c, "split", false)?]
    } else {
        c.given()
    };
    if let Some(k) = c.attrs.opt_int("num_outputs")? {
        if c.n_inputs() > 1 {
            return Err("both the 'split' input and the 'num_outputs' attribute are given".into());
        }
        if usize::try_from(k).ok() != Some(n) {
            return Err(format!(
                "attribute 'num_outputs' = {k} but the node has {n} outputs"
            ));
        }
    }
    Ok(Imported {
        op: Op::Split {
            axis,
            num_outputs: n,
        },
        inputs,
        outputs: n,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Slice.html before opset 10:
/// `starts`, `ends` and `axes` attributes become inputs.
pub fn slice_v1(c: &Ctx) -> Result<Imported, Problem> {
    let starts = ints_input(c, "starts", true)?;
    let ends = ints_input(c, "ends", true)?;
    let axes = ints_input(c, "axes", false)?;
    Ok(Imported {
        op: Op::Slice,
        inputs: vec![c.input(0), starts, ends, axes],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Gather.html
pub fn gather(c: &Ctx) -> Result<Imported, Problem> {
    let axis = c.attrs.int("axis", 0)?;
    c.simple(Op::Gather { axis })
}

/// https://onnx.ai/onnx/operators/onnx__Shape.html, opset 15 form.
pub fn shape(c: &Ctx) -> Result<Imported, Problem> {
    let start = c.attrs.int("start", 0)?;
    let end = c.attrs.opt_int("end")?;
    c.simple(Op::Shape { start, end })
}

/// https://onnx.ai/onnx/operators/onnx__ConstantOfShape.html (`value`
/// defaults to a float 0).
pub fn constant_of_shape(c: &Ctx) -> Result<Imported, Problem> {
    let value = match c.attrs.opt_tensor("value")? {
        Some(t) => tensor::decode(t, c.base_dir).map_err(|e| format!("attribute 'value' {e}"))?,
        None => Tensor::scalar_f32(0.0),
    };
    if value.numel() != 1 {
        return Err(format!(
            "attribute 'value' must hold one element, it holds {}",
            value.numel()
        ));
    }
    c.simple(Op::ConstantOfShape { value })
}

fn pad_mode(c: &Ctx) -> Result<PadMode, Problem> {
    match c.attrs.string("mode", "constant")? {
        "constant" => Ok(PadMode::Constant),
        "reflect" => Ok(PadMode::Reflect),
        "edge" => Ok(PadMode::Edge),
        "wrap" => Ok(PadMode::Wrap),
        other => Err(format!("unknown pad mode \"{other}\"")),
    }
}

/// https://onnx.ai/onnx/operators/onnx__Pad.html, opset 2 form: `pads` and
/// `value` attributes become inputs.
pub fn pad_v2(c: &Ctx) -> Result<Imported, Problem> {
    let mode = pad_mode(c)?;
    let pads = ints_input(c, "pads", true)?;
    let value = match c.attrs.opt_float("value")? {
        Some(v) => In::Const("value", scalar_of(c.dtype_hint(0), v as f64)),
        None => In::Absent,
    };
    Ok(Imported {
        op: Op::Pad { mode },
        inputs: vec![c.input(0), pads, value],
        outputs: 1,
        fixup: None,
    })
}

/// https://onnx.ai/onnx/operators/onnx__Pad.html, opset 11+ (axes input from
/// 18, `wrap` mode from 19).
pub fn pad(c: &Ctx) -> Result<Imported, Problem> {
    let mode = pad_mode(c)?;
    c.simple(Op::Pad { mode })
}

/// `reduction` of ScatterElements (opset 16; 18 added max and min) and
/// ScatterND.
fn scatter_reduction(c: &Ctx) -> Result<ScatterReduction, Problem> {
    let name = c.attrs.string("reduction", "none")?;
    ScatterReduction::ALL
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| {
            format!("attribute 'reduction' must be none, add, mul, max or min, got {name:?}")
        })
}

/// https://onnx.ai/onnx/operators/onnx__GatherElements.html (opset 11).
pub fn gather_elements(c: &Ctx) -> Result<Imported, Problem> {
    c.simple(Op::GatherElements {
        axis: c.attrs.int("axis", 0)?,
    })
}

/// https://onnx.ai/onnx/operators/onnx__ScatterElements.html (opset 11).
pub fn scatter_elements(c: &Ctx) -> Result<Imported, Problem> {
    c.simple(Op::ScatterElements {
        axis: c.attrs.int("axis", 0)?,
        reduction: scatter_reduction(c)?,
    })
}

/// https://onnx.ai/onnx/operators/onnx__GatherND.html (opset 11; 12 added
/// `batch_dims`).
pub fn gather_nd(c: &Ctx) -> Result<Imported, Problem> {
    let b = c.attrs.int("batch_dims", 0)?;
    let batch_dims =
        usize::try_from(b).map_err(|_| format!("attribute 'batch_dims' must be >= 0, got {b}"))?;
    c.simple(Op::GatherND { batch_dims })
}

/// https://onnx.ai/onnx/operators/onnx__ScatterND.html (opset 11; 16 added
/// `reduction`).
pub fn scatter_nd(c: &Ctx) -> Result<Imported, Problem> {
    c.simple(Op::ScatterND {
        reduction: scatter_reduction(c)?,
    })
}

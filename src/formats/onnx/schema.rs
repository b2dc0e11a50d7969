//! The generic importer: builds an op from its ONNX attributes as the op's
//! schema (`ir::schema`) names them, with the schema's defaults. An operator
//! whose ONNX attributes map one to one onto its schema (same meaning, an
//! encoding this file reads) needs no importer of its own: its row in the
//! import table (`ops.rs`) names [`from_schema`].
//!
//! Encodings read: INT (integers; bools as 0 or 1), FLOAT, INTS, STRING
//! (enum words, matched without case) and INT element-type codes (dtypes).
//! Tensor attributes and mlc-only values are not read here.

use super::attrs::{Attrs, Problem};
use super::ctx::{Ctx, Imported};
use crate::ir::schema::{self, AttrDef, AttrValue, Kind};
use crate::ir::DType;

/// The value of the ONNX attribute behind `def`, read as `kind`; `None` when
/// the node does not carry it (or it has no ONNX name).
fn value(attrs: &Attrs, def: AttrDef, kind: Kind) -> Result<Option<AttrValue>, Problem> {
    let Some(name) = def.onnx_name() else {
        return Ok(None);
    };
    Ok(match kind {
        Kind::Int | Kind::UInt => attrs.opt_int(name)?.map(AttrValue::Int),
        Kind::Bool => match attrs.opt_int(name)? {
            None => None,
            Some(0) => Some(AttrValue::Bool(false)),
            Some(1) => Some(AttrValue::Bool(true)),
            Some(v) => return Err(format!("attribute '{name}' must be 0 or 1, got {v}")),
        },
        Kind::Float => attrs.opt_float(name)?.map(AttrValue::Float),
        Kind::Ints | Kind::UInts => attrs.opt_ints(name)?.map(|v| AttrValue::Ints(v.to_vec())),
        Kind::Word(words) => match attrs.opt_string(name)? {
            None => None,
            Some(s) => {
                let w = s.to_ascii_lowercase();
                let found = words.iter().find(|n| **n == w).ok_or_else(|| {
                    format!(
                        "attribute '{name}': unsupported value '{s}' (expected one of {})",
                        words.join(", ")
                    )
                })?;
                Some(AttrValue::Word(found))
            }
        },
        Kind::DType => match attrs.opt_int(name)? {
            None => None,
            Some(code) => Some(AttrValue::DType(
                i32::try_from(code)
                    .ok()
                    .and_then(DType::from_onnx_code)
                    .ok_or_else(|| format!("attribute '{name}': unknown element type {code}"))?,
            )),
        },
        Kind::Tensor | Kind::Activation | Kind::ActQuant | Kind::Steps => {
            return Err(format!(
                "attribute '{name}' cannot be read by the generic importer"
            ))
        }
    })
}

/// Imports a node whose op is built from its attributes alone: the node's
/// inputs unchanged, one output.
pub fn from_schema(c: &Ctx) -> Result<Imported, Problem> {
    let t = c.node.op_type.as_str();
    let op = schema::build(t, c.n_outputs(), |def, kind| value(&c.attrs, def, kind))?
        .ok_or_else(|| format!("{t} has no schema (an import table bug)"))?;
    c.simple(op)
}

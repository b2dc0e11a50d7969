//! Schemas of the ops mlc's passes make: FusedConv, FusedMatMul and
//! Elementwise. They have no ONNX counterpart (the exporter expands them),
//! so their own attributes have no ONNX names.

use crate::ir::ops::nn::schema::{conv_attrs, conv_proto};
use crate::ir::ops::util::not_held;
use crate::ir::schema::{mlc, Msg, OpDef, Rule, Visitor, MANY};
use crate::ir::{Activation, ConvAttrs, EwStep, Op};

pub(crate) fn prototypes() -> Vec<Op> {
    vec![
        Op::FusedConv {
            conv: conv_proto(),
            act: None,
        },
        Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act: None,
        },
        Op::Elementwise { steps: vec![] },
    ]
}

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::FusedConv { .. } => OpDef::mlc("FusedConv", 2..=4),
        Op::FusedMatMul { .. } => OpDef::mlc("FusedMatMul", 2..=3),
        Op::Elementwise { .. } => OpDef::mlc("Elementwise", 1..=MANY),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::FusedConv { conv, act } => fused_conv(conv, act, v),
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha,
            act,
        } => fused_matmul(trans_a, trans_b, alpha, act, v),
        Op::Elementwise { steps } => elementwise(steps, v),
        _ => Err(not_held("fused", op)),
    }
}

/// The epilogue activation of a fused or quantized op, shown when present.
pub(crate) fn act<V: Visitor>(act: &mut Option<Activation>, v: &mut V) -> Msg<()> {
    v.attr(mlc("act"), act, Rule::UnlessDefault(None))
}

fn fused_conv<V: Visitor>(conv: &mut ConvAttrs, a: &mut Option<Activation>, v: &mut V) -> Msg<()> {
    conv_attrs(conv, v)?;
    act(a, v)
}

fn fused_matmul<V: Visitor>(
    trans_a: &mut bool,
    trans_b: &mut bool,
    alpha: &mut f32,
    a: &mut Option<Activation>,
    v: &mut V,
) -> Msg<()> {
    v.attr(mlc("trans_a"), trans_a, Rule::Always(false))?;
    v.attr(mlc("trans_b"), trans_b, Rule::Always(false))?;
    v.attr(mlc("alpha"), alpha, Rule::Always(1.0))?;
    act(a, v)
}

fn elementwise<V: Visitor>(steps: &mut Vec<EwStep>, v: &mut V) -> Msg<()> {
    v.attr(mlc("steps"), steps, Rule::Required)
}

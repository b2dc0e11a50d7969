//! Schemas of the ops mlc's passes make: FusedConv, FusedMatMul and
//! Elementwise. They have no ONNX counterpart (the exporter expands them),
//! so their own attributes have no ONNX names.

use super::{mlc, nn, Msg, Rule, Visitor};
use crate::ir::{Activation, ConvAttrs, EwStep, Op};

pub(super) fn prototypes() -> Vec<Op> {
    vec![
        Op::FusedConv {
            conv: nn::conv_proto(),
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

/// The epilogue activation of a fused or quantized op, shown when present.
pub(super) fn act<V: Visitor>(act: &mut Option<Activation>, v: &mut V) -> Msg<()> {
    v.attr(mlc("act"), act, Rule::UnlessDefault(None))
}

pub(super) fn fused_conv<V: Visitor>(
    conv: &mut ConvAttrs,
    a: &mut Option<Activation>,
    v: &mut V,
) -> Msg<()> {
    nn::conv_attrs(conv, v)?;
    act(a, v)
}

pub(super) fn fused_matmul<V: Visitor>(
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

pub(super) fn elementwise<V: Visitor>(steps: &mut Vec<EwStep>, v: &mut V) -> Msg<()> {
    v.attr(mlc("steps"), steps, Rule::Required)
}

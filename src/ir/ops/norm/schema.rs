//! Schemas of the normalizations: BatchNormalization, LayerNormalization,
//! InstanceNormalization, LRN.

use crate::ir::ops::util::not_held;
use crate::ir::schema::{mlc, std, Msg, OpDef, Rule, Visitor};
use crate::ir::Op;

pub(crate) fn prototypes() -> Vec<Op> {
    vec![
        Op::BatchNormalization {
            epsilon: 1e-5,
            training_momentum: None,
        },
        Op::LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
        },
        Op::InstanceNormalization { epsilon: 1e-5 },
        Op::Lrn {
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
            size: 1,
        },
    ]
}

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::BatchNormalization { .. } => OpDef::onnx("BatchNormalization", 5..=5),
        Op::LayerNormalization { .. } => OpDef::onnx("LayerNormalization", 2..=3),
        Op::InstanceNormalization { .. } => OpDef::onnx("InstanceNormalization", 3..=3),
        Op::Lrn { .. } => OpDef::onnx("LRN", 1..=1),
        _ => return None,
    })
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::BatchNormalization {
            epsilon,
            training_momentum,
        } => batch_norm(epsilon, training_momentum, v),
        Op::LayerNormalization { axis, epsilon } => layer_norm(axis, epsilon, v),
        Op::InstanceNormalization { epsilon } => instance_norm(epsilon, v),
        Op::Lrn {
            alpha,
            beta,
            bias,
            size,
        } => lrn(alpha, beta, bias, size, v),
        _ => Err(not_held("norm", op)),
    }
}

/// `training_momentum` is ONNX's `momentum` with `training_mode = 1`,
/// which the exporter writes.
fn batch_norm<V: Visitor>(
    epsilon: &mut f32,
    training_momentum: &mut Option<f32>,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("epsilon"), epsilon, Rule::Always(1e-5))?;
    v.attr(
        mlc("training_momentum"),
        training_momentum,
        Rule::UnlessDefault(None),
    )
}

fn layer_norm<V: Visitor>(axis: &mut i64, epsilon: &mut f32, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(-1))?;
    v.attr(std("epsilon"), epsilon, Rule::Always(1e-5))
}

fn instance_norm<V: Visitor>(epsilon: &mut f32, v: &mut V) -> Msg<()> {
    v.attr(std("epsilon"), epsilon, Rule::Always(1e-5))
}

fn lrn<V: Visitor>(
    alpha: &mut f32,
    beta: &mut f32,
    bias: &mut f32,
    size: &mut usize,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("alpha"), alpha, Rule::Always(1e-4))?;
    v.attr(std("beta"), beta, Rule::Always(0.75))?;
    v.attr(std("bias"), bias, Rule::Always(1.0))?;
    v.attr(std("size"), size, Rule::Always(1))
}

//! Schemas of the normalizations: Softmax, LogSoftmax, BatchNormalization,
//! LayerNormalization, InstanceNormalization, LRN.

use super::{mlc, std, Msg, Rule, Visitor};
use crate::ir::Op;

pub(super) fn prototypes() -> Vec<Op> {
    vec![
        Op::Softmax {
            axis: -1,
            legacy: false,
            nan_to_zero: false,
        },
        Op::LogSoftmax {
            axis: -1,
            legacy: false,
        },
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

/// Softmax (with `nan_to_zero`) and LogSoftmax (without). `legacy` (the
/// opset < 13 form) and `nan_to_zero` are mlc's: the exporter expands them.
pub(super) fn softmax<V: Visitor>(
    axis: &mut i64,
    legacy: &mut bool,
    nan_to_zero: Option<&mut bool>,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(-1))?;
    v.attr(mlc("legacy"), legacy, Rule::UnlessDefault(false))?;
    match nan_to_zero {
        Some(z) => v.attr(mlc("nan_to_zero"), z, Rule::UnlessDefault(false)),
        None => Ok(()),
    }
}

/// `training_momentum` is ONNX's `momentum` with `training_mode = 1`,
/// which the exporter writes.
pub(super) fn batch_norm<V: Visitor>(
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

pub(super) fn layer_norm<V: Visitor>(axis: &mut i64, epsilon: &mut f32, v: &mut V) -> Msg<()> {
    v.attr(std("axis"), axis, Rule::Always(-1))?;
    v.attr(std("epsilon"), epsilon, Rule::Always(1e-5))
}

pub(super) fn instance_norm<V: Visitor>(epsilon: &mut f32, v: &mut V) -> Msg<()> {
    v.attr(std("epsilon"), epsilon, Rule::Always(1e-5))
}

pub(super) fn lrn<V: Visitor>(
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

//! Schemas of the elementwise math ops: unary (activations included),
//! binary, variadic, Clip, Where, Cast, IsNaN, IsInf, Shrink.

use super::{std, word_attr, Msg, Rule, Visitor};
use crate::ir::{BinaryOp, DType, E8M0Round, Op, UnaryOp, VariadicOp};

word_attr!(
    E8M0Round,
    [
        ("up", E8M0Round::Up),
        ("down", E8M0Round::Down),
        ("nearest", E8M0Round::Nearest),
    ]
);

/// Gelu's `approximate`.
#[derive(Clone, Copy, PartialEq)]
enum Approximate {
    None,
    Tanh,
}

word_attr!(
    Approximate,
    [("none", Approximate::None), ("tanh", Approximate::Tanh)]
);

/// The unary ops, one of each (the ONNX defaults as attributes).
pub(super) fn unary_ops() -> Vec<UnaryOp> {
    use UnaryOp as U;
    vec![
        U::Sqrt,
        U::Reciprocal,
        U::Neg,
        U::Abs,
        U::Exp,
        U::Log,
        U::Erf,
        U::Tanh,
        U::Sigmoid,
        U::Relu,
        U::Not,
        U::Floor,
        U::Ceil,
        U::Sign,
        U::LeakyRelu { alpha: 0.01 },
        U::Elu { alpha: 1.0 },
        U::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        U::HardSwish,
        U::Gelu { tanh_approx: false },
        U::Sin,
        U::Cos,
        U::Tan,
        U::Asin,
        U::Acos,
        U::Atan,
        U::Sinh,
        U::Cosh,
        U::Asinh,
        U::Acosh,
        U::Atanh,
        U::Round,
        U::Softplus,
        U::Softsign,
    ]
}

pub(super) fn prototypes() -> Vec<Op> {
    use BinaryOp as B;
    let mut ops: Vec<Op> = unary_ops().into_iter().map(Op::Unary).collect();
    // FMod is Mod with `fmod` set.
    ops.extend(
        [
            B::Add,
            B::Sub,
            B::Mul,
            B::Div,
            B::Pow,
            B::Equal,
            B::Greater,
            B::Less,
            B::GreaterOrEqual,
            B::LessOrEqual,
            B::And,
            B::Or,
            B::Xor,
            B::Mod,
        ]
        .map(Op::Binary),
    );
    ops.extend(
        [
            VariadicOp::Sum,
            VariadicOp::Mean,
            VariadicOp::Min,
            VariadicOp::Max,
        ]
        .map(Op::Variadic),
    );
    ops.extend([
        Op::Clip,
        Op::Where,
        Op::IsNaN,
        Op::IsInf {
            detect_negative: true,
            detect_positive: true,
        },
        Op::Cast {
            to: DType::F32,
            saturate: true,
            round_mode: E8M0Round::Up,
        },
        Op::Shrink {
            lambd: 0.5,
            bias: 0.0,
        },
    ]);
    ops
}

/// LeakyRelu, Elu (`alpha`), HardSigmoid (`alpha`, `beta`), Gelu
/// (`approximate`); the others have no attributes.
pub(super) fn unary<V: Visitor>(u: &mut UnaryOp, v: &mut V) -> Msg<()> {
    match u {
        UnaryOp::LeakyRelu { alpha } => v.attr(std("alpha"), alpha, Rule::Always(0.01)),
        UnaryOp::Elu { alpha } => v.attr(std("alpha"), alpha, Rule::Always(1.0)),
        UnaryOp::HardSigmoid { alpha, beta } => {
            v.attr(std("alpha"), alpha, Rule::Always(0.2))?;
            v.attr(std("beta"), beta, Rule::Always(0.5))
        }
        UnaryOp::Gelu { tanh_approx } => {
            let mut a = if *tanh_approx {
                Approximate::Tanh
            } else {
                Approximate::None
            };
            v.attr(
                std("approximate"),
                &mut a,
                Rule::UnlessDefault(Approximate::None),
            )?;
            *tanh_approx = a == Approximate::Tanh;
            Ok(())
        }
        UnaryOp::Sqrt
        | UnaryOp::Reciprocal
        | UnaryOp::Neg
        | UnaryOp::Abs
        | UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Erf
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::Relu
        | UnaryOp::Not
        | UnaryOp::Floor
        | UnaryOp::Ceil
        | UnaryOp::Sign
        | UnaryOp::HardSwish
        | UnaryOp::Sin
        | UnaryOp::Cos
        | UnaryOp::Tan
        | UnaryOp::Asin
        | UnaryOp::Acos
        | UnaryOp::Atan
        | UnaryOp::Sinh
        | UnaryOp::Cosh
        | UnaryOp::Asinh
        | UnaryOp::Acosh
        | UnaryOp::Atanh
        | UnaryOp::Round
        | UnaryOp::Softplus
        | UnaryOp::Softsign => Ok(()),
    }
}

/// Mod's `fmod` picks [`BinaryOp::FMod`]; the others have no attributes.
pub(super) fn binary<V: Visitor>(b: &mut BinaryOp, v: &mut V) -> Msg<()> {
    match b {
        BinaryOp::Mod | BinaryOp::FMod => {
            let mut fmod = *b == BinaryOp::FMod;
            v.attr(std("fmod"), &mut fmod, Rule::UnlessDefault(false))?;
            *b = if fmod { BinaryOp::FMod } else { BinaryOp::Mod };
            Ok(())
        }
        BinaryOp::Add
        | BinaryOp::Sub
        | BinaryOp::Mul
        | BinaryOp::Div
        | BinaryOp::Pow
        | BinaryOp::Equal
        | BinaryOp::Greater
        | BinaryOp::Less
        | BinaryOp::GreaterOrEqual
        | BinaryOp::LessOrEqual
        | BinaryOp::And
        | BinaryOp::Or
        | BinaryOp::Xor => Ok(()),
    }
}

pub(super) fn is_inf<V: Visitor>(neg: &mut bool, pos: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("detect_negative"), neg, Rule::Always(true))?;
    v.attr(std("detect_positive"), pos, Rule::Always(true))
}

/// `to` is a dtype (ONNX spells it as the element-type code).
pub(super) fn cast<V: Visitor>(
    to: &mut DType,
    saturate: &mut bool,
    round_mode: &mut E8M0Round,
    v: &mut V,
) -> Msg<()> {
    v.attr(std("to"), to, Rule::Required)?;
    v.attr(std("saturate"), saturate, Rule::UnlessDefault(true))?;
    v.attr(
        std("round_mode"),
        round_mode,
        Rule::UnlessDefault(E8M0Round::Up),
    )
}

/// https://onnx.ai/onnx/operators/onnx__Shrink.html
pub(super) fn shrink<V: Visitor>(lambd: &mut f32, bias: &mut f32, v: &mut V) -> Msg<()> {
    v.attr(std("lambd"), lambd, Rule::Always(0.5))?;
    v.attr(std("bias"), bias, Rule::Always(0.0))
}

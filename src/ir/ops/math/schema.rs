//! Schemas of the elementwise math ops: unary (activations included),
//! binary, variadic, Clip, Where, Cast, IsNaN, IsInf, Shrink.

use crate::ir::ops::util::not_held;
use crate::ir::schema::{std, word_attr, Msg, OpDef, Rule, Visitor, MANY};
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
pub(crate) fn unary_ops() -> Vec<UnaryOp> {
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

pub(crate) fn prototypes() -> Vec<Op> {
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

/// Name and input count of the family's ops.
pub(crate) fn def(op: &Op) -> Option<OpDef> {
    Some(match op {
        Op::Unary(u) => OpDef::onnx(unary_name(u), 1..=1),
        Op::Binary(b) => OpDef::onnx(binary_name(*b), 2..=2),
        Op::Variadic(v) => OpDef::onnx(
            match v {
                VariadicOp::Sum => "Sum",
                VariadicOp::Mean => "Mean",
                VariadicOp::Min => "Min",
                VariadicOp::Max => "Max",
            },
            1..=MANY,
        ),
        Op::Clip => OpDef::onnx("Clip", 1..=3),
        Op::Where => OpDef::onnx("Where", 3..=3),
        Op::Cast { .. } => OpDef::onnx("Cast", 1..=1),
        Op::IsNaN => OpDef::onnx("IsNaN", 1..=1),
        Op::IsInf { .. } => OpDef::onnx("IsInf", 1..=1),
        Op::Shrink { .. } => OpDef::onnx("Shrink", 1..=1),
        _ => return None,
    })
}

/// The ONNX name of a unary op.
fn unary_name(u: &UnaryOp) -> &'static str {
    match u {
        UnaryOp::Sqrt => "Sqrt",
        UnaryOp::Reciprocal => "Reciprocal",
        UnaryOp::Neg => "Neg",
        UnaryOp::Abs => "Abs",
        UnaryOp::Exp => "Exp",
        UnaryOp::Log => "Log",
        UnaryOp::Erf => "Erf",
        UnaryOp::Tanh => "Tanh",
        UnaryOp::Sigmoid => "Sigmoid",
        UnaryOp::Relu => "Relu",
        UnaryOp::Not => "Not",
        UnaryOp::Floor => "Floor",
        UnaryOp::Ceil => "Ceil",
        UnaryOp::Sign => "Sign",
        UnaryOp::LeakyRelu { .. } => "LeakyRelu",
        UnaryOp::Elu { .. } => "Elu",
        UnaryOp::HardSigmoid { .. } => "HardSigmoid",
        UnaryOp::HardSwish => "HardSwish",
        UnaryOp::Gelu { .. } => "Gelu",
        UnaryOp::Sin => "Sin",
        UnaryOp::Cos => "Cos",
        UnaryOp::Tan => "Tan",
        UnaryOp::Asin => "Asin",
        UnaryOp::Acos => "Acos",
        UnaryOp::Atan => "Atan",
        UnaryOp::Sinh => "Sinh",
        UnaryOp::Cosh => "Cosh",
        UnaryOp::Asinh => "Asinh",
        UnaryOp::Acosh => "Acosh",
        UnaryOp::Atanh => "Atanh",
        UnaryOp::Round => "Round",
        UnaryOp::Softplus => "Softplus",
        UnaryOp::Softsign => "Softsign",
    }
}

/// The ONNX name of a binary op (FMod is Mod with `fmod = 1`).
fn binary_name(b: BinaryOp) -> &'static str {
    match b {
        BinaryOp::Add => "Add",
        BinaryOp::Sub => "Sub",
        BinaryOp::Mul => "Mul",
        BinaryOp::Div => "Div",
        BinaryOp::Pow => "Pow",
        BinaryOp::Equal => "Equal",
        BinaryOp::Greater => "Greater",
        BinaryOp::Less => "Less",
        BinaryOp::GreaterOrEqual => "GreaterOrEqual",
        BinaryOp::LessOrEqual => "LessOrEqual",
        BinaryOp::And => "And",
        BinaryOp::Or => "Or",
        BinaryOp::Xor => "Xor",
        BinaryOp::Mod | BinaryOp::FMod => "Mod",
    }
}

/// Walks the attributes of one of the family's ops.
pub(crate) fn visit<V: Visitor>(op: &mut Op, v: &mut V) -> Msg<()> {
    match op {
        Op::Unary(u) => unary(u, v),
        Op::Binary(b) => binary(b, v),
        Op::Variadic(_) | Op::Clip | Op::Where | Op::IsNaN => Ok(()),
        Op::IsInf {
            detect_negative,
            detect_positive,
        } => is_inf(detect_negative, detect_positive, v),
        Op::Cast {
            to,
            saturate,
            round_mode,
        } => cast(to, saturate, round_mode, v),
        Op::Shrink { lambd, bias } => shrink(lambd, bias, v),
        _ => Err(not_held("math", op)),
    }
}

/// LeakyRelu, Elu (`alpha`), HardSigmoid (`alpha`, `beta`), Gelu
/// (`approximate`); the others have no attributes.
fn unary<V: Visitor>(u: &mut UnaryOp, v: &mut V) -> Msg<()> {
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
fn binary<V: Visitor>(b: &mut BinaryOp, v: &mut V) -> Msg<()> {
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

fn is_inf<V: Visitor>(neg: &mut bool, pos: &mut bool, v: &mut V) -> Msg<()> {
    v.attr(std("detect_negative"), neg, Rule::Always(true))?;
    v.attr(std("detect_positive"), pos, Rule::Always(true))
}

/// `to` is a dtype (ONNX spells it as the element-type code).
fn cast<V: Visitor>(
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
fn shrink<V: Visitor>(lambd: &mut f32, bias: &mut f32, v: &mut V) -> Msg<()> {
    v.attr(std("lambd"), lambd, Rule::Always(0.5))?;
    v.attr(std("bias"), bias, Rule::Always(0.0))
}

//! The table of ONNX operators mlc imports. What an op's import gets and
//! returns ([`Ctx`], [`Imported`]) is defined beneath the table, in `ctx.rs`,
//! and shared with the importers of each op family.
//!
//! Each [`OpSpec`] says, as data, for which opsets an importer handles an
//! operator, how many inputs and outputs the node may have, and which function
//! turns the node into an [`Op`]. An operator whose form changed (an attribute
//! became an input) has one entry per form. The import functions normalize
//! every legacy form to the newest one, so later stages see a single shape of
//! each op: legacy attributes become constant inputs ([`In::Const`]).
//!
//! Specs: `https://onnx.ai/onnx/operators/onnx__<Op>.html` (see [`spec_url`]).

use std::ops::RangeInclusive;

use super::attrs::Problem;
pub use super::ctx::{scalar_of, Ctx, Fixup, Imported, In};
use super::{array, math, nn, quant, schema};
use crate::ir::Op;

/// An importer of one operator form.
pub type ImportFn = fn(&Ctx) -> Result<Imported, Problem>;

/// Where and how an ONNX operator is imported.
#[derive(Debug)]
pub struct OpSpec {
    pub name: &'static str,
    /// Opsets (of the default domain) this entry handles.
    pub opsets: RangeInclusive<i64>,
    /// Allowed input count (trailing empty names not counted).
    pub inputs: RangeInclusive<usize>,
    /// Allowed output count (trailing empty names not counted).
    pub outputs: RangeInclusive<usize>,
    pub import: ImportFn,
}

/// The ONNX specification page of an operator.
pub fn spec_url(op_type: &str) -> String {
    format!("https://onnx.ai/onnx/operators/onnx__{op_type}.html")
}

/// Newest opset of the entries that are current.
const M: i64 = super::MAX_OPSET;

/// Variadic input count.
const MANY: usize = i32::MAX as usize;

const fn s(
    name: &'static str,
    opsets: RangeInclusive<i64>,
    inputs: RangeInclusive<usize>,
    outputs: RangeInclusive<usize>,
    import: ImportFn,
) -> OpSpec {
    OpSpec {
        name,
        opsets,
        inputs,
        outputs,
        import,
    }
}

use crate::ir::{BinaryOp as B, ReduceOp as R, UnaryOp as U, VariadicOp as V};

/// Every operator form mlc imports. Opset ranges start at the version that
/// introduced the form (or 7, mlc's oldest opset) and end where a newer form
/// replaces it (or [`super::MAX_OPSET`], mlc's newest).
pub static SPECS: &[OpSpec] = &[
    // Elementwise, one input. Versions 6/13/14 only widened the types.
    s("Abs", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Abs))),
    s("Neg", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Neg))),
    s("Sqrt", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Sqrt))
    }),
    s("Reciprocal", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Reciprocal))
    }),
    s("Exp", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Exp))),
    s("Log", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Log))),
    s("Erf", 9..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Erf))),
    s("Tanh", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Tanh))
    }),
    s("Sigmoid", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Sigmoid))
    }),
    s("Relu", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Relu))
    }),
    s("Not", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Not))),
    s("Floor", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Floor))
    }),
    s("Ceil", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Ceil))
    }),
    s("Sign", 9..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Sign))
    }),
    s("HardSwish", 14..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::HardSwish))
    }),
    s("Sin", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Sin))),
    s("Cos", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Cos))),
    s("Tan", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Unary(U::Tan))),
    s("Asin", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Asin))
    }),
    s("Acos", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Acos))
    }),
    s("Atan", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Atan))
    }),
    s("Sinh", 9..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Sinh))
    }),
    s("Cosh", 9..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Cosh))
    }),
    s("Asinh", 9..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Asinh))
    }),
    s("Acosh", 9..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Acosh))
    }),
    s("Atanh", 9..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Atanh))
    }),
    s("Round", 11..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Round))
    }),
    s("Softplus", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Softplus))
    }),
    s("Softsign", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::Unary(U::Softsign))
    }),
    s("IsNaN", 9..=M, 1..=1, 1..=1, |c| c.simple(Op::IsNaN)),
    s("IsInf", 10..=M, 1..=1, 1..=1, math::is_inf),
    s("LeakyRelu", 7..=M, 1..=1, 1..=1, math::leaky_relu),
    s("Elu", 7..=M, 1..=1, 1..=1, math::elu),
    s("HardSigmoid", 7..=M, 1..=1, 1..=1, math::hard_sigmoid),
    s("Gelu", 20..=M, 1..=1, 1..=1, math::gelu),
    s("Shrink", 9..=M, 1..=1, 1..=1, schema::from_schema),
    // Elementwise, two inputs with numpy broadcasting (from opset 7).
    s("Add", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Add))),
    s("Sub", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Sub))),
    s("Mul", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Mul))),
    s("Div", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Div))),
    s("Pow", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Pow))),
    s("Equal", 7..=M, 2..=2, 1..=1, |c| {
        c.simple(Op::Binary(B::Equal))
    }),
    s("Greater", 7..=M, 2..=2, 1..=1, |c| {
        c.simple(Op::Binary(B::Greater))
    }),
    s("Less", 7..=M, 2..=2, 1..=1, |c| {
        c.simple(Op::Binary(B::Less))
    }),
    s("GreaterOrEqual", 12..=M, 2..=2, 1..=1, |c| {
        c.simple(Op::Binary(B::GreaterOrEqual))
    }),
    s("LessOrEqual", 12..=M, 2..=2, 1..=1, |c| {
        c.simple(Op::Binary(B::LessOrEqual))
    }),
    s("And", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::And))),
    s("Or", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Or))),
    s("Xor", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Binary(B::Xor))),
    s("Mod", 10..=M, 2..=2, 1..=1, math::modulo),
    // Variadic (opset 6/7 lacked broadcasting; the broadcasting form is a
    // superset).
    s("Sum", 7..=M, 1..=MANY, 1..=1, |c| {
        c.simple(Op::Variadic(V::Sum))
    }),
    s("Mean", 7..=M, 1..=MANY, 1..=1, |c| {
        c.simple(Op::Variadic(V::Mean))
    }),
    s("Min", 7..=M, 1..=MANY, 1..=1, |c| {
        c.simple(Op::Variadic(V::Min))
    }),
    s("Max", 7..=M, 1..=MANY, 1..=1, |c| {
        c.simple(Op::Variadic(V::Max))
    }),
    s("Clip", 7..=10, 1..=1, 1..=1, math::clip_v6),
    s("Clip", 11..=M, 1..=3, 1..=1, |c| c.simple(Op::Clip)),
    s("Where", 9..=M, 3..=3, 1..=1, |c| c.simple(Op::Where)),
    s("Cast", 7..=M, 1..=1, 1..=1, math::cast),
    s(
        "QuantizeLinear",
        10..=M,
        2..=3,
        1..=1,
        quant::quantize_linear,
    ),
    s(
        "DequantizeLinear",
        10..=M,
        2..=3,
        1..=1,
        quant::dequantize_linear,
    ),
    s("DynamicQuantizeLinear", 11..=M, 1..=1, 3..=3, |c| {
        Ok(Imported {
            outputs: 3,
            ..c.simple(Op::DynamicQuantizeLinear)?
        })
    }),
    s("Softmax", 7..=M, 1..=1, 1..=1, math::softmax),
    s("LogSoftmax", 7..=M, 1..=1, 1..=1, math::softmax),
    s("Hardmax", 13..=M, 1..=1, 1..=1, schema::from_schema),
    s("MatMul", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::MatMul)),
    s("Gemm", 7..=10, 3..=3, 1..=1, math::gemm),
    s("Gemm", 11..=M, 2..=3, 1..=1, math::gemm),
    // Reductions: `axes` is an attribute until opset 18 (ReduceSum: 13).
    s("ReduceMean", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::Mean)
    }),
    s("ReduceMean", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::Mean)
    }),
    s("ReduceSum", 7..=12, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::Sum)
    }),
    s("ReduceSum", 13..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::Sum)
    }),
    s("ReduceMax", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::Max)
    }),
    s("ReduceMax", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::Max)
    }),
    s("ReduceMin", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::Min)
    }),
    s("ReduceMin", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::Min)
    }),
    s("ReduceProd", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::Prod)
    }),
    s("ReduceProd", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::Prod)
    }),
    s("ReduceL1", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::L1)
    }),
    s("ReduceL1", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::L1)
    }),
    s("ReduceL2", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::L2)
    }),
    s("ReduceL2", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::L2)
    }),
    s("ReduceSumSquare", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::SumSquare)
    }),
    s("ReduceSumSquare", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::SumSquare)
    }),
    s("ReduceLogSumExp", 7..=17, 1..=1, 1..=1, |c| {
        math::reduce_v1(c, R::LogSumExp)
    }),
    s("ReduceLogSumExp", 18..=M, 1..=2, 1..=1, |c| {
        math::reduce_v18(c, R::LogSumExp)
    }),
    s("CumSum", 11..=M, 2..=2, 1..=1, math::cum_sum),
    s("ArgMax", 7..=M, 1..=1, 1..=1, math::arg_max_min),
    s("ArgMin", 7..=M, 1..=1, 1..=1, math::arg_max_min),
    // Neural network ops.
    s("Conv", 7..=M, 2..=3, 1..=1, nn::conv),
    s("ConvTranspose", 7..=M, 2..=3, 1..=1, nn::conv_transpose),
    s("MaxPool", 7..=7, 1..=1, 1..=1, nn::max_pool),
    s("MaxPool", 8..=M, 1..=1, 1..=2, nn::max_pool),
    s("AveragePool", 7..=M, 1..=1, 1..=1, nn::average_pool),
    s("GlobalAveragePool", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::GlobalAveragePool)
    }),
    s("GlobalMaxPool", 7..=M, 1..=1, 1..=1, |c| {
        c.simple(Op::GlobalMaxPool)
    }),
    s("BatchNormalization", 7..=13, 5..=5, 1..=5, nn::batch_norm),
    s("BatchNormalization", 14..=M, 5..=5, 1..=3, nn::batch_norm),
    s("LayerNormalization", 17..=M, 2..=3, 1..=3, nn::layer_norm),
    s(
        "InstanceNormalization",
        7..=M,
        3..=3,
        1..=1,
        nn::instance_norm,
    ),
    s("LRN", 7..=M, 1..=1, 1..=1, nn::lrn),
    s("Dropout", 7..=11, 1..=1, 1..=2, nn::dropout),
    s("Dropout", 12..=M, 1..=3, 1..=2, nn::dropout),
    s("Resize", 10..=10, 2..=2, 1..=1, nn::resize_v10),
    s("Resize", 11..=12, 3..=4, 1..=1, nn::resize),
    s("Resize", 13..=M, 1..=4, 1..=1, nn::resize),
    s("Upsample", 7..=8, 1..=1, 1..=1, nn::upsample),
    s("Upsample", 9..=9, 2..=2, 1..=1, nn::upsample),
    // Shape and data movement.
    s("Flatten", 7..=M, 1..=1, 1..=1, array::flatten),
    s("Reshape", 7..=M, 2..=2, 1..=1, array::reshape),
    s("Transpose", 7..=M, 1..=1, 1..=1, array::transpose),
    s("Squeeze", 7..=12, 1..=1, 1..=1, array::squeeze_v1),
    s("Squeeze", 13..=M, 1..=2, 1..=1, |c| c.simple(Op::Squeeze)),
    s("Unsqueeze", 7..=12, 1..=1, 1..=1, array::unsqueeze_v1),
    s("Unsqueeze", 13..=M, 2..=2, 1..=1, |c| {
        c.simple(Op::Unsqueeze)
    }),
    s("Concat", 7..=M, 1..=MANY, 1..=1, array::concat),
    s("Split", 7..=12, 1..=1, 1..=MANY, array::split),
    s("Split", 13..=M, 1..=2, 1..=MANY, array::split),
    s("Slice", 7..=9, 1..=1, 1..=1, array::slice_v1),
    s("Slice", 10..=M, 3..=5, 1..=1, |c| c.simple(Op::Slice)),
    s("Gather", 7..=M, 2..=2, 1..=1, array::gather),
    s(
        "GatherElements",
        11..=M,
        2..=2,
        1..=1,
        array::gather_elements,
    ),
    s(
        "ScatterElements",
        11..=M,
        3..=3,
        1..=1,
        array::scatter_elements,
    ),
    s("GatherND", 11..=M, 2..=2, 1..=1, array::gather_nd),
    s("ScatterND", 11..=M, 3..=3, 1..=1, array::scatter_nd),
    s("Shape", 7..=14, 1..=1, 1..=1, |c| {
        c.simple(Op::Shape {
            start: 0,
            end: None,
        })
    }),
    s("Shape", 15..=M, 1..=1, 1..=1, array::shape),
    s("Size", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Size)),
    s(
        "ConstantOfShape",
        9..=M,
        1..=1,
        1..=1,
        array::constant_of_shape,
    ),
    s("Expand", 8..=M, 2..=2, 1..=1, |c| c.simple(Op::Expand)),
    s("Tile", 7..=M, 2..=2, 1..=1, |c| c.simple(Op::Tile)),
    s("Identity", 7..=M, 1..=1, 1..=1, |c| c.simple(Op::Identity)),
    s("Pad", 7..=10, 1..=1, 1..=1, array::pad_v2),
    s("Pad", 11..=17, 2..=3, 1..=1, array::pad),
    s("Pad", 18..=M, 2..=4, 1..=1, array::pad),
    // `stash_type` (opset 27) only sets the precision of the accumulation.
    s("Range", 11..=M, 3..=3, 1..=1, |c| {
        c.attrs.ignore(&["stash_type"]);
        c.simple(Op::Range)
    }),
];

/// The entry importing `op_type` at `opset`, or why there is none.
pub fn find(op_type: &str, opset: i64) -> Result<&'static OpSpec, Problem> {
    let mut forms = SPECS.iter().filter(|s| s.name == op_type).peekable();
    if forms.peek().is_none() {
        return Err(format!("operator '{op_type}' is not supported by mlc"));
    }
    let forms: Vec<&OpSpec> = forms.collect();
    if let Some(s) = forms.iter().find(|s| s.opsets.contains(&opset)) {
        return Ok(s);
    }
    let first = forms.iter().map(|s| *s.opsets.start()).min().unwrap_or(0);
    let last = forms.iter().map(|s| *s.opsets.end()).max().unwrap_or(0);
    Err(format!(
        "{op_type} is not defined at opset {opset} (mlc imports it at opsets {first}..{last}; see {})",
        spec_url(op_type)
    ))
}

/// Formats an allowed count range for messages.
pub fn fmt_count(r: &RangeInclusive<usize>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else if *r.end() >= MANY {
        format!("at least {}", r.start())
    } else {
        format!("{} to {}", r.start(), r.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operator the table imports is an op kind of the IR, with a
    /// prototype in its family's schema (so its text form parses), except
    /// the legacy operators that import as another op.
    #[test]
    fn every_imported_op_has_a_prototype() {
        let imported_as_another = ["Upsample"];
        let protos = crate::ir::ops::prototypes();
        for spec in SPECS {
            let known = protos.iter().any(|p| p.onnx_type() == spec.name);
            assert!(
                known || imported_as_another.contains(&spec.name),
                "{} imports, but no family lists a prototype of it",
                spec.name
            );
        }
    }

    #[test]
    fn spec_ranges_do_not_overlap_and_stay_in_bounds() {
        for a in SPECS {
            assert!(*a.opsets.start() >= super::super::MIN_OPSET, "{}", a.name);
            assert!(*a.opsets.end() <= super::super::MAX_OPSET, "{}", a.name);
            assert!(a.opsets.start() <= a.opsets.end(), "{}", a.name);
            for b in SPECS {
                if std::ptr::eq(a, b) || a.name != b.name {
                    continue;
                }
                let disjoint =
                    a.opsets.end() < b.opsets.start() || b.opsets.end() < a.opsets.start();
                assert!(disjoint, "{} has overlapping forms", a.name);
            }
        }
    }

    #[test]
    fn every_op_of_the_ir_has_an_importer() {
        let names = [
            "Sqrt",
            "Reciprocal",
            "Neg",
            "Abs",
            "Exp",
            "Log",
            "Erf",
            "Tanh",
            "Sigmoid",
            "Relu",
            "Not",
            "Floor",
            "Ceil",
            "Sign",
            "LeakyRelu",
            "Elu",
            "HardSigmoid",
            "HardSwish",
            "Gelu",
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Pow",
            "Equal",
            "Greater",
            "Less",
            "GreaterOrEqual",
            "LessOrEqual",
            "And",
            "Or",
            "Xor",
            "Sum",
            "Mean",
            "Min",
            "Max",
            "ReduceMean",
            "ReduceSum",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceSumSquare",
            "ReduceLogSumExp",
            "Clip",
            "Where",
            "Cast",
            "Softmax",
            "LogSoftmax",
            "MatMul",
            "Gemm",
            "Conv",
            "ConvTranspose",
            "BatchNormalization",
            "LayerNormalization",
            "InstanceNormalization",
            "MaxPool",
            "AveragePool",
            "GlobalAveragePool",
            "GlobalMaxPool",
            "Flatten",
            "Reshape",
            "Transpose",
            "Squeeze",
            "Unsqueeze",
            "Concat",
            "Split",
            "Slice",
            "Gather",
            "Shape",
            "Size",
            "ConstantOfShape",
            "Expand",
            "Tile",
            "Identity",
            "Dropout",
            "Pad",
            "Range",
            "ArgMax",
            "ArgMin",
            "Resize",
            "Sin",
            "Cos",
            "Tan",
            "Asin",
            "Acos",
            "Atan",
            "Sinh",
            "Cosh",
            "Asinh",
            "Acosh",
            "Atanh",
            "Round",
            "Softplus",
            "Softsign",
            "Mod",
            "IsNaN",
            "IsInf",
            "CumSum",
            "GatherElements",
            "ScatterElements",
            "GatherND",
            "ScatterND",
            "LRN",
            "Shrink",
        ];
        for n in names {
            assert!(find(n, 21).is_ok(), "{n}");
        }
        let msg = find("Range", 10).unwrap_err();
        assert!(
            msg.contains(&format!("opsets 11..{}", super::super::MAX_OPSET)),
            "{msg}"
        );
        assert!(find("Loop", 13).unwrap_err().contains("not supported"));
    }
}

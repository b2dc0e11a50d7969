//! The deterministic text form of a graph (`mlc inspect --ir`).
//!
//! One line per input, constant, node and output, nodes in topological order,
//! so golden tests and diffs read naturally:
//!
//! ```text
//! graph "mlp" opset 17
//!   input  %0 x: f32[batch,4]
//!   const  %1 w: f32[4,8]
//!   %3 y: f32[batch,8] = MatMul(%0, %1)  # mm
//!   output %3 y
//! ```

use std::fmt::Write;

use super::{AutoPad, ConvAttrs, E8M0Round, Graph, Op, PoolAttrs, ResizeMode, UnaryOp};

/// Renders the graph in the text form.
pub fn print(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "graph {:?} opset {}", g.name, g.opset);
    for &i in &g.inputs {
        let v = g.value(i);
        let _ = writeln!(s, "  input  {} {}: {}", i, v.name, v.ty);
    }
    for (&c, t) in &g.consts {
        let v = g.value(c);
        let _ = write!(s, "  const  {} {}: {}", c, v.name, v.ty);
        if t.numel() <= 8 {
            let vals: Vec<String> = t.to_f64_vec().iter().map(|x| format!("{x}")).collect();
            let _ = write!(s, " = [{}]", vals.join(", "));
        }
        s.push('\n');
    }
    let order = g
        .topo_order()
        .unwrap_or_else(|_| g.nodes().map(|(id, _)| id).collect());
    for id in order {
        let Some(node) = g.node(id) else { continue };
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&o| format!("{} {}: {}", o, g.value(o).name, g.ty(o)))
            .collect();
        let ins: Vec<String> = node
            .inputs
            .iter()
            .map(|i| i.map_or_else(|| "_".to_string(), |v| v.to_string()))
            .collect();
        let _ = writeln!(
            s,
            "  {} = {}{}({})  # {}",
            outs.join(", "),
            node.op.onnx_type(),
            attrs_text(&node.op),
            ins.join(", "),
            node.name
        );
    }
    for &o in &g.outputs {
        let _ = writeln!(s, "  output {} {}", o, g.value(o).name);
    }
    s
}

/// `[k=v, ...]` for an op's attributes, empty when it has none.
pub fn attrs_text(op: &Op) -> String {
    let a = attrs(op);
    if a.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = a.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("[{}]", parts.join(", "))
}

fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    let mut a = Vec::new();
    match op {
        Op::FusedConv { .. } | Op::FusedMatMul { .. } => fused_linear_attrs(op, &mut a),
        Op::Elementwise { steps } => elementwise_attrs(steps, &mut a),
        Op::Unary(u) => match u {
            UnaryOp::LeakyRelu { alpha } | UnaryOp::Elu { alpha } => {
                a.push(("alpha", alpha.to_string()))
            }
            UnaryOp::HardSigmoid { alpha, beta } => {
                a.push(("alpha", alpha.to_string()));
                a.push(("beta", beta.to_string()));
            }
            UnaryOp::Gelu { tanh_approx: true } => a.push(("approximate", "tanh".into())),
            _ => {}
        },
        Op::Cast {
            to,
            saturate,
            round_mode,
        } => {
            a.push(("to", to.to_string()));
            if !*saturate {
                a.push(("saturate", "false".into()));
            }
            if *round_mode != E8M0Round::Up {
                a.push(("round_mode", round_mode.name().into()));
            }
        }
        Op::Softmax { axis, legacy } | Op::LogSoftmax { axis, legacy } => {
            a.push(("axis", axis.to_string()));
            if *legacy {
                a.push(("legacy", "true".into()));
            }
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            a.push(("alpha", alpha.to_string()));
            a.push(("beta", beta.to_string()));
            a.push(("trans_a", trans_a.to_string()));
            a.push(("trans_b", trans_b.to_string()));
        }
        Op::Conv(c) => conv_attrs(c, &mut a),
        Op::ConvTranspose(c) => {
            conv_attrs(&c.conv, &mut a);
            a.push(("output_padding", format!("{:?}", c.output_padding)));
            if let Some(s) = &c.output_shape {
                a.push(("output_shape", format!("{s:?}")));
            }
        }
        Op::BatchNormalization {
            epsilon,
            training_momentum,
        } => {
            a.push(("epsilon", epsilon.to_string()));
            if let Some(m) = training_momentum {
                a.push(("training_momentum", m.to_string()));
            }
        }
        Op::InstanceNormalization { epsilon } => a.push(("epsilon", epsilon.to_string())),
        Op::LayerNormalization { axis, epsilon } => {
            a.push(("axis", axis.to_string()));
            a.push(("epsilon", epsilon.to_string()));
        }
        Op::MaxPool(p) => pool_attrs(p, &mut a, false),
        Op::AveragePool(p) => pool_attrs(p, &mut a, true),
        Op::Flatten { axis } | Op::Concat { axis } | Op::Gather { axis } => {
            a.push(("axis", axis.to_string()))
        }
        Op::Reshape { allowzero } => {
            if *allowzero {
                a.push(("allowzero", "true".into()))
            }
        }
        Op::Transpose { perm } => a.push(("perm", format!("{perm:?}"))),
        Op::Split { axis, num_outputs } => {
            a.push(("axis", axis.to_string()));
            a.push(("num_outputs", num_outputs.to_string()));
        }
        Op::Shape { start, end } => {
            a.push(("start", start.to_string()));
            if let Some(e) = end {
                a.push(("end", e.to_string()));
            }
        }
        Op::ConstantOfShape { value } => a.push(("value", format!("{value:?}"))),
        Op::Pad { mode } => a.push(("mode", format!("{mode:?}").to_lowercase())),
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => {
            a.push(("keepdims", keepdims.to_string()));
            if *noop_with_empty_axes {
                a.push(("noop_with_empty_axes", "true".into()));
            }
        }
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        }
        | Op::ArgMin {
            axis,
            keepdims,
            select_last_index,
        } => {
            a.push(("axis", axis.to_string()));
            a.push(("keepdims", keepdims.to_string()));
            if *select_last_index {
                a.push(("select_last_index", "true".into()));
            }
        }
        Op::Resize(r) => {
            a.push(("mode", format!("{:?}", r.mode).to_lowercase()));
            a.push(("coord", format!("{:?}", r.coord)));
            a.push(("nearest", format!("{:?}", r.nearest)));
            if r.exclude_outside {
                a.push(("exclude_outside", "true".into()));
            }
            if r.antialias {
                a.push(("antialias", "true".into()));
            }
            if r.mode == ResizeMode::Cubic {
                a.push(("cubic_coeff_a", r.cubic_coeff_a.to_string()));
            }
            if let Some(ax) = &r.axes {
                a.push(("axes", format!("{ax:?}")));
            }
        }
        Op::Binary(_)
        | Op::Variadic(_)
        | Op::Clip
        | Op::Where
        | Op::MatMul
        | Op::GlobalAveragePool
        | Op::GlobalMaxPool
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Slice
        | Op::Size
        | Op::Expand
        | Op::Tile
        | Op::Identity
        | Op::Dropout
        | Op::Range => {}
    }
    a
}

fn auto_pad_text(p: AutoPad) -> Option<&'static str> {
    match p {
        AutoPad::NotSet => None,
        AutoPad::SameUpper => Some("SAME_UPPER"),
        AutoPad::SameLower => Some("SAME_LOWER"),
        AutoPad::Valid => Some("VALID"),
    }
}

fn conv_attrs(c: &ConvAttrs, a: &mut Vec<(&'static str, String)>) {
    a.push(("kernel", format!("{:?}", c.kernel_shape)));
    a.push(("strides", format!("{:?}", c.strides)));
    a.push(("dilations", format!("{:?}", c.dilations)));
    a.push(("pads", format!("{:?}", c.pads)));
    if let Some(p) = auto_pad_text(c.auto_pad) {
        a.push(("auto_pad", p.into()));
    }
    if c.group != 1 {
        a.push(("group", c.group.to_string()));
    }
}

fn pool_attrs(p: &PoolAttrs, a: &mut Vec<(&'static str, String)>, average: bool) {
    a.push(("kernel", format!("{:?}", p.kernel_shape)));
    a.push(("strides", format!("{:?}", p.strides)));
    a.push(("dilations", format!("{:?}", p.dilations)));
    a.push(("pads", format!("{:?}", p.pads)));
    if let Some(ap) = auto_pad_text(p.auto_pad) {
        a.push(("auto_pad", ap.into()));
    }
    if p.ceil_mode {
        a.push(("ceil_mode", "true".into()));
    }
    if average && p.count_include_pad {
        a.push(("count_include_pad", "true".into()));
    }
    if !average && p.column_major {
        a.push(("storage_order", "1".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;

    #[test]
    fn cast_shows_only_non_default_conversion_attributes() {
        let cast = |to, saturate, round_mode| {
            attrs_text(&Op::Cast {
                to,
                saturate,
                round_mode,
            })
        };
        assert_eq!(cast(DType::F16, true, E8M0Round::Up), "[to=f16]");
        assert_eq!(
            cast(DType::F8E5M2, false, E8M0Round::Up),
            "[to=f8e5m2, saturate=false]"
        );
        assert_eq!(
            cast(DType::F8E8M0, true, E8M0Round::Nearest),
            "[to=f8e8m0, round_mode=nearest]"
        );
    }
}

/// Attributes of FusedConv and FusedMatMul.
fn fused_linear_attrs(_op: &Op, _a: &mut Vec<(&'static str, String)>) {}

/// The steps of an Elementwise chain.
fn elementwise_attrs(_steps: &[super::EwStep], _a: &mut Vec<(&'static str, String)>) {}

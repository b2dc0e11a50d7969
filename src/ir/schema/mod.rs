//! Op schemas: the one place that says which attributes each op has, what
//! they are called in the text form and in ONNX, and what an absent one
//! means.
//!
//! Each op family (`ir::ops::<family>`, `docs/adding-an-op.md`) has a
//! `schema.rs` with one function per op that walks the op's attribute
//! fields in their canonical order through a [`Visitor`], stating for each
//! its name, its ONNX counterpart ([`Onnx`]) and its [`Rule`]: required,
//! always shown with a default for parsing, or shown only when it differs
//! from its default. The same walk serves both directions: reading an op
//! ([`attrs`]: what the text form prints and the ONNX exporter writes) and
//! building one from named values ([`build`]: what the text parser and the
//! generic ONNX importer call), so a name or a default is written once. The
//! family's schema also gives each op's [`OpDef`]: its name, its input
//! count and whether it is a standard ONNX op.
//!
//! Values travel as [`AttrValue`]s; how a value is spelled is the format's
//! business (`ir::text` for the text form, `formats::onnx::export` for ONNX
//! protobuf attributes).

pub(crate) mod attr;

pub(crate) use attr::{mlc, renamed, std, word_attr, Msg};
pub use attr::{Attr, AttrDef, AttrType, AttrValue, Kind, Onnx, OpDef, Rule, Visitor, MANY};

use crate::ir::ops::{prototypes, visit};
use crate::ir::Op;

/// Equal values, floats compared by their bits (`-0` is not `0`).
fn same(a: Option<AttrValue>, b: Option<AttrValue>) -> bool {
    match (a, b) {
        (Some(AttrValue::Float(x)), Some(AttrValue::Float(y))) => x.to_bits() == y.to_bits(),
        (a, b) => a == b,
    }
}

struct Reader {
    out: Vec<Attr>,
    n_outputs: usize,
}

impl Visitor for Reader {
    fn attr<T: AttrType>(&mut self, def: AttrDef, field: &mut T, rule: Rule<T>) -> Msg<()> {
        let shown = match rule {
            Rule::Required | Rule::Always(_) => true,
            Rule::UnlessDefault(d) => !same(field.to_value(), d.to_value()),
        };
        if let (true, Some(value)) = (shown, field.to_value()) {
            self.out.push(Attr { def, value });
        }
        Ok(())
    }

    fn n_outputs(&self) -> usize {
        self.n_outputs
    }
}

/// The attributes of `op` that are shown (in the text form, and in ONNX for
/// those with an ONNX name), in canonical order. Defaults that the op's
/// schema shows only when changed are left out.
pub fn attrs(op: &Op) -> Vec<Attr> {
    let mut r = Reader {
        out: Vec::new(),
        n_outputs: 0,
    };
    let mut op = op.clone();
    // The reader never fails.
    let _ = visit(&mut op, &mut r);
    r.out
}

struct Builder<F> {
    lookup: F,
    n_outputs: usize,
}

impl<F: FnMut(AttrDef, Kind) -> Msg<Option<AttrValue>>> Visitor for Builder<F> {
    fn attr<T: AttrType>(&mut self, def: AttrDef, field: &mut T, rule: Rule<T>) -> Msg<()> {
        *field = match (self.lookup)(def, T::KIND)? {
            Some(v) => T::from_value(v)
                .ok_or_else(|| format!("attribute '{}' expects {}", def.name, T::KIND.what()))?,
            None => match rule {
                Rule::Required => return Err(format!("missing attribute '{}'", def.name)),
                Rule::Always(d) | Rule::UnlessDefault(d) => d,
            },
        };
        Ok(())
    }

    fn n_outputs(&self) -> usize {
        self.n_outputs
    }
}

/// Builds the op called `name` (its text name, [`Op::onnx_type`]) from
/// named attribute values. `lookup(def, kind)` gives the value of an
/// attribute, `None` when absent (its default then applies); `n_outputs` is
/// the node's output count. Returns `None` for an unknown op name.
pub fn build(
    name: &str,
    n_outputs: usize,
    lookup: impl FnMut(AttrDef, Kind) -> Msg<Option<AttrValue>>,
) -> Msg<Option<Op>> {
    let Some(mut op) = prototypes().into_iter().find(|p| p.onnx_type() == name) else {
        return Ok(None);
    };
    let mut b = Builder { lookup, n_outputs };
    visit(&mut op, &mut b)?;
    Ok(Some(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op name is one op kind, except Mod (Mod and FMod, told apart
    /// by the `fmod` attribute).
    #[test]
    fn prototype_names_are_unique() {
        let protos = prototypes();
        let mut names: Vec<&str> = protos.iter().map(|p| p.onnx_type()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "{names:?}");
    }

    /// Building an op from the attributes it shows gives the op back.
    #[test]
    fn attrs_and_build_are_inverse() {
        for p in prototypes() {
            let shown = attrs(&p);
            let back = build(p.onnx_type(), 1, |def, _| {
                Ok(shown.iter().find(|a| a.def == def).map(|a| a.value.clone()))
            })
            .unwrap()
            .unwrap();
            assert_eq!(back.onnx_type(), p.onnx_type());
            assert_eq!(attrs(&back), shown, "{}", p.onnx_type());
        }
    }
}

//! Typed access to a node's ONNX attributes.
//!
//! Every getter checks the attribute's declared type and returns a message
//! (which the importer turns into an [`crate::error::ImportProblem`]) instead
//! of trusting the file. The fields of `AttributeProto` are read directly:
//! `AttributeProto::as_value` of the protobuf crate panics on some hostile
//! inputs. Each getter marks its attribute as read, so after an op's import
//! [`Attrs::unread`] lists the attributes nobody looked at, which the importer
//! reports as unsupported rather than silently ignoring them.

use std::cell::RefCell;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, TensorProto};

/// A message describing why an attribute or node cannot be imported.
pub type Problem = String;

/// The attributes of one node.
pub struct Attrs<'a> {
    list: &'a [AttributeProto],
    read: RefCell<Vec<bool>>,
}

fn type_name(t: AttributeType) -> &'static str {
    match t {
        AttributeType::UNDEFINED => "UNDEFINED",
        AttributeType::FLOAT => "FLOAT",
        AttributeType::INT => "INT",
        AttributeType::STRING => "STRING",
        AttributeType::TENSOR => "TENSOR",
        AttributeType::GRAPH => "GRAPH",
        AttributeType::SPARSE_TENSOR => "SPARSE_TENSOR",
        AttributeType::TYPE_PROTO => "TYPE_PROTO",
        AttributeType::FLOATS => "FLOATS",
        AttributeType::INTS => "INTS",
        AttributeType::STRINGS => "STRINGS",
        AttributeType::TENSORS => "TENSORS",
        AttributeType::GRAPHS => "GRAPHS",
        AttributeType::SPARSE_TENSORS => "SPARSE_TENSORS",
        AttributeType::TYPE_PROTOS => "TYPE_PROTOS",
    }
}

impl<'a> Attrs<'a> {
    pub fn new(list: &'a [AttributeProto]) -> Attrs<'a> {
        Attrs {
            list,
            read: RefCell::new(vec![false; list.len()]),
        }
    }

    /// Names that occur more than once (a malformed node).
    pub fn duplicates(&self) -> Vec<&'a str> {
        let mut seen = std::collections::HashSet::new();
        let mut dups = Vec::new();
        for a in self.list {
            if !seen.insert(a.name.as_str()) && !dups.contains(&a.name.as_str()) {
                dups.push(a.name.as_str());
            }
        }
        dups
    }

    /// Whether the node carries the attribute (does not mark it read).
    pub fn has(&self, name: &str) -> bool {
        self.list.iter().any(|a| a.name == name)
    }

    /// Marks attributes that are valid for the op but do not change what mlc
    /// computes (e.g. `momentum` of an inference BatchNormalization).
    pub fn ignore(&self, names: &[&str]) {
        for n in names {
            let _ = self.find(n);
        }
    }

    /// Attributes that no getter read and that were not ignored.
    pub fn unread(&self) -> Vec<&'a str> {
        let read = self.read.borrow();
        self.list
            .iter()
            .zip(read.iter())
            .filter(|(_, &r)| !r)
            .map(|(a, _)| a.name.as_str())
            .collect()
    }

    fn find(&self, name: &str) -> Option<&'a AttributeProto> {
        let i = self.list.iter().position(|a| a.name == name)?;
        self.read.borrow_mut()[i] = true;
        Some(&self.list[i])
    }

    /// The attribute, when present with type `want` (or with no declared
    /// type, which some old exporters write).
    fn typed(
        &self,
        name: &str,
        want: AttributeType,
    ) -> Result<Option<&'a AttributeProto>, Problem> {
        let Some(a) = self.find(name) else {
            return Ok(None);
        };
        if !a.ref_attr_name.is_empty() {
            return Err(format!(
                "attribute '{name}' refers to a function attribute ('{}'), which is not supported",
                a.ref_attr_name
            ));
        }
        match a.type_.enum_value() {
            Ok(t) if t == want || t == AttributeType::UNDEFINED => Ok(Some(a)),
            Ok(t) => Err(format!(
                "attribute '{name}' must be {}, but the node gives {}",
                type_name(want),
                type_name(t)
            )),
            Err(code) => Err(format!(
                "attribute '{name}' has an unknown attribute type code {code}"
            )),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, Problem> {
        Ok(self.typed(name, AttributeType::INT)?.map(|a| a.i))
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, Problem> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    /// An int attribute that must be 0 or 1.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, Problem> {
        match self.opt_int(name)? {
            None => Ok(default),
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(v) => Err(format!("attribute '{name}' must be 0 or 1, got {v}")),
        }
    }

    pub fn opt_float(&self, name: &str) -> Result<Option<f32>, Problem> {
        Ok(self.typed(name, AttributeType::FLOAT)?.map(|a| a.f))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32, Problem> {
        Ok(self.opt_float(name)?.unwrap_or(default))
    }

    pub fn opt_ints(&self, name: &str) -> Result<Option<&'a [i64]>, Problem> {
        Ok(self
            .typed(name, AttributeType::INTS)?
            .map(|a| a.ints.as_slice()))
    }

    pub fn opt_floats(&self, name: &str) -> Result<Option<&'a [f32]>, Problem> {
        Ok(self
            .typed(name, AttributeType::FLOATS)?
            .map(|a| a.floats.as_slice()))
    }

    /// A list of non-negative ints (sizes, strides, pads), when present.
    pub fn opt_usizes(&self, name: &str) -> Result<Option<Vec<usize>>, Problem> {
        let Some(v) = self.opt_ints(name)? else {
            return Ok(None);
        };
        v.iter()
            .map(|&x| {
                usize::try_from(x)
                    .map_err(|_| format!("attribute '{name}' must not be negative, got {v:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<&'a str>, Problem> {
        let Some(a) = self.typed(name, AttributeType::STRING)? else {
            return Ok(None);
        };
        std::str::from_utf8(&a.s)
            .map(Some)
            .map_err(|_| format!("attribute '{name}' is not valid UTF-8"))
    }

    pub fn string(&self, name: &str, default: &'a str) -> Result<&'a str, Problem> {
        Ok(self.opt_string(name)?.unwrap_or(default))
    }

    pub fn opt_tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, Problem> {
        let Some(a) = self.typed(name, AttributeType::TENSOR)? else {
            return Ok(None);
        };
        match a.t.as_ref() {
            Some(t) => Ok(Some(t)),
            None => Err(format!("attribute '{name}' holds no tensor")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::EnumOrUnknown;

    fn int_attr(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            type_: EnumOrUnknown::new(AttributeType::INT),
            i: v,
            ..Default::default()
        }
    }

    #[test]
    fn typed_getters_and_unread() {
        let list = vec![
            int_attr("axis", -2),
            AttributeProto {
                name: "perm".into(),
                type_: EnumOrUnknown::new(AttributeType::INTS),
                ints: vec![1, 0],
                ..Default::default()
            },
            int_attr("extra", 1),
        ];
        let a = Attrs::new(&list);
        assert_eq!(a.int("axis", 0).unwrap(), -2);
        assert_eq!(a.int("missing", 7).unwrap(), 7);
        assert_eq!(a.opt_usizes("perm").unwrap(), Some(vec![1, 0]));
        assert_eq!(a.unread(), vec!["extra"]);
        a.ignore(&["extra"]);
        assert!(a.unread().is_empty());
    }

    #[test]
    fn type_mismatch_and_bad_values_are_problems() {
        let list = vec![
            int_attr("alpha", 3),
            int_attr("keepdims", 2),
            AttributeProto {
                name: "pads".into(),
                type_: EnumOrUnknown::new(AttributeType::INTS),
                ints: vec![-1, 0],
                ..Default::default()
            },
            AttributeProto {
                name: "weird".into(),
                type_: EnumOrUnknown::from_i32(99),
                ..Default::default()
            },
            AttributeProto {
                name: "t".into(),
                type_: EnumOrUnknown::new(AttributeType::TENSOR),
                ..Default::default()
            },
        ];
        let a = Attrs::new(&list);
        let e = a.float("alpha", 1.0).unwrap_err();
        assert!(e.contains("must be FLOAT") && e.contains("INT"), "{e}");
        assert!(a.bool("keepdims", true).unwrap_err().contains("0 or 1"));
        assert!(a.opt_usizes("pads").unwrap_err().contains("negative"));
        assert!(a.opt_int("weird").unwrap_err().contains("99"));
        assert!(a.opt_tensor("t").unwrap_err().contains("no tensor"));
    }

    #[test]
    fn duplicates_are_found() {
        let list = vec![int_attr("axis", 0), int_attr("axis", 1)];
        assert_eq!(Attrs::new(&list).duplicates(), vec!["axis"]);
    }
}

//! Graph-to-graph passes and the pipeline that runs them.
//!
//! A pass rewrites a [`Graph`] in place and says whether it changed anything.
//! Passes are registered by name with a one-line summary and typed parameters
//! ([`registry`]), so a recipe in `passes/*.toml` is plain data: ordered steps
//! and fixpoint groups naming passes and their parameters ([`recipe`]). The
//! runner ([`runner`]) verifies the IR after every pass and, on request,
//! re-runs the reference interpreter to find the first pass whose outputs
//! drift.
//!
//! Local rewrites follow one shape: match without touching the graph, bail out
//! early when the pattern does not apply, then apply the patch and count the
//! rewrite in [`PassCx`] so the pass log can say what fired and how often.

pub mod cse;
pub mod dce;
pub mod epilogue;
pub mod flat_transpose;
pub mod fold_batchnorm;
pub mod fold_constants;
pub mod fold_nan_guard;
pub mod fuse_elementwise;
pub mod fuse_gelu;
pub mod fuse_layernorm;
pub mod merge_bias;
pub mod noops;
pub mod recipe;
pub mod runner;
pub mod scale_matmul;
pub mod specialize;
#[cfg(test)]
pub mod testing;
pub mod transpose_matmul;

use std::collections::BTreeMap;
use std::fmt;

use crate::ir::Graph;
use crate::{Error, Result};

/// Whether a pass changed the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    No,
    Yes,
}

impl Changed {
    pub fn from_bool(b: bool) -> Changed {
        if b {
            Changed::Yes
        } else {
            Changed::No
        }
    }
}

/// What a pass run may use and report besides the graph.
#[derive(Debug, Default)]
pub struct PassCx {
    /// How often each named rewrite fired during the current pass run.
    pub rewrites: BTreeMap<String, usize>,
}

impl PassCx {
    /// Records one application of the rewrite `what` (e.g. "fold-bn-into-conv").
    pub fn count(&mut self, what: &str) {
        *self.rewrites.entry(what.to_string()).or_insert(0) += 1;
    }
}

/// A graph-to-graph transformation.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&mut self, g: &mut Graph, cx: &mut PassCx) -> Result<Changed>;
}

/// The type of a pass parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Bool,
    Int,
    Float,
    Str,
}

/// A parameter value.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl ParamValue {
    pub fn kind(&self) -> ParamKind {
        match self {
            ParamValue::Bool(_) => ParamKind::Bool,
            ParamValue::Int(_) => ParamKind::Int,
            ParamValue::Float(_) => ParamKind::Float,
            ParamValue::Str(_) => ParamKind::Str,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A declared pass parameter.
#[derive(Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub default: fn() -> ParamValue,
    pub help: &'static str,
}

/// Parameter values for one pass instance, defaults filled in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(pub BTreeMap<String, ParamValue>);

impl Params {
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(ParamValue::Bool(true)))
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.0.get(name) {
            Some(ParamValue::Int(i)) => *i,
            _ => 0,
        }
    }

    pub fn float(&self, name: &str) -> f64 {
        match self.0.get(name) {
            Some(ParamValue::Float(x)) => *x,
            Some(ParamValue::Int(i)) => *i as f64,
            _ => 0.0,
        }
    }

    pub fn str(&self, name: &str) -> &str {
        match self.0.get(name) {
            Some(ParamValue::Str(s)) => s,
            _ => "",
        }
    }
}

/// A registered pass: its name, summary, parameters and constructor.
#[derive(Debug)]
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamSpec],
    pub make: fn(&Params) -> Box<dyn Pass>,
}

impl PassInfo {
    /// Checks `given` against the declared parameters and fills defaults.
    /// An unknown name or a value of the wrong type is an error naming it.
    pub fn params(&self, given: &BTreeMap<String, ParamValue>) -> Result<Params> {
        let mut out = BTreeMap::new();
        for (k, v) in given {
            let Some(spec) = self.params.iter().find(|p| p.name == k) else {
                let known: Vec<&str> = self.params.iter().map(|p| p.name).collect();
                return Err(Error::Recipe(format!(
                    "pass '{}' has no parameter '{k}' (parameters: {})",
                    self.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            let want = (spec.default)().kind();
            let v = match (want, v) {
                (ParamKind::Float, ParamValue::Int(i)) => ParamValue::Float(*i as f64),
                (w, v) if w == v.kind() => v.clone(),
                (w, v) => {
                    return Err(Error::Recipe(format!(
                        "pass '{}': parameter '{k}' takes a {w:?} value, got {v}",
                        self.name
                    )))
                }
            };
            out.insert(k.clone(), v);
        }
        for spec in self.params {
            out.entry(spec.name.to_string())
                .or_insert_with(spec.default);
        }
        Ok(Params(out))
    }
}

/// Every registered pass, in the order `mlc passes` lists them.
pub fn registry() -> &'static [PassInfo] {
    &[
        fold_constants::INFO,
        dce::INFO,
        cse::INFO,
        noops::INFO,
        fold_batchnorm::INFO,
        merge_bias::INFO,
        epilogue::INFO,
        transpose_matmul::INFO,
        flat_transpose::INFO,
        fuse_layernorm::INFO,
        fuse_gelu::INFO,
        fuse_elementwise::INFO,
        fold_nan_guard::INFO,
        scale_matmul::INFO,
    ]
}

/// The registered pass called `name`.
pub fn lookup(name: &str) -> Result<&'static PassInfo> {
    registry().iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = registry().iter().map(|p| p.name).collect();
        Error::Recipe(format!(
            "unknown pass '{name}' (known passes: {})",
            known.join(", ")
        ))
    })
}

//! Pipeline recipes: TOML files naming the passes to run.
//!
//! ```toml
//! name = "O1"
//! description = "Cleanups that never change numerics."
//!
//! [[step]]
//! pass = "fold-constants"
//!
//! [[step]]                       # a fixpoint group: repeat until no pass
//! fixpoint = [                   # reports a change, at most max_iterations
//!   { pass = "cse" },
//!   { pass = "dce" },
//! ]
//! max_iterations = 8
//!
//! [[step]]
//! pass = "fuse-epilogue"
//! params = { activations = "relu,clip" }
//! ```
//!
//! Loading checks every pass name and parameter against the registry, so a
//! recipe that names something unknown fails before any pass runs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{lookup, ParamValue, Params, PassInfo};
use crate::{Error, Result};

/// Default iteration cap of a fixpoint group.
pub const DEFAULT_MAX_ITERATIONS: usize = 10;

/// A registered pass with its checked parameters.
#[derive(Debug, Clone)]
pub struct PassRef {
    pub info: &'static PassInfo,
    pub params: Params,
}

impl PassRef {
    pub fn name(&self) -> &'static str {
        self.info.name
    }
}

impl PartialEq for PassRef {
    fn eq(&self, other: &PassRef) -> bool {
        self.info.name == other.info.name && self.params == other.params
    }
}

/// One step of a recipe.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Pass(PassRef),
    /// Passes repeated in order until none reports a change, at most
    /// `max_iterations` rounds.
    Fixpoint {
        passes: Vec<PassRef>,
        max_iterations: usize,
    },
}

/// A loaded, checked recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    pass: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    fixpoint: Option<Vec<RawPass>>,
    max_iterations: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPass {
    pass: String,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
}

fn param_value(pass: &str, key: &str, v: &toml::Value) -> Result<ParamValue> {
    Ok(match v {
        toml::Value::Boolean(b) => ParamValue::Bool(*b),
        toml::Value::Integer(i) => ParamValue::Int(*i),
        toml::Value::Float(x) => ParamValue::Float(*x),
        toml::Value::String(s) => ParamValue::Str(s.clone()),
        other => {
            return Err(Error::Recipe(format!(
                "pass '{pass}': parameter '{key}' must be a bool, number or string, got {}",
                other.type_str()
            )))
        }
    })
}

fn pass_ref(name: &str, params: &BTreeMap<String, toml::Value>) -> Result<PassRef> {
    let info = lookup(name)?;
    let given = params
        .iter()
        .map(|(k, v)| Ok((k.clone(), param_value(name, k, v)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(PassRef {
        info,
        params: info.params(&given)?,
    })
}

/// The recipes in `passes/`, built into the binary so `--pipeline O2`
/// works wherever mlc is installed.
pub const BUILTIN: &[(&str, &str)] = &[
    ("O0", include_str!("../../passes/O0.toml")),
    ("O1", include_str!("../../passes/O1.toml")),
    ("O2", include_str!("../../passes/O2.toml")),
];

impl Recipe {
    /// A built-in recipe by name (`O0`, `O1`, `O2`), or else a recipe file.
    pub fn resolve(spec: &str) -> Result<Recipe> {
        // `o2` names O2 too, unless a file of that name is there.
        let builtin = BUILTIN.iter().find(|(n, _)| *n == spec).or_else(|| {
            BUILTIN
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(spec))
                .filter(|_| !Path::new(spec).exists())
        });
        match builtin {
            Some((name, text)) => Recipe::parse(text, name),
            None => {
                let path = Path::new(spec);
                if !path.exists() && !spec.contains(['/', '.']) {
                    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                    return Err(Error::Recipe(format!(
                        "no built-in pipeline '{spec}' (built-in: {}) and no such file",
                        names.join(", ")
                    )));
                }
                Recipe::load(path)
            }
        }
    }

    /// Parses and checks a recipe; `fallback_name` names it when the file
    /// does not.
    pub fn parse(text: &str, fallback_name: &str) -> Result<Recipe> {
        let raw: RawRecipe =
            toml::from_str(text).map_err(|e| Error::Recipe(e.message().to_string()))?;
        let mut steps = Vec::with_capacity(raw.step.len());
        for (i, s) in raw.step.iter().enumerate() {
            let step = match (&s.pass, &s.fixpoint) {
                (Some(name), None) => {
                    if s.max_iterations.is_some() {
                        return Err(Error::Recipe(format!(
                            "step {}: max_iterations only applies to a fixpoint group",
                            i + 1
                        )));
                    }
                    Step::Pass(pass_ref(name, &s.params)?)
                }
                (None, Some(group)) => {
                    if !s.params.is_empty() {
                        return Err(Error::Recipe(format!(
                            "step {}: a fixpoint group takes params per pass, inside the group",
                            i + 1
                        )));
                    }
                    if group.is_empty() {
                        return Err(Error::Recipe(format!(
                            "step {}: empty fixpoint group",
                            i + 1
                        )));
                    }
                    let max_iterations = s.max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS);
                    if max_iterations == 0 {
                        return Err(Error::Recipe(format!(
                            "step {}: max_iterations must be at least 1",
                            i + 1
                        )));
                    }
                    let passes = group
                        .iter()
                        .map(|p| pass_ref(&p.pass, &p.params))
                        .collect::<Result<_>>()?;
                    Step::Fixpoint {
                        passes,
                        max_iterations,
                    }
                }
                _ => {
                    return Err(Error::Recipe(format!(
                        "step {}: give either `pass = \"...\"` or `fixpoint = [...]`",
                        i + 1
                    )))
                }
            };
            steps.push(step);
        }
        Ok(Recipe {
            name: raw.name.unwrap_or_else(|| fallback_name.to_string()),
            description: raw.description,
            steps,
        })
    }

    /// Loads a recipe file; errors name the file.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Recipe::parse(&text, &stem).map_err(|e| match e {
            Error::Recipe(m) => Error::Recipe(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The recipe as the canonical one-line text stored in bundle metadata.
    pub fn summary(&self) -> String {
        let pass = |p: &PassRef| {
            if p.params.0.is_empty() {
                p.name().to_string()
            } else {
                let kv: Vec<String> = p.params.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}({})", p.name(), kv.join(","))
            }
        };
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Pass(p) => pass(p),
                Step::Fixpoint {
                    passes,
                    max_iterations,
                } => {
                    let inner: Vec<String> = passes.iter().map(pass).collect();
                    format!("fixpoint<{max_iterations}>[{}]", inner.join(", "))
                }
            })
            .collect();
        steps.join(" -> ")
    }
}

//! Runs a recipe over a graph: each pass, then the verifier, and with
//! `--verify` the reference interpreter on sample inputs, stopping at the
//! first pass whose outputs drift from the original model's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::recipe::{PassRef, Recipe, Step};
use super::{Changed, PassCx};
use crate::ir::{verify, Graph, Tensor};
use crate::{interp, Error, Result};

/// What one pass run did, for `mlc compile -v` and the bundle metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassLogEntry {
    pub pass: String,
    /// Round of its fixpoint group (1-based), when it ran in one.
    pub iteration: Option<usize>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub changed: bool,
    /// How often each rewrite fired.
    pub rewrites: BTreeMap<String, usize>,
}

/// Sample inputs and the original model's outputs on them, for `--verify`.
#[derive(Debug, Clone)]
pub struct DriftCheck {
    pub inputs: Vec<Tensor>,
    pub expected: Vec<Tensor>,
    pub rtol: f64,
    pub atol: f64,
}

impl DriftCheck {
    /// Runs the original graph once to record the outputs to compare with.
    pub fn new(g: &Graph, inputs: Vec<Tensor>, rtol: f64, atol: f64) -> Result<DriftCheck> {
        let expected = interp::run(g, inputs.clone())?;
        Ok(DriftCheck {
            inputs,
            expected,
            rtol,
            atol,
        })
    }

    /// `Some(description)` of the first output outside tolerance.
    fn drift(&self, g: &Graph) -> Result<Option<String>> {
        let got = interp::run(g, self.inputs.clone())?;
        for (i, (a, b)) in got.iter().zip(&self.expected).enumerate() {
            let name = g
                .outputs
                .get(i)
                .map(|&o| g.value(o).name.clone())
                .unwrap_or_default();
            if a.shape() != b.shape() || a.dtype() != b.dtype() {
                return Ok(Some(format!(
                    "output '{name}' is {}{:?}, was {}{:?}",
                    a.dtype(),
                    a.shape(),
                    b.dtype(),
                    b.shape()
                )));
            }
            let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
            let mut worst: Option<(usize, f64)> = None;
            for (j, (p, q)) in x.iter().zip(&y).enumerate() {
                let same = p == q || (p.is_nan() && q.is_nan());
                let err = (p - q).abs();
                // NaN errors count as outside the tolerance.
                let within = err <= self.atol + self.rtol * q.abs();
                if !same && !within && worst.is_none_or(|(_, w)| err > w || err.is_nan()) {
                    worst = Some((j, err));
                }
            }
            if let Some((j, err)) = worst {
                return Ok(Some(format!(
                    "output '{name}' differs at element {j}: {} vs {} (|diff| {err:.3e}, rtol {}, atol {})",
                    x[j], y[j], self.rtol, self.atol
                )));
            }
        }
        Ok(None)
    }
}

/// Options of a pipeline run.
#[derive(Debug, Default)]
pub struct RunOptions {
    pub drift: Option<DriftCheck>,
}

fn run_one(
    g: &mut Graph,
    p: &PassRef,
    iteration: Option<usize>,
    opts: &RunOptions,
) -> Result<PassLogEntry> {
    let mut pass = (p.info.make)(&p.params);
    let mut cx = PassCx::default();
    let nodes_before = g.node_count();
    let wrap = |e: Error| {
        let internal = !e.is_user_error();
        Error::Pass {
            pass: p.name().to_string(),
            message: e.to_string(),
            internal,
        }
    };
    let changed = pass.run(g, &mut cx).map_err(wrap)?;
    verify::verify(g).map_err(|e| Error::Pass {
        pass: p.name().to_string(),
        message: format!("left an invalid graph: {e}"),
        internal: true,
    })?;
    if let Some(check) = &opts.drift {
        if changed == Changed::Yes {
            if let Some(msg) = check.drift(g).map_err(wrap)? {
                return Err(Error::Drift {
                    pass: p.name().to_string(),
                    message: msg,
                });
            }
        }
    }
    Ok(PassLogEntry {
        pass: p.name().to_string(),
        iteration,
        nodes_before,
        nodes_after: g.node_count(),
        changed: changed == Changed::Yes,
        rewrites: cx.rewrites,
    })
}

/// Runs every step of `recipe` on `g` and returns the pass log.
pub fn run(g: &mut Graph, recipe: &Recipe, opts: &RunOptions) -> Result<Vec<PassLogEntry>> {
    let mut log = Vec::new();
    for step in &recipe.steps {
        match step {
            Step::Pass(p) => log.push(run_one(g, p, None, opts)?),
            Step::Fixpoint {
                passes,
                max_iterations,
            } => {
                for round in 1..=*max_iterations {
                    let mut any = false;
                    for p in passes {
                        let entry = run_one(g, p, Some(round), opts)?;
                        any |= entry.changed;
                        log.push(entry);
                    }
                    if !any {
                        break;
                    }
                }
            }
        }
    }
    Ok(log)
}

/// The pass log as aligned text lines (`mlc compile -v`).
pub fn render_log(log: &[PassLogEntry]) -> String {
    let mut out = String::new();
    for e in log {
        let it = e.iteration.map(|i| format!(" #{i}")).unwrap_or_default();
        let rw: Vec<String> = e.rewrites.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        out.push_str(&format!(
            "{:<28} nodes {:>5} -> {:<5} {}\n",
            format!("{}{it}", e.pass),
            e.nodes_before,
            e.nodes_after,
            if rw.is_empty() {
                String::new()
            } else {
                rw.join(", ")
            }
        ));
    }
    out
}

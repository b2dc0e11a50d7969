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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{text, TensorData};
    use crate::transform::recipe::PassRef;
    use crate::transform::{Params, Pass, PassInfo};
    use std::sync::Arc;

    const MODEL: &str = "graph \"g\" opset 17
  input  %0 x: f32[2]
  const  %1 w: f32[2] = [1, 2]
  %2 y: f32[2] = Mul(%0, %1)
  output %2 y
";

    /// Doubles every f32 constant: changes the numbers, keeps the IR valid.
    struct Doubler;
    impl Pass for Doubler {
        fn name(&self) -> &'static str {
            "doubler"
        }
        fn run(&mut self, g: &mut Graph, _cx: &mut PassCx) -> Result<Changed> {
            for t in g.consts.values_mut() {
                let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x * 2.0).collect();
                *t = Arc::new(Tensor::new(t.shape().to_vec(), TensorData::F32(v)).unwrap());
            }
            Ok(Changed::Yes)
        }
    }

    /// Removes every node: leaves the graph output undefined.
    struct Breaker;
    impl Pass for Breaker {
        fn name(&self) -> &'static str {
            "breaker"
        }
        fn run(&mut self, g: &mut Graph, _cx: &mut PassCx) -> Result<Changed> {
            let ids: Vec<_> = g.nodes().map(|(id, _)| id).collect();
            for id in ids {
                g.remove_node(id);
            }
            Ok(Changed::Yes)
        }
    }

    static DOUBLER: PassInfo = PassInfo {
        name: "doubler",
        summary: "test",
        params: &[],
        make: |_| Box::new(Doubler),
    };
    static BREAKER: PassInfo = PassInfo {
        name: "breaker",
        summary: "test",
        params: &[],
        make: |_| Box::new(Breaker),
    };

    fn recipe(passes: &[&'static PassInfo]) -> Recipe {
        let steps = passes
            .iter()
            .map(|&info| {
                Step::Pass(PassRef {
                    info,
                    params: Params::default(),
                })
            })
            .collect();
        Recipe {
            name: "t".into(),
            description: String::new(),
            steps,
        }
    }

    #[test]
    fn drift_check_names_the_pass_that_changed_the_outputs() {
        let mut g = text::parse(MODEL).unwrap();
        let x = Tensor::from_f32(vec![2], vec![3.0, 4.0]).unwrap();
        let drift = DriftCheck::new(&g, vec![x], 1e-4, 1e-5).unwrap();
        let dce = crate::transform::lookup("dce").unwrap();
        let r = recipe(&[dce, &DOUBLER]);
        let err = run(&mut g, &r, &RunOptions { drift: Some(drift) }).unwrap_err();
        match &err {
            Error::Drift { pass, message } => {
                assert_eq!(pass, "doubler");
                assert!(message.contains("output 'y'"), "{message}");
            }
            other => panic!("expected a drift error, got {other}"),
        }
        assert!(!err.is_user_error());
        // Without the check the same pipeline runs through.
        let mut g = text::parse(MODEL).unwrap();
        assert_eq!(run(&mut g, &r, &RunOptions::default()).unwrap().len(), 2);
    }

    #[test]
    fn a_pass_leaving_invalid_ir_is_named() {
        let mut g = text::parse(MODEL).unwrap();
        let err = run(&mut g, &recipe(&[&BREAKER]), &RunOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("pass 'breaker': left an invalid graph"),
            "{msg}"
        );
        assert!(!err.is_user_error());
    }

    #[test]
    fn fixpoint_groups_stop_when_nothing_changes_or_at_the_cap() {
        let mut g = text::parse(MODEL).unwrap();
        let dce = crate::transform::lookup("dce").unwrap();
        let quiet = Recipe {
            name: "t".into(),
            description: String::new(),
            steps: vec![Step::Fixpoint {
                passes: vec![PassRef {
                    info: dce,
                    params: Params::default(),
                }],
                max_iterations: 5,
            }],
        };
        assert_eq!(
            run(&mut g, &quiet, &RunOptions::default()).unwrap().len(),
            1
        );
        let busy = Recipe {
            name: "t".into(),
            description: String::new(),
            steps: vec![Step::Fixpoint {
                passes: vec![PassRef {
                    info: &DOUBLER,
                    params: Params::default(),
                }],
                max_iterations: 3,
            }],
        };
        let log = run(&mut g, &busy, &RunOptions::default()).unwrap();
        assert_eq!(
            log.iter().map(|e| e.iteration).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
    }
}

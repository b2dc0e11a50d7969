//! [`Session`]: a model on the fast CPU runtime, run many times.

use std::collections::HashMap;

use serde::Serialize;

use crate::inputs::Binding;
use crate::ir::{Graph, Tensor};
use crate::kernels::cpu::CpuCtx;
use crate::runtime::{Caches, Choices, PackCache, Plan};
use crate::transform::specialize::specialize;
use crate::tune::database_choices;
use crate::tune::db::Db;
use crate::{Error, Result};

/// How a [`Session`] runs.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Threads (0: the machine's cores).
    pub threads: usize,
    /// Ignore kernel choices (the model's own and the tuning database's):
    /// every node runs its default.
    pub untuned: bool,
    /// Run a batch as one, even where the model computes each item on
    /// its own (by default such a batch runs item by item:
    /// `src/runtime/items.rs`).
    pub whole_batch: bool,
}

/// A model on the fast CPU runtime: one plan per set of input shapes, built
/// on the first run with those shapes and reused (packed weights are shared
/// between the plans), one thread pool.
pub struct Session {
    graph: Graph,
    cx: CpuCtx,
    packs: PackCache,
    plans: HashMap<Vec<Vec<usize>>, Plan>,
    /// The model's own kernel choices (a tuned bundle)...
    choices: Choices,
    /// ... else the tuning database's records for this machine.
    db: Option<Db>,
    whole_batch: bool,
}

impl Session {
    /// A session planning with `choices`; with none (and `opts.untuned`
    /// unset) it takes the tuning database's choices for this machine
    /// (the default file, when it exists).
    pub(super) fn new(graph: Graph, choices: Choices, opts: &SessionOptions) -> Result<Session> {
        let db = match choices.is_empty() && !opts.untuned {
            true => crate::tune::default_database()?,
            false => None,
        };
        Ok(Session {
            graph,
            cx: CpuCtx::new(opts.threads)?,
            packs: PackCache::default(),
            plans: HashMap::new(),
            choices,
            db,
            whole_batch: opts.whole_batch,
        })
    }

    /// The kernel choices for the specialized graph `spec`: the model's
    /// own, else the database's records of its workloads on this machine
    /// at this thread count.
    fn choices_for(&self, spec: &Graph) -> Choices {
        match self.db.as_ref().filter(|_| self.choices.is_empty()) {
            Some(db) => database_choices(db, spec, self.cx.threads),
            None => self.choices.clone(),
        }
    }

    /// The graph the session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Threads the runtime uses.
    pub fn threads(&self) -> usize {
        self.cx.threads
    }

    /// Runs the model on named inputs (every input given) and returns the
    /// named outputs.
    pub fn run(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        self.run_bound(inputs, &Binding::default())
    }

    /// Runs the model on named inputs completed as `binding` says (sizes of
    /// symbolic dims, seeded random data for inputs not given).
    pub fn run_bound(
        &mut self,
        inputs: Vec<(String, Tensor)>,
        binding: &Binding,
    ) -> Result<Vec<(String, Tensor)>> {
        let feed = self.bind(inputs, binding)?;
        let out = self.run_positional(&feed)?;
        Ok(self.name_outputs(out))
    }

    /// Binds named inputs to the model's inputs, in order (see
    /// [`crate::inputs::bind`]).
    pub fn bind(&self, inputs: Vec<(String, Tensor)>, binding: &Binding) -> Result<Vec<Tensor>> {
        crate::inputs::bind(&self.graph, inputs, binding)
    }

    /// Runs the model on inputs in the order of the graph's inputs.
    pub fn run_positional(&mut self, feed: &[Tensor]) -> Result<Vec<Tensor>> {
        self.plan(feed)?.run(feed)
    }

    /// Runs the reference interpreter (the oracle) on the same graph.
    pub fn run_reference(&self, feed: Vec<Tensor>) -> Result<Vec<Tensor>> {
        crate::interp::run(&self.graph, feed)
    }

    /// Names outputs in the order of the graph's outputs.
    pub fn name_outputs(&self, out: Vec<Tensor>) -> Vec<(String, Tensor)> {
        self.graph
            .outputs
            .iter()
            .map(|&o| self.graph.value(o).name.clone())
            .zip(out)
            .collect()
    }

    /// The plan for the shapes of `feed`, built on first use.
    pub fn plan(&mut self, feed: &[Tensor]) -> Result<&mut Plan> {
        crate::ir::bind::check_inputs(&self.graph, feed.iter().map(|t| (t.dtype(), t.shape())))?;
        let shapes: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
        if !self.plans.contains_key(&shapes) {
            let spec = specialize(&self.graph, &shapes)?;
            let choices = self.choices_for(&spec);
            let plan = match self.whole_batch {
                true => Plan::with_choices(spec, self.cx.clone(), &self.packs, &choices)?,
                false => {
                    let caches = host_caches(self.cx.threads);
                    Plan::by_items(spec, self.cx.clone(), &self.packs, &choices, &caches)?
                }
            };
            self.plans.insert(shapes.clone(), plan);
        }
        self.plans
            .get_mut(&shapes)
            .ok_or_else(|| Error::Internal("a plan just built is missing".into()))
    }
}

/// This machine's caches as a batch split judges them ([`Caches`]), for
/// `threads` threads: half the last level is counted on (it is shared
/// with the other cores, and on a virtual machine with other tenants).
/// 1 MiB of level 2 where the sizes are unknown.
fn host_caches(threads: usize) -> Caches {
    static SIZES: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let (l2, l3) = *SIZES.get_or_init(|| {
        let info = crate::probe::cache_info();
        let size = |level: u32| {
            info.iter()
                .find(|c| c.level == level && c.kind != crate::probe::CacheKind::Instruction)
                .map_or(0, |c| usize::try_from(c.bytes).unwrap_or(usize::MAX))
        };
        (size(2), size(3))
    });
    Caches {
        l2: if l2 == 0 { 1 << 20 } else { l2 },
        l3: l3 / 2,
        threads: threads.max(1),
    }
}

/// What `mlc run` reports: which engine ran and a summary of each output.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub model: String,
    /// `runtime` or `reference`.
    pub engine: String,
    pub outputs: Vec<OutputSummary>,
    pub output_file: Option<String>,
}

impl RunReport {
    /// One line per output, then the file written.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for o in &self.outputs {
            let integer = o.dtype.starts_with('i') || o.dtype.starts_with('u') || o.dtype == "bool";
            let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| number(x, integer));
            let head: Vec<String> = o.head.iter().map(|&x| number(x, integer)).collect();
            s += &format!(
                "{}: {}{:?}  min {}  max {}  mean {}  [{}{}]\n",
                o.name,
                o.dtype,
                o.shape,
                fmt(o.min),
                fmt(o.max),
                fmt(o.mean),
                head.join(", "),
                if o.shape.iter().product::<usize>() > head.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        if let Some(f) = &self.output_file {
            s += &format!("wrote {f}\n");
        }
        s
    }
}

/// A value as `mlc run` prints it: integers as integers, floats with six
/// decimals from 0.001 to a million, in scientific notation outside that
/// range (1e-7 is not "0.000000").
pub fn number(x: f64, integer: bool) -> String {
    if integer && x.is_finite() {
        return format!("{}", x as i64);
    }
    let a = x.abs();
    if x == 0.0 || !x.is_finite() || (1e-3..1e6).contains(&a) {
        format!("{x:.6}")
    } else {
        format!("{x:.4e}")
    }
}

/// Statistics of one output over its finite elements.
#[derive(Clone, Debug, Serialize)]
pub struct OutputSummary {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// The first few values, for a quick look.
    pub head: Vec<f64>,
}

impl OutputSummary {
    /// Statistics over the finite elements, read a block at a time (an
    /// output of gigabytes is not copied whole to f64 for a summary).
    pub fn new(name: &str, t: &Tensor) -> OutputSummary {
        const BLOCK: usize = 1 << 16;
        let (mut min, mut max, mut sum, mut finite) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0);
        let mut head = Vec::new();
        for start in (0..t.numel()).step_by(BLOCK) {
            let idx: Vec<usize> = (start..(start + BLOCK).min(t.numel())).collect();
            let block = Tensor::new(vec![idx.len()], t.data().gather(&idx))
                .map(|b| b.to_f64_vec())
                .unwrap_or_default();
            if head.is_empty() {
                head = block.iter().take(6).copied().collect();
            }
            for x in block.into_iter().filter(|x| x.is_finite()) {
                min = min.min(x);
                max = max.max(x);
                sum += x;
                finite += 1;
            }
        }
        let (min, max, mean) = match (t.numel(), finite) {
            (0, _) => (None, None, None),
            (_, 0) => (None, None, Some(0.0)),
            (_, n) => (Some(min), Some(max), Some(sum / n as f64)),
        };
        OutputSummary {
            name: name.to_string(),
            dtype: t.dtype().to_string(),
            shape: t.shape().to_vec(),
            min,
            max,
            mean,
            head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn small_and_large_values_print_in_scientific_notation() {
        assert_eq!(number(0.5, false), "0.500000");
        assert_eq!(number(-1234.5, false), "-1234.500000");
        assert_eq!(number(0.0, false), "0.000000");
        assert_eq!(number(1.234567e-7, false), "1.2346e-7");
        assert_eq!(number(-2.5e-4, false), "-2.5000e-4");
        assert_eq!(number(3.0e9, false), "3.0000e9");
        assert_eq!(number(f64::NAN, false), "NaN");
        assert_eq!(number(f64::NEG_INFINITY, false), "-inf");
        assert_eq!(number(42.0, true), "42");
        assert_eq!(number(-7.0, true), "-7");
    }
}

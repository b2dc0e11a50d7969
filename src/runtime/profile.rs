//! Per-node timing of plan runs, aggregated by op type.
//!
//! When profiling is on, the executor reads the clock around every node and
//! adds the time to that node's total; [`Profile`] sums the nodes of each op
//! type and reports time per run, share of the total and, for the
//! matrix-product and convolution ops, the achieved GFLOP/s computed from
//! the shapes (`2·M·N·K` for a product, `2·N·Cout·Hout·Wout·(Cin/group)·kh·kw`
//! for a convolution, generalized to any rank).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::ir::Op;
use crate::kernels::cpu::pool::PoolTime;

/// Floating-point operations of one run of `op`, from its input and output
/// shapes; `None` for ops whose work is not counted.
pub fn flops(op: &Op, in_shapes: &[Option<&[usize]>], out_shapes: &[&[usize]]) -> Option<u64> {
    let out: u64 = out_shapes.first()?.iter().map(|&d| d as u64).product();
    let a = in_shapes.first().copied().flatten()?;
    let k = match op {
        Op::MatMul => *a.last()?,
        Op::FusedMatMul { trans_a, .. } => {
            if *trans_a && a.len() >= 2 {
                a[a.len() - 2]
            } else {
                *a.last()?
            }
        }
        Op::Gemm { trans_a, .. } => {
            if a.len() != 2 {
                return None;
            }
            if *trans_a {
                a[0]
            } else {
                a[1]
            }
        }
        Op::QMatMul { .. } => *a.last()?,
        Op::Conv(_) | Op::FusedConv { .. } | Op::QConv { .. } => {
            // W is [Cout, Cin/group, k...]: each output element takes
            // Cin/group · prod(k) multiply-adds.
            let w = in_shapes.get(1).copied().flatten()?;
            w.iter().skip(1).product()
        }
        _ => return None,
    };
    Some(2 * out * k as u64)
}

/// Accumulated timings of a plan's nodes.
#[derive(Clone, Debug, Default)]
pub struct Profiler {
    pub(crate) runs: u64,
    /// Per schedule step: total time and how often the reference kernels ran it.
    pub(crate) time: Vec<Duration>,
    pub(crate) reference_runs: Vec<u64>,
    /// The thread pool's jobs per step, when the plan runs on a pool of
    /// `threads` (`threads` is 1 without one).
    pub(crate) pool: Vec<PoolTime>,
    pub(crate) threads: usize,
}

impl Profiler {
    pub(crate) fn new(steps: usize, threads: usize) -> Profiler {
        Profiler {
            runs: 0,
            time: vec![Duration::ZERO; steps],
            reference_runs: vec![0; steps],
            pool: vec![PoolTime::default(); steps],
            threads,
        }
    }

    /// How a step's thread time (its wall time × the threads) went idle:
    /// `(serial, uneven)` shares, None on one thread. `serial`: the
    /// other threads' time while the step ran outside the pool's jobs
    /// (single-threaded work, or a kernel that chose one thread);
    /// `uneven`: the threads' time inside jobs that no task used (waiting
    /// for a worker to start, for a longer share to end, for the join).
    fn idle(&self, step: usize) -> Option<(f64, f64)> {
        let t = self.threads;
        let wall = self.time.get(step)?.as_secs_f64();
        let pool = self.pool.get(step)?;
        if t < 2 || wall <= 0.0 {
            return None;
        }
        // Clock readings around a step and inside its jobs differ by a
        // little: keep the shares in range.
        let span = pool.span.as_secs_f64().min(wall);
        let busy = pool.busy.as_secs_f64().min(span * t as f64);
        let capacity = wall * t as f64;
        let serial = (wall - span) * (t - 1) as f64 / capacity;
        let uneven = (span * t as f64 - busy) / capacity;
        Some((serial, uneven))
    }
}

/// One op type's line of a profile.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OpProfile {
    pub op: String,
    /// Nodes of this type in the plan.
    pub nodes: usize,
    /// Mean time per run of all of them, in milliseconds.
    pub ms_per_run: f64,
    /// Fraction of the total node time (0..1).
    pub share: f64,
    /// Achieved GFLOP/s (products and convolutions only).
    pub gflops: Option<f64>,
    /// Floating-point operations per run (products and convolutions only).
    pub flops_per_run: Option<u64>,
    /// Node runs that went to the reference kernels (no fast path).
    pub reference_runs: u64,
    /// On several threads, the share of these nodes' thread time (wall
    /// time × threads) that threads sat idle while the caller ran alone
    /// outside the pool's jobs ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_share: Option<f64>,
    /// ... and inside jobs, waiting for work or for the other threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uneven_share: Option<f64>,
}

/// One node's line of a profile.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeProfile {
    pub node: String,
    pub op: String,
    pub ms_per_run: f64,
    pub share: f64,
    pub gflops: Option<f64>,
    /// As [`OpProfile::serial_share`] and [`OpProfile::uneven_share`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uneven_share: Option<f64>,
}

/// A profile: per-op-type lines and the most expensive nodes, most
/// expensive first.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Profile {
    pub runs: u64,
    /// Sum of node times per run, in milliseconds.
    pub total_ms_per_run: f64,
    pub ops: Vec<OpProfile>,
    /// The [`Profile::TOP_NODES`] nodes that take the most time.
    pub top_nodes: Vec<NodeProfile>,
    /// Every node, in execution order (for comparing two profiles node by
    /// node, such as 1 against 2 threads).
    pub nodes: Vec<NodeProfile>,
}

impl Profile {
    /// How many nodes [`Profile::top_nodes`] lists.
    pub const TOP_NODES: usize = 10;

    /// Aggregates per-step timings: `names[i]`, `ops[i]` and `flops[i]`
    /// describe step i.
    pub(crate) fn build(
        p: &Profiler,
        names: &[&str],
        ops: &[&'static str],
        flops: &[Option<u64>],
    ) -> Profile {
        struct Acc {
            nodes: usize,
            time: Duration,
            flops: Option<u64>,
            reference_runs: u64,
            /// Idle shares weighted by the nodes' times (seconds).
            idle: Option<(f64, f64)>,
        }
        let mut by_op: BTreeMap<&'static str, Acc> = BTreeMap::new();
        for (i, &op) in ops.iter().enumerate() {
            let a = by_op.entry(op).or_insert(Acc {
                nodes: 0,
                time: Duration::ZERO,
                flops: None,
                reference_runs: 0,
                idle: None,
            });
            a.nodes += 1;
            let t = p.time.get(i).copied().unwrap_or_default();
            a.time += t;
            if let Some((serial, uneven)) = p.idle(i) {
                let (s0, u0) = a.idle.unwrap_or_default();
                let w = t.as_secs_f64();
                a.idle = Some((s0 + serial * w, u0 + uneven * w));
            }
            a.reference_runs += p.reference_runs.get(i).copied().unwrap_or(0);
            if let Some(f) = flops.get(i).copied().flatten() {
                a.flops = Some(a.flops.unwrap_or(0) + f);
            }
        }
        let runs = p.runs.max(1) as f64;
        let total: f64 = by_op.values().map(|a| a.time.as_secs_f64()).sum();
        let mut lines: Vec<OpProfile> = by_op
            .into_iter()
            .map(|(op, a)| {
                let secs = a.time.as_secs_f64() / runs;
                OpProfile {
                    op: op.to_string(),
                    nodes: a.nodes,
                    ms_per_run: secs * 1e3,
                    share: if total > 0.0 {
                        a.time.as_secs_f64() / total
                    } else {
                        0.0
                    },
                    gflops: a
                        .flops
                        .filter(|_| secs > 0.0 && p.runs > 0)
                        .map(|f| f as f64 / secs / 1e9),
                    flops_per_run: a.flops,
                    reference_runs: a.reference_runs,
                    serial_share: a.idle.map(|(s, _)| s / a.time.as_secs_f64()),
                    uneven_share: a.idle.map(|(_, u)| u / a.time.as_secs_f64()),
                }
            })
            .collect();
        lines.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run).then(a.op.cmp(&b.op)));
        let mut nodes: Vec<NodeProfile> = ops
            .iter()
            .enumerate()
            .map(|(i, &op)| {
                let t = p.time.get(i).copied().unwrap_or_default().as_secs_f64();
                let secs = t / runs;
                let idle = p.idle(i);
                NodeProfile {
                    node: names.get(i).map_or(String::new(), |n| n.to_string()),
                    op: op.to_string(),
                    ms_per_run: secs * 1e3,
                    share: if total > 0.0 { t / total } else { 0.0 },
                    gflops: flops
                        .get(i)
                        .copied()
                        .flatten()
                        .filter(|_| secs > 0.0 && p.runs > 0)
                        .map(|f| f as f64 / secs / 1e9),
                    serial_share: idle.map(|(s, _)| s),
                    uneven_share: idle.map(|(_, u)| u),
                }
            })
            .collect();
        let in_order = nodes.clone();
        nodes.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
        nodes.truncate(Profile::TOP_NODES);
        Profile {
            runs: p.runs,
            total_ms_per_run: total / runs * 1e3,
            ops: lines,
            top_nodes: nodes,
            nodes: in_order,
        }
    }

    /// The profile as an aligned text table; on several threads with two
    /// more columns, the shares of the thread time spent idle ("serial":
    /// while the node ran outside the pool's jobs; "uneven": inside them).
    pub fn render(&self) -> String {
        let threaded = self.ops.iter().any(|l| l.serial_share.is_some());
        let idle = |serial: Option<f64>, uneven: Option<f64>| match (threaded, serial, uneven) {
            (false, ..) => String::new(),
            (true, Some(s), Some(u)) => format!(" {:>6.1}% {:>6.1}%", s * 100.0, u * 100.0),
            (true, ..) => format!(" {:>7} {:>7}", "-", "-"),
        };
        let idle_head = match threaded {
            true => format!(" {:>7} {:>7}", "serial", "uneven"),
            false => String::new(),
        };
        let mut s = format!(
            "{:<24} {:>6} {:>11} {:>7} {:>10} {:>10}{idle_head}\n",
            "op", "nodes", "ms/run", "share", "GFLOP/s", "reference"
        );
        for l in &self.ops {
            s.push_str(&format!(
                "{:<24} {:>6} {:>11.4} {:>6.1}% {:>10} {:>10}{}\n",
                l.op,
                l.nodes,
                l.ms_per_run,
                l.share * 100.0,
                l.gflops.map_or("-".to_string(), |g| format!("{g:.2}")),
                l.reference_runs,
                idle(l.serial_share, l.uneven_share)
            ));
        }
        s.push_str(&format!(
            "{:<24} {:>6} {:>11.4}   ({} runs)\n",
            "total",
            self.ops.iter().map(|l| l.nodes).sum::<usize>(),
            self.total_ms_per_run,
            self.runs
        ));
        if !self.top_nodes.is_empty() {
            s.push_str(&format!(
                "\n{:<40} {:<16} {:>9} {:>7} {:>10}{idle_head}\n",
                "slowest nodes", "op", "ms/run", "share", "GFLOP/s"
            ));
            for n in &self.top_nodes {
                s.push_str(&format!(
                    "{:<40} {:<16} {:>9.4} {:>6.1}% {:>10}{}\n",
                    n.node,
                    n.op,
                    n.ms_per_run,
                    n.share * 100.0,
                    n.gflops.map_or("-".to_string(), |g| format!("{g:.2}")),
                    idle(n.serial_share, n.uneven_share)
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AutoPad, ConvAttrs};

    #[test]
    fn idle_thread_time_is_split_into_serial_and_uneven() {
        let ms = Duration::from_millis;
        let mut p = Profiler::new(2, 2);
        p.runs = 1;
        // Step 0: 10 ms, 6 of them in jobs whose tasks ran 10 ms over
        // both threads: 4 ms alone (4 of 20 thread-ms idle), 2 idle in
        // the jobs. Step 1: no job at all.
        p.time = vec![ms(10), ms(5)];
        p.pool[0] = PoolTime {
            span: ms(6),
            busy: ms(10),
        };
        let (serial, uneven) = p.idle(0).expect("two threads");
        assert!((serial - 0.2).abs() < 1e-9 && (uneven - 0.1).abs() < 1e-9);
        assert_eq!(p.idle(1), Some((0.5, 0.0)));
        let prof = Profile::build(&p, &["a", "b"], &["Conv", "Conv"], &[None, None]);
        let conv = &prof.ops[0];
        // Weighted by time: (0.2 · 10 + 0.5 · 5) / 15 and 0.1 · 10 / 15.
        assert!((conv.serial_share.unwrap() - 0.3).abs() < 1e-9);
        assert!((conv.uneven_share.unwrap() - 1.0 / 15.0).abs() < 1e-9);
        assert_eq!(prof.nodes[1].serial_share, Some(0.5));
        assert!(prof.render().contains("uneven"));
        // One thread: nothing to tell apart, no columns.
        let one = Profiler {
            threads: 1,
            ..p.clone()
        };
        assert_eq!(one.idle(0), None);
        let prof = Profile::build(&one, &["a", "b"], &["Conv", "Conv"], &[None, None]);
        assert!(prof.ops[0].serial_share.is_none() && !prof.render().contains("uneven"));
    }

    #[test]
    fn flops_of_products_and_convs() {
        let mm = flops(
            &Op::MatMul,
            &[Some(&[2, 8, 16]), Some(&[16, 4])],
            &[&[2, 8, 4]],
        );
        assert_eq!(mm, Some(2 * 2 * 8 * 4 * 16));
        let gemm = flops(
            &Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: true,
                trans_b: false,
            },
            &[Some(&[16, 8]), Some(&[16, 4]), None],
            &[&[8, 4]],
        );
        assert_eq!(gemm, Some(2 * 8 * 4 * 16));
        let fmm = flops(
            &Op::FusedMatMul {
                trans_a: true,
                trans_b: false,
                alpha: 1.0,
                act: None,
            },
            &[Some(&[16, 8]), Some(&[16, 4])],
            &[&[8, 4]],
        );
        assert_eq!(fmm, Some(2 * 8 * 4 * 16));
        let conv = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            auto_pad: AutoPad::NotSet,
            group: 2,
        };
        // N=2, Cin=4, group 2, Cout=6, 5x5 out: 2·2·6·5·5·(4/2)·3·3.
        let c = flops(
            &Op::Conv(conv),
            &[Some(&[2, 4, 5, 5]), Some(&[6, 2, 3, 3])],
            &[&[2, 6, 5, 5]],
        );
        assert_eq!(c, Some(2 * 2 * 6 * 5 * 5 * 2 * 9));
        assert_eq!(flops(&Op::Identity, &[Some(&[3])], &[&[3]]), None);
    }

    #[test]
    fn aggregates_by_op() {
        let mut p = Profiler::new(3, 1);
        p.runs = 2;
        p.time = vec![
            Duration::from_millis(6),
            Duration::from_millis(2),
            Duration::from_millis(2),
        ];
        p.reference_runs = vec![0, 2, 0];
        let prof = Profile::build(
            &p,
            &["mm0", "add", "mm1"],
            &["MatMul", "Add", "MatMul"],
            &[Some(1000), None, Some(1000)],
        );
        assert_eq!(prof.runs, 2);
        assert!((prof.total_ms_per_run - 5.0).abs() < 1e-9);
        assert_eq!(prof.ops[0].op, "MatMul");
        assert_eq!(prof.ops[0].nodes, 2);
        assert!((prof.ops[0].ms_per_run - 4.0).abs() < 1e-9);
        assert!((prof.ops[0].share - 0.8).abs() < 1e-9);
        // 2000 flops in 4 ms per run.
        assert!((prof.ops[0].gflops.unwrap() - 2000.0 / 0.004 / 1e9).abs() < 1e-12);
        assert_eq!(prof.ops[1].reference_runs, 2);
        assert_eq!(prof.ops[1].gflops, None);
        assert!(prof.render().contains("MatMul"));
        assert_eq!(prof.top_nodes[0].node, "mm0");
        assert!((prof.top_nodes[0].ms_per_run - 3.0).abs() < 1e-9);
        assert!((prof.top_nodes[0].gflops.unwrap() - 1000.0 / 0.003 / 1e9).abs() < 1e-12);
        assert_eq!(prof.top_nodes.len(), 3);
    }
}

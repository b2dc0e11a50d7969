//! The CPU runtime: runs a graph fast on f32 data with a precomputed plan.
//!
//! A [`Plan`] is built once per set of input shapes from the graph
//! specialized to those shapes ([`crate::transform::specialize`]: every
//! value has a concrete shape); nodes
//! are scheduled in topological order, and every f32 intermediate gets a
//! range of one arena, allocated once, with buffers reused as soon as their
//! values die ([`arena`]) and elementwise nodes writing over a dying input
//! ([`inplace`]). [`Plan::run`] then executes the schedule on the fast
//! kernels of [`crate::kernels::cpu`] over views of the arena, falling back
//! to the reference kernels for anything they do not cover, so every model
//! the interpreter runs also runs here, with the same results up to float
//! rounding. Optional per-node timing ([`profile`]) reports where the time
//! goes.

pub mod arena;
pub mod check;
mod executor;
pub mod inplace;
mod items;
mod packs;
pub mod plan;
pub mod profile;
mod quant;

pub use check::{compare, OutputCheck};
pub(crate) use items::Caches;
pub use packs::PackCache;
pub use plan::{build_counters, BuildCounters, Choices, ExecKind, Plan, PlanStats, StepInfo};
pub use profile::{NodeProfile, OpProfile, Profile};

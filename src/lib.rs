//! mlc: a model compression and compilation toolchain.
//!
//! Models are imported ([`formats`]) into mlc's own graph IR ([`ir`]) and run by
//! the reference interpreter ([`interp`]), the numerical oracle every later
//! pass and kernel is checked against.

pub mod api;
pub mod compress;
#[cfg(feature = "distill")]
pub mod distill;
pub mod error;
pub mod formats;
pub mod fsutil;
pub mod inputs;
pub mod inspect;
pub mod interp;
pub mod ir;
pub mod kernels;
pub mod limits;
pub mod measure;
pub mod probe;
pub mod provenance;
pub mod quant;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod target;
pub mod transform;
pub mod tune;

pub use error::{Error, Result};
pub use ir::{DType, Graph, Tensor};

/// The README's library example, run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

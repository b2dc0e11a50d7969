//! Artifacts mlc writes: the `.mlc` bundle and standard ONNX.

pub mod bundle;
pub mod onnx;

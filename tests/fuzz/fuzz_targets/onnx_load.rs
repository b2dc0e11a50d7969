//! The ONNX loader on arbitrary bytes: an error or a graph, never a panic,
//! and never more memory than a small budget.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mlc::limits::set_max_memory(256 << 20);
    // A graph that imports also runs through inference and the verifier.
    let _ = mlc::formats::onnx::load_bytes(data, None);
});

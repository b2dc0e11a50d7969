//! The `.mlc` bundle reader on arbitrary bytes (container, inflated graph
//! text, safetensors weights, metadata): an error or a graph, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mlc::limits::set_max_memory(256 << 20);
    let _ = mlc::formats::bundle::from_bytes(data, std::path::Path::new("fuzz.mlc"));
});

//! The `.npy` reader on arbitrary bytes, and the `.npz` reader on the same
//! bytes as an archive: an error or arrays, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mlc::limits::set_max_memory(256 << 20);
    let _ = mlc::formats::npy::read_npy_bytes(data, std::path::Path::new("fuzz.npy"));
    // The npz reader takes a file (it reads the zip directory from the end).
    let path = std::env::temp_dir().join(format!("mlc-fuzz-{}.npz", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = mlc::formats::npy::read_npz(&path);
    }
});

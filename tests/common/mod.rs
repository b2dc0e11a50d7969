//! Helpers shared by the integration tests: tolerant tensor comparison.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use mlc::Tensor;

/// The repository's test venv python (made by tests/python/setup_venv.sh),
/// or `None` after a note that `what` is skipped; with
/// `MLC_REQUIRE_PYTHON=1` (as CI runs) a missing venv fails the test.
pub fn venv_python(what: &str) -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    let msg = format!(
        "{} is missing: run tests/python/setup_venv.sh to create the test venv (numpy, onnx, onnxruntime)",
        py.display()
    );
    if std::env::var("MLC_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("MLC_REQUIRE_PYTHON=1: {msg}");
    }
    eprintln!("note: skipping {what}: {msg}");
    None
}

/// Whether `got` matches `want`: same dtype and shape; floating point (every
/// format: f16, bf16, float8, float4 decoded exactly to their values) within
/// `|got - want| <= atol + rtol * |want|` (NaN matches NaN, an infinity only
/// the same infinity, -0 equals 0); integers (4- and 2-bit included) and
/// bools exactly. The error names the first mismatching element and how many
/// differ.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {} but expected {}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?} but expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let float = got.dtype().is_float();
    if !float && got.data() == want.data() {
        return Ok(());
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let close = |a: f64, b: f64| {
        if float {
            if a == b || (a.is_nan() && b.is_nan()) {
                true
            } else if !a.is_finite() || !b.is_finite() {
                false
            } else {
                (a - b).abs() <= atol + rtol * b.abs()
            }
        } else {
            a == b
        }
    };
    let bad: Vec<usize> = (0..g.len()).filter(|&i| !close(g[i], w[i])).collect();
    if bad.is_empty() {
        if float {
            return Ok(());
        }
        // Only reachable for 64-bit integers that differ beyond f64 precision.
        return Err("integer values differ beyond f64 precision".into());
    }
    let i = bad[0];
    let max_abs = bad
        .iter()
        .map(|&i| (g[i] - w[i]).abs())
        .fold(
            0.0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    Err(format!(
        "{} of {} elements differ; first at flat index {i}: got {} expected {}{}",
        bad.len(),
        g.len(),
        g[i],
        w[i],
        if float {
            format!(" (max abs diff {max_abs:e}, rtol {rtol}, atol {atol})")
        } else {
            String::new()
        }
    ))
}

/// Short type description for messages, e.g. `f32[2, 3]`.
pub fn describe(t: &Tensor) -> String {
    format!("{}{:?}", t.dtype(), t.shape())
}

/// A fresh, empty directory `<tmp>/<prefix>-<pid>-<case>` for one test case,
/// removed when the case ends (kept, for a look, when it fails).
pub fn scratch(prefix: &str, case: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A test case's directory (see [`scratch`]).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The stdout of an `mlc` run that must have succeeded; a failure panics
/// with its stderr and stdout.
pub fn stdout_of_success(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mlc failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The raw stdout of an `mlc` run that must have succeeded (a file written
/// to `-`); a failure panics with its stderr.
pub fn stdout_bytes_of_success(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "mlc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

//! Filesystem helpers: atomic writes. Every file mlc writes goes to a fresh
//! temporary beside its target and is renamed over it only when complete, so
//! an interrupted run leaves either nothing or a whole file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh temporary file beside `path`.
pub fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
            )
        })?;
    remove_stale_temps(&dir, &base);
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{base}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
}

/// Renames the finished temporary file over `path`, or removes it on error.
pub fn finish_temp(path: &Path, tmp: &Path, result: io::Result<()>) -> Result<()> {
    let result = result.and_then(|()| std::fs::rename(tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes a file through `f` into a temporary beside `path`, then renames.
pub fn write_atomic(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    let (tmp, file) = create_temp(path)?;
    let result = (|| {
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    finish_temp(path, &tmp, result)
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Whether two paths name one file (same canonical path, or on Unix the
/// same file through another link). A path that does not exist yet is no
/// other file.
fn same_existing_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b || same_file(&a, &b),
        _ => false,
    }
}

/// Whether two paths, existing or not, name one file: the same file on
/// disk, or the same name in the same (canonical) folder.
fn same_target(a: &Path, b: &Path) -> bool {
    if same_existing_file(a, b) {
        return true;
    }
    let place = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some((std::fs::canonicalize(dir).ok()?, p.file_name()?.to_owned()))
    };
    matches!((place(a), place(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses a command whose outputs would overwrite one of its inputs (or one
/// another): every file a command writes is checked against every file it
/// reads, before anything is written.
pub fn ensure_outputs_apart(outputs: &[&Path], inputs: &[&Path]) -> Result<()> {
    let refuse = |out: &Path, why: String| {
        Err(Error::io(
            out,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        ))
    };
    for (i, out) in outputs.iter().enumerate() {
        if let Some(input) = inputs.iter().find(|i| same_target(out, i)) {
            return refuse(
                out,
                format!(
                    "is the input {}; refusing to overwrite it, choose another output path",
                    input.display()
                ),
            );
        }
        if let Some(other) = outputs[..i].iter().find(|o| same_target(out, o)) {
            return refuse(
                out,
                format!(
                    "is also written as {}; choose another output path",
                    other.display()
                ),
            );
        }
    }
    Ok(())
}

/// Refuses an output path that is the input model itself.
pub fn ensure_not_input(out: &Path, input: &Path) -> Result<()> {
    ensure_outputs_apart(&[out], &[input])
}

/// Removes the temporaries that killed mlc processes left beside `path`
/// (`.<name>.<pid>.<n>.tmp` whose process is gone). Best effort: a
/// temporary that cannot be read or removed is left alone.
fn remove_stale_temps(dir: &Path, base: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{base}.");
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Without a cheap way to ask, every process counts as alive (nothing is
/// removed).
#[cfg(not(target_os = "linux"))]
fn process_alive(_: u32) -> bool {
    true
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

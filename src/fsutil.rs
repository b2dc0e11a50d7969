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

/// Refuses an output path that is the input model itself (same canonical
/// path, or on Unix the same file through another link).
pub fn ensure_not_input(out: &Path, input: &Path) -> Result<()> {
    let same = match (std::fs::canonicalize(out), std::fs::canonicalize(input)) {
        (Ok(a), Ok(b)) => a == b || same_file(&a, &b),
        // An output that does not exist yet cannot be the input.
        _ => false,
    };
    if same {
        return Err(Error::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "is the model being compiled ({}); refusing to overwrite it, choose another output path",
                    input.display()
                ),
            ),
        ));
    }
    Ok(())
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

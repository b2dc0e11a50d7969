//! One memory budget for everything a model or an input file can make mlc
//! allocate.
//!
//! A hostile model is small and asks for a lot: a 1 KB graph whose Expand
//! makes 16 GB, a `.npz` member declaring 8 GiB, a bundle whose deflate
//! stream inflates to gigabytes, an external tensor of 2^32 floats. Every
//! place where the size of an allocation comes from the model or its inputs
//! asks [`check`] first, with the bytes it is about to allocate, and gets a
//! clear [`Error::Budget`] instead of an allocation the machine cannot
//! serve. The budget is one number for the process, [`DEFAULT_MAX_MEMORY`]
//! unless the command line (`--max-memory`) or a library caller sets
//! another with [`set_max_memory`]. What is already held (the values an
//! interpreter keeps alive, see [`Reserved`]) counts against it too, so a
//! chain of steps that each fit cannot add up past it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::error::{human_bytes, over_budget};
use crate::{Error, Result};

/// The budget unless set otherwise: 4 GiB, which any model mlc is meant for
/// fits many times over, and which a machine with 8 GB can serve.
pub const DEFAULT_MAX_MEMORY: u64 = 4 << 30;

static MAX_MEMORY: AtomicU64 = AtomicU64::new(DEFAULT_MAX_MEMORY);

/// The budget in bytes.
pub fn max_memory() -> u64 {
    MAX_MEMORY.load(Ordering::Relaxed)
}

/// Sets the budget for the whole process.
pub fn set_max_memory(bytes: u64) {
    MAX_MEMORY.store(bytes, Ordering::Relaxed);
}

thread_local! {
    static RESERVED: Cell<u64> = const { Cell::new(0) };
}

/// Bytes this thread holds for the duration of a scope (the live values of
/// a run), counted by every [`check`] made inside it; the previous amount
/// comes back when it is dropped.
pub struct Reserved {
    previous: u64,
}

impl Reserved {
    pub fn new(bytes: u64) -> Reserved {
        Reserved {
            previous: RESERVED.with(|r| r.replace(bytes)),
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        RESERVED.with(|r| r.set(self.previous));
    }
}

/// Refuses an allocation of `bytes` (`None`: so many that the count
/// overflowed) for `what` when it and what this thread holds
/// ([`Reserved`]) exceed the budget.
pub fn check(what: impl FnOnce() -> String, bytes: Option<u64>) -> Result<u64> {
    let limit = max_memory();
    let held = RESERVED.with(Cell::get);
    match bytes {
        Some(b) if b.saturating_add(held) <= limit => Ok(b),
        b => Err(Error::Budget {
            what: if held > 0 {
                format!("{} (with {} already held)", what(), human_bytes(held))
            } else {
                what()
            },
            bytes: b.unwrap_or(u64::MAX),
            limit,
        }),
    }
}

/// [`check`] for `count` elements of `elem_bytes` each; returns the count.
pub fn check_elements(
    what: impl FnOnce() -> String,
    count: Option<usize>,
    elem_bytes: usize,
) -> Result<usize> {
    let bytes = count.and_then(|n| (n as u64).checked_mul(elem_bytes as u64));
    check(what, bytes)?;
    // `bytes` was Some, so `count` was.
    Ok(count.unwrap_or(0))
}

/// Product of dims, `None` on overflow (hostile shapes).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// [`check_elements`] for a tensor of `shape`.
pub fn check_shape(
    what: impl FnOnce() -> String,
    shape: &[usize],
    elem_bytes: usize,
) -> Result<usize> {
    check_elements(what, checked_numel(shape), elem_bytes)
}

/// Parses a size such as `512MB`, `8GiB`, `4g` or `1000000` (bytes).
/// Decimal (KB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB, or a bare K, M,
/// G, T) units; case does not matter.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 512MB, 8GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "'{text}': unknown unit '{u}' (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("'{text}' is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("4g"), Ok(4 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn over_budget_is_refused_before_allocating() {
        let e = check_shape(|| "Expand output".into(), &[1 << 20, 1 << 20], 4).unwrap_err();
        assert!(e.to_string().contains("Expand output needs 4.0 TiB"), "{e}");
        assert!(check_shape(|| "x".into(), &[usize::MAX, 2], 1).is_err());
        assert_eq!(check_shape(|| "x".into(), &[2, 3], 4).unwrap(), 6);
    }
}

//! The tuning database: one JSON object a line, each the measurement of
//! one workload (a node's op, attributes, input shapes and types) on one
//! target (CPU model, features, cores), at one thread count, with one
//! kernel library: every candidate's median and spread, and the choice.
//!
//! Lines are only appended, so files from several machines merge by
//! concatenation (`cat a.jsonl b.jsonl`); where two records share a key,
//! the later one counts. The default file lives in the user's cache
//! directory ([`Db::default_path`]); `--db FILE` names another, e.g. one a
//! team commits per CI machine kind.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kernels::cpu::choice::Choice;
use crate::measure::Timing;
use crate::{Error, Result};

/// The kernel library's revision, part of every record's key: bump it
/// when a kernel changes speed, so old measurements stop counting.
pub const KERNELS: &str = concat!("mlc-", env!("CARGO_PKG_VERSION"), "-k3");

/// Longest line read back (a record is a few KiB at most).
const MAX_LINE: usize = 1 << 20;

/// What the cost model reads of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Floating-point (or integer) operations of one run, a multiply-add
    /// counting 2; 0 for ops without a product.
    pub flops: f64,
    /// Bytes of every input and output.
    pub bytes: f64,
}

/// One candidate's measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub choice: Choice,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub runs: usize,
}

impl Measured {
    pub fn new(choice: Choice, t: &Timing) -> Measured {
        Measured {
            choice,
            median_ms: t.median_ms,
            p10_ms: t.p10_ms,
            p90_ms: t.p90_ms,
            runs: t.runs,
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            median_ms: self.median_ms,
            p10_ms: self.p10_ms,
            p90_ms: self.p90_ms,
            runs: self.runs,
        }
    }
}

/// One workload measured on one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The op, its attributes and its inputs' types ([`super::workload`]).
    pub workload: String,
    /// The target's fingerprint.
    pub target: String,
    pub threads: usize,
    /// [`KERNELS`] of the mlc that measured it.
    pub kernels: String,
    /// Every candidate measured, the default first.
    pub candidates: Vec<Measured>,
    /// The one chosen (the default unless another won beyond the noise).
    pub choice: Choice,
    /// What the cost model reads of the node (absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
}

/// A tuning database: the records of one file.
#[derive(Debug, Default)]
pub struct Db {
    path: Option<PathBuf>,
    records: Vec<Record>,
}

impl Db {
    /// No file: records live in memory only.
    pub fn in_memory() -> Db {
        Db::default()
    }

    /// The database at `path` (empty when the file does not exist yet).
    /// A line that is not a record is an error naming the line.
    pub fn open(path: &Path) -> Result<Db> {
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let malformed = |message: String| Error::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let mut records = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > MAX_LINE {
                return Err(malformed(format!(
                    "line {} is over {MAX_LINE} bytes",
                    i + 1
                )));
            }
            let r: Record = serde_json::from_slice(line)
                .map_err(|e| malformed(format!("line {}: not a tuning record: {e}", i + 1)))?;
            records.push(r);
        }
        Ok(Db {
            path: Some(path.to_path_buf()),
            records,
        })
    }

    /// `$MLC_TUNING_DB`, else `tuning.jsonl` in `$XDG_CACHE_HOME/mlc` or
    /// `~/.cache/mlc`; None when neither variable is set.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("MLC_TUNING_DB").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("mlc").join("tuning.jsonl"))
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records of `target` at `threads` threads measured with this
    /// kernel library (what a cost model for them is fitted on).
    pub fn of_target<'a>(
        &'a self,
        target: &'a str,
        threads: usize,
    ) -> impl Iterator<Item = &'a Record> {
        self.records
            .iter()
            .filter(move |r| r.target == target && r.threads == threads && r.kernels == KERNELS)
    }

    /// The latest record of `workload` on `target` at `threads` threads
    /// measured with this kernel library.
    pub fn lookup(&self, workload: &str, target: &str, threads: usize) -> Option<&Record> {
        self.records.iter().rev().find(|r| {
            r.workload == workload
                && r.target == target
                && r.threads == threads
                && r.kernels == KERNELS
        })
    }

    /// Adds records, appending them to the file (created with its
    /// directory when missing).
    pub fn append(&mut self, new: Vec<Record>) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        if let Some(path) = &self.path {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let mut text = Vec::new();
            for r in &new {
                serde_json::to_writer(&mut text, r)
                    .map_err(|e| Error::Internal(format!("encoding a tuning record: {e}")))?;
                text.push(b'\n');
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f.write_all(&text).map_err(|e| Error::io(path, e))?;
        }
        self.records.extend(new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(workload: &str, target: &str, choice: &str) -> Record {
        let t = Timing {
            median_ms: 1.0,
            p10_ms: 0.9,
            p90_ms: 1.2,
            runs: 10,
        };
        Record {
            workload: workload.into(),
            target: target.into(),
            threads: 1,
            kernels: KERNELS.into(),
            candidates: vec![Measured::new(Choice::default(), &t)],
            choice: choice.parse().unwrap(),
            features: None,
        }
    }

    #[test]
    fn records_append_merge_and_the_latest_counts() {
        let dir = std::env::temp_dir().join(format!("mlc-tune-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (dir.join("sub/a.jsonl"), dir.join("b.jsonl"));
        let mut db = Db::open(&a).unwrap();
        assert!(db.records().is_empty());
        db.append(vec![record("conv", "cpu1", "default")]).unwrap();
        db.append(vec![record("conv", "cpu1", "conv=gemm")])
            .unwrap();
        let mut other = Db::open(&b).unwrap();
        other
            .append(vec![record("conv", "cpu2", "conv=direct")])
            .unwrap();
        // Merging files is concatenating them.
        let merged = dir.join("merged.jsonl");
        let text = [std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()].concat();
        std::fs::write(&merged, text).unwrap();
        let db = Db::open(&merged).unwrap();
        assert_eq!(db.records().len(), 3);
        assert_eq!(
            db.lookup("conv", "cpu1", 1).unwrap().choice.to_string(),
            "conv=gemm"
        );
        assert_eq!(
            db.lookup("conv", "cpu2", 1).unwrap().choice.to_string(),
            "conv=direct"
        );
        assert!(db.lookup("conv", "cpu2", 2).is_none());
        assert!(db.lookup("matmul", "cpu1", 1).is_none());
        std::fs::write(&merged, "{\"workload\": 1}\n").unwrap();
        let err = Db::open(&merged).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The header every report carries (`compress`, `tune`, `check`, `bench`):
//! which mlc made it with which command line, on which CPU and how many
//! threads, when, from which model (by SHA-256), and the version of the
//! report's JSON schema. A figure is a claim about the machine it was
//! measured on: the header says which.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::target::Target;

/// Version of the reports' JSON layout; raised when a field changes
/// meaning or goes away (new fields do not raise it).
pub const SCHEMA_VERSION: u32 = 1;

/// See the module docs.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub schema_version: u32,
    /// `compress`, `tune`, `check` or `bench`.
    pub report: String,
    pub mlc_version: String,
    /// The process's arguments (the program that called the library, when
    /// it is not the `mlc` command line).
    pub command_line: Vec<String>,
    /// When the report was made, UTC (`2026-12-06T21:40:00Z`).
    pub date: String,
    /// The CPU's model name, with its x86 family and model numbers (which
    /// tell CPUs apart where a virtual machine hides the name).
    pub cpu: String,
    /// The CPU features mlc's kernels may use here.
    pub cpu_features: Vec<String>,
    pub cores: u32,
    /// Threads the measurements ran on.
    pub threads: usize,
    /// The source model and its SHA-256 (none for several models).
    pub model: Option<String>,
    pub model_sha256: Option<String>,
}

impl Header {
    /// The header of a `report` made now on this machine, measured on
    /// `threads` threads, of `model` (its path and bytes) when there is one.
    pub fn new(report: &str, threads: usize, model: Option<(&Path, &[u8])>) -> Header {
        let host = Target::host();
        let name = host.model.clone().unwrap_or_else(|| "unknown CPU".into());
        let cpu = match x86_signature() {
            Some((family, model)) => format!("{name} (family {family} model {model})"),
            None => name,
        };
        Header {
            schema_version: SCHEMA_VERSION,
            report: report.to_string(),
            mlc_version: env!("CARGO_PKG_VERSION").to_string(),
            command_line: std::env::args().collect(),
            date: utc_now(),
            cpu,
            cpu_features: host.features.iter().map(|f| f.name().to_string()).collect(),
            cores: host.cores,
            threads,
            model: model.map(|(p, _)| p.display().to_string()),
            model_sha256: model.map(|(_, bytes)| crate::formats::bundle::sha256_hex(bytes)),
        }
    }

    /// The same header for a model read from `path` (its hash left out
    /// when the file cannot be read: the report still says which file).
    pub fn for_file(report: &str, threads: usize, path: &Path) -> Header {
        match std::fs::read(path) {
            Ok(bytes) => Header::new(report, threads, Some((path, &bytes))),
            Err(_) => Header {
                model: Some(path.display().to_string()),
                ..Header::new(report, threads, None)
            },
        }
    }

    /// The header as Markdown lines (a bullet list).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s += &format!("- command: `{}`\n", self.command_line.join(" "));
        s += &format!(
            "- mlc {}, report schema {}, {}\n",
            self.mlc_version, self.schema_version, self.date
        );
        s += &format!(
            "- CPU: {}, {} cores, {} thread{}; features: {}\n",
            self.cpu,
            self.cores,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.cpu_features.join(" ")
        );
        if let Some(m) = &self.model {
            s += &format!(
                "- model: {m}{}\n",
                self.model_sha256
                    .as_ref()
                    .map_or(String::new(), |h| format!(" (sha256 {h})"))
            );
        }
        s
    }
}

/// The x86 family and model numbers from /proc/cpuinfo.
fn x86_signature() -> Option<(u32, u32)> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u32>().ok())?
        })
    };
    Some((field("cpu family")?, field("model")?))
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// `secs` after the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic
/// Gregorian calendar; days to civil dates as in H. Hinnant's
/// `civil_from_days`).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year), 12:34:56.
        assert_eq!(utc_date(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(utc_date(1_796_515_200), "2026-12-06T00:00:00Z");
    }

    #[test]
    fn the_header_names_machine_and_model() {
        let h = Header::new("check", 2, Some((Path::new("m.onnx"), b"abc")));
        assert_eq!(h.schema_version, SCHEMA_VERSION);
        assert_eq!(
            h.model_sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(h.markdown().contains("2 threads"), "{}", h.markdown());
        assert!(h.date.ends_with('Z') && h.date.len() == 20, "{}", h.date);
    }
}

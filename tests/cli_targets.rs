//! `mlc targets`: the probed host first, then every built-in target, one
//! line each as text, and as one JSON array that reads back as the
//! library's `Target`s.

use std::process::{Command, Output};

use mlc::api::{Arch, Feature, Target};

fn mlc(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlc"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The standard output of a run that succeeded quietly.
fn ok(out: &Output) -> String {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "mlc failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json_targets(env: &[(&str, &str)]) -> Vec<Target> {
    serde_json::from_str(&ok(&mlc(&["targets", "--json"], env))).unwrap()
}

#[test]
fn text_lists_the_host_then_every_builtin_target() {
    let text = ok(&mlc(&["targets"], &[]));
    let lines: Vec<&str> = text.lines().collect();
    let builtin = Target::builtin();
    assert_eq!(lines.len(), 1 + builtin.len(), "{text}");
    assert!(lines[0].starts_with("host "), "{text}");
    for (line, t) in lines[1..].iter().zip(&builtin) {
        assert!(line.starts_with(&format!("{} ", t.name)), "{line}");
        let arch = match t.arch {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Other => "other",
        };
        for part in [
            arch.to_string(),
            format!("{}-bit", t.vector_bits),
            format!("{} cores", t.cores),
            t.caches_label(),
        ] {
            assert!(line.contains(&part), "'{part}' not in: {line}");
        }
        let features: Vec<&str> = t.features.iter().map(|f| f.name()).collect();
        assert!(line.ends_with(&features.join(" ")), "{line}");
    }
    let v3 = lines.iter().find(|l| l.starts_with("x86-64-v3 ")).unwrap();
    assert!(
        v3.contains("L1d 32 KiB, L2 512 KiB, L3 16 MiB/4 cores") && v3.ends_with(" avx2 fma"),
        "{v3}"
    );
}

#[test]
fn json_is_one_array_of_targets() {
    let targets = json_targets(&[]);
    assert_eq!(targets[0].name, "host");
    assert_eq!(targets[0].arch, Arch::this());
    // The binary probes what the library probes here.
    assert_eq!(targets[0], Target::host());
    assert_eq!(&targets[1..], &Target::builtin()[..]);
    let spr = targets
        .iter()
        .find(|t| t.name == "xeon-sapphire-rapids")
        .unwrap();
    assert!(spr.features.contains(&Feature::AmxInt8));
    assert_eq!(spr.mem_bandwidth_gbps, Some(307.2));
}

#[test]
fn the_host_shows_what_the_runtime_may_use() {
    let host = &json_targets(&[("MLC_CPU_DISABLE", "avx512")])[0];
    // With AVX-512 off, everything built on it goes too (AMX with it).
    for f in [
        Feature::Avx512f,
        Feature::Avx512bw,
        Feature::Avx512vl,
        Feature::Avx512vnni,
        Feature::Avx512bf16,
        Feature::Avx512fp16,
        Feature::AmxInt8,
        Feature::AmxBf16,
    ] {
        assert!(!host.features.contains(&f), "{f:?} in {:?}", host.features);
    }
    if host.arch == Arch::X86_64 {
        assert!(host.vector_bits <= 256, "{}", host.vector_bits);
        assert_ne!(host.isa, "x86-64-v4");
    }
    host.check().unwrap();
}

#[test]
fn help_names_the_command() {
    let help = ok(&mlc(&["--help"], &[]));
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("targets ")),
        "{help}"
    );
}

//! The readers of untrusted bytes (ONNX loader, `.mlc` bundle reader,
//! `.npy`/`.npz` readers) on a fixed, seeded sample of mutated fixtures:
//! bit flips, interesting bytes and integers, truncations, deleted and
//! duplicated ranges, splices of two seeds. Each must give an error or a
//! value, never a panic; a panic's input is saved under
//! `target/tmp/mutations/` and fails the test, and each reader's summary
//! line is written there too. Reproducers that libFuzzer
//! found (`tests/fuzz/artifacts/<target>/`) are replayed first.
//!
//! This is the suite's fuzz step: the same readers and seeds as the
//! coverage-guided targets of `tests/fuzz/run.sh` (cargo fuzz, libFuzzer),
//! which explore far deeper but need a build of their own; run that for
//! longer sessions. `MLC_MUTATIONS=N` sets the mutants per seed file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mlc::rng::SplitMix64;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Mutants per seed file (the default keeps each reader to a few seconds).
fn mutants_per_seed() -> usize {
    std::env::var("MLC_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500)
}

/// A reader's time bound: past it the remaining seeds are cut short (and
/// the summary says how many mutants ran), so a slow machine stays bounded.
const TIME_BOUND: Duration = Duration::from_secs(60);

fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&keep));
    v.sort();
    v
}

/// Integers whose bytes make lengths, counts and offsets go wrong.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// One to four random edits of `seed` (`other` for splices).
fn mutate(rng: &mut SplitMix64, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let len = v.len() as u64;
        let at = rng.below(len.max(1)) as usize;
        match rng.below(7) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[at] = INTERESTING[rng.below(5) as usize] as u8,
            2 => {
                let x = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let width = [2usize, 4, 8][rng.below(3) as usize];
                let bytes = x.to_le_bytes();
                for (i, b) in bytes[..width].iter().enumerate() {
                    if let Some(slot) = v.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => v.truncate(at),
            4 if !v.is_empty() => {
                let n = 1 + rng.below((len - at as u64).min(256)) as usize;
                v.drain(at..(at + n).min(v.len()));
            }
            5 if !v.is_empty() => {
                let n = 1 + rng.below((len - at as u64).min(256)) as usize;
                let chunk = v[at..(at + n).min(v.len())].to_vec();
                let to = rng.below(len + 1) as usize;
                v.splice(to..to, chunk);
            }
            _ if !other.is_empty() => {
                let from = rng.below(other.len() as u64) as usize;
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ => v.push(rng.below(256) as u8),
        }
    }
    v
}

/// Runs `read` (true when it accepted the input) on every artifact and on
/// mutants of every seed (`fix` applied to each mutant: a checksum made
/// valid again); panics at the end, naming the saved inputs, when any input
/// made it panic.
fn fuzz(target: &str, seeds: &[PathBuf], fix: impl Fn(&mut Vec<u8>), read: impl Fn(&[u8]) -> bool) {
    assert!(!seeds.is_empty(), "{target}: no seed files");
    mlc::limits::set_max_memory(256 << 20);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mutations");
    std::fs::create_dir_all(&out).unwrap();
    // This target's inputs saved by an earlier run.
    for old in files(&out, |n| n.starts_with(&format!("{target}-"))) {
        std::fs::remove_file(old).unwrap();
    }
    let seed_bytes: Vec<Vec<u8>> = seeds.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let (mut panicked, mut accepted) = (Vec::new(), 0usize);
    let mut try_one = |bytes: &[u8], name: String| {
        CATCHING.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| read(bytes)));
        CATCHING.with(|c| c.set(false));
        match outcome {
            Ok(ok) => accepted += ok as usize,
            Err(_) => {
                let path = out.join(name);
                std::fs::write(&path, bytes).unwrap();
                panicked.push(path);
            }
        }
    };
    let artifacts = files(&repo().join("tests/fuzz/artifacts").join(target), |_| true);
    for p in &artifacts {
        let name = format!(
            "{target}-artifact-{}",
            p.file_name().unwrap().to_string_lossy()
        );
        try_one(&std::fs::read(p).unwrap(), name);
    }
    let start = Instant::now();
    let (per_seed, mut ran) = (mutants_per_seed(), 0usize);
    // A sequence of its own per reader, the same on every run.
    let rng_seed = target
        .bytes()
        .fold(0x6d6c_6366_757a_7a00u64, |h, b| h.rotate_left(8) ^ b as u64);
    let mut rng = SplitMix64::new(rng_seed);
    'seeds: for (i, seed) in seed_bytes.iter().enumerate() {
        let other = &seed_bytes[(i + 1) % seed_bytes.len()];
        for n in 0..per_seed {
            if start.elapsed() > TIME_BOUND {
                break 'seeds;
            }
            let mut bytes = mutate(&mut rng, seed, other);
            fix(&mut bytes);
            try_one(&bytes, format!("{target}-seed{i}-mutant{n}"));
            ran += 1;
        }
    }
    let summary = format!(
        "mutations {target}: {} artifacts, {ran} mutants of {} seeds in {:.1} s ({accepted} accepted, the rest errors), {} panics",
        artifacts.len(),
        seeds.len(),
        start.elapsed().as_secs_f64(),
        panicked.len()
    );
    println!("{summary}");
    // For the suite's summary (tests/run_all.sh).
    std::fs::write(out.join(format!("{target}.txt")), summary + "\n").unwrap();
    assert!(
        panicked.is_empty(),
        "{target}: {} inputs panicked (saved: {:?})",
        panicked.len(),
        panicked
    );
}

thread_local! {
    /// Whether this thread is running a reader under `catch_unwind`.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Quiets the panic hook for the readers' caught panics (the test reports
/// them by input), and only for those: a failing assertion still prints.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(|c| c.get()) {
                default(info)
            }
        }))
    });
}

#[test]
fn onnx_loader_survives_mutated_models() {
    quiet_panics();
    let mut seeds = Vec::new();
    for dir in ["cnn", "mlp", "transformer"] {
        seeds.push(repo().join("fixtures").join(dir).join("model.onnx"));
    }
    seeds.extend(files(&repo().join("fixtures/digits"), |n| {
        n.ends_with(".onnx")
    }));
    fuzz(
        "onnx_load",
        &seeds,
        |_| {},
        |b| mlc::formats::onnx::load_bytes(b, None).is_ok(),
    );
}

/// A bundle of mostly-zero weights, small so that mutants read fast: an
/// f32 matrix stored with gaps, an int8 one with a bitmask, an f16-exact
/// f32 vector with gaps.
fn pruned_bundle() -> Vec<u8> {
    use mlc::formats::bundle::{self, Metadata, NodeCounts, PipelineInfo, SourceInfo};
    use mlc::ir::{DType, Graph, Shape, TensorData, TensorType};
    use std::sync::Arc;
    let keep = |n: usize, sparsity: usize| -> Vec<bool> {
        (0..n).map(|i| (i * 37 + 11) % 100 >= sparsity).collect()
    };
    let f32s: Vec<f32> = keep(24 * 16, 90)
        .iter()
        .enumerate()
        .map(|(i, &k)| if k { i as f32 * 0.013 - 2.0 } else { 0.0 })
        .collect();
    let i8s: Vec<i8> = keep(32 * 24, 60)
        .iter()
        .enumerate()
        .map(|(i, &k)| if k { (i % 127) as i8 + 1 } else { 0 })
        .collect();
    let halves: Vec<f32> = keep(200, 95)
        .iter()
        .map(|&k| if k { -0.5 } else { 0.0 })
        .collect();
    let mut g = Graph::new("pruned", 21);
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::known(&[2])));
    let mut outs = vec![x];
    for (name, shape, data) in [
        ("w", vec![24, 16], TensorData::F32(f32s)),
        ("q", vec![32, 24], TensorData::I8(i8s)),
        ("s", vec![200], TensorData::F32(halves)),
    ] {
        let t = mlc::Tensor::new(shape, data).unwrap();
        outs.push(g.add_const(name, Arc::new(t)));
    }
    g.outputs = outs;
    let meta = Metadata::new(
        SourceInfo::from_bytes("pruned.onnx", b""),
        PipelineInfo {
            name: "none".into(),
            summary: String::new(),
        },
        Vec::new(),
        NodeCounts {
            before: 0,
            after: 0,
        },
    );
    let bytes = bundle::to_bytes(&g, &meta).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("\"mlc.sparse.2\":\"bitmask\"") && text.matches("\"gaps\"").count() == 2,
        "the seed is not sparse"
    );
    bytes
}

#[test]
fn bundle_reader_survives_mutated_bundles() {
    quiet_panics();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mutation-seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let mlc = env!("CARGO_BIN_EXE_mlc");
    let fixtures = repo().join("fixtures");
    let runs: [(&str, Vec<&str>); 3] = [
        ("mlp.O2.mlc", vec!["compile", "mlp/model.onnx"]),
        (
            "cnn.O0.mlc",
            vec!["compile", "cnn/model.onnx", "--pipeline", "O0"],
        ),
        (
            "mlp.int8.mlc",
            vec![
                "compress",
                "digits/mlp.onnx",
                "--int8",
                "--no-speed-check",
                "--latency-runs",
                "0",
                "--no-cache",
            ],
        ),
    ];
    let mut seeds = Vec::new();
    for (name, args) in runs {
        let path = dir.join(name);
        let status = Command::new(mlc)
            .current_dir(&fixtures)
            .args(args)
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "mlc failed making {name}: {status:?}"
        );
        seeds.push(path);
    }
    // A pruned model's bundle, so that the sparse weights (values, masks,
    // gaps) are fuzzed too; written through the library.
    let pruned = dir.join("pruned.mlc");
    std::fs::write(&pruned, pruned_bundle()).unwrap();
    seeds.push(pruned);
    // Half the mutants get a valid trailing SHA-256 again, so that they
    // reach the sections behind it (container, metadata, inflate, weights,
    // graph text) rather than all stopping at the checksum.
    let reseal = |b: &mut Vec<u8>| {
        if b.len() > 32 && b[b.len() / 2] & 1 == 0 {
            let n = b.len() - 32;
            let sum = Sha256::digest(&b[..n]);
            b[n..].copy_from_slice(&sum);
        }
    };
    fuzz("bundle_read", &seeds, reseal, |b| {
        mlc::formats::bundle::from_bytes(b, Path::new("fuzz.mlc")).is_ok()
    });
}

#[test]
fn npy_and_npz_readers_survive_mutated_arrays() {
    quiet_panics();
    let mut seeds = Vec::new();
    for dir in ["cnn", "mlp", "transformer"] {
        seeds.extend(files(&repo().join("fixtures").join(dir), |n| {
            n.ends_with(".npy")
        }));
    }
    // The training splits are written as calib/eval are, only larger
    // (inflating them would take most of the reader's time bound).
    seeds.extend(files(&repo().join("fixtures/digits"), |n| {
        n.ends_with(".npz") && !n.starts_with("train_")
    }));
    let npz = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mutation-{}.npz", std::process::id()));
    fuzz(
        "npy_read",
        &seeds,
        |_| {},
        |b| {
            let npy = mlc::formats::npy::read_npy_bytes(b, Path::new("fuzz.npy")).is_ok();
            // The npz reader takes a file (it reads the zip directory from the end).
            std::fs::write(&npz, b).unwrap();
            mlc::formats::npy::read_npz(&npz).is_ok() || npy
        },
    );
    let _ = std::fs::remove_file(&npz);
}

//! `mlc bench MODEL... --compare` through the real binary: two models in
//! alternating rounds (the JSON report's schema, the Markdown and HTML
//! files, every run in --export-times with its round), --duration, ONNX
//! Runtime through the test venv, and the errors: models with different
//! inputs, a missing file, several models without --compare, a Python
//! without onnxruntime. Single-model `mlc bench` is unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(p: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(p)
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench_compare_{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mlc(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .current_dir(dir)
        .env("MLC_TUNING_DB", dir.join("no-tuning-db.jsonl"))
        .output()
        .expect("mlc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The digits CNN as ONNX and compiled to a bundle (two variants).
fn two_models(dir: &Path) -> (String, String) {
    let onnx = fixture("digits/cnn.onnx");
    let bundle = dir.join("cnn.mlc").display().to_string();
    let o = mlc(&["compile", &onnx, "-o", &bundle], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    (onnx, bundle)
}

const ENTRY_KEYS: [&str; 14] = [
    "label",
    "model",
    "engine",
    "pipeline",
    "sha256",
    "size_bytes",
    "runs",
    "median_ms",
    "min_ms",
    "max_ms",
    "p10_ms",
    "p90_ms",
    "mean_ms",
    "ratio",
];

#[test]
fn two_models_alternate_and_every_report_is_written() {
    let dir = scratch("two");
    let (onnx, bundle) = two_models(&dir);
    let (md, html, json, times) = ("r.md", "r.html", "r.json", "times.json");
    let o = mlc(
        &[
            "bench",
            &onnx,
            &bundle,
            "--compare",
            "--threads",
            "1",
            "--warmup",
            "1",
            "--runs",
            "6",
            "--rounds",
            "3",
            "--json",
            "-o",
            md,
            "-o",
            json,
            "--html",
            html,
            "--export-times",
            times,
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(r["header"]["report"], "bench");
    assert_eq!(r["header"]["schema_version"], 1);
    assert_eq!(
        (r["threads"].as_u64(), r["batch"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r["inputs"]["x"], serde_json::json!([1, 1, 8, 8]));
    assert_eq!(r["rounds"], 3);
    let entries = r["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        for k in ENTRY_KEYS {
            assert!(!e[k].is_null(), "entry lacks {k}: {e}");
        }
        assert_eq!(e["engine"], "mlc");
        assert_eq!(e["runs"], 6);
        let (lo, med, hi) = (
            e["min_ms"].as_f64().unwrap(),
            e["median_ms"].as_f64().unwrap(),
            e["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= med && med <= hi, "{e}");
        assert!(
            e.get("times").is_none(),
            "raw times belong in --export-times"
        );
    }
    assert_eq!(entries[0]["ratio"], 1.0);
    assert_eq!(entries[0]["pipeline"], "O2");
    assert_eq!(entries[1]["pipeline"], "none");
    let onnx_size = std::fs::metadata(&onnx).unwrap().len();
    assert_eq!(entries[0]["size_bytes"], onnx_size);
    let ratio =
        entries[1]["median_ms"].as_f64().unwrap() / entries[0]["median_ms"].as_f64().unwrap();
    assert!((entries[1]["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);

    // The same report as a file, the table as Markdown, the page as HTML.
    let from_file: Value = serde_json::from_slice(&std::fs::read(dir.join(json)).unwrap()).unwrap();
    assert_eq!(from_file["entries"], r["entries"]);
    let table = std::fs::read_to_string(dir.join(md)).unwrap();
    assert!(
        table.contains("| 1 | ") && table.contains("| 2 | ") && table.contains("1.00x"),
        "{table}"
    );
    let page = std::fs::read_to_string(dir.join(html)).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("<svg"),
        "{page}"
    );
    // Self-contained: no script, nothing fetched.
    assert!(!page.contains("<script") && !page.contains(" src=") && !page.contains(" href="));

    // Every run, in order, with its round: 2 runs a round, 3 rounds.
    let t: Value = serde_json::from_slice(&std::fs::read(dir.join(times)).unwrap()).unwrap();
    assert_eq!(t["unit"], "ms");
    let te = t["entries"].as_array().unwrap();
    assert_eq!(te.len(), 2);
    for (e, summary) in te.iter().zip(entries) {
        assert_eq!(e["label"], summary["label"]);
        let runs = e["runs"].as_array().unwrap();
        let rounds: Vec<u64> = runs.iter().map(|x| x["round"].as_u64().unwrap()).collect();
        assert_eq!(rounds, [0, 0, 1, 1, 2, 2]);
        let mut ms: Vec<f64> = runs.iter().map(|x| x["ms"].as_f64().unwrap()).collect();
        ms.sort_by(f64::total_cmp);
        assert_eq!(ms[0], summary["min_ms"].as_f64().unwrap());
        assert_eq!(ms[5], summary["max_ms"].as_f64().unwrap());
    }
}

#[test]
fn duration_runs_rounds_until_the_time_is_spent() {
    let dir = scratch("duration");
    let (onnx, bundle) = two_models(&dir);
    let o = mlc(
        &[
            "bench",
            &onnx,
            &bundle,
            "--compare",
            "--threads",
            "1",
            "--duration",
            "0.3s",
            "--json",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    for e in r["entries"].as_array().unwrap() {
        assert!(e["runs"].as_u64().unwrap() >= 1, "{e}");
    }
    // Markdown on stdout without --json.
    let o = mlc(
        &[
            "bench",
            &onnx,
            &bundle,
            "--compare",
            "--runs",
            "2",
            "--rounds",
            "2",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("| # | model | engine | median ms (min–max) | ratio |"),
        "{text}"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let dir = scratch("errors");
    let (onnx, _) = two_models(&dir);
    let refused = |args: &[&str], want: &str| {
        let o = mlc(args, &dir);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    };
    // The MLP takes [batch, 64], the CNN [batch, 1, 8, 8].
    refused(
        &[
            "bench",
            &onnx,
            &fixture("digits/mlp.onnx"),
            "--compare",
            "--runs",
            "2",
        ],
        "--compare runs every model on",
    );
    refused(&["bench", &onnx, "missing.mlc", "--compare"], "missing.mlc");
    refused(&["bench", &onnx, &onnx], "add --compare");
    refused(&["bench", &onnx, "--compare", "--verify"], "--verify");
    // A Python without onnxruntime: python3 without its site-packages.
    let fake = dir.join("python-without-ort");
    std::fs::write(&fake, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
    let mut perm = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&fake, perm).unwrap();
    if Command::new("python3")
        .arg("-c")
        .arg("1")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        refused(
            &[
                "bench",
                &onnx,
                "--compare",
                "--ort",
                "--python",
                fake.to_str().unwrap(),
                "--runs",
                "2",
            ],
            "has no onnxruntime",
        );
    } else {
        eprintln!("note: skipping the no-onnxruntime case: no python3 here");
    }
    refused(
        &[
            "bench",
            &onnx,
            "--compare",
            "--ort",
            "--python",
            "/nonexistent/python",
            "--runs",
            "2",
        ],
        "cannot start Python",
    );
}

#[test]
fn onnx_runtime_runs_the_onnx_models_in_the_same_rounds() {
    let Some(py) = common::venv_python("bench --compare --ort") else {
        return;
    };
    let dir = scratch("ort");
    let (onnx, bundle) = two_models(&dir);
    let o = mlc(
        &[
            "bench",
            &onnx,
            &bundle,
            "--compare",
            "--ort",
            "--python",
            py.to_str().unwrap(),
            "--threads",
            "1",
            "--runs",
            "4",
            "--rounds",
            "2",
            "--json",
            "--export-times",
            "t.json",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let engines: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["engine"].as_str().unwrap())
        .collect();
    assert_eq!(engines, ["mlc", "mlc", "onnxruntime"]);
    let ort = &r["entries"][2];
    assert_eq!(ort["model"], onnx);
    assert_eq!(ort["runs"], 4);
    assert!(
        ort["pipeline"]
            .as_str()
            .unwrap()
            .starts_with("onnxruntime "),
        "{ort}"
    );
    assert!(ort["median_ms"].as_f64().unwrap() > 0.0);
    let t: Value = serde_json::from_slice(&std::fs::read(dir.join("t.json")).unwrap()).unwrap();
    let rounds: Vec<u64> = t["entries"][2]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [0, 0, 1, 1]);
}

#[test]
fn one_model_benches_as_before() {
    let dir = scratch("single");
    let o = mlc(
        &[
            "bench",
            &fixture("digits/cnn.onnx"),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--json",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["runs"], 3);
    assert!(r["p50_ms"].as_f64().unwrap() > 0.0 && r.get("entries").is_none());
}

//! `mlc check`, the CI gate, through the real binary: a table of budgets
//! that pass and fail (size, latency against a limit and against a
//! baseline, an A/A comparison that must pass, accuracy, agreement), the
//! exit codes (0 pass, 3 a budget failed, 2 bad input), a budget file with
//! several models, and JUnit XML read back by a JUnit parser.

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

fn mlc(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        // No tuning database: the default kernels, whoever runs the tests.
        .env("MLC_TUNING_DB", dir.join("no-tuning-db.jsonl"))
        .output()
        .expect("mlc runs")
}

/// `mlc check ... --json`: the exit code and the report (None when the
/// command refused its input).
fn check(args: &[&str], dir: &Path) -> (Option<i32>, Option<Value>, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = mlc(&all, dir);
    let report = serde_json::from_slice(&o.stdout).ok();
    (
        o.status.code(),
        report,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Each budget's verdict in a report, as (budget, pass).
fn verdicts(r: &Value) -> Vec<(String, bool)> {
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["budget"].as_str().unwrap().to_string(),
                x["pass"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn budgets_pass_and_fail_with_their_exit_codes() {
    let dir = common::scratch("mlc-check", "table");
    let cnn = fixture("digits/cnn.onnx");
    let mlp = fixture("digits/mlp.onnx");
    let eval = fixture("digits/eval_cnn.npz");
    let size = std::fs::metadata(&cnn).unwrap().len();
    let (above, below) = ((size + 1).to_string(), (size - 1).to_string());
    type Case<'a> = (&'a str, Vec<&'a str>, i32, Vec<(&'a str, bool)>);
    let cases: Vec<Case> = vec![
        (
            "size holds",
            vec![&cnn, "--max-size", &above],
            0,
            vec![("max-size", true)],
        ),
        (
            "size broken",
            vec![&cnn, "--max-size", &below],
            3,
            vec![("max-size", false)],
        ),
        (
            "latency holds",
            vec![&cnn, "--max-latency-ms", "10000", "--rounds", "5"],
            0,
            vec![("max-latency-ms", true)],
        ),
        (
            "latency broken",
            vec![&cnn, "--max-latency-ms", "0.000001", "--rounds", "5"],
            3,
            vec![("max-latency-ms", false)],
        ),
        (
            // The same model against itself: any verdict but PASS is noise
            // mistaken for a regression.
            "A/A regression",
            vec![
                &cnn,
                "--baseline",
                &cnn,
                "--max-regression",
                "5%",
                "--threads",
                "1",
            ],
            0,
            vec![("max-regression", true)],
        ),
        (
            "accuracy holds",
            vec![&cnn, "--min-accuracy", "0.98", "--eval", &eval],
            0,
            vec![("min-accuracy", true)],
        ),
        (
            "accuracy broken",
            vec![&cnn, "--min-accuracy", "0.995", "--eval", &eval],
            3,
            vec![("min-accuracy", false)],
        ),
        (
            "agreement with itself",
            vec![
                &cnn,
                "--min-cosine",
                "0.9999",
                "--reference",
                &cnn,
                "--data",
                &eval,
            ],
            0,
            vec![("min-cosine", true)],
        ),
        (
            "two budgets, one broken",
            vec![
                &cnn,
                "--max-size",
                &above,
                "--min-accuracy",
                "0.995",
                "--eval",
                &eval,
            ],
            3,
            vec![("max-size", true), ("min-accuracy", false)],
        ),
    ];
    for (what, args, code, want) in cases {
        let (got_code, report, err) = check(&args, &dir);
        assert_eq!(got_code, Some(code), "{what}: {err}");
        let r = report.unwrap_or_else(|| panic!("{what}: no report ({err})"));
        let want: Vec<(String, bool)> = want.iter().map(|(b, p)| (b.to_string(), *p)).collect();
        assert_eq!(verdicts(&r), want, "{what}: {r}");
    }
    // The text form: one line per budget, then the count.
    let o = mlc(&["check", &cnn, "--max-size", &below], &dir);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("FAIL  ")),
        "{out}"
    );
    assert!(out.contains("check: 0 of 1 budgets passed"), "{out}");

    // Bad input is exit code 2, before anything is measured.
    let unlabeled = fixture("digits/calib_mlp.npz");
    let bad: Vec<(&str, Vec<&str>)> = vec![
        ("no budget", vec![&cnn]),
        ("accuracy without data", vec![&cnn, "--min-accuracy", "0.9"]),
        (
            "unlabeled data",
            vec![&mlp, "--min-accuracy", "0.9", "--eval", &unlabeled],
        ),
        (
            "missing model",
            vec!["/nonexistent/model.onnx", "--max-size", "1MB"],
        ),
        (
            "regression without baseline",
            vec![&cnn, "--max-regression", "5%"],
        ),
        ("bad size", vec![&cnn, "--max-size", "lots"]),
    ];
    for (what, args) in bad {
        let (code, _, err) = check(&args, &dir);
        assert_eq!(code, Some(2), "{what}: {err}");
        // One error line (clap adds a hint to its own).
        assert!(err.starts_with("error: "), "{what}: {err}");
    }
}

#[test]
fn a_budget_file_with_several_models_and_junit_output() {
    let dir = common::scratch("mlc-check", "file");
    let budget = dir.join("mlc-budget.toml");
    let cnn_size = std::fs::metadata(fixture("digits/cnn.onnx")).unwrap().len();
    std::fs::write(
        &budget,
        format!(
            "threads = 1\n\
             [[model]]\npath = \"{cnn}\"\nmax-size = {big}\nmin-accuracy = 0.98\neval = \"{eval}\"\n\
             [[model]]\npath = \"{mlp}\"\nmax-size = \"10KB\"\n",
            cnn = fixture("digits/cnn.onnx"),
            big = cnn_size,
            eval = fixture("digits/eval_cnn.npz"),
            mlp = fixture("digits/mlp.onnx"),
        ),
    )
    .unwrap();
    let junit = dir.join("check.xml");
    let b = budget.display().to_string();
    let j = junit.display().to_string();
    let html = dir.join("check.html");
    let h = html.display().to_string();
    let (code, r, err) = check(&["--budget", &b, "--junit", &j, "--html", &h], &dir);
    assert_eq!(code, Some(3), "{err}");
    let r = r.unwrap();
    // The HTML page: every verdict, and the plot of value over limit.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("2 of 3 budgets passed") && page.contains("FAIL"),
        "{page}"
    );
    assert_eq!(page.matches("class=\"mark\"").count(), 3, "{page}");
    assert_eq!(
        verdicts(&r),
        vec![
            ("max-size".to_string(), true),
            ("min-accuracy".to_string(), true),
            ("max-size".to_string(), false)
        ]
    );
    assert_eq!(
        (r["passed"].as_u64(), r["failed"].as_u64()),
        (Some(2), Some(1))
    );

    // One model of the file, a flag added to its entry.
    let cnn = fixture("digits/cnn.onnx");
    let (code, r, err) = check(&[&cnn, "--budget", &b, "--max-size", "1KB"], &dir);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(verdicts(&r.unwrap())[0], ("max-size".to_string(), false));

    // A malformed file and an unknown key are bad input.
    for text in [
        "[[model]]\npath = 3\n",
        "[[model]]\npath = \"a.onnx\"\nmax-sise = 1\n",
    ] {
        std::fs::write(&budget, text).unwrap();
        let (code, _, err) = check(&["--budget", &b], &dir);
        assert_eq!(code, Some(2), "{text}: {err}");
    }

    // The JUnit file, read by a JUnit parser.
    let Some(py) = common::venv_python("reading mlc check's JUnit XML with junitparser") else {
        return;
    };
    let o = Command::new(py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/junit_read.py"))
        .arg(&junit)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let x: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (x["tests"].as_u64(), x["failures"].as_u64()),
        (Some(3), Some(1)),
        "{x}"
    );
    let suites = x["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 2, "{x}");
    assert_eq!(suites[1]["failed"].as_array().unwrap().len(), 1, "{x}");
    assert!(
        suites[1]["failed"][0]
            .as_str()
            .unwrap()
            .ends_with("max-size"),
        "{x}"
    );
}

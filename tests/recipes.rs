//! Pipeline recipes: the built-in ones load, and a recipe naming an unknown
//! pass or parameter is refused at load time with one line naming it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use mlc::transform::recipe::{Recipe, Step, BUILTIN};

/// A fresh, empty directory for one test case, removed when it ends.
fn scratch(case: &str) -> common::Scratch {
    common::scratch("mlc-recipes", case)
}

#[test]
fn builtin_recipes_load_and_match_the_files() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in BUILTIN {
        let builtin = Recipe::resolve(name).unwrap();
        let file = Recipe::load(&repo.join("passes").join(format!("{name}.toml"))).unwrap();
        assert_eq!(builtin, file, "{name}");
        assert_eq!(builtin.name, *name);
    }
    let o2 = Recipe::resolve("O2").unwrap();
    assert!(o2.steps.iter().any(|s| matches!(s, Step::Fixpoint { .. })));
}

#[test]
fn unknown_pass_is_refused_with_its_name() {
    let err = Recipe::parse("[[step]]\npass = \"fold-everything\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown pass 'fold-everything'"), "{err}");
    let err = Recipe::parse(
        "[[step]]\nfixpoint = [{ pass = \"dce\" }, { pass = \"nope\" }]\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown pass 'nope'"), "{err}");
}

#[test]
fn unknown_parameter_and_keys_are_refused() {
    let err = Recipe::parse("[[step]]\npass = \"dce\"\nparams = { speed = 11 }\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no parameter 'speed'"), "{err}");
    let err = Recipe::parse("[[step]]\npas = \"dce\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pas"), "{err}");
    let err = Recipe::parse(
        "[[step]]\nfixpoint = [{ pass = \"dce\" }]\nmax_iterations = 0\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_iterations"), "{err}");
}

#[test]
fn cli_refuses_a_recipe_with_an_unknown_pass_in_one_line() {
    let dir = scratch("cli");
    let recipe = dir.join("bad.toml");
    std::fs::write(
        &recipe,
        "[[step]]\npass = \"dce\"\n\n[[step]]\npass = \"make-it-fast\"\n",
    )
    .unwrap();
    let out_file = dir.join("out.mlc");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp/model.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args([
            "compile",
            model.to_str().unwrap(),
            "-o",
            out_file.to_str().unwrap(),
            "--pipeline",
        ])
        .arg(&recipe)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown pass 'make-it-fast'"), "{stderr}");
    assert!(!out_file.exists());
}

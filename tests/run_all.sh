#!/usr/bin/env bash
# The whole test suite, as README.md gives it: Python environment (for the ONNX
# conformance cases), then every Rust test in release mode (numeric tests are
# much faster optimized).
set -euo pipefail
cd "$(dirname "$0")/.."
# Seconds each step took, printed at the end (the suite must stay well under
# 20 minutes on CI's 2-core machine).
suite_start=$SECONDS
step_start=$SECONDS
timings=()
lap() {
    timings+=("$(printf '%5d s  %s' $((SECONDS - step_start)) "$1")")
    step_start=$SECONDS
}
bash tests/python/setup_venv.sh
bash tests/python/gen_node_cases.sh
lap "python venv and ONNX node cases"
MLC_REQUIRE_CONFORMANCE=1 MLC_REQUIRE_PYTHON=1 cargo test --release --all-targets
lap "cargo test --release (build and run)"
# The conformance test's summary (its stdout is captured when it passes).
echo
echo "ONNX node conformance (full report: target/tmp/onnx_conformance_report.txt):"
grep -E "^(listed ops|onnx node conformance):" target/tmp/onnx_conformance_report.txt
# Which f32 GEMM (AVX2, AVX-512), int8 (AVX2, AVX-VNNI, AVX512-VNNI),
# sparse f32 (AVX2, AVX-512) and sparse int8 (AVX2, AVX-VNNI, AVX512-VNNI)
# kernel paths ran natively here, and which this CPU lacks.
cat target/tmp/f32_kernels.txt
cat target/tmp/int8_kernels.txt
cat target/tmp/sparse_kernels.txt
cat target/tmp/qsparse_kernels.txt
# Corpus of real architectures (fixtures/corpus/README.md): a fixed CI sample
# through mlc run / O2 / int8; fails only when an id listed in
# fixtures/corpus/expected_pass.txt fails (`--all` runs every model).
echo
py="$(bash tests/python/setup_venv.sh)"
"$py" tests/python/corpus_run.py
lap "corpus sample"
# Hostile input corpus (README.md, "Hostile input corpus"): a fixed sample of
# malformed models, bundles and inputs through inspect/run/compile/compress;
# fails only on an outcome not listed in tests/hostile_known.txt.
echo
py="$(bash tests/python/setup_venv.sh)"
"$py" tests/python/hostile_run.py
lap "hostile input sample"
# The readers of untrusted bytes (ONNX loader, bundle reader, .npy/.npz
# readers) on seeded mutants of the fixtures: tests/mutations.rs, run above
# with the other tests. Coverage-guided fuzzing (cargo fuzz) needs a build
# of its own, which took as long as the whole test build; run it apart with
# tests/fuzz/run.sh.
echo
cat target/tmp/mutations/{onnx_load,bundle_read,npy_read}.txt
echo "libFuzzer (tests/fuzz/run.sh): skipped: not part of the suite (its own build of every crate); run it apart"
# The CI gate example of docs/ci.md, its own script run as it is.
echo
echo "CI gate example (docs/examples/ci-gate.sh):"
MLC=target/release/mlc bash docs/examples/ci-gate.sh
lap "CI gate example"
# The HTML reports (compress, tune, check, bench --compare) rendered in
# headless Chromium (Debian's chromium, installed when missing; "skipped:
# <reason>" where it cannot be): no console message, every plot drew.
# Bounded: 90 s a Chromium run, 10 min the step.
echo
echo "HTML reports in headless Chromium (tests/python/html_render.py):"
py="$(bash tests/python/setup_venv.sh)"
timeout 600 "$py" tests/python/html_render.py --python "$py" --timeout 90
lap "HTML reports in headless Chromium"
# aarch64 under qemu (tests/aarch64/run.sh): cross build from Debian
# packages (installed when missing), the kernel tests on NEON and
# NEON + dotprod, every fixture and the int8 digits bundles against x86.
echo
if [ "${MLC_SKIP_AARCH64:-0}" = 1 ]; then
    echo "aarch64 under qemu: skipped (MLC_SKIP_AARCH64=1)"
else
    bash tests/aarch64/run.sh
fi
lap "aarch64 under qemu"
echo
echo "suite steps:"
printf '%s\n' "${timings[@]}"
echo "suite total: $((SECONDS - suite_start)) s"

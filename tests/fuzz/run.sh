#!/usr/bin/env bash
# Fuzzes mlc's readers of untrusted bytes with cargo fuzz (libFuzzer, no
# sanitizer: runs on the stable toolchain), seeded from the fixtures:
#   onnx_load    the ONNX loader (import, inference, verifier)
#   bundle_read  the .mlc bundle reader
#   npy_read     the .npy and .npz readers
#
#   bash tests/fuzz/run.sh [all|TARGET...] [--seconds N]   (default: all, 60 s each)
#
# FUZZ_SEED=N fixes libFuzzer's random seed, for a repeatable run; unset,
# every run explores anew. (The test suite does not run this script: it runs
# tests/mutations.rs, seeded mutants of the same seeds through the same
# readers, within its own build.)
# Installs cargo-fuzz when missing. Seed corpora are made under
# target/fuzz-corpus/<target>/ (fixture models, bundles mlc writes from them,
# fixture .npy/.npz files); what libFuzzer finds is added there. A crash
# stops the run with libFuzzer's report and the reproducer under
# tests/fuzz/artifacts/<target>/. Ends with one line per target: executions,
# seconds, and "ok" or "CRASH".
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=60
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        all) shift ;;
        *) targets+=("$1"); shift ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(onnx_load bundle_read npy_read)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
cargo build --release --bin mlc --quiet
mlc=target/release/mlc
corpus=target/fuzz-corpus
mkdir -p "$corpus"/{onnx_load,bundle_read,npy_read}
for f in fixtures/*/model.onnx fixtures/digits/*.onnx; do
    cp "$f" "$corpus/onnx_load/$(echo "$f" | tr / _)"
done
if [[ ! -f "$corpus/bundle_read/mlp.O2.mlc" ]]; then
    tmp="$(mktemp -d)"
    "$mlc" compile fixtures/mlp/model.onnx -o "$corpus/bundle_read/mlp.O2.mlc" >/dev/null
    "$mlc" compile fixtures/cnn/model.onnx --pipeline O0 -o "$corpus/bundle_read/cnn.O0.mlc" >/dev/null
    "$mlc" compress fixtures/digits/mlp.onnx --int8 --no-speed-check --latency-runs 0 \
        --no-cache -o "$tmp/mlp.int8.mlc" >/dev/null
    cp "$tmp/mlp.int8.mlc" "$corpus/bundle_read/"
    rm -rf "$tmp"
fi
# A bundle of sparse (pruned) weights, which no CLI command writes yet:
# tests/mutations.rs writes one with the library.
pruned=target/tmp/mutation-seeds/pruned.mlc
[[ -f "$pruned" ]] || cargo test --release --quiet --test mutations bundle_reader >/dev/null || true
[[ -f "$pruned" ]] && cp "$pruned" "$corpus/bundle_read/"
for f in fixtures/*/input_*.npy fixtures/digits/*.npz; do
    cp "$f" "$corpus/npy_read/$(echo "$f" | tr / _)"
done

summary=()
status=0
for t in "${targets[@]}"; do
    log="target/fuzz-$t.log"
    start=$SECONDS
    if cargo fuzz run --fuzz-dir tests/fuzz -s none -O "$t" "$corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -seed="${FUZZ_SEED:-0}" \
        >"$log" 2>&1; then
        verdict=ok
    else
        verdict=CRASH
        status=1
        tail -40 "$log"
    fi
    execs=$(grep -E "stat::number_of_executed_units" "$log" | awk '{print $2}' | tail -1)
    summary+=("fuzz $t: ${execs:-?} executions in $((SECONDS - start)) s: $verdict")
done
printf '%s\n' "${summary[@]}"
exit $status

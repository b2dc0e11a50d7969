#!/usr/bin/env bash
# The suite's aarch64 step (tests/run_all.sh), all under qemu-user:
#   1. cross-builds mlc and the library's unit tests (tests/aarch64/build.sh);
#   2. runs the kernel tests of the f32 GEMM, convolutions and sparse
#      products and of the int8 GEMM, convolutions and sparse products (each
#      over every aarch64 feature set the emulated CPU has: portable, NEON,
#      NEON + dotprod);
#   3. runs every model fixture and the int8 digits bundles with the aarch64
#      and the x86_64 mlc and compares them (tests/aarch64/fixtures.py);
# then prints one summary line. Timings under emulation mean nothing: this
# checks correctness only.
#
# Needs the native release build of mlc (target/release/mlc; built here if
# missing) and the test venv (tests/python/setup_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
eval "$(bash tests/aarch64/build.sh --env)"
export CARGO_TARGET_DIR="${MLC_AARCH64_TARGET_DIR:-target/cross-aarch64}"
mkdir -p target/tmp
build_log=target/tmp/aarch64_build.log
if ! bash tests/aarch64/build.sh --tests >"$build_log" 2>&1; then
    tail -40 "$build_log"
    echo "aarch64: the cross build failed (log: $build_log)" >&2
    exit 1
fi
built=$((SECONDS - start))

# 2. The kernel modules' unit tests, through the qemu runner.
rm -f target/tmp/f32_kernels.aarch64.txt target/tmp/int8_kernels.aarch64.txt
test_log=target/tmp/aarch64_kernel_tests.log
if ! cargo test --release --locked --no-default-features --target aarch64-unknown-linux-gnu --lib -- \
    kernels::cpu::gemm:: kernels::cpu::conv:: kernels::cpu::winograd:: \
    kernels::cpu::linalg:: kernels::cpu::qgemm:: kernels::cpu::qconv:: \
    kernels::cpu::sparse:: kernels::cpu::qsparse:: \
    >"$test_log" 2>&1 </dev/null; then
    grep -E "^test .* FAILED|panicked|^failures:" -A3 "$test_log" | head -60
    echo "aarch64: kernel tests failed under qemu (log: $test_log)" >&2
    exit 1
fi
passed="$(grep -oE "test result: ok\. [0-9]+ passed" "$test_log" | grep -oE "[0-9]+" | head -1)"
paths() { sed -E 's/^[^:]*: ([^;]*);.*/\1/' "$1"; }
f32_paths="$(paths target/tmp/f32_kernels.aarch64.txt)"
int8_paths="$(paths target/tmp/int8_kernels.aarch64.txt)"
tested=$((SECONDS - start))

# 3. Fixtures and int8 bundles, aarch64 against x86_64.
cargo_native() { env -u RUSTC -u CARGO_TARGET_DIR cargo "$@"; }
[ -x target/release/mlc ] || cargo_native build --release --locked --bin mlc
py="$(bash tests/python/setup_venv.sh)"
fixtures="$("$py" tests/aarch64/fixtures.py --x86 target/release/mlc \
    --arm "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/mlc" \
    --qemu "$MLC_QEMU_AARCH64" --work target/tmp/aarch64-fixtures)" || {
    echo "$fixtures"
    exit 1
}
echo "aarch64 under qemu: $passed kernel tests passed (f32: $f32_paths; int8: $int8_paths)"
echo "$fixtures"
grep -h "skipped: CPU lacks" target/tmp/f32_kernels.aarch64.txt target/tmp/int8_kernels.aarch64.txt |
    sed 's/^/aarch64 under qemu: /' || true
echo "aarch64 step: $((SECONDS - start)) s (cross build $built s, kernel tests $((tested - built)) s, fixtures $((SECONDS - tested)) s)"

#!/usr/bin/env bash
# Builds mlc for aarch64-unknown-linux-gnu on an x86_64 Debian machine from
# Debian packages alone, and (with --tests) the aarch64 test binaries.
#
#   tests/aarch64/build.sh            # installs what is missing, builds the aarch64 mlc
#   tests/aarch64/build.sh --tests    # also the kernel unit tests (cargo test --no-run)
#   tests/aarch64/build.sh --env      # prints the environment lines (RUSTC, linker, runner, the
#                                     # emulator line as MLC_QEMU_AARCH64) and exits
#
# CARGO_TARGET_DIR (default target/cross-aarch64) is where the build goes:
# $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/mlc.
#
# Packages (installed only when missing; needs root or sudo): Debian's
# rustc-web toolchain (/usr/bin/rustc, used through RUSTC=), its arm64
# standard library, the aarch64 cross gcc (the linker) and libc, and qemu-user
# to run the result (see QEMU below for the exact line).
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGET=aarch64-unknown-linux-gnu
# The emulator line. libstd-rust-web-dev:arm64 pulls in Debian's own arm64
# libc (libc6:arm64, /lib/aarch64-linux-gnu), a newer build than the cross
# toolchain's (/usr/aarch64-linux-gnu/lib); with -L alone the cross loader
# finds the newer libc.so.6 first, and the mismatched pair loops forever in
# the first pthread_create. LD_LIBRARY_PATH keeps loader and libc together.
QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib"
PKGS=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)

env_lines() {
    cat <<EOT
export MLC_QEMU_AARCH64="$QEMU"
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU"
EOT
}

tests=0
for a in "$@"; do
    case "$a" in
        --tests) tests=1 ;;
        --env) env_lines; exit 0 ;;
        *) echo "usage: $0 [--tests|--env]" >&2; exit 2 ;;
    esac
done

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v cargo >/dev/null || PKGS+=(cargo-web)
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "aarch64: installing ${missing[*]}" >&2
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        as_root dpkg --add-architecture arm64
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

eval "$(env_lines)"
echo "aarch64: $($RUSTC --version), building with cargo $(cargo --version | cut -d' ' -f2)" >&2
# Apart from the native build: host artifacts (build scripts) come from
# another rustc here.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cross-aarch64}"
export CARGO_TARGET_DIR
# Without default features: no candle (distillation), which would be most
# of this build's time, and which the kernels under test do not use.
if [ "$tests" = 1 ]; then
    # The unit tests and the mlc binary need the library built twice (with
    # and without cfg(test)). One cargo run builds both at once (`--bin mlc`
    # here builds the binary's test harness, which links the plain library),
    # keeping the second core busy where one crate's front end runs on a
    # single thread (2-vCPU Xeon, fresh clones: 212 s against 415 s one
    # after the other, though the host's speed varied between those runs).
    cargo test --release --locked --no-default-features --target "$TARGET" --lib --bin mlc --no-run
fi
cargo build --release --locked --no-default-features --target "$TARGET" --bin mlc
echo "aarch64: built $CARGO_TARGET_DIR/$TARGET/release/mlc; run it with $QEMU" >&2

#!/usr/bin/env bash
# The whole test suite, as README.md gives it: Python environment (for the ONNX
# conformance cases), then every Rust test in release mode (numeric tests are
# much faster optimized).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/python/setup_venv.sh
bash tests/python/gen_node_cases.sh
MLC_REQUIRE_CONFORMANCE=1 cargo test --release --all-targets

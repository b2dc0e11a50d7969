#!/usr/bin/env bash
# Regenerates the ONNX node cases if needed, then rewrites
# tests/onnx_node_manifest.txt to list every case mlc passes now (keeping the
# header comment and per-case notes). Review the diff before committing:
# cases that stopped passing are dropped from the manifest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
"$here/gen_node_cases.sh"
cd "$repo"
MLC_WRITE_MANIFEST=1 cargo test --test onnx_conformance onnx_node_conformance -- --nocapture
git --no-pager diff --stat -- tests/onnx_node_manifest.txt || true

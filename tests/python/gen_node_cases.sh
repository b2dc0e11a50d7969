#!/usr/bin/env bash
# Makes sure tests/onnx-node-cases/ holds the ONNX node conformance cases for
# the pinned onnx version: sets up the test venv (tests/python/setup_venv.sh),
# then generates the cases only when they are missing or were made by another
# onnx version. Takes a few seconds; about 56 MB on disk (ignored by git).
#   tests/python/gen_node_cases.sh [--force]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/tests/onnx-node-cases"

py="$("$here/setup_venv.sh")"
want="$("$py" -c 'import onnx; print(onnx.__version__)')"
have="$(cat "$out/.onnx-version" 2>/dev/null || true)"

if [[ "${1:-}" != "--force" && "$have" == "$want" && -d "$out/node" ]]; then
    echo "gen_node_cases: $out is up to date (onnx $want)" >&2
    exit 0
fi
"$py" -W ignore "$here/gen_node_cases.py" "$out"

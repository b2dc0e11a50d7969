#!/usr/bin/env bash
# The model gate of docs/examples/model-gate.yml, as one script (the test
# suite runs it, so the example cannot rot): build mlc, compress the digits
# CNN to int8, then gate it with `mlc check` against
# docs/examples/mlc-budget.toml, writing JUnit XML for the CI to render.
#
#   bash docs/examples/ci-gate.sh            # builds mlc (release) first
#   MLC=target/release/mlc bash docs/examples/ci-gate.sh
#
# gate/ (in the repository) receives the compressed model, its reports and
# check.xml, where the budget file names them. Exit code: mlc check's (0
# pass, 3 a budget failed, 2 bad input, 1 internal error).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${MLC:-}" ]; then
    cargo build --release --locked
    MLC=target/release/mlc
fi
mkdir -p gate
"$MLC" compress fixtures/digits/cnn.onnx --int8 \
    --calib fixtures/digits/calib_cnn.npz --eval fixtures/digits/eval_cnn.npz \
    -o gate/cnn.int8.mlc
"$MLC" check --budget docs/examples/mlc-budget.toml --junit gate/check.xml

#!/usr/bin/env bash
# Creates (or refreshes) the test virtual environment <repo>/.venv from
# tests/python/requirements.txt and prints the path of its python on stdout.
#
# The venv is rebuilt only when it is missing or when requirements.txt changed
# since it was built (a SHA-256 stamp is kept in .venv/.requirements.sha256).
# Needs only python3 (3.11) with pip and venv; packages come from PyPI.
#   MLC_BASE_PYTHON   interpreter to build the venv with (default: python3)
#   MLC_VENV          where to put the venv (default: <repo>/.venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
req="$here/requirements.txt"
venv="${MLC_VENV:-$repo/.venv}"
base="${MLC_BASE_PYTHON:-python3}"
stamp="$venv/.requirements.sha256"

if ! command -v "$base" >/dev/null 2>&1; then
    echo "setup_venv: '$base' not found; install Python 3.11 or set MLC_BASE_PYTHON" >&2
    exit 1
fi

want="$("$base" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$req")"
py="$venv/bin/python"

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$py"
    exit 0
fi

echo "setup_venv: building $venv from $req ..." >&2
rm -rf "$venv"
if ! "$base" -m venv "$venv" >&2; then
    echo "setup_venv: '$base -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    rm -rf "$venv"
    exit 1
fi
"$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" >&2
# Fail now, not in the middle of a test run, if an import is broken.
"$py" -c 'import numpy, onnx, onnxruntime' >&2
echo "$want" > "$stamp"
echo "setup_venv: ready" >&2
echo "$py"

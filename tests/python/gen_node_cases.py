"""Writes the ONNX backend node conformance cases into tests/onnx-node-cases/.

Run with the test venv's python (tests/python/setup_venv.sh prints it), or use
tests/python/gen_node_cases.sh, which does both and skips the work when the
cases are already there for the installed onnx version.

Layout (the same as onnx's own backend test data):
    <out>/node/<case>/model.onnx
    <out>/node/<case>/test_data_set_0/input_<i>.pb, output_<i>.pb
The cases and their expected outputs come from the generators shipped in the
onnx package (onnx.backend.test.case.node); serialization reuses
onnx.backend.test.cmd_tools.generate_data, pointed at the node cases instead
of the model cases. A stamp file <out>/.onnx-version records the onnx version
and is written last, so an interrupted run is redone next time.

Needs: onnx, numpy (pinned in tests/python/requirements.txt).
Usage: python gen_node_cases.py [OUT_DIR]   (default: <repo>/tests/onnx-node-cases)
"""
import argparse
import os
import shutil
import sys
import time
import types

import numpy as np
import onnx
import onnx.backend.test.case.node as node_cases
from onnx.backend.test import cmd_tools

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "onnx-node-cases")


def main() -> int:
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
    stamp = os.path.join(out, ".onnx-version")
    t0 = time.time()
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    # Some generators draw random inputs; fix the seed so reruns are identical.
    np.random.seed(0)
    cases = node_cases.collect_testcases()
    cmd_tools.model_test = types.SimpleNamespace(collect_testcases=lambda: cases)
    cmd_tools.generate_data(argparse.Namespace(output=out))
    with open(stamp, "w") as f:
        f.write(onnx.__version__ + "\n")
    n = len(os.listdir(os.path.join(out, "node")))
    print(f"gen_node_cases: {n} node cases (onnx {onnx.__version__}) in {out} "
          f"({time.time() - t0:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs an ONNX model with ONNX Runtime on prepared inputs (used by
tests/onnx_export.rs to check mlc's ONNX export).

    ort_check.py MODEL CASE_DIR [CASE_DIR ...]
    ort_check.py --batch LIST_FILE

Each CASE_DIR holds the model's inputs as `input_<k>.pb` (a serialized ONNX
TensorProto) or `input_<k>.npy`, k = 0.. in the order of the model's graph
inputs. The outputs are written to the same folder as `ort_output_<k>.pb`,
k in the order of the graph outputs. In batch mode every line of LIST_FILE is
`MODEL<TAB>CASE_DIR`; a model that fails is reported and the others still run.

Before running, the model goes through `onnx.checker.check_model` with
`full_check=True` (strict type and shape inference). Exit status: 0 when
everything ran, 1 when a model failed (the reason on stderr, one line per
failure: `FAIL <model> <case_dir>: <message>`), 2 on bad usage.
"""

import os
import sys
import warnings

warnings.filterwarnings("ignore")

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.numpy_helper as nh  # noqa: E402
import onnxruntime as ort  # noqa: E402


def read_input(case_dir, k):
    pb = os.path.join(case_dir, f"input_{k}.pb")
    if os.path.exists(pb):
        t = onnx.TensorProto()
        with open(pb, "rb") as f:
            t.ParseFromString(f.read())
        return nh.to_array(t)
    npy = os.path.join(case_dir, f"input_{k}.npy")
    if os.path.exists(npy):
        return np.load(npy)
    raise FileNotFoundError(f"{case_dir}: no input_{k}.pb or input_{k}.npy")


def load_session(model_path):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Keep ORT's graph rewrites from changing the numerics under test.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


# ORT hands back tensors of these types as raw integers of the same width.
RAW_OUTPUTS = {
    "tensor(bfloat16)": ml_dtypes.bfloat16,
    "tensor(float8e4m3fn)": ml_dtypes.float8_e4m3fn,
    "tensor(float8e4m3fnuz)": ml_dtypes.float8_e4m3fnuz,
    "tensor(float8e5m2)": ml_dtypes.float8_e5m2,
    "tensor(float8e5m2fnuz)": ml_dtypes.float8_e5m2fnuz,
}


def run_case(sess, case_dir):
    feeds = {}
    for k, inp in enumerate(sess.get_inputs()):
        feeds[inp.name] = read_input(case_dir, k)
    outs = sess.run(None, feeds)
    for k, (meta, value) in enumerate(zip(sess.get_outputs(), outs)):
        value = np.asarray(value)
        raw = RAW_OUTPUTS.get(meta.type)
        if raw is not None and value.dtype != raw and value.dtype.itemsize == np.dtype(raw).itemsize:
            value = value.view(raw)
        t = nh.from_array(value, meta.name)
        with open(os.path.join(case_dir, f"ort_output_{k}.pb"), "wb") as f:
            f.write(t.SerializeToString())


def main(argv):
    if len(argv) >= 2 and argv[0] == "--batch":
        with open(argv[1]) as f:
            pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    elif len(argv) >= 2:
        pairs = [(argv[0], d) for d in argv[1:]]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    failed = 0
    current = (None, None)  # the last model's path and session (or error)
    for model, case_dir in pairs:
        try:
            if current[0] != model:
                try:
                    current = (model, load_session(model))
                except Exception as e:
                    current = (model, e)
            if isinstance(current[1], Exception):
                raise current[1]
            run_case(current[1], case_dir)
        except Exception as e:  # report every failure, keep going
            msg = " ".join(str(e).split())
            print(f"FAIL {model} {case_dir}: {type(e).__name__}: {msg}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

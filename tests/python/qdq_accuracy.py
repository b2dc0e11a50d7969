"""Top-1 accuracy (and agreement) of an ONNX model in ONNX Runtime on a
labeled .npz (used by tests/compress.rs to check mlc's QDQ ONNX export).

    qdq_accuracy.py MODEL.onnx DATA.npz

DATA.npz holds the model's inputs keyed by input name (first axis indexing
samples) and an integer `labels` array. Samples run one at a time (batch 1,
as mlc's report measures them). Prints one JSON object: {"top1": ..,
"samples": ..}. Exit 1 when the model does not load or run.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    model_path, data_path = sys.argv[1:]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    data = np.load(data_path)
    labels = data["labels"]
    names = [i.name for i in sess.get_inputs()]
    correct = 0
    for s in range(len(labels)):
        feed = {n: data[n][s : s + 1] for n in names}
        logits = sess.run(None, feed)[0]
        correct += int(np.argmax(logits.reshape(-1)) == labels[s])
    print(json.dumps({"top1": correct / len(labels), "samples": int(len(labels))}))


if __name__ == "__main__":
    main()

# ONNX Runtime worker of `mlc bench --compare --ort` (embedded in the mlc
# binary and run as `python -c`; see src/api/compare.rs).
#
#   python -c SCRIPT MODEL.onnx INPUTS.npz THREADS
#
# Loads MODEL with ONNX Runtime (intra-op threads = THREADS, inter-op 1,
# sequential execution, all graph optimizations, as benches/compare.py does)
# and the inputs (arrays named after the model's inputs), runs it once, then
# answers requests, one a line on stdin, with one JSON object a line on
# stdout:
#   warmup N   -> {"ok": true}              N untimed runs
#   run N      -> {"ms": [...]}             N timed runs (perf_counter)
#   peak       -> {"peak_rss_bytes": B}     the process's peak resident set
# End of input ends it. The first line it writes is {"ready": true,
# "memory_bytes": B, "version": V} (B: resident memory added by creating
# the session and one run) or {"error": "..."} before exiting with 1.
import json
import sys
import time


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rss(key):
    """Bytes of a /proc/self/status field (VmRSS, VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    model, inputs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        say({"error": f"cannot import onnxruntime/numpy: {e}"})
        return 1
    try:
        with np.load(inputs) as z:
            feeds = {k: z[k] for k in z.files}
        before = rss("VmRSS")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in feeds]
        if missing:
            say({"error": f"inputs {missing} missing from the inputs file (it has {sorted(feeds)})"})
            return 1
        feeds = {n: feeds[n] for n in names}
        sess.run(None, feeds)
        after = rss("VmRSS")
    except Exception as e:  # noqa: BLE001 - reported to mlc as one line
        say({"error": f"{type(e).__name__}: {e}".replace("\n", " ")})
        return 1
    say({
        "ready": True,
        "version": ort.__version__,
        "memory_bytes": None if before is None or after is None else max(0, after - before),
    })
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "warmup":
            for _ in range(int(parts[1])):
                sess.run(None, feeds)
            say({"ok": True})
        elif parts[0] == "run":
            ms = []
            for _ in range(int(parts[1])):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                ms.append((time.perf_counter() - t0) * 1e3)
            say({"ms": ms})
        elif parts[0] == "peak":
            say({"peak_rss_bytes": rss("VmHWM")})
        else:
            say({"error": f"unknown request {parts[0]!r}"})
            return 1
    return 0


sys.exit(main())

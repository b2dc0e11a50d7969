#!/usr/bin/env python3
"""Side-by-side latency of mlc and ONNX Runtime on the benchmark models.

    .venv/bin/python benches/compare.py [--models-dir benches/models/out]
        [--models resnet18,mobilenetv2,bert] [--threads 1,2] [--batches 1,8]
        [--rounds 5] [--runs 10] [--warmup 3] [--mlc target/release/mlc]
        [--dim seq=128] [--ort-only] [--verify] [--json results.json]
        [--int8 [--int8-dir DIR] [--calib-samples 16] [--calib-seed 1]]

For every model, thread count and batch size the two engines run in
alternating rounds (ORT then mlc, then mlc then ORT, ...), each round being
`--runs` timed runs after `--warmup` untimed ones, so slow drift of the
machine (other load, frequency, temperature) hits both alike. Each round gives
a median latency; the table shows, per engine, the median of the round medians
with their min-max, and the ratio mlc/ORT of the medians, then of the fastest
rounds (`by min`: on a noisy machine noise only slows a round, so the two
fastest rounds are the steadier comparison). The last lines give
the geometric mean of the ratios over the models at batch 1, per thread count
(the acceptance figure: <= 1.2).

ONNX Runtime runs in a worker process per model (its own peak RSS is then the
model's), with intra_op_num_threads = threads, inter_op_num_threads = 1,
ORT_ENABLE_ALL and sequential execution. mlc runs as
`mlc bench MODEL --threads T --batch B --runs R --warmup W --json [--dim ..]`
once per round and reports its own p50.

With --int8 every round also times two int8 models of each model, in the
same alternation (ORT, mlc, ORT int8, mlc int8, then the reverse):
- ONNX Runtime's own: for a model whose inputs are all floating point
  (images), quantize_static in QDQ format, per-channel, u8 activations / s8
  weights, MinMax calibration on --calib-samples seeded inputs (sample i is
  the batch-1 input of seed --calib-seed + i); for a model with an integer
  input (token ids), quantize_dynamic with per-channel s8 weights;
- mlc's: `mlc compress MODEL --int8 -o MODEL.int8.mlc`, with `--calib
  MODEL.calib.npz` (the same calibration samples, keyed by input name, the
  samples along the first axis) or `--dynamic` as above, then timed by
  `mlc bench` exactly like the f32 model. A binary without `compress` (or
  without its --int8) prints "mlc int8: not available (...)" and the rest is
  still timed.
A second block of the table gives ORT int8 and mlc int8 latencies and the
ratios ORT-int8/ORT-f32, mlc-int8/mlc-f32 and mlc-int8/ORT-int8, with their
geo-means at batch 1. The int8 files go to a temporary folder, or to
--int8-dir, where ORT's int8 models are kept and reused while the source file
and the settings are unchanged (mlc's are always remade).

Inputs are seeded exactly as mlc's `inputs::random_inputs` makes them
(SplitMix64, seed 0): floats uniform in [-1, 1), integer inputs that feed a
Gather (token ids) below the gathered axis' size, other integers 0/1.

Needs numpy and onnxruntime (and onnx for --self-test), all in the test venv:
tests/python/setup_venv.sh.
"""

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODELS = ("resnet18", "mobilenetv2", "bert")
MLC_KEYS = ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "peak_rss_bytes", "threads", "batch")


class CompareError(Exception):
    """A problem the user can fix (missing model, binary without bench, ...)."""


# --------------------------------------------------------------------------
# Seeded inputs, the same as mlc's inputs::random_inputs.
# --------------------------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


class SplitMix64:
    """SplitMix64 as in src/rng.rs, vectorized: draw(n) returns the next n
    outputs as uint64."""

    def __init__(self, seed):
        self.state = np.uint64(seed)

    def draw(self, n):
        with np.errstate(over="ignore"):
            k = np.arange(1, n + 1, dtype=np.uint64)
            z = self.state + k * _GAMMA
            if n:
                self.state = z[-1]
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    def floats(self, n):
        """Uniform in [-1, 1) as f64."""
        return (self.draw(n) >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0

    def below(self, n, bound):
        return (self.draw(n) % np.uint64(max(1, bound))).astype(np.int64)


def _onnx_inputs(path):
    """[(name, elem_type, [dim int or symbol name])] of the graph inputs that
    are not initializers, and {input name: Gather index bound}."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    g = m.graph
    inits = {t.name: list(t.dims) for t in g.initializer}
    ins = []
    for v in g.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        ins.append((v.name, t.elem_type, dims))
    bounds = {}
    for n in g.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in inits:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            shape = inits[n.input[0]]
            if axis < 0:
                axis += len(shape)
            if 0 <= axis < len(shape):
                bounds.setdefault(n.input[1], shape[axis])
    return ins, bounds


def concrete_shape(dims, batch, sym_dims):
    """Leading symbolic dim = batch; other symbols from sym_dims (default 1)."""
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int):
            out.append(d)
        elif i == 0:
            out.append(batch)
        else:
            out.append(sym_dims.get(d, 1))
    return out


def own_dims(path, sym_dims):
    """The entries of `sym_dims` naming a symbolic dim of the ONNX model at
    `path` (mlc refuses a --dim the model does not have)."""
    names = {d for _, _, dims in _onnx_inputs(path)[0] for d in dims if isinstance(d, str)}
    return {k: v for k, v in sym_dims.items() if k in names}


def seeded_inputs(path, batch, sym_dims, seed=0):
    """{name: array} for every graph input of the ONNX model at `path`."""
    from onnx import TensorProto as T

    ins, bounds = _onnx_inputs(path)
    rng = SplitMix64(seed)
    feeds = {}
    for name, et, dims in ins:
        shape = concrete_shape(dims, batch, sym_dims)
        n = int(np.prod(shape, dtype=np.int64))
        if et in (T.FLOAT, T.DOUBLE, T.FLOAT16):
            dt = {T.FLOAT: np.float32, T.DOUBLE: np.float64, T.FLOAT16: np.float16}[et]
            a = rng.floats(n).astype(dt)
        elif et == T.BOOL:
            a = rng.below(n, 2).astype(bool)
        elif et in (T.INT64, T.INT32, T.INT16, T.INT8, T.UINT8):
            dt = {T.INT64: np.int64, T.INT32: np.int32, T.INT16: np.int16, T.INT8: np.int8, T.UINT8: np.uint8}[et]
            a = rng.below(n, bounds.get(name, 2)).astype(dt)
        else:
            raise CompareError(f"{path}: input '{name}' has ONNX element type {et}, which compare.py cannot seed")
        feeds[name] = a.reshape(shape)
    return feeds


# --------------------------------------------------------------------------
# ONNX Runtime worker (one process per model).
# --------------------------------------------------------------------------


def _ort_worker(conn, path, sym_dims, seed, feed_path):
    import resource

    import onnxruntime as ort

    sessions, feeds = {}, {}
    try:
        while True:
            req = conn.recv()
            if req is None:
                break
            threads, batch, runs, warmup = req
            if threads not in sessions:
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Errors only: QDQ models make it warn about every constant
                # that fusion leaves unused.
                so.log_severity_level = 3
                sessions[threads] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            if batch not in feeds:
                feeds[batch] = seeded_inputs(feed_path, batch, sym_dims, seed)
            sess, f = sessions[threads], feeds[batch]
            for _ in range(warmup):
                sess.run(None, f)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, f)
                times.append((time.perf_counter() - t0) * 1e3)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            conn.send(("ok", times, rss))
    except Exception as e:  # reported to the parent, which raises it there
        conn.send(("error", f"{type(e).__name__}: {e}", 0))


class OrtRunner:
    """A persistent ONNX Runtime worker process for one model. Inputs are
    seeded from `feed_path`'s inputs (default: the model itself; the f32
    original for a quantized model, whose token-id Gathers no longer read an
    initializer directly)."""

    def __init__(self, path, sym_dims, seed, feed_path=None):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_ort_worker, args=(child, path, sym_dims, seed, feed_path or path),
                                daemon=True)
        self.proc.start()
        self.path = path

    def round(self, threads, batch, runs, warmup):
        """Latencies in ms of `runs` runs, and the worker's peak RSS."""
        self.conn.send((threads, batch, runs, warmup))
        status, times, rss = self.conn.recv()
        if status != "ok":
            raise CompareError(f"ONNX Runtime failed on {self.path}: {times}")
        return times, rss

    def close(self):
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()


# --------------------------------------------------------------------------
# mlc
# --------------------------------------------------------------------------


def check_mlc(binary):
    """Fails clearly unless `binary` exists and has a `bench` subcommand."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise CompareError(
            f"mlc binary '{binary}' not found; build it with `cargo build --release` "
            "(or pass --mlc PATH, or --ort-only to time ONNX Runtime alone)"
        )
    r = subprocess.run([binary, "bench", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        raise CompareError(
            f"'{binary}' has no 'bench' subcommand (`{binary} bench --help` exited {r.returncode}: "
            f"{(r.stderr or r.stdout).strip().splitlines()[0] if (r.stderr or r.stdout).strip() else 'no output'}); "
            "rebuild it from a checkout that has `mlc bench`, or use --ort-only"
        )


def parse_mlc_json(text):
    """The JSON object `mlc bench --json` printed (the last one on stdout)."""
    start = text.find("{")
    if start < 0:
        raise CompareError(f"mlc bench printed no JSON: {text.strip()[:200]!r}")
    try:
        obj = json.loads(text[start:])
    except json.JSONDecodeError:
        # Something else printed before or after: take the last line that parses.
        obj = None
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if obj is None:
            raise CompareError(f"mlc bench output is not JSON: {text.strip()[:200]!r}")
    missing = [k for k in MLC_KEYS if k not in obj]
    if missing:
        raise CompareError(f"mlc bench JSON lacks {', '.join(missing)}: {json.dumps(obj)[:200]}")
    return obj


def mlc_round(binary, model, threads, batch, runs, warmup, sym_dims, extra=()):
    cmd = [binary, "bench", model, "--threads", str(threads), "--batch", str(batch),
           "--runs", str(runs), "--warmup", str(warmup), "--json", *extra]
    for k, v in sorted(sym_dims.items()):
        cmd += ["--dim", f"{k}={v}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CompareError(f"`{' '.join(cmd)}` exited {r.returncode}: {r.stderr.strip()[-500:]}")
    obj = parse_mlc_json(r.stdout)
    if obj["threads"] != threads or obj["batch"] != batch:
        raise CompareError(
            f"mlc bench ran threads={obj['threads']} batch={obj['batch']}, asked {threads}/{batch}"
        )
    return obj


def mlc_tune(binary, model, threads, batch, budget, db, out, sym_dims):
    """`mlc tune` of `model` at `threads`/`batch` into the database `db`
    (the tuned bundle goes to `out`); returns its JSON report."""
    cmd = [binary, "tune", model, "-o", out, "--threads", str(threads), "--batch", str(batch),
           "--budget", f"{budget}s", "--db", db, "--json"]
    for k, v in sorted(sym_dims.items()):
        cmd += ["--dim", f"{k}={v}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CompareError(f"`{' '.join(cmd)}` exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def mlc_verify(binary, model, threads, sym_dims):
    """`mlc bench --verify` once: the runtime's outputs against the reference
    interpreter (rtol 1e-3, atol 1e-5). Returns its `verify` object; a run
    whose outputs differ exits 1 and still prints the object."""
    cmd = [binary, "bench", model, "--threads", str(threads), "--runs", "1", "--warmup", "0",
           "--verify", "--json"]
    for k, v in sorted(sym_dims.items()):
        cmd += ["--dim", f"{k}={v}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode not in (0, 1) or "{" not in r.stdout:
        raise CompareError(f"`{' '.join(cmd)}` exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return parse_mlc_json(r.stdout)["verify"]


def verify_line(name, v):
    worst = max((o["max_abs_err"] for o in v["outputs"]), default=0.0)
    share = max((o["worst_tolerance_share"] for o in v["outputs"]), default=0.0)
    verdict = "ok" if v["ok"] else "DIFFERS"
    return (f"verify {name}: {verdict} against the reference interpreter "
            f"(max |diff| {worst:.3e}, {share:.3f} of the tolerance rtol {v['rtol']} atol {v['atol']})")


# --------------------------------------------------------------------------
# int8: ONNX Runtime's own quantized models, and mlc compress --int8.
# --------------------------------------------------------------------------

CALIB_SAMPLES = 16
CALIB_SEED = 1  # calibration inputs differ from the timed ones (seed 0)
INT8_METHODS = {
    "static": "ORT quantize_static: QDQ, per-channel, u8 activations / s8 weights, MinMax calibration",
    "dynamic": "ORT quantize_dynamic: s8 weights per-channel, u8 activations quantized at run time",
}


def int8_mode(path):
    """'static' when every graph input is floating point (images: calibrated
    activation scales), 'dynamic' when one is an integer or bool (token ids:
    activations quantized at run time)."""
    from onnx import TensorProto as T

    ins, _ = _onnx_inputs(path)
    if not ins:
        raise CompareError(f"{path}: the model has no graph inputs to quantize for")
    floats = (T.FLOAT, T.DOUBLE, T.FLOAT16, T.BFLOAT16)
    return "static" if all(et in floats for _, et, _ in ins) else "dynamic"


def calib_samples(path, sym_dims, n=CALIB_SAMPLES, seed=CALIB_SEED):
    """n calibration samples, one feed dict per sample: sample i is what
    seeded_inputs (and `mlc bench --seed`) gives at batch 1 with seed + i."""
    return [seeded_inputs(path, 1, sym_dims, seed + i) for i in range(n)]


def calib_arrays(samples):
    """{input name: array whose first axis indexes the samples}: batch-1
    samples are concatenated along their batch axis ([n, 3, 224, 224]);
    inputs without a leading 1 are stacked on a new first axis."""
    out = {}
    for name in samples[0]:
        parts = [s[name] for s in samples]
        if parts[0].ndim >= 1 and parts[0].shape[0] == 1:
            out[name] = np.concatenate(parts, axis=0)
        else:
            out[name] = np.stack(parts, axis=0)
    return out


def write_calib_npz(path, samples):
    """The calibration npz for `mlc compress --calib`: keyed by input name,
    first axis = samples (np.savez, uncompressed)."""
    np.savez(path, **calib_arrays(samples))
    return path


def _calib_reader(samples):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    return Reader()


def ort_quantize(src, dst, mode, samples=None):
    """Writes ONNX Runtime's int8 model of `src` to `dst` (see INT8_METHODS)."""
    import logging

    import onnxruntime as ort
    from onnxruntime import quantization as oq

    if mode == "static" and not samples:
        raise CompareError(f"{src}: static quantization needs calibration samples")
    if mode not in INT8_METHODS:
        raise ValueError(mode)
    # Its advice (a root-logger warning) to run quant_pre_process first is
    # noise here: the models are exported with constant folding, BatchNorm
    # already folded.
    # Calibration sessions warn about every initializer they drop.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        if mode == "dynamic":
            oq.quantize_dynamic(src, dst, per_channel=True, weight_type=oq.QuantType.QInt8)
        else:
            oq.quantize_static(
                src, dst, _calib_reader(samples), quant_format=oq.QuantFormat.QDQ, per_channel=True,
                activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                calibrate_method=oq.CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)
    return dst


def _int8_stamp(src, mode, n, seed, sym_dims):
    st = os.stat(src)
    return {"source": os.path.abspath(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "mode": mode,
            "calib_samples": n if mode == "static" else 0, "calib_seed": seed if mode == "static" else None,
            "dims": dict(sorted(sym_dims.items())) if mode == "static" else {}, "method": INT8_METHODS[mode]}


def prepare_ort_int8(name, src, work, sym_dims, n, seed):
    """ORT's int8 model of `src` in `work` (reused when `work` already holds
    one made from the same file with the same settings: a .json beside it
    records them), and for a static model the calibration npz for mlc.
    Returns {"mode", "ort_model", "calib"}."""
    mode = int8_mode(src)
    dst = os.path.join(work, f"{name}.ort_int8.onnx")
    stamp_path = dst + ".json"
    calib = os.path.join(work, f"{name}.calib.npz") if mode == "static" else None
    stamp = _int8_stamp(src, mode, n, seed, sym_dims)
    try:
        with open(stamp_path) as f:
            fresh = json.load(f) == stamp and os.path.isfile(dst) and (calib is None or os.path.isfile(calib))
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        samples = calib_samples(src, sym_dims, n, seed) if mode == "static" else None
        if calib:
            write_calib_npz(calib, samples)
        ort_quantize(src, dst, mode, samples)
        with open(stamp_path, "w") as f:
            json.dump(stamp, f, indent=1)
    return {"mode": mode, "ort_model": dst, "calib": calib}


def check_mlc_compress(binary):
    """(True, None) when `mlc compress` exists with --int8, else (False, why)."""
    r = subprocess.run([binary, "compress", "--help"], capture_output=True, text=True)
    text = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        if "unrecognized subcommand" in text:
            return False, f"'{binary}' has no 'compress' subcommand"
        first = text.splitlines()[0] if text else "no output"
        return False, f"`{binary} compress --help` exited {r.returncode}: {first}"
    if "--int8" not in text:
        return False, f"`{binary} compress` has no --int8 option"
    return True, None


def mlc_compress_cmd(binary, model, out, mode, calib, sym_dims=None, all_int8=False):
    """The compress command line. Non-batch symbolic dims (seq) are passed on,
    so that compress times its layers and measures latency at the shapes the
    model is benchmarked at; its decisions are made on one thread. With
    `all_int8`, no layer stays f32 for speed (--no-speed-check)."""
    cmd = [binary, "compress", model, "--int8", "-o", out, "--threads", "1"]
    if all_int8:
        cmd.append("--no-speed-check")
    for k, v in sorted((sym_dims or {}).items()):
        cmd += ["--dim", f"{k}={v}"]
    if mode == "dynamic":
        cmd.append("--dynamic")
    elif calib:
        cmd += ["--calib", calib]
    return cmd


def mlc_compress(binary, model, out, mode, calib, sym_dims=None, all_int8=False):
    """Runs `mlc compress MODEL --int8 -o OUT` (--dynamic, or --calib NPZ);
    returns (OUT, None) or (None, why it failed)."""
    cmd = mlc_compress_cmd(binary, model, out, mode, calib, sym_dims, all_int8)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.isfile(out):
        tail = (r.stderr or r.stdout).strip()[-300:] or "no output"
        return None, f"`{' '.join(cmd)}` exited {r.returncode}: {tail}"
    return out, None


# --------------------------------------------------------------------------
# Statistics and the table.
# --------------------------------------------------------------------------


def summarize(round_p50s):
    """median, min, max of the per-round medians (None when there are none)."""
    if not round_p50s:
        return None
    return {"median": statistics.median(round_p50s), "min": min(round_p50s), "max": max(round_p50s)}


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def ratio(row, num="mlc", den="ort", of="median"):
    """row[num] / row[den] of the medians (default mlc / ORT; `of="min"`:
    of the fastest rounds); None when either is missing."""
    d, n = row.get(den), row.get(num)
    if not d or not n or d[of] <= 0:
        return None
    return n[of] / d[of]


def _ratio_cell(q, width):
    return f"{'-' if q is None else f'{q:.2f}':>{width}}"


# The int8 ratios: (label, numerator, denominator).
INT8_RATIOS = (
    ("ORT-int8/ORT-f32", "ort_int8", "ort"),
    ("mlc-int8/mlc-f32", "mlc_int8", "mlc"),
    ("mlc-int8/ORT-int8", "mlc_int8", "ort_int8"),
)


def _ms(x):
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _cell(s):
    if s is None:
        return "-"
    return f"{_ms(s['median'])} ({_ms(s['min'])}-{_ms(s['max'])})"


def _mib(b):
    return "-" if not b else f"{b / 2**20:.0f}"


def render_table(rows):
    """rows: dicts with model, threads, batch, ort/mlc summaries (or None),
    ort_rss/mlc_rss bytes. Returns the table and geo-mean lines."""
    head = (f"{'model':<14}{'thr':>4}{'batch':>6}  {'ORT ms  median (min-max)':<28}{'mlc ms  median (min-max)':<28}"
            f"{'mlc/ORT':>8}{'by min':>7}{'ORT MiB':>9}{'mlc MiB':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<14}{r['threads']:>4}{r['batch']:>6}  {_cell(r.get('ort')):<28}{_cell(r.get('mlc')):<28}"
            f"{_ratio_cell(ratio(r), 8)}{_ratio_cell(ratio(r, of='min'), 7)}"
            f"{_mib(r.get('ort_rss')):>9}{_mib(r.get('mlc_rss')):>9}"
        )
    lines.append("")
    for t, (g, n) in geomeans(rows).items():
        lines.append(_geo_line("mlc/ORT", t, g, n))
    if any("int8" in r for r in rows):
        lines += ["", render_int8_table(rows)]
    return "\n".join(lines)


def _geo_line(what, t, g, n):
    v = "-" if g is None else f"{g:.3f}"
    return f"geo-mean {what}, batch 1, {t} thread{'s' if t != 1 else ''}: {v} over {n} model{'s' if n != 1 else ''}"


def render_int8_table(rows):
    """The int8 block: per row ORT's and mlc's int8 latency (median of the
    round medians, min-max), the ratios of INT8_RATIOS, then their geo-means
    at batch 1 per thread count. Notes say why a cell is empty."""
    head = (f"{'int8':<14}{'thr':>4}{'batch':>6}  {'method':<9}{'ORT int8 ms  median (min-max)':<31}"
            f"{'mlc int8 ms  median (min-max)':<31}{'ORT8/ORT':>9}{'mlc8/mlc':>9}{'mlc8/ORT8':>10}"
            f"{'by min':>7}{'ORT8 MiB':>9}{'mlc8 MiB':>9}")
    lines = [head, "-" * len(head)]
    notes = {}
    for r in rows:
        q = [ratio(r, n, d) for _, n, d in INT8_RATIOS]
        i8 = r.get("int8") or {}
        lines.append(
            f"{r['model']:<14}{r['threads']:>4}{r['batch']:>6}  {i8.get('mode', '-'):<9}"
            f"{_cell(r.get('ort_int8')):<31}{_cell(r.get('mlc_int8')):<31}"
            + "".join(_ratio_cell(x, w) for x, w in zip(q, (9, 9, 10)))
            + _ratio_cell(ratio(r, "mlc_int8", "ort_int8", of="min"), 7)
            + f"{_mib(r.get('ort_int8_rss')):>9}{_mib(r.get('mlc_int8_rss')):>9}"
        )
        if i8.get("mlc_note"):
            notes.setdefault(i8["mlc_note"], []).append(r["model"])
    for note, models in notes.items():
        lines.append(f"mlc int8 not timed for {', '.join(dict.fromkeys(models))}: {note}")
    lines.append("")
    for label, n, d in INT8_RATIOS:
        for t, (g, k) in geomeans(rows, n, d).items():
            lines.append(_geo_line(label, t, g, k))
    return "\n".join(lines)


def geomeans(rows, num="mlc", den="ort"):
    """{threads: (geo-mean of num/den over models at batch 1, model count)}."""
    out = {}
    for t in sorted({r["threads"] for r in rows if r["batch"] == 1}):
        qs = [ratio(r, num, den) for r in rows if r["threads"] == t and r["batch"] == 1]
        qs = [q for q in qs if q is not None]
        out[t] = (geomean(qs), len(qs))
    return out


# --------------------------------------------------------------------------


def parse_int_list(s, what):
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got '{s}'")
    if not xs or any(x < 1 for x in xs):
        raise argparse.ArgumentTypeError(f"{what} must be positive integers, got '{s}'")
    return xs


def parse_dims(items):
    dims = {}
    for it in items:
        k, _, v = it.partition("=")
        if not k or not v.isdigit():
            raise argparse.ArgumentTypeError(f"--dim takes NAME=SIZE, got '{it}'")
        dims[k] = int(v)
    return dims


def run_compare(a, out=sys.stdout):
    models = []
    for m in a.models:
        path = m if m.endswith(".onnx") else os.path.join(a.models_dir, f"{m}.onnx")
        if not os.path.isfile(path):
            raise CompareError(f"model '{path}' not found; build the models with benches/models/make_models.py")
        models.append((os.path.splitext(os.path.basename(path))[0], path))
    if not a.ort_only:
        check_mlc(a.mlc)
    int8 = getattr(a, "int8", False)
    quiet = getattr(a, "quiet", False)
    compress_ok, compress_why = False, "--ort-only"
    if int8 and not a.ort_only:
        compress_ok, compress_why = check_mlc_compress(a.mlc)
        if not compress_ok:
            print(f"mlc int8: not available ({compress_why})", file=out, flush=True)
    verified = {}
    if getattr(a, "verify", False) and not a.ort_only:
        for name, path in models:
            v = mlc_verify(a.mlc, path, max(a.threads), own_dims(path, a.dim))
            verified[name] = v
            print(verify_line(name, v), file=out, flush=True)
    work = None
    if int8:
        work = getattr(a, "int8_dir", None) or tempfile.mkdtemp(prefix="mlc-compare-int8-")
        os.makedirs(work, exist_ok=True)
    rows = []
    try:
        for name, path in models:
            runners = {"ort": OrtRunner(path, a.dim, a.seed)}
            try:
                i8 = None
                if int8:
                    i8 = prepare_ort_int8(name, path, work, a.dim, getattr(a, "calib_samples", CALIB_SAMPLES),
                                          getattr(a, "calib_seed", CALIB_SEED))
                    i8["mlc_model"], i8["mlc_note"] = None, compress_why
                    if compress_ok:
                        i8["mlc_model"], i8["mlc_note"] = mlc_compress(
                            a.mlc, path, os.path.join(work, f"{name}.int8.mlc"), i8["mode"], i8["calib"],
                            own_dims(path, a.dim),
                            getattr(a, "int8_all", False))
                    if not quiet:
                        print(f"  {name} int8: {INT8_METHODS[i8['mode']]}; mlc "
                              + (f"compress --int8 -> {i8['mlc_model']}" if i8["mlc_model"] else f"not timed: {i8['mlc_note']}"),
                              file=sys.stderr, flush=True)
                    runners["ort_int8"] = OrtRunner(i8["ort_model"], a.dim, a.seed, feed_path=path)
                # The engines of one round, in the order of even rounds.
                tune = getattr(a, "tune", None)
                engines = ["ort"] + ([] if a.ort_only else ["mlc"] + (["mlc_untuned"] if tune else []))
                if int8:
                    engines += ["ort_int8"] + (["mlc_int8"] if i8["mlc_model"] else [])
                for threads in a.threads:
                    for batch in a.batches:
                        row = {"model": name, "path": path, "threads": threads, "batch": batch,
                               "ort_rounds": [], "mlc_rounds": [], "ort_rss": 0, "mlc_rss": 0,
                               "verify": verified.get(name)}
                        if int8:
                            row.update({"int8": dict(i8), "ort_int8_rounds": [], "mlc_int8_rounds": [],
                                        "ort_int8_rss": 0, "mlc_int8_rss": 0})
                        if tune:
                            # The database then holds this shape and thread
                            # count; `mlc bench` consults it (mlc_untuned:
                            # --untuned), alternating like the other engines.
                            rep = mlc_tune(a.mlc, path, threads, batch, tune, os.environ["MLC_TUNING_DB"],
                                           os.path.join(tempfile.gettempdir(), f"mlc-compare-{name}.tuned.mlc"),
                                           own_dims(path, a.dim))
                            row.update({"mlc_untuned_rounds": [], "mlc_untuned_rss": 0,
                                        "tuned_nodes": len(rep["choices"]), "tune_kept": rep["kept"]})
                        for rnd in range(a.rounds):
                            # Alternate the order, so drift hits every engine alike.
                            for eng in (engines if rnd % 2 == 0 else engines[::-1]):
                                if eng in runners:
                                    times, rss = runners[eng].round(threads, batch, a.runs, a.warmup)
                                    row[f"{eng}_rounds"].append({"p50_ms": statistics.median(times), "runs_ms": times})
                                else:
                                    model = i8["mlc_model"] if eng == "mlc_int8" else path
                                    extra = ["--untuned"] if eng == "mlc_untuned" else []
                                    obj = mlc_round(a.mlc, model, threads, batch, a.runs, a.warmup, own_dims(path, a.dim),
                                                    extra)
                                    row[f"{eng}_rounds"].append(obj)
                                    rss = int(obj["peak_rss_bytes"])
                                row[f"{eng}_rss"] = max(row[f"{eng}_rss"], rss)
                        for eng in ("ort", "mlc") + (("ort_int8", "mlc_int8") if int8 else ()) + (
                                ("mlc_untuned",) if tune else ()):
                            row[eng] = summarize([r["p50_ms"] for r in row[f"{eng}_rounds"]])
                        row["ratio"] = ratio(row)
                        if int8:
                            row["int8_ratios"] = {label: ratio(row, n, d) for label, n, d in INT8_RATIOS}
                        rows.append(row)
                        if not quiet:
                            q = row["ratio"]
                            msg = f"  {name} threads={threads} batch={batch}: ORT {_cell(row['ort'])} ms"
                            if not a.ort_only:
                                msg += f", mlc {_cell(row['mlc'])} ms" + ("" if q is None else f", mlc/ORT {q:.2f}")
                            if int8:
                                msg += f"; ORT int8 {_cell(row['ort_int8'])} ms"
                                if row["mlc_int8"]:
                                    msg += f", mlc int8 {_cell(row['mlc_int8'])} ms"
                            if tune:
                                msg += (f"; untuned {_cell(row['mlc_untuned'])} ms, tuned/untuned "
                                        f"{ratio(row, 'mlc', 'mlc_untuned') or 0:.3f} ({row['tuned_nodes']} nodes)")
                            print(msg, file=sys.stderr, flush=True)
            finally:
                for r in runners.values():
                    r.close()
    finally:
        if work and not getattr(a, "int8_dir", None):
            shutil.rmtree(work, ignore_errors=True)
    print(render_table(rows), file=out)
    if getattr(a, "tune", None):
        print(render_tuned_table(rows), file=out)
    return rows


def render_tuned_table(rows):
    """Untuned, tuned (the tuning database's choices) and ORT side by side."""
    lines = ["", f"{'tuned':<14}{'thr':>4}{'batch':>6}  {'ORT ms':>9}{'untuned ms':>12}{'tuned ms':>10}"
                 f"{'untuned/ORT':>13}{'tuned/ORT':>11}{'tuned/untuned':>15}{'nodes':>7}",
             "-" * 101]
    for r in rows:
        if "mlc_untuned" not in r or not r["mlc"] or not r["mlc_untuned"]:
            continue
        lines.append(f"{r['model']:<14}{r['threads']:>4}{r['batch']:>6}  {_ms(r['ort']['median']):>9}"
                     f"{_ms(r['mlc_untuned']['median']):>12}{_ms(r['mlc']['median']):>10}"
                     f"{ratio(r, 'mlc_untuned', 'ort') or 0:>13.3f}{ratio(r) or 0:>11.3f}"
                     f"{ratio(r, 'mlc', 'mlc_untuned') or 0:>15.3f}{r['tuned_nodes']:>7}")
    for t in sorted({r["threads"] for r in rows}):
        sel = [r for r in rows if r["threads"] == t and "mlc_untuned" in r and r["mlc"] and r["mlc_untuned"]]
        if sel:
            lines.append(f"geo-mean at {t} thread(s) over {len(sel)} rows: untuned/ORT "
                         f"{geomean([ratio(r, 'mlc_untuned', 'ort') for r in sel]):.3f}, tuned/ORT "
                         f"{geomean([ratio(r) for r in sel]):.3f}, tuned/untuned "
                         f"{geomean([ratio(r, 'mlc', 'mlc_untuned') for r in sel]):.3f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default=os.path.join(REPO, "benches", "models", "out"))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated model names in --models-dir, or .onnx paths (default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="thread counts (default: %(default)s)")
    p.add_argument("--batches", default="1,8", help="batch sizes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per engine (default: %(default)s)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before each round (default: %(default)s)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a non-batch symbolic dim (default: seq=128)")
    p.add_argument("--seed", type=int, default=0, help="input seed (mlc bench's is 0; default: %(default)s)")
    p.add_argument("--mlc", default=os.path.join(REPO, "target", "release", "mlc"), help="mlc binary (default: %(default)s)")
    p.add_argument("--ort-only", action="store_true", help="time ONNX Runtime alone (no mlc binary needed)")
    p.add_argument("--verify", action="store_true",
                   help="first check each model's mlc outputs against the reference interpreter "
                        "(mlc bench --verify, rtol 1e-3)")
    p.add_argument("--int8", action="store_true",
                   help="also time int8 models: ONNX Runtime's own (quantize_static QDQ for float inputs, "
                        "quantize_dynamic for integer inputs) and mlc's (mlc compress --int8)")
    p.add_argument("--int8-dir", metavar="DIR",
                   help="keep the int8 models and calibration npz files in DIR and reuse ORT's when the "
                        "source and settings match (default: a temporary folder)")
    p.add_argument("--int8-all", action="store_true",
                   help="mlc's int8 model with every layer int8 (mlc compress --no-speed-check: no layer "
                        "kept f32 for speed)")
    p.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES,
                   help="seeded calibration inputs for static int8 (default: %(default)s)")
    p.add_argument("--calib-seed", type=int, default=CALIB_SEED,
                   help="seed of the first calibration input; sample i uses seed+i (default: %(default)s)")
    p.add_argument("--tune", type=float, metavar="SECONDS",
                   help="first `mlc tune` each model, thread count and batch (SECONDS of budget each) into a "
                        "tuning database, then time mlc tuned (the database's choices) and untuned "
                        "(--untuned) alternating with ORT")
    p.add_argument("--tune-db", metavar="FILE",
                   help="the tuning database --tune fills (default: a temporary file)")
    p.add_argument("--json", metavar="FILE", help="also write every round's numbers to FILE")
    p.add_argument("--self-test", action="store_true", help="check this script's own logic and exit")
    a = p.parse_args(argv)
    if a.self_test:
        return self_test()
    try:
        a.threads = parse_int_list(a.threads, "--threads")
        a.batches = parse_int_list(a.batches, "--batches")
        a.dim = parse_dims(a.dim) if a.dim else {"seq": 128}
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if a.rounds < 1 or a.runs < 1 or a.warmup < 0:
        p.error("--rounds and --runs must be >= 1, --warmup >= 0")
    if a.calib_samples < 1:
        p.error("--calib-samples must be >= 1")
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if a.tune is not None:
        if a.tune <= 0 or a.ort_only:
            p.error("--tune needs a positive budget and mlc (not --ort-only)")
        os.environ["MLC_TUNING_DB"] = a.tune_db or os.path.join(
            tempfile.mkdtemp(prefix="mlc-compare-tune-"), "tuning.jsonl")
    try:
        rows = run_compare(a)
    except CompareError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        g = {str(t): {"geomean_ratio": v, "models": n} for t, (v, n) in geomeans(rows).items()}
        keys = ("threads", "batches", "rounds", "runs", "warmup", "dim", "seed", "ort_only", "int8")
        doc = {"config": {k: getattr(a, k) for k in keys}, "rows": rows, "batch1_geomean": g}
        if a.int8:
            doc["config"].update(calib_samples=a.calib_samples, calib_seed=a.calib_seed)
            doc["int8_batch1_geomean"] = {
                label: {str(t): {"geomean_ratio": v, "models": k} for t, (v, k) in geomeans(rows, n, d).items()}
                for label, n, d in INT8_RATIOS}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------
# Self-test: the generator, statistics, table, mlc output parsing, and a full
# run on a tiny model with a fake mlc.
# --------------------------------------------------------------------------


def self_test():
    import onnx
    from onnx import TensorProto, helper

    # SplitMix64, seed 0: the published first outputs.
    r = SplitMix64(0)
    assert [int(x) for x in r.draw(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # Drawing in pieces continues the stream.
    r1, r2 = SplitMix64(7), SplitMix64(7)
    assert list(r1.draw(5)) == list(r2.draw(2)) + list(r2.draw(3))
    f = SplitMix64(1).floats(1000)
    assert f.min() >= -1.0 and f.max() < 1.0 and abs(f.mean()) < 0.1

    assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert summarize([]) is None
    assert abs(geomean([2.0, 0.5]) - 1.0) < 1e-12 and geomean([]) is None
    rows = [
        {"model": "a", "threads": 1, "batch": 1, "ort": summarize([10.0]), "mlc": summarize([12.0])},
        {"model": "b", "threads": 1, "batch": 1, "ort": summarize([10.0]), "mlc": summarize([7.5])},
        {"model": "a", "threads": 1, "batch": 8, "ort": summarize([10.0]), "mlc": summarize([50.0])},
        {"model": "a", "threads": 2, "batch": 1, "ort": summarize([10.0]), "mlc": None},
    ]
    g = geomeans(rows)
    assert abs(g[1][0] - math.sqrt(1.2 * 0.75)) < 1e-12 and g[1][1] == 2, g
    assert g[2] == (None, 0), g
    t = render_table(rows)
    assert "1.20" in t and "0.75" in t and "5.00" in t and "10.00 (10.00-10.00)" in t, t

    good = {k: 1 for k in MLC_KEYS}
    assert parse_mlc_json("noise\n" + json.dumps(good, indent=2))["p50_ms"] == 1
    assert parse_mlc_json("{not json}\n" + json.dumps(good))["batch"] == 1
    for bad in ("", "no json here", json.dumps({"p50_ms": 1})):
        try:
            parse_mlc_json(bad)
            raise AssertionError(f"accepted {bad!r}")
        except CompareError:
            pass

    with tempfile.TemporaryDirectory() as d:
        # A tiny model: token ids into an embedding, plus a mask, dynamic batch and seq.
        emb = helper.make_tensor("emb", TensorProto.FLOAT, [50, 4], np.arange(200, dtype=np.float32).tolist())
        graph = helper.make_graph(
            [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
             helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
            [emb, helper.make_tensor("ax", TensorProto.INT64, [1], [2])],
        )
        model = os.path.join(d, "tiny.onnx")
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
        feeds = seeded_inputs(model, 3, {"seq": 5})
        assert feeds["ids"].shape == (3, 5) and feeds["ids"].dtype == np.int64
        assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 50 and feeds["ids"].max() > 1
        assert set(np.unique(feeds["mask"])) <= {0, 1}
        # Same as drawing ids then mask from one generator.
        r = SplitMix64(0)
        assert (feeds["ids"].ravel() == r.below(15, 50)).all() and (feeds["mask"].ravel() == r.below(15, 2)).all()

        # A fake mlc that answers `bench --help` and prints JSON; one without bench.
        fake = os.path.join(d, "mlc")
        with open(fake, "w") as fh:
            fh.write(
                "#!/bin/sh\n"
                '[ "$2" = "--help" ] && exit 0\n'
                'echo "progress..." >&2\n'
                f'echo \'{{"p50_ms": 2.0, "p90_ms": 2.5, "p99_ms": 3.0, "throughput_per_s": 500, "peak_rss_bytes": 1048576, "threads": \'"$4"\', "batch": \'"$6"\'}}\'\n'
            )
        os.chmod(fake, 0o755)
        nobench = os.path.join(d, "old-mlc")
        with open(nobench, "w") as fh:
            fh.write("#!/bin/sh\necho \"error: unrecognized subcommand 'bench'\" >&2\nexit 2\n")
        os.chmod(nobench, 0o755)

        ns = argparse.Namespace(models=[model], models_dir=d, threads=[1, 2], batches=[1, 2], rounds=2,
                                runs=3, warmup=1, dim={"seq": 5}, seed=0, mlc=fake, ort_only=False,
                                quiet=True)
        import io
        buf = io.StringIO()
        rows = run_compare(ns, out=buf)
        assert len(rows) == 4 and all(len(r["ort_rounds"]) == 2 and len(r["mlc_rounds"]) == 2 for r in rows)
        assert all(r["mlc"]["median"] == 2.0 and r["ort"]["median"] > 0 and r["mlc_rss"] == 1 << 20 for r in rows)
        assert all(r["ort_rss"] > 0 for r in rows)
        assert "geo-mean mlc/ORT, batch 1, 2 threads" in buf.getvalue(), buf.getvalue()
        table = render_table(rows)
        assert "by min" in table.splitlines()[0], table
        fast = dict(rows[0], mlc={"median": 2.0, "min": 1.5, "max": 3.0},
                    ort={"median": 4.0, "min": 1.0, "max": 4.0})
        assert (ratio(fast), ratio(fast, of="min")) == (0.5, 1.5)
        assert "0.50   1.50" in render_table([fast]).splitlines()[2], render_table([fast])
        for binary, msg in ((nobench, "no 'bench' subcommand"), (os.path.join(d, "missing"), "not found")):
            ns.mlc = binary
            try:
                run_compare(ns, out=io.StringIO())
                raise AssertionError("accepted " + binary)
            except CompareError as e:
                assert msg in str(e), e
        ns.mlc, ns.ort_only = nobench, True
        rows = run_compare(ns, out=io.StringIO())
        assert all(r["mlc"] is None and r["ratio"] is None for r in rows)
        json.dumps(rows)  # everything in a row can be dumped

        self_test_int8(d, fake)
    print("compare.py self-test: ok")
    return 0


def _tiny_int8_models(d):
    """A float-input CNN (static int8) and a token-id model with a MatMul
    (dynamic int8), seeded weights, dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)
    cnn = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)],
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [w("cw", 8, 3, 3, 3), w("cb", 8), w("gw", 10, 8), w("gb", 10)],
    )
    tok = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"]),
         helper.make_node("MatMul", ["e", "mw"], ["y"])],
        "tiny_tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
        [w("emb", 50, 16), w("mw", 16, 8)],
    )
    paths = []
    for name, g in (("static", cnn), ("dynamic", tok)):
        p = os.path.join(d, f"{name}.onnx")
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), p)
        paths.append(p)
    return paths


def _write_fake(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)
    return path


def self_test_int8(d, fake_bench):
    """The int8 plumbing without a real `mlc compress`: mode choice,
    calibration inputs and npz, ORT's quantizers and their cache, the ratios
    and table, compress detection and full runs with fake mlc binaries."""
    import io

    import onnx
    import onnxruntime as ort

    static, dynamic = _tiny_int8_models(d)
    assert int8_mode(static) == "static" and int8_mode(dynamic) == "dynamic"
    assert int8_mode(os.path.join(d, "tiny.onnx")) == "dynamic"  # int64 ids and mask

    # Calibration: sample i is seeded_inputs at batch 1 with seed + i; the npz
    # is keyed by input name with the samples on the first axis.
    samples = calib_samples(static, {}, 4, 5)
    assert len(samples) == 4 and all(s["x"].shape == (1, 3, 8, 8) for s in samples)
    for i, s in enumerate(samples):
        assert (s["x"] == seeded_inputs(static, 1, {}, 5 + i)["x"]).all()
    assert not (samples[0]["x"] == samples[1]["x"]).all()
    npz = write_calib_npz(os.path.join(d, "c.npz"), samples)
    with np.load(npz) as z:
        assert z.files == ["x"] and z["x"].shape == (4, 3, 8, 8) and z["x"].dtype == np.float32
        assert (z["x"][2:3] == samples[2]["x"]).all()
    assert calib_arrays([{"s": np.zeros(3)}, {"s": np.ones(3)}])["s"].shape == (2, 3)  # no batch axis: stacked

    # ORT's quantizers: QDQ nodes for static, integer MatMul for dynamic; the
    # int8 models run and stay close to f32.
    work = os.path.join(d, "int8")
    os.makedirs(work)
    ps = prepare_ort_int8("static", static, work, {}, 8, 1)
    pd = prepare_ort_int8("dynamic", dynamic, work, {"seq": 5}, 8, 1)
    assert ps["mode"] == "static" and os.path.isfile(ps["calib"]) and pd["calib"] is None
    ops_s = {n.op_type for n in onnx.load(ps["ort_model"]).graph.node}
    ops_d = {n.op_type for n in onnx.load(pd["ort_model"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops_s, ops_s
    assert "MatMulInteger" in ops_d or "DynamicQuantizeLinear" in ops_d, ops_d
    for src, q, dims in ((static, ps["ort_model"], {}), (dynamic, pd["ort_model"], {"seq": 5})):
        f = seeded_inputs(src, 2, dims)
        a = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, f)[0].ravel()
        b = ort.InferenceSession(q, providers=["CPUExecutionProvider"]).run(None, f)[0].ravel()
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos > 0.99, (q, cos)
    # Reused while source and settings match; remade when they change.
    t0 = os.stat(ps["ort_model"]).st_mtime_ns
    assert prepare_ort_int8("static", static, work, {}, 8, 1) == ps and os.stat(ps["ort_model"]).st_mtime_ns == t0
    prepare_ort_int8("static", static, work, {}, 6, 1)
    with np.load(ps["calib"]) as z:
        assert z["x"].shape[0] == 6

    # Ratios, geo-means and the int8 block of the table.
    s = summarize
    rows = [
        {"model": "a", "threads": 1, "batch": 1, "ort": s([10.0]), "mlc": s([8.0]), "ort_int8": s([5.0]),
         "mlc_int8": s([4.0]), "int8": {"mode": "static", "mlc_note": None}},
        {"model": "b", "threads": 1, "batch": 1, "ort": s([10.0]), "mlc": s([10.0]), "ort_int8": s([20.0]),
         "mlc_int8": None, "int8": {"mode": "dynamic", "mlc_note": "no compress here"}},
    ]
    assert ratio(rows[0], "mlc_int8", "mlc") == 0.5 and ratio(rows[0], "mlc_int8", "ort_int8") == 0.8
    assert ratio(rows[1], "mlc_int8", "ort_int8") is None and ratio(rows[1], "ort_int8", "ort") == 2.0
    assert geomeans(rows, "ort_int8", "ort")[1] == (1.0, 2)
    assert geomeans(rows, "mlc_int8", "ort_int8")[1] == (0.8, 1)
    t = render_table(rows)
    for want in ("ORT int8 ms", "mlc int8 ms", "5.00 (5.00-5.00)", "0.50", "0.80", "2.00",
                 "mlc int8 not timed for b: no compress here",
                 "geo-mean mlc-int8/ORT-int8, batch 1, 1 thread: 0.800 over 1 model",
                 "geo-mean ORT-int8/ORT-f32, batch 1, 1 thread: 1.000 over 2 models"):
        assert want in t, (want, t)
    assert "int8" not in render_table([{k: v for k, v in r.items() if "int8" not in k} for r in rows])

    # `mlc compress` detection.
    bench = ('echo \'{"p50_ms": 2.0, "p90_ms": 2.5, "p99_ms": 3.0, "throughput_per_s": 500, '
             '"peak_rss_bytes": 1048576, "threads": \'"$4"\', "batch": \'"$6"\'}\'\n')
    old = _write_fake(os.path.join(d, "mlc-nocompress"),
                      '#!/bin/sh\nif [ "$1" = compress ]; then\n'
                      '  echo "error: unrecognized subcommand \'compress\'" >&2; exit 2\nfi\n'
                      '[ "$2" = "--help" ] && exit 0\n' + bench)
    log = os.path.join(d, "compress.log")
    new = _write_fake(os.path.join(d, "mlc-compress"),
                      '#!/bin/sh\nif [ "$1" = compress ]; then\n'
                      '  [ "$2" = "--help" ] && { echo "Usage: mlc compress [OPTIONS] --output <OUTPUT> <MODEL>"; '
                      'echo "      --int8"; exit 0; }\n'
                      f'  echo "$@" >> {log}\n'
                      '  prev=""; for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done\n'
                      '  cp "$2" "$out"; exit 0\nfi\n'
                      '[ "$2" = "--help" ] && exit 0\n' + bench)
    ok, why = check_mlc_compress(old)
    assert not ok and "no 'compress' subcommand" in why, why
    ok, why = check_mlc_compress(fake_bench)  # answers any --help, but without --int8
    assert not ok and "no --int8" in why, why
    assert check_mlc_compress(new) == (True, None)
    assert mlc_compress_cmd("m", "a.onnx", "o.mlc", "static", "c.npz")[-2:] == ["--calib", "c.npz"]
    assert mlc_compress_cmd("m", "a.onnx", "o.mlc", "dynamic", None)[-1] == "--dynamic"
    assert "--no-speed-check" in mlc_compress_cmd("m", "a.onnx", "o.mlc", "dynamic", None, None, True)
    assert "--no-speed-check" not in mlc_compress_cmd("m", "a.onnx", "o.mlc", "dynamic", None)

    # Full runs: without compress (ORT int8 still timed, mlc int8 not
    # available), then with it.
    ns = argparse.Namespace(models=[static, dynamic], models_dir=d, threads=[1], batches=[1, 2], rounds=2,
                            runs=2, warmup=1, dim={"seq": 5}, seed=0, mlc=old, ort_only=False, quiet=True,
                            int8=True, int8_dir=None, calib_samples=4, calib_seed=1)
    buf = io.StringIO()
    rows = run_compare(ns, out=buf)
    text = buf.getvalue()
    assert "mlc int8: not available (" in text and "geo-mean ORT-int8/ORT-f32" in text, text
    assert len(rows) == 4 and all(len(r["ort_int8_rounds"]) == 2 and r["ort_int8"]["median"] > 0 for r in rows)
    assert all(r["mlc_int8"] is None and r["mlc"]["median"] == 2.0 and r["ort_int8_rss"] > 0 for r in rows)
    assert [r["int8"]["mode"] for r in rows] == ["static", "static", "dynamic", "dynamic"]
    json.dumps(rows)
    ns.mlc, ns.int8_dir, ns.batches = new, os.path.join(d, "kept"), [1]
    rows = run_compare(ns, out=io.StringIO())
    assert all(r["mlc_int8"]["median"] == 2.0 and len(r["mlc_int8_rounds"]) == 2 for r in rows)
    assert all(r["int8_ratios"]["mlc-int8/mlc-f32"] == 1.0 for r in rows)
    with open(log) as fh:
        calls = fh.read().splitlines()
    kept = ns.int8_dir
    # The static model has no seq dim, so it is not given one.
    assert calls == [f"compress {static} --int8 -o {kept}/static.int8.mlc --threads 1"
                     f" --calib {kept}/static.calib.npz",
                     f"compress {dynamic} --int8 -o {kept}/dynamic.int8.mlc --threads 1 --dim seq=5 --dynamic"], calls
    with np.load(os.path.join(kept, "static.calib.npz")) as z:
        assert z.files == ["x"] and z["x"].shape == (4, 3, 8, 8)
    ns.ort_only, ns.models = True, [static]
    rows = run_compare(ns, out=io.StringIO())
    assert all(r["mlc_int8"] is None and r["ort_int8"] and r["int8"]["mlc_note"] == "--ort-only" for r in rows)


if __name__ == "__main__":
    sys.exit(main())

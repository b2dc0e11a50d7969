#!/usr/bin/env python3
"""Side-by-side latency of mlc and ONNX Runtime on the benchmark models.

    .venv/bin/python benches/compare.py [--models-dir benches/models/out]
        [--models resnet18,mobilenetv2,bert] [--threads 1,2] [--batches 1,8]
        [--rounds 5] [--runs 10] [--warmup 3] [--mlc target/release/mlc]
        [--dim seq=128] [--ort-only] [--verify] [--json results.json]

For every model, thread count and batch size the two engines run in
alternating rounds (ORT then mlc, then mlc then ORT, ...), each round being
`--runs` timed runs after `--warmup` untimed ones, so slow drift of the
machine (other load, frequency, temperature) hits both alike. Each round gives
a median latency; the table shows, per engine, the median of the round medians
with their min-max, and the ratio mlc/ORT of the medians. The last lines give
the geometric mean of the ratios over the models at batch 1, per thread count
(the acceptance figure: <= 1.2).

ONNX Runtime runs in a worker process per model (its own peak RSS is then the
model's), with intra_op_num_threads = threads, inter_op_num_threads = 1,
ORT_ENABLE_ALL and sequential execution. mlc runs as
`mlc bench MODEL --threads T --batch B --runs R --warmup W --json [--dim ..]`
once per round and reports its own p50.

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
    """SplitMix64 as in src/inputs.rs, vectorized: draw(n) returns the next n
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


def _ort_worker(conn, path, sym_dims, seed):
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
                sessions[threads] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            if batch not in feeds:
                feeds[batch] = seeded_inputs(path, batch, sym_dims, seed)
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
    """A persistent ONNX Runtime worker process for one model."""

    def __init__(self, path, sym_dims, seed):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_ort_worker, args=(child, path, sym_dims, seed), daemon=True)
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


def mlc_round(binary, model, threads, batch, runs, warmup, sym_dims):
    cmd = [binary, "bench", model, "--threads", str(threads), "--batch", str(batch),
           "--runs", str(runs), "--warmup", str(warmup), "--json"]
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


def ratio(row):
    o, m = row.get("ort"), row.get("mlc")
    if not o or not m or o["median"] <= 0:
        return None
    return m["median"] / o["median"]


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
    head = f"{'model':<14}{'thr':>4}{'batch':>6}  {'ORT ms  median (min-max)':<28}{'mlc ms  median (min-max)':<28}{'mlc/ORT':>8}{'ORT MiB':>9}{'mlc MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        q = ratio(r)
        lines.append(
            f"{r['model']:<14}{r['threads']:>4}{r['batch']:>6}  {_cell(r.get('ort')):<28}{_cell(r.get('mlc')):<28}"
            f"{'-' if q is None else f'{q:.2f}':>8}{_mib(r.get('ort_rss')):>9}{_mib(r.get('mlc_rss')):>9}"
        )
    lines.append("")
    for t, (g, n) in geomeans(rows).items():
        what = "-" if g is None else f"{g:.3f}"
        lines.append(f"geo-mean mlc/ORT, batch 1, {t} thread{'s' if t != 1 else ''}: {what} over {n} model{'s' if n != 1 else ''}")
    return "\n".join(lines)


def geomeans(rows):
    """{threads: (geo-mean of mlc/ORT over models at batch 1, model count)}."""
    out = {}
    for t in sorted({r["threads"] for r in rows if r["batch"] == 1}):
        qs = [ratio(r) for r in rows if r["threads"] == t and r["batch"] == 1]
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
    verified = {}
    if getattr(a, "verify", False) and not a.ort_only:
        for name, path in models:
            v = mlc_verify(a.mlc, path, max(a.threads), a.dim)
            verified[name] = v
            print(verify_line(name, v), file=out, flush=True)
    rows = []
    for name, path in models:
        ort = OrtRunner(path, a.dim, a.seed)
        try:
            for threads in a.threads:
                for batch in a.batches:
                    row = {"model": name, "path": path, "threads": threads, "batch": batch,
                           "ort_rounds": [], "mlc_rounds": [], "ort_rss": 0, "mlc_rss": 0,
                           "verify": verified.get(name)}
                    for rnd in range(a.rounds):
                        # Alternate which engine goes first, so drift hits both alike.
                        order = ("ort", "mlc") if rnd % 2 == 0 else ("mlc", "ort")
                        for eng in order:
                            if eng == "ort":
                                times, rss = ort.round(threads, batch, a.runs, a.warmup)
                                row["ort_rounds"].append({"p50_ms": statistics.median(times), "runs_ms": times})
                                row["ort_rss"] = max(row["ort_rss"], rss)
                            elif not a.ort_only:
                                obj = mlc_round(a.mlc, path, threads, batch, a.runs, a.warmup, a.dim)
                                row["mlc_rounds"].append(obj)
                                row["mlc_rss"] = max(row["mlc_rss"], int(obj["peak_rss_bytes"]))
                    row["ort"] = summarize([r["p50_ms"] for r in row["ort_rounds"]])
                    row["mlc"] = summarize([r["p50_ms"] for r in row["mlc_rounds"]])
                    row["ratio"] = ratio(row)
                    rows.append(row)
                    if not getattr(a, "quiet", False):
                        q = row["ratio"]
                        msg = f"  {name} threads={threads} batch={batch}: ORT {_cell(row['ort'])} ms"
                        if not a.ort_only:
                            msg += f", mlc {_cell(row['mlc'])} ms" + ("" if q is None else f", mlc/ORT {q:.2f}")
                        print(msg, file=sys.stderr, flush=True)
        finally:
            ort.close()
    print(render_table(rows), file=out)
    return rows


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
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    try:
        rows = run_compare(a)
    except CompareError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        g = {str(t): {"geomean_ratio": v, "models": n} for t, (v, n) in geomeans(rows).items()}
        with open(a.json, "w") as f:
            json.dump({"config": {k: getattr(a, k) for k in ("threads", "batches", "rounds", "runs", "warmup", "dim", "seed", "ort_only")},
                       "rows": rows, "batch1_geomean": g}, f, indent=1)
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
    print("compare.py self-test: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

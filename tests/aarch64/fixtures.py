"""Every model fixture and the int8 digits bundles through the aarch64 mlc
under qemu, compared with the x86_64 mlc's outputs.

    python tests/aarch64/fixtures.py --x86 target/release/mlc \
        --arm target/cross-aarch64/aarch64-unknown-linux-gnu/release/mlc \
        --qemu "qemu-aarch64 -L /usr/aarch64-linux-gnu ..." --work DIR

* f32 fixtures: every folder under fixtures/ with an io.json (corpus/ aside:
  its weights are not committed), every variant, on the fast runtime of
  both; outputs must agree within the fixture's tolerances (rtol 1e-4, atol
  1e-5 from io.json).
* int8: the digits models compressed once here on x86 (static calibration
  and dynamic activations; no speed check, so every layer that keeps the
  accuracy is int8), run on 64 held-out images; the aarch64 outputs must be
  bit for bit the x86 ones, on a CPU with dotprod (qemu's `max`: the SDOT
  kernel) and one without (`cortex-a57`: the plain NEON kernel). Every layer
  is kept int8 (`--max-accuracy-drop 100`); where the bundle is all int8 the
  x86 output is also checked to be bit for bit the reference interpreter's
  (the integer reference).

* tuned for cortex-a76 by the cost model (`mlc tune --target cortex-a76`,
  estimated on x86 from a tuning database of this machine's records: the
  synthetic ones, keyed by this machine's fingerprint, in which the
  transposed product is the cheaper convolution): the bundle must say it
  is estimated and carry its choices, and the aarch64 mlc must run it with
  them (`bench` counts the tuned nodes) to outputs within rtol 1e-4 of the
  x86 run.

Prints one summary line; exit status 1 when anything differs.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# The int8 kernels of each aarch64 CPU model: qemu's `max` has dotprod.
CPUS = [("max", "neon+dotprod"), ("cortex-a57", "neon")]


def run(cmd, what):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{what}: exit {p.returncode}: {p.stderr.strip()[-2000:]}")


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def close(a, b, rtol, atol):
    """None when every output agrees, else what differs."""
    if a.keys() != b.keys():
        return f"outputs {sorted(a)} vs {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if x.dtype.kind == "f":
            bad = ~np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
            if bad.any():
                d = np.abs(x.astype(np.float64) - y)[bad].max()
                return f"{k}: {bad.sum()} of {x.size} values differ (max |diff| {d:.3g})"
        elif not np.array_equal(x, y):
            return f"{k}: integer values differ"
    return None


def identical(a, b):
    """None when every output is the same bit for bit, else what differs."""
    if a.keys() != b.keys():
        return f"outputs {sorted(a)} vs {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            d = ""
            if x.shape == y.shape and x.dtype.kind == "f":
                d = f" (max |diff| {np.abs(x.astype(np.float64) - y).max():.3g})"
            return f"{k}: not bit for bit{d}"
    return None


def fixture_cases():
    """(name, model, [(input name, file)], rtol, atol) for every variant."""
    for io in sorted(REPO.glob("fixtures/**/io.json")):
        if "corpus" in io.relative_to(REPO / "fixtures").parts:
            continue
        spec = json.loads(io.read_text())
        folder = io.parent
        model = (folder / spec["model"]).resolve()
        for v in spec["variants"]:
            vdir = (folder / v).resolve()
            inputs = [(i["name"], vdir / i["file"]) for i in spec["inputs"]]
            name = str(vdir.relative_to(REPO / "fixtures"))
            yield name, model, inputs, spec.get("rtol", 1e-4), spec.get("atol", 1e-5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--x86", required=True)
    ap.add_argument("--arm", required=True)
    ap.add_argument("--qemu", required=True, help="the emulator command line")
    ap.add_argument("--work", required=True, help="scratch folder")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    qemu = shlex.split(a.qemu)
    failures = []

    def arm(cpu):
        return qemu + ["-cpu", cpu, a.arm]

    n_f32 = 0
    for name, model, inputs, rtol, atol in fixture_cases():
        args = ["run", str(model)]
        for n, f in inputs:
            args += ["--input", f"{n}={f}"]
        tag = name.replace("/", "_")
        outs = {}
        try:
            for who, cmd in [("x86", [a.x86]), ("arm", arm("max"))]:
                out = work / f"{tag}.{who}.npz"
                run(cmd + args + ["-o", str(out)], f"{name} ({who})")
                outs[who] = load(out)
        except RuntimeError as e:
            failures.append(str(e))
            continue
        diff = close(outs["arm"], outs["x86"], rtol, atol)
        if diff:
            failures.append(f"{name}: aarch64 vs x86: {diff}")
        n_f32 += 1

    # int8: the digits bundles, made here on x86.
    n_int8 = 0
    for m in ["cnn", "mlp"]:
        with np.load(REPO / f"fixtures/digits/eval_{m}.npz") as z:
            x = z["x"][:64]
        xin = work / f"digits_{m}_x.npy"
        np.save(xin, x)
        calib = ["--calib", str(REPO / f"fixtures/digits/calib_{m}.npz")]
        for kind, extra in [
            ("static", calib),
            ("dynamic", []),
            ("static-full-range", calib + ["--full-range"]),
        ]:
            name = f"digits {m} int8 {kind}"
            bundle = work / f"digits_{m}_{kind}.mlc"
            try:
                run(
                    [a.x86, "compress", str(REPO / f"fixtures/digits/{m}.onnx"), "--int8"]
                    # Every layer int8: this checks kernels, not accuracy.
                    + ["--max-accuracy-drop", "100", "--no-speed-check"]
                    + ["--latency-runs", "0", "--no-cache", "-o", str(bundle)]
                    + extra,
                    f"{name}: compress",
                )
                report = json.loads(bundle.with_name(bundle.name + ".report.json").read_text())
                args = ["run", str(bundle), "--input", f"x={xin}"]
                runs = {}
                for who, cmd in [("x86", [a.x86]), ("ref", [a.x86])] + [
                    (cpu, arm(cpu)) for cpu, _ in CPUS
                ]:
                    out = work / f"digits_{m}_{kind}.{who}.npz"
                    more = ["--reference"] if who == "ref" else []
                    run(cmd + args + more + ["-o", str(out)], f"{name} ({who})")
                    runs[who] = load(out)
            except (RuntimeError, OSError, ValueError) as e:
                failures.append(str(e))
                continue
            for cpu, kernel in CPUS:
                diff = identical(runs[cpu], runs["x86"])
                if diff:
                    failures.append(f"{name}: aarch64 {cpu} ({kernel}) vs x86: {diff}")
            if all(layer["precision"] == "int8" for layer in report["layers"]):
                diff = identical(runs["x86"], runs["ref"])
                if diff:
                    failures.append(f"{name}: x86 vs the reference interpreter: {diff}")
            n_int8 += 1

    # A bundle tuned for an aarch64 target by the cost model, on x86.
    n_tuned = 0
    try:
        n_tuned = estimated_bundle(a, work, arm("max"))
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        failures.append(f"estimated tuning for cortex-a76: {e}")

    for f in failures:
        print(f"FAIL {f}")
    kernels = ", ".join(f"{k} on -cpu {c}" for c, k in CPUS)
    print(
        f"aarch64 under qemu: {n_f32} f32 fixture runs match x86 (rtol 1e-4), "
        f"{n_int8} int8 digits bundles bit for bit ({kernels}), "
        f"a bundle tuned for cortex-a76 by the cost model runs with its {n_tuned} chosen kernel choice(s)"
        + (f"; {len(failures)} FAILED" if failures else "")
    )
    return 1 if failures else 0


def estimated_bundle(a, work, arm_cmd):
    """Tunes the digits CNN for cortex-a76 on x86 (estimated), runs it on
    both; returns its tuned node count (raises on any difference)."""
    cnn = REPO / "fixtures/digits/cnn.onnx"
    host_db, db = work / "host-tuning.jsonl", work / "tuning.jsonl"
    host_db.unlink(missing_ok=True)
    db.unlink(missing_ok=True)
    # This machine's fingerprint and the kernel version (a short real
    # tune, into a database of its own: the synthetic records alone decide
    # the choices, whatever this machine measured).
    p = subprocess.run(
        [a.x86, "tune", str(cnn), "-o", str(work / "cnn.host.mlc"), "--threads", "1",
         "--budget", "2s", "--db", str(host_db), "--json"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"host tune: {p.stderr.strip()[-500:]}")
    host = json.loads(p.stdout)
    kernels = json.loads(host_db.read_text().splitlines()[0])["kernels"]
    with db.open("a") as f:
        for i in range(1, 31):
            flops = 1e6 * i
            cands = [("default", 2e-6), ("conv=transposed", 1e-6), ("conv=gemm", 3e-6)]
            f.write(json.dumps({
                "workload": f"FusedConv {{ synthetic {i} }}(f32[1,8,8,8])",
                "target": host["fingerprint"], "threads": 1, "kernels": kernels,
                "candidates": [{"choice": c, "median_ms": k * flops, "p10_ms": k * flops,
                                "p90_ms": k * flops, "runs": 10} for c, k in cands],
                "choice": "conv=transposed", "features": {"flops": flops, "bytes": 1e4},
            }) + "\n")
    bundle = work / "cnn.a76.mlc"
    p = subprocess.run(
        [a.x86, "tune", str(cnn), "-o", str(bundle), "--threads", "1", "--target", "cortex-a76",
         "--db", str(db), "--json"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"estimated tune: {p.stderr.strip()[-500:]}")
    rep = json.loads(p.stdout)
    if not rep["estimated"] or not rep["choices"]:
        raise RuntimeError(f"not an estimated bundle with choices: {p.stdout[:500]}")
    with np.load(REPO / "fixtures/digits/eval_cnn.npz") as z:
        xin = work / "a76_x.npy"
        np.save(xin, z["x"][:16])
    outs = {}
    for who, cmd in [("x86", [a.x86]), ("arm", arm_cmd)]:
        out = work / f"cnn.a76.{who}.npz"
        run(cmd + ["run", str(bundle), "--input", f"x={xin}", "--threads", "1", "-o", str(out)],
            f"estimated bundle ({who})")
        outs[who] = load(out)
    diff = close(outs["arm"], outs["x86"], 1e-4, 1e-5)
    if diff:
        raise RuntimeError(f"aarch64 vs x86: {diff}")
    p = subprocess.run(arm_cmd + ["bench", str(bundle), "--runs", "1", "--warmup", "0", "--json"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"aarch64 bench: {p.stderr.strip()[-500:]}")
    tuned = json.loads(p.stdout)["tuned_nodes"]
    if tuned != len(rep["choices"]):
        raise RuntimeError(f"aarch64 runs {tuned} tuned nodes, the bundle chose {len(rep['choices'])}")
    return tuned


if __name__ == "__main__":
    sys.exit(main())

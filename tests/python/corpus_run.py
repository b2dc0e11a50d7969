#!/usr/bin/env python3
"""Runs the corpus of real architectures (fixtures/corpus/) through mlc.

For each entry (after tests/python/corpus_materialize.py regenerated its
weights, inputs and ONNX Runtime outputs under target/corpus/<id>/):

  import  `mlc inspect model.onnx --json`: every op supported
  run     `mlc run model.onnx --inputs inputs.npz` (the fast runtime)
          vs ONNX Runtime: |a - b| <= atol + rtol * |b| (rtol 1e-3, atol 1e-4)
  O2      `mlc compile --pipeline O2`, then `mlc run` the bundle; same check
  int8    `mlc compress --int8 --calib inputs.npz --min-cosine 0.99` (static
          activations calibrated on the inputs, every layer int8 unless the
          budget sends it back to f32), then `mlc run` the bundle; the cosine
          similarity of each float output with ONNX Runtime's f32 output,
          per sample, worst sample >= 0.99

A model passes when all stages pass. Where both BERT exports of an exporter
ran, the sdpa one must compile (O2) to no more nodes than the eager one. Prints a table and a last line
`corpus: N/M`, writes target/corpus/report.json, and exits 1 only when an id
listed in fixtures/corpus/expected_pass.txt fails (ids not listed that pass
are printed as "newly passing"). Cases run over --jobs workers (default 2),
each stage under a timeout (the case as a whole under --timeout seconds).

  python tests/python/corpus_run.py            # the CI sample (CI_SAMPLE)
  python tests/python/corpus_run.py --all      # every exported entry
  python tests/python/corpus_run.py --only hf_gpt2.ts tv_resnet50
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus_materialize as cm  # noqa: E402

REPO = cm.REPO
RTOL, ATOL, MIN_COS = 1e-3, 1e-4, 0.99
EXPECTED_PASS = os.path.join(cm.CORPUS, "expected_pass.txt")
REPORT = os.path.join(cm.OUT, "report.json")

# The default (CI) sample: both exporters, CNNs and transformers, chosen to
# fit about 5 minutes on 2 cores (fixtures/corpus/README.md has the timings).
CI_SAMPLE = [
    # CNNs and vision transformers (torchvision, timm), both exporters
    "tv_resnet50.dynamo",
    "tv_mobilenet_v2.ts",
    "tv_mobilenet_v3_small.ts",
    "tv_squeezenet1_1.dynamo",
    "tv_shufflenet_v2_x1_0.ts",
    "tv_regnet_y_400mf.dynamo",
    "tv_convnext_tiny.dynamo",
    "tv_googlenet.ts",
    "tv_vit_small.ts",
    "tv_swin_t.dynamo",
    "timm_efficientnet_lite0.dynamo",
    "timm_mobilevit_xxs.ts",
    "timm_ghostnet_100.dynamo",
    "timm_levit_128s.ts",
    "timm_deit_tiny.dynamo",
    # transformers (small configs: a fraction of a second each), both exporters
    "hf_bert_sdpa.ts", "hf_bert_sdpa.dynamo",
    "hf_bert_eager.ts", "hf_bert_eager.dynamo",
    "hf_distilbert.ts", "hf_distilbert.dynamo",
    "hf_roberta.dynamo", "hf_albert.ts",
    "hf_gpt2.ts", "hf_gpt2.dynamo",
    "hf_llama.ts", "hf_llama.dynamo",
    "hf_t5_encoder.ts",
    "hf_clip_text.ts", "hf_clip_text.dynamo",
    "hf_whisper_encoder.ts", "hf_whisper_encoder.dynamo",
    "hf_wav2vec2.ts", "hf_wav2vec2.dynamo",
    "hf_vit.ts", "hf_vit.dynamo",
    # the real all-MiniLM-L6-v2 architecture (6 layers, hidden 384)
    "hf_all_minilm_l6_v2.ts",
]


def read_expected():
    ids = {}
    if os.path.exists(EXPECTED_PASS):
        with open(EXPECTED_PASS) as f:
            for line in f:
                body, _, note = line.partition("#")
                if body.strip():
                    ids[body.strip()] = note.strip()
    return ids


def find_mlc(explicit):
    """The mlc binary, built when missing; (path, None) or (None, why)."""
    path = explicit or os.path.join(REPO, "target", "release", "mlc")
    if os.path.exists(path):
        return path, None
    if explicit:
        return None, f"{explicit} does not exist"
    cargo = shutil.which("cargo")
    if not cargo:
        return None, "skip"
    print("corpus_run: building target/release/mlc (cargo build --release --bin mlc) ...", flush=True)
    p = subprocess.run([cargo, "build", "--release", "--bin", "mlc"], cwd=REPO)
    if p.returncode != 0 or not os.path.exists(path):
        return None, "cargo build --release --bin mlc failed"
    return path, None


def error_line(p):
    """mlc's `error:` line (or the last line of output) of a failed command."""
    text = (p.stderr or "") + "\n" + (p.stdout or "")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in lines:
        if l.startswith("error:"):
            return l[:300]
    for l in lines:
        if "panicked" in l:
            return l[:300]
    return (lines[-1] if lines else f"exit {p.returncode}")[:300]


class Case:
    def __init__(self, mlc, entry, info, deadline):
        self.mlc = mlc
        self.entry = entry
        self.info = info
        self.dir = os.path.join(cm.OUT, entry["id"])
        self.deadline = deadline
        self.seconds = {}

    def cmd(self, stage, args):
        """Runs mlc; returns (CompletedProcess or None, failure string or None)."""
        left = self.deadline - time.time()
        if left <= 1:
            return None, "timeout (case budget spent)"
        t0 = time.time()
        try:
            p = subprocess.run([self.mlc] + args, cwd=self.dir, capture_output=True, text=True,
                               timeout=left)
        except subprocess.TimeoutExpired:
            self.seconds[stage] = self.seconds.get(stage, 0) + time.time() - t0
            return None, f"timeout ({left:.0f} s left for the case)"
        self.seconds[stage] = self.seconds.get(stage, 0) + time.time() - t0
        if p.returncode != 0:
            return p, f"exit {p.returncode}: {error_line(p)}"
        return p, None


def compare(got_path, expected, names):
    """Max error over outputs and whether all are within tolerance."""
    got = np.load(got_path)
    worst, ok, why = 0.0, True, None
    for n in names:
        if n not in got:
            return False, None, f"output {n} missing"
        a, b = got[n], expected[n]
        if a.shape != b.shape:
            return False, None, f"output {n}: shape {list(a.shape)} vs {list(b.shape)}"
        if b.dtype.kind != "f":
            if not np.array_equal(a, b):
                ok, why = False, f"output {n}: integer values differ"
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.all(np.isfinite(a64)):
            return False, None, f"output {n}: non-finite values"
        err = np.abs(a64 - b64)
        worst = max(worst, float(err.max()) if err.size else 0.0)
        if np.any(err > ATOL + RTOL * np.abs(b64)):
            ok = False
            i = np.unravel_index(np.argmax(err - RTOL * np.abs(b64)), err.shape)
            why = why or f"output {n}: |{a64[i]:.6g} - {b64[i]:.6g}| at {list(map(int, i))}"
    return ok, worst, why


def cosines(got_path, expected, names):
    got = np.load(got_path)
    cos = {}
    for n in names:
        b = expected[n]
        if b.dtype.kind != "f":
            continue
        if n not in got:
            return None, f"output {n} missing"
        a = got[n].astype(np.float64)
        b = b.astype(np.float64)
        if a.shape != b.shape:
            return None, f"output {n}: shape {a.shape}, expected {b.shape}"
        if not np.all(np.isfinite(a)):
            return None, f"output {n}: non-finite values"
        # Per sample (the batch axis), the worst one: what mlc compress's
        # --min-cosine budget bounds.
        rows = [(a, b)] if a.ndim < 2 else list(zip(a, b))
        worst = 1.0
        for x, y in rows:
            x, y = x.ravel(), y.ravel()
            d = np.linalg.norm(x) * np.linalg.norm(y)
            c = float(x @ y / d) if d > 0 else (1.0 if np.array_equal(x, y) else 0.0)
            worst = min(worst, c)
        cos[n] = worst
    return cos, None


def run_case(mlc, entry, info, timeout):
    t_start = time.time()
    c = Case(mlc, entry, info, t_start + timeout)
    r = {"id": entry["id"], "model": entry["model"], "exporter": entry["exporter"],
         "ops": entry.get("op_count"), "stages": {}}
    st = r["stages"]
    if info["status"] != "ok":
        st["import"] = {"ok": False, "error": info["status"]}
        r["pass"] = False
        r["seconds"] = 0.0
        return r
    expected = dict(np.load(os.path.join(c.dir, "expected.npz")))
    names = list(info["outputs"])
    # import
    p, fail = c.cmd("import", ["inspect", "model.onnx", "--json"])
    if fail:
        st["import"] = {"ok": False, "error": fail}
    else:
        try:
            ins = json.loads(p.stdout)
            probs = ins.get("problems") or []
            st["import"] = {"ok": bool(ins.get("supported")) and not probs,
                            "error": "; ".join(map(str, probs))[:300] or None}
        except ValueError:
            st["import"] = {"ok": False, "error": "inspect --json printed no JSON"}
    # run (the fast runtime)
    p, fail = c.cmd("run", ["run", "model.onnx", "--inputs", "inputs.npz", "-o", "out.run.npz"])
    if fail:
        st["run"] = {"ok": False, "error": fail}
    else:
        ok, err, why = compare(os.path.join(c.dir, "out.run.npz"), expected, names)
        st["run"] = {"ok": ok, "max_abs": err, "error": why}
    unsupported = not st["run"]["ok"] and "exit 2" in (st["run"].get("error") or "") \
        and not st["import"]["ok"]
    # O2
    if unsupported:
        st["O2"] = {"ok": False, "error": "not run (import failed)"}
    else:
        p, fail = c.cmd("O2", ["compile", "model.onnx", "--pipeline", "O2", "-o", "model.O2.mlc",
                               "--json"])
        nodes = None
        if not fail:
            try:
                nodes = json.loads(p.stdout).get("nodes_after")
            except ValueError:
                pass
            p, fail = c.cmd("O2", ["run", "model.O2.mlc", "--inputs", "inputs.npz", "-o", "out.O2.npz"])
        if fail:
            st["O2"] = {"ok": False, "error": fail}
        else:
            ok, err, why = compare(os.path.join(c.dir, "out.O2.npz"), expected, names)
            st["O2"] = {"ok": ok, "max_abs": err, "error": why, "nodes": nodes}
    # int8
    if unsupported:
        st["int8"] = {"ok": False, "error": "not run (import failed)"}
    else:
        p, fail = c.cmd("int8", ["compress", "model.onnx", "--int8", "--calib", "inputs.npz",
                                 "--min-cosine", str(MIN_COS),
                                 "--no-speed-check", "--latency-runs", "0", "--threads", "1",
                                 "--no-cache", "-o", "model.int8.mlc"])
        if not fail:
            p, fail = c.cmd("int8", ["run", "model.int8.mlc", "--inputs", "inputs.npz",
                                     "-o", "out.int8.npz"])
        if fail:
            st["int8"] = {"ok": False, "error": fail}
        else:
            cos, why = cosines(os.path.join(c.dir, "out.int8.npz"), expected, names)
            if cos is None:
                st["int8"] = {"ok": False, "error": why}
            else:
                worst = min(cos.values()) if cos else 1.0
                st["int8"] = {"ok": worst >= MIN_COS, "cosine": worst, "cosines": cos,
                              "error": None if worst >= MIN_COS else f"cosine {worst:.5f} < {MIN_COS}"}
    r["pass"] = all(s["ok"] for s in st.values())
    r["seconds"] = round(time.time() - t_start, 1)
    r["stage_seconds"] = {k: round(v, 1) for k, v in c.seconds.items()}
    return r


def cell(s, key=None):
    if s is None:
        return "-"
    if s["ok"]:
        if key == "max_abs":
            return f"ok {s['max_abs']:.1e}"
        if key == "cosine":
            return f"ok {s['cosine']:.4f}"
        return "ok"
    e = s.get("error") or "fail"
    if key == "max_abs" and s.get("max_abs") is not None:
        return f"FAIL {s['max_abs']:.1e}"
    if key == "cosine" and s.get("cosine") is not None:
        return f"FAIL {s['cosine']:.4f}"
    if e.startswith("not run"):
        return "-"
    if e.startswith("timeout"):
        return "TIMEOUT"
    return "FAIL"


HEAD = ["model", "exporter", "ops", "import", "run", "O2", "int8", "s"]


def table_rows(results):
    rows = []
    for r in results:
        st = r["stages"]
        rows.append([r["model"], r["exporter"], str(r.get("ops") or ""), cell(st.get("import")),
                     cell(st.get("run"), "max_abs"), cell(st.get("O2"), "max_abs"),
                     cell(st.get("int8"), "cosine"), f"{r['seconds']:.0f}"])
    return rows


def table(results):
    head, rows = HEAD, table_rows(results)
    w = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head))]
    for row in rows:
        out.append("  ".join(c.ljust(w[i]) for i, c in enumerate(row)))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every exported entry, not the CI sample")
    ap.add_argument("--only", nargs="*", help="ids (tv_resnet50.ts) or model names (tv_resnet50)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per case (all stages)")
    ap.add_argument("--mlc", help="mlc binary (default target/release/mlc, built when missing)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    a = ap.parse_args()

    mlc, why = find_mlc(a.mlc)
    if why == "skip":
        # Loud, not silent: no binary and no way to build one here.
        print("corpus: skipped: target/release/mlc is missing and cargo is not on PATH")
        return 0
    if not mlc:
        print(f"corpus: FAILED: {why}")
        return 1
    t0 = time.time()
    man = cm.load_manifest()
    entries = [e for e in man["entries"] if e["status"] == "ok"]
    if a.only:
        entries = [e for e in entries if e["id"] in a.only or e["model"] in a.only]
    elif not a.all:
        known = {e["id"] for e in entries}
        missing = [i for i in CI_SAMPLE if i not in known]
        if missing:
            print(f"corpus_run: CI sample ids not in the manifest: {', '.join(missing)}")
            return 1
        entries = [e for e in entries if e["id"] in CI_SAMPLE]
    infos = cm.materialize_all([e["id"] for e in entries])
    t_mat = time.time() - t0
    print(f"corpus_run: {len(entries)} models ready in {t_mat:.0f} s; running mlc "
          f"({a.jobs} workers, {a.timeout} s per case)", flush=True)

    # Slowest-first keeps both workers busy to the end.
    def cost(e):
        return -(e.get("full_bytes") or 0) - 1000 * (e.get("op_count") or 0)

    todo = sorted(entries, key=cost)
    results = {}
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        futs = {ex.submit(run_case, mlc, e, infos[e["id"]], a.timeout): e for e in todo}
        for f in cf.as_completed(futs):
            r = f.result()
            results[r["id"]] = r
            print(f"  {r['id']}: {'pass' if r['pass'] else 'fail'} ({r['seconds']:.0f} s)", flush=True)
    order = {e["id"]: i for i, e in enumerate(man["entries"])}
    res = sorted(results.values(), key=lambda r: order[r["id"]])

    print()
    print(table(res))
    if a.markdown:
        print()
        print("| " + " | ".join(HEAD) + " |")
        print("|" + "---|" * len(HEAD))
        for row in table_rows(res):
            print("| " + " | ".join(row) + " |")
    fails = [(r["id"], k, s["error"]) for r in res for k, s in r["stages"].items()
             if not s["ok"] and not (s.get("error") or "").startswith("not run")]
    if fails:
        print("\nfirst error of each failing stage:")
        for i, k, e in fails:
            print(f"  {i} [{k}]: {e}")
    lean_ok = True
    for exp in ("ts", "dynamo"):
        sdpa, eager = results.get(f"hf_bert_sdpa.{exp}"), results.get(f"hf_bert_eager.{exp}")
        if not (sdpa and eager):
            continue
        n_sdpa = sdpa["stages"].get("O2", {}).get("nodes")
        n_eager = eager["stages"].get("O2", {}).get("nodes")
        lean = n_sdpa is not None and n_eager is not None and n_sdpa <= n_eager
        lean_ok &= lean
        print(f"\nattention after O2 ({exp}): BERT sdpa {n_sdpa} nodes, eager {n_eager}"
              + ("" if lean else " -- FAILED: the sdpa export compiles to more nodes"))
    expected = read_expected()
    broken = [r["id"] for r in res if r["id"] in expected and not r["pass"]]
    newly = [r["id"] for r in res if r["id"] not in expected and r["pass"]]
    n = sum(r["pass"] for r in res)
    total = time.time() - t0
    os.makedirs(cm.OUT, exist_ok=True)
    with open(REPORT, "w") as f:
        json.dump({"mlc": mlc, "mode": "all" if a.all else ("only" if a.only else "ci-sample"),
                   "seconds": round(total, 1), "materialize_seconds": round(t_mat, 1),
                   "passed": n, "total": len(res), "expected_pass_failing": broken,
                   "newly_passing": newly, "results": res}, f, indent=1)
    print(f"\nreport: {os.path.relpath(REPORT, REPO)}; {total:.0f} s")
    if newly:
        print(f"newly passing (add to fixtures/corpus/expected_pass.txt): {' '.join(newly)}")
    if broken:
        print(f"FAILED, listed in fixtures/corpus/expected_pass.txt: {' '.join(broken)}")
    print(f"corpus: {n}/{len(res)}")
    return 1 if broken or not lean_ok else 0


if __name__ == "__main__":
    sys.exit(main())

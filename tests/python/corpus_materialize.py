#!/usr/bin/env python3
"""Regenerates the corpus models (fixtures/corpus/) with weights, their inputs
and ONNX Runtime's outputs, under target/corpus/<id>/:

  model.onnx     the committed graph with every stripped float tensor filled
                 in as normal(mean, std) from a seed derived from (id, tensor)
                 (std 0: the constant mean, so ones/zeros stay exact)
  inputs.npz     seeded inputs at batch 2 and the manifest's test sequence
                 lengths (differs from the export's example: dynamic axes)
  expected.npz   ONNX Runtime (CPU, graph optimizations off) outputs
  info.json      stamp (hash of the committed file and this generator),
                 status ("ok" or why not), input and output names, the
                 weight variant chosen and its ulp sensitivity

A random-weight network can be chaotic: ONNX Runtime itself moves by more
than the suite's tolerance when its float inputs move by one ulp, and then no
f32 implementation could match it. Each model's weights are therefore drawn
again (variant 1, 2, ... of the seed) until ONNX Runtime's outputs, with the
inputs perturbed by one ulp, stay within a quarter of the tolerance; the
variant and that sensitivity go to info.json.

Work is redone only when the stamp changed. Runs in the test venv (numpy,
onnx, onnxruntime; tests/python/setup_venv.sh), no torch.

  python tests/python/corpus_materialize.py [--only ID ...] [--force]
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, "fixtures", "corpus")
OUT = os.path.join(REPO, "target", "corpus")
GEN_VERSION = "3"  # bump when the regeneration below changes


def load_manifest():
    with open(os.path.join(CORPUS, "manifest.json")) as f:
        return json.load(f)


def seed_of(*parts):
    h = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


def _tensors(graph):
    from onnx import AttributeProto
    for t in graph.initializer:
        yield t
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.type == AttributeProto.TENSOR:
                yield a.t
            if a.type == AttributeProto.GRAPH:
                yield from _tensors(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _tensors(g)


NP_OF = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
         TensorProto.FLOAT16: np.float16}


RTOL, ATOL = 1e-3, 1e-4  # the suite's tolerance (tests/python/corpus_run.py)
VARIANTS = 8  # weight draws tried before a model is called ill-conditioned


def fill(model, model_id, mark, variant=0):
    """Fills every stripped tensor in place (weights draw `variant`); returns how many."""
    n = 0
    for t in _tensors(model.graph):
        if not t.doc_string.startswith(mark):
            continue
        stats = json.loads(t.doc_string[len(mark):].strip())
        count = int(np.prod(t.dims)) if len(t.dims) else 1
        parts = (model_id, stats["key"]) + ((str(variant),) if variant else ())
        rng = np.random.default_rng(seed_of(*parts))
        if stats["std"] > 0:
            a = rng.standard_normal(count) * stats["std"] + stats["mean"]
        else:
            a = np.full(count, stats["mean"])
        if t.data_type == TensorProto.BFLOAT16:
            import ml_dtypes
            arr = a.astype(np.float32).astype(ml_dtypes.bfloat16)
        else:
            arr = a.astype(NP_OF[t.data_type])
        t.raw_data = arr.reshape(tuple(t.dims)).tobytes()
        t.doc_string = ""
        n += 1
    return n


def make_inputs(entry):
    """Seeded inputs at the manifest's test dims."""
    dims = entry["test_dims"]
    rng = np.random.default_rng(seed_of(entry["id"], "inputs"))
    feeds = {}
    for spec in entry["inputs"]:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in spec["shape"])
        kind = spec["kind"]
        if kind == "normal":
            a = rng.standard_normal(shape).astype(spec["dtype"])
        elif kind == "ids":
            a = rng.integers(spec["low"], spec["high"], size=shape).astype(spec["dtype"])
        elif kind == "mask":
            a = np.ones(shape, dtype=spec["dtype"])
            if shape[0] > 1:
                a[1, -3:] = 0  # padding at the end of the second row
        else:
            raise ValueError(f"input kind {kind}")
        feeds[spec["name"]] = a
    return feeds


def run_ort(path, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    # No graph rewrites (as for fixtures/): ORT's fused kernels differ from
    # its plain ones by up to ~5e-4 on the deep SiLU/SE nets here.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    return dict(zip(names, outs))


def ulp_sensitivity(path, feeds, outs):
    """How far ONNX Runtime's outputs move when every float input moves by
    one ulp (random sign), as the worst ratio of |change| to the suite's
    tolerance atol + rtol*|out|; 0 when the model has no float input."""
    rng = np.random.default_rng(0)
    moved = {}
    for k, v in feeds.items():
        if v.dtype.kind == "f":
            sign = rng.choice(np.array([-1.0, 1.0], dtype=v.dtype), size=v.shape)
            v = v + sign * np.spacing(v)
        moved[k] = v
    if all(moved[k] is feeds[k] for k in feeds):
        return 0.0
    again = run_ort(path, moved)
    worst = 0.0
    for k, b in outs.items():
        if b.dtype.kind == "f" and b.size:
            ratio = np.abs(again[k].astype(np.float64) - b) / (ATOL + RTOL * np.abs(b.astype(np.float64)))
            worst = max(worst, float(np.nanmax(ratio)))
    return worst


def materialize(entry, mark, force=False):
    """Returns info (dict with status) for one manifest entry."""
    eid = entry["id"]
    src = os.path.join(CORPUS, entry["file"])
    with open(src, "rb") as f:
        data = f.read()
    stamp = hashlib.sha256(data + GEN_VERSION.encode() + json.dumps(
        [entry["inputs"], entry["test_dims"]], sort_keys=True).encode()).hexdigest()
    d = os.path.join(OUT, eid)
    info_path = os.path.join(d, "info.json")
    if not force and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("stamp") == stamp and all(
                os.path.exists(os.path.join(d, x)) for x in ("model.onnx", "inputs.npz", "expected.npz")):
            return info
    os.makedirs(d, exist_ok=True)
    info = {"id": eid, "stamp": stamp}
    try:
        model_path = os.path.join(d, "model.onnx")
        feeds = make_inputs(entry)
        for variant in range(VARIANTS):
            m = onnx.load_from_string(data)
            info["filled"] = fill(m, eid, mark, variant)
            onnx.save(m, model_path)
            outs = run_ort(model_path, feeds)
            info["weight_variant"] = variant
            info["ulp_sensitivity"] = round(ulp_sensitivity(model_path, feeds, outs), 4)
            if info["ulp_sensitivity"] <= 0.25:
                break
        np.savez(os.path.join(d, "inputs.npz"), **feeds)
        np.savez(os.path.join(d, "expected.npz"), **outs)
        bad = [k for k, v in outs.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
        info["inputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in feeds.items()}
        info["outputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in outs.items()}
        if bad:
            info["status"] = "nonfinite ORT outputs: " + ", ".join(bad)
        elif info["ulp_sensitivity"] > 0.25:
            info["status"] = (f"ill-conditioned: {VARIANTS} weight draws all move ONNX Runtime's outputs by "
                              f">1/4 of the tolerance under a 1-ulp input change (last {info['ulp_sensitivity']})")
        else:
            info["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded per model
        msg = (str(e).strip().splitlines() or [""])[0]
        info["status"] = f"materialize failed: {type(e).__name__}: {msg[:300]}"
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    return info


def materialize_all(only=None, force=False, log=print):
    man = load_manifest()
    mark = man["strip_mark"]
    res = {}
    for e in man["entries"]:
        if e["status"] != "ok" or (only and e["id"] not in only and e["model"] not in only):
            continue
        info = materialize(e, mark, force)
        res[e["id"]] = info
        if info["status"] != "ok":
            log(f"corpus_materialize: {e['id']}: {info['status']}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="ids or model names")
    ap.add_argument("--force", action="store_true", help="regenerate even when up to date")
    a = ap.parse_args()
    res = materialize_all(a.only, a.force)
    ok = sum(i["status"] == "ok" for i in res.values())
    print(f"corpus_materialize: {ok}/{len(res)} ready under {os.path.relpath(OUT, REPO)}")
    return 0 if ok == len(res) else 1


if __name__ == "__main__":
    sys.exit(main())

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
                 status ("ok" or why not), input and output names

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
GEN_VERSION = "2"  # bump when the regeneration below changes


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


def fill(model, model_id, mark):
    """Fills every stripped tensor in place; returns how many."""
    n = 0
    for t in _tensors(model.graph):
        if not t.doc_string.startswith(mark):
            continue
        stats = json.loads(t.doc_string[len(mark):].strip())
        count = int(np.prod(t.dims)) if len(t.dims) else 1
        rng = np.random.default_rng(seed_of(model_id, stats["key"]))
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
        m = onnx.load_from_string(data)
        info["filled"] = fill(m, eid, mark)
        model_path = os.path.join(d, "model.onnx")
        onnx.save(m, model_path)
        feeds = make_inputs(entry)
        np.savez(os.path.join(d, "inputs.npz"), **feeds)
        outs = run_ort(model_path, feeds)
        np.savez(os.path.join(d, "expected.npz"), **outs)
        bad = [k for k, v in outs.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
        info["inputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in feeds.items()}
        info["outputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in outs.items()}
        info["status"] = "ok" if not bad else "nonfinite ORT outputs: " + ", ".join(bad)
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

#!/usr/bin/env python3
"""Generates the hostile input corpus: malformed models, bundles and inputs.

    python tests/python/hostile_gen.py OUTDIR [--mlc PATH]

Deterministic (fixed seeds; the same fixtures and mlc binary give the same
files). Writes OUTDIR/cases/<id>/... and OUTDIR/manifest.json, a list of

    {"id": ..., "kind": ..., "attacks": "what it attacks",
     "cmds": [{"name": "run", "args": ["run", "{case}/model.onnx", ...]}, ...]}

where the runner (tests/python/hostile_run.py) substitutes {case} (the case's
folder), {out} (a fresh, empty output folder per command) and {repo} (the
repository root). Command names are `inspect`, `run`, `compile`, `compress`,
optionally with a `:variant` suffix.

Kinds:
  trunc      truncations of every fixture model and of .mlc bundles
  bitflip    single bit flips at seeded positions of the same files
  bundle     crafted .mlc bundles (valid checksum, hostile contents)
  onnx       hostile ONNX graphs built with the onnx helper API (and raw
             protobuf for nesting deeper than the helpers allow)
  extdata    external-data tensors escaping their folder or their file
  npy        malformed .npy inputs for `mlc run --input x=FILE.npy`
  npz        malformed .npz inputs for `mlc run --inputs` / compress --calib
  dims       huge or invalid symbolic dims (`--dim NAME=SIZE`), CLI misuse
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GEN_VERSION = 1

FIXTURE_MODELS = [
    ("mlp", "fixtures/mlp/model.onnx"),
    ("cnn", "fixtures/cnn/model.onnx"),
    ("transformer", "fixtures/transformer/model.onnx"),
    ("digits_cnn", "fixtures/digits/cnn.onnx"),
    ("digits_mlp", "fixtures/digits/mlp.onnx"),
]
MLP = "{repo}/fixtures/mlp/model.onnx"
CNN = "{repo}/fixtures/cnn/model.onnx"
TRANSFORMER = "{repo}/fixtures/transformer/model.onnx"

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64
I32 = TensorProto.INT32
BOOL = TensorProto.BOOL


# Cases whose only right answer is an error: exit 0 on them counts as an
# "other" outcome (hostile input accepted), not as a success (the manifest
# lists the commands in the case's "expect_error"). Kept to inputs
# that are invalid by the format's own rules (docs/bundle.md, the ONNX and
# .npy specs), not ones mlc could reasonably accept.
EXPECT_ERROR = {
    "bundle-gemm-4-inputs",           # Gemm takes 2 or 3 inputs
    "bundle-graph-no-output",         # ONNX import refuses a graph without outputs
    "bundle-qscale-nan", "bundle-qscale-inf", "bundle-qscale--inf", "bundle-qscale-zero",
    "bundle-qscale-negative", "bundle-qscale-one-nan",  # int8 scales must be finite and > 0
    "bundle-st-dup-key", "bundle-st-dup-metadata-key",  # which of the two tensors is meant?
    "bundle-dup-graph", "bundle-unknown-section", "bundle-both-weights", "bundle-bad-sha",
    "bundle-wdeflate-len-short", "bundle-wdeflate-len-long", "bundle-st-data-short",
    "extdata-dotdot", "extdata-dotdot-deep", "extdata-absolute", "extdata-absolute-dev-zero",
    "extdata-absolute-etc-passwd", "extdata-symlink", "extdata-symlink-dir", "extdata-nul-location",
    "extdata-offset-past-end", "extdata-length-past-end", "extdata-offset-overflow",
    "npy-bad-magic", "npy-truncated-data", "npy-dtype-object", "npy-shape-overflow",
    "npz-dup-member", "npz-dup-member-bad-second", "npz-bad-crc", "npy-trailing-bytes",
    "npz-inflates-past-npy", "npz-zip-bomb-declared-small",
}


# Control cases (valid inputs built by the same code as their hostile
# neighbours): every command must succeed, so a generator bug or an mlc that
# refuses everything shows up as "other" instead of as clean errors.
CONTROLS = {"bundle-ok-rebuilt", "bundle-wdeflate-ok", "extdata-ok", "npy-ok", "npz-ok", "npz-ok-calib8"}


# ----------------------------------------------------------------- commands

def model_cmds(rel, run_extra=(), compile_=True, compress=True):
    """The four commands for a model file `rel` inside the case folder."""
    m = "{case}/" + rel
    cmds = [
        {"name": "inspect", "args": ["inspect", m]},
        {"name": "run", "args": ["run", m, "--random", "0", *run_extra]},
    ]
    if compile_:
        cmds.append({"name": "compile", "args": ["compile", m, "-o", "{out}/o.mlc"]})
    if compress:
        cmds.append({"name": "compress",
                     "args": ["compress", m, "--int8", "-o", "{out}/o.mlc", "--no-cache"]})
    return cmds


class Corpus:
    def __init__(self, out):
        self.out = out
        self.cases = []
        self.ids = set()

    def case_dir(self, cid):
        assert cid not in self.ids, cid
        d = os.path.join(self.out, "cases", cid)
        os.makedirs(d, exist_ok=True)
        return d

    def add(self, cid, kind, attacks, cmds, files=None):
        """files: {relative name: bytes}; the case folder is created either way."""
        d = self.case_dir(cid)
        for name, data in (files or {}).items():
            p = os.path.join(d, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        self.ids.add(cid)
        self.cases.append({"id": cid, "kind": kind, "attacks": attacks, "cmds": cmds})
        return d

    def model(self, cid, kind, attacks, data, run_extra=(), name="model.onnx", must_fail=False, **kw):
        if isinstance(data, onnx.ModelProto):
            data = data.SerializeToString()
        d = self.add(cid, kind, attacks, model_cmds(name, run_extra, **kw), {name: data})
        if must_fail:
            self.cases[-1]["expect_error"] = [cm["name"] for cm in self.cases[-1]["cmds"]]
        return d


# ------------------------------------------------------------ bundle helpers

def bundle_parse(data):
    assert data[:4] == b"MLCB"
    version = struct.unpack("<I", data[4:8])[0]
    p, sections = 8, []
    while p < len(data) - 32:
        n = data[p]
        name = data[p + 1:p + 1 + n].decode()
        ln = struct.unpack("<Q", data[p + 1 + n:p + 9 + n])[0]
        sections.append((name, data[p + 9 + n:p + 9 + n + ln]))
        p += 9 + n + ln
    return version, sections


def section(name, payload, length=None):
    nb = name if isinstance(name, bytes) else name.encode()
    ln = len(payload) if length is None else length
    return bytes([len(nb) & 0xFF]) + nb + struct.pack("<Q", ln) + payload


def bundle_build(version, sections, magic=b"MLCB", sha=True, raw_tail=b""):
    body = magic + struct.pack("<I", version)
    for s in sections:
        body += s if isinstance(s, bytes) else section(*s)
    body += raw_tail
    return body + (hashlib.sha256(body).digest() if sha else b"")


def deflate(data, level=9):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def inflate(data):
    return zlib.decompress(data, -15)


def zero_bomb_stream(total):
    """Raw deflate stream inflating to `total` zero bytes (multiple of 1 MiB),
    built from one full-flushed 1 MiB block repeated (about 1/1000 the size)."""
    mib = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    n = total // mib
    c2 = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = c2.compress(bytes(mib)) + c2.flush()
    return block * (n - 1) + last


def st_blob(header, data, pad=True):
    """safetensors blob from a header given as a JSON string (so duplicates
    and odd numbers can be written verbatim)."""
    h = header.encode() if isinstance(header, str) else header
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def st_parse(blob):
    hl = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + hl]), blob[8 + hl:]


def st_dump(hdr, data):
    return st_blob(json.dumps(hdr, separators=(",", ":")), data)


# --------------------------------------------------------------- onnx helpers

def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def const_i64(name, vals):
    return helper.make_tensor(name, I64, [len(vals)], vals)


def const_f32(name, vals, dims=None):
    vals = list(vals)
    return helper.make_tensor(name, F32, dims if dims is not None else [len(vals)], vals)


def scalar(name, dt, v):
    return helper.make_tensor(name, dt, [], [v])


def mk(nodes, inputs, outputs, inits=(), opset=17, ir=8, opsets=None, value_info=()):
    g = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=list(inits),
                          value_info=list(value_info))
    m = helper.make_model(g, opset_imports=opsets if opsets is not None
                          else [helper.make_opsetid("", opset)], producer_name="hostile_gen")
    m.ir_version = ir
    return m


def node(op, ins, outs, name=None, domain=None, **attrs):
    return helper.make_node(op, ins, outs, name=name or f"{op}_{outs[0] if outs else 'n'}",
                            domain=domain, **attrs)


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_field(num, wire, payload):
    """A protobuf field; wire 2 (length-delimited) or 0 (varint, payload int)."""
    if wire == 0:
        return varint(num << 3) + varint(payload)
    return varint((num << 3) | 2) + varint(len(payload)) + payload


def nested_chain(depth, prefix_fn, core):
    """Bytes for `depth` nested length-delimited messages, each the last field
    of its parent: prefix_fn(i) gives (fields before the nested one, field
    number of the nested one). O(depth) instead of O(depth^2) concatenation."""
    lengths = []
    ln = len(core)
    prefixes = []
    for i in range(depth):
        pre, num = prefix_fn(i)
        tag = varint((num << 3) | 2)
        prefixes.append(pre + tag + varint(ln))
        ln = len(prefixes[-1]) + ln
        lengths.append(ln)
    return b"".join(reversed(prefixes)) + core


# ====================================================================== kinds

def protobuf_rejects(data):
    """Whether the reference protobuf parser refuses the bytes as a ModelProto
    (then mlc must refuse them too: a cut or flip that breaks the framing)."""
    try:
        onnx.ModelProto().ParseFromString(data)
        return False
    except Exception:
        return True


def must_fail(fname, data, whole):
    """A changed bundle fails its SHA-256; a changed ONNX file must fail when
    the protobuf framing is broken."""
    if data == whole:
        return False
    return fname.endswith(".mlc") or protobuf_rejects(data)


def gen_trunc_bitflip(c, bundles):
    files = [(n, os.path.join(REPO, p), "model.onnx") for n, p in FIXTURE_MODELS]
    files += [(n, p, "model.mlc") for n, p in bundles]
    for name, path, fname in files:
        data = open(path, "rb").read()
        n = len(data)
        lengths = sorted({0, 1, 4, 8, 64, 1000, n // 4, n // 2, n - 33, n - 32, n - 1})
        for ln in lengths:
            c.model(f"trunc-{name}-{ln}", "trunc",
                    f"{fname} of {name} truncated to {ln} of {n} bytes", data[:ln], name=fname,
                    must_fail=must_fail(fname, data[:ln], data))
        rng = random.Random(f"bitflip-{name}")
        # Half the flips in the first 2 KiB (graph structure, headers, section
        # lengths), half anywhere (mostly weights), one in the last 64 bytes.
        positions = [rng.randrange(min(2048, n)) * 8 + rng.randrange(8) for _ in range(6)]
        positions += [rng.randrange(n) * 8 + rng.randrange(8) for _ in range(5)]
        positions += [(n - 1 - rng.randrange(64)) * 8 + rng.randrange(8)]
        for bit in positions:
            b = bytearray(data)
            b[bit // 8] ^= 1 << (bit % 8)
            c.model(f"bitflip-{name}-{bit // 8}.{bit % 8}", "bitflip",
                    f"{fname} of {name} with bit {bit % 8} of byte {bit // 8} flipped", bytes(b),
                    name=fname, must_fail=must_fail(fname, bytes(b), data))
    # Bit flips in bundles with the checksum recomputed, so the reader's checks
    # behind the checksum see them.
    for name, path in bundles:
        data = open(path, "rb").read()
        rng = random.Random(f"bitflip-resha-{name}")
        body = data[:-32]
        for _ in range(8):
            bit = rng.randrange(len(body) * 8)
            b = bytearray(body)
            b[bit // 8] ^= 1 << (bit % 8)
            c.model(f"bitflip-resha-{name}-{bit // 8}.{bit % 8}", "bitflip",
                    f"bundle {name}, bit {bit % 8} of byte {bit // 8} flipped, SHA-256 recomputed",
                    bytes(b) + hashlib.sha256(bytes(b)).digest(), name="model.mlc")


def gen_bundle(c, bundles):
    mlp_v, mlp_secs = bundle_parse(open(dict(bundles)["mlp_O2"], "rb").read())
    cnn_v, cnn_secs = bundle_parse(open(dict(bundles)["digits_cnn_int8"], "rb").read())
    S = dict(mlp_secs)
    C = dict(cnn_secs)
    graph_txt = inflate(S["graph"]).decode()
    cnn_txt = inflate(C["graph"]).decode()
    wblob = S["weights"] if "weights" in S else None
    if wblob is None:
        wblob = inflate(S["weights.deflate"][8:])
    cblob = C["weights"] if "weights" in C else inflate(C["weights.deflate"][8:])

    # The format version this mlc writes (and the meta records).
    assert mlp_v == cnn_v, (mlp_v, cnn_v)
    cur_version = b'"format_version": %d' % mlp_v

    def b(cid, attacks, sections, version=mlp_v, **kw):
        c.model(f"bundle-{cid}", "bundle", attacks, bundle_build(version, sections, **kw),
                name="model.mlc")

    def mlp_with(graph=None, weights=None, meta=None, wname="weights"):
        g = deflate(graph.encode()) if isinstance(graph, str) else (graph if graph is not None else S["graph"])
        return [("graph", g), (wname, weights if weights is not None else wblob),
                ("meta", meta if meta is not None else S["meta"])]

    ok = mlp_with()
    # Envelope.
    b("ok-rebuilt", "control: the mlp bundle taken apart and rebuilt byte for byte", ok)
    b("version0", "format version 0", ok, version=0)
    b("version-next", f"format version {mlp_v + 1} (newer than this mlc)", ok, version=mlp_v + 1)
    b("version-max", "format version 2^32-1", ok, version=0xFFFFFFFF)
    b("bad-magic", "wrong magic bytes in a file named .mlc", ok, magic=b"MLCX")
    b("no-sha", "checksum missing (file ends after the last section)", ok, sha=False)
    b("bad-sha", "checksum of other bytes", ok, sha=False, raw_tail=b"\x00" * 32)
    b("graph-len-max", "graph section length 2^64-1",
      [section("graph", S["graph"], 2**64 - 1)] + [section(*s) for s in ok[1:]])
    b("graph-len-2^63", "graph section length 2^63",
      [section("graph", S["graph"], 2**63)] + [section(*s) for s in ok[1:]])
    b("meta-len-past-end", "last section's length runs past the checksum",
      [section(*s) for s in ok[:2]] + [section("meta", S["meta"], len(S["meta"]) + 40)])
    b("weights-len-short", "weights section length 8 bytes short (the rest read as a section header)",
      [section(*ok[0]), section("weights", wblob, len(wblob) - 8), section(*ok[2])])
    b("name-len-255", "section name length 255 (runs into the payload)",
      [bytes([255]) + b"graph" + struct.pack("<Q", len(S["graph"])) + S["graph"]]
      + [section(*s) for s in ok[1:]])
    b("name-empty", "a section with an empty name", ok + [("", b"x")])
    b("name-non-ascii", "a section name that is not ASCII/UTF-8", ok + [(b"\xff\xfe", b"x")])
    b("dup-graph", "the graph section twice", ok + [ok[0]])
    b("unknown-section", "an unknown section", ok + [("evil", b"x" * 16)])
    b("missing-meta", "no meta section", ok[:2])
    b("missing-graph", "no graph section", ok[1:])
    b("no-sections", "magic, version and checksum only", [])
    b("both-weights", "both weights and weights.deflate",
      ok + [("weights.deflate", struct.pack("<Q", len(wblob)) + deflate(wblob))])
    b("trailing-garbage", "bytes after the last section (covered by the checksum)",
      ok, raw_tail=b"\x01\x02\x03")
    b("section-len-one-byte-short-of-u64", "section header cut inside its u64 length",
      [section(*s) for s in ok], raw_tail=b"\x05graph\x01\x02")
    # Graph section.
    b("graph-not-deflate", "graph payload that is not a deflate stream", mlp_with(graph=b"\xff" * 64))
    b("graph-plain-text", "graph stored as plain text (format 3 on deflates it)",
      mlp_with(graph=graph_txt.encode()))
    b("graph-bomb-300MiB", "graph inflating to 300 MiB (limit 256 MiB)",
      mlp_with(graph=zero_bomb_stream(300 << 20)))
    b("graph-bomb-4GiB", "graph inflating to 4 GiB of zeros",
      mlp_with(graph=zero_bomb_stream(4 << 30)))
    b("graph-not-utf8", "graph text that is not UTF-8", mlp_with(graph=deflate(b"graph \xff\xfe\n")))
    b("graph-empty", "empty graph text", mlp_with(graph=""))
    lines = graph_txt.splitlines()
    no_out = "\n".join(l for l in lines if not l.strip().startswith("output")) + "\n"
    b("graph-no-output", "a graph with no output", mlp_with(graph=no_out))
    b("gemm-4-inputs", "a Gemm node with 4 inputs",
      mlp_with(graph=graph_txt.replace("(%5, %3, %4)", "(%5, %3, %4, %4)")))
    b("gemm-1-input", "a Gemm node with 1 input",
      mlp_with(graph=graph_txt.replace("(%5, %3, %4)", "(%5)")))
    b("use-before-def", "a node using a value defined after it (cycle)",
      mlp_with(graph=graph_txt.replace("(%0, %1, %2)", "(%6, %1, %2)")))
    b("undefined-value", "a node using %99, never defined",
      mlp_with(graph=graph_txt.replace("(%5, %3, %4)", "(%99, %3, %4)")))
    b("value-number-huge", "a value numbered 2^64",
      mlp_with(graph=graph_txt.replace("(%5, %3, %4)", "(%18446744073709551616, %3, %4)")))
    b("dup-value", "two values numbered %5",
      mlp_with(graph=graph_txt.replace("%6 y:", "%5 y:").replace("output %6", "output %5")))
    b("unknown-op", "an op name mlc does not know",
      mlp_with(graph=graph_txt.replace("= Gemm[", "= EvilOp[")))
    b("huge-dim", "input dim 10^30", mlp_with(graph=graph_txt.replace("f32[batch,64]", "f32[1000000000000000000000000000000,64]")))
    b("dim-product-overflow", "input dims whose product overflows u64",
      mlp_with(graph=graph_txt.replace("input  %0 x: f32[batch,64]",
                                       "input  %0 x: f32[4294967296,4294967296,4294967296,64]")))
    b("negative-dim", "input dim -64", mlp_with(graph=graph_txt.replace("f32[batch,64]", "f32[batch,-64]")))
    b("const-shape-mismatch", "a constant whose declared shape disagrees with its weights",
      mlp_with(graph=graph_txt.replace("f32[128,64]", "f32[128,65]")))
    b("const-shape-huge", "a constant declared f32[2^31,2^31]",
      mlp_with(graph=graph_txt.replace("f32[128,64]", "f32[2147483648,2147483648]")))
    b("attr-million-ints", "an attribute with a million ints",
      mlp_with(graph=graph_txt.replace("alpha=1, beta=1,", "alpha=1, beta=1, evil=[" + ", ".join(["7"] * 1000000) + "],")))
    b("deep-brackets", "100000 nested brackets in an attribute",
      mlp_with(graph=graph_txt.replace("alpha=1, beta=1,", "alpha=1, beta=1, evil=" + "[" * 100000 + "]" * 100000 + ",")))
    b("long-name", "a 1 MB value name", mlp_with(graph=graph_txt.replace('"/0/Gemm_output_0"', '"' + "A" * 1000000 + '"')))
    b("opset-0", "graph opset 0", mlp_with(graph=graph_txt.replace("opset 17", "opset 0")))
    b("opset-1e9", "graph opset 10^9", mlp_with(graph=graph_txt.replace("opset 17", "opset 1000000000")))
    # Weights (safetensors).
    hdr, data = st_parse(wblob)
    b("st-header-len-max", "safetensors header length 2^64-1",
      mlp_with(weights=struct.pack("<Q", 2**64 - 1) + wblob[8:]))
    b("st-header-len-past", "safetensors header length past the blob",
      mlp_with(weights=struct.pack("<Q", len(wblob)) + wblob[8:]))
    hs = json.dumps(hdr, separators=(",", ":"))
    dup = hs[:-1] + ',"1":' + json.dumps(hdr["1"], separators=(",", ":")) + "}"
    b("st-dup-key", "the same tensor key twice in the safetensors header", mlp_with(weights=st_blob(dup, data)))
    h2 = dict(hdr)
    h2["__metadata__"] = {"mlc.dtype.1": "f32", "mlc.dtype.1 ": "i4"}
    dupm = json.dumps(h2, separators=(",", ":")).replace('"mlc.dtype.1 "', '"mlc.dtype.1"')
    b("st-dup-metadata-key", "the same __metadata__ key twice", mlp_with(weights=st_blob(dupm, data)))
    b("st-not-json", "safetensors header that is not JSON", mlp_with(weights=st_blob("{nope", data)))
    b("st-deep-json", "safetensors header nested 100000 deep",
      mlp_with(weights=st_blob("[" * 100000 + "]" * 100000, data)))

    def hmod(cid, attacks, fn, dat=None):
        h = json.loads(json.dumps(hdr))
        fn(h)
        b(cid, attacks, mlp_with(weights=st_dump(h, data if dat is None else dat)))

    hmod("st-offsets-past-end", "data_offsets past the data",
         lambda h: h["4"].update(data_offsets=[38400, 38440 + 2**40]))
    hmod("st-offsets-overflow", "data_offsets near 2^64",
         lambda h: h["4"].update(data_offsets=[2**64 - 8, 2**64 + 32]))
    hmod("st-offsets-reversed", "data_offsets end before start",
         lambda h: h["4"].update(data_offsets=[38440, 38400]))
    hmod("st-overlap", "two tensors sharing bytes",
         lambda h: h["2"].update(data_offsets=[32768 - 512, 33280 - 512]))
    hmod("st-shape-overflow", "tensor shape whose product overflows u64",
         lambda h: h["4"].update(shape=[2**32, 2**32, 2**32]))
    hmod("st-shape-negative", "negative tensor dim", lambda h: h["4"].update(shape=[-10]))
    hmod("st-shape-float", "non-integer tensor dim", lambda h: h["4"].update(shape=[10.5]))
    hmod("st-dtype-unknown", "unknown safetensors dtype", lambda h: h["4"].update(dtype="F128"))
    hmod("st-missing-tensor", "a constant with no tensor", lambda h: h.pop("4"))
    hmod("st-extra-tensor", "a tensor for no constant", lambda h: h.update({"99": {"dtype": "U8", "shape": [0], "data_offsets": [38440, 38440]}}))
    hmod("st-bad-mlc-key", "an unknown mlc. metadata key", lambda h: h.update(__metadata__={"mlc.evil": "1"}))
    hmod("st-mlc-shape-huge", "mlc.shape for a tensor that is not packed, with huge dims",
         lambda h: h.update(__metadata__={"mlc.shape.4": "[4294967296,4294967296]"}))
    hmod("st-mlc-dtype-i4-huge-shape", "a packed i4 tensor whose mlc.shape overflows",
         lambda h: (h["4"].update(dtype="U8"),
                    h.update(__metadata__={"mlc.dtype.4": "i4", "mlc.shape.4": "[18446744073709551615,3]"})))
    hmod("st-data-short", "tensor data shorter than the header says",
         lambda h: None, dat=data[:-4])
    # Quantization scales of the int8 CNN: tensor 8 (f16 stored, f32 real).
    ch, cdata = st_parse(cblob)
    import re
    sc = re.findall(r"const +%(\d+) \"[^\"]*\.scale\": f32", cnn_txt)
    assert sc, "the int8 CNN bundle has no weight scales (compress kept every layer f32?)"
    scale_key = sc[0]
    if scale_key:
        lo, hi = ch[scale_key]["data_offsets"]
        f16 = ch[scale_key]["dtype"] == "F16"  # f16-exact f32 scales are stored as F16
        width, fmt = (2, "<e") if f16 else (4, "<f")
        tiny = 2.0 ** -24 if f16 else 1e-45
        hdr_bytes = cblob[8:8 + struct.unpack("<Q", cblob[:8])[0]]
        for tag, v in [("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf")), ("zero", 0.0),
                       ("negative", -1.0), ("subnormal", tiny)]:
            d2 = bytearray(cdata)
            d2[lo:hi] = struct.pack(fmt, v) * ((hi - lo) // width)
            blob2 = st_blob(hdr_bytes, bytes(d2), pad=False)
            secs = [("graph", C["graph"]), ("weights", blob2), ("meta", C["meta"])]
            b(f"qscale-{tag}", f"int8 CNN with every weight scale of tensor {scale_key} {tag}", secs)
        d3 = bytearray(cdata)
        d3[lo:lo + width] = struct.pack(fmt, float("nan"))
        b("qscale-one-nan", "int8 CNN with one weight scale NaN",
          [("graph", C["graph"]), ("weights", st_blob(hdr_bytes, bytes(d3), pad=False)), ("meta", C["meta"])])
    # The quantized graph with a QConv input count changed.
    b("qconv-3-inputs", "QConv with a missing input",
      [("graph", deflate(cnn_txt.replace("(%0, %7, %8, %3)", "(%0, %7, %8)").encode())),
       ("weights", cblob), ("meta", C["meta"])])
    b("qconv-scale-i8", "QConv whose scale input is the i8 weight",
      [("graph", deflate(cnn_txt.replace("(%0, %7, %8, %3)", "(%0, %7, %7, %3)").encode())),
       ("weights", cblob), ("meta", C["meta"])])
    # weights.deflate.
    def wd(cid, attacks, declared, stream):
        b(cid, attacks, mlp_with(weights=struct.pack("<Q", declared) + stream, wname="weights.deflate"))

    good = deflate(wblob)
    wd("wdeflate-ok", "control: weights as weights.deflate", len(wblob), good)
    wd("wdeflate-len-max", "weights.deflate declared length 2^64-1", 2**64 - 1, good)
    wd("wdeflate-len-1032x", "declared length 1032 times the stream (the largest the reader allows)",
       1032 * len(good), good)
    wd("wdeflate-len-short", "declared length shorter than the stream inflates to", len(wblob) - 100, good)
    wd("wdeflate-len-long", "declared length longer than the stream inflates to", len(wblob) + 100, good)
    wd("wdeflate-not-deflate", "weights.deflate stream that is not deflate data", len(wblob), b"\xff" * 4096)
    wd("wdeflate-truncated", "weights.deflate stream cut in half", len(wblob), good[:len(good) // 2])
    wd("wdeflate-no-length", "weights.deflate payload of 3 bytes (no u64 length)", 0, b"")
    b("wdeflate-3-bytes", "weights.deflate payload shorter than its u64 length",
      mlp_with(weights=b"\x01\x02\x03", wname="weights.deflate"))
    bomb = zero_bomb_stream(8 << 30)
    wd("wdeflate-bomb-8GiB", "deflate bomb: 8.5 MB stream inflating to 8 GiB, declared 8 GiB",
       8 << 30, bomb)
    wd("wdeflate-bomb-small-declared", "deflate bomb: 8.5 MB stream inflating to 8 GiB, declared 1 MiB",
       1 << 20, bomb)
    # A safetensors blob whose header claims a huge length, deflated (to reach
    # the safetensors reader through the inflater).
    evil = struct.pack("<Q", 2**62) + b"{}" + bytes(1 << 20)
    wd("wdeflate-st-header-huge", "inflated safetensors blob declaring a 2^62 byte header",
       len(evil), deflate(evil))
    # Meta.
    b("meta-not-json", "meta that is not JSON", mlp_with(meta=b"{{{"))
    b("meta-deep", "meta nested 100000 deep", mlp_with(meta=b"[" * 100000 + b"]" * 100000))
    b("meta-huge-number", "meta with a 100000-digit number",
      mlp_with(meta=S["meta"].replace(cur_version, b'"format_version": ' + b"9" * 100000)))
    b("meta-wrong-version", "meta format_version disagrees with the header",
      mlp_with(meta=S["meta"].replace(cur_version, b'"format_version": 99')))
    b("meta-not-utf8", "meta that is not UTF-8", mlp_with(meta=b'{"a": "\xff"}'))


# --------------------------------------------------------------------- onnx

def gen_onnx(c):
    def o(cid, attacks, model, run_extra=(), **kw):
        c.model(f"onnx-{cid}", "onnx", attacks, model, run_extra, **kw)

    x1 = [vi("x", F32, [1])]
    y = [vi("y", F32, None)]

    # Huge declared dims / shape product overflow.
    o("input-dim-2^62", "input f32[2^62,2^62]",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [2**62, 2**62])], y))
    o("input-dim-i64max", "input f32[2^63-1]",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [2**63 - 1])], y))
    o("input-dim-product-u64", "input f32[2^32,2^32,2^32] (product overflows u64)",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [2**32, 2**32, 2**32])], y))
    o("input-dim-negative", "input f32[-5]",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [-5])], y))
    o("input-dim-8GiB", "input f32[2^31] (8 GiB of random input)",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [2**31])], y))
    t = TensorProto(name="w", data_type=F32, dims=[2**40])
    o("init-no-data-2^40", "initializer f32[2^40] with no data",
      mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=F32, dims=[2**31, 2**31], raw_data=b"\0\0\0\0")
    o("init-raw-short", "initializer f32[2^31,2^31] with 4 bytes of raw data",
      mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=F32, dims=[2**32, 2**32, 2**32])
    o("init-dims-overflow", "initializer dims whose product overflows u64",
      mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=F32, dims=[-4], float_data=[1, 2, 3, 4])
    o("init-dim-negative", "initializer with dim -4", mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=F32, dims=[4], float_data=[1, 2, 3])
    o("init-float-data-short", "initializer f32[4] with 3 float_data values",
      mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=999, dims=[1], raw_data=b"\0\0\0\0")
    o("init-dtype-999", "initializer data type 999", mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=0, dims=[1], raw_data=b"\0\0\0\0")
    o("init-dtype-undefined", "initializer data type UNDEFINED", mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=TensorProto.STRING, dims=[1], string_data=[b"evil"])
    o("init-string-add", "string initializer added to a float", mk([node("Add", ["x", "w"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=TensorProto.INT8, dims=[2], int32_data=[300, -1000])
    o("init-int8-out-of-range", "int8 initializer stored as int32_data 300, -1000",
      mk([node("Cast", ["w"], ["wf"], to=F32), node("Add", ["x", "wf"], ["y"])], x1, y, [t]))
    t = TensorProto(name="w", data_type=TensorProto.INT4, dims=[3], raw_data=b"\x12")
    o("init-int4-short", "int4 initializer [3] with 1 byte of data",
      mk([node("Cast", ["w"], ["wf"], to=F32), node("Add", ["x", "wf"], ["y"])], x1, y, [t], opset=21, ir=10))

    # Terabyte requests.
    def shape_model(op, shape, extra_inits=(), inputs=None, ins=None, **attrs):
        inits = [const_i64("s", shape)] + list(extra_inits)
        return mk([node(op, ins or ["x", "s"], ["y"], **attrs)], inputs or x1, y, inits)

    big = helper.make_tensor("v", F32, [1], [1.0])
    o("cos-tb", "ConstantOfShape [10^6,10^6] (4 TB)",
      mk([node("ConstantOfShape", ["s"], ["y"], value=big)], [], y, [const_i64("s", [10**6, 10**6])]))
    o("cos-overflow", "ConstantOfShape [2^32,2^32,2^32] (product overflows)",
      mk([node("ConstantOfShape", ["s"], ["y"], value=big)], [], y, [const_i64("s", [2**32] * 3)]))
    o("cos-negative", "ConstantOfShape [-1]",
      mk([node("ConstantOfShape", ["s"], ["y"], value=big)], [], y, [const_i64("s", [-1])]))
    o("cos-i64max", "ConstantOfShape [2^63-1]",
      mk([node("ConstantOfShape", ["s"], ["y"], value=big)], [], y, [const_i64("s", [2**63 - 1])]))
    o("expand-tb", "Expand f32[1] to [10^12] (4 TB)", shape_model("Expand", [10**12]))
    o("expand-overflow", "Expand to [2^62,8]", shape_model("Expand", [2**62, 8]))
    o("expand-8GiB", "Expand f32[1] to [2,2^30] (8 GiB)", shape_model("Expand", [2, 2**30]))
    o("expand-17GB", "Expand f32[1] to [17,2^28] (17 GiB)", shape_model("Expand", [17, 2**28]))
    o("tile-tb", "Tile f32[1] by 10^12", shape_model("Tile", [10**12]))
    o("tile-overflow", "Tile f32[1,1] by [2^40,2^40]", shape_model("Tile", [2**40, 2**40], inputs=[vi("x", F32, [1, 1])]))
    o("tile-8GiB", "Tile f32[1] by 2^31 (8 GiB)", shape_model("Tile", [2**31]))
    o("tile-16GiB", "Tile f32[2,2] by [2^15,2^15] (16 GiB)", shape_model("Tile", [2**15, 2**15], inputs=[vi("x", F32, [2, 2])]))
    o("tile-negative", "Tile by -3", shape_model("Tile", [-3]))

    def range_model(start, limit, delta, dt=F32, dyn=True, post=None):
        mkc = (lambda n, v: scalar(n, dt, v))
        inits = [mkc("l", limit), mkc("d", delta)]
        if dyn:
            ins = [vi("x", dt, [])]
            nodes = [node("Range", ["x", "l", "d"], ["r"])]
        else:
            ins = []
            inits.append(mkc("x", start))
            nodes = [node("Range", ["x", "l", "d"], ["r"])]
        if post:
            nodes.append(node(post, ["r"], ["y"]))
        else:
            nodes[-1].output[0] = "y"
        return mk(nodes, ins, [vi("y", dt, None)], inits)

    o("range-tb", "Range 0..10^13 step 1 f32 (40 TB)", range_model(0.0, 1e13, 1.0))
    o("range-const-tb", "constant Range 0..10^13 (folded at compile time?)", range_model(0.0, 1e13, 1.0, dyn=False))
    o("range-8GiB", "Range x..2^31 f32 (8 GiB)", range_model(0.0, float(2**31), 1.0))
    o("range-i64-8GiB", "Range x..2^30 i64 (8 GiB)", range_model(0, 2**30, 1, dt=I64))
    o("cos-range-8GiB", "Cos over a Range of 2^31 f32 (8 + 8 GiB)", range_model(0.0, float(2**31), 1.0, post="Cos"))
    o("range-delta-0", "Range with delta 0", range_model(0.0, 10.0, 0.0))
    o("range-delta-0-i64", "Range i64 with delta 0", range_model(0, 10, 0, dt=I64))
    o("range-delta-tiny", "Range 0..1 with delta 1e-30 (10^30 elements)", range_model(0.0, 1.0, 1e-30))
    o("range-nan", "Range with limit NaN", range_model(0.0, float("nan"), 1.0))
    o("range-inf", "Range with limit inf", range_model(0.0, float("inf"), 1.0))
    o("range-i64-overflow", "Range i64 from -2^63 to 2^63-1 step 1", range_model(-2**63, 2**63 - 1, 1, dt=I64, dyn=False))

    def resize_model(xshape, scales):
        return mk([node("Resize", ["x", "", "sc"], ["y"], mode="nearest")],
                  [vi("x", F32, xshape)], y, [const_f32("sc", scales)])

    o("resize-tb", "Resize f32[1,1,4,4] by [1,1,10^6,10^6]", resize_model([1, 1, 4, 4], [1, 1, 1e6, 1e6]))
    o("resize-8GiB", "Resize f32[1,1,1024,1024] by [1,1,64,32] (8 GiB)", resize_model([1, 1, 1024, 1024], [1, 1, 64, 32]))
    o("resize-inf", "Resize by inf", resize_model([1, 1, 4, 4], [1, 1, float("inf"), 1]))
    o("resize-nan", "Resize by NaN", resize_model([1, 1, 4, 4], [1, 1, float("nan"), 1]))
    o("resize-negative", "Resize by -2", resize_model([1, 1, 4, 4], [1, 1, -2, 1]))
    o("resize-sizes-tb", "Resize to sizes [1,1,10^6,10^6]",
      mk([node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest")], [vi("x", F32, [1, 1, 4, 4])], y,
         [const_i64("sz", [1, 1, 10**6, 10**6])]))

    def conv_pad(p, xs=(1, 1, 1, 1)):
        return mk([node("Conv", ["x", "w"], ["y"], pads=[p, p, p, p])], [vi("x", F32, list(xs))], y,
                  [const_f32("w", [1.0], [1, 1, 1, 1])])

    o("conv-pad-8GiB", "1x1 Conv of f32[1,1,1,1] with pads 23170 (8.6 GB output)", conv_pad(23170))
    o("conv-pad-17GB", "1x1 Conv of f32[1,1,1,1] with pads 32768 (17 GB output)", conv_pad(32768))
    o("conv-pad-overflow", "Conv with pads 2^62", conv_pad(2**62))
    o("conv-pad-stride-tb", "3x3 Conv, 64 channels, pads and strides 10^5: a 3x3 output over a 4*10^10-float padded plane",
      mk([node("Conv", ["x", "w"], ["y"], pads=[10**5] * 4, strides=[10**5] * 2)], [vi("x", F32, [1, 64, 10, 10])], y,
         [const_f32("w", [0.01] * (64 * 64 * 9), [64, 64, 3, 3])]))
    o("pad-tb", "Pad f32[1] by 2^40 on one side",
      mk([node("Pad", ["x", "p"], ["y"])], x1, y, [const_i64("p", [0, 2**40])]))
    o("pad-negative-huge", "Pad f32[1] by -2^40",
      mk([node("Pad", ["x", "p"], ["y"])], x1, y, [const_i64("p", [-2**40, 0])]))

    # Doubling chains that would fold to many GB.
    def chain(op, steps, from_input):
        nodes, cur = [], "c0"
        inits = [] if from_input else [const_f32("c0", [1.0] * 1024)]
        ins = [vi("c0", F32, [1024])] if from_input else [vi("x", F32, [1])]
        if op == "Tile":
            inits.append(const_i64("two", [2]))
        for i in range(steps):
            nxt = f"c{i + 1}"
            if op == "Concat":
                nodes.append(node("Concat", [cur, cur], [nxt], axis=0))
            else:
                nodes.append(node("Tile", [cur, "two"], [nxt]))
            cur = nxt
        if from_input:
            nodes.append(node("ReduceSum", [cur], ["y"], keepdims=0))
        else:
            nodes.append(node("ReduceSum", [cur], ["r"], keepdims=0))
            nodes.append(node("Add", ["x", "r"], ["y"]))
        return mk(nodes, ins, y, inits)

    o("concat-chain-const-64GiB", "constant f32[1024] doubled by Concat 24 times (64 GiB if folded)", chain("Concat", 24, False))
    o("tile-chain-const-64GiB", "constant f32[1024] doubled by Tile 24 times (64 GiB if folded)", chain("Tile", 24, False))
    o("concat-chain-input-16GiB", "input f32[1024] doubled by Concat 22 times (16 GiB at run time)", chain("Concat", 22, True))
    o("concat-chain-const-4GiB", "constant doubled by Concat 20 times (4 GiB if folded)", chain("Concat", 20, False))

    # Deep recursion.
    # Nesting is built as raw protobuf bytes: the Python protobuf runtime
    # refuses to copy messages nested deeper than 100.
    def pb_node(op, ins, outs, attrs=()):
        b = b"".join(pb_field(1, 2, i.encode()) for i in ins) + b"".join(pb_field(2, 2, o.encode()) for o in outs)
        b += pb_field(3, 2, f"{op}_{outs[0]}".encode()) + pb_field(4, 2, op.encode())
        for name, g in attrs:  # graph attributes
            b += pb_field(5, 2, pb_field(1, 2, name.encode()) + pb_field(20, 0, 5) + pb_field(6, 2, g))
        return pb_field(1, 2, b)

    def pb_graph(name, nodes, inputs, outputs, inits=b""):
        return (b"".join(nodes) + pb_field(2, 2, name.encode()) + inits
                + b"".join(pb_field(11, 2, v.SerializeToString()) for v in inputs)
                + b"".join(pb_field(12, 2, v.SerializeToString()) for v in outputs))

    def pb_model(graph, opset=17):
        return pb_field(1, 0, 8) + pb_field(8, 2, pb_field(2, 0, opset)) + pb_field(7, 2, graph)

    def nested_if(depth):
        g = pb_graph("g0", [pb_node("Identity", ["x"], ["o0"])], [], [vi("o0", F32, [1])])
        for d in range(1, depth + 1):
            e = pb_graph(f"e{d}", [pb_node("Identity", ["x"], [f"e{d}"])], [], [vi(f"e{d}", F32, [1])])
            g = pb_graph(f"g{d}", [pb_node("If", ["c"], [f"o{d}"], [("then_branch", g), ("else_branch", e)])],
                         [], [vi(f"o{d}", F32, [1])])
        top = pb_graph("hostile", [pb_node("If", ["c"], ["y"], [("then_branch", g), ("else_branch", g)])],
                       [vi("c", BOOL, []), vi("x", F32, [1])], [vi("y", F32, [1])])
        return pb_model(top)

    def nested_loop(depth):
        def body_io(d):
            return ([vi(f"i{d}", I64, []), vi("cond_in", BOOL, []), vi(f"v_in{d}", F32, [1])],
                    [vi(f"cond_out{d}", BOOL, []), vi(f"v_out{d}", F32, [1])])
        g = pb_graph("b0", [pb_node("Identity", ["cond_in"], ["cond_out0"]), pb_node("Identity", ["v_in0"], ["v_out0"])],
                     *body_io(0))
        for d in range(1, depth + 1):
            g = pb_graph(f"b{d}", [pb_node("Identity", ["cond_in"], [f"cond_out{d}"]),
                                   pb_node("Loop", ["trip", "", f"v_in{d}"], [f"v_out{d}"], [("body", g)])],
                         *body_io(d))
        top = pb_graph("hostile", [pb_node("Loop", ["trip", "", "x"], ["y"], [("body", g)])],
                       [vi("x", F32, [1])], [vi("y", F32, [1])],
                       pb_field(5, 2, scalar("trip", I64, 1).SerializeToString()))
        return pb_model(top)

    o("if-nested-5", "control: If nested 5 deep", nested_if(5))
    o("if-nested-150", "If nested 150 deep", nested_if(150))
    o("if-nested-2000", "If nested 2000 deep", nested_if(2000))

    o("loop-nested-5", "control: Loop nested 5 deep", nested_loop(5))
    o("loop-nested-150", "Loop nested 150 deep", nested_loop(150))

    # Raw protobuf nesting: node -> attribute(g) -> graph -> node -> ...
    def deep_attr_graph(depth):
        # GraphProto{node: NodeProto{op_type: "If", attribute: AttributeProto{name, type=GRAPH, g: GraphProto{...}}}}
        def pre(i):
            k = i % 3
            if k == 0:   # inside AttributeProto: name=1, type=20 (GRAPH=5), then g=6
                return pb_field(1, 2, b"then_branch") + pb_field(20, 0, 5), 6
            if k == 1:   # inside NodeProto: op_type=4, then attribute=5
                return pb_field(4, 2, b"If"), 5
            return b"", 1  # inside GraphProto: node=1
        depth -= depth % 3
        inner = nested_chain(depth, pre, b"")  # a GraphProto's bytes
        graph = pb_field(1, 2, pb_field(4, 2, b"Relu") + pb_field(1, 2, b"x") + pb_field(2, 2, b"y"))
        graph += pb_field(1, 2, pb_field(4, 2, b"If") + pb_field(1, 2, b"c") + pb_field(2, 2, b"z")
                          + pb_field(5, 2, pb_field(1, 2, b"then_branch") + pb_field(20, 0, 5) + pb_field(6, 2, inner)))
        graph += pb_field(11, 2, vi("x", F32, [1]).SerializeToString())
        graph += pb_field(11, 2, vi("c", BOOL, []).SerializeToString())
        graph += pb_field(12, 2, vi("y", F32, [1]).SerializeToString())
        model = pb_field(1, 0, 8) + pb_field(8, 2, pb_field(2, 0, 17)) + pb_field(7, 2, graph)
        return model

    o("pb-nested-300", "protobuf messages nested 300 deep (If graphs)", deep_attr_graph(300))
    o("pb-nested-100000", "protobuf messages nested 100000 deep (If graphs)", deep_attr_graph(100000))

    def deep_type(depth):
        # TypeProto{sequence_type(4): Sequence{elem_type(1): TypeProto{...}}}
        core = pb_field(1, 2, pb_field(1, 0, 1))  # tensor_type{elem_type: FLOAT}
        inner = nested_chain(depth * 2, lambda i: (b"", 1 if i % 2 == 0 else 4), core)
        vinfo = pb_field(1, 2, b"x") + pb_field(2, 2, inner)
        graph = pb_field(1, 2, pb_field(4, 2, b"Identity") + pb_field(1, 2, b"x") + pb_field(2, 2, b"y"))
        graph += pb_field(11, 2, vinfo) + pb_field(12, 2, vi("y", F32, [1]).SerializeToString())
        return pb_field(1, 0, 8) + pb_field(8, 2, pb_field(2, 0, 17)) + pb_field(7, 2, graph)

    o("pb-type-nested-100000", "an input type nested 100000 sequences deep", deep_type(100000))
    o("pb-unterminated", "protobuf length prefix past the end",
      pb_field(1, 0, 8) + varint((7 << 3) | 2) + varint(2**40) + b"\x0a")
    o("pb-varint-overlong", "protobuf varint of 20 bytes", varint((1 << 3) | 0) + b"\xff" * 19 + b"\x01")

    # Graph structure.
    o("cycle-2", "two nodes feeding each other",
      mk([node("Add", ["x", "b"], ["a"]), node("Add", ["a", "x"], ["b"]), node("Identity", ["b"], ["y"])], x1, y))
    o("cycle-self", "a node reading its own output",
      mk([node("Add", ["x", "y"], ["y"])], x1, y))
    o("dangling-input", "a node input nothing produces",
      mk([node("Add", ["x", "nope"], ["y"])], x1, y))
    o("dangling-output", "a graph output nothing produces",
      mk([node("Relu", ["x"], ["r"])], x1, [vi("ghost", F32, [1])]))
    o("no-outputs", "a graph with no outputs", mk([node("Relu", ["x"], ["r"])], x1, []))
    o("no-nodes", "a graph with no nodes, output = input", mk([], x1, [vi("x", F32, [1])]))
    o("empty-model", "an empty ModelProto", b"")
    o("missing-required-input", "Add with an empty input name",
      mk([node("Add", ["x", ""], ["y"])], x1, y))
    o("dup-node-output", "two nodes producing y",
      mk([node("Relu", ["x"], ["y"]), node("Neg", ["x"], ["y"])], x1, y))
    o("dup-graph-input", "two graph inputs named x",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [1]), vi("x", F32, [2])], y))
    o("dup-initializer", "two initializers named w with different shapes",
      mk([node("Add", ["x", "w"], ["y"])], x1, y, [const_f32("w", [1.0]), const_f32("w", [1.0, 2.0])]))
    o("output-overwrites-init", "a node output with an initializer's name",
      mk([node("Relu", ["x"], ["w"]), node("Add", ["x", "w"], ["y"])], x1, y, [const_f32("w", [1.0])]))
    o("input-is-init", "a graph input that is also an initializer (IR 3 default) with other shape",
      mk([node("Relu", ["x"], ["y"])], [vi("x", F32, [4])], y, [const_f32("x", [1.0])], ir=3))
    # Opsets.
    relu = [node("Relu", ["x"], ["y"])]
    o("opset-0", "default-domain opset 0", mk(relu, x1, y, opset=0))
    o("opset-1e9", "default-domain opset 10^9", mk(relu, x1, y, opset=10**9))
    o("opset-negative", "default-domain opset -1", mk(relu, x1, y, opset=-1))
    o("opset-none", "no opset import", mk(relu, x1, y, opsets=[]))
    o("opset-dup", "the default domain imported twice (7 and 17)",
      mk(relu, x1, y, opsets=[helper.make_opsetid("", 7), helper.make_opsetid("", 17)]))
    o("ir-version-0", "ir_version 0", mk(relu, x1, y, ir=0))
    o("ir-version-1e9", "ir_version 10^9", mk(relu, x1, y, ir=10**9))
    # Huge attributes (error messages must not quote them back whole).
    o("attr-million-ints-transpose", "Transpose perm with 10^6 ints",
      mk([node("Transpose", ["x"], ["y"], perm=list(range(10**6)))], [vi("x", F32, [2, 3])], y))
    o("attr-million-ints-conv", "Conv kernel_shape with 10^6 ints",
      mk([node("Conv", ["x", "w"], ["y"], kernel_shape=[1] * 10**6)], [vi("x", F32, [1, 1, 2, 2])], y,
         [const_f32("w", [1.0], [1, 1, 1, 1])]))
    o("attr-million-ints-unknown", "an unknown op with a 10^6-int attribute",
      mk([node("Evil", ["x"], ["y"], evil=list(range(10**6)))], x1, y))
    o("attr-1MB-string", "Pad mode of 1 MB",
      mk([node("Pad", ["x", "p"], ["y"], mode="A" * 10**6)], x1, y, [const_i64("p", [0, 1])]))
    o("op-type-1MB", "an op type of 1 MB", mk([node("E" * 10**6, ["x"], ["y"], name="n")], x1, y))
    o("name-1MB-dangling", "a dangling input named with 1 MB",
      mk([node("Add", ["x", "N" * 10**6], ["y"])], x1, y))
    # Unknown ops.
    o("unknown-op", "an unknown op", mk([node("FooBar", ["x"], ["y"])], x1, y))
    o("unknown-domain", "Gemm in the domain com.evil",
      mk([node("Relu", ["x"], ["y"], domain="com.evil")], x1, y,
         opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]))
    o("empty-op-type", "an empty op type", mk([node("", ["x"], ["y"], name="n")], x1, y))
    # Bad attributes / op arguments.
    x4 = [vi("x", F32, [1, 1, 4, 4])]
    w1 = [const_f32("w", [1.0], [1, 1, 1, 1])]
    o("conv-stride-0", "Conv with strides 0", mk([node("Conv", ["x", "w"], ["y"], strides=[0, 0])], x4, y, w1))
    o("conv-dilation-0", "Conv with dilations 0", mk([node("Conv", ["x", "w"], ["y"], dilations=[0, 0])], x4, y, w1))
    o("conv-group-0", "Conv with group 0", mk([node("Conv", ["x", "w"], ["y"], group=0)], x4, y, w1))
    o("conv-group-3", "Conv with group 3 over 1 channel", mk([node("Conv", ["x", "w"], ["y"], group=3)], x4, y, w1))
    o("conv-kernel-too-big", "Conv kernel 9x9 over a 4x4 input",
      mk([node("Conv", ["x", "w"], ["y"])], x4, y, [const_f32("w", [1.0] * 81, [1, 1, 9, 9])]))
    o("conv-stride-huge", "Conv with strides 2^62", mk([node("Conv", ["x", "w"], ["y"], strides=[2**62, 2**62])], x4, y, w1))
    o("maxpool-kernel-0", "MaxPool kernel 0x0", mk([node("MaxPool", ["x"], ["y"], kernel_shape=[0, 0])], x4, y))
    o("maxpool-kernel-huge", "MaxPool kernel 2^40", mk([node("MaxPool", ["x"], ["y"], kernel_shape=[2**40, 2**40])], x4, y))
    o("gather-oob", "Gather index 10^9 of f32[4]",
      mk([node("Gather", ["x", "i"], ["y"])], [vi("x", F32, [4])], y, [const_i64("i", [10**9])]))
    o("gather-oob-negative", "Gather index -10^12 of f32[4]",
      mk([node("Gather", ["x", "i"], ["y"])], [vi("x", F32, [4])], y, [const_i64("i", [-10**12])]))
    o("gather-i64-min", "Gather index -2^63",
      mk([node("Gather", ["x", "i"], ["y"])], [vi("x", F32, [4])], y, [const_i64("i", [-2**63])]))
    o("slice-step-0", "Slice with step 0",
      mk([node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [vi("x", F32, [4])], y,
         [const_i64("s", [0]), const_i64("e", [4]), const_i64("a", [0]), const_i64("st", [0])]))
    o("slice-extremes", "Slice from i64 min to i64 max step i64 min",
      mk([node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [vi("x", F32, [4])], y,
         [const_i64("s", [2**63 - 1]), const_i64("e", [-2**63]), const_i64("a", [0]), const_i64("st", [-2**63])]))
    o("reshape-two-minus-one", "Reshape to [-1,-1]",
      mk([node("Reshape", ["x", "s"], ["y"])], [vi("x", F32, [4])], y, [const_i64("s", [-1, -1])]))
    o("reshape-wrong-product", "Reshape f32[4] to [3]",
      mk([node("Reshape", ["x", "s"], ["y"])], [vi("x", F32, [4])], y, [const_i64("s", [3])]))
    o("reshape-huge", "Reshape f32[4] to [2^62,4,0]",
      mk([node("Reshape", ["x", "s"], ["y"], allowzero=1)], [vi("x", F32, [4])], y, [const_i64("s", [2**62, 4, 0])]))
    o("transpose-dup-perm", "Transpose perm [0,0]",
      mk([node("Transpose", ["x"], ["y"], perm=[0, 0])], [vi("x", F32, [2, 3])], y))
    o("concat-axis-100", "Concat axis 100", mk([node("Concat", ["x", "x"], ["y"], axis=100)], x1, y))
    o("softmax-axis-neg100", "Softmax axis -100", mk([node("Softmax", ["x"], ["y"], axis=-100)], x1, y))
    o("flatten-axis-100", "Flatten axis 100", mk([node("Flatten", ["x"], ["y"], axis=100)], x1, y))
    o("unsqueeze-axis-huge", "Unsqueeze axis 10^9",
      mk([node("Unsqueeze", ["x", "a"], ["y"])], x1, y, [const_i64("a", [10**9])]))
    o("split-bad-sizes", "Split f32[4] into [3,3]",
      mk([node("Split", ["x", "s"], ["y", "z"], axis=0)], [vi("x", F32, [4])], [vi("y", F32, None), vi("z", F32, None)],
         [const_i64("s", [3, 3])]))
    o("div-int-zero", "int32 Div by zero at run time",
      mk([node("Div", ["x", "z"], ["y"])], [vi("x", I32, [4])], [vi("y", I32, None)],
         [helper.make_tensor("z", I32, [4], [0, 0, 0, 0])]))
    o("div-int-zero-const", "constant int64 Div by zero (folded at compile time)",
      mk([node("Div", ["a", "z"], ["d"]), node("Cast", ["d"], ["df"], to=F32), node("Add", ["x", "df"], ["y"])], x1, y,
         [const_i64("a", [7]), const_i64("z", [0])]))
    o("div-int-min-neg1", "int64 Div of -2^63 by -1",
      mk([node("Div", ["a", "z"], ["d"]), node("Cast", ["d"], ["df"], to=F32), node("Add", ["x", "df"], ["y"])], x1, y,
         [const_i64("a", [-2**63]), const_i64("z", [-1])]))
    o("mod-int-zero", "int32 Mod by zero",
      mk([node("Mod", ["x", "z"], ["y"])], [vi("x", I32, [4])], [vi("y", I32, None)],
         [helper.make_tensor("z", I32, [4], [0, 0, 0, 0])]))
    o("gemm-k-mismatch", "Gemm f32[2,3] x f32[4,5]",
      mk([node("Gemm", ["x", "w"], ["y"])], [vi("x", F32, [2, 3])], y, [const_f32("w", [0.0] * 20, [4, 5])]))
    o("gemm-4-inputs", "Gemm with 4 inputs",
      mk([node("Gemm", ["x", "w", "b", "b"], ["y"])], [vi("x", F32, [2, 3])], y,
         [const_f32("w", [0.0] * 12, [3, 4]), const_f32("b", [0.0] * 4)]))
    o("matmul-scalar", "MatMul of scalars",
      mk([node("MatMul", ["x", "x"], ["y"])], [vi("x", F32, [])], y))
    o("onehot-depth-huge", "OneHot depth 10^12",
      mk([node("OneHot", ["i", "d", "v"], ["y"])], [vi("i", I64, [2])], y,
         [const_i64("d", [10**12]), const_f32("v", [0.0, 1.0])]))
    o("topk-k-huge", "TopK k 10^12",
      mk([node("TopK", ["x", "k"], ["y", "ix"])], [vi("x", F32, [4])], [vi("y", F32, None), vi("ix", I64, None)],
         [const_i64("k", [10**12])]))
    o("einsum-bad", "Einsum equation 'i->j'",
      mk([node("Einsum", ["x"], ["y"], equation="i->j")], [vi("x", F32, [4])], y))
    o("cast-to-999", "Cast to data type 999", mk([node("Cast", ["x"], ["y"], to=999)], x1, y))
    o("bitshift-200", "BitShift by 200",
      mk([node("BitShift", ["x", "s"], ["y"], direction="LEFT")], [vi("x", TensorProto.UINT64, [1])],
         [vi("y", TensorProto.UINT64, None)], [helper.make_tensor("s", TensorProto.UINT64, [1], [200])]))
    o("wrong-input-type-declared", "Relu declared over a string input",
      mk([node("Relu", ["x"], ["y"])], [vi("x", TensorProto.STRING, [1])], y))


# ----------------------------------------------------------- external data

def gen_extdata(c):
    def ext_tensor(name, dims, location, offset=None, length=None, dt=F32):
        t = TensorProto(name=name, data_type=dt, dims=dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", location), ("offset", offset), ("length", length)]:
            if v is not None:
                e = t.external_data.add()
                e.key, e.value = k, str(v)
        return t

    def model(t):
        return mk([node("Add", ["x", t.name], ["y"])], [vi("x", F32, [1])], [vi("y", F32, None)], [t])

    outside = os.path.join(c.out, "outside_secret.bin")
    with open(outside, "wb") as f:
        f.write(struct.pack("<f", 1.5) * 4)

    def e(cid, attacks, t, files=None, setup=None):
        d = c.model(f"extdata-{cid}", "extdata", attacks, model(t))
        for name, data in (files or {}).items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        if setup:
            setup(d)

    four = {"w.bin": struct.pack("<f", 2.0) * 4}
    e("ok", "control: external data in the model's folder", ext_tensor("w", [4], "w.bin"), four)
    e("dotdot", "location ../../outside_secret.bin (escapes the folder)",
      ext_tensor("w", [4], "../../outside_secret.bin"))
    e("dotdot-deep", "location ../../../../../../../../etc/passwd",
      ext_tensor("w", [4], "../../../../../../../../etc/passwd"))
    e("absolute", f"absolute location {outside}", ext_tensor("w", [4], outside))
    e("absolute-dev-zero", "location /dev/zero with length 2^40 (unbounded device)",
      ext_tensor("w", [2**38], "/dev/zero", 0, 2**40))
    e("absolute-etc-passwd", "location /etc/passwd", ext_tensor("w", [4], "/etc/passwd", 0, 16))

    def symlink(d):
        os.symlink(os.path.relpath(outside, d), os.path.join(d, "w.bin"))
    e("symlink", "w.bin a symlink to a file outside the folder", ext_tensor("w", [4], "w.bin"), setup=symlink)

    def symlink_dir(d):
        os.symlink("/etc", os.path.join(d, "sub"))
    e("symlink-dir", "sub/passwd through a symlinked folder to /etc", ext_tensor("w", [4], "sub/passwd", 0, 16),
      setup=symlink_dir)

    def hardlink(d):
        os.link(outside, os.path.join(d, "w.bin"))
    e("hardlink", "w.bin a hard link to a file outside the folder", ext_tensor("w", [4], "w.bin"), setup=hardlink)

    def fifo(d):
        os.mkfifo(os.path.join(d, "w.bin"))
    e("fifo", "w.bin a named pipe nobody writes to", ext_tensor("w", [4], "w.bin"), setup=fifo)

    def dirloc(d):
        os.mkdir(os.path.join(d, "w.bin"))
    e("directory", "location that is a folder", ext_tensor("w", [4], "w.bin"), setup=dirloc)
    e("missing", "location that does not exist", ext_tensor("w", [4], "nope.bin"))
    e("empty-location", "empty location", ext_tensor("w", [4], ""))
    e("nul-location", "location with a NUL byte", ext_tensor("w", [4], "w.bin\0../../outside_secret.bin"), four)
    e("offset-past-end", "offset past the file's end", ext_tensor("w", [4], "w.bin", 1000, 16), four)
    e("length-past-end", "length past the file's end", ext_tensor("w", [4], "w.bin", 0, 2**40), four)
    e("offset-overflow", "offset + length overflows u64", ext_tensor("w", [4], "w.bin", 2**64 - 8, 16), four)
    e("offset-negative", "offset -16", ext_tensor("w", [4], "w.bin", -16, 16), four)
    e("offset-not-number", "offset 'abc'", ext_tensor("w", [4], "w.bin", "abc", 16), four)
    e("length-mismatch", "length 8 for f32[4]", ext_tensor("w", [4], "w.bin", 0, 8), four)
    e("raw-and-external", "a tensor with raw_data and external data",
      (lambda t: (t.__setattr__("raw_data", b"\0" * 16), t)[1])(ext_tensor("w", [4], "w.bin")), four)

    def sparse(d):
        with open(os.path.join(d, "big.bin"), "wb") as f:
            f.truncate(4 * 2**32)
    e("f32-2^32-sparse", "external f32[2^32] (16 GiB sparse file, all there)",
      ext_tensor("w", [2**32], "big.bin"), setup=sparse)
    e("f32-2^32-short", "external f32[2^32] declared over a 16 byte file", ext_tensor("w", [2**32], "w.bin"), four)
    e("dims-overflow", "external tensor with dims overflowing u64",
      ext_tensor("w", [2**32, 2**32, 2**32], "w.bin"), four)


# --------------------------------------------------------------- npy / npz

def npy_bytes(descr="<f4", fortran=False, shape=(1, 64), data=None, magic=b"\x93NUMPY",
              ver=(1, 0), header=None, trailing=b"", hlen=None):
    if header is None:
        header = "{'descr': %r, 'fortran_order': %s, 'shape': %s, }" % (
            descr, fortran, "(" + ",".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")")
    hb = header.encode("latin1") if isinstance(header, str) else header
    size_len = 2 if ver[0] == 1 else 4
    pad = (64 - (len(magic) + 2 + size_len + len(hb) + 1) % 64) % 64
    hb = hb + b" " * pad + b"\n"
    L = len(hb) if hlen is None else hlen
    out = magic + bytes(ver) + (struct.pack("<H", L) if size_len == 2 else struct.pack("<I", L)) + hb
    if data is None:
        n = 1
        for s in shape:
            n *= s
        data = np.random.RandomState(0).rand(n).astype("<f4").tobytes() if n < 10**6 else b""
    return out + data + trailing


def gen_npy(c):
    def n(cid, attacks, data, model=MLP, name="x"):
        c.add(f"npy-{cid}", "npy", attacks,
              [{"name": "run", "args": ["run", model, "--input", f"{name}={{case}}/x.npy"]}], {"x.npy": data})

    good = np.random.RandomState(1).rand(1, 64).astype("<f4")
    n("ok", "control: a valid f32[1,64] input", npy_bytes())
    n("bad-magic", "bad magic", npy_bytes(magic=b"\x93NUMPX"))
    n("empty-file", "an empty file", b"")
    n("magic-only", "magic and nothing else", b"\x93NUMPY")
    n("version-9", "format version 9.0", npy_bytes(ver=(9, 0)))
    n("version-2", "format version 2.0 (u32 header length)", npy_bytes(ver=(2, 0)))
    n("header-len-past-end", "header length 65535 past the file's end", npy_bytes(hlen=65535))
    n("header-len-4GiB", "v2 header length 2^32-1", npy_bytes(ver=(2, 0), hlen=2**32 - 1))
    n("header-not-dict", "header that is a list", npy_bytes(header="['<f4', False, (1, 64)]"))
    n("header-not-literal", "header that is not a Python literal", npy_bytes(header="{'descr': __import__('os'), }"))
    n("header-missing-shape", "header without a shape", npy_bytes(header="{'descr': '<f4', 'fortran_order': False, }"))
    n("header-extra-key", "header with an extra key",
      npy_bytes(header="{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64), 'evil': 1, }"))
    n("header-deep", "header nested 100000 deep",
      npy_bytes(ver=(2, 0), header="{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 100000 + ")" * 100000 + ", }"))
    n("header-1MB", "header of 1 MB (v2)",
      npy_bytes(ver=(2, 0), header="{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64), " + " " * 10**6 + "}"))
    n("header-not-latin1", "header with bytes that are not ASCII",
      npy_bytes(header=b"{'descr': '<f4\xff', 'fortran_order': False, 'shape': (1, 64), }"))
    n("shape-huge", "shape (2^62, 64)", npy_bytes(shape=(2**62, 64), data=b""))
    n("shape-overflow", "shape (2^32, 2^32, 2^32) (product overflows)", npy_bytes(shape=(2**32, 2**32, 2**32), data=b""))
    n("shape-8GiB", "shape (2^25, 64) f4 (8 GiB) with 256 bytes of data", npy_bytes(shape=(2**25, 64), data=bytes(256)))
    n("shape-negative", "shape (-1, 64)", npy_bytes(shape=(-1, 64), data=b""))
    n("shape-float", "shape (1.5, 64)", npy_bytes(header="{'descr': '<f4', 'fortran_order': False, 'shape': (1.5, 64), }"))
    n("shape-bignum", "shape with a 1000-digit dim", npy_bytes(header="{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 1000 + ", 64), }", data=b""))
    n("trailing-bytes", "100 bytes after the data", npy_bytes(trailing=b"\0" * 100))
    n("truncated-data", "data 4 bytes short", npy_bytes()[:-4])
    n("no-data", "header only", npy_bytes(data=b""))
    n("dtype-f8", "f8 instead of f4", npy_bytes(descr="<f8", data=good.astype("<f8").tobytes()))
    n("dtype-i8", "i8 instead of f4", npy_bytes(descr="<i8", data=np.ones((1, 64), "<i8").tobytes()))
    n("dtype-big-endian", "big-endian f4", npy_bytes(descr=">f4", data=good.astype(">f4").tobytes()))
    n("dtype-bool", "bool", npy_bytes(descr="|b1", data=bytes(64)))
    n("dtype-complex", "complex64", npy_bytes(descr="<c8", data=bytes(512)))
    n("dtype-str", "unicode strings", npy_bytes(descr="<U4", data=bytes(64 * 16)))
    n("dtype-object", "object dtype (pickles)", npy_bytes(descr="|O", data=b"\x80\x04N."))
    n("dtype-structured", "structured dtype", npy_bytes(header="{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1, 64), }"))
    n("dtype-garbage", "dtype '<f3'", npy_bytes(descr="<f3"))
    n("fortran-order", "fortran_order True", npy_bytes(fortran=True))
    n("fortran-not-bool", "fortran_order 'yes'", npy_bytes(header="{'descr': '<f4', 'fortran_order': 'yes', 'shape': (1, 64), }"))
    n("wrong-shape", "f32[3,63] for x: f32[batch,64]", npy_bytes(shape=(3, 63)))
    n("wrong-rank", "f32[64] for x: f32[batch,64]", npy_bytes(shape=(64,)))
    n("scalar", "a scalar for x", npy_bytes(shape=()))
    n("zero-batch", "f32[0,64]", npy_bytes(shape=(0, 64)))
    n("nan-inf", "NaN and inf values", npy_bytes(data=np.array([np.nan, np.inf, -np.inf, 1e38] * 16, "<f4").tobytes()))
    n("unknown-input-name", "--input for a name the model does not have", npy_bytes(), name="nope")
    n("transformer-ids-float", "f32 input_ids for the transformer",
      npy_bytes(shape=(1, 5)), model=TRANSFORMER, name="input_ids")
    n("transformer-ids-oob", "input_ids 10^12 (embedding index out of range)",
      npy_bytes(descr="<i8", shape=(1, 5), data=np.full((1, 5), 10**12, "<i8").tobytes()),
      model=TRANSFORMER, name="input_ids")
    n("transformer-ids-negative", "input_ids -2^63",
      npy_bytes(descr="<i8", shape=(1, 5), data=np.full((1, 5), -2**63, "<i8").tobytes()),
      model=TRANSFORMER, name="input_ids")
    n("cnn-wrong-shape", "f32[1,3,2,2] for the CNN", npy_bytes(shape=(1, 3, 2, 2)), model=CNN)
    n("cnn-5d", "a 5-D input for the CNN", npy_bytes(shape=(1, 1, 1, 1, 1)), model=CNN)


def zip_local(name, data, method=zlib.DEFLATED, crc=None, csize=None, usize=None, raw=False):
    """(local header + data, central directory entry builder) for a member."""
    nb = name.encode() if isinstance(name, str) else name
    if raw:
        comp = data
    elif method == 8:
        comp = deflate(data, 6)
    else:
        comp = data
    crc = zlib.crc32(data) if crc is None else crc
    csize = len(comp) if csize is None else csize
    usize = len(data) if usize is None else usize
    zip64 = csize >= 0xFFFFFFFF or usize >= 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, usize, csize) if zip64 else b""
    c32 = 0xFFFFFFFF if zip64 else csize
    u32 = 0xFFFFFFFF if zip64 else usize
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, method, 0, 0x21,
                        crc, c32, u32, len(nb), len(extra)) + nb + extra
    return local, comp, (nb, method, crc, c32, u32, extra, zip64, usize, csize)


def zip_build(members):
    """members: list of zip_local results. Writes a zip with a central directory
    (zip64 extras when needed)."""
    out = bytearray()
    central = bytearray()
    for local, comp, (nb, method, crc, c32, u32, extra, zip64, usize, csize) in members:
        off = len(out)
        out += local + comp
        cextra = struct.pack("<HHQQQ", 1, 24, usize, csize, off) if zip64 else b""
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45 if zip64 else 20, 0, method, 0, 0x21,
                               crc, c32, u32, len(nb), len(cextra), 0, 0, 0, 0o644 << 16,
                               0xFFFFFFFF if zip64 else off) + nb + cextra
    cd_off = len(out)
    out += central
    n = len(members)
    if any(m[2][6] for m in members):
        z64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_off, 0)
    return bytes(out)


def gen_npz(c):
    good_x = npy_bytes()

    def z(cid, attacks, data, calib=True):
        cmds = [{"name": "run", "args": ["run", MLP, "--inputs", "{case}/in.npz"]}]
        if calib:
            cmds.append({"name": "compress", "args": ["compress", MLP, "--int8", "--calib", "{case}/in.npz",
                                                      "-o", "{out}/o.mlc", "--no-cache"]})
        c.add(f"npz-{cid}", "npz", attacks, cmds, {"in.npz": data})

    calib_x = npy_bytes(shape=(8, 64), data=np.random.RandomState(2).rand(8, 64).astype("<f4").tobytes())
    z("ok", "control: a valid npz", zip_build([zip_local("x.npy", good_x)]))
    z("ok-calib8", "control: a valid npz with 8 samples", zip_build([zip_local("x.npy", calib_x)]))
    z("dup-member", "the member x.npy twice (f32[8,64], then f32[1,64]: both valid for x)",
      zip_build([zip_local("x.npy", calib_x), zip_local("x.npy", good_x)]))
    z("dup-member-bad-second", "the member x.npy twice (the second of a wrong shape)",
      zip_build([zip_local("x.npy", calib_x), zip_local("x.npy", npy_bytes(shape=(3, 63)))]))
    # Zip bombs.
    total = 8 << 30
    hdr = npy_bytes(shape=(total // 4 // 64, 64), data=b"")
    hdr_pad = len(hdr)
    body_len = total - hdr_pad - ((total - hdr_pad) % (1 << 20))
    # npy header + zeros: compress header, then the zero stream (header is
    # in its own full-flushed block so the zero blocks stay identical).
    cobj = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = cobj.compress(hdr) + cobj.flush(zlib.Z_FULL_FLUSH)
    stream = first + zero_bomb_stream(body_len)
    n_elems = body_len // 4
    real = npy_bytes(shape=(n_elems // 64, 64), data=b"")
    assert len(real) == len(hdr)
    cobj = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = cobj.compress(real) + cobj.flush(zlib.Z_FULL_FLUSH)
    stream = first + zero_bomb_stream(body_len)
    usize = len(real) + body_len
    crc = zlib.crc32(real)
    mib = bytes(1 << 20)
    for _ in range(body_len >> 20):
        crc = zlib.crc32(mib, crc)
    bomb = zip_local("x.npy", None, crc=crc, csize=len(stream), usize=usize, raw=True)
    bomb = (bomb[0], stream, bomb[2])
    z("zip-bomb-8GiB", "npz member of 8.5 MB inflating to 8 GiB (declared, zip64)", zip_build([bomb]))
    lie = zip_local("x.npy", None, crc=crc, csize=len(stream), usize=len(good_x), raw=True)
    lie = (lie[0], stream, lie[2])
    z("zip-bomb-declared-small", "npz member declared 320 bytes, inflating to 8 GiB", zip_build([lie]))
    small_bomb = npy_bytes(shape=(1, 64), data=b"") + bytes(64 << 20)
    z("inflates-past-npy", "x.npy of f32[1,64] followed by 64 MiB of zeros (trailing data)",
      zip_build([zip_local("x.npy", small_bomb)]))
    # Path traversal and odd names.
    for tag, name in [("dotdot", "../x.npy"), ("dotdot-deep", "../../../../../tmp/hostile_x.npy"),
                      ("absolute", "/tmp/hostile_x.npy"), ("backslash", "..\\x.npy"),
                      ("nested", "sub/../../x.npy"), ("nul", "x.npy\0evil")]:
        z(f"name-{tag}", f"member named {name!r}", zip_build([zip_local(name, good_x)]))
    z("name-no-ext", "member named x (no .npy)", zip_build([zip_local("x", good_x)]))
    z("name-dir", "a folder member x.npy/", zip_build([zip_local("x.npy/", b"")]))
    z("unknown-member", "an extra member for no input", zip_build([zip_local("x.npy", good_x), zip_local("evil.npy", good_x)]))
    z("missing-input", "no member for x", zip_build([zip_local("y.npy", good_x)]))
    z("empty-zip", "an empty zip", zip_build([]))
    z("not-zip", "a file that is not a zip", b"PK\x03\x04" + b"\xff" * 100)
    z("truncated", "a zip cut in half", zip_build([zip_local("x.npy", good_x)])[:200])
    z("bad-crc", "member with a wrong CRC", zip_build([zip_local("x.npy", good_x, crc=0x12345678)]))
    z("stored-size-lie", "stored member whose sizes claim 4 GiB-2",
      zip_build([zip_local("x.npy", good_x, method=0, csize=0xFFFFFFFE, usize=0xFFFFFFFE)]))
    z("method-unknown", "compression method 99", zip_build([zip_local("x.npy", good_x, method=99)]))
    z("bad-npy-inside", "member with bad npy magic", zip_build([zip_local("x.npy", b"\x93NUMPX" + good_x[6:])]))
    z("huge-shape-inside", "member declaring shape (2^62,64)", zip_build([zip_local("x.npy", npy_bytes(shape=(2**62, 64), data=b""))]))
    z("object-inside", "member with object dtype", zip_build([zip_local("x.npy", npy_bytes(descr="|O", data=b"\x80\x04N."))]))
    many = [zip_local(f"m{i}.npy", good_x) for i in range(20000)] + [zip_local("x.npy", good_x)]
    z("many-members", "20000 members", zip_build(many))
    z("calib-labels-huge", "calibration npz with an 8 GiB-declared labels member",
      zip_build([zip_local("x.npy", calib_x), zip_local("labels.npy", npy_bytes(descr="<i8", shape=(2**30,), data=b""))]))


# ----------------------------------------------------------------- dims, CLI

def gen_dims(c):
    def d(cid, attacks, args, name="run"):
        c.add(f"dims-{cid}", "dims", attacks, [{"name": name, "args": args}])

    for v in ["10000000000", "18446744073709551615", "18446744073709551616", "9223372036854775807",
              "0", "-1", "abc", "1e9", ""]:
        tag = v if v else "empty"
        d(f"mlp-batch-{tag}", f"mlp with --dim batch={v}", ["run", MLP, "--random", "0", "--dim", f"batch={v}"])
    d("mlp-batch-50M", "mlp with batch 5*10^7 (12.8 GB input)", ["run", MLP, "--random", "0", "--dim", "batch=50000000"])
    d("cnn-batch-1e6", "cnn with batch 10^6", ["run", CNN, "--random", "0", "--dim", "batch=1000000"])
    d("transformer-seq-1e5", "transformer with seq 10^5 (attention seq^2 = 10^10)",
      ["run", TRANSFORMER, "--random", "0", "--dim", "seq=100000"])
    d("transformer-seq-3037000500", "transformer with seq 3037000500 (seq^2 overflows i64)",
      ["run", TRANSFORMER, "--random", "0", "--dim", "seq=3037000500"])
    d("transformer-batch-seq-1e10", "transformer with batch and seq 10^10",
      ["run", TRANSFORMER, "--random", "0", "--dim", "batch=10000000000", "--dim", "seq=10000000000"])
    d("unknown-dim", "--dim for a dim the model does not have", ["run", MLP, "--random", "0", "--dim", "nope=5"])
    d("dim-twice", "--dim batch given twice", ["run", MLP, "--random", "0", "--dim", "batch=2", "--dim", "batch=3"])
    d("dim-no-equals", "--dim without =", ["run", MLP, "--random", "0", "--dim", "batch"])
    d("random-seed-huge", "--random 2^64", ["run", MLP, "--random", "18446744073709551616"])
    d("compile-verify-batch-1e10", "compile --verify with batch 10^10",
      ["compile", MLP, "-o", "{out}/o.mlc", "--verify", "--dim", "batch=10000000000"], name="compile")
    d("compress-dim-seq-1e10", "compress of the transformer with seq 10^10",
      ["compress", TRANSFORMER, "--int8", "-o", "{out}/o.mlc", "--no-cache", "--dim", "seq=10000000000"],
      name="compress")
    d("compress-threads-huge", "compress --threads 10^9",
      ["compress", MLP, "--int8", "-o", "{out}/o.mlc", "--no-cache", "--threads", "1000000000"], name="compress")
    d("compress-samples-huge", "compress --sensitivity-samples 10^12",
      ["compress", MLP, "--int8", "-o", "{out}/o.mlc", "--no-cache", "--sensitivity-samples", "1000000000000"],
      name="compress")
    d("compress-latency-runs-huge", "compress --latency-runs 2^63",
      ["compress", MLP, "--int8", "-o", "{out}/o.mlc", "--no-cache", "--latency-runs", "9223372036854775807"],
      name="compress")
    mlp = open(os.path.join(REPO, "fixtures/mlp/model.onnx"), "rb").read()
    c.add("dims-output-is-input", "dims", "compile -o the model itself (a copy staged into {out})",
          [{"name": "compile", "stage": ["model.onnx"],
            "args": ["compile", "{out}/model.onnx", "-o", "{out}/model.onnx", "--emit", "onnx"]}],
          {"model.onnx": mlp})
    c.add("dims-output-is-input-symlink", "dims", "compile -o a symlink to the model itself",
          [{"name": "compile", "stage": ["model.onnx"], "symlink": {"link.onnx": "model.onnx"},
            "args": ["compile", "{out}/model.onnx", "-o", "{out}/link.onnx", "--emit", "onnx"]}],
          {"model.onnx": mlp})
    d("output-in-missing-dir", "compile -o into a folder that does not exist",
      ["compile", MLP, "-o", "{out}/no/such/dir/o.mlc"], name="compile")


# --------------------------------------------------------------------- main

def make_bundles(out, mlc):
    d = os.path.join(out, "bundles")
    os.makedirs(d, exist_ok=True)
    specs = [
        ("mlp_O2", ["compile", os.path.join(REPO, "fixtures/mlp/model.onnx")]),
        # --no-speed-check: which layers stay f32 must not depend on timings
        # (the bundles, and so the corpus, are deterministic).
        ("digits_cnn_int8", ["compress", os.path.join(REPO, "fixtures/digits/cnn.onnx"), "--int8", "--no-cache",
                             "--no-speed-check"]),
        ("mlp_int8", ["compress", os.path.join(REPO, "fixtures/mlp/model.onnx"), "--int8", "--no-cache",
                      "--no-speed-check"]),
    ]
    res = []
    for name, args in specs:
        p = os.path.join(d, name + ".mlc")
        subprocess.run([mlc, *args, "-o", p], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        res.append((name, p))
    return res


def main():
    sys.setrecursionlimit(100000)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--mlc", default=os.path.join(REPO, "target", "release", "mlc"))
    a = ap.parse_args()
    out = os.path.abspath(a.outdir)
    if os.path.exists(os.path.join(out, "cases")):
        shutil.rmtree(os.path.join(out, "cases"))
    os.makedirs(out, exist_ok=True)
    np.random.seed(0)
    c = Corpus(out)
    bundles = make_bundles(out, a.mlc)
    gen_trunc_bitflip(c, bundles)
    gen_bundle(c, bundles)
    gen_onnx(c)
    gen_extdata(c)
    gen_npy(c)
    gen_npz(c)
    gen_dims(c)
    for case in c.cases:
        if case["id"] in EXPECT_ERROR and "expect_error" not in case:
            # `inspect` summarizes an ONNX model without reading external
            # data, so it may succeed there; every other read must refuse.
            case["expect_error"] = sorted({cm["name"] for cm in case["cmds"]
                                           if not (case["kind"] == "extdata" and cm["name"] == "inspect")})
        if case["id"] in CONTROLS:
            case["expect_success"] = [cm["name"] for cm in case["cmds"]]
    missing = (EXPECT_ERROR | CONTROLS) - c.ids
    assert not missing, missing
    kinds = {}
    for case in c.cases:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"generator_version": GEN_VERSION, "kinds": kinds, "cases": c.cases}, f, indent=1)
    print(f"hostile_gen: {len(c.cases)} cases in {out} ({', '.join(f'{k} {v}' for k, v in kinds.items())})")


if __name__ == "__main__":
    main()

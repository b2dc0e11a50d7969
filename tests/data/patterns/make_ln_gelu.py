"""Generates ln_gelu.onnx: the decomposed LayerNorm and GELU patterns exactly
as torch's TorchScript exporter writes them at opset 14 (which has no
LayerNormalization op). Used by the fuse-layernorm / fuse-gelu tests.

Run with: /tmp/torchenv/bin/python make_ln_gelu.py
"""
import torch


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(8)
        self.gelu = torch.nn.GELU()
        self.gelu_tanh = torch.nn.GELU(approximate="tanh")
        # Normalizes the last two axes, no affine parameters.
        self.ln2 = torch.nn.LayerNorm([3, 8], elementwise_affine=False)
        with torch.no_grad():
            self.ln.weight.copy_(torch.linspace(0.5, 1.5, 8))
            self.ln.bias.copy_(torch.linspace(-0.2, 0.3, 8))

    def forward(self, x):
        return self.ln2(self.gelu_tanh(self.gelu(self.ln(x))))


torch.manual_seed(0)
torch.onnx.export(
    M(),
    (torch.randn(2, 3, 8),),
    "ln_gelu.onnx",
    input_names=["x"],
    output_names=["y"],
    dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    dynamo=False,
    opset_version=14,
)

"""PyTorch modules that stand in for ``nn.Linear`` once a weight is quantized, for evaluation and export."""

from __future__ import annotations

import torch
from torch import nn

from edgeq.errors import EdgeqError


class QuantizedLinear(nn.Module):
    """y = x @ dequant(W).T + b for any packed format (``GroupQuantWeight``, ``SpQRWeight``, ...).

    Holds the packed weight; the exporter reads ``qweight`` to emit that format's quantized nodes.
    """

    def __init__(self, qweight, bias: torch.Tensor | None = None):
        super().__init__()
        self.qweight = qweight
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("weight", qweight.dequantize(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act_bits = getattr(self.qweight, "act_bits", 0)
        if act_bits:
            from edgeq.quantize.omniquant import fake_quant_tokens

            x = fake_quant_tokens(x, act_bits, sym=self.qweight.act_sym)
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def decoder_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """The projection layers of a decoder block by their name inside it (q/k/v/o, gate/up/down)."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))}


def apply_to_layer(root: nn.Module, qweights: dict) -> None:
    """Install packed weights under ``root``: linears become ``QuantizedLinear``; FP tensors are copied in."""
    for name, qw in qweights.items():
        parent, _, attr = name.rpartition(".")
        if qw.FORMAT == "fp" and not isinstance(getattr(root.get_submodule(parent), attr, None), nn.Module):
            # a tensor the method adds to a module (I-LLM's self_attn.softmax_clip): a buffer of that module
            root.get_submodule(parent).register_buffer(attr, qw.tensor.detach().clone(), persistent=False)
            continue
        target = root.get_submodule(name)
        if qw.FORMAT == "fp":
            with torch.no_grad():
                target.weight.copy_(qw.tensor)
            continue
        if tuple(target.weight.shape) != qw.shape:
            raise EdgeqError(f"{name}: quantized shape {qw.shape} does not match the model's {tuple(target.weight.shape)}")
        set_submodule(root, name, QuantizedLinear(qw, getattr(target, "bias", None)))


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)

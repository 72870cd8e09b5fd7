"""Raise the model's ONNX opset (the fusions emit opset-23 ops) with onnxscript's version converter."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.version_converter import ConvertVersionPass

log = logging.getLogger(__name__)

DEFAULT_TARGET = 23


class UpgradeOpsetPass(ir.passes.InPlacePass):
    """Convert to ``target`` when the model's opset is lower; never lowers it."""

    def __init__(self, target: int = DEFAULT_TARGET):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", 0)
        if current >= self.target:
            return ir.passes.PassResult(model, modified=False)
        # Converting keeps other domains' imports only if used; remember them so later rewrites keep working.
        others = {d: v for d, v in model.opset_imports.items() if d != ""}
        ConvertVersionPass(self.target, fallback=False)(model)
        for domain, version in others.items():
            model.opset_imports.setdefault(domain, version)
        log.info("opset %d -> %d", current, self.target)
        return ir.passes.PassResult(model, modified=True)

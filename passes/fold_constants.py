"""Constant folding and dead-code/initializer removal, by the ecosystem's passes.

Folding is onnxscript's optimizer with its default guards, which matter here: DequantizeLinear is never folded
(that would turn packed codes back into float weights) and nodes with large constant inputs shared by other
nodes are not folded (the tied embedding's Transpose would otherwise copy the embedding table). Removal is
onnx_ir's unused-node/function/opset passes (unused initializers go with their last consumer).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer

log = logging.getLogger(__name__)


class FoldConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = onnxscript.optimizer.fold_constants(model)
        return ir.passes.PassResult(model, modified=bool(folded.modified))


class RemoveDeadPass(ir.passes.InPlacePass):
    """Nodes whose outputs nothing reads, initializers nothing reads, unused functions and opset imports."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = ir.passes.Sequential(
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        )(model)
        return ir.passes.PassResult(model, modified=result.modified)

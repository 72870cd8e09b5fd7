"""Fuse SiLU(gate) * up into one ``edgeq.fusion::SwiGLU`` node, defined by a model-local function.

Matched (torch exports SiLU as x * Sigmoid(x)):  Mul(Mul(gate, Sigmoid(gate)), up), any operand order.
Neither ONNX nor ONNX Runtime has a gated-SiLU op, so the replacement is a call of a function the model
carries (``SwiGLU(gate, up) = gate * Sigmoid(gate) * up``): any runtime inlines it and computes exactly the
matched nodes, while later passes (integer-only activations) see one node per MLP activation.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgeq.passes._rules import RulePass

DOMAIN = "edgeq.fusion"  # functions only: no kernel library needed (unlike the "edgeq" op domain)
OP = "SwiGLU"


def swiglu_function(onnx_opset: int) -> ir.Function:
    gate, up = ir.Value(name="gate"), ir.Value(name="up")
    sigmoid = ir.node("Sigmoid", [gate])
    silu = ir.node("Mul", [gate, sigmoid.outputs[0]])
    out = ir.node("Mul", [silu.outputs[0], up])
    out.outputs[0].name = "out"
    graph = ir.Graph([gate, up], out.outputs, nodes=[sigmoid, silu, out], opset_imports={"": onnx_opset}, name=OP)
    return ir.Function(DOMAIN, OP, graph=graph, attributes=[])


class SwiGluFusion(pattern.RewriteRuleClassBase):
    def pattern(self, op, gate, up):
        return op.Mul(op.Mul(gate, op.Sigmoid(gate)), up)

    def check(self, context, gate, up, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if gate.dtype is not None and up.dtype is not None and gate.dtype != up.dtype:
            return result.fail(f"gate is {gate.dtype} but up is {up.dtype}", up)
        return result

    def rewrite(self, op, gate, up, **_):
        return op.op(OP, gate, up, _domain=DOMAIN, _version=1)


class FuseSwiGluPass(RulePass):
    """x*Sigmoid(x)*up -> SwiGLU(x, up), with the function definition added to the model once."""

    def __init__(self):
        super().__init__([SwiGluFusion.rule()], commute=True)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # The rules also visit function bodies and would turn the definition into a call of itself, so it is
        # kept out of the model while they run.
        identifier = (DOMAIN, OP, "")
        function = model.functions.pop(identifier, None)
        result = super().call(model)
        if function is None and result.modified:
            function = swiglu_function(model.opset_imports.get("", 21))
        if function is not None:
            model.functions[identifier] = function
        return result

"""``RulePass``: an onnx-ir pass that applies a set of onnxscript rewrite rules, then removes dead code.

Every edgeq fusion and lowering is a ``RulePass`` over one module's rules, so ``modified`` always means "some
rule fired", and the values a rewrite orphans (the old codes/scales/zeros, shared tables nobody reads any more)
leave with the pass that orphaned them rather than showing up in a later pass's report. Dead code the input
already had goes too, which only happens when a pass fires on a graph that was never cleaned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern

log = logging.getLogger(__name__)


class RulePass(ir.passes.InPlacePass):
    """Apply ``rules`` (one sweep over the graph), then remove nodes and functions nothing uses any more."""

    def __init__(self, rules: Sequence[pattern.RewriteRule] | pattern.RewriteRuleSet, *, commute: bool = False,
                 min_opset: int | None = None):
        super().__init__()
        if not isinstance(rules, pattern.RewriteRuleSet):
            if not rules:
                raise ValueError(f"{type(self).__name__}: no rules given")
            rules = pattern.RewriteRuleSet(list(rules), commute=commute)
        self.rules = rules
        self.min_opset = min_opset

    def requires(self, model: ir.Model) -> None:
        if self.min_opset is not None and model.opset_imports.get("", 0) < self.min_opset:
            raise ir.passes.PreconditionError(
                f"{type(self).__name__} emits ONNX opset {self.min_opset} ops; the model imports opset "
                f"{model.opset_imports.get('', 0)} (run the 'opset' pass first)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = self.rules.apply_to_model(model)
        log.info("%s: %d rewrite(s)", type(self).__name__, count)
        if count:
            common_passes.RemoveUnusedNodesPass()(model)
            common_passes.RemoveUnusedFunctionsPass()(model)
        return ir.passes.PassResult(model, modified=bool(count))


def why_not(rules: pattern.RewriteRuleSet, model: ir.Model) -> str:
    """The matcher's explanation of near-misses (for logs and test failures); changes nothing."""
    from onnxscript.rewriter._basics import MatchingTracer

    tracer = MatchingTracer()
    rules.apply_to_model(model, tracer=tracer)
    lines = []
    for rule, entries in tracer.best_matches_map.items():
        for entry in entries:
            lines.append(f"{rule.name}: {entry.match_result.reason}")
    return "\n".join(lines) or "no rule got past its first node"

"""Fuse the decomposed rotary embedding into ONNX ``RotaryEmbedding`` (opset 23; one ORT kernel per call).

Matched (Hugging Face ``rotate_half`` as the torch / edgeq exporters emit it; x is [B, heads, S, D]):
    emb  = Concat(freqs, freqs, axis=-1)                 freqs [B, S, D/2]: positions x inverse frequencies
    cos  = Unsqueeze(Cast?(Mul?(Cos(emb), scale)), [1])  likewise sin with Sin
    rot  = Concat(Neg(Slice(x, D/2, D)), Slice(x, 0, D/2), axis=-1)
    out  = Add(Mul(x, cos), Mul(rot, sin))              either operand order in the Muls
Replaced by ``RotaryEmbedding(x, Cast?(Mul?(Cos(freqs))), Cast?(Mul?(Sin(freqs))), interleaved=0)``: the op
takes the half-width tables [B, S, D/2], which are Cos/Sin of ``freqs`` because ``emb`` repeats it. The
tables are shared by every layer's q and k; the pass keeps one copy (``_share_tables``).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgeq.passes._rules import RulePass
from edgeq.passes._values import ints, scalar

OPSET = 23


def _table(op, fn, emb, scale, dtype):
    """Cos or Sin of ``emb``, optionally scaled (rope attention_scaling) and cast to the activations' type."""
    t = fn(emb)
    t = pattern.OrValue([op.Mul(t, scale), t])
    return pattern.OrValue([op.Cast(t, to=dtype), t])


class RotaryEmbeddingFusion(pattern.RewriteRuleClassBase):
    def __init__(self):
        # The tables feed other layers too, so matched nodes are left for dead-code removal.
        super().__init__(name="RotaryEmbeddingFusion", remove_nodes=False)

    def pattern(self, op, x, freqs, cos_scale, sin_scale, cos_type, sin_type, cos_axes, sin_axes,
                lo_start, lo_end, hi_start, hi_end, lo_axes, hi_axes):
        emb = op.Concat(freqs, freqs, axis=-1)
        cos = op.Unsqueeze(_table(op, op.Cos, emb, cos_scale, cos_type), cos_axes)
        sin = op.Unsqueeze(_table(op, op.Sin, emb, sin_scale, sin_type), sin_axes)
        lo = op.Slice(x, lo_start, lo_end, lo_axes, _allow_other_inputs=True, _outputs=["lo"])
        hi = op.Slice(x, hi_start, hi_end, hi_axes, _allow_other_inputs=True, _outputs=["hi"])
        rotated = op.Concat(op.Neg(hi), lo, axis=-1)
        return op.Add(pattern.OrValue([op.Mul(x, cos), op.Mul(cos, x)]), pattern.OrValue([op.Mul(rotated, sin), op.Mul(sin, rotated)]))

    def check(self, context, x, freqs, cos_scale, sin_scale, cos_type, sin_type, cos_axes, sin_axes,
              lo_start, lo_end, hi_start, hi_end, lo_axes, hi_axes, lo, hi, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[3], int):
            return result.fail("x is not known to be [B, heads, S, D] with a static head size", x)
        D = x.shape[3]
        if D % 2:
            return result.fail(f"head size {D} is odd", x)
        for axes in (lo_axes, hi_axes):
            if ints(axes) not in ([-1], [3]):
                return result.fail("a rotate_half Slice is not along the last axis", axes)
        for sliced in (lo, hi):
            steps = sliced.producer().inputs[4] if len(sliced.producer().inputs) > 4 else None
            if steps is not None and ints(steps) != [1]:
                return result.fail("a rotate_half Slice has a step other than 1", sliced)
        if ints(lo_start) != [0] or ints(lo_end) != [D // 2] or ints(hi_start) != [D // 2]:
            return result.fail(f"x is not split into halves [0, {D // 2}) and [{D // 2}, {D})", x)
        end = ints(hi_end)
        if end is None or len(end) != 1 or end[0] < D:
            return result.fail("the upper half does not run to the end of the head", hi_end)
        if ints(cos_axes) != [1] or ints(sin_axes) != [1]:
            return result.fail("tables are not broadcast over the heads axis (Unsqueeze axes [1])", cos_axes)
        if (cos_scale is None) != (sin_scale is None) or (cos_type is None) != (sin_type is None):
            return result.fail("cos and sin tables are built differently", freqs)
        for s in (cos_scale, sin_scale):
            if s is not None and not isinstance(scalar(s), float):
                return result.fail("table scaling is not a constant scalar", s)
        if freqs.shape is not None and freqs.shape.rank() != 3:
            return result.fail("frequencies are not [B, S, D/2]", freqs)
        if freqs.shape is not None and isinstance(freqs.shape[2], int) and freqs.shape[2] != D // 2:
            return result.fail(f"frequencies have {freqs.shape[2]} columns, head size is {D}", freqs)
        return result

    def rewrite(self, op, x, freqs, cos_scale, sin_scale, cos_type, sin_type, **_):
        tables = []
        for fn, scale, dtype in ((op.Cos, cos_scale, cos_type), (op.Sin, sin_scale, sin_type)):
            t = fn(freqs)
            if scale is not None:
                t = op.Mul(t, scale)
            if dtype is not None:
                t = op.Cast(t, to=dtype.as_int())
            tables.append(t)
        return op.RotaryEmbedding(x, *tables, interleaved=0)


def _share_tables(graph: ir.Graph) -> int:
    """Merge identical table nodes feeding RotaryEmbedding (each rewrite builds its own); returns how many."""
    table_nodes: set[ir.Node] = set()
    frontier = [v.producer() for n in graph if n.op_type == "RotaryEmbedding" and n.domain == "" for v in n.inputs[1:3]]
    while frontier:
        node = frontier.pop()
        if node is None or node in table_nodes or node.op_type not in ("Cos", "Sin", "Mul", "Cast"):
            continue
        table_nodes.add(node)
        frontier.extend(v.producer() for v in node.inputs if v is not None)
    seen: dict[tuple, ir.Node] = {}
    merged = 0
    for node in list(graph):
        if node not in table_nodes:
            continue
        key = (node.op_type, tuple(id(v) for v in node.inputs),
               tuple(sorted((k, repr(a.value)) for k, a in node.attributes.items())))
        if key in seen:
            node.outputs[0].replace_all_uses_with(seen[key].outputs[0])
            graph.remove(node, safe=True)
            merged += 1
        else:
            seen[key] = node
    return merged


class FuseRotaryPass(RulePass):
    """rotate_half rotary embedding -> RotaryEmbedding nodes sharing one pair of half tables (opset >= 23)."""

    def __init__(self):
        super().__init__([RotaryEmbeddingFusion.rule()], min_opset=OPSET)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        if result.modified:
            _share_tables(model.graph)
        return result

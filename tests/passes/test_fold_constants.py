from collections import Counter

import numpy as np

from edgeq.passes.fold_constants import FoldConstantsPass, RemoveDeadPass
from tests.passes.helpers import from_proto, from_text, ops, quantized_linear_graph, run


def test_folds_constant_subexpressions_and_drops_their_initializers():
    model = from_text("""<ir_version: 10, opset_import: ["" : 21]>
    g (float[2, 4] x) => (float[2, 4] y)
    <float[4] a = {1.0, 2.0, 3.0, 4.0}, float[4] b = {0.5, 0.5, 0.5, 0.5}, float[4] unused = {9.0, 9.0, 9.0, 9.0}>
    {
        ab = Add(a, b)
        sq = Mul(ab, ab)
        y = Mul(x, sq)
    }""")
    x = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    reference = run(model, x)[0]
    assert FoldConstantsPass()(model).modified
    assert RemoveDeadPass()(model).modified
    assert ops(model) == Counter({"Mul": 1})
    assert "unused" not in model.graph.initializers and "a" not in model.graph.initializers
    np.testing.assert_array_equal(run(model, x)[0], reference)


def test_never_folds_dequantize_linear():
    proto, _ = quantized_linear_graph(64, 16, 4, 32, rng=np.random.default_rng(0))
    model = from_proto(proto)
    FoldConstantsPass()(model)
    RemoveDeadPass()(model)
    assert ops(model) == Counter({"DequantizeLinear": 1, "MatMul": 1})
    assert model.graph.initializers["w.codes"].dtype.name == "UINT4"


def test_dead_removal_keeps_what_outputs_need():
    model = from_text("""<ir_version: 10, opset_import: ["" : 21]>
    g (float[3] x) => (float[3] y)
    <float[3] w = {1.0, 2.0, 3.0}>
    {
        dead = Neg(x)
        y = Mul(x, w)
    }""")
    assert RemoveDeadPass()(model).modified
    assert ops(model) == Counter({"Mul": 1})
    assert not RemoveDeadPass()(model).modified

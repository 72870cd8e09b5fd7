from collections import Counter

import numpy as np
import pytest

from edgeq.passes.fuse_swiglu import DOMAIN, OP, FuseSwiGluPass
from tests.passes.helpers import from_text, ops, run

TEXT = """<ir_version: 10, opset_import: ["" : 21]>
g (float[2, 3, 16] a, float[2, 3, 16] b, float[2, 3, 16] c, float[2, 3, 16] d) => (float[2, 3, 16] y, float[2, 3, 16] z)
{{
    sa = Sigmoid(a)
    act = {first}
    y = Mul(act, b)
    sc = Sigmoid(c)
    act2 = Mul(c, sc)
    z = {second}
}}"""


def feeds():
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal((2, 3, 16)).astype(np.float32) for k in "abcd"}


@pytest.mark.parametrize("first,second", [("Mul(a, sa)", "Mul(act2, d)"), ("Mul(sa, a)", "Mul(d, act2)")],
                         ids=["torch-order", "swapped-operands"])
def test_fuses_each_mlp_activation_into_one_call_of_one_function(first, second):
    model = from_text(TEXT.format(first=first, second=second))
    reference = run(model, feeds())
    assert FuseSwiGluPass()(model).modified
    assert ops(model) == Counter({OP: 2})
    assert {(n.domain, n.op_type) for n in model.graph} == {(DOMAIN, OP)}
    assert list(model.functions) == [(DOMAIN, OP, "")]
    got = run(model, feeds())
    for g, r in zip(got, reference):
        np.testing.assert_array_equal(g, r)  # the function body is the matched nodes: bit-identical


def test_second_application_changes_nothing_and_keeps_the_definition():
    model = from_text(TEXT.format(first="Mul(a, sa)", second="Mul(act2, d)"))
    FuseSwiGluPass()(model)
    assert not FuseSwiGluPass()(model).modified
    body = [n.op_type for n in model.functions[(DOMAIN, OP, "")]]
    assert body == ["Sigmoid", "Mul", "Mul"]


def test_leaves_silu_without_a_gate_and_a_gate_on_another_value():
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[4] a, float[4] b) => (float[4] y, float[4] z)
    {
        sa = Sigmoid(a)
        y = Mul(a, sa)
        sb = Sigmoid(b)
        z = Mul(a, sb)
    }"""
    model = from_text(text)
    assert not FuseSwiGluPass()(model).modified
    assert ops(model) == Counter({"Sigmoid": 2, "Mul": 2})
    assert not model.functions

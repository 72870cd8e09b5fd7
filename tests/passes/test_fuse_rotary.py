from collections import Counter

import numpy as np
import pytest

from edgeq.passes._rules import why_not
from edgeq.passes.fuse_rotary import FuseRotaryPass
from tests.passes.helpers import from_text, ops, run

ATOL = 2e-5  # same float32 tables; the kernel only reorders the multiply-adds


def rope_text(split=4, scale=False, steps=False, swap=False):
    step = ", step" if steps else ""
    cos = "cs = Mul(c, att)\n cos = Unsqueeze(cs, one)" if scale else "cos = Unsqueeze(c, one)"
    sin = "ss = Mul(s, att)\n sin = Unsqueeze(ss, one)" if scale else "sin = Unsqueeze(s, one)"
    rotate = []
    for name, x in (("y", "q"), ("y2", "k")):
        rotate.append(f"""
        {x}lo = Slice({x}, s0, half, last{step})
        {x}hi = Slice({x}, half, end, last{step})
        {x}nhi = Neg({x}hi)
        {x}rot = Concat<axis=-1>({x}nhi, {x}lo)
        {x}c = {"Mul(cos, " + x + ")" if swap else "Mul(" + x + ", cos)"}
        {x}s = Mul({x}rot, sin)
        {name} = Add({x}c, {x}s)""")
    return f"""<ir_version: 10, opset_import: ["" : 23]>
    g (float[1, 4, 6, 8] q, float[1, 2, 6, 8] k, int64[1, 6] pos) => (float[1, 4, 6, 8] y, float[1, 2, 6, 8] y2)
    <float[4] inv_freq = {{1.0, 0.3, 0.1, 0.01}}, float att = {{1.25}}, int64[1] last = {{-1}}, int64[1] one = {{1}},
     int64[1] s0 = {{0}}, int64[1] half = {{{split}}}, int64[1] end = {{8}}, int64[1] step = {{1}}>
    {{
        posf = Cast<to=1>(pos)
        pos3 = Unsqueeze(posf, last)
        freqs = Mul(pos3, inv_freq)
        emb = Concat<axis=-1>(freqs, freqs)
        c = Cos(emb)
        s = Sin(emb)
        {cos}
        {sin}
        {"".join(rotate)}
    }}"""


def feeds():
    rng = np.random.default_rng(0)
    return {"q": rng.standard_normal((1, 4, 6, 8)).astype(np.float32),
            "k": rng.standard_normal((1, 2, 6, 8)).astype(np.float32),
            "pos": np.array([[0, 1, 2, 3, 700, 1500]], np.int64)}


@pytest.mark.parametrize("variant", [{}, {"scale": True}, {"steps": True}, {"swap": True}],
                         ids=["plain", "scaled-tables", "slice-steps", "cos-first"])
def test_fuses_q_and_k_sharing_one_pair_of_half_tables(variant):
    model = from_text(rope_text(**variant))
    reference = run(model, feeds())
    assert FuseRotaryPass()(model).modified
    expected = Counter({"Cast": 1, "Unsqueeze": 1, "Mul": 1, "Cos": 1, "Sin": 1, "RotaryEmbedding": 2})
    if variant.get("scale"):
        expected["Mul"] += 2  # cos*scale and sin*scale, once each
    assert ops(model) == expected
    rope = [n for n in model.graph if n.op_type == "RotaryEmbedding"]
    assert rope[0].inputs[1] is rope[1].inputs[1] and rope[0].inputs[2] is rope[1].inputs[2]
    assert rope[0].attributes["interleaved"].value == 0
    for got, want in zip(run(model, feeds()), reference):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_leaves_a_split_that_is_not_in_halves():
    model = from_text(rope_text(split=3))
    before = ops(model)
    pass_ = FuseRotaryPass()
    assert not pass_(model).modified
    assert ops(model) == before
    assert "not split into halves" in why_not(pass_.rules, model)

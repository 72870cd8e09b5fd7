from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

from edgeq.passes._rules import why_not
from edgeq.passes.fuse_rms_norm import FuseRmsNormPass
from tests.passes.helpers import from_text, ops, run

ATOL = 1e-5  # one fused float32 kernel vs five float32 ops on O(1) values

HEADER = '<ir_version: 10, opset_import: ["" : {opset}]>'
SCALE = "float[8] scale = {0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0}"


def rms_text(square="Pow(x, two)", divide="Div(x, rms)", final="Mul(normed, scale)", opset=23, axes="-1"):
    return f"""{HEADER.format(opset=opset)}
    g (float[2, 5, 8] x) => (float[2, 5, 8] y)
    <float two = {{2.0}}, int64[1] axes = {{{axes}}}, float eps = {{1e-5}}, {SCALE}>
    {{
        sq = {square}
        ms = ReduceMean<keepdims=1>(sq, axes)
        var = Add(ms, eps)
        rms = Sqrt(var)
        {"rinv = Reciprocal(rms)" if "rinv" in divide else ""}
        normed = {divide}
        y = {final}
    }}"""


HALF = f"""{HEADER.format(opset=23)}
    g (float16[2, 5, 8] x, float16[8] scale) => (float16[2, 5, 8] y)
    <float two = {{2.0}}, int64[1] axes = {{-1}}, float eps = {{1e-5}}>
    {{
        x32 = Cast<to=1>(x)
        sq = Pow(x32, two)
        ms = ReduceMean<keepdims=1>(sq, axes)
        var = Add(ms, eps)
        rms = Sqrt(var)
        n32 = Div(x32, rms)
        normed = Cast<to=10>(n32)
        y = Mul(normed, scale)
    }}"""


def feeds(dtype=np.float32, scale=1.0):
    return {"x": (np.random.default_rng(0).standard_normal((2, 5, 8)) * scale).astype(dtype)}


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"square": "Mul(x, x)"},
        {"divide": "Mul(x, rinv)"},
        {"final": "Mul(scale, normed)"},
        {"axes": "2"},
    ],
    ids=["pow-div", "mul-square", "reciprocal", "scale-first", "positive-axis"],
)
def test_fuses_float32_variants(variant):
    model = from_text(rms_text(**variant))
    reference = run(model, feeds())
    result = FuseRmsNormPass()(model)
    assert result.modified
    assert ops(model) == Counter({"RMSNormalization": 1})
    node = next(iter(model.graph))
    assert node.attributes["epsilon"].value == pytest.approx(1e-5)
    assert node.attributes["stash_type"].value == ir.DataType.FLOAT
    np.testing.assert_allclose(run(model, feeds())[0], reference[0], atol=ATOL, rtol=0)


def test_fuses_half_model_with_float32_accumulation():
    model = from_text(HALF)
    x = feeds(np.float16, scale=100.0)  # x^2 ~ 1e4..1e5: would overflow a half accumulation
    x["scale"] = np.linspace(-2, 2, 8).astype(np.float16)
    reference = run(model, x)[0]
    assert FuseRmsNormPass()(model).modified
    assert ops(model) == Counter({"RMSNormalization": 1})
    node = next(iter(model.graph))
    assert node.attributes["stash_type"].value == ir.DataType.FLOAT
    assert node.inputs[0].name == "x"  # the Cast pair is gone: the op takes half input directly
    y = run(model, x)[0]
    assert y.dtype == np.float16 and np.isfinite(y).all()
    np.testing.assert_allclose(y.astype(np.float32), reference.astype(np.float32), atol=4e-3, rtol=2e-3)


@pytest.mark.parametrize(
    "variant,reason",
    [
        ({"square": "Pow(x, eps)"}, "exponent other than 2"),
        ({"axes": "0"}, "not over the last axis"),
    ],
)
def test_leaves_lookalikes(variant, reason):
    model = from_text(rms_text(**variant))
    before = ops(model)
    pass_ = FuseRmsNormPass()
    assert not pass_(model).modified
    assert ops(model) == before
    assert reason in why_not(pass_.rules, model)


def test_needs_opset_23():
    model = from_text(rms_text(opset=21))
    with pytest.raises(ir.passes.PreconditionError, match="opset 23"):
        FuseRmsNormPass()(model)

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

from edgeq.passes.to_fp16 import ConvertFloat16Pass, float32_islands
from tests.passes.helpers import from_text, ops, run

RMS = """<ir_version: 10, opset_import: ["" : 21]>
g (float[2, 5, 64] x) => (float[2, 5, 64] y)
<float two = {2.0}, int64[1] axes = {-1}, float eps = {1e-5}, float[64] scale = {%s}>
{
    sq = Pow(x, two)
    ms = ReduceMean<keepdims=1>(sq, axes)
    var = Add(ms, eps)
    rms = Sqrt(var)
    normed = Div(x, rms)
    y = Mul(normed, scale)
}""" % ", ".join(f"{v:.3f}" for v in np.linspace(0.5, 1.5, 64))

ROPE_TABLE = """<ir_version: 10, opset_import: ["" : 21]>
g (int64[1, 6] pos, float[1, 6, 8] x) => (float[1, 6, 8] y)
<float[4] inv_freq = {1.0, 0.3, 0.1, 0.01}, int64[1] last = {-1}>
{
    posf = Cast<to=1>(pos)
    pos3 = Unsqueeze(posf, last)
    freqs = Mul(pos3, inv_freq)
    emb = Concat<axis=-1>(freqs, freqs)
    c = Cos(emb)
    y = Mul(x, c)
}"""


def rms_feeds():
    # Activations in the hundreds, as LLM outlier channels are: x^2 overflows float16 (max 65504).
    return {"x": (np.random.default_rng(0).standard_normal((2, 5, 64)) * 300).astype(np.float32)}


def test_norm_accumulation_stays_float32_and_the_rest_is_half():
    model = from_text(RMS)
    reference = run(model, rms_feeds())[0]
    assert ConvertFloat16Pass()(model).modified
    assert ops(model) == Counter({"Pow": 1, "ReduceMean": 1, "Add": 1, "Sqrt": 1, "Div": 1, "Mul": 1, "Cast": 3})
    dtypes = {n.op_type: n.outputs[0].dtype for n in model.graph if n.op_type != "Cast"}
    assert dtypes == {"Pow": ir.DataType.FLOAT, "ReduceMean": ir.DataType.FLOAT, "Add": ir.DataType.FLOAT,
                      "Sqrt": ir.DataType.FLOAT, "Div": ir.DataType.FLOAT16, "Mul": ir.DataType.FLOAT16}
    assert model.graph.initializers["scale"].dtype == ir.DataType.FLOAT16
    assert model.graph.initializers["eps"].dtype == ir.DataType.FLOAT  # only the islands read it
    y = run(model, rms_feeds())[0]
    assert y.dtype == np.float32  # I/O stays float32 by default
    np.testing.assert_allclose(y, reference, rtol=2e-3, atol=2e-3)


def reference_run(model, feeds):
    # onnx's reference evaluator computes in each tensor's own type, as a device with half kernels does;
    # ORT's CPU provider would quietly compute half Pow/ReduceMean in float32.
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(ir.to_proto(model)).run(None, feeds)


def test_converting_the_accumulation_too_would_break_it():
    model = from_text(RMS)
    reference = run(model, rms_feeds())[0]
    ConvertFloat16Pass()(model)
    np.testing.assert_allclose(reference_run(model, rms_feeds())[0], reference, rtol=2e-3, atol=2e-3)
    naive = from_text(RMS)
    ConvertFloat16Pass(keep_ops=frozenset())(naive)
    with np.errstate(over="ignore"):
        y = reference_run(naive, rms_feeds())[0]
    assert not np.allclose(y, reference, rtol=2e-3, atol=2e-3)


def test_rotary_table_from_positions_stays_float32():
    model = from_text(ROPE_TABLE)
    feeds = {"pos": np.array([[0, 1, 5, 700, 2900, 3001]], np.int64),
             "x": np.ones((1, 6, 8), np.float32)}
    reference = run(model, feeds)[0]
    islands = {n.op_type for n in float32_islands(model.graph)}
    assert islands == {"Cast", "Unsqueeze", "Mul", "Concat", "Cos"}
    ConvertFloat16Pass()(model)
    np.testing.assert_allclose(run(model, feeds)[0], reference, atol=1e-3)
    np.testing.assert_allclose(reference_run(model, feeds)[0], reference, atol=1e-3)
    naive = from_text(ROPE_TABLE)
    ConvertFloat16Pass(keep_ops=frozenset())(naive)  # Cos of a half angle: 3001 rounds to 3000
    assert np.abs(reference_run(naive, feeds)[0] - reference).max() > 0.05


@pytest.mark.parametrize("io_dtype,expect", [("float16", np.float16), ({"x": "float16", "y": "float32"}, None)])
def test_io_types_are_selectable(io_dtype, expect):
    model = from_text(RMS)
    ConvertFloat16Pass(io_dtype)(model)
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT16
    want_out = ir.DataType.FLOAT16 if expect is np.float16 else ir.DataType.FLOAT
    assert model.graph.outputs[0].dtype == want_out
    y = run(model, {"x": rms_feeds()["x"].astype(np.float16)})[0]
    assert np.isfinite(y).all()


def test_refuses_an_unknown_io_dtype():
    with pytest.raises(ValueError, match="I/O dtype"):
        ConvertFloat16Pass("bfloat16")

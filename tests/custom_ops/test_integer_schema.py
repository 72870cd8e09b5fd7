"""The integer-only ops' schemas: ONNX shape inference (output types and shapes, refusals) and attribute checks."""

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from edgeq.custom_ops.schema import INTEGER_OPS, OPS, opset_import

I8, U8, I16, I32, I64, BOOL = TP.INT8, TP.UINT8, TP.INT16, TP.INT32, TP.INT64, TP.BOOL


def activation(name, scale, shape, code=I8):
    lead = None if shape is None else [*shape[:-1], 1]
    return [(name, code, shape), (f"{scale}_m", I32, lead), (f"{scale}_e", I8, lead)]


def infer(op: str, inputs: list, optional_outputs: bool = False, **attrs):
    """Output (elem_type, dims) of a one-node model; inputs are (name, elem_type, shape) in the op's order; the
    optional outputs only when asked."""
    opdef = OPS[op]
    outputs = [o for o in opdef.outputs if optional_outputs or not o.optional]
    node = opdef.make_node([name for name, _, _ in inputs], [o.name for o in outputs], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_empty_tensor_value_info(o.name) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()])
    out = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
    return [(o.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
            for o in out]


def test_every_integer_op_is_registered():
    for op in INTEGER_OPS:
        assert OPS[op.name] is op
        assert onnx.defs.get_schema(op.name, 1, "edgeq").name == op.name


def test_matmul_output():
    inputs = [*activation("X", "x", ["b", "s", 64]), ("W", I8, [24, 64]), ("w_m", I32, [24]), ("w_e", I8, [24])]
    assert infer("DIMatMul", inputs, K=64, N=24, abits=4, wbits=4, obits=4) == [
        (I8, ["b", "s", 24]), (I32, ["b", "s", 1]), (I8, ["b", "s", 1])]


@pytest.mark.parametrize("op, inputs, attrs", [
    ("DIExp", activation("X", "x", ["t", 7]), dict(obits=8)),
    ("DINorm", [*activation("X", "x", ["t", 7]), ("g_m", I32, [7]), ("g_e", I8, [7])], dict(eps_q60=0, obits=8)),
    ("DISwiGLU", [*activation("gate", "gate", ["t", 7]), *activation("up", "up", ["t", 7])], dict(obits=6)),
    ("DIAdd", [*activation("A", "a", ["t", 7]), *activation("B", "b", ["t", 7])], dict(obits=8)),
    ("DIRotary", [*activation("X", "x", [1, "t", 3, 8])[:1], ("x_m", I32, [1, "t", 1, 1]), ("x_e", I8, [1, "t", 1, 1]),
                  ("position_ids", I64, [1, "t"]), ("cos", I16, [100, 4]), ("sin", I16, [100, 4])],
     dict(interleaved=0, obits=8)),
])
def test_elementwise_outputs_keep_the_shape(op, inputs, attrs):
    shape = inputs[0][2]
    assert infer(op, inputs, **attrs) == [(I8, shape), (I32, [*shape[:-1], 1]), (I8, [*shape[:-1], 1])]


ROTARY_PROJECTION = [("X", I16, [1, "s", 24]), ("x_m", I32, [1, "s", 1]), ("x_e", I8, [1, "s", 1]),
                     ("position_ids", I64, [1, "s"]), ("cos", I16, [100, 4]), ("sin", I16, [100, 4])]


@pytest.mark.parametrize("past_len, s, want", [(5, 1, 6), (0, 3, 3), ("p", 1, None), (5, "s", None)])
def test_rotary_with_a_past_cache_outputs_the_present(past_len, s, want):
    """heads_first with past: [B, H, P + S, D], P + S where both are known (else an unknown dim)."""
    inputs = [(n, t, [s if d == "s" else d for d in shape]) for n, t, shape in ROTARY_PROJECTION]
    past = [("past", I8, [1, 3, past_len, 8]), ("past_m", I32, [1, 3, past_len, 1]), ("past_e", I8, [1, 3, past_len, 1])]
    got = infer("DIRotary", [*inputs, *past], interleaved=0, obits=8, heads_first=1)
    assert [(t, dims[:2] + dims[3:]) for t, dims in got] == [(I8, [1, 3, 8]), (I32, [1, 3, 1]), (I8, [1, 3, 1])]
    for _, dims in got:  # an unknown dim: ONNX names a new symbol for each output
        assert dims[2] == want if want is not None else str(dims[2]).startswith("unk__")


@pytest.mark.parametrize("past, attrs, match", [
    ([("past", I8, [1, 3, 5, 8]), ("past_m", I32, [1, 3, 5, 1]), ("past_e", I8, [1, 3, 5, 1])], dict(heads_first=0),
     r"a past cache needs heads_first=1"),
    ([("past", I8, [1, 3, 5, 8]), ("past_m", I32, [1, 3, 5, 1])], dict(heads_first=1),
     r"past, past_m and past_e come together"),
    ([("past", I8, [1, 2, 5, 8]), ("past_m", I32, [1, 3, 5, 1]), ("past_e", I8, [1, 3, 5, 1])], dict(heads_first=1),
     r"past has shape \[1, 2, 5, 8\], expected \[1, 3, None, 8\]"),
    ([("past", I8, [1, 3, 5, 8]), ("past_m", I32, [1, 3, 4, 1]), ("past_e", I8, [1, 3, 5, 1])], dict(heads_first=1),
     r"past_m has shape \[1, 3, 4, 1\], expected \[1, 3, 5, 1\]"),
])
def test_rotary_past_refused(past, attrs, match):
    with pytest.raises(Exception, match=rf"edgeq::DIRotary: {match}"):
        infer("DIRotary", [*ROTARY_PROJECTION, *past], interleaved=0, obits=8, **attrs)


@pytest.mark.parametrize("code", [I8, I32])
def test_softmax_outputs_uint8_probabilities(code):
    inputs = [*activation("X", "x", [2, "h", 5, 9], code), ("mask", BOOL, [2, 1, 1, 9])]
    assert infer("DIClippedSoftmax", inputs, clip_q8=3840, is_causal=1, obits=8) == [
        (U8, [2, "h", 5, 9]), (I32, [2, "h", 5, 1]), (I8, [2, "h", 5, 1])]


@pytest.mark.parametrize("op, inputs, attrs, match", [
    ("DIMatMul", [*activation("X", "x", [5, 63]), ("W", I8, [24, 64]), ("w_m", I32, [24]), ("w_e", I8, [24])],
     dict(K=64, N=24, abits=8, wbits=8, obits=8), r"X's last dim is 63, attribute K is 64"),
    ("DIMatMul", [*activation("X", "x", [5, 64]), ("W", I8, [24, 64]), ("w_m", I32, [23]), ("w_e", I8, [24])],
     dict(K=64, N=24, abits=8, wbits=8, obits=8), r"w_m has shape \[23\], expected \[24\]"),
    ("DIMatMul", [*activation("X", "x", [5, 64]), ("W", I8, [24, 64]), ("w_m", I32, [24]), ("w_e", I8, [24]),
                  ("w_zero", I8, [23])],
     dict(K=64, N=24, abits=8, wbits=8, obits=8), r"w_zero has shape \[23\], expected \[24\]"),
    ("DIMatMul", [*activation("X", "x", [5, 65536]), ("W", I8, [24, 65536]), ("w_m", I32, [24]), ("w_e", I8, [24]),
                  ("w_zero", I8, [24])],
     dict(K=65536, N=24, abits=8, wbits=8, obits=8), r"K=65536 with w_zero exceeds 65535"),
    ("DIExp", [("X", I8, [5, 7]), ("x_m", I32, [5, 7]), ("x_e", I8, [5, 1])], dict(obits=8),
     r"x_m has shape \[5, 7\], expected \[5, 1\]"),
    ("DINorm", [*activation("X", "x", [5, 7]), ("g_m", I32, [6]), ("g_e", I8, [7])], dict(eps_q60=0, obits=8),
     r"g_m has shape \[6\], expected \[7\]"),
    ("DIAdd", [*activation("A", "a", [5, 7]), *activation("B", "b", [5, 8])], dict(obits=8),
     r"B has shape \[5, 8\], expected \[5, 7\]"),
    ("DIRotary", [("X", I8, [1, 4, 2, 7]), ("x_m", I32, [1, 4, 2, 1]), ("x_e", I8, [1, 4, 2, 1]),
                  ("position_ids", I64, [1, 4]), ("cos", I16, [9, 3]), ("sin", I16, [9, 3])],
     dict(interleaved=0, obits=8), r"head dim D=7 must be even"),
    ("DIRotary", [("X", I8, [1, 4, 2, 8]), ("x_m", I32, [1, 4, 2, 1]), ("x_e", I8, [1, 4, 2, 1]),
                  ("position_ids", I64, [1, 4]), ("cos", I16, [9, 4]), ("sin", I16, [9, 3])],
     dict(interleaved=0, obits=8), r"sin has shape \[9, 3\], expected \[None, 4\]"),
])
def test_inference_refuses_inconsistent_shapes(op, inputs, attrs, match):
    with pytest.raises(Exception, match=rf"edgeq::{op}: {match}"):
        infer(op, inputs, **attrs)


@pytest.mark.parametrize("op, attrs, match", [
    ("DIMatMul", dict(K=131072, N=2, abits=8, wbits=8, obits=8), r"attribute K=131072: must be in 1..131071"),
    ("DIExp", dict(obits=1), r"attribute obits=1: must be an integer in 2..8"),
    ("DIClippedSoftmax", dict(clip_q8=70000, is_causal=0, obits=8), r"attribute clip_q8=70000"),
    ("DINorm", dict(eps_q60=1 << 61, obits=8), r"attribute eps_q60=2305843009213693952"),
    ("DIRotary", dict(interleaved=2, obits=8), r"attribute interleaved=2: must be 0 or 1"),
    ("DINorm", dict(eps_q60=0, obits=8, clip_q15=0), r"attribute clip_q15=0: must be in 1..32768"),
    ("DISwiGLU", dict(obits=8, clip_q15=40000), r"attribute clip_q15=40000: must be in 1..32768"),
])
def test_make_node_checks_attributes(op, attrs, match):
    opdef = OPS[op]
    with pytest.raises(ValueError, match=rf"edgeq::{op}: {match}"):
        opdef.make_node([i.name for i in opdef.inputs if not i.optional], ["Y", "y_m", "y_e"], **attrs)


@pytest.mark.parametrize("trans_b, b_shape, a_code", [(1, [2, 1, "t", 16], I8), (0, [2, 1, "t", 16], U8)])
def test_batch_matmul_outputs_wide_int32(trans_b, b_shape, a_code):
    a_shape = [2, 3, 5, 16] if trans_b else [2, 3, 5, "t"]
    inputs = [*activation("A", "a", a_shape, a_code), *activation("B", "b", b_shape), ("mask", BOOL, [2, 1, 1, "t"])]
    n = "t" if trans_b else 16
    assert infer("DIBatchMatMul", inputs if trans_b else inputs[:6], trans_b=trans_b, is_causal=trans_b) == [
        (I32, [2, 3, 5, n]), (I32, [2, 3, 5, 1]), (I8, [2, 3, 5, 1])]


def test_requant_merges_the_last_two_axes():
    assert infer("DIRequant", activation("X", "x", ["b", "s", 4, 16], I32), obits=6) == [
        (I8, ["b", "s", 64]), (I32, ["b", "s", 1]), (I8, ["b", "s", 1])]


def test_requant_heads_first_merges_attention_layout():
    assert infer("DIRequant", activation("X", "x", ["b", 4, "s", 16], I32), obits=6, heads_first=1) == [
        (I8, ["b", "s", 64]), (I32, ["b", "s", 1]), (I8, ["b", "s", 1])]


@pytest.mark.parametrize("op, inputs, attrs, match", [
    ("DIBatchMatMul", [*activation("A", "a", [2, 5, 16]), *activation("B", "b", [2, 7, 15])], dict(trans_b=1),
     r"A's K is 16, B's is 15"),
    ("DIBatchMatMul", [*activation("A", "a", [2, 5, 16]), *activation("B", "b", [3, 7, 16])], dict(trans_b=1),
     r"B's batch dims \[3\] are not A's \[2\], 1 or divisors of them"),
    ("DIBatchMatMul", [*activation("A", "a", [2, 5, 16]), *activation("B", "b", [7, 16])], dict(trans_b=0),
     r"B has rank 2, A has rank 3"),
    ("DIRequant", activation("X", "x", [7]), dict(obits=8), r"X must have rank >= 2"),
    ("DIRequant", activation("X", "x", [3, 4, 16]), dict(obits=8, heads_first=1), r"heads_first=1 needs X \[B, G, S, D\]"),
])
def test_attention_inference_refuses_inconsistent_shapes(op, inputs, attrs, match):
    with pytest.raises(Exception, match=rf"edgeq::{op}: {match}"):
        infer(op, inputs, **attrs)


@pytest.mark.parametrize("op, inputs, attrs", [
    ("DINorm", [*activation("X", "x", ["t", 7]), ("g_m", I32, [7]), ("g_e", I8, [7])], dict(eps_q60=0, obits=4)),
    ("DISwiGLU", [*activation("gate", "gate", ["t", 7]), *activation("up", "up", ["t", 7])], dict(obits=4)),
])
def test_asymmetric_codes_add_the_zero_point_output(op, inputs, attrs):
    assert infer(op, inputs, optional_outputs=True, act_sym=0, **attrs) == [
        (I8, ["t", 7]), (I32, ["t", 1]), (I8, ["t", 1]), (I32, ["t", 1])]


def test_matmul_takes_x_zero_with_w_sum():
    base = [*activation("X", "x", [5, 64]), ("W", I8, [24, 64]), ("w_m", I32, [24]), ("w_e", I8, [24]),
            ("w_zero", I8, [24])]
    attrs = dict(K=64, N=24, abits=4, wbits=4, obits=8)
    assert infer("DIMatMul", [*base, ("x_zero", I32, [5, 1]), ("w_sum", I32, [24])], **attrs)[0] == (I8, [5, 24])
    with pytest.raises(onnx.shape_inference.InferenceError, match="x_zero has shape"):
        infer("DIMatMul", [*base, ("x_zero", I32, [5]), ("w_sum", I32, [24])], **attrs)
    with pytest.raises(onnx.shape_inference.InferenceError, match="x_zero and w_sum come together"):
        infer("DIMatMul", [*base, ("x_zero", I32, [5, 1])], **attrs)

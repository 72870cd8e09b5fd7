"""Wrong inputs and attributes into the integer-only ops inside an ORT session: an error naming the op, the
node and the problem, never a crash. Shapes are dynamic in these models, so the kernels' own checks run."""

import numpy as np
import onnx
import pytest

from edgeq.custom_ops.integer_codec import rotary_tables

from .conftest import session
from .integer_problems import activation, channel_scales, model, run


def rng():
    return np.random.default_rng(0)


def matmul_args(K=20, N=6, rows=3):
    r = rng()
    W = r.integers(-128, 128, (N, K)).astype(np.int8)
    return [*activation(r, (rows, K)), W, *channel_scales(r, N)]


MATMUL = dict(K=20, N=6, abits=8, wbits=8, obits=8)


@pytest.mark.parametrize("index, value, match", [
    (3, np.ones((5, 20), np.int8), r"W has shape \[5, 20\], expected \[6, 20\] \(N, K\)"),
    (4, np.full(6, 40000, np.int32), r"w_m\[0\] = 40000 is outside \[-32767, 32767\]"),
    (5, np.zeros(4, np.int8), r"w_e has shape \[4\], expected \[6\] \(N\)"),
])
def test_matmul_bad_constant_weights_refused_at_session_creation(cpu_library, index, value, match):
    """Constant weights are checked once, when ORT creates the kernel: a bad one fails the session, naming the node."""
    args = matmul_args()
    args[index] = value
    with pytest.raises(Exception, match=rf"edgeq::DIMatMul node 'n0': {match}"):
        session(model("DIMatMul", args, constants=(3, 4, 5), **MATMUL), cpu_library)


def rotary_args(D=8, P=10):
    r = rng()
    cos, sin = rotary_tables(P, D)
    return [*activation(r, (1, 4, 2, D)), r.integers(0, P, (1, 4)), cos, sin]


def fails(library, op, args, match, **attrs):
    with pytest.raises(Exception, match=match):
        run(library, op, args, **attrs)


@pytest.mark.parametrize("index, dtype, name", [(0, np.int32, "X"), (1, np.int64, "x_m"), (2, np.int32, "x_e"),
                                                (3, np.uint8, "W"), (4, np.float32, "w_m")])
def test_matmul_wrong_dtype(cpu_library, index, dtype, name):
    args = matmul_args()
    args[index] = args[index].astype(dtype)
    fails(cpu_library, "DIMatMul", args, rf"\({name}\) of operator \(DIMatMul\) in node \(n0\)", **MATMUL)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.__setitem__(0, a[0][:, :19].copy()), r"X has shape \[3, 19\]: last dim must equal attribute K=20"),
    (lambda a: a.__setitem__(1, a[1][:2].copy()), r"x_m has shape \[2, 1\], expected \[3, 1\]"),
    (lambda a: a.__setitem__(2, a[2].reshape(3)), r"x_e has shape \[3\], expected \[3, 1\]"),
    (lambda a: a.__setitem__(3, a[3][:5].copy()), r"W has shape \[5, 20\], expected \[6, 20\] \(N, K\)"),
    (lambda a: a.__setitem__(5, a[5][:4].copy()), r"w_e has shape \[4\], expected \[6\] \(N\)"),
    (lambda a: a[1].__setitem__((1, 0), 0), r"x_m\[1\] = 0 is outside \[1, 32767\]"),
    (lambda a: a[1].__setitem__((2, 0), 40000), r"x_m\[2\] = 40000 is outside \[1, 32767\]"),
    (lambda a: a[4].__setitem__(3, -32768), r"w_m\[3\] = -32768 is outside \[-32767, 32767\]"),
    (lambda a: a.__setitem__(0, a[0][:0].copy()), r"X has shape \[0, 20\] with zero elements"),
])
def test_matmul_bad_shapes_and_values(cpu_library, change, match):
    args = matmul_args()
    change(args)
    fails(cpu_library, "DIMatMul", args, rf"edgeq::DIMatMul node 'n0': {match}", **MATMUL)


def test_matmul_bad_zero_points(cpu_library):
    args = matmul_args()
    fails(cpu_library, "DIMatMul", [*args, np.zeros(5, np.int8)],
          r"edgeq::DIMatMul node 'n0': w_zero has shape \[5\], expected \[6\] \(N\)", **MATMUL)
    fails(cpu_library, "DIMatMul", [*args, np.zeros(6, np.int32)], r"\(w_zero\) of operator \(DIMatMul\)", **MATMUL)
    K = 1 << 16
    big = matmul_args(K=K, N=2, rows=1)
    fails(cpu_library, "DIMatMul", [*big, np.zeros(2, np.int8)],
          r"edgeq::DIMatMul node 'n0': K=65536 with w_zero exceeds 65535", **dict(MATMUL, K=K, N=2))


@pytest.mark.parametrize("op, attrs, match", [
    ("DIMatMul", dict(MATMUL, obits=17), r"attribute obits=17 must be in 2..16"),
    ("DIMatMul", dict(MATMUL, K=1 << 17), r"attribute K=131072 must be in 1..131071"),
    ("DIMatMul", dict(MATMUL, wbits=1), r"attribute wbits=1 must be in 2..8"),
    ("DIClippedSoftmax", dict(clip_q8=-1, is_causal=0, obits=8), r"attribute clip_q8=-1 must be in 0..65535"),
    ("DIClippedSoftmax", dict(clip_q8=0, is_causal=2, obits=8), r"attribute is_causal=2 must be in 0..1"),
    ("DINorm", dict(eps_q60=-5, obits=8), r"attribute eps_q60=-5 must be in \[0, 2\^61\)"),
    ("DIRotary", dict(interleaved=3, obits=8), r"attribute interleaved=3 must be in 0..1"),
    ("DINorm", dict(eps_q60=0, obits=8, clip_q15=32769), r"attribute clip_q15=32769 must be in 1..32768"),
])
def test_bad_attributes_fail_session_creation(cpu_library, op, attrs, match):
    r = rng()
    args = {"DIMatMul": matmul_args(), "DIClippedSoftmax": [*activation(r, (2, 5)), None],
            "DINorm": [*activation(r, (2, 5)), *channel_scales(r, 5)], "DIRotary": rotary_args()}[op]
    fails(cpu_library, op, args, rf"edgeq::{op} node 'n0': {match}", **attrs)


def test_missing_attribute(cpu_library):
    fails(cpu_library, "DIExp", list(activation(rng(), (2, 5))),
          r"edgeq::DIExp node 'n0': int attribute 'obits' is missing")


def test_softmax_scores_of_another_type(cpu_library):
    # registered once per X type (int8, int32), so ORT itself refuses another, naming the node and the input
    x = activation(rng(), (2, 5))
    fails(cpu_library, "DIClippedSoftmax", [x[0].astype(np.float32), *x[1:], None],
          r"Type 'tensor\(float\)' of input parameter \(X\) of operator \(DIClippedSoftmax\) in node \(n0\) is invalid",
          clip_q8=0, is_causal=0, obits=8)


@pytest.mark.parametrize("obits, p_type, want", [(8, np.int8, "uint8"), (12, np.uint8, "uint16"),
                                                 (6, np.uint16, "uint8")])
def test_softmax_probabilities_of_the_wrong_type(cpu_library, obits, p_type, want):
    x = activation(rng(), (2, 5))
    y_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(p_type))
    with pytest.raises(Exception, match=rf"DIClippedSoftmax node 'n0': P is {np.dtype(p_type).name}, but "
                                        rf"obits={obits} gives {want} codes"):
        run(cpu_library, "DIClippedSoftmax", [*x, None], y_type=y_type, clip_q8=0, is_causal=0, obits=obits)


def test_softmax_too_many_keys_for_wide_probabilities(cpu_library):
    keys = 1 << 18  # 2^(34 - 16): S * qmax would reach 2^64
    x = activation(rng(), (1, keys))
    fails(cpu_library, "DIClippedSoftmax", [*x, None], r"X has 262144 keys, more than 262143 at obits=16",
          clip_q8=0, is_causal=0, obits=16)
    assert run(cpu_library, "DIClippedSoftmax", [*activation(rng(), (1, keys - 1)), None], clip_q8=0, is_causal=0,
               obits=16)[0].dtype == np.uint16


def test_batch_matmul_wide_probabilities_only_for_context(cpu_library):
    r = rng()
    a = activation(r, (1, 2, 3, 4))
    b = activation(r, (1, 2, 5, 4))
    fails(cpu_library, "DIBatchMatMul", [a[0].astype(np.uint16), *a[1:], *b, None],
          r"uint16 A \(probabilities\) is for trans_b=0 \(P.V\) only", trans_b=1)


@pytest.mark.parametrize("mask_shape, match", [
    ((2, 3), r"mask has shape \[2, 3\], expected X's rank with each dim equal to X's \[2, 4, 5\] or 1"),
    ((2, 4, 4), r"mask has shape \[2, 4, 4\]"),
])
def test_softmax_bad_mask(cpu_library, mask_shape, match):
    x = activation(rng(), (2, 4, 5))
    fails(cpu_library, "DIClippedSoftmax", [*x, np.ones(mask_shape, bool)],
          rf"edgeq::DIClippedSoftmax node 'n0': {match}", clip_q8=0, is_causal=0, obits=8)


def test_softmax_mask_not_bool(cpu_library):
    x = activation(rng(), (2, 4, 5))
    fails(cpu_library, "DIClippedSoftmax", [*x, np.ones((2, 4, 5), np.uint8)],
          r"\(mask\) of operator \(DIClippedSoftmax\)", clip_q8=0, is_causal=0, obits=8)


def test_causal_needs_two_dims(cpu_library):
    x = activation(rng(), (5,))
    fails(cpu_library, "DIClippedSoftmax", [*x, None], r"is_causal needs X of rank >= 2", clip_q8=0, is_causal=1,
          obits=8)


def test_norm_too_many_channels(cpu_library):
    r = rng()
    C = 1 << 17
    fails(cpu_library, "DINorm", [*activation(r, (1, C)), *channel_scales(r, C)],
          r"edgeq::DINorm node 'n0': X has 131072 channels, more than 131071", eps_q60=0, obits=8)


def test_norm_gamma_of_the_wrong_length(cpu_library):
    r = rng()
    fails(cpu_library, "DINorm", [*activation(r, (2, 5)), *channel_scales(r, 4)],
          r"edgeq::DINorm node 'n0': g_m has shape \[4\], expected \[5\] \(C, X's last dim\)", eps_q60=0, obits=8)


@pytest.mark.parametrize("op, names", [("DISwiGLU", ("gate", "up")), ("DIAdd", ("A", "B"))])
def test_binary_ops_refuse_different_shapes(cpu_library, op, names):
    r = rng()
    fails(cpu_library, op, [*activation(r, (2, 5)), *activation(r, (2, 6))],
          rf"edgeq::{op} node 'n0': {names[1]} has shape \[2, 6\], expected {names[0]}'s \[2, 5\]", obits=8)


def test_binary_ops_refuse_bad_second_scales(cpu_library):
    r = rng()
    b = list(activation(r, (2, 5)))
    b[1] = np.zeros((2, 1), np.int32)
    fails(cpu_library, "DIAdd", [*activation(r, (2, 5)), *b],
          r"edgeq::DIAdd node 'n0': b_m\[0\] = 0 is outside \[1, 32767\]", obits=8)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.__setitem__(0, a[0][0, 0]), r"X has shape \[2, 8\], expected \[B, S, H, D\] or \[B, S, H\*D\]"),
    (lambda a: a.__setitem__(0, a[0][0]),  # read as a projection's [B, S, H*D]: per-token scales only
     r"x_m has shape \[1, 4, 2, 1\], expected \[4, 2, 1\] \(per token, for X \[B, S, H\*D\]\)"),
    (lambda a: a.__setitem__(0, a[0].reshape(1, 4, 16)[..., :12].copy()),
     r"X has shape \[1, 4, 12\]: its last dim must be a multiple of the head dim D = 2 x cos's last dim"),
    (lambda a: a.__setitem__(0, a[0][..., :7].copy()), r"X has shape \[1, 4, 2, 7\]: the head dim D must be even"),
    (lambda a: a.__setitem__(slice(1, 3), [a[1][:, :3].copy(), a[2][:, :3].copy()]),
     r"x_m has shape \[1, 3, 2, 1\], expected \[1, 4, 2, 1\] or \[1, 4, 1, 1\]"),
    (lambda a: a.__setitem__(3, a[3][:, :3].copy()), r"position_ids has shape \[1, 3\], expected \[1, 4\]"),
    (lambda a: a[3].__setitem__((0, 2), 10), r"position_ids\[2\] = 10 is outside the tables' \[0, 10\)"),
    (lambda a: a[3].__setitem__((0, 1), -1), r"position_ids\[1\] = -1 is outside"),
    (lambda a: a.__setitem__(4, a[4][:, :3].copy()), r"cos has shape \[10, 3\], expected \[P, 4\] \(D/2\)"),
    (lambda a: a.__setitem__(5, a[5][:9].copy()), r"sin has shape \[9, 4\], expected \[10, 4\]"),
])
def test_rotary_bad_inputs(cpu_library, change, match):
    args = rotary_args()
    change(args)
    fails(cpu_library, "DIRotary", args, rf"edgeq::DIRotary node 'n0': {match}", interleaved=0, obits=8)


def past_args(P=3):
    r = rng()
    return [r.integers(-128, 128, (1, 2, P, 8)).astype(np.int8), r.integers(1, 100, (1, 2, P, 1)).astype(np.int32),
            r.integers(0, 9, (1, 2, P, 1)).astype(np.int8)]


@pytest.mark.parametrize("change, heads_first, match", [
    (lambda p: None, 0, r"a past cache needs heads_first=1"),
    (lambda p: p.__setitem__(2, None), 1, r"past, past_m and past_e come together"),
    (lambda p: p.__setitem__(0, p[0][:, :1].copy()), 1,
     r"past has shape \[1, 1, 3, 8\], expected \[1, 2, P, 8\] \(X's batch, heads and head dim\)"),
    (lambda p: p.__setitem__(0, p[0][..., :6].copy()), 1, r"past has shape \[1, 2, 3, 6\], expected \[1, 2, P, 8\]"),
    (lambda p: p.__setitem__(1, p[1][:, :, :2].copy()), 1,
     r"past_m has shape \[1, 2, 2, 1\], expected \[1, 2, 3, 1\] \(past's leading dims \+ \[1\]\)"),
    (lambda p: p.__setitem__(2, p[2][..., :1, :].copy()), 1, r"past_e has shape \[1, 2, 1, 1\], expected \[1, 2, 3, 1\]"),
])
def test_rotary_bad_past(cpu_library, change, heads_first, match):
    past = past_args()
    change(past)
    fails(cpu_library, "DIRotary", [*rotary_args(), *past], rf"edgeq::DIRotary node 'n0': {match}", interleaved=0,
          obits=8, heads_first=heads_first)


def test_rotary_past_of_another_type(cpu_library):
    past = past_args()
    past[0] = past[0].astype(np.int16)
    fails(cpu_library, "DIRotary", [*rotary_args(), *past], r"\(past\) of operator \(DIRotary\) in node \(n0\)",
          interleaved=0, obits=8, heads_first=1)


def test_rotary_table_of_another_type(cpu_library):
    args = rotary_args()
    args[4] = args[4].astype(np.int32)
    fails(cpu_library, "DIRotary", args, r"\(cos\) of operator \(DIRotary\) in node \(n0\)", interleaved=0, obits=8)


def batch_args(a_shape=(2, 3, 16), b_shape=(2, 5, 16)):
    r = rng()
    return [*activation(r, a_shape), *activation(r, b_shape), None]


@pytest.mark.parametrize("args, attrs, match", [
    (batch_args(b_shape=(2, 5, 15)), dict(trans_b=1), r"B has shape \[2, 5, 15\]: its last dim must equal A's K=16"),
    (batch_args(b_shape=(3, 5, 16)), dict(trans_b=1), r"batch dims must equal A's \[2, 3, 16\], be 1 or divide them"),
    (batch_args(b_shape=(5, 16)), dict(trans_b=1), r"expected A's rank 3"),
    (batch_args(b_shape=(2, 16, 4)), dict(trans_b=0, is_causal=1), r"mask and is_causal apply to trans_b=1"),
    (batch_args(a_shape=(2, 3, 65536), b_shape=(1, 2, 65536)), dict(trans_b=1), r"K=65536 exceeds 65535"),
])
def test_batch_matmul_bad_inputs(cpu_library, args, attrs, match):
    fails(cpu_library, "DIBatchMatMul", args, rf"DIBatchMatMul node 'n0': .*{match}", **attrs)


def test_requant_heads_first_needs_rank_4(cpu_library):
    fails(cpu_library, "DIRequant", list(activation(rng(), (3, 2, 8))),
          r"DIRequant node 'n0': X has shape \[3, 2, 8\], expected \[B, G, S, D\] \(heads_first=1\)", obits=8,
          heads_first=1)


def test_requant_refuses_int16(cpu_library):
    q, m, e = activation(rng(), (3, 2, 8))
    fails(cpu_library, "DIRequant", [q.astype(np.int16), m, e], r"(int16|X)", obits=8)

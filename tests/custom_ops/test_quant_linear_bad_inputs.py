"""Wrong inputs into edgeq::QuantLinear inside an ORT session: an error naming the op and the problem."""

import functools

import numpy as np
import pytest
from onnx import TensorProto

from .conftest import drop_attribute, run_dynamic_model, session
from .quant_linear_problems import feeds, ql_model, random_problem

OP = r"edgeq::QuantLinear"


def problem(**kw):
    args = dict(lead=(3,), K=100, N=7, wbits=4, abits=4)
    args.update(kw)
    return random_problem(np.random.default_rng(0), **args)


run_dynamic = functools.partial(run_dynamic_model, ql_model, feeds)


def test_a_of_unsupported_type(cpu_library):
    p = problem()
    model = ql_model(p, weights_as_inputs=True)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    f = feeds(p, True)
    f["A"] = p.A.astype(np.float64)
    with pytest.raises(Exception, match=rf"{OP}.*A must be float32 or float16, got float64"):
        session(model, cpu_library).run(None, f)


def test_scales_of_another_dtype(cpu_library):
    p = problem()
    p.w_scales = p.w_scales.astype(np.float16)
    with pytest.raises(Exception, match=rf"{OP} node 'ql0': w_scales must have A's type \(float32\), got float16"):
        run_dynamic(cpu_library, p)


def test_b_not_int8(cpu_library):
    # The schema fixes B to int8, so ORT's own type check refuses the graph, naming op, node and input.
    p = problem()
    p.B = p.B.view(np.uint8)
    with pytest.raises(Exception, match=r"tensor\(uint8\).* \(B\) of operator \(QuantLinear\) in node \(ql0\)"):
        run_dynamic(cpu_library, p)


def test_mismatched_k_at_run_time(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP} node 'ql0': A has shape \[3, 99\]: last dim must equal attribute K=100"):
        run_dynamic(cpu_library, p, a=p.A[:, :99].copy())


def test_mismatched_k_with_static_shapes(cpu_library):
    # ORT runs the op's output inference at session creation but, in the versions seen, only logs its refusal;
    # then Compute refuses. Either message names the op and both numbers.
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}: A's last dim is 100, attribute K is 96|{OP} node 'ql0': A has shape "
                                        r"\[3, 100\]: last dim must equal attribute K=96"):
        session(ql_model(p, K=96), cpu_library).run(None, feeds(p))


def test_zero_offsets_of_another_shape_or_type(cpu_library):
    p = problem(asymmetric=True)
    p.w_zero = p.w_zero[:5].copy()
    with pytest.raises(Exception, match=rf"{OP} node 'ql0': w_zero has shape \[5\], expected \[7\] \(N\)"):
        run_dynamic(cpu_library, p)
    p = problem(asymmetric=True)
    p.w_zero = p.w_zero.astype(np.int32)
    with pytest.raises(Exception, match=r"tensor\(int32\).* \(w_zero\) of operator \(QuantLinear\) in node \(ql0\)"):
        run_dynamic(cpu_library, p)


def test_wrong_scale_count(cpu_library):
    p = problem()
    p.w_scales = p.w_scales[:5].copy()
    with pytest.raises(Exception, match=rf"{OP} node 'ql0': w_scales has shape \[5\], expected \[7\] \(N\)"):
        run_dynamic(cpu_library, p)


def test_b_packed_for_other_bits(cpu_library):
    p = problem()  # 4-bit: [7, 50]
    with pytest.raises(Exception, match=rf"{OP} node 'ql0': B has shape \[7, 50\], expected \[7, 100\] \(N, K\): wbits=8"):
        run_dynamic(cpu_library, p, wbits=8, abits=8)


def test_b_for_another_n(cpu_library):
    p = problem()
    p.B = p.B[:6].copy()
    with pytest.raises(Exception, match=rf"{OP}.*B has shape \[6, 50\], expected \[7, 50\] \(N, ceil\(K/2\)\)"):
        run_dynamic(cpu_library, p)


def test_scalar_a(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*A must have rank >= 1"):
        run_dynamic(cpu_library, p, a=np.array(1.0, np.float32))


@pytest.mark.parametrize("shape", [(0, 100), (2, 0, 100)])
def test_zero_size_a(cpu_library, shape):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*A has shape .* with zero elements; the op needs at least one row"):
        run_dynamic(cpu_library, p, a=np.zeros(shape, np.float32))


def test_zero_size_weights(cpu_library):
    p = problem()
    p.B = np.zeros((0, 50), np.int8)
    with pytest.raises(Exception, match=rf"{OP}.*B has shape \[0, 50\], expected \[7, 50\]"):
        run_dynamic(cpu_library, p)


@pytest.mark.parametrize("attrs, match", [
    (dict(wbits=9), "attribute wbits=9 must be in 2..8"),
    (dict(abits=1), "attribute abits=1 must be in 2..8"),
    (dict(N=0), "attribute N=0 must be positive"),
    (dict(K=200000), "attribute K=200000 exceeds 131072"),
])
def test_bad_attributes_at_session_creation(cpu_library, attrs, match):
    p = problem()
    model = ql_model(p, a_shape=[None, None], weights_as_inputs=True, **attrs)
    with pytest.raises(Exception, match=match):
        session(model, cpu_library)


def test_missing_attribute(cpu_library):
    p = problem()
    model = drop_attribute(ql_model(p, a_shape=[None, None], weights_as_inputs=True), "abits")
    with pytest.raises(Exception, match=r"abits"):
        session(model, cpu_library)

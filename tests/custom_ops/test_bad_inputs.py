"""Wrong inputs into edgeq::GroupQuantMatMul inside an ORT session: an error naming the op and the problem."""

import functools

import numpy as np
import pytest
from onnx import TensorProto

from .conftest import drop_attribute, feeds, gqmm_model, random_problem, run_dynamic_model, session

OP = r"edgeq::GroupQuantMatMul"


def problem(**kw):
    args = dict(lead=(3,), K=100, N=7, bits=3, group_size=32)
    args.update(kw)
    return random_problem(np.random.default_rng(0), **args)


run_dynamic = functools.partial(run_dynamic_model, gqmm_model, feeds)


def test_scales_of_another_dtype(cpu_library):
    p = problem()
    p.scales = p.scales.astype(np.float16)
    with pytest.raises(Exception, match=rf"{OP} node 'gqmm0': scales must have A's type \(float32\), got float16"):
        run_dynamic(cpu_library, p)


def test_b_not_uint8(cpu_library):
    # The schema fixes B to uint8, so ORT's own type check refuses the graph, naming op, node and input.
    p = problem()
    p.B = p.B.astype(np.int8)
    with pytest.raises(Exception, match=r"tensor\(int8\).* \(B\) of operator \(GroupQuantMatMul\) in node \(gqmm0\)"):
        run_dynamic(cpu_library, p)


def create_and_run(model, library, f):
    """ORT reports a failed output inference at session creation or at the first run, depending on version."""
    return session(model, library).run(None, f)


def test_a_of_unsupported_type(cpu_library):
    p = problem()
    model = gqmm_model(p, weights_as_inputs=True)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    f = feeds(p, True)
    f["A"] = p.A.astype(np.float64)
    with pytest.raises(Exception, match=rf"{OP}.*A must be float32 or float16, got float64"):
        create_and_run(model, cpu_library, f)


def test_mismatched_k_at_run_time(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*A has shape \[3, 99\]: last dim must equal attribute K=100"):
        run_dynamic(cpu_library, p, a=p.A[:, :99].copy())


def test_mismatched_k_with_static_shapes(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*last dim .*K=96|{OP}: A's last dim is 100, attribute K is 96"):
        create_and_run(gqmm_model(p, K=96), cpu_library, feeds(p))


def test_wrong_scale_count(cpu_library):
    p = problem()
    p.scales = p.scales[:, :3].copy()
    with pytest.raises(Exception, match=rf"{OP}.*scales has shape \[7, 3\], expected \[7, 4\]"):
        run_dynamic(cpu_library, p)


def test_wrong_zero_point_count(cpu_library):
    p = problem()
    p.zero_points = p.zero_points[:5].copy()
    with pytest.raises(Exception, match=rf"{OP}.*zero_points has shape \[5, 4\], expected \[7, 4\]"):
        run_dynamic(cpu_library, p)


def test_b_packed_for_other_bits(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*B has shape \[7, 4, 12\], expected \[7, 4, 16\]"):
        run_dynamic(cpu_library, p, bits=4)


def test_wrong_rank(cpu_library):
    p = problem()
    p.B = p.B.reshape(7, -1)
    with pytest.raises(Exception, match=rf"{OP}.*B has shape \[7, 48\], expected \[7, 4, 12\]"):
        run_dynamic(cpu_library, p)


def test_scalar_a(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*A must have rank >= 1"):
        run_dynamic(cpu_library, p, a=np.array(1.0, np.float32))


@pytest.mark.parametrize("shape", [(0, 100), (2, 0, 100)])
def test_zero_size_a(cpu_library, shape):
    p = problem()
    with pytest.raises(Exception, match=rf"{OP}.*A has shape .* with zero elements"):
        run_dynamic(cpu_library, p, a=np.zeros(shape, np.float32))


def test_zero_size_weights(cpu_library):
    p = problem()
    p.B = np.zeros((0, 4, 12), np.uint8)
    with pytest.raises(Exception, match=rf"{OP}.*B has shape \[0, 4, 12\], expected \[7, 4, 12\]"):
        run_dynamic(cpu_library, p)


@pytest.mark.parametrize("attrs, match", [
    (dict(bits=5), "attribute bits=5 must be one of 2, 3, 4, 8"),
    (dict(group_size=24), "attribute group_size=24 must be one of 16, 32, 64, 128"),
    (dict(N=0), "attribute N=0 must be positive"),
])
def test_bad_attributes_at_session_creation(cpu_library, attrs, match):
    p = problem()
    model = gqmm_model(p, a_shape=[None, None], weights_as_inputs=True, **attrs)
    with pytest.raises(Exception, match=match):
        session(model, cpu_library)


def test_missing_attribute(cpu_library):
    p = problem()
    model = drop_attribute(gqmm_model(p, a_shape=[None, None], weights_as_inputs=True), "group_size")
    with pytest.raises(Exception, match=r"group_size"):
        session(model, cpu_library)


def test_session_survives_a_bad_call(cpu_library):
    """An error is an error status, not a crash: the same session still computes afterwards."""
    p = problem()
    model = gqmm_model(p, a_shape=[None, None], weights_as_inputs=True)
    s = session(model, cpu_library)
    bad = feeds(p, True)
    bad["scales"] = bad["scales"][:, :2].copy()
    with pytest.raises(Exception, match="scales has shape"):
        s.run(None, bad)
    assert s.run(None, feeds(p, True))[0].shape == (3, 7)

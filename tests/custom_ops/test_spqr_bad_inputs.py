"""Wrong inputs into edgeq::SpQRMatMul / SpQRDequantize inside an ORT session: an error naming the op, the node
and the problem, never a crash or a read outside the inputs."""

import functools

import numpy as np
import pytest
from onnx import TensorProto

from .conftest import drop_attribute, run_dynamic_model, session
from .spqr_problems import feeds, random_problem, spqr_model

MATMUL = r"edgeq::SpQRMatMul node 'spqr0'"
DEQUANTIZE = r"edgeq::SpQRDequantize node 'spqr0'"


def problem(**kw):
    args = dict(lead=(3,), K=100, N=7, bits=3, group_size=16, stat_bits=3, stat_group_size=4, density=0.05)
    args.update(kw)
    return random_problem(np.random.default_rng(0), **args)


def run_dynamic(library, p, a=None, dequantize=False, **attrs):
    return run_dynamic_model(functools.partial(spqr_model, dequantize=dequantize),
                             functools.partial(feeds, dequantize=dequantize), library, p, a, **attrs)


def test_a_of_unsupported_type(cpu_library):
    p = problem()
    model = spqr_model(p, weights_as_inputs=True)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE  # a consistent graph: Y is A's type
    f = feeds(p, weights_as_inputs=True)
    f["A"] = p.A.astype(np.float64)
    with pytest.raises(Exception, match=r"edgeq::SpQRMatMul.*A must be float32 or float16, got float64"):
        session(model, cpu_library).run(None, f)


@pytest.mark.parametrize("name, dtype", [("stats", np.float32), ("cols", np.int32), ("row_ptr", np.int64),
                                         ("codes", np.int8)])
def test_weight_of_another_dtype(cpu_library, name, dtype):
    # Weight types are fixed by the op: ORT's own type check refuses the graph, naming op, node and input.
    p = problem()
    setattr(p, name, getattr(p, name).astype(dtype))
    with pytest.raises(Exception, match=rf"\({name}\) of operator \(SpQRMatMul\) in node \(spqr0\)"):
        run_dynamic(cpu_library, p)


def test_mismatched_k_at_run_time(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{MATMUL}: A has shape \[3, 99\]: last dim must equal attribute K=100"):
        run_dynamic(cpu_library, p, a=p.A[:, :99].copy())


def test_mismatched_k_with_static_shapes(cpu_library):
    # ORT runs the op's output inference at session creation but, in the versions seen, only logs its refusal;
    # then Compute refuses. Either message names the op and both numbers.
    p = problem()
    with pytest.raises(Exception, match=r"edgeq::SpQRMatMul: A's last dim is 100, attribute K is 96|"
                                        rf"{MATMUL}: A has shape \[3, 100\]: last dim must equal attribute K=96"):
        session(spqr_model(p, K=96), cpu_library).run(None, feeds(p))


@pytest.mark.parametrize("dequantize", [False, True], ids=["matmul", "dequantize"])
def test_wrong_stats_shape(cpu_library, dequantize):
    p = problem()
    p.stats = p.stats[:1].copy()
    where = DEQUANTIZE if dequantize else MATMUL
    with pytest.raises(Exception, match=rf"{where}: stats has shape \[1, 7, 4\], expected \[2, 7, 4\] "
                                        r"\(ceil\(N/stat_group_size\), ceil\(K/group_size\), 4\)"):
        run_dynamic(cpu_library, p, dequantize=dequantize)


@pytest.mark.parametrize("name, cut, match", [
    ("codes", np.s_[:, :6], r"codes has shape \[7, 6, 6\], expected \[7, 7, 6\]"),
    ("scale_codes", np.s_[:, :2], r"scale_codes has shape \[7, 2\], expected \[7, 3\]"),
    ("zero_codes", np.s_[:6], r"zero_codes has shape \[6, 3\], expected \[7, 3\]"),
    ("row_ptr", np.s_[:-1], r"row_ptr has shape \[7\], expected \[8\] \(N \+ 1\)"),
    ("values", np.s_[:-1], r"values has shape \[\d+\], expected \[\d+\] \(nnz, the length of cols\)"),
])
def test_wrong_weight_shapes(cpu_library, name, cut, match):
    p = problem()
    setattr(p, name, getattr(p, name)[cut].copy())
    with pytest.raises(Exception, match=rf"{MATMUL}: {match}"):
        run_dynamic(cpu_library, p)


def test_stat_codes_packed_for_another_width(cpu_library):
    p = problem()  # 7 groups of 3-bit codes: 3 bytes a row; 4-bit codes would take 4
    with pytest.raises(Exception, match=rf"{MATMUL}: scale_codes has shape \[7, 3\], expected \[7, 4\]"):
        run_dynamic(cpu_library, p, stat_bits=4)


def with_row_ptr(p, *changes):
    p.row_ptr = p.row_ptr.copy()
    for index, value in changes:
        p.row_ptr[index] = value
    return p


def with_outliers(p, extra):
    """``extra`` more outliers than the row pointers index."""
    p.cols = np.concatenate([p.cols, np.zeros(extra, np.int16)])
    p.values = np.concatenate([p.values, np.ones(extra, np.float16)])
    return p


@pytest.mark.parametrize("dequantize", [False, True], ids=["matmul", "dequantize"])
@pytest.mark.parametrize("change, match", [
    (lambda p: with_outliers(p, 1), r"row_ptr\[N\] is (\d+), expected nnz=(?!\1)\d+"),
    (lambda p: with_row_ptr(p, (-1, p.row_ptr[-1] + 5)), r"row_ptr\[N\] is (\d+), expected nnz=(?!\1)\d+"),
    (lambda p: with_row_ptr(p, (3, p.row_ptr[4] + 1)), r"row_ptr decreases at row 3"),
    (lambda p: with_row_ptr(p, (2, 10**6)), r"row_ptr decreases at row 2 \(1000000 -> \d+\)"),
    (lambda p: with_row_ptr(p, (0, -1)), r"row_ptr\[0\] is -1, expected 0"),
    (lambda p: with_row_ptr(p, (0, 2)), r"row_ptr\[0\] is 2, expected 0"),
], ids=["short-of-nnz", "past-nnz", "decreasing", "far-out-of-range", "negative-start", "late-start"])
def test_row_pointers_that_do_not_index_the_outliers(cpu_library, change, match, dequantize):
    p = change(problem())
    with pytest.raises(Exception, match=rf"{DEQUANTIZE if dequantize else MATMUL}: {match}"):
        run_dynamic(cpu_library, p, dequantize=dequantize)


@pytest.mark.parametrize("column", [100, 65535], ids=["K", "uint16-max"])
@pytest.mark.parametrize("dequantize", [False, True], ids=["matmul", "dequantize"])
def test_column_index_out_of_range(cpu_library, column, dequantize):
    p = problem()
    cols = p.cols.view(np.uint16).copy()
    cols[-1] = column
    p.cols = cols.view(np.int16)
    i = len(cols) - 1
    with pytest.raises(Exception, match=rf"{DEQUANTIZE if dequantize else MATMUL}: cols\[{i}\] = {column} is not a "
                                        r"column: K=100"):
        run_dynamic(cpu_library, p, dequantize=dequantize)


@pytest.mark.parametrize("shape", [(0, 100), (2, 0, 100)])
def test_zero_size_a(cpu_library, shape):
    p = problem()
    with pytest.raises(Exception, match=rf"{MATMUL}: A has shape .* with zero elements; the op needs at least one row"):
        run_dynamic(cpu_library, p, a=np.zeros(shape, np.float32))


def test_scalar_a(cpu_library):
    p = problem()
    with pytest.raises(Exception, match=rf"{MATMUL}: A must have rank >= 1"):
        run_dynamic(cpu_library, p, a=np.array(1.0, np.float32))


@pytest.mark.parametrize("attrs, match", [
    (dict(bits=5), "attribute bits=5 must be one of 2, 3, 4, 8"),
    (dict(group_size=24), "attribute group_size=24 must be one of 16, 32, 64, 128"),
    (dict(stat_bits=0), "attribute stat_bits=0 must be in 1..8"),
    (dict(stat_group_size=0), "attribute stat_group_size=0 must be positive"),
    (dict(N=0), "attribute N=0 must be positive"),
])
@pytest.mark.parametrize("dequantize", [False, True], ids=["matmul", "dequantize"])
def test_bad_attributes_at_session_creation(cpu_library, attrs, match, dequantize):
    p = problem()
    model = spqr_model(p, dequantize=dequantize, a_shape=[None, None], weights_as_inputs=True, **attrs)
    with pytest.raises(Exception, match=rf"{DEQUANTIZE if dequantize else MATMUL}: {match}"):
        session(model, cpu_library)


def test_missing_attribute(cpu_library):
    p = problem()
    model = drop_attribute(spqr_model(p, a_shape=[None, None], weights_as_inputs=True), "stat_group_size")
    with pytest.raises(Exception, match=rf"{MATMUL}: int attribute 'stat_group_size' is missing"):
        session(model, cpu_library)

"""edgeq::GroupQuantMatMul on ORT's CPU execution provider against the float64 NumPy reference."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops.reference import group_quant_matmul

from .conftest import TOLERANCE, feeds, gqmm_model, random_problem, rel_error, session


def random_cases(count: int, seed: int):
    """Shapes drawn at random: odd M/N/K, K off the group grid, 1-3 leading dims, every bits/group pair."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        bits = (2, 3, 4, 8)[i % 4]
        group_size = (16, 32, 64, 128)[(i // 4) % 4]
        lead = [(1,), (3,), (2, 5), (7,), (1, 1), (2, 3, 2), (17,), (65,)][int(rng.integers(8))]
        K = int(rng.integers(1, 600))
        if i % 5 == 0:
            K = group_size * int(rng.integers(1, 5))  # on the grid too
        N = int(rng.integers(1, 70)) | 1
        cases.append(pytest.param(i, lead, K, N, bits, group_size, i % 3 != 0,
                                  id=f"{i}-M{'x'.join(map(str, lead))}-K{K}-N{N}-b{bits}-g{group_size}"))
    return cases


@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", random_cases(64, seed=2024))
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_matches_reference(cpu_library, dtype, seed, lead, K, N, bits, group_size, with_zp):
    p = random_problem(np.random.default_rng(seed), lead, K, N, bits, group_size, dtype, with_zp)
    y = session(gqmm_model(p), cpu_library, threads=2).run(None, feeds(p))[0]
    ref = group_quant_matmul(p.A, p.B, p.scales, p.zero_points, K, N, bits, group_size)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert rel_error(y, ref) <= TOLERANCE[np.dtype(dtype)]


@pytest.mark.parametrize("bits", [3, 4])
def test_long_reduction_and_many_rows(cpu_library, bits):
    # LLaMA-like K: accumulation error must stay inside the fp32 bound; N not a multiple of the row block.
    p = random_problem(np.random.default_rng(bits), (3,), K=4096, N=203, bits=bits, group_size=128)
    y = session(gqmm_model(p), cpu_library, threads=2).run(None, feeds(p))[0]
    assert rel_error(y, group_quant_matmul(p.A, p.B, p.scales, p.zero_points, 4096, 203, bits, 128)) <= 1e-5


def test_weights_fed_at_run_time(cpu_library):
    p = random_problem(np.random.default_rng(11), (4,), K=77, N=13, bits=3, group_size=16)
    y = session(gqmm_model(p, weights_as_inputs=True), cpu_library).run(None, feeds(p, True))[0]
    assert rel_error(y, group_quant_matmul(p.A, p.B, p.scales, p.zero_points, 77, 13, 3, 16)) <= 1e-5


def test_thread_count_does_not_change_the_result(cpu_library):
    p = random_problem(np.random.default_rng(12), (5,), K=300, N=101, bits=4, group_size=32)
    one = session(gqmm_model(p), cpu_library, threads=1).run(None, feeds(p))[0]
    two = session(gqmm_model(p), cpu_library, threads=2).run(None, feeds(p))[0]
    np.testing.assert_array_equal(one, two)


def test_padded_codes_are_ignored(cpu_library):
    p = random_problem(np.random.default_rng(13), (2,), K=40, N=3, bits=4, group_size=32)
    base = session(gqmm_model(p), cpu_library).run(None, feeds(p))[0]
    p.B[:, -1, 4:] = 0xFF  # codes 40..63 of the row: past K
    again = session(gqmm_model(p), cpu_library).run(None, feeds(p))[0]
    np.testing.assert_array_equal(base, again)


@pytest.mark.parametrize("K, group_size", [(256, 32), (200, 64)])
def test_same_as_matmulnbits_at_four_bits(cpu_library, K, group_size):
    """The 4-bit layout is com.microsoft.MatMulNBits's: ORT's own kernel on the same bytes agrees."""
    N = 24
    p = random_problem(np.random.default_rng(K), (3,), K=K, N=N, bits=4, group_size=group_size)
    n_groups = p.B.shape[1]
    zp = p.zero_points
    if n_groups % 2:
        zp = np.concatenate([zp, np.zeros((N, 1), np.uint8)], axis=1)
    packed_zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zero_points"], ["Y"], domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=group_size, accuracy_level=0)
    graph = helper.make_graph(
        [node], "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [3, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, N])],
        initializer=[numpy_helper.from_array(p.B, "B"), numpy_helper.from_array(p.scales.reshape(-1), "scales"),
                     numpy_helper.from_array(packed_zp, "zero_points")])
    nbits = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    theirs = session(nbits, cpu_library).run(None, {"A": p.A})[0]
    ours = session(gqmm_model(p), cpu_library).run(None, feeds(p))[0]
    assert rel_error(ours, theirs.astype(np.float64)) <= 1e-5


def test_runtime_make_session_registers_the_library(tmp_path, monkeypatch, cpu_library):
    import onnx

    from edgeq.runtime.session import make_session

    p = random_problem(np.random.default_rng(14), (2,), K=64, N=5, bits=2, group_size=64)
    path = tmp_path / "gqmm.onnx"
    onnx.save(gqmm_model(p), path)
    y = make_session(path, "cpu").run(None, feeds(p))[0]
    assert rel_error(y, group_quant_matmul(p.A, p.B, p.scales, p.zero_points, 64, 5, 2, 64)) <= 1e-5

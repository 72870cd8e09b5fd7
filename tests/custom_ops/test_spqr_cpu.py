"""edgeq::SpQRMatMul and edgeq::SpQRDequantize on ORT's CPU execution provider against the float64 reference."""

import numpy as np
import onnx
import pytest

from edgeq.custom_ops.reference import spqr_dequantize, spqr_matmul

from .conftest import TOLERANCE, rel_error, session
from .spqr_problems import feeds, random_problem, spqr_model

LEADS = [(1,), (2,), (3,), (4,), (2, 5), (7,), (1, 1), (2, 3, 2), (17,), (65,)]  # M <= 4 decode in registers


def random_cases(count: int, seed: int):
    """Every bits/group pair, stat widths 2-4, stat groups 1..32, odd N, K off the group grid, outlier densities
    0-5% (every third row empty, one row half outliers), duplicate columns in some, 1-3 leading dims."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        bits = (2, 3, 4, 8)[i % 4]
        group_size = (16, 32, 64, 128)[(i // 4) % 4]
        stat_bits = (2, 3, 4)[i % 3]
        stat_group_size = (1, 16, 5, 32, 3)[(i // 2) % 5]
        density = (0.0, 0.005, 0.01, 0.03, 0.05)[(i // 3) % 5]
        lead = LEADS[int(rng.integers(len(LEADS)))]
        K = int(rng.integers(1, 600))
        if i % 5 == 0:
            K = group_size * int(rng.integers(1, 5))  # on the grid too
        N = int(rng.integers(1, 70)) | 1
        duplicates = i % 7 == 3
        cases.append(pytest.param(i, lead, K, N, bits, group_size, stat_bits, stat_group_size, density, duplicates,
                                  id=f"{i}-M{'x'.join(map(str, lead))}-K{K}-N{N}-b{bits}-g{group_size}-sb{stat_bits}"
                                     f"-sg{stat_group_size}-d{density}{'-dup' if duplicates else ''}"))
    return cases


CASES = random_cases(56, seed=2025)


def problem(seed, lead, K, N, bits, group_size, stat_bits, stat_group_size, density, duplicates, dtype=np.float32):
    return random_problem(np.random.default_rng(seed), lead, K, N, bits, group_size, stat_bits, stat_group_size,
                          density, dtype, duplicates)


def matmul(p, library, threads=2, **kw):
    return session(spqr_model(p, **kw), library, threads=threads).run(None, feeds(p, **kw))[0]


@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, stat_bits, stat_group_size, density, duplicates", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_matmul_matches_reference(cpu_library, dtype, seed, lead, K, N, bits, group_size, stat_bits, stat_group_size,
                                  density, duplicates):
    p = problem(seed, lead, K, N, bits, group_size, stat_bits, stat_group_size, density, duplicates, dtype)
    y = matmul(p, cpu_library)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert rel_error(y, spqr_matmul(p.A, *p.weights, **p.attrs)) <= TOLERANCE[np.dtype(dtype)]


@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, stat_bits, stat_group_size, density, duplicates",
                         CASES[::4])
def test_dequantize_matches_reference(cpu_library, seed, lead, K, N, bits, group_size, stat_bits, stat_group_size,
                                      density, duplicates):
    p = problem(seed, lead, K, N, bits, group_size, stat_bits, stat_group_size, density, duplicates)
    W_T = session(spqr_model(p, dequantize=True), cpu_library, threads=2).run(None, {})[0]
    assert W_T.dtype == np.float32 and W_T.shape == (K, N)
    assert rel_error(W_T, spqr_dequantize(*p.weights, **p.attrs)) <= 1e-6


@pytest.mark.parametrize("stat_bits", [1, 5, 7, 8])
def test_other_stat_widths(cpu_library, stat_bits):
    p = random_problem(np.random.default_rng(stat_bits), (3,), 300, 21, 3, 16, stat_bits, 4, 0.02)
    assert rel_error(matmul(p, cpu_library), spqr_matmul(p.A, *p.weights, **p.attrs)) <= 1e-5


@pytest.mark.parametrize("lead", [(1,), (3,), (9,)], ids=["M1", "M3", "M9"])
def test_long_reduction_and_many_rows(cpu_library, lead):
    # LLaMA-like K at SpQR's defaults: accumulation stays inside the fp32 bound; N off the task grid.
    p = random_problem(np.random.default_rng(len(lead)), lead, 4096, 203, 3, 16, 3, 16, 0.01)
    assert rel_error(matmul(p, cpu_library), spqr_matmul(p.A, *p.weights, **p.attrs)) <= 1e-5


def test_thread_count_does_not_change_the_result(cpu_library):
    for lead in ((2,), (6,)):
        p = random_problem(np.random.default_rng(12), lead, 300, 101, 4, 32, 3, 16, 0.03)
        np.testing.assert_array_equal(matmul(p, cpu_library, threads=1), matmul(p, cpu_library, threads=2))


def test_padding_bits_are_ignored(cpu_library):
    # K=40 in groups of 32: codes 40..63 are padding; 2 groups of 3-bit stat codes leave 2 bits of one byte.
    p = random_problem(np.random.default_rng(13), (2,), 40, 35, 4, 32, 3, 16, 0.05)
    base = [matmul(p, cpu_library), session(spqr_model(p, dequantize=True), cpu_library).run(None, {})[0]]
    p.codes[:, -1, 4:] = 0xFF
    p.scale_codes[:, -1] |= 0xC0
    p.zero_codes[:, -1] |= 0xC0
    again = [matmul(p, cpu_library), session(spqr_model(p, dequantize=True), cpu_library).run(None, {})[0]]
    for a, b in zip(base, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lead", [(2,), (5,)], ids=["registers", "decoded"])
def test_weights_fed_at_run_time_change_between_runs(cpu_library, lead):
    """Nothing about one call's weights survives into the next (the CPU kernels keep per-thread scratch)."""
    first = random_problem(np.random.default_rng(21), lead, 77, 33, 3, 16, 3, 16, 0.05)
    second = random_problem(np.random.default_rng(22), lead, 77, 33, 3, 16, 3, 16, 0.01)
    sess = session(spqr_model(first, weights_as_inputs=True), cpu_library, threads=2)
    for p in (first, second, first):
        y = sess.run(None, feeds(p, weights_as_inputs=True))[0]
        assert rel_error(y, spqr_matmul(p.A, *p.weights, **p.attrs)) <= 1e-5


def test_no_outliers_at_all(cpu_library):
    p = random_problem(np.random.default_rng(23), (3,), 128, 16, 2, 64, 3, 16, 0.0)
    assert p.values.size == 0
    assert rel_error(matmul(p, cpu_library), spqr_matmul(p.A, *p.weights, **p.attrs)) <= 1e-5


def test_runtime_make_session_registers_the_library(tmp_path, cpu_library):
    from edgeq.runtime.session import make_session

    p = random_problem(np.random.default_rng(14), (2,), 64, 5, 2, 64, 3, 16, 0.05)
    path = tmp_path / "spqr.onnx"
    onnx.save(spqr_model(p), path)
    y = make_session(path, "cpu").run(None, feeds(p))[0]
    assert rel_error(y, spqr_matmul(p.A, *p.weights, **p.attrs)) <= 1e-5

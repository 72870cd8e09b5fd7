"""edgeq::SpQRMatMul and SpQRDequantize on ORT's CUDA execution provider (run on the GPU machine:
custom_ops/device/check_spqr.sh). Every kernel against the float64 reference on random problems."""

import numpy as np
import pytest

from edgeq.custom_ops.reference import spqr_dequantize, spqr_matmul

from .conftest import (CUDA, TOLERANCE, check_cuda_graph_replay, cuda_available, providers_that_ran, rel_error,
                       session)
from .spqr_problems import feeds, random_problem, spqr_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu with CUDA")]

DENSITIES = (0.0, 0.005, 0.01, 0.05)
STAT_GROUPS = (16, 1, 32, 5, 16, 48)  # β2: the decode kernel takes multiples of 16 (a 16-row tile shares them)


def cases(kernel: str, count: int, seed: int):
    """Random SpQR problems in the kernel's domain: every (bits, group_size) pair, stat widths 1..8, outlier
    densities 0-5% (with empty rows and one row half full of outliers, see random_outliers), duplicates now and
    then, odd N, and for the non-decode kernels K off the group grid and M up to ~300."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        bits = (2, 3, 4, 8)[i % 4]
        group_size = (16, 32, 64, 128)[(i // 4) % 4]
        if kernel == "decode":  # its domain: M <= 8, K on the 128-code grid
            lead = [(1,), (3,), (2, 4), (8,), (1, 1), (5,)][int(rng.integers(6))]
            K = 128 * int(rng.integers(1, 40))
        elif kernel == "gemm":
            lead = [(9,), (2, 33), (67,), (130,), (300,)][int(rng.integers(5))]
            K = int(rng.integers(1, 700))
        else:
            lead = [(1,), (5,), (9,), (2, 33), (67,), (3, 1), (1, 1)][int(rng.integers(7))]
            K = int(rng.integers(1, 700)) if i % 2 else 128 * int(rng.integers(1, 12))
        N = int(rng.integers(1, 300)) | 1
        stat_bits = 1 + i % 8
        stat_group = STAT_GROUPS[i % len(STAT_GROUPS)]
        if kernel == "decode":
            stat_group = (16, 32, 48)[i % 3]
        density = DENSITIES[i % len(DENSITIES)]
        duplicates = i % 5 == 2
        out.append(pytest.param((i, lead, K, N, bits, group_size, stat_bits, stat_group, density, duplicates),
                                id=f"{kernel}-{i}-M{'x'.join(map(str, lead))}-K{K}-N{N}-b{bits}-g{group_size}"
                                   f"-s{stat_bits}x{stat_group}-d{density}{'-dup' if duplicates else ''}"))
    return out


def problem(seed, lead, K, N, bits, group_size, stat_bits, stat_group, density, duplicates, dtype):
    return random_problem(np.random.default_rng(seed), lead, K, N, bits, group_size, stat_bits, stat_group, density,
                          dtype, duplicates)


def check(library, monkeypatch, kernel, p):
    monkeypatch.setenv("EDGEQ_SPQR_KERNEL", kernel)
    y = session(spqr_model(p), library, CUDA).run(None, feeds(p))[0]
    ref = spqr_matmul(p.A, *p.weights, **p.attrs)
    assert y.dtype == p.A.dtype and y.shape == (*p.A.shape[:-1], p.N)
    assert rel_error(y, ref) <= TOLERANCE[p.A.dtype]


@pytest.mark.parametrize("args", cases("decode", 48, 1))
def test_decode_kernel(cuda_library, monkeypatch, args):
    check(cuda_library, monkeypatch, "decode", problem(*args, np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("args", cases("gemm", 16, 2))
def test_dequantize_gemm_kernel(cuda_library, monkeypatch, dtype, args):
    check(cuda_library, monkeypatch, "gemm", problem(*args, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("args", cases("generic", 16, 3))
def test_generic_kernel(cuda_library, monkeypatch, dtype, args):
    check(cuda_library, monkeypatch, "generic", problem(*args, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("args", cases("auto", 16, 4))
def test_automatic_choice(cuda_library, monkeypatch, dtype, args):
    check(cuda_library, monkeypatch, "auto", problem(*args, dtype))


@pytest.mark.parametrize("M", [1, 8, 300])
@pytest.mark.parametrize("K, N", [(4096, 11008), (11008, 4096)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_llama_shape(cuda_library, monkeypatch, M, K, N, dtype):
    """SpQR's configuration (3 bits, β1 = β2 = 16, 3-bit statistics, 1% outliers) at LLaMA-7B shapes."""
    check(cuda_library, monkeypatch, "auto", problem(M, (M,), K, N, 3, 16, 3, 16, 0.01, False, dtype))


def test_the_node_runs_on_the_cuda_provider(cuda_library, tmp_path):
    """The CPU kernel is registered too; make sure the CUDA one is what ran (else these tests prove nothing)."""
    p = problem(5, (1,), 256, 64, 3, 16, 3, 16, 0.01, False, np.float16)
    assert providers_that_ran(spqr_model(p), cuda_library, feeds(p), "spqr0", tmp_path) == {"CUDAExecutionProvider"}


@pytest.mark.parametrize("args", cases("auto", 6, 6))
def test_dequantize_op(cuda_library, args):
    p = problem(*args, np.float32)
    w_t = session(spqr_model(p, dequantize=True), cuda_library, CUDA).run(None, feeds(p, dequantize=True))[0]
    ref = spqr_dequantize(*p.weights, **p.attrs)
    assert w_t.dtype == np.float32 and w_t.shape == (p.K, p.N)
    assert rel_error(w_t, ref) <= 1e-6


def test_forced_decode_outside_its_domain_is_an_error(cuda_library, monkeypatch):
    monkeypatch.setenv("EDGEQ_SPQR_KERNEL", "decode")
    p = problem(7, (9,), 256, 16, 3, 16, 3, 16, 0.01, False, np.float16)
    with pytest.raises(Exception, match=r"edgeq::SpQRMatMul node 'spqr0': EDGEQ_SPQR_KERNEL=decode needs float16, "
                                        r"M <= 8"):
        session(spqr_model(p), cuda_library, CUDA).run(None, feeds(p))
    p = problem(7, (1,), 256, 16, 3, 16, 3, 16, 0.01, False, np.float32)
    with pytest.raises(Exception, match=r"EDGEQ_SPQR_KERNEL=decode needs float16"):
        session(spqr_model(p), cuda_library, CUDA).run(None, feeds(p))
    p = problem(7, (1,), 256, 16, 3, 16, 3, 8, 0.01, False, np.float16)
    with pytest.raises(Exception, match=r"EDGEQ_SPQR_KERNEL=decode needs .*stat_group_size % 16 == 0"):
        session(spqr_model(p), cuda_library, CUDA).run(None, feeds(p))


def test_bad_shape_on_gpu_is_an_error(cuda_library):
    p = problem(8, (2,), 100, 7, 3, 16, 3, 16, 0.05, False, np.float16)
    s = session(spqr_model(p, a_shape=[None, None], weights_as_inputs=True), cuda_library, CUDA)
    bad = feeds(p, weights_as_inputs=True)
    bad["stats"] = bad["stats"][:, :3].copy()
    with pytest.raises(Exception, match=r"edgeq::SpQRMatMul node 'spqr0'.*stats has shape \[1, 3, 4\]"):
        s.run(None, bad)
    assert s.run(None, feeds(p, weights_as_inputs=True))[0].shape == (2, 7)


@pytest.mark.parametrize("kernel", ["decode", "gemm", "generic"])
def test_malformed_sparse_indices_stay_inside_the_inputs(cuda_library, monkeypatch, kernel):
    """On the GPU the indices are not checked (they stay on the device): out-of-range columns are skipped and row
    ranges clamped to [0, nnz], so the call still returns, with every other outlier applied, and the next one is
    fine."""
    monkeypatch.setenv("EDGEQ_SPQR_KERNEL", kernel)
    M = 12 if kernel == "gemm" else 2
    p = problem(9, (M,), 256, 33, 3, 16, 3, 16, 0.05, False, np.float16)
    s = session(spqr_model(p, weights_as_inputs=True), cuda_library, CUDA)
    bad = feeds(p, weights_as_inputs=True)
    cols = bad["cols"].view(np.uint16).copy()
    cols[::7] = 60000  # >= K
    bad["cols"] = cols.view(np.int16)
    row_ptr = bad["row_ptr"].copy()
    row_ptr[-1] = len(cols) + 1000  # past nnz
    bad["row_ptr"] = row_ptr
    y = s.run(None, bad)[0]
    assert np.isfinite(y.astype(np.float32)).all()
    dropped = p.values.copy()
    dropped[::7] = 0  # what the kernels make of the skipped columns
    cols_ok = cols.copy()
    cols_ok[::7] = 0
    ref = spqr_matmul(p.A, *p.weights[:5], cols_ok.view(np.int16), dropped, **p.attrs)
    assert rel_error(y, ref) <= TOLERANCE[np.dtype(np.float16)]
    good = s.run(None, feeds(p, weights_as_inputs=True))[0]
    assert rel_error(good, spqr_matmul(p.A, *p.weights, **p.attrs)) <= TOLERANCE[np.dtype(np.float16)]


def test_cuda_graph_capture_and_device_io(cuda_library):
    p = problem(10, (1,), 4096, 512, 3, 16, 3, 16, 0.01, False, np.float16)
    check_cuda_graph_replay(spqr_model(p), cuda_library, p.A, spqr_matmul(p.A, *p.weights, **p.attrs),
                            TOLERANCE[np.dtype(np.float16)])

"""edgeq::GroupQuantMatMul on ORT's CUDA execution provider (run on the GPU machine: custom_ops/device/check.sh)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops.reference import group_quant_matmul

from .conftest import (CUDA, TOLERANCE, check_cuda_graph_replay, cuda_available, feeds, gqmm_model,
                       providers_that_ran, random_problem, rel_error, session)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu with CUDA")]


def cases(kernel: str, count: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        bits = (2, 3, 4, 8)[i % 4]
        group_size = (16, 32, 64, 128)[(i // 4) % 4]
        if kernel in ("decode", "decode-mma", "decode-h2"):  # their domain: M <= 8, K on the 128-code grid
            lead = [(1,), (3,), (2, 4), (8,), (1, 1)][int(rng.integers(5))]
            K = 128 * int(rng.integers(1, 40))
        else:
            lead = [(1,), (5,), (9,), (2, 33), (67,), (130,), (3, 1)][int(rng.integers(7))]
            K = int(rng.integers(1, 700))
        N = int(rng.integers(1, 300)) | 1
        out.append(pytest.param(i, lead, K, N, bits, group_size, i % 3 != 0,
                                id=f"{kernel}-{i}-M{'x'.join(map(str, lead))}-K{K}-N{N}-b{bits}-g{group_size}"))
    return out


def check(library, monkeypatch, kernel, seed, lead, K, N, bits, group_size, with_zp, dtype):
    monkeypatch.setenv("EDGEQ_GQMM_KERNEL", kernel)
    p = random_problem(np.random.default_rng(seed), lead, K, N, bits, group_size, dtype, with_zp)
    y = session(gqmm_model(p), library, CUDA).run(None, feeds(p))[0]
    ref = group_quant_matmul(p.A, p.B, p.scales, p.zero_points, K, N, bits, group_size)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert rel_error(y, ref) <= TOLERANCE[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("decode", 32, 1))
def test_decode_kernel(cuda_library, monkeypatch, dtype, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "decode", seed, lead, K, N, bits, group_size, with_zp, dtype)


@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("decode-mma", 48, 11))
def test_tensor_core_decode_kernel(cuda_library, monkeypatch, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "decode-mma", seed, lead, K, N, bits, group_size, with_zp, np.float16)


@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("decode-h2", 48, 13))
def test_half2_decode_kernel(cuda_library, monkeypatch, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "decode-h2", seed, lead, K, N, bits, group_size, with_zp, np.float16)


def test_half2_decode_holds_large_activations(cuda_library, monkeypatch):
    """Activations of a few hundred (LLM outlier channels) times 8-bit codes must not overflow the fp16 sums."""
    monkeypatch.setenv("EDGEQ_GQMM_KERNEL", "decode-h2")
    rng = np.random.default_rng(14)
    p = random_problem(rng, (1,), 1024, 64, 8, 128, np.float16)
    p.A[..., ::7] *= 400  # |x| up to ~1600: (c - z) x alone would overflow fp16 (255 x 1600)
    p.scales[...] *= 0.01  # weights of LLM size (|w| < 0.3), so Y itself fits in fp16
    y = session(gqmm_model(p), cuda_library, CUDA).run(None, feeds(p))[0]
    ref = group_quant_matmul(p.A, p.B, p.scales, p.zero_points, p.K, p.N, 8, 128)
    assert rel_error(y, ref) <= TOLERANCE[np.dtype(np.float16)]


def test_tensor_core_decode_refuses_float32(cuda_library, monkeypatch):
    monkeypatch.setenv("EDGEQ_GQMM_KERNEL", "decode-mma")
    p = random_problem(np.random.default_rng(12), (1,), 256, 16, 4, 128, np.float32)
    with pytest.raises(Exception, match=r"EDGEQ_GQMM_KERNEL=decode-mma needs float16"):
        session(gqmm_model(p), cuda_library, CUDA).run(None, feeds(p))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("decode", 8, 9))
def test_decode_rows_kernel_at_batch_one(cuda_library, monkeypatch, dtype, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "decode-rows", seed, (1,), K, N, bits, group_size, with_zp, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("tiled", 32, 2))
def test_tiled_kernel(cuda_library, monkeypatch, dtype, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "tiled", seed, lead, K, N, bits, group_size, with_zp, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("gemm", 24, 5))
def test_dequantize_gemm_kernel(cuda_library, monkeypatch, dtype, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "gemm", seed, lead, K, N, bits, group_size, with_zp, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("generic", 16, 3))
def test_generic_kernel(cuda_library, monkeypatch, dtype, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "generic", seed, lead, K, N, bits, group_size, with_zp, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seed, lead, K, N, bits, group_size, with_zp", cases("auto", 16, 4))
def test_automatic_choice(cuda_library, monkeypatch, dtype, seed, lead, K, N, bits, group_size, with_zp):
    check(cuda_library, monkeypatch, "auto", seed, lead, K, N, bits, group_size, with_zp, dtype)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("M", [1, 2, 64])
@pytest.mark.parametrize("K, N", [(4096, 11008), (11008, 4096)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_llama_shape(cuda_library, monkeypatch, bits, M, K, N, dtype):
    check(cuda_library, monkeypatch, "auto", bits * 10 + M, (M,), K, N, bits, 128, True, dtype)


@pytest.mark.parametrize("kernel", ["decode-h2", "decode-mma"])
def test_decode_after_the_kernel_that_writes_its_weights(cuda_library, monkeypatch, kernel):
    """The decode kernels prefetch their weights into L2 before waiting for the previous kernel (pdl.cuh): with
    the scales computed by that kernel (a Mul on the GPU, fed fresh values at every run), the result must use the
    new values, never stale ones."""
    monkeypatch.setenv("EDGEQ_GQMM_KERNEL", kernel)
    rng = np.random.default_rng(15)
    p = random_problem(rng, (1,), 4096, 1024, 4, 128, np.float16)
    model = gqmm_model(p)
    graph = model.graph
    scales = next(t for t in graph.initializer if t.name == "scales")
    graph.initializer.remove(scales)
    graph.input.append(helper.make_tensor_value_info("raw_scales", TensorProto.FLOAT16, list(p.scales.shape)))
    graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float16), "two"))
    graph.node.insert(0, helper.make_node("Mul", ["raw_scales", "two"], ["scales"]))
    s = session(model, cuda_library, CUDA)
    for _ in range(3):
        raw = (p.scales * rng.uniform(0.5, 1.5, p.scales.shape)).astype(np.float16)
        y = s.run(None, {"A": p.A, "raw_scales": raw})[0]
        ref = group_quant_matmul(p.A, p.B, (raw * 2).astype(np.float16), p.zero_points, 4096, 1024, 4, 128)
        assert rel_error(y, ref) <= TOLERANCE[np.dtype(np.float16)]


def test_the_node_runs_on_the_cuda_provider(cuda_library, tmp_path):
    """The CPU kernel is registered too; make sure the CUDA one is what ran (else these tests prove nothing)."""
    p = random_problem(np.random.default_rng(5), (1,), 256, 64, 4, 128, np.float16)
    assert providers_that_ran(gqmm_model(p), cuda_library, feeds(p), "gqmm0", tmp_path) == {"CUDAExecutionProvider"}


def test_forced_decode_outside_its_domain_is_an_error(cuda_library, monkeypatch):
    monkeypatch.setenv("EDGEQ_GQMM_KERNEL", "decode")
    p = random_problem(np.random.default_rng(6), (9,), 256, 16, 4, 128)
    with pytest.raises(Exception, match=r"edgeq::GroupQuantMatMul node 'gqmm0': EDGEQ_GQMM_KERNEL=decode needs M <= 8"):
        session(gqmm_model(p), cuda_library, CUDA).run(None, feeds(p))


def test_bad_input_on_gpu_is_an_error(cuda_library):
    p = random_problem(np.random.default_rng(7), (2,), 100, 7, 3, 32)
    model = gqmm_model(p, a_shape=[None, None], weights_as_inputs=True)
    bad = feeds(p, True)
    bad["scales"] = bad["scales"][:, :3].copy()
    s = session(model, cuda_library, CUDA)
    with pytest.raises(Exception, match=r"edgeq::GroupQuantMatMul node 'gqmm0'.*scales has shape \[7, 3\]"):
        s.run(None, bad)
    assert s.run(None, feeds(p, True))[0].shape == (2, 7)


def test_cuda_graph_capture_and_device_io(cuda_library):
    p = random_problem(np.random.default_rng(8), (1,), 4096, 512, 4, 128, np.float16)
    ref = group_quant_matmul(p.A, p.B, p.scales, p.zero_points, 4096, 512, 4, 128)
    check_cuda_graph_replay(gqmm_model(p), cuda_library, p.A, ref, 2e-3)

"""edgeq::QuantLinear on ORT's CUDA execution provider (run on the GPU machine: custom_ops/device/check.sh).

Every kernel must reproduce the reference's bits (see test_quant_linear_cpu.py): the quantization rounds each
step as the op's contract says, the int32 sums are exact, and the epilogue is the same two float32 products.
"""

import numpy as np
import pytest

from edgeq.custom_ops.quant_linear_packing import pack_weights
from edgeq.custom_ops.reference import quant_linear_accumulator

from .conftest import cuda_available, session
from .quant_linear_problems import WIDTHS, QlProblem, feeds, ql_model, random_problem, rounded_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu with CUDA")]

CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.fixture(scope="module")
def cuda_library():
    from edgeq.custom_ops.library import get_library

    return get_library("cuda")


@pytest.fixture(scope="module")
def wgmma(cuda_library):
    """The Hopper kernel exists only in sm_90a builds (EDGEQ_CUDA_ARCHS=90a); elsewhere forcing it must say so."""
    import os

    p = random_problem(np.random.default_rng(0), (65,), 64, 16, 8, 8)
    os.environ["EDGEQ_QL_KERNEL"] = "wgmma"
    try:
        session(ql_model(p), cuda_library, CUDA).run(None, feeds(p))
    except Exception as e:
        assert "the wgmma kernel needs a build for sm_90a" in str(e), str(e)
        pytest.skip("library built without sm_90a: no wgmma kernel")
    finally:
        del os.environ["EDGEQ_QL_KERNEL"]


def run_cuda(library, p: QlProblem, monkeypatch, kernel: str):
    monkeypatch.setenv("EDGEQ_QL_KERNEL", kernel)  # read when the session is created
    return session(ql_model(p), library, CUDA).run(None, feeds(p))[0]


def check(library, monkeypatch, kernel, p: QlProblem):
    y = run_cuda(library, p, monkeypatch, kernel)
    assert y.dtype == p.A.dtype and y.shape == (*p.A.shape[:-1], p.N)
    np.testing.assert_array_equal(y, rounded_reference(p))


def cases(kernel: str, count: int, seed: int):
    """Shapes inside each kernel's domain: decode M <= 8; the vector kernels need rows of whole 16-byte
    vectors (K % 16 == 0 at 8 bits, K % 32 in {0, 31} packed); generic takes anything."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        wbits, abits = WIDTHS[i % 4]
        packed = wbits <= 4
        if kernel == "decode":
            lead = [(1,), (3,), (2, 4), (8,), (1, 1)][int(rng.integers(5))]
        else:
            lead = [(9,), (33,), (2, 33), (67,), (130,), (257,), (3, 100)][int(rng.integers(7))]
        if kernel == "generic":
            K = int(rng.integers(1, 700))
        else:
            K = (32 if packed else 16) * int(rng.integers(1, 40)) - (1 if packed and i % 3 == 0 else 0)
        N = int(rng.integers(1, 300)) | (i % 2)
        out.append(pytest.param(i, lead, K, N, wbits, abits,
                                id=f"{kernel}-{i}-M{'x'.join(map(str, lead))}-K{K}-N{N}-W{wbits}A{abits}"))
    return out


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])


@DTYPES
@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", cases("decode", 16, 1))
def test_decode_kernel(cuda_library, monkeypatch, dtype, seed, lead, K, N, wbits, abits):
    p = random_problem(np.random.default_rng(seed), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0)
    check(cuda_library, monkeypatch, "decode", p)


@DTYPES
@pytest.mark.parametrize("kernel", ["mma256", "mma128", "mma128x64", "mma64"])
@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", cases("mma", 12, 2))
def test_tensor_core_kernels(cuda_library, monkeypatch, dtype, kernel, seed, lead, K, N, wbits, abits):
    p = random_problem(np.random.default_rng(seed), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0)
    check(cuda_library, monkeypatch, kernel, p)


@DTYPES
@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", cases("mma", 16, 4))
def test_wgmma_kernel(cuda_library, wgmma, monkeypatch, dtype, seed, lead, K, N, wbits, abits):
    p = random_problem(np.random.default_rng(seed), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0)
    check(cuda_library, monkeypatch, "wgmma", p)


@DTYPES
@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", cases("generic", 8, 3))
def test_generic_kernel(cuda_library, monkeypatch, dtype, seed, lead, K, N, wbits, abits):
    check(cuda_library, monkeypatch, "generic", random_problem(np.random.default_rng(seed), lead, K, N, wbits, abits, dtype))


@DTYPES
@pytest.mark.parametrize("kernel, seed, lead, K, N, wbits, abits",
                         [pytest.param(k, *c.values, id=c.id) for k in ("decode", "mma128", "mma64", "generic")
                          for c in cases("decode" if k == "decode" else "generic" if k == "generic" else "mma", 8, 7)])
@pytest.mark.parametrize("side", ["weights", "activations", "both"])
def test_asymmetric(cuda_library, monkeypatch, dtype, side, kernel, seed, lead, K, N, wbits, abits):
    """w_zero and act_sym=0 through every GEMM's epilogue: code sums and zero points from the quantize kernel,
    the int64 correction."""
    p = random_problem(np.random.default_rng(seed + 500), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0,
                       asymmetric=side != "activations", act_sym=side == "weights")
    check(cuda_library, monkeypatch, kernel, p)


@pytest.mark.parametrize("kernel", ["decode", "mma128", "generic"])
def test_asymmetric_sum_beyond_int32(cuda_library, monkeypatch, kernel):
    K, N = 70016, 3
    M = 2 if kernel == "decode" else 130
    p = QlProblem(np.full((M, K), -2.0, np.float32), pack_weights(np.full((N, K), -128), 8), np.ones(N, np.float32),
                  K, N, 8, 8, np.array([127, 0, -128], np.int8))
    assert quant_linear_accumulator(p.A, p.B, K, N, 8, 8, p.w_zero)[0].max() > 2**31
    check(cuda_library, monkeypatch, kernel, p)
    p.act_sym = False
    p.A = np.full((M, K), 2.0, np.float32)  # u = 255, zero point 0: q - z = 255 against W - w_zero = -255
    assert np.abs(quant_linear_accumulator(p.A, p.B, K, N, 8, 8, p.w_zero, act_sym=False)[0]).max() == K * 255 * 255
    check(cuda_library, monkeypatch, kernel, p)


@pytest.mark.parametrize("M", [1, 2, 3, 8, 64, 512])
@pytest.mark.parametrize("wbits, abits", [(8, 8), (4, 4)])
def test_automatic_choice_on_llama_shapes(cuda_library, monkeypatch, M, wbits, abits):
    """The benchmark's shapes through whatever kernel auto picks (K = 4096 and 11008), fp16 as deployed."""
    for K, N in ((4096, 384), (11008, 256)):
        p = random_problem(np.random.default_rng(M + K), (M,), K, N, wbits, abits, np.float16)
        check(cuda_library, monkeypatch, "auto", p)


@pytest.mark.parametrize("kernel", ["decode", "mma128", "generic", "wgmma"])
@pytest.mark.parametrize("wbits", [8, 4])
def test_largest_accumulator(cuda_library, request, monkeypatch, kernel, wbits):
    if kernel == "wgmma":
        request.getfixturevalue("wgmma")
    K, lo = 1024, -(1 << (wbits - 1))
    M = 4 if kernel == "decode" else 130
    p = QlProblem(np.full((M, K), -2.0, np.float32), pack_weights(np.full((24, K), lo), wbits),
                  np.ones(24, np.float32), K, 24, wbits, 8)
    check(cuda_library, monkeypatch, kernel, p)


def test_forced_kernel_outside_its_domain_names_the_problem(cuda_library, monkeypatch):
    p = random_problem(np.random.default_rng(9), (3,), 100, 8, 8, 8)
    with pytest.raises(Exception, match=r"edgeq::QuantLinear node 'ql0': EDGEQ_QL_KERNEL=mma128: needs rows of B"):
        run_cuda(cuda_library, p, monkeypatch, "mma128")
    p = random_problem(np.random.default_rng(9), (9,), 128, 8, 8, 8)
    with pytest.raises(Exception, match=r"EDGEQ_QL_KERNEL=decode: the decode kernel takes M <= 8"):
        run_cuda(cuda_library, p, monkeypatch, "decode")


@DTYPES
@pytest.mark.parametrize("side", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("lead, K, N, wbits", [((9,), 64, 4, 8), ((130,), 576, 1536, 8), ((2, 257), 1536, 576, 6),
                                               ((512,), 4096, 128, 8), ((7,), 64, 4, 4), ((130,), 576, 1536, 4),
                                               ((2, 257), 1536, 580, 3), ((512,), 4096, 128, 4)])
def test_cublas_kernel(cuda_library, monkeypatch, dtype, side, lead, K, N, wbits):
    """cuBLAS's int8 sums through the separate epilogue kernel (packed weights widened first): the same bits as
    every other kernel."""
    p = random_problem(np.random.default_rng(K + N), lead, K, N, wbits, wbits, dtype, saturate=True,
                       asymmetric=side == "asymmetric", act_sym=side == "symmetric")
    check(cuda_library, monkeypatch, "cublas", p)


def test_cublas_kernel_refuses_what_it_cannot_take(cuda_library, monkeypatch):
    for K, N in ((96, 8), (128, 6)):
        p = random_problem(np.random.default_rng(10), (64,), K, N, 4, 4)
        with pytest.raises(Exception, match=r"EDGEQ_QL_KERNEL=cublas: the cublas kernel needs K % 64 == 0, N % 4 == 0"):
            run_cuda(cuda_library, p, monkeypatch, "cublas")


SIDES = {"symmetric": (False, True), "weight zero": (True, True), "activation zero": (False, False),
         "both zero": (True, False)}


@DTYPES
@pytest.mark.parametrize("side", list(SIDES))
@pytest.mark.parametrize("lead, K, N, wbits", [((9,), 128, 16, 8), ((130,), 1536, 576, 8), ((2, 257), 1536, 1040, 6),
                                               ((1100,), 512, 272, 8), ((7,), 128, 16, 4), ((130,), 1536, 576, 4),
                                               ((2, 257), 1024, 1040, 3), ((1030,), 256, 48, 4)])
def test_triton_kernel(cuda_library, monkeypatch, dtype, side, lead, K, N, wbits):
    """The Triton-compiled wgmma GEMM with its fused epilogue, every tile (8-bit: 64 tokens up to M = 1024, 128
    above; packed weights unpacked in the kernel, codes in K_ORDER, 64 weight rows up to M = 512 and 128 above) and
    every zero-point variant: the same bits as every other kernel."""
    asymmetric, act_sym = SIDES[side]
    p = random_problem(np.random.default_rng(K + N + len(side)), lead, K, N, wbits, wbits, dtype, saturate=True,
                       asymmetric=asymmetric, act_sym=act_sym)
    check(cuda_library, monkeypatch, "triton", p)


@pytest.mark.parametrize("wbits", [8, 4])
def test_triton_kernel_largest_k(cuda_library, monkeypatch, wbits):
    """K = 32640, the largest the kernel takes: full-scale codes against full-scale weights with zero points on
    both sides, every correction term near its int32 bound."""
    p = random_problem(np.random.default_rng(wbits), (3,), 32640, 16, wbits, 8, np.float32, saturate=True,
                       asymmetric=True, act_sym=False)
    check(cuda_library, monkeypatch, "triton", p)


def test_triton_kernel_refuses_what_it_cannot_take(cuda_library, monkeypatch):
    for K, N in ((576, 16), (128, 24)):
        p = random_problem(np.random.default_rng(11), (64,), K, N, 8, 8)
        with pytest.raises(Exception, match=r"EDGEQ_QL_KERNEL=triton: the triton kernel needs K % 128 == 0"):
            run_cuda(cuda_library, p, monkeypatch, "triton")


@pytest.mark.parametrize("K", [2048, 4096, 8192, 12288, 16384, 16512])
def test_quantize_row_lengths_in_triton_order(cuda_library, monkeypatch, K):
    """The packed triton path's codes in K_ORDER (each 128-code block's runs moved) from every quantize variant:
    2, 4, 6 or 8 groups per thread and the streaming loop beyond 16384."""
    p = random_problem(np.random.default_rng(K + 1), (20,), K, 16, 4, 8, np.float32, saturate=True,
                       asymmetric=True, act_sym=False)
    check(cuda_library, monkeypatch, "triton", p)


@pytest.mark.parametrize("K", [2048, 4096, 4160, 8192, 8256, 12288, 12352, 16384, 16448])
@pytest.mark.parametrize("kernel, wbits", [("cublas", 8), ("cublas", 4), ("mma64", 4)])
def test_quantize_row_lengths(cuda_library, monkeypatch, K, kernel, wbits):
    """Row lengths on both sides of each register-cached quantize variant's limit (2, 4, 6 or 8 groups of 8 per
    thread; streaming beyond 16384), in the natural code order (cublas) and evens-first (mma, packed weights)."""
    p = random_problem(np.random.default_rng(K), (20,), K, 16, wbits, 8, np.float32, saturate=True,
                       asymmetric=True, act_sym=False)
    check(cuda_library, monkeypatch, kernel, p)

"""edgeq::QuantLinear on ORT's CPU execution provider against the integer NumPy reference.

``quant_linear_rounded`` is the reference's exact integer accumulator put through the op's float32 epilogue
and rounded to T; a kernel whose int32 sums differ anywhere cannot reproduce its bits (|acc| < 2^24 here,
where float32(acc) is exact), so ``assert_array_equal`` against it is the bit-exactness check.
"""

import numpy as np
import pytest

from edgeq.custom_ops.quant_linear_packing import pack_weights
from edgeq.custom_ops.reference import (quant_linear, quant_linear_accumulator, quant_linear_rounded, quantize_tokens,
                                        quantize_tokens_asym)

from .conftest import rel_error, session
from .quant_linear_problems import WIDTHS, QlProblem, feeds, ql_model, random_problem, random_shapes, rounded_reference

# float32 output: one rounding of (float32(acc) * scale) with scale itself rounded once.
FLOAT_TOLERANCE = {np.dtype(np.float32): 3e-7, np.dtype(np.float16): 1e-3}


def run_cpu(library, p: QlProblem, threads: int = 2, **kw):
    return session(ql_model(p, **kw), library, threads=threads).run(None, feeds(p, kw.get("weights_as_inputs", False)))[0]


def check(library, p: QlProblem):
    y = run_cpu(library, p)
    assert y.dtype == p.A.dtype and y.shape == (*p.A.shape[:-1], p.N)
    np.testing.assert_array_equal(y, rounded_reference(p))
    if p.A.dtype == np.float16 and not p.act_sym:
        return  # shifted float16 rows span subnormal to overflowing outputs: the bits above are the check there
    ref = quant_linear(p.A, p.B, p.w_scales, p.K, p.N, p.wbits, p.abits, p.w_zero, p.act_sym)
    assert rel_error(y, ref) <= FLOAT_TOLERANCE[p.A.dtype]


CASES = [pytest.param(i, lead, K, N, *WIDTHS[i % 4], id=f"{i}-M{'x'.join(map(str, lead))}-K{K}-N{N}-W{WIDTHS[i % 4][0]}A{WIDTHS[i % 4][1]}")
         for i, (lead, K, N) in enumerate(random_shapes(64, seed=505))]


@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_matches_reference_bit_exactly(cpu_library, dtype, seed, lead, K, N, wbits, abits):
    check(cpu_library, random_problem(np.random.default_rng(seed), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0))


@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", CASES[:24])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_asymmetric_weights_match_reference_bit_exactly(cpu_library, dtype, seed, lead, K, N, wbits, abits):
    """Per-channel zero offsets (w_zero) over the whole int8/nibble range, both ends in every saturated case."""
    p = random_problem(np.random.default_rng(seed + 1000), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0,
                       asymmetric=True)
    check(cpu_library, p)


@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", CASES[24:48])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_asymmetric_activations_match_reference_bit_exactly(cpu_library, dtype, seed, lead, K, N, wbits, abits):
    """act_sym=0, with symmetric and asymmetric weights alternating; rows that span zero, sit above or below it."""
    p = random_problem(np.random.default_rng(seed + 2000), lead, K, N, wbits, abits, dtype, saturate=seed % 2 == 0,
                       asymmetric=seed % 3 == 0, act_sym=False)
    check(cpu_library, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_asymmetric_codes_are_the_references(cpu_library, dtype):
    """Identity weights with unit scales make Y = (q - z) * s_x: the kernel's codes, zero points and floor."""
    K = 16
    A = np.array([np.linspace(0.5, 3.0, K), np.linspace(-7.0, -1.0, K), np.linspace(-1.0, 2.0, K),
                  np.r_[np.full(K - 1, 3e-6), -2e-6], np.zeros(K)], dtype)
    p = QlProblem(A, pack_weights(np.eye(K, dtype=np.int64), 8), np.ones(K, dtype), K, K, 8, 8, act_sym=False)
    q, s, z = quantize_tokens_asym(A, 8)
    assert z[0, 0] == -128 and z[1, 0] == 127  # all positive: zero point at the bottom; all negative: the top
    np.testing.assert_array_equal(run_cpu(cpu_library, p), ((q.astype(np.float32) - z) * s.astype(np.float32)).astype(dtype))


def test_asymmetric_activations_need_w_sum(cpu_library):
    p = random_problem(np.random.default_rng(1), (3,), 40, 5, 8, 8, act_sym=False)
    model = ql_model(p)
    del model.graph.node[0].input[4]
    with pytest.raises(Exception, match=r"edgeq::QuantLinear node 'ql0': act_sym=0 needs input w_sum"):
        session(model, cpu_library).run(None, feeds(p))


@pytest.mark.parametrize("wbits", [8, 4])
def test_asymmetric_sum_beyond_int32(cpu_library, wbits):
    """W - w_zero = -255 (8 bits) against q = -127 over K = 70000: the corrected sum 70000 * 127 * 255 passes
    2^31, so a kernel that subtracts the zero term in int32 wraps; the op's int64 correction does not."""
    K, N = 70000, 3
    lo, hi = -(1 << (wbits - 1)), (1 << (wbits - 1)) - 1
    p = QlProblem(np.full((2, K), -2.0, np.float32), pack_weights(np.full((N, K), lo), wbits), np.ones(N, np.float32),
                  K, N, wbits, 8, np.array([hi, 0, lo], np.int8))
    acc, _ = quant_linear_accumulator(p.A, p.B, K, N, wbits, 8, p.w_zero)
    assert acc.max() == K * 127 * (hi - lo) and (wbits == 4 or acc.max() > 2**31)
    check(cpu_library, p)
    # Both sides asymmetric: rows of one positive value quantize to u = 255 with zero point 0 (q - z = 255).
    p.act_sym = False
    p.A = np.full((2, K), 2.0, np.float32)
    acc, _ = quant_linear_accumulator(p.A, p.B, K, N, wbits, 8, p.w_zero, act_sym=False)
    assert np.abs(acc).max() == K * 255 * (hi - lo)
    check(cpu_library, p)


@pytest.mark.parametrize("wbits, abits", [(2, 2), (3, 3), (5, 5), (7, 7), (2, 8), (8, 4)])
def test_every_other_width(cpu_library, wbits, abits):
    check(cpu_library, random_problem(np.random.default_rng(wbits * 9 + abits), (5,), 77, 19, wbits, abits))


@pytest.mark.parametrize("wbits", [8, 4])
def test_largest_accumulator(cpu_library, wbits):
    """Every code at the bottom of its range (q = -127, w = -128 or -8) for the longest K whose sum still fits
    float32's 24 bits: acc = K * 127 * 128 must come out exactly (one carry lost anywhere changes the bits)."""
    K, lo = 1031, -(1 << (wbits - 1))
    p = QlProblem(np.full((3, K), -2.0, np.float32), pack_weights(np.full((5, K), lo), wbits),
                  np.ones(5, np.float32), K, 5, wbits, 8)
    acc, _ = quant_linear_accumulator(p.A, p.B, K, 5, wbits, 8)
    assert acc.max() == K * 127 * -lo and acc.max() < 2**24
    check(cpu_library, p)


def test_long_reduction_is_still_exact(cpu_library):
    # LLaMA's down_proj K: float32(acc) rounds here, identically on both sides when the int32 sums agree.
    check(cpu_library, random_problem(np.random.default_rng(3), (3,), 11008, 37, 8, 8, saturate=True))


def test_codes_round_half_to_even_and_clamp():
    """With absmax = qmax the scale is exactly 1, so x/s lands on .5 ties: ONNX Round goes to even."""
    x = np.array([[127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127.0]], np.float32)
    q, s = quantize_tokens(x, 8)
    assert s.item() == 1.0 and q.tolist() == [[127, 2, 4, -2, 0, 0, 2, -127]]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_kernel_codes_are_the_exporters(cpu_library, dtype):
    """An identity weight with unit scales makes Y = q * s_x: the kernel's codes, ties and floor included."""
    K = 16
    A = np.array([[127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127.0, 126.5, 0, 0, 0, 0, 0, 0, 0],
                  [3e-6, -7e-6, 1e-6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # below the floor: s = 1e-5
                  np.linspace(-1, 1, K)], dtype)
    p = QlProblem(A, pack_weights(np.eye(K, dtype=np.int64), 8), np.ones(K, dtype), K, K, 8, 8)
    y = run_cpu(cpu_library, p)
    q, s = quantize_tokens(A, 8)
    np.testing.assert_array_equal(y, (q.astype(np.float32) * s.astype(np.float32)).astype(dtype))
    assert q[0, :9].tolist() == [127, 2, 4, -2, 0, 0, 2, -127, 126]
    assert q[1, :3].tolist() == [0, -1, 0]  # 3e-6 / 1e-5 rounds to 0, -7e-6 / 1e-5 to -1


def test_thread_count_does_not_change_the_result(cpu_library):
    p = random_problem(np.random.default_rng(12), (33,), K=300, N=101, wbits=4, abits=4)
    np.testing.assert_array_equal(run_cpu(cpu_library, p, threads=1), run_cpu(cpu_library, p, threads=2))


def test_unused_nibble_of_an_odd_row_is_ignored(cpu_library):
    p = random_problem(np.random.default_rng(13), (4,), K=41, N=6, wbits=4, abits=8)
    base = run_cpu(cpu_library, p)
    p.B[:, -1] = (p.B[:, -1].view(np.uint8) | 0x70).view(np.int8)  # value 41 of each row: past K
    np.testing.assert_array_equal(run_cpu(cpu_library, p), base)


def test_weights_fed_at_run_time(cpu_library):
    p = random_problem(np.random.default_rng(14), (2, 3), K=65, N=9, wbits=6, abits=6)
    y = run_cpu(cpu_library, p, weights_as_inputs=True, a_shape=[None, None, None])
    np.testing.assert_array_equal(y, quant_linear_rounded(p.A, p.B, p.w_scales, 65, 9, 6, 6))


@pytest.mark.parametrize("kernel", ["vnni", "avx512", "avx2", "scalar"])
@pytest.mark.parametrize("seed, lead, K, N, wbits, abits", CASES[48:56])
def test_every_int8_gemm_kernel(cpu_library, monkeypatch, kernel, seed, lead, K, N, wbits, abits):
    """The integer ops' GEMM under QuantLinear, each variant pinned (EDGEQ_DIMATMUL_KERNEL, read at session
    creation): the same bits, zero points on both sides included."""
    monkeypatch.setenv("EDGEQ_DIMATMUL_KERNEL", kernel)
    p = random_problem(np.random.default_rng(seed), lead, K, N, wbits, abits, np.float32, asymmetric=True,
                       act_sym=False)
    try:
        check(cpu_library, p)
    except Exception as e:  # noqa: BLE001
        if "this build has no" not in str(e):
            raise
        pytest.skip(f"this build has no {kernel} kernel")

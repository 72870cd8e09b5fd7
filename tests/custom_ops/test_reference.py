import numpy as np

from edgeq.custom_ops.reference import dequantize, group_quant_matmul

from .conftest import random_problem


def test_reference_dequantizes_by_definition():
    # Elementwise, with loops, straight from the schema's formula.
    p = random_problem(np.random.default_rng(3), (3,), K=40, N=5, bits=3, group_size=16)
    from edgeq.custom_ops.packing import unpack_codes

    codes = unpack_codes(p.B, 3, 16, 40)
    W = np.empty((5, 40))
    for n in range(5):
        for k in range(40):
            W[n, k] = float(p.scales[n, k // 16]) * (int(codes[n, k]) - int(p.zero_points[n, k // 16]))
    np.testing.assert_allclose(dequantize(p.B, p.scales, p.zero_points, 40, 5, 3, 16), W, rtol=0, atol=0)
    np.testing.assert_allclose(group_quant_matmul(p.A, p.B, p.scales, p.zero_points, 40, 5, 3, 16),
                               p.A.astype(np.float64) @ W.T, rtol=1e-12)


def test_reference_default_zero_point_is_half_range():
    p = random_problem(np.random.default_rng(4), (1,), K=32, N=2, bits=4, group_size=32, with_zero_points=False)
    explicit = np.full((2, 1), 8, np.uint8)
    np.testing.assert_array_equal(dequantize(p.B, p.scales, None, 32, 2, 4, 32),
                                  dequantize(p.B, p.scales, explicit, 32, 2, 4, 32))

import numpy as np
import pytest

from edgeq.custom_ops.packing import pack_codes, unpack_codes
from edgeq.errors import EdgeqError


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [16, 32, 64, 128])
@pytest.mark.parametrize("K", [1, 15, 16, 100, 129, 300])
def test_round_trip_is_exact(bits, group_size, K):
    rng = np.random.default_rng(bits * 1000 + group_size + K)
    codes = rng.integers(0, 2**bits, (7, K), dtype=np.uint8)
    packed = pack_codes(codes, bits, group_size)
    n_groups = -(-K // group_size)
    assert packed.shape == (7, n_groups, group_size * bits // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, bits, group_size, K), codes)
    # Padding of the last group is code 0, so the full unpack shows zeros past K.
    full = unpack_codes(packed, bits, group_size)
    assert full.shape == (7, n_groups * group_size)
    assert not full[:, K:].any()


def test_four_bit_is_matmulnbits_order():
    codes = np.zeros((1, 16), np.uint8)
    codes[0, :4] = [1, 2, 3, 4]
    packed = pack_codes(codes, 4, 16)
    assert packed[0, 0, :2].tolist() == [0x21, 0x43]  # low nibble first


def test_three_bit_codes_cross_bytes():
    codes = np.zeros((1, 16), np.uint8)
    codes[0, :3] = [5, 3, 7]  # bits: 101 | 011 | 111 -> byte0 = 0b11_011_101, byte1 bit0 = 1
    packed = pack_codes(codes, 3, 16)
    assert packed.shape == (1, 1, 6)
    assert packed[0, 0, 0] == 0b11011101 and packed[0, 0, 1] == 0b1


def test_groups_are_independent_streams():
    # Each group starts on its own byte: the second group's first code is the first bits of its bytes.
    codes = np.zeros((1, 32), np.uint8)
    codes[0, 16] = 6
    packed = pack_codes(codes, 3, 16)
    assert packed[0, 0].tolist() == [0] * 6 and packed[0, 1, 0] == 6


@pytest.mark.parametrize("bad, match", [
    (np.full((2, 16), 16, np.uint8), "does not fit in 4 bits"),
    (np.zeros((2, 16), np.int32), "must be uint8"),
    (np.zeros((16,), np.uint8), r"must be \[N, K\]"),
])
def test_bad_codes_are_refused(bad, match):
    with pytest.raises(EdgeqError, match=match):
        pack_codes(bad, 4, 16)


def test_bad_format_is_refused():
    with pytest.raises(EdgeqError, match="bits=5"):
        pack_codes(np.zeros((1, 16), np.uint8), 5, 16)
    with pytest.raises(EdgeqError, match="group_size=48"):
        pack_codes(np.zeros((1, 16), np.uint8), 4, 48)
    with pytest.raises(EdgeqError, match="needs 2 groups"):
        unpack_codes(np.zeros((1, 1, 8), np.uint8), 4, 16, K=17)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("L", [1, 7, 36, 97])
def test_row_bitstream_round_trip_and_size(bits, L):
    from edgeq.custom_ops.packing import pack_row_bitstream, unpack_row_bitstream

    codes = np.random.default_rng(bits * 100 + L).integers(0, 2**bits, (5, L), dtype=np.uint8)
    packed = pack_row_bitstream(codes, bits)
    assert packed.shape == (5, (L * bits + 7) // 8)
    np.testing.assert_array_equal(unpack_row_bitstream(packed, bits, L), codes)
    # code j sits at bits [j*bits, (j+1)*bits) of the row, least significant bit first
    j = L - 1
    stream = np.unpackbits(packed[0], bitorder="little")
    assert int(sum(int(stream[j * bits + b]) << b for b in range(bits))) == int(codes[0, j])


def test_row_bitstream_refuses_codes_too_wide():
    from edgeq.custom_ops.packing import pack_row_bitstream

    with pytest.raises(EdgeqError, match="does not fit"):
        pack_row_bitstream(np.full((1, 3), 8, np.uint8), 3)

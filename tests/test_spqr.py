"""SpQR: bilevel statistics, outliers, exact storage accounting, and its place in the layer-by-layer driver."""

import math

import pytest
import torch

from edgeq.errors import EdgeqError
from edgeq.quantize.api import load_quantized, quantize_, save_quantized
from edgeq.quantize.config import RTNConfig, SpQRConfig
from edgeq.quantize.formats.spqr import SpQRWeight
from edgeq.quantize.rtn import rtn_quantize
from edgeq.quantize.spqr import SpQR, quantize_stat
from tests.conftest import make_tiny_llama


def solver(n=40, k=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, k, generator=g) @ (torch.randn(k, k, generator=g) * torch.linspace(0.05, 2, k))
    w = torch.randn(n, k, generator=g)
    w[3, 190], w[17, 150] = 9.0, -11.0  # planted outliers on high-variance inputs
    s = SpQR(w)
    s.add_batch(x)
    return s, x, w


def out_err(x, w, q):
    return ((x @ q.dequantize().T - x @ w.T) ** 2).mean().item()


def test_second_level_statistics_round_trip():
    v = torch.rand(37) + 0.1
    codes, scale, zero, decoded = quantize_stat(v, 3, 16)
    assert codes.max() <= 7 and scale.shape == (3,) and scale.dtype == torch.float32
    assert torch.equal(scale, scale.half().float())  # stored in fp16, used exactly as stored
    blocks = torch.cat([v, v[-1:].expand(11)]).view(3, 16)
    step = ((blocks.max(1).values - blocks.min(1).values) / 7).repeat_interleave(16)[:37]
    assert torch.all((decoded - v).abs() <= step / 2 + 1e-3 * v.abs())


@pytest.mark.parametrize("bits,beta1,beta2", [(3, 16, 16), (2, 16, 32), (4, 32, 16)])
def test_storage_bits_are_exact(bits, beta1, beta2):
    s, _, _ = solver()
    q = s.quantize(bits, beta1, 3, beta2, 0.2, True, 0.01, 64)
    n, k = 40, 200
    g1, r = math.ceil(k / beta1), math.ceil(n / beta2)
    expected = (
        n * g1 * beta1 * bits  # dense codes, packed per group
        + 2 * n * math.ceil(g1 * 3 / 8) * 8  # 3-bit scale and zero codes, one bitstream per row
        + r * g1 * 4 * 16  # fp16 second-level stats
        + (n + 1) * 32 + q.nnz * (16 + 16)  # CSR outliers: int32 row pointers, 16-bit columns, fp16 values
        + k * 16 + 6 * 32  # 16-bit permutation, format header
    )
    assert q.storage_bits() == expected


def test_outliers_are_exact_and_help():
    s, x, w = solver()
    none = s.quantize(3, 16, 3, 16, float("inf"), True, 0.01, 128)
    some = s.quantize(3, 16, 3, 16, 0.2, True, 0.01, 128)
    assert none.nnz == 0 and 0 < some.outlier_fraction < 0.1
    # the planted weights are among the outliers (columns are stored in quantization order)
    kept = set(zip(some.outlier_rows().tolist(), some.perm[some.cols.long()].tolist()))
    assert {(3, 190), (17, 150)} <= kept
    assert out_err(x, w, some) < out_err(x, w, none) < out_err(x, w, rtn_quantize(w, RTNConfig(3, 16)))
    rows = some.outlier_rows()
    assert torch.all(rows[1:] >= rows[:-1])  # CSR order


def test_format_round_trip_is_exact():
    s, _, _ = solver()
    q = s.quantize(3, 16, 3, 16, 0.1, True, 0.01, 128)
    back = SpQRWeight.from_tensors(q.to_tensors("p"), "p")
    assert torch.equal(back.dequantize(), q.dequantize()) and torch.equal(back.perm, q.perm)
    broken = q.to_tensors("p")
    broken["p.row_ptr"] = broken["p.row_ptr"][:-1]
    with pytest.raises(EdgeqError, match="row pointers"):
        SpQRWeight.from_tensors(broken, "p")


def test_config_rules():
    with pytest.raises(EdgeqError, match="multiple of group_size"):
        SpQRConfig(group_size=32, block_size=48)
    with pytest.raises(EdgeqError, match="bits"):
        SpQRConfig(stat_bits=1)


def test_sequential_spqr_hits_outlier_target_and_saves(tmp_path):
    cfg = SpQRConfig(bits=3, group_size=16, outlier_threshold=0.01, target_outliers=0.02, nsamples=8, seqlen=32)
    model = make_tiny_llama()
    qweights = quantize_(model, cfg, torch.randint(0, 300, (8, 32)), checkpoint_dir=tmp_path / "ck")
    assert len(qweights) == 14 and all(q.outlier_fraction <= 0.02 for q in qweights.values())
    assert any(q.nnz for q in qweights.values())
    save_quantized(tmp_path / "q", qweights, cfg, "tiny")
    config, _, loaded = load_quantized(tmp_path / "q")
    assert config == cfg
    for name, q in qweights.items():
        assert torch.equal(loaded[name].dequantize(), q.dequantize())
    # resumed from the per-layer checkpoints, same result
    again = quantize_(make_tiny_llama(), cfg, torch.randint(0, 300, (8, 32)), checkpoint_dir=tmp_path / "ck")
    assert all(torch.equal(again[n].codes, q.codes) for n, q in qweights.items())

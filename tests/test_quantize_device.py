"""Calibration on CUDA (one layer at a time on the device) gives the CPU's result, to float rounding."""

import pytest
import torch

from edgeq.quantize.api import quantize_
from edgeq.quantize.config import GPTQConfig, OmniQuantConfig, SpQRConfig
from edgeq.quantize.sequential import pick_device
from edgeq.errors import EdgeqError
from tests.conftest import make_tiny_llama

CONFIGS = [
    GPTQConfig(bits=4, group_size=16, nsamples=8, seqlen=32),
    SpQRConfig(bits=3, group_size=16, nsamples=8, seqlen=32, target_outliers=0.02),
    OmniQuantConfig(wbits=4, abits=8, group_size=-1, epochs=2, nsamples=8, seqlen=32, batch_size=4),
]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_cuda_refused_without_a_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None).type == "cpu"
    with pytest.raises(EdgeqError, match="no CUDA device"):
        pick_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with CUDA")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_cuda_calibration_matches_cpu(config):
    calib = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    fp = logits(make_tiny_llama(), ids)
    results = {}
    for device in ("cpu", "cuda"):
        model = make_tiny_llama()
        qweights = quantize_(model, config, calib, device=device)
        assert all(t.device.type == "cpu" for qw in qweights.values() for t in vars(qw).values() if isinstance(t, torch.Tensor))
        assert next(model.parameters()).device.type == "cpu"  # the model is handed back where it was
        results[device] = logits(model, ids)
    err = {d: (y - fp).norm() / fp.norm() for d, y in results.items()}
    # different float summation orders flip a few roundings; the quantization error must stay the same size
    assert abs(err["cuda"] - err["cpu"]) < 0.25 * err["cpu"] + 1e-3
    assert (results["cuda"] - results["cpu"]).norm() / fp.norm() < 0.5 * err["cpu"] + 1e-3

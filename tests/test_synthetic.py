"""Random-weight models for speed benchmarks: right shapes, valid formats, and the graphs the passes should make."""

import onnx
import pytest
import torch

from edgeq.synthetic import build, random_spqr


def test_random_spqr_is_a_valid_weight_with_the_asked_outlier_share():
    w = random_spqr(48, 200, torch.Generator().manual_seed(0), outliers=0.02)
    w.validate()
    assert w.nnz == round(0.02 * 48 * 200)
    assert torch.isfinite(w.dequantize()).all()
    scale, _ = w.group_stats()
    assert (scale > 0).all()  # the statistics decode to usable scales
    rows = w.outlier_rows()
    assert torch.all(rows[1:] >= rows[:-1])


@pytest.mark.parametrize("fmt, op", [("fp16", "MatMul"), ("nbits4", "MatMulNBits"), ("gqmm3", "GroupQuantMatMul"),
                                     ("spqr3", "SpQRMatMul"), ("illm8", "DIMatMul")])
def test_build_lowers_every_linear_to_its_format(tmp_path, fmt, op):
    path = build("tiny", 2, fmt, tmp_path)
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    # 2 layers x 7 projections (fp16 also has the lm_head MatMul); DIMatMul pairs q/k and gate/up, split in two outputs
    linears = sum(1 + any(a.name == "split" and a.i > 0 for a in n.attribute) for n in nodes if n.op_type == op)
    assert linears >= 14
    assert path.with_name(path.name + ".data").exists() or any(path.parent.glob("*.data"))


def test_illm8_is_integer_only(tmp_path):
    from edgeq.passes.verify import integer_only_offenders

    import onnx_ir as ir

    path = build("tiny", 2, "illm8", tmp_path)
    assert integer_only_offenders(ir.load(str(path))) == []

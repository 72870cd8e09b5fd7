from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.errors import EdgeqError
from edgeq.exporter.llama_graph import build_decoder_model
from edgeq.passes.diff import compare_arrays, make_feeds, numeric_diff, structural_diff, tokenize, write_html
from edgeq.passes.pipeline import default_pipeline
from edgeq.passes.verify import verify_model
from edgeq.quantize.api import quantize_
from edgeq.quantize.config import RTNConfig
from tests.conftest import make_tiny_llama

LAYERS = 2
LINEARS = 7 * LAYERS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """FP32 and W4 exports of the same tiny Llama, and the W4 export after the default pipeline + fusions."""
    folder = tmp_path_factory.mktemp("verify_diff")
    fp32 = build_decoder_model(make_tiny_llama(layers=LAYERS))
    q = make_tiny_llama(layers=LAYERS)
    quantize_(q, RTNConfig(4, 32))
    w4 = build_decoder_model(q)
    fused = default_pipeline(w4, fusions=True).to_proto()
    paths = {}
    for name, proto in (("fp32", fp32), ("w4", w4), ("fused", fused)):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(proto, paths[name])
    return paths


def test_verify_lists_ops_providers_and_float_ops(models):
    report = verify_model(models["fused"])
    assert report.ok, report.problems
    rows = {(r.domain, r.op_type): r for r in report.rows}
    assert rows[("com.microsoft", "MatMulNBits")].count == LINEARS
    assert rows[("com.microsoft", "MatMulNBits")].provider == "CPUExecutionProvider"
    assert rows[("", "RMSNormalization")].provider == "CPUExecutionProvider"
    assert rows[("edgeq.fusion", "SwiGLU")].provider == "model function (inlined)"
    assert rows[("", "Reshape")].float_ops == 0  # data movement, not arithmetic
    assert report.float_ops["com.microsoft::MatMulNBits"] == LINEARS
    assert sum(r.count for r in report.rows) == len(onnx.load(str(models["fused"])).graph.node)
    assert "ONNX Runtime session created" in report.notes
    assert "OK" in report.format().splitlines()[-1]


def _save(tmp_path, nodes, inputs, outputs, opsets, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    proto.ir_version = 10
    path = tmp_path / name
    onnx.save(proto, path)
    return path


def test_verify_flags_an_op_no_provider_runs(tmp_path):
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])  # noqa: E731
    path = _save(tmp_path, [helper.make_node("Frobnicate", ["x"], ["y"], domain="acme")], [f("x")], [f("y")],
                 [("", 21), ("acme", 1)])
    report = verify_model(path, session=False)
    assert not report.ok
    assert any("no kernel for acme::Frobnicate" in p for p in report.problems)
    assert report.rows[0].provider == "NO KERNEL"


def test_verify_flags_edgeq_ops_when_the_library_is_unavailable(tmp_path, monkeypatch):
    import edgeq.custom_ops.library as library

    def unavailable(device="cpu"):
        raise EdgeqError("no C++ compiler")

    monkeypatch.setattr(library, "get_library", unavailable)
    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    node = helper.make_node("GroupQuantMatMul", ["a", "b", "s"], ["y"], domain="edgeq", K=16, N=4, bits=2,
                            group_size=16)
    path = _save(tmp_path, [node], [f("a", [1, 16]), helper.make_tensor_value_info("b", TensorProto.UINT8, [4, 1, 4]),
                                    f("s", [4, 1])], [f("y", [1, 4])], [("", 21), ("edgeq", 1)])
    report = verify_model(path, session=False)
    assert report.rows[0].provider == "MISSING edgeq library"
    assert any("needs the edgeq op library" in p and "no C++ compiler" in p for p in report.problems)


def test_verify_says_when_half_ops_run_in_float32(tmp_path):
    h = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT16, [2, 4])  # noqa: E731
    path = _save(tmp_path, [helper.make_node("Softmax", ["x"], ["y"])], [h("x")], [h("y")], [("", 21)])
    report = verify_model(path)
    assert report.ok
    assert "computes in float32" in report.rows[0].provider


def test_diff_of_fp32_and_quantized_exports_shows_only_the_quantized_linears(models):
    d = structural_diff(onnx.load(str(models["fp32"])), onnx.load(str(models["w4"])))
    assert d.op_delta == {"DequantizeLinear": LINEARS}
    assert not d.removed
    assert Counter(op for _, op in d.added) == Counter({"DequantizeLinear": LINEARS})
    assert Counter(op for _, op, _ in d.rewired) == Counter({"MatMul": LINEARS})
    assert all(key.endswith("_proj/MatMul") for key, _, _ in d.rewired)
    assert len(d.init_removed) == LINEARS and all(n.endswith("_proj.weight") for n, _ in d.init_removed)
    assert len(d.init_added) == 3 * LINEARS  # codes, scales, zeros
    assert not d.init_changed and not d.io_changes and not d.opset_changes
    text = d.format()
    assert f"nodes rewired: {LINEARS} (MatMul x{LINEARS})" in text


def test_diff_after_the_pipeline_names_replacements_and_opset(models):
    d = structural_diff(onnx.load(str(models["w4"])), onnx.load(str(models["fused"])))
    assert d.op_delta["com.microsoft::MatMulNBits"] == LINEARS
    assert d.op_delta["DequantizeLinear"] == -LINEARS
    assert "ai.onnx: 21 -> 23" in d.opset_changes
    assert not d.io_changes  # same signature, declared dims kept


def test_identical_models_have_no_differences(models):
    a = onnx.load(str(models["w4"]))
    d = structural_diff(a, a)
    assert d.empty and "no structural differences" in d.format()
    for o in numeric_diff(models["w4"], models["w4"]):
        assert o.max_abs == 0 and o.max_rel == 0


def test_numeric_diff_reports_every_output(models):
    results = numeric_diff(models["w4"], models["fused"], seq_len=5)
    assert [o.name for o in results][0] == "logits"
    assert len(results) == 1 + 2 * LAYERS
    assert results[0].shape == (1, 5, 300)
    assert all(o.max_abs < 1e-4 for o in results)


def test_compare_arrays_statistics():
    o = compare_arrays("y", np.array([1.0, -2.0, 0.0, 4.0]), np.array([1.5, -2.0, 0.0, 3.0]))
    assert o.max_abs == 1.0 and o.mean_abs == pytest.approx(0.375)
    assert o.max_rel == pytest.approx(0.5, rel=1e-4)  # 0.5 / 1.0 (the zero entry adds nothing, no division by 0)
    with pytest.raises(EdgeqError, match="shapes differ"):
        compare_arrays("y", np.zeros(2), np.zeros(3))


def test_prompt_feeds(models, tiny_llama_dir):
    ids = tokenize("To be, or not to be", str(tiny_llama_dir))
    feeds = make_feeds(onnx.load(str(models["w4"])), input_ids=ids)
    assert feeds["input_ids"].shape == (1, len(ids))
    assert feeds["position_ids"].tolist() == [list(range(len(ids)))]
    assert feeds["past_key_values.0.key"].shape == (1, 2, 0, 16)
    with pytest.raises(EdgeqError, match="tokenizer not found"):
        tokenize("x", str(tiny_llama_dir / "nope"))


def test_html_report_has_both_histograms(models, tmp_path):
    d = structural_diff(onnx.load(str(models["w4"])), onnx.load(str(models["fused"])))
    out = tmp_path / "diff.html"
    write_html(out, "w4 <a>", "fused", d, numeric_diff(models["w4"], models["fused"]))
    page = out.read_text()
    assert "com.microsoft::MatMulNBits" in page and "RMSNormalization" in page
    assert "w4 &lt;a&gt;" in page  # names are escaped
    assert page.count('class="bar a"') == page.count('class="bar b"') == len(set(d.ops_a) | set(d.ops_b))
    assert "<h2>Outputs</h2>" in page

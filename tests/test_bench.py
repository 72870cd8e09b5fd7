"""edgeq bench quality: spec parsing, exact stored-bit accounting, resume, table/JSON/plot output."""

import json

import pytest

from edgeq.bench import QualityBench, linear_storage, parse_spec
from edgeq.cli import build_parser
from edgeq.errors import EdgeqError
from edgeq.exporter.export import export
from edgeq.quantize.api import quantize_
from edgeq.quantize.config import RTNConfig
from tests.conftest import TINY_TEXT, make_tiny_llama


def test_parse_spec():
    assert parse_spec("gptq:bits=3,group_size=-1,sym=true,damp=0.05") == ("gptq", {"bits": 3, "group_size": -1, "sym": True, "damp": 0.05})
    assert parse_spec("fp32") == ("fp32", {})
    with pytest.raises(EdgeqError, match="key=value"):
        parse_spec("rtn:bits")


def test_stored_bits_of_a_lowered_model_are_exact(tmp_path):
    import onnx

    from edgeq.cli import lowering_passes

    model = make_tiny_llama()
    fp_bits, fp_params = linear_storage(onnx.load(str(export(model, None, tmp_path / "fp" / "model.onnx"))))
    assert fp_bits == 32 * fp_params and fp_params == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96)
    quantize_(model, RTNConfig(4, 16))
    bits, params = linear_storage(onnx.load(str(export(model, None, tmp_path / "q" / "model.onnx", transform=lowering_passes))))
    # MatMulNBits: 4-bit codes, an fp32 scale and a 4-bit zero point per 16 weights
    assert params == fp_params and bits == params * 4 + params // 16 * (32 + 4)


def test_bench_runs_resumes_and_writes_outputs(tmp_path, tiny_llama_dir, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text(TINY_TEXT * 3)
    argv = ["bench", "quality", "--model", str(tiny_llama_dir), "--text", str(text), "--calib", str(text),
            "--window", "32", "--stride", "32", "--max-windows", "2", "-o", str(tmp_path / "b"),
            "--configs", "fp32", "rtn:bits=3,group_size=16", "ort-rtn:bits=4,block_size=32"]
    args = build_parser().parse_args(argv)
    results = QualityBench(args).run(args.configs)
    assert [r.config for r in results] == args.configs
    assert results[1].avg_bits > 3 and results[0].avg_bits == 32
    saved = json.loads((tmp_path / "b" / "quality.json").read_text())
    assert saved["commit"] and len(saved["results"]) == 3
    assert (tmp_path / "b" / "quality.png").stat().st_size > 10_000

    def no_rebuild(*a, **k):
        raise AssertionError("a finished config was rebuilt")

    monkeypatch.setattr(QualityBench, "build", no_rebuild)
    again = QualityBench(args).run(args.configs)
    assert [r.perplexity for r in again] == [r.perplexity for r in results]


def test_bench_speed_times_every_model(tmp_path, capsys):
    from edgeq.cli import main

    for name in ("a", "b"):
        export(make_tiny_llama(seed=len(name)), None, tmp_path / name / "model.onnx")
    assert main(["bench", "speed", "-o", str(tmp_path), "--prompt-tokens", "16", "--new-tokens", "4", "--rounds", "2"]) == 0
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert [r["model"].split("/")[-2] for r in saved["results"]] == ["a", "b"]
    assert all(r["decode_tokens_per_second"] > 0 for r in saved["results"])
    assert saved["results"][0]["decode_vs_first"] == [1.0, 1.0, 1.0]  # the first model against itself, every round
    low, high = saved["results"][1]["decode_vs_first"][1:]
    assert 0 < low <= saved["results"][1]["decode_vs_first"][0] <= high
    assert "| a |" in capsys.readouterr().out and (tmp_path / "speed.png").exists()
    assert main(["bench", "speed", "-o", str(tmp_path / "empty")]) == 2


def test_peer_block_size_that_does_not_divide_k_is_refused_before_work(tmp_path):
    import onnx

    from edgeq.bench import check_peer_blocks

    model = onnx.load(str(export(make_tiny_llama(), None, tmp_path / "fp" / "model.onnx")))  # K = 64 and 96
    check_peer_blocks(model, "ort-gptq", 32)
    with pytest.raises(EdgeqError, match=r"ort-kquant: block_size=64 must divide every MatMul's K .* \[96\]"):
        check_peer_blocks(model, "ort-kquant", 64)


def test_export_keys_leave_the_quantizer_spec():
    from edgeq.bench import split_export_options
    from edgeq.errors import EdgeqError

    assert split_export_options("illm:wbits=6,abits=6,integer_only=1,rotate_down=64") == ("illm:wbits=6,abits=6", True, 64)
    assert split_export_options("illm:wbits=8,integer_only=1") == ("illm:wbits=8", True, 0)
    assert split_export_options("rtn:bits=4,group_size=128") == ("rtn:bits=4,group_size=128", False, 0)
    with pytest.raises(EdgeqError, match="rotate_down is an option of the integer-only graph"):
        split_export_options("illm:wbits=6,rotate_down=64")

"""The edgeq command end to end on the tiny model, and its one-line errors."""

import pytest

from edgeq.cli import main
from tests.conftest import TINY_TEXT


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TINY_TEXT * 3)
    return path


def one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars may come before it
    assert err.startswith("edgeq: error:") and needle in err, err


@pytest.mark.parametrize("bits", ["1", "9"])
def test_bad_bits(capsys, tiny_llama_dir, bits):
    one_line_error(capsys, ["quantize", "--model", str(tiny_llama_dir), "--bits", bits, "-o", "x"], f"got {bits}")


def test_missing_model_and_empty_text(capsys, tmp_path, tiny_llama_dir):
    one_line_error(capsys, ["quantize", "--model", str(tmp_path / "none.gguf"), "-o", "x"], "model not found")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(capsys, ["eval", "--model", str(tiny_llama_dir), "--text", str(empty)], "empty")
    one_line_error(capsys, ["run", str(tmp_path / "nothing.onnx"), "--prompt", "hi"], "not found")


def test_quantize_export_run_eval(capsys, tmp_path, tiny_llama_dir, text_file):
    q = tmp_path / "q"
    common = ["--calib", str(text_file), "--nsamples", "4", "--seqlen", "32"]
    assert main(["quantize", "--model", str(tiny_llama_dir), "--method", "gptq", "--bits", "3", "--group-size", "16", "-o", str(q), *common]) == 0
    assert (q / "weights.safetensors").exists() and len(list((q / "checkpoints").glob("layer_*"))) == 2
    onnx_path = tmp_path / "export" / "model.onnx"
    assert main(["export", "--quantized", str(q), "-o", str(onnx_path), "--no-passes"]) == 0
    capsys.readouterr()
    assert main(["run", str(onnx_path), "--prompt", "To be", "--raw", "--max-new-tokens", "5"]) == 0
    assert "decode" in capsys.readouterr().err
    ev = ["--text", str(text_file), "--window", "32", "--stride", "32", "--max-windows", "3"]
    assert main(["eval", "--onnx", str(onnx_path), *ev]) == 0
    onnx_line = capsys.readouterr().out
    assert main(["eval", "--quantized", str(q), *ev]) == 0
    torch_line = capsys.readouterr().out
    ppl = lambda line: float(line.split("perplexity ")[1].split()[0])  # noqa: E731
    assert ppl(onnx_line) == pytest.approx(ppl(torch_line), rel=1e-4)


def test_pipeline_on_tiny_model(capsys, tmp_path, tiny_llama_dir, text_file):
    argv = ["pipeline", "--model", str(tiny_llama_dir), "-o", str(tmp_path / "p"), "--text", str(text_file),
            "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32", "--window", "32", "--stride", "32",
            "--max-windows", "3", "--max-new-tokens", "4", "--compare", "rtn:bits=3,group_size=16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "generation with KV cache == without, 32 greedy tokens: True" in out
    rows = [line for line in out.splitlines() if line.startswith("| gptq:bits=4,group_size=128") or line.startswith("| rtn:bits=3,group_size=16")]
    assert len(rows) >= 2


@pytest.mark.parametrize("argv, expected", [
    (["--method", "omniquant", "--abits", "8"], dict(sym=False, act_sym=False)),  # the paper's code
    (["--method", "omniquant", "--abits", "8", "--sym", "--act-grid", "sym"], dict(sym=True, act_sym=True)),
    (["--method", "rtn", "--group-size", "-1", "--abits", "8"], dict(sym=False, act_sym=True)),
    (["--method", "rtn", "--group-size", "-1", "--abits", "8", "--act-grid", "asym"], dict(sym=False, act_sym=False)),
    (["--method", "illm", "--abits", "8"], dict(sym=False, act_sym=True)),  # zero points on weights only: the DI ops' form
    (["--method", "illm", "--abits", "8", "--sym"], dict(sym=True, act_sym=True)),
])
def test_weight_activation_grids_from_the_command_line(argv, expected):
    from edgeq.cli import build_parser, quant_config

    args = build_parser().parse_args(["quantize", "--model", "m", "-o", "x", *argv])
    config = quant_config(args)
    assert {k: getattr(config, k) for k in expected} == expected

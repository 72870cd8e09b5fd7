import argparse
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import EdgeqError
from edgeq.passes import cli
from tests.passes.helpers import ops, quantized_linear_graph


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small quantized linear saved as a plain .onnx."""
    proto, _ = quantized_linear_graph(64, 16, 4, 32, rng=np.random.default_rng(0))
    path = tmp_path_factory.mktemp("cli") / "linear.onnx"
    onnx.save(proto, path)
    return path


def external_model(folder, location="weights.bin"):
    """A model whose initializer lives in an external file named ``location`` (relative to the model)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    path = folder / "model.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    if location != "weights.bin":
        proto = onnx.load(str(path), load_external_data=False)
        for entry in proto.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(proto, path)
    return path


def malformed(kind, tmp_path, good):
    if kind == "not-onnx":
        path = tmp_path / "notes.onnx"
        path.write_text("this is a text file, not a model\n")
    elif kind == "truncated":
        path = tmp_path / "truncated.onnx"
        path.write_bytes(good.read_bytes()[:700])
    elif kind == "missing-external-data":
        path = external_model(tmp_path / "missing")
        (tmp_path / "missing" / "weights.bin").unlink()
    elif kind == "escaping-external-data":
        (tmp_path / "secret.bin").write_bytes(b"\0" * 256)
        path = external_model(tmp_path / "escape", location="../secret.bin")
    elif kind == "missing-file":
        path = tmp_path / "nope.onnx"
    return path


KINDS = ["not-onnx", "truncated", "missing-external-data", "escaping-external-data", "missing-file"]
MESSAGES = {"not-onnx": "not a readable ONNX model|has no nodes", "truncated": "not a readable ONNX model|has no nodes",
            "missing-external-data": "external data file 'weights.bin' is missing",
            "escaping-external-data": "escapes the model's folder", "missing-file": "model file not found"}


def commands(bad, good, out):
    return {
        "verify": ["verify", str(bad)],
        "diff-a": ["diff", str(bad), str(good)],
        "diff-b": ["diff", str(good), str(bad), "--numeric"],
        "optimize": ["optimize", str(bad), "-o", str(out)],
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["verify", "diff-a", "diff-b", "optimize"])
def test_malformed_input_is_refused_with_one_line(kind, command, tmp_path, good, capsys):
    bad = malformed(kind, tmp_path, good)
    argv = commands(bad, good, tmp_path / "out.onnx")[command]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"edgeq {argv[0]}: error: ")
    assert re.search(MESSAGES[kind], err), err
    assert not (tmp_path / "out.onnx").exists()


def parse(argv):
    parser = argparse.ArgumentParser(prog="edgeq")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_optimize_writes_the_lowered_model(good, tmp_path, capsys):
    out = tmp_path / "sub" / "out.onnx"
    args = parse(["optimize", str(good), "-o", str(out), "--passes", "matmul-nbits,dead"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "matmul-nbits: modified" in printed and "com.microsoft::MatMulNBits x1" in printed
    assert ops(onnx.load(str(out))) == {"MatMulNBits": 1}


def test_optimize_refuses_to_overwrite_its_input_and_unknown_passes(good, tmp_path):
    args = parse(["optimize", str(good), "-o", str(good)])
    with pytest.raises(EdgeqError, match="must not overwrite"):
        args.func(args)
    args = parse(["optimize", str(good), "-o", str(tmp_path / "o.onnx"), "--passes", "matmul-nbits,warp-drive"])
    with pytest.raises(EdgeqError, match=r"unknown pass\(es\) \['warp-drive'\]"):
        args.func(args)


def test_verify_and_diff_commands(good, tmp_path, capsys):
    out = tmp_path / "lowered.onnx"
    assert cli.main(["optimize", str(good), "-o", str(out)]) == 0
    capsys.readouterr()
    args = parse(["verify", str(out)])
    assert args.func(args) == 0
    assert "MatMulNBits" in capsys.readouterr().out
    html = tmp_path / "d.html"
    args = parse(["diff", str(good), str(out), "--numeric", "--html", str(html)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "com.microsoft::MatMulNBits 0->1 (+1)" in printed
    assert "y [2, 3, 16]: max abs" in printed
    assert html.exists()


def test_verify_fails_when_a_node_cannot_run(tmp_path):
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="acme")], "g", [f("x")], [f("y")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("acme", 1)])
    path = tmp_path / "acme.onnx"
    onnx.save(proto, path)
    args = parse(["verify", str(path), "--no-session"])
    with pytest.raises(EdgeqError, match="1 problem"):
        args.func(args)


def test_diff_prompt_needs_numeric_and_tokenizer(good):
    with pytest.raises(EdgeqError, match="only applies with --numeric"):
        cli.cmd_diff(parse(["diff", str(good), str(good), "--prompt", "hi"]))
    with pytest.raises(EdgeqError, match="needs --tokenizer"):
        cli.cmd_diff(parse(["diff", str(good), str(good), "--numeric", "--prompt", "hi"]))


def test_help_lists_every_pass(capsys):
    from edgeq.passes.catalog import PASSES

    with pytest.raises(SystemExit):
        parse(["optimize", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in PASSES)

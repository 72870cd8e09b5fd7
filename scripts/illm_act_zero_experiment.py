"""What a zero point per token on the linear inputs would give I-LLM, before the DI ops can express it:

    python scripts/illm_act_zero_experiment.py --abits 4 -o /tmp/actzero/w4a4 \\
        --baselines out/bq/illm-wbits4-abits4-epochs2-nsamples16-integer_only1/quantized \\
                    out/bq/omniquant-wbits4-abits4-epochs2-nsamples16/quantized

trains I-LLM's FSBR (``quantize/illm.py``; 2 epochs x 16 sequences of 512 tokens, the bench's reduced setting)
with OmniQuant's asymmetric per-token rule on the four linear inputs (the norms' outputs, the heads into o_proj,
the SwiGLU output) instead of the symmetric codes the DI ops take, then reports the PyTorch perplexity (weights and
linear-input codes simulated, the integer graph's inner roundings left in float) of that model with zero-point
and with symmetric linear inputs, and of each baseline folder as saved. It predates the DI ops' zero points (when
``ILLMConfig`` refused ``act_sym=False``) and keeps its own site patching, which ``--norms-only`` needs; the whole-model
variant is now ``edgeq quantize --method illm --act-grid asym``.
"""

import argparse
import dataclasses
import types

import edgeq.quantize.config as config_module
import edgeq.quantize.illm as illm
from edgeq.cli import DEFAULT_MAX_WINDOWS, EVAL_TEXT, eval_tokens, eval_torch
from edgeq.cli import main as edgeq_main
from edgeq.models import load_model
from edgeq.quantize.api import apply_quantized, load_quantized


NORM_FED = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # the linears that read a norm's output


def train_with_zero_points(abits: int, out: str, norms_only: bool) -> None:
    check = config_module.ILLMConfig.__post_init__

    def lifted(self):
        object.__setattr__(self, "act_sym", True)
        check(self)

    config_module.ILLMConfig.__post_init__ = lifted
    symmetric = illm.fake_quant_tokens
    rms_norm = illm.FSBRBlock.rms_norm
    after_norm = [False]

    def marked_norm(self, x, gamma):
        after_norm[0] = True  # FSBRBlock.forward quantizes a norm's output right after computing it
        return rms_norm(self, x, gamma)

    def linear_inputs_asymmetric(x, bits, clip=None, sym=True):
        # The linear inputs are FSBR's only abits-wide sites: the inner ones are 8 and 16 bits (abits < 8 here).
        site = bits == abits and clip is None and (after_norm[0] or not norms_only)
        after_norm[0] = False
        return symmetric(x, bits, clip, sym and not site)

    illm.fake_quant_tokens = linear_inputs_asymmetric
    illm.FSBRBlock.rms_norm = marked_norm
    try:
        edgeq_main(["quantize", "--model", "smollm2-135m", "--method", "illm", "--bits", str(abits), "--abits",
                    str(abits), "--epochs", "2", "--nsamples", "16", "--seqlen", "512", "-o", out])
    finally:
        illm.fake_quant_tokens = symmetric
        illm.FSBRBlock.rms_norm = rms_norm
        config_module.ILLMConfig.__post_init__ = check


def perplexity(folder: str, act_sym: bool | None, norms_only: bool = False) -> float:
    """act_sym None: as saved; else every linear's (norms_only: the norm-fed linears', the others symmetric)."""
    args = types.SimpleNamespace(text=EVAL_TEXT, window=512, stride=512, max_windows=DEFAULT_MAX_WINDOWS)
    _, source, weights = load_quantized(folder)
    if act_sym is not None:
        weights = {k: dataclasses.replace(v, act_sym=act_sym or (norms_only and not k.endswith(NORM_FED)))
                   if hasattr(v, "act_sym") else v for k, v in weights.items()}
    lm = load_model(source)
    apply_quantized(lm.model, weights)
    return eval_torch(lm.model, eval_tokens(lm.tokenizer, args), args, "eval").perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abits", type=int, default=4, choices=[4, 6])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--baselines", nargs="*", default=[])
    parser.add_argument("--eval-only", action="store_true", help="the output folder is already trained")
    parser.add_argument("--norms-only", action="store_true",
                        help="zero points only on the two norms' outputs (q/k/v and gate/up inputs)")
    args = parser.parse_args()
    if not args.eval_only:
        train_with_zero_points(args.abits, args.output, args.norms_only)
    which = "norm-fed" if args.norms_only else "linear"
    rows = [(f"{args.output} (zero-point {which} inputs)", perplexity(args.output, False, args.norms_only)),
            (f"{args.output} (symmetric linear inputs)", perplexity(args.output, True))]
    rows += [(f"{folder} (as saved)", perplexity(folder, None)) for folder in args.baselines]
    print("\n| model | PyTorch perplexity |\n|---|---:|")
    for name, ppl in rows:
        print(f"| {name} | {ppl:.3f} |")


if __name__ == "__main__":
    main()

"""The ``edgeq`` command: quantize, export, run, eval, and the end-to-end ``pipeline`` job."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
import time
from pathlib import Path

from edgeq.errors import EdgeqError

DEFAULT_MODEL = "smollm2-135m"
EVAL_TEXT = "shakespeare-eval"
CALIB_TEXT = "shakespeare-calib"
DEFAULT_MAX_WINDOWS = 32  # 32 x 512 tokens: ~16k scored tokens, enough to separate the methods on this model
# Stage modules that add their own subcommands through ``register(subparsers)``.
PLUGIN_COMMANDS = ("edgeq.custom_ops.cli", "edgeq.passes.cli", "edgeq.bench")


# ---- shared argument groups ------------------------------------------------------------------------------
def add_quant_args(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("quantization")
    q.add_argument("--method", choices=["rtn", "gptq", "spqr", "omniquant", "illm"], default="gptq", help="quantization algorithm (default: gptq; illm = I-LLM's FSBR, with --bits/--abits, for the integer-only graph)")
    q.add_argument("--bits", type=int, default=4, help="bits per weight code, 2..8 (default: 4)")
    q.add_argument("--group-size", type=int, default=128, help="weights sharing one scale/zero along the input dim; -1 = per output channel (default: 128; SpQR's beta1, use 16)")
    q.add_argument("--sym", action="store_true", help="symmetric grid (zero point fixed at 2^(bits-1)) instead of asymmetric min-max")
    q.add_argument("--no-act-order", action="store_true", help="GPTQ: quantize columns in natural order instead of by decreasing Hessian diagonal")
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ: Hessian dampening as a fraction of its mean diagonal (default: 0.01)")
    q.add_argument("--block-size", type=int, default=128, help="GPTQ: columns per lazy-update block (default: 128)")
    q.add_argument("--stat-bits", type=int, default=3, help="SpQR: bits of the quantized group scales/zeros (default: 3)")
    q.add_argument("--stat-group-size", type=int, default=16, help="SpQR: rows per second-level statistics block, beta2 (default: 16)")
    q.add_argument("--outlier-threshold", type=float, default=0.2, help="SpQR: tau, outlier if its Hessian-weighted error exceeds tau x the layer mean; inf = no outliers (default: 0.2)")
    q.add_argument("--target-outliers", type=float, default=None, help="SpQR: raise tau per layer until at most this fraction of weights are outliers (e.g. 0.01)")
    q.add_argument("--abits", type=int, default=16, help="RTN/OmniQuant: activation bits; 16 = weight-only, else per-token dynamic (W8A8, W6A6, W4A4)")
    q.add_argument("--smooth-down", action="store_true", help="OmniQuant: LET also between up_proj and down_proj (smooths the SwiGLU product; not in the paper)")
    q.add_argument("--act-grid", choices=["auto", "sym", "asym"], default="auto", help="RTN/OmniQuant/I-LLM weight-activation: per-token activation codes symmetric or with a zero point per token; auto = RTN and I-LLM sym, OmniQuant asym (the paper's code)")
    q.add_argument("--epochs", type=int, default=20, help="OmniQuant: training epochs per block (paper: 20, 40 for W2)")
    q.add_argument("--lwc-lr", type=float, default=1e-2, help="OmniQuant: learning rate of the clipping strengths (default: 1e-2)")
    q.add_argument("--let-lr", type=float, default=5e-3, help="OmniQuant: learning rate of the channel scales (default: 5e-3)")
    q.add_argument("--let", choices=["auto", "on", "off"], default="auto", help="OmniQuant: learn channel scales; auto = on for weight-activation only (the paper's choice)")
    q.add_argument("--act-clip", action="store_true", help="I-LLM: also learn a clip of the per-token range of each activation a linear reads (the ops' clip_q15)")
    q.add_argument("--batch-size", type=int, default=4, help="OmniQuant: calibration sequences per training step (default: 4)")
    q.add_argument("--nsamples", type=int, default=128, help="calibration sequences (default: 128)")
    q.add_argument("--seqlen", type=int, default=512, help="tokens per calibration sequence (default: 512)")
    q.add_argument("--calib", default=CALIB_TEXT, help=f"calibration text: {CALIB_TEXT} or a .txt/.jsonl file (default: {CALIB_TEXT})")
    q.add_argument("--seed", type=int, default=0, help="seed for drawing calibration sequences (default: 0)")
    q.add_argument("--calib-device", default=None, choices=["cpu", "cuda"], help="where calibration runs, one layer at a time (default: cuda if torch sees one, else cpu)")


def quant_config(args):
    from edgeq.quantize.config import GPTQConfig, ILLMConfig, OmniQuantConfig, RTNConfig, SpQRConfig

    if args.method == "rtn":
        return RTNConfig(bits=args.bits, group_size=args.group_size, sym=args.sym, abits=args.abits,
                         act_sym=args.act_grid != "asym")
    if args.method in ("omniquant", "illm"):
        common = dict(wbits=args.bits, abits=args.abits, epochs=args.epochs, lwc_lr=args.lwc_lr, let_lr=args.let_lr,
                      batch_size=args.batch_size, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
        if args.method == "illm":  # weight-activation only: per-channel weights, LET on
            return ILLMConfig(**common, sym=args.sym, act_sym=args.act_grid != "asym", act_clip=args.act_clip)
        return OmniQuantConfig(**common, group_size=args.group_size, let={"auto": None, "on": True, "off": False}[args.let],
                               sym=args.sym, act_sym=args.act_grid == "sym", smooth_down=args.smooth_down)
    if args.method == "spqr":
        return SpQRConfig(bits=args.bits, group_size=args.group_size, stat_bits=args.stat_bits,
                          stat_group_size=args.stat_group_size, outlier_threshold=args.outlier_threshold,
                          target_outliers=args.target_outliers, act_order=not args.no_act_order, damp=args.damp,
                          block_size=args.block_size, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    return GPTQConfig(bits=args.bits, group_size=args.group_size, sym=args.sym, act_order=not args.no_act_order,
                      damp=args.damp, block_size=args.block_size, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("evaluation")
    e.add_argument("--text", default=EVAL_TEXT, help=f"evaluation text: {EVAL_TEXT} or a .txt/.jsonl file (default: {EVAL_TEXT})")
    e.add_argument("--window", type=int, default=512, help="tokens per perplexity window (default: 512)")
    e.add_argument("--stride", type=int, default=512, help="tokens between window starts; < window scores with overlap context (default: 512)")
    e.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS, help=f"evaluate at most this many windows; 0 = the whole text (default: {DEFAULT_MAX_WINDOWS})")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime execution provider (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's choice)")


# ---- steps the commands share ----------------------------------------------------------------------------
def run_quantize(lm, config, args, out_dir: Path):
    """Quantize with ``config``; calibration sequences per the config's nsamples/seqlen/seed and ``args.calib``."""
    from edgeq.quantize.api import quantize_, save_quantized
    from edgeq.text import calibration_batch

    calib = None
    if hasattr(config, "nsamples"):
        calib = calibration_batch(lm.tokenizer, args.calib, config.nsamples, config.seqlen, config.seed)
    start = time.perf_counter()
    qweights = quantize_(lm.model, config, calib, checkpoint_dir=out_dir / "checkpoints", device=args.calib_device)
    seconds = time.perf_counter() - start
    save_quantized(out_dir, qweights, config, lm.source)
    return qweights, seconds


def lowering_passes(proto):
    """The passes the main job applies after export (quantized-weight lowering, folding, dead code)."""
    from edgeq.passes.pipeline import default_pipeline

    result = default_pipeline(proto)
    logging.getLogger("edgeq").info("%s", result.format())
    return result.to_proto()


def integer_only_passes(proto, rotate_down: int = 0):
    """The lowering, the fusions and the integer-only conversion (I-LLM): no float between ids and logits;
    ``rotate_down``: a Hadamard block on down_proj's input (``passes/integer_only.py``)."""
    from edgeq.passes.pipeline import INTEGER_ONLY_PASSES, PipelineOptions, run_pipeline

    result = run_pipeline(proto, INTEGER_ONLY_PASSES, PipelineOptions(rotate_down=rotate_down))
    logging.getLogger("edgeq").info("%s", result.format())
    return result.to_proto()


def run_export(model, tokenizer, out: Path, dtype: str, lower: bool, external: bool | None = None,
               integer_only: bool = False, rotate_down: int = 0):
    from edgeq.exporter.export import export

    transform = (functools.partial(integer_only_passes, rotate_down=rotate_down) if integer_only else
                 lowering_passes if lower else None)
    return export(model, tokenizer, out, dtype=dtype, external=external, transform=transform)


def eval_tokens(tokenizer, args, text: str | None = None):
    from edgeq.text import read_text, tokenize

    return tokenize(tokenizer, text if text is not None else read_text(args.text))


def eval_onnx(path: Path, tokens, args, desc: str):
    from edgeq.perplexity import perplexity
    from edgeq.runtime.decoder import OnnxDecoder

    decoder = OnnxDecoder(path, args.device, args.threads)
    return perplexity(decoder.logits, tokens, args.window, args.stride, args.max_windows or None, desc=desc)


def eval_torch(model, tokens, args, desc: str):
    from edgeq.perplexity import perplexity, torch_logits_fn

    return perplexity(torch_logits_fn(model), tokens, args.window, args.stride, args.max_windows or None, desc=desc)


def load_tokenizer_for(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent))
    except Exception as e:
        raise EdgeqError(f"no tokenizer next to {path} (edgeq export writes one there): {e}") from e


def prompt_ids(tokenizer, prompt: str, chat: bool):
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


# ---- commands -------------------------------------------------------------------------------------------
def cmd_quantize(args):
    from edgeq.models import load_model

    config = quant_config(args)
    lm = load_model(args.model)
    _, seconds = run_quantize(lm, config, args, Path(args.output))
    print(f"quantized {args.model} with {config} in {seconds:.1f} s -> {args.output}")


def load_possibly_quantized(args):
    """The model named by --model, or the source of --quantized with its packed weights installed."""
    from edgeq.models import load_model
    from edgeq.quantize.api import apply_quantized, load_quantized

    qweights, source = None, args.model
    if args.quantized:
        _, qsource, qweights = load_quantized(args.quantized)  # a damaged folder is refused before loading
        source = args.model or qsource
    lm = load_model(source or DEFAULT_MODEL)
    if qweights is not None:
        apply_quantized(lm.model, qweights)
    return lm


def cmd_export(args):
    lm = load_possibly_quantized(args)
    if args.integer_only and (args.no_passes or args.dtype != "float32"):
        raise EdgeqError("--integer-only runs its own passes on a float32 export (no --no-passes, no --dtype)")
    if args.rotate_down and not args.integer_only:
        raise EdgeqError("--rotate-down is an option of the integer-only graph (--integer-only)")
    path = run_export(lm.model, lm.tokenizer, Path(args.output), args.dtype, not args.no_passes, args.external or None,
                      integer_only=args.integer_only, rotate_down=args.rotate_down)
    print(f"exported -> {path}")


def cmd_run(args):
    from edgeq.runtime.decoder import OnnxDecoder
    from edgeq.runtime.generate import SamplingConfig, generate

    path = Path(args.model)
    decoder = OnnxDecoder(path, args.device, args.threads)
    tokenizer = load_tokenizer_for(path)
    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    out = generate(decoder, prompt_ids(tokenizer, args.prompt, not args.raw), cfg, use_cache=not args.no_cache)
    print(tokenizer.decode(out.tokens, skip_special_tokens=True))
    print(f"[prefill {out.prefill_tokens_per_second:.1f} tok/s, decode {out.decode_tokens_per_second:.1f} tok/s, "
          f"{len(out.tokens)} tokens]", file=sys.stderr)


def cmd_eval(args):
    from edgeq.text import read_text

    text = read_text(args.text)  # refuse a bad text before loading anything
    if args.onnx:
        path = Path(args.onnx)
        result = eval_onnx(path, eval_tokens(load_tokenizer_for(path), args, text), args, "onnx")
        what = str(path)
    else:
        lm = load_possibly_quantized(args)
        result = eval_torch(lm.model, eval_tokens(lm.tokenizer, args, text), args, "pytorch")
        what = f"{lm.source} (pytorch{', ' + args.quantized if args.quantized else ''})"
    print(f"{what}: perplexity {result.perplexity:.4f} over {result.tokens_scored} tokens in {result.windows} windows")


def cmd_pipeline(args):
    from edgeq.pipeline import run_pipeline

    run_pipeline(args)


# ---- parser ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage's details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pipeline", help="the main job: quantize, export, run in ORT and compare with FP32",
                       description="Load the model, quantize it, export FP32 and quantized .onnx, evaluate both in "
                                   "ONNX Runtime (and the PyTorch models), print a perplexity table and a sample.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model alias, .gguf file or Hugging Face folder (default: {DEFAULT_MODEL})")
    p.add_argument("-o", "--output", default="out/pipeline", help="folder for the quantized checkpoint and .onnx files (default: out/pipeline)")
    p.add_argument("--prompt", default="Write one sentence about the sea.", help="prompt for the generated sample")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate for the sample (default: 32)")
    p.add_argument("--compare", nargs="*", metavar="SPEC", default=[], help="more configs in the same table, as METHOD:key=value,... (e.g. rtn:bits=4,group_size=128 gptq:bits=3)")
    p.add_argument("--no-passes", action="store_true", help="evaluate the plain DequantizeLinear+MatMul graphs (no lowering passes)")
    add_quant_args(p)
    add_eval_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("quantize", help="quantize a model's decoder linears and save the packed weights",
                       description="Quantize every decoder linear layer (lm_head stays FP) layer by layer, with a "
                                   "checkpoint per layer in OUTPUT/checkpoints so an interrupted run resumes.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model alias, .gguf file or Hugging Face folder (default: {DEFAULT_MODEL})")
    p.add_argument("-o", "--output", required=True, help="folder to write edgeq_quant.json and weights.safetensors")
    add_quant_args(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="export a model (FP or quantized) to ONNX with a KV cache",
                       description="Write OUTPUT (.onnx, opset 21, dynamic batch/sequence, past/present KV) and the "
                                   "tokenizer beside it; quantized linears are lowered to MatMulNBits/edgeq ops.")
    p.add_argument("--model", default=None, help=f"model alias, .gguf file or HF folder (default: the quantized checkpoint's source, else {DEFAULT_MODEL})")
    p.add_argument("--quantized", default=None, help="folder written by 'edgeq quantize'")
    p.add_argument("-o", "--output", required=True, help="path of the .onnx file to write")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weights and KV-cache dtype (default: float32)")
    p.add_argument("--external", action="store_true", help="always store weights in OUTPUT.data (automatic past 2 GB)")
    p.add_argument("--no-passes", action="store_true", help="keep the plain DequantizeLinear+MatMul graph (no lowering passes)")
    p.add_argument("--integer-only", action="store_true", help="I-LLM integer-only graph of a weight-activation "
                   "quantized model (W8A8/W6A6/W4A4): edgeq DI* ops, int8 KV cache with per-token scales")
    p.add_argument("--rotate-down", type=int, default=0, metavar="B",
                   help="integer-only: rotate down_proj's input by a Walsh-Hadamard transform in blocks of B (a power "
                        "of two dividing the MLP size; DISwiGLU's hadamard), down_proj's weights "
                        "requantized for it (default: 0, off)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="generate text from a prompt with an exported .onnx",
                       description="Generate with the KV cache; greedy by default, sampled with --top-k/--top-p/--temperature.")
    p.add_argument("model", help="path of an exported .onnx (its tokenizer lies beside it)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--raw", action="store_true", help="feed the prompt as is instead of through the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, default=1, help="sample among the k most likely tokens; 1 = greedy, 0 = no limit (default: 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow; a check)")
    add_device_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="perplexity of a PyTorch model, a quantized checkpoint or an .onnx",
                       description="Perplexity over strided windows of a text; the same tokenization and scoring for PyTorch and ORT.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--onnx", default=None, help="evaluate this exported .onnx in ONNX Runtime")
    src.add_argument("--quantized", default=None, help="evaluate this 'edgeq quantize' folder in PyTorch")
    p.add_argument("--model", default=None, help=f"PyTorch model alias/.gguf/folder (default: {DEFAULT_MODEL})")
    add_eval_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_eval)

    for module in PLUGIN_COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        args.func(args)
    except EdgeqError as e:
        print(f"edgeq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeq: interrupted (finished layers are checkpointed; rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

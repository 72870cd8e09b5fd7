"""``edgeq verify``, ``edgeq diff`` and ``edgeq optimize``.

``register(subparsers)`` adds the three commands to the main parser; each sets ``func`` to a handler taking the
parsed namespace and returning the exit status. Handlers raise ``EdgeqError`` for bad input (the main CLI
prints its message as one line) and print their results to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgeq.errors import EdgeqError

log = logging.getLogger(__name__)

# Above this many initializer bytes a saved model keeps its weights in a side file (protobuf's limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1536 * 2**20


def register(subparsers) -> None:
    from edgeq.passes.catalog import DEFAULT_PASSES, FUSION_PASSES, PASSES

    p = subparsers.add_parser(
        "verify",
        help="list a model's ops, which provider runs each, float ops, and whether edgeq ops can load",
        description="Lists every op type with its domain and count, the ONNX Runtime provider that will run it "
                    "(from ORT's kernel registry), how many nodes compute in floating point, and checks that "
                    "edgeq ops have their library. Fails (exit 2) when something cannot run.",
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="providers to check against (default cpu)")
    p.add_argument("--no-session", action="store_true", help="skip creating an ONNX Runtime session at the end")
    p.add_argument("--integer-only", action="store_true",
                   help="also fail, listing the offenders, if any node between the inputs and the logits' "
                        "dequantization has a float input or output (the I-LLM integer-only graph)")
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser(
        "diff",
        help="structural (and with --numeric, output) differences between two ONNX models",
        description="Nodes are matched by their first output name: lists nodes added, removed and rewired (by op "
                    "type), initializers added/removed/changed with sizes, and input/output signature changes. "
                    "--numeric runs both models in ONNX Runtime on the same inputs and reports max/mean absolute "
                    "and relative differences of every shared output.",
    )
    p.add_argument("a", help="the reference model (.onnx)")
    p.add_argument("b", help="the model compared with it (.onnx)")
    p.add_argument("--numeric", action="store_true", help="also run both models and compare outputs")
    p.add_argument("--prompt", help="with --numeric on decoder graphs: a text to tokenize as input_ids")
    p.add_argument("--tokenizer", help="tokenizer for --prompt: a model alias (smollm2-135m), HF folder or .gguf")
    p.add_argument("--seq-len", type=int, default=8, help="random input length when no prompt is given (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--html", metavar="OUT.html", help="also write an HTML report with op histograms side by side")
    p.add_argument("--max-lines", type=int, default=10, help="examples listed per section (default 10)")
    p.set_defaults(func=cmd_diff)

    names = "\n".join(f"  {s.name:<13} {s.help}" for s in PASSES.values())
    p = subparsers.add_parser(
        "optimize",
        help="run graph passes (quantized-weight lowering, folding, fusions, fp16) on an .onnx",
        description=f"Runs named passes in order, with shape inference and onnx.checker after each, and prints "
                    f"what each changed.\n\npasses:\n{names}\n\ndefault: {','.join(DEFAULT_PASSES)}\n"
                    f"--fusions adds: {','.join(FUSION_PASSES)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="the input .onnx file")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    p.add_argument("--passes", help="comma-separated pass names, run in this order (default: the default pipeline)")
    p.add_argument("--fusions", action="store_true", help="append the fusion passes to the default pipeline")
    p.add_argument("--accuracy-level", type=int, default=0, choices=range(5),
                   help="MatMulNBits accuracy_level: 0 exact (default), 4 int8 activations (faster, not exact)")
    p.add_argument("--io-dtype", choices=["float32", "float16"], default="float32",
                   help="float type of graph inputs/outputs after the fp16 pass (default float32)")
    p.add_argument("--no-verify", action="store_true", help="skip shape inference and onnx.checker between passes")
    p.set_defaults(func=cmd_optimize)


def cmd_verify(args) -> int:
    from edgeq.passes.verify import verify_model

    report = verify_model(args.model, device=args.device, session=not args.no_session,
                          integer_only=args.integer_only)
    print(report.format())
    if not report.ok:
        raise EdgeqError(f"{args.model}: {len(report.problems)} problem(s), first: {report.problems[0]}")
    return 0


def cmd_diff(args) -> int:
    from edgeq.passes.diff import load_checked, numeric_diff, structural_diff, tokenize, write_html

    if args.prompt is not None and not args.numeric:
        raise EdgeqError("--prompt only applies with --numeric")
    if args.prompt is not None and not args.tokenizer:
        raise EdgeqError("--prompt needs --tokenizer (a model alias, Hugging Face folder or .gguf file)")
    if args.seq_len < 1:
        raise EdgeqError(f"--seq-len must be at least 1, got {args.seq_len}")
    a, b = load_checked(args.a), load_checked(args.b)
    diff = structural_diff(a, b)
    print(diff.format(max_lines=args.max_lines))
    numeric = None
    if args.numeric:
        ids = tokenize(args.prompt, args.tokenizer) if args.prompt is not None else None
        numeric = numeric_diff(args.a, args.b, seed=args.seed, seq_len=args.seq_len, input_ids=ids)
        print("outputs:")
        for o in numeric:
            print("  " + o.format())
    if args.html:
        write_html(args.html, args.a, args.b, diff, numeric)
        print(f"wrote {args.html}")
    return 0


def cmd_optimize(args) -> int:
    import onnx_ir as ir

    from edgeq.passes.pipeline import DEFAULT_PASSES, FUSION_PASSES, PipelineOptions, run_pipeline
    from edgeq.runtime.session import check_model_file

    src = check_model_file(args.model)
    out = Path(args.output)
    if out.resolve() == src.resolve():
        raise EdgeqError(f"{out}: the output must not overwrite the input (its weights are read lazily)")
    if args.passes and args.fusions:
        raise EdgeqError("give either --passes or --fusions, not both")
    names = [n.strip() for n in args.passes.split(",") if n.strip()] if args.passes else list(DEFAULT_PASSES)
    if args.fusions:
        names += FUSION_PASSES
    if not names:
        raise EdgeqError("--passes names no pass")
    try:
        model = ir.load(str(src))
    except Exception as e:
        raise EdgeqError(f"{src}: cannot load ({type(e).__name__}: {e})") from e
    options = PipelineOptions(accuracy_level=args.accuracy_level, io_dtype=args.io_dtype)
    result = run_pipeline(model, names, options, verify=not args.no_verify)
    print(result.format())
    save(result.model, out)
    print(f"wrote {out}")
    return 0


def save(model, path: Path) -> None:
    """Write ``model``; weights go to ``<name>.data`` beside it when they would not fit one protobuf."""
    import onnx_ir as ir

    from edgeq.passes.pipeline import initializer_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if initializer_bytes(model) > EXTERNAL_DATA_BYTES:
            ir.save(model, str(path), external_data=path.name + ".data")
        else:
            ir.save(model, str(path))
    except OSError as e:
        raise EdgeqError(f"cannot write {path}: {e.strerror}") from e


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry for these three commands (the edgeq CLI registers them itself)."""
    parser = argparse.ArgumentParser(prog="edgeq")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EdgeqError as e:
        print(f"edgeq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
